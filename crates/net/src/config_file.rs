//! One-line errors for TOML configuration files, shared by the node's and the relay's
//! configurations: the file, the line, the key and what the parser expected, instead of the
//! TOML parser's multi-line excerpt.
//!
//! It takes the parser's message and byte span, so it does not depend on the TOML parser.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// A configuration file that does not parse, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{}: {message}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default(), key.as_ref().map(|k| format!(", key {k}")).unwrap_or_default())]
pub struct ConfigFileError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line of the offending key or value, when the parser points at one.
    pub line: Option<usize>,
    /// The key, with its table (`[deadlines.flash] delivered_ms`), when known.
    pub key: Option<String>,
    /// What was wrong and what was expected, on one line.
    pub message: String,
}

impl ConfigFileError {
    /// Locates the parser's `message` about `text` (the file at `path`) at byte `span`.
    ///
    /// A missing key has no line of its own (the parser points at the enclosing table), so
    /// only its table is named; the key itself is in the message.
    pub fn new(path: &Path, text: &str, span: Option<Range<usize>>, message: &str) -> Self {
        let message = message.trim().replace('\n', " ");
        let missing = message.starts_with("missing field");
        let start = span.map(|s| s.start.min(text.len()));
        let line = start
            .filter(|_| !missing)
            .map(|at| text[..at].matches('\n').count() + 1);
        let key = start.and_then(|at| key_at(text, at, missing));
        Self {
            path: path.to_owned(),
            line,
            key,
            message,
        }
    }
}

/// The key whose line holds byte `at` (the part before `=`), prefixed by the table header
/// above it; for a missing key (`table_only`), the table at `at` alone.
fn key_at(text: &str, at: usize, table_only: bool) -> Option<String> {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = text[line_start..line_end].trim();
    if table_only {
        return line.starts_with('[').then(|| line.to_owned());
    }
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    Some(match table {
        Some(t) => format!("{t} {key}"),
        None => key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, needle: &str) -> Option<Range<usize>> {
        let i = text.find(needle).unwrap();
        Some(i..i + needle.len())
    }

    #[test]
    fn names_file_line_key_and_expectation_on_one_line() {
        let text = "listen = \"x\"\n\n[deadlines.flash]\ndelivered_ms = \"soon\"\n";
        let e = ConfigFileError::new(
            Path::new("/etc/us.toml"),
            text,
            at(text, "\"soon\""),
            "invalid type: string \"soon\", expected u64\n",
        );
        assert_eq!(
            e.to_string(),
            "/etc/us.toml line 4, key [deadlines.flash] delivered_ms: \
             invalid type: string \"soon\", expected u64"
        );
        let e = ConfigFileError::new(
            Path::new("r.toml"),
            text,
            at(text, "listen"),
            "unknown field `listen`",
        );
        assert_eq!(
            e.to_string(),
            "r.toml line 1, key listen: unknown field `listen`"
        );
    }

    #[test]
    fn a_missing_key_names_its_table_but_no_line() {
        let text = "a = 1\n[[partner]]\nid = \"jp\"\n";
        let e = ConfigFileError::new(
            Path::new("us.toml"),
            text,
            at(text, "[[partner]]"),
            "missing field `identity_key`",
        );
        assert_eq!(
            e.to_string(),
            "us.toml, key [[partner]]: missing field `identity_key`"
        );
        let e = ConfigFileError::new(Path::new("us.toml"), text, None, "missing field `ca`");
        assert_eq!(e.to_string(), "us.toml: missing field `ca`");
    }
}
