//! HTTP/1.1 to instances, driven by the request's own task.
//!
//! A general-purpose client (hyper's) runs each connection on a task of its own and talks to
//! the request through channels: every request then costs several task wake-ups and hand-offs.
//! A proxy's upstream connection carries one request at a time for the request that holds it,
//! so here the request's future writes the head and body itself, reads the response head, and
//! the response body handed to the client connection reads straight from the socket. When the
//! body ends cleanly the connection goes back to the instance's pool.
//!
//! The response head is kept as the bytes the instance sent ([`UpstreamHead`]: spans of its
//! fields, each tagged with its kind): nothing is copied into a header map on the way to an
//! HTTP/1.x client.
//!
//! Framing follows RFC 9112: responses to `HEAD` and `1xx`/`204`/`304` have no body;
//! `Transfer-Encoding` ending in `chunked` is decoded (trailers are passed on), any other
//! transfer coding is read to the close; otherwise `Content-Length` (all values equal) or, without
//! one, to the close. Interim `1xx` responses other than `101` are skipped. A response that
//! arrives while the request body is still being sent ends the upload and the connection is not
//! reused. Limits: a response head of at most [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] fields, and
//! the chunked limits of [`sluice_codec::chunked`]; beyond them the response is malformed.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use sluice_tls::MaybeTls;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use crate::request_body::UpBody;
use crate::send_error::SendError;
use sluice_codec::chunked::{self, ChunkError, Chunked, Step, encode_data};
use sluice_codec::fields;
use sluice_codec::request::{BodyLength, RequestHead};
use sluice_codec::response::{
    Framing, MAX_HEAD_BYTES, ParsedResponse, ResponseError, UpstreamHead, only_interim,
    parse_response,
};

use crate::headers::UpstreamFields;

/// Room made in the read buffer before a read, at first.
const READ_CHUNK: usize = 16 * 1024;
/// The most a read asks for at once. Reads that keep filling the room made for them double it
/// up to this (see [`ReadSize`]): a large body then costs a quarter of the system calls (and of
/// the segments written on to the client), while a connection that carries small answers goes
/// back to [`READ_CHUNK`].
const MAX_BODY_READ: usize = 64 * 1024;
/// Request bodies up to this size are copied behind the head and sent in one write.
const COALESCE_BODY: usize = 16 * 1024;

/// The byte stream under a connection to an instance: plain TCP or client-side TLS.
pub(crate) type UpIo = MaybeTls<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

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
    /// How much the next read asks for.
    read_size: ReadSize,
}

/// How much room a read from an instance asks for, kept with the connection: the answers one
/// instance gives on it tend to be alike. A read that fills the room doubles it, up to
/// [`MAX_BODY_READ`]; an exchange whose reads never used a quarter of it halves it, down to
/// [`READ_CHUNK`]. A connection carrying 20 KiB answers thus reads each one, head and body, in
/// one read once the first has filled 16 KiB.
#[derive(Debug, Clone, Copy)]
struct ReadSize {
    room: usize,
    /// The largest read of the current exchange.
    largest: usize,
}

impl ReadSize {
    const fn new() -> Self {
        ReadSize {
            room: READ_CHUNK,
            largest: 0,
        }
    }

    /// A read took `got` bytes.
    fn read(&mut self, got: usize) {
        self.largest = self.largest.max(got);
        if got >= self.room {
            self.room = (self.room * 2).min(MAX_BODY_READ);
        }
    }

    /// A new exchange starts: the last one's reads tell whether the room was too large.
    fn next_exchange(&mut self) {
        if self.largest < self.room / 4 {
            self.room = (self.room / 2).max(READ_CHUNK);
        }
        self.largest = 0;
    }
}

/// The request as it goes to an instance: the client's head, the path the instance sees, the
/// proxy's fields, and the `Host` the proxy sets in place of the client's (if any).
#[derive(Debug)]
pub(crate) struct OutgoingRequest<'a> {
    pub(crate) head: &'a RequestHead,
    pub(crate) target: &'a str,
    pub(crate) fields: &'a UpstreamFields<'a>,
    pub(crate) host: Option<&'a [u8]>,
}

/// A response head read from an instance, and its body (which reads the connection).
#[derive(Debug)]
pub(crate) struct UpResponse {
    pub(crate) status: StatusCode,
    pub(crate) head: UpstreamHead,
    pub(crate) body: UpstreamBody,
}

