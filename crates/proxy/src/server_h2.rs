//! HTTP/2 on client connections — prior knowledge (h2c), or ALPN `h2` on TLS listeners —
//! served with the `h2` crate. Each request is brought to the shape HTTP/1.x requests have
//! ([`RequestHead::from_h2`]) and goes through the same handler, in a task of its own that
//! owns the stream's send half: it sends the answer under the stream's deadlines and resets
//! the stream when they pass ([`crate::h2_stream`]).
//!
//! hyper's server used to sit here; it only polls a response body when the client's window
//! has room, so a stream whose window the client kept shut was never released.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Request;
use sluice_config::ListenerConfig;

use crate::body::DownBody;
use crate::conn::{ConnTimer, ConnWatch, Signal};
use crate::forward;
use crate::h2_io::{H2Io, H2Out};
use crate::h2_stream::{self, StallGate, StreamLimits};
use crate::listener_state::ConnCtx;
use crate::request_body::{H2Body, RequestBody};
use sluice_codec::request::RequestHead;

/// What hyper's server used (and Sluice offered) before it was replaced: 1 MiB windows so one
/// stream can fill a fast link, 16 KiB frames, 400 KiB buffered per stream.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams h2 resets itself for the client's protocol errors before it ends the connection.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Streams the client opens and resets before they are accepted (rapid reset, CVE-2023-44487)
/// before the connection is ended: h2's default, which hyper kept.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// The listener's HTTP/2 settings.
pub(crate) fn builder(config: &ListenerConfig) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_send_buffer_size(MAX_SEND_BUFFER);
    b
}

/// Serves HTTP/2 streams on `io` until the client or an idle timeout ends the connection. When
/// the listener drains, the client is told to open no new streams (GOAWAY) and the open ones
/// finish.
pub(crate) async fn serve(
    socket: (H2Io, H2Out),
    cx: Arc<ConnCtx>,
    builder: &h2::server::Builder,
    limits: StreamLimits,
    drain: &Signal,
) {
    let peer = cx.peer;
    if let Err(e) = accept_streams(socket, cx, builder, limits, drain).await {
        tracing::debug!(client = %peer, error = %e, "HTTP/2 client connection ended with an error");
    }
}

async fn accept_streams(
    (io, out): (H2Io, H2Out),
    cx: Arc<ConnCtx>,
    builder: &h2::server::Builder,
    limits: StreamLimits,
    drain: &Signal,
) -> Result<(), ConnError> {
    let mut drained = drain.watch();
    let mut conn = builder
        .handshake::<_, bytes::Bytes>(io)
        .await
        .map_err(ConnError::H2)?;
    out.hold_writes();
    let limits = Arc::new(limits);
    let mut draining = false;
    loop {
        // Accepting also drives the connection: it queues what the streams answered.
        let accepted = tokio::select! {
            accepted = poll_fn(|cx| poll_accept(&mut conn, &out, cx)) => accepted,
            () = drained.fired(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        match accepted {
            Some(Ok((request, respond))) => {
                // Near an `[overload]` watermark keep-alive is shed: this stream is served,
                // and the client takes the next ones to a new connection.
                if !draining && cx.listener.overload.sheds_keep_alive() {
                    draining = true;
                    conn.graceful_shutdown();
                }
                let cx = Arc::clone(&cx);
                let limits = Arc::clone(&limits);
                // Boxed: tokio keeps a task's future inline in the task and copies the whole
                // of it when it spawns and when it finishes; a stream's future is kilobytes.
                tokio::spawn(Box::pin(async move {
                    serve_stream(request, respond, &cx, &limits).await;
                }));
            }
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}

/// The next stream the client opened. Before waiting for one, what h2 queued since the last
/// wait (the answers of every stream that finished meanwhile) goes out in one write.
fn poll_accept(
    conn: &mut h2::server::Connection<H2Io, bytes::Bytes>,
    out: &H2Out,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Accepted, ConnError>>> {
    let accepted = conn.poll_accept(cx);
    if accepted.is_pending() {
        // A socket that failed (or took nothing for `send_timeout`) ends the connection:
        // h2 believes those bytes were written and would never notice.
        ready!(out.poll_write_out(cx)).map_err(ConnError::Socket)?;
    }
    accepted.map(|a| a.map(|a| a.map_err(ConnError::H2)))
}

/// Why an HTTP/2 client connection ended early.
#[derive(Debug)]
enum ConnError {
    H2(h2::Error),
    /// Writing out what h2 queued failed.
    Socket(std::io::Error),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::H2(e) => e.fmt(f),
            ConnError::Socket(e) => e.fmt(f),
        }
    }
}

type Accepted = (
    Request<h2::RecvStream>,
    h2::server::SendResponse<bytes::Bytes>,
);

/// One stream: the handler's answer, sent under the stream's deadlines.
async fn serve_stream(
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    cx: &ConnCtx,
    limits: &StreamLimits,
) {
    let (parts, recv) = request.into_parts();
    let response = match RequestHead::from_h2(&parts) {
        Ok(head) => {
            let body = H2Body::new(recv, content_length(&parts.headers));
            let body = (!body.is_end_stream()).then_some(RequestBody::H2(body));
            // Each stream has its own timer (streams of a connection run concurrently).
            let mut timer = ConnTimer::default();
            // Boxed: the handler's future is large, and this stream's task (spawned per
            // request) would otherwise copy all of it at every move, starting with the spawn.
            let handled = Box::pin(forward::handle(&head, body, cx, &mut timer));
            // A client that resets the stream (or a connection that ends) while the instance
            // has not answered yet: the request is dropped, which releases the instance.
            match h2_stream::unless_reset(&mut respond, handled).await {
                Some(response) => response.into_h2(),
                None => return,
            }
        }
        Err(e) => {
            let body = format!("{{\"error\":\"{}\",\"detail\":\"{}\"}}\n", e.kind, e.detail);
            let mut response = http::Response::new(DownBody::bare(body.into()));
            *response.status_mut() = e.status;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
    };
    h2_stream::respond(respond, response, limits, &cx.listener.name).await;
}

/// `content-length`, when the client sent exactly one valid value (h2 refuses a body that
/// does not match it).
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.parse().ok()
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
