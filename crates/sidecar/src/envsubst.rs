//! `envsubst` mode: `$VAR` / `${VAR}` and the POSIX shell parameter forms, from the environment.
//!
//! Supported: `$VAR`, `${VAR}`, `${VAR-word}`, `${VAR:-word}`, `${VAR=word}`, `${VAR:=word}`,
//! `${VAR+word}`, `${VAR:+word}`, `${VAR?msg}`, `${VAR:?msg}`, and `$$` for a literal `$`.
//! `word` may itself contain expansions and is only expanded when it is used. A `$` not
//! followed by a name, `{` or `$` is kept as it is. An allow-list (GNU's SHELL-FORMAT) limits
//! substitution to the listed names; every other expression is copied verbatim.
//! Like GNU envsubst it works on bytes: templates and values need not be UTF-8 (names are
//! ASCII by the grammar). `docs/sidecar.md` lists where this differs from GNU envsubst.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::os::unix::ffi::OsStringExt;

/// Variables by name, values as raw bytes (environment values are bytes, not text).
pub type EnvVars = BTreeMap<String, Vec<u8>>;

/// The process environment for substitution, values byte for byte. A variable whose *name* is
/// not UTF-8 is left out: no template can name it (names are `[A-Za-z_][A-Za-z0-9_]*`). The
/// environment itself is untouched; the workload inherits every variable as it is.
pub fn process_env() -> EnvVars {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_vec())))
        .collect()
}

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

/// The operator of a `${VAR<op>word}`, whether it had a `:`, and its word.
type Operation = (Operator, bool, Vec<Piece>);

#[derive(Debug, Clone)]
enum Piece {
    Text(Vec<u8>),
    Var {
        name: String,
        /// Byte offset of the `$`.
        offset: usize,
        /// The expression as written, copied when the name is not allowed.
        raw: Vec<u8>,
        operation: Option<Operation>,
    },
}

/// How deep `${A:-${B:-...}}` may nest. The parser and the evaluator recurse once per level, so
/// without a bound a large generated template could overflow the stack; real templates nest a
/// few levels at most.
pub const MAX_NESTING: usize = 64;

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

/// A name found by [`name_end`]: ASCII by construction, so every byte is one `char`.
fn ascii_name(bytes: &[u8]) -> String {
    bytes.iter().copied().map(char::from).collect()
}

/// The input at `offset` for a message: the character quoted, or the byte when it is not UTF-8.
fn shown_at(bytes: &[u8], offset: usize) -> String {
    let rest = bytes.get(offset..).unwrap_or_default();
    let window = &rest[..rest.len().min(4)];
    let valid = match std::str::from_utf8(window) {
        Ok(text) => text,
        Err(error) => std::str::from_utf8(&window[..error.valid_up_to()]).unwrap_or_default(),
    };
    match (valid.chars().next(), rest.first()) {
        (Some(c), _) => format!("{c:?}"),
        (None, Some(byte)) => format!("byte 0x{byte:02X}"),
        (None, None) => "the end".to_owned(),
    }
}

