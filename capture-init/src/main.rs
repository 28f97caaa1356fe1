//! `capture-init`: a drop-in replacement for istio-iptables in sidecar init containers.
//!
//! The entry point is C's `main`, not std's runtime: see [`run::start`] for why and for what it
//! does in the runtime's place.
#![cfg_attr(not(test), no_main)]

mod arena;
mod cli;
#[cfg(feature = "ebpf")]
mod ebpf;
mod explain;
mod run;
mod status;
mod validate;

/// See [`arena`]: a one-shot command's allocations as pointer bumps.
#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: arena::Arena = arena::Arena::new();

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: the C runtime calls `main` with the process's own arguments.
    unsafe { run::start(argc, argv) }
}

// Unit tests get the test harness's entry point; this keeps `run::main` used there.
#[cfg(test)]
fn main() -> std::process::ExitCode {
    run::main(std::env::args_os())
}
