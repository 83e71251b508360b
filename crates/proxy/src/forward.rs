//! One request, from the client's head to the response head sent back: route, pick, connect,
//! send, retry, answer.
//!
//! Each attempt ends in an answer to hand on, or in an [`Outcome`] that the retry rules
//! (`retry.rs`, [`RetryPolicy::decide`]) turn into the next step: another instance, a wait for
//! the service's primary (`failover.rs`), or the error. Once response bytes have gone to the
//! client nothing is retried.

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
use crate::failover::{Awaited, FailedOn};
use crate::h1::OutgoingRequest;
use crate::h2_up::H2Settings;
use crate::headers::{RequestId, UpstreamFields};
use crate::link::{InstanceHead, InstanceResponse, UpLink};
use crate::listener_state::ConnCtx;
use crate::pool;
use crate::rate_limit::KeySource;
use crate::request_body::{ClientStream, RequestBody, UpBody};
use crate::request_policy::{PolicyRequest, PolicyStep, RoutePolicy};
use crate::response::{ProxyResponse, ResponseFields, ResponseHead, Switched};
use crate::retry::{self, Cost, Decision, Outcome, RetryPolicy};
use crate::route_rules::LocalAnswer;
use crate::routing::Route;
use crate::send_error::SendError;
use crate::trace::TraceContext;
use crate::upstream::{InFlight, Instance, Picked, Service, Tried};
use sluice_codec::request::RequestHead;
use sluice_codec::response::UpstreamHead;
use tokio::sync::OwnedSemaphorePermit;

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
    let trace = TraceContext::of(head);
    let rt = cx.listener.runtime.load();
    let host = head.host().and_then(|h| std::str::from_utf8(h).ok());
    let route = rt.table.lookup(host, head.path()).cloned();
    let body_timeout = rt.config.request_body_timeout;
    let log = rt.access_log.enabled().then(|| {
        Box::new((
            rt.access_log.clone(),
            RequestInfo::new(head, cx.peer, (&cx.listener.name, cx.tls.as_ref()), &trace),
        ))
    });
    drop(rt);
    let mut exchange = Exchange::new(start, cx.watch.clone(), request_id.clone(), log);
    let grpc = crate::grpc::is_grpc(head);
    let answer = Answer {
        request_id,
        grpc,
        trace,
    };

    if cx.tls.is_none()
        && let Some(key_authorization) = cx.listener.acme.answer(head.path())
    {
        return acme_answer(key_authorization, answer, exchange);
    }
    if let Some(err) = cx.listener.overload.refusal() {
        return local_error(&err, None, answer, exchange);
    }
    let Some(route) = route else {
        cx.listener.unrouted.increment(1);
        let err = ProxyError::new(
            ProxyErrorKind::NoRoute,
            "no route matches this host and path",
        );
        return local_error(&err, None, answer, exchange);
    };
    exchange.route = Some(Arc::clone(&route));
    let source = KeySource {
        client: cx.peer.ip(),
        head,
        identity: cx
            .tls
            .as_ref()
            .and_then(|t| t.info.identity.as_deref())
            .map(|id| id.fingerprint_sha256.as_str()),
    };
    if let Some(local) = route.local_answer(&source) {
        return local_answer(local, &route, answer, exchange);
    }
    let (edited, service, response_context) = match &route.policy {
        None => (None, Arc::clone(&route.service), None),
        Some(policy) => match ask_policy(policy, head, &route, cx) {
            PolicyStep::Forward {
                head,
                service,
                response_context,
            } => {
                let service = service.unwrap_or_else(|| Arc::clone(&route.service));
                (head, service, response_context)
            }
            PolicyStep::Reply(response) => return whole_response(response, answer, exchange),
            PolicyStep::Refuse(err) => {
                return local_error(&err, Some(&route.service.name), answer, exchange);
            }
        },
    };
    let head = edited.as_ref().unwrap_or(head);
    let mut total = service.config.timeouts.total;
    if grpc && let Some(asked) = crate::grpc::timeout(head) {
        total = total.min(asked);
    }
    let deadline = start + total;
    if let Some(gate) = &service.admission {
        match gate.admit(deadline.into()).await {
            Ok(place) => exchange.place = Some(place),
            Err(err) => return local_error(&err, Some(&service.name), answer, exchange),
        }
    }
    let ids = (&answer.request_id, &answer.trace);
    let prepared = Prepared::new(head, (&route, &service), cx, ids, (deadline, body_timeout));
    match forward(prepared, body, start, &mut exchange, timer).await {
        Ok(Forwarded {
            response,
            upstream,
            switched,
        }) => {
            exchange.status = response.status.as_u16();
            exchange.upstream = Some(upstream);
            let t = &service.config.timeouts;
            let body = DownBody::upstream(response.body, t.idle, deadline.into(), exchange);
            let fields = match response.head {
                InstanceHead::H1(head) => ResponseFields::Upstream(head),
                InstanceHead::H2(map) => ResponseFields::UpstreamH2(map),
            };
            let mut head = ResponseHead {
                status: response.status,
                fields,
            };
            if let (Some(policy), Some(context)) = (&route.policy, response_context) {
                let fields = crate::response::response_fields(&head);
                let status = head.status.as_u16();
                let edits = policy
                    .policies
                    .on_response(&policy.name, status, &fields, &context);
                crate::response::edit_response(&mut head, &edits);
            }
            ProxyResponse {
                head,
                request_id: answer.request_id,
                body,
                switched,
            }
        }
        Err(err) => {
            tracing::debug!(service = %service.name, error = %err, "request failed");
            local_error(&err, Some(&service.name), answer, exchange)
        }
    }
}