struct Parser<'a> {
    file: &'a str,
    bytes: &'a [u8],
    position: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(file: &'a str, bytes: &'a [u8]) -> Self {
        Self {
            file,
            bytes,
            position: 0,
            depth: 0,
        }
    }

    fn error(&self, offset: usize, message: impl Into<String>) -> EnvsubstError {
        let (line, column) = sluice_text::line_col(self.bytes, offset);
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
        let mut text = Vec::new();
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
                let next = self.bytes[self.position..]
                    .iter()
                    .position(|&b| b == b'$' || (in_word && b == b'}'))
                    .map_or(self.bytes.len(), |i| self.position + i);
                text.extend_from_slice(&self.bytes[self.position..next]);
                self.position = next;
                continue;
            }
            if let Some(piece) = self.dollar(&mut text)? {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(piece);
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

    /// At a `$`: a variable, or literal text appended to `text`.
    fn dollar(&mut self, text: &mut Vec<u8>) -> Result<Option<Piece>, EnvsubstError> {
        let dollar = self.position;
        match self.bytes.get(dollar + 1) {
            Some(b'$') => {
                text.push(b'$');
                self.position += 2;
                Ok(None)
            }
            Some(b'{') => self.braced(dollar).map(Some),
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                let end = name_end(self.bytes, dollar + 1);
                self.position = end;
                Ok(Some(Piece::Var {
                    name: ascii_name(&self.bytes[dollar + 1..end]),
                    offset: dollar,
                    raw: self.bytes[dollar..end].to_vec(),
                    operation: None,
                }))
            }
            _ => {
                text.push(b'$');
                self.position += 1;
                Ok(None)
            }
        }
    }

    fn braced(&mut self, dollar: usize) -> Result<Piece, EnvsubstError> {
        let start = dollar + 2;
        let end = name_end(self.bytes, start);
        if end == start {
            let window = &self.bytes[start..self.bytes.len().min(start + 48)];
            let shown: String = String::from_utf8_lossy(window).chars().take(12).collect();
            return Err(self.error(
                start,
                format!(
                    "expected a variable name after '${{', found {shown:?} (write $${{ for a literal '${{')"
                ),
            ));
        }
        let name = ascii_name(&self.bytes[start..end]);
        let (operation, skip) = match &self.bytes[end..] {
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
            [_, ..] => {
                let found = shown_at(self.bytes, end);
                return Err(self.error(
                    end,
                    format!(
                        "unexpected {found} in ${{{name}...}}: supported forms are ${{{name}}}, ${{{name}-word}}, ${{{name}:-word}}, =, :=, +, :+, ?, :?"
                    ),
                ));
            }
        };
        self.position = end + skip;
        let operation = match operation {
            None => None,
            Some((operator, colon)) => Some((operator, colon, self.word(dollar)?)),
        };
        Ok(Piece::Var {
            name,
            offset: dollar,
            raw: self.bytes[dollar..self.position].to_vec(),
            operation,
        })
    }

    /// The `word` of the `${...}` opened at `dollar`, one nesting level deeper.
    fn word(&mut self, dollar: usize) -> Result<Vec<Piece>, EnvsubstError> {
        if self.depth >= MAX_NESTING {
            return Err(self.error(
                dollar,
                format!("${{...}} nested more than {MAX_NESTING} levels deep"),
            ));
        }
        self.depth += 1;
        let word = self.pieces(true, dollar);
        self.depth -= 1;
        word
    }
}

struct Evaluator<'a> {
    file: &'a str,
    bytes: &'a [u8],
    vars: &'a mut EnvVars,
    options: &'a EnvsubstOptions,
    findings: Vec<Finding>,
}

impl Evaluator<'_> {
    fn finding(&mut self, name: &str, offset: usize, offence: Offence) {
        let (line, column) = sluice_text::line_col(self.bytes, offset);
        self.findings.push(Finding {
            file: self.file.to_owned(),
            line,
            column,
            name: name.to_owned(),
            offence,
        });
    }

    fn expand(&mut self, pieces: &[Piece], out: &mut Vec<u8>) {
        for piece in pieces {
            match piece {
                Piece::Text(text) => out.extend_from_slice(text),
                Piece::Var {
                    name,
                    offset,
                    raw,
                    operation,
                } => {
                    let allowed = self.options.allow.as_ref().is_none_or(|a| a.contains(name));
                    if allowed {
                        self.variable(name, *offset, operation.as_ref(), out);
                    } else {
                        out.extend_from_slice(raw);
                    }
                }
            }
        }
    }

    fn variable(
        &mut self,
        name: &str,
        offset: usize,
        operation: Option<&Operation>,
        out: &mut Vec<u8>,
    ) {
        // Cloned: expanding a word may assign to `vars` while the value is in use.
        let value = self.vars.get(name).cloned();
        let Some((operator, colon, word)) = operation else {
            match &value {
                None if self.options.no_unset => self.finding(name, offset, Offence::Unset),
                Some(v) if v.is_empty() && self.options.no_empty => {
                    self.finding(name, offset, Offence::Empty)
                }
                _ => {}
            }
            out.extend_from_slice(value.as_deref().unwrap_or_default());
            return;
        };
        // With ':' an empty value counts as unset, as in the shell.
        let usable = value.as_ref().is_some_and(|v| !(*colon && v.is_empty()));
        match (operator, usable) {
            (Operator::Default | Operator::Assign | Operator::Required, true) => {
                out.extend_from_slice(value.as_deref().unwrap_or_default())
            }
            (Operator::Default, false) | (Operator::Alternative, true) => self.expand(word, out),
            (Operator::Alternative, false) => {}
            (Operator::Assign, false) => {
                let mut assigned = Vec::new();
                self.expand(word, &mut assigned);
                out.extend_from_slice(&assigned);
                self.vars.insert(name.to_owned(), assigned);
            }
            (Operator::Required, false) => {
                let mut message = Vec::new();
                self.expand(word, &mut message);
                let message = match (message.is_empty(), *colon) {
                    (false, _) => String::from_utf8_lossy(&message).into_owned(),
                    (true, true) => "parameter null or not set".to_owned(),
                    (true, false) => "parameter not set".to_owned(),
                };
                self.finding(name, offset, Offence::Required(message));
            }
        }
    }
}

