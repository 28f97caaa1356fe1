//! `capture-init status`: which backend holds capture in a pod's network namespace, whether it
//! equals a given configuration, and the counters the backend keeps; an exit status a readiness
//! probe can use.
//!
//! It only reads. The backends are looked at without a lock (each read is one `iptables-save`,
//! one netlink dump or one map lookup); with a configuration, the backend's own
//! [`check`](capture_core::Backend::check) holds the namespace's lock for the few milliseconds
//! its reads take, so it never compares against a run half-way.
//!
//! ```text
//! argv ─> status flags (--output, --bpffs, --cgroup, --network-namespace) + run flags
//!         └─ in the pod's namespace: holders() ─> [iptables legacy|nft, nftables, ebpf]
//!                                    run flags? ─> cli::resolve ─> Backend::check ─> drift
//!                                    counters()  ─> iptables-save -c | POD_STATS
//! ```

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use capture_core::host::{NetNs, RunError};
use capture_core::nft::Nftables;
use capture_core::{Backend, Flavor, Iptables, SystemExec, chain};
use serde_json::{Value, json};

use crate::cli::{self, Args, DEFAULT_BPFFS, Parsed};

/// Exit status: capture is absent.
pub const ABSENT: u8 = 3;
/// Exit status: capture is present but differs from the configuration given.
pub const DRIFTED: u8 = 4;
/// Exit status: more than one backend holds capture (they fight over the pod's traffic).
pub const CONFLICT: u8 = 5;

/// `capture-init status --help`.
pub const HELP: &str = "\
Report which backend holds capture in a pod's network namespace and whether it is the capture
a configuration asks for. Reads only; changes nothing.

Usage: capture-init status [--network-namespace PATH] [--bpffs PATH] [--output text|json] [RUN FLAGS]

  --network-namespace PATH  the pod's network namespace (default: this process's)
  --bpffs PATH              where the eBPF programs are pinned (default /sys/fs/bpf)
  --cgroup PATH             eBPF: the cgroup v2 directory the programs must act on (default
                            the cgroup v2 root); only used with a configuration
  --output text|json        human text (default) or one JSON object

Backends looked for: iptables rules of capture's (legacy and nft flavour, IPv4 and IPv6),
native nftables tables inet istio-proxy-*, and (a build with the eBPF backend) this
namespace's enrollment in the node's pinned maps.

RUN FLAGS are a run's flags (-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' ...; also
--backend ebpf, --native-nftables, --force-iptables-binary). Given any, the capture found is
compared with what that run would install, with the backend's own check, and every difference
is printed. A backend the flags name must be the one holding capture; otherwise the one found
is compared.

Counters: iptables' packet and byte counters of capture's rules (iptables-save -c); eBPF the
pod's own counters (connections captured, passed, refused, DNS). Native nftables rules have none.

EXIT STATUS:
  0  capture present (and equal to the configuration, when one is given)
  1  error: bad flags, or the state could not be read
  3  absent: no backend holds capture here
  4  drifted: capture differs from the configuration given
  5  conflict: more than one backend holds capture";

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Human text.
    Text,
    /// One JSON object.
    Json,
}

/// `capture-init status …`, parsed.
#[derive(Debug)]
pub struct StatusArgs {
    /// `--output`.
    pub output: Output,
    /// `--network-namespace`.
    pub network_namespace: Option<PathBuf>,
    /// `--bpffs`.
    pub bpffs: PathBuf,
    /// `--cgroup`.
    pub cgroup: Option<PathBuf>,
    /// The run flags, when any were given: the configuration to compare with.
    pub run: Option<Box<Args>>,
}

