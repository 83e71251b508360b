//! The client's request head as it arrived: the head's bytes, spans of its target and fields,
//! and the facts forwarding needs (noted once, while parsing).
//!
//! HTTP/1.x heads are parsed here from the connection's read buffer ([`parse_h1`]), with the
//! checks RFC 9112 asks of a server: one `Host` (required in HTTP/1.1), a body length that can
//! be determined (`Content-Length` digits, or `Transfer-Encoding: chunked` alone — both at once
//! is refused, as it is the shape of request smuggling), and an origin-form or absolute-form
//! target. HTTP/2 requests, as Sluice's HTTP/2 server decoded and checked them, are brought to the
//! same shape by [`RequestHead::from_h2_head`], so forwarding has one code path.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};

use http::uri::PathAndQuery;
use http::{Method, StatusCode, Version};

use crate::fields::{self, ConnectionTokens, Field, Kind, Span};
use crate::path::{self, PathError};

/// Most header fields accepted in a request head (hyper's default as well).
pub const MAX_FIELDS: usize = 100;

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What forwarding needs to know of a request head, noted while its fields are read.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    host: Option<u16>,
    request_id: Option<u16>,
    /// The `traceparent` field; `u16::MAX` when there were several (none of them is valid).
    traceparent: Option<u16>,
    forwarded_for: Option<u16>,
    referer: Option<u16>,
    user_agent: Option<u16>,
    pub connection: ConnectionTokens,
    /// An `Upgrade` field is present.
    pub upgrade: bool,
    /// `Expect: 100-continue` (HTTP/1.1 only).
    pub expect_continue: bool,
    /// The `Content-Length` value, when one was sent.
    pub content_length: Option<u64>,
    /// `TE` lists `trailers`: the client takes trailer fields.
    pub te_trailers: bool,
    /// A `Cookie` field is present.
    pub cookie: bool,
    pub body: BodyLength,
}

impl Facts {
    fn new() -> Self {
        Self {
            host: None,
            request_id: None,
            traceparent: None,
            forwarded_for: None,
            referer: None,
            user_agent: None,
            connection: ConnectionTokens::default(),
            upgrade: false,
            expect_continue: false,
            content_length: None,
            te_trailers: false,
            cookie: false,
            body: BodyLength::None,
        }
    }
}

/// A request head: method, target, version and fields, with its bytes.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub version: Version,
    buf: Bytes,
    /// Path and query as received (validated once, then read without checks); `/` stands
    /// for the empty path of an absolute-form target.
    target: PathAndQuery,
    /// The host of an absolute-form target, or HTTP/2's `:authority`.
    authority: Option<Span>,
    fields: Vec<Field>,
    pub facts: Facts,
}

/// Why a request head is refused; answered on the connection, which is then closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadError {
    pub status: StatusCode,
    /// Stable snake_case name (the JSON body's `error`, the metric's `reason`).
    pub kind: &'static str,
    pub detail: &'static str,
}

impl HeadError {
    const fn bad(detail: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "bad_request",
            detail,
        }
    }

    pub const TOO_LARGE: HeadError = HeadError {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        kind: "request_head_too_large",
        detail: "the request head exceeds max_header_bytes or has more than 100 fields",
    };
}

impl RequestHead {
    /// The request path (without the query).
    pub fn path(&self) -> &str {
        self.target.path()
    }

