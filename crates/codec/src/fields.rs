//! Header fields kept as the bytes they arrived in.
//!
//! A proxy reads a handful of fields of each message (framing, persistence, `Host`, the
//! forwarding fields) and passes the rest on unchanged. So a head is parsed once into spans of
//! its buffer, each field tagged with the [`Kind`] its name decides, and forwarding compares
//! those tags instead of hashing names into a map and copying values out of the buffer.

use bytes::BytesMut;

/// A byte range of a head's buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    at: u32,
    len: u32,
}

impl Span {
    /// The span of `part`, a sub-slice of `base`.
    pub fn of(base: &[u8], part: &[u8]) -> Span {
        Span::within(base, part).unwrap_or_default()
    }

    /// The span of `part` if it is a sub-slice of `base` (a parser may hand back a static
    /// string in place of bytes it did not like, e.g. httparse's empty reason phrase for one
    /// that is not UTF-8).
    pub fn within(base: &[u8], part: &[u8]) -> Option<Span> {
        let at = (part.as_ptr() as usize).checked_sub(base.as_ptr() as usize)?;
        (at + part.len() <= base.len()).then_some(Span {
            at: at as u32,
            len: part.len() as u32,
        })
    }

    pub fn new(at: usize, len: usize) -> Span {
        Span {
            at: at as u32,
            len: len as u32,
        }
    }

    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.at as usize..(self.at + self.len) as usize]
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.at as usize..(self.at + self.len) as usize
    }
}

/// What the proxy needs to know of a field, by its name (compared without case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    ProxyAuthenticate,
    ProxyAuthorization,
    /// HTTP/2's upgrade settings (RFC 9113 §3.1 of its predecessor): meaningful for one hop only.
    Http2Settings,
    Te,
    Trailer,
    Upgrade,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    XRequestId,
    /// W3C Trace Context's `traceparent` and `tracestate`.
    TraceParent,
    TraceState,
    Cookie,
    Referer,
    UserAgent,
    Date,
}

impl Kind {
    /// The kind of the field called `name`: one comparison by length, then at most three
    /// case-insensitive compares.
    pub fn of(name: &[u8]) -> Kind {
        let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        match name.len() {
            2 if is("te") => Kind::Te,
            4 if is("host") => Kind::Host,
            4 if is("date") => Kind::Date,
            6 if is("cookie") => Kind::Cookie,
            6 if is("expect") => Kind::Expect,
            7 if is("upgrade") => Kind::Upgrade,
            7 if is("referer") => Kind::Referer,
            7 if is("trailer") => Kind::Trailer,
            10 if is("connection") => Kind::Connection,
            10 if is("user-agent") => Kind::UserAgent,
            10 if is("keep-alive") => Kind::KeepAlive,
            10 if is("tracestate") => Kind::TraceState,
            11 if is("traceparent") => Kind::TraceParent,
            12 if is("x-request-id") => Kind::XRequestId,
            14 if is("content-length") => Kind::ContentLength,
            15 if is("x-forwarded-for") => Kind::XForwardedFor,
            16 if is("x-forwarded-host") => Kind::XForwardedHost,
            16 if is("proxy-connection") => Kind::ProxyConnection,
            17 if is("transfer-encoding") => Kind::TransferEncoding,
            17 if is("x-forwarded-proto") => Kind::XForwardedProto,
            18 if is("proxy-authenticate") => Kind::ProxyAuthenticate,
            19 if is("proxy-authorization") => Kind::ProxyAuthorization,
            14 if is("http2-settings") => Kind::Http2Settings,
            _ => Kind::Other,
        }
    }

    /// Fields that describe one hop and never cross a proxy (RFC 9110 §7.6.1, plus the
    /// non-standard `Keep-Alive` and `Proxy-Connection`). `Upgrade` is decided per message
    /// (it passes for a protocol switch); `Expect` is a request matter (Sluice answers
    /// `100-continue` itself).
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Kind::Connection
                | Kind::KeepAlive
                | Kind::ProxyConnection
                | Kind::ProxyAuthenticate
                | Kind::ProxyAuthorization
                | Kind::Http2Settings
                | Kind::Te
                | Kind::Trailer
                | Kind::TransferEncoding
        )
    }
}

/// One field: where its name and value are in the head's buffer, and its kind.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: Span,
    pub value: Span,
    pub kind: Kind,
    /// The value is followed by exactly CRLF: the line can be forwarded as it is.
    pub crlf: bool,
}

impl Field {
    /// A field of `base` (the head's buffer) from httparse's slices of it.
    pub fn parsed(base: &[u8], name: &[u8], value: &[u8]) -> Field {
        let value = Span::of(base, value);
        let end = value.range().end;
        Field {
            kind: Kind::of(name),
            name: Span::of(base, name),
            crlf: base.get(end..end + 2) == Some(b"\r\n"),
            value,
        }
    }
}

