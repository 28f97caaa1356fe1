//! The iptables backend against the real kernel and iptables 1.8.x, counting the programs it
//! runs: in a namespace with nothing to compare (a fresh pod's, or what a cleanup leaves) an
//! apply runs exactly the two restores a bare `iptables-restore` would; anywhere else it reads
//! the rules first, as before, with every guarantee that reading gives.
//!
//! Every test runs in fresh network namespaces private to a thread
//! (`capture_core::host::run_in_scratch_netns`), which die with it. Needs root (skipped
//! otherwise, failing when `CI` is set) and both iptables flavours.

#[expect(
    dead_code,
    reason = "the nftables helpers of the shared module are not needed here"
)]
mod scratch;

use std::io;
use std::sync::{Arc, Mutex};

use capture_core::apply::{Exec, Output, Pristine};
use capture_core::{
    Applied, ApplyError, ApplyOptions, CaptureSpec, Change, Family, Flavor, Iptables, State, SystemExec,
    install, uninstall,
};
use scratch::{in_scratch_netns, run};

/// The real programs, each run written down as `program args…`; `failing` fails without
/// running (as a restore the kernel refuses would).
#[derive(Debug, Clone, Default)]
struct Recording {
    calls: Arc<Mutex<Vec<String>>>,
    failing: Option<&'static str>,
}

impl Recording {
    fn failing(program: &'static str) -> Self {
        Self {
            failing: Some(program),
            ..Self::default()
        }
    }

    /// The runs so far, forgotten.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl Exec for Recording {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{program} {}", args.join(" ")).trim_end().to_owned());
        if self.failing == Some(program) {
            return Ok(Output {
                success: false,
                code: Some(1),
                stdout: String::new(),
                stderr: "injected".to_owned(),
            });
        }
        SystemExec::default().run(program, args, stdin)
    }

    fn pristine(&self, flavor: Flavor, families: &[Family]) -> Option<Pristine> {
        SystemExec::default().pristine(flavor, families)
    }
}

fn dual_stack() -> CaptureSpec {
    let mut spec = CaptureSpec::sidecar();
    spec.ipv6 = true;
    spec
}

/// The restores of both families, as a bare `iptables-restore` runs them.
fn restores(flavor: Flavor) -> Vec<String> {
    let wait = if flavor == Flavor::Legacy {
        " --wait 30"
    } else {
        ""
    };
    [Family::V4, Family::V6]
        .map(|f| format!("{} --noflush{wait}", flavor.restore(f)))
        .to_vec()
}

fn applied(changes: &[(Family, Change)]) -> bool {
    changes == [(Family::V4, Change::Applied), (Family::V6, Change::Applied)]
}

/// Loads `payload` (one family's tables) with the real `restore --noflush`.
fn load(flavor: Flavor, family: Family, payload: &str) {
    let out = SystemExec::default()
        .run(flavor.restore(family), &["--noflush"], Some(payload))
        .unwrap();
    assert!(out.success, "{}: {}", flavor.restore(family), out.stderr);
}

fn for_each_flavor(test: &str, body: impl Fn(Flavor) + Sync) {
    for flavor in [Flavor::Nft, Flavor::Legacy] {
        in_scratch_netns(&format!("{test} ({})", flavor.as_str()), || body(flavor));
    }
}

/// Capture is complete in both families: the rules read back equal.
#[track_caller]
fn complete(backend: &Iptables<Recording>, spec: &CaptureSpec) {
    for &family in spec.families() {
        assert_eq!(backend.state(spec, family).unwrap(), State::Equal, "{family}");
    }
}

