//! The real `capture-init` binary, with real argv and environment, through `--dry-run`,
//! compared with istio-iptables' goldens; and its answers to bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

use capture_e2e::{SIDECAR_ARGS, TempDir};

/// Istio's `--native-nftables` transaction for a case.
fn nft_golden(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../capture-core/testdata/istio/nftables/capture/{name}.golden"
    ));
    std::fs::read_to_string(path).unwrap()
}

/// Which rules a dry run prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rules {
    /// istio-iptables' restore payloads.
    Iptables,
    /// Istio's native nftables transaction (`--native-nftables`).
    Nftables,
}

fn golden(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../capture-core/testdata/istio/iptables/{name}.golden"));
    let log = std::fs::read_to_string(path).unwrap();
    // The call log minus the iptables-save calls is the restore payloads, IPv4 then IPv6.
    log.lines()
        .filter(|l| !matches!(*l, "iptables-save" | "ip6tables-save"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Runs the binary with exactly these arguments and variables (the test's own environment is
/// not passed on, so a stray PROXY_UID on the machine cannot change the result).
fn capture_init(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capture-init"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("capture-init runs")
}

#[track_caller]
fn assert_same(name: &str, expected: &str, actual: &str) {
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected, actual);
        panic!(
            "{name}: dry run differs from Istio's golden\n{}",
            diff.unified_diff().header("istio", "capture-init")
        );
    }
}

/// Runs the binary as [`capture_init`] does, but seeing `groups` in its group database:
/// in a mount namespace of the child's own, a copy of /etc/group that lists them is
/// bind-mounted over /etc/group. The namespace, and with it the mount, ends with the child.
fn capture_init_with_groups(args: &[&str], env: &[(&str, &str)], groups: &[&str]) -> Output {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::process::CommandExt as _;

    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};

    let mut text = std::fs::read_to_string("/etc/group").unwrap();
    for (gid, name) in (20001..).zip(groups) {
        text.push_str(&format!("{name}:x:{gid}:\n"));
    }
    let dir = TempDir::new("group");
    let file = dir.file("group", &text);
    let source = std::ffi::CString::new(file.as_os_str().as_bytes()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capture-init"));
    cmd.args(args).env_clear().envs(env.iter().copied());
    // SAFETY: between fork and exec the closure makes three syscalls on strings prepared
    // before the fork; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            unshare(CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&str>,
                c"/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            mount(
                Some(source.as_c_str()),
                c"/etc/group",
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        });
    }
    cmd.output().expect("capture-init runs")
}

struct Case {
    name: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    ipv6: bool,
    resolv_conf: Option<&'static str>,
    /// Group names the case uses, which the machine must know (iptables resolves them).
    groups: &'static [&'static str],
}

