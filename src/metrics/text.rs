//! The Prometheus text exposition format, version 0.0.4: `# HELP` and
//! `# TYPE` lines, then one `name{label="value",...} number` line per sample.
//!
//! Written here rather than taken from the `prometheus-client` crate: that
//! crate's collectors would fit our pull model, but its encoder writes only
//! OpenMetrics text (`# EOF`, `_total` appended to counter names, another
//! content type), and all we need is this small writer.

use std::fmt::Write;

/// The content type of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The kind of a metric family, as written after `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only ever goes up (resets when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// Writes metric families into a string.
#[derive(Debug, Default)]
pub struct TextEncoder {
    out: String,
}

impl TextEncoder {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its help text and kind. Every sample of the family
    /// must follow before the next family starts.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        debug_assert!(is_valid_name(name), "metric name {name:?}");
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_into(&mut self.out, help, false);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
    }

    /// Writes one sample with its labels (names must be valid label names;
    /// values may hold any text and are escaped).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                debug_assert!(is_valid_name(label), "label name {label:?}");
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_into(&mut self.out, value, true);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }

    /// Writes the text gathered so far to `out` and forgets it, once it is
    /// at least `threshold` bytes long (0: always).
    pub fn write_out(
        &mut self,
        out: &mut dyn std::io::Write,
        threshold: usize,
    ) -> std::io::Result<()> {
        if self.out.len() >= threshold {
            out.write_all(self.out.as_bytes())?;
            self.out.clear();
        }
        Ok(())
    }
}

/// Escapes as the format requires: backslash and line feed everywhere, and
/// the double quote in label values.
fn escape_into(out: &mut String, text: &str, quote: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`: the names the format allows (label names
/// may not use `:`, and ours never do).
fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples() {
        let mut e = TextEncoder::new();
        e.family("x_bytes_total", "Bytes.", Kind::Counter);
        e.sample(
            "x_bytes_total",
            &[("interface", "wg0"), ("peer", "a+b=")],
            7,
        );
        e.sample("x_bytes_total", &[], 0);
        e.family("x_up", "Up.", Kind::Gauge);
        e.sample("x_up", &[], u64::MAX);
        assert_eq!(
            e.finish(),
            "# HELP x_bytes_total Bytes.\n# TYPE x_bytes_total counter\n\
             x_bytes_total{interface=\"wg0\",peer=\"a+b=\"} 7\nx_bytes_total 0\n\
             # HELP x_up Up.\n# TYPE x_up gauge\nx_up 18446744073709551615\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = TextEncoder::new();
        e.family("y", "a \\ b\nc \"q\"", Kind::Gauge);
        e.sample("y", &[("l", "back\\slash \"quoted\"\nnext")], 1);
        let text = e.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0], "# HELP y a \\\\ b\\nc \"q\"",
            "quotes stay in help"
        );
        assert_eq!(lines[2], "y{l=\"back\\\\slash \\\"quoted\\\"\\nnext\"} 1");
        assert_eq!(lines.len(), 3, "no raw line feed escapes");
    }

    #[test]
    fn name_rules() {
        for good in ["ferroguard_peer_rx_bytes_total", "_x", "a:b", "A9"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "9a", "a-b", "a b", "é"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
