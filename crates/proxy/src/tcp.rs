//! TCP listeners: every connection goes to one service. Pick an instance (the service's
//! balancer; "least request" counts open connections), connect within the connect timeout —
//! falling back to the next instance on failure — optionally send a PROXY protocol header, then
//! relay bytes both ways until both sides close, the idle timeout passes, the instance loses
//! the primary role (`on_demotion = "close"`), or the listener drains.
//!
//! With `serve = "primary"`, connections wait for the primary as requests do (`failover.rs`):
//! a connect failure on the primary kicks the service's probes and waits for the member they
//! promote; with nobody primary after a fresh probe round the connection is closed. A session
//! on which no byte has passed either way moves to the new primary when its member is demoted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use metrics::{Counter, counter};
use serde::Serialize;
use sluice_config::{HashKey, TcpListenerConfig};
use sluice_health::clock;
use sluice_tls::MaybeTls;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::access_log::{AccessLog, rfc3339_now};
use crate::error::ProxyErrorKind;
use crate::failover::{Awaited, FailedOn};
use crate::metrics::{
    SNI_REJECTED_TOTAL, SNI_ROUTED_TOTAL, TCP_BYTES_TOTAL, TCP_CONNECTIONS_TOTAL,
};
use crate::retry::{self, Decision, Outcome, RetryPolicy};
use crate::tls::{ConnTls, TlsLog};
use crate::upstream::{InFlight, Instance, Service, Tried};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// What a TCP listener's connections read; replaced whole on reload.
#[derive(Debug)]
pub(crate) struct TcpRuntime {
    pub(crate) config: TcpListenerConfig,
    /// Every connection's service; with SNI routes, the default (`None`: close unmatched).
    pub(crate) service: Option<Arc<Service>>,
    /// `[[listener.sni]]` entries with their services (empty: no passthrough routing).
    pub(crate) sni: Vec<(sluice_config::HostMatch, Arc<Service>)>,
}

/// The ClientHello a passthrough listener read before choosing the service.
#[derive(Debug)]
pub(crate) struct Passthrough {
    pub(crate) hello: crate::sni::Hello,
}

/// Per-listener TCP counters.
#[derive(Debug, Clone)]
pub(crate) struct TcpMetrics {
    ok: Counter,
    no_instance: Counter,
    connect_failed: Counter,
    upstream_bytes: Counter,
    downstream_bytes: Counter,
}

impl TcpMetrics {
    pub(crate) fn new(listener: &str) -> Self {
        let outcome = |o: &'static str| counter!(TCP_CONNECTIONS_TOTAL, "listener" => listener.to_owned(), "outcome" => o);
        let bytes = |d: &'static str| counter!(TCP_BYTES_TOTAL, "listener" => listener.to_owned(), "direction" => d);
        Self {
            ok: outcome("ok"),
            no_instance: outcome("no_instance"),
            connect_failed: outcome("connect_failed"),
            upstream_bytes: bytes("upstream"),
            downstream_bytes: bytes("downstream"),
        }
    }
}

/// One TCP session's access-log line.
#[derive(Debug, Serialize)]
struct TcpEntry<'a> {
    time: String,
    listener: &'a str,
    protocol: &'static str,
    client: SocketAddr,
    service: &'a str,
    upstream: Option<String>,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    connect_attempts: u32,
    outcome: &'static str,
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<TlsLog<'a>>,
    /// The server name a passthrough listener routed on.
    #[serde(skip_serializing_if = "Option::is_none")]
    sni: Option<&'a str>,
}

/// How often one session may move to a new primary before a byte passed (each move needs a
/// demotion, so this only bounds a flapping mirror).
const MAX_MOVES: u32 = 3;

