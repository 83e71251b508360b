//! Shared helpers of the host tests: configs, inputs, a small host.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::{FailureMode, PolicyConfig, PolicyLimits, PolicySource, PolicyWorld};
use sluice_policy_host::types::{
    ClientCertificate, HealthStatus, HttpRequest, Instance, Peer, ProbeKind, ProbeResult, RouteInfo,
};
use sluice_policy_host::{CrashBudgetConfig, HostConfig, KvView, MemoryKv, PolicyHost};

pub fn host_config() -> HostConfig {
    HostConfig {
        max_instances: 32,
        prewarm: 1,
        pool_capacity: 4,
        // Tests provoke crashes on purpose; only the crash-budget test wants suspensions.
        crash_budget: CrashBudgetConfig {
            max_crashes: 1000,
            ..CrashBudgetConfig::default()
        },
        ..HostConfig::default()
    }
}

pub fn host() -> PolicyHost {
    PolicyHost::new(host_config(), Arc::new(MemoryKv::new())).expect("engine starts")
}

/// A host with one policy loaded; a rejected load fails the test with the host's report.
pub fn host_loading(config: PolicyConfig) -> PolicyHost {
    let host = host();
    let report = host.apply_config(&[config]);
    assert!(report.is_ok(), "{report:?}");
    host
}

pub fn host_with_kv(kv: Arc<dyn KvView>) -> PolicyHost {
    PolicyHost::new(host_config(), kv).expect("engine starts")
}

pub fn policy(
    name: &str,
    file: impl AsRef<Path>,
    world: PolicyWorld,
    config: serde_json::Value,
) -> PolicyConfig {
    PolicyConfig {
        name: name.into(),
        file: PolicySource::File(file.as_ref().to_owned()),
        world,
        config,
        // Generous: deadlines are wall-clock and tests share two cores; the deadline tests set theirs.
        limits: PolicyLimits {
            timeout: Duration::from_millis(100),
            max_memory_bytes: 16 << 20,
        },
        failure_mode: match world {
            PolicyWorld::Authz | PolicyWorld::Request => FailureMode::Closed,
            _ => FailureMode::KeepLast,
        },
        request_fields: None,
    }
}

pub fn peer(listener: &str, cn: Option<&str>, source: &str) -> Peer {
    Peer {
        listener: listener.into(),
        source_address: source.into(),
        source_port: 50000,
        sni: None,
        alpn: None,
        client_certificate: cn.map(|cn| ClientCertificate {
            subject_cn: Some(cn.into()),
            dns_sans: vec![],
            uri_sans: vec![],
            issuer: "CN=test CA".into(),
            sha256_fingerprint: "00".repeat(32),
            not_before: 0,
            not_after: 4_000_000_000,
        }),
    }
}

pub fn instance(id: &str, service: &str, tags: &[&str]) -> Instance {
    Instance {
        id: id.into(),
        service: service.into(),
        address: "127.0.0.1".into(),
        port: 8080,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        metadata: vec![],
        health: HealthStatus::Passing,
    }
}

pub fn http_probe(status: u16, body: &str) -> ProbeResult {
    ProbeResult {
        kind: ProbeKind::Http,
        status: Some(status),
        headers: vec![],
        body_prefix: body.as_bytes().to_vec(),
        latency_us: 800,
        error: None,
    }
}

/// A GET of `path` on route `api` (service `web`, which may switch to `canary`) with `headers`.
pub fn http_request(path: &str, headers: &[(&str, &str)]) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        scheme: "http".into(),
        host: "example.test".into(),
        path: path.into(),
        query: None,
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        peer: peer("web", None, "127.0.0.1"),
        route: RouteInfo {
            listener: "web".into(),
            name: "api".into(),
            service: "web".into(),
            allowed_services: vec!["canary".into()],
        },
    }
}