    /// The query, without its `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.query()
    }

    /// Path and query.
    pub fn target(&self) -> &str {
        self.target.as_str()
    }

    /// The host the request names: an absolute-form target's or `:authority`, else `Host`.
    pub fn host(&self) -> Option<&[u8]> {
        match self.authority {
            Some(a) => Some(a.get(&self.buf)),
            None => self.field_at(self.facts.host),
        }
    }

    /// Whether the host came from the target (or `:authority`) rather than a `Host` field.
    pub fn host_from_target(&self) -> bool {
        self.authority.is_some()
    }

    /// Whether the client sent a `Host` field.
    pub fn has_host_field(&self) -> bool {
        self.facts.host.is_some()
    }

    /// The client's `x-request-id`, sharing the head's buffer.
    pub fn request_id_bytes(&self) -> Option<Bytes> {
        self.facts
            .request_id
            .map(|i| self.buf.slice(self.fields[usize::from(i)].value.range()))
    }

    /// The `traceparent` value, when the request has exactly one.
    pub fn traceparent(&self) -> Option<&[u8]> {
        self.field_at(self.facts.traceparent.filter(|&i| i != u16::MAX))
    }

    /// The first `X-Forwarded-For` value.
    pub fn forwarded_for(&self) -> Option<&[u8]> {
        self.field_at(self.facts.forwarded_for)
    }

    pub fn referer(&self) -> Option<&[u8]> {
        self.field_at(self.facts.referer)
    }

    pub fn user_agent(&self) -> Option<&[u8]> {
        self.field_at(self.facts.user_agent)
    }

    fn field_at(&self, i: Option<u16>) -> Option<&[u8]> {
        i.map(|i| self.fields[usize::from(i)].value.get(&self.buf))
    }

    /// The first value of the field called `name` (any case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| f.name.get(&self.buf).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| f.value.get(&self.buf))
    }

    /// The value of cookie `name` in the `Cookie` fields.
    pub fn cookie(&self, name: &str) -> Option<&[u8]> {
        if !self.facts.cookie {
            return None;
        }
        self.fields
            .iter()
            .filter(|f| f.kind == Kind::Cookie)
            .flat_map(|f| f.value.get(&self.buf).split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|&b| b == b'=')?;
                (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
            })
    }

    /// The fields, in order (spans of [`Self::buffer`]).
    pub fn field_list(&self) -> &[Field] {
        &self.fields
    }

    /// Whether the `Connection` fields name `name` (besides the usual tokens).
    pub fn named_by_connection(&self, name: &[u8]) -> bool {
        self.facts.connection.names_others
            && fields::named_by_connection(&self.buf, &self.fields, name)
    }

    /// Whether the client asks to switch protocols (WebSocket): HTTP/1.1, `Connection:
    /// upgrade` and an `Upgrade` field.
    pub fn is_upgrade(&self) -> bool {
        self.version == Version::HTTP_11 && self.facts.upgrade && self.facts.connection.upgrade
    }

    /// The protocols the `Upgrade` fields name, without their versions (`websocket`,
    /// `h2c`), in order.
    pub fn upgrade_protocols(&self) -> impl Iterator<Item = &[u8]> {
        self.fields
            .iter()
            .filter(|f| f.kind == Kind::Upgrade)
            .flat_map(|f| fields::tokens(f.value.get(&self.buf)))
            .map(|p| p.split(|&b| b == b'/').next().unwrap_or(p).trim_ascii())
    }

    /// Whether the client wants the connection kept after this request.
    pub fn wants_keep_alive(&self) -> bool {
        let c = &self.facts.connection;
        match self.version {
            Version::HTTP_10 => c.keep_alive && !c.close,
            _ => !c.close,
        }
    }

    /// The head's bytes and the spans of its log fields, for the access log.
    pub fn buffer(&self) -> &Bytes {
        &self.buf
    }

    /// An HTTP/2 request as Sluice's own server decoded and checked it, in the shape of an
    /// HTTP/1.x head: its target, `:authority` and fields are copied into one buffer.
    pub fn from_h2_head(head: &crate::h2::head::Head) -> Result<RequestHead, HeadError> {
        let method =
            Method::from_bytes(head.method()).map_err(|_| HeadError::bad("invalid :method"))?;
        let target = match head.path() {
            Some(path) => PathAndQuery::try_from(path)
                .map_err(|_| HeadError::bad("invalid character in the request target"))?,
            None => PathAndQuery::from_static("/"),
        };
        // HTTP/2 may split `cookie` into one field per crumb; an HTTP/1.1 instance gets them
        // joined into one field by "; " (RFC 9113 §8.2.3), after the other fields.
        let is_cookie = |name: &[u8]| name == b"cookie";
        let crumbs: Vec<&[u8]> = head
            .fields()
            .filter(|(name, _, _)| is_cookie(name))
            .map(|(_, value, _)| value)
            .collect();
        let cookie = crumbs.join(&b"; "[..]);
        let fields = || {
            head.fields()
                .filter(|(name, _, _)| !is_cookie(name))
                .map(|(name, value, _)| (name, value))
                .chain((!crumbs.is_empty()).then_some((&b"cookie"[..], &cookie[..])))
        };
        Self::h2_shaped(method, target, head.authority(), fields)
    }

    /// An HTTP/2 request's parts in the shape of an HTTP/1.x head; `fields` lists the fields
    /// (it is called twice: to size the buffer, then to fill it).
    fn h2_shaped<'a, I: Iterator<Item = (&'a [u8], &'a [u8])>>(
        method: Method,
        target: PathAndQuery,
        authority: Option<&[u8]>,
        fields: impl Fn() -> I,
    ) -> Result<RequestHead, HeadError> {
        if authority.is_some_and(|a| !fields::valid_host(a)) {
            return Err(HeadError::bad("invalid :authority"));
        }
        let size = authority.map_or(0, <[u8]>::len)
            + fields().map(|(n, v)| n.len() + v.len()).sum::<usize>();
        let mut buf = BytesMut::with_capacity(size);
        let mut spans = Vec::with_capacity(fields().size_hint().0);
        let mut push = |bytes: &[u8]| {
            let span = Span::new(buf.len(), bytes.len());
            buf.extend_from_slice(bytes);
            span
        };
        let authority = authority.map(&mut push);
        for (name, value) in fields() {
            let name_span = push(name);
            let value_span = push(value);
            spans.push((name_span, value_span));
        }
        let buf = buf.freeze();
        let mut facts = Facts::new();
        let mut kept = Vec::with_capacity(spans.len());
        for (name, value) in spans {
            note(&mut facts, &mut kept, &buf, name, value)?;
        }
        // The HTTP/2 layer checks the body against `content-length`; a body without one is
        // sent chunked by the upstream side.
        facts.expect_continue = false;
        Ok(RequestHead {
            method,
            version: Version::HTTP_2,
            buf,
            target: canonical_target(target)?,
            authority,
            fields: kept,
            facts,
        })
    }
}