/// Serves one accepted TCP connection.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    client: MaybeTls<TcpStream>,
    local: SocketAddr,
    tls: Option<&ConnTls>,
    peer: SocketAddr,
    listener: &str,
    (runtime, service): (&TcpRuntime, &Arc<Service>),
    passthrough: Option<&Passthrough>,
    metrics: &TcpMetrics,
    log: &AccessLog,
    drain: CancellationToken,
) {
    let started = Instant::now();
    let sni = passthrough.and_then(|p| p.hello.sni.as_deref());
    let hello: &[u8] = passthrough.map_or(&[], |p| &p.hello.bytes);
    let log_session = |upstream: Option<SocketAddr>,
                       bytes: (u64, u64),
                       attempts: u32,
                       outcome: &'static str,
                       error: Option<String>| {
        log_session(
            log, tls, sni, listener, peer, service, upstream, bytes, started, attempts, outcome,
            error,
        );
    };
    let session = Session {
        service,
        runtime,
        ends: (peer, local),
        listener,
    };
    let Some((connected, demoted)) =
        establish(&session, &client, hello, metrics, &log_session).await
    else {
        return;
    };
    metrics.ok.increment(1);
    let Connected {
        stream: upstream,
        in_flight,
        attempts,
        ..
    } = connected;
    let addr = in_flight.instance.addr;
    let idle = runtime.config.idle_timeout;
    // `[service.tls]`: TLS to the instance, after the (plain) PROXY header as haproxy does.
    let stats = match &service.tls {
        None => relay(client, upstream, hello, idle, &demoted, &drain).await,
        Some(client_tls) => {
            let handshake = tokio::time::timeout(
                service.config.timeouts.connect,
                client_tls.connect(addr.ip(), upstream),
            )
            .await;
            match handshake {
                Ok(Ok(upstream)) => relay(client, upstream, hello, idle, &demoted, &drain).await,
                failed => {
                    let detail = match failed {
                        Ok(Err(e)) => format!("TLS handshake with {addr}: {e}"),
                        _ => format!("TLS handshake with {addr}: timed out"),
                    };
                    tracing::info!(listener, client = %peer, service = %service.name, %detail, "TCP connection closed");
                    log_session(
                        Some(addr),
                        (0, 0),
                        attempts,
                        "upstream_tls_failed",
                        Some(detail),
                    );
                    return;
                }
            }
        }
    };
    metrics.upstream_bytes.increment(stats.a_to_b);
    metrics.downstream_bytes.increment(stats.b_to_a);
    let outcome = if demoted.is_cancelled() {
        "demoted"
    } else {
        stats.end.as_str()
    };
    log_session(
        Some(addr),
        (stats.a_to_b, stats.b_to_a),
        attempts,
        outcome,
        None,
    );
    drop(in_flight);
}

/// Serves one connection of a passthrough (`[[listener.sni]]`) listener: reads the
/// ClientHello, picks the service by its server name (the listener's `service` when there is no
/// name or no match), then serves it as any TCP connection with the hello sent first. Input
/// that is not a usable ClientHello is closed, logged with the reason and counted.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_passthrough(
    mut client: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    listener: &str,
    runtime: &TcpRuntime,
    metrics: &TcpMetrics,
    log: &AccessLog,
    drain: CancellationToken,
) {
    let Some(sni) = &runtime.config.sni else {
        return;
    };
    let rejected = |reason: &'static str| {
        counter!(SNI_REJECTED_TOTAL, "listener" => listener.to_owned(), "reason" => reason)
            .increment(1);
    };
    let hello = match crate::sni::read_hello(&mut client, sni.max_bytes, sni.timeout).await {
        Ok(hello) => hello,
        Err(e) => {
            rejected(e.reason());
            tracing::info!(listener, client = %peer, reason = e.reason(), detail = %e, "TLS passthrough: no usable ClientHello; connection closed");
            return;
        }
    };
    let routed = hello
        .sni
        .as_deref()
        .and_then(|name| crate::sni::lookup(&runtime.sni, name));
    let Some(service) = routed.or(runtime.service.as_ref()) else {
        rejected("no_route");
        tracing::info!(
            listener,
            client = %peer,
            reason = "no_route",
            sni = hello.sni.as_deref().unwrap_or("<none>"),
            "TLS passthrough: no [[listener.sni]] entry matches and the listener has no default `service`; connection closed"
        );
        return;
    };
    counter!(SNI_ROUTED_TOTAL, "listener" => listener.to_owned(), "service" => service.name.to_string(), "match" => if routed.is_some() { "sni" } else { "default" })
        .increment(1);
    serve(
        MaybeTls::Plain(client),
        local,
        None,
        peer,
        listener,
        (runtime, service),
        Some(&Passthrough { hello }),
        metrics,
        log,
        drain,
    )
    .await;
}