/// Reads `capture-init status …` (`argv[0]` is the program; the word `status` is gone).
///
/// # Errors
/// A [`cli::CliError`] naming the bad flag and value.
pub fn parse(argv: Vec<OsString>) -> Result<Parsed, cli::CliError> {
    let mut status = StatusArgs {
        output: Output::Text,
        network_namespace: None,
        bpffs: PathBuf::from(DEFAULT_BPFFS),
        cgroup: None,
        run: None,
    };
    let mut run_argv: Vec<OsString> = vec!["capture-init".into()];
    let mut rest = argv.into_iter().skip(1);
    while let Some(arg) = rest.next() {
        let text = arg.to_string_lossy().into_owned();
        let (flag, attached) = match text.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(OsString::from(value))),
            _ => (text.clone(), None),
        };
        let mut value = |flag: &'static str| {
            attached
                .clone()
                .or_else(|| rest.next())
                .ok_or(cli::CliError::StatusValue { flag })
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Info(HELP.to_owned())),
            "--output" => {
                let given = value("--output")?;
                status.output = match given.to_str() {
                    Some("text") => Output::Text,
                    Some("json") => Output::Json,
                    _ => {
                        return Err(cli::CliError::StatusOutput {
                            value: given.to_string_lossy().into_owned(),
                        });
                    }
                }
            }
            "--network-namespace" => status.network_namespace = Some(value("--network-namespace")?.into()),
            "--bpffs" => status.bpffs = value("--bpffs")?.into(),
            "--cgroup" => status.cgroup = Some(value("--cgroup")?.into()),
            _ => run_argv.push(arg),
        }
    }
    if run_argv.len() > 1 {
        match cli::parse(run_argv)? {
            Parsed::Run(mut args) => {
                if args.backend == cli::Backend::Ebpf {
                    args.bpffs = Some(status.bpffs.clone());
                    args.cgroup.clone_from(&status.cgroup);
                }
                status.run = Some(args);
            }
            other => return Ok(other),
        }
    }
    Ok(Parsed::Status(Box::new(status)))
}

/// Runs `capture-init status`: prints the report and returns its exit status.
pub fn main(status: StatusArgs) -> ExitCode {
    let report = match &status.network_namespace {
        Some(path) => NetNs::open(path)
            .map_err(|e| format!("cannot enter network namespace {}: {e}", path.display()))
            .and_then(|ns| {
                ns.run(|| Ok::<_, RunError>(inspect(&status))).map_err(|e| {
                    format!("cannot enter network namespace {}: {}", path.display(), chain(&e))
                })?
            }),
        None => inspect(&status),
    };
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    for warning in &report.warnings {
        tracing::warn!("{warning}");
    }
    let text = match status.output {
        Output::Text => report.text(),
        Output::Json => format!("{}\n", report.json()),
    };
    // A closed stdout is an error to report by the exit status, not a panic.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Ok(()) => ExitCode::from(report.exit()),
        Err(_) => ExitCode::from(1),
    }
}

/// A backend found holding capture.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    /// capture's chains in iptables of `flavor`, in `families` (`IPv4`, `IPv6`).
    Iptables {
        flavor: Flavor,
        families: Vec<&'static str>,
    },
    /// capture's native nftables tables.
    Nftables { tables: Vec<String> },
    /// This namespace enrolled in the node's eBPF maps.
    #[cfg_attr(
        not(feature = "ebpf"),
        expect(dead_code, reason = "found only with the eBPF backend")
    )]
    Ebpf {
        cookie: u64,
        generation: u32,
        pins: PathBuf,
    },
}

impl Holder {
    /// The backend's name, as `--output json` gives it.
    fn backend(&self) -> &'static str {
        match self {
            Self::Iptables { .. } => "iptables",
            Self::Nftables { .. } => "nftables",
            Self::Ebpf { .. } => "ebpf",
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Iptables { flavor, families } => {
                format!("iptables ({}), {}", flavor.as_str(), families.join(" and "))
            }
            Self::Nftables { tables } => format!("native nftables (tables inet {})", tables.join(", ")),
            Self::Ebpf {
                cookie,
                generation,
                pins,
            } => format!(
                "eBPF (netns cookie {cookie}, generation {generation}, programs under {})",
                pins.display()
            ),
        }
    }

    fn json(&self) -> Value {
        match self {
            Self::Iptables { flavor, families } => json!({
                "backend": "iptables",
                "flavor": flavor.as_str(),
                "families": families.iter().map(|f| f.to_lowercase()).collect::<Vec<_>>(),
            }),
            Self::Nftables { tables } => json!({"backend": "nftables", "tables": tables}),
            Self::Ebpf {
                cookie,
                generation,
                pins,
            } => json!({
                "backend": "ebpf",
                "netns_cookie": cookie,
                "generation": generation,
                "pins": pins.display().to_string(),
            }),
        }
    }
}

