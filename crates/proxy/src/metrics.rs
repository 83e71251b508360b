//! Metric names (the documented API, see docs/metrics.md) and pre-registered handles.
//!
//! Handles are registered once — per route and status class on first use, per service at build
//! time — so the request path only touches atomics, never the registry's maps.

use std::sync::{Arc, OnceLock};

use metrics::{Counter, Histogram, counter, histogram};

/// Requests answered, by `listener`, `route`, `service` and status `class` (`2xx`…`5xx`).
pub const REQUESTS_TOTAL: &str = "sluice_requests_total";
/// Time from request arrival to the end of the response body, by `listener`, `route`, `service`.
pub const REQUEST_DURATION_SECONDS: &str = "sluice_request_duration_seconds";
/// Requests no route matched, by `listener`.
pub const UNROUTED_TOTAL: &str = "sluice_unrouted_requests_total";
/// Time from sending to an instance to its response head, by `service`.
pub const UPSTREAM_LATENCY_SECONDS: &str = "sluice_upstream_response_latency_seconds";
/// Failed upstream attempts, by `service` and `kind` (see [`crate::ProxyErrorKind`]).
pub const UPSTREAM_ERRORS_TOTAL: &str = "sluice_upstream_errors_total";
/// New TCP connections opened to instances, by `service`.
pub const UPSTREAM_CONNECTIONS_TOTAL: &str = "sluice_upstream_connections_total";
/// Requests that found no idle connection to an instance while `max_connecting` connects to
/// it were in progress, and waited for one to free, by `service`.
pub const UPSTREAM_CONNECT_WAITS_TOTAL: &str = "sluice_upstream_connect_waits_total";
/// Retries sent, by `service`.
pub const RETRIES_TOTAL: &str = "sluice_retries_total";
/// Retries refused because the service's retry budget was spent, by `service`.
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "sluice_retry_budget_exhausted_total";
/// Instances ejected by passive health, by `service` and `instance`.
pub const EJECTIONS_TOTAL: &str = "sluice_ejections_total";
/// Instances currently ejected, by `service` (set when metrics are scraped).
pub const INSTANCES_EJECTED: &str = "sluice_instances_ejected";
/// Requests in flight to an instance, by `service` and `instance` (set when scraped).
pub const INSTANCE_OUTSTANDING: &str = "sluice_instance_outstanding_requests";
/// Picks made while every instance was ejected (panic mode), by `service`.
pub const PANIC_PICKS_TOTAL: &str = "sluice_balancer_panic_total";
/// Times several instances claimed primary at once, by `service`.
pub const SPLIT_BRAIN_TOTAL: &str = "sluice_split_brain_total";
/// Health probes, by `service`, `instance` and `result` (`up`, `down`, `stale`).
pub const HEALTH_PROBES_TOTAL: &str = "sluice_health_probes_total";
/// Changes of an instance's active-health status or role, by `service`, `instance`, `kind`
/// (`status`, `role`).
pub const HEALTH_CHANGES_TOTAL: &str = "sluice_health_changes_total";
/// Seconds since an instance's status last changed, by `service` and `instance` (set when
/// scraped).
pub const HEALTH_SINCE_CHANGE_SECONDS: &str = "sluice_health_seconds_since_change";
/// 1 for the instance serving as primary, 0 for the others, by `service` and `instance`
/// (`serve = "primary"`, set when scraped).
pub const PRIMARY: &str = "sluice_primary";
/// TCP connections proxied, by `listener` and `outcome` (`ok`, `no_instance`,
/// `connect_failed`, `denied`).
pub const TCP_CONNECTIONS_TOTAL: &str = "sluice_tcp_connections_total";
/// Bytes relayed by TCP listeners, by `listener` and `direction` (`upstream`, `downstream`).
pub const TCP_BYTES_TOTAL: &str = "sluice_tcp_bytes_total";
/// Completed TLS handshakes on listeners, by `listener` and `version`.
pub const TLS_HANDSHAKES_TOTAL: &str = "sluice_tls_handshakes_total";
/// Failed TLS handshakes on listeners (connection closed), by `listener` and `reason`.
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "sluice_tls_handshake_failures_total";
/// Connections refused by `[listener.authz]`, by `listener` and `reason`.
pub const AUTHZ_DENIED_TOTAL: &str = "sluice_authz_denied_total";