/// What a TCP session is: its service, listener and ends (client, local address).
#[derive(Clone, Copy)]
struct Session<'s> {
    service: &'s Service,
    runtime: &'s TcpRuntime,
    ends: (SocketAddr, SocketAddr),
    listener: &'s str,
}

/// Connects a session to an instance and sends the PROXY header. In primary mode a plain
/// session waits for its first byte, and moves to the new primary if its member is demoted or
/// closes before one passes (`first_byte`). `None` once a failure was logged and counted.
async fn establish(
    session: &Session<'_>,
    client: &MaybeTls<TcpStream>,
    hello: &[u8],
    metrics: &TcpMetrics,
    log_session: &impl Fn(Option<SocketAddr>, (u64, u64), u32, &'static str, Option<String>),
) -> Option<(Connected, CancellationToken)> {
    let Session {
        service,
        runtime,
        ends: (peer, local),
        listener,
    } = *session;
    let mut moves = 0;
    loop {
        let connected = match connect(service, peer).await {
            Ok(connected) => connected,
            Err((kind, detail, attempts)) => {
                match kind {
                    ProxyErrorKind::NoInstance | ProxyErrorKind::NoPrimary => {
                        metrics.no_instance.increment(1)
                    }
                    _ => metrics.connect_failed.increment(1),
                }
                tracing::debug!(listener, client = %peer, service = %service.name, %detail, "TCP connection refused");
                log_session(None, (0, 0), attempts, kind.as_str(), Some(detail));
                // Dropping the client socket closes it: the "refusal" a TCP client sees.
                return None;
            }
        };
        // Closed by demotion of the instance, or by the end of a drain.
        let demoted = connected.in_flight.instance.session_token();
        let mut connected = connected;
        let addr = connected.in_flight.instance.addr;
        if let Some(header) =
            crate::proxy_protocol::header(runtime.config.proxy_protocol, peer, local)
            && let Err(e) = connected.stream.write_all(&header).await
        {
            let detail = format!("sending the PROXY header: {e}");
            log_session(
                Some(addr),
                (0, 0),
                connected.attempts,
                "error",
                Some(detail),
            );
            return None;
        }
        // Only a plain session on which nothing has passed can move (`first_byte`).
        let movable =
            service.fails_over() && hello.is_empty() && service.tls.is_none() && moves < MAX_MOVES;
        let instance = &*connected.in_flight.instance;
        if let (true, MaybeTls::Plain(plain)) = (movable, &client)
            && let Start::Demoted =
                first_byte(service, (instance, &demoted), plain, &connected.stream).await
        {
            moves += 1;
            tracing::info!(listener, client = %peer, service = %service.name, from = %addr, generation = connected.generation, "TCP session moved: its primary was demoted or closed before any byte passed");
            continue;
        }
        return Some((connected, demoted));
    }
}

/// Relays until both sides close, the idle timeout, a demotion or the end of a drain.
/// `hello`: bytes already read from the client (a passthrough ClientHello), sent first.
async fn relay<U>(
    client: MaybeTls<TcpStream>,
    mut upstream: U,
    hello: &[u8],
    idle: std::time::Duration,
    demoted: &CancellationToken,
    drain: &CancellationToken,
) -> crate::tunnel::TunnelStats
where
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if !hello.is_empty()
        && let Err(e) = upstream.write_all(hello).await
    {
        tracing::debug!(error = %e, "sending the ClientHello to the instance failed");
        return crate::tunnel::TunnelStats {
            a_to_b: 0,
            b_to_a: 0,
            end: crate::tunnel::TunnelEnd::Error,
        };
    }
    let cancel = CancellationToken::new();
    let relay = crate::tunnel::run(
        client,
        upstream,
        idle,
        crate::tunnel::TCP_SESSION_BUFFER,
        cancel.clone(),
    );
    tokio::pin!(relay);
    let mut stats = tokio::select! {
        stats = &mut relay => stats,
        () = demoted.cancelled() => { cancel.cancel(); relay.await }
        () = drain.cancelled() => { cancel.cancel(); relay.await }
    };
    stats.a_to_b += hello.len() as u64;
    stats
}

/// A connection to an instance, with what it took.
struct Connected {
    stream: TcpStream,
    in_flight: InFlight,
    attempts: u32,
    /// The primary's generation when it was picked.
    generation: u64,
}

