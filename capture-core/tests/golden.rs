//! Parity with istio-iptables: every current upstream golden, byte for byte, both families.
//!
//! Each case starts from istio-iptables' test base (ports 15001/15006/15008, uid and gid 1337,
//! nothing captured by address) and sets what upstream's case table sets. The expected text is
//! Istio's call log (see testdata/istio/README.md); a mismatch prints a unified diff.

use std::path::PathBuf;

use capture_core::{Accounts, Detected, IstioConfig, Nameserver, Restore, plan};

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/istio")
        .join(rel)
}

fn servers(list: &[&str]) -> Vec<Nameserver> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// The user and group databases of Istio's test cases: the groups `java` and `ftp` its
/// owner-group cases name, which a test machine need not have, and nothing else.
struct IstioAccounts;

impl Accounts for IstioAccounts {
    fn uid(&self, _name: &str) -> Option<u32> {
        None
    }

    fn gid(&self, name: &str) -> Option<u32> {
        match name {
            "java" => Some(20001),
            "ftp" => Some(20002),
            _ => None,
        }
    }
}

/// The payloads istio-iptables feeds to iptables-restore, IPv4 then IPv6 when on.
fn payloads(cfg: &IstioConfig, detected: &Detected) -> String {
    let (spec, _warnings) = cfg
        .to_spec_with(detected, &IstioAccounts)
        .unwrap_or_else(|e| panic!("{e}"));
    spec.families()
        .iter()
        .map(|family| Restore(&plan(&spec, *family)).to_string())
        .collect()
}

#[track_caller]
fn assert_same(name: &str, expected: &str, actual: &str) {
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected, actual);
        panic!(
            "{name}: rendering differs from Istio's golden\n{}",
            diff.unified_diff().header("istio", "capture")
        );
    }
}

type Case = (&'static str, fn(&mut IstioConfig, &mut Detected));

/// upstream's `getCommonTestCases()`, in table order.
const IPTABLES_CASES: &[Case] = &[
    ("ipv6-empty-inbound-ports", |_, d| d.ipv6 = true),
    ("ip-range", |c, d| {
        c.service_exclude_cidr = "1.1.0.0/16".into();
        c.service_cidr = "9.9.0.0/16".into();
        c.redirect_dns = true;
        c.proxy_gid = "1,2".into();
        c.proxy_uid = "3,4".into();
        d.nameservers = servers(&["127.0.0.53"]);
    }),
    ("tproxy", |c, d| {
        c.interception_mode = "TPROXY".into();
        c.inbound_ports = "*".into();
        c.service_exclude_cidr = "1.1.0.0/16".into();
        c.service_cidr = "9.9.0.0/16".into();
        c.redirect_dns = true;
        c.proxy_gid = "1337".into();
        c.proxy_uid = "1337".into();
        c.exclude_interfaces = "not-istio-nic".into();
        d.nameservers = servers(&["127.0.0.53"]);
        d.ipv6 = true;
    }),
    ("ipv6-inbound-ports", |c, d| {
        c.inbound_ports = "4000,5000".into();
        d.ipv6 = true;
    }),
    ("ipv6-virt-interfaces", |c, d| {
        c.inbound_ports = "4000,5000".into();
        c.kube_virt_interfaces = "eth0,eth1".into();
        d.ipv6 = true;
    }),
    ("ipv6-ipnets", |c, d| {
        c.inbound_ports = "4000,5000".into();
        c.local_exclude_ports = "6000,7000,".into();
        c.kube_virt_interfaces = "eth0,eth1".into();
        c.service_exclude_cidr = "2001:db8::/32".into();
        c.service_cidr = "2001:db8::/32".into();
        d.ipv6 = true;
    }),
    ("ipv6-uid-gid", |c, d| {
        c.inbound_ports = "4000,5000".into();
        c.local_exclude_ports = "6000,7000".into();
        c.kube_virt_interfaces = "eth0,eth1".into();
        c.proxy_gid = "1,2".into();
        c.proxy_uid = "3,4".into();
        c.service_exclude_cidr = "2001:db8::/32".into();
        c.service_cidr = "2001:db8::/32".into();
        d.ipv6 = true;
    }),
    ("ipv6-outbound-ports", |c, d| {
        c.outbound_ports = "32000,31000".into();
        d.ipv6 = true;
    }),
    ("empty", |_, _| {}),
    ("kube-virt-interfaces", |c, _| {
        c.kube_virt_interfaces = "eth1,eth2".into();
        c.service_cidr = "*".into();
    }),
    ("ipnets", |c, _| c.service_cidr = "10.0.0.0/8".into()),
    ("ipnets-with-kube-virt-interfaces", |c, _| {
        c.kube_virt_interfaces = "eth1,eth2".into();
        c.service_cidr = "10.0.0.0/8".into();
    }),
    ("inbound-ports-include", |c, _| {
        c.inbound_ports = "32000,31000".into()
    }),
    ("inbound-ports-wildcard", |c, _| c.inbound_ports = "*".into()),
    ("inbound-ports-tproxy", |c, _| {
        c.inbound_ports = "32000,31000".into();
        c.interception_mode = "TPROXY".into();
    }),
    ("inbound-ports-wildcard-tproxy", |c, _| {
        c.inbound_ports = "*".into();
        c.interception_mode = "TPROXY".into();
    }),
    ("dns-uid-gid", |c, d| {
        c.redirect_dns = true;
        c.proxy_gid = "1,2".into();
        c.proxy_uid = "3,4".into();
        d.nameservers = servers(&["127.0.0.53", "::127.0.0.53"]);
        d.ipv6 = true;
    }),
    ("ipv6-dns-uid-gid", |c, d| {
        c.redirect_dns = true;
        c.proxy_gid = "1,2".into();
        c.proxy_uid = "3,4".into();
        d.ipv6 = true;
    }),
    ("outbound-owner-groups", |c, _| {
        c.owner_groups_include = "java,202".into()
    }),
    ("outbound-owner-groups-exclude", |c, _| {
        c.owner_groups_exclude = "888,ftp".into()
    }),
    ("ipv6-dns-outbound-owner-groups", |c, d| {
        c.redirect_dns = true;
        c.owner_groups_include = "java,202".into();
        d.ipv6 = true;
    }),
    ("ipv6-dns-outbound-owner-groups-exclude", |c, d| {
        c.redirect_dns = true;
        c.owner_groups_exclude = "888,ftp".into();
        d.ipv6 = true;
    }),
    ("outbound-ports-include", |c, _| {
        c.outbound_ports = "32000,31000".into()
    }),
    ("loopback-outbound-iprange", |c, d| {
        c.service_cidr = "127.1.2.3/32".into();
        c.redirect_dns = true;
        c.proxy_gid = "1,2".into();
        c.proxy_uid = "3,4".into();
        d.nameservers = servers(&["127.0.0.53"]);
    }),
    ("basic-exclude-nic", |c, _| {
        c.exclude_interfaces = "not-istio-nic".into()
    }),
    ("drop-invalid", |c, _| c.drop_invalid = true),
    ("host-ipv4-loopback-cidr", |c, _| {
        c.ipv4_loopback_cidr = "127.0.0.1/8".into()
    }),
];

#[test]
fn every_iptables_golden_matches_byte_for_byte() {
    let dir = testdata("iptables");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".golden")
                .to_owned()
        })
        .collect();
    on_disk.sort();
    let mut covered: Vec<String> = IPTABLES_CASES
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    covered.sort();
    assert_eq!(covered, on_disk, "every golden file has exactly one case");

    for (name, edit) in IPTABLES_CASES {
        let mut cfg = IstioConfig::default();
        let mut detected = Detected::default();
        edit(&mut cfg, &mut detected);
        let saves = if detected.ipv6 {
            "iptables-save\nip6tables-save\n"
        } else {
            "iptables-save\n"
        };
        let log = format!(
            "iptables-save\nip6tables-save\n{}{saves}",
            payloads(&cfg, &detected)
        );
        let golden = std::fs::read_to_string(dir.join(format!("{name}.golden"))).unwrap();
        assert_same(name, &golden, &log);
    }
}

