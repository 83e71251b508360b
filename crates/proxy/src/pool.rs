//! Keep-alive connections to one instance: a bounded lock-free queue of idle HTTP/1.1
//! connections, and the connect path that makes new ones.

use std::net::SocketAddr;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::UpBody;
use crate::error::{ProxyError, ProxyErrorKind};

/// A connection's request sender; the connection itself runs on its own task.
pub(crate) type Sender = http1::SendRequest<UpBody>;

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since_ms: u64,
}

/// Idle connections to one instance.
#[derive(Debug)]
pub(crate) struct Pool {
    idle: ArrayQueue<Idle>,
}

impl Pool {
    pub(crate) fn new(max_idle: usize) -> Self {
        Self {
            // ArrayQueue needs room for at least one; `max_idle = 0` is enforced in `checkin`.
            idle: ArrayQueue::new(max_idle.max(1)),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.idle.capacity()
    }

    pub(crate) fn idle_len(&self) -> usize {
        self.idle.len()
    }

    /// An idle connection that is still open and younger than `idle_timeout`, if any.
    pub(crate) fn checkout(&self, now_ms: u64, idle_timeout: Duration) -> Option<Sender> {
        let max_age = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
        while let Some(idle) = self.idle.pop() {
            if !idle.sender.is_closed() && now_ms.saturating_sub(idle.since_ms) < max_age {
                return Some(idle.sender);
            }
            // Dropping the sender lets the connection task finish and close the socket.
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub(crate) fn checkin(&self, sender: Sender, now_ms: u64, max_idle: usize) {
        if sender.is_closed() || self.idle.len() >= max_idle {
            return;
        }
        let _ = self.idle.push(Idle {
            sender,
            since_ms: now_ms,
        });
    }
}

/// Opens a new connection to `addr` within `timeout` and starts its HTTP/1.1 task.
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&sluice_tls::ClientTls>,
) -> Result<Sender, ProxyError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(ProxyError::new(
                ProxyErrorKind::ConnectFailed,
                format!("connect to {addr}: {e}"),
            ));
        }
        Err(_) => {
            return Err(ProxyError::new(
                ProxyErrorKind::ConnectTimeout,
                format!(
                    "connect to {addr}: no answer within {}ms",
                    timeout.as_millis()
                ),
            ));
        }
    };
    // Small request heads must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return handshake(addr, stream).await;
    };
    match tokio::time::timeout(timeout, tls.connect(addr.ip(), stream)).await {
        Ok(Ok(s)) => handshake(addr, s).await,
        Ok(Err(e)) => Err(ProxyError::new(
            ProxyErrorKind::ConnectFailed,
            format!("TLS handshake with {addr}: {e}"),
        )),
        Err(_) => Err(ProxyError::new(
            ProxyErrorKind::ConnectTimeout,
            format!(
                "TLS handshake with {addr}: not done within {}ms",
                timeout.as_millis()
            ),
        )),
    }
}

/// HTTP/1.1 client handshake on a connected stream; its connection task is spawned.
async fn handshake<IO>(addr: SocketAddr, io: IO) -> Result<Sender, ProxyError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| {
            ProxyError::new(
                ProxyErrorKind::ConnectFailed,
                format!("handshake with {addr}: {e}"),
            )
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(upstream = %addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
