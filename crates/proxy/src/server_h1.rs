//! HTTP/1.x on client connections: Sluice's own server side, built for proxying.
//!
//! A general-purpose server (hyper's) parses every request into a header map, runs each
//! exchange through a dispatcher with its own body channels, and encodes the response head
//! from a header map again. A proxy passes most fields through untouched, so here one task per
//! connection reads a head into the connection's buffer, parses it into spans
//! ([`sluice_codec::request`]), hands it to the forwarding handler, and writes the response head
//! field by field from the instance's own bytes, with the first body bytes in the same write.
//! The request body is read from this connection by the request itself (through
//! [`H1BodyReader`]), so no channel stands between the client's socket and the instance's.
//!
//! LIFECYCLE of a connection (one request at a time; pipelined requests wait in the buffer):
//! ```text
//!            first byte                   head complete
//!   IDLE ──────────────────▶ HEAD ───────────────────────▶ BUSY ── response written ──┐
//!    ▲ closed quietly after   │ 408 + close after            │ body + response; the  │
//!    │ keepalive_timeout      │ header_read_timeout from     │ client closing while  │
//!    │ (header_read_timeout   │ its first byte; 400/431/505  │ a bodiless request    │
//!    │ for a new connection), │ + close for a bad head       │ waits ends it (499)   │
//!    │ or when draining       │                              │                       │
//!    └────────────────────────┴──────────── keep-alive ◀─────┴───────────────────────┘
//! ```
//! The connection is kept after a response when the client wants it (HTTP/1.1 without
//! `Connection: close`, HTTP/1.0 with `keep-alive`), its request body was read to the end, the
//! response was delimited and complete, the listener is not draining and the process is not
//! near an `[overload]` watermark; otherwise the response says `connection: close` and the
//! socket is closed after a lingering read (an RST would destroy a response the client has not
//! read yet). A `101` response joins the client's socket to the instance's in a tunnel. A
//! client opening with the HTTP/2 preface is handed to [`crate::server_h2`].
//!
//! Responses are framed for the client: the instance's `Content-Length` passes through,
//! bodies of unknown length are sent chunked to HTTP/1.1 clients and delimited by the close to
//! HTTP/1.0 ones; trailers go only to clients that sent `TE: trailers`.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use sluice_tls::MaybeTls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::conn::{ClientTimerMetrics, ConnTimer, Signal, SignalWatch};
use crate::forward;
use crate::listener_state::ConnCtx;
use crate::request_body::{BoxError, H1BodyReader, RequestBody};
use crate::response::{
    ConnectionField, ProxyResponse, ResponseFields, Switched, WireFraming, encode_h1,
};
use sluice_codec::chunked::{self, Chunked, Step};
use sluice_codec::fields::{itoa_u64, put_field};
use sluice_codec::request::{self, BodyLength, HeadError, RequestHead};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Room made in the read buffer before reading a request head: most heads fit, and an idle
/// connection holds no more than this (it grows for larger heads, up to `max_header_bytes`).
const HEAD_CHUNK: usize = 4 * 1024;
/// Room made in the read buffer before reading request body bytes.
const BODY_CHUNK: usize = 16 * 1024;
/// Body bytes copied next to the head (or to earlier frames) to leave in one write.
const COALESCE: usize = 16 * 1024;
/// The largest body frame copied to be coalesced; a larger one is written where it is, in one
/// vectored write with what is pending.
const COALESCE_FRAME: usize = 4 * 1024;
/// Longest a closing connection waits for the client to stop sending.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes a closing connection discards before closing anyway.
const LINGER_BYTES: usize = 1 << 20;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A listener's settings for its HTTP/1.x connections, read when the connection starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_timeout: Duration,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) send_timeout: Duration,
    pub(crate) http2: bool,
}

/// How a connection served here ended.
#[derive(Debug)]
pub(crate) enum Ended {
    Closed,
    /// The client opened with the HTTP/2 preface: the socket and the bytes read so far.
    Http2(MaybeTls<TcpStream>, BytesMut),
}

