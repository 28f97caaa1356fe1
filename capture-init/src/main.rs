//! `capture-init`: a drop-in replacement for istio-iptables in sidecar init containers.

mod cli;
#[cfg(feature = "ebpf")]
mod ebpf;
mod run;
mod validate;

fn main() -> std::process::ExitCode {
    run::main(std::env::args_os())
}
