//! The CNI protocol, through the real binary with a runtime's environment and stdin: version
//! negotiation, `prevResult` pass-through, and the error object and code for each kind of
//! bad input. None of these reach a network namespace, so they run without root.

#[path = "common/cni.rs"]
mod cni;

use capture_e2e::TempDir;
use cni::{Reply, cni_env, invoke};
use serde_json::{Value, json};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A pod the plugin must capture: Kubernetes identity plus the injector's annotation.
const POD_ARGS: &str =
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d9;K8S_POD_INFRA_CONTAINER_ID=c0ffee0123";

/// A result as the previous plugin (bridge) prints it in `version`, with a vendor key and
/// numbers that must survive as written.
fn prev_result(version: &str) -> Value {
    let old = version.starts_with("0.");
    let mut ip = json!({"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2});
    if old {
        // 0.3.x and 0.4.0 results carry the IP version; a typed re-encoding would drop it.
        ip = json!({"version": "4", "interface": 2, "address": "10.1.0.5/16", "gateway": "10.1.0.1"});
    }
    let mut sandbox = json!({"name": "eth0", "mac": "0a:58:0a:01:00:05", "sandbox": "/var/run/netns/pod"});
    let mut route = json!({"dst": "0.0.0.0/0", "gw": "10.1.0.1"});
    if version == "1.1.0" {
        sandbox["mtu"] = 1450.into();
        sandbox["socketPath"] = "/run/vhost.sock".into();
        route["mtu"] = 1400.into();
        route["table"] = 100.into();
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": "cni0", "mac": "0a:58:0a:01:00:01"},
            {"name": "veth9f2", "mac": "6e:2d:11:aa:bb:cc"},
            sandbox,
        ],
        "ips": [ip],
        "routes": [route],
        "dns": {"nameservers": ["10.1.0.1"], "search": ["svc.cluster.local"]},
        "x-vendor": {"weight": 2.5, "big": 18446744073709551615_u64, "none": null, "list": [true, "x"]},
    })
}

fn conf(version: &str, extra: Value) -> String {
    let mut conf = json!({"cniVersion": version, "name": "k8s-pod-network", "type": "capture-cni"});
    for (k, v) in extra.as_object().expect("an object") {
        conf[k] = v.clone();
    }
    conf.to_string()
}

fn add(args: &str, stdin: &str) -> Reply {
    invoke(&cni_env("ADD", "/nonexistent/netns", args), stdin)
}

#[test]
fn version_reports_supported_versions() {
    let want = json!(VERSIONS);
    for v in VERSIONS {
        let reply = invoke(
            &[("CNI_COMMAND", "VERSION")],
            &json!({"cniVersion": v}).to_string(),
        );
        reply.ok();
        assert_eq!(reply.json(), json!({"cniVersion": v, "supportedVersions": want}));
    }
    // Without input, or asked in a version we do not speak, it answers in the newest.
    for stdin in ["", "{\"cniVersion\":\"0.2.0\"}", "not json"] {
        let reply = invoke(&[("CNI_COMMAND", "VERSION")], stdin);
        reply.ok();
        assert_eq!(reply.json()["cniVersion"], "1.1.0", "{stdin:?}");
        assert_eq!(reply.json()["supportedVersions"], want);
    }
}

#[test]
fn without_cni_command_it_describes_itself_on_stderr() {
    let reply = invoke(&[], "");
    assert_eq!((reply.code, reply.stdout.as_str()), (0, ""));
    assert!(reply.stderr.contains("1.1.0"), "{}", reply.stderr);
}

#[test]
fn add_passes_prev_result_through_unchanged_in_every_version() {
    for v in VERSIONS {
        let prev = prev_result(v);
        let stdin = conf(v, json!({"prevResult": prev}));
        // Not a Kubernetes pod: skipped, so nothing but the protocol runs.
        let reply = add("", &stdin);
        reply.ok();
        assert_eq!(reply.json(), prev, "{v}");
        // Same keys in the same order, numbers as written: the same bytes.
        assert_eq!(reply.stdout, format!("{prev}\n"), "{v}");
        assert!(reply.stderr.contains("skipped"), "{}", reply.stderr);
    }
    let prev = prev_result("0.3.1");
    assert_eq!(prev["ips"][0]["version"], "4");
}

