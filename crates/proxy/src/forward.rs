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

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use sluice_config::{HashKey, ServiceConfig};
use sluice_health::clock;

use crate::access_log::RequestInfo;
use crate::body::DownBody;
use crate::conn::ConnTimer;
use crate::error::{ClientBodyTimedOut, ProxyError, ProxyErrorKind};
use crate::exchange::{BytesIn, Exchange, UpstreamUse};
use crate::h1::{OutgoingRequest, SendError, UpConn, UpResponse};
use crate::headers::{RequestId, UpstreamFields};
use crate::listener_state::ConnCtx;
use crate::pool;
use crate::request_body::{ClientStream, RequestBody, UpBody};
use crate::response::{ProxyResponse, ResponseFields, ResponseHead, Switched};
use crate::route_rules::LocalAnswer;
use crate::routing::Route;
use crate::upstream::{InFlight, Service, Tried};
use sluice_codec::request::RequestHead;
use sluice_codec::response::UpstreamHead;

/// Serves one request: every problem becomes a response. `body` is `None` when the request
/// has none.
pub(crate) async fn handle(
    head: &RequestHead,
    body: Option<RequestBody<'_>>,
    cx: &ConnCtx,
    timer: &mut ConnTimer,
) -> ProxyResponse {
    let start = Instant::now();
    if let Some(watch) = &cx.watch {
        watch.request_started();
    }
    let request_id = RequestId::of(head);
    let rt = cx.listener.runtime.load();
    let host = head.host().and_then(|h| std::str::from_utf8(h).ok());
    let route = rt.table.lookup(host, head.path()).cloned();
    let body_timeout = rt.config.request_body_timeout;
    let log = rt.access_log.enabled().then(|| {
        Box::new((
            rt.access_log.clone(),
            RequestInfo::new(head, cx.peer, &cx.listener.name, cx.tls.as_ref()),
        ))
    });
    drop(rt);
    let mut exchange = Exchange::new(start, cx.watch.clone(), request_id.clone(), log);

    let Some(route) = route else {
        cx.listener.unrouted.increment(1);
        let err = ProxyError::new(
            ProxyErrorKind::NoRoute,
            "no route matches this host and path",
        );
        return local_error(&err, None, request_id, exchange);
    };
    exchange.route = Some(Arc::clone(&route));
    if let Some(answer) = route.local_answer(cx.peer.ip(), head.path(), head.query()) {
        return local_answer(answer, &route, request_id, exchange);
    }
    let service = Arc::clone(&route.service);
    let deadline = start + service.config.timeouts.total;
    match forward(
        head,
        body,
        &route,
        cx,
        &request_id,
        body_timeout,
        (start, deadline),
        &mut exchange,
        timer,
    )
    .await
    {
        Ok(Forwarded {
            response,
            upstream,
            switched,
        }) => {
            exchange.status = response.status.as_u16();
            exchange.upstream = Some(upstream);
            let t = &service.config.timeouts;
            let body = DownBody::upstream(response.body, t.idle, deadline.into(), exchange);
            ProxyResponse {
                head: ResponseHead {
                    status: response.status,
                    fields: ResponseFields::Upstream(response.head),
                },
                request_id,
                body,
                switched,
            }
        }
        Err(err) => {
            tracing::debug!(service = %service.name, error = %err, "request failed");
            local_error(&err, Some(&service.name), request_id, exchange)
        }
    }
}

/// The response for a local answer, logged and counted like every answer.
fn local_answer(
    answer: LocalAnswer,
    route: &Route,
    request_id: RequestId,
    mut exchange: Exchange,
) -> ProxyResponse {
    match answer {
        LocalAnswer::Denied(err) => {
            let service = Some(&*route.service.name).filter(|s| !s.is_empty());
            local_error(&err, service, request_id, exchange)
        }
        LocalAnswer::Redirect(response) => {
            let (parts, bytes) = response.into_parts();
            exchange.status = parts.status.as_u16();
            ProxyResponse {
                head: ResponseHead {
                    status: parts.status,
                    fields: ResponseFields::Local(parts.headers),
                },
                request_id,
                body: DownBody::local(bytes, exchange),
                switched: None,
            }
        }
    }
}

/// Whether a `101` names at least one protocol in its `Upgrade`, and only protocols the
/// request asked for (RFC 9110 §7.8).
fn switches_as_asked(request: &RequestHead, response: &UpstreamHead) -> bool {
    let mut named = response.upgrade_protocols().peekable();
    named.peek().is_some()
        && named.all(|p| {
            request
                .upgrade_protocols()
                .any(|asked| asked.eq_ignore_ascii_case(p))
        })
}

