//! Checks declared in registrations, as the proxy runs them: Consul's `check` becomes a
//! `[service.health]` with Consul's semantics, and each registration says where its instance is
//! probed.
//!
//! - **One check per service.** The proxy runs one check against every instance of a service:
//!   the first check of its first instance (by id) that declares one. The check is built with
//!   `sluice-config`'s constructors, so it gets exactly the defaults and rules of a
//!   `[service.health]` table.
//! - **Consul's thresholds.** Consul marks a check critical at its first failure and passing at
//!   its first success unless the definition sets `failures_before_critical` /
//!   `success_before_passing`; those become `fall` / `rise` (the config's defaults of 3 and 2
//!   would keep a dead instance routed for three intervals: 90 s at the common `30s`).
//! - **Probed on schedule.** Consul runs a check every `interval` exactly (only its first run
//!   is staggered), so the jitter the proxy adds is kept small: a dead instance is seen within
//!   one interval (plus the timeout, for one that hangs).
//! - **A target per registration.** Consul's `http` URL, `tcp` or `grpc` target names a host and
//!   port per registration; they become the instance's `check_address` / `check_port`. A loopback
//!   host (`localhost`, `127.0.0.1`) was written from inside the registrant, where it means the
//!   registrant itself: the instance's registered address is probed, unless that address is
//!   itself loopback (instances on this machine, told apart by loopback address).
//! - **gRPC over h2c only.** Consul's `grpc` (`host:port[/service]`) becomes `kind = "grpc"`
//!   asking about that service; a check with `grpc_use_tls` is refused
//!   ([`CheckError::GrpcTls`]): the proxy's gRPC probe speaks cleartext HTTP/2, and probing a
//!   TLS port in cleartext would only ever fail.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sluice_config::{CheckKind, HealthCheckConfig, HealthCheckProblem, InstanceConfig};
use sluice_discovery::{Catalog, CheckDefinition};

use crate::Resolver;

/// The most jitter a check from a registration gets: enough to spread probes started together,
/// small next to any interval, so "critical within one interval" holds.
const REGISTRATION_CHECK_JITTER: Duration = Duration::from_millis(100);

/// Each service's first declared check (instances come ordered by id), indexed once per
/// rebuild instead of scanning the catalog per service.
pub fn declared_checks(catalog: &Catalog) -> BTreeMap<&str, &CheckDefinition> {
    let mut checks = BTreeMap::new();
    for instance in catalog.instances() {
        if let Some(check) = instance.checks.first() {
            checks.entry(instance.service.as_str()).or_insert(check);
        }
    }
    checks
}

/// Why a registration's check cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckError {
    #[error("`{url}`: only http:// checks are supported")]
    NotHttp { url: String },
    #[error("{origin}: the check has none of http, tcp, grpc, args")]
    NothingToProbe { origin: String },
    #[error(
        "{origin}: gRPC check `{target}` uses TLS; the gRPC probe speaks cleartext HTTP/2 (h2c) only"
    )]
    GrpcTls { origin: String, target: String },
    #[error("{origin}: {source}")]
    Duration {
        origin: String,
        source: DurationError,
    },
    #[error("{origin}: {source}")]
    Invalid {
        origin: String,
        source: HealthCheckProblem,
    },
}

/// A duration of a check that is not one in Go's syntax.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: invalid duration `{text}`: {reason}")]
pub struct DurationError {
    /// The check's key (`interval`, `timeout`, `deregister_critical_service_after`).
    pub key: &'static str,
    pub text: String,
    pub reason: humantime::DurationError,
}

/// Why a registration's check target cannot be used (the instance's address is probed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("check of instance `{id}`: cannot resolve `{host}`; probing the instance's address")]
pub struct UnresolvedCheckHost {
    pub id: String,
    pub host: String,
}

/// The active check for service `name`, `None` when none of its instances declares one.
pub fn declared_check(
    checks: &BTreeMap<&str, &CheckDefinition>,
    name: &str,
) -> Option<Result<HealthCheckConfig, CheckError>> {
    let check = checks.get(name)?;
    Some(health_from_check(check))
}

