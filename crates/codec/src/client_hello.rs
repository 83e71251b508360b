//! The TLS ClientHello, read without answering it: the server name a client asks for
//! (RFC 8446 §4.1.2, RFC 6066 §3), for routing TLS passthrough by SNI.
//!
//! The parser is defensive: it never looks past `max_bytes`, reassembles a ClientHello split
//! over several TLS records, and answers every malformed input with a [`HelloError`] whose
//! [`HelloError::reason`] labels the metric.

use std::time::Duration;

/// TLS record content type of handshake messages.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Extension number of `server_name` (RFC 6066).
const SERVER_NAME: u16 = 0;
/// Largest TLSPlaintext fragment (RFC 8446 §5.1).
const MAX_FRAGMENT: usize = 1 << 14;

/// Why a connection was not routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The first bytes are not a TLS handshake record (plain HTTP, SSH, random bytes).
    #[error("not TLS: {0}")]
    NotTls(String),
    /// TLS records, but not a well-formed ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The ClientHello is (or claims to be) larger than `sni_max_bytes`.
    #[error("ClientHello larger than {0} bytes")]
    TooLarge(usize),
    /// The whole ClientHello did not arrive within `sni_timeout`.
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    /// The client closed before sending a whole ClientHello.
    #[error("client closed after {0} bytes, before a complete ClientHello")]
    Closed(usize),
    /// Reading from the client failed.
    #[error("reading the ClientHello: {0}")]
    Io(String),
}

impl HelloError {
    /// The `reason` label of `sluice_sni_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            HelloError::NotTls(_) => "not_tls",
            HelloError::Malformed(_) => "malformed",
            HelloError::TooLarge(_) => "too_large",
            HelloError::Timeout(_) => "timeout",
            HelloError::Closed(_) => "closed",
            HelloError::Io(_) => "io",
        }
    }
}

/// `Ok(None)`: more bytes needed. `Ok(Some(sni))`: a complete ClientHello, with its server name
/// when present. Records are reassembled; bytes after the ClientHello are left alone.
pub fn parse(buf: &[u8], max_bytes: usize) -> Result<Option<Option<String>>, HelloError> {
    let mut handshake: Vec<u8> = Vec::new();
    let mut at = 0;
    loop {
        // Enough handshake bytes for the message?
        if let Some(len) = check_message(&handshake, max_bytes)?
            && handshake.len() >= len + 4
        {
            return client_hello_sni(&handshake[4..4 + len]).map(Some);
        }
        let Some(header) = buf.get(at..at + 5) else {
            return more(buf, max_bytes);
        };
        if header[0] != HANDSHAKE {
            return Err(if at == 0 {
                HelloError::NotTls(describe_start(buf))
            } else {
                HelloError::Malformed("a non-handshake record inside the ClientHello")
            });
        }
        if header[1] != 3 {
            return Err(if at == 0 {
                HelloError::NotTls(describe_start(buf))
            } else {
                HelloError::Malformed("record version is not 3.x")
            });
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            // RFC 8446 §5.1: zero-length handshake fragments are not allowed.
            return Err(HelloError::Malformed("empty handshake record"));
        }
        if len > MAX_FRAGMENT {
            return Err(HelloError::Malformed("record longer than 16 KiB"));
        }
        let end = at + 5 + len;
        let Some(fragment) = buf.get(at + 5..end) else {
            // Look at the start of a partial record too: a message that announces more than
            // the limit is refused before the client can make us wait for it.
            handshake.extend_from_slice(buf.get(at + 5..).unwrap_or_default());
            check_message(&handshake, max_bytes)?;
            return more(buf, max_bytes);
        };
        handshake.extend_from_slice(fragment);
        at = end;
    }
}

/// The handshake message's type and declared length, once its 4-byte header is there.
fn check_message(handshake: &[u8], max_bytes: usize) -> Result<Option<usize>, HelloError> {
    if handshake.len() < 4 {
        return Ok(None);
    }
    if handshake[0] != CLIENT_HELLO {
        return Err(HelloError::Malformed(
            "first handshake message is not a ClientHello",
        ));
    }
    let len = u24(&handshake[1..4]);
    // The record header around the message adds 5 bytes.
    if len + 4 + 5 > max_bytes {
        return Err(HelloError::TooLarge(max_bytes));
    }
    Ok(Some(len))
}

fn more(buf: &[u8], max_bytes: usize) -> Result<Option<Option<String>>, HelloError> {
    if buf.len() >= max_bytes {
        Err(HelloError::TooLarge(max_bytes))
    } else {
        Ok(None)
    }
}

