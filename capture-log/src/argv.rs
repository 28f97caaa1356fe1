//! The logging a command line asks for, read before (or without) its parser: a run whose
//! other flags are wrong still logs its one error line in the format and at the levels asked.

use std::ffi::OsString;

use crate::{Config, Format, Levels};

/// Go's `strconv.ParseBool`, which pilot-agent's and istio-iptables' boolean flags use.
///
/// # Errors
/// The text to show after the flag's name when `s` is none of its spellings.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("not a boolean (true or false)".into()),
    }
}

impl Config {
    /// The format and levels `argv` (a whole command line, program name first) and the
    /// environment ask for with Istio's flags: the last `--log_as_json[=BOOL]` or else
    /// `LOG_AS_JSON`, the last readable `--log_output_level LIST` (or `=LIST`) or else
    /// `LOG_OUTPUT_LEVEL`; `default` when neither names levels. Anything unreadable is left
    /// for the parser to report.
    pub fn from_argv(argv: &[OsString], default: Levels) -> Self {
        Self::from_argv_env(argv, default, |name| std::env::var(name).ok())
    }

    fn from_argv_env(argv: &[OsString], default: Levels, env: impl Fn(&str) -> Option<String>) -> Self {
        let args = argv.get(1..).unwrap_or_default();
        let flag = args
            .iter()
            .rev()
            .find_map(|a| match a.to_str()?.strip_prefix("--log_as_json")? {
                "" => Some(true),
                rest => rest.strip_prefix('=').map(|v| parse_go_bool(v).unwrap_or(false)),
            });
        let json = flag
            .or_else(|| env("LOG_AS_JSON").and_then(|v| parse_go_bool(&v).ok()))
            .unwrap_or(false);
        let given = (0..args.len()).rev().find_map(|i| {
            match args[i].to_str()?.strip_prefix("--log_output_level")? {
                "" => args.get(i + 1).and_then(|n| n.to_str()).map(str::to_owned),
                rest => rest.strip_prefix('=').map(str::to_owned),
            }
        });
        let levels = given
            .or_else(|| env("LOG_OUTPUT_LEVEL"))
            .and_then(|text| Levels::parse(&text).ok())
            .map_or(default, |(levels, _)| levels);
        Self {
            format: Format::json(json),
            levels,
            file: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LevelFilter;

    fn config(argv: &[&str], env: &[(&str, &str)]) -> Config {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_argv_env(&argv, Levels::all(LevelFilter::WARN), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn the_last_flag_wins_and_the_environment_fills_in() {
        assert_eq!(config(&["x", "--log_as_json"], &[]).format, Format::Json);
        assert_eq!(
            config(&["x", "--log_as_json", "--log_as_json=false"], &[]).format,
            Format::Text
        );
        assert_eq!(config(&["x"], &[("LOG_AS_JSON", "T")]).format, Format::Json);
        assert_eq!(
            config(&["x", "--log_as_json=0"], &[("LOG_AS_JSON", "true")]).format,
            Format::Text
        );
        // The program's own name is not a flag.
        assert_eq!(config(&["--log_as_json"], &[]).format, Format::Text);
        let debug = Levels::parse("default:debug").unwrap().0;
        assert_eq!(
            config(&["x", "--log_output_level", "default:debug"], &[]).levels,
            debug
        );
        assert_eq!(
            config(&["x", "--log_output_level=default:debug"], &[]).levels,
            debug
        );
        assert_eq!(
            config(&["x"], &[("LOG_OUTPUT_LEVEL", "default:debug")]).levels,
            debug
        );
    }

    #[test]
    fn unreadable_values_leave_the_default() {
        let quiet = Levels::all(LevelFilter::WARN);
        assert_eq!(
            config(&["x", "--log_output_level=default:loud"], &[]).levels,
            quiet
        );
        assert_eq!(config(&["x", "--log_output_level"], &[]).levels, quiet);
        assert_eq!(config(&["x", "--log_as_json=maybe"], &[]).format, Format::Text);
        assert_eq!(config(&["x", "--log_as_jsonx"], &[]).format, Format::Text);
    }
}
