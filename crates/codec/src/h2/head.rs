//! The fields of one HTTP/2 request head, or of its trailers, as decoded from a field block and
//! checked as RFC 9113 §8.2–§8.3 asks: lowercase names of token characters, values without
//! NUL, CR, LF or other controls and without leading or trailing whitespace, pseudo-fields
//! first, each once and only those a request has, no connection-specific fields, `te` only as
//! `trailers`, and the pseudo-fields a request needs. A request that breaks any of these is
//! malformed (a stream error, PROTOCOL_ERROR); one whose list is larger than the limit is
//! refused whole, however it is compressed.

use std::ops::Range;

use super::hpack::Field;

/// What each field costs against SETTINGS_MAX_HEADER_LIST_SIZE beyond its bytes (RFC 9113
/// §6.5.2, the same as HPACK's entry overhead).
const FIELD_OVERHEAD: usize = 32;

/// Why a field list was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("field list larger than SETTINGS_MAX_HEADER_LIST_SIZE")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// One field's name and value in the head's buffer.
#[derive(Debug, Clone)]
struct Span {
    name: Range<usize>,
    value: Range<usize>,
    sensitive: bool,
}

/// A checked request head (or trailer section): pseudo-fields apart, the rest in order.
#[derive(Debug, Default, Clone)]
pub struct Head {
    buf: Vec<u8>,
    fields: Vec<Span>,
    /// `:method`, `:scheme`, `:authority`, `:path`.
    pseudo: [Option<Range<usize>>; 4],
}

const METHOD: usize = 0;
const SCHEME: usize = 1;
const AUTHORITY: usize = 2;
const PATH: usize = 3;

impl Head {
    pub fn method(&self) -> &[u8] {
        self.pseudo_field(METHOD).unwrap_or_default()
    }

    pub fn scheme(&self) -> Option<&[u8]> {
        self.pseudo_field(SCHEME)
    }

    pub fn authority(&self) -> Option<&[u8]> {
        self.pseudo_field(AUTHORITY)
    }

    pub fn path(&self) -> Option<&[u8]> {
        self.pseudo_field(PATH)
    }

    /// The regular fields in the order received: name, value, and whether the client sent
    /// it never-indexed.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8], bool)> {
        self.fields.iter().map(|s| {
            (
                &self.buf[s.name.clone()],
                &self.buf[s.value.clone()],
                s.sensitive,
            )
        })
    }

    pub fn field_count(&self) -> usize {
        self.fields.len()
    }

    fn pseudo_field(&self, which: usize) -> Option<&[u8]> {
        self.pseudo[which].clone().map(|r| &self.buf[r])
    }
}

impl Head {
    /// A head from fields already decoded (tests, tools), checked as [`HeadBuilder`] checks
    /// fields off the wire; `trailers` for a trailer section.
    pub fn checked<'a>(
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        max_list_size: usize,
        trailers: bool,
    ) -> Result<Head, HeadError> {
        let mut b = HeadBuilder::new(max_list_size, trailers, 0);
        for (name, value) in fields {
            b.push(Field {
                name,
                value,
                sensitive: false,
            });
        }
        b.finish()
    }
}

/// Collects decoded fields into a [`Head`], checking each as it comes.
#[derive(Debug)]
pub struct HeadBuilder {
    head: Head,
    max_list_size: usize,
    list_size: usize,
    trailers: bool,
    regular_seen: bool,
    error: Option<HeadError>,
}

impl HeadBuilder {
    /// A request head's fields; `trailers` for a trailer section (no pseudo-fields at all).
    /// `block_len` (the compressed block's length) sizes the buffers once, up front.
    pub fn new(max_list_size: usize, trailers: bool, block_len: usize) -> Self {
        // Decoded fields run from about the block's size (Huffman-coded literals) to many
        // times it (table references); a head rarely has more than 16 fields.
        let bytes = (2 * block_len).clamp(256, max_list_size.max(256));
        Self {
            head: Head {
                buf: Vec::with_capacity(bytes),
                fields: Vec::with_capacity(16),
                pseudo: Default::default(),
            },
            max_list_size,
            list_size: 0,
            trailers,
            regular_seen: false,
            error: None,
        }
    }

