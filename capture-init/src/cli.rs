//! istio-iptables' command line: the same flags, short names, defaults and environment
//! variables, with Istio's precedence (command line > override variable such as
//! `ISTIO_META_DNS_CAPTURE` > the variable named after the flag > default).
//!
//! Longer than 700 lines on purpose: every one of istio-iptables' ~40 flags is declared here
//! with its help text, variable and default, in the order of Istio's help, so the whole
//! command line reads as one table; the parsing logic itself is short.

use std::ffi::{OsStr, OsString};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use capture_core::{
    CaptureSpec, Detected, Field, Flavor, FlavorChoice, Ipv6Mode, IstioConfig, SpecError, Warning,
    parse_resolv_conf,
};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

const ABOUT: &str =
    "Redirect a pod's TCP traffic to its sidecar proxy (drop-in replacement for istio-iptables)";

const LONG_ABOUT: &str = "\
capture-init installs the netfilter rules that send a pod's traffic through its sidecar proxy. \
It takes istio-iptables' flags, environment variables and defaults, and writes the same rules \
byte for byte, so it can replace istio-iptables in an istio-init container unchanged.

Outbound TCP connections from the application are redirected to the proxy's outbound port \
(-p, 15001); inbound connections to the pod go to its inbound port (-z, 15006). Traffic of the \
proxy's own user and group (-u, -g; 1337) is never redirected, so the proxy's upstream \
connections do not loop back into it.

With --dry-run the IPv4 iptables-restore payload is printed, followed by the IPv6 payload when \
IPv6 is on, and nothing on the host is changed (with --cleanup-only: what cleanup would remove). A dry run reads nothing from the host when it \
is given --ipv6 on|off, and --resolv-conf when --redirect-dns is used, except the user and \
group databases: owner names (-u, -g, ISTIO_OUTBOUND_OWNER_GROUPS) must exist there, as \
iptables resolves them when the rules load.

Lists are comma-separated; empty items are ignored (\"15090,,15021\" is \"15090,15021\").";

const AFTER_LONG_HELP: &str = "\
ENVIRONMENT:
  Each flag marked [env: NAME] can be set by that variable; a flag on the command line wins.
  ISTIO_META_DNS_CAPTURE, INVALID_DROP and ISTIO_DUAL_STACK override REDIRECT_DNS, DROP_INVALID
  and DUAL_STACK, as in Istio.
  ISTIO_OUTBOUND_OWNER_GROUPS          groups whose traffic is captured (default *; at most 64)
  ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE  groups never captured (only with the default *)
  ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR    the host loopback range (default 127.0.0.1/32)
  ENVOY_USER                           user whose uid -u defaults to (default istio-proxy, else 1337)

BACKENDS:
  --backend iptables (default) installs netfilter rules in the pod's network namespace.
  --backend ebpf enrolls the pod's network namespace with capture's cgroup socket programs
  instead (no NAT): the programs are loaded once per node, attached to a cgroup v2 directory
  (--cgroup, default the cgroup v2 root) and pinned on a bpf filesystem (--bpffs, default
  /sys/fs/bpf, mounted if it is not one), first if they are not there yet. Running again with
  the same flags changes nothing; with other flags it replaces the pod's configuration
  atomically; --cleanup-only unenrolls the pod; --dry-run prints the map entries it would
  write. Flags the eBPF backend cannot honour yet (-c, -k, INVALID_DROP) are refused.
  Status (which backend holds capture here, drift from the flags given; see capture-init status --help):
    capture-init status [--network-namespace PATH] [--output text|json] [RUN FLAGS]
  Node commands:
    capture-init ebpf load   [--cgroup PATH] [--bpffs PATH] [--sk-msg]
                                                            load, attach and pin the programs
    capture-init ebpf unload [--bpffs PATH]                   detach and unpin them (no pod is captured)
    capture-init ebpf pods   [--bpffs PATH]                   list enrolled pods and their configuration

EXPLAIN:
  capture-init explain <these flags> --dst ADDR:PORT [--direction inbound] [--uid N] ...
  says which rule decides one connection and where it lands (see capture-init explain --help).

EXIT STATUS:
  0    success
  1    invalid input, or the rules could not be applied (nothing is left half-applied)
  126  --run-validation found that redirection does not work

EXAMPLES:
  The rules Istio's injector asks for, printed rather than applied:
    capture-init -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x \"\" -b '*' -d 15090,15021,15020 --dry-run --ipv6 off";

/// Which backend installs the capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Netfilter rules, applied with iptables-restore (istio-iptables' way).
    Iptables,
    /// Capture's cgroup socket programs; the pod's network namespace is enrolled (needs a build
    /// with the `ebpf` feature and Linux 5.15).
    Ebpf,
}

/// The default `--bpffs`.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// `--ipv6`: capture-core's [`Ipv6Mode`] under istio-iptables' names, where `auto` is Istio's
/// first-address rule.
const IPV6_MODES: Choice<Ipv6Mode> = Choice(&[
    (
        "auto",
        Ipv6Mode::FirstAddress,
        "Decide as istio-iptables does: from the pod's first usable address (any IPv6 address with --dual-stack)",
    ),
    ("on", Ipv6Mode::On, "Install IPv6 rules"),
    ("off", Ipv6Mode::Off, "Install IPv4 rules only"),
]);

/// `--force-iptables-version`: capture-core's [`Flavor`] by its name.
const FLAVORS: Choice<Flavor> = Choice(&[
    ("legacy", Flavor::Legacy, "iptables-legacy (x_tables)"),
    ("nft", Flavor::Nft, "iptables-nft (nf_tables)"),
]);

/// A flag taking one of capture-core's named values: each name it accepts, the value it stands
/// for, and the name's line in `--help`.
#[derive(Debug, Clone, Copy)]
struct Choice<T: 'static>(&'static [(&'static str, T, &'static str)]);

