//! The crash budget: a policy that keeps trapping or timing out is suspended for a while (with
//! exponential backoff) instead of burning CPU on every call. Lock-free: a few atomics read on
//! every call, written on failures.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// When failures suspend a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashBudgetConfig {
    /// Crashes (traps, timeouts, memory cap) tolerated within `window`.
    pub max_crashes: u32,
    /// The window crashes are counted in.
    pub window: Duration,
    /// First suspension; each further one doubles, up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest suspension.
    pub max_backoff: Duration,
}

impl Default for CrashBudgetConfig {
    fn default() -> Self {
        CrashBudgetConfig {
            max_crashes: 5,
            window: Duration::from_secs(10),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct CrashBudget {
    window_start_ms: AtomicU64,
    crashes_in_window: AtomicU32,
    suspended_until_ms: AtomicU64,
    suspensions: AtomicU32,
}

impl CrashBudget {
    /// `Err(remaining)` while suspended.
    pub(crate) fn admit(&self, now_ms: u64) -> Result<(), Duration> {
        let until = self.suspended_until_ms.load(Ordering::Relaxed);
        if now_ms < until {
            return Err(Duration::from_millis(until - now_ms));
        }
        Ok(())
    }

    /// Remaining suspension, if any.
    pub(crate) fn suspended_for(&self, now_ms: u64) -> Option<Duration> {
        self.admit(now_ms).err()
    }

    pub(crate) fn record_success(&self) {
        // Only write when there is something to forget, so healthy calls stay read-only.
        if self.suspensions.load(Ordering::Relaxed) != 0 {
            self.suspensions.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_crash(&self, now_ms: u64, config: &CrashBudgetConfig) {
        let window_ms = config.window.as_millis() as u64;
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let crashes = if now_ms.saturating_sub(start) > window_ms {
            self.window_start_ms.store(now_ms, Ordering::Relaxed);
            self.crashes_in_window.store(1, Ordering::Relaxed);
            1
        } else {
            self.crashes_in_window.fetch_add(1, Ordering::Relaxed) + 1
        };
        if crashes >= config.max_crashes {
            let level = self.suspensions.fetch_add(1, Ordering::Relaxed).min(16);
            let backoff = config
                .initial_backoff
                .saturating_mul(1 << level)
                .min(config.max_backoff);
            self.suspended_until_ms
                .store(now_ms + backoff.as_millis() as u64, Ordering::Relaxed);
            self.crashes_in_window.store(0, Ordering::Relaxed);
            self.window_start_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Forgets everything (a new version starts with a full budget).
    pub(crate) fn reset(&self) {
        self.crashes_in_window.store(0, Ordering::Relaxed);
        self.suspended_until_ms.store(0, Ordering::Relaxed);
        self.suspensions.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_crashes_suspend_with_doubling_backoff() {
        let config = CrashBudgetConfig {
            max_crashes: 3,
            window: Duration::from_secs(10),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3),
        };
        let budget = CrashBudget::default();
        budget.record_crash(100, &config);
        budget.record_crash(200, &config);
        assert_eq!(budget.admit(300), Ok(()));
        budget.record_crash(300, &config);
        assert_eq!(budget.admit(300), Err(Duration::from_millis(1000)));
        assert_eq!(budget.admit(1300), Ok(()));
        for t in [1300, 1301, 1302] {
            budget.record_crash(t, &config);
        }
        assert_eq!(
            budget.admit(1302),
            Err(Duration::from_millis(2000)),
            "second suspension doubles"
        );
        for t in [3302, 3303, 3304] {
            budget.record_crash(t, &config);
        }
        assert_eq!(
            budget.admit(3304),
            Err(Duration::from_millis(3000)),
            "capped at max_backoff"
        );
        budget.record_success();
        for t in [7000, 7001, 7002] {
            budget.record_crash(t, &config);
        }
        assert_eq!(
            budget.admit(7002),
            Err(Duration::from_millis(1000)),
            "success resets the backoff"
        );
    }

    #[test]
    fn crashes_spread_beyond_the_window_do_not_suspend() {
        let config = CrashBudgetConfig {
            max_crashes: 2,
            window: Duration::from_millis(100),
            ..Default::default()
        };
        let budget = CrashBudget::default();
        budget.record_crash(0, &config);
        budget.record_crash(500, &config);
        budget.record_crash(1000, &config);
        assert_eq!(budget.admit(1000), Ok(()));
    }
}
