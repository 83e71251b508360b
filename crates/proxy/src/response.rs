//! The response head sent back to the client: the instance's, kept as the bytes it sent, or
//! one Sluice makes itself (errors, redirects).
//!
//! An instance's head is written to the client field by field from its buffer, leaving out
//! what describes the upstream hop (hop-by-hop fields, the instance's framing when it is
//! re-framed, its `x-request-id`): as HTTP/1.x text, or encoded for an HTTP/2 stream
//! ([`H2Answer`]). Either way the client gets the request's `x-request-id`, and a `Date` when
//! the instance sent none (RFC 9110 §6.6.1).

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::body::DownBody;
use crate::h1::UpConn;
use crate::headers::RequestId;
use http_body::Body;
use sluice_codec::fields::{itoa_u64, put_field};
use sluice_codec::h2::server::OutField;
use sluice_codec::request::FieldEdit;
use sluice_codec::response::UpstreamHead;

/// Where a response head's fields come from.
#[derive(Debug)]
pub(crate) enum ResponseFields {
    Upstream(UpstreamHead),
    /// An HTTP/2 instance's, as h2 decoded them.
    UpstreamH2(HeaderMap),
    /// Sluice's own answer.
    Local(HeaderMap),
}

/// The head of the response to the client.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) fields: ResponseFields,
}

impl ResponseHead {
    /// Whether the fields state the body's length (the instance's `Content-Length`).
    pub(crate) fn states_length(&self) -> bool {
        match &self.fields {
            ResponseFields::Upstream(u) => u.content_length.is_some() && !u.transfer_encoding,
            ResponseFields::UpstreamH2(map) => map.contains_key(header::CONTENT_LENGTH),
            ResponseFields::Local(_) => false,
        }
    }

    /// Whether the fields have a `Date`.
    fn states_date(&self) -> bool {
        match &self.fields {
            ResponseFields::Upstream(u) => u.date,
            ResponseFields::UpstreamH2(map) | ResponseFields::Local(map) => {
                map.contains_key(header::DATE)
            }
        }
    }
}

/// An upgraded connection to an instance (`101 Switching Protocols`), to be joined with the
/// client's once the `101` head is written.
#[derive(Debug)]
pub(crate) struct Switched {
    pub(crate) conn: Box<UpConn>,
    pub(crate) idle: std::time::Duration,
    pub(crate) addr: std::net::SocketAddr,
    /// Cancelled when the instance is demoted (`on_demotion = "close"`).
    pub(crate) demoted: tokio_util::sync::CancellationToken,
}

/// What the request handler answers.
#[derive(Debug)]
pub(crate) struct ProxyResponse {
    pub(crate) head: ResponseHead,
    pub(crate) request_id: RequestId,
    pub(crate) body: DownBody,
    pub(crate) switched: Option<Box<Switched>>,
}

/// A response as an HTTP/2 stream sends it: the head, whose fields [`H2Answer::send_head`]
/// encodes straight from where they are, and the body.
#[derive(Debug)]
pub(crate) struct H2Answer {
    pub(crate) head: ResponseHead,
    /// The request's id, sent back as `x-request-id` (none on Sluice's answers to requests it
    /// could not read).
    pub(crate) request_id: Option<RequestId>,
    pub(crate) body: DownBody,
}

impl ProxyResponse {
    /// The response as an HTTP/2 client gets it: a map's HTTP/1.x connection fields, which
    /// HTTP/2 forbids (RFC 9113 §8.2.2), are removed now; an instance's HTTP/1.1 head leaves
    /// them out as it is sent.
    pub(crate) fn into_h2(self) -> H2Answer {
        let mut head = self.head;
        if let ResponseFields::UpstreamH2(map) | ResponseFields::Local(map) = &mut head.fields {
            strip_connection_fields(map);
        }
        H2Answer {
            head,
            request_id: Some(self.request_id),
            body: self.body,
        }
    }
}

impl H2Answer {
    /// Sluice's own answer, with no request id.
    pub(crate) fn local(status: StatusCode, fields: HeaderMap, body: DownBody) -> Self {
        let head = ResponseHead {
            status,
            fields: ResponseFields::Local(fields),
        };
        H2Answer {
            head,
            request_id: None,
            body,
        }
    }

