//! One request, from the client's head to the response head sent back: route, pick, connect,
//! send, retry, answer.
//!
//! Retry rules (each retry goes to an instance this request has not tried, and needs both an
//! attempt left and the service's retry budget):
//! - the request never reached the instance (connect refused or timed out, or a pooled
//!   connection turned out closed before the request was written): any method;
//! - the instance reset the connection, sent garbage, timed out on the response head, or
//!   answered a status from `retries.on_status` (502, 503 by default): only idempotent methods
//!   whose body is empty or was small enough to buffer (`retries.buffer_bytes`).
//!
//! Once response bytes have gone to the client nothing is retried. Retries of requests that
//! were sent draw on the service's retry budget; retries of requests that never reached an
//! instance do not (they add no load anywhere).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sluice_config::{HashKey, ServiceConfig};
use sluice_health::clock;

use crate::access_log::RequestInfo;
use crate::body::{ClientStream, DownBody, UpBody};
use crate::conn::ConnWatch;
use crate::error::{ClientBodyTimedOut, ProxyError, ProxyErrorKind};
use crate::exchange::{BytesIn, Exchange, UpstreamUse};
use crate::h1::{SendError, UpConn, UpstreamBody};
use crate::headers::{self, UpstreamFields, X_REQUEST_ID};
use crate::listener::ListenerShared;
use crate::pool;
use crate::routing::Route;
use crate::upstream::{InFlight, Service, Tried};

/// What the handler needs to know about the connection a request arrived on.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) listener: Arc<ListenerShared>,
    pub(crate) peer: SocketAddr,
    /// `peer`'s IP as a header value, made once per connection for `X-Forwarded-For`.
    pub(crate) client_ip: HeaderValue,
    pub(crate) watch: Arc<ConnWatch>,
    /// The TLS session, on TLS listeners.
    pub(crate) tls: Option<Arc<crate::tls::ConnTls>>,
}

/// hyper's service entry point: never fails, every problem becomes a response.
pub(crate) async fn handle(
    req: Request<Incoming>,
    cx: Arc<ConnCtx>,
) -> Result<Response<DownBody>, Infallible> {
    let start = Instant::now();
    cx.watch.request_started();
    let request_id = headers::request_id(req.headers());
    let rt = cx.listener.runtime.load();
    let host = req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let route = rt
        .table
        .lookup(
            host.as_ref().and_then(|h| h.to_str().ok()),
            req.uri().path(),
        )
        .cloned();
    let body_timeout = rt.config.request_body_timeout;
    let log = rt.access_log.enabled().then(|| {
        let h = req.headers();
        (
            rt.access_log.clone(),
            RequestInfo {
                client: cx.peer,
                listener: Arc::clone(&cx.listener.name),
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                host: host.clone(),
                referer: h.get(header::REFERER).cloned(),
                user_agent: h.get(header::USER_AGENT).cloned(),
                tls: cx.tls.clone(),
            },
        )
    });
    drop(rt);
    let mut exchange = Exchange::new(start, Arc::clone(&cx.watch), request_id.clone(), log);

    let Some(route) = route else {
        cx.listener.unrouted.increment(1);
        let err = ProxyError::new(
            ProxyErrorKind::NoRoute,
            "no route matches this host and path",
        );
        return Ok(local_error(&err, None, &request_id, exchange));
    };
    exchange.route = Some(Arc::clone(&route));
    if let Some(answer) = crate::route_rules::local_answer(&route, cx.peer.ip(), req.uri()) {
        return Ok(crate::route_rules::respond(
            answer,
            &route,
            &request_id,
            exchange,
        ));
    }
    let service = Arc::clone(&route.service);
    let deadline = start + service.config.timeouts.total;
    match forward(
        req,
        &route,
        &cx,
        host,
        &request_id,
        body_timeout,
        deadline,
        &mut exchange,
    )
    .await
    {
        Ok(Forwarded { response, upstream }) => {
            let (mut parts, body) = response.into_parts();
            parts.headers.insert(X_REQUEST_ID, request_id);
            exchange.status = parts.status.as_u16();
            exchange.upstream = Some(upstream);
            let t = &service.config.timeouts;
            let body = DownBody::upstream(body, t.idle, deadline.into(), exchange);
            Ok(Response::from_parts(parts, body))
        }
        Err(err) => {
            tracing::debug!(service = %service.name, error = %err, "request failed");
            Ok(local_error(
                &err,
                Some(&service.name),
                &request_id,
                exchange,
            ))
        }
    }
}

