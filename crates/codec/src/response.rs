//! Response heads from instances: parsed into spans of the bytes the instance sent, with the
//! framing of the body that follows decided by RFC 9112 §6.3.
//!
//! A proxy that guesses where a response body ends differently from the client behind it
//! hands the client bytes of the next response (response splitting), or leaves them on an
//! upstream connection it then reuses for another client. So framing is strict: a head whose
//! framing is ambiguous is an error, never a guess —
//! - `Transfer-Encoding` together with `Content-Length`, in either order;
//! - a transfer coding other than `chunked` (`gzip, chunked`, `gzip`, `xchunked`), `chunked`
//!   twice: Sluice frames the client's hop itself, so it could neither pass such a coding on
//!   nor remove it, and the client would get coded bytes it cannot tell from the content (as
//!   nginx, it answers 502);
//! - `Transfer-Encoding` in an HTTP/1.0 response (RFC 9112 §6.1: faulty framing);
//! - `Content-Length` that is not digits, or lists different values.
//!
//! Repeated identical `Content-Length` values (two fields, or `5, 5`) are one length
//! (RFC 9110 §8.6): the head keeps a single field with a single value.
//! Responses to `HEAD` and `1xx`/`204`/`304` have no body; interim `1xx` heads other than `101`
//! are skipped.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;

use crate::chunked::Chunked;
use crate::fields::{self, ConnectionTokens, Field, Kind, Span};

/// Largest response head accepted (status line and fields).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields accepted in a response head (hyper's default, too).
pub const MAX_HEADERS: usize = 100;

/// Why a response head is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    #[error(
        "response head larger than {MAX_HEAD_BYTES} bytes or with more than {MAX_HEADERS} fields"
    )]
    TooLarge,
    #[error("status code {0} out of range")]
    Status(u16),
    #[error("invalid or conflicting Content-Length `{0}`")]
    ContentLength(String),
    #[error("both Transfer-Encoding and Content-Length")]
    LengthAndCoding,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    CodingInHttp10,
    #[error("transfer coding `{0}` other than chunked")]
    OtherCoding(String),
    #[error("chunked is not the last transfer coding, or appears twice")]
    ChunkedNotLast,
}

/// A response head as an instance sent it.
#[derive(Debug)]
pub struct UpstreamHead {
    pub buf: Bytes,
    pub reason: Span,
    pub fields: Vec<Field>,
    pub connection: ConnectionTokens,
    /// A `Transfer-Encoding` was sent (its fields are not passed on: the client's hop is
    /// framed by the proxy).
    pub transfer_encoding: bool,
    /// The body's length, when a (single, normalised) `Content-Length` states it.
    pub content_length: Option<u64>,
    pub date: bool,
}

impl UpstreamHead {
    /// The protocols an `Upgrade` field names (versions dropped), in order.
    pub fn upgrade_protocols(&self) -> impl Iterator<Item = &[u8]> {
        self.fields
            .iter()
            .filter(|f| f.kind == Kind::Upgrade)
            .flat_map(|f| crate::fields::tokens(f.value.get(&self.buf)))
            .map(|p| p.split(|&b| b == b'/').next().unwrap_or(p).trim_ascii())
    }

    /// The fields that go to the client. For `101` the `Connection` and `Upgrade` fields stay:
    /// they describe the switch the client asked for.
    pub fn forwarded(&self, status: StatusCode) -> impl Iterator<Item = &Field> {
        let switching = status == StatusCode::SWITCHING_PROTOCOLS;
        self.fields.iter().filter(move |f| match f.kind {
            Kind::Connection | Kind::Upgrade => switching,
            Kind::ContentLength => !self.transfer_encoding,
            Kind::XRequestId => false,
            Kind::Other => {
                !self.connection.names_others
                    || !fields::named_by_connection(&self.buf, &self.fields, f.name.get(&self.buf))
            }
            k => !k.is_hop_by_hop(),
        })
    }
}

/// How a response body ends, and where reading it stands.
#[derive(Debug)]
pub enum Framing {
    /// This many bytes remain.
    Length(u64),
    Chunked(Chunked),
    /// The body ends when the instance closes the connection.
    UntilClose,
    /// `101`: the connection now carries another protocol.
    Switched,
    /// The body ended.
    Done,
}

