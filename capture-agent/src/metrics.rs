//! `/metrics`: the programs' counters (node-wide and per pod), map occupancy and the agent's
//! own counters, in Prometheus' text exposition format (version 0.0.4).
//!
//! Every `STAT_*` slot of the programs is named once, in [`COUNTERS`]: a new slot is one row
//! there (a unit test fails until it has one). A name shared by several rows is one metric
//! family with one label telling the rows apart.

use std::fmt::Write as _;

use capture_ebpf::{MapUsage, NetnsCookie, Node, PodMetadata, ProgramCost};
use capture_ebpf_common::{
    PodStats, STAT_BYPASS_CIDR, STAT_BYPASS_GID, STAT_BYPASS_GROUP, STAT_BYPASS_IPV6, STAT_BYPASS_LOOPBACK,
    STAT_BYPASS_NOT_INCLUDED, STAT_BYPASS_PASSTHROUGH, STAT_BYPASS_PORT, STAT_BYPASS_UID, STAT_DNS,
    STAT_DNS_ANSWER, STAT_HAIRPIN, STAT_INBOUND, STAT_INBOUND_REFUSED, STAT_ORIG_DST, STAT_OUTBOUND,
    STAT_PASSED, STAT_PEERNAME, STAT_SPLICED_MESSAGES, STAT_SPLICED_SOCKETS, STAT_STATE_FULL,
};

/// One `STAT_*` slot as a counter: `capture_<name>_total{<label>}` node-wide and
/// `capture_pod_<name>_total{netns_cookie=…,<label>}` per pod.
#[derive(Debug, Clone, Copy)]
pub struct Counter {
    /// The `STAT_*` index.
    pub stat: u32,
    /// The metric's name between `capture_` (or `capture_pod_`) and `_total`.
    pub name: &'static str,
    /// The label telling this row from the others of the same name, if any.
    pub label: Option<(&'static str, &'static str)>,
    /// The family's help text (the same on every row of a name).
    pub help: &'static str,
}

const CONNECTIONS: &str = "Connections redirected: outbound to the proxy's outbound port, hairpin (the proxy calling its own pod) to its inbound port, inbound handed to the proxy's inbound listener.";

const BYPASSED: &str = "Outbound TCP connections of enrolled pods left alone, by reason: port (excluded port, -o), passthrough (from 127.0.0.6 or ::6), loopback (to the pod itself or the loopback range, not the proxy's hairpin), uid and gid (the proxy's, -u and -g), group (the owner-group filter), cidr (excluded CIDR, -x), not_included (neither port -q nor CIDR -i included), ipv6 (IPv6 destination without IPv6 capture).";

/// Every `STAT_*` slot, named.
pub const COUNTERS: &[Counter] = &[
    Counter {
        stat: STAT_OUTBOUND,
        name: "connections",
        label: Some(("direction", "outbound")),
        help: CONNECTIONS,
    },
    Counter {
        stat: STAT_HAIRPIN,
        name: "connections",
        label: Some(("direction", "hairpin")),
        help: CONNECTIONS,
    },
    Counter {
        stat: STAT_INBOUND,
        name: "connections",
        label: Some(("direction", "inbound")),
        help: CONNECTIONS,
    },
    Counter {
        stat: STAT_PASSED,
        name: "passed",
        label: None,
        help: "Outbound TCP connections of enrolled pods left alone by the rules, whatever the reason (capture_bypassed_total by reason, plus those counted before reasons were).",
    },
    Counter {
        stat: STAT_BYPASS_PORT,
        name: "bypassed",
        label: Some(("reason", "port")),
        help: BYPASSED,
    },
    Counter {
        stat: STAT_BYPASS_PASSTHROUGH,
        name: "bypassed",
        label: Some(("reason", "passthrough")),
        help: BYPASSED,
    },
    Counter {
        stat: STAT_BYPASS_LOOPBACK,
        name: "bypassed",
        label: Some(("reason", "loopback")),
        help: BYPASSED,
    },
    Counter {
        stat: STAT_BYPASS_UID,
        name: "bypassed",
        label: Some(("reason", "uid")),
        help: BYPASSED,
    },
    Counter {
        stat: STAT_BYPASS_GID,
        name: "bypassed",
        label: Some(("reason", "gid")),
        help: BYPASSED,
    },
    Counter {
        stat: STAT_BYPASS_GROUP,
        name: "bypassed",
        label: Some(("reason", "group")),
        help: BYPASSED,
    },
    Counter {
        stat: STAT_BYPASS_CIDR,
        name: "bypassed",
        label: Some(("reason", "cidr")),
        help: BYPASSED,
    },
    Counter {
        stat: STAT_BYPASS_NOT_INCLUDED,
        name: "bypassed",
        label: Some(("reason", "not_included")),
        help: BYPASSED,
    },
    Counter {
        stat: STAT_BYPASS_IPV6,
        name: "bypassed",
        label: Some(("reason", "ipv6")),
        help: BYPASSED,
    },
    Counter {
        stat: STAT_INBOUND_REFUSED,
        name: "inbound_refused",
        label: None,
        help: "Captured inbound connections refused because the pod's proxy had no inbound listener.",
    },
    Counter {
        stat: STAT_STATE_FULL,
        name: "state_map_full",
        label: None,
        help: "Connections left alone because a per-connection map was full.",
    },
    Counter {
        stat: STAT_ORIG_DST,
        name: "original_dst_answers",
        label: None,
        help: "SO_ORIGINAL_DST answers given to the proxy.",
    },
    Counter {
        stat: STAT_PEERNAME,
        name: "getpeername_answers",
        label: None,
        help: "getpeername answers given to apps with the original destination.",
    },
    Counter {
        stat: STAT_DNS,
        name: "dns_redirected",
        label: None,
        help: "DNS queries (UDP datagrams and TCP connections to port 53) redirected to the DNS proxy.",
    },
    Counter {
        stat: STAT_DNS_ANSWER,
        name: "dns_answers",
        label: None,
        help: "DNS proxy answers given to apps as coming from the resolver they asked.",
    },
    Counter {
        stat: STAT_SPLICED_SOCKETS,
        name: "spliced_sockets",
        label: None,
        help: "Sockets of app-proxy connections spliced with sk_msg (two per connection; --sk-msg).",
    },
    Counter {
        stat: STAT_SPLICED_MESSAGES,
        name: "spliced_messages",
        label: None,
        help: "Messages the sk_msg program handed straight to the peer socket.",
    },
];

