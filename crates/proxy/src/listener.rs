//! Listeners: bind, accept under a connection limit, serve each connection with hyper, and
//! drain gracefully when stopped.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use metrics::{Counter, Gauge, counter, gauge};
use sluice_config::{ListenerConfig, ListenerProtocol};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use crate::access_log::AccessLog;
use crate::conn::{ClientIo, ClientTimerMetrics, ConnWatch};
use crate::forward::{ConnCtx, handle};
use crate::metrics as m;
use crate::routing::RouteTable;
use crate::tcp::{TcpMetrics, TcpRuntime};
use crate::tls::ListenerTls;
use tokio_util::task::TaskTracker;

/// What a listener's connections read on every request; replaced whole on reload.
#[derive(Debug)]
pub(crate) struct ListenerRuntime {
    pub(crate) config: ListenerConfig,
    pub(crate) table: RouteTable,
    pub(crate) access_log: AccessLog,
    /// Present on `protocol = "tcp"` listeners.
    pub(crate) tcp: Option<TcpRuntime>,
    /// Present when the listener has `[listener.tls]`.
    pub(crate) tls: Option<Arc<ListenerTls>>,
    /// Present when `[listener.authz]` has rules.
    pub(crate) authz: Option<sluice_tls::AllowList>,
    /// `[listener.authz] policy` and who decides it.
    pub(crate) policy: Option<(String, Arc<dyn sluice_tls::PolicyAuthorizer>)>,
    builder: auto::Builder<TokioExecutor>,
}

impl ListenerRuntime {
    pub(crate) fn new(
        config: ListenerConfig,
        table: RouteTable,
        access_log: AccessLog,
        tcp: Option<TcpRuntime>,
        tls: Option<ListenerTls>,
    ) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(true)
            .half_close(false)
            // Sluice's own header timer (see `conn`) replaces hyper's.
            .header_read_timeout(None)
            .max_buf_size(config.max_header_bytes);
        builder
            .http2()
            .max_concurrent_streams(config.max_concurrent_streams)
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
        if !config.http2 {
            builder = builder.http1_only();
        }
        Self {
            authz: crate::tls::allow_list(&config),
            config,
            table,
            access_log,
            tcp,
            tls: tls.map(Arc::new),
            policy: None,
            builder,
        }
    }
}

/// State shared by a listener's accept loop, its connections and the control plane.
#[derive(Debug)]
pub(crate) struct ListenerShared {
    pub(crate) name: Arc<str>,
    /// `X-Forwarded-Proto` for requests on this listener.
    pub(crate) scheme: &'static str,
    pub(crate) runtime: ArcSwap<ListenerRuntime>,
    pub(crate) unrouted: Counter,
    active: Gauge,
    accepted: Counter,
    timer_metrics: ClientTimerMetrics,
    tcp_metrics: Option<TcpMetrics>,
    limit: Arc<Semaphore>,
    limit_size: AtomicUsize,
}

impl ListenerShared {
    pub(crate) fn new(name: &str, runtime: ListenerRuntime) -> Self {
        let l = || name.to_owned();
        let limit_size = runtime.config.max_connections;
        let tcp_metrics = runtime.tcp.is_some().then(|| TcpMetrics::new(name));
        Self {
            name: name.into(),
            scheme: "http",
            runtime: ArcSwap::from_pointee(runtime),
            unrouted: counter!(m::UNROUTED_TOTAL, "listener" => l()),
            active: gauge!(m::CONNECTIONS_ACTIVE, "listener" => l()),
            accepted: counter!(m::CONNECTIONS_TOTAL, "listener" => l()),
            timer_metrics: ClientTimerMetrics {
                header_timeouts: counter!(m::CLIENT_CLOSES_TOTAL, "listener" => l(), "reason" => "header_timeout"),
                keepalive_closes: counter!(m::CLIENT_CLOSES_TOTAL, "listener" => l(), "reason" => "keepalive_timeout"),
            },
            tcp_metrics,
            limit: Arc::new(Semaphore::new(limit_size)),
            limit_size: AtomicUsize::new(limit_size),
        }
    }

    /// Installs a new runtime (routes, timeouts, limits) for new requests and connections.
    pub(crate) fn update(&self, runtime: ListenerRuntime) {
        let want = runtime.config.max_connections;
        let have = self.limit_size.swap(want, Relaxed);
        if want > have {
            self.limit.add_permits(want - have);
        } else if have > want {
            // Permits held by open connections are forgotten as those connections close.
            let mut left = have - want;
            left -= self.limit.forget_permits(left);
            if left > 0 {
                let limit = Arc::clone(&self.limit);
                tokio::spawn(async move {
                    if let Ok(p) = limit.acquire_many_owned(left as u32).await {
                        p.forget();
                    }
                });
            }
        }
        self.runtime.store(Arc::new(runtime));
    }
}

/// A listener whose accept loop is running.
#[derive(Debug)]
pub(crate) struct RunningListener {
    pub(crate) shared: Arc<ListenerShared>,
    pub(crate) bind: SocketAddr,
    pub(crate) protocol: ListenerProtocol,
    pub(crate) local_addr: SocketAddr,
    stop: CancellationToken,
    socket_closed: Option<oneshot::Receiver<()>>,
    drained: tokio::task::JoinHandle<()>,
}

