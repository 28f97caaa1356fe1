//! The CNI environment: `CNI_COMMAND` and the variables each command needs.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use crate::error::{EnvProblem, Error};

/// A CNI operation, from `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Apply capture in the container's network namespace.
    Add,
    /// Remove what `ADD` applied; succeeds when it is already gone.
    Del,
    /// Verify that what `ADD` applied is still in place (spec 0.4.0 and later).
    Check,
    /// Report whether the plugin can serve `ADD` on this node (spec 1.1.0).
    Status,
    /// Remove stale node-side state (spec 1.1.0).
    Gc,
    /// Report the supported spec versions.
    Version,
}

impl Command {
    /// The command as `CNI_COMMAND` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Status => "STATUS",
            Self::Gc => "GC",
            Self::Version => "VERSION",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::Add,
            Self::Del,
            Self::Check,
            Self::Status,
            Self::Gc,
            Self::Version,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
///
/// Kubernetes runtimes pass `IgnoreUnknown=1;K8S_POD_NAMESPACE=…;K8S_POD_NAME=…;
/// K8S_POD_INFRA_CONTAINER_ID=…` (and containerd `K8S_POD_UID`). Only the pod's name and
/// namespace are read; every other key is accepted and ignored, with or without
/// `IgnoreUnknown`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs(Vec<(String, String)>);

impl CniArgs {
    /// Parses `CNI_ARGS`; empty items (a trailing `;`) are skipped.
    ///
    /// # Errors
    /// [`Error::Env`] for an item without `=`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        s.split(';')
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| invalid("CNI_ARGS", format!("{item:?} is not KEY=VALUE")))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The value of `key`; the last one wins if it is repeated.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `K8S_POD_NAME`, if present and not empty.
    pub fn pod_name(&self) -> Option<&str> {
        self.get("K8S_POD_NAME").filter(|v| !v.is_empty())
    }

    /// `K8S_POD_NAMESPACE`, if present and not empty.
    pub fn pod_namespace(&self) -> Option<&str> {
        self.get("K8S_POD_NAMESPACE").filter(|v| !v.is_empty())
    }
}

/// The environment of one invocation, checked for what its command needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (required for ADD, DEL and CHECK).
    pub container_id: Option<String>,
    /// `CNI_NETNS`: required for ADD and CHECK, optional (may be empty) for DEL.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (required for ADD, DEL and CHECK; a chained plugin only checks it).
    pub ifname: Option<String>,
    /// `CNI_ARGS`.
    pub args: CniArgs,
    /// `CNI_PATH`: accepted, not needed (this plugin delegates to no other plugin).
    pub path: Option<OsString>,
}

impl Env {
    /// Reads the environment through `var` (`std::env::var_os` in the binary, a map in tests).
    /// Returns `Ok(None)` when `CNI_COMMAND` is unset or empty.
    ///
    /// # Errors
    /// [`Error::Env`] naming the variable that is missing or malformed, or an unknown command.
    pub fn read(var: impl Fn(&str) -> Option<OsString>) -> Result<Option<Self>, Error> {
        let text = |name: &'static str| -> Result<Option<String>, Error> {
            match var(name) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => v
                    .into_string()
                    .map(Some)
                    .map_err(|_| invalid(name, "not valid UTF-8")),
            }
        };
        let Some(command) = text("CNI_COMMAND")? else {
            return Ok(None);
        };
        let command = Command::parse(&command)
            .ok_or_else(|| invalid("CNI_COMMAND", format!("unknown command {command:?}")))?;
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |name: &'static str, value: Option<String>| {
            if per_container && value.is_none() {
                Err(unset(name))
            } else {
                Ok(value)
            }
        };
        let container_id = required("CNI_CONTAINERID", text("CNI_CONTAINERID")?)?;
        if let Some(id) = &container_id {
            validate_container_id(id)?;
        }
        let ifname = required("CNI_IFNAME", text("CNI_IFNAME")?)?;
        if let Some(name) = &ifname {
            validate_ifname(name)?;
        }
        let netns = var("CNI_NETNS").filter(|v| !v.is_empty()).map(PathBuf::from);
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(unset("CNI_NETNS"));
        }
        let args = match text("CNI_ARGS")? {
            Some(s) if per_container => CniArgs::parse(&s)?,
            _ => CniArgs::default(),
        };
        Ok(Some(Self {
            command,
            container_id,
            netns,
            ifname,
            args,
            path: var("CNI_PATH"),
        }))
    }
}

