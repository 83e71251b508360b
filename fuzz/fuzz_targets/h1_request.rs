//! The HTTP/1.x request head parser (`sluice_codec::request::parse_h1`) on arbitrary bytes,
//! arriving whole or in two reads.
//!
//! Properties:
//! - never panics;
//! - the outcome does not depend on where the bytes are split between two reads (unless the
//!   first read already holds a complete head);
//! - an accepted head leaves the bytes after it untouched, has a `Host` (if any) that is
//!   `host[:port]`, a target that is a path (or `*`), at most one `Content-Length` field holding
//!   one value, and never both `Content-Length` and `Transfer-Encoding`.
#![no_main]

use std::borrow::Cow;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_codec::fields::{Kind, valid_host};
use sluice_codec::path::normalize_target;
use sluice_codec::request::{BodyLength, RequestHead, parse_h1};

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let mut read = BytesMut::from(bytes);
    let whole = parse_h1(&mut read);
    if let Ok(Some(head)) = &whole {
        check(head, bytes, &read);
    }
    let split = usize::from(split) % (bytes.len() + 1);
    let mut pieces = BytesMut::from(&bytes[..split]);
    let first = parse_h1(&mut pieces);
    let second = match first {
        Ok(None) => {
            pieces.extend_from_slice(&bytes[split..]);
            parse_h1(&mut pieces)
        }
        other => other,
    };
    let head_in_first = bytes[..split].windows(2).any(|w| w == b"\n\n")
        || bytes[..split].windows(3).any(|w| w == b"\n\r\n");
    match (&whole, &second) {
        (Ok(Some(a)), Ok(Some(b))) => assert_eq!(
            (a.target(), a.host(), a.facts.body, a.field_list().len()),
            (b.target(), b.host(), b.facts.body, b.field_list().len())
        ),
        (Err(a), Err(b)) if !head_in_first => assert_eq!(a, b),
        (Ok(None), Ok(None)) => {}
        _ => assert!(head_in_first, "split at {split}: {whole:?} vs {second:?}"),
    }
});

fn check(head: &RequestHead, input: &[u8], rest: &[u8]) {
    let consumed = input.len() - rest.len();
    assert_eq!(&input[consumed..], rest, "the bytes after the head stay");
    assert!(head.target().starts_with('/') || head.target() == "*");
    // The target is canonical: normalizing it again changes nothing.
    assert!(
        matches!(normalize_target(head.target()), Ok(Cow::Borrowed(_))),
        "{:?}",
        head.target()
    );
    if let Some(host) = head.host() {
        assert!(valid_host(host), "{host:?}");
    }
    let lengths: Vec<&[u8]> = head
        .field_list()
        .iter()
        .filter(|f| f.kind == Kind::ContentLength)
        .map(|f| f.value.get(head.buffer()))
        .collect();
    assert!(lengths.len() <= 1, "{lengths:?}");
    if let Some(value) = lengths.first() {
        assert!(value.iter().all(u8::is_ascii_digit), "{value:?}");
    }
    let coded = head
        .field_list()
        .iter()
        .any(|f| f.kind == Kind::TransferEncoding);
    assert!(!(coded && !lengths.is_empty()), "both framings accepted");
    assert_eq!(coded, head.facts.body == BodyLength::Chunked);
}
