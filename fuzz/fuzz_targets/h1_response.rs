//! The upstream response head parser (`sluice_codec::response::parse_response`) on arbitrary
//! bytes, then the body's framing driven over what follows.
//!
//! Properties:
//! - never panics, whatever the bytes or whether the request was `HEAD`;
//! - an accepted head never frames its body by both `Content-Length` and `Transfer-Encoding`,
//!   names a length only when it forwards exactly one `Content-Length` field, and is chunked
//!   only when a `Transfer-Encoding` was sent;
//! - a chunked body decodes over the rest without panicking, and never yields more data bytes
//!   than there were input bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_codec::chunked::{self, Step};
use sluice_codec::fields::Kind;
use sluice_codec::response::{Framing, parse_response};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let mut read = BytesMut::from(bytes);
    let Ok(Some(parsed)) = parse_response(&mut read, flags & 1 == 1) else {
        return;
    };
    let head = &parsed.head;
    let lengths = head
        .forwarded(parsed.status)
        .filter(|f| f.kind == Kind::ContentLength)
        .count();
    match &parsed.framing {
        Framing::Length(n) if flags & 1 == 0 && !parsed.status.is_informational()
            && parsed.status != 204 && parsed.status != 304 =>
        {
            assert_eq!(head.content_length, Some(*n));
            assert!(!head.transfer_encoding);
            assert_eq!(lengths, 1);
        }
        Framing::Chunked(_) => {
            assert!(head.transfer_encoding && head.content_length.is_none());
            assert_eq!(lengths, 0);
        }
        _ => {}
    }
    if let Framing::Chunked(mut state) = parsed.framing {
        let total = read.len();
        let mut data_bytes = 0;
        while let Ok(Step::Frame(frame)) = chunked::decode(&mut state, &mut read) {
            data_bytes += frame.data_ref().map_or(0, |d| d.len());
        }
        assert!(data_bytes <= total);
    }
});
