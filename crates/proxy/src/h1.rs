//! HTTP/1.1 to instances, driven by the request's own task.
//!
//! A general-purpose client (hyper's) runs each connection on a task of its own and talks to
//! the request through channels: every request then costs several task wake-ups and hand-offs.
//! A proxy's upstream connection carries one request at a time for the request that holds it,
//! so here the request's future writes the head and body itself, reads the response head, and
//! the response body handed to the client connection reads straight from the socket. When the
//! body ends cleanly the connection goes back to the instance's pool.
//!
//! Framing follows RFC 9112: responses to `HEAD` and `1xx`/`204`/`304` have no body;
//! `Transfer-Encoding` ending in `chunked` is decoded (trailers are passed on), any other
//! transfer coding is read to the close; otherwise `Content-Length` (all values equal) or, without
//! one, to the close. Interim `1xx` responses other than `101` are skipped. A response that
//! arrives while the request body is still being sent ends the upload and the connection is not
//! reused. Limits: a response head of at most [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] fields,
//! chunk-size lines of at most [`MAX_CHUNK_LINE`] bytes; beyond them the response is malformed.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::{BoxError, UpBody};
use crate::headers::UpstreamFields;

/// Largest response head accepted (status line and fields).
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields accepted in a response head (hyper's default, too).
pub(crate) const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (size, extensions, CRLF) accepted.
pub(crate) const MAX_CHUNK_LINE: usize = 1024;
/// Largest trailer section accepted.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Request bodies up to this size are copied behind the head and sent in one write.
const COALESCE_BODY: usize = 16 * 1024;

/// The byte stream under a connection: plain TCP or TLS.
#[derive(Debug)]
pub(crate) enum UpIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One keep-alive connection to an instance, owned by the request using it (or by the pool).
#[derive(Debug)]
pub(crate) struct UpConn {
    io: UpIo,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// The request head being written (kept to reuse its allocation).
    write: BytesMut,
    /// Whether it carried a request before (a closed reused connection is the keep-alive race,
    /// not the instance failing).
    reused: bool,
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nothing reached the instance's application: writing the head failed, or a reused
    /// connection closed before any response byte. The body comes back for another attempt
    /// when it was not consumed.
    Unsent { reused: bool, body: Option<UpBody> },
    /// The connection failed after the request (or part of it) went out.
    Io(io::Error),
    /// The instance closed the connection before a complete response head.
    Closed,
    /// The response head is malformed or too large.
    BadResponse(String),
    /// The client's body failed or stalled (`ClientBodyFailed` / `ClientBodyTimedOut`).
    ClientBody(BoxError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unsent { .. } => {
                f.write_str("connection closed before the request was sent")
            }
            SendError::Io(e) => write!(f, "connection error: {e}"),
            SendError::Closed => f.write_str("connection closed before a complete response head"),
            SendError::BadResponse(why) => write!(f, "malformed response: {why}"),
            SendError::ClientBody(e) => write!(f, "{e}"),
        }
    }
}

