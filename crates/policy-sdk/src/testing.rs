//! Native stand-ins for the host services, for unit tests of policy logic.
//!
//! Everything is per thread, so tests running in parallel never see each other's KV, clock or
//! logs. In WebAssembly builds the setters exist but nothing reads them: the host answers.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use crate::types::LogLevel;

thread_local! {
    static KV: RefCell<BTreeMap<String, String>> = const { RefCell::new(BTreeMap::new()) };
    static NOW_MS: Cell<Option<u64>> = const { Cell::new(None) };
    static LOGS: RefCell<Vec<(LogLevel, String)>> = const { RefCell::new(Vec::new()) };
    static LOADED_AT_MS: Cell<Option<u64>> = const { Cell::new(None) };
    static CACHE_ANSWER: Cell<Option<std::time::Duration>> = const { Cell::new(None) };
}

/// What the last [`crate::Request::cache_answer`] on a test request asked for on this thread,
/// if any; taking it clears it (take it after each call under test).
pub fn take_cache_answer() -> Option<std::time::Duration> {
    CACHE_ANSWER.with(Cell::take)
}

pub(crate) fn record_cache_answer(ttl: std::time::Duration) {
    CACHE_ANSWER.with(|asked| asked.set(Some(ttl)));
}

/// Sets what [`crate::host::loaded_at_ms`] answers on this thread.
pub fn set_loaded_at_ms(ms: u64) {
    LOADED_AT_MS.with(|at| at.set(Some(ms)));
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn loaded_at_ms() -> u64 {
    LOADED_AT_MS.with(|at| match at.get() {
        Some(ms) => ms,
        None => {
            let ms = now_ms();
            at.set(Some(ms));
            ms
        }
    })
}

/// Sets a KV key seen by [`crate::host::kv_get`] on this thread.
pub fn set_kv(key: &str, value: &str) {
    KV.with(|kv| kv.borrow_mut().insert(key.to_owned(), value.to_owned()));
}

/// Removes a KV key.
pub fn remove_kv(key: &str) {
    KV.with(|kv| kv.borrow_mut().remove(key));
}

/// Freezes [`crate::host::now_ms`] at `ms` on this thread (`None` returns to the system clock).
pub fn set_now_ms(ms: Option<u64>) {
    NOW_MS.with(|now| now.set(ms));
}

/// Takes the log lines the policy wrote on this thread so far.
pub fn take_logs() -> Vec<(LogLevel, String)> {
    LOGS.with(|logs| std::mem::take(&mut *logs.borrow_mut()))
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn record_log(level: LogLevel, message: &str) {
    LOGS.with(|logs| logs.borrow_mut().push((level, message.to_owned())));
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn kv_get(key: &str) -> Option<String> {
    KV.with(|kv| kv.borrow().get(key).cloned())
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn now_ms() -> u64 {
    NOW_MS.with(Cell::get).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64)
    })
}

/// A `GET` of `path` (a `?` starts the query) with `fields`, from `127.0.0.1:40000` on the
/// listener `web`, matched by the route `web` to the service `web`: the usual request of a unit
/// test, to change where the test needs (`Request::from(&request)` reads it).
pub fn http_request(path: &str, fields: &[(&str, &str)]) -> crate::HttpRequest {
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (path, None),
    };
    crate::HttpRequest {
        method: "GET".into(),
        scheme: "http".into(),
        host: "example.test".into(),
        path: path.into(),
        query,
        headers: fields
            .iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), (*value).to_owned()))
            .collect(),
        peer: crate::Peer {
            listener: "web".into(),
            source_address: "127.0.0.1".into(),
            source_port: 40000,
            sni: None,
            alpn: None,
            client_certificate: None,
        },
        route: crate::RouteInfo {
            listener: "web".into(),
            name: "web".into(),
            service: "web".into(),
            allowed_services: Vec::new(),
        },
    }
}
