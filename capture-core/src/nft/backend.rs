//! The native nftables backend behind the [`Backend`] seam.
//!
//! Rendering is complete (Istio's transaction text for every golden case); applying goes over
//! nf_tables netlink in one batch and is not wired in yet, so every call that would touch the
//! kernel fails with one line, changing nothing: a success exit always means complete capture.

use super::{Transaction, plan};
use crate::backend::{Backend, BackendError, Outcome};
use crate::{ApplyOptions, CaptureSpec};

/// The native nftables backend (`--native-nftables`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Nftables;

/// Why a native nftables call that needs the kernel fails, for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "native nftables can only print its rules so far (--dry-run); nothing was changed: use the iptables backend (iptables-nft drives nf_tables) to apply"
)]
pub struct NotApplicable;

impl Backend for Nftables {
    fn dry_run(&self, spec: &CaptureSpec) -> Result<String, BackendError> {
        Ok(Transaction(&plan(spec)).to_string())
    }

    fn install(&self, _: &CaptureSpec, _: ApplyOptions) -> Result<Outcome, BackendError> {
        Err(NotApplicable.into())
    }

    fn check(&self, _: &CaptureSpec) -> Result<Vec<String>, BackendError> {
        Err(NotApplicable.into())
    }

    fn uninstall(&self, _: &CaptureSpec) -> Result<Outcome, BackendError> {
        Err(NotApplicable.into())
    }
}
