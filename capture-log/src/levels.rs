//! Istio's `--log_output_level`: `scope:level` pairs, comma-separated, onto tracing targets.

use std::collections::BTreeMap;
use std::fmt;

use tracing_subscriber::filter::{LevelFilter, Targets};

/// The scopes capture logs under, each with the tracing targets (module paths) it covers.
/// Everything else is `default`.
pub const SCOPES: &[(&str, &[&str])] = &[
    ("default", &[]),
    (
        "iptables",
        &[
            "capture_core::apply",
            "capture_core::plan",
            "capture_core::render",
            "capture_core::backend",
        ],
    ),
    ("nftables", &["capture_core::nft", "capture_core::nfnetlink"]),
    (
        "host",
        &[
            "capture_core::host",
            "capture_core::netlink",
            "capture_core::lock",
            "capture_core::istio",
        ],
    ),
    ("ebpf", &["capture_ebpf"]),
    ("cni", &["capture_cni"]),
    ("agent", &["capture_agent"]),
];

/// The scope an event's target belongs to: the scope of its longest matching module prefix.
pub fn scope_of(target: &str) -> &'static str {
    SCOPES
        .iter()
        .flat_map(|(scope, prefixes)| prefixes.iter().map(move |p| (*scope, *p)))
        .filter(|(_, prefix)| {
            target
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
        .max_by_key(|(_, prefix)| prefix.len())
        .map_or("default", |(scope, _)| scope)
}

/// How much each scope logs. A scope not named follows `default` (so `default:debug` shows
/// everything at debug, and `default:debug,nftables:warn` all but nftables' details); `all`
/// sets every scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Levels {
    default: LevelFilter,
    scopes: BTreeMap<&'static str, LevelFilter>,
}

impl Default for Levels {
    /// Everything at info, as Istio's components start.
    fn default() -> Self {
        Self::all(LevelFilter::INFO)
    }
}

impl Levels {
    /// Every scope at `level`.
    pub fn all(level: LevelFilter) -> Self {
        Self {
            default: level,
            scopes: BTreeMap::new(),
        }
    }

    /// The level of `scope`.
    pub fn of(&self, scope: &str) -> LevelFilter {
        self.scopes.get(scope).copied().unwrap_or(self.default)
    }

    /// Reads Istio's form: `default:info`, `default:debug,ebpf:warn`, `all:debug`, the older
    /// `scope=level`, or a bare level for the default scope. Levels: `none`, `error`, `warn`
    /// (or `warning`), `info`, `debug`, and `fatal` (capture's fatal events are its errors).
    /// Scopes capture does not have (pilot-agent's, say) are accepted and reported in the
    /// second value, so the caller can say so once logging is on.
    ///
    /// # Errors
    /// A [`LevelError`] naming the item that is not a level.
    pub fn parse(text: &str) -> Result<(Self, Vec<String>), LevelError> {
        let mut levels = Self::default();
        let mut unknown = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (scope, level) = item
                .split_once([':', '='])
                .map_or(("default", item), |(s, l)| (s.trim(), l.trim()));
            let level = parse_level(level).ok_or_else(|| LevelError {
                item: item.to_owned(),
            })?;
            match scope {
                "all" => levels = Self::all(level),
                "default" => levels.default = level,
                _ => match SCOPES.iter().find(|(name, _)| *name == scope) {
                    Some((name, _)) => {
                        levels.scopes.insert(name, level);
                    }
                    None => unknown.push(scope.to_owned()),
                },
            }
        }
        Ok((levels, unknown))
    }

    /// The per-target filter these levels make.
    pub fn targets(&self) -> Targets {
        SCOPES
            .iter()
            .flat_map(|(scope, prefixes)| prefixes.iter().map(move |p| (*p, self.of(scope))))
            .fold(Targets::new().with_default(self.default), |t, (prefix, level)| {
                t.with_target(prefix, level)
            })
    }
}

/// A `--log_output_level` value: the levels, and the scopes it names that the binary does not
/// have (pilot-agent's), to be reported once logging is on ([`OutputLevel::report`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLevel {
    /// The levels.
    pub levels: Levels,
    /// The scopes named that are not capture's.
    pub unknown_scopes: Vec<String>,
}

impl OutputLevel {
    /// As [`Levels::parse`]; a clap value parser.
    ///
    /// # Errors
    /// As [`Levels::parse`].
    pub fn parse(text: &str) -> Result<Self, LevelError> {
        Levels::parse(text).map(|(levels, unknown_scopes)| Self {
            levels,
            unknown_scopes,
        })
    }

    /// Warns once per scope named that is not capture's.
    pub fn report(&self) {
        for scope in &self.unknown_scopes {
            tracing::warn!(
                "--log_output_level: there is no scope {scope:?} (capture's are {}); ignored",
                SCOPES.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
            );
        }
    }
}

fn parse_level(text: &str) -> Option<LevelFilter> {
    Some(match text.to_ascii_lowercase().as_str() {
        "none" | "off" => LevelFilter::OFF,
        "fatal" | "error" => LevelFilter::ERROR,
        "warn" | "warning" => LevelFilter::WARN,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => return None,
    })
}

/// A `--log_output_level` item whose level is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelError {
    item: String,
}

impl fmt::Display for LevelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not scope:level (levels: none, error, warn, info, debug; scopes: all, {})",
            self.item,
            SCOPES.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
        )
    }
}

impl std::error::Error for LevelError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_map_to_the_scope_of_their_longest_prefix() {
        assert_eq!(scope_of("capture_core::apply::iptables"), "iptables");
        assert_eq!(scope_of("capture_core::nfnetlink"), "nftables");
        assert_eq!(scope_of("capture_core::nftables_like"), "default");
        assert_eq!(scope_of("capture_ebpf::node::enroll"), "ebpf");
        assert_eq!(scope_of("capture_init::run"), "default");
        assert_eq!(scope_of("capture_cni"), "cni");
    }

    #[test]
    fn istio_forms_parse() {
        let (l, unknown) = Levels::parse("default:debug,ebpf:warn").unwrap();
        assert_eq!(l.of("default"), LevelFilter::DEBUG);
        assert_eq!(
            l.of("iptables"),
            LevelFilter::DEBUG,
            "unnamed scopes follow default"
        );
        assert_eq!(l.of("ebpf"), LevelFilter::WARN);
        assert!(unknown.is_empty());
        assert_eq!(Levels::parse("debug").unwrap().0, Levels::all(LevelFilter::DEBUG));
        assert_eq!(
            Levels::parse("all=none").unwrap().0,
            Levels::all(LevelFilter::OFF)
        );
        assert_eq!(Levels::parse("").unwrap().0, Levels::default());
        let (_, unknown) = Levels::parse("default:info,cache:debug").unwrap();
        assert_eq!(unknown, ["cache"]);
    }

    #[test]
    fn a_bad_level_is_named() {
        let e = Levels::parse("default:loud").unwrap_err().to_string();
        assert!(e.starts_with("\"default:loud\" is not scope:level"), "{e}");
    }
}
