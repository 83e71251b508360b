//! The validated configuration: what the rest of Sluice consumes. Every value here has been
//! checked; defaults are filled in; names referenced by routes exist.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The admin/metrics listener.
    pub admin: AdminConfig,
    /// Process-wide runtime settings.
    pub runtime: RuntimeConfig,
    /// Diagnostic logging.
    pub log: LogConfig,
    /// Per-request access log.
    pub access_log: AccessLogConfig,
    /// Listeners in file order; names are unique.
    pub listeners: Vec<ListenerConfig>,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
    /// Services in file order; names are unique.
    pub services: Vec<ServiceConfig>,
    /// Wasm policies in file order; names are unique.
    pub policies: Vec<crate::policy::PolicyConfig>,
    /// `[[kv]]` sources the policies' `kv-get` reads, in lookup order (the first source
    /// holding a key wins).
    pub kv: Vec<KvConfig>,
    /// `[[discovery]]` catalog sources in file order; names are unique.
    pub discovery: Vec<crate::discovery::DiscoveryConfig>,
    /// `[routing]`: how the catalog becomes routes.
    pub routing: crate::discovery::RoutingConfig,
    /// `[overload]`: process-wide watermarks.
    pub overload: OverloadConfig,
}

/// `[overload]`: process-wide watermarks. At 90 % of one, keep-alive is shed; at 100 %, new
/// requests get `503 overloaded` at once. Unset watermarks are not watched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverloadConfig {
    /// Client connections across every listener.
    pub max_connections: Option<usize>,
    /// Resident memory of the process, in MiB.
    pub max_memory_mb: Option<u64>,
}

/// Where one `[[kv]]` source reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvSourceConfig {
    /// The process environment (read once at start).
    Env,
    /// A directory (one file per key) or one `.toml` / `.json` document, polled.
    File(PathBuf),
    /// An etcd v3 cluster (its JSON gateway), watched.
    Etcd {
        /// `http://host:port` of each member.
        endpoints: Vec<String>,
    },
}

/// `[[kv]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvConfig {
    /// The source.
    pub source: KvSourceConfig,
    /// Only keys under this prefix are read and watched (empty: every key).
    pub prefix: String,
    /// Each etcd request must answer within this.
    pub request_timeout: Duration,
    /// How often a file source is re-read.
    pub poll: Duration,
}

impl Config {
    /// The service with this name.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The listener with this name.
    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

/// `[admin]`: where `/healthz`, `/metrics` and `/api/*` are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address to bind; loopback by default because the API can reload the proxy.
    pub bind: SocketAddr,
    /// `tokens_file`: bearer tokens, one `SCOPE TOKEN` per line (`read` or `admin`).
    pub tokens_file: Option<std::path::PathBuf>,
    /// `token_env`: the name of an environment variable holding an `admin` token.
    pub token_env: Option<String>,
    /// `read_token_env`: the name of an environment variable holding a `read` token.
    pub read_token_env: Option<String>,
    /// `insecure`: serve a non-loopback `bind` without tokens (anyone who reaches it can
    /// reload the proxy).
    pub insecure: bool,
    /// `[admin.tls]`: serve the admin API over HTTPS, optionally taking client certificates.
    pub tls: Option<AdminTlsConfig>,
}

impl AdminConfig {
    /// Whether requests must present credentials (a token source or a client CA is set).
    pub fn authenticates(&self) -> bool {
        self.has_token_sources() || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }

    /// Whether any bearer-token source is configured.
    pub fn has_token_sources(&self) -> bool {
        self.tokens_file.is_some() || self.token_env.is_some() || self.read_token_env.is_some()
    }
}

/// `[admin.tls]`: the admin API over HTTPS. With `client_ca`, a client certificate that
/// chains to it is a credential worth `client_scope`; bearer tokens work as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTlsConfig {
    /// PEM certificate chain of the admin listener.
    pub cert: std::path::PathBuf,
    /// Its private key.
    pub key: std::path::PathBuf,
    /// CA bundle client certificates are verified against.
    pub client_ca: Option<std::path::PathBuf>,
    /// What a verified client certificate allows.
    pub client_scope: AdminScope,
}