pub(crate) fn local_error(
    err: &ProxyError,
    service: Option<&str>,
    request_id: &HeaderValue,
    mut exchange: Exchange,
) -> Response<DownBody> {
    let resp: Response<Bytes> = err.to_response(service, request_id);
    exchange.status = resp.status().as_u16();
    exchange.error = Some(err.kind);
    let (parts, bytes) = resp.into_parts();
    Response::from_parts(parts, DownBody::local(bytes, exchange))
}

struct Forwarded {
    response: Response<UpstreamBody>,
    upstream: UpstreamUse,
}

/// How the request body is sent, and whether it can be sent again.
enum BodyPlan {
    Empty,
    Buffered(Bytes),
    /// Streamed once; `None` after it was handed to an attempt.
    Stream(Option<ClientStream>),
}

impl BodyPlan {
    fn replayable(&self) -> bool {
        !matches!(self, BodyPlan::Stream(_))
    }

    fn for_attempt(&mut self) -> Option<UpBody> {
        match self {
            BodyPlan::Empty => Some(UpBody::Empty),
            BodyPlan::Buffered(b) => Some(UpBody::Full(Some(b.clone()))),
            BodyPlan::Stream(s) => s.take().map(UpBody::Stream),
        }
    }

    fn give_back(&mut self, body: UpBody) {
        if let (BodyPlan::Stream(slot), UpBody::Stream(s)) = (self, body) {
            *slot = Some(s);
        }
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    mut req: Request<Incoming>,
    route: &Route,
    cx: &ConnCtx,
    host: Option<HeaderValue>,
    request_id: &HeaderValue,
    body_timeout: Duration,
    deadline: Instant,
    exchange: &mut Exchange,
) -> Result<Forwarded, ProxyError> {
    let service = &*route.service;
    let cfg = &service.config;
    service.retry_budget.deposit();

    let upgrade = headers::is_upgrade_request(req.headers()) && req.version() == Version::HTTP_11;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let idempotent = is_idempotent(req.method());
    let hash = service
        .balancer
        .hash_key()
        .map(|k| request_hash(k, &req, cx.peer));

    let (mut parts, body) = req.into_parts();
    let fields = rewrite_head(&mut parts, route, cx, host, request_id, upgrade)?;
    let mut plan = plan_body(body, cfg, idempotent, body_timeout, exchange).await?;
    let replayable = plan.replayable();

    let mut tried = Tried::default();
    let mut attempt: u32 = 0;
    let mut last_error: Option<ProxyError> = None;
    let mut head = parts;
    let mut failed_generation: Option<u64> = None;
    'attempts: loop {
        let attempt_start = Instant::now();
        let now_ms = clock::to_ms(attempt_start);
        let Some(picked) = service.pick(hash, &tried, now_ms) else {
            // An attempt just failed on the primary: wait (bounded) for the failover the
            // probes are now checking. Finding no primary at all is answered at once.
            let remaining = deadline.saturating_duration_since(Instant::now());
            if service
                .wait_for_primary(&mut failed_generation, remaining)
                .await
            {
                continue;
            }
            return Err(last_error.unwrap_or_else(|| service.nothing_to_pick()));
        };
        tried.push(picked.index);
        let remaining = deadline.saturating_duration_since(attempt_start);
        if remaining.is_zero() {
            return Err(ProxyError::new(
                ProxyErrorKind::DeadlineExceeded,
                "total request deadline passed",
            ));
        }
        let generation = service.primary_generation();
        let in_flight = InFlight::new(Arc::clone(&picked.instance));
        let addr = picked.instance.addr;

        // Up to a few rounds on this instance: a pooled connection may turn out closed before
        // our request was written, which is nobody's fault and is retried on a new connection.
        let mut stale_rounds = 0;
        let err = loop {
            // A connection: from the pool, or new. Failures here never reached the instance's
            // application, so any method may go elsewhere.
            let conn = match ready_conn(service, &in_flight, remaining).await {
                Ok(c) => c,
                Err(e) => {
                    service.record_failure(&picked.instance, Some(e.kind), now_ms);
                    break e;
                }
            };
            let Some(body) = plan.for_attempt() else {
                return Err(last_error.unwrap_or_else(|| {
                    ProxyError::new(
                        ProxyErrorKind::UpstreamReset,
                        "request body already consumed",
                    )
                }));
            };
            if route.rules.host_is_dst() {
                head.headers
                    .insert(header::HOST, picked.instance.host_header.clone());
            }
            let sent_at = Instant::now();
            let wait = cfg
                .timeouts
                .response_header
                .min(deadline.saturating_duration_since(sent_at));
            let exchange_head = tokio::time::timeout(wait, conn.exchange(&head, &fields, body));
            // In primary mode a member that loses the role (frozen, or demoted by its mirror)
            // may never answer: stop waiting on it, and retry on the new primary if allowed.
            let result = if service.fails_over() {
                let demoted = picked.instance.session_token();
                tokio::select! {
                    r = exchange_head => r,
                    () = demoted.cancelled() => {
                        break ProxyError::new(
                            ProxyErrorKind::UpstreamReset,
                            format!("{addr} lost the primary role before answering"),
                        )
                        .sent();
                    }
                }
            } else {
                exchange_head.await
            };
            match result {
                Ok(Ok(mut response)) => {
                    let latency = sent_at.elapsed();
                    let now_ms = clock::to_ms(sent_at + latency);
                    picked
                        .instance
                        .observe_latency(latency.as_nanos() as f64, now_ms);
                    service
                        .metrics
                        .upstream_latency
                        .record(latency.as_secs_f64());
                    exchange.upstream_ms = Some(latency.as_secs_f64() * 1000.0);
                    let status = response.status();
                    if status.is_server_error() {
                        service.record_failure(&picked.instance, None, now_ms);
                    } else {
                        service.record_success(&picked.instance, now_ms);
                    }
                    let untried_left = tried.len() < service.instances().len();
                    if cfg.retries.on_status.contains(&status.as_u16())
                        && idempotent
                        && replayable
                        && untried_left
                    {
                        let e = ProxyError::new(
                            ProxyErrorKind::UpstreamReset,
                            format!("{addr} answered {status}"),
                        )
                        .sent();
                        // Without a retry left the instance's own answer goes to the client.
                        if may_retry(service, attempt, &e, idempotent, replayable, exchange) {
                            // The unread body makes this connection unusable: it is dropped.
                            if service.fails_over() {
                                failed_generation = Some(generation);
                            }
                            attempt += 1;
                            last_error = Some(e);
                            continue 'attempts;
                        }
                    }
                    if status == StatusCode::SWITCHING_PROTOCOLS {
                        if let (Some(client_upgrade), Some(conn)) =
                            (client_upgrade, response.body_mut().take_switched())
                        {
                            // A tunnel to a primary ends when it is demoted (`on_demotion`).
                            let demoted = if service.fails_over() {
                                picked.instance.session_token()
                            } else {
                                tokio_util::sync::CancellationToken::new()
                            };
                            spawn_tunnel(
                                client_upgrade,
                                conn,
                                cfg.timeouts.tunnel_idle,
                                addr,
                                demoted,
                            );
                        }
                        // The connection now belongs to the tunnel.
                        return Ok(Forwarded {
                            response,
                            upstream: UpstreamUse {
                                in_flight,
                                conn: None,
                                max_idle: 0,
                            },
                        });
                    }
                    headers::remove_hop_by_hop(response.headers_mut(), false, false);
                    return Ok(Forwarded {
                        response,
                        upstream: UpstreamUse {
                            in_flight,
                            conn: None,
                            max_idle: cfg.pool.max_idle_per_instance,
                        },
                    });
                }
                Ok(Err(SendError::Unsent { reused, body })) => {
                    // Nothing was written when the body comes back; otherwise the instance
                    // closed the connection before answering, which only an idempotent,
                    // replayable request may survive (RFC 9110 §9.2.2).
                    let never_written = body.is_some();
                    if let Some(body) = body {
                        plan.give_back(body);
                    }
                    // A pooled connection the instance had closed: nobody's fault, try a new one.
                    if reused && stale_rounds < 3 && (never_written || (idempotent && replayable)) {
                        stale_rounds += 1;
                        continue;
                    }
                    let e = ProxyError::new(
                        ProxyErrorKind::UpstreamReset,
                        format!("{addr}: connection closed before the request was sent"),
                    );
                    if reused {
                        break e.sent();
                    }
                    service.record_failure(&picked.instance, Some(e.kind), clock::now_ms());
                    break e;
                }
                Ok(Err(SendError::ClientBody(e))) => {
                    if e.is::<ClientBodyTimedOut>() {
                        return Err(ProxyError::new(
                            ProxyErrorKind::ClientBodyTimeout,
                            format!(
                                "client sent no body bytes for {}ms",
                                body_timeout.as_millis()
                            ),
                        ));
                    }
                    return Err(ProxyError::new(
                        ProxyErrorKind::ClientBodyError,
                        e.to_string(),
                    ));
                }
                Ok(Err(e)) => {
                    let kind = if matches!(e, SendError::BadResponse(_)) {
                        ProxyErrorKind::BadResponse
                    } else {
                        ProxyErrorKind::UpstreamReset
                    };
                    service.record_failure(&picked.instance, Some(kind), clock::now_ms());
                    break ProxyError::new(kind, format!("{addr}: {e}")).sent();
                }
                Err(_elapsed) => {
                    let kind = if Instant::now() >= deadline {
                        ProxyErrorKind::DeadlineExceeded
                    } else {
                        ProxyErrorKind::ResponseHeaderTimeout
                    };
                    service.record_failure(&picked.instance, Some(kind), clock::now_ms());
                    let err = ProxyError::new(
                        kind,
                        format!("{addr} sent no response head within {}ms", wait.as_millis()),
                    )
                    .sent();
                    if kind == ProxyErrorKind::DeadlineExceeded {
                        return Err(err);
                    }
                    break err;
                }
            }
        };
        drop(in_flight);
        if service.fails_over() {
            failed_generation = Some(generation);
        }
        if !may_retry(service, attempt, &err, idempotent, replayable, exchange) {
            return Err(err);
        }
        attempt += 1;
        last_error = Some(err);
    }
}

