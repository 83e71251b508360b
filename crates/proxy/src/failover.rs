//! Waiting for the primary of a `serve = "primary"` service, and releasing the requests that
//! waited without overwhelming the member that takes over.
//!
//! A request waits when it finds no primary, or when its attempt failed on the primary (the
//! retry rules in `retry.rs` say which primary it may go to next). It stops waiting when:
//! - a primary it may use is known: the probes promoted another member, or (after a request
//!   that never reached the primary) a probe sent after the failure confirmed the same one;
//! - or nobody is primary *after a fresh probe round*, once a promotion is no longer due:
//!   every member has been probed since the primary was lost (the probes are kicked at once,
//!   and every 200 ms while requests wait), so a member that was promoted is seen; and one
//!   probe `interval` has passed since the lost primary was last seen alive (the loss came
//!   after that): a grace for a backup that is promoted a moment after the primary stops. So
//!   a service whose members stay backups answers `503 no_primary` within one probe round
//!   (`interval` + `timeout`) of the loss, and at once when the loss is older (members backup
//!   for a while);
//! - or its time runs out (the total deadline, or the bounds below).
//!
//! **Release.** A failover may leave hundreds of requests waiting. Released at once, each
//! would open its own connection to the new primary: its accept queue overflows, the kernel
//! drops their SYNs, and every dropped SYN costs a retransmission second. Requests that
//! waited therefore take one of `RELEASE_CONCURRENCY` (upstream.rs) permits and hold it until
//! the new primary answered their head (HTTP) or accepted their connection (TCP), or for
//! [`RELEASE_HOLD`] at most: the first ones open connections, and the rest mostly reuse the
//! connections those bring back; a new primary that is slow to answer still takes a few
//! hundred new connections a second, not all at once. The queue for permits is bounded by the
//! request's own deadline. Requests that arrive after the failover do not queue.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use sluice_health::clock;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::retry::NextPrimary;
use crate::upstream::{Instance, Service};

/// How much longer than a check's timeout a request waits for a probe it asked for.
const PROBE_MARGIN: Duration = Duration::from_millis(250);
/// The longest a released request holds its permit: any server accepts a connection within
/// this, so the release keeps going when the new primary is slow to answer.
pub(crate) const RELEASE_HOLD: Duration = Duration::from_millis(100);
/// While requests wait, the service's probes are kicked at least this often.
const PROBE_EVERY: Duration = Duration::from_millis(200);

/// An attempt that failed on the primary.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailedOn {
    /// The primary's generation when the attempt started.
    pub(crate) generation: u64,
    /// Clock reading (ms) of the failure: a probe sent after it speaks for the primary now.
    pub(crate) at_ms: u64,
    /// Which primary the request may go to.
    pub(crate) next: NextPrimary,
}

/// How a wait for the primary ended.
#[derive(Debug)]
pub(crate) enum Awaited {
    /// Send to the primary. `Some` when the request was held back by a failover: the permit is
    /// kept until the primary answered (see the module docs).
    Primary(Option<OwnedSemaphorePermit>),
    /// Nobody is primary after a fresh probe round: `503 no_primary`.
    NoPrimary,
    /// The member that failed the request is still the primary, and the request may only go
    /// to a new one: no failover after all.
    Unchanged,
}

/// What the service's state says about a waiting request, if it need not wait longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Primary,
    NoPrimary,
    Unchanged,
}

impl Service {
    /// Waits (at most `limit`) for a primary this request may use; see the module docs.
    pub(crate) async fn await_primary(&self, failed: Option<FailedOn>, limit: Duration) -> Awaited {
        let Some(check) = self.config.health.as_ref().filter(|_| self.fails_over()) else {
            return Awaited::NoPrimary;
        };
        let started = Instant::now();
        let give_up = started + limit;
        let confirm_by = started + check.timeout + PROBE_MARGIN;
        let (grace, round) = (check.interval, check.interval + check.timeout);
        let mut verdicts = self.shared.verdicts.subscribe();
        let mut waited = false;
        loop {
            verdicts.borrow_and_update();
            let now = Instant::now();
            let settled = self.settled(failed, (grace, round)).or(if now >= give_up {
                Some(self.at_time_out())
            } else if failed.is_some() && now >= confirm_by && self.primary().is_some() {
                Some(Settled::Unchanged)
            } else {
                None
            });
            match settled {
                Some(Settled::Primary) if waited => return self.released(give_up).await,
                Some(Settled::Primary) => return Awaited::Primary(None),
                Some(Settled::NoPrimary) => return Awaited::NoPrimary,
                Some(Settled::Unchanged) => return Awaited::Unchanged,
                None => {}
            }
            waited = true;
            self.kick(clock::now_ms());
            // Wake at the next kick, or when a promotion stops being due.
            let due = Some(self.until_promotion_due(grace)).filter(|d| !d.is_zero());
            let step = (give_up - now)
                .min(PROBE_EVERY)
                .min(due.unwrap_or(PROBE_EVERY));
            let _ = tokio::time::timeout(step, verdicts.changed()).await;
        }
    }

