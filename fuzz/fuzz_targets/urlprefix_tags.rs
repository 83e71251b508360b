//! Fabio-style service tags (`urlprefix-/web strip=/web`), parsed by
//! `sluice_policy_sdk::tags::parse` — policies run it on tags from the catalog, which anyone
//! who registers a service writes.
//!
//! Input: `PREFIX\0TAG` when the bytes hold a NUL, else a tag with the prefix `urlprefix-`.
//!
//! Properties:
//! - never panics;
//! - `None` exactly when the trimmed tag does not start with the prefix;
//! - an accepted tag's head and option keys and values are slices of the tag itself, in order,
//!   without whitespace (keys without `=` either, and unique); printing it back and parsing
//!   gives the same tag;
//! - each error's reason holds in the tag.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_policy_sdk::tags::{Tag, TagError, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (prefix, tag) = text.split_once('\0').unwrap_or(("urlprefix-", text));
    let Some(rest) = tag.trim().strip_prefix(prefix) else {
        assert_eq!(parse(tag, prefix), None);
        return;
    };
    match parse(tag, prefix) {
        None => panic!("tag {tag:?} has the prefix {prefix:?} but was not parsed"),
        Some(Ok(parsed)) => check_accepted(tag, prefix, &parsed),
        Some(Err(TagError::EmptyHead)) => {
            assert!(rest.is_empty() || rest.starts_with(char::is_whitespace));
        }
        Some(Err(TagError::EmptyKey(option))) => {
            assert!(option.starts_with('='));
            assert!(rest.split_whitespace().skip(1).any(|w| w == option));
        }
        Some(Err(TagError::DuplicateOption(key))) => {
            let keys = rest
                .split_whitespace()
                .skip(1)
                .filter(|w| w.split_once('=').map_or(*w, |(k, _)| k) == key)
                .count();
            assert!(keys >= 2, "{key:?} is not given twice in {tag:?}");
        }
    }
});

fn check_accepted(tag: &str, prefix: &str, parsed: &Tag<'_>) {
    // Every part borrows from the tag, after the prefix, in order.
    let mut after = tag.as_ptr() as usize + (tag.len() - tag.trim_start().len()) + prefix.len();
    let mut inside = |part: &str, what: &str| {
        assert!(!part.contains(char::is_whitespace), "{what} {part:?}");
        // A flag's empty value is a literal, not a slice: nothing to place.
        if part.is_empty() {
            return;
        }
        let start = part.as_ptr() as usize;
        assert!(
            start >= after && start + part.len() <= tag.as_ptr() as usize + tag.len(),
            "{what} {part:?} is not a slice of {tag:?} in order"
        );
        after = start + part.len();
    };
    assert!(!parsed.head.is_empty());
    inside(parsed.head, "head");
    let mut printed = format!("{prefix}{}", parsed.head);
    for (i, (key, value)) in parsed.options.iter().enumerate() {
        inside(key, "key");
        inside(value, "value");
        assert!(!key.is_empty() && !key.contains('='), "key {key:?}");
        assert!(
            parsed.options[..i].iter().all(|(k, _)| k != key),
            "key {key:?} twice"
        );
        assert_eq!(parsed.option(key), Some(*value));
        printed.push_str(&format!(" {key}={value}"));
    }
    assert_eq!(
        parse(&printed, prefix),
        Some(Ok(parsed.clone())),
        "{printed:?}"
    );
}
