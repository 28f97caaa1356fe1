//! deploy/: the agent's command line in capture-agent-daemonset.yaml is one the agent accepts,
//! every manifest is valid Kubernetes objects (`kubernetes-validate --strict`, installed by
//! scripts/setup), the images they name are the ones scripts/build-images tags, and the
//! kustomization renders (`kubectl kustomize`, where kubectl is installed); kubernetes-validate's
//! test skips where it is missing, unless CI is set.

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

/// The YAML files of deploy/ other than the kustomization, sorted.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest(""))
        .expect("read deploy/")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    files
}

/// Runs `program args…`; `None` (skip) when it cannot run, which fails when CI is set.
fn tool_output(program: &str, args: &[&std::ffi::OsStr]) -> Option<std::process::Output> {
    match Command::new(program).args(args).output() {
        Ok(out) => Some(out),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{program} cannot run ({e}) and CI is set; scripts/setup installs it"
            );
            eprintln!("skipping: {program} cannot run: {e}");
            None
        }
    }
}

#[test]
fn the_manifests_are_valid_kubernetes_objects() {
    let files = manifests();
    assert!(files.len() >= 4, "{files:?}");
    let mut args: Vec<&std::ffi::OsStr> = vec!["--strict".as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let Some(out) = tool_output("kubernetes-validate", &args) else {
        return;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // One object per `kind:` at the top level of a document.
    let objects: usize = files
        .iter()
        .map(|f| {
            let yaml = std::fs::read_to_string(f).expect("read a manifest");
            yaml.lines().filter(|l| l.starts_with("kind:")).count()
        })
        .sum();
    assert_eq!(text.matches(" passed for resource ").count(), objects, "{text}");
}

/// `version` in a workspace crate's Cargo.toml.
fn crate_version(krate: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("Cargo.toml");
    let toml = std::fs::read_to_string(&path).expect("read Cargo.toml");
    toml.lines()
        .find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"'))
        .expect("a version")
        .to_owned()
}

/// Every `image:` in deploy/ is one scripts/build-images builds, at the version it tags
/// (capture-init's for capture-init, capture-cni's for capture-node), or the example Pods'
/// stand-in application.
#[test]
fn the_manifests_name_the_images_the_build_makes() {
    let init = format!("localhost/capture-init:{}", crate_version("capture-init"));
    let node = format!("localhost/capture-node:{}", crate_version("capture-cni"));
    let mut seen = Vec::new();
    for file in manifests() {
        let yaml = std::fs::read_to_string(&file).expect("read a manifest");
        for image in yaml.lines().filter_map(|l| l.trim().strip_prefix("image: ")) {
            let image = image.split(" #").next().unwrap_or(image).trim();
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                image == init || image == node || image == "app:latest",
                "{name}: image {image} is neither {init} nor {node}"
            );
            seen.push(image.to_owned());
        }
    }
    assert!(seen.contains(&init) && seen.contains(&node), "{seen:?}");
    // The kustomization's overrides name the same images and tags.
    let kustomization = std::fs::read_to_string(manifest("kustomization.yaml")).expect("read it");
    for image in [&init, &node] {
        let (name, tag) = image.rsplit_once(':').unwrap();
        assert!(kustomization.contains(&format!("- name: {name}\n")), "{name}");
        assert!(kustomization.contains(&format!("newTag: \"{tag}\"")), "{tag}");
    }
}

/// `kubectl kustomize deploy/` renders the installer with the overridden image.
#[test]
fn the_kustomization_renders() {
    let dir = manifest("");
    // kubectl is no Debian package (scripts/setup does not install it): skipped without it,
    // also in CI; the_manifests_name_the_images_the_build_makes checks the overrides' text.
    let Ok(out) = Command::new("kubectl").arg("kustomize").arg(&dir).output() else {
        eprintln!("skipping: kubectl is not installed");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("kind: DaemonSet"), "{text}");
    let node = format!("image: localhost/capture-node:{}", crate_version("capture-cni"));
    assert!(text.contains(&node), "{text}");
}
