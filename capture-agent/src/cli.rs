//! The command line: flags, each with an environment variable, and their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The default `--listen`: a port outside Istio's 15000-15090 (Envoy's admin, outbound,
/// inbound, tunnel, DNS, health and Prometheus ports) and capture's excluded inbound ports.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:15120";

/// capture's node agent: loads the eBPF programs once per node and keeps them (a restart or an
/// upgrade of the agent leaves every pod captured), reclaims pods whose network namespace is
/// gone, serves /metrics, /healthz and /readyz, and optionally installs the CNI plugin.
#[derive(Debug, Parser)]
#[command(name = "capture-agent", version)]
pub struct Args {
    /// The cgroup v2 directory the programs are attached to when they are not loaded yet
    /// (default: the cgroup v2 root); programs already loaded must act on it.
    #[arg(long, env = "CAPTURE_AGENT_CGROUP", value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// The bpf filesystem the programs are pinned in, under capture/.
    #[arg(
        long,
        env = "CAPTURE_AGENT_BPFFS",
        value_name = "DIR",
        default_value = "/sys/fs/bpf"
    )]
    pub bpffs: PathBuf,
    /// Mount a bpf filesystem on --bpffs when none is there (else such a path is refused).
    #[arg(long, env = "CAPTURE_AGENT_MOUNT_BPFFS")]
    pub mount_bpffs: bool,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "CAPTURE_AGENT_LISTEN", value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// A directory where container runtimes pin pods' network namespaces; a deletion there
    /// starts a garbage collection. Repeat it, or separate with commas; missing ones are
    /// watched for.
    #[arg(
        long = "netns-dir",
        env = "CAPTURE_AGENT_NETNS_DIRS",
        value_name = "DIR",
        value_delimiter = ',',
        default_values = ["/run/netns", "/var/run/netns"]
    )]
    pub netns_dirs: Vec<PathBuf>,
    /// How often garbage is collected besides at start and after namespace deletions, in seconds.
    #[arg(long, env = "CAPTURE_AGENT_GC_INTERVAL", value_name = "SECS", default_value = "60", value_parser = positive_secs)]
    pub gc_interval: Duration,
    /// Install the CNI plugin into this CNI configuration directory (off when not given).
    #[arg(long, env = "CAPTURE_AGENT_CNI_CONF_DIR", value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// The CNI binary directory the plugin is copied to.
    #[arg(
        long,
        env = "CAPTURE_AGENT_CNI_BIN_DIR",
        value_name = "DIR",
        default_value = "/opt/cni/bin"
    )]
    pub cni_bin_dir: PathBuf,
    /// The capture-cni binary to copy.
    #[arg(
        long,
        env = "CAPTURE_AGENT_CNI_PLUGIN",
        value_name = "PATH",
        default_value = "/usr/local/bin/capture-cni"
    )]
    pub cni_plugin: PathBuf,
    /// A JSON object merged into the plugin's entry (capture-cni install --plugin-config).
    #[arg(long, env = "CAPTURE_AGENT_CNI_PLUGIN_CONFIG", value_name = "PATH")]
    pub cni_plugin_config: Option<PathBuf>,
    /// Chain into this file of --cni-conf-dir instead of the detected primary configuration.
    #[arg(long, env = "CAPTURE_AGENT_CNI_CONF_FILE", value_name = "NAME")]
    pub cni_conf_file: Option<String>,
    /// Remove istio-cni entries (two capture plugins must not both run); without this or
    /// --cni-allow-istio-cni a configuration with one is refused.
    #[arg(
        long,
        env = "CAPTURE_AGENT_CNI_REMOVE_ISTIO_CNI",
        conflicts_with = "cni_allow_istio_cni"
    )]
    pub cni_remove_istio_cni: bool,
    /// Chain next to an istio-cni entry, with a warning (capture-cni install --allow-istio-cni).
    #[arg(long, env = "CAPTURE_AGENT_CNI_ALLOW_ISTIO_CNI")]
    pub cni_allow_istio_cni: bool,
    /// On SIGTERM/SIGINT leave the CNI plugin installed (for upgrades: the next agent takes
    /// over); by default the entry and the binary are removed.
    #[arg(long, env = "CAPTURE_AGENT_CNI_KEEP_ON_EXIT")]
    pub cni_keep_on_exit: bool,
    /// How often the CNI entry is checked and re-inserted, in seconds.
    #[arg(long, env = "CAPTURE_AGENT_CNI_INTERVAL", value_name = "SECS", default_value = "2", value_parser = positive_secs)]
    pub cni_interval: Duration,
    /// How much each scope logs, as Istio's --log_output_level: a level (error, warn, info,
    /// debug, none) or scope:level pairs (default:info,ebpf:debug). Scopes: default, agent,
    /// ebpf, cni, host (a scope not named follows default).
    #[arg(
        long,
        alias = "log_output_level",
        env = "CAPTURE_AGENT_LOG_LEVEL",
        value_name = "LEVEL",
        default_value = "info",
        value_parser = capture_log::OutputLevel::parse
    )]
    pub log_level: capture_log::OutputLevel,
    /// Write the log (stderr) as one JSON object per line with RFC 3339 times (Istio's
    /// --log_as_json).
    #[arg(long, alias = "log_as_json", env = "CAPTURE_AGENT_LOG_AS_JSON")]
    pub log_json: bool,
}

fn positive_secs(s: &str) -> Result<Duration, String> {
    match s.parse() {
        Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err("not a positive number of seconds".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("capture-agent").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let args = parse(&[]).expect("no flag is required");
        assert_eq!(args.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(args.bpffs, PathBuf::from("/sys/fs/bpf"));
        assert_eq!(
            args.netns_dirs,
            [PathBuf::from("/run/netns"), PathBuf::from("/var/run/netns")]
        );
        assert_eq!(args.gc_interval, Duration::from_secs(60));
        assert!(args.cni_conf_dir.is_none() && !args.mount_bpffs && args.cgroup.is_none());
    }

    #[test]
    fn netns_dirs_repeat_or_split_on_commas() {
        let args = parse(&["--netns-dir", "/a,/b", "--netns-dir", "/c"]).expect("valid");
        assert_eq!(args.netns_dirs, [PathBuf::from("/a"), "/b".into(), "/c".into()]);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = parse(&["--gc-interval", "0"]).expect_err("zero");
        assert!(e.to_string().contains("--gc-interval"), "{e}");
        let e = parse(&["--listen", "15120"]).expect_err("no address");
        assert!(e.to_string().contains("--listen"), "{e}");
        let e = parse(&["--log-level", "loud"]).expect_err("no level");
        assert!(e.to_string().contains("--log-level"), "{e}");
    }
}
