//! The Huffman code of HPACK (RFC 7541 §5.2, Appendix B), decoding only: Sluice writes its own
//! string literals raw.
//!
//! The code is canonical — codes of one length are consecutive numbers in symbol order, and
//! each length's first code follows on from the last code of the length before — so the table
//! below (each symbol's code length) is all there is to it. Decoding looks the next 8 bits up
//! in a 256-entry table for the short codes every ASCII letter, digit and common punctuation
//! has, and walks the lengths for the rest.

use super::HpackError;

/// Code length in bits of each symbol, 0–255 and EOS (256), from RFC 7541 Appendix B.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// The canonical code's layout, built once at compile time.
struct Code {
    /// Symbols ordered by (code length, symbol): the order codes are handed out in.
    sorted: [u16; 257],
    /// Per length: the first code of that length, where its symbols start in `sorted`, and
    /// how many there are.
    first: [u32; MAX_LEN + 1],
    start: [u16; MAX_LEN + 1],
    count: [u16; MAX_LEN + 1],
    /// Per next byte of input: the symbol and length of a code of 8 bits or fewer that the
    /// byte begins with, as `len << 9 | symbol`, or 0 when the code is longer.
    by_byte: [u16; 256],
}

const CODE: Code = build();

const fn build() -> Code {
    let mut count = [0u16; MAX_LEN + 1];
    let mut s = 0;
    while s < 257 {
        count[CODE_LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let mut first = [0u32; MAX_LEN + 1];
    let mut start = [0u16; MAX_LEN + 1];
    let mut code = 0u32;
    let mut index = 0u16;
    let mut len = 1;
    while len <= MAX_LEN {
        code <<= 1;
        first[len] = code;
        start[len] = index;
        code += count[len] as u32;
        index += count[len];
        len += 1;
    }
    let mut sorted = [0u16; 257];
    let mut filled = start;
    let mut s = 0;
    while s < 257 {
        let len = CODE_LENGTHS[s] as usize;
        sorted[filled[len] as usize] = s as u16;
        filled[len] += 1;
        s += 1;
    }
    let mut by_byte = [0u16; 256];
    let mut len = 1;
    while len <= 8 {
        let mut i = 0;
        while i < count[len] {
            let code = first[len] + i as u32;
            let symbol = sorted[(start[len] + i) as usize];
            // Every byte whose top `len` bits are this code.
            let spread = 1u32 << (8 - len);
            let mut low = 0;
            while low < spread {
                by_byte[((code << (8 - len)) | low) as usize] = ((len as u16) << 9) | symbol;
                low += 1;
            }
            i += 1;
        }
        len += 1;
    }
    Code {
        sorted,
        first,
        start,
        count,
        by_byte,
    }
}

/// Appends the decoding of `input` to `out`. Fails on the EOS symbol, on padding longer than
/// 7 bits, and on padding that is not the most significant bits of EOS (all ones).
pub(crate) fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    out.reserve(input.len() + input.len() / 2);
    // Bits not yet decoded, most significant first, in the low `bits` bits of `acc`.
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    let mut bytes = input.iter();
    loop {
        while bits <= 56 {
            match bytes.next() {
                Some(&b) => {
                    acc = (acc << 8) | u64::from(b);
                    bits += 8;
                }
                None => break,
            }
        }
        if bits == 0 {
            return Ok(());
        }
        match next_symbol(acc, bits) {
            Some((symbol, len)) => {
                if symbol == EOS {
                    return Err(HpackError::Huffman);
                }
                // `symbol` < 256 here.
                out.push(symbol as u8);
                bits -= len;
                acc &= (1u64 << bits) - 1;
            }
            // What is left is no whole code: it must be padding.
            None => return padding(acc, bits),
        }
    }
}

/// The symbol and code length at the top of the `bits` bits in `acc`, if a whole code is there.
fn next_symbol(acc: u64, bits: u32) -> Option<(u16, u32)> {
    if bits >= 8 {
        let entry = CODE.by_byte[((acc >> (bits - 8)) & 0xff) as usize];
        if entry != 0 {
            return Some((entry & 0x1ff, u32::from(entry >> 9)));
        }
    }
    for len in 5..=MAX_LEN.min(bits as usize) {
        let code = ((acc >> (bits - len as u32)) & ((1u64 << len) - 1)) as u32;
        let offset = code.wrapping_sub(CODE.first[len]);
        if offset < u32::from(CODE.count[len]) {
            let symbol = CODE.sorted[(CODE.start[len] as u32 + offset) as usize];
            return Some((symbol, len as u32));
        }
    }
    None
}

/// The bits after the last symbol: fewer than 8, all ones (RFC 7541 §5.2).
fn padding(acc: u64, bits: u32) -> Result<(), HpackError> {
    if bits < 8 && acc == (1u64 << bits) - 1 {
        Ok(())
    } else {
        Err(HpackError::Huffman)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes with the same canonical code, to check the decoder against every symbol.
    fn encode(input: &[u8]) -> Vec<u8> {
        let mut acc: u64 = 0;
        let mut bits = 0u32;
        let mut out = Vec::new();
        for &b in input {
            let len = u32::from(CODE_LENGTHS[b as usize]);
            let index = CODE.sorted[CODE.start[len as usize] as usize..]
                .iter()
                .position(|&s| s == u16::from(b))
                .expect("symbol of this length") as u32;
            acc = (acc << len) | u64::from(CODE.first[len as usize] + index);
            bits += len;
            while bits >= 8 {
                out.push((acc >> (bits - 8)) as u8);
                bits -= 8;
            }
            acc &= (1u64 << bits) - 1;
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
        }
        out
    }

    #[test]
    fn the_rfcs_examples_decode() {
        // RFC 7541 C.4.1 and C.6.1: "www.example.com" and "Mon, 21 Oct 2013 20:13:21 GMT".
        let mut out = Vec::new();
        decode(
            &[
                0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
            ],
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"www.example.com");
        assert_eq!(encode(b"no-cache"), [0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]);
        assert_eq!(encode(b"302"), [0x64, 0x02]);
    }

    #[test]
    fn every_byte_value_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        for chunk in [&all[..], b"", b"a", b"\xff\xfe\x00", b"/index.html?q=1"] {
            let mut out = Vec::new();
            decode(&encode(chunk), &mut out).unwrap();
            assert_eq!(out, chunk);
        }
        for b in 0..=255u8 {
            let mut out = Vec::new();
            decode(&encode(&[b, b, b]), &mut out).unwrap();
            assert_eq!(out, [b, b, b]);
        }
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        // 'a' is 00011 (5 bits): padded with 111 is right, with 000 or a whole byte of ones not.
        let mut out = Vec::new();
        assert!(decode(&[0b0001_1111], &mut out).is_ok());
        assert_eq!(out, b"a");
        assert_eq!(decode(&[0b0001_1000], &mut out), Err(HpackError::Huffman));
        assert_eq!(
            decode(&[0b0001_1111, 0xff], &mut out),
            Err(HpackError::Huffman)
        );
        // EOS itself: thirty ones.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xfc], &mut out),
            Err(HpackError::Huffman)
        );
    }
}
