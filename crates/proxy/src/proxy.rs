//! The proxy as a whole: builds runtime snapshots from a [`Config`], applies reloads atomically,
//! shuts down gracefully, and shows its state to the admin API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use sluice_config::{Balancer, Config, ListenerConfig, ListenerProtocol, Serve};
use sluice_health::clock;
use sluice_health::{EvaluatorSource, NoPolicies};

use crate::access_log::AccessLog;
use crate::acme_challenge::AcmeChallenges;
use crate::admission::Admission;
use crate::checks::{Checker, Services};
use crate::listener::{self, RunningListener};
use crate::listener_state::{ListenerRuntime, ListenerShared};
use crate::metrics::{
    HEALTH_SINCE_CHANGE_SECONDS, INSTANCE_OUTSTANDING, INSTANCES_EJECTED, PRIMARY,
};
use crate::overload::Overload;
use crate::rate_limit::RateLimiter;
use crate::request_policy::{NoRequestPolicies, RequestPolicies, RoutePolicy};
use crate::routing::{Route, RouteTable};
use crate::tcp::TcpRuntime;
use crate::upstream::{Service, ServiceShared};

/// Why a configuration could not be applied. The previous configuration keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A listener's address could not be bound.
    #[error("cannot bind listener `{listener}` to {addr}: {source}")]
    Bind {
        /// Listener name.
        listener: String,
        /// Address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The access log file could not be opened.
    #[error("cannot open the access log: {0}")]
    AccessLog(#[source] std::io::Error),
    /// A service's upstream TLS files could not be loaded.
    #[error("service `{service}`: upstream TLS: {source}")]
    ServiceTls {
        /// Service name.
        service: String,
        /// What is wrong, naming the file.
        source: sluice_tls::TlsError,
    },
    /// A listener's certificates or keys could not be loaded.
    #[error("listener `{listener}`: TLS: {source}")]
    Tls {
        /// Listener name.
        listener: String,
        /// What is wrong, naming the file.
        source: sluice_tls::TlsError,
    },
}

/// Who decides what the configuration leaves to policies (the binary passes its Wasm ones).
#[derive(Debug)]
pub struct Policies {
    /// Health checks that name a policy.
    pub evaluators: Arc<dyn EvaluatorSource>,
    /// `[listener.authz] policy`.
    pub authorizer: Arc<dyn sluice_tls::PolicyAuthorizer>,
    /// `[[route]] policy`.
    pub requests: Arc<dyn RequestPolicies>,
}

/// What a successful apply changed.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ApplySummary {
    /// Listeners bound by this apply.
    pub listeners_added: Vec<String>,
    /// Listeners closed by this apply.
    pub listeners_removed: Vec<String>,
    /// Routes now active.
    pub routes: usize,
    /// Services now active.
    pub services: usize,
}

/// The running proxy.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ArcSwap<Config>,
    services: Services,
    /// Per service name: what outlives a reload (probe kicks, primary generation).
    service_shared: Mutex<HashMap<String, Arc<ServiceShared>>>,
    checker: Mutex<Checker>,
    listeners: tokio::sync::Mutex<HashMap<String, RunningListener>>,
    /// Addresses actually bound (differs from the configured one for port 0).
    bound: Mutex<HashMap<String, SocketAddr>>,
    access_log: Mutex<AccessLog>,
    /// Decides `[listener.authz] policy` connections.
    authorizer: Arc<dyn sluice_tls::PolicyAuthorizer>,
    /// Decides requests on routes with a `policy`.
    request_policies: Arc<dyn RequestPolicies>,
    /// `[overload]`: the process's watermarks, shared by every listener.
    overload: Arc<Overload>,
    /// Pending ACME HTTP-01 challenges, answered by every plain-HTTP listener.
    acme: Arc<AcmeChallenges>,
    /// Pending ACME TLS-ALPN-01 challenges, answered by listeners with `[listener.tls.acme]`.
    acme_alpn: Arc<sluice_tls::AlpnChallenges>,
}

