//! Request paths brought to canonical form (`sluice_codec::path`), from arbitrary text.
//!
//! Properties, for every path starting with `/` that normalizes:
//! - the result starts with `/`, holds no empty, `.` or `..` segment, and no escape of an
//!   unreserved character or with lower-case hex digits;
//! - normalizing it again changes nothing (the form is a fixed point);
//! - it never holds more segments than the input.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use sluice_codec::path::normalize;

fuzz_target!(|path: &str| {
    if !path.starts_with('/') || path.contains('?') {
        return;
    }
    let Ok(canonical) = normalize(path) else {
        return;
    };
    assert!(canonical.starts_with('/'), "{path:?} -> {canonical:?}");
    let inner = canonical.strip_suffix('/').unwrap_or(&canonical);
    for segment in inner.split('/').skip(1) {
        assert!(!matches!(segment, "" | "." | ".."), "{path:?} -> {canonical:?}");
    }
    for (at, _) in canonical.match_indices('%') {
        let escape = &canonical.as_bytes()[at + 1..at + 3];
        let byte = u8::from_str_radix(std::str::from_utf8(escape).unwrap(), 16).unwrap();
        assert!(!byte.is_ascii_alphanumeric() && !b"-._~".contains(&byte), "{canonical:?}");
        assert!(!escape.iter().any(u8::is_ascii_lowercase), "{canonical:?}");
    }
    assert!(
        matches!(normalize(&canonical), Ok(Cow::Borrowed(_))),
        "{path:?} -> {canonical:?} is not a fixed point"
    );
    assert!(canonical.split('/').count() <= path.split('/').count() + 1);
});