    /// Hands `send` the answer's fields as HTTP/2 sends them (name, value, never indexed): an
    /// instance's HTTP/1.1 fields from its head's bytes, without the hop-by-hop ones (even on a
    /// `101`: HTTP/2 has no protocol switch); then a `Date` when the instance sent none
    /// (RFC 9110 §6.6.1), a `content-length` when the fields state none and the body's length
    /// is known, and the request's `x-request-id`.
    pub(crate) fn send_head<R>(
        &self,
        send: impl FnOnce(&mut dyn Iterator<Item = OutField<'_>>) -> R,
    ) -> R {
        let fields = &self.head.fields;
        let date = (!self.head.states_date()).then(http_date);
        let mut digits = [0u8; 20];
        let length = match self.body.size_hint().exact() {
            Some(n) if !self.body.is_end_stream() && !stated_length(fields) => {
                Some(itoa_u64(n, &mut digits))
            }
            _ => None,
        };
        let id = self.request_id.as_ref().map(RequestId::as_bytes);
        let added = date
            .iter()
            .map(|d| (&b"date"[..], d.as_bytes(), false))
            .chain(length.map(|n| (&b"content-length"[..], n, false)))
            .chain(id.map(|id| (&b"x-request-id"[..], id, true)));
        match fields {
            ResponseFields::Upstream(up) => {
                let mut all = up
                    .forwarded(StatusCode::OK)
                    .map(|f| (f.name.get(&up.buf), f.value.get(&up.buf), false))
                    .chain(added);
                send(&mut all)
            }
            ResponseFields::UpstreamH2(map) | ResponseFields::Local(map) => {
                let mut all = map
                    .iter()
                    .filter(|(name, _)| id.is_none() || **name != crate::headers::X_REQUEST_ID)
                    .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes(), v.is_sensitive()))
                    .chain(added);
                send(&mut all)
            }
        }
    }
}

/// Whether an HTTP/2 answer's fields have a `content-length` (Sluice's own answers may, when a
/// policy wrote them).
fn stated_length(fields: &ResponseFields) -> bool {
    match fields {
        ResponseFields::Upstream(u) => u.content_length.is_some() && !u.transfer_encoding,
        ResponseFields::UpstreamH2(map) | ResponseFields::Local(map) => {
            map.contains_key(header::CONTENT_LENGTH)
        }
    }
}

/// How the body of an HTTP/1.x response is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireFraming {
    /// No body is sent (`HEAD`, `1xx`, `204`, `304`); the fields are sent as they are.
    None,
    /// The head states the length (the instance's `Content-Length`, or one written here).
    Length,
    Chunked,
    /// The body ends when the connection closes (HTTP/1.0 clients of a body of unknown
    /// length).
    Close,
}

