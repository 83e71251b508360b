//! Passive outlier detection: eject an instance after consecutive failures.
//!
//! LIFECYCLE of one instance:
//! ```text
//!            failure (count < threshold)
//!   ACTIVE ─────────────────────────────▶ ACTIVE (count+1)
//!     │ ▲      success → count = 0
//!     │ │
//!     │ └──── ejection deadline passes ────┐
//!     │ failure reaches threshold          │
//!     ▼ and may_eject()                    │
//!   EJECTED until now + min(base·2^(n-1), max), n = ejections so far
//! ```
//! A passing active health check ends an ejection early (`uneject`).
//! An instance returning from ejection is on probation: one more run of `threshold` failures
//! ejects it again for twice as long. A success observed after a quiet period of `max_ejection`
//! resets `n`, so an instance that recovered for good starts from `base` again.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use sluice_config::OutlierConfig;

/// Passive health state of one instance. All methods are lock-free.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive_failures: AtomicU32,
    /// Clock reading (ms) until which the instance is ejected; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// Ejections since the last reset; the backoff doubles with each.
    ejections: AtomicU32,
    /// Total ejections over the instance's life, for the API and metrics.
    total_ejections: AtomicU64,
}

/// What [`OutlierState::record_failure`] decided when it ejected an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// How long the instance is out.
    pub duration: Duration,
    /// Which ejection in a row this is (1 for the first).
    pub nth: u32,
}

impl OutlierState {
    /// Whether the instance is ejected at clock reading `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Relaxed) > now_ms
    }

    /// The clock reading the current ejection ends at, if ejected now.
    pub fn ejected_until(&self, now_ms: u64) -> Option<u64> {
        let until = self.ejected_until_ms.load(Relaxed);
        (until > now_ms).then_some(until)
    }

    /// Failures in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    /// Ejections over the instance's life.
    pub fn total_ejections(&self) -> u64 {
        self.total_ejections.load(Relaxed)
    }

    /// Records a successful attempt.
    pub fn record_success(&self, now_ms: u64, cfg: &OutlierConfig) {
        // Read before writing: the common case (no failures) then never dirties the cache line.
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        if self.ejections.load(Relaxed) != 0 {
            let until = self.ejected_until_ms.load(Relaxed);
            let quiet = u64::try_from(cfg.max_ejection.as_millis()).unwrap_or(u64::MAX);
            if now_ms > until.saturating_add(quiet) {
                self.ejections.store(0, Relaxed);
            }
        }
    }

    /// Ends an ejection early because an active health check passed (Envoy does the same by
    /// default): the probe saw the instance answer, so it need not sit out the backoff. The
    /// backoff count is kept, so a relapse still ejects it for longer. Returns whether it was
    /// ejected.
    pub fn uneject(&self, now_ms: u64) -> bool {
        let until = self.ejected_until_ms.load(Relaxed);
        // The ejection ends now (not at 0), so the quiet period that resets the backoff is
        // counted from here.
        until > now_ms
            && self
                .ejected_until_ms
                .compare_exchange(until, now_ms, Relaxed, Relaxed)
                .is_ok()
    }

    /// Records a failed attempt (connect error, reset, timeout or 5xx). Ejects the instance when
    /// this failure completes a run of `cfg.consecutive_failures` and `may_eject()` agrees.
    pub fn record_failure(
        &self,
        now_ms: u64,
        cfg: &OutlierConfig,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Ejection> {
        if cfg.consecutive_failures == 0 {
            return None;
        }
        let failures = self
            .consecutive_failures
            .fetch_add(1, Relaxed)
            .saturating_add(1);
        if failures < cfg.consecutive_failures || self.is_ejected(now_ms) || !may_eject() {
            return None;
        }
        // Only one of several threads completing the run at once may eject.
        if self
            .consecutive_failures
            .compare_exchange(failures, 0, Relaxed, Relaxed)
            .is_err()
        {
            return None;
        }
        let nth = self.ejections.fetch_add(1, Relaxed).saturating_add(1);
        let factor = 1u32.checked_shl(nth - 1).unwrap_or(u32::MAX);
        let duration = cfg
            .base_ejection
            .saturating_mul(factor)
            .min(cfg.max_ejection);
        let until = now_ms.saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        self.ejected_until_ms.store(until, Relaxed);
        self.total_ejections.fetch_add(1, Relaxed);
        Some(Ejection { duration, nth })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_and_backs_off() {
        let s = OutlierState::default();
        let c = cfg();
        assert_eq!(s.record_failure(1000, &c, || true), None);
        assert_eq!(s.record_failure(1000, &c, || true), None);
        let e = s
            .record_failure(1000, &c, || true)
            .expect("third failure ejects");
        assert_eq!(
            e,
            Ejection {
                duration: Duration::from_secs(10),
                nth: 1
            }
        );
        assert!(s.is_ejected(10_999));
        assert!(!s.is_ejected(11_000));
        // Back on probation: the next run ejects for twice as long, then hits the cap.
        for _ in 0..2 {
            s.record_failure(12_000, &c, || true);
        }
        assert_eq!(
            s.record_failure(12_000, &c, || true).unwrap().duration,
            Duration::from_secs(20)
        );
        for _ in 0..2 {
            s.record_failure(40_000, &c, || true);
        }
        assert_eq!(
            s.record_failure(40_000, &c, || true).unwrap().duration,
            Duration::from_secs(35)
        );
        assert_eq!(s.total_ejections(), 3);
    }

    #[test]
    fn success_resets_the_run_and_a_quiet_period_resets_the_backoff() {
        let s = OutlierState::default();
        let c = cfg();
        s.record_failure(0, &c, || true);
        s.record_failure(0, &c, || true);
        s.record_success(0, &c);
        assert_eq!(s.record_failure(0, &c, || true), None, "the run restarted");
        s.record_failure(0, &c, || true);
        assert!(s.record_failure(0, &c, || true).is_some());
        // Ejected until 10 s; a success long after (10 s + 35 s quiet) forgets the history.
        s.record_success(50_000, &c);
        for _ in 0..2 {
            s.record_failure(50_000, &c, || true);
        }
        assert_eq!(s.record_failure(50_000, &c, || true).unwrap().nth, 1);
    }

    #[test]
    fn a_passing_check_ends_an_ejection_but_keeps_the_backoff() {
        let s = OutlierState::default();
        let c = cfg();
        for _ in 0..3 {
            s.record_failure(1000, &c, || true);
        }
        assert!(s.is_ejected(2000));
        assert!(s.uneject(2000));
        assert!(!s.is_ejected(2000));
        assert!(!s.uneject(2000), "nothing left to end");
        s.record_success(2001, &c);
        for _ in 0..2 {
            s.record_failure(3000, &c, || true);
        }
        let again = s.record_failure(3000, &c, || true).unwrap();
        assert_eq!(
            (again.nth, again.duration),
            (2, Duration::from_secs(20)),
            "a relapse backs off further"
        );
    }

    #[test]
    fn the_caller_can_refuse_an_ejection() {
        let s = OutlierState::default();
        let c = cfg();
        for _ in 0..10 {
            assert_eq!(s.record_failure(0, &c, || false), None);
        }
        assert!(!s.is_ejected(0));
    }

    #[test]
    fn zero_threshold_disables_ejection() {
        let s = OutlierState::default();
        let c = OutlierConfig {
            consecutive_failures: 0,
            ..cfg()
        };
        for _ in 0..10 {
            assert_eq!(s.record_failure(0, &c, || true), None);
        }
    }
}