/// The first bytes, for the log line (printable ASCII as text, otherwise hex).
fn describe_start(buf: &[u8]) -> String {
    let start = &buf[..buf.len().min(8)];
    if start.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("starts with {:?}", String::from_utf8_lossy(start))
    } else {
        let hex: Vec<String> = start.iter().map(|b| format!("{b:02x}")).collect();
        format!("starts with bytes {}", hex.join(" "))
    }
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// A cursor that fails with `Malformed` instead of reading past the end.
struct Reader<'a> {
    buf: &'a [u8],
}

const TRUNCATED: HelloError = HelloError::Malformed("truncated field");

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if self.buf.len() < n {
            return Err(TRUNCATED);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, HelloError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, HelloError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Result<&'a [u8], HelloError> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }
    fn vec16(&mut self) -> Result<&'a [u8], HelloError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
}

/// The server name of a ClientHello body (RFC 8446 §4.1.2, RFC 6066 §3).
fn client_hello_sni(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader { buf: body };
    let version = r.u16()?;
    if version >> 8 != 3 {
        return Err(HelloError::Malformed("ClientHello version is not 3.x"));
    }
    r.take(32)?; // random
    if r.vec8()?.len() > 32 {
        return Err(HelloError::Malformed("session id longer than 32 bytes"));
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("bad cipher suite list"));
    }
    if r.vec8()?.is_empty() {
        return Err(HelloError::Malformed("no compression method"));
    }
    if r.buf.is_empty() {
        // A ClientHello without extensions (old clients): no server name.
        return Ok(None);
    }
    let mut exts = Reader { buf: r.vec16()? };
    if !r.buf.is_empty() {
        return Err(HelloError::Malformed("bytes after the extensions"));
    }
    let mut sni = None;
    let mut seen_sni = false;
    while !exts.buf.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != SERVER_NAME {
            continue;
        }
        if seen_sni {
            return Err(HelloError::Malformed("two server_name extensions"));
        }
        seen_sni = true;
        sni = server_name(data)?;
    }
    Ok(sni)
}

fn server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut outer = Reader { buf: data };
    let mut list = Reader {
        buf: outer.vec16()?,
    };
    if !outer.buf.is_empty() {
        return Err(HelloError::Malformed("bytes after the server name list"));
    }
    let mut found = None;
    while !list.buf.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        // Only host_name (0) is defined; others are skipped as RFC 6066 allows.
        if kind != 0 || found.is_some() {
            continue;
        }
        let name = name.strip_suffix(b".").unwrap_or(name);
        // Labels of a host name are not empty: no leading dot, no `..`, one trailing dot at most.
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split(|&b| b == b'.').all(|label| !label.is_empty())
            && name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return Err(HelloError::Malformed("server name is not a host name"));
        }
        found = Some(String::from_utf8_lossy(name).to_ascii_lowercase());
    }
    Ok(found)
}

/// A ClientHello body with the given extensions block (None: no extensions at all).
fn hello_body(extensions: Option<Vec<u8>>) -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend([7u8; 32]);
    b.push(32);
    b.extend([1u8; 32]);
    b.extend([0, 4, 0x13, 0x01, 0x13, 0x02]);
    b.extend([1, 0]);
    if let Some(ext) = extensions {
        b.extend((ext.len() as u16).to_be_bytes());
        b.extend(ext);
    }
    b
}

fn sni_ext(name: &[u8]) -> Vec<u8> {
    let mut entry = vec![0];
    entry.extend((name.len() as u16).to_be_bytes());
    entry.extend(name);
    let mut list = (entry.len() as u16).to_be_bytes().to_vec();
    list.extend(entry);
    let mut ext = vec![0, 0];
    ext.extend((list.len() as u16).to_be_bytes());
    ext.extend(list);
    ext
}

fn other_ext(kind: u16, len: usize) -> Vec<u8> {
    let mut ext = kind.to_be_bytes().to_vec();
    ext.extend((len as u16).to_be_bytes());
    ext.extend(std::iter::repeat_n(0xab, len));
    ext
}

fn handshake(body: &[u8]) -> Vec<u8> {
    let mut h = vec![CLIENT_HELLO];
    h.extend(&(body.len() as u32).to_be_bytes()[1..]);
    h.extend(body);
    h
}

/// Handshake bytes cut into records of at most `chunk` bytes.
fn records(hs: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in hs.chunks(chunk) {
        out.extend([HANDSHAKE, 3, 1]);
        out.extend((part.len() as u16).to_be_bytes());
        out.extend(part);
    }
    out
}