/// One change a request policy makes to a head's fields (names compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldEdit {
    /// Replaces every field of that name with one.
    Set(String, String),
    /// Adds a field after the others.
    Append(String, String),
    /// Removes every field of that name.
    Remove(String),
}

impl RequestHead {
    /// This head with `edits` applied to its fields and, when given, a new target (path and
    /// query, origin-form). The fields are re-read as a parsed head's are, so the facts
    /// forwarding relies on (Host, body length, `Connection`) follow the edits; the caller keeps
    /// framing fields out of `edits`.
    pub fn edited(&self, edits: &[FieldEdit], target: Option<&str>) -> Result<Self, HeadError> {
        let mut lines: Vec<(&[u8], &[u8])> = self
            .fields
            .iter()
            .map(|f| (f.name.get(&self.buf), f.value.get(&self.buf)))
            .collect();
        for edit in edits {
            apply_edit(&mut lines, edit);
        }
        if lines.len() > MAX_FIELDS {
            return Err(HeadError::TOO_LARGE);
        }
        let authority = self.authority.map(|a| a.get(&self.buf));
        let (buf, authority, spans) = pack(authority, &lines);
        let mut facts = Facts::new();
        let mut fields = Vec::with_capacity(spans.len());
        for (name, value) in spans {
            note(&mut facts, &mut fields, &buf, name, value)?;
        }
        facts.expect_continue &= self.facts.expect_continue;
        let target = match target {
            None => self.target.clone(),
            Some(t) if t.starts_with('/') => canonical_target(
                PathAndQuery::try_from(t)
                    .map_err(|_| HeadError::bad("invalid character in the request target"))?,
            )?,
            Some(_) => return Err(HeadError::bad("a rewritten target must start with '/'")),
        };
        Ok(RequestHead {
            method: self.method.clone(),
            version: self.version,
            buf,
            target,
            authority,
            fields,
            facts,
        })
    }
}