/// Asks the route's `request` policy about `head`.
fn ask_policy(policy: &RoutePolicy, head: &RequestHead, route: &Route, cx: &ConnCtx) -> PolicyStep {
    let info = cx.tls.as_ref().map(|t| &t.info);
    let request = PolicyRequest {
        head,
        scheme: if cx.tls.is_some() {
            "https"
        } else {
            cx.listener.scheme
        },
        peer: sluice_tls::PeerFacts {
            listener: &cx.listener.name,
            source: cx.peer,
            sni: info.and_then(|i| i.sni.as_deref()),
            alpn: info.and_then(|i| i.alpn.as_deref()),
            identity: info.and_then(|i| i.identity.as_deref()),
        },
        route: &route.name,
        service: &route.service.name,
        allowed_services: &policy.allowed_names,
    };
    crate::request_policy::ask(policy, &request)
}

/// What a request's answers carry: its id and trace, and whether Sluice's own is a gRPC
/// error (for a gRPC call).
struct Answer {
    request_id: RequestId,
    grpc: bool,
    trace: TraceContext,
}

/// The response for a local answer, logged and counted like every answer.
fn local_answer(
    local: LocalAnswer,
    route: &Route,
    answer: Answer,
    exchange: Exchange,
) -> ProxyResponse {
    // A redirect route without a service has an empty one: no `service` in the body.
    let service = Some(&*route.service.name).filter(|s| !s.is_empty());
    match local {
        LocalAnswer::Denied(err) => local_error(&err, service, answer, exchange),
        LocalAnswer::Limited(err, wait) => {
            let mut response = local_error(&err, service, answer, exchange);
            if let ResponseFields::Local(headers) = &mut response.head.fields {
                headers.insert(http::header::RETRY_AFTER, retry_after(wait));
            }
            response
        }
        LocalAnswer::Redirect(response) => whole_response(response, answer, exchange),
    }
}

/// Sluice's own complete response.
fn whole_response(
    response: http::Response<bytes::Bytes>,
    answer: Answer,
    mut exchange: Exchange,
) -> ProxyResponse {
    let (parts, bytes) = response.into_parts();
    exchange.status = parts.status.as_u16();
    ProxyResponse {
        head: ResponseHead {
            status: parts.status,
            fields: ResponseFields::Local(parts.headers),
        },
        request_id: answer.request_id,
        body: DownBody::local(bytes, exchange),
        switched: None,
    }
}

