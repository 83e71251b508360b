//! HTTP/2 to instances (`protocol = "h2c" | "h2"`): a few multiplexed connections per
//! instance, each driven by a task of its own, and the exchange of one request as one stream.
//!
//! - **Connections.** A request takes a stream on the first open connection with room (fewer
//!   of Sluice's streams than the instance's `SETTINGS_MAX_CONCURRENT_STREAMS`). When none has
//!   room another is opened, one at a time per instance, up to `pool.http2_max_connections`;
//!   past that the request queues on the least loaded connection until h2 lets it open a
//!   stream. A connection with no stream for `pool.idle_timeout` is closed; one the instance
//!   closes (GOAWAY, reset) is skipped from then on.
//! - **Flow control both ways, nothing buffered whole.** The response body takes the
//!   instance's data as the client takes it: window is given back to the instance only for
//!   what was handed on. A streamed request body is sent as the instance's window opens.
//! - **Full duplex.** A request body that Sluice owns (an HTTP/2 client's stream) is sent by a
//!   task of its own, so the response (a gRPC bidirectional stream) flows while it uploads. An
//!   HTTP/1.x client's body is read by the connection's task, so it is sent before the
//!   response head is awaited; an early response ends that upload.
//! - **Limits.** A response head is held to the HTTP/1.1 side's limit ([`MAX_HEAD_BYTES`],
//!   decoded); a larger one fails the attempt. Pushes are refused.
//! - **Retries.** A stream the instance refused (`REFUSED_STREAM`, or beyond a GOAWAY's last
//!   stream) was not processed, like a request on a closed keep-alive connection: it comes back
//!   as [`SendError::Unsent`].

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body::{Body, Frame, SizeHint};
use sluice_codec::fields::Kind;
use sluice_codec::response::MAX_HEAD_BYTES;
use sluice_health::clock;

use crate::error::{ProxyError, ProxyErrorKind};
use crate::h1::{OutgoingRequest, UpIo};
use crate::held_writes::{HeldIo, HeldOut, held_writes};
use crate::pool;
use crate::request_body::UpBody;
use crate::send_error::SendError;

/// Windows offered to instances: 1 MiB per stream and 4 MiB per connection, so one stream can
/// fill a fast link and several share one connection without waiting on each other.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Data h2 may hold per stream beyond what the instance's window lets out.
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// How often a connection's liveness is checked with a PING, and how long its answer may take.
const PING_EVERY: Duration = Duration::from_secs(10);
/// `active` of a connection being closed for idleness: no stream can be taken on it.
const CLOSING: usize = usize::MAX / 2;

/// What a service's HTTP/2 connections are opened with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct H2Settings {
    pub(crate) max_connections: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    /// HTTP/2 over TLS (`h2`): the instance must agree to `h2` in ALPN.
    pub(crate) tls: bool,
}

