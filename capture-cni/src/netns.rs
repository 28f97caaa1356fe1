//! The pod's network namespace: capture-core's host layer ([`capture_core::host`]), with its
//! failures as the plugin's errors.

use std::io;
use std::path::Path;

use capture_core::host::RunError;
pub use capture_core::host::{NetNs, NsId, OpenError, run_in_scratch_netns};

use crate::error::Error;

/// A failure to open the namespace at `path` as the plugin's error.
pub fn open_error(e: OpenError, path: &Path) -> Error {
    match e {
        OpenError::NotFound => Error::NetnsOpen {
            path: path.to_owned(),
            source: io::ErrorKind::NotFound.into(),
        },
        OpenError::NotNetns => Error::NotNetns {
            path: path.to_owned(),
        },
        OpenError::Io(source) => Error::NetnsOpen {
            path: path.to_owned(),
            source,
        },
    }
}

impl From<RunError> for Error {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Setns { path, source } => Self::Setns { path, source },
            RunError::Home(source) => Self::NetnsOpen {
                path: "/proc/thread-self/ns/net".into(),
                source,
            },
            RunError::Spawn(e) => Self::Internal(format!("cannot spawn a thread: {e}")),
            RunError::Panicked(what) => Self::Internal(what),
        }
    }
}