#[test]
fn add_without_prev_result_prints_a_minimal_result() {
    for v in VERSIONS {
        let reply = add("", &conf(v, json!({})));
        reply.ok();
        assert_eq!(reply.json(), json!({"cniVersion": v}));
    }
}

#[test]
fn prev_result_without_version_is_taken_as_the_configurations() {
    let mut prev = prev_result("1.0.0");
    prev.as_object_mut().unwrap().shift_remove("cniVersion");
    let reply = add("", &conf("1.0.0", json!({"prevResult": prev})));
    reply.ok();
    let out = reply.json();
    assert_eq!(out["cniVersion"], "1.0.0");
    assert_eq!(out.as_object().unwrap().keys().next().unwrap(), "cniVersion");
    let mut without = out.clone();
    without.as_object_mut().unwrap().shift_remove("cniVersion");
    assert_eq!(without, prev);
}

#[test]
fn prev_result_of_another_version_is_refused_with_code_1() {
    let stdin = conf("1.0.0", json!({"prevResult": prev_result("0.4.0")}));
    let reply = add(POD_ARGS, &stdin).error(1);
    assert_eq!(reply["cniVersion"], "1.0.0");
    let msg = reply["msg"].as_str().unwrap();
    assert!(msg.contains("\"0.4.0\"") && msg.contains("1.0.0"), "{msg}");
    // CHECK too; DEL must succeed whatever it is given.
    invoke(&cni_env("CHECK", "/nonexistent/netns", POD_ARGS), &stdin).error(1);
    let reply = invoke(&cni_env("DEL", "", POD_ARGS), &stdin);
    assert_eq!((reply.code, reply.stdout.as_str()), (0, ""));
}

#[test]
fn prev_result_that_is_not_a_result_is_a_decode_failure() {
    for prev in [json!([1, 2]), json!("x"), json!({"cniVersion": 1})] {
        add("", &conf("1.1.0", json!({"prevResult": prev}))).error(6);
    }
}

#[test]
fn malformed_json_is_code_6() {
    for stdin in ["{\"cniVersion\": \"1.0.0\",", "", "[]", "\"1.0.0\""] {
        let reply = add(POD_ARGS, stdin).error(6);
        assert_eq!(reply["cniVersion"], "1.1.0", "{stdin:?}");
    }
}

#[test]
fn unsupported_or_missing_version_is_code_1() {
    let reply = add(POD_ARGS, &conf("0.2.0", json!({}))).error(1);
    assert!(reply["msg"].as_str().unwrap().contains("\"0.2.0\""), "{reply}");
    assert_eq!(reply["cniVersion"], "0.2.0");
    assert!(
        reply["details"]
            .as_str()
            .unwrap()
            .contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0")
    );
    let no_version = json!({"name": "n", "type": "capture-cni"}).to_string();
    let reply = add(POD_ARGS, &no_version).error(1);
    assert!(reply["msg"].as_str().unwrap().contains("\"0.1.0\""), "{reply}");
    for bad in ["1.2.0", "1.3.0"] {
        add(POD_ARGS, &conf(bad, json!({}))).error(1);
    }
}

#[test]
fn commands_newer_than_the_version_are_code_1() {
    let check = invoke(&cni_env("CHECK", "/x", ""), &conf("0.3.1", json!({}))).error(1);
    assert!(check["msg"].as_str().unwrap().contains("0.4.0"), "{check}");
    let tmp = TempDir::new("proto");
    let run_dir = tmp.path().to_str().unwrap();
    for cmd in ["STATUS", "GC"] {
        let reply = invoke(
            &[("CNI_COMMAND", cmd)],
            &conf("1.0.0", json!({"run_dir": run_dir})),
        )
        .error(1);
        assert!(reply["msg"].as_str().unwrap().contains("1.1.0"), "{reply}");
    }
}