    /// Takes the next decoded field. After the first problem the rest are only counted.
    pub fn push(&mut self, field: Field<'_>) {
        self.list_size += field.name.len() + field.value.len() + FIELD_OVERHEAD;
        if self.error.is_some() {
            return;
        }
        if self.list_size > self.max_list_size {
            self.error = Some(HeadError::TooLarge);
            return;
        }
        if let Err(reason) = self.check_and_keep(field) {
            self.error = Some(HeadError::Malformed(reason));
        }
    }

    /// The head, once its block is decoded to the end.
    pub fn finish(self) -> Result<Head, HeadError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !self.trailers {
            required_pseudo(&self.head).map_err(HeadError::Malformed)?;
        }
        Ok(self.head)
    }

    fn check_and_keep(&mut self, field: Field<'_>) -> Result<(), &'static str> {
        check_value(field.value)?;
        if let Some(pseudo) = field.name.strip_prefix(b":") {
            return self.keep_pseudo(pseudo, field.value);
        }
        check_name(field.name)?;
        check_not_connection_specific(field.name, field.value)?;
        self.regular_seen = true;
        let name = self.append(field.name);
        let value = self.append(field.value);
        self.head.fields.push(Span {
            name,
            value,
            sensitive: field.sensitive,
        });
        Ok(())
    }

    fn keep_pseudo(&mut self, pseudo: &[u8], value: &[u8]) -> Result<(), &'static str> {
        if self.trailers {
            return Err("pseudo-field in trailers");
        }
        if self.regular_seen {
            return Err("pseudo-field after a regular field");
        }
        let which = match pseudo {
            b"method" => METHOD,
            b"scheme" => SCHEME,
            b"authority" => AUTHORITY,
            b"path" => PATH,
            _ => return Err("unknown or response pseudo-field in a request"),
        };
        if self.head.pseudo[which].is_some() {
            return Err("repeated pseudo-field");
        }
        let range = self.append(value);
        self.head.pseudo[which] = Some(range);
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.head.buf.len();
        self.head.buf.extend_from_slice(bytes);
        start..self.head.buf.len()
    }
}

/// RFC 9113 §8.3.1: every request has `:method`; CONNECT has `:authority` and neither
/// `:scheme` nor `:path` (the extended CONNECT of RFC 8441 is not offered); any other method
/// has `:scheme` and a non-empty `:path`.
fn required_pseudo(head: &Head) -> Result<(), &'static str> {
    if head.pseudo[METHOD].is_none() {
        return Err("no :method");
    }
    if head.method() == b"CONNECT" {
        if head.authority().is_none() || head.scheme().is_some() || head.path().is_some() {
            return Err("CONNECT needs :authority and no :scheme or :path");
        }
        return Ok(());
    }
    if head.scheme().is_none_or(<[u8]>::is_empty) {
        return Err("no :scheme");
    }
    if head.path().is_none_or(<[u8]>::is_empty) {
        return Err("no :path");
    }
    Ok(())
}

/// Token characters, lowercase only (RFC 9113 §8.2.1, RFC 9110 §5.6.2).
fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty field name");
    }
    if name
        .iter()
        .all(|&b| BYTE_CLASS[usize::from(b)] & NAME_BYTE != 0)
    {
        Ok(())
    } else {
        Err("field name with uppercase or non-token characters")
    }
}

/// No controls but HTAB, none of them at either end with spaces (RFC 9113 §8.2.1, RFC 9110
/// §5.5). Bytes above 0x7f (obs-text) pass as they are.
fn check_value(value: &[u8]) -> Result<(), &'static str> {
    if !value
        .iter()
        .all(|&b| BYTE_CLASS[usize::from(b)] & VALUE_BYTE != 0)
    {
        return Err("field value with a control character");
    }
    let ws = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    if ws(value.first()) || ws(value.last()) {
        return Err("field value with whitespace at an end");
    }
    Ok(())
}

/// What each byte may be part of: one table lookup per byte instead of a chain of tests.
const NAME_BYTE: u8 = 1;
const VALUE_BYTE: u8 = 2;
const BYTE_CLASS: [u8; 256] = byte_classes();

const fn byte_classes() -> [u8; 256] {
    let mut classes = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        if (byte >= 0x20 && byte != 0x7f) || byte == b'\t' {
            classes[b] |= VALUE_BYTE;
        }
        let token_mark = matches!(
            byte,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        );
        if byte.is_ascii_lowercase() || byte.is_ascii_digit() || token_mark {
            classes[b] |= NAME_BYTE;
        }
        b += 1;
    }
    classes
}

