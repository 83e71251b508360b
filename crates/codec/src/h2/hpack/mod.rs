//! HPACK, HTTP/2's field compression (RFC 7541).
//!
//! - [`Decoder`] reads the field blocks a client sends: every representation, Huffman-coded or
//!   raw strings, and the dynamic table the client fills. A block that breaks the format is a
//!   connection error (COMPRESSION_ERROR): the table can no longer be trusted.
//! - [`encode`] writes the blocks Sluice sends. It never adds to the client's dynamic table and
//!   writes strings raw, so encoding an answer's head is a copy of its bytes with a few prefix
//!   bytes — no hashing, no Huffman coding, no table to keep in step.
//!
//! Layers: [`huffman`] and the integer and string primitives here; [`table`] over them;
//! [`decode`] and [`encode`] over those.

use bytes::BufMut;

mod decode;
pub mod encode;
mod huffman;
mod table;

pub use decode::{Decoder, Field};
pub use table::DEFAULT_TABLE_SIZE;

/// Why a field block cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("field block ends inside a representation")]
    Truncated,
    #[error("integer too large")]
    IntegerOverflow,
    #[error("invalid Huffman-coded string")]
    Huffman,
    #[error("index {0} is in neither table")]
    BadIndex(usize),
    #[error("dynamic table size update to {0}, beyond the size allowed")]
    TableSizeTooLarge(usize),
    #[error("dynamic table size update after the first field")]
    LateTableSizeUpdate,
}

/// Largest integer accepted: far above any index, length or table size Sluice allows, and
/// small enough that the arithmetic below cannot overflow.
const MAX_INTEGER: usize = 1 << 28;

/// Reads an integer with an `n`-bit prefix (RFC 7541 §5.1) at the start of `input`; returns it
/// and the bytes it took.
fn read_integer(input: &[u8], n: u8) -> Result<(usize, usize), HpackError> {
    let first = *input.first().ok_or(HpackError::Truncated)?;
    let mask = (1u16 << n) as usize - 1;
    let mut value = usize::from(first) & mask;
    if value < mask {
        return Ok((value, 1));
    }
    let mut shift = 0;
    for (i, &b) in input.iter().enumerate().skip(1) {
        // Zero continuation bytes add nothing, but may not go on for ever either.
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
        value += usize::from(b & 0x7f) << shift;
        if value > MAX_INTEGER {
            return Err(HpackError::IntegerOverflow);
        }
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
        shift += 7;
    }
    Err(HpackError::Truncated)
}

/// Appends `value` with an `n`-bit prefix; `high` holds the bits above the prefix in the first
/// byte.
fn write_integer(out: &mut impl BufMut, high: u8, n: u8, mut value: usize) {
    let mask = (1u16 << n) as usize - 1;
    if value < mask {
        out.put_u8(high | value as u8);
        return;
    }
    out.put_u8(high | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.put_u8((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Where a string literal's bytes are: in the field block (raw) or in the decoder's scratch
/// buffer (Huffman-coded in the block).
enum Str {
    Raw { start: usize, end: usize },
    Decoded { start: usize, end: usize },
}

/// The string literal (RFC 7541 §5.2) at the start of `input`, and how much input it took.
fn read_string(input: &[u8], scratch: &mut Vec<u8>) -> Result<(Str, usize), HpackError> {
    let huffman = input.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let (len, taken) = read_integer(input, 7)?;
    let end = taken.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = input.get(taken..end).ok_or(HpackError::Truncated)?;
    if !huffman {
        return Ok((Str::Raw { start: taken, end }, end));
    }
    let start = scratch.len();
    huffman::decode(raw, scratch)?;
    let end_decoded = scratch.len();
    Ok((
        Str::Decoded {
            start,
            end: end_decoded,
        },
        end,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_the_rfcs_examples() {
        // RFC 7541 C.1: 10 in a 5-bit prefix, 1337 in a 5-bit prefix, 42 in an 8-bit one.
        let mut out = Vec::new();
        write_integer(&mut out, 0, 5, 10);
        assert_eq!(out, [0x0a]);
        out.clear();
        write_integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        assert_eq!(read_integer(&out, 5), Ok((1337, 3)));
        out.clear();
        write_integer(&mut out, 0, 8, 42);
        assert_eq!(out, [42]);
        for n in 1..=8 {
            for value in [0, 1, 30, 31, 127, 128, 255, 256, 16_383, 1 << 20] {
                out.clear();
                write_integer(&mut out, 0, n, value);
                assert_eq!(
                    read_integer(&out, n),
                    Ok((value, out.len())),
                    "{value} in {n} bits"
                );
            }
        }
    }

    #[test]
    fn integers_that_never_end_or_overflow_are_refused() {
        assert_eq!(
            read_integer(&[0x1f, 0xff, 0xff], 5),
            Err(HpackError::Truncated)
        );
        assert_eq!(read_integer(&[], 5), Err(HpackError::Truncated));
        let long = [0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert_eq!(read_integer(&long, 5), Err(HpackError::IntegerOverflow));
        let mut zeros = vec![0x1f];
        zeros.extend([0x80; 40]);
        zeros.push(0x01);
        assert_eq!(read_integer(&zeros, 5), Err(HpackError::IntegerOverflow));
    }
}