/// Passthrough connections closed before routing, by `listener` and `reason` (`not_tls`,
/// `malformed`, `too_large`, `timeout`, `closed`, `io`, `no_route`).
pub const SNI_REJECTED_TOTAL: &str = "sluice_sni_rejected_total";
/// Passthrough connections routed, by `listener`, `service` and `match` (`sni`, `default`).
pub const SNI_ROUTED_TOTAL: &str = "sluice_sni_routed_total";
/// Whether each `[[kv]]` source answers (1) or is unreachable and its last values are in use
/// (0), by `source` (its description, e.g. `etcd http://127.0.0.1:2379`).
pub const KV_SOURCE_UP: &str = "sluice_kv_source_up";
/// Changes (keys created, changed or deleted) received from `[[kv]]` sources, by `source`.
pub const KV_CHANGES_TOTAL: &str = "sluice_kv_changes_total";

/// Client connections open now, by `listener`.
pub const CONNECTIONS_ACTIVE: &str = "sluice_connections_active";
/// Client connections accepted, by `listener`.
pub const CONNECTIONS_TOTAL: &str = "sluice_connections_total";
/// Client connections closed for a protocol-level reason, by `listener` and `reason`
/// (`header_timeout`, `keepalive_timeout`, `send_timeout`, or a refused head's error kind).
pub const CLIENT_CLOSES_TOTAL: &str = "sluice_client_closes_total";
/// HTTP/2 streams Sluice reset while the client kept their flow-control window shut, by
/// `listener` and `reason` (`send_timeout`, `deadline`, `stalled_streams`).
pub const HTTP2_STREAM_RESETS_TOTAL: &str = "sluice_http2_stream_resets_total";
/// Access-log lines dropped because the writer fell behind.
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "sluice_access_log_dropped_total";
/// Requests refused by a route's `allow`/`deny` rules (403), per route.
pub const ROUTE_DENIED_TOTAL: &str = "sluice_route_denied_total";
/// Requests a `redirect` route answered itself, per route.
pub const ROUTE_REDIRECTS_TOTAL: &str = "sluice_route_redirects_total";
/// Requests a route's `rate_limit` refused (429), per route.
pub const ROUTE_RATE_LIMITED_TOTAL: &str = "sluice_route_rate_limited_total";
/// Client keys a route's `rate_limit` holds a bucket for, per route.
pub const ROUTE_RATE_LIMIT_KEYS: &str = "sluice_route_rate_limit_keys";
/// Requests counted in a route's shared overflow bucket because its `max_keys` were all
/// busy, per route.
pub const ROUTE_RATE_LIMIT_OVERFLOW_TOTAL: &str = "sluice_route_rate_limit_overflow_total";
/// Requests a service's `[service.concurrency]` refused (503 `overloaded`), by `reason`
/// (`queue_full`, `queue_timeout`).
pub const SERVICE_OVERLOADED_TOTAL: &str = "sluice_service_overloaded_total";
/// Requests waiting for a place among a service's requests in flight.
pub const SERVICE_QUEUED: &str = "sluice_service_queued_requests";
/// The process's overload level: 0 normal, 1 keep-alive shed, 2 new requests refused.
pub const OVERLOAD_LEVEL: &str = "sluice_overload_level";
/// Requests (and TCP connections) refused past an `[overload]` watermark, by `watermark`.
pub const OVERLOAD_REFUSED_TOTAL: &str = "sluice_overload_refused_total";
/// The process's resident memory, bytes.
pub const PROCESS_RESIDENT_BYTES: &str = "sluice_process_resident_bytes";
/// Configuration reloads, by `result` (`ok`, `invalid`, `failed`).
pub const RELOADS_TOTAL: &str = "sluice_config_reloads_total";

