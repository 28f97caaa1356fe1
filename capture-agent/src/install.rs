//! The CNI installer, in the agent's process (`--cni-conf-dir`): capture-cni's own installer
//! ([`capture_cni::install::Installer`], what `capture-cni install --watch` runs), at start and
//! every `--cni-interval`, so the entry is put back when the primary plugin rewrites its
//! configuration, keeping to the file it chained into. `/readyz` reports whether the plugin is
//! chained. On exit the entry and the binary are removed unless `--cni-keep-on-exit`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capture_cni::install::{InstallOptions, Installer, uninstall};
use serde_json::{Map, Value};

use crate::cli::Args;
use crate::state::Agent;

/// Why the installer's options cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// `--cni-plugin-config` cannot be read.
    #[error("cannot read --cni-plugin-config {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--cni-plugin-config` is not a JSON object.
    #[error("--cni-plugin-config {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `--cni-plugin-config` holds settings the plugin would refuse for every pod.
    #[error("--cni-plugin-config {}: {error}", path.display())]
    Settings {
        /// The file.
        path: PathBuf,
        /// The plugin's error, naming the field.
        error: capture_cni::Error,
    },
}

/// The installer's options from the flags; `None` without `--cni-conf-dir`.
///
/// # Errors
/// When `--cni-plugin-config` cannot be read, is not a JSON object, or holds settings the
/// plugin would refuse.
pub fn options(args: &Args) -> Result<Option<InstallOptions>, OptionsError> {
    let Some(conf_dir) = &args.cni_conf_dir else {
        return Ok(None);
    };
    let plugin_config = match &args.cni_plugin_config {
        None => Map::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| OptionsError::Read {
                path: path.clone(),
                source,
            })?;
            let map = match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(map)) => map,
                Ok(_) => {
                    return Err(OptionsError::Invalid {
                        path: path.clone(),
                        reason: "not a JSON object".into(),
                    });
                }
                Err(e) => {
                    return Err(OptionsError::Invalid {
                        path: path.clone(),
                        reason: e.to_string(),
                    });
                }
            };
            capture_cni::install::check_settings(&map).map_err(|error| OptionsError::Settings {
                path: path.clone(),
                error,
            })?;
            map
        }
    };
    Ok(Some(InstallOptions {
        conf_dir: conf_dir.clone(),
        bin_dir: args.cni_bin_dir.clone(),
        binary: args.cni_plugin.clone(),
        conf_file: args.cni_conf_file.clone(),
        plugin_config,
        remove_istio_cni: args.cni_remove_istio_cni,
        allow_istio_cni: args.cni_allow_istio_cni,
    }))
}

/// The installer the periodic task and the exit share: a pass and the removal at exit never
/// overlap.
pub type Shared = Arc<Mutex<Installer>>;

/// Installs now and every `interval`, forever; logs changes and failures (a failure's text
/// once until it changes) and records readiness.
pub async fn run(agent: Arc<Agent>, installer: Shared, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    // A slow pass delays the next one rather than making a burst of them.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = String::new();
    let mut last_warnings = Vec::new();
    loop {
        ticks.tick().await;
        let job = Arc::clone(&installer);
        let result = tokio::task::spawn_blocking(move || {
            let mut installer = job.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            installer
                .install()
                .map(|report| (report, installer.options().bin_dir.clone()))
                .map_err(|e| capture_core::chain(&e))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match &result {
            Ok((report, bin_dir)) => {
                if report.warnings != last_warnings {
                    for warning in &report.warnings {
                        tracing::warn!("{warning}");
                    }
                    last_warnings.clone_from(&report.warnings);
                }
                if report.binary_changed {
                    tracing::info!(bin_dir = %bin_dir.display(), "CNI plugin binary installed");
                }
                if let Some((file, true)) = &report.conf_file {
                    tracing::info!(file = %file.display(), "CNI plugin chained");
                }
                last_error.clear();
            }
            Err(e) if *e != last_error => {
                tracing::warn!("CNI install failed (retrying every {interval:?}): {e}");
                last_error.clone_from(e);
            }
            Err(_) => {}
        }
        agent.set_cni(result.map(drop));
    }
}

/// At exit, after the periodic task has been stopped: removes the entry from every file that
/// has one, then the binary (waiting for a pass still running to finish first).
pub async fn remove(installer: Shared) {
    let removed = tokio::task::spawn_blocking(move || {
        let installer = installer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let opts = installer.options();
        uninstall(&opts.conf_dir, &opts.bin_dir, opts.conf_file.as_deref())
            .map_err(|e| capture_core::chain(&e))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match removed {
        Ok(report) => {
            for file in &report.removed_from {
                tracing::info!(file = %file.display(), "CNI plugin entry removed");
            }
            if report.binary_removed {
                tracing::info!("CNI plugin binary removed");
            }
        }
        Err(e) => tracing::error!("CNI uninstall failed: {e}"),
    }
}
