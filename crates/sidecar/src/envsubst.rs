//! `envsubst` mode: `$VAR` / `${VAR}` and the POSIX shell parameter forms, from the environment.
//!
//! Supported: `$VAR`, `${VAR}`, `${VAR-word}`, `${VAR:-word}`, `${VAR=word}`, `${VAR:=word}`,
//! `${VAR+word}`, `${VAR:+word}`, `${VAR?msg}`, `${VAR:?msg}`, and `$$` for a literal `$`.
//! `word` may itself contain expansions and is only expanded when it is used. A `$` not
//! followed by a name, `{` or `$` is kept as it is. An allow-list (GNU's SHELL-FORMAT) limits
//! substitution to the listed names; every other expression is copied verbatim.
//! `docs/sidecar.md` lists where this differs from GNU envsubst.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What to substitute and what counts as an error.
#[derive(Debug, Clone, Default)]
pub struct EnvsubstOptions {
    /// Only these names are substituted (GNU's SHELL-FORMAT); `None` = every name.
    pub allow: Option<BTreeSet<String>>,
    /// A plain `$VAR`/`${VAR}` whose variable is unset is an error.
    pub no_unset: bool,
    /// A plain `$VAR`/`${VAR}` whose variable is set but empty is an error.
    pub no_empty: bool,
}

impl EnvsubstOptions {
    /// Parses a GNU SHELL-FORMAT argument: the names of every `$NAME` / `${NAME}` in it.
    pub fn allow_from_shell_format(format: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let bytes = format.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'$' {
                let braced = bytes.get(i + 1) == Some(&b'{');
                let start = i + 1 + usize::from(braced);
                let end = name_end(bytes, start);
                if end > start && (!braced || bytes.get(end) == Some(&b'}')) {
                    names.insert(format[start..end].to_owned());
                    i = end;
                    continue;
                }
            }
            i += 1;
        }
        names
    }
}

/// Why a variable made the substitution fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offence {
    Unset,
    Empty,
    /// `${VAR?msg}` / `${VAR:?msg}` with its message.
    Required(String),
}

/// One variable that failed, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub name: String,
    pub offence: Offence,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Finding {
            file,
            line,
            column,
            name,
            ..
        } = self;
        match &self.offence {
            Offence::Unset => write!(f, "{file}:{line}:{column}: {name} is not set"),
            Offence::Empty => write!(f, "{file}:{line}:{column}: {name} is set but empty"),
            Offence::Required(message) => write!(f, "{file}:{line}:{column}: {name}: {message}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvsubstError {
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}", .findings.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("\n"))]
    Variables { findings: Vec<Finding> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    /// `-` / `:-`
    Default,
    /// `=` / `:=`
    Assign,
    /// `+` / `:+`
    Alternative,
    /// `?` / `:?`
    Required,
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Var {
        name: String,
        /// Byte offset of the `$`.
        offset: usize,
        /// The expression as written, copied when the name is not allowed.
        raw: String,
        operation: Option<(Operator, bool, Vec<Piece>)>,
    },
}

fn name_end(bytes: &[u8], start: usize) -> usize {
    let mut end = start;
    if end < bytes.len() && (bytes[end].is_ascii_alphabetic() || bytes[end] == b'_') {
        end += 1;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
    }
    end
}

struct Parser<'a> {
    file: &'a str,
    text: &'a str,
    bytes: &'a [u8],
    position: usize,
}

