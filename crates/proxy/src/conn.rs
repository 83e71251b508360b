//! What client connections share whatever their protocol: the closing counters, the
//! connection timer, the drain signal, and for HTTP/2 what the request handler tells the
//! connection's socket ([`ConnWatch`], read by `h2_io`) about its streams.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use metrics::{Counter, counter};
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

    /// What the socket's last write found (pending: backed up).
    pub(crate) fn set_socket_blocked(&self, blocked: bool) {
        self.socket_blocked.store(blocked, Relaxed);
    }

    /// While no stream is open, how many times the connection went idle (a change starts a
    /// new idle period); `None` while streams are open, and then the task is woken when the
    /// last one finishes.
    pub(crate) fn idle_since(&self, cx: &mut Context<'_>) -> Option<u64> {
        if self.in_flight.load(Relaxed) > 0 {
            self.reader.register(cx.waker());
            // The last stream may have finished between the load and the registration.
            if self.in_flight.load(Relaxed) > 0 {
                return None;
            }
        }
        Some(self.went_idle.load(Relaxed))
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
}
