//! Chunked decoding (`sluice_codec::chunked::decode`), the same decoder for request bodies from
//! clients and response bodies from instances, over arbitrary bytes arriving in arbitrary reads.
//!
//! Properties:
//! - never panics;
//! - the data, trailers and outcome (end, error, or waiting for more) do not depend on how the
//!   bytes are cut into reads;
//! - a body that ends leaves exactly the bytes after it unread.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_codec::chunked::{ChunkError, Chunked, Step, decode};

/// What decoding `input` gave: data, trailers (as text), and how it stopped.
#[derive(Debug, PartialEq)]
struct Outcome {
    data: Vec<u8>,
    trailers: Vec<String>,
    end: Result<Option<usize>, ChunkError>,
}

/// Decodes `input` fed in reads of `cuts[i]` bytes, then of `step` bytes.
fn run(input: &[u8], cuts: &[u8], step: usize) -> Outcome {
    let mut state = Chunked::Size;
    let mut read = BytesMut::new();
    let mut out = Outcome { data: Vec::new(), trailers: Vec::new(), end: Ok(None) };
    let (mut fed, mut cut) = (0, 0);
    loop {
        match decode(&mut state, &mut read) {
            Ok(Step::Frame(frame)) => match frame.into_data() {
                Ok(d) => out.data.extend_from_slice(&d),
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        out.trailers = t.iter().map(|(n, v)| format!("{n}: {v:?}")).collect();
                    }
                }
            },
            // The body ended: how many input bytes are left after it.
            Ok(Step::End) => {
                out.end = Ok(Some(read.len() + input.len() - fed));
                return out;
            }
            Ok(Step::NeedMore) if fed == input.len() => return out,
            Ok(Step::NeedMore) => {
                let step = cuts.get(cut).map_or(step, |&c| usize::from(c).max(1));
                cut += 1;
                let end = (fed + step).min(input.len());
                read.extend_from_slice(&input[fed..end]);
                fed = end;
            }
            Err(e) => {
                out.end = Err(e);
                return out;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first bytes choose the read sizes; the rest is the body.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (cuts, input) = rest.split_at(n);
    let whole = run(input, &[], input.len().max(1));
    let pieces = run(input, cuts, 7);
    // Byte by byte only for short bodies: each read rescans the line so far.
    let ones = (input.len() <= 512).then(|| run(input, &[], 1));
    // Size limits may trip at different points depending on the reads; the data and the error
    // may not otherwise differ.
    for other in [Some(&pieces), ones.as_ref()].into_iter().flatten() {
        if whole.end.is_ok() && other.end.is_ok() {
            assert_eq!(&whole, other);
        } else if !matches!(whole.end, Err(ChunkError::LineTooLong | ChunkError::TrailersTooLarge))
            && !matches!(other.end, Err(ChunkError::LineTooLong | ChunkError::TrailersTooLarge))
        {
            assert_eq!(whole.end, other.end);
            assert_eq!(whole.data, other.data);
        }
    }
});