/// Writes an HTTP/1.1 status line and fields for `head` into `out`. `length` is written as
/// `Content-Length` when given; `framing` and `close` decide the rest.
pub(crate) fn encode_h1(
    out: &mut BytesMut,
    head: &ResponseHead,
    request_id: &RequestId,
    length: Option<u64>,
    framing: WireFraming,
    connection: ConnectionField,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let code = head.status.as_u16();
    out.extend_from_slice(&[
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    let mut date = true;
    match &head.fields {
        ResponseFields::Upstream(up) => {
            let reason = up.reason.get(&up.buf);
            out.extend_from_slice(if reason.is_empty() {
                head.status.canonical_reason().unwrap_or("").as_bytes()
            } else {
                reason
            });
            out.extend_from_slice(b"\r\n");
            sluice_codec::fields::write_lines(out, &up.buf, up.forwarded(head.status));
            date = !up.date;
        }
        ResponseFields::Local(map) | ResponseFields::UpstreamH2(map) => {
            out.extend_from_slice(head.status.canonical_reason().unwrap_or("").as_bytes());
            out.extend_from_slice(b"\r\n");
            for (name, value) in map {
                // The request's id is written below (an HTTP/2 instance may send its own).
                if name == crate::headers::X_REQUEST_ID {
                    continue;
                }
                date &= name != header::DATE;
                put_field(out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
    }
    if date {
        put_field(out, b"date", http_date().as_bytes());
    }
    put_field(out, b"x-request-id", request_id.as_bytes());
    if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa_u64(n, &mut [0u8; 20]));
        out.extend_from_slice(b"\r\n");
    }
    if framing == WireFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    match connection {
        ConnectionField::None => {}
        ConnectionField::Close => out.extend_from_slice(b"connection: close\r\n"),
        ConnectionField::KeepAlive => out.extend_from_slice(b"connection: keep-alive\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// The `Connection` field Sluice adds for the client's hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionField {
    None,
    Close,
    /// For HTTP/1.0 clients that asked to keep the connection.
    KeepAlive,
}

/// Applies a policy's edits to the response head it was shown (after `on-response`): the
/// fields become a map, as an HTTP/2 instance's are, and framing stays the proxy's.
pub(crate) fn edit_response(head: &mut ResponseHead, edits: &[FieldEdit]) {
    let mut map = match std::mem::replace(&mut head.fields, ResponseFields::Local(HeaderMap::new()))
    {
        ResponseFields::Upstream(up) => upstream_map(&up, head.status),
        ResponseFields::UpstreamH2(map) | ResponseFields::Local(map) => map,
    };
    for edit in edits {
        apply_to_map(&mut map, edit);
    }
    head.fields = ResponseFields::UpstreamH2(map);
}

/// The response head's fields as (name, value) text, for `on-response`.
pub(crate) fn response_fields(head: &ResponseHead) -> Vec<(String, String)> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match &head.fields {
        ResponseFields::Upstream(up) => up
            .forwarded(head.status)
            .map(|f| (text(f.name.get(&up.buf)), text(f.value.get(&up.buf))))
            .collect(),
        ResponseFields::UpstreamH2(map) | ResponseFields::Local(map) => map
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), text(v.as_bytes())))
            .collect(),
    }
}

/// Removes the fields that describe an HTTP/1.x connection (RFC 9113 §8.2.2), and those the
/// `Connection` field names.
fn strip_connection_fields(headers: &mut HeaderMap) {
    if let Some(connection) = headers.remove(header::CONNECTION)
        && let Ok(names) = connection.to_str()
    {
        for name in names.split(',') {
            headers.remove(name.trim());
        }
    }
    for name in [header::TRANSFER_ENCODING, header::UPGRADE, header::TE] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(HeaderName::from_static(name));
    }
}

/// The fields passed on, as a map. Each value shares the head's buffer rather than copying it
/// (an allocation and a copy fewer per field, on every HTTP/2 client's response).
fn upstream_map(up: &UpstreamHead, status: http::StatusCode) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(up.fields.len() + 2);
    for f in up.forwarded(status) {
        // httparse accepted both, so these hold; a field that does not is dropped rather than
        // failing the response.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(f.name.get(&up.buf)),
            HeaderValue::from_maybe_shared(up.buf.slice(f.value.range())),
        ) {
            map.append(n, v);
        }
    }
    map
}

fn apply_to_map(map: &mut HeaderMap, edit: &FieldEdit) {
    let parse = |name: &str, value: Option<&str>| {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = value.map(HeaderValue::from_str).transpose().ok()?;
        Some((name, value))
    };
    match edit {
        FieldEdit::Set(n, v) => {
            if let Some((name, Some(value))) = parse(n, Some(v)) {
                map.insert(name, value);
            }
        }
        FieldEdit::Append(n, v) => {
            if let Some((name, Some(value))) = parse(n, Some(v)) {
                map.append(name, value);
            }
        }
        FieldEdit::Remove(n) => {
            if let Some((name, _)) = parse(n, None) {
                map.remove(name);
            }
        }
    }
}

thread_local! {
    /// The `Date` value of the current second, made once per second per thread.
    static DATE: RefCell<(u64, HeaderValue)> =
        const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
}

