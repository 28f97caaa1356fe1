//! What capture's fuzz targets share: the text form of an istio-iptables configuration, a fixed
//! user and group table, a stand-in for the iptables programs, and the invariants every
//! accepted capture spec must keep.
//!
//! The invariants, checked by [`check_spec`] on every spec that validation accepts:
//!
//! - it plans and renders for each of its families without panicking, and every line of the
//!   `iptables-restore` payload is a table, a chain, a rule or `COMMIT` (no value smuggles in a
//!   line of its own);
//! - applying it where nothing is installed restores exactly that payload;
//! - its rules, written the way `iptables-save` prints them (the saved-form renderer the drift
//!   check uses), compare as [`State::Equal`]: a rerun over its own rules changes nothing.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io;

use capture_core::apply::{Exec, Output};
use capture_core::render::Saved;
use capture_core::rules::{ChainName, OwnerMatch, RuleSet};
use capture_core::{
    Accounts, ApplyOptions, CaptureSpec, Change, Detected, Family, Flavor, Iptables, IstioConfig, Owner,
    Restore, State, SystemAccounts, parse_resolv_conf, plan,
};

/// Users and groups the targets validate against: fixed, so a run does not depend on the
/// machine and never waits on NSS. `minus-one` resolves to 4294967295, an id iptables refuses.
#[derive(Debug, Clone, Copy, Default)]
pub struct FuzzAccounts;

impl Accounts for FuzzAccounts {
    fn uid(&self, name: &str) -> Option<u32> {
        match name {
            "root" => Some(0),
            "istio-proxy" => Some(1337),
            "nobody" => Some(65534),
            "minus-one" => Some(u32::MAX),
            _ => None,
        }
    }

    fn gid(&self, name: &str) -> Option<u32> {
        match name {
            "root" => Some(0),
            "java" => Some(20001),
            "ftp" => Some(20002),
            "nogroup" => Some(65534),
            "minus-one" => Some(u32::MAX),
            _ => None,
        }
    }
}

/// Reads an istio-iptables configuration from `key=value` lines: the long flag names
/// (`envoy-port=15001`, `redirect-dns=true`), the owner-group and loopback variables
/// (`ISTIO_OUTBOUND_OWNER_GROUPS=java,202`), and what Istio detects from the pod (`ipv6=true`,
/// and `resolv.conf=<line>` once per line of the pod's resolv.conf). Other lines are ignored;
/// unset keys keep istio-iptables' defaults.
pub fn istio_config(text: &str) -> (IstioConfig, Detected) {
    let mut cfg = IstioConfig::default();
    let mut detected = Detected::default();
    let mut resolv = String::new();
    for line in text.split('\n') {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let set = |field: &mut String| *field = value.to_owned();
        let on = value == "true";
        match key {
            "envoy-port" => set(&mut cfg.envoy_port),
            "inbound-capture-port" => set(&mut cfg.inbound_capture_port),
            "inbound-tunnel-port" => set(&mut cfg.inbound_tunnel_port),
            "proxy-uid" => set(&mut cfg.proxy_uid),
            "proxy-gid" => set(&mut cfg.proxy_gid),
            "istio-inbound-interception-mode" => set(&mut cfg.interception_mode),
            "istio-inbound-ports" => set(&mut cfg.inbound_ports),
            "istio-local-exclude-ports" => set(&mut cfg.local_exclude_ports),
            "istio-exclude-interfaces" => set(&mut cfg.exclude_interfaces),
            "istio-service-cidr" => set(&mut cfg.service_cidr),
            "istio-service-exclude-cidr" => set(&mut cfg.service_exclude_cidr),
            "istio-outbound-ports" => set(&mut cfg.outbound_ports),
            "istio-local-outbound-ports-exclude" => set(&mut cfg.local_outbound_ports_exclude),
            "kube-virt-interfaces" => set(&mut cfg.kube_virt_interfaces),
            "istio-inbound-tproxy-mark" => set(&mut cfg.tproxy_mark),
            "istio-inbound-tproxy-route-table" => set(&mut cfg.tproxy_route_table),
            "ISTIO_OUTBOUND_OWNER_GROUPS" => set(&mut cfg.owner_groups_include),
            "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE" => set(&mut cfg.owner_groups_exclude),
            "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR" => set(&mut cfg.ipv4_loopback_cidr),
            "redirect-dns" => cfg.redirect_dns = on,
            "capture-all-dns" => cfg.capture_all_dns = on,
            "drop-invalid" => cfg.drop_invalid = on,
            "ipv6" => detected.ipv6 = on,
            "resolv.conf" => {
                resolv.push_str(value);
                resolv.push('\n');
            }
            _ => {}
        }
    }
    detected.nameservers = parse_resolv_conf(&resolv).0;
    (cfg, detected)
}

