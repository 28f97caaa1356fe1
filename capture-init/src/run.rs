//! Carrying out an invocation.

use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;

use capture_core::{Restore, plan};

use crate::cli::{self, Invocation, Parsed};

/// Runs the command and returns its exit status: 0 success, 1 error.
pub fn main(argv: impl IntoIterator<Item = OsString>) -> ExitCode {
    match cli::parse(argv) {
        Ok(Parsed::Info(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Parsed::Run(invocation)) => run(&invocation),
        Err(e) => {
            eprintln!("capture-init: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(invocation: &Invocation) -> ExitCode {
    let Invocation { args, spec, warnings } = invocation;
    for warning in warnings {
        eprintln!("capture-init: warning: {warning}");
    }
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        for family in spec.families() {
            if write!(out, "{}", Restore(&plan(spec, *family))).is_err() {
                return ExitCode::from(1);
            }
        }
        return ExitCode::SUCCESS;
    }
    eprintln!("capture-init: applying rules is not available in this build; use --dry-run");
    ExitCode::from(1)
}
