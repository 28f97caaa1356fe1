//! The plugin's errors, their CNI codes and the error reply printed on stdout.

use std::io;
use std::path::PathBuf;

use capture_core::{ApplyError, BackendError, ValueError};

use crate::version::Version;

/// CNI error code 1: incompatible CNI version.
pub const CODE_INCOMPATIBLE_VERSION: u32 = 1;
/// CNI error code 4: invalid or missing environment variables.
pub const CODE_INVALID_ENV: u32 = 4;
/// CNI error code 5: I/O failure.
pub const CODE_IO: u32 = 5;
/// CNI error code 6: failed to decode content.
pub const CODE_DECODE: u32 = 6;
/// CNI error code 7: invalid network configuration.
pub const CODE_INVALID_CONFIG: u32 = 7;
/// CNI error code 11: try again later.
pub const CODE_TRY_AGAIN: u32 = 11;
/// CNI error code 50: the plugin is not available (`STATUS`).
pub const CODE_NOT_AVAILABLE: u32 = 50;
/// Ours: applying or removing capture in the pod failed.
pub const CODE_CAPTURE_FAILED: u32 = 100;
/// Ours: `CHECK` found the pod's capture missing or different from the configuration.
pub const CODE_CHECK_FAILED: u32 = 101;
/// Ours: the pod's network namespace could not be opened or entered.
pub const CODE_NETNS: u32 = 102;
/// Ours: the pod's addresses could not be read or give no IP family.
pub const CODE_POD_ADDRESSES: u32 = 103;
/// Ours: a bug (a panic was caught).
pub const CODE_INTERNAL: u32 = 199;

/// What is wrong with an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvProblem {
    /// Unset or empty.
    Missing,
    /// Set, but not acceptable; says why.
    Invalid(String),
}

/// Everything that can make a CNI command fail. Each error maps to a CNI code with
/// [`Error::cni_code`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration's `cniVersion` is not one this plugin speaks.
    #[error("incompatible CNI version {requested:?}: this plugin supports {}", Version::supported_list().join(", "))]
    IncompatibleVersion {
        /// The version asked for (`0.1.0` when the configuration names none, as libcni assumes).
        requested: String,
    },
    /// A command used with a spec version that does not have it (CHECK before 0.4.0, STATUS
    /// and GC before 1.1.0).
    #[error("{command} is not defined in CNI {version}; it needs cniVersion {since} or later")]
    CommandTooNew {
        /// `CNI_COMMAND`.
        command: &'static str,
        /// The configuration's version.
        version: Version,
        /// The first version with the command.
        since: Version,
    },
    /// An environment variable is missing or malformed.
    #[error("{}", match problem {
        EnvProblem::Missing => format!("required environment variable {name} is missing or empty"),
        EnvProblem::Invalid(why) => format!("invalid environment variable {name}: {why}"),
    })]
    Env {
        /// The variable.
        name: &'static str,
        /// What is wrong with it.
        problem: EnvProblem,
    },
    /// Standard input could not be read.
    #[error("cannot read the network configuration from stdin")]
    Stdin(#[source] io::Error),
    /// Standard input is not JSON, or not a JSON object.
    #[error("cannot decode the network configuration: {0}")]
    Decode(serde_json::Error),
    /// `prevResult` is not a result object.
    #[error("cannot decode prevResult: {0}")]
    PrevResult(&'static str),
    /// `prevResult` says a different version than the configuration.
    #[error(
        "prevResult is a CNI {found:?} result but the configuration is {config}; \
         the runtime must pass the previous result in the configuration's version"
    )]
    PrevResultVersion {
        /// The result's `cniVersion`.
        found: String,
        /// The configuration's version.
        config: Version,
    },
    /// The configuration is well-formed JSON but its fields are wrong.
    #[error("invalid network configuration: {0}")]
    Config(serde_json::Error),
    /// A field of the plugin configuration has a value that cannot be used.
    #[error("invalid network configuration: invalid value {value:?} for {field}: {reason}")]
    ConfigValue {
        /// The field, as a path in the configuration (`capture.include_inbound_ports`).
        field: String,
        /// The offending value.
        value: String,
        /// Why (part of the message).
        reason: ValueError,
    },
    /// A pod annotation has a value that cannot be used.
    #[error("invalid value {value:?} for annotation {annotation}{}: {reason}",
        if item == value { String::new() } else { format!(" (item {item:?})") })]
    Annotation {
        /// The annotation key.
        annotation: &'static str,
        /// The annotation's whole value.
        value: String,
        /// The rejected item of the value (the whole value for single values).
        item: String,
        /// Why (part of the message).
        reason: ValueError,
    },
    /// The pod's network namespace could not be opened.
    #[error("cannot open network namespace {}", path.display())]
    NetnsOpen {
        /// `CNI_NETNS`.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `CNI_NETNS` is a file, but not a network namespace.
    #[error("{} is not a network namespace", path.display())]
    NotNetns {
        /// `CNI_NETNS`.
        path: PathBuf,
    },
    /// Entering the pod's network namespace failed.
    #[error("cannot enter network namespace {} (needs CAP_SYS_ADMIN)", path.display())]
    Setns {
        /// `CNI_NETNS`.
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The pod's addresses could not be listed.
    #[error("cannot list the pod's addresses")]
    Addresses(#[source] nix::Error),
    /// The pod has no address that tells whether it uses IPv6.
    #[error("{0}; set capture.ipv6 to \"on\" or \"off\" to decide without one")]
    NoUsableAddress(capture_core::NoUsableAddress),
    /// Applying, checking or removing the capture failed (the backend's error, with its
    /// causes).
    #[error("{}", capture_core::chain(.0.as_ref()))]
    Apply(BackendError),
    /// `CHECK`: the pod's capture is missing or differs from the configuration.
    #[error("capture in the pod does not match the configuration: {}", differences.join("; "))]
    CheckFailed {
        /// What differs, per family.
        differences: Vec<String>,
    },
    /// `STATUS`: the backend cannot work on this node.
    #[error("plugin not available: {}", capture_core::chain(.0.as_ref()))]
    Unavailable(BackendError),
    /// `GC`: the eBPF backend's garbage collection failed (the node lock, or its maps).
    #[error("garbage collection failed: {}", capture_core::chain(.0.as_ref()))]
    Gc(BackendError),
    /// A bug: a panic was caught.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The CNI error code for this error: the spec's codes where one fits, 100 and up for
    /// our own.
    pub fn cni_code(&self) -> u32 {
        match self {
            Self::IncompatibleVersion { .. }
            | Self::CommandTooNew { .. }
            | Self::PrevResultVersion { .. } => CODE_INCOMPATIBLE_VERSION,
            Self::Env { .. } => CODE_INVALID_ENV,
            Self::Stdin(_) => CODE_IO,
            Self::Decode(_) | Self::PrevResult(_) => CODE_DECODE,
            Self::Config(_) | Self::ConfigValue { .. } | Self::Annotation { .. } => CODE_INVALID_CONFIG,
            Self::NetnsOpen { .. } | Self::NotNetns { .. } | Self::Setns { .. } => CODE_NETNS,
            Self::Addresses(_) | Self::NoUsableAddress(_) => CODE_POD_ADDRESSES,
            Self::Apply(e) if lock_busy(e) => CODE_TRY_AGAIN,
            Self::Apply(_) | Self::Gc(_) => CODE_CAPTURE_FAILED,
            Self::CheckFailed { .. } => CODE_CHECK_FAILED,
            Self::Unavailable(_) => CODE_NOT_AVAILABLE,
            Self::Internal(_) => CODE_INTERNAL,
        }
    }

    /// Extra help for the `details` field of the reply.
    pub fn details(&self) -> Option<String> {
        match self {
            Self::IncompatibleVersion { .. } => Some(format!(
                "supported versions: {}",
                Version::supported_list().join(", ")
            )),
            Self::Annotation { annotation, .. } => Some(format!(
                "fix or remove the pod annotation {annotation}; nothing was applied"
            )),
            Self::ConfigValue { field, .. } => Some(format!(
                "fix {field} in the plugin's entry of the network configuration"
            )),
            Self::CheckFailed { .. } => Some("the pod's capture rules were changed or removed".into()),
            Self::Apply(e) if matches!(e.downcast_ref(), Some(ApplyError::Drift { .. })) => Some(
                "other capture rules are already in the pod's network namespace (an istio-init container?)"
                    .into(),
            ),
            Self::Unavailable(_) => Some("install iptables (legacy or nft) on the node".into()),
            _ => None,
        }
    }

    /// The spec's error reply, in the request's `cniVersion`.
    pub fn reply(&self, cni_version: &str) -> serde_json::Value {
        let mut reply = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.cni_code(),
            "msg": capture_core::chain(self),
        });
        if let Some(details) = self.details() {
            reply["details"] = details.into();
        }
        reply
    }
}