/// [`Error::Env`]: `name` is unset or empty.
fn unset(name: &'static str) -> Error {
    Error::Env {
        name,
        problem: EnvProblem::Missing,
    }
}

/// [`Error::Env`]: `name` has a value that cannot be used, for the reason `why`.
fn invalid(name: &'static str, why: impl Into<String>) -> Error {
    Error::Env {
        name,
        problem: EnvProblem::Invalid(why.into()),
    }
}

/// libcni's rule: an alphanumeric first character, then `[A-Za-z0-9_.-]`.
fn validate_container_id(id: &str) -> Result<(), Error> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(invalid(
            "CNI_CONTAINERID",
            format!(
                "{id:?} must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
            ),
        ))
    }
}

/// libcni's rule for interface names: 1-15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
fn validate_ifname(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "CNI_IFNAME",
            format!("{name:?} is not an interface name (1-15 characters, no '/', ':' or whitespace)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Option<Env>, Error> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        Env::read(|k| map.get(k).cloned())
    }

    fn missing(result: Result<Option<Env>, Error>) -> &'static str {
        match result {
            Err(Error::Env {
                name,
                problem: EnvProblem::Missing,
            }) => name,
            other => panic!("expected a missing variable, got {other:?}"),
        }
    }

    const ADD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let env = read(&ADD).unwrap().unwrap();
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.netns, Some(PathBuf::from("/run/netns/x")));
        for (i, name) in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"].iter().enumerate() {
            let mut vars = ADD.to_vec();
            vars.remove(i + 1);
            assert_eq!(missing(read(&vars)), *name);
            // An empty value counts as missing.
            let mut vars = ADD.to_vec();
            vars[i + 1].1 = "";
            assert_eq!(missing(read(&vars)), *name);
        }
    }

    #[test]
    fn del_may_lack_netns_and_status_needs_nothing() {
        let env = read(&[ADD[1], ADD[3], ("CNI_COMMAND", "DEL")]).unwrap().unwrap();
        assert_eq!((env.command, env.netns), (Command::Del, None));
        assert_eq!(
            missing(read(&[ADD[1], ("CNI_COMMAND", "CHECK"), ADD[3]])),
            "CNI_NETNS"
        );
        for cmd in ["STATUS", "GC", "VERSION"] {
            assert!(read(&[("CNI_COMMAND", cmd)]).unwrap().is_some());
        }
        assert_eq!(read(&[]).unwrap(), None);
    }

    #[test]
    fn unknown_command_and_bad_names_are_env_errors() {
        let bad = |vars: &[(&str, &str)]| match read(vars) {
            Err(Error::Env { name, .. }) => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(bad(&[("CNI_COMMAND", "add")]), "CNI_COMMAND");
        let mut vars = ADD.to_vec();
        vars[1].1 = "-leading-dash";
        assert_eq!(bad(&vars), "CNI_CONTAINERID");
        let mut vars = ADD.to_vec();
        vars[3].1 = "a-very-long-interface";
        assert_eq!(bad(&vars), "CNI_IFNAME");
        let mut vars = ADD.to_vec();
        vars.push(("CNI_ARGS", "K8S_POD_NAME"));
        assert_eq!(bad(&vars), "CNI_ARGS");
    }

    #[test]
    fn cni_args_pod_identity() {
        let args =
            CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1;K8S_POD_UID=u=1;")
                .unwrap();
        assert_eq!(args.pod_namespace(), Some("shop"));
        assert_eq!(args.pod_name(), Some("cart-1"));
        // Only the first '=' splits.
        assert_eq!(args.get("K8S_POD_UID"), Some("u=1"));
        assert_eq!(CniArgs::parse("K8S_POD_NAME=").unwrap().pod_name(), None);
    }
}
