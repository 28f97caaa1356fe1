//! How capture's binaries log: every crate emits `tracing` events, and each binary installs
//! this one subscriber, so capture-init, capture-cni and capture-agent write the same lines.
//!
//! - **Format**: Istio's. Text for people (`2026-12-01T16:46:55.123456Z<TAB>info<TAB>IPv4
//!   capture applied (nft)`, the scope after the level when it is not `default`), or one
//!   JSON object per line (`{"level":"info","time":"…","scope":"default","msg":"…"}`, each
//!   field a key), both with RFC 3339 UTC times.
//! - **Levels**: Istio's `--log_output_level` list, per scope ([`Levels`], [`SCOPES`]): a
//!   scope is a set of tracing targets (`iptables` is `capture_core::apply`, …).
//! - **Where**: stderr (stdout is the CNI reply or a dry run's payload), and optionally a
//!   file kept under a size ([`LogFile`]).
//! - **Context**: fields every line carries from the moment they are known ([`set_context`]:
//!   the CNI plugin's container id, netns and pod).

mod argv;
mod levels;
mod line;

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::SystemTime;

pub use argv::parse_go_bool;
pub use levels::{LevelError, Levels, OutputLevel, SCOPES, scope_of};
pub use line::{Format, json_string};
use tracing::{Event, Subscriber};
pub use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::{Layer, Registry, reload};

impl Format {
    /// JSON when `json`, as `--log_as_json` asks.
    pub fn json(json: bool) -> Self {
        if json { Self::Json } else { Self::Text }
    }
}

/// Everything [`init`] needs.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Text or JSON.
    pub format: Format,
    /// How much each scope logs.
    pub levels: Levels,
    /// A file every line is appended to as well as stderr.
    pub file: Option<LogFile>,
}

/// A log file that never grows past about twice `max_bytes`: when a line would take it past
/// `max_bytes`, it becomes `<path>.1` (replacing the one before) and a new file starts. Several
/// processes may share it (each line is one append).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    /// The file.
    pub path: PathBuf,
    /// Its size limit.
    pub max_bytes: u64,
}

impl LogFile {
    /// Istio's CNI plugin rotates its log at 10 MB.
    pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;

    fn append(&self, line: &str) {
        let len = line.len() as u64;
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() > 0 && m.len() + len > self.max_bytes) {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&self.path, old);
        }
        // Logging never makes a command fail: a file that cannot be written loses the line.
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

static CONTEXT: RwLock<Vec<(&'static str, String)>> = RwLock::new(Vec::new());

/// Fields every following line carries, before the event's own (replacing earlier ones).
pub fn set_context(fields: Vec<(&'static str, String)>) {
    *CONTEXT.write().unwrap_or_else(PoisonError::into_inner) = fields;
}

/// Installs the subscriber for the whole process, or, called again, changes its format,
/// levels and file (capture-cni logs at the default levels until its configuration is read).
/// Returns false, changing nothing, when another subscriber is installed already.
pub fn init(config: Config) -> bool {
    if let Some(handle) = HANDLE.get() {
        *OUTPUT.write().unwrap_or_else(PoisonError::into_inner) = Output {
            format: config.format,
            file: config.file,
        };
        return handle.reload(config.levels.targets()).is_ok();
    }
    let (filter, handle) = reload::Layer::new(config.levels.targets());
    *OUTPUT.write().unwrap_or_else(PoisonError::into_inner) = Output {
        format: config.format,
        file: config.file,
    };
    let subscriber = tracing_subscriber::registry().with(Writer.with_filter(filter));
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return false;
    }
    let _ = HANDLE.set(handle);
    true
}

static HANDLE: OnceLock<reload::Handle<Targets, Registry>> = OnceLock::new();

/// Where and how lines are written.
struct Output {
    format: Format,
    file: Option<LogFile>,
}

static OUTPUT: RwLock<Output> = RwLock::new(Output {
    format: Format::Text,
    file: None,
});

/// The layer that writes each event as a line.
struct Writer;

impl<S: Subscriber> Layer<S> for Writer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = line::Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let output = OUTPUT.read().unwrap_or_else(PoisonError::into_inner);
        let context = CONTEXT.read().unwrap_or_else(PoisonError::into_inner);
        let line = line::render(
            output.format,
            SystemTime::now(),
            meta.level(),
            scope_of(meta.target()),
            &fields,
            &context,
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Some(file) = &output.file {
            file.append(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_rotated_before_it_passes_its_limit() {
        let dir = std::env::temp_dir().join(format!("capture-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = LogFile {
            path: dir.join("cni.log"),
            max_bytes: 100,
        };
        let line = format!("{}\n", "x".repeat(39));
        for _ in 0..7 {
            file.append(&line);
        }
        let size = |name: &str| std::fs::metadata(dir.join(name)).map(|m| m.len()).unwrap_or(0);
        // 7 lines of 40 bytes, at most 2 per file: the newest file has the 7th, .1 the 5th and 6th.
        assert_eq!(size("cni.log"), 40);
        assert_eq!(size("cni.log.1"), 80);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
