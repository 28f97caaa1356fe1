//! capture-agent: capture's node agent.
//!
//! ```text
//! start ─> HTTP on --listen (/healthz 200; /readyz 503 until ready)
//!       ─> Node::upgrade when programs are pinned (older ones replaced on their links, pods captured)
//!       ─> Ebpf::open_or_load (load and attach once per node, or reuse the pins; other layouts refused)
//!       ─> tasks: gc (start, inotify on --netns-dir, every --gc-interval), CNI installer (--cni-conf-dir),
//!                 the programs' log records (AYA_LOGS) as tracing events
//! SIGTERM/SIGINT ─> exit 0, nothing unloaded: pods stay captured across a restart or upgrade;
//!                   the CNI plugin is removed unless --cni-keep-on-exit
//! ```
//!
//! | module | what |
//! |---|---|
//! | `cli` | flags and environment variables |
//! | `state` | what the tasks share: pins, readiness, the agent's counters |
//! | `http` | the three-path HTTP/1.1 server |
//! | `metrics` | the exposition, and the table naming each `STAT_*` counter |
//! | `gc` | garbage collection: at start, on namespace deletions, periodically |
//! | `ebpf_log` | the programs' rare-event log records (aya-log), as tracing events |
//! | `install` | the CNI installer (capture-cni's library) |

mod cli;
mod ebpf_log;
mod gc;
mod http;
mod install;
mod metrics;
mod state;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use capture_cni::install::Installer;
use capture_ebpf::{Ebpf, Failure, Node, PinDir};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::Args;
use crate::state::Agent;

/// How messages name the command that unloads the programs (the agent never does).
const UNLOAD: &str = "capture-init ebpf unload";

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// The runtime could not be built.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// `--listen` cannot be bound.
    #[error("cannot listen on --listen {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The signal handlers cannot be installed.
    #[error("cannot handle SIGTERM/SIGINT")]
    Signal(#[source] std::io::Error),
    /// Loading or reusing the programs failed.
    #[error(transparent)]
    Load(#[from] Failure),
    /// The CNI installer's options are bad.
    #[error(transparent)]
    Cni(#[from] install::OptionsError),
    /// A startup task panicked.
    #[error("loading the programs panicked")]
    Panicked(#[source] tokio::task::JoinError),
}

fn main() -> ExitCode {
    let args = Args::parse();
    capture_log::init(capture_log::Config {
        format: capture_log::Format::json(args.log_json),
        levels: args.log_level.levels.clone(),
        file: None,
    });
    args.log_level.report();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", capture_core::chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), StartError> {
    let cni = install::options(&args)?;
    let backend = Ebpf {
        pins: PinDir::new(&args.bpffs),
        cgroup: args.cgroup.clone(),
        unload_command: UNLOAD,
        load_if_absent: true,
        mount_bpffs: args.mount_bpffs,
    };
    let agent = Arc::new(Agent::new(backend.clone(), cni.is_some()));
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signal)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: args.listen,
            source,
        })?;
    tracing::info!(listen = %args.listen, "serving /metrics, /healthz, /readyz");
    tokio::spawn(http::serve(listener, Arc::clone(&agent)));

    let loaded = tokio::task::spawn_blocking(move || load(&backend))
        .await
        .map_err(StartError::Panicked)??;
    tracing::info!("{loaded}");
    agent.set_programs(Ok(()));
    // Without it capture works the same; only the programs' rare-event records are lost.
    match ebpf_log::open(&args_pins(&args)) {
        Ok(logs) => {
            tokio::spawn(ebpf_log::run(logs));
        }
        Err(e) => tracing::warn!("{}", capture_core::chain(&e)),
    }

    tokio::spawn(gc::run(
        Arc::clone(&agent),
        args.netns_dirs.clone(),
        args.gc_interval,
    ));
    let cni = cni.map(|opts| {
        let installer = install::Shared::new(std::sync::Mutex::new(Installer::new(opts)));
        let task = tokio::spawn(install::run(
            Arc::clone(&agent),
            Arc::clone(&installer),
            args.cni_interval,
        ));
        (installer, task)
    });
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: exiting, the programs stay loaded"),
        _ = int.recv() => tracing::info!("SIGINT: exiting, the programs stay loaded"),
    }
    if let Some((installer, task)) = cni {
        task.abort();
        // Cancelled at its next await: no pass starts after this.
        let _ = task.await;
        if args.cni_keep_on_exit {
            tracing::info!("the CNI plugin stays installed (--cni-keep-on-exit)");
        } else {
            install::remove(installer).await;
        }
    }
    Ok(())
}

fn args_pins(args: &Args) -> PinDir {
    PinDir::new(&args.bpffs)
}

/// Loads and attaches the programs, or checks the pinned ones act on the cgroup; releases the
/// node lock before returning (enrollments take it). Says which it was.
fn load(backend: &Ebpf) -> Result<String, Failure> {
    if backend.mount_bpffs {
        backend.pins.mount()?;
    }
    // Programs of an older capture (or another build) are replaced on their links first, with
    // every pod captured throughout; the same programs are left as they are.
    if backend.pins.is_loaded() {
        let cgroup = match &backend.cgroup {
            Some(cgroup) => cgroup.clone(),
            None => capture_ebpf::cgroup2_root()?,
        };
        let upgrade = Node::upgrade(&cgroup, &backend.pins, false)?;
        if !upgrade.is_nothing() {
            tracing::info!("eBPF programs upgraded: {upgrade}");
        }
    }
    let (node, loaded) = backend.open_or_load()?;
    Ok(match loaded {
        Some(step) => step.message,
        None => format!(
            "eBPF programs already loaded under {}, attached to {}: reusing them",
            backend.pins.path().display(),
            node.attachment()?
        ),
    })
}