#[test]
fn missing_or_bad_environment_is_code_4() {
    let stdin = conf("1.0.0", json!({}));
    let mut env = cni_env("ADD", "/x", POD_ARGS);
    env.retain(|(k, _)| *k != "CNI_NETNS");
    let reply = invoke(&env, &stdin).error(4);
    assert!(reply["msg"].as_str().unwrap().contains("CNI_NETNS"), "{reply}");
    // The reply speaks the request's version.
    assert_eq!(reply["cniVersion"], "1.0.0");
    for (name, value) in [
        ("CNI_CONTAINERID", ""),
        ("CNI_IFNAME", "a/b"),
        ("CNI_ARGS", "K8S_POD_NAME"),
    ] {
        let mut env = cni_env("ADD", "/x", POD_ARGS);
        env.retain(|(k, _)| *k != name);
        env.push((name, value));
        let reply = invoke(&env, &stdin).error(4);
        assert!(reply["msg"].as_str().unwrap().contains(name), "{reply}");
    }
    let reply = invoke(&[("CNI_COMMAND", "REMOVE")], &stdin).error(4);
    assert!(reply["msg"].as_str().unwrap().contains("REMOVE"), "{reply}");
}

#[test]
fn invalid_annotation_is_code_7_naming_annotation_and_value() {
    let cases = [
        ("traffic.sidecar.istio.io/excludeInboundPorts", "8080,http"),
        ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/33"),
        ("sidecar.istio.io/interceptionMode", "NONE"),
        ("istio.io/reroute-virtual-interfaces", "bad/name"),
    ];
    for (annotation, value) in cases {
        let stdin = conf(
            "1.1.0",
            json!({"runtimeConfig": {"io.kubernetes.cri.pod-annotations": {
                "sidecar.istio.io/status": "{}",
                annotation: value,
            }}}),
        );
        let reply = add(POD_ARGS, &stdin).error(7);
        let msg = reply["msg"].as_str().unwrap();
        assert!(msg.contains(annotation) && msg.contains(value), "{msg}");
        assert!(
            !msg.contains("--istio"),
            "names the annotation, not the flag: {msg}"
        );
    }
}

#[test]
fn invalid_plugin_settings_are_code_7() {
    for (extra, field) in [
        (json!({"capture": {"proxy_user": 1337}}), "proxy_user"),
        (json!({"capture": {"proxy_uid": -1}}), "capture.proxy_uid"),
        (
            json!({"capture": {"interception_mode": "NAT"}}),
            "capture.interception_mode",
        ),
        (json!({"capture": {"outbound_port": 0}}), "capture.outbound_port"),
        (json!({"pod_selection": "some"}), "pod_selection"),
        (json!({"exclude_namespaces": "kube-system"}), "exclude_namespaces"),
        (json!({"name": ""}), "network name"),
        // Structs are objects only: serde would read an array positionally.
        (json!({"capture": ["iptables", "legacy", 15002]}), "capture"),
        (json!({"capture": []}), "capture"),
        (json!({"capture": null}), "capture"),
        (json!({"capture": "iptables"}), "capture"),
        (
            json!({"runtimeConfig": [{"sidecar.istio.io/status": "{}"}]}),
            "runtimeConfig",
        ),
        (json!({"runtimeConfig": ["x"]}), "runtimeConfig"),
    ] {
        let stdin = conf("1.0.0", extra.clone());
        let reply = add(POD_ARGS, &stdin).error(7);
        // A typo or a bad value: the message names the field.
        let msg = reply["msg"].as_str().unwrap();
        assert!(msg.contains(field), "{extra}: {msg}");
    }
}

