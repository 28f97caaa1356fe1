//! Helpers the nf_tables tests share: scratch network namespaces, and Debian's nft to load
//! Istio's goldens as Istio does and to print what the kernel holds as nft sees it.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use capture_core::host::{RunError, run_in_scratch_netns};

#[derive(Debug)]
struct Failed(RunError);

impl From<RunError> for Failed {
    fn from(e: RunError) -> Self {
        Self(e)
    }
}

/// Runs `body` in a new, empty network namespace; `None` (after saying so) when not root,
/// unless `CI` is set: there a skipped privileged test would hide a broken setup.
pub fn in_scratch_netns<T: Send>(test: &str, body: impl FnOnce() -> T + Send) -> Option<T> {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: needs root, and CI is set"
        );
        eprintln!("skipping {test}: needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)");
        return None;
    }
    match run_in_scratch_netns(|| Ok::<_, Failed>(body())) {
        Ok(value) => Some(value),
        Err(Failed(RunError::Panicked(message))) => panic!("{test}: {message}"),
        Err(Failed(e)) => panic!("{test}: {}", capture_core::chain(&e)),
    }
}

/// Runs `program` in the calling thread's namespace (a child inherits its thread's
/// namespaces); its output, once it has succeeded.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} (scripts/setup installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{program} printed non-UTF-8: {e}"))
}

/// `nft list ruleset` in the calling thread's namespace.
pub fn ruleset() -> String {
    run("nft", &["list", "ruleset"])
}

pub fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/istio/nftables/capture")
        .join(format!("{name}.golden"))
}

pub fn goldens() -> Vec<String> {
    let dir = golden("x").parent().unwrap().to_owned();
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|n| n.strip_suffix(".golden").map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// `nft -f -` of a script.
pub fn load(script: &str) {
    use std::io::Write as _;
    use std::process::Stdio;

    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft (scripts/setup installs the nftables package)");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A golden as Istio's test applies it: its owner-group cases name the groups `java` and `ftp`,
/// which nft would resolve on this machine; they become the ids golden.rs gives them.
pub fn golden_script(name: &str) -> String {
    fs::read_to_string(golden(name))
        .unwrap()
        .replace("skgid java", "skgid 20001")
        .replace("skgid != java", "skgid != 20001")
        .replace("skgid ftp", "skgid 20002")
        .replace("skgid != ftp", "skgid != 20002")
}
