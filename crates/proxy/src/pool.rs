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
//!
//! The connects themselves are paced: at most `max_connecting` are in progress to one
//! instance at once. A request that finds no idle connection past that bound waits, within
//! its connect timeout, for a connection to come back or for a connect to finish. After a
//! stall thousands of requests want a connection at the same moment; opened all at once,
//! their SYNs would overflow the instance's accept queue as above. A request whose connect is
//! under way waits too, and takes a connection that comes back first. Waiting requests stand
//! in line: a connection checked in goes to the first of them, not to the idle queue, where
//! a request arriving later would look first.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use metrics::Counter;
use sluice_health::clock;
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

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
    /// Connects in progress.
    connecting: AtomicUsize,
    /// Requests waiting for a connection, oldest first: a check-in hands its connection to
    /// the first rather than to the idle queue, where a request arriving later would take it
    /// first (and, under a steady stream of new requests, take every one of them).
    waiters: Mutex<VecDeque<oneshot::Sender<Box<UpConn>>>>,
    /// `waiters.len()`, read without the lock; it may count waiters that have left.
    waiting: AtomicUsize,
    /// Wakes one waiting request when a connect ends and frees its slot.
    slot_freed: Notify,
}

/// Where and how to get a connection to one instance.
pub(crate) struct Target<'a> {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<&'a sluice_tls::ClientTls>,
    /// For the wait and the connect together.
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle: usize,
    pub(crate) max_connecting: usize,
    /// Counts new connections, those a request did not end up using included.
    pub(crate) opened: &'a Counter,
}

/// A connection from [`Pool::open`].
pub(crate) struct Obtained {
    pub(crate) conn: Box<UpConn>,
    /// Whether the request had to wait for a connect slot (`max_connecting` were in progress).
    pub(crate) waited: bool,
}

/// A connect under way, movable to a task of its own.
type Connecting = Pin<Box<dyn Future<Output = Result<Box<UpConn>, ProxyError>> + Send>>;

impl Pool {
    pub(crate) fn new(max_idle: usize) -> Self {
        Self {
            // ArrayQueue needs room for at least one; `max_idle = 0` is enforced in `checkin`.
            idle: ArrayQueue::new(max_idle.max(1)),
            surplus: ArrayQueue::new(max_idle.saturating_mul(SURPLUS_ROOM).clamp(1, SURPLUS_MAX)),
            connecting: AtomicUsize::new(0),
            waiters: Mutex::new(VecDeque::new()),
            waiting: AtomicUsize::new(0),
            slot_freed: Notify::new(),
        }
    }