/// A registration's check as a `[service.health]`, probing each instance where
/// [`registered_check_target`] says.
pub fn health_from_check(check: &CheckDefinition) -> Result<HealthCheckConfig, CheckError> {
    let origin = || {
        if check.id.is_empty() {
            "check".to_owned()
        } else {
            check.id.clone()
        }
    };
    let bad_duration = |source| CheckError::Duration {
        origin: origin(),
        source,
    };
    let invalid = |source| CheckError::Invalid {
        origin: origin(),
        source,
    };
    let mut health = HealthCheckConfig::with_defaults(check_kind(check, origin)?);
    if let Some(interval) = &check.interval {
        health = health.every(go_duration("interval", interval).map_err(bad_duration)?);
    }
    if let Some(timeout) = &check.timeout {
        let timeout = go_duration("timeout", timeout).map_err(bad_duration)?;
        health = health.with_timeout(timeout).map_err(invalid)?;
    }
    health.rise = check.rise();
    health.fall = check.fall();
    deregister_after(check).map_err(bad_duration)?;
    health.validate().map_err(invalid)?;
    health.jitter = health.jitter.min(REGISTRATION_CHECK_JITTER);
    Ok(health)
}

/// What the check probes: an HTTP `GET` of the URL's path, a TCP connect, a gRPC health check
/// of the target's service, or a program.
fn check_kind(
    check: &CheckDefinition,
    origin: impl Fn() -> String,
) -> Result<CheckKind, CheckError> {
    if let Some(url) = &check.http {
        let (_, path) =
            split_http_url(url).ok_or_else(|| CheckError::NotHttp { url: url.clone() })?;
        Ok(CheckKind::http_get(path))
    } else if check.tcp.is_some() {
        Ok(CheckKind::tcp_connect())
    } else if let Some(target) = &check.grpc {
        if check.grpc_use_tls {
            return Err(CheckError::GrpcTls {
                origin: origin(),
                target: target.clone(),
            });
        }
        Ok(CheckKind::grpc(split_grpc_target(target).1))
    } else if !check.args.is_empty() {
        Ok(CheckKind::Command {
            args: check.args.clone(),
        })
    } else {
        Err(CheckError::NothingToProbe { origin: origin() })
    }
}

/// One of Consul's durations: Go's syntax ("10s", "1500ms"), the same text humantime reads.
fn go_duration(key: &'static str, text: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(text).map_err(|reason| DurationError {
        key,
        text: text.to_owned(),
        reason,
    })
}

/// `deregister_critical_service_after`, read as Consul reads it (a Go duration).
pub fn deregister_after(check: &CheckDefinition) -> Result<Option<Duration>, DurationError> {
    check
        .deregister_critical_service_after
        .as_deref()
        .map(|text| go_duration("deregister_critical_service_after", text))
        .transpose()
}

/// `http://AUTHORITY/PATH` → (authority, path); only plain `http` is supported.
fn split_http_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    Some(match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    })
}

/// Consul's `grpc` target, `host:port/service` → (`host:port`, `service`); `""` (the server's
/// overall health) without a service.
fn split_grpc_target(target: &str) -> (&str, &str) {
    target.split_once('/').unwrap_or((target, ""))
}

/// The host and port a check names: the URL's authority (port 80 when absent), the `tcp`
/// target or the `grpc` target's authority. `None` for command checks and what
/// [`health_from_check`] rejects.
fn check_host_port(check: &CheckDefinition) -> Option<(&str, Option<u16>)> {
    let (authority, default_port) = match (&check.http, &check.tcp, &check.grpc) {
        (Some(url), _, _) => (split_http_url(url)?.0, Some(80)),
        (None, Some(target), _) => (target.as_str(), None),
        (None, None, Some(target)) => (split_grpc_target(target).0, None),
        (None, None, None) => return None,
    };
    // `[::1]:8000` (IPv6 in brackets) or `host:8000`.
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = port.and_then(|p| p.parse::<u16>().ok()).or(default_port);
    Some((host, port))
}

/// Where a host named by a check is, as seen from the proxy.
#[derive(Debug, PartialEq)]
enum CheckHost<'a> {
    /// The instance's own address.
    Instance,
    Ip(IpAddr),
    /// A name to resolve.
    Name(&'a str),
}

fn check_host(host: &str, instance: IpAddr) -> CheckHost<'_> {
    if host.is_empty() || host.eq_ignore_ascii_case("localhost") {
        return CheckHost::Instance;
    }
    match host.parse::<IpAddr>() {
        // Written from inside the registrant: itself, unless it registered a loopback address.
        Ok(ip) if ip.is_loopback() && !instance.is_loopback() => CheckHost::Instance,
        Ok(ip) if ip == instance => CheckHost::Instance,
        Ok(ip) => CheckHost::Ip(ip),
        Err(_) => CheckHost::Name(host),
    }
}

/// Where a registration's check probes its instance, when not at the instance's own address
/// and port: an instance's `check_address` / `check_port`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckTarget {
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
}