/// What an admin credential allows: `read` (every `GET`) or `admin` (everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AdminScope {
    /// `GET`s only.
    Read,
    /// Everything, reloads included.
    Admin,
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Worker threads for the data path; 0 means one per CPU.
    pub worker_threads: usize,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Folder of the policies' compile cache; `None`: policies compile on every load.
    pub policy_cache: Option<std::path::PathBuf>,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A `tracing` env-filter directive; `RUST_LOG` overrides it.
    pub level: String,
    /// Human-readable text or one JSON object per line.
    pub format: LogFormat,
}

/// Output format of diagnostic logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Where lines go.
    pub target: AccessLogTarget,
    /// How each line is written.
    pub format: AccessLogFormat,
    /// Lines that may wait for the writer before new ones are dropped (and counted).
    pub buffer_lines: usize,
}

/// Destination of the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// No access log.
    Off,
    /// Standard output.
    Stdout,
    /// A file opened in append mode (created if missing).
    File(PathBuf),
}

/// Format of access-log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// Apache/nginx "combined" format followed by Sluice's extra fields.
    Combined,
}

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    Http,
    /// Raw TCP to one service (`service` on the listener).
    Tcp,
}

/// PROXY protocol header sent to instances before a TCP connection's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// No header.
    Off,
    /// Human-readable version 1.
    V1,
    /// Binary version 2.
    V2,
}

/// TCP specifics of a `protocol = "tcp"` listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpListenerConfig {
    /// The service every connection goes to; with `sni`, the service of connections whose
    /// server name is absent or matches no entry (`None`: those connections are closed).
    pub service: Option<String>,
    /// `[[listener.sni]]`: TLS passthrough, routed by the ClientHello's server name.
    pub sni: Option<SniConfig>,
    /// PROXY protocol towards instances.
    pub proxy_protocol: ProxyProtocol,
    /// A connection with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
}

/// TLS passthrough on a TCP listener: the ClientHello is read (not answered), its server name
/// picks the service, and every byte is relayed untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniConfig {
    /// Server name → service, in file order; exact names win over wildcards.
    pub routes: Vec<SniRoute>,
    /// The whole ClientHello must arrive within this.
    pub timeout: Duration,
    /// Largest ClientHello read before giving up, in bytes.
    pub max_bytes: usize,
}

/// One `[[listener.sni]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    /// `Exact` or `Wildcard` (never `Any`: the default is the listener's `service`).
    pub host: HostMatch,
    /// Where matching connections go.
    pub service: String,
}

/// `[[listener]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Unique name, referenced by routes.
    pub name: String,
    /// Address to bind.
    pub bind: SocketAddr,
    /// Protocol spoken to clients.
    pub protocol: ListenerProtocol,
    /// Connections accepted at once; further clients wait in the kernel backlog.
    pub max_connections: usize,
    /// Time a client has to send a complete request head (408 when exceeded mid-request).
    pub header_read_timeout: Duration,
    /// Largest request head accepted, in bytes (431 when exceeded).
    pub max_header_bytes: usize,
    /// How long an idle keep-alive client connection is kept open.
    pub keepalive_timeout: Duration,
    /// Time a client may stall while sending a request body (408 when exceeded).
    pub request_body_timeout: Duration,
    /// Time a client may take no response bytes while Sluice has some to send (HTTP/1.x; the
    /// connection is closed when exceeded).
    pub send_timeout: Duration,
    /// Whether HTTP/2 with prior knowledge is accepted.
    pub http2: bool,
    /// `accept_proxy_protocol`: every connection starts with a PROXY protocol header (v1 or
    /// v2) from a load balancer in front, whose client address stands for the connection's.
    pub accept_proxy_protocol: bool,
    /// Concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams of one client connection that may wait at once for the client to open
    /// their flow-control window; a stream beyond this is reset.
    pub http2_max_stalled_streams: u32,
    /// Present for `protocol = "tcp"`.
    pub tcp: Option<TcpListenerConfig>,
    /// `[listener.tls]`: TLS termination.
    pub tls: Option<crate::ListenerTlsConfig>,
    /// `[listener.authz]`: per-connection authorization.
    pub authz: Option<crate::ListenerAuthzConfig>,
}