/// Legacy iptables gave up waiting for its lock: worth retrying.
fn lock_busy(e: &BackendError) -> bool {
    fn busy(e: &ApplyError) -> bool {
        match e {
            ApplyError::Exec { stderr, .. } => stderr.contains("xtables lock"),
            ApplyError::RolledBack { failure, .. } => busy(failure),
            _ => false,
        }
    }
    e.downcast_ref().is_some_and(busy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_has_the_spec_fields() {
        let e = Error::Env {
            name: "CNI_NETNS",
            problem: EnvProblem::Missing,
        };
        assert_eq!(
            e.reply("0.4.0"),
            serde_json::json!({
                "cniVersion": "0.4.0",
                "code": 4,
                "msg": "required environment variable CNI_NETNS is missing or empty",
            })
        );
        let e = Error::Annotation {
            annotation: "traffic.sidecar.istio.io/excludeInboundPorts",
            value: "80,abc".into(),
            item: "abc".into(),
            reason: ValueError::Port,
        };
        let reply = e.reply("1.1.0");
        assert_eq!(reply["code"], 7);
        assert_eq!(
            reply["msg"],
            "invalid value \"80,abc\" for annotation traffic.sidecar.istio.io/excludeInboundPorts \
             (item \"abc\"): not a port number (1-65535)"
        );
        assert!(reply["details"].as_str().unwrap().contains("nothing was applied"));
    }

    #[test]
    fn codes() {
        let io = || io::Error::other("x");
        assert_eq!(
            Error::IncompatibleVersion {
                requested: "0.2.0".into()
            }
            .cni_code(),
            1
        );
        assert_eq!(Error::Stdin(io()).cni_code(), 5);
        assert_eq!(Error::PrevResult("not an object").cni_code(), 6);
        assert_eq!(Error::NotNetns { path: "/x".into() }.cni_code(), 102);
        let busy = ApplyError::Exec {
            program: "iptables-legacy-restore",
            args: vec![],
            code: Some(4),
            stderr: "Another app is currently holding the xtables lock. Stopped waiting after 30s.".into(),
        };
        assert_eq!(Error::Apply(busy.into()).cni_code(), 11);
        assert_eq!(
            Error::Unavailable(ApplyError::NoIptables { tried: Vec::new() }.into()).cni_code(),
            50
        );
    }
}