impl Parser<'_> {
    fn error(&self, offset: usize, message: impl Into<String>) -> EnvsubstError {
        let (line, column) = line_col(self.text, offset);
        EnvsubstError::Syntax {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }

    /// Parses pieces until the end, or (inside a word) until the closing `}`.
    fn pieces(&mut self, in_word: bool, open: usize) -> Result<Vec<Piece>, EnvsubstError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        while self.position < self.bytes.len() {
            let byte = self.bytes[self.position];
            if in_word && byte == b'}' {
                self.position += 1;
                if !text.is_empty() {
                    pieces.push(Piece::Text(text));
                }
                return Ok(pieces);
            }
            if byte != b'$' {
                let next = self.text[self.position..]
                    .find(|c| c == '$' || (in_word && c == '}'))
                    .map_or(self.bytes.len(), |i| self.position + i);
                text.push_str(&self.text[self.position..next]);
                self.position = next;
                continue;
            }
            let dollar = self.position;
            match self.bytes.get(dollar + 1) {
                Some(b'$') => {
                    text.push('$');
                    self.position += 2;
                }
                Some(b'{') => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(self.braced(dollar)?);
                }
                Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    let end = name_end(self.bytes, dollar + 1);
                    pieces.push(Piece::Var {
                        name: self.text[dollar + 1..end].to_owned(),
                        offset: dollar,
                        raw: self.text[dollar..end].to_owned(),
                        operation: None,
                    });
                    self.position = end;
                }
                _ => {
                    text.push('$');
                    self.position += 1;
                }
            }
        }
        if in_word {
            return Err(self.error(open, "unterminated ${...}: no closing '}'"));
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(pieces)
    }

    fn braced(&mut self, dollar: usize) -> Result<Piece, EnvsubstError> {
        let start = dollar + 2;
        let end = name_end(self.bytes, start);
        if end == start {
            let shown: String = self.text[start..].chars().take(12).collect();
            return Err(self.error(
                start,
                format!(
                    "expected a variable name after '${{', found {:?} (write $${{ for a literal '${{')",
                    shown
                ),
            ));
        }
        let name = self.text[start..end].to_owned();
        let rest = &self.bytes[end..];
        let (operation, skip) = match rest {
            [b'}', ..] => (None, 1),
            [b':', b'-', ..] => (Some((Operator::Default, true)), 2),
            [b':', b'=', ..] => (Some((Operator::Assign, true)), 2),
            [b':', b'+', ..] => (Some((Operator::Alternative, true)), 2),
            [b':', b'?', ..] => (Some((Operator::Required, true)), 2),
            [b'-', ..] => (Some((Operator::Default, false)), 1),
            [b'=', ..] => (Some((Operator::Assign, false)), 1),
            [b'+', ..] => (Some((Operator::Alternative, false)), 1),
            [b'?', ..] => (Some((Operator::Required, false)), 1),
            [] => return Err(self.error(dollar, "unterminated ${...}: no closing '}'")),
            [other, ..] => {
                let found = self.text[end..].chars().next().unwrap_or(*other as char);
                return Err(self.error(
                    end,
                    format!(
                        "unexpected {found:?} in ${{{name}...}}: supported forms are ${{{name}}}, ${{{name}-word}}, ${{{name}:-word}}, =, :=, +, :+, ?, :?"
                    ),
                ));
            }
        };
        self.position = end + skip;
        let operation = match operation {
            None => None,
            Some((operator, colon)) => {
                let word = self.pieces(true, dollar)?;
                Some((operator, colon, word))
            }
        };
        Ok(Piece::Var {
            name,
            offset: dollar,
            raw: self.text[dollar..self.position].to_owned(),
            operation,
        })
    }
}

/// 1-based line and character column of byte `offset`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, last)| last)
        .chars()
        .count()
        + 1;
    (line, column)
}

struct Evaluator<'a> {
    file: &'a str,
    text: &'a str,
    vars: &'a mut BTreeMap<String, String>,
    options: &'a EnvsubstOptions,
    findings: Vec<Finding>,
}