/// The current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(crate) fn http_date() -> HeaderValue {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            let text = httpdate::fmt_http_date(now);
            cached.1 = HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""));
            cached.0 = second;
        }
        cached.1.clone()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;

    use super::*;

    #[test]
    fn dates() {
        let d = http_date();
        assert!(d.to_str().unwrap().ends_with(" GMT"), "{d:?}");
    }

    #[test]
    fn local_heads_are_written_with_framing_and_id() {
        let mut map = HeaderMap::new();
        map.insert(header::LOCATION, HeaderValue::from_static("/new"));
        let head = ResponseHead {
            status: StatusCode::FOUND,
            fields: ResponseFields::Local(map),
        };
        let mut out = BytesMut::new();
        encode_h1(
            &mut out,
            &head,
            &RequestId::Client(Bytes::from_static(b"id-1")),
            Some(0),
            WireFraming::Length,
            ConnectionField::Close,
        );
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 302 Found\r\nlocation: /new\r\ndate: "),
            "{text}"
        );
        assert!(
            text.ends_with("x-request-id: id-1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
            "{text}"
        );
    }

    /// The fields an HTTP/2 client gets, as `send_head` hands them over.
    fn h2_fields(answer: &H2Answer) -> Vec<(String, String, bool)> {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        answer.send_head(|fields| fields.map(|(n, v, s)| (text(n), text(v), s)).collect())
    }

    fn instance_answer(head: &str, body: &'static [u8]) -> H2Answer {
        let mut read = BytesMut::from(head);
        let parsed = sluice_codec::response::parse_response(&mut read, false)
            .unwrap()
            .unwrap();
        H2Answer {
            head: ResponseHead {
                status: parsed.status,
                fields: ResponseFields::Upstream(parsed.head),
            },
            request_id: Some(RequestId::Client(Bytes::from_static(b"id-1"))),
            body: DownBody::bare(Bytes::from_static(body)),
        }
    }

    /// An instance's HTTP/1.1 head reaches an HTTP/2 client from its own bytes: without what
    /// HTTP/2 forbids or what described the instance's hop, with the request's id (never
    /// indexed), a `date` and the body's length added.
    #[test]
    fn instance_heads_reach_http2_clients_without_hop_fields() {
        let answer = instance_answer(
            "HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
             X-Hop: 1\r\nTransfer-Encoding: chunked\r\nX-Request-Id: theirs\r\nSet-Cookie: a=1\r\n\r\n",
            b"hello",
        );
        let fields = h2_fields(&answer);
        let names: Vec<&str> = fields.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Server",
                "Set-Cookie",
                "date",
                "content-length",
                "x-request-id"
            ]
        );
        assert_eq!(fields[3].1, "5");
        assert_eq!(fields[4], ("x-request-id".into(), "id-1".into(), true));

        let answer = instance_answer(
            "HTTP/1.1 200 OK\r\nDate: Mon, 07 Dec 2026 10:00:00 GMT\r\nContent-Length: 5\r\n\r\n",
            b"hello",
        );
        let names: Vec<String> = h2_fields(&answer).into_iter().map(|f| f.0).collect();
        assert_eq!(names, ["Date", "Content-Length", "x-request-id"]);
    }

    /// A `101` has no meaning on HTTP/2: its `Connection` and `Upgrade` do not go out.
    #[test]
    fn a_switch_reaches_http2_clients_without_its_connection_fields() {
        let answer = instance_answer(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"",
        );
        let names: Vec<String> = h2_fields(&answer).into_iter().map(|f| f.0).collect();
        assert_eq!(names, ["date", "x-request-id"]);
    }

    /// Maps (Sluice's own answers, an HTTP/2 instance's, a policy's edits) lose the connection
    /// fields once, and the request's id replaces an instance's.
    #[test]
    fn mapped_heads_reach_http2_clients_with_one_request_id() {
        let mut map = HeaderMap::new();
        map.insert(header::CONNECTION, HeaderValue::from_static("x-hop"));
        map.insert("x-hop", HeaderValue::from_static("1"));
        map.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        map.insert(
            crate::headers::X_REQUEST_ID,
            HeaderValue::from_static("theirs"),
        );
        let response = ProxyResponse {
            head: ResponseHead {
                status: StatusCode::OK,
                fields: ResponseFields::UpstreamH2(map),
            },
            request_id: RequestId::Client(Bytes::from_static(b"id-1")),
            body: DownBody::bare(Bytes::new()),
            switched: None,
        };
        let names: Vec<String> = h2_fields(&response.into_h2())
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(names, ["x-content-type-options", "date", "x-request-id"]);
        let local = H2Answer::local(
            StatusCode::NOT_FOUND,
            HeaderMap::new(),
            DownBody::bare(Bytes::from_static(b"{}")),
        );
        let names: Vec<String> = h2_fields(&local).into_iter().map(|f| f.0).collect();
        assert_eq!(names, ["date", "content-length"]);
    }
}