impl<T: Copy + Send + Sync + 'static> TypedValueParser for Choice<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let name = PossibleValuesParser::new(self.possible_values().into_iter().flatten())
            .parse_ref(cmd, arg, value)?;
        let &(_, value, _) = self
            .0
            .iter()
            .find(|(listed, ..)| *listed == name)
            .expect("PossibleValuesParser accepts only the names listed");
        Ok(value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            self.0
                .iter()
                .map(|&(name, _, help)| PossibleValue::new(name).help(help)),
        ))
    }
}

/// `--force-iptables-binary`: Istio's values, `""` (detect), `legacy`, `nft`.
fn iptables_binary(s: &str) -> Result<FlavorChoice, String> {
    match s {
        "" => Ok(FlavorChoice::Auto),
        _ => s
            .parse()
            .map(FlavorChoice::Force)
            .map_err(|_| "not \"\" (detect), legacy or nft".to_owned()),
    }
}

impl Args {
    /// The iptables flavour the flags force, if any: `--force-iptables-binary`, else its older
    /// name `--force-iptables-version`.
    pub fn forced_flavor(&self) -> Option<Flavor> {
        match self.force_iptables_binary {
            Some(choice) => choice.forced(),
            None => self.force_iptables_version,
        }
    }
}

/// Parses Go's strconv.ParseBool spellings.
fn go_bool(s: &str) -> Result<bool, String> {
    capture_log::parse_go_bool(s)
}

/// `#[arg(go_bool = true)]`: a boolean flag as Go's flag package has it (and so istio-iptables):
/// `--flag` alone is true, a value must be attached (`--flag=false`) in any of
/// strconv.ParseBool's spellings, and an unset flag is false.
trait GoBool {
    /// Makes the flag a Go boolean when `yes`.
    fn go_bool(self, yes: bool) -> Self;
}

impl GoBool for clap::Arg {
    fn go_bool(self, yes: bool) -> Self {
        if !yes {
            return self;
        }
        self.value_name("BOOL")
            .num_args(0..=1)
            .require_equals(true)
            .default_value("false")
            .default_missing_value("true")
            .value_parser(go_bool)
            .hide_default_value(true)
    }
}

/// Parses a Go duration: `300ms`, `5s`, `1m30s`, `1.5h`.
fn go_duration(s: &str) -> Result<Duration, String> {
    const BAD: &str = "not a duration (such as 5s, 500ms or 1m30s)";
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(BAD.into());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or(BAD)?;
        let value: f64 = rest[..number_len].parse().map_err(|_| BAD)?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(BAD.into()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| BAD.into())
}