/// Whether one more attempt is allowed; counts it (and a refusal by the budget) if so.
fn may_retry(
    service: &Service,
    attempt: u32,
    err: &ProxyError,
    idempotent: bool,
    replayable: bool,
    exchange: &mut Exchange,
) -> bool {
    let safe = !err.request_sent || (idempotent && replayable);
    if !safe || attempt >= service.config.retries.attempts {
        return false;
    }
    // A request that never reached an instance adds no load when sent elsewhere, so only
    // retries of requests that were sent draw on the budget.
    if err.request_sent && !service.retry_budget.try_withdraw(clock::now_ms()) {
        service.metrics.budget_exhausted.increment(1);
        return false;
    }
    service.metrics.retries.increment(1);
    exchange.retries += 1;
    tracing::debug!(service = %service.name, error = %err, "retrying on another instance");
    true
}

/// A connection ready for a request: a pooled one that is still good, else a new one.
async fn ready_conn(
    service: &Service,
    in_flight: &InFlight,
    remaining: Duration,
) -> Result<UpConn, ProxyError> {
    let instance = &in_flight.instance;
    let cfg = &service.config;
    if let Some(conn) = instance
        .pool
        .checkout(clock::now_ms(), cfg.pool.idle_timeout)
    {
        return Ok(conn);
    }
    let connect_timeout = cfg.timeouts.connect.min(remaining);
    let conn = pool::connect(instance.addr, connect_timeout, service.tls.as_ref()).await?;
    service.metrics.new_connections.increment(1);
    Ok(conn)
}