/// Every metric name, for the documentation test.
pub const ALL: &[&str] = &[
    REQUESTS_TOTAL,
    REQUEST_DURATION_SECONDS,
    UNROUTED_TOTAL,
    UPSTREAM_LATENCY_SECONDS,
    UPSTREAM_ERRORS_TOTAL,
    UPSTREAM_CONNECTIONS_TOTAL,
    UPSTREAM_CONNECT_WAITS_TOTAL,
    RETRIES_TOTAL,
    RETRY_BUDGET_EXHAUSTED_TOTAL,
    EJECTIONS_TOTAL,
    INSTANCES_EJECTED,
    INSTANCE_OUTSTANDING,
    PANIC_PICKS_TOTAL,
    SPLIT_BRAIN_TOTAL,
    HEALTH_PROBES_TOTAL,
    HEALTH_CHANGES_TOTAL,
    HEALTH_SINCE_CHANGE_SECONDS,
    PRIMARY,
    TCP_CONNECTIONS_TOTAL,
    TCP_BYTES_TOTAL,
    TLS_HANDSHAKES_TOTAL,
    TLS_HANDSHAKE_FAILURES_TOTAL,
    AUTHZ_DENIED_TOTAL,
    SNI_REJECTED_TOTAL,
    SNI_ROUTED_TOTAL,
    KV_SOURCE_UP,
    KV_CHANGES_TOTAL,
    CONNECTIONS_ACTIVE,
    CONNECTIONS_TOTAL,
    CLIENT_CLOSES_TOTAL,
    HTTP2_STREAM_RESETS_TOTAL,
    ACCESS_LOG_DROPPED_TOTAL,
    RELOADS_TOTAL,
    ROUTE_DENIED_TOTAL,
    ROUTE_REDIRECTS_TOTAL,
    ROUTE_RATE_LIMITED_TOTAL,
    ROUTE_RATE_LIMIT_KEYS,
    ROUTE_RATE_LIMIT_OVERFLOW_TOTAL,
    SERVICE_OVERLOADED_TOTAL,
    SERVICE_QUEUED,
    OVERLOAD_LEVEL,
    OVERLOAD_REFUSED_TOTAL,
    PROCESS_RESIDENT_BYTES,
];

/// Per-route handles, registered lazily so unused status classes create no series.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    listener: Arc<str>,
    route: Arc<str>,
    service: Arc<str>,
    by_class: [OnceLock<Counter>; 5],
    duration: OnceLock<Histogram>,
}

impl RouteMetrics {
    pub(crate) fn new(listener: Arc<str>, route: Arc<str>, service: Arc<str>) -> Self {
        Self {
            listener,
            route,
            service,
            by_class: Default::default(),
            duration: OnceLock::new(),
        }
    }

    pub(crate) fn record(&self, status: u16, seconds: f64) {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let idx = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[idx]
            .get_or_init(|| {
                counter!(REQUESTS_TOTAL,
                    "listener" => self.listener.to_string(),
                    "route" => self.route.to_string(),
                    "service" => self.service.to_string(),
                    "class" => CLASSES[idx])
            })
            .increment(1);
        self.duration
            .get_or_init(|| {
                histogram!(REQUEST_DURATION_SECONDS,
                    "listener" => self.listener.to_string(),
                    "route" => self.route.to_string(),
                    "service" => self.service.to_string())
            })
            .record(seconds);
    }
}

/// Per-service handles.
#[derive(Debug)]
pub(crate) struct ServiceMetrics {
    pub(crate) upstream_latency: Histogram,
    pub(crate) new_connections: Counter,
    pub(crate) connect_waits: Counter,
    pub(crate) retries: Counter,
    pub(crate) budget_exhausted: Counter,
    pub(crate) panic_picks: Counter,
    pub(crate) split_brain: Counter,
    errors: [OnceLock<Counter>; crate::error::ProxyErrorKind::COUNT],
    service: Arc<str>,
}

impl ServiceMetrics {
    pub(crate) fn new(service: &Arc<str>) -> Self {
        let s = || service.to_string();
        Self {
            upstream_latency: histogram!(UPSTREAM_LATENCY_SECONDS, "service" => s()),
            new_connections: counter!(UPSTREAM_CONNECTIONS_TOTAL, "service" => s()),
            connect_waits: counter!(UPSTREAM_CONNECT_WAITS_TOTAL, "service" => s()),
            retries: counter!(RETRIES_TOTAL, "service" => s()),
            budget_exhausted: counter!(RETRY_BUDGET_EXHAUSTED_TOTAL, "service" => s()),
            panic_picks: counter!(PANIC_PICKS_TOTAL, "service" => s()),
            split_brain: counter!(SPLIT_BRAIN_TOTAL, "service" => s()),
            errors: Default::default(),
            service: Arc::clone(service),
        }
    }

    pub(crate) fn upstream_error(&self, kind: crate::error::ProxyErrorKind) {
        self.errors[kind as usize]
            .get_or_init(|| {
                counter!(UPSTREAM_ERRORS_TOTAL, "service" => self.service.to_string(), "kind" => kind.as_str())
            })
            .increment(1);
    }

    pub(crate) fn ejection(&self, instance: &str) {
        counter!(EJECTIONS_TOTAL, "service" => self.service.to_string(), "instance" => instance.to_owned()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../../../docs/metrics.md");
        let missing: Vec<_> = super::ALL
            .iter()
            .filter(|m| !doc.contains(&format!("`{m}`")))
            .collect();
        assert!(missing.is_empty(), "undocumented metrics: {missing:?}");
    }
}