impl Evaluator<'_> {
    fn finding(&mut self, name: &str, offset: usize, offence: Offence) {
        let (line, column) = line_col(self.text, offset);
        self.findings.push(Finding {
            file: self.file.to_owned(),
            line,
            column,
            name: name.to_owned(),
            offence,
        });
    }

    fn expand(&mut self, pieces: &[Piece], out: &mut String) {
        for piece in pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Var {
                    name,
                    offset,
                    raw,
                    operation,
                } => {
                    if let Some(allow) = &self.options.allow
                        && !allow.contains(name)
                    {
                        out.push_str(raw);
                        continue;
                    }
                    let value = self.vars.get(name).cloned();
                    let Some((operator, colon, word)) = operation else {
                        match &value {
                            None if self.options.no_unset => {
                                self.finding(name, *offset, Offence::Unset)
                            }
                            Some(v) if v.is_empty() && self.options.no_empty => {
                                self.finding(name, *offset, Offence::Empty)
                            }
                            _ => {}
                        }
                        out.push_str(value.as_deref().unwrap_or(""));
                        continue;
                    };
                    // With ':' an empty value counts as unset, as in the shell.
                    let usable = match &value {
                        Some(v) => !(*colon && v.is_empty()),
                        None => false,
                    };
                    match operator {
                        Operator::Default => {
                            if usable {
                                out.push_str(value.as_deref().unwrap_or(""));
                            } else {
                                self.expand(word, out);
                            }
                        }
                        Operator::Assign => {
                            if usable {
                                out.push_str(value.as_deref().unwrap_or(""));
                            } else {
                                let mut assigned = String::new();
                                self.expand(word, &mut assigned);
                                self.vars.insert(name.clone(), assigned.clone());
                                out.push_str(&assigned);
                            }
                        }
                        Operator::Alternative => {
                            if usable {
                                self.expand(word, out);
                            }
                        }
                        Operator::Required => {
                            if usable {
                                out.push_str(value.as_deref().unwrap_or(""));
                            } else {
                                let mut message = String::new();
                                self.expand(word, &mut message);
                                if message.is_empty() {
                                    message = if *colon {
                                        "parameter null or not set".into()
                                    } else {
                                        "parameter not set".into()
                                    };
                                }
                                self.finding(name, *offset, Offence::Required(message));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Substitutes `text` (from `file`, used in messages) with `vars`. `${VAR=word}` assignments
/// are written back into `vars`, so later expressions — and later files rendered with the same
/// map — see them. Fails with a syntax error, or with every offending variable.
pub fn substitute(
    file: &str,
    text: &str,
    vars: &mut BTreeMap<String, String>,
    options: &EnvsubstOptions,
) -> Result<String, EnvsubstError> {
    let mut parser = Parser {
        file,
        text,
        bytes: text.as_bytes(),
        position: 0,
    };
    let pieces = parser.pieces(false, 0)?;
    let mut evaluator = Evaluator {
        file,
        text,
        vars,
        options,
        findings: Vec::new(),
    };
    let mut out = String::with_capacity(text.len());
    evaluator.expand(&pieces, &mut out);
    if evaluator.findings.is_empty() {
        Ok(out)
    } else {
        Err(EnvsubstError::Variables {
            findings: evaluator.findings,
        })
    }
}

/// The variable names referenced in `text` (for `--variables`, like GNU's `-v`).
pub fn referenced_names(text: &str) -> Result<BTreeSet<String>, EnvsubstError> {
    fn walk(pieces: &[Piece], names: &mut BTreeSet<String>) {
        for piece in pieces {
            if let Piece::Var {
                name, operation, ..
            } = piece
            {
                names.insert(name.clone());
                if let Some((_, _, word)) = operation {
                    walk(word, names);
                }
            }
        }
    }
    let mut parser = Parser {
        file: "-",
        text,
        bytes: text.as_bytes(),
        position: 0,
    };
    let mut names = BTreeSet::new();
    walk(&parser.pieces(false, 0)?, &mut names);
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [("SET", "value"), ("EMPTY", ""), ("OTHER", "o")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn run(text: &str) -> String {
        substitute("t", text, &mut vars(), &EnvsubstOptions::default()).expect("substitutes")
    }

    #[test]
    fn every_form_against_set_empty_and_unset() {
        // (expression, SET=value, EMPTY="", UNSET) — the shell's answers.
        let table = [
            ("$V", "value", "", ""),
            ("${V}", "value", "", ""),
            ("${V-d}", "value", "", "d"),
            ("${V:-d}", "value", "d", "d"),
            ("${V=d}", "value", "", "d"),
            ("${V:=d}", "value", "d", "d"),
            ("${V+a}", "a", "a", ""),
            ("${V:+a}", "a", "", ""),
        ];
        for (form, set, empty, unset) in table {
            for (name, expected) in [("SET", set), ("EMPTY", empty), ("UNSET", unset)] {
                let text = form.replace('V', name);
                assert_eq!(run(&text), expected, "{text}");
            }
        }
    }

    #[test]
    fn literals_nesting_and_assignment() {
        assert_eq!(run("cost: $$5 and $$SET"), "cost: $5 and $SET");
        assert_eq!(run("$ alone, $1, $-, a$"), "$ alone, $1, $-, a$");
        assert_eq!(run("${UNSET:-${OTHER}-$SET}"), "o-value");
        assert_eq!(run("${UNSET:-{\"json\": 1\\}"), "{\"json\": 1\\");
        assert_eq!(run("${SET:+$UNSET_TOO}x"), "x");
        let mut vars = vars();
        let out = substitute(
            "t",
            "${NEW:=made} $NEW",
            &mut vars,
            &EnvsubstOptions::default(),
        )
        .expect("substitutes");
        assert_eq!(out, "made made");
        assert_eq!(vars["NEW"], "made");
        assert_eq!(run("multi\nbyte é $SET"), "multi\nbyte é value");
    }

    #[test]
    fn required_forms_report_every_offender_with_position() {
        let text = "a: ${UNSET?needs a value}\nb: ${EMPTY:?}\nc: ${EMPTY?fine}";
        let err = substitute("f.json", text, &mut vars(), &EnvsubstOptions::default())
            .expect_err("required missing");
        assert_eq!(
            err.to_string(),
            "f.json:1:4: UNSET: needs a value\nf.json:2:4: EMPTY: parameter null or not set"
        );
    }

    #[test]
    fn no_unset_and_no_empty_list_every_plain_reference() {
        let options = EnvsubstOptions {
            no_unset: true,
            no_empty: true,
            ..Default::default()
        };
        let text = "{\n  \"a\": \"${UNSET}\",\n  \"b\": \"$EMPTY\", \"c\": \"${UNSET:-ok}\", \"é\": $NOPE\n}";
        let err = substitute("cfg.json", text, &mut vars(), &options).expect_err("offenders");
        let EnvsubstError::Variables { findings } = &err else {
            panic!("{err}")
        };
        let summary: Vec<_> = findings
            .iter()
            .map(|f| (f.name.as_str(), f.line, f.column, f.offence.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                ("UNSET", 2, 9, Offence::Unset),
                ("EMPTY", 3, 9, Offence::Empty),
                ("NOPE", 3, 44, Offence::Unset)
            ]
        );
    }

    #[test]
    fn allow_list_leaves_other_expressions_verbatim() {
        let allow = EnvsubstOptions::allow_from_shell_format("$SET ${OTHER} text");
        assert_eq!(allow.iter().collect::<Vec<_>>(), ["OTHER", "SET"]);
        let options = EnvsubstOptions {
            allow: Some(allow),
            no_unset: true,
            ..Default::default()
        };
        let out = substitute(
            "t",
            "$SET ${OTHER} $UNSET ${EMPTY:-x} $$",
            &mut vars(),
            &options,
        )
        .expect("unlisted names are not checked");
        assert_eq!(out, "value o $UNSET ${EMPTY:-x} $");
    }

    #[test]
    fn syntax_errors_point_at_the_problem() {
        for (text, position, needle) in [
            ("ok\n  ${UNCLOSED", "t:2:3:", "unterminated"),
            ("${ bad}", "t:1:3:", "expected a variable name"),
            ("x ${A B}", "t:1:6:", "unexpected ' '"),
            ("${A:-never closed", "t:1:1:", "unterminated"),
            ("${1}", "t:1:3:", "expected a variable name"),
        ] {
            let err =
                substitute("t", text, &mut vars(), &EnvsubstOptions::default()).expect_err(text);
            let message = err.to_string();
            assert!(message.starts_with(position), "{text:?}: {message}");
            assert!(message.contains(needle), "{text:?}: {message}");
        }
    }

    #[test]
    fn names_referenced() {
        let names = referenced_names("$A ${B:-$C} $$D").expect("parses");
        assert_eq!(names.iter().collect::<Vec<_>>(), ["A", "B", "C"]);
    }
}
