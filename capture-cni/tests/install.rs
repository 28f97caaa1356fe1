//! The installer against Istio's installer fixtures (`capture-core/testdata/istio/cni-install`,
//! MANIFEST.md §5) and through the real binary on scratch directories.
//!
//! Our entry differs from Istio's, so results are compared by structure: the other plugins
//! unchanged and in order, the top-level `name`/`cniVersion` kept, our entry last. Where we
//! deliberately differ from Istio's goldens, the test says so.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use capture_cni::install::{self, NetworkConfig, PLUGIN_TYPE};
use capture_e2e::TempDir;
use serde_json::{Map, Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_capture-cni");

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../capture-core/testdata/istio/cni-install")
        .join(name)
}

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture_path(name)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn config(name: &str) -> NetworkConfig {
    NetworkConfig::from_value(fixture(name))
        .unwrap_or_else(|| panic!("{name} is not a network configuration"))
}

fn ours() -> Value {
    install::plugin_entry(&Map::new())
}

fn plugins(doc: &Value) -> &Vec<Value> {
    doc["plugins"].as_array().expect("a plugin list")
}

/// The result has the golden's plugins but its last (Istio's entry), then ours.
#[track_caller]
fn assert_chained_like(result: &Value, golden: &Value) {
    let (got, want) = (plugins(result), plugins(golden));
    assert_eq!(got.len(), want.len(), "{result:#}");
    assert_eq!(
        got[..got.len() - 1],
        want[..want.len() - 1],
        "other plugins unchanged and in order"
    );
    assert_eq!(want.last().unwrap()["type"], "istio-cni");
    assert_eq!(got.last().unwrap(), &ours(), "ours is last");
}

#[test]
fn entry_declares_the_pod_annotations_capability() {
    let mut settings = Map::new();
    settings.insert("cniVersion".into(), "0.3.1".into());
    settings.insert("type".into(), "other".into());
    settings.insert("exclude_namespaces".into(), json!(["kube-system"]));
    settings.insert("capabilities".into(), json!({"portMappings": true}));
    assert_eq!(
        install::plugin_entry(&settings),
        json!({
            "type": "capture-cni",
            "name": "capture-cni",
            "capabilities": {"io.kubernetes.cri.pod-annotations": true, "portMappings": true},
            "exclude_namespaces": ["kube-system"],
        })
    );
}

#[test]
fn list_gets_our_entry_last_keeping_name_and_version() {
    let result = install::insert_entry(&config("list.conflist"), &ours(), false);
    let golden = fixture("list.conflist.golden");
    assert_eq!(result["cniVersion"], golden["cniVersion"]);
    assert_eq!(result["name"], golden["name"]);
    assert_chained_like(&result, &golden);
    // Unlike Istio, the file's own key order is kept rather than sorted.
    let first_keys: Vec<&String> = plugins(&result)[0].as_object().unwrap().keys().collect();
    assert_eq!(first_keys, ["type", "bridge", "args", "ipam", "dns"]);
}

#[test]
fn single_conf_becomes_a_list_under_its_own_name_and_version() {
    let result = install::insert_entry(&config("bridge.conf"), &ours(), false);
    let golden = fixture("bridge.conf.golden");
    assert_chained_like(&result, &golden);
    // Deliberate difference: Istio names the new list "k8s-pod-network", version 0.3.1; we
    // keep what the node's network had.
    assert_eq!(
        (&golden["name"], &golden["cniVersion"]),
        (&json!("k8s-pod-network"), &json!("0.3.1"))
    );
    assert_eq!(
        (&result["name"], &result["cniVersion"]),
        (&json!("dbnet"), &json!("0.4.0"))
    );
    let keys: Vec<&String> = result.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["cniVersion", "name", "plugins"]);
    assert!(
        plugins(&result)[0].get("cniVersion").is_none(),
        "the inner conf loses its cniVersion"
    );
}

