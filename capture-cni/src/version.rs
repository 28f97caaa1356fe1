//! CNI specification versions this plugin speaks, and which commands each one has.

use std::fmt;
use std::str::FromStr;

/// A CNI specification version this plugin supports.
///
/// These are *spec* versions (`cniVersion` in a configuration), not library releases: libcni
/// v1.2 still speaks spec 1.1.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// 0.3.0: the rich result type and plugin chaining (`prevResult`).
    V0_3_0,
    /// 0.3.1: a typo fix over 0.3.0, still widely deployed (Calico, Linkerd's installer).
    V0_3_1,
    /// 0.4.0: adds `CHECK`.
    V0_4_0,
    /// 1.0.0: drops `ips[].version` from results.
    V1_0_0,
    /// 1.1.0: adds `STATUS` and `GC`.
    V1_1_0,
}

/// Every supported version, oldest first, as `VERSION` reports them.
pub const SUPPORTED: [Version; 5] = [
    Version::V0_3_0,
    Version::V0_3_1,
    Version::V0_4_0,
    Version::V1_0_0,
    Version::V1_1_0,
];

/// What libcni assumes when a configuration has no `cniVersion`.
pub const IMPLIED_WHEN_MISSING: &str = "0.1.0";

impl Version {
    /// The newest supported version.
    pub const LATEST: Version = Version::V1_1_0;

    /// The version as written in JSON, e.g. `"0.3.1"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// The supported versions as strings, for messages and `VERSION`.
    pub fn supported_list() -> Vec<&'static str> {
        SUPPORTED.iter().map(|v| v.as_str()).collect()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `cniVersion` this plugin does not support.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported CNI version {0:?}")]
pub struct UnsupportedVersion(pub String);

impl FromStr for Version {
    type Err = UnsupportedVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SUPPORTED
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnsupportedVersion(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly_the_supported_versions() {
        for v in SUPPORTED {
            assert_eq!(v.as_str().parse::<Version>(), Ok(v));
        }
        for bad in ["0.1.0", "0.2.0", "1.0", "1.2.0", "1.3.0", " 1.0.0", ""] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
        assert!(Version::V0_3_1 < Version::V0_4_0 && Version::V1_0_0 < Version::LATEST);
    }
}
