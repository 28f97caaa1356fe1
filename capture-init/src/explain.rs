//! `capture-init explain`: which rule decides one connection, and where it lands.
//!
//! It takes a run's flags (so the same configuration is explained as is installed) and a
//! connection, and walks [`capture_core::explain`] over the rules the
//! flags install: pure, with no host access beyond what a dry run reads (IPv6 detection under
//! `--ipv6 auto`, resolv.conf for `--redirect-dns`, owner names). `--from-kernel` reads what is
//! installed in the pod's network namespace instead and says when it differs from the flags
//! (drift).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use capture_core::explain::{self, Connection, Direction, Explanation, Walk};
use capture_core::host::{NetNs, RunError};
use capture_core::rules::Proto;
use capture_core::{Backend as _, CaptureSpec, Family, Flavor, Iface, Iptables, SystemExec, chain};
use clap::{Parser, ValueEnum};

use crate::cli::{self, Args, Backend};

/// `capture-init explain`: a run's flags and one connection.
#[derive(Debug, Parser)]
#[command(
    name = "explain",
    bin_name = "capture-init explain",
    about = "Explain which rule decides one connection, and where it lands (captured, bypassed, DNS)",
    long_about = EXPLAIN_ABOUT,
    max_term_width = 100,
    args_override_self = true
)]
pub struct ExplainArgs {
    /// The connection's direction, seen from the pod.
    #[arg(long, value_enum, default_value = "outbound", help_heading = "Connection")]
    pub direction: DirectionArg,
    /// Where the connection goes: ADDR:PORT (`10.96.0.1:443`, `[fd00::1]:80`). Required.
    #[arg(long, value_name = "ADDR:PORT", value_parser = socket_addr, help_heading = "Connection")]
    pub dst: Option<SocketAddr>,
    /// Where it comes from: ADDR or ADDR:PORT (the peer for inbound; the bound address, such as
    /// the passthrough 127.0.0.6, for outbound).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = source_addr, help_heading = "Connection")]
    pub src: Option<(IpAddr, Option<u16>)>,
    /// Transport protocol.
    #[arg(long, value_enum, default_value = "tcp", help_heading = "Connection")]
    pub protocol: ProtocolArg,
    /// The uid of the socket's owner (outbound).
    #[arg(long, value_name = "UID", default_value = "0", help_heading = "Connection")]
    pub uid: u32,
    /// The gid of the socket's owner (outbound). Default: the uid.
    #[arg(long, value_name = "GID", help_heading = "Connection")]
    pub gid: Option<u32>,
    /// The interface it leaves by (outbound; `lo` for the pod's own addresses) or arrives on
    /// (inbound). Default: `lo` for loopback destinations, else one no rule names; with
    /// --from-kernel, `lo` for the namespace's own addresses.
    #[arg(long, value_name = "NAME", help_heading = "Connection")]
    pub interface: Option<Iface>,

    /// Text for people, or one JSON object per line (per backend) for scripts.
    #[arg(long, value_enum, default_value = "text", help_heading = "Explain")]
    pub output: OutputArg,
    /// Explain for every backend (iptables, native nftables, eBPF) side by side, not only the
    /// one the flags select.
    #[arg(long, help_heading = "Explain")]
    pub all_backends: bool,
    /// Read what is installed in the pod's network namespace (the current one, or
    /// --network-namespace) and explain against that; report drift from the flags.
    #[arg(long, help_heading = "Explain")]
    pub from_kernel: bool,

    /// The run's flags.
    #[command(flatten)]
    pub run: Args,
}

const EXPLAIN_ABOUT: &str = "\
Explain which rule decides one connection and where it lands: captured to the proxy's port \
(with the original destination the proxy reads back), sent to the DNS proxy, or left alone, and \
by which rule (the proxy's uid, an excluded port or CIDR, loopback, not included, ...).

Give the same flags as the run that installs the capture, and describe the connection with \
--direction, --dst, --src, --protocol, --uid, --gid and --interface. The rules walked are the \
ones the flags install (pure: nothing on the host is read but what a dry run reads), or with \
--from-kernel the ones installed in the pod's network namespace.

