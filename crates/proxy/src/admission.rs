//! A service's `[service.concurrency]`: at most `max_in_flight` of its requests at once, a
//! bounded queue in front, and `503 overloaded` at once for what does not fit.
//!
//! **Why.** Without a bound, a service that slows down collects every request sent to it:
//! each waits for its timeouts, the instances fall further behind, and the requests that were
//! already there miss their deadlines too. With one, the excess is refused in microseconds
//! (clients and upstream balancers can go elsewhere) while the admitted requests keep the
//! instances' full speed.
//!
//! **How.** A place is a permit of a Tokio semaphore, taken before the first attempt and held
//! by the request's `Exchange` (`exchange.rs`) until its response ends (or, for
//! a protocol switch, until the `101`), across retries. A request finding no place joins the
//! queue when fewer than `max_queued` wait, and waits at most `queue_timeout` and never past
//! its own deadline; places go to waiters in arrival order (the semaphore is fair), so a
//! newcomer never takes one from a waiter. Taking a free place is one atomic operation; the
//! queue costs nothing until it is used.
//!
//! **Reload.** An unchanged limit keeps its gate, so requests in flight across a reload are
//! still counted; a changed limit starts a new gate (requests admitted under the old one
//! finish outside the new count).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use metrics::{Counter, Gauge, counter, gauge};
use sluice_config::ConcurrencyLimit;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::{ProxyError, ProxyErrorKind};
use crate::metrics::{SERVICE_OVERLOADED_TOTAL, SERVICE_QUEUED};

/// One service's concurrency gate.
#[derive(Debug)]
pub(crate) struct Admission {
    limit: ConcurrencyLimit,
    places: Arc<Semaphore>,
    queued: AtomicUsize,
    metrics: GateMetrics,
}

#[derive(Debug)]
struct GateMetrics {
    queued: Gauge,
    queue_full: Counter,
    queue_timeout: Counter,
}

/// A request's place among the service's requests in flight; given back when dropped.
#[derive(Debug)]
pub(crate) struct Place {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    /// A gate for `limit`, its metrics labelled with `service`.
    pub(crate) fn new(limit: ConcurrencyLimit, service: &str) -> Self {
        let refused = |reason: &'static str| counter!(SERVICE_OVERLOADED_TOTAL, "service" => service.to_owned(), "reason" => reason);
        Self {
            places: Arc::new(Semaphore::new(limit.max_in_flight)),
            queued: AtomicUsize::new(0),
            metrics: GateMetrics {
                queued: gauge!(SERVICE_QUEUED, "service" => service.to_owned()),
                queue_full: refused("queue_full"),
                queue_timeout: refused("queue_timeout"),
            },
            limit,
        }
    }

    /// The limit this gate enforces.
    pub(crate) fn limit(&self) -> &ConcurrencyLimit {
        &self.limit
    }

    /// A place for one request, waiting in the queue if need be until `deadline` at most; the
    /// `503 overloaded` to answer otherwise.
    pub(crate) async fn admit(&self, deadline: Instant) -> Result<Place, ProxyError> {
        if let Ok(permit) = Arc::clone(&self.places).try_acquire_owned() {
            return Ok(Place { _permit: permit });
        }
        if self.queued.fetch_add(1, Relaxed) >= self.limit.max_queued {
            self.queued.fetch_sub(1, Relaxed);
            self.metrics.queue_full.increment(1);
            return Err(self.refusal("and its queue is full"));
        }
        let waiting = Waiting::join(self);
        let until = deadline.min(Instant::now() + self.limit.queue_timeout);
        let place = tokio::time::timeout_at(until, Arc::clone(&self.places).acquire_owned()).await;
        drop(waiting);
        match place {
            Ok(Ok(permit)) => Ok(Place { _permit: permit }),
            // The semaphore is never closed; a timeout is the only way here.
            _ => {
                self.metrics.queue_timeout.increment(1);
                Err(self.refusal("and no place came free while the request waited"))
            }
        }
    }

    fn refusal(&self, why: &str) -> ProxyError {
        ProxyError::new(
            ProxyErrorKind::Overloaded,
            format!(
                "the service has its {} requests in flight {why} (max_queued {}, queue_timeout {} ms)",
                self.limit.max_in_flight,
                self.limit.max_queued,
                self.limit.queue_timeout.as_millis()
            ),
        )
    }
}

/// A request in the queue: counted until it leaves, however it leaves (a place, a timeout, or
/// its client going away and the request being dropped).
struct Waiting<'a>(&'a Admission);

impl<'a> Waiting<'a> {
    /// Counts a request that already took its spot in `queued`.
    fn join(gate: &'a Admission) -> Self {
        gate.metrics.queued.increment(1.0);
        Self(gate)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Relaxed);
        self.0.metrics.queued.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn gate(max_in_flight: usize, max_queued: usize, queue_ms: u64) -> Arc<Admission> {
        Arc::new(Admission::new(
            ConcurrencyLimit {
                max_in_flight,
                max_queued,
                queue_timeout: Duration::from_millis(queue_ms),
            },
            "s",
        ))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn places_then_a_bounded_queue_then_refusals() {
        let g = gate(2, 1, 5_000);
        let a = g.admit(far()).await.expect("first place");
        let _b = g.admit(far()).await.expect("second place");
        let waiter = {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.admit(far()).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(g.queued.load(Relaxed), 1);
        let refused = g.admit(far()).await.expect_err("the queue is full");
        assert_eq!(refused.kind, ProxyErrorKind::Overloaded);
        assert!(
            refused.detail.contains("its queue is full"),
            "{}",
            refused.detail
        );
        drop(a);
        waiter
            .await
            .unwrap()
            .expect("the waiter takes the freed place");
        assert_eq!(g.queued.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn a_queued_request_waits_no_longer_than_the_queue_timeout_or_its_deadline() {
        let g = gate(1, 10, 100);
        let _held = g.admit(far()).await.unwrap();
        let started = std::time::Instant::now();
        let err = g.admit(far()).await.expect_err("nothing came free");
        let waited = started.elapsed();
        assert!(err.detail.contains("no place came free"), "{}", err.detail);
        assert!(
            (Duration::from_millis(90)..Duration::from_secs(2)).contains(&waited),
            "{waited:?}"
        );
        let started = std::time::Instant::now();
        let soon = Instant::now() + Duration::from_millis(10);
        g.admit(soon).await.expect_err("the deadline comes first");
        assert!(
            started.elapsed() < Duration::from_millis(90),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(g.queued.load(Relaxed), 0, "leavers are uncounted");
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue() {
        let g = gate(1, 1, 5_000);
        let _held = g.admit(far()).await.unwrap();
        let waiter = {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.admit(far()).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(g.queued.load(Relaxed), 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(g.queued.load(Relaxed), 0);
    }
}