impl Framing {
    /// Whether the end of this body leaves the connection at a message boundary.
    pub fn delimited(&self) -> bool {
        matches!(
            self,
            Framing::Length(_) | Framing::Chunked(_) | Framing::Done
        )
    }
}

/// A final response head, parsed.
#[derive(Debug)]
pub struct ParsedResponse {
    pub status: StatusCode,
    pub head: UpstreamHead,
    pub framing: Framing,
    /// The instance keeps the connection open after this response.
    pub keep_alive: bool,
}

/// What the framing and persistence fields of a response say, noted while its fields are
/// read (so nothing is looked up afterwards).
#[derive(Debug, Default)]
struct Noted {
    connection: ConnectionTokens,
    /// Whether some `Transfer-Encoding` was sent, and whether its codings end in `chunked`.
    coding: Option<Result<bool, ResponseError>>,
    content_length: Option<Result<u64, ResponseError>>,
    date: bool,
}

impl Noted {
    /// Notes one field; whether it goes into the head (a repeated `Content-Length` does not).
    fn note(&mut self, kind: Kind, value: &[u8]) -> bool {
        match kind {
            Kind::Connection => self.connection.note(value),
            Kind::TransferEncoding => self.note_coding(value),
            Kind::ContentLength => {
                let previous = match &self.content_length {
                    Some(Err(_)) => return true,
                    Some(Ok(n)) => Some(*n),
                    None => None,
                };
                self.content_length =
                    Some(fields::content_length(value, previous).ok_or_else(|| {
                        ResponseError::ContentLength(String::from_utf8_lossy(value).into_owned())
                    }));
                return previous.is_none();
            }
            Kind::Date => self.date = true,
            _ => {}
        }
        true
    }

    /// Notes a `Transfer-Encoding` value: `chunked`, once, and nothing else.
    fn note_coding(&mut self, value: &[u8]) {
        let mut ends_chunked = match self.coding.take() {
            Some(Err(e)) => {
                self.coding = Some(Err(e));
                return;
            }
            Some(Ok(chunked)) => chunked,
            None => false,
        };
        let mut result = Ok(());
        let mut any = false;
        for coding in fields::tokens(value) {
            any = true;
            if ends_chunked {
                result = Err(ResponseError::ChunkedNotLast);
                break;
            }
            if coding.eq_ignore_ascii_case(b"chunked") {
                ends_chunked = true;
            } else {
                let name = String::from_utf8_lossy(coding).into_owned();
                result = Err(ResponseError::OtherCoding(name));
                break;
            }
        }
        if result.is_ok() && !any {
            result = Err(ResponseError::OtherCoding(String::new()));
        }
        self.coding = Some(result.map(|()| ends_chunked));
    }
}

/// Parses a response head at the start of `read`: `None` when incomplete (or an interim
/// response was consumed and the final one is not there yet). The head's bytes are split off
/// `read`; the body's first bytes stay. `is_head`: the request was `HEAD`.
pub fn parse_response(
    read: &mut BytesMut,
    is_head: bool,
) -> Result<Option<ParsedResponse>, ResponseError> {
    loop {
        // Uninitialised slots: a head has a handful of fields, not a hundred to clear.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            read,
            &mut slots,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if read.len() >= MAX_HEAD_BYTES => {
                return Err(ResponseError::TooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
            Err(e) => return Err(ResponseError::Malformed(e)),
        };
        let code = response.code.unwrap_or_default();
        // RFC 9110 §15: values outside 100..=599 are invalid (600..999 are sometimes used
        // internally, never meant for a client).
        let status = StatusCode::from_u16(code)
            .ok()
            .filter(|_| (100..=599).contains(&code))
            .ok_or(ResponseError::Status(code))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            read.advance(len);
            if read.is_empty() {
                return Ok(None);
            }
            continue;
        }
        let base: &[u8] = read;
        let mut noted = Noted::default();
        let mut fields = Vec::with_capacity(response.headers.len());
        for h in response.headers.iter() {
            let field = Field::parsed(base, h.name.as_bytes(), h.value);
            if noted.note(field.kind, h.value) {
                fields.push(field.single_valued(base));
            }
        }
        // A reason phrase that is not UTF-8 comes back as a static "": the canonical one is sent.
        let reason = response
            .reason
            .and_then(|r| Span::within(base, r.as_bytes()))
            .unwrap_or_default();
        let http10 = response.version == Some(0);
        let framing = framing(status, is_head, http10, &noted)?;
        let c = &noted.connection;
        let keep_alive = if http10 {
            c.keep_alive && !c.close
        } else {
            !c.close
        };
        let head = UpstreamHead {
            buf: read.split_to(len).freeze(),
            reason,
            fields,
            connection: noted.connection,
            transfer_encoding: noted.coding.is_some(),
            content_length: noted.content_length.and_then(Result::ok),
            date: noted.date,
        };
        return Ok(Some(ParsedResponse {
            status,
            head,
            framing,
            keep_alive,
        }));
    }
}