/// Rewrites the request head for the instance: origin-form URI with the route's path rewrite,
/// HTTP/1.1, the route's Host rule; returns the fields added on the wire (`X-Forwarded-*`,
/// `x-request-id`, ...), which also decide which client fields are left out (hop-by-hop).
fn rewrite_head(
    parts: &mut Parts,
    route: &Route,
    cx: &ConnCtx,
    host: Option<HeaderValue>,
    request_id: &HeaderValue,
    upgrade: bool,
) -> Result<UpstreamFields, ProxyError> {
    let path = parts.uri.path();
    let new_path = route.rewrite_path(path);
    let unchanged = matches!(new_path, std::borrow::Cow::Borrowed(p) if p.len() == path.len());
    let uri = match parts.uri.path_and_query() {
        // Origin-form with the original bytes: no allocation.
        Some(pq) if unchanged => {
            let mut u = http::uri::Parts::default();
            u.path_and_query = Some(pq.clone());
            Uri::from_parts(u).map_err(|e| e.to_string())
        }
        _ => {
            let query = parts.uri.query();
            let mut s = String::with_capacity(new_path.len() + query.map_or(0, |q| q.len() + 1));
            s.push_str(&new_path);
            if let Some(q) = query {
                s.push('?');
                s.push_str(q);
            }
            Uri::try_from(s).map_err(|e| e.to_string())
        }
    }
    .map_err(|e| {
        ProxyError::new(
            ProxyErrorKind::ClientBodyError,
            format!("cannot rewrite the path: {e}"),
        )
    })?;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    let scheme = match &cx.tls {
        Some(tls) => {
            tls.listener.identity_headers(h, Some(tls));
            "https"
        }
        None => cx.listener.scheme,
    };
    route.rules.set_fixed_host(h);
    let mut fields =
        UpstreamFields::new(h, &cx.client_ip, scheme, host, request_id.clone(), upgrade);
    if route.rules.host_is_dst() {
        // Each attempt sets Host to its instance.
        fields.host = None;
    }
    Ok(fields)
}