impl Proxy {
    /// Binds every listener and starts serving `config`, with native health evaluation only.
    /// Must run inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Self, ApplyError> {
        Self::start_with(config, Arc::new(NoPolicies)).await
    }

    /// Like [`Proxy::start`], with health checks that name a policy evaluated by `evaluators`
    /// (the binary passes its Wasm policies).
    pub async fn start_with(
        config: Config,
        evaluators: Arc<dyn EvaluatorSource>,
    ) -> Result<Self, ApplyError> {
        let policies = Policies {
            evaluators,
            authorizer: Arc::new(sluice_tls::NoPolicyAuthorizer),
            requests: Arc::new(NoRequestPolicies),
        };
        Self::start_with_policies(config, policies).await
    }

    /// Like [`Proxy::start_with`], with every kind of policy supplied: health evaluators,
    /// `[listener.authz] policy` and routes' `request` policies.
    pub async fn start_with_policies(
        config: Config,
        policies: Policies,
    ) -> Result<Self, ApplyError> {
        let Policies {
            evaluators,
            authorizer,
            requests,
        } = policies;
        let services: Services = Arc::new(ArcSwap::from_pointee(HashMap::new()));
        let proxy = Proxy {
            inner: Arc::new(Inner {
                config: ArcSwap::from_pointee(config.clone()),
                checker: Mutex::new(Checker::new(Arc::clone(&services), evaluators)),
                services,
                service_shared: Mutex::new(HashMap::new()),
                listeners: tokio::sync::Mutex::new(HashMap::new()),
                bound: Mutex::new(HashMap::new()),
                access_log: Mutex::new(AccessLog::off()),
                authorizer,
                request_policies: requests,
                overload: Arc::new(Overload::default()),
                acme: Arc::default(),
                acme_alpn: Arc::default(),
            }),
        };
        proxy.inner.overload.spawn_sampler();
        proxy.apply_inner(config, true).await?;
        Ok(proxy)
    }

    /// The table of pending ACME HTTP-01 challenges, which every plain-HTTP listener answers
    /// (the binary's ACME client fills it while an order is open).
    pub fn acme_challenges(&self) -> Arc<AcmeChallenges> {
        Arc::clone(&self.inner.acme)
    }

    /// The table of pending ACME TLS-ALPN-01 challenges, which listeners with
    /// `[listener.tls.acme]` answer.
    pub fn acme_alpn_challenges(&self) -> Arc<sluice_tls::AlpnChallenges> {
        Arc::clone(&self.inner.acme_alpn)
    }

    /// The configuration being served.
    pub fn config(&self) -> Arc<Config> {
        self.inner.config.load_full()
    }

    /// Applies a new, validated configuration. Either everything changes or nothing does:
    /// new listeners are bound before anything is swapped, and a bind failure leaves the old
    /// configuration serving. Live instance state (pooled connections, load, ejections) is kept
    /// for instances whose service and address are unchanged; in-flight requests finish on the
    /// routes they started on.
    pub async fn apply(&self, config: Config) -> Result<ApplySummary, ApplyError> {
        self.apply_inner(config, false).await
    }

    /// Everything that can fail is built first (access log, services and their client TLS,
    /// listener certificates, new sockets); then it is committed, and nothing after that
    /// fails except re-binding an address a removed listener held, which is logged.
    async fn apply_inner(&self, config: Config, first: bool) -> Result<ApplySummary, ApplyError> {
        let mut running = self.inner.listeners.lock().await;
        let log = self.next_access_log(&config, first)?;
        let services = self.build_services(&config)?;
        let limiters = running_limiters(&running);
        let policies = &self.inner.request_policies;
        let mut tables = route_tables(&config, &services, &limiters, policies);
        let mut tls = listener_tls(&config, &self.inner.acme_alpn)?;
        let mut sockets = bind_new_listeners(&config, &running)?;

        let mut summary = ApplySummary {
            routes: config.routes.len(),
            services: services.len(),
            ..ApplySummary::default()
        };
        self.close_stale_listeners(&config, &mut running, &mut summary)
            .await;
        for lc in &config.listeners {
            let table = RouteTable::new(tables.remove(lc.name.as_str()).unwrap_or_default());
            let tls = tls.remove(lc.name.as_str());
            let runtime = self.listener_runtime(lc, table, &services, &log.next, tls);
            if let Some(r) = running.get(&lc.name) {
                r.shared.update(runtime);
            } else if let Some(socket) = sockets.remove(lc.name.as_str()) {
                let grace = config.runtime.shutdown_grace;
                self.start_listener(lc, socket, runtime, grace, &mut running, &mut summary);
            }
        }
        if let Ok(mut all) = self.inner.service_shared.lock() {
            all.retain(|name, _| services.contains_key(name));
        }
        self.inner.overload.configure(&config.overload);
        let grace = config.runtime.shutdown_grace;
        self.inner.services.store(Arc::new(services));
        self.inner.config.store(Arc::new(config));
        if let Ok(mut checker) = self.inner.checker.lock() {
            checker.sync();
        }
        self.swap_access_log(log, grace);
        Ok(summary)
    }

    /// The access log the new configuration writes to: the current writer unless its
    /// settings changed.
    fn next_access_log(&self, config: &Config, first: bool) -> Result<NextLog, ApplyError> {
        let current = self
            .inner
            .access_log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_else(|_| AccessLog::off());
        if !first && current.config().cloned() == access_log_setting(config) {
            return Ok(NextLog {
                next: current,
                replaced: None,
            });
        }
        let next = AccessLog::start(&config.access_log).map_err(ApplyError::AccessLog)?;
        Ok(NextLog {
            next,
            replaced: Some(current),
        })
    }

    /// Installs a new access log; requests still in flight log to the old writer until it is
    /// stopped, a grace period later.
    fn swap_access_log(&self, log: NextLog, grace: Duration) {
        let Some(old) = log.replaced else { return };
        if let Ok(mut l) = self.inner.access_log.lock() {
            *l = log.next;
        }
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            tokio::task::spawn_blocking(move || old.shutdown());
        });
    }

    /// The configuration's services, reusing live instance state by (service, address).
    fn build_services(&self, config: &Config) -> Result<HashMap<String, Arc<Service>>, ApplyError> {
        let old_services = self.inner.services.load_full();
        let shared_of = |name: &str| -> Arc<ServiceShared> {
            let mut all = self
                .inner
                .service_shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(all.entry(name.to_owned()).or_default())
        };
        let mut client_tls = HashMap::new();
        for sc in &config.services {
            if let Some(t) = &sc.tls {
                let loaded =
                    crate::tls::client_tls(&sc.name, t, sc.protocol).map_err(|source| {
                        ApplyError::ServiceTls {
                            service: sc.name.clone(),
                            source,
                        }
                    })?;
                client_tls.insert(sc.name.as_str(), loaded);
            }
        }
        Ok(config
            .services
            .iter()
            .map(|sc| {
                let old = old_services.get(&sc.name);
                let mut svc = Service::new(sc.clone(), shared_of(&sc.name), |addr| {
                    old.and_then(|o| o.instances().iter().find(|i| i.addr == addr).cloned())
                });
                svc.tls = client_tls.remove(sc.name.as_str());
                svc.admission = sc.concurrency.map(|limit| {
                    old.and_then(|o| o.admission.clone())
                        .filter(|kept| *kept.limit() == limit)
                        .unwrap_or_else(|| Arc::new(Admission::new(limit, &sc.name)))
                });
                (sc.name.clone(), Arc::new(svc))
            })
            .collect())
    }

    /// Stops the running listeners the configuration drops or moves (their connections
    /// drain in the background).
    async fn close_stale_listeners(
        &self,
        config: &Config,
        running: &mut HashMap<String, RunningListener>,
        summary: &mut ApplySummary,
    ) {
        let wanted: HashMap<&str, (SocketAddr, ListenerProtocol)> = config
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), (l.bind, l.protocol)))
            .collect();
        let stale: Vec<String> = running
            .iter()
            .filter(|(name, r)| wanted.get(name.as_str()) != Some(&(r.bind, r.protocol)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(mut r) = running.remove(&name) {
                r.stop().await;
                if let Ok(mut b) = self.inner.bound.lock() {
                    b.remove(&name);
                }
                tracing::info!(listener = %name, "listener closed");
                summary.listeners_removed.push(name);
                tokio::spawn(r.drained());
            }
        }
    }

    /// What a listener's connections share under the new configuration.
    fn listener_runtime(
        &self,
        lc: &ListenerConfig,
        table: RouteTable,
        services: &HashMap<String, Arc<Service>>,
        log: &AccessLog,
        tls: Option<crate::tls::ListenerTls>,
    ) -> ListenerRuntime {
        let tcp = lc.tcp.as_ref().map(|t| TcpRuntime {
            config: t.clone(),
            service: t.service.as_ref().and_then(|s| services.get(s)).cloned(),
            sni: t
                .sni
                .iter()
                .flat_map(|sni| &sni.routes)
                .filter_map(|r| Some((r.host.clone(), Arc::clone(services.get(&r.service)?))))
                .collect(),
        });
        let mut runtime = ListenerRuntime::new(
            lc.clone(),
            table,
            log.clone(),
            tcp,
            tls,
            crate::server_h2::config(lc),
        );
        runtime.gate.policy = lc
            .authz
            .as_ref()
            .and_then(|a| a.policy.clone())
            .map(|name| (name, Arc::clone(&self.inner.authorizer)));
        runtime
    }

    /// Starts a new listener (on the socket bound before the commit, or bound now when a
    /// removed listener held its address).
    fn start_listener(
        &self,
        lc: &ListenerConfig,
        socket: Option<std::net::TcpListener>,
        runtime: ListenerRuntime,
        grace: Duration,
        running: &mut HashMap<String, RunningListener>,
        summary: &mut ApplySummary,
    ) {
        let socket = match socket.map_or_else(|| listener::bind(lc.bind), Ok) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(listener = %lc.name, addr = %lc.bind, error = %e, "cannot re-bind after reload");
                return;
            }
        };
        let process = (
            Arc::clone(&self.inner.overload),
            Arc::clone(&self.inner.acme),
        );
        let shared = Arc::new(ListenerShared::new(&lc.name, runtime, process));
        match listener::start(socket, shared, grace) {
            Ok(r) => {
                if let Ok(mut b) = self.inner.bound.lock() {
                    b.insert(lc.name.clone(), r.local_addr);
                }
                running.insert(lc.name.clone(), r);
                summary.listeners_added.push(lc.name.clone());
            }
            Err(e) => {
                tracing::error!(listener = %lc.name, error = %e, "cannot start listener")
            }
        }
    }

    /// Addresses the listeners are bound to, by name (useful with port 0).
    pub fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        self.inner
            .bound
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }

    /// Reopens the access-log file (log rotation).
    pub fn reopen_access_log(&self) {
        if let Ok(l) = self.inner.access_log.lock() {
            l.reopen();
        }
    }

    /// Stops accepting on every listener, waits up to `grace` for in-flight requests, then
    /// flushes the access log.
    pub async fn shutdown(&self, grace: Duration) {
        if let Ok(mut checker) = self.inner.checker.lock() {
            checker.stop_all();
        }
        let listeners: Vec<RunningListener> = self
            .inner
            .listeners
            .lock()
            .await
            .drain()
            .map(|(_, l)| l)
            .collect();
        let mut draining = Vec::new();
        for mut l in listeners {
            l.stop().await;
            draining.push(l.drained());
        }
        let _ = tokio::time::timeout(
            grace + Duration::from_millis(100),
            futures_join_all(draining),
        )
        .await;
        let log = self
            .inner
            .access_log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_else(|_| AccessLog::off());
        let _ = tokio::task::spawn_blocking(move || log.shutdown()).await;
    }

    /// Every route of every listener.
    pub fn routes(&self) -> Vec<RouteView> {
        let cfg = self.inner.config.load();
        cfg.routes
            .iter()
            .map(|r| RouteView {
                name: r.name.clone(),
                listener: r.listener.clone(),
                host: r.host.to_string(),
                path: r.path.clone(),
                strip: r.strip.clone(),
                prepend: r.prepend.clone(),
                service: Some(r.service.clone()).filter(|s| !s.is_empty()),
                redirect: r.redirect.as_ref().map(|d| RedirectView {
                    code: d.code,
                    url: d.url.clone(),
                }),
                allow: access_view(r, sluice_config::AccessAction::Allow),
                deny: access_view(r, sluice_config::AccessAction::Deny),
                upstream_host: r.upstream_host.as_ref().map(|h| match h {
                    sluice_config::UpstreamHost::Dst => "dst".to_owned(),
                    sluice_config::UpstreamHost::Name(name) => name.clone(),
                }),
            })
            .collect()
    }

    /// Sees a new value after any instance's active-health status changes (not per probe),
    /// so a caller can react to health without polling.
    pub fn health_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        match self.inner.checker.lock() {
            Ok(checker) => checker.subscribe(),
            Err(poisoned) => poisoned.into_inner().subscribe(),
        }
    }

    /// The active-health status of every instance: (service, address, status). Cheaper than
    /// [`Proxy::services`] for callers that only need the status.
    pub fn health_statuses(&self) -> Vec<(Arc<str>, SocketAddr, sluice_health::Status)> {
        let services = self.inner.services.load();
        services
            .values()
            .flat_map(|s| {
                s.instances()
                    .iter()
                    .map(|i| (Arc::clone(&s.name), i.addr, i.health.status()))
            })
            .collect()
    }

    /// Every service with its instances' live state.
    pub fn services(&self) -> Vec<ServiceView> {
        let now = clock::now_ms();
        let services = self.inner.services.load();
        let cfg = self.inner.config.load();
        cfg.services
            .iter()
            .filter_map(|sc| services.get(&sc.name))
            .map(|s| ServiceView {
                name: s.name.to_string(),
                balancer: match &s.config.balancer {
                    Balancer::RoundRobin => "round_robin".into(),
                    Balancer::LeastRequest => "least_request".into(),
                    Balancer::P2cEwma => "p2c_ewma".into(),
                    Balancer::Hash(_) => "hash".into(),
                },
                serve: match s.config.serve {
                    Serve::Any => "any",
                    Serve::Primary => "primary",
                },
                primary: s.primary().map(|i| i.addr.to_string()),
                split_brain: s.split_brain(),
                ejected: s.ejected_count(now),
                max_ejected: s.max_ejected(),
                instances: s
                    .instances()
                    .iter()
                    .zip(s.config.instances.iter())
                    .map(|(i, ic)| {
                        let until = i.outlier().ejected_until(now);
                        let h = i.health();
                        let active = s.config.health.is_some();
                        InstanceView {
                            address: i.addr.to_string(),
                            weight: ic.weight,
                            state: if h.is_down() {
                                "down"
                            } else if until.is_some() {
                                "ejected"
                            } else {
                                "active"
                            },
                            health: active.then(|| HealthView {
                                status: h.status(),
                                role: h.role(),
                                stale: h.is_stale(),
                                since_ms_ago: Some(h.status_since_ms())
                                    .filter(|t| *t > 0)
                                    .map(|t| now.saturating_sub(t)),
                                role_since_ms_ago: Some(h.role_since_ms())
                                    .filter(|t| *t > 0)
                                    .map(|t| now.saturating_sub(t)),
                                last_probe: h.last_probe().as_ref().as_ref().map(|p| {
                                    LastProbeView {
                                        ms_ago: now.saturating_sub(p.at_ms),
                                        result: p.result.clone(),
                                        latency_us: p.latency_us,
                                        verdict: p.verdict.as_ref().map(ToString::to_string),
                                        evaluator_error: p.evaluator_error.clone(),
                                    }
                                }),
                            }),
                            ejected_for_ms: until.map(|u| u - now),
                            outstanding: i.outstanding(),
                            ewma_ms: (i.ewma_ms() * 1000.0).round() / 1000.0,
                            consecutive_failures: i.outlier().consecutive_failures(),
                            ejections: i.outlier().total_ejections(),
                            requests: i.requests(),
                            failures: i.failures(),
                            idle_connections: i.idle_connections(),
                            http2_connections: i.h2.open_connections(),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// Sets the gauges that are computed rather than counted (call before rendering metrics).
    pub fn refresh_gauges(&self) {
        let now = clock::now_ms();
        for s in self.inner.services.load().values() {
            if s.config.health.is_some() {
                let primary = s.primary().map(|p| p.addr);
                for i in s.instances() {
                    let labels = [
                        ("service", s.name.to_string()),
                        ("instance", i.addr.to_string()),
                    ];
                    let since = i.health().status_since_ms();
                    if since > 0 {
                        metrics::gauge!(HEALTH_SINCE_CHANGE_SECONDS, &labels)
                            .set(now.saturating_sub(since) as f64 / 1000.0);
                    }
                    if s.config.serve == Serve::Primary {
                        metrics::gauge!(PRIMARY, &labels).set(if primary == Some(i.addr) {
                            1.0
                        } else {
                            0.0
                        });
                    }
                }
            }
            metrics::gauge!(INSTANCES_EJECTED, "service" => s.name.to_string())
                .set(s.ejected_count(now) as f64);
            for i in s.instances() {
                metrics::gauge!(INSTANCE_OUTSTANDING, "service" => s.name.to_string(), "instance" => i.addr.to_string())
                    .set(f64::from(i.outstanding()));
            }
        }
    }
}

fn access_log_setting(config: &Config) -> Option<sluice_config::AccessLogConfig> {
    (config.access_log.target != sluice_config::AccessLogTarget::Off)
        .then(|| config.access_log.clone())
}

async fn futures_join_all(futs: Vec<impl std::future::Future<Output = ()>>) {
    for f in futs {
        f.await;
    }
}

/// A route as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    /// Route name.
    pub name: String,
    /// Listener it belongs to.
    pub listener: String,
    /// Host match (`*` for any).
    pub host: String,
    /// Path prefix.
    pub path: String,
    /// Prefix stripped.
    pub strip: Option<String>,
    /// Prefix prepended.
    pub prepend: Option<String>,
    /// Target service (`None` on a redirect route without one).
    pub service: Option<String>,
    /// The redirect the route answers with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectView>,
    /// Client networks allowed (everyone else is refused).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Client networks refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// The `Host` sent upstream (`dst` or a name); absent: the client's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
}

/// A route's redirect, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RedirectView {
    /// Status code.
    pub code: u16,
    /// Target URL (`$path` unexpanded).
    pub url: String,
}

/// The networks of `route`'s access rules with `action`.
fn access_view(
    route: &sluice_config::RouteConfig,
    action: sluice_config::AccessAction,
) -> Vec<String> {
    route
        .access
        .iter()
        .filter(|a| a.action == action)
        .flat_map(|a| a.networks.iter().map(ToString::to_string))
        .collect()
}

/// A service as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    /// Service name.
    pub name: String,
    /// Balancer kind.
    pub balancer: String,
    /// `any` or `primary`.
    pub serve: &'static str,
    /// The instance serving as primary (`serve = "primary"`).
    pub primary: Option<String>,
    /// Whether several instances claim the primary role now.
    pub split_brain: bool,
    /// Instances ejected now.
    pub ejected: usize,
    /// Most instances passive health may eject at once.
    pub max_ejected: usize,
    /// Instances.
    pub instances: Vec<InstanceView>,
}

/// An instance as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    /// `ip:port`.
    pub address: String,
    /// Configured weight.
    pub weight: u32,
    /// `active`, `down` (active health) or `ejected` (passive health).
    pub state: &'static str,
    /// Active health, when the service has a check.
    pub health: Option<HealthView>,
    /// Time left in the current ejection.
    pub ejected_for_ms: Option<u64>,
    /// Requests in flight.
    pub outstanding: u32,
    /// Peak-EWMA latency to the response head.
    pub ewma_ms: f64,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Ejections so far.
    pub ejections: u64,
    /// Attempts sent.
    pub requests: u64,
    /// Attempts failed.
    pub failures: u64,
    /// Idle pooled connections (HTTP/1.1 services).
    pub idle_connections: usize,
    /// Open HTTP/2 connections (`protocol = "h2c"` or `"h2"`).
    pub http2_connections: usize,
}

/// An instance's active health as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HealthView {
    /// `unknown`, `up` or `down` (smoothed by rise/fall).
    pub status: sluice_health::Status,
    /// Role of the latest verdict.
    pub role: Option<sluice_health::Role>,
    /// Whether the latest evaluation failed and the verdict is an older one.
    pub stale: bool,
    /// Time since the status last changed.
    pub since_ms_ago: Option<u64>,
    /// Time since the role last changed.
    pub role_since_ms_ago: Option<u64>,
    /// The last probe.
    pub last_probe: Option<LastProbeView>,
}