/// What the maps say, read in one go ([`Snapshot::read`]).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Node-wide counters by `STAT_*`.
    pub counters: PodStats,
    /// Each enrolled pod's counters.
    pub pods: Vec<(NetnsCookie, PodStats)>,
    /// Enrolled pods.
    pub enrolled: usize,
    /// Map occupancy.
    pub maps: Vec<MapUsage>,
    /// Who the pods enrolled by capture-cni are (`POD_META`).
    pub metadata: Vec<(NetnsCookie, PodMetadata)>,
    /// Each program's runs and run time (counted by the kernel only while
    /// `kernel.bpf_stats_enabled` is 1), or why they could not be read: the maps' metrics are
    /// served either way.
    pub programs: Result<Vec<ProgramCost>, String>,
}

impl Snapshot {
    /// Reads the node's maps.
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn read(node: &Node) -> Result<Snapshot, capture_ebpf::Error> {
        // A pod's series are there while it is enrolled: its counters are read first and kept
        // only for pods in POD_CONFIG read after them, so that a pod being unenrolled (POD_CONFIG
        // first, then its counters) never shows as counters without an enrollment.
        let counters = node.pod_counters()?;
        let enrolled = node.pods()?;
        let pods = counters
            .into_iter()
            .filter(|(cookie, _)| enrolled.iter().any(|(c, _)| c == cookie))
            .collect();
        Ok(Snapshot {
            counters: node.counters()?,
            pods,
            enrolled: enrolled.len(),
            maps: node.occupancy()?,
            metadata: node.all_metadata()?,
            programs: node.program_costs().map_err(|e| e.to_string()),
        })
    }

    /// Extra labels of a pod's series: its Kubernetes namespace and name when capture-cni
    /// enrolled it (pods enrolled by capture-init have only their netns cookie).
    #[must_use]
    pub fn pod_labels(&self, cookie: NetnsCookie) -> Vec<(&'static str, String)> {
        let Some((_, meta)) = self.metadata.iter().find(|(c, _)| *c == cookie) else {
            return Vec::new();
        };
        let mut labels = Vec::new();
        if let Some(namespace) = &meta.pod_namespace {
            labels.push(("namespace", namespace.clone()));
        }
        if let Some(name) = &meta.pod_name {
            labels.push(("pod", name.clone()));
        }
        labels
    }
}

/// The agent's own counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentCounters {
    /// Pods reclaimed by garbage collection.
    pub gc_reclaimed: u64,
    /// Garbage collections run.
    pub gc_runs: u64,
    /// Garbage collections that failed.
    pub gc_errors: u64,
}