/// A minimal, well-formed ClientHello naming `name` (in two extensions' company), in one
/// record: for tests of readers and as a fuzzing seed.
pub fn example(name: &[u8]) -> Vec<u8> {
    let mut ext = other_ext(10, 8);
    ext.extend(sni_ext(name));
    ext.extend(other_ext(43, 3));
    records(&handshake(&hello_body(Some(ext))), MAX_FRAGMENT)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn server_name_is_found_lower_cased_without_trailing_dot() {
        let got = parse(&example(b"API.Example.COM."), 16384).unwrap();
        assert_eq!(got, Some(Some("api.example.com".into())));
    }

    #[test]
    fn no_extensions_or_no_sni_means_no_name() {
        let bytes = records(&handshake(&hello_body(None)), MAX_FRAGMENT);
        assert_eq!(parse(&bytes, 16384).unwrap(), Some(None));
        let bytes = records(
            &handshake(&hello_body(Some(other_ext(10, 4)))),
            MAX_FRAGMENT,
        );
        assert_eq!(parse(&bytes, 16384).unwrap(), Some(None));
    }

    #[test]
    fn every_prefix_asks_for_more_and_split_records_reassemble() {
        for chunk in [1, 7, 50, MAX_FRAGMENT] {
            let bytes = records(&handshake(&hello_body(Some(sni_ext(b"a.test")))), chunk);
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut], 1 << 20).unwrap(), None, "cut {cut}");
            }
            assert_eq!(
                parse(&bytes, 1 << 20).unwrap(),
                Some(Some("a.test".into())),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn non_tls_and_malformed_input_is_refused_with_a_reason() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n", 16384).unwrap_err().reason(),
            "not_tls"
        );
        assert_eq!(parse(b"SSH-2.0-x", 16384).unwrap_err().reason(), "not_tls");
        // An alert record, a ServerHello, a bad record version, an empty record.
        assert_eq!(
            parse(&[21, 3, 3, 0, 2, 2, 40], 16384).unwrap_err().reason(),
            "not_tls"
        );
        assert_eq!(
            parse(&[22, 3, 3, 0, 4, 2, 0, 0, 0], 16384)
                .unwrap_err()
                .reason(),
            "malformed"
        );
        assert_eq!(
            parse(&[22, 2, 0, 0, 4], 16384).unwrap_err().reason(),
            "not_tls"
        );
        assert_eq!(
            parse(&[22, 3, 1, 0, 0], 16384).unwrap_err().reason(),
            "malformed"
        );
        // A body that lies about the length of its cipher suites.
        let mut body = hello_body(Some(sni_ext(b"x.test")));
        body[2 + 32 + 1 + 32 + 1] = 0xff;
        let bytes = records(&handshake(&body), MAX_FRAGMENT);
        assert_eq!(parse(&bytes, 16384).unwrap_err().reason(), "malformed");
        // A name with a byte no host name has.
        assert_eq!(
            parse(&example(b"a b.test"), 16384).unwrap_err().reason(),
            "malformed"
        );
        // Found by fuzzing: empty labels, which left a trailing dot after the one stripped.
        for name in [&b"a.."[..], b".a", b"a..b", b"."] {
            assert_eq!(
                parse(&example(name), 16384).unwrap_err().reason(),
                "malformed"
            );
        }
    }

    #[test]
    fn oversized_hello_is_refused_before_reading_it_all() {
        let mut ext = other_ext(21, 20_000);
        ext.extend(sni_ext(b"big.test"));
        let bytes = records(&handshake(&hello_body(Some(ext))), MAX_FRAGMENT);
        // The declared length alone is enough to refuse.
        assert_eq!(parse(&bytes[..9], 16384).unwrap_err().reason(), "too_large");
        assert_eq!(
            parse(&bytes, 1 << 20).unwrap(),
            Some(Some("big.test".into()))
        );
        // Records that never finish a message stop at the limit.
        let endless = records(&[CLIENT_HELLO, 0, 0x30, 0], 4);
        let mut buf = endless.clone();
        buf.extend(records(&[0u8; 600], 300));
        assert_eq!(parse(&buf, 512).unwrap_err().reason(), "too_large");
    }

    /// Random bytes, random mutations and truncations of a valid hello: an answer, never a
    /// panic.
    #[test]
    fn random_and_mutated_input_never_panics() {
        let valid = example(b"fuzz.example.com");
        let mut rng = fastrand::Rng::with_seed(0x5115);
        for _ in 0..20_000 {
            let mut bytes = if rng.bool() {
                valid.clone()
            } else {
                (0..rng.usize(0..600)).map(|_| rng.u8(..)).collect()
            };
            for _ in 0..rng.usize(0..6) {
                if !bytes.is_empty() {
                    let i = rng.usize(..bytes.len());
                    bytes[i] = rng.u8(..);
                }
            }
            if rng.bool() && !bytes.is_empty() {
                bytes.truncate(rng.usize(..bytes.len()));
            }
            let _ = parse(&bytes, rng.usize(16..20_000));
        }
    }
}