/// One counter: an iptables rule's packets and bytes, or an eBPF counter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Counter {
    /// A rule of capture's in `iptables-save -c`.
    Rule {
        family: &'static str,
        table: String,
        rule: String,
        packets: u64,
        bytes: u64,
    },
    /// One of the pod's eBPF counters.
    #[cfg_attr(
        not(feature = "ebpf"),
        expect(dead_code, reason = "read only with the eBPF backend")
    )]
    Ebpf { name: &'static str, value: u64 },
}

/// The comparison with a given configuration.
#[derive(Debug, Default)]
struct Comparison {
    /// Every difference, one line each; empty when equal.
    differences: Vec<String>,
}

/// What `status` found.
#[derive(Debug, Default)]
struct Report {
    holders: Vec<Holder>,
    comparison: Option<Comparison>,
    counters: Vec<Counter>,
    /// What could not be looked at (a backend's state unreadable), one line each.
    warnings: Vec<String>,
    /// Where eBPF enrollment was looked for (`None`: a build without the eBPF backend).
    ebpf_pins: Option<PathBuf>,
}

impl Report {
    fn exit(&self) -> u8 {
        match self.holders.len() {
            0 => ABSENT,
            1 if self
                .comparison
                .as_ref()
                .is_some_and(|c| !c.differences.is_empty()) =>
            {
                DRIFTED
            }
            1 => 0,
            _ => CONFLICT,
        }
    }

    fn state(&self) -> &'static str {
        match self.exit() {
            0 => "present",
            ABSENT => "absent",
            DRIFTED => "drifted",
            _ => "conflict",
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        match self.holders.as_slice() {
            [] => {
                let ebpf = self.ebpf_pins.as_ref().map_or(String::new(), |p| {
                    format!(", not enrolled in the eBPF maps under {}", p.display())
                });
                let _ = writeln!(
                    out,
                    "capture: none (no rules of capture's in iptables legacy or nft, no table inet istio-proxy-*{ebpf})"
                );
            }
            [one] => {
                let _ = writeln!(out, "capture: {}", one.describe());
            }
            many => {
                let _ = writeln!(
                    out,
                    "capture: held by {} backends at once, which fight over the pod's traffic (remove all but one with --cleanup-only):",
                    many.len()
                );
                for holder in many {
                    let _ = writeln!(out, "  {}", holder.describe());
                }
            }
        }
        if let Some(comparison) = &self.comparison {
            if comparison.differences.is_empty() {
                let _ = writeln!(out, "configuration: equal");
            } else {
                let _ = writeln!(
                    out,
                    "configuration: drifted ({})",
                    capture_core::count(comparison.differences.len(), "difference", "differences")
                );
                for difference in &comparison.differences {
                    let _ = writeln!(out, "  {difference}");
                }
            }
        }
        if self.holders.iter().any(|h| matches!(h, Holder::Nftables { .. })) {
            let _ = writeln!(out, "counters: native nftables rules have none");
        }
        // Every rule's counters are in --output json; the text shows the rules traffic met.
        let rules = self
            .counters
            .iter()
            .filter(|c| matches!(c, Counter::Rule { .. }))
            .count();
        let matched: Vec<&Counter> = self
            .counters
            .iter()
            .filter(|c| matches!(c, Counter::Rule { packets, .. } if *packets > 0))
            .collect();
        if rules > 0 {
            let _ = writeln!(
                out,
                "counters: {} of capture's {} matched packets{}",
                matched.len(),
                capture_core::count(rules, "rule", "rules"),
                if matched.is_empty() {
                    ""
                } else {
                    " (packets bytes rule):"
                }
            );
        }
        for counter in matched {
            if let Counter::Rule {
                family,
                table,
                rule,
                packets,
                bytes,
            } = counter
            {
                let _ = writeln!(out, "  {family} {table:<6} {packets:>6} {bytes:>8}  {rule}");
            }
        }
        let ebpf: Vec<String> = self
            .counters
            .iter()
            .filter_map(|c| match c {
                Counter::Ebpf { name, value } => Some(format!("{name} {value}")),
                Counter::Rule { .. } => None,
            })
            .collect();
        if !ebpf.is_empty() {
            let _ = writeln!(out, "counters: {} (this pod's connections)", ebpf.join(", "));
        }
        out
    }

