//! Byte tunnels between two connections — TCP sessions and upgraded (WebSocket) HTTP
//! connections — closed when neither side sends anything for an idle period, or when told to.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Counts the bytes read from it, and bumps a shared activity counter.
struct Counted<T> {
    inner: T,
    read: Arc<AtomicU64>,
    activity: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read.fetch_add(n, Relaxed);
            self.activity.fetch_add(n, Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunnelEnd {
    /// Both sides finished (each side's close was passed to the other).
    Closed,
    /// Nothing crossed for the idle period.
    Idle,
    /// Closed on purpose (demotion of the instance, shutdown).
    Cancelled,
    /// A socket failed.
    Error,
}

impl TunnelEnd {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TunnelEnd::Closed => "closed",
            TunnelEnd::Idle => "idle_timeout",
            TunnelEnd::Cancelled => "cancelled",
            TunnelEnd::Error => "error",
        }
    }
}

/// What went through a tunnel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TunnelStats {
    /// Bytes from the first connection to the second.
    pub(crate) a_to_b: u64,
    /// Bytes from the second connection to the first.
    pub(crate) b_to_a: u64,
    pub(crate) end: TunnelEnd,
}

/// Copy buffer per direction for TCP listener sessions: bulk transfers (database replication,
/// backups) need fewer read/write calls per byte than with tokio's default 8 KiB (compared in
/// docs/benchmarks.md). That is 64 MiB for 1k sessions.
pub(crate) const TCP_SESSION_BUFFER: usize = 32 * 1024;
/// Copy buffer per direction for upgraded HTTP connections (WebSocket): small messages, many
/// mostly idle connections.
pub(crate) const UPGRADED_BUFFER: usize = 8 * 1024;

/// Copies both ways until both sides close (a half-close is passed on and the other direction
/// keeps flowing), a socket fails, `cancel` fires, or `idle` passes with no byte either way
/// (checked every `idle`, so silence is detected between one and two idle periods after the
/// last byte). `buffer` bytes are used per direction.
pub(crate) async fn run<A, B>(
    a: A,
    b: B,
    idle: Duration,
    buffer: usize,
    cancel: CancellationToken,
) -> TunnelStats
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(AtomicU64::new(0));
    let (a_read, b_read) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut a = Counted {
        inner: a,
        read: Arc::clone(&a_read),
        activity: Arc::clone(&activity),
    };
    let mut b = Counted {
        inner: b,
        read: Arc::clone(&b_read),
        activity: Arc::clone(&activity),
    };
    let watchdog = async {
        let mut seen = activity.load(Relaxed);
        loop {
            tokio::time::sleep(idle).await;
            let now = activity.load(Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
    };
    let end = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, buffer, buffer) => if r.is_ok() { TunnelEnd::Closed } else { TunnelEnd::Error },
        () = watchdog => TunnelEnd::Idle,
        () = cancel.cancelled() => TunnelEnd::Cancelled,
    };
    TunnelStats {
        a_to_b: a_read.load(Relaxed),
        b_to_a: b_read.load(Relaxed),
        end,
    }
}
