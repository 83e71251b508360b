//! An instance's active-health state, written by its probe task and read lock-free by the data
//! path.
//!
//! LIFECYCLE of one instance's status (`rise`/`fall` from the check's configuration):
//! ```text
//!            first verdict up                     `fall` down verdicts in a row
//!   UNKNOWN ───────────────────▶ UP ◀──────────────────────────────────────┐
//!      │                          │ ─────────────────────────────────▶ DOWN │
//!      │ first verdict down       │     `rise` up verdicts in a row ───────┘
//!      └──────────────────────────┴──────────────────────────────────▶ DOWN
//! ```
//! The *role* follows the latest verdict without smoothing: the member the latest probe calls
//! primary is primary at once (a mirror's status page is authoritative; waiting `rise` probes
//! would only lengthen failover). A probe whose evaluator failed keeps the previous verdict and
//! marks it stale.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::verdict::{ProbeResult, Role, Verdict};

/// Smoothed status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No verdict yet.
    Unknown,
    /// Taking traffic.
    Up,
    /// Not taking traffic.
    Down,
}

impl Status {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Status::Up,
            2 => Status::Down,
            _ => Status::Unknown,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            Status::Unknown => 0,
            Status::Up => 1,
            Status::Down => 2,
        }
    }
}

fn role_to_u8(r: Option<Role>) -> u8 {
    match r {
        None => 0,
        Some(Role::Primary) => 1,
        Some(Role::Backup) => 2,
        Some(Role::Any) => 3,
    }
}

fn role_from_u8(v: u8) -> Option<Role> {
    match v {
        1 => Some(Role::Primary),
        2 => Some(Role::Backup),
        3 => Some(Role::Any),
        _ => None,
    }
}

/// The last probe, kept for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct LastProbe {
    /// Clock reading (ms, [`crate::clock`]) when it finished.
    pub at_ms: u64,
    /// One-line result.
    pub result: String,
    /// How long it took.
    pub latency_us: u64,
    /// The verdict it produced (`None` when the evaluator failed).
    pub verdict: Option<Verdict>,
    /// The evaluator's error, when it failed.
    pub evaluator_error: Option<String>,
}

/// What changed when a verdict was recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    /// The smoothed status moved (old, new).
    pub status: Option<(Status, Status)>,
    /// The latest role moved (old, new).
    pub role: Option<(Option<Role>, Option<Role>)>,
}

/// One instance's active-health state. One writer (its probe task), many lock-free readers.
#[derive(Debug)]
pub struct InstanceHealth {
    status: AtomicU8,
    role: AtomicU8,
    weight: AtomicU32,
    ups: AtomicU32,
    downs: AtomicU32,
    status_since_ms: AtomicU64,
    role_since_ms: AtomicU64,
    /// Clock reading of the latest verdict: until then the role held (a claim's end).
    verdict_at_ms: AtomicU64,
    /// Clock reading when the probe behind the latest verdict was sent.
    probe_sent_ms: AtomicU64,
    stale: AtomicBool,
    last: ArcSwap<Option<LastProbe>>,
}

impl Default for InstanceHealth {
    fn default() -> Self {
        Self {
            status: AtomicU8::new(Status::Unknown.as_u8()),
            role: AtomicU8::new(0),
            weight: AtomicU32::new(0),
            ups: AtomicU32::new(0),
            downs: AtomicU32::new(0),
            status_since_ms: AtomicU64::new(0),
            role_since_ms: AtomicU64::new(0),
            verdict_at_ms: AtomicU64::new(0),
            probe_sent_ms: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            last: ArcSwap::from_pointee(None),
        }
    }
}

impl InstanceHealth {
    /// The smoothed status.
    pub fn status(&self) -> Status {
        Status::from_u8(self.status.load(Relaxed))
    }

    /// Whether active health has taken the instance out.
    pub fn is_down(&self) -> bool {
        self.status.load(Relaxed) == Status::Down.as_u8()
    }

    /// The role of the latest verdict (`None` when down or not yet probed).
    pub fn role(&self) -> Option<Role> {
        role_from_u8(self.role.load(Relaxed))
    }

    /// Whether the latest verdict said primary.
    pub fn is_primary(&self) -> bool {
        self.role.load(Relaxed) == role_to_u8(Some(Role::Primary))
    }

    /// Clock reading since which the current role holds.
    pub fn role_since_ms(&self) -> u64 {
        self.role_since_ms.load(Relaxed)
    }

    /// Clock reading of the latest verdict (0 = none yet). The current role is known to have
    /// held from [`Self::role_since_ms`] until then; after it, only the next probe can tell.
    pub fn verdict_at_ms(&self) -> u64 {
        self.verdict_at_ms.load(Relaxed)
    }