impl UpConn {
    pub(crate) fn new(io: UpIo) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            write: BytesMut::new(),
            reused: false,
        }
    }

    /// For the pool: whether an idle connection can carry a request. The peer closing it, or
    /// sending anything unasked, rules it out. Never waits (the read is polled once).
    pub(crate) fn usable_when_idle(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        // Ready means end of stream, unasked bytes, or an error.
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }

    /// The socket and any bytes already read past the response head (a protocol switch).
    pub(crate) fn into_parts(self) -> (UpIo, Bytes) {
        (self.io, self.read.freeze())
    }

    /// Sends one request and reads its response head. The response body reads from this
    /// connection; it hands the connection back when the body ended cleanly.
    pub(crate) async fn exchange(
        mut self,
        head: &http::request::Parts,
        fields: &UpstreamFields,
        mut body: UpBody,
    ) -> Result<http::Response<UpstreamBody>, SendError> {
        let reused = std::mem::replace(&mut self.reused, true);
        let chunked = self.encode_head(head, fields, &body);
        let mut early_response = false;
        match &mut body {
            UpBody::Empty => {}
            UpBody::Full(bytes) => {
                if let Some(b) = bytes.take_if(|b| b.len() <= COALESCE_BODY) {
                    encode_data(&mut self.write, b, chunked);
                    if chunked {
                        self.write.extend_from_slice(b"0\r\n\r\n");
                    }
                }
            }
            UpBody::Stream(_) => {}
        }
        // The head (with a small body) in one write. A failure here means nothing was taken
        // by the instance: on a reused connection it is the keep-alive race.
        if let Err(e) = write_all(&mut self.io, &self.write).await {
            tracing::trace!(error = %e, "writing the request head failed");
            return Err(SendError::Unsent {
                reused,
                body: Some(body),
            });
        }
        match &mut body {
            UpBody::Empty => {}
            UpBody::Full(rest) => {
                if let Some(b) = rest.take() {
                    if chunked {
                        let mut frame = BytesMut::new();
                        encode_data(&mut frame, b, true);
                        frame.extend_from_slice(b"0\r\n\r\n");
                        write_all(&mut self.io, &frame).await
                    } else {
                        write_all(&mut self.io, &b).await
                    }
                    .map_err(SendError::Io)?;
                }
            }
            UpBody::Stream(_) => {
                early_response = self.stream_body(&mut body, chunked).await?;
            }
        }
        poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx))
            .await
            .map_err(SendError::Io)?;
        let is_head = head.method == Method::HEAD;
        let (parts, framing, keep_alive) = match self.read_head(is_head).await {
            Ok(h) => h,
            // A reused connection closed with nothing read: the instance closed it while the
            // request was on its way, and did not process it.
            Err(SendError::Closed) if reused && self.read.is_empty() => {
                return Err(SendError::Unsent { reused, body: None });
            }
            Err(e) => return Err(e),
        };
        let reusable = keep_alive && !early_response && framing.delimited();
        Ok(http::Response::from_parts(
            parts,
            UpstreamBody {
                conn: Some(self),
                framing,
                reusable,
            },
        ))
    }

    /// Writes the request line, the client's fields that go upstream and the proxy's own into
    /// the write buffer; returns whether the body is sent chunked (a body of unknown length
    /// with no `Content-Length`).
    fn encode_head(
        &mut self,
        head: &http::request::Parts,
        fields: &UpstreamFields,
        body: &UpBody,
    ) -> bool {
        let w = &mut self.write;
        w.clear();
        w.extend_from_slice(head.method.as_str().as_bytes());
        w.extend_from_slice(b" ");
        w.extend_from_slice(
            head.uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        );
        w.extend_from_slice(b" HTTP/1.1\r\n");
        let client = head.headers.iter().filter(|(name, _)| fields.keeps(name));
        for (name, value) in client.map(|(n, v)| (n.as_str(), v)).chain(fields.added()) {
            w.extend_from_slice(name.as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        let chunked = !body.is_end_stream() && !head.headers.contains_key(header::CONTENT_LENGTH);
        if chunked {
            w.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        w.extend_from_slice(b"\r\n");
        chunked
    }

    /// Streams the client's body to the instance while watching for an early response.
    /// Returns whether the instance answered before the body was complete.
    async fn stream_body(&mut self, body: &mut UpBody, chunked: bool) -> Result<bool, SendError> {
        let mut pending = BytesMut::new();
        let mut finished = false;
        poll_fn(|cx| {
            loop {
                // Write what is queued.
                while !pending.is_empty() {
                    match Pin::new(&mut self.io).poll_write(cx, &pending) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(SendError::Io(
                                io::ErrorKind::WriteZero.into(),
                            )));
                        }
                        Poll::Ready(Ok(n)) => pending.advance(n),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(SendError::Io(e))),
                        Poll::Pending => break,
                    }
                }
                if pending.is_empty() && finished {
                    return Poll::Ready(Ok(false));
                }
                if pending.is_empty() {
                    match Pin::new(&mut *body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Ok(data) = frame.into_data() {
                                encode_data(&mut pending, data, chunked);
                            }
                            continue;
                        }
                        Poll::Ready(Some(Err(e))) => {
                            return Poll::Ready(Err(SendError::ClientBody(e)));
                        }
                        Poll::Ready(None) => {
                            finished = true;
                            if chunked {
                                pending.extend_from_slice(b"0\r\n\r\n");
                            }
                            continue;
                        }
                        Poll::Pending => {}
                    }
                }
                // Waiting on the client or on the socket: has the instance answered already?
                self.read.reserve(READ_CHUNK);
                return match tokio_util::io::poll_read_buf(
                    Pin::new(&mut self.io),
                    cx,
                    &mut self.read,
                ) {
                    Poll::Ready(Ok(0)) => Poll::Ready(Err(SendError::Closed)),
                    Poll::Ready(Ok(_)) => match only_interim(&mut self.read) {
                        // An unasked `100 Continue` (servers may send one): keep uploading.
                        Ok(true) => continue,
                        Ok(false) => Poll::Ready(Ok(true)),
                        Err(e) => Poll::Ready(Err(e)),
                    },
                    Poll::Ready(Err(e)) => Poll::Ready(Err(SendError::Io(e))),
                    Poll::Pending => Poll::Pending,
                };
            }
        })
        .await
    }

    /// Reads until a complete final response head (interim `1xx` other than `101` skipped).
    async fn read_head(
        &mut self,
        is_head: bool,
    ) -> Result<(http::response::Parts, Framing, bool), SendError> {
        loop {
            if !self.read.is_empty()
                && let Some(parsed) = self.parse_head(is_head)?
            {
                return Ok(parsed);
            }
            if self.read.len() >= MAX_HEAD_BYTES {
                return Err(SendError::BadResponse(format!(
                    "response head larger than {MAX_HEAD_BYTES} bytes"
                )));
            }
            self.read.reserve(READ_CHUNK);
            let n = poll_fn(|cx| {
                tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
            })
            .await
            .map_err(SendError::Io)?;
            if n == 0 {
                return Err(SendError::Closed);
            }
        }
    }

    /// Parses a response head at the start of the read buffer; `None` when incomplete (or an
    /// interim response was consumed and the final one is not there yet).
    fn parse_head(
        &mut self,
        is_head: bool,
    ) -> Result<Option<(http::response::Parts, Framing, bool)>, SendError> {
        loop {
            // Uninitialised slots: a head has a handful of fields, not a hundred to clear.
            let mut fields =
                [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut response,
                &self.read,
                &mut fields,
            );
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(SendError::BadResponse(e.to_string())),
            };
            let code = response.code.unwrap_or_default();
            let status = StatusCode::from_u16(code)
                .map_err(|_| SendError::BadResponse(format!("status {code}")))?;
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                self.read.advance(len);
                if self.read.is_empty() {
                    return Ok(None);
                }
                continue;
            }
            let version = response.version.unwrap_or(1);
            // Offsets of each field in the head, so the head can be frozen and the values shared
            // with it instead of copied.
            let base = self.read.as_ptr() as usize;
            let spans: Vec<(usize, usize, usize, usize)> = response
                .headers
                .iter()
                .map(|f| {
                    let name = f.name.as_ptr() as usize - base;
                    let value = f.value.as_ptr() as usize - base;
                    (name, f.name.len(), value, f.value.len())
                })
                .collect();
            let count = spans.len();
            let head = self.read.split_to(len).freeze();
            let mut headers = HeaderMap::with_capacity(count);
            let mut present = Present::default();
            for &(name_at, name_len, value_at, value_len) in &spans {
                let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
                    .map_err(|_| SendError::BadResponse("invalid header name".into()))?;
                present.note(&name);
                let value =
                    HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
                        .map_err(|_| SendError::BadResponse(format!("invalid value of {name}")))?;
                headers.append(name, value);
            }
            let framing = framing(status, is_head, &mut headers, present)?;
            let keep_alive = if present.connection {
                keep_alive(version, &headers)
            } else {
                version != 0
            };
            let mut parts = http::Response::new(()).into_parts().0;
            parts.status = status;
            parts.version = Version::HTTP_11;
            parts.headers = headers;
            return Ok(Some((parts, framing, keep_alive)));
        }
    }
}