/// How a route matches the request's host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Any host (no `host` key).
    Any,
    /// Exactly this host, lower-case, without port.
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com` (stored as `example.com`).
    Wildcard(String),
}

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Any => f.write_str("*"),
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// A name for metrics and the API; defaults to `host+path`.
    pub name: String,
    /// Listener this route belongs to.
    pub listener: String,
    /// Host match.
    pub host: HostMatch,
    /// Path prefix (string prefix, as nginx `location` and Fabio do).
    pub path: String,
    /// Prefix removed from the path before forwarding, when the path starts with it.
    pub strip: Option<String>,
    /// Prefix added to the path before forwarding (after `strip`).
    pub prepend: Option<String>,
    /// Service the route sends to. Empty only on a `redirect` route that names none (it never
    /// reaches a service).
    pub service: String,
    /// `redirect`: the route answers with this status and `Location` itself.
    pub redirect: Option<RedirectConfig>,
    /// `allow` / `deny`: which client addresses may use the route (`None`: everyone).
    pub access: Option<AccessRules>,
    /// `upstream_host`: the `Host` header sent to instances (`None`: the client's).
    pub upstream_host: Option<UpstreamHost>,
    /// `upgrades`: the protocols a client may switch to through this route (`Upgrade`), lower
    /// case. Any other `Upgrade` is removed and the request forwarded as a plain one.
    pub upgrades: Vec<String>,
    /// `rate_limit`: token buckets per client key (`None`: no limit).
    pub rate_limit: Option<RateLimitConfig>,
    /// `policy`: the `request` policy asked about every request on the route.
    pub policy: Option<String>,
    /// `policy_services`: the services the policy may send a request to instead of `service`.
    pub policy_services: Vec<String>,
}

/// `rate_limit = { rate, per, burst, key, max_keys }` on a route: each key (a client address,
/// a header's value or a TLS identity) may send `rate` requests every `per`, and `burst` at
/// once; past that it gets `429` with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Requests allowed every `per`, on average.
    pub rate: u32,
    /// The period `rate` counts over.
    pub per: Duration,
    /// Requests a key may send at once after being idle (the bucket's size).
    pub burst: u32,
    /// What the buckets are keyed by.
    pub key: RateLimitKey,
    /// Most keys held; keys past it share one bucket until idle ones are evicted.
    pub max_keys: usize,
}

/// What a route's rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The client's address (an IPv6 client's /64).
    Client,
    /// A request header's value (lower-case name); requests without it count by client.
    Header(String),
    /// The verified client certificate's SHA-256 fingerprint; clients without one count by
    /// address.
    TlsIdentity,
}

impl std::fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client => f.write_str("client"),
            Self::Header(name) => write!(f, "header:{name}"),
            Self::TlsIdentity => f.write_str("tls_identity"),
        }
    }
}

/// The protocols a route lets clients switch to when it does not say: WebSocket only.
pub fn default_upgrades() -> Vec<String> {
    vec!["websocket".to_owned()]
}

/// `redirect = { code, url }` on a route (nginx `return 301 URL`, Fabio `redirect=CODE,URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    /// 301, 302, 303, 307 or 308.
    pub code: u16,
    /// An absolute `http(s)://` URL or a path; every `$path` is replaced by the request path
    /// (after the route's `strip`/`prepend`).
    pub url: String,
}

impl RedirectConfig {
    /// Why `url` cannot be a redirect target, if it cannot: it must be a path (`$path` alone
    /// counts) or an `http(s)://` URL with a host, and hold nothing a `Location` header cannot.
    pub fn url_problem(url: &str) -> Option<&'static str> {
        if url
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii())
        {
            return Some(
                "it contains spaces, control or non-ASCII characters (percent-encode them)",
            );
        }
        if url.starts_with("//") {
            return Some("a scheme-relative URL is ambiguous; write the scheme");
        }
        if url.starts_with('/') || url.starts_with("$path") {
            return None;
        }
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        match rest {
            None => Some("it is neither a path nor an http:// or https:// URL"),
            Some(rest) if rest.is_empty() || rest.starts_with(['/', '?', '#', '$']) => {
                Some("the URL has no host")
            }
            Some(_) => None,
        }
    }

    /// Whether `code` is a status a redirect may answer with (one that carries `Location`).
    pub fn valid_code(code: i64) -> bool {
        [301, 302, 303, 307, 308].contains(&code)
    }
}