/// Owners iptables would refuse when loading the rules are refused as configuration, before
/// the namespace is opened: CNI_NETNS does not even exist here, which would be code 102.
#[test]
fn owners_iptables_refuses_are_code_7_before_the_namespace() {
    for (capture, field, value) in [
        (json!({"proxy_uid": "abc"}), "capture.proxy_uid", "\"abc\""),
        (
            json!({"proxy_uid": "nosuchuser"}),
            "capture.proxy_uid",
            "nosuchuser",
        ),
        (
            json!({"proxy_uid": 4294967295_u64}),
            "capture.proxy_uid",
            "4294967295",
        ),
        (
            json!({"proxy_gid": "nosuchgroup"}),
            "capture.proxy_gid",
            "nosuchgroup",
        ),
        (
            json!({"proxy_gid": [1337, 4294967295_u64]}),
            "capture.proxy_gid",
            "4294967295",
        ),
    ] {
        let stdin = conf(
            "1.1.0",
            json!({"pod_selection": "all", "run_dir": TempDir::new("owners").path(), "capture": capture}),
        );
        for command in ["ADD", "CHECK"] {
            let reply = invoke(&cni_env(command, "/nonexistent/netns", POD_ARGS), &stdin).error(7);
            let msg = reply["msg"].as_str().unwrap();
            assert!(
                msg.contains(field) && msg.contains(value),
                "{command} {capture}: {msg}"
            );
            assert!(
                !msg.contains("netns") && !msg.contains('\n'),
                "{command} {capture}: {msg}"
            );
        }
    }
}

#[test]
fn add_for_a_missing_namespace_fails_with_our_code() {
    let stdin = conf(
        "1.0.0",
        json!({"pod_selection": "all", "run_dir": TempDir::new("proto").path()}),
    );
    let reply = add(POD_ARGS, &stdin).error(102);
    assert!(
        reply["msg"].as_str().unwrap().contains("/nonexistent/netns"),
        "{reply}"
    );
}

/// `CNI_NETNS` naming another kind of namespace (a mount namespace, a user namespace) is "not a
/// network namespace", code 102, for ADD and CHECK; no `setns` is attempted (which would say
/// EINVAL, needs CAP_SYS_ADMIN). DEL takes it as it takes a namespace that is gone: there is
/// no pod network namespace there to clean up, and a DEL that fails blocks the pod's removal.
#[test]
fn a_namespace_of_another_kind_is_not_a_network_namespace() {
    let stdin = conf(
        "1.0.0",
        json!({"pod_selection": "all", "run_dir": TempDir::new("proto").path()}),
    );
    for (command, netns) in [
        ("ADD", "/proc/self/ns/mnt"),
        ("ADD", "/proc/self/ns/user"),
        ("CHECK", "/proc/self/ns/mnt"),
    ] {
        let reply = invoke(&cni_env(command, netns, POD_ARGS), &stdin).error(102);
        let msg = reply["msg"].as_str().unwrap();
        assert_eq!(
            msg,
            format!("{netns} is not a network namespace"),
            "{command} {netns}: {reply}"
        );
    }
    let del = invoke(&cni_env("DEL", "/proc/self/ns/mnt", POD_ARGS), &stdin);
    assert_eq!((del.code, del.stdout.as_str()), (0, ""), "{}", del.stderr);
}

#[test]
fn del_succeeds_without_or_with_a_gone_namespace() {
    let stdin = conf(
        "0.4.0",
        json!({"pod_selection": "all", "prevResult": prev_result("0.4.0")}),
    );
    for netns in ["", "/nonexistent/netns", "/proc/self/status"] {
        let reply = invoke(&cni_env("DEL", netns, POD_ARGS), &stdin);
        assert_eq!(
            (reply.code, reply.stdout.as_str()),
            (0, ""),
            "{netns:?}: {}",
            reply.stderr
        );
    }
}

#[test]
fn del_of_a_gone_namespace_succeeds_whatever_the_configuration_says() {
    let stdins = [
        // A plugin downgrade: a key the older plugin does not know.
        conf("1.0.0", json!({"capture": {"ipv7": "on"}})),
        conf("1.0.0", json!({"capture": null})),
        conf("1.0.0", json!({"capture": ["iptables", "legacy", 15002]})),
        conf("1.0.0", json!({"capture": {"interception_mode": "NAT"}})),
        conf("1.0.0", json!({"name": "", "pod_selection": "all"})),
        conf("0.2.0", json!({})),
        conf("1.0.0", json!({"prevResult": [1]})),
        json!({"name": "n", "type": "capture-cni"}).to_string(),
        "{\"cniVersion\": \"1.0.0\", \"name\": \"k8s-pod-".into(),
        "[]".into(),
        String::new(),
    ];
    for stdin in &stdins {
        for netns in ["", "/nonexistent/netns", "/proc/self/status"] {
            let reply = invoke(&cni_env("DEL", netns, POD_ARGS), stdin);
            assert_eq!(
                (reply.code, reply.stdout.as_str()),
                (0, ""),
                "{netns:?} {stdin}: {}",
                reply.stderr
            );
        }
    }
}

