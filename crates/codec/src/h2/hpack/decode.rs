//! Decoding the field blocks a peer sends (RFC 7541 §6).

use super::table::Dynamic;
use super::{HpackError, Str, read_integer, read_string};

/// One decoded field. `sensitive` marks a field the sender asked never to be indexed
/// (RFC 7541 §6.2.3): whoever passes it on must keep it out of compression tables too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub sensitive: bool,
}

/// One connection's decoding state: the dynamic table the peer's encoder fills.
#[derive(Debug)]
pub struct Decoder {
    table: Dynamic,
    /// Huffman-decoded strings of the field being decoded.
    scratch: Vec<u8>,
}

/// How a field representation names its field and whether it enters the table.
enum Literal {
    Indexing,
    NotIndexing,
    NeverIndexed,
}

impl Decoder {
    /// A decoder allowing the peer a dynamic table of up to `table_size` bytes (the
    /// SETTINGS_HEADER_TABLE_SIZE this side sent).
    pub fn new(table_size: usize) -> Self {
        Self {
            table: Dynamic::new(table_size),
            scratch: Vec::new(),
        }
    }

    /// Decodes one whole field block (a HEADERS frame and its CONTINUATIONs), handing each
    /// field to `emit` in order. The block is always decoded to its end, so the table stays
    /// in step even when the caller refuses what it holds; after an error it cannot be.
    ///
    /// The caller bounds what it keeps (SETTINGS_MAX_HEADER_LIST_SIZE): a block of one-byte
    /// references to one large table entry expands a thousandfold, so `emit` must count, not
    /// collect blindly. Only a field that enters the dynamic table allocates (its entry).
    pub fn decode(
        &mut self,
        block: &[u8],
        mut emit: impl FnMut(Field<'_>),
    ) -> Result<(), HpackError> {
        let mut rest = block;
        let mut fields_seen = false;
        while let Some(&first) = rest.first() {
            let taken = if first & 0x80 != 0 {
                let (index, taken) = read_integer(rest, 7)?;
                let (name, value) = self.table.get(index)?;
                emit(Field {
                    name,
                    value,
                    sensitive: false,
                });
                taken
            } else if first & 0xe0 == 0x20 {
                if fields_seen {
                    return Err(HpackError::LateTableSizeUpdate);
                }
                let (size, taken) = read_integer(rest, 5)?;
                self.table.resize(size)?;
                rest = &rest[taken..];
                continue;
            } else if first & 0xc0 == 0x40 {
                self.literal(rest, 6, Literal::Indexing, &mut emit)?
            } else if first & 0xf0 == 0x10 {
                self.literal(rest, 4, Literal::NeverIndexed, &mut emit)?
            } else {
                self.literal(rest, 4, Literal::NotIndexing, &mut emit)?
            };
            fields_seen = true;
            rest = &rest[taken..];
        }
        Ok(())
    }

    /// A literal field representation (RFC 7541 §6.2) with an `n`-bit name index prefix;
    /// returns the bytes it took.
    fn literal(
        &mut self,
        input: &[u8],
        n: u8,
        kind: Literal,
        emit: &mut impl FnMut(Field<'_>),
    ) -> Result<usize, HpackError> {
        self.scratch.clear();
        let (index, mut taken) = read_integer(input, n)?;
        let new_name = if index == 0 {
            let (name, len) = read_string(&input[taken..], &mut self.scratch)?;
            let name = offset(name, taken);
            taken += len;
            Some(name)
        } else {
            None
        };
        let (value, len) = read_string(&input[taken..], &mut self.scratch)?;
        let value = offset(value, taken);
        taken += len;
        let name = match &new_name {
            Some(s) => self.bytes(input, s),
            None => self.table.get(index)?.0,
        };
        let value = self.bytes(input, &value);
        emit(Field {
            name,
            value,
            sensitive: matches!(kind, Literal::NeverIndexed),
        });
        if matches!(kind, Literal::Indexing) {
            // The name may be the table's own entry: both are copied out before it changes.
            let name_len = name.len();
            self.table.insert([name, value].concat(), name_len);
        }
        Ok(taken)
    }

    fn bytes<'a>(&'a self, input: &'a [u8], s: &Str) -> &'a [u8] {
        match *s {
            Str::Raw { start, end } => &input[start..end],
            Str::Decoded { start, end } => &self.scratch[start..end],
        }
    }
}

/// A string read from `input[at..]`, placed relative to `input`.
fn offset(s: Str, at: usize) -> Str {
    match s {
        Str::Raw { start, end } => Str::Raw {
            start: start + at,
            end: end + at,
        },
        decoded => decoded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut fields = Vec::new();
        d.decode(block, |f| {
            fields.push((
                String::from_utf8_lossy(f.name).into_owned(),
                String::from_utf8_lossy(f.value).into_owned(),
            ));
        })?;
        Ok(fields)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_rfcs_requests_decode_raw_and_huffman_coded() {
        // RFC 7541 C.3 (raw strings) and C.4 (Huffman): three requests on one connection.
        let raw: [&[u8]; 3] = [
            b"\x82\x86\x84\x41\x0fwww.example.com",
            b"\x82\x86\x84\xbe\x58\x08no-cache",
            b"\x82\x87\x85\xbf\x40\x0acustom-key\x0ccustom-value",
        ];
        let huffman: [&[u8]; 3] = [
            &[
                0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
                0x90, 0xf4, 0xff,
            ],
            &[
                0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
            ],
            &[
                0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f,
                0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
            ],
        ];
        let expected = [
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ]),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ]),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ]),
        ];
        for blocks in [raw, huffman] {
            let mut d = Decoder::new(4096);
            for (block, want) in blocks.iter().zip(&expected) {
                assert_eq!(decode_all(&mut d, block).unwrap(), *want);
            }
            // The table ends as the RFC shows it: three entries, 164 bytes.
            assert_eq!((d.table.len(), d.table.size()), (3, 164));
        }
    }

    #[test]
    fn never_indexed_fields_are_marked_and_kept_out_of_the_table() {
        // RFC 7541 C.2.3: "password: secret", never indexed.
        let mut d = Decoder::new(4096);
        let mut seen = Vec::new();
        d.decode(b"\x10\x08password\x06secret", |f| {
            seen.push((f.name.to_vec(), f.value.to_vec(), f.sensitive))
        })
        .unwrap();
        assert_eq!(seen, [(b"password".to_vec(), b"secret".to_vec(), true)]);
        assert_eq!(d.table.len(), 0);
    }

    #[test]
    fn size_updates_are_honoured_only_within_the_limit_and_at_the_start() {
        let mut d = Decoder::new(4096);
        decode_all(&mut d, b"\x41\x0fwww.example.com").unwrap();
        assert_eq!(d.table.len(), 1);
        // Size 0 empties the table; then back to 4096 and index the entry again.
        assert_eq!(
            decode_all(&mut d, b"\x20\x3f\xe1\x1f\x82").unwrap().len(),
            1
        );
        assert_eq!(d.table.len(), 0);
        assert_eq!(
            decode_all(&mut d, b"\x3f\xe2\x1f"),
            Err(HpackError::TableSizeTooLarge(4097))
        );
        assert_eq!(
            decode_all(&mut Decoder::new(4096), b"\x82\x20"),
            Err(HpackError::LateTableSizeUpdate)
        );
    }

    #[test]
    fn broken_blocks_are_errors() {
        let mut d = Decoder::new(4096);
        assert_eq!(decode_all(&mut d, b"\x80"), Err(HpackError::BadIndex(0)));
        assert_eq!(decode_all(&mut d, b"\xbe"), Err(HpackError::BadIndex(62)));
        // A literal whose value runs past the block.
        assert_eq!(
            decode_all(&mut d, b"\x40\x01a\x05ab"),
            Err(HpackError::Truncated)
        );
        assert_eq!(decode_all(&mut d, b"\x40"), Err(HpackError::Truncated));
        // Huffman-coded value whose padding is zeros.
        assert_eq!(
            decode_all(&mut d, b"\x04\x81\x00"),
            Err(HpackError::Huffman)
        );
    }
}