fn apply_edit<'a>(lines: &mut Vec<(&'a [u8], &'a [u8])>, edit: &'a FieldEdit) {
    fn is(line: &(&[u8], &[u8]), name: &str) -> bool {
        line.0.eq_ignore_ascii_case(name.as_bytes())
    }
    match edit {
        FieldEdit::Set(name, value) => {
            let at = lines.iter().position(|l| is(l, name));
            lines.retain(|l| !is(l, name));
            let at = at.map_or(lines.len(), |i| i.min(lines.len()));
            lines.insert(at, (name.as_bytes(), value.as_bytes()));
        }
        FieldEdit::Append(name, value) => lines.push((name.as_bytes(), value.as_bytes())),
        FieldEdit::Remove(name) => lines.retain(|l| !is(l, name)),
    }
}

/// An authority and field lines copied into one buffer, with their spans.
fn pack(
    authority: Option<&[u8]>,
    lines: &[(&[u8], &[u8])],
) -> (Bytes, Option<Span>, Vec<(Span, Span)>) {
    let size = authority.map_or(0, <[u8]>::len)
        + lines.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
    let mut buf = BytesMut::with_capacity(size);
    let mut push = |bytes: &[u8]| {
        let span = Span::new(buf.len(), bytes.len());
        buf.extend_from_slice(bytes);
        span
    };
    let authority = authority.map(&mut push);
    let spans = lines.iter().map(|(n, v)| (push(n), push(v))).collect();
    (buf.freeze(), authority, spans)
}

/// Notes one field's facts and adds it to `fields`.
fn note(
    facts: &mut Facts,
    fields: &mut Vec<Field>,
    buf: &[u8],
    name: Span,
    value: Span,
) -> Result<(), HeadError> {
    let kind = Kind::of(name.get(buf));
    let index = fields.len() as u16;
    let v = value.get(buf);
    match kind {
        Kind::Host if facts.host.replace(index).is_some() => {
            return Err(HeadError::bad("more than one Host field"));
        }
        Kind::Host if !fields::valid_host(v) => {
            return Err(HeadError::bad("invalid Host field"));
        }
        Kind::ContentLength => {
            let previous = facts.content_length;
            let Some(n) = fields::content_length(v, previous) else {
                return Err(HeadError::bad("invalid or conflicting Content-Length"));
            };
            facts.content_length = Some(n);
            if facts.body != BodyLength::Chunked {
                facts.body = BodyLength::Length(n);
            }
            if previous.is_some() {
                // The same length again: one field goes on (RFC 9110 §8.6).
                return Ok(());
            }
        }
        Kind::TransferEncoding => facts.body = BodyLength::Chunked,
        Kind::Connection => facts.connection.note(v),
        Kind::Upgrade => facts.upgrade = true,
        Kind::Expect => {
            facts.expect_continue |= v.trim_ascii().eq_ignore_ascii_case(b"100-continue")
        }
        Kind::Te => {
            facts.te_trailers |= fields::tokens(v).any(|t| t.eq_ignore_ascii_case(b"trailers"))
        }
        Kind::XRequestId => {
            facts.request_id.get_or_insert(index);
        }
        Kind::XForwardedFor => {
            facts.forwarded_for.get_or_insert(index);
        }
        Kind::TraceParent => {
            let seen = facts.traceparent.replace(index).is_some();
            if seen {
                facts.traceparent = Some(u16::MAX);
            }
        }
        Kind::Referer => {
            facts.referer.get_or_insert(index);
        }
        Kind::UserAgent => {
            facts.user_agent.get_or_insert(index);
        }
        Kind::Cookie => facts.cookie = true,
        _ => {}
    }
    let end = value.range().end;
    let field = Field {
        name,
        value,
        kind,
        crlf: buf.get(end..end + 2) == Some(b"\r\n"),
    };
    fields.push(field.single_valued(buf));
    Ok(())
}

