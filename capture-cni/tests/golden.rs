//! Parity with Istio's CNI plugin: the eight `cni/pkg/plugin/testdata` goldens, byte for byte.
//!
//! Each case is the pod of upstream's `TestIPTablesRuleGeneration` (MANIFEST.md §4.3): its
//! annotations go through the plugin's annotation mapping, its proxy-container settings
//! (`runAsUser`/`runAsGroup`, `ISTIO_META_DNS_CAPTURE`, `INVALID_DROP`) through the plugin's
//! configuration fields, since a CNI plugin sees no pod spec. The IPv4 payload is rendered
//! with `capture_core::plan` and `Restore`, as upstream's goldens hold only IPv4.

use std::collections::BTreeMap;
use std::path::PathBuf;

use capture_cni::conf::{CaptureConf, ConfText};
use capture_cni::pod::{self, PodCapture};
use capture_core::{Detected, Family, Restore, plan};

type Edit = fn(&mut CaptureConf, &mut BTreeMap<String, String>);

fn set(annotations: &mut BTreeMap<String, String>, key: &str, value: &str) {
    annotations.insert(key.to_owned(), value.to_owned());
}

/// (case, golden file, edit). Every pod carries `sidecar.istio.io/status`.
const CASES: &[(&str, &str, Edit)] = &[
    ("basic", "basic", |_, _| {}),
    ("include-exclude-ip", "include-exclude-ip", |_, a| {
        set(a, pod::INCLUDE_OUTBOUND_IP_RANGES, "127.0.0.0/8");
        set(a, pod::EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8");
    }),
    ("include-exclude-ports", "include-exclude-ports", |_, a| {
        set(a, pod::INCLUDE_INBOUND_PORTS, "1111,2222");
        set(a, pod::EXCLUDE_INBOUND_PORTS, "3333,4444");
        set(a, pod::EXCLUDE_OUTBOUND_PORTS, "5555,6666");
    }),
    ("tproxy", "tproxy", |_, a| {
        set(a, pod::INTERCEPTION_MODE, "TPROXY")
    }),
    ("DNS", "dns", |c, _| c.redirect_dns = true),
    ("invalid-drop", "invalid-drop", |c, _| c.drop_invalid = true),
    ("custom-uid", "custom-uid", |c, _| {
        c.proxy_uid = ConfText::from("1000670000");
        c.proxy_gid = ConfText::from("1000670001");
    }),
    // runAsUser 0 falls back to 1337 in Istio; here that is simply the default.
    ("custom-uid-zero", "basic", |_, _| {}),
    ("custom-uid-tproxy", "custom-uid-tproxy", |c, a| {
        set(a, pod::INTERCEPTION_MODE, "TPROXY");
        c.proxy_uid = ConfText::from("1000670000");
        c.proxy_gid = ConfText::from("1000670001");
    }),
];

fn golden(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../capture-core/testdata/istio/cni-plugin")
        .join(format!("{name}.txt.golden"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_cni_plugin_golden_matches_byte_for_byte() {
    for (case, file, edit) in CASES {
        let mut conf = CaptureConf::default();
        let mut annotations = BTreeMap::new();
        set(&mut annotations, pod::STATUS, "true");
        edit(&mut conf, &mut annotations);
        let capture = PodCapture::new(&conf, &annotations).unwrap_or_else(|e| panic!("{case}: {e}"));
        let (spec, _) = capture
            .to_spec(&Detected::default())
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let actual = Restore(&plan(&spec, Family::V4)).to_string();
        let expected = golden(file);
        if actual != expected {
            let diff = similar::TextDiff::from_lines(&expected, &actual);
            panic!(
                "{case}: rendering differs from Istio's {file}.txt.golden\n{}",
                diff.unified_diff().header("istio", "capture-cni")
            );
        }
    }
}
