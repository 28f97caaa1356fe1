//! Logging to stderr and, optionally, a file. Never to stdout, which carries the CNI reply.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::conf::LogLevel;

struct Sink {
    level: LogLevel,
    file: Option<PathBuf>,
    context: String,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    level: LogLevel::Info,
    file: None,
    context: String::new(),
});

/// Sets the level, the optional log file and the context every line starts with (the command
/// and container).
pub fn configure(level: LogLevel, file: Option<PathBuf>, context: String) {
    let mut sink = SINK.lock().unwrap_or_else(PoisonError::into_inner);
    *sink = Sink { level, file, context };
}

/// Writes one line at `level` if the configured level lets it through.
pub fn write(level: LogLevel, message: std::fmt::Arguments<'_>) {
    let sink = SINK.lock().unwrap_or_else(PoisonError::into_inner);
    if level == LogLevel::None || level > sink.level {
        return;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let line = format!(
        "{}.{:03} capture-cni[{}] {} {}: {message}\n",
        now.as_secs(),
        now.subsec_millis(),
        std::process::id(),
        level.as_str(),
        sink.context,
    );
    // Logging must never make a command fail.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = &sink.file
        && let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Logs at `error`.
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::conf::LogLevel::Error, format_args!($($arg)*)) };
}
/// Logs at `warn`.
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::write($crate::conf::LogLevel::Warn, format_args!($($arg)*)) };
}
/// Logs at `info`.
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::conf::LogLevel::Info, format_args!($($arg)*)) };
}
/// Logs at `debug`.
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::conf::LogLevel::Debug, format_args!($($arg)*)) };
}
pub(crate) use {debug, error, info, warning as warn};
