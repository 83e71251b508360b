//! Reading HTTP/2 frames (`sluice_codec::h2::frame::read`) from arbitrary bytes, one after the
//! other as a connection does, with an arbitrary SETTINGS_MAX_FRAME_SIZE.
//!
//! Properties:
//! - never panics;
//! - a frame takes its 9-byte header and its payload, no more and no less than the header says,
//!   and never more than `max_frame_size` of payload;
//! - any prefix of a frame's bytes reads as "need more" or as the same error, never as another
//!   frame: the outcome does not depend on how the bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_codec::h2::frame::{self, FrameError, HEADER_LEN};

fuzz_target!(|input: (u32, Vec<u8>)| {
    let (max, bytes) = input;
    let max = max.clamp(frame::DEFAULT_MAX_FRAME_SIZE, frame::MAX_MAX_FRAME_SIZE);
    let mut rest = &bytes[..];
    loop {
        match frame::read(rest, max) {
            Ok(None) => {
                check_prefixes(rest, rest.len(), max, None);
                return;
            }
            Ok(Some((_, taken))) => {
                assert!(taken >= HEADER_LEN && taken <= rest.len());
                let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]);
                assert!(len <= max);
                assert_eq!(taken, HEADER_LEN + len as usize);
                check_prefixes(rest, taken, max, None);
                rest = &rest[taken..];
            }
            Err(e) => {
                check_prefixes(rest, rest.len(), max, Some(e));
                return;
            }
        }
    }
});

/// Every prefix of `bytes[..upto]` shorter than it reads as "need more", or as `error`.
fn check_prefixes(bytes: &[u8], upto: usize, max: u32, error: Option<FrameError>) {
    for cut in 0..upto {
        match frame::read(&bytes[..cut], max) {
            Ok(None) => {}
            Ok(Some(_)) => panic!("a prefix of {cut} bytes read as a whole frame"),
            Err(e) => assert_eq!(Some(e), error, "a prefix of {cut} bytes"),
        }
    }
}