EXAMPLE:
  capture-init explain -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x \"\" -b '*' \\
      -d 15090,15021,15020 --ipv6 off --dst 10.96.0.1:443 --uid 1000";

/// `--direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    /// Opened by a process in the pod.
    Outbound,
    /// Arriving at the pod from outside.
    Inbound,
}

/// `--protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputArg {
    /// Readable text.
    Text,
    /// One JSON object per line.
    Json,
}

fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "not an ADDR:PORT such as 10.96.0.1:443 or [fd00::1]:80".to_owned())
}

fn source_addr(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok((addr, None));
    }
    s.parse::<SocketAddr>()
        .map(|a| (a.ip(), Some(a.port())))
        .map_err(|_| "not an ADDR or ADDR:PORT such as 10.0.0.2, 127.0.0.6 or [fd00::2]:4000".to_owned())
}

/// Which backends to explain for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Iptables,
    Nftables,
    Ebpf,
}

impl ExplainArgs {
    fn connection(&self) -> Connection {
        Connection {
            direction: match self.direction {
                DirectionArg::Outbound => Direction::Outbound,
                DirectionArg::Inbound => Direction::Inbound,
            },
            proto: match self.protocol {
                ProtocolArg::Tcp => Proto::Tcp,
                ProtocolArg::Udp => Proto::Udp,
            },
            src: self.src.map(|(a, _)| a),
            src_port: self.src.and_then(|(_, p)| p),
            dst: self.dst.unwrap_or(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0)),
            uid: self.uid,
            gid: self.gid.unwrap_or(self.uid),
            iface: self.interface.clone(),
        }
    }

    fn backends(&self) -> Vec<Which> {
        if self.all_backends {
            let mut all = vec![Which::Iptables, Which::Nftables];
            if cfg!(feature = "ebpf") {
                all.push(Which::Ebpf);
            }
            return all;
        }
        vec![match self.run.backend {
            Backend::Ebpf => Which::Ebpf,
            Backend::Iptables if self.run.native_nftables => Which::Nftables,
            Backend::Iptables => Which::Iptables,
        }]
    }
}

/// One backend's report, or why it has none (`--all-backends` only: alone, that fails the command).
type Answer = Result<Report, (&'static str, String)>;

impl Which {
    fn name(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::Ebpf => "ebpf",
        }
    }
}

/// What one backend says, and where it read the rules from.
struct Report {
    explanation: Explanation,
    /// `model` (the flags' rules) or `kernel` (what is installed).
    source: &'static str,
    /// With --from-kernel: every difference from the flags (empty: installed as the flags say).
    drift: Option<Vec<String>>,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    tracing::error!("{message}");
    ExitCode::from(1)
}