/// One instance's HTTP/2 connections.
#[derive(Debug, Default)]
pub(crate) struct H2Pool {
    conns: ArcSwap<Vec<Arc<H2Conn>>>,
    /// Held while a connection is opened: one at a time per instance, and the requests that
    /// waited for it take their streams on it.
    opening: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct H2Conn {
    send: h2::client::SendRequest<Bytes>,
    /// Streams taken by requests and not yet given back.
    active: AtomicUsize,
    last_used_ms: AtomicU64,
    /// The connection's task ended: the instance closed it, or it idled out.
    closed: AtomicBool,
}

/// A stream's place on a connection, held until the response ends or the attempt fails.
#[derive(Debug)]
pub(crate) struct H2Link {
    conn: Arc<H2Conn>,
    /// Whether the connection was opened for this request.
    fresh: bool,
}

impl Drop for H2Link {
    fn drop(&mut self) {
        self.conn.last_used_ms.store(clock::now_ms(), Relaxed);
        self.conn.active.fetch_sub(1, Relaxed);
    }
}

impl H2Link {
    pub(crate) fn is_fresh(&self) -> bool {
        self.fresh
    }
}

impl H2Pool {
    /// A stream on a connection to `addr`: on an open connection with room, else on a new one,
    /// else on the least loaded. Failures never reached the instance.
    pub(crate) async fn link(
        &self,
        addr: SocketAddr,
        tls: Option<&sluice_tls::ClientTls>,
        settings: H2Settings,
    ) -> Result<H2Link, ProxyError> {
        if let Some(link) = self.with_room() {
            return Ok(link);
        }
        let timeout = settings.connect_timeout;
        match tokio::time::timeout(timeout, self.open_or_share(addr, tls, settings)).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::new(
                ProxyErrorKind::ConnectTimeout,
                format!(
                    "no HTTP/2 connection to {addr} within {}ms",
                    timeout.as_millis()
                ),
            )),
        }
    }

    /// Open connections (for the admin API and tests).
    pub(crate) fn open_connections(&self) -> usize {
        self.conns
            .load()
            .iter()
            .filter(|c| !c.closed.load(Relaxed))
            .count()
    }

    fn with_room(&self) -> Option<H2Link> {
        self.conns.load().iter().find_map(|conn| {
            if conn.closed.load(Relaxed) {
                return None;
            }
            let max = conn.send.current_max_send_streams();
            conn.active
                .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
                .ok()
                .map(|_| H2Link {
                    conn: Arc::clone(conn),
                    fresh: false,
                })
        })
    }

    fn least_loaded(&self) -> Option<H2Link> {
        let conns = self.conns.load();
        let conn = conns
            .iter()
            .filter(|c| !c.closed.load(Relaxed))
            .filter(|c| c.active.load(Relaxed) < CLOSING)
            .min_by_key(|c| c.active.load(Relaxed))?;
        conn.active.fetch_add(1, Relaxed);
        Some(H2Link {
            conn: Arc::clone(conn),
            fresh: false,
        })
    }

    async fn open_or_share(
        &self,
        addr: SocketAddr,
        tls: Option<&sluice_tls::ClientTls>,
        settings: H2Settings,
    ) -> Result<H2Link, ProxyError> {
        let _opening = self.opening.lock().await;
        if let Some(link) = self.with_room() {
            return Ok(link);
        }
        if self.open_connections() >= settings.max_connections
            && let Some(link) = self.least_loaded()
        {
            return Ok(link);
        }
        let conn = open(addr, tls, settings).await?;
        conn.active.store(1, Relaxed);
        let mut conns: Vec<Arc<H2Conn>> = self
            .conns
            .load()
            .iter()
            .filter(|c| !c.closed.load(Relaxed))
            .cloned()
            .collect();
        conns.push(Arc::clone(&conn));
        self.conns.store(Arc::new(conns));
        Ok(H2Link { conn, fresh: true })
    }
}

/// Opens a connection and starts the task that drives it.
async fn open(
    addr: SocketAddr,
    tls: Option<&sluice_tls::ClientTls>,
    settings: H2Settings,
) -> Result<Arc<H2Conn>, ProxyError> {
    let io = pool::connect_io(addr, settings.connect_timeout, tls).await?;
    if let UpIo::Tls(s) = &io
        && s.get_ref().1.alpn_protocol() != Some(b"h2")
    {
        return Err(ProxyError::new(
            ProxyErrorKind::ConnectFailed,
            format!("{addr} did not agree to HTTP/2 in the TLS handshake (ALPN h2)"),
        ));
    }
    let (io, out) = held_writes(io);
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| {
            ProxyError::new(
                ProxyErrorKind::ConnectFailed,
                format!("HTTP/2 handshake with {addr}: {e}"),
            )
        })?;
    let conn = Arc::new(H2Conn {
        send,
        active: AtomicUsize::new(0),
        last_used_ms: AtomicU64::new(clock::now_ms()),
        closed: AtomicBool::new(false),
    });
    out.hold_writes();
    tokio::spawn(drive(
        (connection, out),
        Arc::clone(&conn),
        addr,
        settings.idle_timeout,
    ));
    Ok(conn)
}

