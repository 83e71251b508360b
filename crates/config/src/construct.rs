//! Values built in code rather than read from a file (discovered services, listeners and
//! checks), with exactly the defaults of [`crate::defaults`] and the rules the loader applies.
//! Tests in `tests/construct.rs` keep each constructor equal to what the file form gives.

use std::net::SocketAddr;
use std::time::Duration;

use crate::defaults as d;
use crate::model::{
    CheckKind, HealthCheckConfig, ListenerConfig, ListenerProtocol, ProxyProtocol,
    TcpListenerConfig,
};

/// Why a prefix or probe path cannot be used (the loader's rule for `path` and `prefix`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    #[error("must start with '/'")]
    NoLeadingSlash,
    #[error("contains characters not allowed in a path (whitespace, control, '?' or '#')")]
    NotAllowed,
}

/// `Ok` when `path` is a usable path (or prefix): it starts with `/` and holds no whitespace,
/// control character, query or fragment.
pub fn check_path(path: &str) -> Result<(), PathProblem> {
    if !path.starts_with('/') {
        return Err(PathProblem::NoLeadingSlash);
    }
    let not_allowed =
        |b: u8| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#';
    if path.bytes().any(not_allowed) {
        return Err(PathProblem::NotAllowed);
    }
    Ok(())
}

/// Why a gRPC health check's service name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gRPC service name {service:?} contains whitespace or control characters")]
pub struct GrpcServiceProblem {
    pub service: String,
}

/// `Ok` when `service` can be asked about in a gRPC health check: `""` (the whole server) or a
/// name without whitespace or control characters. Fully qualified service names
/// (`package.Service`) never hold them, so one that does is a typo that would only ever be
/// answered `NOT_FOUND`.
pub fn check_grpc_service(service: &str) -> Result<(), GrpcServiceProblem> {
    if service.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(GrpcServiceProblem {
            service: service.to_owned(),
        });
    }
    Ok(())
}

/// Why a health check built in code breaks a rule of `[service.health]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthCheckProblem {
    #[error("{which} {value} is out of range {}..={}", d::HEALTH_THRESHOLDS.start(), d::HEALTH_THRESHOLDS.end())]
    Threshold { which: &'static str, value: u32 },
    #[error(
        "timeout {timeout:?} is longer than the interval {interval:?} (probes of one instance never overlap)"
    )]
    TimeoutOverInterval {
        timeout: Duration,
        interval: Duration,
    },
    #[error("{which} must be greater than zero")]
    Zero { which: &'static str },
    #[error("a command check needs a program to run")]
    NoCommand,
    #[error("path `{path}` {problem}")]
    Path { path: String, problem: PathProblem },
    #[error(transparent)]
    GrpcService(#[from] GrpcServiceProblem),
}

impl CheckKind {
    /// `kind = "http"` with every default: `GET path`, any 2xx or 3xx is up.
    pub fn http_get(path: &str) -> Self {
        CheckKind::Http {
            method: "GET".to_owned(),
            path: path.to_owned(),
            host: None,
            expect_status: vec![(200, 399)],
            expect_body: None,
        }
    }

    /// `kind = "tcp"`: a connection that opens is up.
    pub fn tcp_connect() -> Self {
        CheckKind::Tcp {
            send: None,
            expect: None,
        }
    }

    /// `kind = "grpc"`: the gRPC health service's answer for `service` is `SERVING`; `""`
    /// asks about the whole server (`grpc_service` left out).
    pub fn grpc(service: &str) -> Self {
        CheckKind::Grpc {
            service: service.to_owned(),
        }
    }
}

impl HealthCheckConfig {
    /// A `[service.health]` of `kind` with every other key at its default.
    pub fn with_defaults(kind: CheckKind) -> Self {
        HealthCheckConfig {
            kind,
            interval: d::HEALTH_INTERVAL,
            timeout: d::HEALTH_TIMEOUT,
            rise: d::HEALTH_RISE,
            fall: d::HEALTH_FALL,
            jitter: d::HEALTH_INTERVAL / 10,
            address: None,
            port: None,
            policy: None,
            body_bytes: d::HEALTH_BODY_BYTES,
        }
    }

    /// Sets the interval and the jitter the file would give it (a tenth of the interval).
    pub fn every(self, interval: Duration) -> Self {
        HealthCheckConfig {
            interval,
            jitter: interval / 10,
            ..self
        }
    }

    /// Sets a timeout given explicitly, which (as in the file) may not exceed the interval;
    /// the default timeout is kept with any interval.
    pub fn with_timeout(self, timeout: Duration) -> Result<Self, HealthCheckProblem> {
        if timeout > self.interval {
            return Err(HealthCheckProblem::TimeoutOverInterval {
                timeout,
                interval: self.interval,
            });
        }
        Ok(HealthCheckConfig { timeout, ..self })
    }

    /// The rules the loader applies to a `[service.health]` table, for checks built in code.
    pub fn validate(&self) -> Result<(), HealthCheckProblem> {
        for (which, value) in [("rise", self.rise), ("fall", self.fall)] {
            if !d::HEALTH_THRESHOLDS.contains(&value) {
                return Err(HealthCheckProblem::Threshold { which, value });
            }
        }
        for (which, value) in [("interval", self.interval), ("timeout", self.timeout)] {
            if value.is_zero() {
                return Err(HealthCheckProblem::Zero { which });
            }
        }
        match &self.kind {
            CheckKind::Command { args } if args.first().is_none_or(String::is_empty) => {
                Err(HealthCheckProblem::NoCommand)
            }
            CheckKind::Http { path, .. } => {
                check_path(path).map_err(|problem| HealthCheckProblem::Path {
                    path: path.clone(),
                    problem,
                })
            }
            CheckKind::Grpc { service } => Ok(check_grpc_service(service)?),
            _ => Ok(()),
        }
    }
}

impl ListenerConfig {
    /// A `protocol = "tcp"` listener on `bind` relaying every connection to `service`, with
    /// every other key at its default.
    pub fn tcp_with_defaults(name: &str, bind: SocketAddr, service: &str) -> Self {
        ListenerConfig {
            name: name.to_owned(),
            bind,
            protocol: ListenerProtocol::Tcp,
            max_connections: d::MAX_CONNECTIONS,
            header_read_timeout: d::HEADER_READ_TIMEOUT,
            max_header_bytes: d::MAX_HEADER_BYTES,
            keepalive_timeout: d::KEEPALIVE_TIMEOUT,
            request_body_timeout: d::REQUEST_BODY_TIMEOUT,
            send_timeout: d::SEND_TIMEOUT,
            http2: true,
            accept_proxy_protocol: false,
            max_concurrent_streams: d::MAX_CONCURRENT_STREAMS,
            http2_max_stalled_streams: d::HTTP2_MAX_STALLED_STREAMS,
            tcp: Some(TcpListenerConfig {
                service: Some(service.to_owned()),
                sni: None,
                proxy_protocol: ProxyProtocol::Off,
                idle_timeout: d::TCP_IDLE_TIMEOUT,
            }),
            tls: None,
            authz: None,
        }
    }
}
