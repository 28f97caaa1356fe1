//! `capture-cni`: the CNI plugin (run by the container runtime) and its node installer
//! (`capture-cni install`).

fn main() -> std::process::ExitCode {
    capture_cni::cli::main(std::env::args_os())
}