/// Why no connection could be made: the kind, a detail and the attempts made.
type NotConnected = (ProxyErrorKind, String, u32);

/// Connects to an instance of `service`, trying others on failure (and, in primary mode,
/// waiting for the primary) as the retry rules (`retry.rs`) decide. A connection counts as a
/// request that may be sent again: nothing has passed on it.
async fn connect(service: &Service, peer: SocketAddr) -> Result<Connected, NotConnected> {
    let hash = tcp_hash(service, peer);
    let deadline = Instant::now() + service.config.timeouts.total;
    let mut tries = Tries::default();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Some(picked) = service.pick(hash, &tries.tried, clock::now_ms()) else {
            if let Some((kind, detail)) = tries.last_error.take() {
                return Err((kind, detail, tries.attempts));
            }
            if !service.fails_over() {
                let e = service.nothing_to_pick();
                return Err((e.kind, e.detail, tries.attempts));
            }
            let waited = service.await_primary(None, remaining).await;
            tries.release = awaited(waited, service, tries.attempts)?;
            continue;
        };
        tries.tried.push(picked.index);
        tries.attempts += 1;
        let generation = service.primary_generation();
        let in_flight = InFlight::new(Arc::clone(&picked.instance));
        let demotion = picked.instance.session_token();
        let connecting = connect_once(service, &picked.instance, remaining);
        let connecting = service.unless_demoted(
            &picked.instance,
            Some(&demotion),
            Instant::now(),
            connecting,
        );
        // A failover's release permit, held while the new primary accepts (failover.rs).
        let connected = crate::failover::holding(tries.release.take(), connecting)
            .await
            .unwrap_or_else(|| {
                let detail = format!("{} lost the primary role", picked.instance.addr);
                Err((ProxyErrorKind::ConnectFailed, detail))
            });
        match connected {
            Ok(stream) => {
                return Ok(Connected {
                    stream,
                    in_flight,
                    attempts: tries.attempts,
                    generation,
                });
            }
            Err((kind, detail)) => {
                service.record_failure(&picked.instance, Some(kind), clock::now_ms());
                let failed = (kind, detail, generation);
                after_failure(service, &mut tries, failed, deadline).await?;
            }
        }
    }
}

/// A session's connect attempts so far.
#[derive(Default)]
struct Tries {
    tried: Tried,
    attempts: u32,
    /// Retries counted against `retries.attempts`.
    retries: u32,
    /// Held from a failover's release until the new primary accepted (failover.rs).
    release: Option<OwnedSemaphorePermit>,
    last_error: Option<(ProxyErrorKind, String)>,
}

/// Applies the retry rules after a failed connect (it reached nothing, so it may go anywhere):
/// `Ok` to try again, in primary mode after waiting for the primary.
async fn after_failure(
    service: &Service,
    tries: &mut Tries,
    (kind, detail, generation): (ProxyErrorKind, String, u64),
    deadline: Instant,
) -> Result<(), NotConnected> {
    let policy = RetryPolicy {
        attempts: service.config.retries.attempts,
        fails_over: service.fails_over(),
    };
    let request = retry::Request {
        idempotent: true,
        replayable: true,
    };
    let progress = retry::Progress {
        retries: tries.retries,
        untried_left: tries.tried.len() < service.instances().len(),
        remaining: deadline.saturating_duration_since(Instant::now()),
    };
    let (next, cost) = match policy.decide(Outcome::NotSent, request, progress) {
        Decision::Stop => return Err((kind, detail, tries.attempts)),
        Decision::Retry(cost) => (None, cost),
        Decision::AwaitPrimary(next, cost) => (Some(next), cost),
    };
    tries.retries += u32::from(cost.attempt);
    let Some(next) = next else {
        tries.last_error = Some((kind, detail));
        return Ok(());
    };
    let failed = FailedOn {
        generation,
        at_ms: clock::now_ms(),
        next,
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    match service.await_primary(Some(failed), remaining).await {
        Awaited::Primary(permit) => {
            tries.tried.clear();
            tries.release = permit;
            Ok(())
        }
        Awaited::Unchanged => Err((kind, detail, tries.attempts)),
        Awaited::NoPrimary => {
            let e = service.nothing_to_pick();
            Err((e.kind, e.detail, tries.attempts))
        }
    }
}

/// The release permit of a wait that found a primary, or the error for one that did not.
fn awaited(
    awaited: Awaited,
    service: &Service,
    attempts: u32,
) -> Result<Option<OwnedSemaphorePermit>, NotConnected> {
    match awaited {
        Awaited::Primary(permit) => Ok(permit),
        Awaited::NoPrimary | Awaited::Unchanged => {
            let e = service.nothing_to_pick();
            Err((e.kind, e.detail, attempts))
        }
    }
}

/// One connect under the connect timeout (capped by the time left).
async fn connect_once(
    service: &Service,
    instance: &Instance,
    remaining: Duration,
) -> Result<TcpStream, (ProxyErrorKind, String)> {
    let addr = instance.addr;
    let timeout = service.config.timeouts.connect.min(remaining);
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            service.record_success(instance, clock::now_ms());
            Ok(stream)
        }
        Ok(Err(e)) => Err((
            ProxyErrorKind::ConnectFailed,
            format!("connect to {addr}: {e}"),
        )),
        Err(_) => Err((
            ProxyErrorKind::ConnectTimeout,
            format!(
                "connect to {addr}: no answer within {}ms",
                timeout.as_millis()
            ),
        )),
    }
}