    /// For a request that found no idle connection: a new one, or one that comes back to the
    /// pool first. Past `max_connecting` connects in progress, it first waits for a connect
    /// slot or a connection coming back. All within `connect_timeout`.
    pub(crate) async fn open(self: &Arc<Self>, to: &Target<'_>) -> Result<Obtained, ProxyError> {
        let deadline = Instant::now() + to.connect_timeout;
        let (slot, waited) = match self.reserve_connect(to.max_connecting) {
            Some(slot) => (slot, false),
            None => match self.wait(to, deadline).await? {
                Freed::Conn(conn) => return Ok(Obtained { conn, waited: true }),
                Freed::Slot(slot) => (slot, true),
            },
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let tls = to.tls.cloned();
        let addr = to.addr;
        let connecting: Connecting =
            Box::pin(async move { connect(addr, left, tls.as_ref()).await });
        let conn = self.race(connecting, slot, to).await?;
        Ok(Obtained { conn, waited })
    }

    /// The connect's connection, or one that comes back to the pool before the connect is
    /// done: a connect whose SYN an overflowing accept queue dropped is sent again only a
    /// second later, while connections come back by the millisecond. The connect that lost
    /// finishes on its own and leaves its connection in the pool.
    async fn race(
        self: &Arc<Self>,
        mut connecting: Connecting,
        slot: ConnectSlot,
        to: &Target<'_>,
    ) -> Result<Box<UpConn>, ProxyError> {
        let mut waiter = self.enlist(to.max_idle);
        if let Some(conn) = self.checkout(clock::now_ms(), to.idle_timeout) {
            self.finish_in_background(connecting, slot, to);
            return Ok(conn);
        }
        tokio::select! {
            biased;
            done = &mut connecting => {
                drop(slot);
                if done.is_ok() {
                    to.opened.increment(1);
                }
                done
            }
            Ok(conn) = &mut waiter.handed => {
                self.finish_in_background(connecting, slot, to);
                Ok(conn)
            }
        }
    }

    fn finish_in_background(&self, connecting: Connecting, slot: ConnectSlot, to: &Target<'_>) {
        let (max_idle, opened) = (to.max_idle, to.opened.clone());
        tokio::spawn(async move {
            match connecting.await {
                Ok(conn) => {
                    opened.increment(1);
                    slot.pool.checkin(conn, clock::now_ms(), max_idle);
                }
                // Nobody waits for it: the request it was for is served.
                Err(e) => tracing::debug!(error = %e, "a connect no request waits for failed"),
            }
            drop(slot);
        });
    }

    /// Waits until a connection is handed over or a connect slot frees, whichever comes first.
    async fn wait(
        self: &Arc<Self>,
        to: &Target<'_>,
        deadline: Instant,
    ) -> Result<Freed, ProxyError> {
        let mut waiter = self.enlist(to.max_idle);
        loop {
            let slot_freed = self.slot_freed.notified();
            tokio::pin!(slot_freed);
            // Registered before looking, so a slot freed between the look and the sleep wakes it.
            slot_freed.as_mut().enable();
            if let Some(conn) = self.checkout(clock::now_ms(), to.idle_timeout) {
                return Ok(Freed::Conn(conn));
            }
            if let Some(slot) = self.reserve_connect(to.max_connecting) {
                return Ok(Freed::Slot(slot));
            }
            tokio::select! {
                handed = &mut waiter.handed => match handed {
                    Ok(conn) => return Ok(Freed::Conn(conn)),
                    // Its place in line was dropped unused (the pool is going): line up again.
                    Err(_) => waiter = self.enlist(to.max_idle),
                },
                () = slot_freed => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(ProxyError::new(
                        ProxyErrorKind::ConnectTimeout,
                        format!(
                            "connect to {}: no connection free within {}ms ({} connects in progress)",
                            to.addr,
                            to.connect_timeout.as_millis(),
                            self.connecting.load(Ordering::Relaxed)
                        ),
                    ));
                }
            }
        }
    }

    /// Puts a request at the end of the line for connections checked in. Places left by
    /// requests that stopped waiting are cleared from the front as the line moves.
    fn enlist(&self, max_idle: usize) -> Waiter<'_> {
        let (tx, handed) = oneshot::channel();
        {
            let mut line = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            while line.front().is_some_and(oneshot::Sender::is_closed) {
                line.pop_front();
                self.waiting.fetch_sub(1, Ordering::Relaxed);
            }
            line.push_back(tx);
            self.waiting.fetch_add(1, Ordering::Relaxed);
        }
        // Pairs with the fence in `checkin`: either it sees this waiter, or the look into the
        // idle queue that follows sees its connection.
        fence(Ordering::SeqCst);
        Waiter {
            pool: self,
            handed,
            max_idle,
        }
    }

    /// Gives `conn` to the longest-waiting request still waiting; back if there is none.
    fn hand_over(&self, mut conn: Box<UpConn>) -> Option<Box<UpConn>> {
        let mut line = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(waiter) = line.pop_front() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            match waiter.send(conn) {
                Ok(()) => return None,
                Err(back) => conn = back,
            }
        }
        Some(conn)
    }

    fn reserve_connect(self: &Arc<Self>, max_connecting: usize) -> Option<ConnectSlot> {
        self.connecting
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max_connecting).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectSlot {
                pool: Arc::clone(self),
            })
    }

    /// Wakes one waiting request, if any, to take the connect slot just freed. The fence
    /// pairs with the one in [`Pool::enlist`].
    fn wake_one(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.slot_freed.notify_one();
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

    /// Returns a connection whose last response was read completely: to the request that
    /// has waited longest for one, if any, else to the idle queue. With `max_idle = 0` no
    /// connection is used twice: it is dropped, which closes it.
    pub(crate) fn checkin(&self, conn: Box<UpConn>, now_ms: u64, max_idle: usize) {
        if max_idle == 0 {
            return;
        }
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            if let Some(conn) = self.hand_over(conn) {
                self.keep(conn, now_ms, max_idle);
            }
            return;
        }
        self.keep(conn, now_ms, max_idle);
    }

    fn keep(&self, mut conn: Box<UpConn>, now_ms: u64, max_idle: usize) {
        if self.idle.len() < max_idle {
            let _ = self.idle.push(Idle {
                conn,
                since_ms: now_ms,
            });
            self.purge_one(now_ms);
        } else {
            conn.shed_buffers();
            // Full as well: dropped, which closes it.
            let _ = self.surplus.push(Idle {
                conn,
                since_ms: now_ms,
            });
        }
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

/// What a waiting request got.
enum Freed {
    Conn(Box<UpConn>),
    Slot(ConnectSlot),
}

/// A connect in progress; ending it (however: done, failed, or the request gone) frees the
/// slot for a waiting request.
struct ConnectSlot {
    pool: Arc<Pool>,
}

impl Drop for ConnectSlot {
    fn drop(&mut self) {
        self.pool.connecting.fetch_sub(1, Ordering::AcqRel);
        self.pool.wake_one();
    }
}

/// A request's place in the line for connections checked in.
struct Waiter<'p> {
    pool: &'p Pool,
    handed: oneshot::Receiver<Box<UpConn>>,
    max_idle: usize,
}