    fn json(&self) -> Value {
        let counters: Vec<Value> = self
            .counters
            .iter()
            .map(|c| match c {
                Counter::Rule {
                    family,
                    table,
                    rule,
                    packets,
                    bytes,
                } => json!({
                    "family": family.to_lowercase(),
                    "table": table,
                    "rule": rule,
                    "packets": packets,
                    "bytes": bytes,
                }),
                Counter::Ebpf { name, value } => json!({"name": name, "value": value}),
            })
            .collect();
        json!({
            "state": self.state(),
            "exit": self.exit(),
            "backends": self.holders.iter().map(Holder::json).collect::<Vec<_>>(),
            "configuration": self.comparison.as_ref().map(|c| json!({
                "equal": c.differences.is_empty(),
                "differences": c.differences,
            })),
            "counters": counters,
            "warnings": self.warnings,
        })
    }
}

/// Looks at every backend in the calling thread's namespace.
fn inspect(status: &StatusArgs) -> Result<Report, String> {
    let mut report = Report::default();
    iptables_holders(&mut report);
    match capture_core::nft::current() {
        Ok((listings, _)) => {
            let tables: Vec<String> = listings
                .iter()
                .filter_map(|l| l.tables.first())
                .map(|t| t.name.clone())
                .collect();
            if !tables.is_empty() {
                report.holders.push(Holder::Nftables { tables });
            }
        }
        Err(e) => report
            .warnings
            .push(format!("cannot read nftables tables: {}", chain(&e))),
    }
    ebpf_holder(status, &mut report);
    if report.holders.is_empty() && report.warnings.len() >= 2 {
        // Nothing could be read at all: an error, not "absent".
        return Err(format!(
            "cannot read the capture state: {}",
            report.warnings.join("; ")
        ));
    }
    if let Some(args) = &status.run {
        report.comparison = Some(compare(args, &report.holders)?);
    }
    counters(status, &mut report);
    Ok(report)
}

/// capture's chains in either iptables flavour, per family.
fn iptables_holders(report: &mut Report) {
    let mut unreadable = Vec::new();
    for flavor in [Flavor::Legacy, Flavor::Nft] {
        let iptables = Iptables::new(SystemExec { lock_file: None }, flavor);
        let mut families = Vec::new();
        for family in [capture_core::Family::V4, capture_core::Family::V6] {
            match iptables.save(family) {
                Ok(saved) if !saved.own_chains().is_empty() => families.push(family_name(family)),
                Ok(_) => {}
                Err(e) => unreadable.push(format!("{}: {}", flavor.save(family), chain(&e))),
            }
        }
        if !families.is_empty() {
            report.holders.push(Holder::Iptables { flavor, families });
        }
    }
    // One flavour missing on the machine is normal; both missing is worth saying.
    if unreadable.len() >= 4
        || unreadable
            .iter()
            .any(|u| u.starts_with("iptables-") && u.contains("ermission"))
    {
        report
            .warnings
            .push(format!("cannot read iptables rules ({})", unreadable.join("; ")));
    }
}

fn family_name(family: capture_core::Family) -> &'static str {
    match family {
        capture_core::Family::V4 => "IPv4",
        capture_core::Family::V6 => "IPv6",
    }
}

#[cfg(feature = "ebpf")]
fn ebpf_holder(status: &StatusArgs, report: &mut Report) {
    let backend = crate::ebpf::reader(&status.bpffs);
    report.ebpf_pins = Some(backend.pins.path().to_owned());
    match backend.enrolled_entries() {
        Ok(Some((cookie, entries))) => report.holders.push(Holder::Ebpf {
            cookie: cookie.0,
            generation: entries.config.generation,
            pins: backend.pins.path().to_owned(),
        }),
        Ok(None) => {}
        Err(e) => report
            .warnings
            .push(format!("cannot read the eBPF enrollment: {}", chain(&e))),
    }
}

#[cfg(not(feature = "ebpf"))]
fn ebpf_holder(_: &StatusArgs, _: &mut Report) {}