    /// Whether the wait is over, from the primary and the members' latest probes (`grace`:
    /// the check's interval, `round`: interval + timeout).
    fn settled(
        &self,
        failed: Option<FailedOn>,
        (grace, round): (Duration, Duration),
    ) -> Option<Settled> {
        let generation = *self.shared.primary_generation.borrow();
        match (self.primary(), failed) {
            (Some(_), None) => Some(Settled::Primary),
            (Some(_), Some(f)) if generation != f.generation => Some(Settled::Primary),
            // A probe sent after the failure speaks for the primary only while its verdict
            // still says primary: the service's choice of primary follows a verdict a moment
            // later, and in between a stopped primary would look confirmed.
            (Some(primary), Some(f))
                if primary.health.probe_sent_ms() > f.at_ms && primary.health.is_primary() =>
            {
                Some(match f.next {
                    NextPrimary::Confirmed => Settled::Primary,
                    NextPrimary::New => Settled::Unchanged,
                })
            }
            (Some(_), Some(_)) => None,
            (None, _) => {
                let lost_at = self.shared.no_primary_since_ms.load(Relaxed);
                let since_loss = Duration::from_millis(clock::now_ms().saturating_sub(lost_at));
                let overdue = since_loss >= round + PROBE_MARGIN;
                let nobody =
                    self.until_promotion_due(grace).is_zero() && self.probed_since(lost_at);
                (overdue || nobody).then_some(Settled::NoPrimary)
            }
        }
    }

    /// Time left until `grace` has passed since the last primary was last seen alive (zero
    /// once it has).
    fn until_promotion_due(&self, grace: Duration) -> Duration {
        let seen = self.shared.primary_seen_ms.load(Relaxed);
        let due = seen.saturating_add(grace.as_millis() as u64);
        Duration::from_millis(due.saturating_sub(clock::now_ms()))
    }

    /// Whether every member's latest verdict is known to describe it after `since_ms`: its
    /// probe was sent after it, or the probe failed (no role) and was judged after it — a
    /// member whose probe fails cannot have become a usable primary.
    fn probed_since(&self, since_ms: u64) -> bool {
        self.instances().iter().all(|i| {
            let h = i.health();
            h.probe_sent_ms() >= since_ms || (h.role().is_none() && h.verdict_at_ms() >= since_ms)
        })
    }

    fn at_time_out(&self) -> Settled {
        if self.primary().is_some() {
            Settled::Unchanged
        } else {
            Settled::NoPrimary
        }
    }

    /// A permit to go to the primary after a failover (bounded by the request's deadline).
    async fn released(&self, give_up: Instant) -> Awaited {
        let permit = tokio::time::timeout_at(
            give_up,
            std::sync::Arc::clone(&self.shared.release).acquire_owned(),
        )
        .await;
        match permit {
            Ok(Ok(permit)) => Awaited::Primary(Some(permit)),
            _ => Awaited::Primary(None),
        }
    }

    /// Runs `work` — a step of an attempt on `instance`, the service's primary — until it ends
    /// (`Some`) or the instance stops being the primary (`None`: demoted, see `on_demotion`).
    /// Work still waiting a check's timeout after `since` asks the probes to look at once: a
    /// primary that hangs is found one probe timeout after its first stuck request, not only
    /// at its next scheduled probe. Other services just run `work`.
    /// `demotion` is the instance's session token ([`Instance::session_token`]); callers
    /// need not make one for services that do not fail over.
    pub(crate) fn unless_demoted<'a, F: Future>(
        &'a self,
        instance: &Instance,
        demotion: Option<&'a CancellationToken>,
        since: std::time::Instant,
        work: F,
    ) -> UnlessDemoted<'a, F> {
        let check = self.config.health.as_ref().filter(|_| self.fails_over());
        let (Some(check), Some(demotion)) = (check, demotion) else {
            return UnlessDemoted::new(work, Demotion::NotWatched);
        };
        // Demoted between the pick and the token's creation: the token would never fire.
        if !self.primary().is_some_and(|p| std::ptr::eq(&**p, instance)) {
            return UnlessDemoted::new(work, Demotion::Already);
        }
        let timeout = check.timeout;
        let watched = async move {
            let slow = async {
                tokio::time::sleep_until(Instant::from_std(since + timeout)).await;
                self.kick(clock::now_ms());
                std::future::pending::<()>().await;
            };
            tokio::select! {
                () = demotion.cancelled() => {}
                () = slow => {}
            }
        };
        UnlessDemoted::new(work, Demotion::Watched(Box::pin(watched)))
    }
}

