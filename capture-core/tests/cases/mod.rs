//! The case table Istio's capture goldens share, and helpers for the golden tests.
//!
//! Both `golden.rs` (iptables) and `nft_golden.rs` (native nftables) `mod` this file. Each
//! case starts from istio-iptables' test base (ports 15001/15006/15008, uid and gid 1337,
//! nothing captured by address) and sets what upstream's case table sets
//! (`../shared/reference/istio/MANIFEST.md` §3).

use std::path::{Path, PathBuf};

use capture_core::{Accounts, Detected, IstioConfig, Nameserver};

/// A file under the repository's copy of Istio's fixtures (`testdata/istio`).
pub fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/istio")
        .join(rel)
}

/// The names of the goldens in `dir` (without `.golden`), sorted; any other file is an error.
pub fn golden_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".golden")
                .unwrap_or_else(|| panic!("{name}: not a .golden file"))
                .to_owned()
        })
        .collect();
    names.sort();
    names
}

fn servers(list: &[&str]) -> Vec<Nameserver> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// The user and group databases of Istio's test cases: the groups `java` and `ftp` its
/// owner-group cases name, which a test machine need not have, and nothing else.
pub struct IstioAccounts;

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

/// Fails with a unified diff (Istio's text as the old side) unless the texts are equal.
#[track_caller]
pub fn assert_same(name: &str, expected: &str, actual: &str) {
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected, actual);
        panic!(
            "{name}: rendering differs from Istio's golden\n{}",
            diff.unified_diff().header("istio", "capture")
        );
    }
}

/// A case: its golden's name, and what it sets on top of the base config and host.
pub type Case = (&'static str, fn(&mut IstioConfig, &mut Detected));

/// upstream's `getCommonTestCases()`, in table order: the iptables goldens' case table, which
/// Istio's nftables goldens share (they add one case of their own, see `nft_golden.rs`).
pub const COMMON_CASES: &[Case] = &[
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