/// The configuration's capture against what is here, with the backend's own check.
fn compare(args: &Args, holders: &[Holder]) -> Result<Comparison, String> {
    let invocation = cli::resolve(args.clone()).map_err(|e| chain(&e))?;
    for warning in &invocation.warnings {
        tracing::warn!("{warning}");
    }
    let named = if args.backend == cli::Backend::Ebpf {
        Some("ebpf")
    } else if args.native_nftables {
        Some("nftables")
    } else if args.forced_flavor().is_some() {
        Some("iptables")
    } else {
        None
    };
    // The backend to compare with: the one the flags name, else the one holding capture.
    let holder = match named {
        Some(name) => holders.iter().find(|h| h.backend() == name),
        None => holders.first(),
    };
    let Some(holder) = holder else {
        let found: Vec<String> = holders.iter().map(Holder::describe).collect();
        return Ok(Comparison {
            differences: match (named, found.is_empty()) {
                (_, true) => vec!["no capture here".to_owned()],
                (Some(name), false) => vec![format!(
                    "the configuration asks for the {name} backend; capture here is {}",
                    found.join(", ")
                )],
                (None, false) => Vec::new(),
            },
        });
    };
    let backend: Box<dyn Backend> = match holder {
        Holder::Iptables { flavor, .. } => Box::new(Iptables::new(
            SystemExec { lock_file: None },
            args.forced_flavor().unwrap_or(*flavor),
        )),
        Holder::Nftables { .. } => Box::new(Nftables),
        Holder::Ebpf { .. } => ebpf_backend(args)?,
    };
    let mut differences = match backend.check(&invocation.spec) {
        Ok(differences) => differences,
        // Programs acting on another cgroup than the configuration's: a difference, not a
        // failure to read.
        Err(e) if is_other_cgroup(&*e) => vec![chain(&*e)],
        Err(e) => return Err(format!("cannot compare with the configuration: {}", chain(&*e))),
    };
    if let (Holder::Iptables { flavor, .. }, Some(forced)) = (holder, args.forced_flavor())
        && *flavor != forced
    {
        differences.insert(
            0,
            format!(
                "the configuration asks for iptables-{}; capture here is in iptables-{}",
                forced.as_str(),
                flavor.as_str()
            ),
        );
    }
    Ok(Comparison { differences })
}

#[cfg(feature = "ebpf")]
fn is_other_cgroup(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    matches!(
        e.downcast_ref(),
        Some(
            capture_ebpf::Failure::OtherCgroup { .. }
                | capture_ebpf::Failure::Ebpf(capture_ebpf::Error::AttachedElsewhere { .. })
        )
    )
}

#[cfg(not(feature = "ebpf"))]
fn is_other_cgroup(_: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    false
}

#[cfg(feature = "ebpf")]
fn ebpf_backend(args: &Args) -> Result<Box<dyn Backend>, String> {
    let mut args = args.clone();
    // A status run attaches nothing: the cgroup is only compared.
    args.cleanup_only = true;
    crate::ebpf::backend(&args)
        .map(|b| Box::new(b) as Box<dyn Backend>)
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "ebpf"))]
fn ebpf_backend(_: &Args) -> Result<Box<dyn Backend>, String> {
    Err(cli::NO_EBPF.to_owned())
}

/// The counters of the backend holding capture.
fn counters(status: &StatusArgs, report: &mut Report) {
    let holders = report.holders.clone();
    for holder in &holders {
        match holder {
            Holder::Iptables { flavor, families } => {
                for family in [capture_core::Family::V4, capture_core::Family::V6] {
                    let name = family_name(family);
                    if !families.contains(&name) {
                        continue;
                    }
                    match rule_counters(*flavor, family) {
                        Ok(found) => report.counters.extend(found),
                        Err(e) => report.warnings.push(e),
                    }
                }
            }
            Holder::Nftables { .. } => {}
            Holder::Ebpf { cookie, .. } => ebpf_counters(status, *cookie, report),
        }
    }
}

/// The packet and byte counters of capture's rules (those in capture's chains and the jumps to
/// them), from `iptables-save -c`.
fn rule_counters(flavor: Flavor, family: capture_core::Family) -> Result<Vec<Counter>, String> {
    let program = flavor.save(family);
    let out = std::process::Command::new(program)
        .arg("-c")
        .output()
        .map_err(|e| format!("cannot run {program} -c: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} -c failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_counters(
        family_name(family),
        &String::from_utf8_lossy(&out.stdout),
    ))
}