/// RFC 9113 §8.2.2.
fn check_not_connection_specific(name: &[u8], value: &[u8]) -> Result<(), &'static str> {
    match name {
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade" => {
            Err("connection-specific field")
        }
        b"te" if !value.eq_ignore_ascii_case(b"trailers") => Err("te other than trailers"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(fields: &[(&str, &str)], trailers: bool) -> Result<Head, HeadError> {
        let bytes = fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
        Head::checked(bytes, 1024, trailers)
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "example.test"),
        (":path", "/a?b"),
    ];

    fn malformed(extra: &[(&str, &str)]) -> HeadError {
        let fields: Vec<_> = GET.iter().chain(extra).copied().collect();
        build(&fields, false).expect_err("malformed")
    }

    #[test]
    fn a_request_keeps_its_pseudo_fields_apart_and_the_rest_in_order() {
        let mut fields = GET.to_vec();
        fields.extend([
            ("accept", "*/*"),
            ("cookie", "a=1"),
            ("te", "Trailers"),
            ("cookie", "b=2"),
        ]);
        let head = build(&fields, false).unwrap();
        assert_eq!(head.method(), b"GET");
        assert_eq!(head.scheme(), Some(&b"https"[..]));
        assert_eq!(head.authority(), Some(&b"example.test"[..]));
        assert_eq!(head.path(), Some(&b"/a?b"[..]));
        let names: Vec<&[u8]> = head.fields().map(|(n, _, _)| n).collect();
        assert_eq!(names, [&b"accept"[..], b"cookie", b"te", b"cookie"]);
        let connect = build(
            &[(":method", "CONNECT"), (":authority", "db.test:5432")],
            false,
        );
        assert!(connect.is_ok());
    }

    #[test]
    fn what_rfc_9113_calls_malformed_is_refused() {
        for extra in [
            &[("Accept", "*/*")][..],
            &[("x y", "1")],
            &[("", "1")],
            &[("x", " leading")],
            &[("x", "trailing\t")],
            &[("x", "a\r\nb: c")],
            &[("x", "nul\0")],
            &[("x", "del\x7f")],
            &[("connection", "close")],
            &[("transfer-encoding", "chunked")],
            &[("upgrade", "websocket")],
            &[("keep-alive", "1")],
            &[("te", "gzip")],
            &[("accept", "*/*"), (":path", "/late")],
            &[(":path", "/again")],
            &[(":status", "200")],
            &[(":protocol", "websocket")],
        ] {
            assert!(
                matches!(malformed(extra), HeadError::Malformed(_)),
                "{extra:?} accepted"
            );
        }
        for missing in [":method", ":scheme", ":path"] {
            let fields: Vec<_> = GET.iter().filter(|(n, _)| *n != missing).copied().collect();
            assert!(build(&fields, false).is_err(), "{missing} not required");
        }
        let empty_path = [(":method", "GET"), (":scheme", "http"), (":path", "")];
        assert!(build(&empty_path, false).is_err());
        assert!(build(&[(":method", "CONNECT"), (":path", "/")], false).is_err());
        assert!(
            build(&[(":path", "/")], true).is_err(),
            "pseudo-field in trailers"
        );
        assert!(build(&[("grpc-status", "0")], true).is_ok());
    }

    #[test]
    fn a_list_over_the_limit_is_too_large_however_it_arrives() {
        let mut b = HeadBuilder::new(100, false, 0);
        for _ in 0..3 {
            b.push(Field {
                name: b"x",
                value: b"0123456789",
                sensitive: false,
            });
        }
        assert_eq!(b.finish().unwrap_err(), HeadError::TooLarge);
        let value = "v".repeat(1000);
        let mut fields = GET.to_vec();
        fields.push(("x-big", &value));
        assert_eq!(build(&fields, false).unwrap_err(), HeadError::TooLarge);
        // Non-UTF-8 bytes (obs-text) are values like any other.
        let mut b = HeadBuilder::new(1024, true, 0);
        b.push(Field {
            name: b"x-latin1",
            value: b"caf\xe9",
            sensitive: true,
        });
        let head = b.finish().unwrap();
        assert_eq!(
            head.fields().next(),
            Some((&b"x-latin1"[..], &b"caf\xe9"[..], true))
        );
    }
}