/// Runs a connection until the instance ends it, it has had no stream for `idle`, or a PING
/// went unanswered for [`PING_EVERY`] (the instance froze, or the path to it died without a
/// reset: without this every request multiplexed onto it would wait for its own timeout).
async fn drive(
    (mut connection, out): (h2::client::Connection<HeldIo<UpIo>, Bytes>, HeldOut<UpIo>),
    conn: Arc<H2Conn>,
    addr: SocketAddr,
    idle: Duration,
) {
    let mut pings = connection.ping_pong();
    let mut awaiting_pong = false;
    let mut ping_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        let since = conn.last_used_ms.load(Relaxed);
        let wait =
            Duration::from_millis((since.saturating_add(idle_ms)).saturating_sub(clock::now_ms()));
        tokio::select! {
            ended = poll_fn(|cx| poll_connection(&mut connection, &out, cx)) => {
                if let Err(e) = ended {
                    tracing::debug!(instance = %addr, error = %e, "HTTP/2 connection to instance ended");
                }
                break;
            }
            () = tokio::time::sleep(wait) => {
                let quiet = conn.last_used_ms.load(Relaxed) == since;
                if quiet && conn.active.compare_exchange(0, CLOSING, Relaxed, Relaxed).is_ok() {
                    break;
                }
            }
            _ = ping_tick.tick(), if pings.is_some() => {
                if awaiting_pong {
                    tracing::warn!(instance = %addr, "HTTP/2 connection to instance closed: no answer to a PING within {}s", PING_EVERY.as_secs());
                    break;
                }
                awaiting_pong = pings.as_mut().is_some_and(|p| p.send_ping(h2::Ping::opaque()).is_ok());
            }
            _ = poll_fn(|cx| pings.as_mut().map_or(Poll::Pending, |p| p.poll_pong(cx))), if awaiting_pong => {
                awaiting_pong = false;
            }
        }
    }
    conn.closed.store(true, Relaxed);
}

/// Drives the connection; before it waits, what h2 queued since the last wait (the requests
/// and bodies of every stream that wrote meanwhile) goes out in one write.
fn poll_connection(
    connection: &mut h2::client::Connection<HeldIo<UpIo>, Bytes>,
    out: &HeldOut<UpIo>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), String>> {
    let polled = Pin::new(connection).poll(cx).map_err(|e| e.to_string());
    if polled.is_pending() {
        // A failed write ends the connection: h2 believes those bytes were written.
        ready!(out.poll_write_out(cx)).map_err(|e| e.to_string())?;
    }
    polled
}

/// The response to one request, with its body still to read.
#[derive(Debug)]
pub(crate) struct H2Response {
    pub(crate) parts: http::response::Parts,
    pub(crate) body: H2UpBody,
}

/// Sends one request on `link` and waits for the response head. `uploaded` is set once the
/// whole request body has gone out.
pub(crate) async fn exchange<'b>(
    link: H2Link,
    req: &OutgoingRequest<'_>,
    scheme: &'static str,
    body: UpBody<'b>,
    uploaded: &AtomicBool,
) -> Result<H2Response, SendError<'b>> {
    let reused = !link.fresh;
    let head = request_head(req, scheme).map_err(|e| {
        SendError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the request cannot be sent over HTTP/2: {e}"),
        ))
    })?;
    let mut send = link.conn.send.clone();
    if poll_fn(|cx| send.poll_ready(cx)).await.is_err() {
        link.conn.closed.store(true, Relaxed);
        return Err(SendError::Unsent {
            reused,
            body: Some(body),
        });
    }
    let (response, tx) = match send.send_request(head, body.is_end_stream()) {
        Ok(sent) => sent,
        Err(_) => {
            link.conn.closed.store(true, Relaxed);
            return Err(SendError::Unsent {
                reused,
                body: Some(body),
            });
        }
    };
    let upload = start_upload(tx, body);
    let response = await_head(response, upload, uploaded)
        .await
        .map_err(refused_as_unsent)?;
    let (parts, recv) = response.into_parts();
    let remaining = content_length(&parts.headers);
    Ok(H2Response {
        parts,
        body: H2UpBody {
            recv,
            remaining,
            data_done: false,
            _link: link,
        },
    })
}

