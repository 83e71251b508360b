//! Chunked transfer coding (RFC 9112 §7.1), both ways: decoding bodies that arrive chunked
//! (responses from instances, requests from clients) a step at a time over whatever bytes have
//! been read, and encoding data frames.
//!
//! Limits: chunk-size lines of at most [`MAX_CHUNK_LINE`] bytes and a trailer section of at
//! most [`MAX_TRAILER_BYTES`]; beyond them the body is malformed.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

/// Longest chunk-size line (size, extensions, CRLF) accepted.
pub(crate) const MAX_CHUNK_LINE: usize = 1024;
/// Largest trailer section accepted.
pub(crate) const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most trailer fields accepted.
const MAX_TRAILERS: usize = 100;

/// Position in a chunked body.
#[derive(Debug)]
pub(crate) enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields until an empty line.
    Trailers,
    /// The body, and its trailers, ended.
    End,
}

/// What a decoding step found.
pub(crate) enum Step {
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    NeedMore,
    End,
}

/// One step of chunked decoding over the bytes read so far.
pub(crate) fn decode(state: &mut Chunked, read: &mut BytesMut) -> Result<Step, &'static str> {
    loop {
        match state {
            Chunked::End => return Ok(Step::End),
            Chunked::Size => {
                let Some(eol) = read.iter().position(|&b| b == b'\n') else {
                    if read.len() > MAX_CHUNK_LINE {
                        return Err("chunk-size line too long");
                    }
                    return Ok(Step::NeedMore);
                };
                if eol > MAX_CHUNK_LINE {
                    return Err("chunk-size line too long");
                }
                let line = &read[..eol];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let digits = line
                    .iter()
                    .position(|&b| b == b';' || b == b' ' || b == b'\t')
                    .map_or(line, |end| &line[..end]);
                if digits.is_empty() || digits.len() > 15 {
                    return Err("invalid chunk size");
                }
                let mut size: u64 = 0;
                for &d in digits {
                    let v = (d as char).to_digit(16).ok_or("invalid chunk size")?;
                    size = size * 16 + u64::from(v);
                }
                read.advance(eol + 1);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(left) => {
                if read.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(read.len());
                *left -= n as u64;
                let data = read.split_to(n).freeze();
                if *left == 0 {
                    *state = Chunked::DataEnd;
                }
                return Ok(Step::Frame(Frame::data(data)));
            }
            Chunked::DataEnd => {
                if read.len() < 2 {
                    if read.first().is_some_and(|&b| b != b'\r' && b != b'\n') {
                        return Err("chunk data not followed by CRLF");
                    }
                    if read.first() == Some(&b'\n') {
                        read.advance(1);
                        *state = Chunked::Size;
                        continue;
                    }
                    return Ok(Step::NeedMore);
                }
                match &read[..2] {
                    b"\r\n" => read.advance(2),
                    [b'\n', _] => read.advance(1),
                    _ => return Err("chunk data not followed by CRLF"),
                }
                *state = Chunked::Size;
            }
            Chunked::Trailers => {
                // The trailer section ends with an empty line; with no fields that is the
                // first line.
                if read.starts_with(b"\r\n") {
                    read.advance(2);
                    *state = Chunked::End;
                    return Ok(Step::End);
                }
                if read.starts_with(b"\n") {
                    read.advance(1);
                    *state = Chunked::End;
                    return Ok(Step::End);
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
                match httparse::parse_headers(read, &mut fields) {
                    Ok(httparse::Status::Complete((len, parsed))) => {
                        let mut trailers = HeaderMap::with_capacity(parsed.len());
                        for f in parsed {
                            if let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) {
                                trailers.append(name, value);
                            }
                        }
                        read.advance(len);
                        *state = Chunked::End;
                        return Ok(if trailers.is_empty() {
                            Step::End
                        } else {
                            Step::Frame(Frame::trailers(trailers))
                        });
                    }
                    Ok(httparse::Status::Partial) => {
                        if read.len() > MAX_TRAILER_BYTES {
                            return Err("trailer section too large");
                        }
                        return Ok(Step::NeedMore);
                    }
                    Err(_) => return Err("malformed trailer field"),
                }
            }
        }
    }
}

/// Appends one data frame, chunk-encoded when asked.
pub(crate) fn encode_data(out: &mut BytesMut, data: Bytes, chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        put_size_line(out, data.len());
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(&data);
    }
}

/// Appends a chunk-size line: `len` in lower-case hex, then CRLF.
pub(crate) fn put_size_line(out: &mut BytesMut, mut len: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = DIGITS[len & 0xf];
        len >>= 4;
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Decodes `input` fed `step` bytes at a time; returns the data and trailers.
    fn decode_in_pieces(
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), &'static str> {
        let mut state = Chunked::Size;
        let mut read = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match decode(&mut state, &mut read)? {
                Step::Frame(frame) => match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Step::End => return Ok((data, trailers)),
                Step::NeedMore => {
                    assert!(fed < input.len(), "decoder wants more than the input");
                    let end = (fed + step).min(input.len());
                    read.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let input = b"4;name=value\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nx-check: 1\r\n\r\n";
        for step in [1, 2, 3, 7, input.len()] {
            let (data, trailers) = decode_in_pieces(input, step).unwrap();
            assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.", "step {step}");
            assert_eq!(trailers.unwrap()["x-check"], "1", "step {step}");
        }
        let (data, trailers) = decode_in_pieces(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
    }

    /// Mutated chunked bodies never panic the decoder, whatever the read boundaries.
    #[test]
    fn mutated_bodies_never_panic() {
        let seed = b"4;ext=\"v\"\r\nWiki\r\n5\r\npedia\r\n0\r\nx-a: 1\r\n\r\n";
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut bytes = seed.to_vec();
            crate::testing::mutate(&mut rng, &mut bytes, b"\r\n;0fF \t:");
            let mut state = Chunked::Size;
            let mut read = BytesMut::new();
            let mut fed = 0;
            loop {
                match decode(&mut state, &mut read) {
                    Ok(Step::Frame(_)) => {}
                    Ok(Step::End) | Err(_) => break,
                    Ok(Step::NeedMore) if fed == bytes.len() => break,
                    Ok(Step::NeedMore) => {
                        let end = (fed + rng.usize(1..8)).min(bytes.len());
                        read.extend_from_slice(&bytes[fed..end]);
                        fed = end;
                    }
                }
            }
        }
    }

    #[test]
    fn size_lines_are_hex() {
        let mut out = BytesMut::new();
        for n in [0, 9, 10, 255, 4096, usize::MAX] {
            put_size_line(&mut out, n);
        }
        assert_eq!(
            &out[..],
            b"0\r\n9\r\na\r\nff\r\n1000\r\nffffffffffffffff\r\n"
        );
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"\r\n",
            b"ffffffffffffffff\r\n",
        ] {
            assert!(
                decode_in_pieces(bad, 1).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_line = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_in_pieces(&long_line, 64).is_err());
    }
}
