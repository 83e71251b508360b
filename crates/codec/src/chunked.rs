//! Chunked transfer coding (RFC 9112 §7.1), both ways: decoding bodies that arrive chunked
//! (responses from instances, requests from clients) a step at a time over whatever bytes have
//! been read, and encoding data frames.
//!
//! Limits: chunk-size lines of at most [`MAX_CHUNK_LINE`] bytes and a trailer section of at
//! most [`MAX_TRAILER_BYTES`]; beyond them the body is malformed.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

use crate::fields;

/// Longest chunk-size line (size, extensions, CRLF) accepted.
pub const MAX_CHUNK_LINE: usize = 1024;
/// Largest trailer section accepted.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most trailer fields accepted.
const MAX_TRAILERS: usize = 100;

/// Position in a chunked body.
#[derive(Debug)]
pub enum Chunked {
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
#[derive(Debug)]
pub enum Step {
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    NeedMore,
    End,
}

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk-size line longer than {MAX_CHUNK_LINE} bytes")]
    LineTooLong,
    #[error("invalid chunk size")]
    Size,
    #[error("chunk line not ended by CRLF")]
    LineEnd,
    #[error("invalid chunk extension")]
    Extension,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("trailer section larger than {MAX_TRAILER_BYTES} bytes")]
    TrailersTooLarge,
    #[error("malformed trailer section")]
    Trailer,
}

/// One step of chunked decoding over the bytes read so far. Line ends are CRLF only: a bare LF
/// is an error, as is anything but chunk extensions after the size (RFC 9112 §7.1).
pub fn decode(state: &mut Chunked, read: &mut BytesMut) -> Result<Step, ChunkError> {
    loop {
        match state {
            Chunked::End => return Ok(Step::End),
            Chunked::Size => {
                let Some((size, line_len)) = size_line(read)? else {
                    return Ok(Step::NeedMore);
                };
                read.advance(line_len);
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
                if !b"\r\n".starts_with(&read[..read.len().min(2)]) {
                    return Err(ChunkError::DataEnd);
                }
                if read.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                read.advance(2);
                *state = Chunked::Size;
            }
            Chunked::Trailers => return trailers(state, read),
        }
    }
}

/// A complete chunk-size line at the start of `read`: the size and the line's length with its
/// CRLF. `None`: the line is not complete yet.
pub fn size_line(read: &[u8]) -> Result<Option<(u64, usize)>, ChunkError> {
    let Some(eol) = read.iter().position(|&b| b == b'\n') else {
        if read.len() > MAX_CHUNK_LINE {
            return Err(ChunkError::LineTooLong);
        }
        return Ok(None);
    };
    if eol > MAX_CHUNK_LINE {
        return Err(ChunkError::LineTooLong);
    }
    let line = read[..eol].strip_suffix(b"\r").ok_or(ChunkError::LineEnd)?;
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    // 15 hex digits: sizes below 2^60, no overflow.
    if digits_end == 0 || digits_end > 15 {
        return Err(ChunkError::Size);
    }
    if !extensions_valid(&line[digits_end..]) {
        return Err(if line[digits_end..].contains(&b'\r') {
            ChunkError::LineEnd
        } else {
            ChunkError::Extension
        });
    }
    let size = line[..digits_end].iter().fold(0u64, |n, &d| {
        n * 16 + u64::from((d as char).to_digit(16).unwrap_or(0))
    });
    Ok(Some((size, eol + 1)))
}

/// Whether `ext` is a list of chunk extensions: `*( BWS ";" BWS name [ BWS "=" BWS value ] )`,
/// names tokens, values tokens or quoted strings (RFC 9112 §7.1.1).
fn extensions_valid(mut ext: &[u8]) -> bool {
    let skip_ws =
        |s: &[u8]| -> usize { s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count() };
    while !ext.is_empty() {
        ext = &ext[skip_ws(ext)..];
        let Some(rest) = ext.strip_prefix(b";") else {
            return false;
        };
        ext = &rest[skip_ws(rest)..];
        let name = token_len(ext);
        if name == 0 {
            return false;
        }
        ext = &ext[name..];
        let ws = skip_ws(ext);
        if let Some(rest) = ext[ws..].strip_prefix(b"=") {
            let rest = &rest[skip_ws(rest)..];
            let value = match rest.first() {
                Some(b'"') => quoted_len(rest),
                _ => token_len(rest),
            };
            if value == 0 {
                return false;
            }
            ext = &rest[value..];
        }
    }
    true
}

/// Length of the token (RFC 9110 §5.6.2) at the start of `s`.
fn token_len(s: &[u8]) -> usize {
    s.iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        .count()
}

/// Length of the quoted string (RFC 9110 §5.6.4) at the start of `s`, quotes included; 0 when
/// it is not one.
fn quoted_len(s: &[u8]) -> usize {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return i + 1,
            b'\\'
                if s.get(i + 1)
                    .is_some_and(|&b| b == b'\t' || b >= 0x20 && b != 0x7f) =>
            {
                i += 2
            }
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => i += 1,
            _ => return 0,
        }
    }
    0
}