/// The request head as h2 sends it: the target with the scheme and authority as
/// pseudo-fields, the client's end-to-end fields (no `Host`, nothing connection-specific),
/// `te: trailers` when the client asked for trailers (gRPC), then the proxy's own fields.
fn request_head(
    req: &OutgoingRequest<'_>,
    scheme: &'static str,
) -> Result<Request<()>, http::Error> {
    let authority = req.host.or_else(|| req.head.host()).unwrap_or(b"localhost");
    let uri = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(req.target)
        .build()?;
    let mut headers = HeaderMap::with_capacity(req.head.field_list().len() + 6);
    let buf = req.head.buffer();
    let mut trailers = false;
    for f in req.head.field_list() {
        let name = f.name.get(buf);
        let value = f.value.get(buf);
        if f.kind == Kind::Te {
            trailers |= value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        }
        if f.kind == Kind::Upgrade || !req.fields.keeps(req.head, f, name, true) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    if trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    req.fields.insert_into(&mut headers);
    let mut head = Request::new(());
    *head.method_mut() = req.head.method.clone();
    *head.uri_mut() = uri;
    *head.headers_mut() = headers;
    Ok(head)
}

/// A request body still being sent, by the request's task while it waits for the response
/// head. One the proxy owns (an HTTP/2 client's stream) can be handed to a task of its own
/// when the head comes first (a streaming call); one read from an HTTP/1.x connection cannot.
enum Upload<'b> {
    Owned(Pin<Box<dyn Future<Output = Result<(), SendError<'static>>> + Send>>),
    Borrowed(Pin<Box<dyn Future<Output = Result<(), SendError<'b>>> + Send + 'b>>),
}

impl<'b> Upload<'b> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError<'b>>> {
        match self {
            Upload::Owned(f) => f.as_mut().poll(cx),
            Upload::Borrowed(f) => f.as_mut().poll(cx),
        }
    }

    /// The head came before the end of the upload: an owned body goes on in a task of its
    /// own (its failures reset the stream, which the response then shows); a borrowed one
    /// ends, as over HTTP/1.1.
    fn continue_alone(self) {
        if let Upload::Owned(rest) = self {
            tokio::spawn(rest);
        }
    }
}

/// Starts sending the body: a whole body is handed to h2 at once (it is small: the retry
/// buffer bounds it); a stream is sent by [`await_head`], so a unary call (whose body has
/// ended before its answer) costs no task of its own.
fn start_upload<'b>(mut tx: h2::SendStream<Bytes>, body: UpBody<'b>) -> Option<Upload<'b>> {
    match body {
        UpBody::Empty => None,
        UpBody::Full(bytes) => {
            // A failure shows on the response as the stream's reset.
            let _ = tx.send_data(bytes.unwrap_or_default(), true);
            None
        }
        UpBody::Stream(stream) => Some(match stream.into_owned() {
            Ok(owned) => Upload::Owned(Box::pin(upload(tx, UpBody::Stream(owned)))),
            Err(borrowed) => Upload::Borrowed(Box::pin(upload(tx, UpBody::Stream(borrowed)))),
        }),
    }
}

