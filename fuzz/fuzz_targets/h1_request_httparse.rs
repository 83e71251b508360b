//! Differential: Sluice's request head parser against `httparse` (the parser it builds on) on
//! what both accept. Sluice adds checks (Host grammar, framing rules, one length), so it may
//! refuse what httparse takes; it must never accept what httparse refuses, nor read a head it
//! accepts differently.
//!
//! Properties, for every input Sluice accepts:
//! - httparse accepts it too, with a head of the same length;
//! - the same method and version, and for origin-form requests the same target in canonical
//!   form (sluice_codec::path);
//! - Sluice's fields are httparse's, in order, less repeated `Content-Length` fields and with a
//!   list-valued `Content-Length` cut to its one value.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_codec::fields::Kind;
use sluice_codec::path::normalize_target;
use sluice_codec::request::parse_h1;

fuzz_target!(|data: &[u8]| {
    let mut read = BytesMut::from(data);
    let Ok(Some(ours)) = parse_h1(&mut read) else {
        return;
    };
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut theirs = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(len)) = theirs.parse(data) else {
        panic!("Sluice accepted a head httparse refuses: {:?}", String::from_utf8_lossy(data));
    };
    assert_eq!(len, data.len() - read.len(), "head lengths differ");
    assert_eq!(Some(ours.method.as_str()), theirs.method);
    let minor = if ours.version == http::Version::HTTP_10 { 0 } else { 1 };
    assert_eq!(Some(minor), theirs.version);
    let path = theirs.path.unwrap_or_default();
    if path.starts_with('/') {
        // Sluice routes and forwards the canonical spelling of the path.
        let canonical = normalize_target(path).expect("an accepted target normalizes");
        assert_eq!(ours.target(), canonical);
    }
    let buf = ours.buffer();
    let mut expected = Vec::new();
    let mut seen_length = false;
    for h in theirs.headers.iter() {
        let is_length = h.name.eq_ignore_ascii_case("content-length");
        if is_length && seen_length {
            continue;
        }
        seen_length |= is_length;
        let value = if is_length {
            h.value.split(|&b| b == b',').next().unwrap_or_default().trim_ascii()
        } else {
            h.value
        };
        expected.push((h.name.as_bytes(), value));
    }
    let got: Vec<(&[u8], &[u8])> = ours
        .field_list()
        .iter()
        .map(|f| (f.name.get(buf), f.value.get(buf)))
        .collect();
    assert_eq!(got, expected);
    assert!(ours.field_list().iter().all(|f| f.kind == Kind::of(f.name.get(buf))));
});
