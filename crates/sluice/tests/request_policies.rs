//! `[[route]] policy`: a `request` policy (the test guest `header_gate`) on a route, through the
//! binary with curl as the client — it replies itself, edits the request the instance sees,
//! rewrites its path, picks one of the route's `policy_services`, tags the response through
//! `on-response`; answers it must not give, and a trapping call, get `503 policy_failed`;
//! routes without a policy are untouched; HTTP/2 clients alike; config errors name the line.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::process::Command;

use sluice_test_support::{Backend, SluiceProcess, curl, free_port, require_tool};

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
         [[route]]\npath = \"/open\"\nservice = \"main\"\n\
         [[policy]]\nname = \"key_only\"\nworld = \"request\"\nfile = \"{gate}\"\n\
         request_fields = [\"X-Api-Key\"]\nconfig = {{ key = \"sesame\" }}\n\
         [[route]]\npath = \"/fields\"\nservice = \"main\"\npolicy = \"key_only\"\n",
        main.addr(),
        canary.addr(),
        canary.addr(),
        sluice_policy_test_artifacts::HEADER_GATE,
        gate = sluice_policy_test_artifacts::HEADER_GATE,
    );
    let sluice = SluiceProcess::start(BIN.as_ref(), &config, admin);
    Setup {
        web,
        _sluice: sluice,
        _backends: (main, canary),
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
        (
            "[[policy]]\nname = \"a\"\nworld = \"authz\"\nfile = \"a.wasm\"\n\
             request_fields = [\"authorization\"]\n",
            "`request_fields` is for request policies, not authz",
            5,
        ),
        (
            "[[policy]]\nname = \"a\"\nworld = \"request\"\nfile = \"a.wasm\"\n\
             request_fields = [\"ok\", \"bad name\"]\n",
            "`bad name` is not a field name",
            5,
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

/// `request_fields`: the policy sees only the fields named (in any case); the instance still
/// gets every field the client sent, over HTTP/1.1 and HTTP/2, bytes that are not UTF-8 too.
#[test]
fn a_policy_is_shown_only_its_request_fields() {
    use std::io::{Read as _, Write as _};
    let s = start("closed");
    let url = format!("http://{}/fields/x", s.web);
    for protocol in [&[][..], &["--http2-prior-knowledge"][..]] {
        let passed = curl(&url, &["x-api-key: sesame", "x-caller: ann"], protocol);
        assert_eq!(passed.status, 200, "{protocol:?}: {}", passed.body);
        let seen = passed.json();
        let headers = &seen["headers"];
        assert_eq!(headers["x-gate"], "passed", "{seen}");
        assert!(
            headers.get("x-caller-name").is_none(),
            "{protocol:?}: the policy was not shown x-caller: {seen}"
        );
        assert_eq!(headers["x-caller"], "ann", "{seen}");
        let refused = curl(&url, &["x-caller: ann"], protocol);
        assert_eq!(refused.status, 401, "{protocol:?}: {}", refused.body);
    }
    // A field left out that is not UTF-8 still reaches the instance byte for byte.
    let mut stream = std::net::TcpStream::connect(s.web).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /fields/x HTTP/1.1\r\nHost: t\r\nX-API-KEY: sesame\r\nX-Bytes: a\xff\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#""x-bytes":"\\x61\\xff""#), "{text}");
}

/// Bodies past 1 KiB go through a policy route whose policy edits the head and rewrites the
/// path (to the backend's `/echo`), over HTTP/1.1 and HTTP/2: the framing survives the edits.
#[test]
fn request_bodies_pass_an_edited_head_intact_over_both_protocols() {
    let s = start("closed");
    let url = format!("http://{}/api/upload", s.web);
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let file = dir.path().join("body");
    std::fs::write(&file, &body).unwrap();
    for protocol in [&[][..], &["--http2-prior-knowledge"][..]] {
        let out = Command::new(require_tool("curl"))
            .args(["-sS", "--max-time", "20", "-X", "POST", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .args(["-H", "x-api-key: sesame", "-H", "x-rewrite: /echo"])
            .args(protocol)
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout.len(), body.len(), "{protocol:?}");
        assert!(out.stdout == body, "{protocol:?}: the echoed body differs");
    }
}

/// A field value that is not UTF-8: the policy sees it with the bad bytes replaced, decides as
/// usual, and the request goes on with the bytes the client sent.
#[test]
fn non_utf8_field_values_reach_the_instance_unchanged() {
    use std::io::{Read as _, Write as _};
    let s = start("closed");
    let mut stream = std::net::TcpStream::connect(s.web).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut request =
        b"GET /api/x HTTP/1.1\r\nHost: t\r\nX-Api-Key: sesame\r\nX-Bytes: a\xff\xfeb\r\n".to_vec();
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    stream.write_all(&request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"x-gate\":\"passed\""), "{text}");
    // The backend shows a value that is not UTF-8 byte for byte (JSON-escaped backslashes).
    assert!(
        text.contains(r#""x-bytes":"\\x61\\xff\\xfe\\x62""#),
        "{text}"
    );
    // And a key that is itself not UTF-8 never matches.
    let mut stream = std::net::TcpStream::connect(s.web).unwrap();
    stream
        .write_all(
            b"GET /api/x HTTP/1.1\r\nHost: t\r\nX-Api-Key: ses\xffame\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 401"));
}

/// An open loop through a policy route with hundreds of requests in flight (a slow instance):
/// every request is asked about, forwarded and answered; none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_with_hundreds_in_flight_passes_the_policy() {
    use sluice_test_support::open_loop::{self, OpenLoop, Outcome, Summary, Target};
    open_loop::ensure_open_files(8192);
    let s = start("closed");
    s._backends
        .0
        .set_mode(sluice_test_support::Mode::Delay(600));
    let load = OpenLoop::new(Target::http_get(s.web, "/api/load?key=sesame"), 400.0)
        .max_duration(std::time::Duration::from_secs(3))
        .start();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let records = load.finish().await;
    let summary = Summary::of(&records);
    for r in &records {
        match &r.outcome {
            // Without the policy's forward the route answers 401: a 200 went through it.
            Outcome::Http { status: 200, .. } => {}
            _ => panic!("{}: {}\n{summary}", r.kind(), r.detail()),
        }
    }
    let (max_in_flight, _) = open_loop::max_in_flight(&records);
    assert!(
        records.len() >= 1000,
        "{} requests\n{summary}",
        records.len()
    );
    assert!(
        max_in_flight >= 200,
        "{max_in_flight} in flight at most\n{summary}"
    );
}

/// `curl` until `url` is routed (no longer 404), within ten seconds.
fn until_routed(url: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while curl(url, &[], &[]).status == 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "{url} was not routed within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn discovered_routes_get_the_request_policy_named_for_their_service_and_its_services() {
    let (admin, web) = (addr(), addr());
    let (found, other) = (Backend::start("found"), Backend::start("other"));
    let fallback = Backend::start("fallback");
    let instance = |name: &str, backend: &Backend, path: &str| {
        format!(
            "[[discovery.instances]]\nname = \"{name}\"\nid = \"{name}-1\"\naddress = \"127.0.0.1\"\n\
             port = {}\ntags = [\"urlprefix-{path}\"]\n",
            backend.addr().port()
        )
    };
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [[policy]]\nname = \"gate\"\nworld = \"request\"\nfile = \"{}\"\nconfig = {{ key = \"sesame\" }}\n\
         [[service]]\nname = \"fallback\"\ninstances = [\"{}\"]\n\
         [[discovery]]\nkind = \"static\"\n{}{}\
         [routing]\nrequest_policies = {{ found = {{ policy = \"gate\", services = [\"other\", \"fallback\", \"gone\"] }} }}\n",
        sluice_policy_test_artifacts::HEADER_GATE,
        fallback.addr(),
        instance("found", &found, "/found"),
        instance("other", &other, "/other"),
    );
    let _sluice = SluiceProcess::start(BIN.as_ref(), &config, admin);
    let guarded = format!("http://{web}/found/x");
    until_routed(&guarded);
    until_routed(&format!("http://{web}/other/x"));

    let refused = curl(&guarded, &[], &[]);
    assert_eq!(refused.status, 401, "{}", refused.body);
    let passed = curl(&guarded, &["x-api-key: sesame"], &[]);
    assert_eq!(passed.status, 200, "{}", passed.body);
    assert_eq!(passed.json()["backend"], "found");
    assert_eq!(passed.json()["headers"]["x-gate"], "passed");
    let h2 = ["--http2-prior-knowledge"];
    assert_eq!(curl(&guarded, &[], &h2).status, 401);

    let picked = curl(&guarded, &["x-api-key: sesame", "x-route-to: other"], &[]);
    assert_eq!(
        picked.json()["backend"],
        "other",
        "a listed service with routes"
    );
    for client in [&[][..], &h2[..]] {
        let picked = curl(
            &guarded,
            &["x-api-key: sesame", "x-route-to: fallback"],
            client,
        );
        assert_eq!(picked.json()["backend"], "fallback", "a listed [[service]]");
    }
    for absent in ["gone", "elsewhere"] {
        let pick = format!("x-route-to: {absent}");
        let refused = curl(&guarded, &["x-api-key: sesame", &pick], &[]);
        assert_eq!(refused.status, 503, "{absent}: {}", refused.body);
        assert_eq!(refused.json()["error"], "policy_failed");
    }

    let unguarded = curl(&format!("http://{web}/other/x"), &[], &[]);
    assert_eq!(unguarded.status, 200, "a service not named has no policy");
    assert!(unguarded.json()["headers"].get("x-gate").is_none());
}