    /// Clock reading when the probe behind the latest verdict was sent (0 = none yet): what
    /// the verdict says held at some moment after this.
    pub fn probe_sent_ms(&self) -> u64 {
        self.probe_sent_ms.load(Relaxed)
    }

    /// Clock reading since which the current status holds (0 = never changed).
    pub fn status_since_ms(&self) -> u64 {
        self.status_since_ms.load(Relaxed)
    }

    /// A weight the health policy asked for (0 = none).
    pub fn weight_override(&self) -> Option<u32> {
        Some(self.weight.load(Relaxed)).filter(|w| *w > 0)
    }

    /// Whether the last evaluation failed and the verdict is a previous one.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Relaxed)
    }

    /// The last probe, if any.
    pub fn last_probe(&self) -> Arc<Option<LastProbe>> {
        self.last.load_full()
    }

    /// Records a verdict from a probe; returns what changed.
    pub fn record(
        &self,
        verdict: &Verdict,
        probe: &ProbeResult,
        now_ms: u64,
        rise: u32,
        fall: u32,
    ) -> Change {
        let mut change = Change::default();
        self.stale.store(false, Relaxed);
        let old = self.status();
        let new = if verdict.is_up() {
            self.downs.store(0, Relaxed);
            let ups = self.ups.fetch_add(1, Relaxed) + 1;
            if old == Status::Unknown || ups >= rise {
                Status::Up
            } else {
                old
            }
        } else {
            self.ups.store(0, Relaxed);
            let downs = self.downs.fetch_add(1, Relaxed) + 1;
            if old == Status::Unknown || downs >= fall {
                Status::Down
            } else {
                old
            }
        };
        if new != old {
            self.status.store(new.as_u8(), Relaxed);
            self.status_since_ms.store(now_ms, Relaxed);
            change.status = Some((old, new));
        }
        let old_role = self.role();
        let new_role = verdict.role();
        if old_role != new_role {
            self.role.store(role_to_u8(new_role), Relaxed);
            self.role_since_ms.store(now_ms, Relaxed);
            change.role = Some((old_role, new_role));
        }
        self.verdict_at_ms.store(now_ms, Relaxed);
        self.probe_sent_ms
            .store(now_ms.saturating_sub(probe.latency_us / 1000), Relaxed);
        let weight = match verdict {
            Verdict::Up {
                weight: Some(w), ..
            } => *w,
            _ => 0,
        };
        self.weight.store(weight, Relaxed);
        self.last.store(Arc::new(Some(LastProbe {
            at_ms: now_ms,
            result: probe.summary(),
            latency_us: probe.latency_us,
            verdict: Some(verdict.clone()),
            evaluator_error: None,
        })));
        change
    }

    /// Records a probe whose evaluation failed: the previous verdict stays, marked stale.
    pub fn record_stale(&self, probe: &ProbeResult, error: String, now_ms: u64) {
        self.stale.store(true, Relaxed);
        let verdict = self
            .last
            .load()
            .as_ref()
            .as_ref()
            .and_then(|l| l.verdict.clone());
        self.last.store(Arc::new(Some(LastProbe {
            at_ms: now_ms,
            result: probe.summary(),
            latency_us: probe.latency_us,
            verdict,
            evaluator_error: Some(error),
        })));
    }
}

/// One member's claim of the primary role: held from `since` and confirmed until `until` (the
/// clock readings of the verdict that first said primary and of the latest one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The member's index in its service.
    pub index: usize,
    /// When the member first claimed the role.
    pub since_ms: u64,
    /// When its latest verdict confirmed the claim.
    pub until_ms: u64,
}

/// What [`choose_primary`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryChoice {
    /// The member that serves as primary.
    pub chosen: Option<usize>,
    /// Whether two members claimed the role at the same time (a split brain). A member whose
    /// claim was last confirmed *before* another's began is not one: it is the old primary
    /// whose next probe has not answered yet (hung or stopped), a handover rather than two
    /// primaries.
    pub split_brain: bool,
}

