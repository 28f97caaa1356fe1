//! The example transparent proxy (`capture-core/examples/transparent-proxy.rs`) as a running
//! sidecar: started in a pod, its log collected.

use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::{NetNs, PROXY_UID};

/// How long [`ProxyProcess::wait_for`] waits for a log line.
const PATIENCE: Duration = Duration::from_secs(10);

/// The example proxy running in a pod's namespace; killed and reaped on `Drop`.
///
/// It is started as root with `--user 1337:1337`: it binds its listeners (a `--transparent`
/// one needs `CAP_NET_ADMIN`), then runs as [`PROXY_UID`], whose connections capture leaves
/// alone. Its stderr (one line per connection) is collected by a thread of its own.
#[derive(Debug)]
pub struct ProxyProcess {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl ProxyProcess {
    /// Starts the proxy binary `bin` in `ns` with `--user 1337:1337` and `args`, waits until it
    /// listens, and checks that it then runs as uid 1337.
    ///
    /// # Panics
    ///
    /// When it cannot be started, exits, or does not say it listens within 10 s, or runs as
    /// another uid; the message carries its log.
    #[must_use]
    pub fn start(ns: &NetNs, bin: &Path, args: &[&str]) -> ProxyProcess {
        let mut cmd = ns.command(bin);
        cmd.args(["--user", &format!("{PROXY_UID}:{PROXY_UID}")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let reader = {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                let mut stderr = BufReader::new(stderr);
                let mut line = String::new();
                while matches!(stderr.read_line(&mut line), Ok(n) if n > 0) {
                    log.lock().unwrap_or_else(PoisonError::into_inner).push_str(&line);
                    line.clear();
                }
            })
        };
        let proxy = ProxyProcess {
            child,
            log,
            reader: Some(reader),
        };
        proxy.wait_for("listening on");
        let uids = proxy.uids().unwrap_or_else(|e| panic!("the proxy's uids: {e}"));
        assert_eq!(
            uids,
            [PROXY_UID; 4],
            "the proxy's real, effective, saved and fs uid; its log:\n{}",
            proxy.log()
        );
        proxy
    }

    /// Everything it logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The log lines so far.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        self.log().lines().map(str::to_owned).collect()
    }

    /// Waits up to 10 s for a log line containing `needle` and returns it.
    ///
    /// # Panics
    ///
    /// When none comes (the message carries the log), or the proxy exited before.
    #[track_caller]
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.log().lines().find(|line| line.contains(needle)) {
                return line.to_owned();
            }
            let finished = self.reader.as_ref().is_none_or(JoinHandle::is_finished);
            assert!(
                !finished && Instant::now() < deadline,
                "the proxy never logged {needle:?}{}; its log:\n{}",
                if finished { " and exited" } else { "" },
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Real, effective, saved and filesystem uid, from `/proc/<pid>/status`.
    fn uids(&self) -> io::Result<Vec<u32>> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Uid line"))?;
        line.split_whitespace()
            .map(|id| {
                id.parse()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            })
            .collect()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
