//! Byte tunnels between two connections (upgraded WebSocket connections), closed when neither
//! side has sent anything for an idle period.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counts bytes that cross it, so a watchdog can tell activity from silence.
struct Counted<T> {
    inner: T,
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
        let n = buf.filled().len() - before;
        if n > 0 {
            self.activity.fetch_add(n as u64, Relaxed);
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
#[derive(Debug, thiserror::Error)]
pub(crate) enum TunnelEnd {
    /// Both directions finished; bytes a→b and b→a.
    #[error("closed after {0} bytes one way and {1} the other")]
    Closed(u64, u64),
    /// Nothing crossed for the idle period.
    #[error("closed after the idle timeout")]
    Idle,
    #[error("failed: {0}")]
    Error(io::Error),
}

/// Copies both ways until both sides close (half-closes are passed on), an error, or `idle`
/// passes with no byte in either direction (checked every `idle`, so silence is detected
/// between one and two idle periods after the last byte).
pub(crate) async fn run<A, B>(a: A, b: B, idle: Duration) -> TunnelEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(AtomicU64::new(0));
    let mut a = Counted {
        inner: a,
        activity: Arc::clone(&activity),
    };
    let mut b = Counted {
        inner: b,
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
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut a, &mut b) => match r {
            Ok((ab, ba)) => TunnelEnd::Closed(ab, ba),
            Err(e) => TunnelEnd::Error(e),
        },
        () = watchdog => TunnelEnd::Idle,
    }
}