/// The client's socket with its buffers and the state of the request being read.
#[derive(Debug)]
pub(crate) struct ClientConn {
    io: MaybeTls<TcpStream>,
    /// Bytes read and not yet consumed: the rest of a body, or pipelined requests.
    read: BytesMut,
    /// The response being written (kept to reuse its allocation).
    write: BytesMut,
    body: BodyState,
    expect: Continue,
}

/// How much of the current request's body is still on the connection.
#[derive(Debug)]
enum BodyState {
    Done,
    Length(u64),
    Chunked(Chunked),
    /// Malformed, or the client closed inside it: the connection cannot be reused.
    Failed,
}

/// `Expect: 100-continue`: owed when the client asked and has not sent body bytes yet; sent
/// when the handler first reads the body (an answer sent before that makes it moot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Continue {
    None,
    Owed,
    /// This many bytes of the interim response are written.
    Writing(usize),
    /// Written; to be flushed.
    Flush,
}

impl ClientConn {
    /// Reads head bytes into the buffer. A connection without a buffer yet (a new one) reads
    /// into a small stack buffer first and allocates only when bytes arrive: thousands of
    /// connections that have sent nothing yet hold no read buffers.
    fn poll_read_head_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() > 0 {
            self.read.reserve(HEAD_CHUNK);
            return tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read);
        }
        let mut first = [0u8; 2048];
        let mut buf = ReadBuf::new(&mut first);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let got = buf.filled();
        if !got.is_empty() {
            self.read.reserve(HEAD_CHUNK.max(got.len()));
            self.read.extend_from_slice(got);
        }
        Poll::Ready(Ok(got.len()))
    }

    /// Frees buffers a large message grew, before the connection waits idle: an idle
    /// keep-alive connection keeps a few KiB, whatever it carried before.
    fn shed_buffers(&mut self) {
        if self.write.capacity() > BODY_CHUNK {
            self.write = BytesMut::new();
        }
        if self.read.is_empty() && self.read.capacity() > BODY_CHUNK {
            self.read = BytesMut::new();
        }
    }
}

/// Why reading the client's body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientBodyError {
    #[error("malformed chunked request body: {0}")]
    BadChunk(sluice_codec::chunked::ChunkError),
    #[error("client closed the connection inside the request body")]
    Closed,
    #[error("reading the request body: {0}")]
    Io(#[from] io::Error),
}

/// The request body, read from the client's connection by the request's own task.
impl H1BodyReader for ClientConn {
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.poll_body_frame(cx).map_err(Into::into)
    }

    fn body_ended(&self) -> bool {
        matches!(self.body, BodyState::Done | BodyState::Failed)
    }

    fn body_size_hint(&self) -> SizeHint {
        match self.body {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done | BodyState::Failed => SizeHint::with_exact(0),
            BodyState::Chunked(_) => SizeHint::default(),
        }
    }
}

