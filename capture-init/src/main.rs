//! `capture-init`: a drop-in replacement for istio-iptables in sidecar init containers.

mod cli;
mod run;
mod validate;

fn main() -> std::process::ExitCode {
    run::main(std::env::args_os())
}
