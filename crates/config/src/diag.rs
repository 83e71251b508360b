//! Diagnostics that point into the configuration file: `file:line:col: message` plus a hint.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One configuration file's text, kept so byte offsets can be turned into line and column.
#[derive(Debug, Clone)]
pub struct Source {
    path: PathBuf,
    text: String,
    lines: sluice_text::LineIndex,
}

impl Source {
    /// Wraps a file's text. `path` is only used for display.
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        let text = text.into();
        let lines = sluice_text::LineIndex::new(text.as_bytes());
        Self {
            path: path.into(),
            text,
            lines,
        }
    }

    /// The path the text came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The text itself.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// 1-based line and column (in characters) of a byte offset (see `sluice_text`).
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        self.lines.line_col(self.text.as_bytes(), offset)
    }
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when we can tell.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub(crate) fn at(
        source: &Source,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        let (line, col) = span.map_or((1, 1), |s| source.line_col(s.start));
        Self {
            file: source.path().to_path_buf(),
            line,
            col,
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in one file, in file order. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// A single diagnostic not tied to a position (e.g. the file could not be read).
    pub fn io(path: &Path, err: &std::io::Error) -> Self {
        Self(vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: format!("cannot read configuration: {err}"),
            hint: None,
        }])
    }

    /// `bytes` (a file's content) are not UTF-8: one diagnostic at the first invalid byte, so
    /// the user can find it (TOML is UTF-8 only).
    pub(crate) fn not_utf8(path: &Path, bytes: &[u8], err: &std::str::Utf8Error) -> Self {
        let valid = &bytes[..err.valid_up_to()];
        // The prefix is valid UTF-8 by definition of `valid_up_to`; the fallback never runs.
        let prefix = std::str::from_utf8(valid).unwrap_or_default();
        let source = Source::new(path, prefix);
        let offset = prefix.len();
        let byte = bytes.get(offset).copied().unwrap_or_default();
        Self(vec![
            Diagnostic::at(
                &source,
                Some(offset..offset),
                format!("the file is not UTF-8 text (byte 0x{byte:02x})"),
            )
            .with_hint("TOML files are UTF-8; convert it, e.g. `iconv -t UTF-8`"),
        ])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// The closest of `candidates` to `word` by edit distance, if it is close enough to be a typo.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_and_in_chars() {
        let s = Source::new("x.toml", "ab\nçd = 1\n");
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(3), (2, 1));
        // 'ç' is two bytes; the 'd' after it is column 2.
        assert_eq!(s.line_col(5), (2, 2));
    }

    #[test]
    fn closest_finds_typos_only() {
        let keys = ["strip", "prepend", "service"];
        assert_eq!(closest("strp", &keys), Some("strip"));
        assert_eq!(closest("servce", &keys), Some("service"));
        assert_eq!(closest("weight", &keys), None);
    }
}
