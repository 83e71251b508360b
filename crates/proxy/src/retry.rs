//! What to do after an attempt failed: a pure function of the attempt's outcome, the request
//! and the attempts so far, so the rules can be read (and tested) in one place. `forward.rs`
//! (HTTP) and `tcp.rs` (connections) carry the decisions out.
//!
//! The rules:
//! - Nothing is retried past the request's total deadline.
//! - A request that never reached the instance (connect refused or timed out, a pooled
//!   connection found closed before the request was written) may go elsewhere whatever its
//!   method: it adds no load anywhere, so it does not draw on the retry budget; it does count
//!   as an attempt.
//! - A request the instance received and failed (reset, malformed answer, no response head in
//!   time, a status from `retries.on_status`) is retried only when it is idempotent and its
//!   body can be sent again; it counts as an attempt and draws on the service's retry budget,
//!   which bounds the extra load retries put on instances that are failing.
//! - With `serve = "primary"` the only instance to retry on is the primary, so a retry waits
//!   for the service's primary: a *new* one after the instance failed the request, or the same
//!   one once its probes confirm it, when the request never reached it (a connect that lost
//!   its SYN in an accept queue that a burst filled). Such a retry only follows a role change
//!   the probes saw — a failover, one per request at most — so it does not draw on the budget
//!   (a primary that stops resets everything in flight at once: the budget would fail most
//!   of them).
//! - A request waiting on a primary that Sluice demoted (its probes stopped confirming the
//!   role) is moved to the next primary when it may be sent again. Sluice's own failover is
//!   not an instance failure: it neither counts as an attempt nor draws on the budget.

use std::time::Duration;

/// How one attempt ended, when it did not produce the response to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The request never reached the instance.
    NotSent,
    /// The instance received the request and failed it (reset, bad answer, timeout).
    Failed,
    /// The instance answered with a status listed in `retries.on_status`.
    RetryableStatus,
    /// The instance lost the primary role while the request waited for its answer.
    Demoted,
}

/// What a retry costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cost {
    /// Counts against `retries.attempts`.
    pub(crate) attempt: bool,
    /// Draws on the service's retry budget.
    pub(crate) budget: bool,
}

/// Which primary a retry of a `serve = "primary"` service may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NextPrimary {
    /// A different member than the one that failed the request.
    New,
    /// Any member the probes confirm as primary after the failure, the same one included.
    Confirmed,
}

/// The decision after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Try an instance this request has not tried yet, now.
    Retry(Cost),
    /// Wait (bounded) for the service's primary, then try it.
    AwaitPrimary(NextPrimary, Cost),
    /// Stop: the last error (or the instance's own answer) goes to the client.
    Stop,
}

/// The facts about the request that decide whether it may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    /// Its method is idempotent (RFC 9110 §9.2.2).
    pub(crate) idempotent: bool,
    /// Its body is empty or was buffered, so it can be sent again.
    pub(crate) replayable: bool,
}

impl Request {
    fn may_resend(self) -> bool {
        self.idempotent && self.replayable
    }
}

/// Where the request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Attempts counted so far beyond the first.
    pub(crate) retries: u32,
    /// Whether the service has an instance this request has not tried.
    pub(crate) untried_left: bool,
    /// Time left before the request's total deadline.
    pub(crate) remaining: Duration,
}

/// A service's retry rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// `retries.attempts`: attempts allowed after the first.
    pub(crate) attempts: u32,
    /// `serve = "primary"` with a health check: retries wait for the primary.
    pub(crate) fails_over: bool,
}