#[test]
fn an_istio_cni_entry_is_kept_unless_asked_to_remove_it() {
    let with_istio = config("list-with-istio.conflist");
    let kept = install::insert_entry(&with_istio, &ours(), false);
    let types: Vec<&str> = plugins(&kept)
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["bridge", "tuning", "istio-cni", "capture-cni"]);

    // Migrating: as Istio replaces its old entry, the result is the same as for the list
    // without one (Istio's list-with-istio golden equals its list golden byte for byte; ours
    // are equal as JSON, the fixtures' key orders differ and we keep each file's).
    let replaced = install::insert_entry(&with_istio, &ours(), true);
    assert_chained_like(&replaced, &fixture("list-with-istio.conflist.golden"));
    let from_plain = install::insert_entry(&config("list.conflist"), &ours(), false);
    assert_eq!(replaced, from_plain);
}

#[test]
fn our_old_entry_is_replaced_not_repeated() {
    let once = install::insert_entry(&config("list.conflist"), &ours(), false);
    let mut settings = Map::new();
    settings.insert("plugin_log_level".into(), "debug".into());
    let newer = install::plugin_entry(&settings);
    let twice = install::insert_entry(&NetworkConfig::from_value(once).unwrap(), &newer, false);
    assert_eq!(plugins(&twice).len(), 3);
    assert_eq!(plugins(&twice)[2], newer);
}

#[test]
fn invalid_fixtures_are_not_configurations() {
    assert_eq!(NetworkConfig::from_value(fixture("invalid-map.conflist")), None);
    assert_eq!(NetworkConfig::from_value(fixture("invalid-arr.conflist")), None);
    assert_eq!(NetworkConfig::from_value(json!({"plugins": []})), None);
}

#[test]
fn removal_leaves_exactly_the_other_plugins() {
    // Istio's TestCleanup: list-with-istio minus the entry is list-no-istio.
    let mut with_ours = fixture("list-no-istio.conflist");
    with_ours["plugins"].as_array_mut().unwrap().push(ours());
    let (removed, changed) = install::remove_entry(&NetworkConfig::from_value(with_ours).unwrap());
    assert!(changed);
    assert_eq!(removed, fixture("list-no-istio.conflist"));
    // Istio's own entry is not ours to remove.
    let (untouched, changed) = install::remove_entry(&config("list-with-istio.conflist"));
    assert!(!changed);
    assert_eq!(untouched, fixture("list-with-istio.conflist"));
}

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run capture-cni");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "capture-cni {args:?} failed: {stderr}");
    stderr
}

fn dirs(tmp: &TempDir) -> (PathBuf, PathBuf) {
    let conf = tmp.path().join("net.d");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&conf).unwrap();
    (conf, bin)
}

fn install_args<'a>(conf: &'a Path, bin: &'a Path) -> Vec<&'a str> {
    vec![
        "install",
        "--conf-dir",
        conf.to_str().unwrap(),
        "--bin-dir",
        bin.to_str().unwrap(),
    ]
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn install_twice_changes_nothing_and_uninstall_removes_exactly_ours() {
    let tmp = TempDir::new("install");
    let (conf, bin) = dirs(&tmp);
    std::fs::copy(fixture_path("bridge.conf"), conf.join("10-bridge.conf")).unwrap();
    std::fs::copy(fixture_path("list.conflist"), conf.join("20-other.conflist")).unwrap();

    run(&install_args(&conf, &bin));
    assert_eq!(
        listing(&conf),
        ["10-bridge.conflist", "20-other.conflist"],
        "the .conf is renamed"
    );
    let path = conf.join("10-bridge.conflist");
    let first = std::fs::read(&path).unwrap();
    let doc: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(plugins(&doc).last().unwrap()["type"], PLUGIN_TYPE);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let installed = bin.join("capture-cni");
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(BIN).unwrap());
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let (mtime, ino) = {
        let m = std::fs::metadata(&path).unwrap();
        (m.mtime_nsec() + m.mtime() * 1_000_000_000, m.ino())
    };

    let stderr = run(&install_args(&conf, &bin));
    assert!(stderr.contains("already in"), "{stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), first, "byte-identical");
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (m.mtime_nsec() + m.mtime() * 1_000_000_000, m.ino()),
        (mtime, ino),
        "not rewritten"
    );
    assert_eq!(
        listing(&conf),
        ["10-bridge.conflist", "20-other.conflist"],
        "no temporary files left"
    );

    run(&[
        "uninstall",
        "--conf-dir",
        conf.to_str().unwrap(),
        "--bin-dir",
        bin.to_str().unwrap(),
    ]);
    let after: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut expected = fixture("bridge.conf");
    expected.as_object_mut().unwrap().shift_remove("cniVersion");
    assert_eq!(
        after,
        json!({"cniVersion": "0.4.0", "name": "dbnet", "plugins": [expected]})
    );
    assert!(!installed.exists());
    // The other network was never touched.
    assert_eq!(
        std::fs::read(conf.join("20-other.conflist")).unwrap(),
        std::fs::read(fixture_path("list.conflist")).unwrap()
    );
}