const fn case(name: &'static str, args: &'static [&'static str], ipv6: bool) -> Case {
    Case {
        name,
        args,
        env: &[],
        ipv6,
        resolv_conf: None,
        groups: &[],
    }
}

/// upstream's case table as istio-iptables command lines; the base is `-u 1337 -g 1337`.
const CASES: &[Case] = &[
    case("ipv6-empty-inbound-ports", &[], true),
    Case {
        resolv_conf: Some("nameserver 127.0.0.53\n"),
        ..case(
            "ip-range",
            &[
                "-x",
                "1.1.0.0/16",
                "-i",
                "9.9.0.0/16",
                "--redirect-dns",
                "-u",
                "3,4",
                "-g",
                "1,2",
            ],
            false,
        )
    },
    Case {
        resolv_conf: Some("nameserver 127.0.0.53\n"),
        ..case(
            "tproxy",
            &[
                "-m",
                "TPROXY",
                "-b",
                "*",
                "-x",
                "1.1.0.0/16",
                "-i",
                "9.9.0.0/16",
                "--redirect-dns",
                "-c",
                "not-istio-nic",
            ],
            true,
        )
    },
    case("ipv6-inbound-ports", &["-b", "4000,5000"], true),
    case(
        "ipv6-virt-interfaces",
        &["-b", "4000,5000", "-k", "eth0,eth1"],
        true,
    ),
    case(
        "ipv6-ipnets",
        &[
            "-b",
            "4000,5000",
            "-d",
            "6000,7000,",
            "-k",
            "eth0,eth1",
            "-x",
            "2001:db8::/32",
            "-i",
            "2001:db8::/32",
        ],
        true,
    ),
    case(
        "ipv6-uid-gid",
        &[
            "-b",
            "4000,5000",
            "-d",
            "6000,7000",
            "-k",
            "eth0,eth1",
            "-u",
            "3,4",
            "-g",
            "1,2",
            "-x",
            "2001:db8::/32",
            "-i",
            "2001:db8::/32",
        ],
        true,
    ),
    case("ipv6-outbound-ports", &["-q", "32000,31000"], true),
    case("empty", &[], false),
    case("kube-virt-interfaces", &["-k", "eth1,eth2", "-i", "*"], false),
    case("ipnets", &["-i", "10.0.0.0/8"], false),
    case(
        "ipnets-with-kube-virt-interfaces",
        &["-k", "eth1,eth2", "-i", "10.0.0.0/8"],
        false,
    ),
    case("inbound-ports-include", &["-b", "32000,31000"], false),
    case("inbound-ports-wildcard", &["-b", "*"], false),
    case(
        "inbound-ports-tproxy",
        &["-b", "32000,31000", "-m", "TPROXY"],
        false,
    ),
    case(
        "inbound-ports-wildcard-tproxy",
        &["-b", "*", "-m", "TPROXY"],
        false,
    ),
    Case {
        resolv_conf: Some(
            "search svc.cluster.local\nnameserver 127.0.0.53\nnameserver ::127.0.0.53\noptions ndots:5\n",
        ),
        ..case("dns-uid-gid", &["--redirect-dns", "-u", "3,4", "-g", "1,2"], true)
    },
    Case {
        resolv_conf: Some("search svc.cluster.local\n"),
        ..case(
            "ipv6-dns-uid-gid",
            &["--redirect-dns", "-u", "3,4", "-g", "1,2"],
            true,
        )
    },
    Case {
        env: &[("ISTIO_OUTBOUND_OWNER_GROUPS", "java,202")],
        groups: &["java"],
        ..case("outbound-owner-groups", &[], false)
    },
    Case {
        env: &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888,ftp")],
        groups: &["ftp"],
        ..case("outbound-owner-groups-exclude", &[], false)
    },
    Case {
        env: &[("ISTIO_OUTBOUND_OWNER_GROUPS", "java,202")],
        resolv_conf: Some(""),
        groups: &["java"],
        ..case("ipv6-dns-outbound-owner-groups", &["--redirect-dns"], true)
    },
    Case {
        env: &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888,ftp")],
        resolv_conf: Some(""),
        groups: &["ftp"],
        ..case(
            "ipv6-dns-outbound-owner-groups-exclude",
            &["--redirect-dns"],
            true,
        )
    },
    case("outbound-ports-include", &["-q", "32000,31000"], false),
    Case {
        resolv_conf: Some("nameserver 127.0.0.53\n"),
        ..case(
            "loopback-outbound-iprange",
            &["-i", "127.1.2.3/32", "--redirect-dns", "-u", "3,4", "-g", "1,2"],
            false,
        )
    },
    case("basic-exclude-nic", &["-c", "not-istio-nic"], false),
    case("drop-invalid", &["--drop-invalid"], false),
    Case {
        env: &[("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/8")],
        ..case("host-ipv4-loopback-cidr", &[], false)
    },
];

#[test]
fn every_golden_through_the_binary() {
    assert_eq!(CASES.len(), 27);
    for case in CASES.iter().filter(|c| c.groups.is_empty()) {
        golden_through_the_binary(case, Rules::Iptables);
    }
}

/// The case only Istio's nftables tests have.
const NFT_ONLY_CASES: &[Case] = &[case(
    "inbound-ports-empty-tproxy",
    &["-b", "", "-m", "TPROXY"],
    false,
)];

/// Every nftables golden through the real binary: `--native-nftables --dry-run` prints Istio's
/// transaction byte for byte (Istio's own nft mode ignores `--dry-run`).
#[test]
fn every_nft_golden_through_the_binary() {
    let cases: Vec<&Case> = CASES.iter().chain(NFT_ONLY_CASES).collect();
    assert_eq!(cases.len(), 28);
    for case in cases.into_iter().filter(|c| c.groups.is_empty()) {
        golden_through_the_binary(case, Rules::Nftables);
    }
}

/// Istio's owner-group cases name groups (`java`, `ftp`) that iptables must resolve, so they
/// run where those groups exist: in a mount namespace with an /etc/group that has them.
#[test]
fn owner_group_goldens_through_the_binary() {
    if !capture_e2e::require_root() {
        return;
    }
    let cases: Vec<&Case> = CASES.iter().filter(|c| !c.groups.is_empty()).collect();
    assert_eq!(cases.len(), 4);
    for case in cases {
        golden_through_the_binary(case, Rules::Iptables);
        golden_through_the_binary(case, Rules::Nftables);
    }
}

fn golden_through_the_binary(case: &Case, rules: Rules) {
    // A resolv.conf for the cases that capture DNS per nameserver.
    let scratch = TempDir::new(case.name);
    let resolv = case.resolv_conf.map(|text| scratch.file("resolv.conf", text));
    let mut args = vec![
        "-u",
        "1337",
        "-g",
        "1337",
        "--dry-run",
        "--ipv6",
        if case.ipv6 { "on" } else { "off" },
    ];
    if let Some(file) = &resolv {
        args.extend(["--resolv-conf", file.to_str().unwrap()]);
    }
    args.extend(case.args);
    if rules == Rules::Nftables {
        args.push("--native-nftables");
    }
    let out = if case.groups.is_empty() {
        capture_init(&args, case.env)
    } else {
        capture_init_with_groups(&args, case.env, case.groups)
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {:?} failed: {stderr}", case.name, args);
    let expected = match rules {
        Rules::Iptables => golden(case.name),
        Rules::Nftables => nft_golden(case.name),
    };
    assert_same(case.name, &expected, &String::from_utf8(out.stdout).unwrap());
}

fn sidecar_payload(v6: bool) -> String {
    let v4 = include_str!("../../capture-core/testdata/sidecar.v4.restore");
    if v6 {
        format!(
            "{v4}{}",
            v4.replace("127.0.0.6/32", "::6/128")
                .replace("127.0.0.1/32", "::1/128")
        )
    } else {
        v4.to_owned()
    }
}

#[test]
fn default_sidecar_command() {
    for (ipv6, v6) in [("off", false), ("on", true)] {
        let args: Vec<&str> = SIDECAR_ARGS
            .into_iter()
            .chain(["--dry-run", "--ipv6", ipv6])
            .collect();
        let out = capture_init(&args, &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.stderr.is_empty(),
            "no warnings: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same(
            "sidecar",
            &sidecar_payload(v6),
            &String::from_utf8(out.stdout).unwrap(),
        );
    }
}

#[test]
fn pilot_agent_subcommand_form_and_log_flags() {
    let args: Vec<&str> = ["istio-iptables"]
        .into_iter()
        .chain(SIDECAR_ARGS)
        .chain(["--dry-run", "--ipv6", "off", "--log_output_level=default:info"])
        .collect();
    let out = capture_init(&args, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same(
        "sidecar",
        &sidecar_payload(false),
        &String::from_utf8(out.stdout).unwrap(),
    );
}

#[test]
fn environment_precedence() {
    let dry = ["--dry-run", "--ipv6", "off", "-u", "1337"];
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let all: Vec<&str> = dry.iter().copied().chain(args.iter().copied()).collect();
        let out = capture_init(&all, env);
        assert!(
            out.status.success(),
            "{args:?} {env:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // The variable named after the flag sets it; the command line beats it.
    assert_eq!(run(&[], &[("ISTIO_INBOUND_PORTS", "*")]), run(&["-b", "*"], &[]));
    assert_eq!(
        run(&["-b", "80"], &[("ISTIO_INBOUND_PORTS", "*")]),
        run(&["-b", "80"], &[])
    );
    // ISTIO_META_DNS_CAPTURE beats REDIRECT_DNS but not --redirect-dns=false.
    let dns = run(
        &["--capture-all-dns"],
        &[("REDIRECT_DNS", "false"), ("ISTIO_META_DNS_CAPTURE", "true")],
    );
    assert!(dns.contains("ISTIO_OUTPUT_DNS"), "{dns}");
    let off = run(
        &["--capture-all-dns", "--redirect-dns=false"],
        &[("ISTIO_META_DNS_CAPTURE", "true")],
    );
    assert!(!off.contains("ISTIO_OUTPUT_DNS"), "{off}");
    // INVALID_DROP beats DROP_INVALID.
    let drop = run(&[], &[("DROP_INVALID", "false"), ("INVALID_DROP", "true")]);
    assert!(drop.contains("-j ISTIO_DROP"), "{drop}");
    // -g defaults to -u's list.
    assert!(run(&["-u", "7"], &[]).contains("--gid-owner 7 "));
}

#[test]
fn accepted_quirks() {
    let base = ["--dry-run", "--ipv6", "off", "-u", "1337", "-b", "*"];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        capture_init(&args, &[])
    };
    // Empty list items are dropped, as Istio does.
    let out = run(&["-d", "15090,,15021"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(run(&["-d", "15090,15021"]).stdout).unwrap()
    );
    // Host bits are kept, as Go's netip.ParsePrefix keeps them.
    let out = run(&["-i", "10.0.0.1/8"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("-A ISTIO_OUTPUT -d 10.0.0.1/8 -j ISTIO_REDIRECT\n")
    );
    // Any mode but TPROXY is REDIRECT, with a warning.
    let out = run(&["-m", "FOO"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, run(&["-m", "REDIRECT"]).stdout);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("\twarn\t") && stderr.contains("\"FOO\"") && stderr.contains("REDIRECT"),
        "{stderr}"
    );
}

#[test]
fn bad_input_exits_1_naming_flag_and_value() {
    let groups_65 = (0..65).map(|g| g.to_string()).collect::<Vec<_>>().join(",");
    type BadInput<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<BadInput> = vec![
        (vec!["-b", "70000"], vec![], "-b/--istio-inbound-ports", "70000"),
        (
            vec!["-b", "*", "-d", "-1"],
            vec![],
            "-d/--istio-local-exclude-ports",
            "-1",
        ),
        (vec!["-p", "abc"], vec![], "-p/--envoy-port", "abc"),
        (vec!["-z", "0"], vec![], "-z/--inbound-capture-port", "0"),
        (
            vec!["-q", "80,99999"],
            vec![],
            "-q/--istio-outbound-ports",
            "99999",
        ),
        (
            vec!["-o", "1-2"],
            vec![],
            "-o/--istio-local-outbound-ports-exclude",
            "1-2",
        ),
        (
            vec!["-x", "10.0.0.0/33"],
            vec![],
            "-x/--istio-service-exclude-cidr",
            "10.0.0.0/33",
        ),
        (vec!["-i", "::/129"], vec![], "-i/--istio-service-cidr", "::/129"),
        (
            vec!["-i", "10.0.0.256/8"],
            vec![],
            "-i/--istio-service-cidr",
            "10.0.0.256/8",
        ),
        (vec!["-x", "*"], vec![], "-x/--istio-service-exclude-cidr", "*"),
        (vec!["-u", "bad user"], vec![], "-u/--proxy-uid", "bad user"),
        (
            vec!["-u", "no-such-user-here"],
            vec![],
            "-u/--proxy-uid",
            "no-such-user-here",
        ),
        (
            vec!["-g", "no-such-group-here"],
            vec![],
            "-g/--proxy-gid",
            "no-such-group-here",
        ),
        // (uid_t)-1 means "no id"; iptables' owner match refuses it.
        (vec!["-u", "4294967295"], vec![], "-u/--proxy-uid", "4294967295"),
        (vec!["-g", "4294967295"], vec![], "-g/--proxy-gid", "4294967295"),
        (
            vec![],
            vec![("ISTIO_OUTBOUND_OWNER_GROUPS", "4294967295")],
            "ISTIO_OUTBOUND_OWNER_GROUPS",
            "4294967295",
        ),
        // Group names iptables could not resolve when loading the rules.
        (
            vec![],
            vec![("ISTIO_OUTBOUND_OWNER_GROUPS", "no-such-group-a,no-such-group-b")],
            "ISTIO_OUTBOUND_OWNER_GROUPS",
            "\"no-such-group-a\"",
        ),
        (
            vec![],
            vec![("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888,no-such-group-b")],
            "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
            "no-such-group-b",
        ),
        (vec!["-t", "0"], vec![], "-t/--istio-inbound-tproxy-mark", "0"),
        (
            vec!["-r", "254"],
            vec![],
            "-r/--istio-inbound-tproxy-route-table",
            "254",
        ),
        (vec!["-c", "a/b"], vec![], "-c/--istio-exclude-interfaces", "a/b"),
        // iptables-restore would read the quote as one and load another rule.
        (
            vec!["-k", "eth0,tap\"0"],
            vec![],
            "-k/--kube-virt-interfaces",
            r#""tap\"0""#,
        ),
        (
            vec![],
            vec![("ISTIO_OUTBOUND_OWNER_GROUPS", groups_65.as_str())],
            "ISTIO_OUTBOUND_OWNER_GROUPS",
            "65 groups",
        ),
        (
            vec![],
            vec![("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "10.0.0.1/32")],
            "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
            "10.0.0.1/32",
        ),
        (
            vec![],
            vec![("ISTIO_SERVICE_CIDR", "nope")],
            "-i/--istio-service-cidr",
            "nope",
        ),
        (
            vec![],
            vec![("ISTIO_META_DNS_CAPTURE", "maybe")],
            "ISTIO_META_DNS_CAPTURE",
            "maybe",
        ),
        (vec!["--probe-timeout", "soon"], vec![], "--probe-timeout", "soon"),
        (
            vec!["--iptables-probe-port", "0"],
            vec![],
            "--iptables-probe-port",
            "0",
        ),
        (
            vec!["--force-iptables-version", "both"],
            vec![],
            "--force-iptables-version",
            "both",
        ),
    ];
    for (extra, env, flag, value) in cases {
        let args: Vec<&str> = ["--dry-run", "--ipv6", "off", "-u", "1337"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let out = capture_init(&args, &env);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?} {env:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: no payload on bad input");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(value),
            "{args:?}: {stderr:?} names {flag} and {value}"
        );
    }
}

/// Debian's `nobody` is a user whose group is `nogroup`: as -u it leaves -g, which defaults
/// to the -u list, naming a group that does not exist, and iptables would refuse the rules.
#[test]
fn a_user_that_is_no_group_is_refused_as_the_default_gid() {
    let user = nix::unistd::User::from_name("nobody").unwrap();
    let group = nix::unistd::Group::from_name("nobody").unwrap();
    if user.is_none() || group.is_some() {
        eprintln!("skipping: this machine's nobody is not a user without a group of that name");
        return;
    }
    let dry = ["--dry-run", "--ipv6", "off"];
    for (extra, expected) in [
        (
            &["-u", "nobody"][..],
            "error\tinvalid value \"nobody\" for -g/--proxy-gid: no such group (when no group \
             list is given, the user list is used as groups)\n",
        ),
        (
            &["-u", "1337", "-g", "nobody"],
            "error\tinvalid value \"nobody\" for -g/--proxy-gid: no such group\n",
        ),
    ] {
        let args: Vec<&str> = dry.iter().chain(extra).copied().collect();
        let out = capture_init(&args, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: no payload");
        assert_eq!(untimed(&out.stderr), expected, "{args:?}");
    }
    // With a group given, the user name is fine, and stays a name in the rules.
    let out = capture_init(
        &["--dry-run", "--ipv6", "off", "-u", "nobody", "-g", "nogroup"],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let payload = String::from_utf8(out.stdout).unwrap();
    assert!(
        payload.contains("-m owner --uid-owner nobody -j RETURN")
            && payload.contains("-m owner --gid-owner nogroup -j RETURN"),
        "{payload}"
    );
}

/// Names iptables resolves are accepted and written as given, not as numbers.
#[test]
fn known_owner_names_stay_names() {
    let out = capture_init(
        &["--dry-run", "--ipv6", "off", "-u", "root"],
        &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "root")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let payload = String::from_utf8(out.stdout).unwrap();
    for rule in [
        "--uid-owner root -j RETURN",
        "--gid-owner root -j RETURN",
        "! --gid-owner root",
    ] {
        assert!(payload.contains(rule), "{rule}: {payload}");
    }
}

#[test]
fn help_reads_like_a_man_page() {
    let out = capture_init(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for section in [
        "Usage:",
        "ENVIRONMENT:",
        "EXIT STATUS:",
        "EXAMPLES:",
        "--istio-inbound-ports",
        "[env: ISTIO_INBOUND_PORTS=",
    ] {
        assert!(help.contains(section), "--help lacks {section:?}");
    }
}

/// `--backend ebpf --dry-run` prints the map entries enrolling would write (MapPlan's form) and
/// reads nothing from the host given `--ipv6`; refused flags fail with one line and no output.
#[cfg(feature = "ebpf")]
#[test]
fn ebpf_dry_run_prints_the_map_plan() {
    let sidecar = [
        "--backend",
        "ebpf",
        "--dry-run",
        "--ipv6",
        "on",
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-m",
        "REDIRECT",
        "-i",
        "*",
        "-x",
        "10.9.0.0/16",
        "-b",
        "*",
        "-d",
        "15090,15021,15020",
        "-o",
        "8000:8080",
    ];
    let out = capture_init(&sidecar, &[]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "POD_CONFIG outbound=15001 inbound=15006 tunnel=15008 flags=0x1 loopback4=127.0.0.1/32 first_owner=uid:1337\n\
         OWNERS uid 1337\n\
         OWNERS gid 1337\n\
         PORTS out-exclude 8000/10\n\
         PORTS out-exclude 8064/12\n\
         PORTS out-exclude 8080/16\n\
         PORTS in-exclude 15008/16\n\
         PORTS in-exclude 15020/16\n\
         PORTS in-exclude 15021/16\n\
         PORTS in-exclude 15090/16\n\
         CIDRS local 127.0.0.0/8\n\
         CIDRS local 0.0.0.0/32\n\
         CIDRS local ::1/128\n\
         CIDRS local ::/128\n\
         CIDRS out-exclude 10.9.0.0/16\n\
         CIDRS out-include 0.0.0.0/0\n\
         CIDRS out-include ::/0\n"
    );

    // With --cleanup-only too, a dry run prints what cleanup would remove: here nothing.
    let cleanup: Vec<&str> = sidecar.iter().copied().chain(["--cleanup-only"]).collect();
    let out = capture_init(&cleanup, &[]);
    assert!(out.status.success());
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.starts_with('#') && said.contains("nothing to unenroll"),
        "{said}"
    );

    let out = capture_init(
        &[
            "--backend",
            "ebpf",
            "--dry-run",
            "--ipv6",
            "off",
            "-u",
            "1337",
            "-k",
            "vnet0",
        ],
        &[],
    );
    let stderr = untimed(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr,
        "error\trerouted interfaces (-k) is not supported by the eBPF backend yet; use the iptables backend\n"
    );
}

/// `--backend ebpf` plans DNS capture as two flags and the nameservers: `--redirect-dns` with
/// resolv.conf's nameservers; `ISTIO_META_DNS_CAPTURE` with `--capture-all-dns`, with none.
#[cfg(feature = "ebpf")]
#[test]
fn ebpf_dry_run_plans_dns_capture() {
    let dir = TempDir::new("resolv");
    let resolv_conf = dir.file("resolv.conf", "nameserver 10.96.0.10\nnameserver fd00::a\n");
    let resolv_conf = resolv_conf.to_str().unwrap();
    let base = [
        "--backend",
        "ebpf",
        "--dry-run",
        "--ipv6",
        "on",
        "-u",
        "1337",
        "-b",
        "*",
    ];
    let dns_lines = |out: Output| {
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let config = stdout.lines().next().unwrap().to_owned();
        let servers: Vec<String> = stdout
            .lines()
            .filter(|l| l.starts_with("CIDRS dns-server"))
            .map(str::to_owned)
            .collect();
        (config, servers)
    };

    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--redirect-dns", "--resolv-conf", resolv_conf])
        .collect();
    let (config, servers) = dns_lines(capture_init(&args, &[]));
    // FLAG_IPV6 | FLAG_DNS
    assert!(config.contains(" flags=0x21 "), "{config}");
    assert_eq!(
        servers,
        ["CIDRS dns-server 10.96.0.10/32", "CIDRS dns-server fd00::a/128"]
    );

    let args: Vec<&str> = base.iter().copied().chain(["--capture-all-dns"]).collect();
    let (config, servers) = dns_lines(capture_init(&args, &[("ISTIO_META_DNS_CAPTURE", "true")]));
    // FLAG_IPV6 | FLAG_DNS | FLAG_DNS_ALL
    assert!(config.contains(" flags=0x61 "), "{config}");
    assert!(servers.is_empty(), "{servers:?}");
}

/// A build without the feature `ebpf` refuses the eBPF backend and its node commands, naming
/// the feature.
#[cfg(not(feature = "ebpf"))]
#[test]
fn ebpf_backend_needs_the_feature() {
    for args in [
        &["--backend", "ebpf", "--dry-run", "--ipv6", "off"][..],
        &["ebpf", "pods"],
    ] {
        let out = capture_init(args, &[]);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr.contains("built without the eBPF backend") && stderr.contains("--features ebpf"),
            "{args:?}: {stderr}"
        );
    }
}

/// The eBPF flags belong to the eBPF backend, and the node commands need a command.
#[test]
fn ebpf_usage_errors() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--cgroup", "/sys/fs/cgroup", "--dry-run", "--ipv6", "off"],
            "error\t--cgroup only applies to --backend ebpf\n",
        ),
        (
            &["--bpffs", "/sys/fs/bpf", "--dry-run", "--ipv6", "off"],
            "error\t--bpffs only applies to --backend ebpf\n",
        ),
        (
            &["--backend", "nat", "--dry-run"],
            "error\tinvalid value \"nat\" for --backend: not one of iptables, ebpf\n",
        ),
    ];
    for (args, expected) in cases {
        let out = capture_init(args, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(untimed(&out.stderr), expected, "{args:?}");
    }
    let out = capture_init(&["ebpf"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = untimed(&out.stderr);
    if cfg!(feature = "ebpf") {
        assert_eq!(
            stderr,
            "error\tebpf needs a command: load, upgrade, unload, gc, stats, pods\n"
        );
    }
}

/// Istio's flag for the iptables binary is `--force-iptables-binary` (env
/// `FORCE_IPTABLES_BINARY`: `""`, `legacy`, `nft`; anything else exits 1); the older
/// `--force-iptables-version` keeps working, and the newer name wins when both are given.
#[test]
fn force_iptables_binary_takes_istios_values_and_keeps_the_old_name() {
    let base = ["--dry-run", "--ipv6", "off", "-u", "1337"];
    let plain = capture_init(&base, &[]);
    assert!(plain.status.success());
    let with = |extra: &[&str], env: &[(&str, &str)]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        capture_init(&args, env)
    };
    for (extra, env) in [
        (&["--force-iptables-binary", "legacy"][..], &[][..]),
        (&["--force-iptables-binary", "nft"], &[]),
        (&["--force-iptables-binary", ""], &[]),
        (&["--force-iptables-version", "legacy"], &[]),
        (&[], &[("FORCE_IPTABLES_BINARY", "nft")]),
        (&[], &[("FORCE_IPTABLES_BINARY", "")]),
        (
            &[
                "--force-iptables-binary",
                "nft",
                "--force-iptables-version",
                "legacy",
            ],
            &[],
        ),
    ] {
        let out = with(extra, env);
        assert!(
            out.status.success(),
            "{extra:?} {env:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, plain.stdout, "{extra:?} {env:?}: the same payload");
    }
    for (extra, env) in [
        (&["--force-iptables-binary", "both"][..], &[][..]),
        (&[], &[("FORCE_IPTABLES_BINARY", "iptables")]),
    ] {
        let out = with(extra, env);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra:?} {env:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{extra:?} {env:?}: no payload");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("--force-iptables-binary"), "{stderr}");
    }
}

/// `--native-nftables` (or `NATIVE_NFTABLES`) wins over `--force-iptables-binary`, which is
/// ignored with a warning, as in Istio.
#[test]
fn native_nftables_wins_over_force_iptables_binary() {
    let out = capture_init(
        &[
            "--dry-run",
            "-u",
            "1337",
            "--ipv6",
            "off",
            "--force-iptables-binary",
            "legacy",
        ],
        &[("NATIVE_NFTABLES", "true")],
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("add table inet istio-proxy-nat\n"),
        "nftables wins"
    );
    assert!(stderr.contains("--force-iptables-binary is ignored"), "{stderr}");
}

/// stderr without each line's time: `level<TAB>message`.
fn untimed(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(|line| format!("{}\n", line.split_once('\t').map_or(line, |(_, rest)| rest)))
        .collect()
}

/// Every stderr line of a `--log_as_json` run (or `LOG_AS_JSON=true`) is one JSON object
/// with Istio's keys and an RFC 3339 UTC time, whatever the run ends with.
#[test]
fn every_json_log_line_parses() {
    let sidecar_dry: Vec<&str> = SIDECAR_ARGS.into_iter().chain(["--dry-run"]).collect();
    let with = |extra: &[&'static str]| -> Vec<&str> {
        sidecar_dry.iter().copied().chain(extra.iter().copied()).collect()
    };
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        // A bad value: the only line is the error.
        (with(&["--log_as_json", "--ipv6", "maybe"]), vec![], "error"),
        (with(&["--ipv6", "maybe"]), vec![("LOG_AS_JSON", "true")], "error"),
        (with(&["--log_as_json=1", "-u", "no such user"]), vec![], "error"),
        // A dry run asked for debug: the IPv6 decision and the unknown scope's warning.
        (
            with(&[
                "--log_as_json",
                "--ipv6",
                "off",
                "--log_output_level=default:debug,cache:debug",
            ]),
            vec![],
            "warn",
        ),
        (vec!["ebpf", "frobnicate"], vec![("LOG_AS_JSON", "true")], "error"),
        (vec!["--log_as_json", "--no-such-flag"], vec![], "error"),
    ];
    for (args, env, level) in cases {
        let out = capture_init(&args, &env);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!stderr.is_empty(), "{args:?}: a line at least");
        let mut levels = Vec::new();
        for line in stderr.lines() {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {line}"));
            let field = |key: &str| {
                value[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("{args:?}: no {key} in {line}"))
                    .to_owned()
            };
            assert_rfc3339(&field("time"));
            assert!(!field("msg").is_empty(), "{line}");
            assert_eq!(field("scope"), "default", "{line}");
            levels.push(field("level"));
        }
        assert!(
            levels.iter().any(|l| l == level),
            "{args:?}: a {level} line in {stderr}"
        );
    }
}

/// `2026-12-01T16:46:55.123456Z`.
#[track_caller]
fn assert_rfc3339(time: &str) {
    let digits =
        |r: std::ops::Range<usize>| time.get(r).is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()));
    assert!(
        time.len() == 27
            && digits(0..4)
            && &time[4..5] == "-"
            && digits(5..7)
            && &time[7..8] == "-"
            && digits(8..10)
            && &time[10..11] == "T"
            && digits(11..13)
            && digits(14..16)
            && digits(17..19)
            && &time[19..20] == "."
            && digits(20..26)
            && time.ends_with('Z'),
        "not RFC 3339 UTC: {time}"
    );
}

/// `--log_output_level` takes Istio's forms and names itself and the item it cannot honour;
/// scopes capture-init does not have are reported, not silently dropped; `none` is silence.
#[test]
fn log_levels_are_istios() {
    let dry = |extra: &[&str]| -> Output {
        let args: Vec<&str> = SIDECAR_ARGS
            .into_iter()
            .chain(["--dry-run", "--ipv6", "off"])
            .chain(extra.iter().copied())
            .collect();
        capture_init(&args, &[])
    };
    for bad in ["default:loud", "verbose", "iptables:"] {
        let out = dry(&[&format!("--log_output_level={bad}")]);
        let stderr = untimed(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{bad}: one line: {stderr}");
        assert!(
            stderr.starts_with("error\t") && stderr.contains("--log_output_level") && stderr.contains(bad),
            "{bad}: {stderr}"
        );
    }
    let out = capture_init(
        &["--dry-run", "--ipv6", "off"],
        &[("LOG_OUTPUT_LEVEL", "default:loud")],
    );
    let stderr = untimed(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--log_output_level"),
        "the variable is named by its flag: {stderr}"
    );

    // Quiet by default in a dry run; its decisions at info when asked.
    assert!(dry(&[]).stderr.is_empty());
    let info = untimed(&dry(&["--log_output_level=default:info"]).stderr);
    assert_eq!(info, "info\tIPv6 off (--ipv6 off)\n");
    for form in ["cache:debug", "default=info,cache=debug"] {
        let out = dry(&[&format!("--log_output_level={form}")]);
        let stderr = untimed(&out.stderr);
        assert!(out.status.success(), "{form}: {stderr}");
        assert!(
            stderr.contains("warn\t--log_output_level: there is no scope \"cache\""),
            "{form}: {stderr}"
        );
    }
    // `none` silences even the error; the exit status still tells.
    let out = capture_init(
        &["--dry-run", "--ipv6", "maybe", "--log_output_level=all:none"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A value clap refuses (a choice, a boolean, a duration) is one line naming the flag and the
/// value, escaped: a newline inside the value never cuts the line short.
#[test]
fn refused_values_name_the_flag_on_one_line_even_with_a_newline() {
    let cases: [(&[&str], &str, &str); 5] = [
        (&["--ipv6", "on\nfoo"], "--ipv6", r#""on\nfoo""#),
        (&["--ipv6", "bogus"], "--ipv6", r#""bogus""#),
        (&["--backend", "x\ny"], "--backend", r#""x\ny""#),
        (&["--probe-timeout", "1\ns"], "--probe-timeout", r#""1\ns""#),
        (&["--run-validation=x\ny"], "--run-validation", r#""x\ny""#),
    ];
    for (extra, flag, value) in cases {
        let args: Vec<&str> = ["--dry-run", "-u", "1337"].iter().chain(extra).copied().collect();
        let out = capture_init(&args, &[]);
        let stderr = untimed(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: no payload");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr:?}");
        assert!(
            stderr.starts_with(&format!("error\tinvalid value {value} for {flag}: ")),
            "{args:?}: {stderr:?} names {flag} and {value}"
        );
    }
}

/// `--network-namespace` naming a namespace of another kind (the process's own mount
/// namespace) is refused as "not a network namespace" before any `setns`, one line.
#[test]
fn network_namespace_of_another_kind_is_refused() {
    let out = capture_init(
        &["--network-namespace", "/proc/self/ns/mnt", "--ipv6", "off"],
        &[],
    );
    let stderr = untimed(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // The log of the configuration, then the one error line.
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error\t")).count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().last(),
        Some("error\tcannot enter network namespace /proc/self/ns/mnt: not a network namespace"),
        "{stderr}"
    );
}

/// `capture-init status`: its own flags are checked like a run's (one line naming the flag and
/// the value, exit 1), a run's flags are accepted as the configuration (and refused the same
/// way), and `--help` documents the exit statuses.
#[test]
fn status_flags_and_errors() {
    let help = capture_init(&["status", "--help"], &[]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8(help.stdout).unwrap();
    for needle in [
        "capture-init status",
        "--output text|json",
        "EXIT STATUS",
        "3  absent",
        "4  drifted",
    ] {
        assert!(text.contains(needle), "help lacks {needle:?}:\n{text}");
    }
    let cases: [(&[&str], &str); 5] = [
        (
            &["status", "--output", "yaml"],
            "error\tinvalid value \"yaml\" for --output: not one of text, json\n",
        ),
        (&["status", "--output"], "error\t--output needs a value\n"),
        (
            &["status", "-u", "1337", "-b", "70000"],
            "error\tinvalid value \"70000\" for -b/--istio-inbound-ports: not a port number (1-65535)\n",
        ),
        (
            &["status", "--network-namespace", "/nonexistent/netns"],
            "error\tcannot enter network namespace /nonexistent/netns: no such file or directory\n",
        ),
        (
            &[
                "status",
                "--network-namespace",
                "/proc/self/ns/mnt",
                "--output=json",
            ],
            "error\tcannot enter network namespace /proc/self/ns/mnt: not a network namespace\n",
        ),
    ];
    for (args, expected) in cases {
        let out = capture_init(args, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: no report");
        assert_eq!(untimed(&out.stderr), expected, "{args:?}");
    }
}

/// `capture-init explain` with the sidecar's flags, `--ipv6 off` and `rest`: reads nothing of the
/// host (no privilege needed).
fn explain(rest: &[&str]) -> Output {
    let mut args = vec!["explain"];
    args.extend(SIDECAR_ARGS);
    args.extend(["--ipv6", "off"]);
    args.extend(rest);
    capture_init(&args, &[])
}

#[test]
fn explain_names_the_rule_that_decides_in_words() {
    let out = explain(&["--dst", "10.96.0.1:443", "--uid", "1000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "outbound TCP connection to 10.96.0.1:443 by uid 1000 gid 1000\n\
         \n\
         iptables: captured to port 15001, original destination 10.96.0.1:443\n\
         \x20 why:   an outbound destination the rules capture (-i, -q) (outbound)\n\
         \x20 rule:  nat  -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n\
         \x20 path:  nat  -A OUTPUT -j ISTIO_OUTPUT\n\
         \x20        nat  -A ISTIO_OUTPUT -j ISTIO_REDIRECT\n\
         \x20        nat  -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n\
         \x20 note:  if 10.96.0.1 is one of the pod's own addresses (over lo): bypassed (local-to-self); \
         pass --interface lo\n"
    );
    let out = explain(&["--dst", "10.96.0.1:443", "--uid", "1337"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "iptables: not captured: it goes where it was going\n\
             \x20 why:   the socket belongs to the proxy's uid (-u) (proxy-uid)\n\
             \x20 rule:  nat  -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"
        ),
        "{text}"
    );
    // Native nftables prints the nft rule; inbound to an excluded port names it.
    let out = explain(&[
        "--native-nftables",
        "--direction",
        "inbound",
        "--dst",
        "10.0.0.5:15021",
        "--src",
        "10.0.0.9",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "nftables: not captured: it goes where it was going\n\
             \x20 why:   the destination port is excluded from inbound capture (-d) (excluded-inbound-port)\n\
             \x20 rule:  istio-proxy-nat istio-inbound  meta l4proto tcp tcp dport 15021 counter return\n"
        ),
        "{text}"
    );
}

#[test]
fn explain_json_is_one_object_per_backend_with_stable_keys() {
    let out = explain(&[
        "--dst",
        "10.0.0.5:8080",
        "--uid",
        "1337",
        "--interface",
        "lo",
        "--output",
        "json",
        "--all-backends",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let backends = if cfg!(feature = "ebpf") { 3 } else { 2 };
    assert_eq!(lines.len(), backends, "{text}");
    for (line, backend) in lines.iter().zip(["iptables", "nftables", "ebpf"]) {
        assert!(
            line.starts_with(&format!(
                "{{\"backend\":\"{backend}\",\"source\":\"model\",\"direction\":\"outbound\",\"family\":\"ipv4\",\
                 \"dst\":\"10.0.0.5:8080\",\"verdict\":\"captured\",\"port\":15006,\"original_dst\":\"10.0.0.5:8080\",\
                 \"reason\":\"hairpin\","
            )),
            "{line}"
        );
        assert!(line.ends_with(",\"drift\":null}"), "{line}");
    }
    assert!(lines[0].contains(
        "\"rule\":\"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\",\"table\":\"nat\",\"chain\":\"ISTIO_IN_REDIRECT\""
    ));
}

#[test]
fn explain_refuses_bad_connections_naming_the_flag() {
    for (rest, message) in [
        (
            &[][..],
            "error\t--dst is required: the connection's destination ADDR:PORT\n",
        ),
        (
            &["--dst", "10.0.0.1"][..],
            "error\tinvalid value \"10.0.0.1\" for --dst: not an ADDR:PORT such as \
             10.96.0.1:443 or [fd00::1]:80\n",
        ),
        (
            &["--dst", "10.0.0.1:80", "--src", "nope"][..],
            "error\tinvalid value \"nope\" for --src: not an ADDR or ADDR:PORT such as \
             10.0.0.2, 127.0.0.6 or [fd00::2]:4000\n",
        ),
        (
            &["--dst", "10.0.0.1:80", "--direction", "sideways"][..],
            "error\tinvalid value \"sideways\" for --direction: not one of outbound, inbound\n",
        ),
        (
            &["--dst", "10.0.0.1:80", "--protocol", "sctp"][..],
            "error\tinvalid value \"sctp\" for --protocol: not one of tcp, udp\n",
        ),
        (
            &[
                "--dst",
                "10.0.0.1:80",
                "--from-kernel",
                "--network-namespace",
                "/nonexistent",
            ][..],
            "error\tcannot enter network namespace /nonexistent: no such file or directory\n",
        ),
        (
            &["--dst", "10.0.0.1:80", "-p", "0"][..],
            "error\tinvalid value \"0\" for -p/--envoy-port: not a port number (1-65535)\n",
        ),
    ] {
        let out = explain(rest);
        assert_eq!(out.status.code(), Some(1), "{rest:?}");
        assert_eq!(untimed(&out.stderr), message, "{rest:?}");
        assert!(out.stdout.is_empty(), "{rest:?}");
    }
    let help = capture_init(&["explain", "--help"], &[]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.starts_with("Explain which rule decides one connection"),
        "{text}"
    );
    assert!(text.contains("--from-kernel"), "{text}");
}

/// Side by side, a backend that cannot capture the configuration says why and the others
/// still answer; alone, that is the command's error.
#[cfg(feature = "ebpf")]
#[test]
fn explain_all_backends_keeps_going_past_one_that_cannot() {
    let out = explain(&[
        "-c",
        "eth1",
        "--dst",
        "10.0.0.2:80",
        "--all-backends",
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("\"verdict\":\"captured\""), "{text}");
    assert!(lines[1].contains("\"verdict\":\"captured\""), "{text}");
    assert_eq!(
        lines[2],
        "{\"backend\":\"ebpf\",\"error\":\"excluded interfaces (-c) is not supported by the eBPF backend yet; \
         use the iptables backend\"}"
    );
    let out = explain(&["-c", "eth1", "--dst", "10.0.0.2:80", "--backend", "ebpf"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        untimed(&out.stderr),
        "error\texcluded interfaces (-c) is not supported by the eBPF backend yet; use the iptables backend\n"
    );
    // An excluded interface, named as the connection's: the rule that lets it pass.
    let out = explain(&["-c", "eth1", "--dst", "10.0.0.2:80", "--interface", "eth1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("  why:   the interface is excluded (-c) (excluded-interface)\n  rule:  nat  -A OUTPUT -o eth1 -j RETURN\n"),
        "{text}"
    );
}
