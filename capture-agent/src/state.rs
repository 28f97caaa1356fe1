//! What the agent's tasks share: the node's pins, readiness and the agent's own counters.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use capture_ebpf::{Ebpf, Node};

use crate::metrics::{self, AgentCounters, Snapshot};

/// The agent's state, shared by its tasks.
#[derive(Debug)]
pub struct Agent {
    /// The node's programs: where they are pinned and the cgroup they act on.
    pub backend: Ebpf,
    /// Why the programs are not usable, `None` once they are loaded and act on the cgroup.
    programs: Mutex<Option<String>>,
    /// With the CNI installer: why the plugin is not chained, `None` once it is.
    cni: Option<Mutex<Option<String>>>,
    /// Pods reclaimed by garbage collection.
    pub gc_reclaimed: AtomicU64,
    /// Garbage collections run.
    pub gc_runs: AtomicU64,
    /// Garbage collections failed.
    pub gc_errors: AtomicU64,
}

impl Agent {
    /// Not ready: programs not loaded yet, plugin (when `cni`) not chained yet.
    pub fn new(backend: Ebpf, cni: bool) -> Agent {
        Agent {
            backend,
            programs: Mutex::new(Some("eBPF programs not loaded yet".into())),
            cni: cni.then(|| Mutex::new(Some("not installed yet".into()))),
            gc_reclaimed: AtomicU64::new(0),
            gc_runs: AtomicU64::new(0),
            gc_errors: AtomicU64::new(0),
        }
    }

    /// Records whether the programs are usable (`Err`: why not).
    pub fn set_programs(&self, state: Result<(), String>) {
        *self.programs.lock().expect("not poisoned") = state.err();
    }

    /// Records whether the CNI plugin is chained (`Err`: why not).
    pub fn set_cni(&self, state: Result<(), String>) {
        if let Some(cni) = &self.cni {
            *cni.lock().expect("not poisoned") = state.err();
        }
    }

    /// Why the agent is not ready, in one line; `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        if let Some(reason) = self.programs.lock().expect("not poisoned").clone() {
            return Some(reason);
        }
        let cni = self.cni.as_ref()?.lock().expect("not poisoned").clone();
        cni.map(|reason| format!("CNI plugin not chained: {reason}"))
    }

    /// The `/metrics` exposition; the maps are read on the blocking pool.
    pub async fn metrics(&self) -> String {
        let pins = self.backend.pins.clone();
        let snapshot = tokio::task::spawn_blocking(move || {
            Node::open(&pins)
                .and_then(|node| Snapshot::read(&node))
                .map_err(|e| capture_core::chain(&e))
        })
        .await
        .unwrap_or_else(|e| Err(format!("reading the maps failed: {e}")));
        let agent = AgentCounters {
            gc_reclaimed: self.gc_reclaimed.load(Ordering::Relaxed),
            gc_runs: self.gc_runs.load(Ordering::Relaxed),
            gc_errors: self.gc_errors.load(Ordering::Relaxed),
        };
        let labels = |cookie| {
            snapshot
                .as_ref()
                .map(|snapshot| snapshot.pod_labels(cookie))
                .unwrap_or_default()
        };
        metrics::render(snapshot.as_ref().map_err(String::as_str), agent, &labels)
    }
}