/// The last probe of an instance.
#[derive(Debug, Clone, Serialize)]
pub struct LastProbeView {
    /// How long ago it finished.
    pub ms_ago: u64,
    /// One-line result (`200 SUCCESS`, `refused: …`).
    pub result: String,
    /// How long it took.
    pub latency_us: u64,
    /// The verdict it produced.
    pub verdict: Option<String>,
    /// The health policy's error, when it failed.
    pub evaluator_error: Option<String>,
}

/// The access log an apply moves to, and the writer it replaces (to stop after a grace).
struct NextLog {
    next: AccessLog,
    replaced: Option<AccessLog>,
}

/// The rate limiters of the running routes, by listener and route name.
fn running_limiters(
    running: &HashMap<String, RunningListener>,
) -> HashMap<(String, Arc<str>), Arc<RateLimiter>> {
    let mut limiters = HashMap::new();
    for (listener, r) in running {
        for route in r.shared.runtime.load().table.routes() {
            if let Some(limiter) = route.rules.rate_limiter() {
                let key = (listener.clone(), Arc::clone(&route.name));
                limiters.insert(key, Arc::clone(limiter));
            }
        }
    }
    limiters
}

/// Each listener's routes, in file order; a route keeps its running rate limiter (its
/// buckets) when its limit is unchanged.
fn route_tables<'a>(
    config: &'a Config,
    services: &HashMap<String, Arc<Service>>,
    limiters: &HashMap<(String, Arc<str>), Arc<RateLimiter>>,
    policies: &Arc<dyn RequestPolicies>,
) -> HashMap<&'a str, Vec<Arc<Route>>> {
    let mut tables: HashMap<&str, Vec<Arc<Route>>> = HashMap::new();
    // Made once, and only when a redirect route names no service.
    let mut no_service: Option<Arc<Service>> = None;
    for rc in &config.routes {
        let service = match services.get(&rc.service) {
            Some(service) => service,
            None if rc.redirect.is_some() => {
                no_service.get_or_insert_with(crate::routing::no_service)
            }
            None => continue, // validation guarantees this exists
        };
        let running = limiters.get(&(rc.listener.clone(), Arc::from(rc.name.as_str())));
        let mut route = Route::new(rc, service, running);
        route.policy = RoutePolicy::of(rc, services, policies);
        tables
            .entry(rc.listener.as_str())
            .or_default()
            .push(Arc::new(route));
    }
    tables
}

