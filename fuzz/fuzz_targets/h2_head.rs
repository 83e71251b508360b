//! An HTTP/2 request head as Sluice's own server builds it: arbitrary decoded fields checked by
//! `h2::head::HeadBuilder` (RFC 9113 §8.2–8.3), then brought to the shape of HTTP/1.x heads by
//! `RequestHead::from_h2_head`, the path every HTTP/2 request takes to the handler.
//!
//! The input is a list of fields, each `[sensitive: u8][name length: u8][value length: u8]`
//! then the name and value bytes, so seeds are easy to write and every byte value can occur.
//!
//! Properties:
//! - never panics;
//! - an accepted request keeps its method, path (in canonical form) and query;
//! - its host (from `:authority` or `host`), if any, is `host[:port]`;
//! - its fields are the client's regular fields in order, except that `cookie` crumbs come
//!   last, joined into one field by "; " (RFC 9113 §8.2.3).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_codec::fields::valid_host;
use sluice_codec::h2::head::HeadBuilder;
use sluice_codec::h2::hpack::Field;
use sluice_codec::path::normalize_target;
use sluice_codec::request::RequestHead;

/// Small enough that the fuzzer reaches it with a few dozen fields.
const MAX_LIST_SIZE: usize = 2048;

fuzz_target!(|input: &[u8]| {
    let mut builder = HeadBuilder::new(MAX_LIST_SIZE, false, input.len());
    let mut rest = input;
    while let [sensitive, name_len, value_len, tail @ ..] = rest {
        let (name_len, value_len) = (usize::from(*name_len), usize::from(*value_len));
        if tail.len() < name_len + value_len {
            break;
        }
        let (name, tail) = tail.split_at(name_len);
        let (value, tail) = tail.split_at(value_len);
        builder.push(Field {
            name,
            value,
            sensitive: sensitive & 1 == 1,
        });
        rest = tail;
    }
    let Ok(h2) = builder.finish() else {
        return;
    };
    let Ok(head) = RequestHead::from_h2_head(&h2) else {
        return;
    };
    assert_eq!(head.method.as_str().as_bytes(), h2.method());
    if let Some(path) = h2.path() {
        let path = http::uri::PathAndQuery::try_from(path).expect("an accepted :path parses");
        let canonical = normalize_target(path.as_str()).expect("an accepted target normalizes");
        assert_eq!(head.target(), canonical);
    }
    if let Some(host) = head.host() {
        assert!(valid_host(host), "{host:?}");
    }
    let buf = head.buffer();
    let got: Vec<(&[u8], &[u8])> = head
        .field_list()
        .iter()
        .map(|f| (f.name.get(buf), f.value.get(buf)))
        .collect();
    let mut expected: Vec<(&[u8], &[u8])> = Vec::new();
    let mut crumbs: Vec<&[u8]> = Vec::new();
    for (name, value, _) in h2.fields() {
        if name == b"cookie" {
            crumbs.push(value);
        } else {
            expected.push((name, value));
        }
    }
    let cookie = crumbs.join(&b"; "[..]);
    if !crumbs.is_empty() {
        expected.push((b"cookie", &cookie));
    }
    let lengths = expected
        .iter()
        .filter(|(n, _)| *n == b"content-length")
        .count();
    let listed = expected
        .iter()
        .any(|(n, v)| *n == b"content-length" && v.contains(&b','));
    // Repeated or listed `content-length` values are folded into one (or refused).
    if lengths <= 1 && !listed {
        assert_eq!(got, expected);
    }
});
