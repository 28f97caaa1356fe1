//! The programs' log records (aya-log, `AYA_LOGS`): rare events only — a full per-connection
//! map, an inbound connection refused for lack of a listener — written as tracing events of
//! target `capture_ebpf`.
//!
//! The ring buffer is pinned with the other maps, so the node's programs (its one `sk_lookup`
//! program among them) write into it; it is found through the program on the pinned
//! `connect4` link (aya-log's `init_from_id`). aya-log hands each record to a `log::Log`;
//! [`Tracing`] forwards it to tracing directly, so no global `log` logger (and no tracing-log
//! bridge) is needed.

use aya_log::EbpfLogger;
use capture_ebpf::{Node, PinDir};
use tokio::io::unix::AsyncFd;

/// Forwards aya-log's records to tracing, at their level.
pub struct Tracing;

impl log::Log for Tracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let program = record.target();
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "capture_ebpf", program, "{message}"),
            log::Level::Warn => tracing::warn!(target: "capture_ebpf", program, "{message}"),
            log::Level::Info => tracing::info!(target: "capture_ebpf", program, "{message}"),
            log::Level::Debug => tracing::debug!(target: "capture_ebpf", program, "{message}"),
            log::Level::Trace => tracing::trace!(target: "capture_ebpf", program, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Why the records cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program on the pinned `connect4` link could not be found.
    #[error("cannot find the node's programs to read their log records")]
    Program(#[source] capture_ebpf::Error),
    /// aya-log could not open the ring buffer of that program.
    #[error("cannot open the AYA_LOGS ring buffer of program {id}")]
    Open {
        /// The program's id.
        id: u32,
        /// Why.
        #[source]
        source: aya_log::Error,
    },
    /// The ring buffer cannot be polled.
    #[error("cannot poll the AYA_LOGS ring buffer")]
    Poll(#[source] std::io::Error),
}

/// Opens the node's log ring buffer, ready to be polled by [`run`].
///
/// # Errors
/// When the programs or their ring buffer cannot be found.
pub fn open(pins: &PinDir) -> Result<AsyncFd<EbpfLogger<Tracing>>, Error> {
    let id = Node::log_program_id(pins).map_err(Error::Program)?;
    let logger =
        EbpfLogger::init_from_id_with_logger(id, Tracing).map_err(|source| Error::Open { id, source })?;
    // SAFETY: the logger owns its ring buffer's descriptor (a `MapData`), which stays open
    // and the same for as long as the logger lives, and the `AsyncFd` owns the logger.
    unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::Poll(e.into()))
}

/// Writes every record as it arrives, until the task is dropped.
pub async fn run(mut logs: AsyncFd<EbpfLogger<Tracing>>) {
    loop {
        match logs.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(e) => {
                tracing::warn!("{}", capture_core::chain(&Error::Poll(e)));
                return;
            }
        }
    }
}