impl UpConn {
    /// A connection over `io`, boxed: it moves between the pool, requests and response
    /// bodies, and a pointer moves for less than the buffers.
    pub(crate) fn new(io: UpIo) -> Box<Self> {
        Box::new(Self {
            io,
            read: BytesMut::new(),
            write: BytesMut::new(),
            reused: false,
            read_size: ReadSize::new(),
        })
    }

    /// Lets go of the buffers' memory, for a connection that may wait unused a while (the
    /// surplus of a burst, `pool`); the next exchange reserves what it needs again.
    pub(crate) fn shed_buffers(&mut self) {
        if self.read.is_empty() {
            self.read = BytesMut::new();
        }
        self.write = BytesMut::new();
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

    /// Whether this connection has carried no request yet (it was just opened).
    pub(crate) fn is_fresh(&self) -> bool {
        !self.reused
    }

    /// The socket and any bytes already read past the response head (a protocol switch).
    pub(crate) fn into_parts(self) -> (UpIo, Bytes) {
        (self.io, self.read.freeze())
    }

    /// Sends one request and reads its response head. `uploaded` is set once the whole request
    /// has gone out (the response-head timer starts then). The response body reads from this
    /// connection; it hands the connection back when the body ended cleanly.
    pub(crate) async fn exchange<'b>(
        mut self: Box<Self>,
        req: &OutgoingRequest<'_>,
        mut body: UpBody<'b>,
        uploaded: &AtomicBool,
    ) -> Result<UpResponse, SendError<'b>> {
        let reused = std::mem::replace(&mut self.reused, true);
        self.read_size.next_exchange();
        let chunked = self.encode_head(req, &body);
        let mut early_response = false;
        if let UpBody::Full(bytes) = &mut body
            && let Some(b) = bytes.take_if(|b| b.len() <= COALESCE_BODY)
        {
            encode_data(&mut self.write, b, chunked);
            if chunked {
                self.write.extend_from_slice(b"0\r\n\r\n");
            }
        }
        // The head (with a small body) in one write. A failure here means nothing was taken
        // by the instance: on a reused connection it is the keep-alive race.
        if let Err(e) = self.io.write_all(&self.write).await {
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
                        self.io.write_all(&frame).await
                    } else {
                        self.io.write_all(&b).await
                    }
                    .map_err(SendError::Io)?;
                }
            }
            UpBody::Stream(_) => {
                early_response = self.stream_body(&mut body, chunked).await?;
            }
        }
        drop(body);
        poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx))
            .await
            .map_err(SendError::Io)?;
        uploaded.store(true, Relaxed);
        let is_head = req.head.method == Method::HEAD;
        let parsed = match self.read_head(is_head).await {
            Ok(h) => h,
            // A reused connection closed with nothing read: the instance closed it while the
            // request was on its way, and did not process it.
            Err(SendError::Closed) if reused && self.read.is_empty() => {
                return Err(SendError::Unsent { reused, body: None });
            }
            Err(e) => return Err(e),
        };
        if matches!(parsed.framing, Framing::Chunked(_)) {
            // The head has not gone to the client yet: a bad first chunk line can still be a
            // 502 rather than a cut-off 200.
            chunked::size_line(&self.read).map_err(SendError::BadChunk)?;
        }
        let reusable = parsed.keep_alive && !early_response && parsed.framing.delimited();
        Ok(UpResponse {
            status: parsed.status,
            head: parsed.head,
            body: UpstreamBody {
                conn: Some(self),
                framing: parsed.framing,
                reusable,
            },
        })
    }

    /// Writes the request line, the client's fields that go upstream and the proxy's own into
    /// the write buffer; returns whether the body is sent chunked (a body of unknown length
    /// with no `Content-Length`).
    fn encode_head(&mut self, req: &OutgoingRequest<'_>, body: &UpBody<'_>) -> bool {
        let w = &mut self.write;
        w.clear();
        w.extend_from_slice(req.head.method.as_str().as_bytes());
        w.extend_from_slice(b" ");
        w.extend_from_slice(req.target.as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\n");
        let replace_host = req.host.is_some();
        let buf = req.head.buffer();
        let kept = req
            .head
            .field_list()
            .iter()
            .filter(|f| req.fields.keeps(req.head, f, f.name.get(buf), replace_host));
        fields::write_lines(w, buf, kept);
        req.fields.write(w, req.host);
        let has_length = matches!(req.head.facts.body, BodyLength::Length(_));
        let chunked = !body.is_end_stream() && !has_length;
        if chunked {
            w.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        w.extend_from_slice(b"\r\n");
        chunked
    }

    /// Streams the client's body to the instance while watching for an early response.
    /// Returns whether the instance answered before the body was complete.
    async fn stream_body<'b>(
        &mut self,
        body: &mut UpBody<'b>,
        chunked: bool,
    ) -> Result<bool, SendError<'b>> {
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
                self.read.reserve(self.read_size.room);
                return match tokio_util::io::poll_read_buf(
                    Pin::new(&mut self.io),
                    cx,
                    &mut self.read,
                ) {
                    Poll::Ready(Ok(0)) => Poll::Ready(Err(SendError::Closed)),
                    Poll::Ready(Ok(n)) => {
                        self.read_size.read(n);
                        match only_interim(&mut self.read) {
                            // An unasked `100 Continue` (servers may send one): keep uploading.
                            Ok(true) => continue,
                            Ok(false) => Poll::Ready(Ok(true)),
                            Err(e) => Poll::Ready(Err(SendError::BadResponse(e))),
                        }
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(SendError::Io(e))),
                    Poll::Pending => Poll::Pending,
                };
            }
        })
        .await
    }

    /// Reads until a complete final response head (interim `1xx` other than `101` skipped).
    async fn read_head(&mut self, is_head: bool) -> Result<ParsedResponse, SendError<'static>> {
        let too_large = || SendError::BadResponse(ResponseError::TooLarge);
        loop {
            let buffered = self.read.len();
            if buffered > 0
                && let Some(parsed) =
                    parse_response(&mut self.read, is_head).map_err(SendError::BadResponse)?
            {
                // A read may bring in more than the limit at once: the head (with any interim
                // heads before it) is measured, not only the buffer before a read.
                if buffered - self.read.len() > MAX_HEAD_BYTES {
                    return Err(too_large());
                }
                return Ok(parsed);
            }
            if buffered >= MAX_HEAD_BYTES {
                return Err(too_large());
            }
            self.read.reserve(self.read_size.room);
            let n = poll_fn(|cx| {
                tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
            })
            .await
            .map_err(SendError::Io)?;
            self.read_size.read(n);
            if n == 0 {
                return Err(SendError::Closed);
            }
        }
    }
}