/// The answer to an ACME HTTP-01 challenge: the key authorization as plain text.
fn acme_answer(key_authorization: String, answer: Answer, exchange: Exchange) -> ProxyResponse {
    let mut response = http::Response::new(bytes::Bytes::from(key_authorization));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    whole_response(response, answer, exchange)
}

/// `Retry-After` in whole seconds (RFC 9110 §10.2.3), rounded up: never earlier than the
/// bucket allows.
fn retry_after(wait: Duration) -> http::HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    http::HeaderValue::from(secs.max(1))
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

/// Sluice's own answer for `err`: its status and JSON body, or for a gRPC call a gRPC error
/// (logged and counted under the error's HTTP status all the same, so that dashboards see it).
fn local_error(
    err: &ProxyError,
    service: Option<&str>,
    answer: Answer,
    mut exchange: Exchange,
) -> ProxyResponse {
    let Answer {
        request_id, grpc, ..
    } = answer;
    let ((status, headers), bytes) = if grpc {
        (crate::grpc::error_head(err), bytes::Bytes::new())
    } else {
        let (headers, bytes) = err.to_response(service, request_id.as_str());
        ((err.kind.status(), headers), bytes)
    };
    exchange.status = err.kind.status().as_u16();
    exchange.error = Some(err.kind);
    ProxyResponse {
        head: ResponseHead {
            status,
            fields: ResponseFields::Local(headers),
        },
        request_id,
        body: DownBody::local(bytes, exchange),
        switched: None,
    }
}

struct Forwarded {
    response: InstanceResponse,
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

/// What every attempt of one request shares: made once, before the first.
struct Prepared<'r> {
    head: &'r RequestHead,
    route: &'r Route,
    service: &'r Service,
    /// The path and query the instance sees.
    target: Cow<'r, str>,
    fields: UpstreamFields<'r>,
    /// The Host sent upstream when Sluice sets it: the route's fixed name, or the host of an
    /// absolute-form target or `:authority` (the client's `Host` field stays otherwise).
    /// `upstream_host = "dst"` sets it per attempt.
    route_host: Option<&'r [u8]>,
    /// The route lets this request switch protocols.
    upgrade: bool,
    hash: Option<u64>,
    deadline: Instant,
    body_timeout: Duration,
}

impl<'r> Prepared<'r> {
    /// `service` is the route's, or the one its policy picked.
    fn new(
        head: &'r RequestHead,
        (route, service): (&'r Route, &'r Service),
        cx: &'r ConnCtx,
        (request_id, trace): (&'r RequestId, &'r TraceContext),
        (deadline, body_timeout): (Instant, Duration),
    ) -> Self {
        let upgrade = route.rules.allows_upgrade(head);
        let scheme = if cx.tls.is_some() {
            "https"
        } else {
            cx.listener.scheme
        };
        let route_host: Option<&[u8]> = match route.rules.fixed_host() {
            Some(name) => Some(name.as_bytes()),
            None if head.host_from_target() || !head.has_host_field() => head.host(),
            None => None,
        };
        Self {
            head,
            route,
            service,
            target: upstream_target(head, route),
            fields: UpstreamFields::new(
                head,
                &cx.client_ip,
                (scheme, upgrade),
                (request_id, trace),
                cx.tls.as_deref(),
            ),
            route_host,
            upgrade,
            hash: service
                .balancer
                .hash_key()
                .map(|k| request_hash(k, head, cx.peer)),
            deadline,
            body_timeout,
        }
    }