/// Stands in for the iptables programs: `*-save` prints the dump given for its family,
/// `*-restore` succeeds (or fails from the `fail_restore`-th call on) and is recorded.
#[derive(Debug, Default)]
pub struct FakeIptables {
    /// What `iptables-save` prints.
    pub v4: String,
    /// What `ip6tables-save` prints.
    pub v6: String,
    /// The restore call (counted from 0) from which restores fail, if any.
    pub fail_restore: Option<usize>,
    /// Each restore: program, arguments and payload.
    pub restores: RefCell<Vec<(String, Vec<String>, String)>>,
}

// On a reference, so the caller keeps the fake to read its records after the backend ran.
impl Exec for &FakeIptables {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
        let ok = |stdout: &str| Output {
            success: true,
            code: Some(0),
            stdout: stdout.to_owned(),
            stderr: String::new(),
        };
        if program.ends_with("-save") {
            return Ok(ok(if program.starts_with("ip6") {
                &self.v6
            } else {
                &self.v4
            }));
        }
        let mut restores = self.restores.borrow_mut();
        let failing = self.fail_restore.is_some_and(|n| restores.len() >= n);
        restores.push((
            program.to_owned(),
            args.iter().map(|a| (*a).to_owned()).collect(),
            stdin.unwrap_or_default().to_owned(),
        ));
        if failing {
            return Ok(Output {
                success: false,
                code: Some(1),
                stdout: String::new(),
                stderr: "iptables-restore: line 2 failed\n".into(),
            });
        }
        Ok(ok(""))
    }
}

/// Asserts that every line of a restore payload capture writes is a table, a chain, a rule
/// command or `COMMIT`, and that the payload ends with a `COMMIT`.
pub fn assert_restore_lines(payload: &str) {
    assert!(payload.is_empty() || payload.ends_with("COMMIT\n"), "{payload:?}");
    for line in payload.lines() {
        let known = line == "COMMIT"
            || ["* ", "*", ":", "-N ", "-A ", "-I ", "-D ", "-F ", "-X "]
                .iter()
                .any(|p| line.starts_with(p) && line.len() > p.len());
        assert!(known, "unexpected restore line {line:?} in {payload:?}");
    }
}

/// [`assert_restore_lines`], and nothing iptables-restore would read other than as written:
/// no control character, and no `"`, which its tokenizer takes as a quote (so `-o a"b -j
/// RETURN` loads as a rule on an interface named `ab -j RETURN` with no target).
pub fn assert_clean_restore(payload: &str) {
    assert_restore_lines(payload);
    let bad = payload
        .chars()
        .find(|c| (c.is_control() && *c != '\n') || *c == '"');
    assert!(bad.is_none(), "{bad:?} in the payload {payload:?}");
}