/// Sluice's own answer for `err`: its status and JSON body.
pub(crate) fn local_error(
    err: &ProxyError,
    service: Option<&str>,
    request_id: RequestId,
    mut exchange: Exchange,
) -> ProxyResponse {
    let (headers, bytes) = err.to_response(service, request_id.as_str());
    exchange.status = err.kind.status().as_u16();
    exchange.error = Some(err.kind);
    ProxyResponse {
        head: ResponseHead {
            status: err.kind.status(),
            fields: ResponseFields::Local(headers),
        },
        request_id,
        body: DownBody::local(bytes, exchange),
        switched: None,
    }
}

struct Forwarded {
    response: UpResponse,
    upstream: UpstreamUse,
    /// The instance switched protocols (`101`): its connection, for the tunnel.
    switched: Option<Box<Switched>>,
}

/// How the request body is sent, and whether it can be sent again.
enum BodyPlan<'a> {
    Empty,
    Buffered(Bytes),
    /// Streamed once; `None` after it was handed to an attempt.
    Stream(Option<ClientStream<'a>>),
}

impl<'a> BodyPlan<'a> {
    fn replayable(&self) -> bool {
        !matches!(self, BodyPlan::Stream(_))
    }

    fn for_attempt(&mut self) -> Option<UpBody<'a>> {
        match self {
            BodyPlan::Empty => Some(UpBody::Empty),
            BodyPlan::Buffered(b) => Some(UpBody::Full(Some(b.clone()))),
            BodyPlan::Stream(s) => s.take().map(UpBody::Stream),
        }
    }

    fn give_back(&mut self, body: UpBody<'a>) {
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
async fn forward<'a>(
    head: &RequestHead,
    body: Option<RequestBody<'a>>,
    route: &Route,
    cx: &ConnCtx,
    request_id: &RequestId,
    body_timeout: Duration,
    (start, deadline): (Instant, Instant),
    exchange: &mut Exchange,
    timer: &mut ConnTimer,
) -> Result<Forwarded, ProxyError> {
    let service = &*route.service;
    let cfg = &service.config;
    service.retry_budget.deposit();

    let upgrade = route.rules.allows_upgrade(head);
    let idempotent = is_idempotent(&head.method);
    let hash = service
        .balancer
        .hash_key()
        .map(|k| request_hash(k, head, cx.peer));

    let target = upstream_target(head, route);
    let scheme = if cx.tls.is_some() {
        "https"
    } else {
        cx.listener.scheme
    };
    let fields = UpstreamFields::new(
        head,
        &cx.client_ip,
        (scheme, upgrade),
        request_id,
        cx.tls.as_deref(),
    );
    // The Host sent upstream when Sluice sets it: the route's fixed name, or the host of an
    // absolute-form target or `:authority` (the client's `Host` field stays otherwise).
    // `upstream_host = "dst"` sets it per attempt.
    let route_host: Option<&[u8]> = match route.rules.fixed_host() {
        Some(name) => Some(name.as_bytes()),
        None if head.host_from_target() || !head.has_host_field() => head.host(),
        None => None,
    };
    let mut plan = plan_body(body, cfg, idempotent, body_timeout, exchange).await?;
    let replayable = plan.replayable();

    let mut tried = Tried::default();
    let mut attempt: u32 = 0;
    let mut last_error: Option<ProxyError> = None;
    let mut failed_generation: Option<u64> = None;
    // A request without a body goes out right after it arrived: its arrival time serves as
    // the first attempt's start (one clock read less per request).
    let mut arrival = matches!(plan, BodyPlan::Empty).then_some(start);
    'attempts: loop {
        let attempt_start = arrival.take().unwrap_or_else(Instant::now);
        let now_ms = clock::to_ms(attempt_start);
        let Some(picked) = service.pick(hash, &tried, now_ms) else {
            // An attempt just failed on the primary: wait (bounded) for the failover the
            // probes are now checking. Finding no primary at all is answered at once.
            let remaining = deadline.saturating_duration_since(Instant::now());
            // Boxed: rare, and its future would otherwise make every request's bigger.
            if Box::pin(service.wait_for_primary(&mut failed_generation, remaining)).await {
                continue;
            }
            return Err(last_error.unwrap_or_else(|| service.nothing_to_pick()));
        };
        tried.push(picked.index);
        if attempt_start >= deadline {
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
            let conn = match pooled_conn(service, &in_flight, now_ms) {
                Some(c) => c,
                // No idle connection: a new one. Boxed, as the connect (and TLS handshake)
                // future is large and most requests never need it.
                None => match Box::pin(new_conn(service, &in_flight, deadline)).await {
                    Ok(c) => c,
                    Err(e) => {
                        service.record_failure(&picked.instance, Some(e.kind), now_ms);
                        break e;
                    }
                },
            };
            let Some(body) = plan.for_attempt() else {
                return Err(last_error.unwrap_or_else(|| {
                    ProxyError::new(
                        ProxyErrorKind::UpstreamReset,
                        "request body already consumed",
                    )
                }));
            };
            let outgoing = OutgoingRequest {
                head,
                target: &target,
                fields: &fields,
                // An HTTP/1.0 request may come without any host; HTTP/1.1 upstream requires
                // one (RFC 9112 §3.2): the instance's address, as nginx sends its upstream's.
                host: if route.rules.host_is_dst()
                    || (route_host.is_none() && !head.has_host_field())
                {
                    Some(picked.instance.host_header.as_bytes())
                } else {
                    route_host
                },
            };
            // A pooled connection was ready at once: the attempt's start is when the request
            // went out (no second clock read).
            let sent_at = if conn.is_fresh() {
                Instant::now()
            } else {
                attempt_start
            };
            // `response_header` counts from the end of the request: at once for a body sent
            // with the head, after the upload for a streamed one (whose own stalls are bounded
            // by `request_body_timeout`); the total deadline bounds both.
            let wait = cfg.timeouts.response_header;
            let uploaded = AtomicBool::new(false);
            let head_deadline = if matches!(body, UpBody::Stream(_)) {
                HeadDeadline::AfterUpload {
                    uploaded: &uploaded,
                    wait,
                }
            } else {
                HeadDeadline::At(sent_at + wait)
            };
            let exchange_head = Within::new(
                timer,
                deadline,
                head_deadline,
                conn.exchange(&outgoing, body, &uploaded),
            );
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
                Some(Ok(mut response)) => {
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
                    let status = response.status;
                    // A switch nobody asked for, or to another protocol than the one asked
                    // for and vetted by the route: the client would be left speaking one
                    // protocol to a connection that speaks another, past the route's rules.
                    let unasked_switch = status == StatusCode::SWITCHING_PROTOCOLS
                        && !(upgrade && switches_as_asked(head, &response.head));
                    if status.is_server_error() || unasked_switch {
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
                    if unasked_switch {
                        break ProxyError::new(
                            ProxyErrorKind::BadResponse,
                            format!("{addr} switched to a protocol the request did not ask for"),
                        )
                        .sent();
                    }
                    if status == StatusCode::SWITCHING_PROTOCOLS {
                        // The connection now belongs to the tunnel.
                        let switched = response.body.take_switched().map(|conn| {
                            Box::new(Switched {
                                conn,
                                idle: cfg.timeouts.tunnel_idle,
                                addr,
                                // A tunnel to a primary ends when it is demoted (`on_demotion`).
                                demoted: if service.fails_over() {
                                    picked.instance.session_token()
                                } else {
                                    tokio_util::sync::CancellationToken::new()
                                },
                            })
                        });
                        return Ok(Forwarded {
                            response,
                            upstream: UpstreamUse {
                                in_flight,
                                conn: None,
                                max_idle: 0,
                            },
                            switched,
                        });
                    }
                    return Ok(Forwarded {
                        response,
                        upstream: UpstreamUse {
                            in_flight,
                            conn: None,
                            max_idle: cfg.pool.max_idle_per_instance,
                        },
                        switched: None,
                    });
                }
                Some(Err(SendError::Unsent { reused, body })) => {
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
                Some(Err(SendError::ClientBody(e))) => {
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
                Some(Err(e)) => {
                    let kind = if matches!(e, SendError::BadResponse(_) | SendError::BadChunk(_)) {
                        ProxyErrorKind::BadResponse
                    } else {
                        ProxyErrorKind::UpstreamReset
                    };
                    service.record_failure(&picked.instance, Some(kind), clock::now_ms());
                    break ProxyError::new(kind, format!("{addr}: {e}")).sent();
                }
                None => {
                    let kind = if Instant::now() >= deadline {
                        ProxyErrorKind::DeadlineExceeded
                    } else {
                        ProxyErrorKind::ResponseHeaderTimeout
                    };
                    service.record_failure(&picked.instance, Some(kind), clock::now_ms());
                    let err = ProxyError::new(
                        kind,
                        format!(
                            "{addr} sent no response head within {}ms of the request",
                            wait.as_millis()
                        ),
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

/// A pooled connection that is still good, if there is one.
fn pooled_conn(service: &Service, in_flight: &InFlight, now_ms: u64) -> Option<Box<UpConn>> {
    in_flight
        .instance
        .pool
        .checkout(now_ms, service.config.pool.idle_timeout)
}

/// A new connection to the instance, under the connect timeout.
async fn new_conn(
    service: &Service,
    in_flight: &InFlight,
    deadline: Instant,
) -> Result<Box<UpConn>, ProxyError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let connect_timeout = service.config.timeouts.connect.min(remaining);
    let conn = pool::connect(
        in_flight.instance.addr,
        connect_timeout,
        service.tls.as_ref(),
    )
    .await?;
    service.metrics.new_connections.increment(1);
    Ok(conn)
}

/// When the wait for a response head ends (capped by the request's total deadline).
enum HeadDeadline<'u> {
    At(Instant),
    /// `wait` after `uploaded` is set: when the request body has gone to the instance.
    AfterUpload {
        uploaded: &'u AtomicBool,
        wait: Duration,
    },
}

pin_project_lite::pin_project! {
    /// `fut`'s output, or `None` if the head deadline or the total deadline passes first. The
    /// deadline is kept on the connection's timer, which is re-armed only when it must fire
    /// earlier than it is set to (see [`ConnTimer`]): a request on a keep-alive connection
    /// does not touch the timer wheel.
    struct Within<'t, 'u, F> {
        #[pin]
        fut: F,
        timer: &'t mut ConnTimer,
        deadline: tokio::time::Instant,
        pending: Option<(&'u AtomicBool, Duration)>,
    }
}

impl<'t, 'u, F: Future> Within<'t, 'u, F> {
    fn new(timer: &'t mut ConnTimer, total: Instant, head: HeadDeadline<'u>, fut: F) -> Self {
        let (deadline, pending) = match head {
            HeadDeadline::At(at) => (at.min(total), None),
            HeadDeadline::AfterUpload { uploaded, wait } => (total, Some((uploaded, wait))),
        };
        Self {
            fut,
            timer,
            deadline: tokio::time::Instant::from_std(deadline),
            pending,
        }
    }
}

impl<F: Future> Future for Within<'_, '_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        if let Some((uploaded, wait)) = *this.pending
            && uploaded.load(Relaxed)
        {
            *this.deadline = (tokio::time::Instant::now() + wait).min(*this.deadline);
            *this.pending = None;
        }
        this.timer.poll_until(*this.deadline, cx).map(|()| None)
    }
}

/// The path and query the instance sees: the client's with the route's `strip`/`prepend`
/// applied (borrowed when nothing changes, the usual case).
fn upstream_target<'h>(head: &'h RequestHead, route: &Route) -> Cow<'h, str> {
    let path = head.path();
    let new_path = route.rewrite_path(path);
    if let Cow::Borrowed(p) = &new_path
        && p.len() == path.len()
    {
        return Cow::Borrowed(head.target());
    }
    let query = head.query();
    let mut s = String::with_capacity(new_path.len() + query.map_or(0, |q| q.len() + 1));
    s.push_str(&new_path);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    Cow::Owned(s)
}

/// Decides how the body travels. Small bodies of requests that may be retried are read first
/// (bounded by `retries.buffer_bytes` and the client stall timeout) so they can be replayed.
async fn plan_body<'a>(
    body: Option<RequestBody<'a>>,
    cfg: &ServiceConfig,
    idempotent: bool,
    body_timeout: Duration,
    exchange: &mut Exchange,
) -> Result<BodyPlan<'a>, ProxyError> {
    use http_body::Body as _;
    let Some(body) = body.filter(|b| !b.is_end_stream()) else {
        return Ok(BodyPlan::Empty);
    };
    let exact = body.size_hint().exact();
    let small = exact.is_some_and(|n| n <= cfg.retries.buffer_bytes as u64);
    if idempotent && cfg.retries.attempts > 0 && small {
        // Boxed: only requests with a small replayable body take this path.
        let bytes = match Box::pin(tokio::time::timeout(body_timeout, body.collect())).await {
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

fn request_hash(key: &HashKey, head: &RequestHead, peer: SocketAddr) -> u64 {
    let by_ip = || match peer.ip() {
        std::net::IpAddr::V4(ip) => crate::balance::hash_bytes(&ip.octets()),
        std::net::IpAddr::V6(ip) => crate::balance::hash_bytes(&ip.octets()),
    };
    match key {
        HashKey::ClientIp => by_ip(),
        HashKey::Header(name) => head
            .get(name)
            .map_or_else(by_ip, crate::balance::hash_bytes),
        HashKey::Cookie(name) => head
            .cookie(name)
            .map_or_else(by_ip, crate::balance::hash_bytes),
    }
}