#[test]
fn primary_is_the_first_valid_file_and_settings_are_merged() {
    let tmp = TempDir::new("install");
    let (conf, bin) = dirs(&tmp);
    std::fs::copy(
        fixture_path("invalid-map.conflist"),
        conf.join("00-empty.conflist"),
    )
    .unwrap();
    std::fs::copy(
        fixture_path("invalid-arr.conflist"),
        conf.join("01-array.conflist"),
    )
    .unwrap();
    // A list in a .conf is not a valid .conf (Istio skips it too).
    std::fs::copy(fixture_path("list.conflist"), conf.join("02-list-in.conf")).unwrap();
    std::fs::write(conf.join("03-notes.txt"), "{}").unwrap();
    std::fs::copy(
        fixture_path("list-with-istio.conflist"),
        conf.join("10-main.conflist"),
    )
    .unwrap();
    let settings = tmp.path().join("settings.json");
    std::fs::write(
        &settings,
        r#"{"exclude_namespaces": ["kube-system"], "capture": {"proxy_uid": 1337}}"#,
    )
    .unwrap();
    let mut args = install_args(&conf, &bin);
    args.extend([
        "--plugin-config",
        settings.to_str().unwrap(),
        "--remove-istio-cni",
    ]);
    run(&args);
    let doc: Value = serde_json::from_slice(&std::fs::read(conf.join("10-main.conflist")).unwrap()).unwrap();
    let types: Vec<&str> = plugins(&doc)
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["bridge", "tuning", "capture-cni"]);
    assert_eq!(plugins(&doc)[2]["exclude_namespaces"], json!(["kube-system"]));
    assert_eq!(plugins(&doc)[2]["capture"]["proxy_uid"], 1337);
    for untouched in ["00-empty.conflist", "01-array.conflist", "02-list-in.conf"] {
        let name = untouched.split_once('-').unwrap().1;
        let source = match name {
            "empty.conflist" => "invalid-map.conflist",
            "array.conflist" => "invalid-arr.conflist",
            _ => "list.conflist",
        };
        assert_eq!(
            std::fs::read(conf.join(untouched)).unwrap(),
            std::fs::read(fixture_path(source)).unwrap()
        );
    }
}

#[test]
fn install_without_a_network_configuration_fails_clearly() {
    let tmp = TempDir::new("install");
    let (conf, bin) = dirs(&tmp);
    std::fs::copy(fixture_path("invalid-map.conflist"), conf.join("00.conflist")).unwrap();
    let out = Command::new(BIN)
        .args(install_args(&conf, &bin))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no valid .conf or .conflist"), "{stderr}");
}