/// Substitutes `text` (from `file`, used in messages) with `vars`. `${VAR=word}` assignments
/// are written back into `vars`, so later expressions — and later files rendered with the same
/// map — see them. Fails with a syntax error, or with every offending variable.
///
/// Bytes, not text, like GNU envsubst: the template and the values may hold any bytes (Latin-1,
/// binary), and the output is the template's bytes with the values' bytes in place.
pub fn substitute(
    file: &str,
    text: &[u8],
    vars: &mut EnvVars,
    options: &EnvsubstOptions,
) -> Result<Vec<u8>, EnvsubstError> {
    let pieces = Parser::new(file, text).pieces(false, 0)?;
    let mut evaluator = Evaluator {
        file,
        bytes: text,
        vars,
        options,
        findings: Vec::new(),
    };
    let mut out = Vec::with_capacity(text.len());
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
pub fn referenced_names(text: &[u8]) -> Result<BTreeSet<String>, EnvsubstError> {
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
    let mut names = BTreeSet::new();
    walk(&Parser::new("-", text).pieces(false, 0)?, &mut names);
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> EnvVars {
        [("SET", "value"), ("EMPTY", ""), ("OTHER", "o")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    fn run(text: &str) -> String {
        let out = substitute(
            "t",
            text.as_bytes(),
            &mut vars(),
            &EnvsubstOptions::default(),
        )
        .expect("substitutes");
        String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
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
            b"${NEW:=made} $NEW",
            &mut vars,
            &EnvsubstOptions::default(),
        )
        .expect("substitutes");
        assert_eq!(out, b"made made");
        assert_eq!(vars["NEW"], b"made");
        assert_eq!(run("multi\nbyte é $SET"), "multi\nbyte é value");
    }

    #[test]
    fn required_forms_report_every_offender_with_position() {
        let text = "a: ${UNSET?needs a value}\nb: ${EMPTY:?}\nc: ${EMPTY?fine}";
        let err = substitute(
            "f.json",
            text.as_bytes(),
            &mut vars(),
            &EnvsubstOptions::default(),
        )
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
        let err =
            substitute("cfg.json", text.as_bytes(), &mut vars(), &options).expect_err("offenders");
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
            b"$SET ${OTHER} $UNSET ${EMPTY:-x} $$",
            &mut vars(),
            &options,
        )
        .expect("unlisted names are not checked");
        assert_eq!(out, b"value o $UNSET ${EMPTY:-x} $");
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
            let err = substitute(
                "t",
                text.as_bytes(),
                &mut vars(),
                &EnvsubstOptions::default(),
            )
            .expect_err(text);
            let message = err.to_string();
            assert!(message.starts_with(position), "{text:?}: {message}");
            assert!(message.contains(needle), "{text:?}: {message}");
        }
    }

    #[test]
    fn names_referenced() {
        let names = referenced_names(b"$A ${B:-$C} $$D").expect("parses");
        assert_eq!(names.iter().collect::<Vec<_>>(), ["A", "B", "C"]);
    }

    #[test]
    fn bytes_that_are_not_utf8_pass_through() {
        let mut vars = vars();
        vars.insert("LATIN1".into(), b"caf\xe9".to_vec());
        let options = EnvsubstOptions::default();
        let out = substitute(
            "t",
            b"\xff${LATIN1}|$LATIN1|${UNSET:-\xfe}",
            &mut vars,
            &options,
        )
        .expect("bytes are fine");
        assert_eq!(out, b"\xffcaf\xe9|caf\xe9|\xfe");
        let out = substitute("t", b"${NEW:=\xe9$LATIN1} $NEW", &mut vars, &options)
            .expect("assigns bytes");
        assert_eq!(out, b"\xe9caf\xe9 \xe9caf\xe9");
    }

    #[test]
    fn errors_in_non_utf8_templates_have_positions() {
        let err = substitute(
            "t",
            b"\xe9\xe9\n\xe9 ${A\xe9}",
            &mut vars(),
            &Default::default(),
        )
        .expect_err("bad byte in a name");
        assert_eq!(
            err.to_string(),
            "t:2:6: unexpected byte 0xE9 in ${A...}: supported forms are ${A}, ${A-word}, ${A:-word}, =, :=, +, :+, ?, :?"
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |levels: usize| "${A:-".repeat(levels) + &"}".repeat(levels);
        assert_eq!(run(&deep(MAX_NESTING)), "");
        let err = substitute(
            "t",
            deep(MAX_NESTING + 1).as_bytes(),
            &mut vars(),
            &Default::default(),
        )
        .expect_err("too deep");
        assert!(
            err.to_string().contains("nested more than 64 levels"),
            "{err}"
        );
        assert!(referenced_names(deep(100_000).as_bytes()).is_err());
    }
}