#[test]
fn a_fresh_namespace_costs_the_two_restores_and_a_rerun_none() {
    for_each_flavor(
        "a_fresh_namespace_costs_the_two_restores_and_a_rerun_none",
        |flavor| {
            let spec = dual_stack();
            let exec = Recording::default();
            let backend = Iptables::new(exec.clone(), flavor);
            let Applied { changes, warnings } = install(&backend, &spec, ApplyOptions::default()).unwrap();
            assert!(applied(&changes), "{changes:?}");
            assert!(warnings.is_empty(), "{warnings:?}");
            assert_eq!(exec.take(), restores(flavor));
            complete(&backend, &spec);
            exec.take();

            // A rerun reads the rules, finds them in place and writes nothing.
            let again = install(&backend, &spec, ApplyOptions::default()).unwrap();
            assert_eq!(
                again.changes,
                [(Family::V4, Change::Unchanged), (Family::V6, Change::Unchanged)]
            );
            let calls = exec.take();
            assert!(calls.iter().all(|c| c.contains("-save")), "{calls:?}");
        },
    );
}

#[test]
fn what_a_cleanup_leaves_costs_the_two_restores_too() {
    for_each_flavor("what_a_cleanup_leaves_costs_the_two_restores_too", |flavor| {
        let spec = dual_stack();
        let exec = Recording::default();
        let backend = Iptables::new(exec.clone(), flavor);
        install(&backend, &spec, ApplyOptions::default()).unwrap();
        assert!(uninstall(&backend, &spec).unwrap());
        // The tables stay, with their built-in chains empty.
        assert!(
            backend
                .save(Family::V4)
                .unwrap()
                .tables
                .contains_key(&capture_core::TableName::Nat),
            "a cleanup leaves the nat table"
        );
        exec.take();
        let again = install(&backend, &spec, ApplyOptions::default()).unwrap();
        assert!(applied(&again.changes), "{:?}", again.changes);
        assert_eq!(exec.take(), restores(flavor));
        complete(&backend, &spec);
    });
}

/// A foreign rule that ends traversal ahead of capture's: the rules are read and compared as
/// before, so the warning (and --strict's refusal) stay.
#[test]
fn foreign_rules_are_read_and_warned_about() {
    for_each_flavor("foreign_rules_are_read_and_warned_about", |flavor| {
        let spec = dual_stack();
        load(
            flavor,
            Family::V4,
            "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -j RETURN\nCOMMIT\n",
        );
        let exec = Recording::default();
        let backend = Iptables::new(exec.clone(), flavor);
        let strict = ApplyOptions {
            strict: true,
            ..ApplyOptions::default()
        };
        let err = install(&backend, &spec, strict).unwrap_err();
        assert!(matches!(err, ApplyError::Shadowed { .. }), "{err:?}");
        assert_eq!(
            exec.take(),
            [flavor.save(Family::V4), flavor.save(Family::V6)],
            "read, refused, nothing written"
        );
        assert_eq!(backend.state(&spec, Family::V4).unwrap(), State::Absent);
        exec.take();

        let Applied { changes, warnings } = install(&backend, &spec, ApplyOptions::default()).unwrap();
        assert!(applied(&changes), "{changes:?}");
        assert_eq!(
            warnings,
            [
                "IPv4: nat OUTPUT rule 1 '-p tcp -j RETURN' comes before capture's rules and can end the packet's traversal"
            ]
        );
        let calls = exec.take();
        assert_eq!(calls[..2], [flavor.save(Family::V4), flavor.save(Family::V6)]);
        assert_eq!(calls[2..], restores(flavor));
    });
}

/// Anything in a table but empty built-in chains (here an empty chain of someone else's) is
/// read and compared, as before.
#[test]
fn a_table_with_more_than_empty_builtin_chains_is_read() {
    for_each_flavor("a_table_with_more_than_empty_builtin_chains_is_read", |flavor| {
        let spec = dual_stack();
        load(flavor, Family::V6, "*raw\n:FOREIGN - [0:0]\nCOMMIT\n");
        let exec = Recording::default();
        let backend = Iptables::new(exec.clone(), flavor);
        let applied_now = install(&backend, &spec, ApplyOptions::default()).unwrap();
        assert!(applied(&applied_now.changes), "{:?}", applied_now.changes);
        let calls = exec.take();
        assert_eq!(calls[..2], [flavor.save(Family::V4), flavor.save(Family::V6)]);
        assert_eq!(calls[2..], restores(flavor));
    });
}