/// Decides how the body travels. Small bodies of requests that may be retried are read first
/// (bounded by `retries.buffer_bytes` and the client stall timeout) so they can be replayed.
async fn plan_body(
    body: Incoming,
    cfg: &ServiceConfig,
    idempotent: bool,
    body_timeout: Duration,
    exchange: &mut Exchange,
) -> Result<BodyPlan, ProxyError> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok(BodyPlan::Empty);
    }
    let exact = body.size_hint().exact();
    let small = exact.is_some_and(|n| n <= cfg.retries.buffer_bytes as u64);
    if idempotent && cfg.retries.attempts > 0 && small {
        let bytes = match tokio::time::timeout(body_timeout, body.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                return Err(ProxyError::new(
                    ProxyErrorKind::ClientBodyError,
                    format!("reading the request body: {e}"),
                ));
            }
            Err(_) => {
                return Err(ProxyError::new(
                    ProxyErrorKind::ClientBodyTimeout,
                    format!(
                        "request body not received within {}ms",
                        body_timeout.as_millis()
                    ),
                ));
            }
        };
        exchange.bytes_in = BytesIn::Known(bytes.len() as u64);
        return Ok(BodyPlan::Buffered(bytes));
    }
    let counter = Arc::new(AtomicU64::new(0));
    exchange.bytes_in = BytesIn::Counted(Arc::clone(&counter));
    Ok(BodyPlan::Stream(Some(ClientStream::new(
        body,
        body_timeout,
        counter,
    ))))
}

fn request_hash(key: &HashKey, req: &Request<Incoming>, peer: SocketAddr) -> u64 {
    let by_ip = || match peer.ip() {
        std::net::IpAddr::V4(ip) => crate::balance::hash_bytes(&ip.octets()),
        std::net::IpAddr::V6(ip) => crate::balance::hash_bytes(&ip.octets()),
    };
    match key {
        HashKey::ClientIp => by_ip(),
        HashKey::Header(name) => req
            .headers()
            .get(name.as_str())
            .map_or_else(by_ip, |v| crate::balance::hash_bytes(v.as_bytes())),
        HashKey::Cookie(name) => {
            headers::cookie(req.headers(), name).map_or_else(by_ip, crate::balance::hash_bytes)
        }
    }
}

fn spawn_tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: UpConn,
    idle: Duration,
    addr: SocketAddr,
    demoted: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        let client = match client.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(upstream = %addr, error = %e, "protocol switch failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        // Bytes the instance sent right behind its `101` head belong to the new protocol.
        let (upstream, early) = upstream.into_parts();
        if !early.is_empty() {
            use tokio::io::AsyncWriteExt as _;
            if let Err(e) = client.write_all(&early).await {
                tracing::debug!(upstream = %addr, error = %e, "protocol switch failed");
                return;
            }
        }
        let stats = crate::tunnel::run(
            client,
            upstream,
            idle,
            crate::tunnel::UPGRADED_BUFFER,
            demoted,
        )
        .await;
        tracing::debug!(
            upstream = %addr,
            end = stats.end.as_str(),
            to_upstream = stats.a_to_b,
            to_client = stats.b_to_a,
            "upgraded connection closed"
        );
    });
}