    /// The Host field for an attempt on `instance`.
    fn host_for(&self, instance: &'r Instance) -> Option<&'r [u8]> {
        // An HTTP/1.0 request may come without any host; HTTP/1.1 upstream requires one
        // (RFC 9112 §3.2): the instance's address, as nginx sends its upstream's.
        if self.route.rules.host_is_dst()
            || (self.route_host.is_none() && !self.head.has_host_field())
        {
            Some(instance.host_header.as_bytes())
        } else {
            self.route_host
        }
    }
}

/// How one attempt ended.
enum AttemptEnd {
    /// The instance answered; `retryable` when its status is one of `retries.on_status`.
    Answered {
        forwarded: Forwarded,
        retryable: bool,
    },
    /// The attempt failed in a way the retry rules judge.
    Failed(Outcome, ProxyError),
    /// The request cannot go on, wherever it is sent (its client's body failed, its deadline
    /// passed).
    Fatal(ProxyError),
}

/// How an attempt ended, for the request.
enum Judged {
    /// The answer to hand on.
    Answer(Forwarded),
    /// For the retry rules; with the instance's answer when it was a retryable status (boxed:
    /// rare).
    Failed(Failure, Option<Box<Forwarded>>),
    /// For the client, whatever the rules.
    Fatal(ProxyError),
}

impl AttemptEnd {
    /// The answer to hand on, or what the retry rules are to judge.
    fn judge(self, addr: SocketAddr, generation: u64) -> Judged {
        let failed = |outcome, err| Failure {
            outcome,
            err,
            generation,
        };
        match self {
            AttemptEnd::Answered {
                forwarded,
                retryable: false,
            } => Judged::Answer(forwarded),
            AttemptEnd::Answered { forwarded, .. } => {
                let status = forwarded.response.status;
                let err = ProxyError::new(
                    ProxyErrorKind::UpstreamReset,
                    format!("{addr} answered {status}"),
                )
                .sent();
                let failure = failed(Outcome::RetryableStatus, err);
                Judged::Failed(failure, Some(Box::new(forwarded)))
            }
            AttemptEnd::Failed(outcome, err) => Judged::Failed(failed(outcome, err), None),
            AttemptEnd::Fatal(err) => Judged::Fatal(err),
        }
    }
}

/// The request's attempts so far.
#[derive(Default)]
struct Attempts {
    tried: Tried,
    retries: u32,
    /// Held from a failover's release until the new primary answered (failover.rs).
    release: Option<OwnedSemaphorePermit>,
    /// Why the last attempt failed: the answer when no instance is left to try.
    last_error: Option<ProxyError>,
}

/// Sends the request to the route's service, trying again as the retry rules (`retry.rs`)
/// decide, until an answer to hand on or an error.
async fn forward<'a>(
    prepared: Prepared<'_>,
    body: Option<RequestBody<'a>>,
    start: Instant,
    exchange: &mut Exchange,
    timer: &mut ConnTimer,
) -> Result<Forwarded, ProxyError> {
    let service = prepared.service;
    let cfg = &service.config;
    let deadline = prepared.deadline;
    service.retry_budget.deposit();
    let idempotent = is_idempotent(&prepared.head.method);
    let mut plan = plan_body(body, cfg, idempotent, prepared.body_timeout, exchange).await?;
    let request = retry::Request {
        idempotent,
        replayable: plan.replayable(),
    };
    let policy = RetryPolicy {
        attempts: cfg.retries.attempts,
        fails_over: service.fails_over(),
    };
    let mut attempts = Attempts::default();
    // A request without a body goes out right after it arrived: its arrival time serves as
    // the first attempt's start (one clock read less per request).
    let mut arrival = matches!(plan, BodyPlan::Empty).then_some(start);
    loop {
        let attempt_start = arrival.take().unwrap_or_else(Instant::now);
        let Some(picked) =
            service.pick(prepared.hash, &attempts.tried, clock::to_ms(attempt_start))
        else {
            // Boxed: rare, and its future would otherwise make every request's bigger.
            Box::pin(wait_for_any_primary(service, &mut attempts, deadline)).await?;
            continue;
        };
        if attempt_start >= deadline {
            return Err(deadline_passed());
        }
        attempts.tried.push(picked.index);
        let generation = service.primary_generation();
        // Not bound to a name first: a named future would be kept twice in this one's state.
        let end = crate::failover::holding(
            attempts.release.take(),
            attempt(
                &prepared,
                &mut plan,
                &picked,
                attempt_start,
                timer,
                exchange,
            ),
        )
        .await;
        let (failure, answer) = match end.judge(picked.instance.addr, generation) {
            Judged::Answer(forwarded) => return Ok(forwarded),
            Judged::Fatal(err) => return Err(err),
            Judged::Failed(failure, answer) => (failure, answer),
        };
        let rules = (policy, request);
        let step = next_step(service, rules, failure, deadline, &mut attempts, exchange);
        match Box::pin(step).await {
            Step::Again => {}
            // Without a retry left the instance's own answer goes to the client.
            Step::GiveUp(err) => return answer.map(|a| *a).ok_or(err),
            Step::NoPrimary => return Err(service.nothing_to_pick()),
        }
    }
}

