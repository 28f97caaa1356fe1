//! deploy/capture-agent-daemonset.yaml: the agent's command line there is one the agent
//! accepts, and the manifests are valid Kubernetes objects (`kubernetes-validate --strict`,
//! installed by scripts/setup; skipped where it is missing, unless CI is set).

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name)
}

/// The items of the container's `command:` list.
fn command(yaml: &str) -> Vec<String> {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "command:").skip(1);
    let mut items = Vec::new();
    for line in lines.by_ref() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        match line.strip_prefix("- ") {
            Some(item) => items.push(item.to_owned()),
            None => break,
        }
    }
    items
}

/// Every flag the DaemonSet passes parses: `--version`, last, exits 0 only when every flag
/// before it was accepted.
#[test]
fn the_daemonsets_command_line_is_accepted() {
    let yaml = std::fs::read_to_string(manifest("capture-agent-daemonset.yaml")).expect("read the manifest");
    let command = command(&yaml);
    assert_eq!(
        command.first().map(String::as_str),
        Some("/usr/local/bin/capture-agent")
    );
    assert!(command.len() > 5, "{command:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_capture-agent"))
        .args(&command[1..])
        .arg("--version")
        .env_clear()
        .output()
        .expect("run capture-agent");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_manifests_are_valid_kubernetes_objects() {
    let Ok(out) = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(manifest("capture-agent-daemonset.yaml"))
        .arg(manifest("capture-cni-daemonset.yaml"))
        .output()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate is missing and CI is set; scripts/setup installs it"
        );
        eprintln!("skipping: kubernetes-validate is not installed (pip install kubernetes-validate)");
        return;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" passed for resource ").count(), 5, "{text}");
}
