//! The CNI installer, in the agent's process (`--cni-conf-dir`): capture-cni's own installer
//! ([`capture_cni::install::install`], what `capture-cni install --watch` runs), at start and
//! every `--cni-interval`, so the entry is put back when the primary plugin rewrites its
//! configuration. `/readyz` reports whether the plugin is chained.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capture_cni::install::{InstallOptions, install};
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
}

/// The installer's options from the flags; `None` without `--cni-conf-dir`.
///
/// # Errors
/// When `--cni-plugin-config` cannot be read or is not a JSON object.
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
            match serde_json::from_str::<Value>(&text) {
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
            }
        }
    };
    Ok(Some(InstallOptions {
        conf_dir: conf_dir.clone(),
        bin_dir: args.cni_bin_dir.clone(),
        binary: args.cni_plugin.clone(),
        conf_file: args.cni_conf_file.clone(),
        plugin_config,
        remove_istio_cni: args.cni_remove_istio_cni,
    }))
}

/// Installs now and every `interval`, forever; logs changes and failures (a failure's text
/// once until it changes) and records readiness.
pub async fn run(agent: Arc<Agent>, opts: InstallOptions, interval: Duration) {
    let opts = Arc::new(opts);
    let mut ticks = tokio::time::interval(interval);
    // A slow pass delays the next one rather than making a burst of them.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = String::new();
    loop {
        ticks.tick().await;
        let job = Arc::clone(&opts);
        let result = tokio::task::spawn_blocking(move || install(&job).map_err(|e| capture_core::chain(&e)))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match &result {
            Ok(report) => {
                if report.binary_changed {
                    tracing::info!(bin_dir = %opts.bin_dir.display(), "CNI plugin binary installed");
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