/// The balancer's hash for a TCP connection: the client's IP (there are no headers).
fn tcp_hash(service: &Service, peer: SocketAddr) -> Option<u64> {
    service.balancer.hash_key().map(|key| {
        if !matches!(key, HashKey::ClientIp) {
            tracing::debug!(service = %service.name, "TCP has no headers or cookies: hashing on the client IP");
        }
        match peer.ip() {
            std::net::IpAddr::V4(ip) => crate::balance::hash_bytes(&ip.octets()),
            std::net::IpAddr::V6(ip) => crate::balance::hash_bytes(&ip.octets()),
        }
    })
}

/// How the start of a session to a primary went.
enum Start {
    /// Bytes are (or may be) flowing: the session belongs to this instance now.
    Flowing,
    /// The instance was demoted, or closed the connection, before either side sent a byte.
    Demoted,
}

/// For a session to a primary (`serve = "primary"`): waits until either side has bytes to
/// send, or the instance is demoted or closes the connection first. A session on which nothing
/// has passed can move to the new primary as if it had just connected — the superserver of a
/// hung member never greets, a stopping one closes, and their clients would otherwise see
/// their connection closed. Once a byte has
/// passed, the session is the instance's (the other side may have acted on it).
async fn first_byte(
    service: &Service,
    (instance, demotion): (&Instance, &CancellationToken),
    client: &TcpStream,
    upstream: &TcpStream,
) -> Start {
    // `peek`, not `readable`: readiness may be reported before any byte is there.
    let (mut from_client, mut from_upstream) = ([0u8; 1], [0u8; 1]);
    let flowing = async {
        tokio::select! {
            _ = client.peek(&mut from_client) => Start::Flowing,
            peeked = upstream.peek(&mut from_upstream) => match peeked {
                Ok(n) if n > 0 => Start::Flowing,
                // Closed (a stopping member closes every connection) or reset: a connect
                // that failed, in effect.
                _ => Start::Demoted,
            },
        }
    };
    service
        .unless_demoted(instance, Some(demotion), Instant::now(), flowing)
        .await
        .unwrap_or(Start::Demoted)
}

#[allow(clippy::too_many_arguments)]
fn log_session(
    log: &AccessLog,
    tls: Option<&ConnTls>,
    sni: Option<&str>,
    listener: &str,
    client: SocketAddr,
    service: &Service,
    upstream: Option<SocketAddr>,
    (bytes_in, bytes_out): (u64, u64),
    started: Instant,
    connect_attempts: u32,
    outcome: &'static str,
    error: Option<String>,
) {
    if !log.enabled() {
        return;
    }
    let entry = TcpEntry {
        time: rfc3339_now(),
        listener,
        protocol: "tcp",
        client,
        service: &service.name,
        upstream: upstream.map(|a| a.to_string()),
        bytes_in,
        bytes_out,
        duration_ms: (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        connect_attempts,
        outcome,
        error,
        tls: tls.map(ConnTls::log),
        sni,
    };
    let mut line = serde_json::to_string(&entry).unwrap_or_default();
    line.push('\n');
    log.log_line(line);
}