/// The trailer section after the last chunk, up to its empty line; every line CRLF-ended.
fn trailers(state: &mut Chunked, read: &mut BytesMut) -> Result<Step, ChunkError> {
    // The trailer section ends with an empty line; with no fields that is the first line.
    if read.starts_with(b"\r\n") {
        read.advance(2);
        *state = Chunked::End;
        return Ok(Step::End);
    }
    if read.len() < 2 && b"\r".starts_with(&read[..]) {
        return Ok(Step::NeedMore);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    match httparse::parse_headers(read, &mut fields) {
        Ok(httparse::Status::Complete((len, parsed))) => {
            let bare_lf = read[..len]
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'\n' && (i == 0 || read[i - 1] != b'\r'));
            if bare_lf {
                return Err(ChunkError::LineEnd);
            }
            let mut trailers = HeaderMap::with_capacity(parsed.len());
            let allowed = parsed
                .iter()
                .filter(|f| !fields::forbidden_in_trailers(f.name.as_bytes()));
            for f in allowed {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(f.name.as_bytes()),
                    HeaderValue::from_bytes(f.value),
                ) {
                    trailers.append(name, value);
                }
            }
            read.advance(len);
            *state = Chunked::End;
            Ok(if trailers.is_empty() {
                Step::End
            } else {
                Step::Frame(Frame::trailers(trailers))
            })
        }
        Ok(httparse::Status::Partial) if read.len() > MAX_TRAILER_BYTES => {
            Err(ChunkError::TrailersTooLarge)
        }
        Ok(httparse::Status::Partial) => Ok(Step::NeedMore),
        Err(_) => Err(ChunkError::Trailer),
    }
}

/// Appends one data frame, chunk-encoded when asked.
pub fn encode_data(out: &mut BytesMut, data: Bytes, chunked: bool) {
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
pub fn put_size_line(out: &mut BytesMut, mut len: usize) {
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
    ) -> Result<(Vec<u8>, Option<HeaderMap>), ChunkError> {
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

    /// Framing, routing and hop-by-hop fields never come out of a trailer section.
    #[test]
    fn trailers_that_would_reframe_or_reroute_are_dropped() {
        let input = b"2\r\nok\r\n0\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\
                      Host: evil\r\nSet-Cookie: a=1\r\nX-Digest: abc\r\n\r\n";
        let (data, trailers) = decode_in_pieces(input, input.len()).unwrap();
        assert_eq!(data, b"ok");
        let trailers = trailers.unwrap();
        assert_eq!(trailers.len(), 1, "{trailers:?}");
        assert_eq!(trailers["x-digest"], "abc");
        // Only forbidden fields: the body simply ends.
        let (_, trailers) = decode_in_pieces(b"0\r\nHost: evil\r\n\r\n", 1).unwrap();
        assert_eq!(trailers, None);
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
        assert_eq!(
            decode_in_pieces(&long_line, 64).unwrap_err(),
            ChunkError::LineTooLong
        );
    }

    /// RFC 9112 §7.1: CRLF ends every line, extensions follow their grammar. A proxy in front
    /// that reads these differently would desynchronise from Sluice.
    #[test]
    fn lenient_shapes_are_refused() {
        let cases: [(&[u8], ChunkError); 12] = [
            (b"5\nhello\r\n0\r\n\r\n", ChunkError::LineEnd),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::DataEnd),
            (b"5\r\nhello\r\n0\n\r\n", ChunkError::LineEnd),
            (b"5\r\nhello\r\n0\r\n\n", ChunkError::LineEnd),
            (b"5\r\nhello\r\n0\r\nx-a: 1\n\r\n", ChunkError::LineEnd),
            (b"5;a\x00b\r\nhello\r\n0\r\n\r\n", ChunkError::Extension),
            (b"5;a\rb\r\nhello\r\n0\r\n\r\n", ChunkError::LineEnd),
            (b"5;\r\nhello\r\n0\r\n\r\n", ChunkError::Extension),
            (b"5 \r\nhello\r\n0\r\n\r\n", ChunkError::Extension),
            (b"5;a=\"x\r\nhello\r\n0\r\n\r\n", ChunkError::Extension),
            (b"0x5\r\nhello\r\n0\r\n\r\n", ChunkError::Extension),
            (b"1000000000000000\r\n", ChunkError::Size),
        ];
        for (input, error) in cases {
            for step in [1, input.len()] {
                assert_eq!(
                    decode_in_pieces(input, step).unwrap_err(),
                    error,
                    "{}",
                    String::from_utf8_lossy(input)
                );
            }
        }
        for good in [
            &b"5;a\r\nhello\r\n0\r\n\r\n"[..],
            b"5 ; a = b ;c=\"q \\\" \"\r\nhello\r\n0;last\r\n\r\n",
            b"5\t;a=b\r\nhello\r\n0\r\n\r\n",
        ] {
            let (data, _) = decode_in_pieces(good, 1).unwrap();
            assert_eq!(data, b"hello", "{}", String::from_utf8_lossy(good));
        }
    }
}
