//! The record of one request, finished exactly once — when its response body ends, is
//! abandoned, or the request is dropped before a response existed — to release the instance,
//! return its connection to the pool, and write metrics and the access-log line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crate::headers::RequestId;

use crate::access_log::{AccessLog, Entry, RequestInfo, proto_str, rfc3339_now};
use crate::admission::Place;
use crate::conn::ConnWatch;
use crate::error::ProxyErrorKind;
use crate::h1::UpConn;
use crate::routing::Route;
use crate::upstream::InFlight;

/// Request body bytes: known up front, or counted while streaming.
#[derive(Debug)]
pub(crate) enum BytesIn {
    Known(u64),
    Counted(Arc<AtomicU64>),
}

/// The instance a response came from, and its connection to return when the body ends.
#[derive(Debug)]
pub(crate) struct UpstreamUse {
    pub(crate) in_flight: InFlight,
    /// Set when the response body ended cleanly and the connection can carry another request.
    pub(crate) conn: Option<Box<UpConn>>,
    pub(crate) max_idle: usize,
}

/// Status logged for a request whose client went away before any response (nginx's 499).
const CLIENT_CLOSED: u16 = 499;

#[derive(Debug)]
pub(crate) struct Exchange {
    start: Instant,
    /// HTTP/2 connections: told when the response finished.
    conn: Option<Arc<ConnWatch>>,
    pub(crate) route: Option<Arc<Route>>,
    pub(crate) status: u16,
    pub(crate) upstream: Option<UpstreamUse>,
    pub(crate) upstream_ms: Option<f64>,
    pub(crate) retries: u32,
    pub(crate) error: Option<ProxyErrorKind>,
    pub(crate) bytes_in: BytesIn,
    /// The request's place among its service's requests in flight (`[service.concurrency]`),
    /// given back when the record is dropped.
    pub(crate) place: Option<Place>,
    request_id: RequestId,
    /// Boxed: only when the access log is on (it is most of this record's size otherwise).
    log: Option<Box<(AccessLog, RequestInfo)>>,
    done: bool,
}

impl Exchange {
    pub(crate) fn new(
        start: Instant,
        conn: Option<Arc<ConnWatch>>,
        request_id: RequestId,
        log: Option<Box<(AccessLog, RequestInfo)>>,
    ) -> Self {
        Self {
            start,
            conn,
            route: None,
            status: CLIENT_CLOSED,
            upstream: None,
            upstream_ms: None,
            retries: 0,
            error: None,
            bytes_in: BytesIn::Known(0),
            place: None,
            request_id,
            log,
            done: false,
        }
    }

    pub(crate) fn finish(
        mut self,
        bytes_out: u64,
        completed: bool,
        error: Option<&dyn std::fmt::Display>,
    ) {
        self.complete(bytes_out, completed, error);
    }

    fn complete(
        &mut self,
        bytes_out: u64,
        completed: bool,
        body_error: Option<&dyn std::fmt::Display>,
    ) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.start);
        let upstream_label = self
            .upstream
            .as_ref()
            .map(|u| Arc::clone(&u.in_flight.instance.label));
        // Dropping the upstream use releases the instance's in-flight count; its connection
        // goes back to the pool only if the response was read to the end.
        if let Some(mut u) = self.upstream.take()
            && completed
            && let Some(conn) = u.conn.take()
        {
            u.in_flight
                .instance
                .pool
                .checkin(conn, sluice_health::clock::to_ms(now), u.max_idle);
        }
        if let Some(conn) = &self.conn {
            conn.request_finished();
        }
        if let Some(route) = &self.route {
            route.metrics.record(self.status, elapsed.as_secs_f64());
        }
        let Some((log, info)) = self.log.as_deref() else {
            return;
        };
        let bytes_in = match &self.bytes_in {
            BytesIn::Known(n) => *n,
            BytesIn::Counted(c) => c.load(Relaxed),
        };
        let error = match (self.error, body_error) {
            (Some(kind), _) => Some(kind.as_str().to_owned()),
            (None, Some(e)) => Some(e.to_string()),
            (None, None) => None,
        };
        log.log(&Entry {
            time: rfc3339_now(),
            listener: &info.listener,
            client: info.client,
            method: &info.method,
            host: info.host.as_deref(),
            path: &info.target,
            proto: proto_str(info.version),
            status: self.status,
            route: self.route.as_ref().map(|r| &*r.name),
            // Empty for a redirect route without a service.
            service: self
                .route
                .as_ref()
                .map(|r| &*r.service.name)
                .filter(|s| !s.is_empty()),
            upstream: upstream_label.as_deref(),
            bytes_in,
            bytes_out,
            duration_ms: round_micros(elapsed.as_secs_f64() * 1000.0),
            upstream_ms: self.upstream_ms.map(round_micros),
            retries: self.retries,
            request_id: self.request_id.as_str(),
            trace_id: std::str::from_utf8(&info.trace_id).unwrap_or_default(),
            error,
            completed,
            tls: info.tls.as_deref().map(crate::tls::ConnTls::log),
            referer: info.referer.as_deref(),
            user_agent: info.user_agent.as_deref(),
        });
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // Only reached without `finish` when the request future was dropped (client gone).
        self.complete(0, false, None);
    }
}

/// Milliseconds rounded to whole microseconds, so log lines do not carry float noise.
fn round_micros(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}
