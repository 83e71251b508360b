//! What client connections share whatever their protocol: the closing counters, the
//! connection timer, and for HTTP/2 the socket wrapper that closes idle connections.
//!
//! HTTP/2 connections are served by the h2 crate; [`H2Io`] sits under it, replays the bytes read
//! while telling HTTP/2 from HTTP/1.x, and ends the connection (as an end of stream, which
//! h2 takes as a quiet close) when no stream has been open for `keepalive_timeout`
//! (`header_read_timeout` for a connection that never opened one). The request handler tells
//! it, through [`ConnWatch`], when streams start and finish.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::{Buf, BytesMut};
use metrics::{Counter, counter};
use sluice_tls::MaybeTls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::{Instant, Sleep};

use crate::metrics::CLIENT_CLOSES_TOTAL;

/// What the handler tells an HTTP/2 connection's socket wrapper about its streams.
#[derive(Debug, Default)]
pub(crate) struct ConnWatch {
    /// Requests whose response has not finished.
    in_flight: AtomicU32,
    /// Times `in_flight` dropped to zero; the reader notes the time when it sees a new value
    /// (so the request path reads no clock for it).
    went_idle: AtomicU64,
    /// The connection's reader, woken when the last response finishes so it can arm the idle
    /// timer (h2 may have polled the socket for the last time before that).
    reader: AtomicWaker,
    /// The client's socket takes no more bytes right now (its last write could not proceed):
    /// streams waiting for window then wait on the socket, not on a shut window.
    socket_blocked: AtomicBool,
}

impl ConnWatch {
    /// A request was handed to the handler.
    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// The response to a request finished (or was abandoned).
    pub(crate) fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.went_idle.fetch_add(1, Relaxed);
            self.reader.wake();
        }
    }

    /// Whether the client's socket is backed up (see `socket_blocked`).
    pub(crate) fn socket_blocked(&self) -> bool {
        self.socket_blocked.load(Relaxed)
    }
}

/// Counters bumped when a client connection is closed for a protocol-level reason.
#[derive(Debug, Clone)]
pub(crate) struct ClientTimerMetrics {
    listener: Arc<str>,
    pub(crate) header_timeouts: Counter,
    pub(crate) keepalive_closes: Counter,
}

impl ClientTimerMetrics {
    pub(crate) fn new(listener: &str) -> Self {
        let l = || listener.to_owned();
        Self {
            listener: listener.into(),
            header_timeouts: counter!(CLIENT_CLOSES_TOTAL, "listener" => l(), "reason" => "header_timeout"),
            keepalive_closes: counter!(CLIENT_CLOSES_TOTAL, "listener" => l(), "reason" => "keepalive_timeout"),
        }
    }

    /// A connection was closed for `reason`: a refused head (its error kind: `bad_request`,
    /// ...) or `send_timeout`. Rare, so the counter is looked up each time.
    pub(crate) fn closed(&self, reason: &'static str) {
        counter!(CLIENT_CLOSES_TOTAL, "listener" => self.listener.to_string(), "reason" => reason)
            .increment(1);
    }
}