/// Our rules' counters in an `iptables-save -c` dump: `[packets:bytes] -A CHAIN …` lines whose
/// chain or jump target is one of capture's chains.
fn parse_counters(family: &'static str, save: &str) -> Vec<Counter> {
    let ours = |name: &str| name.starts_with("ISTIO_");
    let mut table = String::new();
    let mut found = Vec::new();
    for line in save.lines() {
        if let Some(name) = line.strip_prefix('*') {
            name.clone_into(&mut table);
            continue;
        }
        let Some((counts, rule)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
            continue;
        };
        let Some((packets, bytes)) = counts.split_once(':') else {
            continue;
        };
        let (Ok(packets), Ok(bytes)) = (packets.parse(), bytes.parse()) else {
            continue;
        };
        let mut words = rule.split_whitespace();
        let chain = match (words.next(), words.next()) {
            (Some("-A"), Some(chain)) => chain,
            _ => continue,
        };
        let target = rule
            .split(" -j ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next());
        if ours(chain) || target.is_some_and(ours) {
            found.push(Counter::Rule {
                family,
                table: table.clone(),
                rule: rule.to_owned(),
                packets,
                bytes,
            });
        }
    }
    found
}

#[cfg(feature = "ebpf")]
fn ebpf_counters(status: &StatusArgs, cookie: u64, report: &mut Report) {
    use capture_ebpf_common as common;
    const NAMED: [(&str, u32); 10] = [
        ("outbound", common::STAT_OUTBOUND),
        ("hairpin", common::STAT_HAIRPIN),
        ("inbound", common::STAT_INBOUND),
        ("passed", common::STAT_PASSED),
        ("inbound_refused", common::STAT_INBOUND_REFUSED),
        ("dns", common::STAT_DNS),
        ("dns_answers", common::STAT_DNS_ANSWER),
        ("original_dst", common::STAT_ORIG_DST),
        ("state_full", common::STAT_STATE_FULL),
        ("spliced_messages", common::STAT_SPLICED_MESSAGES),
    ];
    let pins = capture_ebpf::PinDir::new(&status.bpffs);
    let counters = capture_ebpf::Node::open(&pins).and_then(|node| node.pod_counters());
    match counters {
        Ok(pods) => {
            let slots = pods
                .into_iter()
                .find(|(c, _)| c.0 == cookie)
                .map(|(_, slots)| slots)
                .unwrap_or([0; common::STAT_SLOTS as usize]);
            for (name, stat) in NAMED {
                report.counters.push(Counter::Ebpf {
                    name,
                    value: slots[stat as usize],
                });
            }
        }
        Err(e) => report
            .warnings
            .push(format!("cannot read the pod's eBPF counters: {}", chain(&e))),
    }
}

#[cfg(not(feature = "ebpf"))]
fn ebpf_counters(_: &StatusArgs, _: u64, _: &mut Report) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_of_our_rules_only() {
        let save = "\
# Generated by iptables-save
*nat
:PREROUTING ACCEPT [5:300]
:ISTIO_OUTPUT - [0:0]
[7:420] -A PREROUTING -p tcp -j ISTIO_INBOUND
[1:60] -A PREROUTING -p udp -j RETURN
[3:180] -A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";
        let found = parse_counters("IPv4", save);
        assert_eq!(
            found,
            [
                Counter::Rule {
                    family: "IPv4",
                    table: "nat".into(),
                    rule: "-A PREROUTING -p tcp -j ISTIO_INBOUND".into(),
                    packets: 7,
                    bytes: 420,
                },
                Counter::Rule {
                    family: "IPv4",
                    table: "nat".into(),
                    rule: "-A ISTIO_OUTPUT -j ISTIO_REDIRECT".into(),
                    packets: 3,
                    bytes: 180,
                },
            ]
        );
    }

    #[test]
    fn exit_status_by_what_was_found() {
        let iptables = Holder::Iptables {
            flavor: Flavor::Nft,
            families: vec!["IPv4"],
        };
        let mut report = Report::default();
        assert_eq!((report.exit(), report.state()), (ABSENT, "absent"));
        report.holders.push(iptables.clone());
        assert_eq!((report.exit(), report.state()), (0, "present"));
        report.comparison = Some(Comparison {
            differences: vec!["x".into()],
        });
        assert_eq!((report.exit(), report.state()), (DRIFTED, "drifted"));
        report.holders.push(Holder::Nftables {
            tables: vec!["istio-proxy-nat".into()],
        });
        assert_eq!((report.exit(), report.state()), (CONFLICT, "conflict"));
    }
}