/// `iptables-save` output for `rules`, as the kernel would print it once they are loaded into
/// empty tables, from the saved-form renderer.
pub fn saved_text(rules: &RuleSet) -> String {
    // The drift check resolves owner names with the system's databases; so must this.
    let resolve = |owner: &OwnerMatch| match owner {
        OwnerMatch::Uid(Owner::Name(name)) => SystemAccounts.uid(name),
        OwnerMatch::Gid(Owner::Name(name)) => SystemAccounts.gid(name),
        _ => None,
    };
    let mut out = String::from("# Generated by iptables-save v1.8.9\n");
    for table in &rules.tables {
        let contents = table.chain_contents();
        let _ = writeln!(out, "*{}", table.name.as_str());
        for chain in contents.keys() {
            match chain {
                ChainName::Builtin(_) => {
                    let _ = writeln!(out, ":{chain} ACCEPT [0:0]");
                }
                ChainName::Own(_) => {
                    let _ = writeln!(out, ":{chain} - [0:0]");
                }
            }
        }
        for (chain, list) in &contents {
            for rule in list {
                let saved = Saved {
                    rule,
                    family: rules.family,
                    resolve: &resolve,
                };
                let _ = writeln!(out, "-A {chain} {saved}");
            }
        }
        out.push_str("COMMIT\n");
    }
    out.push_str("# Completed\n");
    out
}

/// The invariants of an accepted spec (see the crate documentation).
pub fn check_spec(spec: &CaptureSpec) {
    let mut payloads = Vec::new();
    let mut saved = [String::new(), String::new()];
    for &family in spec.families() {
        let rules = plan(spec, family);
        let payload = Restore(&rules).to_string();
        assert_clean_restore(&payload);
        saved[usize::from(family == Family::V6)] = saved_text(&rules);
        payloads.push(payload);
    }

    // Nothing installed: applying restores exactly the payloads, IPv4 first.
    let empty = FakeIptables::default();
    let changes = Iptables::new(&empty, Flavor::Nft)
        .apply(spec, ApplyOptions::default())
        .unwrap_or_else(|e| panic!("applying to empty tables failed: {e}"));
    assert!(changes.changes.iter().all(|(_, c)| *c == Change::Applied), "{changes:?}");
    let restores = empty.restores.borrow();
    let restored: Vec<&str> = restores.iter().map(|(_, _, p)| p.as_str()).collect();
    assert_eq!(
        restored, payloads,
        "applied payloads differ from the rendered ones"
    );

    // Its own rules in place: the drift check sees them as equal, and a rerun changes nothing.
    let [v4, v6] = saved;
    let installed = FakeIptables {
        v4,
        v6,
        ..FakeIptables::default()
    };
    let backend = Iptables::new(&installed, Flavor::Legacy);
    for &family in spec.families() {
        let state = backend.state(spec, family).expect("the fake save succeeds");
        let dump = if family == Family::V4 {
            &installed.v4
        } else {
            &installed.v6
        };
        assert_eq!(
            state,
            State::Equal,
            "{family}: its own saved rules differ:\n{dump}"
        );
    }
    let rerun = backend
        .apply(spec, ApplyOptions::default())
        .unwrap_or_else(|e| panic!("rerun failed: {e}"));
    assert!(rerun.changes.iter().all(|(_, c)| *c == Change::Unchanged), "{rerun:?}");
    assert!(
        installed.restores.borrow().is_empty(),
        "a rerun restored something"
    );
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn seeds(target: &str) -> Vec<(String, String)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target);
        let mut seeds: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&path).unwrap())
            })
            .collect();
        seeds.sort();
        assert!(seeds.len() >= 5, "{target}: a handful of seeds");
        seeds
    }

    /// The seeds are configurations capture accepts, so fuzzing starts from the deep paths;
    /// `regression-*` inputs once broke an invariant and are refused now.
    #[test]
    fn istio_config_seeds_are_accepted_and_keep_the_invariants() {
        for (name, text) in seeds("istio_config") {
            let (cfg, detected) = istio_config(&text);
            let result = cfg.to_spec_with(&detected, &FuzzAccounts);
            if name.starts_with("regression-") {
                assert!(result.is_err(), "{name} is accepted");
                continue;
            }
            let (spec, _) = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            check_spec(&spec);
        }
    }

    #[test]
    fn iptables_save_seeds_hold_capture_chains() {
        for (name, text) in seeds("iptables_save") {
            let saved = capture_core::apply::SavedState::parse(&text);
            assert!(!saved.own_chains().is_empty(), "{name}");
        }
    }

    #[test]
    fn the_sidecar_keeps_the_invariants() {
        check_spec(&CaptureSpec::sidecar());
    }
}