impl RunningListener {
    /// Stops accepting at once; returns when the socket is closed. Open connections drain in
    /// the background for up to `grace` (see [`RunningListener::drained`]).
    pub(crate) async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(rx) = self.socket_closed.take() {
            let _ = rx.await;
        }
    }

    /// Waits until every connection has finished (or the grace period cut them off).
    pub(crate) async fn drained(self) {
        let _ = self.drained.await;
    }
}

/// Binds `addr` with address reuse and a deep backlog, ready for tokio.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Starts the accept loop on an already bound socket.
pub(crate) fn start(
    socket: std::net::TcpListener,
    shared: Arc<ListenerShared>,
    grace: Duration,
) -> io::Result<RunningListener> {
    let listener = TcpListener::from_std(socket)?;
    let local_addr = listener.local_addr()?;
    let (bind, protocol) = {
        let rt = shared.runtime.load();
        (rt.config.bind, rt.config.protocol)
    };
    let stop = CancellationToken::new();
    let (closed_tx, closed_rx) = oneshot::channel();
    let drained = tokio::spawn(accept_loop(
        listener,
        Arc::clone(&shared),
        stop.clone(),
        closed_tx,
        grace,
    ));
    tracing::info!(listener = %shared.name, addr = %local_addr, "listening");
    Ok(RunningListener {
        shared,
        bind,
        protocol,
        local_addr,
        stop,
        socket_closed: Some(closed_rx),
        drained,
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    stop: CancellationToken,
    closed: oneshot::Sender<()>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    // TCP sessions are not hyper connections: they drain through their own tracker.
    let tcp_sessions = TaskTracker::new();
    let tcp_drain = CancellationToken::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            p = Arc::clone(&shared.limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let runtime = shared.runtime.load_full();
                if runtime.tcp.is_some() {
                    let (shared, drain) = (Arc::clone(&shared), tcp_drain.clone());
                    tcp_sessions.spawn(async move {
                        shared.accepted.increment(1);
                        shared.active.increment(1.0);
                        let local = stream.local_addr().unwrap_or(peer);
                        if let (Some(tcp), Some(metrics)) = (&runtime.tcp, &shared.tcp_metrics) {
                            if tcp.config.sni.is_some() {
                                // Passthrough: no TLS termination or authz (refused by the
                                // config loader), the ClientHello picks the service.
                                let _ = stream.set_nodelay(true);
                                crate::tcp::serve_passthrough(
                                    stream,
                                    local,
                                    peer,
                                    &shared.name,
                                    tcp,
                                    metrics,
                                    &runtime.access_log,
                                    drain,
                                )
                                .await;
                            } else if let (Some(service), Some((stream, tls))) = (
                                &tcp.service,
                                crate::tls::admit(stream, peer, &shared.name, &runtime).await,
                            ) {
                                crate::tcp::serve(
                                    stream,
                                    local,
                                    tls.as_deref(),
                                    peer,
                                    &shared.name,
                                    (tcp, service),
                                    None,
                                    metrics,
                                    &runtime.access_log,
                                    drain,
                                )
                                .await;
                            }
                        }
                        shared.active.decrement(1.0);
                        drop(permit);
                    });
                } else {
                    tokio::spawn(serve_connection(
                        stream,
                        peer,
                        Arc::clone(&shared),
                        runtime,
                        graceful.watcher(),
                        permit,
                    ));
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %shared.name, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    drop(listener);
    let _ = closed.send(());
    tcp_sessions.close();
    let open = graceful.count() + tcp_sessions.len();
    if open > 0 {
        tracing::info!(listener = %shared.name, connections = open, grace_ms = grace.as_millis() as u64, "draining connections");
    }
    let drained = async {
        graceful.shutdown().await;
        tcp_sessions.wait().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(listener = %shared.name, "grace period over; closing the remaining connections");
        tcp_drain.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), tcp_sessions.wait()).await;
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<ListenerShared>,
    runtime: Arc<ListenerRuntime>,
    watcher: Watcher,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    shared.accepted.increment(1);
    shared.active.increment(1.0);
    let Some((stream, tls)) = crate::tls::admit(stream, peer, &shared.name, &runtime).await else {
        shared.active.decrement(1.0);
        return;
    };
    let watch = Arc::new(ConnWatch::default());
    let io = ClientIo::new(
        stream,
        Arc::clone(&watch),
        runtime.config.header_read_timeout,
        runtime.config.keepalive_timeout,
        shared.timer_metrics.clone(),
    );
    let cx = Arc::new(ConnCtx {
        listener: Arc::clone(&shared),
        peer,
        client_ip: crate::headers::client_ip_value(peer.ip()),
        watch,
        tls,
    });
    let service = service_fn(move |req| handle(req, Arc::clone(&cx)));
    let conn = runtime
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(listener = %shared.name, %peer, error = %e, "client connection ended with an error");
    }
    shared.active.decrement(1.0);
}