/// One timer per connection. The deadline only ever moves earlier here: a keep-alive
/// connection pushes its idle deadline later with every request, and re-arming the timer wheel
/// each time costs more than letting the timer fire at the older deadline and re-arming then.
#[derive(Debug, Default)]
pub(crate) struct ConnTimer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl ConnTimer {
    /// Ready once `at` has passed.
    pub(crate) fn poll_until(&mut self, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let timer = match &mut self.sleep {
            Some(t) => {
                if at < t.deadline() {
                    t.as_mut().reset(at);
                }
                t
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        ready!(timer.as_mut().poll(cx));
        if timer.deadline() < at {
            timer.as_mut().reset(at);
            ready!(timer.as_mut().poll(cx));
        }
        Poll::Ready(())
    }
}

/// An HTTP/2 client socket: the bytes already read come first, it reads as closed once the
/// connection idled out, and its writes fail once the client has taken no bytes for
/// `send_timeout` (h2 then ends the connection).
#[derive(Debug)]
pub(crate) struct H2Io {
    stream: MaybeTls<TcpStream>,
    replay: BytesMut,
    watch: Arc<ConnWatch>,
    keepalive_timeout: Duration,
    /// When the connection closes if no stream opens; `None` while streams are open.
    idle_until: Option<Instant>,
    /// `ConnWatch::went_idle` as last seen; a change starts a new idle period.
    seen_idle: u64,
    timer: ConnTimer,
    send_timeout: Duration,
    /// When a write that cannot proceed fails; `None` while writes make progress.
    send_stalled_until: Option<Instant>,
    /// The send timeout has passed: every later write fails at once (counted once).
    send_timed_out: bool,
    /// Separate from the idle timer: reads and writes wait at once, for different deadlines.
    send_timer: ConnTimer,
    metrics: ClientTimerMetrics,
}

impl H2Io {
    pub(crate) fn new(
        stream: MaybeTls<TcpStream>,
        replay: BytesMut,
        watch: Arc<ConnWatch>,
        timeouts: H2Timeouts,
        metrics: ClientTimerMetrics,
    ) -> Self {
        Self {
            stream,
            replay,
            watch,
            keepalive_timeout: timeouts.keepalive,
            // A new connection that never opens a stream gets the head timeout, not keep-alive.
            idle_until: Some(Instant::now() + timeouts.header),
            seen_idle: 0,
            timer: ConnTimer::default(),
            send_timeout: timeouts.send,
            send_stalled_until: None,
            send_timed_out: false,
            send_timer: ConnTimer::default(),
            metrics,
        }
    }

    /// What a write (or flush) returned, under `send_timeout`: progress clears the stall, a
    /// write that cannot proceed waits for the client or fails when the timeout passes.
    fn under_send_timeout<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        self.watch
            .socket_blocked
            .store(polled.is_pending(), Relaxed);
        if !polled.is_pending() {
            self.send_stalled_until = None;
            return polled;
        }
        if !self.send_timed_out {
            let at = *self
                .send_stalled_until
                .get_or_insert_with(|| Instant::now() + self.send_timeout);
            ready!(self.send_timer.poll_until(at, cx));
            // h2 may still try to shut the socket down (TLS: flush and close_notify),
            // which stalls the same way: that is the same timeout, not another one.
            self.send_timed_out = true;
            self.metrics.closed("send_timeout");
        }
        Poll::Ready(Err(send_timed_out(self.send_timeout)))
    }

    /// The idle deadline that applies now, if no stream is open.
    fn idle_deadline(&mut self, cx: &mut Context<'_>) -> Option<Instant> {
        if self.watch.in_flight.load(Relaxed) > 0 {
            self.watch.reader.register(cx.waker());
            // The last stream may have finished between the load and the registration.
            if self.watch.in_flight.load(Relaxed) > 0 {
                return None;
            }
        }
        let went_idle = self.watch.went_idle.load(Relaxed);
        if went_idle != self.seen_idle {
            self.seen_idle = went_idle;
            self.idle_until = Some(Instant::now() + self.keepalive_timeout);
        }
        self.idle_until
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => {
                let Some(at) = this.idle_deadline(cx) else {
                    return Poll::Pending;
                };
                ready!(this.timer.poll_until(at, cx));
                this.metrics.keepalive_closes.increment(1);
                // End of stream while idle: h2 closes the connection quietly.
                Poll::Ready(Ok(()))
            }
            ready => ready,
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.under_send_timeout(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.under_send_timeout(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        self.under_send_timeout(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TLS sends what it holds back (and close_notify) first: that too can stall.
        let polled = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.under_send_timeout(polled, cx)
    }
}

/// The error of a write to a client that took no bytes for `send_timeout`.
pub(crate) fn send_timed_out(send_timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the client took no response bytes for {}ms (send_timeout)",
            send_timeout.as_millis()
        ),
    )
}

/// The client-side timeouts of an HTTP/2 connection (from the listener's config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct H2Timeouts {
    /// Until the first stream opens.
    pub(crate) header: Duration,
    /// Between streams.
    pub(crate) keepalive: Duration,
    /// While the client takes no bytes.
    pub(crate) send: Duration,
}

/// A one-way signal from a listener to its connections (drain, cut off), cheap to check per
/// request: checking is one atomic load, and each connection registers its waker once for its
/// whole life ([`SignalWatch`]) instead of on every wait.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    fired: AtomicBool,
    notify: Notify,
}

impl Signal {
    pub(crate) fn fire(&self) {
        self.fired.store(true, SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(SeqCst)
    }

    /// A watch for one connection: create it before the connection's first wait.
    pub(crate) fn watch(&self) -> SignalWatch<'_> {
        SignalWatch {
            signal: self,
            notified: Box::pin(self.notify.notified()),
            registered: false,
        }
    }
}

/// One connection's view of a [`Signal`].
#[derive(Debug)]
pub(crate) struct SignalWatch<'a> {
    signal: &'a Signal,
    notified: Pin<Box<Notified<'a>>>,
    registered: bool,
}

impl SignalWatch<'_> {
    /// Ready once the signal fired. The task's waker is registered on the first call only (a
    /// task's waker does not change), so later calls cost an atomic load.
    pub(crate) fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.is_fired() {
            return Poll::Ready(());
        }
        if !self.registered {
            self.registered = true;
            // `notified` was made before this check, so a fire in between still completes it.
            if self.notified.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.signal.is_fired()
    }

    /// Waits until the signal fires.
    pub(crate) async fn fired(&mut self) {
        std::future::poll_fn(|cx| self.poll_fired(cx)).await;
    }
}