/// Whether a route's networks are the only ones let in, or the ones kept out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessAction {
    /// Only clients in the networks may use the route.
    Allow,
    /// Clients in the networks may not.
    Deny,
}

/// A route's client-address rules: one action for a list of networks (Fabio allows one of
/// `allow=`/`deny=` per route, and so does the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRules {
    /// What a match means.
    pub action: AccessAction,
    /// Client networks (a bare address is a /32 or /128).
    pub networks: Vec<ipnet::IpNet>,
}

impl AccessRules {
    /// An address or CIDR (`10.0.0.0/8`, `192.0.2.7`, `2001:db8::/32`), normalised to its
    /// network; a bare address is a single-host network.
    pub fn parse_network(text: &str) -> Option<ipnet::IpNet> {
        let text = text.trim();
        text.parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .ok()
            .map(|n| n.trunc())
    }

    /// Whether a client at `ip` may use the route.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d; rules are written
        // in IPv4, so compare the plain address.
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        let listed = self.networks.iter().any(|n| n.contains(&ip));
        match self.action {
            AccessAction::Allow => listed,
            AccessAction::Deny => !listed,
        }
    }
}

/// `upstream_host`: what the `Host` header sent to instances is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamHost {
    /// `"dst"`: the instance's own `IP:PORT` (Fabio's `host=dst`).
    Dst,
    /// A fixed name (`"api.internal"`, nginx `proxy_set_header Host`).
    Name(String),
}

impl UpstreamHost {
    /// `"dst"`, or a host name or address with an optional port (what a `Host` header holds).
    pub fn parse(text: &str) -> Option<Self> {
        if text == "dst" {
            return Some(UpstreamHost::Dst);
        }
        let valid = !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
        valid.then(|| UpstreamHost::Name(text.to_owned()))
    }
}

/// Balancing algorithm of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balancer {
    /// Smooth weighted round-robin.
    RoundRobin,
    /// The instance with the fewest requests in flight (per unit of weight).
    LeastRequest,
    /// Power of two random choices, comparing EWMA latency times load.
    P2cEwma,
    /// Consistent hashing (a ring) on a request key.
    Hash(HashKey),
}

/// What the consistent-hash balancer hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// A request header (lower-case name); the client IP when absent.
    Header(String),
    /// A cookie; the client IP when absent.
    Cookie(String),
}

/// One upstream instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// Address to connect to.
    pub address: SocketAddr,
    /// Relative share of traffic (1..=10000).
    pub weight: u32,
    /// Probe this address instead of the service's `[service.health] address` (members of a
    /// mirror on one host, each with its own management address).
    pub check_address: Option<std::net::IpAddr>,
    /// Probe this port instead of the service's `[service.health] port` (members sharing an
    /// IP, each with its own web server port).
    pub check_port: Option<u16>,
}

impl InstanceConfig {
    /// An instance with weight 1 and no check target of its own.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            weight: 1,
            check_address: None,
            check_port: None,
        }
    }

    /// Where `check` probes this instance: its own `check_address`/`check_port`, else the
    /// check's `address`/`port`, else the instance's address.
    pub fn check_target(&self, check: &HealthCheckConfig) -> SocketAddr {
        SocketAddr::new(
            self.check_address
                .or(check.address)
                .unwrap_or(self.address.ip()),
            self.check_port
                .or(check.port)
                .unwrap_or(self.address.port()),
        )
    }
}

/// `[service.timeouts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to an instance.
    pub connect: Duration,
    /// From request sent to response head received.
    pub response_header: Duration,
    /// Longest pause between two reads or writes of a body.
    pub idle: Duration,
    /// Whole exchange, from the request's arrival to the end of the response body.
    pub total: Duration,
    /// Longest pause on an upgraded (WebSocket) connection.
    pub tunnel_idle: Duration,
}