/// Chooses the primary among members whose latest verdict says primary: the one that has held
/// the role longest (ties: the first in configuration order), so a member that only *claims*
/// primary does not take traffic from the established one before its next probe settles it.
pub fn choose_primary(claims: &[Claim]) -> PrimaryChoice {
    let chosen = claims
        .iter()
        .min_by_key(|c| (c.since_ms, c.index))
        .map(|c| c.index);
    let overlap = |a: &Claim, b: &Claim| a.since_ms.max(b.since_ms) <= a.until_ms.min(b.until_ms);
    let split_brain = claims
        .iter()
        .enumerate()
        .any(|(i, a)| claims[i + 1..].iter().any(|b| overlap(a, b)));
    PrimaryChoice {
        chosen,
        split_brain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::ProbeKind;

    fn probe() -> ProbeResult {
        ProbeResult {
            kind: ProbeKind::Http,
            status: Some(200),
            headers: vec![],
            body_prefix: b"SUCCESS".to_vec(),
            latency_us: 100,
            error: None,
        }
    }
    fn up(role: Role) -> Verdict {
        Verdict::Up { role, weight: None }
    }
    fn down() -> Verdict {
        Verdict::Down { reason: "x".into() }
    }

    #[test]
    fn first_verdict_decides_then_rise_and_fall_smooth() {
        let h = InstanceHealth::default();
        assert_eq!(
            h.record(&up(Role::Any), &probe(), 1, 2, 3).status,
            Some((Status::Unknown, Status::Up))
        );
        assert_eq!(h.record(&down(), &probe(), 2, 2, 3).status, None);
        assert_eq!(h.record(&down(), &probe(), 3, 2, 3).status, None);
        assert_eq!(
            h.record(&down(), &probe(), 4, 2, 3).status,
            Some((Status::Up, Status::Down))
        );
        assert_eq!(h.record(&up(Role::Any), &probe(), 5, 2, 3).status, None);
        assert_eq!(
            h.record(&up(Role::Any), &probe(), 6, 2, 3).status,
            Some((Status::Down, Status::Up))
        );
        assert_eq!(h.status_since_ms(), 6);
    }

    #[test]
    fn role_follows_the_latest_verdict_at_once() {
        let h = InstanceHealth::default();
        h.record(&up(Role::Backup), &probe(), 1, 2, 3);
        let c = h.record(&up(Role::Primary), &probe(), 2, 2, 3);
        assert_eq!(c.role, Some((Some(Role::Backup), Some(Role::Primary))));
        assert!(h.is_primary());
        assert_eq!(h.role_since_ms(), 2);
        // One failed probe: still up (fall = 3) but no longer primary.
        let c = h.record(&down(), &probe(), 3, 2, 3);
        assert_eq!(
            (c.status, c.role),
            (None, Some((Some(Role::Primary), None)))
        );
        assert!(!h.is_primary() && !h.is_down());
    }

    #[test]
    fn stale_keeps_the_previous_verdict() {
        let h = InstanceHealth::default();
        h.record(&up(Role::Primary), &probe(), 1, 2, 3);
        h.record_stale(&probe(), "trap".into(), 2);
        assert!(h.is_stale() && h.is_primary());
        let last = h.last_probe();
        let last = last.as_ref().as_ref().unwrap();
        assert_eq!(last.evaluator_error.as_deref(), Some("trap"));
        assert_eq!(last.verdict, Some(up(Role::Primary)));
    }

    #[test]
    fn split_brain_keeps_the_established_primary() {
        let claim = |index, since_ms, until_ms| Claim {
            index,
            since_ms,
            until_ms,
        };
        let choice = |chosen, split_brain| PrimaryChoice {
            chosen,
            split_brain,
        };
        assert_eq!(choose_primary(&[]), choice(None, false));
        assert_eq!(
            choose_primary(&[claim(1, 500, 900)]),
            choice(Some(1), false)
        );
        assert_eq!(
            choose_primary(&[claim(0, 900, 1000), claim(2, 100, 1000)]),
            choice(Some(2), true),
            "longest-held wins"
        );
        assert_eq!(
            choose_primary(&[claim(3, 100, 200), claim(1, 100, 200)]),
            choice(Some(1), true),
            "ties by config order"
        );
    }

    #[test]
    fn a_claim_that_ended_before_another_began_is_a_handover_not_a_split_brain() {
        // The old primary hung right after its probe at 1000; the promoted member's probe said
        // primary at 1400; the old one's next probe has not answered yet.
        let old = Claim {
            index: 0,
            since_ms: 100,
            until_ms: 1000,
        };
        let new = Claim {
            index: 1,
            since_ms: 1400,
            until_ms: 1400,
        };
        let c = choose_primary(&[old, new]);
        assert!(!c.split_brain);
        assert_eq!(
            c.chosen,
            Some(0),
            "the old primary keeps the role until its probe fails"
        );
        // The old primary's next probe says primary again: both claims now overlap.
        let reconfirmed = Claim {
            until_ms: 2000,
            ..old
        };
        assert!(choose_primary(&[reconfirmed, new]).split_brain);
    }

    #[test]
    fn every_verdict_moves_the_end_of_the_claim() {
        let h = InstanceHealth::default();
        h.record(&up(Role::Primary), &probe(), 10, 2, 3);
        h.record(&up(Role::Primary), &probe(), 20, 2, 3);
        assert_eq!((h.role_since_ms(), h.verdict_at_ms()), (10, 20));
        h.record_stale(&probe(), "trap".into(), 30);
        assert_eq!(
            h.verdict_at_ms(),
            20,
            "a failed evaluation confirms nothing"
        );
    }
}