impl ClientConn {
    fn poll_body_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let c = self;
        if c.expect != Continue::None && !c.read.is_empty() {
            // The client sent its body without waiting: nothing to invite any more.
            c.expect = Continue::None;
        }
        while let Continue::Owed | Continue::Writing(_) = c.expect {
            let done = match c.expect {
                Continue::Writing(n) => n,
                _ => 0,
            };
            let written = match ready!(Pin::new(&mut c.io).poll_write(cx, &CONTINUE[done..])) {
                Ok(0) => Err(ClientBodyError::Closed),
                Ok(n) => Ok(done + n),
                Err(e) => Err(e.into()),
            };
            match written {
                Ok(n) if n == CONTINUE.len() => c.expect = Continue::Flush,
                Ok(n) => c.expect = Continue::Writing(n),
                Err(e) => {
                    c.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
        if c.expect == Continue::Flush {
            // TLS holds the record until flushed.
            if let Err(e) = ready!(Pin::new(&mut c.io).poll_flush(cx)) {
                c.body = BodyState::Failed;
                return Poll::Ready(Some(Err(e.into())));
            }
            c.expect = Continue::None;
        }
        loop {
            match &mut c.body {
                BodyState::Done | BodyState::Failed => return Poll::Ready(None),
                BodyState::Length(left) => {
                    if !c.read.is_empty() {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(c.read.len());
                        *left -= n as u64;
                        if *left == 0 {
                            c.body = BodyState::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(c.read.split_to(n).freeze()))));
                    }
                }
                BodyState::Chunked(state) => match chunked::decode(state, &mut c.read) {
                    Ok(Step::Frame(frame)) => {
                        if matches!(state, Chunked::End) {
                            c.body = BodyState::Done;
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Ok(Step::End) => {
                        c.body = BodyState::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {}
                    Err(why) => {
                        c.body = BodyState::Failed;
                        return Poll::Ready(Some(Err(ClientBodyError::BadChunk(why))));
                    }
                },
            }
            c.read.reserve(BODY_CHUNK);
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut c.io),
                cx,
                &mut c.read
            )) {
                Ok(0) => {
                    c.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(ClientBodyError::Closed)));
                }
                Ok(_) => {}
                Err(e) => {
                    c.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

/// What waiting for a request head gave.
enum HeadRead {
    Head(RequestHead),
    Http2,
    /// The client closed, or the connection idled out or drained: close quietly.
    Quiet,
    IdleTimeout,
    Refused(HeadError),
    HeadTimeout,
}

/// What a response left the connection fit for.
enum After {
    KeepAlive,
    Close,
    Tunnel(Box<Switched>),
}

/// What the request summary the response writer needs.
#[derive(Debug, Clone, Copy)]
struct Asked {
    version: Version,
    head_method: bool,
    keep_alive: bool,
    trailers: bool,
}

/// Serves HTTP/1.x requests on `io` until the client closes, an error or timeout ends the
/// connection, the listener drains, or the client turns out to speak HTTP/2.
pub(crate) async fn serve(
    io: MaybeTls<TcpStream>,
    cx: &ConnCtx,
    limits: Limits,
    metrics: &ClientTimerMetrics,
    drain: &Signal,
) -> Ended {
    let mut conn = ClientConn {
        io,
        read: BytesMut::new(),
        write: BytesMut::new(),
        body: BodyState::Done,
        expect: Continue::None,
    };
    let mut timer = ConnTimer::default();
    // Polled while idle, to close when the listener drains.
    let mut drained = drain.watch();
    let mut fresh = true;
    loop {
        let head = match read_head(&mut conn, &mut timer, &limits, fresh, &mut drained).await {
            HeadRead::Head(head) => head,
            HeadRead::Http2 => return Ended::Http2(conn.io, conn.read),
            HeadRead::Quiet => return Ended::Closed,
            HeadRead::IdleTimeout => {
                metrics.keepalive_closes.increment(1);
                return Ended::Closed;
            }
            HeadRead::HeadTimeout => {
                metrics.header_timeouts.increment(1);
                tracing::debug!(client = %cx.peer, "client sent an incomplete request head for too long; answering 408");
                Box::pin(refuse(
                    &mut conn,
                    StatusCode::REQUEST_TIMEOUT,
                    REQUEST_TIMEOUT_BODY,
                ))
                .await;
                return Ended::Closed;
            }
            HeadRead::Refused(err) => {
                metrics.closed(err.kind);
                tracing::debug!(client = %cx.peer, status = err.status.as_u16(), reason = err.kind, detail = err.detail, "request head refused");
                let body = format!(
                    "{{\"error\":\"{}\",\"detail\":\"{}\"}}\n",
                    err.kind, err.detail
                );
                Box::pin(refuse(&mut conn, err.status, body.as_bytes())).await;
                return Ended::Closed;
            }
        };
        fresh = false;
        let asked = Asked {
            version: head.version,
            head_method: head.method == Method::HEAD,
            keep_alive: head.wants_keep_alive(),
            trailers: head.facts.te_trailers,
        };
        conn.body = match head.facts.body {
            BodyLength::None => BodyState::Done,
            BodyLength::Length(n) => BodyState::Length(n),
            BodyLength::Chunked => BodyState::Chunked(Chunked::Size),
        };
        conn.expect = if head.facts.expect_continue && head.facts.body != BodyLength::None {
            Continue::Owed
        } else {
            Continue::None
        };
        let response = if matches!(conn.body, BodyState::Done) {
            match handle_watching_close(&head, &mut conn, cx, &mut timer).await {
                Some(r) => r,
                // The client is gone; the request was abandoned (logged as 499).
                None => return Ended::Closed,
            }
        } else {
            let body = RequestBody::H1(&mut conn);
            Box::pin(forward::handle(&head, Some(body), cx, &mut timer)).await
        };
        drop(head);
        conn.expect = Continue::None;
        // Near an `[overload]` watermark keep-alive is shed: this response closes.
        let draining = drained.is_fired() || cx.listener.overload.sheds_keep_alive();
        let mut sender = Sender {
            timer: &mut timer,
            stall: limits.send_timeout,
        };
        match write_response(&mut conn, response, asked, draining, &mut sender).await {
            Ok(After::KeepAlive) => conn.shed_buffers(),
            Ok(After::Close) => {
                linger_close(&mut conn.io).await;
                return Ended::Closed;
            }
            Ok(After::Tunnel(switched)) => {
                // Boxed, as the rare paths below: only what every request needs stays in the
                // connection's state.
                Box::pin(tunnel(conn, switched)).await;
                return Ended::Closed;
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::TimedOut {
                    metrics.closed("send_timeout");
                }
                tracing::debug!(client = %cx.peer, error = %e, "writing the response failed");
                return Ended::Closed;
            }
        }
    }
}

/// Reads until a complete request head, under the idle and head timers.
async fn read_head(
    conn: &mut ClientConn,
    timer: &mut ConnTimer,
    limits: &Limits,
    fresh: bool,
    drained: &mut SignalWatch<'_>,
) -> HeadRead {
    // Pipelined bytes may already hold a head.
    let mut parse = !conn.read.is_empty();
    let mut idle_until: Option<Instant> = None;
    let mut head_until: Option<Instant> = None;
    poll_fn(|cx| {
        loop {
            if parse && !conn.read.is_empty() {
                parse = false;
                if fresh
                    && limits.http2
                    && H2_PREFACE.starts_with(&conn.read[..conn.read.len().min(H2_PREFACE.len())])
                {
                    if conn.read.len() >= H2_PREFACE.len() {
                        return Poll::Ready(HeadRead::Http2);
                    }
                } else {
                    match request::parse_h1(&mut conn.read) {
                        Ok(Some(head)) if head.buffer().len() > limits.max_header_bytes => {
                            return Poll::Ready(HeadRead::Refused(HeadError::TOO_LARGE));
                        }
                        Ok(Some(head)) => return Poll::Ready(HeadRead::Head(head)),
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(HeadRead::Refused(e)),
                    }
                }
            }
            if conn.read.len() >= limits.max_header_bytes {
                return Poll::Ready(HeadRead::Refused(HeadError::TOO_LARGE));
            }
            if conn.read.is_empty() && drained.poll_fired(cx).is_ready() {
                return Poll::Ready(HeadRead::Quiet);
            }
            let before = conn.read.len();
            match conn.poll_read_head_bytes(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(HeadRead::Quiet),
                Poll::Ready(Ok(_)) => {
                    // A head can only have ended where a line ended: re-parse then, not on
                    // every byte of a head that trickles in.
                    parse = before == 0 || conn.read[before.saturating_sub(1)..].contains(&b'\n');
                }
                Poll::Pending => {
                    let (at, is_head) = if conn.read.is_empty() {
                        let wait = if fresh {
                            limits.header_timeout
                        } else {
                            limits.keepalive_timeout
                        };
                        (
                            *idle_until.get_or_insert_with(|| Instant::now() + wait),
                            false,
                        )
                    } else {
                        let at = *head_until
                            .get_or_insert_with(|| Instant::now() + limits.header_timeout);
                        (at, true)
                    };
                    ready!(timer.poll_until(at, cx));
                    return Poll::Ready(if is_head {
                        HeadRead::HeadTimeout
                    } else {
                        HeadRead::IdleTimeout
                    });
                }
            }
        }
    })
    .await
}

/// Runs the handler for a request without a body while watching the client: a client that
/// closes the connection before the answer abandons the request (`None`), as nginx and hyper
/// treat it. Bytes a client pipelines meanwhile stay in the buffer for the next request.
async fn handle_watching_close(
    head: &RequestHead,
    conn: &mut ClientConn,
    cx: &ConnCtx,
    timer: &mut ConnTimer,
) -> Option<ProxyResponse> {
    // Boxed: the handler's state is most of a connection's size, and an idle keep-alive
    // connection (most of them, most of the time) then holds none of it.
    let mut handler = Box::pin(forward::handle(head, None, cx, timer));
    poll_fn(|task| {
        if let Poll::Ready(response) = handler.as_mut().poll(task) {
            return Poll::Ready(Some(response));
        }
        if conn.read.is_empty() {
            conn.read.reserve(HEAD_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), task, &mut conn.read) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) | Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Writes the response: its head, then its body as it arrives, framed for the client.
async fn write_response(
    conn: &mut ClientConn,
    response: ProxyResponse,
    asked: Asked,
    draining: bool,
    sender: &mut Sender<'_>,
) -> io::Result<After> {
    let ProxyResponse {
        head,
        request_id,
        mut body,
        switched,
    } = response;
    let status = head.status;
    let bodiless = asked.head_method
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // Sluice's own bodies are whole: their length is stated (for HEAD too, as the GET would
    // have it). An instance's length is its own `Content-Length`, passed through.
    let local_length = match head.fields {
        ResponseFields::Local(_) if status != StatusCode::NO_CONTENT => body.size_hint().exact(),
        _ => None,
    };
    let framing = if bodiless {
        WireFraming::None
    } else if head.states_length() || local_length.is_some() {
        WireFraming::Length
    } else if asked.version == Version::HTTP_10 {
        WireFraming::Close
    } else {
        WireFraming::Chunked
    };
    let body_read = matches!(conn.body, BodyState::Done);
    let keep = asked.keep_alive
        && body_read
        && !draining
        && framing != WireFraming::Close
        && switched.is_none();
    let connection = if switched.is_some() {
        ConnectionField::None
    } else if !keep {
        ConnectionField::Close
    } else if asked.version == Version::HTTP_10 {
        ConnectionField::KeepAlive
    } else {
        ConnectionField::None
    };
    conn.write.clear();
    encode_h1(
        &mut conn.write,
        &head,
        &request_id,
        local_length,
        framing,
        connection,
    );
    drop(head);

    let chunked = framing == WireFraming::Chunked;
    let mut complete = true;
    // The head waits for the first bytes of a body of stated length, as nginx's
    // `postpone_output` holds it: an instance often writes its head and its body apart, and
    // the head sent alone costs the client a wake-up and a segment for nothing it can use.
    // A body of unknown length may be a stream whose first bytes come late: its head goes at
    // once.
    let mut head_waits = !bodiless && body.size_hint().exact().is_some_and(|n| n > 0);
    loop {
        let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending if !conn.write.is_empty() && !head_waits => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
        })
        .await;
        head_waits = false;
        let Some(frame) = next else {
            // The body waits for the instance: send what is ready meanwhile.
            sender.send(&mut conn.io, &conn.write).await?;
            conn.write.clear();
            continue;
        };
        match frame {
            None => {
                if chunked {
                    conn.write.extend_from_slice(b"0\r\n\r\n");
                }
                break;
            }
            Some(Ok(frame)) if bodiless => drop(frame),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    if chunked {
                        chunked::put_size_line(&mut conn.write, data.len());
                    }
                    if data.len() <= COALESCE_FRAME && conn.write.len() + data.len() <= COALESCE {
                        conn.write.extend_from_slice(&data);
                    } else {
                        // Larger frames are not copied: what is pending (the head, a chunk
                        // size line) goes out with the frame in one vectored write.
                        sender.send_pair(&mut conn.io, &conn.write, &data).await?;
                        conn.write.clear();
                    }
                    if chunked {
                        conn.write.extend_from_slice(b"\r\n");
                    }
                }
                Err(frame) => {
                    if let (Ok(trailers), true) = (frame.into_trailers(), chunked) {
                        conn.write.extend_from_slice(b"0\r\n");
                        if asked.trailers {
                            for (name, value) in &trailers {
                                put_field(
                                    &mut conn.write,
                                    name.as_str().as_bytes(),
                                    value.as_bytes(),
                                );
                            }
                        }
                        conn.write.extend_from_slice(b"\r\n");
                        // Nothing follows trailers: the body is complete.
                        drop_until_end(&mut body).await;
                        break;
                    }
                }
            },
            Some(Err(e)) => {
                // The head is out: all that can be done is to end the connection, so the
                // client sees a truncated body rather than a complete-looking one.
                tracing::debug!(error = %e, "response body failed; closing the client connection");
                complete = false;
                break;
            }
        }
    }
    sender.send(&mut conn.io, &conn.write).await?;
    conn.write.clear();
    sender.flush(&mut conn.io).await?;
    Ok(match switched {
        Some(s) if status == StatusCode::SWITCHING_PROTOCOLS => After::Tunnel(s),
        _ if keep && complete => After::KeepAlive,
        _ => After::Close,
    })
}

/// Polls a body that has sent its trailers until it reports its end (which finishes its
/// exchange record).
async fn drop_until_end<B: Body + Unpin>(body: &mut B) {
    while poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
        .await
        .is_some_and(|f| f.is_ok())
    {}
}

/// Writes to the client under `send_timeout`: a client that takes no bytes for that long
/// (it stopped reading, its window stays shut) fails the write, which ends the connection.
/// The timer is armed only when a write cannot proceed.
struct Sender<'t> {
    timer: &'t mut ConnTimer,
    stall: Duration,
}