/// A failed attempt, as the retry rules see it.
struct Failure {
    outcome: Outcome,
    err: ProxyError,
    /// The primary's generation when the attempt started.
    generation: u64,
}

/// What comes after a failed attempt.
enum Step {
    /// Another attempt.
    Again,
    /// Stop with this error (or the instance's own answer, when there is one).
    GiveUp(ProxyError),
    /// Stop: nobody is primary.
    NoPrimary,
}

/// Applies the retry rules to a failed attempt: pays for a retry, and in primary mode waits
/// for the primary it may go to.
async fn next_step(
    service: &Service,
    (policy, request): (RetryPolicy, retry::Request),
    failure: Failure,
    deadline: Instant,
    attempts: &mut Attempts,
    exchange: &mut Exchange,
) -> Step {
    let Failure {
        outcome,
        err,
        generation,
    } = failure;
    let deadline_in = || deadline.saturating_duration_since(Instant::now());
    let progress = retry::Progress {
        retries: attempts.retries,
        untried_left: attempts.tried.len() < service.instances().len(),
        remaining: deadline_in(),
    };
    let (next, cost) = match policy.decide(outcome, request, progress) {
        Decision::Stop => return Step::GiveUp(err),
        Decision::Retry(cost) => (None, cost),
        Decision::AwaitPrimary(next, cost) => (Some(next), cost),
    };
    if !charge(service, cost, &err, attempts, exchange) {
        return Step::GiveUp(err);
    }
    let Some(next) = next else {
        attempts.last_error = Some(err);
        return Step::Again;
    };
    let failed = FailedOn {
        generation,
        at_ms: clock::now_ms(),
        next,
    };
    match service.await_primary(Some(failed), deadline_in()).await {
        Awaited::Primary(release) => {
            attempts.tried.clear();
            attempts.release = release;
            Step::Again
        }
        Awaited::NoPrimary => Step::NoPrimary,
        Awaited::Unchanged => Step::GiveUp(err),
    }
}