#[test]
fn each_command_prints_its_help_and_refuses_unknown_options() {
    for (args, mentions) in [
        (&["--help"][..], "install"),
        (&["help", "install"][..], "--plugin-config"),
        (&["install", "--help"][..], "--plugin-config"),
        (&["install", "-h"][..], "--watch"),
        (&["uninstall", "--help"][..], "--conf-dir"),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "capture-cni {args:?}: {out:?}");
        assert!(stdout.contains(mentions), "capture-cni {args:?}: {stdout}");
    }
    for (args, named) in [
        (&["install", "--bogus"][..], "--bogus"),
        (&["uninstall", "--watch"][..], "--watch"),
        (&["install", "--interval", "0"][..], "--interval"),
        (&["bogus"][..], "bogus"),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "capture-cni {args:?}: {out:?}");
        assert!(stderr.contains(named), "capture-cni {args:?}: {stderr}");
    }
}

/// A refused command line still logs as its logging flags (or their variables) ask: any Go
/// boolean spelling of `--log_as_json`, and `--log_output_level`'s levels (`all:none` silences
/// even the error line; the exit status still says it).
#[test]
fn a_usage_error_logs_as_the_logging_flags_ask() {
    for (args, env) in [
        (&["install", "--bogus", "--log_as_json=T"][..], None),
        (&["install", "--bogus"][..], Some(("LOG_AS_JSON", "1"))),
    ] {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_remove("LOG_AS_JSON")
            .env_remove("LOG_OUTPUT_LEVEL");
        if let Some((k, v)) = env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "capture-cni {args:?}: {stderr}");
        let line: Value = serde_json::from_str(stderr.trim()).unwrap_or_else(|e| panic!("{e}: {stderr}"));
        assert_eq!(line["level"], "error", "{stderr}");
        assert!(line["msg"].as_str().unwrap().contains("--bogus"), "{stderr}");
    }
    let out = Command::new(BIN)
        .args(["install", "--bogus", "--log_output_level", "all:none"])
        .env_remove("LOG_OUTPUT_LEVEL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// The DaemonSet's ConfigMap holds settings the plugin accepts.
#[test]
fn deploy_plugin_config_is_valid() {
    let yaml = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/capture-cni-daemonset.yaml"),
    )
    .unwrap();
    let block: String = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("plugin.json: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{l}\n"))
        .collect();
    let settings: Value = serde_json::from_str(&block).unwrap_or_else(|e| panic!("{e}: {block}"));
    let entry = install::plugin_entry(settings.as_object().unwrap());
    let mut conf = entry.clone();
    conf["cniVersion"] = "1.0.0".into();
    let conf: capture_cni::conf::NetConf = serde_json::from_value(conf).unwrap();
    assert_eq!(conf.exclude_namespaces, ["kube-system"]);
    capture_cni::pod::PodCapture::new(&conf.capture, &Default::default())
        .unwrap()
        .to_spec(&capture_core::Detected::default())
        .unwrap();
}

fn output(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run capture-cni")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn has_ours(path: &Path) -> bool {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(NetworkConfig::from_value)
        .is_some_and(|c| install::remove_entry(&c).1)
}

const LIST_A: &str = r#"{"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}]}"#;
const LIST_B: &str = r#"{"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "ptp"}]}"#;

