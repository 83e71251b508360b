//! Chunked coding both ways: data frames encoded as Sluice sends them
//! (`sluice_codec::chunked::encode_data`, then the last chunk) decode to the same bytes, and the
//! body ends exactly where it was written to end.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sluice_codec::chunked::{Chunked, Step, decode, encode_data};

fuzz_target!(|frames: Vec<Vec<u8>>| {
    let mut wire = BytesMut::new();
    for frame in &frames {
        encode_data(&mut wire, Bytes::copy_from_slice(frame), true);
    }
    wire.extend_from_slice(b"0\r\n\r\nNEXT");
    let mut state = Chunked::Size;
    let mut data = Vec::new();
    loop {
        match decode(&mut state, &mut wire) {
            Ok(Step::Frame(frame)) => data.extend_from_slice(frame.data_ref().expect("data only")),
            Ok(Step::End) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(data, frames.concat());
    assert_eq!(&wire[..], b"NEXT");
});