/// The command line, flag for flag with istio-iptables.
#[derive(Debug, Clone, Parser)]
#[command(name = "capture-init", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
#[command(max_term_width = 100, args_override_self = true)]
pub struct Args {
    /// Port the proxy receives captured outbound traffic on.
    #[arg(
        allow_hyphen_values = true,
        short = 'p',
        long = "envoy-port",
        value_name = "PORT",
        default_value = "15001",
        help_heading = "Proxy"
    )]
    pub envoy_port: String,
    /// Port the proxy receives captured inbound traffic on.
    #[arg(
        allow_hyphen_values = true,
        short = 'z',
        long,
        env = "INBOUND_CAPTURE_PORT",
        value_name = "PORT",
        default_value = "15006",
        help_heading = "Proxy"
    )]
    pub inbound_capture_port: String,
    /// Tunnel (HBONE) port; inbound traffic to it is never captured.
    #[arg(
        allow_hyphen_values = true,
        short = 'e',
        long,
        env = "INBOUND_TUNNEL_PORT",
        value_name = "PORT",
        default_value = "15008",
        help_heading = "Proxy"
    )]
    pub inbound_tunnel_port: String,
    /// Users whose traffic is never captured (comma list of uids or names). Default: the uid of
    /// $ENVOY_USER (istio-proxy), or 1337.
    #[arg(
        allow_hyphen_values = true,
        short = 'u',
        long,
        env = "PROXY_UID",
        value_name = "UIDS",
        default_value = "",
        hide_default_value = true,
        help_heading = "Proxy"
    )]
    pub proxy_uid: String,
    /// Groups whose traffic is never captured (comma list of gids or names). Default: the same
    /// list as --proxy-uid, as in Istio, so a user name there must also be a group name.
    #[arg(
        allow_hyphen_values = true,
        short = 'g',
        long,
        env = "PROXY_GID",
        value_name = "GIDS",
        default_value = "",
        hide_default_value = true,
        help_heading = "Proxy"
    )]
    pub proxy_gid: String,

    /// How inbound traffic is captured: REDIRECT (nat) or TPROXY (mangle, keeps the client's
    /// address). Anything else is treated as REDIRECT, with a warning.
    #[arg(
        allow_hyphen_values = true,
        short = 'm',
        long = "istio-inbound-interception-mode",
        env = "ISTIO_INBOUND_INTERCEPTION_MODE",
        value_name = "MODE",
        default_value = "",
        hide_default_value = true,
        help_heading = "Inbound"
    )]
    pub interception_mode: String,
    /// Inbound ports to capture: '*' for all, or a list. Empty: no inbound capture.
    #[arg(
        allow_hyphen_values = true,
        short = 'b',
        long = "istio-inbound-ports",
        env = "ISTIO_INBOUND_PORTS",
        value_name = "PORTS",
        default_value = "",
        hide_default_value = true,
        help_heading = "Inbound"
    )]
    pub inbound_ports: String,
    /// Inbound ports never captured; only used with -b '*'.
    #[arg(
        allow_hyphen_values = true,
        short = 'd',
        long = "istio-local-exclude-ports",
        env = "ISTIO_LOCAL_EXCLUDE_PORTS",
        value_name = "PORTS",
        default_value = "",
        hide_default_value = true,
        help_heading = "Inbound"
    )]
    pub local_exclude_ports: String,
    /// Firewall mark of TPROXY-diverted packets.
    #[arg(
        allow_hyphen_values = true,
        short = 't',
        long = "istio-inbound-tproxy-mark",
        env = "ISTIO_INBOUND_TPROXY_MARK",
        value_name = "MARK",
        default_value = "1337",
        help_heading = "Inbound"
    )]
    pub tproxy_mark: String,
    /// Policy-routing table of TPROXY-diverted packets.
    #[arg(
        allow_hyphen_values = true,
        short = 'r',
        long = "istio-inbound-tproxy-route-table",
        env = "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
        value_name = "TABLE",
        default_value = "133",
        help_heading = "Inbound"
    )]
    pub tproxy_route_table: String,

    /// Outbound destinations to capture: '*' for all, or a list of CIDRs. Empty: none by address.
    #[arg(
        allow_hyphen_values = true,
        short = 'i',
        long = "istio-service-cidr",
        env = "ISTIO_SERVICE_CIDR",
        value_name = "CIDRS",
        default_value = "",
        hide_default_value = true,
        help_heading = "Outbound"
    )]
    pub service_cidr: String,
    /// Outbound destinations never captured (CIDRs; '*' is refused).
    #[arg(
        allow_hyphen_values = true,
        short = 'x',
        long = "istio-service-exclude-cidr",
        env = "ISTIO_SERVICE_EXCLUDE_CIDR",
        value_name = "CIDRS",
        default_value = "",
        hide_default_value = true,
        help_heading = "Outbound"
    )]
    pub service_exclude_cidr: String,
    /// Outbound TCP ports always captured, whatever the destination address.
    #[arg(
        allow_hyphen_values = true,
        short = 'q',
        long = "istio-outbound-ports",
        env = "ISTIO_OUTBOUND_PORTS",
        value_name = "PORTS",
        default_value = "",
        hide_default_value = true,
        help_heading = "Outbound"
    )]
    pub outbound_ports: String,
    /// Outbound TCP and UDP ports never captured.
    #[arg(
        allow_hyphen_values = true,
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        env = "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
        value_name = "PORTS",
        default_value = "",
        hide_default_value = true,
        help_heading = "Outbound"
    )]
    pub local_outbound_ports_exclude: String,
    /// Interfaces whose traffic is never captured, in either direction.
    #[arg(
        allow_hyphen_values = true,
        short = 'c',
        long = "istio-exclude-interfaces",
        env = "ISTIO_EXCLUDE_INTERFACES",
        value_name = "IFACES",
        default_value = "",
        hide_default_value = true,
        help_heading = "Outbound"
    )]
    pub exclude_interfaces: String,
    /// Virtual interfaces (KubeVirt) whose incoming traffic is captured as outbound.
    #[arg(
        allow_hyphen_values = true,
        short = 'k',
        long = "kube-virt-interfaces",
        env = "KUBE_VIRT_INTERFACES",
        value_name = "IFACES",
        default_value = "",
        hide_default_value = true,
        help_heading = "Outbound"
    )]
    pub kube_virt_interfaces: String,

    /// Capture DNS to the agent's resolver on port 15053 (only the pod's nameservers unless
    /// --capture-all-dns). Overridden by ISTIO_META_DNS_CAPTURE.
    #[arg(long, env = "REDIRECT_DNS", go_bool = true, help_heading = "DNS")]
    pub redirect_dns: bool,
    /// With --redirect-dns, capture all port-53 traffic, whatever the server.
    #[arg(long, env = "CAPTURE_ALL_DNS", go_bool = true, help_heading = "DNS")]
    pub capture_all_dns: bool,
    /// resolv.conf to read nameservers from for --redirect-dns.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/resolv.conf",
        help_heading = "DNS"
    )]
    pub resolv_conf: PathBuf,

    /// Drop packets conntrack considers INVALID. Overridden by INVALID_DROP.
    #[arg(
        long,
        env = "DROP_INVALID",
        go_bool = true,
        help_heading = "Families and options"
    )]
    pub drop_invalid: bool,
    /// With --ipv6 auto, turn IPv6 on when the pod has any IPv6 address. Overridden by
    /// ISTIO_DUAL_STACK.
    #[arg(
        long,
        env = "DUAL_STACK",
        go_bool = true,
        help_heading = "Families and options"
    )]
    pub dual_stack: bool,
    /// Install IPv6 rules: auto (detect from the pod's addresses, as Istio), on or off.
    #[arg(
        long,
        value_parser = IPV6_MODES,
        default_value = "auto",
        help_heading = "Families and options"
    )]
    pub ipv6: Ipv6Mode,

    /// Print the iptables-restore payloads instead of applying them; change nothing.
    #[arg(
        allow_hyphen_values = true,
        short = 'n',
        long,
        env = "DRY_RUN",
        go_bool = true,
        help_heading = "Operation"
    )]
    pub dry_run: bool,
    /// Remove everything capture wrote in the namespace (rules of either iptables flavour, TPROXY
    /// routing, ::6), whatever flags wrote it, and nothing else. With --dry-run, print what it
    /// would remove, read from the namespace, and change nothing: the iptables-restore payloads
    /// it would run (native nftables: the tables it would delete; eBPF: the pod's map entries),
    /// with `#` lines for the routing and ::6.
    #[arg(long, env = "CLEANUP_ONLY", go_bool = true, help_heading = "Operation")]
    pub cleanup_only: bool,
    /// Replace existing capture rules that differ from this configuration.
    #[arg(long, env = "RECONCILE", go_bool = true, help_heading = "Operation")]
    pub reconcile: bool,
    /// Fail, changing nothing, when foreign rules ahead of capture's can end a packet's
    /// traversal (so it would not be captured) or capture's chains are also in the other iptables
    /// flavour; without it these are warnings.
    #[arg(long, env = "CAPTURE_STRICT", go_bool = true, help_heading = "Operation")]
    pub strict: bool,
    /// Apply even when the rules already look right (fails if the chains exist).
    #[arg(long, env = "FORCE_APPLY", go_bool = true, help_heading = "Operation")]
    pub force_apply: bool,
    /// Use iptables-legacy (legacy) or iptables-nft (nft) instead of detecting which one the
    /// pod and the node use; "" detects (Istio's flag).
    #[arg(
        long,
        env = "FORCE_IPTABLES_BINARY",
        value_name = "legacy|nft",
        value_parser = iptables_binary,
        help_heading = "Operation"
    )]
    pub force_iptables_binary: Option<FlavorChoice>,
    /// The older name of --force-iptables-binary (legacy or nft); the newer wins when both
    /// are given.
    #[arg(long, env = "FORCE_IPTABLES_VERSION", value_parser = FLAVORS, help_heading = "Operation")]
    pub force_iptables_version: Option<Flavor>,
    /// Istio's native nftables rules (tables istio-proxy-nat, -mangle, -raw) instead of
    /// iptables; wins over --force-iptables-binary. Printing them (--dry-run) works; applying
    /// is not built yet.
    #[arg(long, env = "NATIVE_NFTABLES", go_bool = true, help_heading = "Operation")]
    pub native_nftables: bool,
    /// Network namespace the rules are for (CNI mode).
    #[arg(
        long,
        env = "NETWORK_NAMESPACE",
        value_name = "PATH",
        help_heading = "Operation"
    )]
    pub network_namespace: Option<PathBuf>,
    /// Running from the CNI plugin: use a pod-scoped xtables lock.
    #[arg(long, env = "CNI_MODE", go_bool = true, help_heading = "Operation")]
    pub cni_mode: bool,

    /// After applying (or instead, with --skip-rule-apply), prove that redirection works; exit
    /// 126 if it does not.
    #[arg(long, env = "RUN_VALIDATION", go_bool = true, help_heading = "Validation")]
    pub run_validation: bool,
    /// Do not install rules (with --run-validation: only validate).
    #[arg(long, env = "SKIP_RULE_APPLY", go_bool = true, help_heading = "Validation")]
    pub skip_rule_apply: bool,
    /// Original destination port the validation probe connects to.
    #[arg(
        long,
        env = "IPTABLES_PROBE_PORT",
        value_name = "PORT",
        default_value = "15002",
        help_heading = "Validation"
    )]
    pub iptables_probe_port: String,
    /// How long validation may take (Go duration: 5s, 500ms).
    #[arg(long, env = "PROBE_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = go_duration, help_heading = "Validation")]
    pub probe_timeout: Duration,

    /// How the capture is installed: iptables (netfilter rules) or ebpf (cgroup socket programs,
    /// no NAT).
    #[arg(
        long,
        env = "CAPTURE_BACKEND",
        value_enum,
        default_value = "iptables",
        help_heading = "Backend"
    )]
    pub backend: Backend,
    /// eBPF: the cgroup v2 directory the programs are attached to when they are not loaded yet.
    /// Default: the cgroup v2 root (from /proc/self/mounts).
    #[arg(long, value_name = "PATH", help_heading = "Backend")]
    pub cgroup: Option<PathBuf>,
    /// eBPF: the bpf filesystem the programs are pinned in (under capture/). Default:
    /// /sys/fs/bpf.
    #[arg(long, value_name = "PATH", help_heading = "Backend")]
    pub bpffs: Option<PathBuf>,
    /// eBPF: mount a bpf filesystem on --bpffs when none is there. Without it a path that is not
    /// a bpffs is refused, so a typo never starts a second set of programs.
    #[arg(long, help_heading = "Backend")]
    pub mount_bpffs: bool,

    /// How much each scope logs, as pilot-agent's flag: scope:level pairs, comma-separated
    /// (default:info, default:debug,ebpf:warn, all:none). Levels: none, error, warn, info,
    /// debug. Scopes: default, iptables, nftables, host, ebpf (a scope not named follows
    /// default). Debug shows every decision: the iptables flavour and why, IPv6 and why, the
    /// state found, what was changed.
    #[arg(long = "log_output_level", env = "LOG_OUTPUT_LEVEL", value_name = "SCOPE:LEVEL,...", value_parser = capture_log::OutputLevel::parse, help_heading = "Logging")]
    pub log_output_level: Option<capture_log::OutputLevel>,
    /// Write the log (stderr) as one JSON object per line, with RFC 3339 times, as pilot-agent's
    /// flag does.
    #[arg(long = "log_as_json", env = "LOG_AS_JSON", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool, help_heading = "Logging")]
    pub log_as_json: bool,

    /// Every setting with its value and where it came from (filled in by [`parse`]).
    #[arg(skip)]
    pub settings: Vec<Setting>,
}

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The command line.
    CommandLine,
    /// This environment variable.
    Env(String),
    /// The default.
    Default,
}