/// Waits for the response head while the upload (if any) goes on; `uploaded` is set when it
/// finished.
async fn await_head<'b>(
    mut response: h2::client::ResponseFuture,
    mut upload: Option<Upload<'b>>,
    uploaded: &AtomicBool,
) -> Result<http::Response<h2::RecvStream>, SendError<'b>> {
    if upload.is_none() {
        uploaded.store(true, Relaxed);
    }
    let head = poll_fn(|cx| {
        // The answer first: an instance may answer (a gRPC error, trailers-only) and close
        // the stream before the whole body went out, and that answer is what counts.
        if let Poll::Ready(head) = Pin::new(&mut response).poll(cx) {
            return Poll::Ready(head.map_err(SendError::Stream));
        }
        if let Some(up) = upload.as_mut()
            && let Poll::Ready(sent) = up.poll(cx)
        {
            upload = None;
            uploaded.store(true, Relaxed);
            match sent {
                // The client's body failed: nothing the instance says can be passed on.
                Err(e @ SendError::ClientBody(_)) => return Poll::Ready(Err(e)),
                // The stream failed under the upload: the response future says how.
                Err(_) => return Pin::new(&mut response).poll(cx).map_err(SendError::Stream),
                Ok(()) => {}
            }
        }
        Poll::Pending
    })
    .await?;
    if let Some(rest) = upload {
        rest.continue_alone();
    }
    Ok(head)
}

/// Sends a streamed body as the instance's window opens: data, then trailers or the end.
async fn upload<'b>(
    mut tx: h2::SendStream<Bytes>,
    mut body: UpBody<'b>,
) -> Result<(), SendError<'b>> {
    loop {
        let frame = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let frame = match frame {
            None => return tx.send_data(Bytes::new(), true).map_err(SendError::Stream),
            Some(Err(e)) => {
                tx.send_reset(h2::Reason::CANCEL);
                return Err(SendError::ClientBody(e));
            }
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return tx.send_trailers(trailers).map_err(SendError::Stream);
                }
                continue;
            }
        };
        send_windowed(&mut tx, data).await?;
    }
}

/// Sends `data` in pieces no larger than the window the instance granted.
async fn send_windowed(
    tx: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
) -> Result<(), SendError<'static>> {
    while !data.is_empty() {
        tx.reserve_capacity(data.len());
        let granted = poll_fn(|cx| {
            loop {
                if tx.capacity() > 0 {
                    return Poll::Ready(Ok(tx.capacity()));
                }
                match ready!(tx.poll_capacity(cx)) {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Poll::Ready(Err(SendError::Stream(e))),
                    None => return Poll::Ready(Err(SendError::Closed)),
                }
            }
        })
        .await?;
        let piece = data.split_to(granted.min(data.len()));
        tx.send_data(piece, false).map_err(SendError::Stream)?;
    }
    Ok(())
}

/// A stream the instance refused, or that a GOAWAY left unprocessed, was never processed: for
/// the retry rules it is like a request on a keep-alive connection that closed.
/// Only the instance's own word counts: h2 also resets a stream with REFUSED_STREAM itself,
/// for a response head over the size Sluice accepts, and that one was processed.
fn refused_as_unsent(e: SendError<'_>) -> SendError<'_> {
    match e {
        SendError::Stream(err)
            if err.is_remote()
                && (err.reason() == Some(h2::Reason::REFUSED_STREAM)
                    || (err.is_go_away() && err.reason() == Some(h2::Reason::NO_ERROR))) =>
        {
            // As a request on a closed keep-alive connection: it may go again, to the same
            // instance too, when it can be sent again.
            SendError::Unsent {
                reused: true,
                body: None,
            }
        }
        e => e,
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// An HTTP/2 instance's response body: data as the client takes it, then trailers. Dropped
/// before its end, the stream is reset (h2 does so when its last handle goes).
#[derive(Debug)]
pub(crate) struct H2UpBody {
    recv: h2::RecvStream,
    /// What `content-length` announced, less the data taken.
    remaining: Option<u64>,
    data_done: bool,
    _link: H2Link,
}

impl Body for H2UpBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The window reopens for what is handed on, not for what arrived.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(n) = &mut this.remaining {
                        *n = n.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
