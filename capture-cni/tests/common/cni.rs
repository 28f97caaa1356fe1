//! Running the real plugin binary as a runtime would.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The plugin binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_capture-cni");

/// What one plugin invocation printed and how it exited.
#[derive(Debug)]
pub struct Reply {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    /// stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "expected success; stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Asserts a CNI error with `code` and returns the error object.
    #[track_caller]
    pub fn error(&self, code: u64) -> Value {
        assert_eq!(
            self.code, 1,
            "expected failure; stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let reply = self.json();
        assert_eq!(reply["code"], code, "{reply}\nstderr: {}", self.stderr);
        assert!(reply["msg"].as_str().is_some_and(|m| !m.is_empty()), "{reply}");
        assert!(reply["cniVersion"].is_string(), "{reply}");
        reply
    }
}

/// Runs the plugin with exactly `env` (plus `PATH`) and `stdin`, as a runtime does.
pub fn invoke(env: &[(&str, &str)], stdin: &str) -> Reply {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run capture-cni");
    let mut pipe = child.stdin.take().expect("stdin piped");
    pipe.write_all(stdin.as_bytes()).expect("write stdin");
    drop(pipe);
    let out = child.wait_with_output().expect("wait for capture-cni");
    Reply {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The variables a runtime sets for `command` on `netns`.
pub fn cni_env<'a>(command: &'a str, netns: &'a str, args: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee0123"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}