/// Every listener's certificates and keys, re-read; a bad one refuses the whole apply.
fn listener_tls<'a>(
    config: &'a Config,
    acme: &Arc<sluice_tls::AlpnChallenges>,
) -> Result<HashMap<&'a str, crate::tls::ListenerTls>, ApplyError> {
    let mut tls = HashMap::new();
    for lc in &config.listeners {
        let loaded = crate::tls::ListenerTls::load(lc, acme).map_err(|source| ApplyError::Tls {
            listener: lc.name.clone(),
            source,
        })?;
        if let Some(t) = loaded {
            tls.insert(lc.name.as_str(), t);
        }
    }
    Ok(tls)
}

/// The listeners to start, by name: with a socket bound now (before anything changes), or
/// `None` when another running listener holds the address until the commit closes it.
fn bind_new_listeners<'a>(
    config: &'a Config,
    running: &HashMap<String, RunningListener>,
) -> Result<HashMap<&'a str, Option<std::net::TcpListener>>, ApplyError> {
    let mut to_start = HashMap::new();
    for lc in &config.listeners {
        let reuse = running
            .get(&lc.name)
            .is_some_and(|r| r.bind == lc.bind && r.protocol == lc.protocol);
        if reuse {
            continue;
        }
        let held_by_other = running
            .values()
            .any(|r| r.bind == lc.bind && *r.shared.name != *lc.name);
        let socket = if held_by_other {
            None
        } else {
            Some(listener::bind(lc.bind).map_err(|source| ApplyError::Bind {
                listener: lc.name.clone(),
                addr: lc.bind,
                source,
            })?)
        };
        to_start.insert(lc.name.as_str(), socket);
    }
    Ok(to_start)
}
