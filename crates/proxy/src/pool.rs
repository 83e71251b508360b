//! Keep-alive connections to one instance: a bounded lock-free queue of idle HTTP/1.1
//! connections, and the connect path that makes new ones (see `h1` for how they are used;
//! HTTP/2 instances share the connect path, their connections are `h2_up`'s).

use std::net::SocketAddr;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use tokio::net::TcpStream;

use crate::error::{ProxyError, ProxyErrorKind};
use crate::h1::{UpConn, UpIo};

#[derive(Debug)]
struct Idle {
    conn: Box<UpConn>,
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
    /// Connections found closed (or unusable) are dropped, which closes their sockets.
    pub(crate) fn checkout(&self, now_ms: u64, idle_timeout: Duration) -> Option<Box<UpConn>> {
        let max_age = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
        while let Some(mut idle) = self.idle.pop() {
            if now_ms.saturating_sub(idle.since_ms) < max_age && idle.conn.usable_when_idle() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub(crate) fn checkin(&self, conn: Box<UpConn>, now_ms: u64, max_idle: usize) {
        if self.idle.len() >= max_idle {
            return;
        }
        let _ = self.idle.push(Idle {
            conn,
            since_ms: now_ms,
        });
    }
}

/// Opens a new HTTP/1.1 connection to `addr` within `timeout` (TCP, then TLS when configured).
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&sluice_tls::ClientTls>,
) -> Result<Box<UpConn>, ProxyError> {
    connect_io(addr, timeout, tls).await.map(UpConn::new)
}

/// Opens a byte stream to `addr`: TCP within `timeout`, then the TLS handshake (when
/// configured) within `timeout` again.
pub(crate) async fn connect_io(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&sluice_tls::ClientTls>,
) -> Result<UpIo, ProxyError> {
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
        return Ok(UpIo::Plain(stream));
    };
    match tokio::time::timeout(timeout, tls.connect(addr.ip(), stream)).await {
        Ok(Ok(s)) => Ok(UpIo::Tls(Box::new(s))),
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