/// The response body, read from the connection by whoever polls it.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    conn: Option<Box<UpConn>>,
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
    BadChunk(ChunkError),
    #[error("reading the response body: {0}")]
    Io(#[from] io::Error),
}

impl UpstreamBody {
    /// The connection, if the body ended at a message boundary and it may carry another
    /// request.
    pub(crate) fn take_reusable(&mut self) -> Option<Box<UpConn>> {
        let ended = matches!(self.framing, Framing::Done | Framing::Length(0));
        if ended && self.reusable {
            self.conn.take().filter(|c| c.read.is_empty())
        } else {
            None
        }
    }

    /// The connection after `101 Switching Protocols`.
    pub(crate) fn take_switched(&mut self) -> Option<Box<UpConn>> {
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
            Framing::Chunked(state) => chunked::decode(state, read).map_err(BodyError::BadChunk),
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
            conn.read.reserve(conn.read_size.room);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.read);
            let error = match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 => {
                    conn.read_size.read(n);
                    continue;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The exchanges of one connection: the sizes of each one's reads.
    fn rooms_after(exchanges: &[&[usize]]) -> Vec<usize> {
        let mut size = ReadSize::new();
        exchanges
            .iter()
            .map(|reads| {
                size.next_exchange();
                reads.iter().for_each(|&got| size.read(got));
                size.room
            })
            .collect()
    }

    #[test]
    fn the_read_room_follows_the_answers_a_connection_carries() {
        let k = 1024;
        // 20 KiB answers: the first fills 16 KiB, the next ones fit in one read of 32 KiB.
        assert_eq!(
            rooms_after(&[&[16 * k, 4 * k], &[20 * k], &[20 * k]]),
            [32 * k, 32 * k, 32 * k]
        );
        // A large body grows it to the cap and keeps it there.
        assert_eq!(
            rooms_after(&[&[16 * k, 32 * k, 64 * k, 64 * k, 64 * k], &[64 * k, 60 * k]]),
            [64 * k, 64 * k]
        );
        // Small answers after large ones halve it, as each next exchange starts, to the floor.
        assert_eq!(
            rooms_after(&[&[16 * k, 32 * k, 64 * k], &[300], &[300], &[300], &[300]]),
            [64 * k, 64 * k, 32 * k, 16 * k, 16 * k]
        );
    }
}