/// Item 1: settings ADD would refuse for every pod are refused by the installer, exit 1, one
/// line naming the field, before the binary is copied or the configuration touched.
#[test]
fn plugin_config_that_add_would_refuse_is_refused_before_anything_is_written() {
    for (settings, named) in [
        (r#"{"capture": {"proxy_uid": "abc"}}"#, "capture.proxy_uid"),
        (
            r#"{"capture": {"exclude_inbound_port": "15020"}}"#,
            "exclude_inbound_port",
        ),
        (
            r#"{"capture": {"outbound_port": 70000}}"#,
            "capture.outbound_port",
        ),
        (r#"{"pod_selection": "bogus"}"#, "pod_selection"),
        (r#"{"exclude_namespace": ["kube-system"]}"#, "exclude_namespace"),
        (r#"{"capture": ["iptables"]}"#, "capture"),
        ("[1]", "not a JSON object"),
        ("{", "--plugin-config"),
    ] {
        let tmp = TempDir::new("install");
        let (conf, bin) = dirs(&tmp);
        let list = conf.join("10-a.conflist");
        std::fs::write(&list, LIST_A).unwrap();
        let file = tmp.path().join("settings.json");
        std::fs::write(&file, settings).unwrap();
        let mut args = install_args(&conf, &bin);
        args.extend(["--plugin-config", file.to_str().unwrap()]);
        let out = output(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{settings}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{settings}: one line: {stderr}");
        assert!(stderr.contains(named), "{settings}: names {named}: {stderr}");
        assert_eq!(
            std::fs::read_to_string(&list).unwrap(),
            LIST_A,
            "{settings}: untouched"
        );
        assert_eq!(listing(&conf), ["10-a.conflist"], "{settings}");
        assert!(!bin.join(PLUGIN_TYPE).exists(), "{settings}: binary not copied");
    }
    let tmp = TempDir::new("install");
    let (conf, bin) = dirs(&tmp);
    std::fs::write(conf.join("10-a.conflist"), LIST_A).unwrap();
    let mut args = install_args(&conf, &bin);
    let missing = tmp.path().join("missing.json");
    args.extend(["--plugin-config", missing.to_str().unwrap()]);
    assert_eq!(
        output(&args).status.code(),
        Some(1),
        "an unreadable file is exit 1 too"
    );
    // An empty value (a ConfigMap key left empty) and a directory are install errors like the
    // others: exit 1, one line naming the flag, nothing written (not clap's usage exit 2).
    for value in ["", tmp.path().to_str().unwrap()] {
        let mut args = install_args(&conf, &bin);
        args.extend(["--plugin-config", value]);
        let out = output(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{value:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{value:?}: one line: {stderr}");
        assert!(
            stderr.contains("\terror\tcni\tinstall failed: ") && stderr.contains("--plugin-config"),
            "{value:?}: {stderr}"
        );
        assert!(!bin.join(PLUGIN_TYPE).exists(), "{value:?}: binary not copied");
    }
}

/// The library refuses them too (capture-agent calls it with its own flag's settings).
#[test]
fn the_library_refuses_settings_add_would_refuse() {
    let tmp = TempDir::new("install");
    let (conf, bin) = dirs(&tmp);
    std::fs::write(conf.join("10-a.conflist"), LIST_A).unwrap();
    let mut plugin_config = Map::new();
    plugin_config.insert("capture".into(), json!({"inbound_port": "x"}));
    let opts = install::InstallOptions {
        plugin_config,
        ..options(&conf, &bin)
    };
    let e = install::install(&opts).unwrap_err();
    assert!(e.to_string().contains("capture.inbound_port"), "{e}");
    assert_eq!(
        std::fs::read_to_string(conf.join("10-a.conflist")).unwrap(),
        LIST_A
    );
    assert!(!bin.exists());
}

/// A running `install --watch`, killed when the test ends however it ends.
struct Watcher(Child);

impl Watcher {
    fn start(args: &[&str]) -> Self {
        let child = Command::new(BIN)
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start capture-cni install --watch");
        Self(child)
    }

    /// Sends SIGTERM and returns the exit code and stderr.
    fn terminate(mut self) -> (Option<i32>, String) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running 10 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut self.0.stderr.take().unwrap(), &mut stderr).unwrap();
        (status.code(), stderr)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[track_caller]
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Item 2: while the file it chained into is briefly invalid (the primary plugin rewriting
/// it), `--watch` retries that file rather than chaining into the next one.
#[test]
fn watch_keeps_to_its_file_while_the_primary_plugin_rewrites_it() {
    let tmp = TempDir::new("install");
    let (conf, bin) = dirs(&tmp);
    let (a, b) = (conf.join("10-a.conflist"), conf.join("20-b.conflist"));
    std::fs::write(&a, LIST_A).unwrap();
    std::fs::write(&b, LIST_B).unwrap();
    let mut args = install_args(&conf, &bin);
    args.extend(["--watch", "--interval", "1"]);
    let watcher = Watcher::start(&args);
    wait_for("chained into 10-a", || has_ours(&a));
    // Half-written, as a non-atomic rewrite leaves it for a moment.
    std::fs::write(&a, &LIST_A[..30]).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(std::fs::read_to_string(&b).unwrap(), LIST_B, "not moved to 20-b");
    std::fs::write(&a, LIST_A).unwrap();
    wait_for("chained into 10-a again", || has_ours(&a));
    assert_eq!(std::fs::read_to_string(&b).unwrap(), LIST_B);
    let (code, stderr) = watcher.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("retrying"), "{stderr}");
}

fn options(conf: &Path, bin: &Path) -> install::InstallOptions {
    install::InstallOptions {
        conf_dir: conf.to_owned(),
        bin_dir: bin.to_owned(),
        binary: BIN.into(),
        conf_file: None,
        plugin_config: Map::new(),
        remove_istio_cni: false,
        allow_istio_cni: false,
    }
}

/// Item 2, pass by pass: the installer keeps to its file while it is invalid (an error to
/// retry), and moves only to a valid file that sorts before it (the runtime's new primary).
#[test]
fn the_installer_keeps_to_its_file_and_moves_only_to_an_earlier_one() {
    let tmp = TempDir::new("install");
    let (conf, bin) = dirs(&tmp);
    let (b, c) = (conf.join("10-b.conflist"), conf.join("20-c.conflist"));
    std::fs::write(&b, LIST_A).unwrap();
    std::fs::write(&c, LIST_B).unwrap();
    let mut installer = install::Installer::new(options(&conf, &bin));
    installer.install().unwrap();
    assert_eq!(installer.file(), Some(b.as_path()));

    std::fs::write(&b, &LIST_A[..30]).unwrap();
    let e = installer.install().unwrap_err().to_string();
    assert!(e.contains("10-b.conflist") && e.contains("retrying"), "{e}");
    assert_eq!(std::fs::read_to_string(&c).unwrap(), LIST_B, "not moved to 20-c");
    std::fs::write(&b, LIST_A).unwrap();
    let report = installer.install().unwrap();
    assert_eq!(report.conf_file, Some((b.clone(), true)));

    let a = conf.join("05-a.conflist");
    std::fs::write(&a, LIST_B).unwrap();
    let report = installer.install().unwrap();
    assert_eq!(
        report.conf_file,
        Some((a.clone(), true)),
        "an earlier file takes over"
    );
    assert_eq!(installer.file(), Some(a.as_path()));
    std::fs::remove_file(&a).unwrap();
    let report = installer.install().unwrap();
    assert_eq!(
        report.conf_file,
        Some((b.clone(), false)),
        "gone: the primary again"
    );
    assert_eq!(std::fs::read_to_string(&c).unwrap(), LIST_B);
}

/// Item 2: uninstall removes our entry from every file that has one (a watcher may have
/// written several over time), and leaves the others byte-identical.
#[test]
fn uninstall_removes_our_entry_from_every_file() {
    let tmp = TempDir::new("install");
    let (conf, bin) = dirs(&tmp);
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join(PLUGIN_TYPE), "plugin").unwrap();
    let chained = |text: &str| {
        let config = NetworkConfig::from_value(serde_json::from_str(text).unwrap()).unwrap();
        install::render(&install::insert_entry(&config, &ours(), false))
    };
    std::fs::write(conf.join("10-a.conflist"), chained(LIST_A)).unwrap();
    std::fs::write(conf.join("20-b.conflist"), chained(LIST_B)).unwrap();
    std::fs::write(conf.join("30-c.conflist"), LIST_B).unwrap();
    run(&[
        "uninstall",
        "--conf-dir",
        conf.to_str().unwrap(),
        "--bin-dir",
        bin.to_str().unwrap(),
    ]);
    for (name, want) in [("10-a.conflist", LIST_A), ("20-b.conflist", LIST_B)] {
        let got: Value = serde_json::from_slice(&std::fs::read(conf.join(name)).unwrap()).unwrap();
        assert_eq!(got, serde_json::from_str::<Value>(want).unwrap(), "{name}");
    }
    assert_eq!(
        std::fs::read_to_string(conf.join("30-c.conflist")).unwrap(),
        LIST_B
    );
    assert!(!bin.join(PLUGIN_TYPE).exists());
}

/// Item 3: a symlinked primary configuration is edited through the link: the target is
/// rewritten (atomically, in its own directory) and the link stays a link.
#[test]
fn a_symlinked_conflist_is_edited_through_the_link() {
    let tmp = TempDir::new("install");
    let (conf, bin) = dirs(&tmp);
    let real_dir = tmp.path().join("real");
    std::fs::create_dir_all(&real_dir).unwrap();
    let real = real_dir.join("a.conflist");
    std::fs::write(&real, LIST_A).unwrap();
    let link = conf.join("10-a.conflist");
    std::os::unix::fs::symlink("../real/a.conflist", &link).unwrap();

    run(&install_args(&conf, &bin));
    assert!(
        std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(),
        "still a link"
    );
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("../real/a.conflist")
    );
    assert!(has_ours(&real), "the target has our entry");
    assert_eq!(mode(&real), 0o600);
    assert_eq!(listing(&conf), ["10-a.conflist"], "no temporary file left");
    assert_eq!(listing(&real_dir), ["a.conflist"], "no temporary file left");

    run(&[
        "uninstall",
        "--conf-dir",
        conf.to_str().unwrap(),
        "--bin-dir",
        bin.to_str().unwrap(),
    ]);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(!has_ours(&real));
}

/// Item 4: a list that chains istio-cni is refused (two capture plugins fight), unless
/// `--allow-istio-cni` (loud warning) or `--remove-istio-cni`.
#[test]
fn an_istio_cni_entry_is_refused_unless_allowed_or_removed() {
    let tmp = TempDir::new("install");
    let (conf, bin) = dirs(&tmp);
    let list = conf.join("10-main.conflist");
    std::fs::copy(fixture_path("list-with-istio.conflist"), &list).unwrap();
    let original = std::fs::read(&list).unwrap();

    let out = output(&install_args(&conf, &bin));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for named in [
        "10-main.conflist",
        "istio-cni",
        "--remove-istio-cni",
        "--allow-istio-cni",
    ] {
        assert!(stderr.contains(named), "names {named}: {stderr}");
    }
    assert_eq!(std::fs::read(&list).unwrap(), original, "untouched");
    assert!(!bin.join(PLUGIN_TYPE).exists(), "binary not copied");

    let mut allow = install_args(&conf, &bin);
    allow.push("--allow-istio-cni");
    let stderr = run(&allow);
    assert!(
        stderr.contains("\twarn\t") && stderr.contains("istio-cni"),
        "{stderr}"
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
    let types: Vec<&str> = plugins(&doc)
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["bridge", "tuning", "istio-cni", "capture-cni"]);

    let mut remove = install_args(&conf, &bin);
    remove.push("--remove-istio-cni");
    run(&remove);
    let doc: Value = serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
    let types: Vec<&str> = plugins(&doc)
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["bridge", "tuning", "capture-cni"]);

    let mut both = install_args(&conf, &bin);
    both.extend(["--allow-istio-cni", "--remove-istio-cni"]);
    assert_eq!(output(&both).status.code(), Some(2), "a usage error");
}

/// Item 5: on SIGTERM, `install --watch` removes its entry and its binary and exits 0.
#[test]
fn sigterm_removes_the_entry_and_the_binary() {
    let tmp = TempDir::new("install");
    let (conf, bin) = dirs(&tmp);
    let a = conf.join("10-a.conflist");
    std::fs::write(&a, LIST_A).unwrap();
    let mut args = install_args(&conf, &bin);
    args.extend(["--watch", "--interval", "1"]);
    let watcher = Watcher::start(&args);
    wait_for("chained", || has_ours(&a));
    assert!(bin.join(PLUGIN_TYPE).is_file());
    let (code, stderr) = watcher.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!has_ours(&a), "entry removed: {stderr}");
    assert!(!bin.join(PLUGIN_TYPE).exists(), "binary removed: {stderr}");
    assert_eq!(listing(&conf), ["10-a.conflist"]);
}

/// Item 5: `--keep-on-exit` (upgrades: the next installer takes over) leaves both.
#[test]
fn keep_on_exit_leaves_the_plugin_installed() {
    let tmp = TempDir::new("install");
    let (conf, bin) = dirs(&tmp);
    let a = conf.join("10-a.conflist");
    std::fs::write(&a, LIST_A).unwrap();
    let mut args = install_args(&conf, &bin);
    args.extend(["--watch", "--interval", "1", "--keep-on-exit"]);
    let watcher = Watcher::start(&args);
    wait_for("chained", || has_ours(&a));
    let (code, stderr) = watcher.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(has_ours(&a), "{stderr}");
    assert!(bin.join(PLUGIN_TYPE).is_file(), "{stderr}");
    // Without --watch there is nothing to keep.
    let mut once = install_args(&conf, &bin);
    once.push("--keep-on-exit");
    assert_eq!(output(&once).status.code(), Some(2));
}

/// Item 6: every configuration written is 0600 (istio/istio#59075), also one that replaces a
/// 0644 file, one that already had our entry, and the list made from a `.conf`.
#[test]
fn configurations_are_written_0600_also_over_0644_files() {
    let tmp = TempDir::new("install");
    let (conf, bin) = dirs(&tmp);
    let a = conf.join("10-a.conflist");
    std::fs::write(&a, LIST_A).unwrap();
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644)).unwrap();
    run(&install_args(&conf, &bin));
    assert!(has_ours(&a));
    assert_eq!(mode(&a), 0o600, "replacing a 0644 file");

    // Already chained but 0644 (an older installer's): narrowed, content unchanged.
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = std::fs::read(&a).unwrap();
    run(&install_args(&conf, &bin));
    assert_eq!(std::fs::read(&a).unwrap(), before);
    assert_eq!(mode(&a), 0o600, "an unchanged 0644 file");

    let tmp = TempDir::new("install");
    let (conf, bin) = dirs(&tmp);
    let single = conf.join("10-bridge.conf");
    std::fs::copy(fixture_path("bridge.conf"), &single).unwrap();
    std::fs::set_permissions(&single, std::fs::Permissions::from_mode(0o644)).unwrap();
    run(&install_args(&conf, &bin));
    assert_eq!(
        mode(&conf.join("10-bridge.conflist")),
        0o600,
        "a list made from a .conf"
    );
}

/// `capture-cni chained`, the installer DaemonSet's readiness probe: 1 naming what is missing
/// until the configuration the runtime uses ends with our entry and the binary is there, then 0;
/// 1 again when the primary plugin rewrites the file without us, or the binary goes.
#[test]
fn chained_is_true_only_while_the_runtime_would_run_the_plugin() {
    let tmp = TempDir::new("chained");
    let (conf, bin) = dirs(&tmp);
    let location = [
        "--conf-dir",
        conf.to_str().unwrap(),
        "--bin-dir",
        bin.to_str().unwrap(),
    ];
    let chained = || {
        let out = output(&[&["chained"][..], &location[..]].concat());
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, said) = chained();
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("not chained: no valid network configuration in"),
        "{said}"
    );

    let primary = conf.join("10-bridge.conflist");
    std::fs::copy(fixture_path("list.conflist"), &primary).unwrap();
    let (code, said) = chained();
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("does not end with a capture-cni entry"), "{said}");

    run(&install_args(&conf, &bin));
    let (code, said) = chained();
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("chained in {}", primary.display())),
        "{said}"
    );

    // The primary plugin rewrites its file without our entry.
    std::fs::copy(fixture_path("list.conflist"), &primary).unwrap();
    assert_eq!(chained().0, Some(1));
    run(&install_args(&conf, &bin));
    assert_eq!(chained().0, Some(0));
    std::fs::remove_file(bin.join("capture-cni")).unwrap();
    let (code, said) = chained();
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("capture-cni is missing"), "{said}");
}