/// For a request that found no instance to pick: in primary mode, waits for the service's
/// primary (start-up, or a failover under way); otherwise, or with nobody primary, the error.
async fn wait_for_any_primary(
    service: &Service,
    attempts: &mut Attempts,
    deadline: Instant,
) -> Result<(), ProxyError> {
    if !service.fails_over() || attempts.tried.len() > 0 {
        return Err(attempts
            .last_error
            .take()
            .unwrap_or_else(|| service.nothing_to_pick()));
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    match service.await_primary(None, remaining).await {
        Awaited::Primary(release) => {
            attempts.release = release;
            Ok(())
        }
        Awaited::NoPrimary | Awaited::Unchanged => Err(service.nothing_to_pick()),
    }
}

fn deadline_passed() -> ProxyError {
    ProxyError::new(
        ProxyErrorKind::DeadlineExceeded,
        "total request deadline passed",
    )
}

/// Pays for a retry: an attempt and, for a request that was sent, the service's retry budget.
/// `false` when the budget refuses (counted).
fn charge(
    service: &Service,
    cost: Cost,
    err: &ProxyError,
    attempts: &mut Attempts,
    exchange: &mut Exchange,
) -> bool {
    if cost.budget && !service.retry_budget.try_withdraw(clock::now_ms()) {
        service.metrics.budget_exhausted.increment(1);
        return false;
    }
    if cost.attempt {
        attempts.retries += 1;
        service.metrics.retries.increment(1);
        exchange.retries += 1;
    }
    tracing::debug!(service = %service.name, error = %err, "trying the request again");
    true
}

/// One attempt on `picked`: a connection (pooled, or new), the request, the response head.
/// A pooled connection that turns out closed before the request was written is nobody's
/// fault: up to a few are replaced by others on the same instance within the attempt.
async fn attempt<'a>(
    p: &Prepared<'_>,
    plan: &mut BodyPlan<'a>,
    picked: &Picked,
    attempt_start: Instant,
    timer: &mut ConnTimer,
    exchange: &mut Exchange,
) -> AttemptEnd {
    let service = p.service;
    let in_flight = InFlight::new(Arc::clone(&picked.instance));
    let now_ms = clock::to_ms(attempt_start);
    // In primary mode a member that loses the role (frozen, or demoted by its mirror) may
    // never answer, nor even accept: stop waiting on it, so the request can move.
    // Only a service that fails over watches for demotion: the token is a child of the
    // instance's, made under a lock all threads share.
    let demotion = service
        .fails_over()
        .then(|| picked.instance.session_token());
    let mut stale_rounds = 0;
    loop {
        let connecting = connection(service, &in_flight, now_ms, p.deadline);
        let conn = match service
            .unless_demoted(
                &picked.instance,
                demotion.as_ref(),
                attempt_start,
                connecting,
            )
            .await
        {
            Some(Ok(conn)) => conn,
            Some(Err(e)) => {
                service.record_failure(&picked.instance, Some(e.kind), now_ms);
                return AttemptEnd::Failed(Outcome::NotSent, e);
            }
            // Nothing was sent: as a connect that failed, free of the budget.
            None => return AttemptEnd::Failed(Outcome::NotSent, demoted(picked)),
        };
        let Some(body) = plan.for_attempt() else {
            let e = ProxyError::new(
                ProxyErrorKind::UpstreamReset,
                "request body already consumed",
            );
            return AttemptEnd::Fatal(e);
        };
        // A pooled connection was ready at once: the attempt's start is when the request
        // went out (no second clock read).
        let sent_at = if conn.is_fresh() {
            Instant::now()
        } else {
            attempt_start
        };
        let streamed = matches!(body, UpBody::Stream(_));
        let sending = send(p, conn, body, streamed, sent_at, picked, timer);
        let Some(result) = service
            .unless_demoted(&picked.instance, demotion.as_ref(), attempt_start, sending)
            .await
        else {
            return AttemptEnd::Failed(Outcome::Demoted, demoted(picked).sent());
        };
        match result {
            Some(Ok(response)) => {
                return answered(p, response, picked, in_flight, sent_at, exchange);
            }
            Some(Err(SendError::Unsent { reused, body })) => {
                // Nothing was written when the body comes back; otherwise the instance
                // closed the connection before answering, which only an idempotent,
                // replayable request may survive (RFC 9110 §9.2.2).
                let never_written = body.is_some();
                if let Some(body) = body {
                    plan.give_back(body);
                }
                let resendable = is_idempotent(&p.head.method) && plan.replayable();
                if reused && stale_rounds < 3 && (never_written || resendable) {
                    stale_rounds += 1;
                    continue;
                }
                let e = ProxyError::new(
                    ProxyErrorKind::UpstreamReset,
                    format!(
                        "{}: connection closed before the request was sent",
                        picked.instance.addr
                    ),
                );
                if reused {
                    return AttemptEnd::Failed(Outcome::Failed, e.sent());
                }
                service.record_failure(&picked.instance, Some(e.kind), clock::now_ms());
                return AttemptEnd::Failed(Outcome::NotSent, e);
            }
            Some(Err(e)) => return send_failed(p, e, picked),
            None => return head_timed_out(p, picked),
        }
    }
}