/// `[service.retries]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Extra attempts after the first (0 disables retries).
    pub attempts: u32,
    /// Upstream statuses that make an idempotent request retry on another instance.
    pub on_status: Vec<u16>,
    /// Retries allowed as a fraction of recent requests (the retry budget).
    pub budget_ratio: f64,
    /// Retries always allowed per second, whatever the ratio.
    pub budget_min_per_sec: u32,
    /// Largest request body kept in memory so the request can be replayed.
    pub buffer_bytes: usize,
}

/// `[service.outlier]`: passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Consecutive failures (connect errors, resets, timeouts, 5xx) that eject an instance;
    /// 0 disables ejection.
    pub consecutive_failures: u32,
    /// First ejection length; doubles on each repeat ejection.
    pub base_ejection: Duration,
    /// Cap on the ejection length.
    pub max_ejection: Duration,
    /// At most this share of a service's instances is ejected at once.
    pub max_ejected_percent: u8,
}

/// `[service.pool]`: upstream keep-alive connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle connections kept per instance.
    pub max_idle_per_instance: usize,
    /// An idle connection older than this is closed instead of reused.
    pub idle_timeout: Duration,
    /// HTTP/1.1 services: connects in progress to one instance at most. A request that finds
    /// no idle connection past it waits (within the connect timeout) for a connection to come
    /// back or a connect to finish, so a burst's connects reach the instance paced (over TLS,
    /// its accept queue never holds more).
    pub max_connecting: usize,
    /// HTTP/2 services: connections per instance at most. One carries as many streams as
    /// the instance allows (its `SETTINGS_MAX_CONCURRENT_STREAMS`); another opens only when
    /// every open one is full, and past this bound requests wait for a free stream.
    pub http2_max_connections: usize,
}

/// `protocol`: how Sluice speaks to a service's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, over TLS when `[service.tls]` is set.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over cleartext TCP.
    H2c,
    /// HTTP/2 over TLS, agreed through ALPN (`[service.tls]` required).
    H2,
}

impl UpstreamProtocol {
    /// Whether requests go out as HTTP/2 streams.
    pub fn is_http2(self) -> bool {
        !matches!(self, UpstreamProtocol::Http1)
    }
}

/// `[[service]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Unique name, referenced by routes.
    pub name: String,
    /// Balancing algorithm.
    pub balancer: Balancer,
    /// How requests go to the instances.
    pub protocol: UpstreamProtocol,
    /// Upstream instances; may be empty (requests then get 503).
    pub instances: Vec<InstanceConfig>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Retry policy.
    pub retries: RetryPolicy,
    /// Passive health.
    pub outlier: OutlierConfig,
    /// Upstream connection pool.
    pub pool: PoolConfig,
    /// Which instances may take traffic.
    pub serve: Serve,
    /// Active health check, if any.
    pub health: Option<HealthCheckConfig>,
    /// What happens to open TCP connections of an instance that loses the primary role.
    pub on_demotion: OnDemotion,
    /// `[service.tls]`: TLS to instances.
    pub tls: Option<crate::ServiceTlsConfig>,
    /// `[service.concurrency]`: a bound on the service's requests in flight, if any.
    pub concurrency: Option<ConcurrencyLimit>,
}

/// `[service.concurrency]`: at most `max_in_flight` requests of the service are in flight at
/// once; up to `max_queued` more wait (each at most `queue_timeout`) for one to finish, and
/// the rest are refused at once with `503 overloaded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyLimit {
    /// Requests sent or being answered at once, across the service's instances.
    pub max_in_flight: usize,
    /// Requests waiting for a place; past it a request is refused at once.
    pub max_queued: usize,
    /// The longest a request waits for a place (never past its own deadline).
    pub queue_timeout: Duration,
}