/// One setting of a run, for the log of the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The flag (`--envoy-port`), or the variable for settings that only have one.
    pub name: String,
    /// Its value as given (lists as one comma-separated string).
    pub value: String,
    /// Where it came from.
    pub source: Source,
}

/// Every flag's value and source, read from clap's matches before the values are moved out;
/// flags with no value and no default (unset paths) are left out.
fn settings(command: &clap::Command, matches: &ArgMatches) -> Vec<Setting> {
    command
        .get_arguments()
        .filter_map(|arg| {
            let id = arg.get_id().as_str();
            let source = match matches.value_source(id)? {
                ValueSource::CommandLine => Source::CommandLine,
                ValueSource::EnvVariable => Source::Env(
                    arg.get_env()
                        .map(|v| v.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                _ => Source::Default,
            };
            let value = matches
                .get_raw(id)?
                .map(|v| v.to_string_lossy())
                .collect::<Vec<_>>()
                .join(",");
            let name = arg.get_long().map_or_else(|| id.to_owned(), |l| format!("--{l}"));
            Some(Setting { name, value, source })
        })
        .filter(|s| s.name != "--help" && s.name != "--version")
        .collect()
}

/// The variables read with no flag of their own, as settings.
fn env_only_settings() -> impl Iterator<Item = Setting> {
    [
        ("ISTIO_OUTBOUND_OWNER_GROUPS", "*"),
        ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", ""),
        ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/32"),
        ("ENVOY_USER", "istio-proxy"),
    ]
    .into_iter()
    .map(|(var, default)| match std::env::var(var) {
        Ok(value) if !value.is_empty() => Setting {
            name: var.to_owned(),
            value,
            source: Source::Env(var.to_owned()),
        },
        _ => Setting {
            name: var.to_owned(),
            value: default.to_owned(),
            source: Source::Default,
        },
    })
}

/// How a run that failed before its flags were read logs: JSON when `--log_as_json` (or
/// `LOG_AS_JSON`) asks for it, and at the levels of a readable `--log_output_level` (or
/// `LOG_OUTPUT_LEVEL`), whatever else is wrong with the command line.
pub fn early_log_config(argv: &[OsString]) -> capture_log::Config {
    capture_log::Config::from_argv(
        argv,
        quiet_unless_asked(argv.get(1).is_some_and(|a| a == "status" || a == "explain")),
    )
}

/// The levels of a run whose output is its answer (a dry run's payload, `status`, `explain`):
/// unless asked, its log says only what is wrong.
fn quiet_unless_asked(quiet: bool) -> capture_log::Levels {
    if quiet {
        capture_log::Levels::all(capture_log::LevelFilter::WARN)
    } else {
        capture_log::Levels::default()
    }
}

impl Args {
    /// The logging these flags ask for.
    pub fn log_config(&self) -> capture_log::Config {
        capture_log::Config {
            format: capture_log::Format::json(self.log_as_json),
            levels: match &self.log_output_level {
                Some(l) => l.levels.clone(),
                None => quiet_unless_asked(self.dry_run),
            },
            file: None,
        }
    }
}

/// `capture-init ebpf …`: the eBPF backend's node-level commands.
#[derive(Debug, Parser)]
#[command(
    name = "ebpf",
    bin_name = "capture-init ebpf",
    about = "Load, unload and inspect the eBPF backend's programs on this node",
    max_term_width = 100
)]
pub struct NodeArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: NodeCommand,
}