/// Consumes complete interim (`1xx` except `101`) heads at the start of `read`; whether no final
/// response has arrived (an incomplete head is waited for: it may still be an interim one).
pub fn only_interim(read: &mut BytesMut) -> Result<bool, ResponseError> {
    while !read.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        match response.parse(read) {
            Ok(httparse::Status::Complete(len))
                if response
                    .code
                    .is_some_and(|c| (100..200).contains(&c) && c != 101) =>
            {
                read.advance(len);
            }
            // Not complete yet: more bytes will tell.
            Ok(httparse::Status::Partial) => return Ok(true),
            Ok(httparse::Status::Complete(_)) => return Ok(false),
            Err(e) => return Err(ResponseError::Malformed(e)),
        }
    }
    Ok(true)
}

/// How the response body is delimited (RFC 9112 §6.3), or why that cannot be told.
fn framing(
    status: StatusCode,
    is_head: bool,
    http10: bool,
    noted: &Noted,
) -> Result<Framing, ResponseError> {
    if is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(if status == StatusCode::SWITCHING_PROTOCOLS {
            Framing::Switched
        } else {
            Framing::Length(0)
        });
    }
    match (&noted.coding, &noted.content_length) {
        (Some(_), _) if http10 => Err(ResponseError::CodingInHttp10),
        (Some(_), Some(_)) => Err(ResponseError::LengthAndCoding),
        (Some(Err(e)), None) | (None, Some(Err(e))) => Err(e.clone()),
        (Some(Ok(true)), None) => Ok(Framing::Chunked(Chunked::Size)),
        (Some(Ok(false)), None) | (None, None) => Ok(Framing::UntilClose),
        (None, Some(Ok(n))) => Ok(Framing::Length(*n)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(text: &str, is_head: bool) -> Result<ParsedResponse, ResponseError> {
        let mut read = BytesMut::from(text.as_bytes());
        parse_response(&mut read, is_head).map(|p| p.unwrap())
    }

    fn framing_of(text: &str) -> Result<Framing, ResponseError> {
        parse(text, false).map(|p| p.framing)
    }

    fn ok(fields: &str) -> Result<Framing, ResponseError> {
        framing_of(&format!("HTTP/1.1 200 OK\r\n{fields}\r\n"))
    }

    #[test]
    fn framing_follows_rfc9112() {
        assert!(matches!(
            ok("Content-Length: 12\r\n"),
            Ok(Framing::Length(12))
        ));
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", true).map(|p| p.framing),
            Ok(Framing::Length(0))
        ));
        assert!(matches!(
            framing_of("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"),
            Ok(Framing::Length(0))
        ));
        assert!(matches!(ok(""), Ok(Framing::UntilClose)));
        // Codings besides chunked: the client would get coded bytes it cannot tell apart.
        for coded in [
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: gzip\r\n",
            "Transfer-Encoding: identity\r\n",
        ] {
            assert!(
                matches!(ok(coded), Err(ResponseError::OtherCoding(_))),
                "{coded}"
            );
        }
        assert!(matches!(
            framing_of("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
            Ok(Framing::Switched)
        ));
    }

    #[test]
    fn status_codes_outside_100_to_599_are_refused() {
        assert!(parse("HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\n", false).is_err());
        for code in [600, 999] {
            let text = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(
                parse(&text, false).unwrap_err(),
                ResponseError::Status(code)
            );
        }
        assert!(parse("HTTP/1.1 599 X\r\nContent-Length: 0\r\n\r\n", false).is_ok());
    }

    #[test]
    fn ambiguous_framing_is_an_error() {
        for bad in ["-1", "1 2", "", "0x10", "5, 6", "+5"] {
            assert!(
                matches!(
                    ok(&format!("Content-Length: {bad}\r\n")),
                    Err(ResponseError::ContentLength(_))
                ),
                "{bad}"
            );
        }
        assert!(ok("Content-Length: 5\r\nContent-Length: 6\r\n").is_err());
        let cases = [
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                ResponseError::LengthAndCoding,
            ),
            (
                "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                ResponseError::LengthAndCoding,
            ),
            (
                "Transfer-Encoding: xchunked\r\nContent-Length: 3\r\n",
                ResponseError::LengthAndCoding,
            ),
            (
                "Transfer-Encoding: xchunked\r\n",
                ResponseError::OtherCoding("xchunked".into()),
            ),
            (
                "Transfer-Encoding: chunked, gzip\r\n",
                ResponseError::ChunkedNotLast,
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                ResponseError::ChunkedNotLast,
            ),
            (
                "Transfer-Encoding: ,\r\n",
                ResponseError::OtherCoding(String::new()),
            ),
        ];
        for (fields, error) in cases {
            assert_eq!(ok(fields).unwrap_err(), error, "{fields}");
        }
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err(),
            ResponseError::CodingInHttp10
        );
    }

    #[test]
    fn a_repeated_content_length_becomes_one_field_with_one_value() {
        for fields in [
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            "Content-Length: 5, 5\r\n",
            "Content-Length: 5,5\r\nContent-Length: 5\r\n",
        ] {
            let p = parse(&format!("HTTP/1.1 200 OK\r\n{fields}X-A: 1\r\n\r\n"), false).unwrap();
            assert!(matches!(p.framing, Framing::Length(5)), "{fields}");
            assert_eq!(p.head.content_length, Some(5));
            let mut out = BytesMut::new();
            fields::write_lines(&mut out, &p.head.buf, p.head.forwarded(p.status));
            assert_eq!(&out[..], b"Content-Length: 5\r\nX-A: 1\r\n", "{fields}");
        }
    }

    #[test]
    fn interim_heads_are_skipped() {
        let mut read = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
        );
        let p = parse_response(&mut read, false).unwrap().unwrap();
        assert_eq!(p.status, 200);
        assert_eq!(&read[..], b"ok");
    }

    #[test]
    fn keep_alive_by_version_and_connection_tokens() {
        let keep = |text: &str| parse(text, false).unwrap().keep_alive;
        assert!(keep("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!keep(
            "HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!keep("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(keep(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
    }

    #[test]
    fn a_transfer_encoding_is_not_forwarded() {
        let p = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n",
            false,
        )
        .unwrap();
        let names: Vec<&[u8]> = p
            .head
            .forwarded(p.status)
            .map(|f| f.name.get(&p.head.buf))
            .collect();
        assert_eq!(names, [&b"X-A"[..]]);
    }

    /// Found by fuzzing: a reason phrase that is not UTF-8 (httparse hands back a static "").
    #[test]
    fn a_reason_phrase_beyond_ascii_is_replaced() {
        let mut read = BytesMut::from(&b"HTTP/1.1 200 \xff\xfe\r\nContent-Length: 0\r\n\r\n"[..]);
        let p = parse_response(&mut read, false).unwrap().unwrap();
        assert_eq!(p.status, 200);
        assert_eq!(p.head.reason.get(&p.head.buf), b"");
    }

    #[test]
    fn oversized_heads_are_refused() {
        let mut read = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        read.extend(std::iter::repeat_n(b'x', MAX_HEAD_BYTES));
        assert_eq!(
            parse_response(&mut read, false).unwrap_err(),
            ResponseError::TooLarge
        );
    }
}
