//! One event as one line: Istio's text (`time<TAB>level<TAB>[scope<TAB>]message<TAB>fields`) or
//! JSON (`{"level":…,"time":…,"scope":…,"msg":…, fields…}`), time in RFC 3339 UTC.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};

/// How lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// For people (`kubectl logs`): tab-separated, like Istio's console output.
    #[default]
    Text,
    /// One JSON object per line, like Istio's `--log_as_json`.
    Json,
}

/// An event's message and fields, in the order they were given.
#[derive(Default)]
pub(crate) struct Fields {
    pub(crate) message: String,
    pub(crate) fields: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((field.name(), value));
        }
    }
}

/// The whole line, newline included.
pub(crate) fn render(
    format: Format,
    time: SystemTime,
    level: &tracing::Level,
    scope: &str,
    event: &Fields,
    context: &[(&'static str, String)],
) -> String {
    let level = level_name(level);
    let mut line = String::with_capacity(64 + event.message.len());
    let fields = context.iter().chain(&event.fields);
    match format {
        Format::Text => {
            let _ = write!(line, "{}\t{level}\t", Rfc3339(time));
            if scope != "default" {
                let _ = write!(line, "{scope}\t");
            }
            line.push_str(&event.message);
            for (i, (name, value)) in fields.enumerate() {
                line.push(if i == 0 { '\t' } else { ' ' });
                let _ = write!(line, "{name}=");
                if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '"') {
                    json_string(&mut line, value);
                } else {
                    line.push_str(value);
                }
            }
        }
        Format::Json => {
            let _ = write!(
                line,
                "{{\"level\":\"{level}\",\"time\":\"{}\",\"scope\":",
                Rfc3339(time)
            );
            json_string(&mut line, scope);
            line.push_str(",\"msg\":");
            json_string(&mut line, &event.message);
            for (name, value) in fields {
                line.push(',');
                json_string(&mut line, name);
                line.push(':');
                json_string(&mut line, value);
            }
            line.push('}');
        }
    }
    line.push('\n');
    line
}

/// Istio's level names.
fn level_name(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::ERROR => "error",
        tracing::Level::WARN => "warn",
        tracing::Level::INFO => "info",
        tracing::Level::DEBUG => "debug",
        tracing::Level::TRACE => "trace",
    }
}

/// Appends `text` to `out` as a JSON string, quotes included.
pub fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A time as RFC 3339 in UTC with microseconds: `2026-12-01T16:46:55.123456Z`.
pub(crate) struct Rfc3339(pub(crate) SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            since.subsec_micros()
        )
    }
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`
/// algorithm, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, micros * 1000)
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(Rfc3339(at(0, 0)).to_string(), "1970-01-01T00:00:00.000000Z");
        // 2024-02-29 (a leap day) 12:34:56.000789
        assert_eq!(
            Rfc3339(at(1_709_210_096, 789)).to_string(),
            "2024-02-29T12:34:56.000789Z"
        );
        assert_eq!(
            Rfc3339(at(1_796_143_615, 0)).to_string(),
            "2026-12-01T16:46:55.000000Z"
        );
        assert_eq!(
            Rfc3339(at(4_102_444_799, 0)).to_string(),
            "2099-12-31T23:59:59.000000Z"
        );
    }

    fn event(message: &str, fields: &[(&'static str, &str)]) -> Fields {
        Fields {
            message: message.to_owned(),
            fields: fields.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
        }
    }

    #[test]
    fn text_lines_are_tab_separated_and_name_non_default_scopes() {
        let e = event("IPv4 capture applied", &[("flavor", "nft"), ("why", "two words")]);
        let t = at(0, 5);
        assert_eq!(
            render(Format::Text, t, &tracing::Level::INFO, "default", &e, &[]),
            "1970-01-01T00:00:00.000005Z\tinfo\tIPv4 capture applied\tflavor=nft why=\"two words\"\n"
        );
        let ctx = [("container_id", "abc".to_owned())];
        assert_eq!(
            render(
                Format::Text,
                t,
                &tracing::Level::WARN,
                "cni",
                &event("m", &[]),
                &ctx
            ),
            "1970-01-01T00:00:00.000005Z\twarn\tcni\tm\tcontainer_id=abc\n"
        );
    }

    #[test]
    fn json_lines_escape_everything() {
        let e = event("a \"b\"\n\tc\u{1}", &[("path", "/x\\y")]);
        assert_eq!(
            render(
                Format::Json,
                at(0, 0),
                &tracing::Level::ERROR,
                "iptables",
                &e,
                &[]
            ),
            "{\"level\":\"error\",\"time\":\"1970-01-01T00:00:00.000000Z\",\"scope\":\"iptables\",\
             \"msg\":\"a \\\"b\\\"\\n\\tc\\u0001\",\"path\":\"/x\\\\y\"}\n"
        );
    }
}
