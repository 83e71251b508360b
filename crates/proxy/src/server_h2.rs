//! HTTP/2 on client connections — prior knowledge (h2c), or ALPN `h2` on TLS listeners —
//! served with Sluice's own HTTP/2 code (`sluice_codec::h2::server`). One task per
//! connection drives the socket: it reads, hands what the client sent to the connection's
//! state and its streams, and writes out, in one system call, whatever the streams queued
//! meanwhile. Each request is brought to the shape HTTP/1.x requests have
//! ([`RequestHead::from_h2_head`]) and goes through the same handler, in a task of its own that
//! sends the answer under the stream's deadlines ([`crate::h2_stream`]).
//!
//! The `h2` crate served here before; it cost about 23k instructions per request more than
//! HTTP/1.1 did (docs/ARCHITECTURE.md, "HTTP/2 served by Sluice's own code").

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_codec::h2::frame::ErrorCode;
use sluice_codec::h2::head::Head;
use sluice_codec::h2::server::{Config, ConnError, Event, ServerConn};
use sluice_codec::request::RequestHead;
use sluice_config::ListenerConfig;
use tokio::io::AsyncWrite;

use crate::body::DownBody;
use crate::conn::{ConnTimer, ConnWatch, Signal, SignalWatch};
use crate::forward;
use crate::h2_conn::{self, OUTPUT_HIGH_WATER, SharedConn, StreamBody, StreamHandle};
use crate::h2_io::ClientSocket;
use crate::h2_stream::{self, StallGate, StreamLimits};
use crate::listener_state::ConnCtx;
use crate::request_body::{H2Body, RequestBody};
use crate::response::H2Answer;

/// What hyper's server used (and Sluice offered) before: 1 MiB windows so one stream can fill
/// a fast link, 16 KiB frames.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
/// Streams the client may reset before their answer, or have refused, beyond those paid back
/// by answered ones, before the connection ends (rapid reset, CVE-2023-44487).
const RESET_BUDGET: u32 = 100;
/// How much is read from the socket at a time.
const READ_SIZE: usize = 16 * 1024;

/// The listener's HTTP/2 settings.
pub(crate) fn config(listener: &ListenerConfig) -> Config {
    Config {
        max_concurrent_streams: listener.max_concurrent_streams,
        max_header_list_size: u32::try_from(listener.max_header_bytes).unwrap_or(u32::MAX),
        stream_window: STREAM_WINDOW,
        connection_window: CONNECTION_WINDOW,
        max_frame_size: MAX_FRAME_SIZE,
        reset_budget: RESET_BUDGET,
    }
}

/// Serves HTTP/2 streams on `socket` until the client or an idle timeout ends the connection.
/// When the listener drains, the client is told to open no new streams (GOAWAY) and the open
/// ones finish.
pub(crate) async fn serve(
    socket: ClientSocket,
    cx: Arc<ConnCtx>,
    config: &Config,
    limits: StreamLimits,
    drain: &Signal,
) {
    let peer = cx.peer;
    let shared = h2_conn::shared(ServerConn::new(config.clone()));
    let mut driver = Driver {
        socket,
        shared: Arc::clone(&shared),
        cx,
        limits: Arc::new(limits),
        read: BytesMut::new(),
        write: Vec::new(),
        written: 0,
        draining: false,
        drained: drain.watch(),
        events: Vec::new(),
        failed: None,
    };
    let ended = poll_fn(|task| driver.poll_drive(task)).await;
    h2_conn::lock(&shared).close();
    if let Err(e) = ended {
        tracing::debug!(client = %peer, error = %e, "HTTP/2 client connection ended with an error");
    }
}

/// The task that drives one connection's socket.
struct Driver<'a> {
    socket: ClientSocket,
    shared: SharedConn,
    cx: Arc<ConnCtx>,
    limits: Arc<StreamLimits>,
    /// Bytes read and not yet taken by the connection (an incomplete frame).
    read: BytesMut,
    /// Bytes to write; `written` of them went out.
    write: Vec<u8>,
    written: usize,
    draining: bool,
    drained: SignalWatch<'a>,
    /// What the last read meant, handed out once the connection's lock is released.
    events: Vec<Event>,
    /// The connection error the client caused, once its GOAWAY is queued.
    failed: Option<ConnError>,
}

