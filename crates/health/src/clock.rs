//! A cheap monotonic clock in milliseconds since the process started.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// The instant the clock counts from.
pub fn epoch() -> Instant {
    *START.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`]; never 0, so 0 can mean "never" in atomics.
pub fn now_ms() -> u64 {
    to_ms(Instant::now())
}

/// Converts an instant to this clock's milliseconds (instants before the epoch map to 1).
pub fn to_ms(t: Instant) -> u64 {
    let since = t.saturating_duration_since(epoch());
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The instant of a clock reading.
pub fn to_instant(ms: u64) -> Instant {
    epoch() + Duration::from_millis(ms)
}
