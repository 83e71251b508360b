//! The policy host on the real shipped policies: warm calls of each world, and load time.
//! Targets (docs/benchmarks.md): `authorize` and `evaluate` under 2 µs median, `build-routes`
//! over 10k instances under 50 ms; `on-request` under 2 µs for a header check (test guest
//! `header_gate`) and under 10 µs for the shipped `jwt` policy verifying an HS256 token. The
//! Python authz example (`examples/policies-python/authz`, componentize-py) is measured next to
//! the Rust `ecp-authz` on the same peer and an equivalent config: warm call, cold load, and a
//! reconfigure (new instances of a compiled module).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use sluice_config::{FailureMode, PolicyConfig, PolicyLimits, PolicySource, PolicyWorld};
use sluice_policy_host::types::{
    Action, ClientCertificate, Decision, HealthStatus, HttpRequest, Instance, Peer, ProbeKind,
    ProbeResult, RouteInfo,
};
use sluice_policy_host::{
    AnswerMemory, AuthzOutcome, HealthOutcome, HostConfig, MemoryKv, PolicyHost, RequestOutcome,
    RequestView, RoutingOutcome,
};
use sluice_policy_test_artifacts as artifacts;

fn policy(name: &str, file: &str, world: PolicyWorld, config: serde_json::Value) -> PolicyConfig {
    PolicyConfig {
        name: name.into(),
        file: PolicySource::File(file.into()),
        world,
        config,
        limits: PolicyLimits {
            timeout: Duration::from_millis(100),
            max_memory_bytes: 64 << 20,
        },
        failure_mode: if matches!(world, PolicyWorld::Authz | PolicyWorld::Request) {
            FailureMode::Closed
        } else {
            FailureMode::KeepLast
        },
        request_fields: None,
    }
}

fn host(policies: &[PolicyConfig]) -> PolicyHost {
    host_with_kv(policies, MemoryKv::new())
}

fn host_with_kv(policies: &[PolicyConfig], kv: MemoryKv) -> PolicyHost {
    let config = HostConfig {
        max_instances: 32,
        ..HostConfig::default()
    };
    let host = PolicyHost::new(config, Arc::new(kv)).expect("engine starts");
    let report = host.apply_config(policies);
    assert!(report.is_ok(), "{report:?}");
    host
}