/// The exposition: the maps' metrics when `snapshot` is there (else `capture_maps_readable 0`
/// and the reason as a comment), then the agent's counters; `labels` gives a pod's series their
/// extra labels ([`Snapshot::pod_labels`]).
pub fn render(
    snapshot: Result<&Snapshot, &str>,
    agent: AgentCounters,
    labels: &dyn Fn(NetnsCookie) -> Vec<(&'static str, String)>,
) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "capture_maps_readable",
        "gauge",
        "1 when the node's pinned maps could be read for this scrape.",
    );
    let _ = writeln!(out, "capture_maps_readable {}", u8::from(snapshot.is_ok()));
    match snapshot {
        Ok(s) => node_metrics(&mut out, s, labels),
        Err(reason) => {
            let _ = writeln!(out, "# maps unreadable: {}", reason.replace('\n', " "));
        }
    }
    let AgentCounters {
        gc_reclaimed,
        gc_runs,
        gc_errors,
    } = agent;
    for (name, help, value) in [
        (
            "capture_gc_reclaimed_pods_total",
            "Pods whose network namespace was gone, unenrolled by the agent's garbage collection.",
            gc_reclaimed,
        ),
        ("capture_gc_runs_total", "Garbage collections run.", gc_runs),
        (
            "capture_gc_errors_total",
            "Garbage collections that failed.",
            gc_errors,
        ),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

fn node_metrics(out: &mut String, s: &Snapshot, labels: &dyn Fn(NetnsCookie) -> Vec<(&'static str, String)>) {
    for (i, row) in COUNTERS.iter().enumerate() {
        if COUNTERS[..i].iter().any(|r| r.name == row.name) {
            continue;
        }
        let rows = COUNTERS.iter().filter(|r| r.name == row.name);
        let name = format!("capture_{}_total", row.name);
        family(out, &name, "counter", row.help);
        for r in rows.clone() {
            let label: Vec<(&str, String)> = r.label.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            series(out, &name, &label, s.counters[r.stat as usize]);
        }
        let name = format!("capture_pod_{}_total", row.name);
        family(out, &name, "counter", &format!("Per pod: {}", row.help));
        for (cookie, counters) in &s.pods {
            let mut base = vec![("netns_cookie", cookie.0.to_string())];
            base.extend(labels(*cookie));
            for r in rows.clone() {
                let mut label = base.clone();
                label.extend(r.label.iter().map(|(k, v)| (*k, (*v).to_owned())));
                series(out, &name, &label, counters[r.stat as usize]);
            }
        }
    }
    family(
        out,
        "capture_pods_enrolled",
        "gauge",
        "Pods enrolled in the node's programs.",
    );
    let _ = writeln!(out, "capture_pods_enrolled {}", s.enrolled);
    family(
        out,
        "capture_map_entries",
        "gauge",
        "Entries in each of the node's maps.",
    );
    for m in &s.maps {
        series(
            out,
            "capture_map_entries",
            &[("map", m.map.to_owned())],
            m.entries as u64,
        );
    }
    family(
        out,
        "capture_map_capacity",
        "gauge",
        "Capacity (max_entries) of each of the node's maps.",
    );
    for m in &s.maps {
        series(
            out,
            "capture_map_capacity",
            &[("map", m.map.to_owned())],
            u64::from(m.capacity),
        );
    }
    program_metrics(out, &s.programs);
}

/// Each program's runs and run time, as the kernel counts them (while
/// `kernel.bpf_stats_enabled` is 1; the series stay flat otherwise).
fn program_metrics(out: &mut String, programs: &Result<Vec<ProgramCost>, String>) {
    let programs = match programs {
        Ok(programs) => programs,
        Err(reason) => {
            let _ = writeln!(
                out,
                "# program statistics unreadable: {}",
                reason.replace('\n', " ")
            );
            return;
        }
    };
    family(
        out,
        "capture_program_runs_total",
        "counter",
        "Runs of each eBPF program (the pods' sk_lookup stubs together), counted while kernel.bpf_stats_enabled is 1.",
    );
    for p in programs {
        series(
            out,
            "capture_program_runs_total",
            &[("program", p.program.to_owned())],
            p.runs,
        );
    }
    family(
        out,
        "capture_program_run_seconds_total",
        "counter",
        "Time spent in each eBPF program's runs, counted while kernel.bpf_stats_enabled is 1.",
    );
    for p in programs {
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds as seconds, for a metric")]
        let seconds = p.run_time_ns as f64 / 1e9;
        let _ = writeln!(
            out,
            "capture_program_run_seconds_total{{program=\"{}\"}} {seconds}",
            p.program
        );
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP {name} {}",
        help.replace('\\', "\\\\").replace('\n', "\\n")
    );
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn series(out: &mut String, name: &str, labels: &[(&str, String)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let value = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(out, "{key}=\"{value}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

#[cfg(test)]
mod tests {
    use capture_ebpf_common::{STAT_COUNT, STAT_SLOTS};

    use super::*;

    /// Whether every `STAT_*` index is named exactly once.
    fn table_complete() -> Result<(), String> {
        for stat in 0..STAT_COUNT {
            let rows = COUNTERS.iter().filter(|r| r.stat == stat).count();
            if rows != 1 {
                return Err(format!("STAT index {stat} has {rows} rows in COUNTERS, not 1"));
            }
        }
        if COUNTERS.len() != STAT_COUNT as usize {
            return Err(format!(
                "COUNTERS has {} rows for {STAT_COUNT} slots",
                COUNTERS.len()
            ));
        }
        Ok(())
    }

    #[test]
    fn every_stat_slot_has_exactly_one_name() {
        table_complete().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn rows_of_one_name_share_help_and_label_key() {
        for a in COUNTERS {
            for b in COUNTERS.iter().filter(|b| b.name == a.name) {
                assert_eq!(a.help, b.help, "{}", a.name);
                assert_eq!(a.label.map(|l| l.0), b.label.map(|l| l.0), "{}", a.name);
            }
        }
    }

    #[test]
    fn renders_node_pod_and_map_series() {
        let mut counters = [0; STAT_SLOTS as usize];
        counters[STAT_OUTBOUND as usize] = 3;
        counters[STAT_PASSED as usize] = 2;
        counters[STAT_BYPASS_UID as usize] = 2;
        let mut pod = [0; STAT_SLOTS as usize];
        pod[STAT_OUTBOUND as usize] = 1;
        pod[STAT_BYPASS_CIDR as usize] = 1;
        let snapshot = Snapshot {
            counters,
            pods: vec![(NetnsCookie(4097), pod)],
            enrolled: 1,
            maps: vec![MapUsage {
                map: "POD_CONFIG",
                entries: 1,
                capacity: 4096,
            }],
            metadata: vec![(
                NetnsCookie(4097),
                PodMetadata {
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                    pod_namespace: Some("default".into()),
                    pod_name: Some("web".into()),
                    netns_path: None,
                },
            )],
            programs: Ok(vec![ProgramCost {
                program: "capture_connect4",
                instances: 1,
                runs: 4,
                run_time_ns: 2_500_000_000,
            }]),
        };
        assert_eq!(
            snapshot.pod_labels(NetnsCookie(4097)),
            [("namespace", "default".to_owned()), ("pod", "web".to_owned())]
        );
        assert!(snapshot.pod_labels(NetnsCookie(1)).is_empty());
        let agent = AgentCounters {
            gc_reclaimed: 5,
            gc_runs: 7,
            gc_errors: 0,
        };
        let text = render(Ok(&snapshot), agent, &|_| vec![("pod", "a\"b".to_owned())]);
        for line in [
            "# TYPE capture_connections_total counter",
            "capture_connections_total{direction=\"outbound\"} 3",
            "capture_connections_total{direction=\"inbound\"} 0",
            "capture_passed_total 2",
            "capture_bypassed_total{reason=\"uid\"} 2",
            "capture_bypassed_total{reason=\"gid\"} 0",
            "capture_pod_connections_total{netns_cookie=\"4097\",pod=\"a\\\"b\",direction=\"outbound\"} 1",
            "capture_pod_passed_total{netns_cookie=\"4097\",pod=\"a\\\"b\"} 0",
            "capture_pod_bypassed_total{netns_cookie=\"4097\",pod=\"a\\\"b\",reason=\"cidr\"} 1",
            "capture_pods_enrolled 1",
            "capture_map_entries{map=\"POD_CONFIG\"} 1",
            "capture_map_capacity{map=\"POD_CONFIG\"} 4096",
            "capture_gc_reclaimed_pods_total 5",
            "capture_maps_readable 1",
            "# TYPE capture_program_runs_total counter",
            "capture_program_runs_total{program=\"capture_connect4\"} 4",
            "capture_program_run_seconds_total{program=\"capture_connect4\"} 2.5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // One HELP and one TYPE per family.
        assert_eq!(text.matches("# TYPE capture_connections_total ").count(), 1);
        assert_eq!(text.matches("# TYPE capture_bypassed_total ").count(), 1);
    }

    #[test]
    fn unreadable_maps_still_give_the_agent_counters() {
        let text = render(Err("no programs\nloaded"), AgentCounters::default(), &|_| {
            Vec::new()
        });
        assert!(text.contains("capture_maps_readable 0\n"), "{text}");
        assert!(text.contains("# maps unreadable: no programs loaded\n"), "{text}");
        assert!(text.contains("capture_gc_runs_total 0\n"), "{text}");
        assert!(!text.contains("capture_connections_total"), "{text}");
    }
}