impl Drop for Waiter<'_> {
    /// A connection handed over as the request stopped waiting goes back to the pool.
    fn drop(&mut self) {
        self.handed.close();
        if let Ok(conn) = self.handed.try_recv() {
            self.pool.checkin(conn, clock::now_ms(), self.max_idle);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    const IDLE: Duration = Duration::from_secs(30);

    /// A connection to a real loopback listener, as the pool holds them.
    async fn connection(to: SocketAddr) -> Box<UpConn> {
        UpConn::new(UpIo::Plain(TcpStream::connect(to).await.unwrap()))
    }

    /// Under a steady stream of new requests, a connection put back in the idle queue would go
    /// to whichever request looked first, and a request that waits could wait until its
    /// timeout. So a waiting request is handed the connection directly.
    #[tokio::test]
    async fn a_connection_checked_in_goes_to_the_waiting_request_not_to_a_later_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Arc::new(Pool::new(4));
        // A connect in progress holds the only slot.
        let busy = pool.reserve_connect(1).unwrap();
        let waiting = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move {
                let opened = Counter::noop();
                let to = Target {
                    addr,
                    tls: None,
                    connect_timeout: Duration::from_secs(5),
                    idle_timeout: IDLE,
                    max_idle: 4,
                    max_connecting: 1,
                    opened: &opened,
                };
                pool.open(&to).await.map(|got| got.waited)
            }
        });
        while pool.waiting.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        pool.checkin(connection(addr).await, clock::now_ms(), 4);
        assert!(
            pool.checkout(clock::now_ms(), IDLE).is_none(),
            "a request arriving later took the connection the waiting one was due"
        );
        assert!(waiting.await.unwrap().unwrap(), "it waited, and got it");
        drop(busy);
    }

    /// A request that stops waiting as a connection is handed to it leaves that connection in
    /// the pool.
    #[tokio::test]
    async fn a_connection_handed_to_a_request_that_left_stays_in_the_pool() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Arc::new(Pool::new(4));
        let waiter = pool.enlist(4);
        pool.checkin(connection(addr).await, clock::now_ms(), 4);
        assert_eq!(pool.idle_len(), 0, "handed over, not queued");
        drop(waiter);
        assert_eq!(pool.idle_len(), 1);
        assert!(pool.checkout(clock::now_ms(), IDLE).is_some());
    }

    /// `max_idle_per_instance = 0` means no connection serves two requests: not through the
    /// line either.
    #[tokio::test]
    async fn with_no_idle_connections_allowed_none_is_handed_over() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Arc::new(Pool::new(0));
        let mut waiter = pool.enlist(0);
        pool.checkin(
            connection(listener.local_addr().unwrap()).await,
            clock::now_ms(),
            0,
        );
        assert!(waiter.handed.try_recv().is_err());
        assert_eq!(pool.idle_len(), 0);
    }
}
