//! The TLS ClientHello reader (`sluice_codec::client_hello::parse`) for SNI routing, on
//! arbitrary bytes and size limits.
//!
//! Properties:
//! - never panics, whatever the records, lengths or limit;
//! - a server name found is a lower-case host name (letters, digits, `-`, `.`, `_`) of at most
//!   253 bytes, without a trailing dot;
//! - once a ClientHello is complete, more bytes after it change nothing;
//! - no answer needs more bytes than the limit allows: at the limit, it is complete or refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_codec::client_hello::parse;

fuzz_target!(|data: &[u8]| {
    let Some((limit, bytes)) = data.split_first_chunk::<2>() else {
        return;
    };
    let limit = usize::from(u16::from_le_bytes(*limit)).max(16);
    let result = parse(bytes, limit);
    match &result {
        Ok(Some(Some(name))) => {
            assert!(!name.is_empty() && name.len() <= 253 && !name.ends_with('.'));
            assert!(name.bytes().all(|b| b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'-' | b'.' | b'_')));
        }
        Ok(None) => assert!(bytes.len() < limit, "asked for more past the limit"),
        _ => {}
    }
    if let Ok(Some(found)) = &result {
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(b"\x16\x03\x01\x00\x05hello");
        assert_eq!(parse(&longer, limit).ok(), Some(Some(found.clone())));
    }
});