#[test]
fn del_still_needs_the_runtimes_environment() {
    let stdin = conf("1.0.0", json!({}));
    for name in ["CNI_CONTAINERID", "CNI_IFNAME"] {
        let mut env = cni_env("DEL", "", POD_ARGS);
        env.retain(|(k, _)| *k != name);
        let reply = invoke(&env, &stdin).error(4);
        assert!(reply["msg"].as_str().unwrap().contains(name), "{reply}");
    }
    let mut env = cni_env("DEL", "", POD_ARGS);
    env[0].1 = "DELETE";
    invoke(&env, &stdin).error(4);
}

#[test]
fn gc_rejects_attachments_that_are_not_objects() {
    let tmp = TempDir::new("gc");
    let stdin = conf(
        "1.1.0",
        json!({"run_dir": tmp.path(), "cni.dev/valid-attachments": [["c0ffee0123", "eth0"]]}),
    );
    let reply = invoke(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &stdin).error(7);
    let msg = reply["msg"].as_str().unwrap();
    assert!(msg.contains("cni.dev/valid-attachments"), "{msg}");
}

#[test]
fn gc_accepts_both_attachment_keys() {
    let tmp = TempDir::new("gc");
    let attachments = json!([{"containerID": "c0ffee0123", "ifname": "eth0"}]);
    std::fs::write(tmp.path().join("xtables-1-2.lock"), "").unwrap();
    std::fs::write(tmp.path().join("unrelated"), "").unwrap();
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let stdin = conf("1.1.0", json!({"run_dir": tmp.path(), key: attachments}));
        let reply = invoke(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &stdin);
        assert_eq!((reply.code, reply.stdout.as_str()), (0, ""), "{}", reply.stderr);
    }
    // An idle lock file is collected; nothing else is touched.
    assert!(!tmp.path().join("xtables-1-2.lock").exists());
    assert!(tmp.path().join("unrelated").exists());
}

#[test]
fn logs_go_to_stderr_and_the_log_file_never_stdout() {
    let tmp = TempDir::new("log");
    let log = tmp.path().join("plugin.log");
    let stdin = conf("1.0.0", json!({"log_file": log, "plugin_log_level": "debug"}));
    let reply = add("", &stdin);
    assert_eq!(reply.ok(), "{\"cniVersion\":\"1.0.0\"}\n");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("command=ADD container_id=c0ffee0123") && logged.contains("skipped"),
        "{logged}"
    );
    assert!(reply.stderr.contains("skipped"));
    let quiet = conf("1.0.0", json!({"plugin_log_level": "none"}));
    assert_eq!(add("", &quiet).stderr, "");
}

/// `log_format: "json"`: every line, on stderr and in the file, is one JSON object with Istio's
/// keys and the invocation's container, netns and pod.
#[test]
fn json_logs_carry_the_container_netns_and_pod() {
    let tmp = TempDir::new("jsonlog");
    let log = tmp.path().join("plugin.log");
    let stdin = conf(
        "1.0.0",
        json!({"log_file": log, "plugin_log_level": "debug", "log_format": "json", "exclude_namespaces": ["kube-system"]}),
    );
    let reply = add("K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1", &stdin);
    reply.ok();
    let file = std::fs::read_to_string(&log).unwrap();
    for (what, text) in [("stderr", reply.stderr.as_str()), ("file", file.as_str())] {
        assert!(text.contains("skipped"), "{what}: {text}");
        for line in text.lines() {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {line}"));
            for (key, want) in [
                ("scope", "cni"),
                ("command", "ADD"),
                ("container_id", "c0ffee0123"),
                ("netns", "/nonexistent/netns"),
                ("ifname", "eth0"),
                ("pod_namespace", "kube-system"),
                ("pod", "coredns-1"),
            ] {
                assert_eq!(v[key], want, "{what}: {key} in {line}");
            }
            assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
            assert!(v["level"].is_string() && v["msg"].is_string(), "{line}");
        }
    }
}