/// Whether the instance's demotion ends [`UnlessDemoted`]'s work.
enum Demotion<'a> {
    /// Not a service that fails over.
    NotWatched,
    /// No longer the primary when the work was to start.
    Already,
    /// Ready once the instance is demoted. Boxed: only failing-over services watch.
    Watched(Pin<Box<dyn Future<Output = ()> + Send + 'a>>),
}

pin_project_lite::pin_project! {
    /// The future of [`Service::unless_demoted`]. Written out rather than as an `async fn`,
    /// which kept `work` twice in its state (and so every request's future twice as big).
    pub(crate) struct UnlessDemoted<'a, F> {
        #[pin]
        work: F,
        demotion: Demotion<'a>,
    }
}

impl<'a, F> UnlessDemoted<'a, F> {
    fn new(work: F, demotion: Demotion<'a>) -> Self {
        Self { work, demotion }
    }
}

impl<F: Future> Future for UnlessDemoted<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // A demotion wins over an answer that came at the same moment: the instance is no
        // longer the one to answer.
        let demoted = match this.demotion {
            Demotion::NotWatched => false,
            Demotion::Already => true,
            Demotion::Watched(demotion) => demotion.as_mut().poll(cx).is_ready(),
        };
        if demoted {
            return Poll::Ready(None);
        }
        this.work.poll(cx).map(Some)
    }
}

/// Runs `work` — the attempt of a request released by a failover — holding its permit (if
/// any) until `work` ends or for [`RELEASE_HOLD`], whichever comes first.
pub(crate) fn holding<F: Future>(permit: Option<OwnedSemaphorePermit>, work: F) -> Holding<F> {
    Holding {
        work,
        permit,
        hold: None,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`holding`]. Written out rather than as an `async fn`, which kept `work`
    /// three times over in its state (6.5 KB for an HTTP attempt, copied with every
    /// request's future).
    pub(crate) struct Holding<F> {
        #[pin]
        work: F,
        permit: Option<OwnedSemaphorePermit>,
        hold: Option<Pin<Box<Sleep>>>,
    }
}

impl<F: Future> Future for Holding<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.work.poll(cx) {
            return Poll::Ready(out);
        }
        if this.permit.is_some() {
            let hold = this
                .hold
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(RELEASE_HOLD)));
            if hold.as_mut().poll(cx).is_ready() {
                *this.permit = None;
                *this.hold = None;
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_health::{ProbeKind, ProbeResult, Role, Verdict};

    use super::*;

    /// A mirror pair as `examples/simplemirror` declares it (interval 1 s, timeout 500 ms).
    fn mirror_pair() -> Service {
        let config = sluice_config::parse_str(
            "t.toml",
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n\
             [[route]]\npath = \"/\"\nservice = \"ap1\"\n\
             [[policy]]\nname = \"mirror-primary\"\nworld = \"health\"\nfile = \"builtin:mirror-primary\"\n\
             [[service]]\nname = \"ap1\"\ninstances = [\"127.0.0.11:1\", \"127.0.0.12:1\"]\n\
             serve = \"primary\"\nhealth = { kind = \"http\", path = \"/s\", policy = \"mirror-primary\", \
             interval = \"1s\", timeout = \"500ms\" }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Service::new(config.services[0].clone(), Arc::default(), |_| None)
    }

    fn verdict_on(service: &Service, member: usize, verdict: &Verdict, at_ms: u64) {
        let probe = ProbeResult {
            kind: ProbeKind::Http,
            status: Some(200),
            headers: Vec::new(),
            body_prefix: Vec::new(),
            latency_us: 0,
            error: None,
        };
        service.instances()[member]
            .health
            .record(verdict, &probe, at_ms, 1, 1);
    }

    #[test]
    fn a_verdict_that_ends_the_primary_role_does_not_confirm_the_failed_primary() {
        let service = mirror_pair();
        let primary = Verdict::Up {
            role: Role::Primary,
            weight: None,
        };
        let rounds = (Duration::from_secs(1), Duration::from_millis(1500));
        verdict_on(&service, 0, &primary, 1_000);
        service.recompute_primary(1_000);
        let failed = FailedOn {
            generation: service.primary_generation(),
            at_ms: 1_500,
            next: NextPrimary::New,
        };
        assert_eq!(
            service.settled(Some(failed), rounds),
            None,
            "no probe since"
        );

        // A probe sent after the failure finds the primary stopped; the service's choice of
        // primary follows a moment later. In between, the request must keep waiting.
        let down = Verdict::Down {
            reason: "connection refused".into(),
        };
        verdict_on(&service, 0, &down, 1_600);
        assert!(service.primary().is_some(), "not recomputed yet");
        assert_eq!(service.settled(Some(failed), rounds), None);

        // A probe after the failure that still says primary does confirm it: no failover.
        verdict_on(&service, 0, &primary, 1_700);
        assert_eq!(
            service.settled(Some(failed), rounds),
            Some(Settled::Unchanged)
        );
    }
}