impl Field {
    /// The field with a list-valued `Content-Length` (`5, 5`, already checked to repeat one
    /// value) cut to its first value, so one length is forwarded (RFC 9110 §8.6).
    pub fn single_valued(mut self, base: &[u8]) -> Field {
        if self.kind == Kind::ContentLength {
            let value = self.value.get(base);
            if let Some(first) = tokens(value).next()
                && first.len() != value.len()
            {
                self.value = Span::of(base, first);
                self.crlf = false;
            }
        }
        self
    }
}

/// Appends `fields` (of the head in `buf`) to `out` as field lines. Lines that arrived
/// CRLF-terminated are copied as received, adjacent ones in a single copy (so a run of fields
/// that all pass costs one copy); others (a bare LF or trailing whitespace after the value) are
/// written as `name: value` CRLF.
pub fn write_lines<'f>(out: &mut BytesMut, buf: &[u8], fields: impl Iterator<Item = &'f Field>) {
    let mut run: Option<std::ops::Range<usize>> = None;
    for f in fields {
        let (name, value) = (f.name.range(), f.value.range());
        if f.crlf {
            match &mut run {
                Some(r) if r.end == name.start => r.end = value.end + 2,
                _ => {
                    if let Some(r) = run.take() {
                        out.extend_from_slice(&buf[r]);
                    }
                    run = Some(name.start..value.end + 2);
                }
            }
        } else {
            if let Some(r) = run.take() {
                out.extend_from_slice(&buf[r]);
            }
            put_field(out, &buf[name], &buf[value]);
        }
    }
    if let Some(r) = run {
        out.extend_from_slice(&buf[r]);
    }
}

/// Appends one field line `name: value` CRLF.
pub fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, in `buf`.
pub fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// What the `Connection` fields of a message say.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Some token names another field, which is then hop-by-hop too (rare).
    pub names_others: bool,
}

impl ConnectionTokens {
    /// Notes the tokens of one `Connection` value.
    pub fn note(&mut self, value: &[u8]) {
        // The usual values, a single token, without splitting the list.
        if value.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
            return;
        }
        if value.eq_ignore_ascii_case(b"close") {
            self.close = true;
            return;
        }
        for token in tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                self.names_others = true;
            }
        }
    }
}

/// The comma-separated, trimmed, non-empty elements of a list-valued field.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether `name` is listed by one of the `Connection` fields among `fields` (with a token
/// other than the usual `close`, `keep-alive` and `upgrade`, which name no field).
pub fn named_by_connection(buf: &[u8], fields: &[Field], name: &[u8]) -> bool {
    fields
        .iter()
        .filter(|f| f.kind == Kind::Connection)
        .flat_map(|f| tokens(f.value.get(buf)))
        .any(|t| t.eq_ignore_ascii_case(name))
}

/// Parses a `Content-Length` value: digits, or a list of equal digit strings (as some
/// senders repeat it). `None` when malformed or conflicting.
pub fn content_length(value: &[u8], previous: Option<u64>) -> Option<u64> {
    let mut length = previous;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Whether `value` is a valid `Host` (RFC 9110 §7.2, RFC 3986 §3.2.2): `host [":" port]`, the
/// host a bracketed IP literal or a reg-name (unreserved, sub-delims, percent-escapes); empty is
/// valid (a target without an authority). No spaces, `/`, `@`, `<`, or bytes beyond ASCII.
pub fn valid_host(value: &[u8]) -> bool {
    let is_unreserved_or_sub = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b);
    let (host, port) = if let Some(literal) = value.strip_prefix(b"[") {
        let Some(close) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &literal[..close];
        if inside.is_empty() || !inside.iter().all(|&b| is_unreserved_or_sub(b) || b == b':') {
            return false;
        }
        (&[][..], &literal[close + 1..])
    } else {
        let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
        (&value[..end], &value[end..])
    };
    // RFC 3986 allows an empty port (`a:`); a number is a TCP port, at most 65535.
    let port_ok = port.is_empty()
        || port.strip_prefix(b":").is_some_and(|p| {
            p.is_empty()
                || (p.len() <= 5
                    && p.iter().all(u8::is_ascii_digit)
                    && p.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535)
        });
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' if host
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
            {
                i += 3;
            }
            b if is_unreserved_or_sub(b) => i += 1,
            _ => return false,
        }
    }
    port_ok
}

