//! The admin API's access control through the binary, with curl as the client: bearer tokens
//! with `read` and `admin` scopes from a file and from the environment, 401/403 answers that are
//! logged and counted, token rotation by reload, the refusal to serve an open admin API on a
//! non-loopback address, and the API over HTTPS with client certificates as credentials.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_test_support::certs::{Leaf, TestCa};
use sluice_test_support::{SluiceProcess, free_port, http_get, require_tool};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const ADMIN_TOKEN: &str = "admin-token-0123456789";
const READ_TOKEN: &str = "read-token-0123456789";

fn config(admin: &str, extra: &str) -> String {
    let web = free_port();
    format!(
        "[admin]\nbind = \"{admin}\"\n{extra}\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{web}\"\n\
         [[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\ninstances = []\n"
    )
}

/// `curl` with an optional bearer token: the status, the `WWW-Authenticate` field and the body.
fn curl(method: &str, url: &str, token: Option<&str>) -> (u16, String, String) {
    let mut cmd = Command::new(require_tool("curl"));
    cmd.args(["-sS", "-X", method, "-D", "-", url]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let challenge = head
        .lines()
        .find_map(|l| l.strip_prefix("www-authenticate: "))
        .unwrap_or("")
        .to_owned();
    (status, challenge, body.to_owned())
}

#[test]
fn tokens_guard_the_admin_api_by_scope() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("admin-tokens");
    std::fs::write(
        &tokens,
        format!("# who may do what\nadmin {ADMIN_TOKEN}\nread {READ_TOKEN}\n"),
    )
    .unwrap();
    let extra = format!("tokens_file = \"{}\"", tokens.display());
    let sluice = SluiceProcess::start(BIN.as_ref(), &config(&admin.to_string(), &extra), admin);
    let url = |path: &str| format!("http://{admin}{path}");

    // Probes stay open; everything else needs a token of the right scope.
    assert_eq!(http_get(admin, "/healthz").unwrap().0, 200);
    let (status, challenge, body) = curl("GET", &url("/api/services"), None);
    assert_eq!(
        (status, challenge.as_str()),
        (401, "Bearer realm=\"sluice-admin\""),
        "{body}"
    );
    assert!(body.contains("\"missing\""), "{body}");
    let (status, challenge, _) = curl("GET", &url("/api/services"), Some("not-a-token-at-all"));
    assert_eq!(status, 401);
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert_eq!(curl("GET", &url("/api/services"), Some(READ_TOKEN)).0, 200);
    assert_eq!(curl("GET", &url("/metrics"), Some(READ_TOKEN)).0, 200);
    let (status, _, body) = curl("POST", &url("/api/reload"), Some(READ_TOKEN));
    assert_eq!(status, 403, "{body}");
    assert_eq!(curl("POST", &url("/api/reload"), Some(ADMIN_TOKEN)).0, 200);

    // Refusals are counted by reason and logged with the client's address.
    let (_, _, metrics) = curl("GET", &url("/metrics"), Some(READ_TOKEN));
    for reason in ["missing", "invalid", "scope"] {
        let line = format!("sluice_admin_auth_failures_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");
    }
    let log = sluice.stderr();
    assert!(
        log.contains("admin request refused") && log.contains("client=127.0.0.1"),
        "{log}"
    );
    assert!(!log.contains(READ_TOKEN), "a token was logged:\n{log}");

    // A new file takes effect at the next reload, made with a token still valid then.
    let rotated = "admin-token-rotated-987654321";
    std::fs::write(&tokens, format!("admin {rotated}\n")).unwrap();
    assert_eq!(curl("POST", &url("/api/reload"), Some(ADMIN_TOKEN)).0, 200);
    assert_eq!(curl("GET", &url("/api/routes"), Some(ADMIN_TOKEN)).0, 401);
    assert_eq!(curl("GET", &url("/api/routes"), Some(READ_TOKEN)).0, 401);
    assert_eq!(curl("GET", &url("/api/routes"), Some(rotated)).0, 200);
    // A file that no longer reads fails the reload and keeps the tokens.
    std::fs::write(&tokens, "admin short\n").unwrap();
    let (status, _, body) = curl("POST", &url("/api/reload"), Some(rotated));
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("admin-tokens:1: a token needs at least 16 characters"),
        "{body}"
    );
    assert_eq!(curl("GET", &url("/api/routes"), Some(rotated)).0, 200);
}

#[test]
fn an_open_admin_api_on_a_public_address_is_refused() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config(&format!("0.0.0.0:{port}"), "")).unwrap();
    for verb in ["check", "run"] {
        let out = Command::new(BIN)
            .args([verb, "-c"])
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{verb} accepted an open admin API");
        let err = String::from_utf8_lossy(&out.stderr);
        let want = format!(
            "{}:2:8: error: the admin API on 0.0.0.0:{port} would let anyone who reaches it reload the proxy",
            path.display()
        );
        assert!(err.contains(&want), "{verb}: no {want:?} in:\n{err}");
        assert!(err.contains("insecure = true"), "{err}");
    }
    // Said on purpose, it runs, with a warning.
    let admin: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let open = config(&format!("0.0.0.0:{port}"), "insecure = true");
    let sluice = SluiceProcess::start(BIN.as_ref(), &open, admin);
    assert_eq!(http_get(admin, "/api/routes").unwrap().0, 200);
    assert!(
        sluice.stderr().contains("insecure = true"),
        "{}",
        sluice.stderr()
    );
}

