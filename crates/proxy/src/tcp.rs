//! TCP listeners: every connection goes to one service. Pick an instance (the service's
//! balancer; "least request" counts open connections), connect within the connect timeout —
//! falling back to the next instance on failure — optionally send a PROXY protocol header, then
//! relay bytes both ways until both sides close, the idle timeout passes, the instance loses
//! the primary role (`on_demotion = "close"`), or the listener drains.
//!
//! With `serve = "primary"`, a connect failure on the primary kicks the service's probes and
//! waits (bounded) for a new primary, so new connections reach it within one probe round;
//! with no primary at all the connection is closed at once.

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
use crate::metrics::{
    SNI_REJECTED_TOTAL, SNI_ROUTED_TOTAL, TCP_BYTES_TOTAL, TCP_CONNECTIONS_TOTAL,
};
use crate::tls::{ConnTls, TlsLog};
use crate::upstream::{InFlight, Service, Tried};

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
    let (upstream, in_flight, attempts) = match connect(service, peer).await {
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
            return;
        }
    };
    metrics.ok.increment(1);
    let addr = in_flight.instance.addr;
    let mut upstream = upstream;
    if let Some(header) = crate::proxy_protocol::header(runtime.config.proxy_protocol, peer, local)
        && let Err(e) = upstream.write_all(&header).await
    {
        log_session(
            Some(addr),
            (0, 0),
            attempts,
            "error",
            Some(format!("sending the PROXY header: {e}")),
        );
        return;
    }
    // Closed by demotion of the instance, or by the end of a drain.
    let demoted = in_flight.instance.session_token();
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

/// Connects to an instance of `service`, trying others on failure (and, in primary mode,
/// waiting for a failover). Errors carry the kind, a detail and the attempts made.
async fn connect(
    service: &Service,
    peer: SocketAddr,
) -> Result<(TcpStream, InFlight, u32), (ProxyErrorKind, String, u32)> {
    let cfg = &service.config;
    let hash = service.balancer.hash_key().map(|key| {
        if !matches!(key, HashKey::ClientIp) {
            tracing::debug!(service = %service.name, "TCP has no headers or cookies: hashing on the client IP");
        }
        match peer.ip() {
            std::net::IpAddr::V4(ip) => crate::balance::hash_bytes(&ip.octets()),
            std::net::IpAddr::V6(ip) => crate::balance::hash_bytes(&ip.octets()),
        }
    });
    let deadline = Instant::now() + cfg.timeouts.total;
    let mut tried = Tried::default();
    let mut attempts = 0u32;
    let mut failed_generation: Option<u64> = None;
    let mut last_error = String::from("the service has no instance to connect to");
    loop {
        let now_ms = clock::now_ms();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Some(picked) = service.pick(hash, &tried, now_ms) else {
            // A connection that just failed on the primary waits for the failover; one that
            // finds no primary at all is refused at once.
            if service
                .wait_for_primary(&mut failed_generation, remaining)
                .await
            {
                continue;
            }
            if attempts == 0 {
                let e = service.nothing_to_pick();
                return Err((e.kind, e.detail, 0));
            }
            return Err((ProxyErrorKind::ConnectFailed, last_error, attempts));
        };
        tried.push(picked.index);
        attempts += 1;
        let generation = service.primary_generation();
        let in_flight = InFlight::new(Arc::clone(&picked.instance));
        let addr = picked.instance.addr;
        let timeout = cfg.timeouts.connect.min(remaining);
        let (kind, detail) = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                service.record_success(&picked.instance, now_ms);
                return Ok((stream, in_flight, attempts));
            }
            Ok(Err(e)) => (
                ProxyErrorKind::ConnectFailed,
                format!("connect to {addr}: {e}"),
            ),
            Err(_) => (
                ProxyErrorKind::ConnectTimeout,
                format!(
                    "connect to {addr}: no answer within {}ms",
                    timeout.as_millis()
                ),
            ),
        };
        service.record_failure(&picked.instance, Some(kind), clock::now_ms());
        if service.fails_over() {
            failed_generation = Some(generation);
        }
        last_error = detail;
        if attempts > cfg.retries.attempts && failed_generation.is_none() {
            return Err((kind, last_error, attempts));
        }
        if remaining.is_zero() {
            return Err((ProxyErrorKind::DeadlineExceeded, last_error, attempts));
        }
    }
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