/// Consumes complete interim (`1xx` except `101`) heads at the start of `read`; whether no final
/// response has arrived (an incomplete head is waited for: it may still be an interim one).
fn only_interim(read: &mut BytesMut) -> Result<bool, SendError> {
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
            Err(e) => return Err(SendError::BadResponse(e.to_string())),
        }
    }
    Ok(true)
}

/// Appends one data frame, chunk-encoded when asked.
fn encode_data(out: &mut BytesMut, data: Bytes, chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        use std::fmt::Write as _;
        let _ = write!(ChunkHeader(out), "{:x}\r\n", data.len());
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(&data);
    }
}

struct ChunkHeader<'a>(&'a mut BytesMut);

impl std::fmt::Write for ChunkHeader<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

async fn write_all(io: &mut UpIo, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Whether the connection may carry another request after this response.
fn keep_alive(version: u8, headers: &HeaderMap) -> bool {
    let mut close = false;
    let mut keep = false;
    for value in headers.get_all(header::CONNECTION) {
        for token in value.to_str().unwrap_or("close").split(',') {
            let token = token.trim();
            close |= token.eq_ignore_ascii_case("close");
            keep |= token.eq_ignore_ascii_case("keep-alive");
        }
    }
    if version == 0 { keep && !close } else { !close }
}

/// Which of the fields that decide framing and persistence a response head has, noted while
/// its fields are read (so no lookups are needed when, as usual, some are absent).
#[derive(Debug, Default, Clone, Copy)]
struct Present {
    connection: bool,
    transfer_encoding: bool,
    content_length: bool,
}

impl Present {
    fn note(&mut self, name: &HeaderName) {
        if name == header::CONNECTION {
            self.connection = true;
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == header::CONTENT_LENGTH {
            self.content_length = true;
        }
    }
}

/// How the response body is delimited (RFC 9112 §6.3). Removes a `Content-Length` that a
/// `Transfer-Encoding` overrides, so the client is not told a length that is not sent.
fn framing(
    status: StatusCode,
    is_head: bool,
    headers: &mut HeaderMap,
    present: Present,
) -> Result<Framing, SendError> {
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
    if present.transfer_encoding {
        headers.remove(header::CONTENT_LENGTH);
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        return Ok(match last {
            Some(t) if t.eq_ignore_ascii_case("chunked") => Framing::Chunked(Chunked::Size),
            _ => Framing::UntilClose,
        });
    }
    if !present.content_length {
        return Ok(Framing::UntilClose);
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.to_str().unwrap_or("x").split(',') {
            let part = part.trim();
            let n = (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| SendError::BadResponse(format!("content-length `{part}`")))?;
            if length.is_some_and(|l| l != n) {
                return Err(SendError::BadResponse(
                    "conflicting content-length values".into(),
                ));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// How a response body ends.
#[derive(Debug)]
pub(crate) enum Framing {
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
    fn delimited(&self) -> bool {
        matches!(
            self,
            Framing::Length(_) | Framing::Chunked(_) | Framing::Done
        )
    }
}

/// Position in a chunked body.
#[derive(Debug)]
pub(crate) enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields until an empty line.
    Trailers,
    /// The body, and its trailers, ended.
    End,
}

/// What a decoding step found.
enum Step {
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    NeedMore,
    End,
}

/// The response body, read from the connection by whoever polls it.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    conn: Option<UpConn>,
    framing: Framing,
    reusable: bool,
}

/// Why reading a response body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("connection closed {0} bytes before the end of the response body")]
    Truncated(u64),
    #[error("connection closed inside a chunked response body")]
    TruncatedChunked,
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
    #[error("reading the response body: {0}")]
    Io(#[from] io::Error),
}

impl UpstreamBody {
    /// The connection, if the body ended at a message boundary and it may carry another
    /// request.
    pub(crate) fn take_reusable(&mut self) -> Option<UpConn> {
        let ended = matches!(self.framing, Framing::Done | Framing::Length(0));
        if ended && self.reusable {
            self.conn.take().filter(|c| c.read.is_empty())
        } else {
            None
        }
    }

    /// The connection after `101 Switching Protocols`.
    pub(crate) fn take_switched(&mut self) -> Option<UpConn> {
        matches!(self.framing, Framing::Switched)
            .then(|| self.conn.take())
            .flatten()
    }

    fn step(&mut self) -> Result<Step, BodyError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Step::End);
        };
        let read = &mut conn.read;
        match &mut self.framing {
            Framing::Done | Framing::Switched | Framing::Length(0) => Ok(Step::End),
            Framing::Length(left) => {
                if read.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(read.len());
                *left -= n as u64;
                Ok(Step::Frame(Frame::data(read.split_to(n).freeze())))
            }
            Framing::UntilClose => {
                if read.is_empty() {
                    return Ok(Step::NeedMore);
                }
                Ok(Step::Frame(Frame::data(read.split().freeze())))
            }
            Framing::Chunked(state) => decode_chunk(state, read),
        }
    }

    /// The body ended (`clean`: at its framing's end) or failed; only a clean end of a
    /// delimited body keeps the connection.
    fn end(&mut self, clean: bool) {
        if !clean {
            self.reusable = false;
            self.conn = None;
        }
        if !matches!(self.framing, Framing::Switched) {
            self.framing = Framing::Done;
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            match this.step() {
                Ok(Step::Frame(frame)) => {
                    // Trailers end a chunked body: say so now, as a server may stop polling
                    // after them.
                    if matches!(this.framing, Framing::Chunked(Chunked::End)) {
                        this.end(true);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::End) => {
                    this.end(true);
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(e) => {
                    this.end(false);
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            conn.read.reserve(READ_CHUNK);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.read);
            let error = match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 => continue,
                Poll::Ready(Ok(_)) => None,
                // A TLS peer that closes without close_notify ends a read-to-close body all
                // the same (as browsers and nginx treat it).
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => None,
                Poll::Ready(Err(e)) => Some(BodyError::Io(e)),
            };
            let error = error.or(match this.framing {
                Framing::Length(left) => Some(BodyError::Truncated(left)),
                Framing::Chunked(_) => Some(BodyError::TruncatedChunked),
                _ => None,
            });
            match error {
                // Read to the close: the body is complete, the connection is spent.
                None => {
                    this.reusable = false;
                    this.end(true);
                    return Poll::Ready(None);
                }
                Some(e) => {
                    this.end(false);
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.framing,
            Framing::Done | Framing::Length(0) | Framing::Switched
        )
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done | Framing::Switched => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// One step of chunked decoding over the bytes read so far.
fn decode_chunk(state: &mut Chunked, read: &mut BytesMut) -> Result<Step, BodyError> {
    loop {
        match state {
            Chunked::End => return Ok(Step::End),
            Chunked::Size => {
                let Some(eol) = read.iter().position(|&b| b == b'\n') else {
                    if read.len() > MAX_CHUNK_LINE {
                        return Err(BodyError::BadChunk("chunk-size line too long"));
                    }
                    return Ok(Step::NeedMore);
                };
                if eol > MAX_CHUNK_LINE {
                    return Err(BodyError::BadChunk("chunk-size line too long"));
                }
                let line = &read[..eol];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let digits = line
                    .iter()
                    .position(|&b| b == b';' || b == b' ' || b == b'\t')
                    .map_or(line, |end| &line[..end]);
                if digits.is_empty() || digits.len() > 15 {
                    return Err(BodyError::BadChunk("invalid chunk size"));
                }
                let mut size: u64 = 0;
                for &d in digits {
                    let v = (d as char)
                        .to_digit(16)
                        .ok_or(BodyError::BadChunk("invalid chunk size"))?;
                    size = size * 16 + u64::from(v);
                }
                read.advance(eol + 1);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(left) => {
                if read.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(read.len());
                *left -= n as u64;
                let data = read.split_to(n).freeze();
                if *left == 0 {
                    *state = Chunked::DataEnd;
                }
                return Ok(Step::Frame(Frame::data(data)));
            }
            Chunked::DataEnd => {
                if read.len() < 2 {
                    if read.first().is_some_and(|&b| b != b'\r' && b != b'\n') {
                        return Err(BodyError::BadChunk("chunk data not followed by CRLF"));
                    }
                    if read.first() == Some(&b'\n') {
                        read.advance(1);
                        *state = Chunked::Size;
                        continue;
                    }
                    return Ok(Step::NeedMore);
                }
                match &read[..2] {
                    b"\r\n" => read.advance(2),
                    [b'\n', _] => read.advance(1),
                    _ => return Err(BodyError::BadChunk("chunk data not followed by CRLF")),
                }
                *state = Chunked::Size;
            }
            Chunked::Trailers => {
                // The trailer section ends with an empty line; with no fields that is the
                // first line.
                if read.starts_with(b"\r\n") {
                    read.advance(2);
                    *state = Chunked::End;
                    return Ok(Step::End);
                }
                if read.starts_with(b"\n") {
                    read.advance(1);
                    *state = Chunked::End;
                    return Ok(Step::End);
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(read, &mut fields) {
                    Ok(httparse::Status::Complete((len, parsed))) => {
                        let mut trailers = HeaderMap::with_capacity(parsed.len());
                        for f in parsed {
                            if let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) {
                                trailers.append(name, value);
                            }
                        }
                        read.advance(len);
                        *state = Chunked::End;
                        return Ok(if trailers.is_empty() {
                            Step::End
                        } else {
                            Step::Frame(Frame::trailers(trailers))
                        });
                    }
                    Ok(httparse::Status::Partial) => {
                        if read.len() > MAX_TRAILER_BYTES {
                            return Err(BodyError::BadChunk("trailer section too large"));
                        }
                        return Ok(Step::NeedMore);
                    }
                    Err(_) => return Err(BodyError::BadChunk("malformed trailer field")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Decodes `input` fed `step` bytes at a time; returns the data and trailers.
    fn decode_in_pieces(
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), BodyError> {
        let mut state = Chunked::Size;
        let mut read = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match decode_chunk(&mut state, &mut read)? {
                Step::Frame(frame) => match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Step::End => return Ok((data, trailers)),
                Step::NeedMore => {
                    assert!(fed < input.len(), "decoder wants more than the input");
                    let end = (fed + step).min(input.len());
                    read.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let input = b"4;name=value\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nx-check: 1\r\n\r\n";
        for step in [1, 2, 3, 7, input.len()] {
            let (data, trailers) = decode_in_pieces(input, step).unwrap();
            assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.", "step {step}");
            assert_eq!(trailers.unwrap()["x-check"], "1", "step {step}");
        }
        let (data, trailers) = decode_in_pieces(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"\r\n",
            b"ffffffffffffffff\r\n",
        ] {
            assert!(
                matches!(decode_in_pieces(bad, 1), Err(BodyError::BadChunk(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_line = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(matches!(
            decode_in_pieces(&long_line, 64),
            Err(BodyError::BadChunk(_))
        ));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    fn present_in(h: &HeaderMap) -> Present {
        let mut present = Present::default();
        h.keys().for_each(|n| present.note(n));
        present
    }

    #[test]
    fn framing_follows_rfc9112() {
        let ok = StatusCode::OK;
        let f = |status, is_head, pairs: &[(&str, &str)]| {
            let mut h = headers(pairs);
            let present = present_in(&h);
            framing(status, is_head, &mut h, present)
        };
        assert!(matches!(
            f(ok, false, &[("content-length", "12")]),
            Ok(Framing::Length(12))
        ));
        assert!(matches!(
            f(ok, false, &[("content-length", "5, 5")]),
            Ok(Framing::Length(5))
        ));
        assert!(matches!(
            f(ok, true, &[("content-length", "12")]),
            Ok(Framing::Length(0))
        ));
        assert!(matches!(
            f(StatusCode::NO_CONTENT, false, &[("content-length", "9")]),
            Ok(Framing::Length(0))
        ));
        assert!(matches!(f(ok, false, &[]), Ok(Framing::UntilClose)));
        assert!(matches!(
            f(
                ok,
                false,
                &[
                    ("transfer-encoding", "gzip, chunked"),
                    ("content-length", "3")
                ]
            ),
            Ok(Framing::Chunked(_))
        ));
        assert!(matches!(
            f(ok, false, &[("transfer-encoding", "gzip")]),
            Ok(Framing::UntilClose)
        ));
        assert!(matches!(
            f(StatusCode::SWITCHING_PROTOCOLS, false, &[]),
            Ok(Framing::Switched)
        ));
        for bad in ["-1", "1 2", "", "0x10", "5, 6"] {
            assert!(
                matches!(
                    f(ok, false, &[("content-length", bad)]),
                    Err(SendError::BadResponse(_))
                ),
                "{bad}"
            );
        }
        // A Transfer-Encoding overrides (and removes) Content-Length.
        let mut h = headers(&[("transfer-encoding", "chunked"), ("content-length", "3")]);
        let present = present_in(&h);
        framing(ok, false, &mut h, present).unwrap();
        assert!(!h.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn keep_alive_by_version_and_connection_tokens() {
        assert!(keep_alive(1, &headers(&[])));
        assert!(!keep_alive(1, &headers(&[("connection", "Close")])));
        assert!(!keep_alive(0, &headers(&[])));
        assert!(keep_alive(0, &headers(&[("connection", "keep-alive")])));
    }
}