impl Sender<'_> {
    async fn send(&mut self, io: &mut MaybeTls<TcpStream>, mut bytes: &[u8]) -> io::Result<()> {
        let mut until = None;
        poll_fn(|cx| {
            while !bytes.is_empty() {
                match Pin::new(&mut *io).poll_write(cx, bytes) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        bytes = &bytes[n..];
                        until = None;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return self.poll_stalled(&mut until, cx),
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Writes `first` then `second`, as one vectored write when the stream takes them at once.
    async fn send_pair(
        &mut self,
        io: &mut MaybeTls<TcpStream>,
        mut first: &[u8],
        mut second: &[u8],
    ) -> io::Result<()> {
        let mut until = None;
        poll_fn(|cx| {
            while !first.is_empty() {
                let slices = [io::IoSlice::new(first), io::IoSlice::new(second)];
                match Pin::new(&mut *io).poll_write_vectored(cx, &slices) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        let from_second = n.saturating_sub(first.len());
                        first = &first[n.min(first.len())..];
                        second = &second[from_second..];
                        until = None;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return self.poll_stalled(&mut until, cx),
                }
            }
            Poll::Ready(Ok(()))
        })
        .await?;
        self.send(io, second).await
    }

    /// Flushes what TLS holds back (a no-op for plain TCP), under the same timeout.
    async fn flush(&mut self, io: &mut MaybeTls<TcpStream>) -> io::Result<()> {
        let mut until = None;
        poll_fn(|cx| match Pin::new(&mut *io).poll_flush(cx) {
            Poll::Pending => self.poll_stalled(&mut until, cx),
            done => done,
        })
        .await
    }

    /// A write cannot proceed: `Pending` until the client takes bytes or the stall timeout
    /// passes (then an error).
    fn poll_stalled(
        &mut self,
        until: &mut Option<Instant>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let at = *until.get_or_insert_with(|| Instant::now() + self.stall);
        ready!(self.timer.poll_until(at, cx));
        Poll::Ready(Err(crate::conn::send_timed_out(self.stall)))
    }
}

const REQUEST_TIMEOUT_BODY: &[u8] =
    b"{\"error\":\"request header timeout\",\"detail\":\"the request head was incomplete\"}";

/// Answers a request that cannot be served (bad head, head timeout) and closes.
async fn refuse(conn: &mut ClientConn, status: StatusCode, body: &[u8]) {
    let mut out = BytesMut::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(itoa_u64(body.len() as u64, &mut [0u8; 20]));
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(body);
    // Best effort: a client that sent a bad head may be gone already.
    let sent = tokio::time::timeout(LINGER_TIME, async {
        use tokio::io::AsyncWriteExt as _;
        conn.io.write_all(&out).await?;
        conn.io.flush().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        linger_close(&mut conn.io).await;
    }
}

/// Closes the connection without destroying what was written: closing a socket that still has
/// unread client bytes makes the kernel send RST, which can discard the response the client has
/// not read yet (the 431 for an oversized head, say). So the write side is shut first (FIN),
/// then, only if the client is still sending, its bytes are read and discarded for a short
/// while (nginx calls this lingering close).
async fn linger_close(io: &mut MaybeTls<TcpStream>) {
    if poll_fn(|cx| Pin::new(&mut *io).poll_shutdown(cx))
        .await
        .is_err()
    {
        return;
    }
    let mut discarded = 0;
    // On the heap: an array here would be part of every connection's state.
    let mut scratch = vec![0u8; 4096];
    let until = Instant::now() + LINGER_TIME;
    loop {
        let mut buf = ReadBuf::new(&mut scratch);
        let read = poll_fn(|cx| match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            // Nothing was pending when we closed: close at once.
            Poll::Pending if discarded == 0 => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => Poll::Ready(Some(r)),
        });
        match tokio::time::timeout_at(until, read).await {
            Ok(Some(Ok(()))) if !buf.filled().is_empty() => {
                discarded += buf.filled().len();
                if discarded >= LINGER_BYTES {
                    return;
                }
            }
            // The client closed too, failed, or was quiet: nothing left to protect.
            _ => return,
        }
    }
}

/// Joins the client's socket to the instance's after `101 Switching Protocols`, each side first
/// getting the bytes that already arrived behind the heads.
async fn tunnel(conn: ClientConn, switched: Box<Switched>) {
    let Switched {
        conn: upstream,
        idle,
        addr,
        demoted,
    } = *switched;
    let ClientConn {
        io: mut client,
        read: from_client,
        ..
    } = conn;
    let (mut upstream, from_upstream) = (*upstream).into_parts();
    let early = async {
        use tokio::io::AsyncWriteExt as _;
        if !from_client.is_empty() {
            upstream.write_all(&from_client).await?;
        }
        if !from_upstream.is_empty() {
            client.write_all(&from_upstream).await?;
        }
        io::Result::Ok(())
    };
    if let Err(e) = early.await {
        tracing::debug!(upstream = %addr, error = %e, "protocol switch failed");
        return;
    }
    let stats = crate::tunnel::run(
        client,
        upstream,
        idle,
        crate::tunnel::UPGRADED_BUFFER,
        demoted,
    )
    .await;
    tracing::debug!(
        upstream = %addr,
        end = stats.end.as_str(),
        to_upstream = stats.a_to_b,
        to_client = stats.b_to_a,
        "upgraded connection closed"
    );
}
