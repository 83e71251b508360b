//! `sluice_sidecar::envsubst::substitute`: arbitrary template bytes with an arbitrary value (any
//! bytes, UTF-8 or not) for the variable `V`.
//!
//! Input: byte 0 = option flags (bit 0 `no_unset`, bit 1 `no_empty`, bit 2 allow-list `$V`);
//! then `V`'s value up to the first 0x00; then the template.
//!
//! Properties:
//! - never panics (nor overflows the stack: nesting is bounded);
//! - `referenced_names` fails exactly when `substitute` reports a syntax error, and an error's
//!   line and column are inside the template;
//! - a template without `$` comes out byte for byte, whatever the options;
//! - any bytes with every `$` doubled come out as the original bytes (`$$` is a literal `$`);
//! - `${V}` between two `$`-free texts comes out as those texts around `V`'s exact bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_sidecar::envsubst::{
    EnvVars, EnvsubstError, EnvsubstOptions, referenced_names, substitute,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (value, template) = match rest.iter().position(|&b| b == 0) {
        Some(nul) => (&rest[..nul], &rest[nul + 1..]),
        None => (rest, &[][..]),
    };
    let options = options(flags);
    let result = substitute("fuzz", template, &mut vars(value), &options);
    check_errors(template, &result);
    if !template.contains(&b'$') {
        assert_eq!(result.as_deref(), Ok(template), "a template without '$'");
    }
    check_escaped(template);
    check_value_inserted(value, template);
});

fn options(flags: u8) -> EnvsubstOptions {
    EnvsubstOptions {
        allow: (flags & 4 != 0).then(|| EnvsubstOptions::allow_from_shell_format("$V")),
        no_unset: flags & 1 != 0,
        no_empty: flags & 2 != 0,
    }
}

fn vars(value: &[u8]) -> EnvVars {
    let mut vars = EnvVars::new();
    vars.insert("V".into(), value.to_vec());
    vars.insert("EMPTY".into(), Vec::new());
    vars
}

fn check_errors(template: &[u8], result: &Result<Vec<u8>, EnvsubstError>) {
    let syntax = matches!(result, Err(EnvsubstError::Syntax { .. }));
    assert_eq!(
        referenced_names(template).is_err(),
        syntax,
        "referenced_names and substitute disagree: {result:?}"
    );
    let lines = template.iter().filter(|&&b| b == b'\n').count() + 1;
    let positions: Vec<(usize, usize)> = match result {
        Ok(_) => Vec::new(),
        Err(EnvsubstError::Syntax { line, column, .. }) => vec![(*line, *column)],
        Err(EnvsubstError::Variables { findings }) => {
            assert!(!findings.is_empty(), "a failure lists its variables");
            findings.iter().map(|f| (f.line, f.column)).collect()
        }
    };
    for (line, column) in positions {
        assert!((1..=lines).contains(&line), "line {line} of {lines}");
        assert!(
            column >= 1 && column <= template.len() + 1,
            "column {column}"
        );
    }
}

fn check_escaped(bytes: &[u8]) {
    let mut escaped = Vec::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        escaped.push(byte);
        if byte == b'$' {
            escaped.push(b'$');
        }
    }
    let out = substitute("fuzz", &escaped, &mut EnvVars::new(), &options(3));
    assert_eq!(out.as_deref(), Ok(bytes), "'$$' must be a literal '$'");
}

fn check_value_inserted(value: &[u8], template: &[u8]) {
    let text: Vec<u8> = template.iter().copied().filter(|&b| b != b'$').collect();
    let mut input = text.clone();
    input.extend_from_slice(b"${V}");
    input.extend_from_slice(&text);
    let out = substitute(
        "fuzz",
        &input,
        &mut vars(value),
        &EnvsubstOptions::default(),
    );
    let mut expected = text.clone();
    expected.extend_from_slice(value);
    expected.extend_from_slice(&text);
    assert_eq!(out, Ok(expected), "the value's bytes, exactly");
}
