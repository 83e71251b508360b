//! The client side of one connection: the socket wrapper that enforces Sluice's two client
//! timers, and the per-connection state the request handler shares with it.
//!
//! hyper's own `header_read_timeout` runs from the moment it starts waiting for a request head,
//! so it cannot tell an idle keep-alive connection from a client dribbling a head byte by byte,
//! and it closes both silently. Operators expect what haproxy does:
//! - **idle** (no byte of a next request yet): closed quietly after `keepalive_timeout`
//!   (`header_read_timeout` for a brand-new connection that never sent anything);
//! - **head in progress**: `header_read_timeout` from its first byte, then `408 Request Timeout`
//!   is written and the connection closed.
//!
//! [`ClientIo`] sits under hyper and sees every byte read. The handler tells it, through
//! [`ConnWatch`], when a request head was complete (a request started) and when the last
//! response finished, which is all it needs to know which timer applies. HTTP/2 connections
//! (recognised by their preface) only get the idle timer, while no stream is open.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use metrics::Counter;
use sluice_tls::MaybeTls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const RESPONSE_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
content-type: application/json\r\n\
content-length: 75\r\n\
connection: close\r\n\r\n\
{\"error\":\"request header timeout\",\"detail\":\"the request head was incomplete\"}";

/// What the handler tells the socket wrapper about requests on this connection.
#[derive(Debug, Default)]
pub(crate) struct ConnWatch {
    /// Request heads completed so far.
    started: AtomicU64,
    /// Requests whose response has not finished.
    in_flight: AtomicU32,
    /// Times `in_flight` dropped to zero; the reader notes the time when it sees a new value
    /// (so the request path reads no clock for it).
    went_idle: AtomicU64,
    /// The connection's reader, woken when the last response finishes so it can arm the idle
    /// timer (hyper may have polled the socket for the last time before that).
    reader: AtomicWaker,
}

impl ConnWatch {
    /// A request head was parsed and handed to the handler.
    pub(crate) fn request_started(&self) {
        self.started.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// The response to a request finished (or was abandoned).
    pub(crate) fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.went_idle.fetch_add(1, Relaxed);
            self.reader.wake();
        }
    }
}

/// Counters the wrapper bumps when it closes a connection.
#[derive(Debug, Clone)]
pub(crate) struct ClientTimerMetrics {
    pub(crate) header_timeouts: Counter,
    pub(crate) keepalive_closes: Counter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not enough bytes yet to tell HTTP/1 from the HTTP/2 preface.
    Unknown {
        matched: usize,
    },
    Http1,
    Http2,
}

/// Where the connection is in its request cycle, as far as the timers care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of a request; closed quietly at the deadline.
    Idle { until: Instant },
    /// Some bytes of a head arrived; the deadline is set at the first stall after them.
    Head { until: Option<Instant> },
}

/// The client socket, with Sluice's idle and header timers.
#[derive(Debug)]
pub(crate) struct ClientIo {
    stream: MaybeTls<TcpStream>,
    watch: std::sync::Arc<ConnWatch>,
    header_timeout: Duration,
    keepalive_timeout: Duration,
    mode: Mode,
    phase: Phase,
    /// `ConnWatch::started` as last seen; a change means the head being timed is complete.
    seen_started: u64,
    /// `ConnWatch::went_idle` as last seen; a change starts a new idle period.
    seen_idle: u64,
    timer: Option<Pin<Box<Sleep>>>,
    metrics: ClientTimerMetrics,
    linger: Linger,
}

/// Closing a socket that still has unread client bytes makes the kernel send RST, and an RST
/// can destroy the response the client has not read yet — the 431 for an oversized head, say.
/// So a close first sends FIN, then, only if the client is still sending, reads and discards
/// for a short while (nginx calls this lingering close).
#[derive(Debug, Default)]
enum Linger {
    #[default]
    Open,
    /// FIN sent; discarding what the client still sends.
    Draining {
        discarded: usize,
        until: Option<Instant>,
    },
}

/// Longest a closing connection waits for the client to stop sending.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes a closing connection discards before closing anyway.
const LINGER_BYTES: usize = 1 << 20;

impl ClientIo {
    pub(crate) fn new(
        stream: MaybeTls<TcpStream>,
        watch: std::sync::Arc<ConnWatch>,
        header_timeout: Duration,
        keepalive_timeout: Duration,
        metrics: ClientTimerMetrics,
    ) -> Self {
        Self {
            stream,
            watch,
            header_timeout,
            keepalive_timeout,
            mode: Mode::Unknown { matched: 0 },
            // A new connection that never sends anything gets the head timeout, not keep-alive.
            phase: Phase::Idle {
                until: Instant::now() + header_timeout,
            },
            seen_started: 0,
            seen_idle: 0,
            timer: None,
            metrics,
            linger: Linger::Open,
        }
    }

