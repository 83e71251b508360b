//! The socket under an HTTP/2 client connection ([`ClientSocket`]), as `server_h2` drives it.
//!
//! - **Reads** replay the bytes read while telling HTTP/2 from HTTP/1.x, then read the socket.
//!   The connection reads as closed (an end of stream: a quiet close) once no
//!   stream has been open for `keepalive_timeout` (`header_read_timeout` for a connection that
//!   never opened one). The request handler tells it, through [`ConnWatch`], when streams
//!   start and finish.
//! - **Writes** come from the connection's driver, which gathers what every stream queued and
//!   writes it in one system call.
//! - **`send_timeout`.** A write to the socket that cannot proceed for that long fails, and
//!   the connection ends. The socket being backed up is also published in [`ConnWatch`], so
//!   streams waiting for window then wait on the socket, not on a shut window.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use sluice_tls::MaybeTls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::conn::{ClientTimerMetrics, ConnTimer, ConnWatch, send_timed_out};

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

/// The socket of a new HTTP/2 connection, whose first bytes (already read) are `replay`.
pub(crate) fn h2_socket(
    stream: MaybeTls<TcpStream>,
    replay: BytesMut,
    watch: Arc<ConnWatch>,
    timeouts: H2Timeouts,
    metrics: ClientTimerMetrics,
) -> ClientSocket {
    ClientSocket {
        stream,
        replay,
        idle: IdleTimer {
            watch,
            keepalive_timeout: timeouts.keepalive,
            // A new connection that never opens a stream gets the head timeout.
            until: Some(Instant::now() + timeouts.header),
            seen_idle: 0,
            timer: ConnTimer::default(),
        },
        send: SendTimer {
            timeout: timeouts.send,
            stalled_until: None,
            timed_out: false,
            timer: ConnTimer::default(),
        },
        metrics,
    }
}

/// A client's socket under its idle and send timeouts.
#[derive(Debug)]
pub(crate) struct ClientSocket {
    stream: MaybeTls<TcpStream>,
    replay: BytesMut,
    idle: IdleTimer,
    send: SendTimer,
    metrics: ClientTimerMetrics,
}

/// When a connection without open streams is closed.
#[derive(Debug)]
struct IdleTimer {
    watch: Arc<ConnWatch>,
    keepalive_timeout: Duration,
    /// When the connection closes if no stream opens; `None` while streams are open.
    until: Option<Instant>,
    /// `ConnWatch::went_idle` as last seen; a change starts a new idle period.
    seen_idle: u64,
    timer: ConnTimer,
}

/// When a write that cannot proceed fails.
#[derive(Debug)]
struct SendTimer {
    timeout: Duration,
    /// `None` while writes make progress.
    stalled_until: Option<Instant>,
    /// The send timeout has passed: every later write fails at once (counted once).
    timed_out: bool,
    /// Separate from the idle timer: reads and writes wait at once, for different deadlines.
    timer: ConnTimer,
}

impl IdleTimer {
    /// The idle deadline that applies now, if no stream is open.
    fn deadline(&mut self, cx: &mut Context<'_>) -> Option<Instant> {
        let went_idle = self.watch.idle_since(cx)?;
        if went_idle != self.seen_idle {
            self.seen_idle = went_idle;
            self.until = Some(Instant::now() + self.keepalive_timeout);
        }
        self.until
    }
}

impl ClientSocket {
    /// What a write (or flush) returned, under `send_timeout`: progress clears the stall, a
    /// write that cannot proceed waits for the client or fails when the timeout passes.
    fn under_send_timeout<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        self.idle.watch.set_socket_blocked(polled.is_pending());
        let send = &mut self.send;
        if !polled.is_pending() {
            send.stalled_until = None;
            return polled;
        }
        if !send.timed_out {
            let at = *send
                .stalled_until
                .get_or_insert_with(|| Instant::now() + send.timeout);
            ready!(send.timer.poll_until(at, cx));
            // h2 may still try to shut the socket down (TLS: flush and close_notify),
            // which stalls the same way: that is the same timeout, not another one.
            send.timed_out = true;
            self.metrics.closed("send_timeout");
        }
        Poll::Ready(Err(send_timed_out(send.timeout)))
    }
}

impl AsyncRead for ClientSocket {
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
                let Some(at) = this.idle.deadline(cx) else {
                    return Poll::Pending;
                };
                ready!(this.idle.timer.poll_until(at, cx));
                this.metrics.keepalive_closes.increment(1);
                // End of stream while idle: h2 closes the connection quietly.
                Poll::Ready(Ok(()))
            }
            ready => ready,
        }
    }
}

impl AsyncWrite for ClientSocket {
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn writes_a_client_does_not_take_fail_at_the_send_timeout() {
        let send_timeout = Duration::from_millis(300);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (_client, accepted) = tokio::join!(client, listener.accept());
        let timeouts = H2Timeouts {
            header: Duration::from_secs(60),
            keepalive: Duration::from_secs(60),
            send: send_timeout,
        };
        let watch = Arc::new(ConnWatch::default());
        let mut socket = h2_socket(
            MaybeTls::Plain(accepted.unwrap().0),
            BytesMut::new(),
            Arc::clone(&watch),
            timeouts,
            ClientTimerMetrics::new("test"),
        );
        let chunk = vec![b'x'; 64 * 1024];
        let started = Instant::now();
        // The client reads nothing: the socket's buffers fill, then writes wait, then fail.
        let failed = loop {
            if let Err(e) = socket.write_all(&chunk).await {
                break e;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "never failed");
        };
        assert_eq!(failed.kind(), io::ErrorKind::TimedOut, "{failed}");
        assert!(started.elapsed() >= send_timeout);
        assert!(watch.socket_blocked(), "the backed-up socket is published");
        // Every later write fails at once.
        let again = tokio::time::timeout(Duration::from_millis(100), socket.write(b"x")).await;
        assert!(matches!(again, Ok(Err(_))), "{again:?}");
    }
}