/// Runs `capture-init explain`.
pub fn main(args: ExplainArgs) -> ExitCode {
    let conn = args.connection();
    let output = args.output;
    let result = match (args.from_kernel, args.run.network_namespace.clone()) {
        (true, Some(path)) => NetNs::open(&path)
            .map_err(|e| format!("cannot enter network namespace {}: {e}", path.display()))
            .and_then(|ns| {
                ns.run(|| Ok::<_, RunError>(explain_all(args)))
                    .map_err(|e| match e {
                        RunError::Setns { path, source } => {
                            format!("cannot enter network namespace {}: {source}", path.display())
                        }
                        other => chain(&other),
                    })
            })
            .and_then(|r| r),
        _ => explain_all(args),
    };
    let reports = match result {
        Ok(reports) => reports,
        Err(e) => return fail(e),
    };
    let mut text = String::new();
    match output {
        OutputArg::Json => {
            for answer in &reports {
                match answer {
                    Ok(report) => text.push_str(&json(&conn, report)),
                    Err((backend, e)) => {
                        let _ = write!(
                            text,
                            "{{\"backend\":{},\"error\":{}}}",
                            string(backend),
                            string(e)
                        );
                    }
                }
                text.push('\n');
            }
        }
        OutputArg::Text => {
            text.push_str(&header(&conn));
            for answer in &reports {
                text.push('\n');
                match answer {
                    Ok(report) => text.push_str(&readable(report)),
                    Err((backend, e)) => {
                        let _ = writeln!(text, "{backend}: cannot explain: {e}");
                    }
                }
            }
        }
    }
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

/// Resolves the flags (in the namespace this runs in) and explains for each backend.
fn explain_all(args: ExplainArgs) -> Result<Vec<Answer>, String> {
    let backends = args.backends();
    let from_kernel = args.from_kernel;
    let mut conn = args.connection();
    let invocation = cli::resolve(args.run).map_err(|e| chain(&e))?;
    for warning in &invocation.warnings {
        tracing::warn!("{warning}");
    }
    let spec = &invocation.spec;
    if from_kernel && conn.iface.is_none() && conn.direction == Direction::Outbound {
        // In the pod's namespace its own addresses are known: connections to them use lo.
        let local =
            capture_core::host::addresses().map_err(|e| format!("cannot list the pod's addresses: {e}"))?;
        if local.contains(&explain::unmap(conn.dst.ip())) {
            conn.iface = Some("lo".parse().expect("valid interface name"));
        }
    }
    let single = backends.len() == 1;
    backends
        .into_iter()
        .map(|which| {
            let report = if from_kernel {
                from_kernel_report(which, &invocation.args, spec, &conn)
            } else {
                pure(which, spec, &conn)
            };
            match report {
                Ok(report) => Ok(Ok(report)),
                // Side by side, one backend that cannot explain leaves the others.
                Err(e) if !single => Ok(Err((which.name(), e))),
                Err(e) => Err(e),
            }
        })
        .collect()
}

fn pure(which: Which, spec: &CaptureSpec, conn: &Connection) -> Result<Report, String> {
    let explain = |conn: &Connection| match which {
        Which::Iptables => Ok(explain::iptables(spec, conn)),
        Which::Nftables => Ok(explain::nftables(spec, conn)),
        Which::Ebpf => ebpf_pure(spec, conn),
    };
    let mut explanation = explain(conn)?;
    if conn.direction == Direction::Outbound && conn.iface.is_none() && !conn.dst_ip().is_loopback() {
        // Whether the destination is one of the pod's own addresses (reached over lo) is not
        // known without reading the pod: say when it would change the answer.
        let mut local = conn.clone();
        local.iface = Some("lo".parse().expect("valid interface name"));
        let over_lo = explain(&local)?;
        if over_lo.verdict != explanation.verdict {
            explanation.notes.push(format!(
                "if {} is one of the pod's own addresses (over lo): {} ({}); pass --interface lo",
                conn.dst.ip(),
                over_lo.verdict.as_str(),
                over_lo.reason.code()
            ));
        }
    }
    Ok(Report {
        explanation,
        source: "model",
        drift: None,
    })
}

#[cfg(feature = "ebpf")]
fn ebpf_pure(spec: &CaptureSpec, conn: &Connection) -> Result<Explanation, String> {
    let plan = capture_ebpf::Ebpf::plan(spec).map_err(|e| chain(&e))?;
    Ok(capture_ebpf::explain::explain(&plan, conn))
}

#[cfg(not(feature = "ebpf"))]
fn ebpf_pure(_: &CaptureSpec, _: &Connection) -> Result<Explanation, String> {
    Err(cli::NO_EBPF.to_owned())
}

fn from_kernel_report(
    which: Which,
    args: &Args,
    spec: &CaptureSpec,
    conn: &Connection,
) -> Result<Report, String> {
    match which {
        Which::Iptables => iptables_kernel(args, spec, conn),
        Which::Nftables => nftables_kernel(spec, conn),
        Which::Ebpf => ebpf_kernel(args, spec, conn),
    }
}

/// The drift a backend's comparison found; a comparison that cannot be made is itself a
/// difference to report, not a reason to explain nothing.
fn compared(check: Result<Vec<String>, capture_core::BackendError>) -> Vec<String> {
    check.unwrap_or_else(|e| vec![format!("cannot compare with these flags: {}", chain(&*e))])
}

fn iptables_kernel(args: &Args, spec: &CaptureSpec, conn: &Connection) -> Result<Report, String> {
    let exec = SystemExec { lock_file: None };
    let backend = match args.forced_flavor() {
        Some(flavor) => Iptables::new(exec, flavor),
        None => Iptables::detect(exec)
            .unwrap_or_else(|_| Iptables::new(SystemExec { lock_file: None }, Flavor::Nft)),
    };
    let family = conn.family();
    let saved = backend
        .save(family)
        .map_err(|e| format!("cannot read the {family} rules: {}", chain(&e)))?;
    let walk = Walk::from_saves(saved.tables.iter().map(|(name, t)| (*name, &t.chains)), family);
    let mut explanation = walk.explain("iptables", Some(spec), conn);
    let drift = compared(backend.check(spec));
    let installs = if spec.families().contains(&family) {
        Walk::from_rules(&capture_core::plan(spec, family))
    } else {
        Walk::default()
    };
    if let Some(step) = &explanation.rule
        && !installs.has_rule(&step.rule)
    {
        explanation
            .notes
            .push("the deciding rule is not one these flags install".to_owned());
    }
    Ok(Report {
        explanation,
        source: "kernel",
        drift: Some(drift),
    })
}

fn nftables_kernel(spec: &CaptureSpec, conn: &Connection) -> Result<Report, String> {
    let (present, _) = capture_core::nft::current()
        .map_err(|e| format!("cannot list the nftables tables: {}", chain(&e)))?;
    let model = capture_core::nft::plan(spec);
    let compiled =
        capture_core::nft::compile(&model, &capture_core::SystemAccounts).map_err(|e| chain(&e))?;
    let walk = Walk::from_nft_listing(&model, &compiled, &present);
    let explanation = walk.explain("nftables", Some(spec), conn);
    let drift = compared(capture_core::nft::Nftables.check(spec));
    Ok(Report {
        explanation,
        source: "kernel",
        drift: Some(drift),
    })
}

#[cfg(feature = "ebpf")]
fn ebpf_kernel(args: &Args, spec: &CaptureSpec, conn: &Connection) -> Result<Report, String> {
    let backend = crate::ebpf::backend(args).map_err(|e| e.to_string())?;
    let drift = compared(backend.check(spec));
    let explanation = if backend.pins.is_loaded() {
        let node = capture_ebpf::Node::open(&backend.pins).map_err(|e| chain(&e))?;
        let cookie = capture_ebpf::NetnsCookie::current().map_err(|e| chain(&e))?;
        match node.enrolled(cookie).map_err(|e| chain(&e))? {
            Some(entries) => {
                capture_ebpf::explain::explain(&capture_ebpf::MapPlan::from_entries(&entries), conn)
            }
            None => not_captured("ebpf", conn, "this network namespace is not enrolled"),
        }
    } else {
        not_captured("ebpf", conn, "the eBPF programs are not loaded")
    };
    Ok(Report {
        explanation,
        source: "kernel",
        drift: Some(drift),
    })
}

#[cfg(not(feature = "ebpf"))]
fn ebpf_kernel(_: &Args, _: &CaptureSpec, _: &Connection) -> Result<Report, String> {
    Err(cli::NO_EBPF.to_owned())
}

#[cfg(feature = "ebpf")]
fn not_captured(backend: &'static str, conn: &Connection, why: &str) -> Explanation {
    let mut e = Walk::default().explain(backend, None, conn);
    e.notes.push(why.to_owned());
    e
}

fn header(conn: &Connection) -> String {
    let proto = match conn.proto {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
    };
    let mut line = format!("{} {proto} connection to {}", conn.direction.as_str(), conn.dst);
    if let Some(src) = conn.src {
        match conn.src_port {
            Some(p) => write!(line, " from {}", SocketAddr::new(src, p)),
            None => write!(line, " from {src}"),
        }
        .expect("writing to a String");
    }
    if conn.direction == Direction::Outbound {
        write!(line, " by uid {} gid {}", conn.uid, conn.gid).expect("writing to a String");
    }
    if let Some(iface) = &conn.iface {
        write!(line, " via {iface}").expect("writing to a String");
    }
    line.push('\n');
    line
}

fn readable(report: &Report) -> String {
    let e = &report.explanation;
    let mut out = String::new();
    let lands = match e.verdict {
        explain::Verdict::Captured { port, original_dst } => {
            format!("captured to port {port}, original destination {original_dst}")
        }
        explain::Verdict::Dns { port, original_dst } => {
            format!("DNS to the agent's resolver on port {port}, original destination {original_dst}")
        }
        explain::Verdict::Bypassed => "not captured: it goes where it was going".to_owned(),
        explain::Verdict::Dropped => "dropped".to_owned(),
    };
    let from = if report.source == "kernel" {
        ", as installed"
    } else {
        ""
    };
    let _ = writeln!(out, "{}{from}: {lands}", e.backend);
    let _ = writeln!(out, "  why:   {} ({})", e.reason, e.reason.code());
    match &e.rule {
        Some(step) => {
            let _ = writeln!(out, "  rule:  {}", located(step));
        }
        None => {
            let _ = writeln!(out, "  rule:  none matched");
        }
    }
    for (i, step) in e.path.iter().enumerate() {
        if e.path.len() < 2 {
            break;
        }
        let label = if i == 0 { "  path:" } else { "       " };
        let _ = writeln!(out, "{label}  {}", located(step));
    }
    for note in &e.notes {
        let _ = writeln!(out, "  note:  {note}");
    }
    match &report.drift {
        Some(d) if d.is_empty() => {
            let _ = writeln!(out, "  state: installed as these flags would install it");
        }
        Some(d) => {
            for line in d {
                let _ = writeln!(out, "  drift: {line}");
            }
        }
        None => {}
    }
    out
}

fn located(step: &explain::Step) -> String {
    if step.chain.is_empty() {
        format!("{}: {}", step.table, step.rule)
    } else if step.rule.starts_with("-A ") {
        format!("{}  {}", step.table, step.rule)
    } else {
        format!("{} {}  {}", step.table, step.chain, step.rule)
    }
}

/// A JSON string literal.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    capture_log::json_string(&mut out, s);
    out
}