#[test]
fn other_capture_rules_are_still_drift() {
    for_each_flavor("other_capture_rules_are_still_drift", |flavor| {
        let backend = Iptables::new(Recording::default(), flavor);
        install(&backend, &dual_stack(), ApplyOptions::default()).unwrap();
        let mut other = dual_stack();
        other.proxy.outbound = "15002".parse().unwrap();
        let err = install(&backend, &other, ApplyOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                ApplyError::Drift {
                    family: Family::V4,
                    ..
                }
            ),
            "{err:?}"
        );
        complete(&backend, &dual_stack());
    });
}

/// IPv4 is applied without reading anything first; IPv6's restore fails; IPv4 is put back as
/// it was: nothing of capture's is left.
#[test]
fn a_failing_ipv6_restore_after_a_fresh_ipv4_leaves_nothing() {
    for_each_flavor(
        "a_failing_ipv6_restore_after_a_fresh_ipv4_leaves_nothing",
        |flavor| {
            let spec = dual_stack();
            let exec = Recording::failing(flavor.restore(Family::V6));
            let backend = Iptables::new(exec.clone(), flavor);
            let err = install(&backend, &spec, ApplyOptions::default()).unwrap_err();
            assert!(
                matches!(&err, ApplyError::RolledBack { rolled_back, .. } if rolled_back == &[Family::V4]),
                "{err:?}"
            );
            let calls = exec.take();
            assert_eq!(calls[..2], restores(flavor));
            for family in [Family::V4, Family::V6] {
                let saved = backend.save(family).unwrap();
                for (name, table) in &saved.tables {
                    for (chain, rules) in &table.chains {
                        assert!(
                            !chain.starts_with("ISTIO_") && rules.is_empty(),
                            "{family} {name:?} {chain}: {rules:?}"
                        );
                    }
                }
            }
            // And the next run finds nothing to compare again.
            let ok = Iptables::new(Recording::default(), flavor);
            assert!(applied(
                &install(&ok, &spec, ApplyOptions::default()).unwrap().changes
            ));
            complete(&backend, &spec);
        },
    );
}

/// The flavour iptables on `PATH` is.
fn system_flavor() -> Flavor {
    if run("iptables", &["--version"]).contains("legacy") {
        Flavor::Legacy
    } else {
        Flavor::Nft
    }
}

#[test]
fn detection_in_a_fresh_namespace_runs_nothing() {
    in_scratch_netns("detection_in_a_fresh_namespace_runs_nothing", || {
        let exec = Recording::default();
        let backend = Iptables::detect(exec.clone()).unwrap();
        assert_eq!(backend.flavor(), system_flavor());
        assert_eq!(exec.take(), Vec::<String>::new());
        install(&backend, &dual_stack(), ApplyOptions::default()).unwrap();
        assert_eq!(exec.take(), restores(system_flavor()));
        // With capture in place it reads both flavours; after a cleanup, again nothing.
        assert_eq!(Iptables::detect(exec.clone()).unwrap().flavor(), system_flavor());
        assert!(!exec.take().is_empty());
        uninstall(&backend, &dual_stack()).unwrap();
        exec.take();
        assert_eq!(Iptables::detect(exec.clone()).unwrap().flavor(), system_flavor());
        assert_eq!(exec.take(), Vec::<String>::new());
    });
}

/// Rules in the other flavour than the system's make detection read both and pick that one.
#[test]
fn detection_still_follows_existing_rules() {
    in_scratch_netns("detection_still_follows_existing_rules", || {
        let other = match system_flavor() {
            Flavor::Nft => Flavor::Legacy,
            Flavor::Legacy => Flavor::Nft,
        };
        load(
            other,
            Family::V4,
            "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -d 10.9.9.9/32 -j RETURN\nCOMMIT\n",
        );
        let exec = Recording::default();
        let backend = Iptables::detect(exec.clone()).unwrap();
        assert_eq!(backend.flavor(), other);
        let calls = exec.take();
        assert!(
            calls.contains(&"iptables-nft-save".to_owned())
                && calls.contains(&"iptables-legacy-save".to_owned()),
            "{calls:?}"
        );
    });
}
