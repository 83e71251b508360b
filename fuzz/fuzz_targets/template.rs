//! `sluice_sidecar::template::JinjaTemplate`: an arbitrary template with an arbitrary KV value
//! and an arbitrary environment value (any bytes, UTF-8 or not) behind the sidecar's `kv`,
//! `kv_or`, `kv_list` and `env` functions.
//!
//! Input: byte 0 = flags (bits 0-1: missing-key policy); then the KV value up to the first 0x00
//! (stored under `k`, `list/a`, `list/b`); then the value of the variable `FUZZ_ENV` up to the
//! next 0x00; then the template source (lossy UTF-8, at most 2 KiB).
//!
//! Bounds, so an input cannot hang or exhaust memory: every render has fuel (minijinja counts
//! instructions), and the free-form template is rendered only when it avoids minijinja's
//! constructs that grow memory in a few instructions (`*`, `~`, `+`, block `set`, macros,
//! `namespace`, filters outside a short list) and `file()` (which could read `/dev/zero`). It is
//! always compiled. Those are properties of minijinja and of the operator's own template, not of
//! the values the sidecar feeds it.
//!
//! Properties:
//! - never panics;
//! - a compile error is `fuzz:line:col: ...` with the line inside the source;
//! - rendering twice gives the same outcome (the per-render scope is reset);
//! - text without `{` renders to itself, byte for byte;
//! - `kv('k')`, `kv_or('k', ..)`, `kv_list('list/')` and `env('FUZZ_ENV')` give the value
//!   exactly when it is UTF-8, and otherwise fail naming the first invalid byte and its offset.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sluice_kv::KvEntry;
use sluice_sidecar::config::MissingPolicy;
use sluice_sidecar::kvlayers::KvLayers;
use sluice_sidecar::template::{JinjaError, JinjaTemplate, Rendered};

const FUEL: u64 = 10_000;
const MAX_TEMPLATE: usize = 2048;
const FILTERS: &[&str] = &[
    "safe", "escape", "e", "lower", "upper", "title", "length", "count", "dictsort", "items",
    "reverse", "trim", "split", "lines", "default", "d", "round", "abs", "int", "float", "attr",
    "first", "last", "min", "max", "sort", "list", "bool", "sum", "unique",
];
const DENIED_WORDS: &[&str] = &["endset", "macro", "call", "namespace", "file"];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == 0);
    let kv_value = parts.next().unwrap_or_default();
    let env_value = parts.next().unwrap_or_default();
    let source = String::from_utf8_lossy(parts.next().unwrap_or_default());
    if source.len() > MAX_TEMPLATE {
        return;
    }
    // SAFETY: libFuzzer runs the target on one thread and nothing else reads the environment
    // concurrently; the value holds no NUL (the input was split at NULs).
    unsafe { std::env::set_var("FUZZ_ENV", OsStr::from_bytes(env_value)) };
    let kv = Arc::new(KvLayers::from_entries(vec![
        KvEntry::new("k", kv_value, 1),
        KvEntry::new("list/a", kv_value, 1),
        KvEntry::new("list/b", "text", 1),
    ]));
    let policy = match flags & 3 {
        0 => MissingPolicy::Block,
        1 => MissingPolicy::Fail,
        _ => MissingPolicy::Default,
    };
    check_free_form(&source, &kv, policy);
    check_value("{{ kv('k') }}", kv_value, kv_value, &kv);
    check_value("{{ kv_or('k', 'unused') }}", kv_value, kv_value, &kv);
    let listed = [kv_value, b"text"].concat();
    let source = "{% for i in kv_list('list/') %}{{ i.value }}{% endfor %}";
    check_value(source, kv_value, &listed, &kv);
    check_value("{{ env('FUZZ_ENV', 'unused') }}", env_value, env_value, &kv);
});

fn compile(
    source: &str,
    kv: &Arc<KvLayers>,
    policy: MissingPolicy,
) -> Result<JinjaTemplate, JinjaError> {
    let mut template =
        JinjaTemplate::new("fuzz", source.to_owned(), kv.clone(), policy, "?".into())?;
    template.set_fuel(Some(FUEL));
    Ok(template)
}

fn check_free_form(source: &str, kv: &Arc<KvLayers>, policy: MissingPolicy) {
    let template = match compile(source, kv, policy) {
        Ok(template) => template,
        Err(error) => {
            let message = error.to_string();
            let lines = source.matches('\n').count() + 1;
            let line: usize = message
                .strip_prefix("fuzz:")
                .and_then(|rest| rest.split(':').next())
                .and_then(|line| line.parse().ok())
                .unwrap_or_else(|| panic!("no position: {message}"));
            assert!(
                (1..=lines).contains(&line),
                "line {line} of {lines}: {message}"
            );
            return;
        }
    };
    if !renderable(source) {
        return;
    }
    let (first, deps) = template.render();
    let (second, deps_again) = template.render();
    assert_eq!(first, second, "renders differ");
    assert_eq!(deps, deps_again, "dependencies differ");
    if !source.contains('{') {
        assert_eq!(
            first,
            Rendered::Ready(source.as_bytes().to_vec()),
            "plain text"
        );
    }
}

/// Whether the template avoids what grows memory faster than fuel can bound (module docs).
fn renderable(source: &str) -> bool {
    if source.contains(['*', '~', '+']) {
        return false;
    }
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if source
        .split(|c: char| !word(c))
        .any(|w| DENIED_WORDS.contains(&w))
    {
        return false;
    }
    source.match_indices('|').all(|(at, _)| {
        let name = source[at + 1..]
            .trim_start()
            .split(|c: char| !word(c))
            .next();
        name.is_some_and(|name| FILTERS.contains(&name))
    })
}

/// `source` reads `value`: it renders `output` exactly, or, when `value` is not UTF-8, fails
/// naming where it stops being UTF-8.
fn check_value(source: &str, value: &[u8], output: &[u8], kv: &Arc<KvLayers>) {
    let template = compile(source, kv, MissingPolicy::Fail).expect("fixed template compiles");
    let (outcome, _) = template.render();
    match std::str::from_utf8(value) {
        Ok(_) => assert_eq!(outcome, Rendered::Ready(output.to_vec()), "{source}"),
        Err(error) => {
            let offset = error.valid_up_to();
            let expected = format!("byte 0x{:02X} at offset {offset}", value[offset]);
            match outcome {
                Rendered::Failed(message) => {
                    assert!(message.contains("is not valid UTF-8"), "{message}");
                    assert!(message.contains(&expected), "{message} lacks {expected}");
                }
                other => panic!("{source}: not UTF-8 but {other:?}"),
            }
        }
    }
}
