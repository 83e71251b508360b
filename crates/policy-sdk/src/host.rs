//! Services the host offers a policy (`interface host`): log, clock, read-only KV.
//!
//! Compiled to WebAssembly these call the host. Compiled natively (unit tests) they use
//! [`crate::testing`]: logs are recorded, the clock and the KV view are set by the test.

use crate::types::LogLevel;

/// Writes a line to the proxy's log, tagged with the policy's name.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::__bindings::sluice::policy::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::record_log(level, message);
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return crate::__bindings::sluice::policy::host::now_ms();
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::now_ms();
}

/// Reads `key` from the proxy's KV view; `None` when absent.
pub fn kv_get(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    return crate::__bindings::sluice::policy::host::kv_get(key);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::kv_get(key);
}

/// `log(LogLevel::Trace, ..)`.
pub fn trace(message: &str) {
    log(LogLevel::Trace, message);
}

/// `log(LogLevel::Debug, ..)`.
pub fn debug(message: &str) {
    log(LogLevel::Debug, message);
}

/// `log(LogLevel::Info, ..)`.
pub fn info(message: &str) {
    log(LogLevel::Info, message);
}

/// `log(LogLevel::Warn, ..)`.
pub fn warn(message: &str) {
    log(LogLevel::Warn, message);
}

/// `log(LogLevel::Error, ..)`.
pub fn error(message: &str) {
    log(LogLevel::Error, message);
}

/// When this version of the policy was loaded (milliseconds since the Unix epoch), identical in
/// every instance of it. Natively: [`crate::testing::set_loaded_at_ms`], else the first call's
/// clock reading on this thread.
pub fn loaded_at_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return crate::__bindings::sluice::policy::host::loaded_at_ms();
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::loaded_at_ms();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_helper_logs_at_its_level() {
        crate::testing::take_logs();
        trace("t");
        debug("d");
        info("i");
        warn("w");
        error("e");
        assert_eq!(
            crate::testing::take_logs(),
            [
                (LogLevel::Trace, "t".to_owned()),
                (LogLevel::Debug, "d".to_owned()),
                (LogLevel::Info, "i".to_owned()),
                (LogLevel::Warn, "w".to_owned()),
                (LogLevel::Error, "e".to_owned()),
            ]
        );
    }
}
