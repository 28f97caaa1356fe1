//! Builds capture's eBPF object (the `capture-ebpf-programs` crate) for `bpfel-unknown-none`
//! with nightly and bpf-linker through aya-build, and leaves it in `OUT_DIR` for
//! `include_bytes_aligned!`. `scripts/setup` installs the toolchain.
//!
//! `AYA_BUILD_SKIP=1` skips the build and embeds an empty object instead; loading then fails
//! with `Error::ObjectMissing`, everything else (docs, unit tests) works. Under clippy the
//! object is skipped too: clippy only checks the loader, and the object would otherwise be
//! built a second time (clippy's build-script run is separate from the test build's).

use std::path::PathBuf;
use std::{env, fs};

const PROGRAMS: &str = "capture-ebpf-programs";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let root = manifest_dir.parent().expect("capture-ebpf sits in the workspace");
    let programs = root.join(PROGRAMS);
    // The programs use the shared types; aya-build only watches the programs crate itself.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("capture-ebpf-common").display()
    );
    let object = out_dir.join(PROGRAMS);
    println!("cargo:rerun-if-env-changed=RUSTC_WORKSPACE_WRAPPER");
    let clippy = env::var_os("RUSTC_WORKSPACE_WRAPPER")
        .is_some_and(|w| PathBuf::from(w).file_stem().is_some_and(|s| s == "clippy-driver"));
    let skip = env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip || clippy {
        fs::write(&object, b"").expect("write the empty stand-in object");
        return;
    }
    // aya-build runs `cargo build --package …` in the current directory, and the programs
    // crate is its own workspace (it is not a member of ours: it only builds for BPF).
    env::set_current_dir(&programs).expect("enter the programs crate");
    let programs = programs.to_str().expect("a UTF-8 path");
    let package = aya_build::Package {
        name: PROGRAMS,
        root_dir: programs,
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Nightly) {
        panic!(
            "building the eBPF programs failed: {e:#}\n\
             they need nightly with rust-src and bpf-linker: run scripts/setup \
             (or set AYA_BUILD_SKIP=1 to build without them)"
        );
    }
}