    fn observe_bytes(&mut self, bytes: &[u8]) {
        if let Mode::Unknown { matched } = self.mode {
            let want = &H2_PREFACE[matched..];
            let n = want.len().min(bytes.len());
            self.mode = if bytes[..n] != want[..n] {
                Mode::Http1
            } else if matched + n == H2_PREFACE.len() {
                Mode::Http2
            } else {
                Mode::Unknown {
                    matched: matched + n,
                }
            };
        }
        if self.mode != Mode::Http2 && matches!(self.phase, Phase::Idle { .. }) {
            self.phase = Phase::Head { until: None };
        }
    }

    /// The deadline that applies now, and whether it is the head timer (true) or the idle one.
    fn deadline(&mut self, cx: &mut Context<'_>) -> Option<(Instant, bool)> {
        let started = self.watch.started.load(Relaxed);
        if started != self.seen_started {
            // The head being timed is complete; the request is being served.
            self.seen_started = started;
            self.phase = Phase::Head { until: None };
        }
        if self.watch.in_flight.load(Relaxed) > 0 {
            self.watch.reader.register(cx.waker());
            // The last response may have finished between the load and the registration.
            if self.watch.in_flight.load(Relaxed) > 0 {
                return None;
            }
        }
        let went_idle = self.watch.went_idle.load(Relaxed);
        if went_idle != self.seen_idle {
            self.seen_idle = went_idle;
            self.phase = Phase::Idle {
                until: Instant::now() + self.keepalive_timeout,
            };
        }
        match &mut self.phase {
            Phase::Idle { until } => Some((*until, false)),
            Phase::Head { until } if self.mode != Mode::Http2 => {
                let at = *until.get_or_insert_with(|| Instant::now() + self.header_timeout);
                Some((at, true))
            }
            Phase::Head { .. } => None,
        }
    }

    /// Polls the timer that applies now; `Ready(true)` = head timeout, `Ready(false)` = idle.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Some((deadline, is_head)) = self.deadline(cx) else {
            return Poll::Pending;
        };
        // The deadline moves later with every request on a keep-alive connection. Moving the
        // armed timer each time costs more than letting it fire at the earlier deadline and
        // re-arming then, so it is only moved earlier here.
        let timer = match &mut self.timer {
            Some(t) => {
                if deadline < t.deadline() {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        ready!(timer.as_mut().poll(cx));
        if timer.deadline() < deadline {
            timer.as_mut().reset(deadline);
            ready!(timer.as_mut().poll(cx));
        }
        Poll::Ready(is_head)
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = &buf.filled()[before..];
                if !filled.is_empty() {
                    this.observe_bytes(filled);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_timers(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(true) => {
                    this.metrics.header_timeouts.increment(1);
                    tracing::debug!(
                        "client sent an incomplete request head for too long; answering 408"
                    );
                    // Best effort: the send buffer of a client that sent an incomplete head is
                    // empty, so this small write does not block.
                    let _ = Pin::new(&mut this.stream).poll_write(cx, RESPONSE_408);
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request header timeout",
                    )))
                }
                Poll::Ready(false) => {
                    this.metrics.keepalive_closes.increment(1);
                    // End of stream while idle: hyper closes the connection quietly.
                    Poll::Ready(Ok(()))
                }
            },
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Linger::Open = this.linger {
            ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            this.linger = Linger::Draining {
                discarded: 0,
                until: None,
            };
        }
        let Linger::Draining { discarded, until } = &mut this.linger else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                // The client closed too, or failed: nothing left to protect.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    *discarded += buf.filled().len();
                    if *discarded >= LINGER_BYTES {
                        return Poll::Ready(Ok(()));
                    }
                }
                // Nothing was pending when we closed: close at once.
                Poll::Pending if *discarded == 0 => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    let at = *until.get_or_insert_with(|| Instant::now() + LINGER_TIME);
                    let timer = match &mut this.timer {
                        Some(t) => {
                            if t.deadline() != at {
                                t.as_mut().reset(at);
                            }
                            t
                        }
                        None => this.timer.insert(Box::pin(tokio::time::sleep_until(at))),
                    };
                    ready!(timer.as_mut().poll(cx));
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}
