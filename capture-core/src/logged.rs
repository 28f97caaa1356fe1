//! What the backends log: their decisions at debug, the payload they write at info, kept to a
//! readable size.

use std::fmt;

/// A payload as logged: whole up to [`Bounded::MAX_LINES`] lines; a longer one (a 10,000-CIDR
/// exclusion list) as its head, the number of lines left out, and its tail.
#[derive(Debug)]
pub struct Bounded<'a>(pub &'a str);

impl Bounded<'_> {
    /// Lines shown in full.
    pub const MAX_LINES: usize = 120;
    const HEAD: usize = 100;
    const TAIL: usize = 10;
}

impl fmt::Display for Bounded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.trim_end_matches('\n');
        let count = text.lines().count();
        if count <= Self::MAX_LINES {
            return f.write_str(text);
        }
        for line in text.lines().take(Self::HEAD) {
            writeln!(f, "{line}")?;
        }
        write!(f, "… {} lines not shown …", count - Self::HEAD - Self::TAIL)?;
        for line in text.lines().skip(count - Self::TAIL) {
            write!(f, "\n{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_payloads_keep_their_head_and_tail() {
        let short = "a\nb\n";
        assert_eq!(Bounded(short).to_string(), "a\nb");
        let long: String = (0..10_000)
            .map(|i| format!("-A X -d 10.{}.{}.0/24\n", i / 256, i % 256))
            .collect();
        let shown = Bounded(&long).to_string();
        assert_eq!(shown.lines().count(), Bounded::HEAD + 1 + Bounded::TAIL);
        assert!(shown.contains("\n… 9890 lines not shown …\n"), "{shown}");
        assert!(shown.ends_with("-A X -d 10.39.15.0/24"), "{shown}");
    }
}