/// Runs `sluice run` with `env` set until `/readyz` answers or it exits; the exit status and
/// stderr when it exited.
fn run_with_env(config: &str, admin: SocketAddr, env: (&str, &OsStr)) -> Option<(i32, String)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&path)
        .env(env.0, env.1)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return Some((status.code().unwrap_or(-1), err));
        }
        if http_get(admin, "/readyz").is_ok_and(|(s, _)| s == 200) {
            let (status, _, _) = curl(
                "POST",
                &format!("http://{admin}/api/reload"),
                Some(ADMIN_TOKEN),
            );
            assert_eq!(status, 200, "the variable's token is the admin token");
            assert_eq!(http_get(admin, "/api/routes").unwrap().0, 401);
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("sluice neither started nor exited");
}

#[test]
fn a_token_from_the_environment_must_be_a_real_one() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = config(
        &admin.to_string(),
        "token_env = \"SLUICE_TEST_ADMIN_TOKEN\"",
    );
    let var = "SLUICE_TEST_ADMIN_TOKEN";
    assert_eq!(
        run_with_env(&cfg, admin, (var, OsStr::new(ADMIN_TOKEN))),
        None
    );
    let (code, err) = run_with_env(
        &cfg,
        admin,
        (var, OsStr::from_bytes(b"token-\xff\xfe-0123456789")),
    )
    .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("admin token variable SLUICE_TEST_ADMIN_TOKEN: is not UTF-8"),
        "{err}"
    );
    let (code, err) = run_with_env(&cfg, admin, ("UNRELATED", OsStr::new("x"))).unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("SLUICE_TEST_ADMIN_TOKEN: is not set"), "{err}");
}

/// A client certificate: the CA that issued it and its file stem there.
type ClientCert<'a> = (&'a TestCa, &'a str);

/// `curl` to the admin API over HTTPS, trusting `ca` for the server, with an optional client
/// certificate and bearer token: the status (0 when no HTTP answer came, e.g. a refused
/// handshake).
fn curl_tls(
    ca: &TestCa,
    method: &str,
    url: &str,
    client: Option<ClientCert<'_>>,
    token: Option<&str>,
) -> u16 {
    let mut cmd = Command::new(require_tool("curl"));
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        method,
        "--cacert",
    ])
    .arg(&ca.ca_path);
    if let Some((issuer, name)) = client {
        cmd.arg("--cert")
            .arg(issuer.dir().join(format!("{name}.pem")))
            .arg("--key")
            .arg(issuer.dir().join(format!("{name}.key")));
    }
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

/// Starts `sluice run` on `config` and waits until its HTTPS admin API answers `/readyz`.
fn start_tls_admin(config: &str, ca: &TestCa, admin: SocketAddr) -> std::process::Child {
    let path = ca.dir().join("sluice.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = format!("https://localhost:{}/readyz", admin.port());
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl_tls(ca, "GET", &ready, None, None) != 200 {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("the HTTPS admin API did not come up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[test]
fn client_certificates_are_admin_credentials_over_tls() {
    let ca = TestCa::new("Admin CA");
    let server = ca.issue(&Leaf::server("admin", &["localhost"]));
    ca.issue(&Leaf::client("ops", "ops", &[]));
    let stranger = TestCa::new("Other CA");
    stranger.issue(&Leaf::client("ops", "ops", &[]));
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tokens = ca.dir().join("tokens");
    std::fs::write(&tokens, format!("admin {ADMIN_TOKEN}\n")).unwrap();
    let url = |path: &str| format!("https://localhost:{}{path}", admin.port());
    let ops = Some((&ca, "ops"));
    // (client_scope, method, path, certificate, token, expected status, why)
    let cases = [
        (
            "admin",
            "GET",
            "/api/services",
            ops,
            None,
            200,
            "an admin certificate reads",
        ),
        (
            "admin",
            "POST",
            "/api/reload",
            ops,
            None,
            200,
            "and reloads",
        ),
        (
            "admin",
            "GET",
            "/api/services",
            None,
            None,
            401,
            "no credential",
        ),
        (
            "admin",
            "POST",
            "/api/reload",
            None,
            Some(ADMIN_TOKEN),
            200,
            "tokens still work",
        ),
        (
            "admin",
            "GET",
            "/api/services",
            Some((&stranger, "ops")),
            None,
            0,
            "another CA's certificate fails the handshake",
        ),
        (
            "read",
            "GET",
            "/api/services",
            ops,
            None,
            200,
            "a read certificate reads",
        ),
        (
            "read",
            "POST",
            "/api/reload",
            ops,
            None,
            403,
            "but cannot reload",
        ),
        (
            "read",
            "POST",
            "/api/reload",
            ops,
            Some(ADMIN_TOKEN),
            200,
            "an admin token on top can",
        ),
    ];
    for scope in ["admin", "read"] {
        let tls = format!(
            "tokens_file = {tokens:?}\n[admin.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nclient_scope = \"{scope}\"",
            server.cert, server.key, ca.ca_path
        );
        let mut child = start_tls_admin(&config(&admin.to_string(), &tls), &ca, admin);
        for (_, method, path, cert, token, want, why) in cases.iter().filter(|c| c.0 == scope) {
            let got = curl_tls(&ca, method, &url(path), *cert, *token);
            assert_eq!(got, *want, "client_scope = {scope}: {method} {path}: {why}");
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