/// Sends the request on `conn` and reads the response head, under the head and total
/// deadlines: `None` when one passed first.
async fn send<'b>(
    p: &Prepared<'_>,
    conn: UpLink,
    body: UpBody<'b>,
    streamed: bool,
    sent_at: Instant,
    picked: &Picked,
    timer: &mut ConnTimer,
) -> Option<Result<InstanceResponse, SendError<'b>>> {
    let outgoing = OutgoingRequest {
        head: p.head,
        target: &p.target,
        fields: &p.fields,
        host: p.host_for(&picked.instance),
    };
    // `response_header` counts from the end of the request: at once for a body sent with the
    // head, after the upload for a streamed one (whose own stalls are bounded by
    // `request_body_timeout`); the total deadline bounds both.
    let wait = p.service.config.timeouts.response_header;
    let uploaded = AtomicBool::new(false);
    let head_deadline = if streamed {
        HeadDeadline::AfterUpload {
            uploaded: &uploaded,
            wait,
        }
    } else {
        HeadDeadline::At(sent_at + wait)
    };
    Within::new(
        timer,
        p.deadline,
        head_deadline,
        conn.exchange(&outgoing, body, &uploaded),
    )
    .await
}

/// The error of an attempt whose instance was demoted before it answered.
fn demoted(picked: &Picked) -> ProxyError {
    ProxyError::new(
        ProxyErrorKind::UpstreamReset,
        format!(
            "{} lost the primary role before answering",
            picked.instance.addr
        ),
    )
}

