//! Polling with a deadline instead of sleeping and hoping.

use std::future::Future;
use std::time::{Duration, Instant};

/// Calls `check` every `every` until it returns `Ok`, and returns that value; panics with the
/// last error once `within` has passed.
pub async fn eventually<T, F, Fut>(within: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("condition not met within {within:?}: {e}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// [`eventually`] for tests without a runtime: polls `check` every 100 ms until it returns `Ok`;
/// panics with `what` and the last error once `within` has passed.
pub fn eventually_blocking(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: condition not met within {within:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