/// The two authz policies compared: the same allow-list of 3 CNs and one CIDR.
fn authz_policies() -> [(&'static str, String, serde_json::Value); 2] {
    let python = artifacts::python_example("authz");
    [
        (
            "ecp-authz",
            artifacts::ECP_AUTHZ.to_owned(),
            json!({"client_systems": "app1;app2;app3", "source_cidrs": ["10.0.0.0/8"]}),
        ),
        (
            "python authz",
            python.display().to_string(),
            json!({"allowed_cns": ["app1", "app2", "app3"], "source_cidrs": ["10.0.0.0/8"]}),
        ),
    ]
}

fn bench_authorize(c: &mut Criterion) {
    let peer = authz_peer();
    for (name, file, config) in authz_policies() {
        let host = host(&[policy(name, &file, PolicyWorld::Authz, config)]);
        let authz = host.authz(name).expect("authz");
        assert_eq!(
            authz.authorize(&peer),
            AuthzOutcome::Decided(Decision::Allow)
        );
        c.bench_function(&format!("policy/authorize_warm ({name})"), |b| {
            b.iter(|| authz.authorize(black_box(&peer)))
        });
    }
}

fn authz_peer() -> Peer {
    Peer {
        listener: "ecp".into(),
        source_address: "10.1.2.3".into(),
        source_port: 40000,
        sni: Some("data".into()),
        alpn: None,
        client_certificate: Some(ClientCertificate {
            subject_cn: Some("app2".into()),
            dns_sans: vec!["app2.example".into()],
            uri_sans: vec![],
            issuer: "CN=Sluice CA".into(),
            sha256_fingerprint: "ab".repeat(32),
            not_before: 0,
            not_after: 4_000_000_000,
        }),
    }
}

/// A header check per request: the guide's example `key_check`, the Rust test guest
/// `header_gate` and the Python request example, all forwarding a request whose `x-api-key`
/// matches (two header edits), next to a policy that reads nothing. Two requests: from a client with a verified certificate (mutual TLS),
/// and plain HTTP with a few more fields (`http_request`). Each iteration refills one reused
/// view, as the proxy does per request. The same two Rust guests built against contract 0.2.0
/// (the request copied whole into the guest) show what the request resource saves.
fn bench_on_request(c: &mut Criterion) {
    let python = artifacts::python_example("request").display().to_string();
    let mutual_tls = HttpRequest {
        method: "GET".into(),
        scheme: "http".into(),
        host: "api.example".into(),
        path: "/v1/items".into(),
        query: Some("page=2".into()),
        headers: [
            ("accept", "application/json"),
            ("user-agent", "curl/8.5.0"),
            ("x-api-key", "sesame"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .to_vec(),
        peer: authz_peer(),
        route: RouteInfo {
            listener: "web".into(),
            name: "api".into(),
            service: "api".into(),
            allowed_services: vec![],
        },
    };
    for (name, file, config) in [
        // The floor: the same request passed in, an empty `forward` back.
        (
            "noop_request",
            artifacts::NOOP_REQUEST.to_owned(),
            json!({}),
        ),
        // The guide's header check: one field read, two edits.
        (
            "key_check",
            artifacts::KEY_CHECK.to_owned(),
            json!({"api_key": "sesame"}),
        ),
        // A test guest: the same check, plus five more fields read (its test hooks).
        (
            "header_gate",
            artifacts::HEADER_GATE.to_owned(),
            json!({"key": "sesame"}),
        ),
        ("python request", python, json!({"api_key": "sesame"})),
        (
            "noop_request 0.2.0",
            contract_0_2_0("noop_request"),
            json!({}),
        ),
        (
            "header_gate 0.2.0",
            contract_0_2_0("header_gate"),
            json!({"key": "sesame"}),
        ),
    ] {
        let host = host(&[policy(name, &file, PolicyWorld::Request, config)]);
        let gate = host.request(name).expect("request");
        let plain = http_request(&[("x-api-key", "sesame")]);
        for (label, request) in [("mutual TLS", &mutual_tls), ("plain", &plain)] {
            assert!(matches!(
                gate.on_request(request),
                RequestOutcome::Decided(Action::Forward(_))
            ));
            let mut view = RequestView::default();
            c.bench_function(&format!("policy/on_request_warm ({name}, {label})"), |b| {
                b.iter(|| {
                    view.copy_from(black_box(request));
                    gate.on_request_view(&mut view)
                })
            });
        }
    }
}

fn bench_evaluate(c: &mut Criterion) {
    let host = host(&[policy(
        "mirror",
        artifacts::MIRROR_PRIMARY,
        PolicyWorld::Health,
        json!({}),
    )]);
    let mirror = host.health("mirror").expect("health");
    let member = instance(0, &[]);
    let probe = ProbeResult {
        kind: ProbeKind::Http,
        status: Some(200),
        headers: vec![("content-type".into(), "text/plain".into())],
        body_prefix: b"SUCCESS".to_vec(),
        latency_us: 850,
        error: None,
    };
    assert!(matches!(
        mirror.evaluate(&member, &probe),
        HealthOutcome::Verdict(_)
    ));
    c.bench_function("policy/evaluate_warm (mirror-primary)", |b| {
        b.iter(|| mirror.evaluate(black_box(&member), black_box(&probe)))
    });
}

/// A test guest (or the `jwt` policy) as built against contract 0.2.0, kept as a fixture of the
/// policy host's tests.
fn contract_0_2_0(guest: &str) -> String {
    format!(
        "{}/../crates/policy-host/tests/fixtures/{guest}_wit_0_2_0.wasm",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A GET with the usual client fields plus `extra`, on a route of service `orders`.
fn http_request(extra: &[(&str, &str)]) -> HttpRequest {
    let mut headers: Vec<(String, String)> = [
        ("host", "api.example"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
    ]
    .iter()
    .chain(extra)
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    headers.push(("x-request-id".into(), "4bf92f3577b34da6".into()));
    HttpRequest {
        method: "GET".into(),
        scheme: "http".into(),
        host: "api.example".into(),
        path: "/orders/42".into(),
        query: Some("expand=items".into()),
        headers,
        peer: Peer {
            listener: "web".into(),
            source_address: "10.1.2.3".into(),
            source_port: 40000,
            sni: None,
            alpn: None,
            client_certificate: None,
        },
        route: RouteInfo {
            listener: "web".into(),
            name: "orders".into(),
            service: "orders".into(),
            allowed_services: vec![],
        },
    }
}

/// The shipped `jwt` policy verifying an HS256 token (secret in config, then in KV), and the same
/// policy as built against contract 0.2.0 (the request copied whole) with the secret in config.
fn bench_on_request_jwt(c: &mut Criterion) {
    let secret = "seed-003-shared-secret";
    let day_ahead = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 86_400;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "svc-a", "role": "writer", "aud": "orders", "exp": day_ahead}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("HMAC key"),
    )
    .expect("signs");
    let signed = http_request(&[("authorization", &format!("Bearer {token}"))]);
    let mapping = json!({"sub": "x-user", "role": "x-role"});
    let contract_0_2_0 = contract_0_2_0("jwt");
    for (label, file, config) in [
        ("secret", artifacts::JWT, json!({"secret": secret})),
        (
            "secret_kv_key",
            artifacts::JWT,
            json!({"secret_kv_key": "jwt/secret"}),
        ),
        (
            "secret, 0.2.0",
            contract_0_2_0.as_str(),
            json!({"secret": secret}),
        ),
    ] {
        let mut config = config;
        config["audience"] = json!("orders");
        config["claims_to_headers"] = mapping.clone();
        let kv = MemoryKv::new();
        kv.set("jwt/secret", secret);
        let jwt_host = host_with_kv(&[policy("jwt", file, PolicyWorld::Request, config)], kv);
        let jwt = jwt_host.request("jwt").expect("request");
        assert!(matches!(
            jwt.on_request(&signed),
            RequestOutcome::Decided(Action::Forward(_))
        ));
        c.bench_function(
            &format!("policy/on_request_warm (jwt HS256, {label})"),
            |b| {
                let mut view = RequestView::default();
                b.iter(|| {
                    view.copy_from(black_box(&signed));
                    jwt.on_request_view(&mut view)
                })
            },
        );
        // What the proxy does: the answer the policy let it reuse, given without a call.
        c.bench_function(
            &format!("policy/on_request_remembered (jwt HS256, {label})"),
            |b| {
                let mut view = RequestView::default();
                let mut memory = AnswerMemory::new();
                b.iter(|| {
                    view.copy_from(black_box(&signed));
                    jwt.on_request_remembered(&mut view, &mut memory)
                })
            },
        );
    }
    bench_jwt_public_keys(c, day_ahead);
}

/// RS256 and ES256 with the `jwt` policy's test keys, the JWKS in KV: public-key verification
/// in WebAssembly, for comparison with HS256.
fn bench_jwt_public_keys(c: &mut Criterion, exp: u64) {
    let fixtures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../wasm-policies/jwt/tests/fixtures"
    );
    let read = |name: &str| {
        std::fs::read_to_string(format!("{fixtures}/{name}"))
            .unwrap_or_else(|e| panic!("cannot read the jwt fixture {name}: {e}"))
    };
    let kv = MemoryKv::new();
    kv.set("jwt/jwks", &read("jwks.json"));
    let jwt_host = host_with_kv(
        &[policy(
            "jwt",
            artifacts::JWT,
            PolicyWorld::Request,
            json!({"jwks_kv_key": "jwt/jwks", "claims_to_headers": {"sub": "x-user"}}),
        )],
        kv,
    );
    let jwt = jwt_host.request("jwt").expect("request");
    let claims = json!({"sub": "svc-a", "exp": exp});
    for (alg, kid, key) in [
        (
            jsonwebtoken::Algorithm::RS256,
            "rsa-1",
            jsonwebtoken::EncodingKey::from_rsa_pem(read("rsa_private.pem").as_bytes()),
        ),
        (
            jsonwebtoken::Algorithm::ES256,
            "ec-1",
            jsonwebtoken::EncodingKey::from_ec_pem(read("ec_private.pem").as_bytes()),
        ),
    ] {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(kid.into());
        let token =
            jsonwebtoken::encode(&header, &claims, &key.expect("fixture key")).expect("signs");
        let signed = http_request(&[("authorization", &format!("Bearer {token}"))]);
        assert!(matches!(
            jwt.on_request(&signed),
            RequestOutcome::Decided(Action::Forward(_))
        ));
        c.bench_function(
            &format!("policy/on_request_warm (jwt {alg:?}, JWKS)"),
            |b| b.iter(|| jwt.on_request(black_box(&signed))),
        );
    }
}

fn instance(i: usize, tags: &[String]) -> Instance {
    Instance {
        id: format!("svc{}-{i}", i % 1000),
        service: format!("svc{}", i % 1000),
        address: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        port: 8000 + (i % 1000) as u16,
        tags: tags.to_vec(),
        metadata: vec![("zone".into(), "a".into())],
        health: HealthStatus::Passing,
    }
}

fn bench_build_routes(c: &mut Criterion) {
    let host = host(&[policy(
        "tags",
        artifacts::URLPREFIX,
        PolicyWorld::Routing,
        json!({}),
    )]);
    let tags = host.routing("tags").expect("routing");
    // 10k instances of 1,000 services: 1,000 routes of 10 targets each.
    let catalog: Vec<Instance> = (0..10_000)
        .map(|i| {
            instance(
                i,
                &[
                    format!("urlprefix-/svc{} strip=/svc{}", i % 1000, i % 1000),
                    "v1".into(),
                ],
            )
        })
        .collect();
    let RoutingOutcome::Routes(table) = tags.build_routes(&catalog) else {
        panic!("routing failed")
    };
    assert_eq!(table.routes.len(), 1000);
    let mut group = c.benchmark_group("policy");
    group.sample_size(20);
    group.bench_function("build_routes_10k_instances (urlprefix)", |b| {
        b.iter(|| tags.build_routes(black_box(&catalog)))
    });
    group.finish();
}

fn bench_load(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy");
    group.sample_size(10);
    for (name, file, world, config) in [
        (
            "mirror-primary",
            artifacts::MIRROR_PRIMARY,
            PolicyWorld::Health,
            json!({}),
        ),
        (
            "urlprefix",
            artifacts::URLPREFIX,
            PolicyWorld::Routing,
            json!({}),
        ),
        (
            "ecp-authz",
            artifacts::ECP_AUTHZ,
            PolicyWorld::Authz,
            json!({"client_systems": "app1"}),
        ),
    ] {
        // A new engine each time, so nothing is cached: compile + link + instantiate + configure.
        group.bench_function(format!("load_cold ({name})"), |b| {
            b.iter(|| host(&[policy(name, file, world, config.clone())]))
        });
    }
    let python = artifacts::python_example("authz").display().to_string();
    let python_config = json!({"allowed_cns": ["app1"]});
    group.bench_function("load_cold (python authz)", |b| {
        b.iter(|| {
            host(&[policy(
                "python",
                &python,
                PolicyWorld::Authz,
                python_config.clone(),
            )])
        })
    });
    group.finish();
}

/// A config change on a loaded policy: the module stays compiled (same bytes), so this is the
/// cost of a new version's instances (instantiate + `configure`, `prewarm` of them). It is also
/// about what a call pays when its thread's pool is empty and the host creates an instance.
fn bench_reconfigure(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy");
    group.sample_size(10);
    for (name, file, config) in authz_policies() {
        let loaded = host(&[policy(name, &file, PolicyWorld::Authz, config.clone())]);
        let mut other = config.clone();
        other["source_cidrs"] = json!(["10.0.0.0/8", "192.0.2.0/24"]);
        let configs = [config, other].map(|c| policy(name, &file, PolicyWorld::Authz, c));
        let mut turn = 0;
        group.bench_function(format!("reconfigure ({name})"), |b| {
            b.iter(|| {
                turn ^= 1;
                let report = loaded.apply_config(std::slice::from_ref(&configs[turn]));
                assert!(report.is_ok(), "{report:?}");
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_authorize,
    bench_on_request,
    bench_on_request_jwt,
    bench_evaluate,
    bench_build_routes,
    bench_load,
    bench_reconfigure
);
criterion_main!(benches);