fn opt_string(s: Option<String>) -> String {
    s.map_or_else(|| "null".to_owned(), |s| string(&s))
}

fn step_json(step: &explain::Step) -> String {
    format!(
        "{{\"table\":{},\"chain\":{},\"rule\":{}}}",
        string(&step.table),
        string(&step.chain),
        string(&step.rule)
    )
}

/// One backend's explanation as one JSON object, keys in a fixed order.
fn json(conn: &Connection, report: &Report) -> String {
    let e = &report.explanation;
    let list = |items: Vec<String>| format!("[{}]", items.join(","));
    let family = match conn.family() {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    };
    let fields = [
        ("backend", string(e.backend)),
        ("source", string(report.source)),
        ("direction", string(conn.direction.as_str())),
        ("family", string(family)),
        ("dst", string(&conn.dst.to_string())),
        ("verdict", string(e.verdict.as_str())),
        (
            "port",
            e.verdict
                .port()
                .map_or_else(|| "null".to_owned(), |p| p.to_string()),
        ),
        (
            "original_dst",
            opt_string(e.verdict.original_dst().map(|a| a.to_string())),
        ),
        ("reason", string(e.reason.code())),
        ("reason_text", string(e.reason.describe())),
        ("rule", opt_string(e.rule.as_ref().map(|s| s.rule.clone()))),
        ("table", opt_string(e.rule.as_ref().map(|s| s.table.clone()))),
        ("chain", opt_string(e.rule.as_ref().map(|s| s.chain.clone()))),
        ("path", list(e.path.iter().map(step_json).collect())),
        ("notes", list(e.notes.iter().map(|n| string(n)).collect())),
        (
            "drift",
            report.drift.as_ref().map_or_else(
                || "null".to_owned(),
                |d| list(d.iter().map(|l| string(l)).collect()),
            ),
        ),
    ];
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{v}", string(k))).collect();
    format!("{{{}}}", body.join(","))
}
