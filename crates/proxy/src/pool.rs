//! Keep-alive connections to one instance: bounded lock-free queues of idle HTTP/1.1
//! connections, and the connect path that makes new ones (see `h1` for how they are used;
//! HTTP/2 instances share the connect path, their connections are `h2_up`'s).
//!
//! Up to `max_idle_per_instance` idle connections are kept until `idle_timeout`. A burst
//! needs more at once; those beyond the bound are kept too, without their buffers, for
//! [`SURPLUS_LINGER`], so that the rest of the burst, or the next one, reuses them. Closing
//! them as they came back would open as many again while the burst lasts: a storm of
//! connects that fills the instance's accept queue, whose dropped SYNs are sent again only a
//! second later, past many a `connect` timeout (docs/benchmarks.md, "The failed requests
//! after a stall"). haproxy keeps idle connections the same way, purging the surplus after
//! `pool-purge-delay`.

use std::net::SocketAddr;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use tokio::net::TcpStream;

use crate::error::{ProxyError, ProxyErrorKind};
use crate::h1::{UpConn, UpIo};

/// How long a connection beyond `max_idle_per_instance` is kept unused (at most
/// `idle_timeout`): haproxy's `pool-purge-delay` default.
const SURPLUS_LINGER: Duration = Duration::from_secs(5);
/// Room for a burst's surplus connections, as a multiple of `max_idle_per_instance`, and at
/// most (the queue's slots are allocated up front).
const SURPLUS_ROOM: usize = 4;
const SURPLUS_MAX: usize = 16_384;

#[derive(Debug)]
struct Idle {
    conn: Box<UpConn>,
    since_ms: u64,
}

/// Idle connections to one instance.
#[derive(Debug)]
pub(crate) struct Pool {
    idle: ArrayQueue<Idle>,
    /// Connections beyond the idle bound, kept for [`SURPLUS_LINGER`].
    surplus: ArrayQueue<Idle>,
}

impl Pool {
    pub(crate) fn new(max_idle: usize) -> Self {
        Self {
            // ArrayQueue needs room for at least one; `max_idle = 0` is enforced in `checkin`.
            idle: ArrayQueue::new(max_idle.max(1)),
            surplus: ArrayQueue::new(max_idle.saturating_mul(SURPLUS_ROOM).clamp(1, SURPLUS_MAX)),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.idle.capacity()
    }

    /// Idle connections, the surplus of a burst included.
    pub(crate) fn idle_len(&self) -> usize {
        self.idle.len() + self.surplus.len()
    }

    /// An idle connection that is still open and younger than `idle_timeout` (a surplus one
    /// younger than [`SURPLUS_LINGER`] too), if any. Connections found closed, unusable or
    /// too old are dropped, which closes their sockets.
    pub(crate) fn checkout(&self, now_ms: u64, idle_timeout: Duration) -> Option<Box<UpConn>> {
        let max_age = millis(idle_timeout);
        take(&self.idle, now_ms, max_age)
            .or_else(|| take(&self.surplus, now_ms, max_age.min(millis(SURPLUS_LINGER))))
    }

    /// Returns a connection whose last response was read completely.
    pub(crate) fn checkin(&self, mut conn: Box<UpConn>, now_ms: u64, max_idle: usize) {
        if self.idle.len() < max_idle {
            let _ = self.idle.push(Idle {
                conn,
                since_ms: now_ms,
            });
            self.purge_one(now_ms);
            return;
        }
        if max_idle == 0 {
            return;
        }
        conn.shed_buffers();
        // Full as well: dropped, which closes it.
        let _ = self.surplus.push(Idle {
            conn,
            since_ms: now_ms,
        });
    }

    /// Closes one surplus connection if it has lingered long enough, so the surplus goes
    /// once the idle bound suffices again. Each check-in looks at one, in turn.
    fn purge_one(&self, now_ms: u64) {
        if let Some(oldest) = self.surplus.pop()
            && now_ms.saturating_sub(oldest.since_ms) < millis(SURPLUS_LINGER)
        {
            let _ = self.surplus.push(oldest);
        }
    }
}

/// The first connection in `queue` that is younger than `max_age_ms` and still usable.
fn take(queue: &ArrayQueue<Idle>, now_ms: u64, max_age_ms: u64) -> Option<Box<UpConn>> {
    while let Some(mut idle) = queue.pop() {
        if now_ms.saturating_sub(idle.since_ms) < max_age_ms && idle.conn.usable_when_idle() {
            return Some(idle.conn);
        }
    }
    None
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