/// Whether a field may not travel in a trailer section (RFC 9110 §6.5.1): fields that frame
/// or route the message, modify the request, authenticate, control the response or its
/// processing, and hop-by-hop fields. Such trailers are dropped, never forwarded: a recipient
/// that merged them into the head would let the body's end rewrite its framing or routing.
pub fn forbidden_in_trailers(name: &[u8]) -> bool {
    const FORBIDDEN: &[&str] = &[
        // framing and routing
        "content-length",
        "transfer-encoding",
        "host",
        "trailer",
        "te",
        // hop-by-hop
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "http2-settings",
        // request modifiers
        "cache-control",
        "expect",
        "max-forwards",
        "pragma",
        "range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "if-range",
        // authentication
        "authorization",
        "proxy-authorization",
        "www-authenticate",
        "proxy-authenticate",
        "cookie",
        "set-cookie",
        // response control data and payload processing
        "age",
        "date",
        "expires",
        "location",
        "retry-after",
        "vary",
        "content-encoding",
        "content-type",
        "content-range",
    ];
    FORBIDDEN
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
}

/// Whether the last transfer coding of a `Transfer-Encoding` value is `chunked`; `None` when
/// the value lists no coding at all.
pub fn ends_chunked(value: &[u8]) -> Option<bool> {
    tokens(value)
        .last()
        .map(|t| t.eq_ignore_ascii_case(b"chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_name_any_case() {
        assert_eq!(Kind::of(b"Host"), Kind::Host);
        assert_eq!(Kind::of(b"CONTENT-LENGTH"), Kind::ContentLength);
        assert_eq!(Kind::of(b"x-Forwarded-For"), Kind::XForwardedFor);
        assert_eq!(Kind::of(b"transfer-encoding"), Kind::TransferEncoding);
        assert_eq!(Kind::of(b"x-forwarded-proto"), Kind::XForwardedProto);
        assert_eq!(Kind::of(b"hosts"), Kind::Other);
        assert_eq!(Kind::of(b"accept"), Kind::Other);
        assert!(Kind::of(b"Keep-Alive").is_hop_by_hop());
        assert!(!Kind::of(b"Upgrade").is_hop_by_hop());
    }

    #[test]
    fn content_lengths() {
        assert_eq!(content_length(b"12", None), Some(12));
        assert_eq!(content_length(b"5, 5", None), Some(5));
        assert_eq!(content_length(b"5", Some(5)), Some(5));
        for bad in [
            &b"-1"[..],
            b"1 2",
            b"",
            b"0x10",
            b"5, 6",
            b"99999999999999999999",
        ] {
            assert_eq!(content_length(bad, None), None, "{bad:?}");
        }
        assert_eq!(content_length(b"6", Some(5)), None);
    }

    #[test]
    fn lines_are_copied_in_runs_and_bare_lf_is_mended() {
        let head = b"X-A: 1\r\nX-B:2\r\nX-Skip: s\r\nX-C: 3\nX-D: 4  \r\nX-E: 5\r\n\r\n";
        let mut fields = Vec::new();
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let httparse::Status::Complete((_, parsed)) =
            httparse::parse_headers(head, &mut slots).unwrap_or(httparse::Status::Partial)
        else {
            panic!("head parses")
        };
        for h in parsed {
            fields.push(Field::parsed(head, h.name.as_bytes(), h.value));
        }
        let mut out = BytesMut::new();
        let kept = fields.iter().filter(|f| f.name.get(head) != b"X-Skip");
        write_lines(&mut out, head, kept);
        assert_eq!(
            &out[..],
            b"X-A: 1\r\nX-B:2\r\nX-C: 3\r\nX-D: 4\r\nX-E: 5\r\n"
        );
    }

    #[test]
    fn hosts() {
        for good in [
            &b"example.com"[..],
            b"example.com:8080",
            b"127.0.0.1",
            b"[::1]:443",
            b"[v1.fe80::a+en1]",
            b"a%2Db",
            b"",
            b"x:",
            b"x:65535",
            b"[::1]:0",
        ] {
            assert!(valid_host(good), "{}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"a b"[..],
            b"evil.com/x@y",
            b"<script>",
            b"user@host",
            b"[::1",
            b"[]",
            b"host:80a",
            b"h\xc3\xa9",
            b"a%2",
            b"a\tb",
            b"host:1:2",
            b"a:65536",
            b"a:99999",
            b"a:000080",
            b"[::1]:70000",
        ] {
            assert!(!valid_host(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn connection_tokens() {
        let mut t = ConnectionTokens::default();
        t.note(b"Keep-Alive, Upgrade");
        assert!(t.keep_alive && t.upgrade && !t.close && !t.names_others);
        t.note(b"x-secret");
        assert!(t.names_others);
        assert_eq!(ends_chunked(b"gzip, chunked"), Some(true));
        assert_eq!(ends_chunked(b"chunked, gzip"), Some(false));
        assert_eq!(ends_chunked(b" , "), None);
    }
}
