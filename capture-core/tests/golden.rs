//! Parity with istio-iptables: every current upstream golden, byte for byte, both families.
//!
//! Each case starts from istio-iptables' test base (ports 15001/15006/15008, uid and gid 1337,
//! nothing captured by address) and sets what upstream's case table sets. The expected text is
//! Istio's call log (see testdata/istio/README.md); a mismatch prints a unified diff.

mod cases;

use capture_core::{Detected, IstioConfig, Restore, plan};
use cases::{COMMON_CASES as IPTABLES_CASES, IstioAccounts, assert_same, golden_names, testdata};

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

#[test]
fn every_iptables_golden_matches_byte_for_byte() {
    let dir = testdata("iptables");
    let on_disk = golden_names(&dir);
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
    let expected_v4 = include_str!("../testdata/sidecar.v4.restore");
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