/// A node-level command of the eBPF backend.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Load capture's programs, attach them to a cgroup v2 directory and pin them; nothing
    /// changes when they are loaded already.
    Load {
        /// The cgroup v2 directory to attach to. Default: the cgroup v2 root.
        #[arg(long, value_name = "PATH")]
        cgroup: Option<PathBuf>,
        /// The bpf filesystem to pin in (under capture/).
        #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// Mount a bpf filesystem on --bpffs when none is there (else such a path is refused).
        #[arg(long)]
        mount_bpffs: bool,
        /// Splicing of connections between an enrolled pod's app and its proxy.
        #[command(flatten)]
        sk_msg: SkMsgFlags,
    },
    /// Replace the loaded programs with this capture-init's on their existing attachments
    /// (BPF_LINK_UPDATE), keeping every pod enrolled and captured; nothing changes when they
    /// are this capture-init's already.
    Upgrade {
        /// The cgroup v2 directory the programs must act on. Default: the cgroup v2 root.
        #[arg(long, value_name = "PATH")]
        cgroup: Option<PathBuf>,
        /// The bpf filesystem the programs are pinned in.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// Replace the programs even when they are this capture-init's (rehearses an upgrade).
        #[arg(long)]
        always: bool,
        /// Splicing of connections between an enrolled pod's app and its proxy (kept as it is
        /// unless given).
        #[command(flatten)]
        sk_msg: SkMsgFlags,
    },
    /// Detach and unpin the programs: no pod's connections are captured any more.
    Unload {
        /// The bpf filesystem the programs are pinned in.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Unenroll the pods whose network namespace is gone (deleted without --cleanup-only or
    /// CNI DEL), freeing their map entries; the node agent does this by itself.
    Gc {
        /// The bpf filesystem the programs are pinned in.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Print the programs' counters (connections captured, passed, refused; map use) and each
    /// program's runs and run time (counted while kernel.bpf_stats_enabled is 1).
    Stats {
        /// The bpf filesystem the programs are pinned in.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// List the enrolled pods (by network namespace cookie) with the map entries of each.
    Pods {
        /// The bpf filesystem the programs are pinned in.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
}

/// `--sk-msg` / `--no-sk-msg` of `capture-init ebpf load|upgrade`: the node's setting, kept as
/// it is when neither is given (off on a node loaded afresh).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct SkMsgFlags {
    /// Splice connections between an enrolled pod's app and its proxy (and the proxy and its
    /// app) with an sk_msg program: bytes go socket to socket, skipping the loopback TCP stack.
    /// Applies to connections established from now on.
    #[arg(long, overrides_with = "no_sk_msg")]
    pub sk_msg: bool,
    /// Stop splicing new connections (those spliced already stay so until they close).
    #[arg(long, overrides_with = "sk_msg")]
    pub no_sk_msg: bool,
}

/// A command-line problem, printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// clap rejected the arguments (its message's first line, without clap's `error: `).
    #[error("{}", first_line(.0))]
    Usage(Box<clap::Error>),
    /// A command was expected after a command group's name.
    #[error("{group} needs a command: {}", commands.join(", "))]
    NeedsCommand {
        /// The group (`capture-init ebpf`).
        group: String,
        /// Its commands.
        commands: Vec<String>,
    },
    /// An eBPF flag with another backend.
    #[error("{flag} only applies to --backend ebpf")]
    EbpfOnly {
        /// The flag.
        flag: &'static str,
    },
    /// A value that parses but is not acceptable.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// An override variable that is not a boolean.
    #[error("invalid value {value:?} for {var}: not a boolean (true or false)")]
    EnvBool {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// A file that had to be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// IPv6 detection found nothing to decide from.
    #[error("{0}; pass --ipv6 on or --ipv6 off")]
    Detect(capture_core::istio::NoUsableAddress),
    /// The pod's addresses could not be listed.
    #[error("cannot list the pod's addresses: {0}")]
    Addresses(nix::Error),
    /// A flag that must be given.
    #[error("{flag} is required: {what}")]
    Missing {
        /// The flag.
        flag: &'static str,
        /// What it gives.
        what: &'static str,
    },
    /// Requested behaviour that this build does not have.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A `capture-init status` flag without its value.
    #[error("{flag} needs a value")]
    StatusValue {
        /// The flag.
        flag: &'static str,
    },
    /// `capture-init status --output` other than text or json.
    #[error("invalid value {value:?} for --output: not one of text, json")]
    StatusOutput {
        /// The value given.
        value: String,
    },
}

/// The detection's message is part of the line (with the flag that decides instead), not a
/// cause of it.
impl From<capture_core::istio::NoUsableAddress> for CliError {
    fn from(e: capture_core::istio::NoUsableAddress) -> Self {
        Self::Detect(e)
    }
}

/// What the command line asks for, fully resolved.
#[derive(Debug)]
pub struct Invocation {
    /// The parsed flags.
    pub args: Args,
    /// The capture to install.
    pub spec: CaptureSpec,
    /// Things accepted but probably not meant.
    pub warnings: Vec<Warning>,
}

/// Result of reading the command line: run, or print help/version and exit 0.
#[derive(Debug)]
pub enum Parsed {
    /// Go ahead.
    Run(Box<Args>),
    /// `capture-init ebpf …`.
    Node(NodeArgs),
    /// `capture-init status …`.
    Status(Box<crate::status::StatusArgs>),
    /// `capture-init explain …`.
    Explain(Box<crate::explain::ExplainArgs>),
    /// `--help` or `--version`: print this and exit 0.
    Info(String),
}

/// Reads argv and the environment into flags, applying Istio's precedence. Reads nothing else.
///
/// # Errors
/// A [`CliError`] naming the bad flag (or variable) and value.
pub fn parse<I, T>(argv: I) -> Result<Parsed, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    // pilot-agent runs it as a subcommand: `pilot-agent istio-iptables …`.
    if argv.get(1).is_some_and(|a| a == "istio-iptables") {
        argv.remove(1);
    }
    // `capture-init status …`: its own flags, and a run's for the configuration to compare.
    if argv.get(1).is_some_and(|a| a == "status") {
        argv.remove(1);
        return crate::status::parse(argv);
    }
    // The node commands: `capture-init ebpf load|unload|pods`. istio-iptables takes no
    // positional arguments, so the word cannot be anything else.
    if argv.get(1).is_some_and(|a| a == "ebpf") {
        argv.remove(1);
        if let Some(name) = argv.first_mut() {
            *name = "capture-init ebpf".into();
        }
        let matches = match clap_matches(&mut NodeArgs::command(), argv)? {
            Ok(m) => m,
            Err(info) => return Ok(Parsed::Info(info)),
        };
        let node = NodeArgs::from_arg_matches(&matches).map_err(|e| CliError::Usage(Box::new(e)))?;
        require_ebpf_build()?;
        return Ok(Parsed::Node(node));
    }
    // `capture-init explain <a run's flags> <a connection>`: the word cannot be anything else
    // either.
    if argv.get(1).is_some_and(|a| a == "explain") {
        argv.remove(1);
        if let Some(name) = argv.first_mut() {
            *name = "capture-init explain".into();
        }
        let mut matches = match clap_matches(&mut crate::explain::ExplainArgs::command(), argv)? {
            Ok(m) => m,
            Err(info) => return Ok(Parsed::Info(info)),
        };
        let given = overridable_given(&matches);
        let mut explain = crate::explain::ExplainArgs::from_arg_matches_mut(&mut matches)
            .map_err(|e| CliError::Usage(Box::new(e)))?;
        apply_overrides(given, &mut explain.run)?;
        if explain.dst.is_none() {
            return Err(CliError::Missing {
                flag: "--dst",
                what: "the connection's destination ADDR:PORT",
            });
        }
        if explain.run.backend == Backend::Ebpf {
            require_ebpf_build()?;
        }
        return Ok(Parsed::Explain(Box::new(explain)));
    }
    // One command for the parse and the settings: building it is most of the parse.
    let mut command = Args::command();
    let mut matches = match clap_matches(&mut command, argv)? {
        Ok(m) => m,
        Err(info) => return Ok(Parsed::Info(info)),
    };
    // Where the overridable flags came from, read before their values are moved out (`_mut`
    // spares a copy of every match).
    let given = overridable_given(&matches);
    let settings = settings(&command, &matches);
    let mut args = Args::from_arg_matches_mut(&mut matches).map_err(|e| CliError::Usage(Box::new(e)))?;
    args.settings = settings;
    apply_overrides(given, &mut args)?;
    args.settings.extend(env_only_settings());
    match args.backend {
        Backend::Ebpf => require_ebpf_build()?,
        Backend::Iptables => {
            for (given, flag) in [
                (args.cgroup.is_some(), "--cgroup"),
                (args.bpffs.is_some(), "--bpffs"),
                (args.mount_bpffs, "--mount-bpffs"),
            ] {
                if given {
                    return Err(CliError::EbpfOnly { flag });
                }
            }
        }
    }
    let probe_port = &args.iptables_probe_port;
    probe_port
        .parse::<capture_core::Port>()
        .map_err(|reason| SpecError::new(Field::ProbePort, probe_port, reason))?;
    Ok(Parsed::Run(Box::new(args)))
}

/// Whether `--redirect-dns`, `--drop-invalid` and `--dual-stack` were on the command line,
/// where Istio's override variables do not apply.
fn overridable_given(matches: &ArgMatches) -> [bool; 3] {
    ["redirect_dns", "drop_invalid", "dual_stack"]
        .map(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
}

/// Istio's override variables (`ISTIO_META_DNS_CAPTURE`, `INVALID_DROP`, `ISTIO_DUAL_STACK`);
/// a setting a variable decided is marked as coming from it.
fn apply_overrides([dns, invalid, dual]: [bool; 3], args: &mut Args) -> Result<(), CliError> {
    let decided = [
        (
            apply_override(dns, "ISTIO_META_DNS_CAPTURE", &mut args.redirect_dns)?,
            "ISTIO_META_DNS_CAPTURE",
            "--redirect-dns",
            args.redirect_dns,
        ),
        (
            apply_override(invalid, "INVALID_DROP", &mut args.drop_invalid)?,
            "INVALID_DROP",
            "--drop-invalid",
            args.drop_invalid,
        ),
        (
            apply_override(dual, "ISTIO_DUAL_STACK", &mut args.dual_stack)?,
            "ISTIO_DUAL_STACK",
            "--dual-stack",
            args.dual_stack,
        ),
    ];
    for (by_var, var, flag, value) in decided {
        if by_var && let Some(setting) = args.settings.iter_mut().find(|s| s.name == flag) {
            setting.value = value.to_string();
            setting.source = Source::Env(var.to_owned());
        }
    }
    Ok(())
}

/// Runs clap: the matches, or the help or version text to print (`Ok(Err(text))`).
fn clap_matches(
    command: &mut clap::Command,
    argv: Vec<OsString>,
) -> Result<Result<ArgMatches, String>, CliError> {
    let name = command.get_name().to_owned();
    let commands: Vec<String> = command
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .filter(|c| c != "help")
        .collect();
    match command.try_get_matches_from_mut(argv) {
        Ok(m) => Ok(Ok(m)),
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            Ok(Err(e.render().to_string()))
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            Err(CliError::NeedsCommand {
                group: name,
                commands,
            })
        }
        Err(e) => Err(CliError::Usage(Box::new(e))),
    }
}

/// clap's message as one line, without its `error: `. A refused value is said as the run's
/// own checks say it (`invalid value "on\nfoo" for --ipv6: not one of auto, on, off`): the
/// value escaped, so a newline in it cannot cut the line, and the flag without its placeholder.
fn first_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation)
        && let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg)
        && let Some(ContextValue::String(value)) = e.get(ContextKind::InvalidValue)
    {
        // `--ipv6 <IPV6>`, `--run-validation[=<BOOL>]`: the flag is the first word.
        let flag = arg.split([' ', '[', '=']).next().unwrap_or(arg);
        let reason = match (e.get(ContextKind::ValidValue), std::error::Error::source(e)) {
            (Some(ContextValue::Strings(valid)), _) => format!("not one of {}", valid.join(", ")),
            (_, Some(cause)) => cause.to_string(),
            _ => "not accepted".to_owned(),
        };
        return format!("invalid value {value:?} for {flag}: {reason}");
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").to_owned()
}