impl ServiceConfig {
    /// A service with every default and no instances, as `[[service]] name = "..."` alone
    /// gives (a test in the loader keeps the two equal).
    pub fn with_defaults(name: &str) -> Self {
        use crate::defaults as d;
        ServiceConfig {
            name: name.to_owned(),
            balancer: Balancer::RoundRobin,
            protocol: UpstreamProtocol::Http1,
            instances: Vec::new(),
            timeouts: Timeouts {
                connect: d::CONNECT_TIMEOUT,
                response_header: d::RESPONSE_HEADER_TIMEOUT,
                idle: d::IDLE_TIMEOUT,
                total: d::TOTAL_TIMEOUT,
                tunnel_idle: d::TUNNEL_IDLE_TIMEOUT,
            },
            retries: RetryPolicy {
                attempts: d::RETRY_ATTEMPTS,
                on_status: d::RETRY_ON_STATUS.to_vec(),
                budget_ratio: d::RETRY_BUDGET_RATIO,
                budget_min_per_sec: d::RETRY_BUDGET_MIN_PER_SEC,
                buffer_bytes: d::RETRY_BUFFER_BYTES,
            },
            outlier: OutlierConfig {
                consecutive_failures: d::OUTLIER_CONSECUTIVE_FAILURES,
                base_ejection: d::OUTLIER_BASE_EJECTION,
                max_ejection: d::OUTLIER_MAX_EJECTION,
                max_ejected_percent: d::OUTLIER_MAX_EJECTED_PERCENT,
            },
            pool: PoolConfig {
                max_idle_per_instance: d::POOL_MAX_IDLE,
                idle_timeout: d::POOL_IDLE_TIMEOUT,
                max_connecting: d::POOL_MAX_CONNECTING,
                http2_max_connections: d::POOL_HTTP2_MAX_CONNECTIONS,
            },
            serve: Serve::Any,
            health: None,
            on_demotion: OnDemotion::Close,
            tls: None,
            concurrency: None,
        }
    }
}

/// Which instances of a service take traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// Every instance not known to be down.
    Any,
    /// Only the instance whose latest health verdict is up with role primary.
    Primary,
}

/// What happens to a demoted primary's open TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDemotion {
    /// Close them, as a moving virtual IP would.
    Close,
    /// Leave them open.
    Keep,
}

/// What an active health check sends and expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// An HTTP request.
    Http {
        /// Request method.
        method: String,
        /// Path and query.
        path: String,
        /// `Host` header; the check address when absent.
        host: Option<String>,
        /// Statuses that mean up (native evaluator), as inclusive ranges.
        expect_status: Vec<(u16, u16)>,
        /// A substring the body prefix must contain (native evaluator).
        expect_body: Option<String>,
    },
    /// A TCP connection, optionally sending bytes and expecting a reply prefix.
    Tcp {
        /// Bytes to send after connecting.
        send: Option<String>,
        /// Bytes the reply must start with.
        expect: Option<String>,
    },
    /// A program: exit status 0 means up. `{address}` and `{port}` in arguments are replaced
    /// by the check target, which is also in `SLUICE_CHECK_ADDRESS` / `SLUICE_CHECK_PORT`.
    Command {
        /// Program and arguments.
        args: Vec<String>,
    },
    /// The standard gRPC health-checking protocol (`grpc.health.v1.Health/Check`) over
    /// cleartext HTTP/2: up when the answer is `SERVING`.
    Grpc {
        /// The service asked about; `""` asks for the server's overall health.
        service: String,
    },
}

/// `[service.health]`: the active check of every instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// What to probe.
    pub kind: CheckKind,
    /// Time between probes of one instance.
    pub interval: Duration,
    /// A probe not finished after this is a failure (`timeout`).
    pub timeout: Duration,
    /// Consecutive up verdicts that bring a down instance back.
    pub rise: u32,
    /// Consecutive down verdicts that take an up instance out.
    pub fall: u32,
    /// Random extra delay (0..jitter) added to each interval so probes do not synchronise.
    pub jitter: Duration,
    /// Probe this address instead of the instance's.
    pub address: Option<std::net::IpAddr>,
    /// Probe this port instead of the instance's (the mirror status page on 52773 while
    /// traffic goes to 1972).
    pub port: Option<u16>,
    /// A `[[policy]]` of world `health` that turns probe results into verdicts and roles.
    pub policy: Option<String>,
    /// Bytes of the response kept for evaluation.
    pub body_bytes: usize,
}
