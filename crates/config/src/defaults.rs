//! Every default in one place, so the code and docs/configuration.md cannot drift apart
//! unnoticed (a test in this crate checks the reference mentions each of them).

use std::time::Duration;

/// `[admin] bind`.
pub const ADMIN_BIND: &str = "127.0.0.1:9901";
/// `[runtime] worker_threads` (0 = one per CPU).
pub const WORKER_THREADS: usize = 0;
/// `[runtime] shutdown_grace`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
/// `[runtime] policy_cache`: where wasmtime's own tools keep theirs, under `sluice/`:
/// `$XDG_CACHE_HOME/sluice/policies`, else `$HOME/.cache/sluice/policies`; none without either.
pub fn policy_cache() -> Option<std::path::PathBuf> {
    let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let base = non_empty("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| std::path::Path::new(&home).join(".cache")))?;
    Some(base.join("sluice").join("policies"))
}
/// `[log] level`.
pub const LOG_LEVEL: &str = "info";
/// `[access_log] buffer_lines`.
pub const ACCESS_LOG_BUFFER_LINES: usize = 16_384;

/// `rate_limit.per` on a route.
pub const RATE_LIMIT_PER: Duration = Duration::from_secs(1);
/// `rate_limit.max_keys` on a route: about 4 MB of buckets at most.
pub const RATE_LIMIT_MAX_KEYS: usize = 100_000;
/// `[listener.tls.acme] renew_before`: Let's Encrypt's certificates last 90 days, and it
/// advises renewing with a third of that left.
pub const ACME_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// `[listener.tls.acme] retry_every`: the first wait after a failed attempt (it doubles).
pub const ACME_RETRY_EVERY: Duration = Duration::from_secs(60);
/// `[service.concurrency] queue_timeout`: the longest a request waits for a place among the
/// service's requests in flight (haproxy's `timeout queue` is the same order).
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

/// `[[listener]] max_connections`.
pub const MAX_CONNECTIONS: usize = 10_000;
/// `[[listener]] header_read_timeout`.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `[[listener]] max_header_bytes`.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// `[[listener]] keepalive_timeout`.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// `[[listener]] request_body_timeout`.
pub const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// `[[listener]] send_timeout` (nginx's `send_timeout` is the same 60 s).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// `[[listener]] max_concurrent_streams`.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// `[[listener]] http2_max_stalled_streams`: room for a client that pauses a few media
/// streams, far below `max_concurrent_streams`.
pub const HTTP2_MAX_STALLED_STREAMS: u32 = 16;

/// `[service.timeouts] connect`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `[service.timeouts] response_header`.
pub const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// `[service.timeouts] idle`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// `[service.timeouts] total`.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(30);
/// `[service.timeouts] tunnel_idle`.
pub const TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// `[service.retries] attempts`.
pub const RETRY_ATTEMPTS: u32 = 2;
/// `[service.retries] on_status`.
pub const RETRY_ON_STATUS: &[u16] = &[502, 503];
/// `[service.retries] budget_ratio`.
pub const RETRY_BUDGET_RATIO: f64 = 0.2;
/// `[service.retries] budget_min_per_sec`.
pub const RETRY_BUDGET_MIN_PER_SEC: u32 = 10;
/// `[service.retries] buffer_bytes`.
pub const RETRY_BUFFER_BYTES: usize = 64 * 1024;

/// `[service.outlier] consecutive_failures`.
pub const OUTLIER_CONSECUTIVE_FAILURES: u32 = 5;
/// `[service.outlier] base_ejection`.
pub const OUTLIER_BASE_EJECTION: Duration = Duration::from_secs(10);
/// `[service.outlier] max_ejection`.
pub const OUTLIER_MAX_EJECTION: Duration = Duration::from_secs(300);
/// `[service.outlier] max_ejected_percent`.
pub const OUTLIER_MAX_EJECTED_PERCENT: u8 = 50;

/// `[service.pool] max_idle_per_instance`.
pub const POOL_MAX_IDLE: usize = 256;
/// `[service.pool] idle_timeout`.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// `[service.pool] max_connecting`: well under the accept queue a server is commonly given
/// (128 for many runtimes, 511 for nginx), so a burst of connects does not overflow it.
pub const POOL_MAX_CONNECTING: usize = 64;
/// `[service.pool] http2_max_connections`. HTTP/2 connections per instance: each carries the instance's stream limit (commonly 100 or
/// more), so a few cover thousands of requests in flight, and a second one spreads the
/// framing work over more than one core.
pub const POOL_HTTP2_MAX_CONNECTIONS: usize = 4;

/// `[[listener]] idle_timeout` for `protocol = "tcp"`.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// `[listener.tls] handshake_timeout`.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `[service.health] interval`.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// `[service.health] timeout`.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// `[service.health] rise`.
pub const HEALTH_RISE: u32 = 2;
/// `[service.health] fall`.
pub const HEALTH_FALL: u32 = 3;
/// `[service.health] rise` and `fall`: the values allowed.
pub const HEALTH_THRESHOLDS: std::ops::RangeInclusive<u32> = 1..=100;
/// `[service.health] body_bytes`.
pub const HEALTH_BODY_BYTES: usize = 4096;
/// `[[listener]] sni_timeout`: a ClientHello fits in one or two segments; a client that has
/// not sent it by then is slow or not speaking TLS.
pub const SNI_TIMEOUT: Duration = Duration::from_secs(5);
/// `[[listener]] sni_max_bytes`: a ClientHello with large post-quantum key shares and many
/// extensions stays well under 16 KiB.
pub const SNI_MAX_BYTES: usize = 16 * 1024;
/// `[[kv]] request_timeout` (etcd).
pub const KV_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// `[[kv]] poll` (file).
pub const KV_POLL: Duration = Duration::from_secs(1);

/// `[[discovery]] poll_interval` for `kind = "file"`.
pub const DISCOVERY_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// `[[discovery]] fallback_poll_interval` for `kind = "file"`: the safety-net re-read while
/// inotify reports changes (it misses some: NFS, some bind mounts, a full event queue).
pub const DISCOVERY_FALLBACK_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// `[[discovery]] request_timeout` for `kind = "etcd"`.
pub const DISCOVERY_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// `[[discovery]] prefix` for `kind = "etcd"` (the registry's default, docs/registry-format.md).
pub const DISCOVERY_ETCD_PREFIX: &str = "/sluice/services/";
/// `[routing] debounce`.
pub const ROUTING_DEBOUNCE: Duration = Duration::from_millis(100);
/// `[routing] tcp_bind`: all interfaces, as Fabio's `:PORT` listeners.
pub const ROUTING_TCP_BIND: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