/// Why a build without the `ebpf` feature refuses `--backend ebpf` and `capture-init ebpf`.
pub const NO_EBPF: &str = "this capture-init was built without the eBPF backend; build it with `cargo build -p capture-init --features ebpf` (the toolchain comes from scripts/setup)";

/// The eBPF backend is compiled in only with the `ebpf` feature.
fn require_ebpf_build() -> Result<(), CliError> {
    if cfg!(feature = "ebpf") {
        Ok(())
    } else {
        Err(CliError::Unsupported(NO_EBPF))
    }
}

/// Completes the flags with what Istio detects from the pod (run inside the pod's network
/// namespace) and builds the capture.
///
/// # Errors
/// A [`CliError`] naming the bad flag and value, or what could not be detected.
pub fn resolve(args: Args) -> Result<Invocation, CliError> {
    let cfg = istio_config(&args)?;
    let (detected, resolv_warnings) = detect(&args)?;
    let (spec, mut warnings) = cfg.to_spec(&detected)?;
    warnings.extend(resolv_warnings);
    Ok(Invocation { args, spec, warnings })
}

/// Istio's override variables win over the flag's own variable, but not over the command line.
/// Returns whether the variable decided.
fn apply_override(on_command_line: bool, var: &'static str, value: &mut bool) -> Result<bool, CliError> {
    if on_command_line {
        return Ok(false);
    }
    match std::env::var(var) {
        Ok(text) if !text.is_empty() => {
            *value = go_bool(&text).map_err(|_| CliError::EnvBool { var, value: text })?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The flags as istio-iptables' configuration. Owner names are checked with the rest, by
/// `IstioConfig::to_spec`, against the databases iptables resolves them in.
fn istio_config(args: &Args) -> Result<IstioConfig, CliError> {
    let proxy_uid = if args.proxy_uid.is_empty() {
        default_proxy_uid()
    } else {
        args.proxy_uid.clone()
    };
    Ok(IstioConfig {
        envoy_port: args.envoy_port.clone(),
        inbound_capture_port: args.inbound_capture_port.clone(),
        inbound_tunnel_port: args.inbound_tunnel_port.clone(),
        proxy_uid,
        proxy_gid: args.proxy_gid.clone(),
        interception_mode: args.interception_mode.clone(),
        inbound_ports: args.inbound_ports.clone(),
        local_exclude_ports: args.local_exclude_ports.clone(),
        exclude_interfaces: args.exclude_interfaces.clone(),
        service_cidr: args.service_cidr.clone(),
        service_exclude_cidr: args.service_exclude_cidr.clone(),
        outbound_ports: args.outbound_ports.clone(),
        local_outbound_ports_exclude: args.local_outbound_ports_exclude.clone(),
        kube_virt_interfaces: args.kube_virt_interfaces.clone(),
        tproxy_mark: args.tproxy_mark.clone(),
        tproxy_route_table: args.tproxy_route_table.clone(),
        redirect_dns: args.redirect_dns,
        capture_all_dns: args.capture_all_dns,
        drop_invalid: args.drop_invalid,
        owner_groups_include: env_or("ISTIO_OUTBOUND_OWNER_GROUPS", "*"),
        owner_groups_exclude: env_or("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", ""),
        ipv4_loopback_cidr: env_or("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/32"),
    })
}

/// istio-iptables' default proxy uid: the uid of $ENVOY_USER, or 1337 if there is no such user.
fn default_proxy_uid() -> String {
    let user = env_or("ENVOY_USER", "istio-proxy");
    match nix::unistd::User::from_name(&user) {
        Ok(Some(u)) => u.uid.to_string(),
        _ => "1337".to_owned(),
    }
}

/// What Istio learns from the pod: the IP families and, for DNS capture, the nameservers.
fn detect(args: &Args) -> Result<(Detected, Vec<Warning>), CliError> {
    let mut ipv6_warning = None;
    let ipv6 = match args.ipv6 {
        Ipv6Mode::On | Ipv6Mode::Off => {
            let on = args.ipv6 == Ipv6Mode::On;
            let word = if on { "on" } else { "off" };
            tracing::info!("IPv6 {word} (--ipv6 {word})");
            on
        }
        // Cleanup removes both families whatever the flags say, so it has nothing to decide
        // (and a namespace without a usable address must not stop it); off is the value that
        // tolerates a namespace without IPv6.
        Ipv6Mode::Auto | Ipv6Mode::FirstAddress if args.cleanup_only => false,
        mode @ (Ipv6Mode::Auto | Ipv6Mode::FirstAddress) => {
            let addrs = capture_core::host::addresses().map_err(CliError::Addresses)?;
            let ipv6 = mode.decide(&addrs, args.dual_stack)?;
            let rule = if args.dual_stack || mode == Ipv6Mode::Auto {
                "--dual-stack: IPv6 when the pod has any IPv6 address"
            } else {
                "istio-iptables' rule: the pod's first usable address decides"
            };
            let listed: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            tracing::info!(
                addresses = listed.join(","),
                "IPv6 {} ({rule})",
                if ipv6 { "on" } else { "off" }
            );
            if !ipv6 {
                // Istio's rule: the first address decides. Say so when that leaves one uncaptured.
                let uncaptured = addrs.iter().find_map(|a| match a {
                    IpAddr::V6(v6) if !v6.is_loopback() && !v6.is_unicast_link_local() => Some(*v6),
                    _ => None,
                });
                ipv6_warning = uncaptured.map(Warning::Ipv6Uncaptured);
            }
            ipv6
        }
    };
    let (nameservers, mut warnings) = if args.redirect_dns && !args.capture_all_dns {
        let path = &args.resolv_conf;
        let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
            path: path.clone(),
            source,
        })?;
        parse_resolv_conf(&text)
    } else {
        (Vec::new(), Vec::new())
    };
    warnings.extend(ipv6_warning);
    Ok((Detected { ipv6, nameservers }, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(go_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        for bad in ["", "5", "s", "5x", "-1s", "1..5s"] {
            assert!(go_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bools() {
        assert_eq!(go_bool("True"), Ok(true));
        assert_eq!(go_bool("0"), Ok(false));
        assert!(go_bool("yes").is_err());
    }

    #[test]
    fn go_bool_flags_take_attached_values_only() {
        let command = Args::command();
        let go_bools: Vec<&str> = command
            .get_arguments()
            .filter(|a| a.get_value_names() == Some(&["BOOL".into()]))
            // A variable set in the test's environment would decide the unset case.
            .filter(|a| a.get_env().is_none_or(|var| std::env::var_os(var).is_none()))
            .filter_map(clap::Arg::get_long)
            .collect();
        assert!(go_bools.len() > 10, "{go_bools:?}");
        let parse = |argv: &[&str], flag: &str| {
            Args::command()
                .try_get_matches_from(["capture-init"].iter().chain(argv))
                .map(|m| m.get_one::<bool>(&flag.replace('-', "_")).copied())
        };
        for long in &go_bools {
            let flag = format!("--{long}");
            assert_eq!(parse(&[], long).unwrap(), Some(false), "{flag}");
            assert_eq!(parse(&[&flag], long).unwrap(), Some(true), "{flag}");
            assert_eq!(
                parse(&[&format!("{flag}=F")], long).unwrap(),
                Some(false),
                "{flag}"
            );
            assert_eq!(
                parse(&[&format!("{flag}=1")], long).unwrap(),
                Some(true),
                "{flag}"
            );
            assert!(parse(&[&flag, "true"], long).is_err(), "{flag} true");
            assert!(parse(&[&format!("{flag}=yes")], long).is_err(), "{flag}=yes");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }
}
