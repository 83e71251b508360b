//! The socket under an HTTP/2 client connection, as the `h2` crate sees it ([`H2Io`]), and the
//! connection loop's hold on its writes ([`H2Out`]).
//!
//! - **Reads** replay the bytes read while telling HTTP/2 from HTTP/1.x, then read the socket.
//!   The connection reads as closed (an end of stream, which h2 takes as a quiet close) once no
//!   stream has been open for `keepalive_timeout` (`header_read_timeout` for a connection that
//!   never opened one). The request handler tells it, through [`ConnWatch`], when streams
//!   start and finish.
//! - **Writes** are held and go out together (`held_writes`).
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
use crate::held_writes::{HeldIo, HeldOut, held_writes};

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

/// The socket as h2 sees it.
pub(crate) type H2Io = HeldIo<ClientSocket>;
/// The connection loop's hold on the socket's writes.
pub(crate) type H2Out = HeldOut<ClientSocket>;

/// The socket of a new HTTP/2 connection, whose first bytes (already read) are `replay`.
pub(crate) fn h2_socket(
    stream: MaybeTls<TcpStream>,
    replay: BytesMut,
    watch: Arc<ConnWatch>,
    timeouts: H2Timeouts,
    metrics: ClientTimerMetrics,
) -> (H2Io, H2Out) {
    held_writes(ClientSocket {
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
    })
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
    use std::future::poll_fn;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::held_writes::HELD_MAX;

    /// A connected pair on loopback: the socket as h2 and the connection loop see it, and the
    /// client's end.
    async fn pair(send_timeout: Duration) -> (H2Io, H2Out, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let timeouts = H2Timeouts {
            header: Duration::from_secs(60),
            keepalive: Duration::from_secs(60),
            send: send_timeout,
        };
        let (io, out) = h2_socket(
            MaybeTls::Plain(accepted.unwrap().0),
            BytesMut::new(),
            Arc::new(ConnWatch::default()),
            timeouts,
            ClientTimerMetrics::new("test"),
        );
        (io, out, client.unwrap())
    }

    /// What the client can read within 100 ms.
    async fn readable_now(client: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0; 256 * 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), client.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// Writes `bufs` as h2 does: vectored, then a flush.
    async fn h2_writes(io: &mut H2Io, bufs: &[&[u8]]) {
        let slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        // The test's writes fit the held room or the socket's buffer, so the socket takes each
        // whole, and says so: the count is of these bytes only, never of what was held.
        let written = poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, &slices)).await;
        assert_eq!(written.unwrap(), len);
        io.flush().await.unwrap();
    }

    #[tokio::test]
    async fn writes_are_held_until_the_connection_loop_writes_them_out_together() {
        let (mut io, out, mut client) = pair(Duration::from_secs(5)).await;
        // Before `hold_writes` (the handshake), a flush writes.
        h2_writes(&mut io, &[b"settings"]).await;
        assert_eq!(readable_now(&mut client).await, b"settings");

        out.hold_writes();
        let frame = vec![b'x'; 1024];
        for stream in [b"head1", b"head2", b"head3"] {
            h2_writes(&mut io, &[stream, &frame]).await;
        }
        assert!(
            readable_now(&mut client).await.is_empty(),
            "h2's flushes write nothing while writes are held"
        );
        poll_fn(|cx| out.poll_write_out(cx)).await.unwrap();
        let got = readable_now(&mut client).await;
        let want: Vec<u8> = [b"head1", b"head2", b"head3"]
            .iter()
            .flat_map(|h| h.iter().chain(&frame).copied())
            .collect();
        assert_eq!(got, want, "three answers, in order, in one write-out");
    }

    #[tokio::test]
    async fn a_write_beyond_the_held_room_goes_out_at_once_behind_what_is_held() {
        let (mut io, out, mut client) = pair(Duration::from_secs(5)).await;
        out.hold_writes();
        let first = vec![b'a'; HELD_MAX - 100];
        let second = vec![b'b'; 16 * 1024];
        h2_writes(&mut io, &[&first]).await;
        h2_writes(&mut io, &[b"frame head", &second]).await;
        let got = readable_now(&mut client).await;
        assert_eq!(got.len(), first.len() + 10 + second.len());
        assert!(got.starts_with(&first) && got.ends_with(&second));
        assert_eq!(&got[first.len()..first.len() + 10], b"frame head");
        // Nothing is left to write out.
        poll_fn(|cx| out.poll_write_out(cx)).await.unwrap();
        assert!(readable_now(&mut client).await.is_empty());
    }

    #[tokio::test]
    async fn held_writes_a_client_does_not_take_fail_at_the_send_timeout() {
        let send_timeout = Duration::from_millis(300);
        let (mut io, out, _client) = pair(send_timeout).await;
        out.hold_writes();
        let chunk = vec![b'x'; HELD_MAX];
        let started = Instant::now();
        // The client reads nothing: the socket's buffers fill, then writes wait, then fail.
        let failed = loop {
            let slices = [io::IoSlice::new(&chunk)];
            let wrote = poll_fn(|cx| Pin::new(&mut io).poll_write_vectored(cx, &slices)).await;
            let wrote_out = poll_fn(|cx| out.poll_write_out(cx)).await;
            if let Err(e) = wrote.and(wrote_out) {
                break e;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "never failed");
        };
        assert_eq!(failed.kind(), io::ErrorKind::TimedOut, "{failed}");
        assert!(started.elapsed() >= send_timeout);
        // Shutting down what is held stalls the same way, and fails at once.
        let shut = tokio::time::timeout(Duration::from_millis(100), io.shutdown()).await;
        assert!(matches!(shut, Ok(Err(_))), "{shut:?}");
    }
}