/// Parses an HTTP/1.x request head at the start of `read`. On success the head's bytes are
/// split off `read` (what follows, a body or a pipelined request, stays). `Ok(None)`: the head
/// is not complete yet.
pub fn parse_h1(read: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    // Uninitialised slots: a head has a handful of fields, not a hundred to clear.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, read, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TOO_LARGE),
        // Which of 400 and 505 a bad version is depends on the whole request line.
        Err(httparse::Error::Version) if !read.contains(&b'\n') => return Ok(None),
        Err(httparse::Error::Version) if names_another_version(read) => {
            return Err(HeadError {
                status: StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                kind: "http_version_not_supported",
                detail: "only HTTP/1.0, HTTP/1.1 and HTTP/2 are served",
            });
        }
        Err(_) => return Err(HeadError::bad("malformed request head")),
    };
    let base: &[u8] = read;
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::bad("malformed request line"));
    };
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::bad("invalid method"))?;
    if method == Method::CONNECT {
        return Err(HeadError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            kind: "method_not_allowed",
            detail: "CONNECT is not served",
        });
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let (target, authority) = parse_target(base, path.as_bytes(), &method)?;

    let mut facts = Facts::new();
    let mut fields = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = Span::of(base, h.name.as_bytes());
        let value = Span::of(base, h.value);
        note(&mut facts, &mut fields, base, name, value)?;
    }
    if facts.body == BodyLength::Chunked {
        let mut codings = fields
            .iter()
            .filter(|f| f.kind == Kind::TransferEncoding)
            .flat_map(|f| fields::tokens(f.value.get(base)));
        let only_chunked = codings
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if version == Version::HTTP_10 {
            return Err(HeadError::bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if fields.iter().any(|f| f.kind == Kind::ContentLength) {
            return Err(HeadError::bad(
                "both Transfer-Encoding and Content-Length (a request smuggling shape)",
            ));
        }
        if !only_chunked {
            return Err(HeadError {
                status: StatusCode::NOT_IMPLEMENTED,
                kind: "unsupported_transfer_coding",
                detail: "only Transfer-Encoding: chunked is understood",
            });
        }
    }
    if facts.body == BodyLength::Length(0) {
        facts.body = BodyLength::None;
    }
    if version == Version::HTTP_11 && facts.host.is_none() && authority.is_none() {
        return Err(HeadError::bad("HTTP/1.1 request without a Host field"));
    }
    if version == Version::HTTP_10 {
        facts.expect_continue = false;
    }
    let buf = read.split_to(len).freeze();
    let target = match target {
        Target::Span(span) => PathAndQuery::from_maybe_shared(buf.slice(span.range())),
        Target::Rooted(rest) => PathAndQuery::try_from(format!("/{rest}")),
    }
    .map_err(|_| HeadError::bad("invalid character in the request target"))?;
    let target = canonical_target(target)?;
    Ok(Some(RequestHead {
        method,
        version,
        buf,
        target,
        authority,
        fields,
        facts,
    }))
}

/// Whether a request line httparse refused for its version is otherwise well formed
/// (`METHOD TARGET HTTP/x.y`): a version Sluice does not speak (505), not garbage (400) such
/// as a space inside the target.
fn names_another_version(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    matches!(parts.as_slice(), [_, _, v] if v.len() == 8 && v.starts_with(b"HTTP/")
        && v[5].is_ascii_digit() && v[6] == b'.' && v[7].is_ascii_digit())
}

/// Where a request's path and query are.
enum Target {
    /// In the head, as they are.
    Span(Span),
    /// An absolute-form target without a path: `/` and then this (a query, or nothing).
    Rooted(String),
}

/// The target with its path in canonical form ([`crate::path`]), so routing and the instance
/// see one spelling of it; `*` as it is.
fn canonical_target(target: PathAndQuery) -> Result<PathAndQuery, HeadError> {
    if !target.path().starts_with('/') {
        return Ok(target);
    }
    match path::normalize_target(target.as_str()) {
        Ok(Cow::Borrowed(_)) => Ok(target),
        Ok(Cow::Owned(whole)) => PathAndQuery::try_from(whole)
            .map_err(|_| HeadError::bad("invalid character in the request target")),
        Err(PathError::BadEscape) => Err(HeadError::bad(
            "a '%' not followed by two hex digits in the request path",
        )),
    }
}

/// Splits a request target into its path and query and its host: origin-form `/path?q`,
/// absolute-form `http://host/path?q`, or `*` for `OPTIONS`.
fn parse_target(
    base: &[u8],
    target: &[u8],
    method: &Method,
) -> Result<(Target, Option<Span>), HeadError> {
    if !target.is_ascii() {
        return Err(HeadError::bad("non-ASCII bytes in the request target"));
    }
    // A fragment is the client's own business (RFC 9112 §3.2): `#` never reaches a server,
    // and dropping it silently would forward another target than the one received.
    if target.contains(&b'#') {
        return Err(HeadError::bad("a fragment (#) in the request target"));
    }
    // RFC 3986 §2: these must be percent-encoded; parsers behind Sluice disagree on them (as
    // haproxy does by default, they are refused rather than passed on).
    if target.iter().any(|b| b"\"<>\\^`{|}".contains(b)) {
        return Err(HeadError::bad(
            "a character RFC 3986 requires percent-encoded in the request target",
        ));
    }
    if target.starts_with(b"/") || (target == b"*" && *method == Method::OPTIONS) {
        return Ok((Target::Span(Span::of(base, target)), None));
    }
    let rest = [&b"http://"[..], b"https://"]
        .iter()
        .find(|scheme| {
            target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme)
        })
        .map(|scheme| &target[scheme.len()..])
        .ok_or(HeadError::bad(
            "request target is not a path or an http(s) URL",
        ))?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let host = &rest[..end];
    if host.is_empty() || !fields::valid_host(host) {
        return Err(HeadError::bad("invalid host in the request target"));
    }
    let after = &rest[end..];
    let path = if after.starts_with(b"/") {
        Target::Span(Span::of(base, after))
    } else {
        Target::Rooted(String::from_utf8_lossy(after).into_owned())
    };
    Ok((path, Some(Span::of(base, host))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// An HTTP/2 request from decoded fields, checked as Sluice's server checks them.
    fn h2_request(fields: &[(&str, &str)]) -> Result<RequestHead, HeadError> {
        let bytes = fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
        RequestHead::from_h2_head(&crate::h2::head::Head::checked(bytes, 4096, false).unwrap())
    }

    #[test]
    fn http2_cookie_crumbs_reach_http1_as_one_field() {
        let head = h2_request(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "example.test"),
            (":path", "/"),
            ("cookie", "a=1"),
            ("accept", "*/*"),
            ("cookie", "b=2"),
        ])
        .unwrap();
        let buf = head.buffer();
        let fields: Vec<(&[u8], &[u8])> = head
            .field_list()
            .iter()
            .map(|f| (f.name.get(buf), f.value.get(buf)))
            .collect();
        assert_eq!(
            fields,
            [
                (&b"accept"[..], &b"*/*"[..]),
                (&b"cookie"[..], &b"a=1; b=2"[..])
            ]
        );
        assert_eq!(head.host(), Some(&b"example.test"[..]));
    }

    fn parse(text: &str) -> Result<Option<RequestHead>, HeadError> {
        let mut read = BytesMut::from(text.as_bytes());
        parse_h1(&mut read)
    }

    fn ok(text: &str) -> RequestHead {
        parse(text).unwrap().unwrap()
    }

    fn status(text: &str) -> u16 {
        parse(text).unwrap_err().status.as_u16()
    }

    /// Routing sees one spelling of a path, and so does the instance (see `path`).
    #[test]
    fn targets_are_canonical_in_both_forms_and_in_http2() {
        let h = ok("GET //x/../%61dmin/./s?q=%2e%2E HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            (h.path(), h.query(), h.target()),
            ("/admin/s", Some("q=%2e%2E"), "/admin/s?q=%2e%2E")
        );
        let h = ok("GET http://a/b/%2e%2e/admin HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.target(), "/admin");
        let h2 = |path| {
            h2_request(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "a"),
                (":path", path),
            ])
        };
        assert_eq!(h2("/x//../admin/s").unwrap().target(), "/admin/s");
        assert!(h2("/b%zz").is_err());
    }

    /// A request policy's edits: fields set in place, appended, removed; a new target made
    /// canonical; the facts re-read (a new Host counts); a bad value refused like a parsed one.
    #[test]
    fn edited_heads_follow_their_edits() {
        let h = ok("GET /a?x=1 HTTP/1.1\r\nHost: a\r\nX-One: 1\r\nAccept: */*\r\nX-One: 2\r\n\r\n");
        let edits = [
            FieldEdit::Set("x-one".into(), "set".into()),
            FieldEdit::Append("X-Two".into(), "2".into()),
            FieldEdit::Remove("accept".into()),
            FieldEdit::Set("host".into(), "b.example".into()),
        ];
        let e = h.edited(&edits, Some("/b/./c?y=2")).unwrap();
        let fields: Vec<(&[u8], &[u8])> = e
            .field_list()
            .iter()
            .map(|f| (f.name.get(e.buffer()), f.value.get(e.buffer())))
            .collect();
        assert_eq!(
            fields,
            [
                (&b"host"[..], &b"b.example"[..]),
                (b"x-one", b"set"),
                (b"X-Two", b"2"),
            ]
        );
        assert_eq!((e.path(), e.query()), ("/b/c", Some("y=2")));
        assert_eq!(e.host(), Some(&b"b.example"[..]));
        assert_eq!(
            (e.method.clone(), e.version),
            (Method::GET, Version::HTTP_11)
        );
        let unchanged = h.edited(&[], None).unwrap();
        assert_eq!(unchanged.target(), "/a?x=1");
        let bad_host = [FieldEdit::Set("host".into(), "a b".into())];
        assert_eq!(h.edited(&bad_host, None).unwrap_err().kind, "bad_request");
        assert!(h.edited(&[], Some("no-slash")).is_err());
    }

    #[test]
    fn origin_form_and_facts() {
        let mut read = BytesMut::from(
            &b"POST /a/b?x=1 HTTP/1.1\r\nHost: Ex.com\r\nContent-Length: 5\r\n\
               Connection: keep-alive, X-Secret\r\nX-Request-Id: r1\r\nCookie: a=1; s=xyz\r\n\r\nhelloGET"[..],
        );
        let h = parse_h1(&mut read).unwrap().unwrap();
        assert_eq!(&read[..], b"helloGET", "body and the next request stay");
        assert_eq!(h.method, Method::POST);
        assert_eq!((h.path(), h.query()), ("/a/b", Some("x=1")));
        assert_eq!(h.target(), "/a/b?x=1");
        assert_eq!(h.host(), Some(&b"Ex.com"[..]));
        assert_eq!(h.facts.body, BodyLength::Length(5));
        assert_eq!(h.request_id_bytes().as_deref(), Some(&b"r1"[..]));
        assert_eq!(h.cookie("s"), Some(&b"xyz"[..]));
        assert_eq!(h.get("content-length"), Some(&b"5"[..]));
        assert!(h.named_by_connection(b"x-secret"));
        assert!(h.wants_keep_alive());
        assert!(!h.is_upgrade());
    }

    #[test]
    fn absolute_form_takes_its_host_from_the_target() {
        let h = ok("GET http://a.example:81/p?q HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(h.host(), Some(&b"a.example:81"[..]));
        assert_eq!((h.path(), h.query()), ("/p", Some("q")));
        let h = ok("GET HTTP://a.example?q HTTP/1.1\r\n\r\n");
        assert_eq!((h.path(), h.query(), h.target()), ("/", Some("q"), "/?q"));
        assert_eq!(ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").target(), "*");
    }

    #[test]
    fn incomplete_heads_wait() {
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn refused_heads() {
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400, "no Host");
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(
            status(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
            ),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n"),
            400
        );
        assert_eq!(status("GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET /é HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET /<x> HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(status("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"), 405);
        assert_eq!(status("GET a/b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET /#frag HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        for c in ["\"", "\\", "^", "{", "}", "|", "`"] {
            assert_eq!(
                status(&format!("GET /a{c}b HTTP/1.1\r\nHost: a\r\n\r\n")),
                400
            );
        }
        assert!(matches!(
            parse("GET /%7Bx%7D HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Some(_))
        ));
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n"), 400);
        assert_eq!(status("GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        // Found by fuzzing: the status of a bad version waits for the whole request line.
        assert!(parse("GET /ws HTTP/0").unwrap().is_none());
        assert_eq!(status("GET /ws HTTP/0.1\r\nHost: a\r\n\r\n"), 505);
        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            431
        );
    }

    /// RFC 9112 §3.2: a Host that is not `host[:port]` is a 400, as is a second one; an
    /// absolute-form target's host follows the same grammar.
    #[test]
    fn invalid_hosts_are_refused() {
        for host in ["a b", "evil.com/x@y", "<script>", "u@h", "h:x", "[::1"] {
            assert_eq!(
                parse(&format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")).unwrap_err(),
                HeadError::bad("invalid Host field"),
                "{host}"
            );
        }
        assert_eq!(status("GET http://a b/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET http://u@h/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(
            ok("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").host(),
            Some(&b"[::1]:8080"[..])
        );
    }

    /// RFC 9110 §8.6: repeated identical lengths are one length, forwarded once.
    #[test]
    fn a_repeated_content_length_is_kept_once() {
        for fields in [
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            "Content-Length: 5, 5\r\n",
            "Content-Length: 5,5\r\nContent-Length: 5\r\n",
        ] {
            let h = ok(&format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n"));
            assert_eq!(h.facts.body, BodyLength::Length(5));
            let lengths: Vec<&[u8]> = h
                .field_list()
                .iter()
                .filter(|f| f.kind == Kind::ContentLength)
                .map(|f| f.value.get(h.buffer()))
                .collect();
            assert_eq!(lengths, [&b"5"[..]], "{fields}");
        }
    }

    #[test]
    fn upgrade_protocols_without_versions() {
        let h = ok(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket, h2c\r\nUpgrade: foo/2\r\n\r\n",
        );
        let names: Vec<&[u8]> = h.upgrade_protocols().collect();
        assert_eq!(names, [&b"websocket"[..], b"h2c", b"foo"]);
        assert!(h.is_upgrade());
    }

    #[test]
    fn http10_keep_alive_only_when_asked() {
        assert!(!ok("GET / HTTP/1.0\r\n\r\n").wants_keep_alive());
        assert!(ok("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").wants_keep_alive());
        assert!(!ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").wants_keep_alive());
    }

    /// Mutated heads (bytes flipped, dropped, duplicated; special bytes inserted) never panic
    /// the parser, and a head that parses whole parses the same when it arrives in two reads.
    #[test]
    fn mutated_heads_never_panic_and_parse_the_same_in_pieces() {
        let seeds: &[&[u8]] = &[
            b"GET /a/b?x=1 HTTP/1.1\r\nHost: ex.com\r\nCookie: a=1; b=2\r\nX-Request-Id: r\r\n\r\n",
            b"POST http://h:81/p HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
            b"PUT / HTTP/1.0\r\nContent-Length: 12\r\nConnection: keep-alive, x\r\nx: 1\r\n\r\n",
        ];
        let specials = b"\r\n :,;\t\x00\x7f\xff/?#%*";
        let mut rng = fastrand::Rng::with_seed(0x51_1ce);
        for _ in 0..20_000 {
            let mut bytes = seeds[rng.usize(..seeds.len())].to_vec();
            crate::testing::mutate(&mut rng, &mut bytes, specials);
            let whole = parse_h1(&mut BytesMut::from(&bytes[..]));
            let split = rng.usize(..bytes.len());
            let mut read = BytesMut::from(&bytes[..split]);
            let first = parse_h1(&mut read);
            let pieces = match first {
                Ok(None) => {
                    read.extend_from_slice(&bytes[split..]);
                    parse_h1(&mut read)
                }
                other => other,
            };
            match (&whole, &pieces) {
                (Ok(Some(a)), Ok(Some(b))) => {
                    assert_eq!(
                        (a.target(), a.host(), a.facts.body),
                        (b.target(), b.host(), b.facts.body)
                    );
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "{:?}", String::from_utf8_lossy(&bytes)),
                (Ok(None), Ok(None)) => {}
                // A prefix may fail where the whole does not only if it is itself complete
                // (a head ending at the split): then both must be heads or errors alike.
                _ => {
                    let prefix_complete = bytes[..split].windows(2).any(|w| w == b"\n\n")
                        || bytes[..split].windows(4).any(|w| w == b"\r\n\r\n");
                    assert!(
                        prefix_complete,
                        "{:?} split at {split}: {whole:?} vs {pieces:?}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
            }
        }
    }

    #[test]
    fn chunked_and_expect() {
        let h = ok(
            "PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nExpect: 100-Continue\r\n\r\n",
        );
        assert_eq!(h.facts.body, BodyLength::Chunked);
        assert!(h.facts.expect_continue);
        let h = ok("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.facts.body, BodyLength::None);
    }
}
