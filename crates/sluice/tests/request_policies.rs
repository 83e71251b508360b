//! `[[route]] policy`: a `request` policy (the test guest `header_gate`) on a route, through the
//! binary with curl as the client — it replies itself, edits the request the instance sees,
//! rewrites its path, picks one of the route's `policy_services`, tags the response through
//! `on-response`; answers it must not give, and a trapping call, get `503 policy_failed`;
//! routes without a policy are untouched; HTTP/2 clients alike; config errors name the line.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::process::Command;

use sluice_test_support::{Backend, SluiceProcess, free_port, require_tool};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

struct Setup {
    web: SocketAddr,
    _sluice: SluiceProcess,
    _backends: (Backend, Backend),
}

fn start(failure_mode: &str) -> Setup {
    let (admin, web) = (addr(), addr());
    let (main, canary) = (Backend::start("main"), Backend::start("canary"));
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [[service]]\nname = \"main\"\ninstances = [\"{}\"]\n\
         [[service]]\nname = \"canary\"\ninstances = [\"{}\"]\n\
         [[service]]\nname = \"billing\"\ninstances = [\"{}\"]\n\
         [[policy]]\nname = \"gate\"\nworld = \"request\"\nfile = \"{}\"\n\
         failure_mode = \"{failure_mode}\"\ntimeout = \"100ms\"\nconfig = {{ key = \"sesame\" }}\n\
         [[route]]\npath = \"/api\"\nservice = \"main\"\npolicy = \"gate\"\n\
         policy_services = [\"canary\"]\n\
         [[route]]\npath = \"/open\"\nservice = \"main\"\n",
        main.addr(),
        canary.addr(),
        canary.addr(),
        sluice_policy_test_artifacts::HEADER_GATE,
    );
    let sluice = SluiceProcess::start(BIN.as_ref(), &config, admin);
    Setup {
        web,
        _sluice: sluice,
        _backends: (main, canary),
    }
}

/// One answer as curl saw it: status, response fields (lower-case names), body.
struct Seen {
    status: u16,
    fields: String,
    body: String,
}

impl Seen {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn curl(url: &str, headers: &[&str], extra: &[&str]) -> Seen {
    let mut cmd = Command::new(require_tool("curl"));
    cmd.args(["-sS", "--max-time", "10", "-D", "-"]).args(extra);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Seen {
        status,
        fields: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

#[test]
fn the_policy_replies_edits_rewrites_and_picks_services() {
    let s = start("closed");
    let url = format!("http://{}/api/x?q=1", s.web);

    let refused = curl(&url, &[], &[]);
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(refused.json()["error"], "unauthorized");
    assert!(refused.fields.contains("content-type: application/json"));

    let passed = curl(&url, &["x-api-key: sesame", "x-caller: ann"], &[]);
    assert_eq!(passed.status, 200, "{}", passed.body);
    let seen = passed.json();
    assert_eq!(seen["backend"], "main");
    let headers = &seen["headers"];
    assert_eq!(headers["x-gate"], "passed", "{seen}");
    assert_eq!(headers["x-caller-name"], "ann", "{seen}");
    assert!(
        headers.get("x-api-key").is_none(),
        "the policy removed the key: {seen}"
    );
    assert_eq!(seen["path"], "/api/x", "{seen}");

    let rewritten = curl(
        &url,
        &["x-api-key: sesame", "x-rewrite: /api/v2/y?z=2"],
        &[],
    );
    let seen = rewritten.json();
    assert_eq!(
        (seen["path"].as_str(), seen["query"].as_str()),
        (Some("/api/v2/y"), Some("z=2")),
        "{seen}"
    );

    let canary = curl(&url, &["x-api-key: sesame", "x-route-to: canary"], &[]);
    assert_eq!(canary.json()["backend"], "canary");

    let tagged = curl(&url, &["x-api-key: sesame", "x-tag-response: blue"], &[]);
    assert_eq!(tagged.status, 200);
    assert!(
        tagged.fields.contains("x-tagged: blue"),
        "{}",
        tagged.fields
    );
}

#[test]
fn answers_the_policy_may_not_give_and_failed_calls_get_503() {
    let s = start("closed");
    let url = format!("http://{}/api/x", s.web);
    for trouble in [
        "x-route-to: billing",
        "x-misbehave: framing",
        "x-misbehave: panic",
        "x-misbehave: loop",
    ] {
        let seen = curl(&url, &["x-api-key: sesame", trouble], &[]);
        assert_eq!(seen.status, 503, "{trouble}: {}", seen.body);
        let body = seen.json();
        assert_eq!(body["error"], "policy_failed", "{trouble}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("`gate`"),
            "{body}"
        );
    }
    // The policy still answers afterwards: failed instances were replaced.
    assert_eq!(curl(&url, &["x-api-key: sesame"], &[]).status, 200);
    // A route without a policy never asks it.
    let open = curl(
        &format!("http://{}/open", s.web),
        &["x-misbehave: panic"],
        &[],
    );
    assert_eq!(open.status, 200);
    assert!(open.json()["headers"].get("x-gate").is_none());
}

#[test]
fn failure_mode_open_forwards_unchanged_when_a_call_fails() {
    let s = start("open");
    let url = format!("http://{}/api/x", s.web);
    let seen = curl(&url, &["x-misbehave: panic", "x-api-key: guess"], &[]);
    assert_eq!(seen.status, 200, "{}", seen.body);
    let body = seen.json();
    assert!(body["headers"].get("x-gate").is_none(), "unchanged: {body}");
    assert_eq!(body["headers"]["x-api-key"], "guess");
}

#[test]
fn http2_clients_go_through_the_policy_too() {
    let s = start("closed");
    let url = format!("http://{}/api/x", s.web);
    let h2 = ["--http2-prior-knowledge"];
    let refused = curl(&url, &[], &h2);
    assert_eq!(refused.status, 401);
    let passed = curl(&url, &["x-api-key: sesame", "x-tag-response: green"], &h2);
    assert_eq!(passed.status, 200, "{}", passed.body);
    assert_eq!(passed.json()["headers"]["x-gate"], "passed");
    assert!(
        passed.fields.contains("x-tagged: green"),
        "{}",
        passed.fields
    );
}

#[test]
fn a_route_naming_a_policy_of_another_world_or_none_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[policy]]\nname = \"a\"\nworld = \"authz\"\nfile = \"a.wasm\"\n\
             [[route]]\npath = \"/\"\nservice = \"s\"\npolicy = \"a\"\n",
            "policy `a` is a authz policy, not a request policy",
            8,
        ),
        (
            "[[route]]\npath = \"/\"\nservice = \"s\"\npolicy = \"gone\"\n",
            "route refers to unknown policy `gone`",
            4,
        ),
        (
            "[[route]]\npath = \"/\"\nservice = \"s\"\npolicy_services = [\"s\"]\n",
            "`policy_services` without a `policy`",
            4,
        ),
    ];
    for (routes, message, line) in cases {
        let path = dir.path().join("sluice.toml");
        let text = format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
             [[service]]\nname = \"s\"\ninstances = [\"127.0.0.1:1\"]\n{routes}"
        );
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
        assert!(
            stderr.contains(&format!("sluice.toml:{}:", line + 6)),
            "line {line}: {stderr}"
        );
    }
}