impl RetryPolicy {
    /// The decision after an attempt ended with `outcome`.
    pub(crate) fn decide(&self, outcome: Outcome, request: Request, at: Progress) -> Decision {
        if at.remaining.is_zero() {
            return Decision::Stop;
        }
        let cost = match outcome {
            Outcome::NotSent => Cost {
                attempt: true,
                budget: false,
            },
            Outcome::Failed | Outcome::RetryableStatus if request.may_resend() => Cost {
                attempt: true,
                budget: true,
            },
            Outcome::Demoted if request.may_resend() && self.fails_over => Cost {
                attempt: false,
                budget: false,
            },
            Outcome::Failed | Outcome::RetryableStatus | Outcome::Demoted => {
                return Decision::Stop;
            }
        };
        if cost.attempt && at.retries >= self.attempts {
            return Decision::Stop;
        }
        if self.fails_over {
            let next = match outcome {
                Outcome::NotSent => NextPrimary::Confirmed,
                _ => NextPrimary::New,
            };
            // A request the primary failed is sent again only to a member the probes promote
            // after it (or to the same one, confirmed, when it never arrived): every such retry
            // is part of a failover, at most one per request and role change, never a storm
            // against a failing instance. The budget is not for these.
            let cost = Cost {
                budget: false,
                ..cost
            };
            return Decision::AwaitPrimary(next, cost);
        }
        if at.untried_left {
            Decision::Retry(cost)
        } else {
            Decision::Stop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Instant, advance};

    const GET: Request = Request {
        idempotent: true,
        replayable: true,
    };
    const POST: Request = Request {
        idempotent: false,
        replayable: true,
    };
    const STREAMED_PUT: Request = Request {
        idempotent: true,
        replayable: false,
    };
    const ANY: RetryPolicy = RetryPolicy {
        attempts: 2,
        fails_over: false,
    };
    const PRIMARY: RetryPolicy = RetryPolicy {
        attempts: 2,
        fails_over: true,
    };
    const SENT: Cost = Cost {
        attempt: true,
        budget: true,
    };
    const UNSENT: Cost = Cost {
        attempt: true,
        budget: false,
    };
    const FREE: Cost = Cost {
        attempt: false,
        budget: false,
    };

    fn fresh() -> Progress {
        Progress {
            retries: 0,
            untried_left: true,
            remaining: Duration::from_secs(30),
        }
    }

    #[test]
    fn a_request_that_never_arrived_goes_elsewhere_whatever_its_method_and_free_of_budget() {
        for request in [GET, POST, STREAMED_PUT] {
            assert_eq!(
                ANY.decide(Outcome::NotSent, request, fresh()),
                Decision::Retry(UNSENT)
            );
        }
    }

    #[test]
    fn a_request_the_instance_failed_is_retried_only_when_it_can_be_sent_again() {
        for outcome in [Outcome::Failed, Outcome::RetryableStatus] {
            assert_eq!(ANY.decide(outcome, GET, fresh()), Decision::Retry(SENT));
            assert_eq!(ANY.decide(outcome, POST, fresh()), Decision::Stop);
            assert_eq!(ANY.decide(outcome, STREAMED_PUT, fresh()), Decision::Stop);
        }
    }

    #[test]
    fn attempts_and_instances_run_out() {
        let spent = Progress {
            retries: 2,
            ..fresh()
        };
        assert_eq!(ANY.decide(Outcome::NotSent, GET, spent), Decision::Stop);
        let all_tried = Progress {
            untried_left: false,
            ..fresh()
        };
        assert_eq!(ANY.decide(Outcome::Failed, GET, all_tried), Decision::Stop);
        let off = RetryPolicy {
            attempts: 0,
            fails_over: false,
        };
        assert_eq!(off.decide(Outcome::NotSent, GET, fresh()), Decision::Stop);
    }

    #[test]
    fn a_primary_service_waits_for_a_new_primary_after_a_failure_and_a_confirmed_one_after_a_lost_connect()
     {
        let failover = Cost {
            attempt: true,
            budget: false,
        };
        assert_eq!(
            PRIMARY.decide(Outcome::Failed, GET, fresh()),
            Decision::AwaitPrimary(NextPrimary::New, failover)
        );
        assert_eq!(
            PRIMARY.decide(Outcome::Failed, POST, fresh()),
            Decision::Stop,
            "sent and not idempotent: never twice"
        );
        assert_eq!(
            PRIMARY.decide(Outcome::NotSent, POST, fresh()),
            Decision::AwaitPrimary(NextPrimary::Confirmed, UNSENT)
        );
        // The only other member is untried, but only the primary may take the request.
        let all_tried = Progress {
            untried_left: false,
            ..fresh()
        };
        assert_eq!(
            PRIMARY.decide(Outcome::NotSent, GET, all_tried),
            Decision::AwaitPrimary(NextPrimary::Confirmed, UNSENT)
        );
    }

    #[test]
    fn sluices_own_failover_costs_neither_an_attempt_nor_budget() {
        let spent = Progress {
            retries: 2,
            ..fresh()
        };
        assert_eq!(
            PRIMARY.decide(Outcome::Demoted, GET, spent),
            Decision::AwaitPrimary(NextPrimary::New, FREE),
            "even with every attempt used"
        );
        assert_eq!(
            PRIMARY.decide(Outcome::Demoted, POST, fresh()),
            Decision::Stop,
            "a request the old primary may have acted on is not sent twice"
        );
    }

    /// The deadline ends every kind of retry, failover included (paused time: no real waiting).
    #[tokio::test(start_paused = true)]
    async fn nothing_is_retried_past_the_total_deadline() {
        let deadline = Instant::now() + Duration::from_secs(2);
        let at = |now: Instant| Progress {
            remaining: deadline.saturating_duration_since(now),
            ..fresh()
        };
        assert_ne!(
            PRIMARY.decide(Outcome::Demoted, GET, at(Instant::now())),
            Decision::Stop
        );
        advance(Duration::from_millis(1999)).await;
        assert_ne!(
            ANY.decide(Outcome::NotSent, GET, at(Instant::now())),
            Decision::Stop
        );
        advance(Duration::from_millis(1)).await;
        for outcome in [
            Outcome::NotSent,
            Outcome::Failed,
            Outcome::RetryableStatus,
            Outcome::Demoted,
        ] {
            assert_eq!(
                PRIMARY.decide(outcome, GET, at(Instant::now())),
                Decision::Stop
            );
            assert_eq!(ANY.decide(outcome, GET, at(Instant::now())), Decision::Stop);
        }
    }
}
