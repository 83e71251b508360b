//! What a listener's connections and requests share: the runtime a reload replaces whole
//! (routes, access log, TLS and authorization, TCP and HTTP/2 settings), the listener's
//! counters and connection limit, and each connection's context. Plain state: serving a
//! connection or a request is the business of the modules above (`listener`, `server_h1`,
//! `server_h2`, `forward`, `tcp`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use arc_swap::ArcSwap;
use http::HeaderValue;
use metrics::{Counter, Gauge, counter, gauge};
use sluice_config::ListenerConfig;
use tokio::sync::Semaphore;

use crate::access_log::AccessLog;
use crate::acme_challenge::AcmeChallenges;
use crate::conn::{ClientTimerMetrics, ConnWatch};
use crate::metrics as m;
use crate::overload::Overload;
use crate::routing::RouteTable;
use crate::tcp::{TcpMetrics, TcpRuntime};
use crate::tls::{ConnTls, Gate, ListenerTls};

/// What a listener's connections read on every request; replaced whole on reload.
#[derive(Debug)]
pub(crate) struct ListenerRuntime {
    pub(crate) config: ListenerConfig,
    pub(crate) table: RouteTable,
    pub(crate) access_log: AccessLog,
    /// Present on `protocol = "tcp"` listeners.
    pub(crate) tcp: Option<TcpRuntime>,
    /// The TLS handshake and `[listener.authz]` checks of a new connection.
    pub(crate) gate: Gate,
    /// The HTTP/2 server's settings for this listener.
    pub(crate) h2: sluice_codec::h2::server::Config,
}

impl ListenerRuntime {
    pub(crate) fn new(
        config: ListenerConfig,
        table: RouteTable,
        access_log: AccessLog,
        tcp: Option<TcpRuntime>,
        tls: Option<ListenerTls>,
        h2: sluice_codec::h2::server::Config,
    ) -> Self {
        Self {
            gate: Gate {
                tls: tls.map(Arc::new),
                authz: crate::tls::allow_list(&config),
                policy: None,
            },
            config,
            table,
            access_log,
            tcp,
            h2,
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
    pub(crate) active: Gauge,
    pub(crate) accepted: Counter,
    pub(crate) timer_metrics: ClientTimerMetrics,
    pub(crate) tcp_metrics: Option<TcpMetrics>,
    pub(crate) limit: Arc<Semaphore>,
    pub(crate) limit_size: AtomicUsize,
    /// The process's watermarks (`[overload]`), shared by every listener.
    pub(crate) overload: Arc<Overload>,
    /// Pending ACME HTTP-01 challenges, answered on every plain-HTTP listener.
    pub(crate) acme: Arc<AcmeChallenges>,
}

impl ListenerShared {
    /// A listener's shared state; `process` holds what all listeners share (the overload
    /// watermarks and the ACME challenges).
    pub(crate) fn new(
        name: &str,
        runtime: ListenerRuntime,
        process: (Arc<Overload>, Arc<AcmeChallenges>),
    ) -> Self {
        let (overload, acme) = process;
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
            timer_metrics: ClientTimerMetrics::new(name),
            tcp_metrics,
            limit: Arc::new(Semaphore::new(limit_size)),
            limit_size: AtomicUsize::new(limit_size),
            overload,
            acme,
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

/// What the handler needs to know about the connection a request arrived on.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) listener: Arc<ListenerShared>,
    pub(crate) peer: SocketAddr,
    /// `peer`'s IP as a header value, made once per connection for `X-Forwarded-For`.
    pub(crate) client_ip: HeaderValue,
    /// HTTP/2 connections: tells the connection's idle timer when streams are open.
    pub(crate) watch: Option<Arc<ConnWatch>>,
    /// The TLS session, on TLS listeners.
    pub(crate) tls: Option<Arc<ConnTls>>,
}
