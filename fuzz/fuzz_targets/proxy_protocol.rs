//! The PROXY protocol header reader (`sluice_codec::proxy_protocol::parse`), v1 and v2, on
//! arbitrary bytes.
//!
//! Properties:
//! - never panics;
//! - a complete header's length is within the input, and the header alone parses to the same
//!   header (the bytes after it do not matter);
//! - every shorter prefix of a complete header asks for more bytes rather than failing or
//!   reading a different header;
//! - a v1 header is at most 107 bytes and ends in CRLF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_codec::proxy_protocol::{MAX_V1_LENGTH, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((header, len))) = parse(data) else {
        return;
    };
    assert!(len <= data.len());
    assert_eq!(parse(&data[..len]), Ok(Some((header, len))));
    for cut in 0..len {
        assert_eq!(parse(&data[..cut]), Ok(None), "cut at {cut} of {len}");
    }
    if data.starts_with(b"PROXY ") {
        assert!(len <= MAX_V1_LENGTH && data[..len].ends_with(b"\r\n"));
    }
});