impl Driver<'_> {
    fn poll_drive(&mut self, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut progress = false;
            if !self.draining && self.drained.poll_fired(task).is_ready() {
                self.go_away();
            }
            if self.failed.is_none() && self.write.len() - self.written < OUTPUT_HIGH_WATER {
                match self.poll_read(task) {
                    Poll::Ready(Ok(true)) => progress = true,
                    // The client closed its side (or the idle timeout did).
                    Poll::Ready(Ok(false)) => return self.poll_finish(task),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            let finished = {
                let mut s = h2_conn::lock(&self.shared);
                s.set_driver(task.waker());
                s.conn.take_output(&mut self.write);
                s.unwritten = self.write.len() - self.written;
                s.conn.is_finished()
            };
            match self.poll_write(task) {
                Poll::Ready(Ok(true)) => progress = true,
                Poll::Ready(Ok(false)) => {
                    // A connection error's GOAWAY went out: the connection ends.
                    if let Some(e) = self.failed.take() {
                        return Poll::Ready(Err(io::Error::other(e)));
                    }
                    if finished {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Pending => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Reads what the client sent and acts on it; `false` at the end of its stream.
    fn poll_read(&mut self, task: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.read.capacity() - self.read.len() < READ_SIZE / 2 {
            self.read.reserve(READ_SIZE);
        }
        let got = std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.socket),
            task,
            &mut self.read
        ))?;
        if got == 0 {
            return Poll::Ready(Ok(false));
        }
        self.receive();
        Ok(true).into()
    }

    /// Hands the bytes read to the connection, then acts on what they meant. A connection
    /// error is kept until its GOAWAY is written.
    fn receive(&mut self) {
        let events = &mut self.events;
        let received = {
            let mut s = h2_conn::lock(&self.shared);
            s.conn.receive(&self.read, &mut |e| events.push(e))
        };
        // Whatever was read before an error still counts; the GOAWAY is in the output.
        let read = received.as_ref().map_or(self.read.len(), |n| *n);
        let taken = self.read.split_to(read).freeze();
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            self.act(event, &taken);
        }
        // Kept for the next read, with its room.
        self.events = events;
        self.failed = received.err();
    }

    /// Acts on one event; body data is a slice of `taken`, the bytes the event came from.
    fn act(&mut self, event: Event, taken: &Bytes) {
        match event {
            Event::Request {
                stream,
                head,
                end_stream,
            } => self.start(stream, &head, end_stream),
            Event::Data {
                stream,
                at,
                end_stream,
            } => {
                let data = taken.slice(at);
                h2_conn::lock(&self.shared).data(stream, data, end_stream);
            }
            Event::Trailers { stream, trailers } => {
                let map = header_map(&trailers);
                h2_conn::lock(&self.shared).trailers(stream, map);
            }
            Event::HeadTooLarge { stream } => self.too_large(stream),
            Event::Refused { stream, reason } => {
                tracing::debug!(client = %self.cx.peer, stream, reason, "HTTP/2 stream refused");
            }
            Event::Reset { stream, code } => h2_conn::lock(&self.shared).reset(stream, code),
            Event::Writable { stream } => h2_conn::lock(&self.shared).writable(stream),
        }
    }

    /// A new request: its own task, which owns the stream's answer.
    fn start(&mut self, stream: u32, head: &Head, end: bool) {
        // Near an `[overload]` watermark keep-alive is shed: this stream is served, and the
        // client takes the next ones to a new connection.
        if !self.draining && self.cx.listener.overload.sheds_keep_alive() {
            self.go_away();
        }
        if !h2_conn::lock(&self.shared).conn.is_open(stream) {
            // Reset by the client in the same read (rapid reset): nothing to start.
            return;
        }
        let length = content_length(head);
        if end && length.is_some_and(|n| n > 0) {
            // A body announced and none sent: malformed (RFC 9113 §8.1.1).
            h2_conn::lock(&self.shared)
                .conn
                .reset(stream, ErrorCode::PROTOCOL_ERROR);
            return;
        }
        h2_conn::lock(&self.shared).open(stream, end);
        let handle = StreamHandle::new(Arc::clone(&self.shared), stream);
        let request = RequestHead::from_h2_head(head);
        let body = (!end).then(|| {
            let source = Box::new(StreamBody::new(Arc::clone(&self.shared), stream));
            H2Body::new(source, length)
        });
        let cx = Arc::clone(&self.cx);
        let limits = Arc::clone(&self.limits);
        // Boxed: tokio keeps a task's future inline in the task and copies the whole of it
        // when it spawns and when it finishes; a stream's future is kilobytes.
        tokio::spawn(Box::pin(async move {
            serve_stream(request, body, handle, &cx, &limits).await;
        }));
    }

    /// A request whose fields exceed `max_header_bytes`: answered 431, as over HTTP/1.1.
    fn too_large(&mut self, stream: u32) {
        h2_conn::lock(&self.shared).open(stream, true);
        let handle = StreamHandle::new(Arc::clone(&self.shared), stream);
        let body = "{\"error\":\"request_head_too_large\",\"detail\":\"request fields larger than max_header_bytes\"}\n";
        let response = local_answer(
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            body.into(),
        );
        let limits = Arc::clone(&self.limits);
        let listener = self.cx.listener.name.clone();
        tokio::spawn(async move { h2_stream::respond(handle, response, &limits, &listener).await });
    }

    fn go_away(&mut self) {
        self.draining = true;
        h2_conn::lock(&self.shared).conn.go_away();
    }

    /// Writes out what is queued; `true` if anything went out.
    fn poll_write(&mut self, task: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.written == self.write.len() {
            return Poll::Ready(Ok(false));
        }
        while self.written < self.write.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.socket).poll_write(task, &self.write[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        // TLS may hold the last record back.
        std::task::ready!(Pin::new(&mut self.socket).poll_flush(task))?;
        self.write.clear();
        self.written = 0;
        let mut s = h2_conn::lock(&self.shared);
        s.unwritten = 0;
        s.socket_drained();
        Poll::Ready(Ok(true))
    }

    /// The client's side ended: what is queued still goes out, then the socket closes.
    fn poll_finish(&mut self, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        h2_conn::lock(&self.shared).close();
        {
            let mut s = h2_conn::lock(&self.shared);
            s.conn.take_output(&mut self.write);
        }
        std::task::ready!(self.poll_write(task))?;
        Poll::Ready(Ok(()))
    }
}

/// One stream: the handler's answer, sent under the stream's deadlines.
async fn serve_stream(
    request: Result<RequestHead, sluice_codec::request::HeadError>,
    body: Option<H2Body>,
    stream: StreamHandle,
    cx: &ConnCtx,
    limits: &StreamLimits,
) {
    let response = match request {
        Ok(head) => {
            let body = body.map(RequestBody::H2);
            // Each stream has its own timer (streams of a connection run concurrently).
            let mut timer = ConnTimer::default();
            // Boxed: the handler's future is large, and this stream's task (spawned per
            // request) would otherwise copy all of it at every move, starting with the spawn.
            let handled = Box::pin(forward::handle(&head, body, cx, &mut timer));
            // A client that resets the stream (or a connection that ends) while the instance
            // has not answered yet: the request is dropped, which releases the instance.
            match h2_stream::unless_reset(&stream, handled).await {
                Some(response) => response.into_h2(),
                None => return,
            }
        }
        Err(e) => {
            let body = format!("{{\"error\":\"{}\",\"detail\":\"{}\"}}\n", e.kind, e.detail);
            local_answer(e.status, body.into())
        }
    };
    h2_stream::respond(stream, response, limits, &cx.listener.name).await;
}

/// One of Sluice's own answers, a JSON error.
fn local_answer(status: http::StatusCode, body: Bytes) -> H2Answer {
    let mut fields = http::HeaderMap::with_capacity(1);
    fields.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    H2Answer::local(status, fields, DownBody::bare(body))
}

/// `content-length`, when the client sent exactly one valid value.
fn content_length(head: &Head) -> Option<u64> {
    let mut values = head
        .fields()
        .filter(|(name, _, _)| *name == b"content-length")
        .map(|(_, value, _)| value);
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    std::str::from_utf8(first).ok()?.parse().ok()
}

/// A trailer section as the handler's body frames carry it.
fn header_map(trailers: &Head) -> http::HeaderMap {
    let mut map = http::HeaderMap::with_capacity(trailers.field_count());
    for (name, value, sensitive) in trailers.fields() {
        if let (Ok(name), Ok(mut value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            value.set_sensitive(sensitive);
            map.append(name, value);
        }
    }
    map
}

/// The per-stream limits of a listener's HTTP/2 connections.
pub(crate) fn stream_limits(config: &ListenerConfig, watch: Arc<ConnWatch>) -> StreamLimits {
    StreamLimits {
        send_timeout: config.send_timeout,
        stall_grace: stall_grace(config.send_timeout),
        stalls: StallGate::new(config.http2_max_stalled_streams),
        watch,
    }
}

/// How long a stream may wait for window before it counts against
/// `http2_max_stalled_streams`: long enough that a client reopening windows at its own pace
/// (one round trip) never counts, short enough that the bound matters well before
/// `send_timeout`.
fn stall_grace(send_timeout: Duration) -> Duration {
    (send_timeout / 2).min(Duration::from_secs(1))
}