/// The payloads Istio's CNI plugin generates (IPv4 only), from the flags it derives per pod:
/// `-p 15001 -i '*' -b '*' -d 15020,15021,15090 -o 15020` plus the pod's annotations.
type CniCase = (&'static str, fn(&mut IstioConfig));

const CNI_CASES: &[CniCase] = &[
    ("basic", |_| {}),
    ("include-exclude-ip", |c| {
        c.service_cidr = "127.0.0.0/8".into();
        c.service_exclude_cidr = "10.0.0.0/8".into();
    }),
    ("include-exclude-ports", |c| {
        c.inbound_ports = "1111,2222".into();
        c.local_exclude_ports = "3333,4444,15020,15021,15090".into();
        c.local_outbound_ports_exclude = "5555,6666".into();
    }),
    ("tproxy", |c| c.interception_mode = "TPROXY".into()),
    ("dns", |c| {
        c.redirect_dns = true;
        c.capture_all_dns = true;
    }),
    ("invalid-drop", |c| c.drop_invalid = true),
    ("custom-uid", |c| {
        c.proxy_uid = "1000670000".into();
        c.proxy_gid = "1000670001".into();
    }),
    ("custom-uid-tproxy", |c| {
        c.interception_mode = "TPROXY".into();
        c.proxy_uid = "1000670000".into();
        c.proxy_gid = "1000670001".into();
    }),
];

#[test]
fn every_cni_plugin_golden_matches_byte_for_byte() {
    for (name, edit) in CNI_CASES {
        let mut cfg = IstioConfig {
            service_cidr: "*".into(),
            inbound_ports: "*".into(),
            local_exclude_ports: "15020,15021,15090".into(),
            local_outbound_ports_exclude: "15020".into(),
            interception_mode: "REDIRECT".into(),
            ..IstioConfig::default()
        };
        edit(&mut cfg);
        let golden = std::fs::read_to_string(testdata(&format!("cni-plugin/{name}.txt.golden"))).unwrap();
        assert_same(name, &golden, &payloads(&cfg, &Detected::default()));
    }
}

/// The injector's default sidecar command. testdata/sidecar.v4.restore was derived by hand from
/// upstream's code (istio-capture.md §2.1), not produced by us.
#[test]
fn default_sidecar_command() {
    let expected_v4 = include_str!("../../testdata/sidecar.v4.restore");
    let expected_v6 = expected_v4
        .replace("127.0.0.6/32", "::6/128")
        .replace("127.0.0.1/32", "::1/128");
    let cfg = IstioConfig {
        interception_mode: "REDIRECT".into(),
        service_cidr: "*".into(),
        inbound_ports: "*".into(),
        local_exclude_ports: "15090,15021,15020".into(),
        ..IstioConfig::default()
    };
    assert_same("sidecar v4", expected_v4, &payloads(&cfg, &Detected::default()));
    let v6 = Detected {
        ipv6: true,
        ..Detected::default()
    };
    assert_same(
        "sidecar v4+v6",
        &format!("{expected_v4}{expected_v6}"),
        &payloads(&cfg, &v6),
    );
    // The typed constructor describes the same capture.
    assert_eq!(
        cfg.to_spec(&Detected::default()).unwrap().0,
        capture_core::CaptureSpec::sidecar()
    );
}
