//! Encoding the field blocks Sluice sends.
//!
//! Every field goes out as a literal that is not indexed (RFC 7541 §6.2.2), or never indexed
//! (§6.2.3) when it is sensitive, with its name taken from the static table when it is there.
//! Strings are raw, not Huffman-coded. The peer's dynamic table is never touched, so an
//! encoder has no state and a block can be written from any task. nginx encodes answers the
//! same way, except that it Huffman-codes strings when that makes them shorter.

use bytes::BufMut;

use super::write_integer;

/// Appends `:status` (an index when the static table has the code).
pub fn status(out: &mut impl BufMut, code: u16) {
    let index = match code {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => 0,
    };
    if index != 0 {
        out.put_u8(0x80 | index);
        return;
    }
    // Literal without indexing, name `:status` (index 8), three digits.
    let digits = [
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ];
    out.put_slice(&[0x08, 3]);
    out.put_slice(&digits);
}

/// Appends one field. The name is written in lowercase, as HTTP/2 requires (RFC 9113
/// §8.2.1); it must otherwise be a valid field name and the value a valid field value.
pub fn field(out: &mut impl BufMut, name: &[u8], value: &[u8], sensitive: bool) {
    let high = if sensitive { 0x10 } else { 0x00 };
    match static_name_index(name) {
        Some(index) => write_integer(out, high, 4, index),
        None => {
            out.put_u8(high);
            write_integer(out, 0, 7, name.len());
            for &b in name {
                out.put_u8(b.to_ascii_lowercase());
            }
        }
    }
    write_integer(out, 0, 7, value.len());
    out.put_slice(value);
}

/// The static table's index of a field name, in any case.
fn static_name_index(name: &[u8]) -> Option<usize> {
    let mut lower = [0u8; 32];
    let lower = lower.get_mut(..name.len())?;
    for (l, b) in lower.iter_mut().zip(name) {
        *l = b.to_ascii_lowercase();
    }
    let index = match &*lower {
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    };
    Some(index)
}

#[cfg(test)]
mod tests {
    use super::super::Decoder;
    use super::super::table::STATIC;
    use super::*;

    fn decoded(block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>, bool)> {
        let mut out = Vec::new();
        Decoder::new(4096)
            .decode(block, |f| {
                out.push((f.name.to_vec(), f.value.to_vec(), f.sensitive))
            })
            .unwrap();
        out
    }

    #[test]
    fn every_status_code_round_trips() {
        for code in 100..=999 {
            let mut block = Vec::new();
            status(&mut block, code);
            let fields = decoded(&block);
            assert_eq!(fields.len(), 1);
            assert_eq!(fields[0].0, b":status");
            assert_eq!(fields[0].1, code.to_string().as_bytes());
        }
        let mut block = Vec::new();
        status(&mut block, 200);
        assert_eq!(block, [0x88]);
    }

    #[test]
    fn names_come_out_lowercase_and_indexed_when_the_static_table_has_them() {
        let mut block = Vec::new();
        field(&mut block, b"Content-Type", b"text/html", false);
        assert_eq!(block, b"\x0f\x10\x09text/html");
        for (i, (name, _)) in STATIC.iter().enumerate().skip(14) {
            assert_eq!(static_name_index(name), Some(i + 1), "{name:?}");
        }
        let long_value = vec![b'v'; 300];
        let mut block = Vec::new();
        field(&mut block, b"X-Custom-Field", b"A b", false);
        field(&mut block, b"Set-Cookie", b"id=1", true);
        field(&mut block, b"x-long", &long_value, false);
        assert_eq!(
            decoded(&block),
            [
                (b"x-custom-field".to_vec(), b"A b".to_vec(), false),
                (b"set-cookie".to_vec(), b"id=1".to_vec(), true),
                (b"x-long".to_vec(), long_value, false),
            ]
        );
    }
}