/// The instance answered: records the latency and health, and hands the answer (or a
/// switched connection) on.
fn answered(
    p: &Prepared<'_>,
    mut response: InstanceResponse,
    picked: &Picked,
    in_flight: InFlight,
    sent_at: Instant,
    exchange: &mut Exchange,
) -> AttemptEnd {
    let (service, cfg, addr) = (p.service, &p.service.config, picked.instance.addr);
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
    // A switch nobody asked for, or to another protocol than the one asked for and vetted by
    // the route: the client would be left speaking one protocol to a connection that speaks
    // another, past the route's rules.
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let asked = |head: &InstanceHead| match head {
        InstanceHead::H1(head) => switches_as_asked(p.head, head),
        // HTTP/2 has no `101`; h2 refuses one.
        InstanceHead::H2(_) => false,
    };
    let unasked_switch = switching && !(p.upgrade && asked(&response.head));
    if status.is_server_error() || unasked_switch {
        service.record_failure(&picked.instance, None, now_ms);
    } else {
        service.record_success(&picked.instance, now_ms);
    }
    if unasked_switch {
        let e = ProxyError::new(
            ProxyErrorKind::BadResponse,
            format!("{addr} switched to a protocol the request did not ask for"),
        );
        return AttemptEnd::Failed(Outcome::Failed, e.sent());
    }
    // The connection now belongs to the tunnel, or goes back to the pool after the body.
    let switched = switching
        .then(|| response.body.take_switched())
        .flatten()
        .map(|conn| {
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
    let max_idle = if switching {
        0
    } else {
        cfg.pool.max_idle_per_instance
    };
    AttemptEnd::Answered {
        retryable: cfg.retries.on_status.contains(&status.as_u16()),
        forwarded: Forwarded {
            response,
            upstream: UpstreamUse {
                in_flight,
                conn: None,
                max_idle,
            },
            switched,
        },
    }
}

/// An attempt whose exchange failed after the request was (at least partly) written.
fn send_failed(p: &Prepared<'_>, e: SendError<'_>, picked: &Picked) -> AttemptEnd {
    let addr = picked.instance.addr;
    let kind = match e {
        SendError::ClientBody(e) if e.is::<ClientBodyTimedOut>() => {
            return AttemptEnd::Fatal(ProxyError::new(
                ProxyErrorKind::ClientBodyTimeout,
                format!(
                    "client sent no body bytes for {}ms",
                    p.body_timeout.as_millis()
                ),
            ));
        }
        SendError::ClientBody(e) => {
            let e = ProxyError::new(ProxyErrorKind::ClientBodyError, e.to_string());
            return AttemptEnd::Fatal(e);
        }
        SendError::BadResponse(_) | SendError::BadChunk(_) => ProxyErrorKind::BadResponse,
        _ => ProxyErrorKind::UpstreamReset,
    };
    p.service
        .record_failure(&picked.instance, Some(kind), clock::now_ms());
    AttemptEnd::Failed(
        Outcome::Failed,
        ProxyError::new(kind, format!("{addr}: {e}")).sent(),
    )
}

/// An attempt that got no response head in time (or ran into the total deadline).
fn head_timed_out(p: &Prepared<'_>, picked: &Picked) -> AttemptEnd {
    let kind = if Instant::now() >= p.deadline {
        ProxyErrorKind::DeadlineExceeded
    } else {
        ProxyErrorKind::ResponseHeaderTimeout
    };
    p.service
        .record_failure(&picked.instance, Some(kind), clock::now_ms());
    let err = ProxyError::new(
        kind,
        format!(
            "{} sent no response head within {}ms of the request",
            picked.instance.addr,
            p.service.config.timeouts.response_header.as_millis()
        ),
    )
    .sent();
    if kind == ProxyErrorKind::DeadlineExceeded {
        return AttemptEnd::Fatal(err);
    }
    AttemptEnd::Failed(Outcome::Failed, err)
}

/// A way to the instance: for HTTP/1.1 a pooled connection that is still good, else a new one
/// under the connect timeout, paced by `max_connecting` (boxed: the connect and TLS handshake
/// future is large and most requests never need it); for HTTP/2 a stream on one of its
/// connections. Its failures never reached the instance.
async fn connection(
    service: &Service,
    in_flight: &InFlight,
    now_ms: u64,
    deadline: Instant,
) -> Result<UpLink, ProxyError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let connect_timeout = service.config.timeouts.connect.min(remaining);
    let protocol = service.config.protocol;
    if protocol.is_http2() {
        return Box::pin(h2_link(service, in_flight, connect_timeout)).await;
    }
    let pool = &in_flight.instance.pool;
    let idle_timeout = service.config.pool.idle_timeout;
    if let Some(conn) = pool.checkout(now_ms, idle_timeout) {
        return Ok(UpLink::H1(conn));
    }
    let target = pool::Target {
        addr: in_flight.instance.addr,
        tls: service.tls.as_ref(),
        connect_timeout,
        idle_timeout,
        max_idle: service.config.pool.max_idle_per_instance,
        max_connecting: service.config.pool.max_connecting,
        opened: &service.metrics.new_connections,
    };
    let got = Box::pin(pool.open(&target)).await?;
    if got.waited {
        service.metrics.connect_waits.increment(1);
    }
    Ok(UpLink::H1(got.conn))
}

/// A stream on one of the instance's HTTP/2 connections (`h2_up`).
async fn h2_link(
    service: &Service,
    in_flight: &InFlight,
    connect_timeout: Duration,
) -> Result<UpLink, ProxyError> {
    let cfg = &service.config;
    let tls = service.tls.as_ref();
    let settings = H2Settings {
        max_connections: cfg.pool.http2_max_connections,
        idle_timeout: cfg.pool.idle_timeout,
        connect_timeout,
        tls: tls.is_some(),
    };
    let link = in_flight
        .instance
        .h2
        .link(in_flight.instance.addr, tls, settings)
        .await?;
    if link.is_fresh() {
        service.metrics.new_connections.increment(1);
    }
    let scheme = if settings.tls { "https" } else { "http" };
    Ok(UpLink::H2(link, scheme))
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