/// Where the registration's check probes instance `id` (at `address`), as an instance's
/// `check_address` / `check_port`: `None` for what is the instance's own. A check host that
/// does not resolve is reported and the instance's address probed.
pub async fn registered_check_target(
    catalog: &Catalog,
    id: &str,
    address: SocketAddr,
    resolver: &mut Resolver,
) -> Result<CheckTarget, UnresolvedCheckHost> {
    let Some((host, port)) = catalog
        .get(id)
        .and_then(|i| i.checks.first())
        .and_then(check_host_port)
    else {
        return Ok(CheckTarget::default());
    };
    let port = port.filter(|p| *p != address.port());
    let ip = match check_host(host, address.ip()) {
        CheckHost::Instance => None,
        CheckHost::Ip(ip) => Some(ip),
        CheckHost::Name(name) => {
            let found = resolver.resolve(name, port.unwrap_or(address.port())).await;
            let found = found.ok_or_else(|| UnresolvedCheckHost {
                id: id.to_owned(),
                host: name.to_owned(),
            })?;
            Some(found.ip()).filter(|ip| *ip != address.ip())
        }
    };
    Ok(CheckTarget { address: ip, port })
}

/// Gives the instances that name no check target of their own the one their registration's
/// check names (`targets`, by instance address).
pub fn apply_check_targets(
    instances: &mut [InstanceConfig],
    targets: &BTreeMap<SocketAddr, CheckTarget>,
) {
    for instance in instances {
        if instance.check_address.is_some() || instance.check_port.is_some() {
            continue;
        }
        if let Some(target) = targets.get(&instance.address) {
            instance.check_address = target.address;
            instance.check_port = target.port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> CheckDefinition {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn consul_checks_become_health_checks() {
        let tcp = health_from_check(&check(
            r#"{"tcp": "localhost:8000", "interval": "30s", "timeout": "20s"}"#,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(tcp.kind, sluice_config::CheckKind::Tcp { .. }),
            "{tcp:?}"
        );
        assert_eq!(
            (tcp.interval, tcp.timeout),
            (Duration::from_secs(30), Duration::from_secs(20))
        );
        assert_eq!(
            (tcp.port, tcp.address),
            (None, None),
            "the target is per instance"
        );

        let http = health_from_check(&check(
            r#"{"http": "http://127.0.0.1:9000/status/health", "interval": "5s"}"#,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        match &http.kind {
            sluice_config::CheckKind::Http { path, .. } => assert_eq!(path, "/status/health"),
            other => panic!("{other:?}"),
        }

        let args = health_from_check(&check(
            r#"{"args": ["/bin/sh", "-c", "test -f \"ready\""], "interval": "10s", "timeout": "2000ms"}"#,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        match &args.kind {
            sluice_config::CheckKind::Command { args } => {
                assert_eq!(args, &["/bin/sh", "-c", "test -f \"ready\""])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(args.timeout, Duration::from_secs(2));

        let bad = health_from_check(&check(r#"{"tcp": "x:1", "interval": "soon"}"#))
            .expect_err("bad duration");
        assert!(
            matches!(&bad, CheckError::Duration { origin, source } if origin == "check" && source.key == "interval"),
            "{bad:?}"
        );
        assert!(
            bad.to_string()
                .starts_with("check: interval: invalid duration `soon`"),
            "{bad}"
        );
        let none = health_from_check(&check("{}")).expect_err("nothing to probe");
        assert_eq!(
            none.to_string(),
            "check: the check has none of http, tcp, grpc, args"
        );
        let https = health_from_check(&check(r#"{"http": "https://x/health"}"#))
            .expect_err("only plain http");
        assert_eq!(
            https,
            CheckError::NotHttp {
                url: "https://x/health".into()
            }
        );
    }

    #[test]
    fn consul_grpc_checks_become_grpc_health_checks() {
        let whole = health_from_check(&check(
            r#"{"GRPC": "127.0.0.1:50051", "Interval": "5s", "Timeout": "1s"}"#,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            whole.kind,
            CheckKind::grpc(""),
            "the server's overall health"
        );
        assert_eq!(
            (whole.interval, whole.timeout, whole.fall, whole.rise),
            (Duration::from_secs(5), Duration::from_secs(1), 1, 1),
            "Consul's durations and thresholds, as for the other kinds"
        );
        let named = health_from_check(&check(
            r#"{"grpc": "ledger.internal:50051/billing.Ledger", "grpc_use_tls": false}"#,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(named.kind, CheckKind::grpc("billing.Ledger"));
        assert_eq!(named.validate(), Ok(()));

        let tls = health_from_check(&check(
            r#"{"ID": "ledger-grpc", "GRPC": "10.0.0.3:50051/billing.Ledger", "GRPCUseTLS": true}"#,
        ))
        .expect_err("TLS is not spoken by the gRPC probe");
        assert_eq!(
            tls,
            CheckError::GrpcTls {
                origin: "ledger-grpc".into(),
                target: "10.0.0.3:50051/billing.Ledger".into()
            }
        );
        assert_eq!(
            tls.to_string(),
            "ledger-grpc: gRPC check `10.0.0.3:50051/billing.Ledger` uses TLS; the gRPC probe \
             speaks cleartext HTTP/2 (h2c) only"
        );
        let spaced = health_from_check(&check(r#"{"grpc": "x:1/billing Ledger"}"#))
            .expect_err("not a service name");
        assert!(
            matches!(
                spaced,
                CheckError::Invalid {
                    source: HealthCheckProblem::GrpcService(_),
                    ..
                }
            ),
            "{spaced:?}"
        );
    }

    #[test]
    fn consul_thresholds_become_fall_and_rise() {
        let default = health_from_check(&check(r#"{"tcp": "x:1", "interval": "30s"}"#))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (default.fall, default.rise),
            (1, 1),
            "critical at the first failure, passing at the first success"
        );
        assert_eq!(
            default.jitter, REGISTRATION_CHECK_JITTER,
            "not 3 s: a dead instance is seen one interval after its last good probe"
        );
        let set = health_from_check(&check(
            r#"{"tcp": "x:1", "failures_before_critical": 3, "success_before_passing": 2}"#,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((set.fall, set.rise), (3, 2));
        let short = health_from_check(&check(r#"{"tcp": "x:1", "interval": "200ms"}"#))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(short.jitter, Duration::from_millis(20), "interval / 10");

        let too_many =
            health_from_check(&check(r#"{"tcp": "x:1", "failures_before_critical": 500}"#))
                .expect_err("beyond fall's range");
        assert_eq!(
            too_many,
            CheckError::Invalid {
                origin: "check".into(),
                source: HealthCheckProblem::Threshold {
                    which: "fall",
                    value: 500
                }
            }
        );
        assert_eq!(
            too_many.to_string(),
            "check: fall 500 is out of range 1..=100"
        );
        let bad = health_from_check(&check(
            r#"{"id": "web", "tcp": "x:1", "deregister_critical_service_after": "later"}"#,
        ))
        .expect_err("bad duration");
        assert!(
            bad.to_string()
                .starts_with("web: deregister_critical_service_after: invalid duration `later`"),
            "{bad}"
        );
        assert_eq!(
            deregister_after(&check(r#"{"deregister_critical_service_after": "1m"}"#)),
            Ok(Some(Duration::from_secs(60)))
        );
    }

    #[test]
    fn checks_name_their_host_and_port() {
        let target = |json: &str| check_host_port(&check(json)).map(|(h, p)| (h.to_owned(), p));
        assert_eq!(
            target(r#"{"http": "http://10.0.0.3:52773/csp/status"}"#),
            Some(("10.0.0.3".into(), Some(52773)))
        );
        assert_eq!(
            target(r#"{"http": "http://web"}"#),
            Some(("web".into(), Some(80)))
        );
        assert_eq!(
            target(r#"{"tcp": "[::1]:8000"}"#),
            Some(("::1".into(), Some(8000)))
        );
        assert_eq!(
            target(r#"{"grpc": "10.0.0.3:50051/billing.Ledger"}"#),
            Some(("10.0.0.3".into(), Some(50051)))
        );
        assert_eq!(
            target(r#"{"GRPC": "[::1]:50051"}"#),
            Some(("::1".into(), Some(50051)))
        );
        assert_eq!(target(r#"{"args": ["/bin/true"]}"#), None);

        let lan: IpAddr = "10.0.0.3".parse().unwrap_or_else(|e| panic!("{e}"));
        let lo: IpAddr = "127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"));
        let other: IpAddr = "127.0.0.11".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check_host("localhost", lo), CheckHost::Instance);
        assert_eq!(
            check_host("127.0.0.1", lan),
            CheckHost::Instance,
            "the registrant's own loopback"
        );
        assert_eq!(
            check_host("127.0.0.11", lo),
            CheckHost::Ip(other),
            "instances on this machine"
        );
        assert_eq!(check_host("10.0.0.3", lan), CheckHost::Instance);
        assert_eq!(check_host("mgmt", lan), CheckHost::Name("mgmt"));
    }
}
