//! Python policies in the real binary: the examples in `examples/policies-python/`, built with
//! componentize-py by their own `build.sh` (cached by source hash under the target directory),
//! tried with `sluice policy check` as the guide shows; then the `authz` one deciding mutual-TLS
//! connections of `openssl s_client` clients on a TCP listener, and the `request` one gating an
//! HTTP route by API key for curl (401 JSON, header edits, a canary pick, a response header).
//!
//! componentize-py must be installed (scripts/setup.sh); without it these tests fail saying so.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_policy_test_artifacts::python_example;
use sluice_test_support::certs::{Leaf, TestCa};
use sluice_test_support::{
    Backend, MirrorMember, MirrorRole, SluiceProcess, curl, eventually_blocking, free_port,
    http_get, require_tool,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// A debug build compiles the 18 MB Python component in about 20 s on a busy machine.
const START_WITHIN: Duration = Duration::from_secs(120);

/// `sluice policy check FILE --config CONFIG --input INPUT`, which must pass; its stdout.
fn policy_check(file: &Path, config: &str, input: &str) -> String {
    let out = Command::new(BIN)
        .args(["policy", "check"])
        .arg(file)
        .args(["--config", config, "--input", input])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn policy_check_runs_the_python_authz_example_on_a_peer() {
    let file = python_example("authz");
    let peer = r#"{"listener": "db", "source_address": "10.1.2.3", "source_port": 40000,
        "client_certificate": {"subject_cn": "app2", "dns_sans": [], "uri_sans": [], "issuer": "CN=CA",
        "sha256_fingerprint": "ab", "not_before": 0, "not_after": 4000000000}}"#;
    let config = r#"{"allowed_cns": ["app1", "app2"], "source_cidrs": ["10.0.0.0/8"]}"#;
    let stdout = policy_check(&file, config, peer);
    assert!(
        stdout.contains("world:     authz (exports configure, authorize)"),
        "{stdout}"
    );
    assert!(stdout.contains("configure: ok"), "{stdout}");
    assert!(stdout.contains("authorize: \"Allow\""), "{stdout}");
}

#[test]
fn policy_check_runs_the_python_request_example_on_a_request() {
    let file = python_example("request");
    let request = r#"{"method": "GET", "scheme": "http", "host": "api.test", "path": "/v1",
        "headers": [["accept", "*/*"]],
        "peer": {"listener": "web", "source_address": "127.0.0.1", "source_port": 40000},
        "route": {"listener": "web", "name": "api", "service": "api", "allowed_services": []}}"#;
    let stdout = policy_check(&file, r#"{"api_key": "sesame"}"#, request);
    assert!(stdout.contains("world:     request"), "{stdout}");
    assert!(stdout.contains("configure: ok"), "{stdout}");
    // No key: the policy answers 401 itself.
    assert!(
        stdout.contains("on-request:") && stdout.contains("401"),
        "{stdout}"
    );
}

#[test]
fn python_authz_policy_decides_mutual_tls_connections() {
    require_tool("openssl");
    let file = python_example("authz");
    let ca = TestCa::new("Python CA");
    let server = ca.issue(&Leaf::server("data", &["data.test"]));
    ca.issue(&Leaf::client("app1", "app1", &[]));
    ca.issue(&Leaf::client("app3", "app3", &[]));
    let member = MirrorMember::start("datasrv", MirrorRole::Primary);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let db: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n[runtime]\nworker_threads = 2\nshutdown_grace = \"1s\"\n[access_log]\npath = \"off\"\n\
         [[policy]]\nname = \"py\"\nfile = {file:?}\nworld = \"authz\"\ntimeout = \"50ms\"\n\
         config = {{ allowed_cns = [\"app1\", \"app2\"], source_cidrs = [\"127.0.0.0/8\"] }}\n\
         [[listener]]\nname = \"db\"\nbind = \"{db}\"\nprotocol = \"tcp\"\nservice = \"data\"\n\
         [listener.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nclient_auth = \"required\"\n\
         [listener.authz]\npolicy = \"py\"\n\
         [[service]]\nname = \"data\"\ninstances = [\"{}\"]\n",
        server.cert,
        server.key,
        ca.ca_path,
        member.tcp()
    );
    let mut p = SluiceProcess::start_within(Path::new(BIN), &config, admin, START_WITHIN);
    let connect = |client: &str| sluice_test_support::s_client_first_line_as(db, &ca, client);
    assert_eq!(connect("app1"), "datasrv", "app1 is on the allow-list");
    assert_eq!(connect("app3"), "", "app3 is not");
    eventually_blocking("denial counted and logged", Duration::from_secs(10), || {
        let metrics = http_get(admin, "/metrics").map_err(|e| e.to_string())?.1;
        if metrics.contains(r#"sluice_authz_denied_total{listener="db",reason="policy"} 1"#) {
            Ok(())
        } else {
            Err(metrics)
        }
    });
    let stderr = p.stderr();
    assert!(
        stderr.contains("connection denied by [listener.authz]")
            && stderr.contains("client `app3` is not in the allow-list"),
        "{stderr}"
    );
    // The guest's own log line from `configure`, tagged with the policy's name.
    assert!(stderr.contains("allowing 2 CNs"), "{stderr}");
    assert!(p.terminate(Duration::from_secs(5)).success());
}

#[test]
fn python_request_policy_gates_a_route_by_api_key() {
    let file = python_example("request");
    let (main, canary) = (Backend::start("main"), Backend::start("canary"));
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [[service]]\nname = \"main\"\ninstances = [\"{}\"]\n\
         [[service]]\nname = \"canary\"\ninstances = [\"{}\"]\n\
         [[policy]]\nname = \"keys\"\nworld = \"request\"\nfile = {file:?}\ntimeout = \"50ms\"\n\
         config = {{ api_key = \"sesame\" }}\n\
         [[route]]\npath = \"/api\"\nservice = \"main\"\npolicy = \"keys\"\n\
         policy_services = [\"canary\"]\n",
        main.addr(),
        canary.addr(),
    );
    let _sluice = SluiceProcess::start_within(Path::new(BIN), &config, admin, START_WITHIN);
    let url = format!("http://{web}/api/x");

    let refused = curl(&url, &[], &[]);
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(
        refused.fields.contains("content-type: application/json"),
        "{}",
        refused.fields
    );
    assert_eq!(
        refused.json(),
        serde_json::json!({"error": "unauthorized", "reason": "missing x-api-key"})
    );
    assert_eq!(curl(&url, &["x-api-key: guess"], &[]).status, 401);

    let passed = curl(&url, &["x-api-key: sesame"], &[]);
    assert_eq!(passed.status, 200, "{}", passed.body);
    assert!(
        passed.fields.contains("x-policy: python-request"),
        "{}",
        passed.fields
    );
    let seen = passed.json();
    assert_eq!(seen["backend"], "main", "{seen}");
    assert_eq!(seen["headers"]["x-authenticated"], "api-key", "{seen}");
    assert!(seen["headers"].get("x-api-key").is_none(), "{seen}");

    let seen = curl(&url, &["x-api-key: sesame", "x-canary: 1"], &[]).json();
    assert_eq!(seen["backend"], "canary", "{seen}");
}
