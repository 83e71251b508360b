#![allow(clippy::unwrap_used)]
//! TLS end to end: the `sluice` binary with curl and `openssl s_client` as clients, a CA made
//! at test time, SIGHUP certificate reload, failure logs and metrics.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use sluice_test_support::certs::{Leaf, TestCa};
use sluice_test_support::{
    Backend, SluiceProcess, free_port, http_get, require_tool, s_client_first_line_as,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn curl(
    web: SocketAddr,
    host: &str,
    ca: &TestCa,
    client: Option<&str>,
    extra: &[&str],
) -> (bool, String) {
    let mut cmd = Command::new(require_tool("curl"));
    cmd.args(["-sS", "--max-time", "5", "--cacert"])
        .arg(&ca.ca_path)
        .args(["--resolve", &format!("{host}:{}:127.0.0.1", web.port())]);
    if let Some(name) = client {
        cmd.arg("--cert")
            .arg(ca.dir().join(format!("{name}.pem")))
            .arg("--key")
            .arg(ca.dir().join(format!("{name}.key")));
    }
    let out = cmd
        .args(extra)
        .arg(format!("https://{host}:{}/hello", web.port()))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The subject line of the certificate the listener serves for `sni`.
fn served_subject(web: SocketAddr, sni: &str) -> String {
    let out = Command::new(require_tool("openssl"))
        .args(["s_client", "-connect", &web.to_string(), "-servername", sni])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no subject in s_client output: {stdout}"))
        .to_owned()
}

fn eventually_true(what: &str, check: impl FnMut() -> Result<(), String>) {
    sluice_test_support::eventually_blocking(what, Duration::from_secs(10), check);
}

#[test]
fn https_with_curl_sni_h2_identity_headers_failures_and_certificate_reload() {
    let ca = TestCa::new("E2E CA");
    let www = ca.issue(&Leaf::server("www", &["www.test"]));
    ca.issue(&Leaf::server("api", &["api.test"]));
    ca.issue(&Leaf::client("app1", "app1", &["app1.test"]));
    let live_cert = ca.dir().join("live.pem");
    let live_key = ca.dir().join("live.key");
    std::fs::copy(&www.cert, &live_cert).unwrap();
    std::fs::copy(&www.key, &live_key).unwrap();
    let backend = Backend::start("one");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n[runtime]\nworker_threads = 2\nshutdown_grace = \"2s\"\n\
         [access_log]\npath = \"stdout\"\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n[listener.tls]\ncert = {live_cert:?}\nkey = {live_key:?}\n\
         certificates = [{{ cert = {:?}, key = {:?} }}]\nclient_ca = {:?}\nclient_auth = \"optional\"\n\
         identity_headers = {{ cn = \"x-client-cn\" }}\n\
         [[route]]\npath = \"/\"\nservice = \"s\"\n[[service]]\nname = \"s\"\ninstances = [\"{}\"]\n",
        ca.dir().join("api.pem"),
        ca.dir().join("api.key"),
        ca.ca_path,
        backend.addr()
    );
    let mut p = SluiceProcess::start(Path::new(BIN), &config, admin);

    // curl over HTTP/2 with a client certificate and a forged identity header.
    let (ok, out) = curl(
        web,
        "www.test",
        &ca,
        Some("app1"),
        &[
            "--http2",
            "-H",
            "x-client-cn: forged",
            "-w",
            "\nversion=%{http_version}",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("\"x-client-cn\":\"app1\""), "{out}");
    assert!(out.contains("\"x-forwarded-proto\":\"https\""), "{out}");
    assert!(out.ends_with("version=2"), "{out}");
    // SNI api.test gets the api certificate (curl checks the name); anonymous + forged header.
    let (ok, out) = curl(
        web,
        "api.test",
        &ca,
        None,
        &["--http1.1", "-H", "x-client-cn: forged"],
    );
    assert!(ok, "{out}");
    assert!(
        !out.contains("x-client-cn"),
        "forged header must be stripped: {out}"
    );

    // Plain HTTP to the TLS port: closed, logged with the reason, counted.
    assert!(!matches!(http_get(web, "/hello"), Ok((200, _))));
    eventually_true("handshake failure counted", || {
        let metrics = http_get(admin, "/metrics").map_err(|e| e.to_string())?.1;
        if metrics
            .contains(r#"sluice_tls_handshake_failures_total{listener="web",reason="not_tls"} 1"#)
            && metrics
                .contains(r#"sluice_tls_handshakes_total{listener="web",version="TLSv1.3"} 2"#)
        {
            Ok(())
        } else {
            Err(metrics)
        }
    });
    let stderr = p.stderr();
    assert!(
        stderr.contains("TLS handshake failed") && stderr.contains("not_tls"),
        "{stderr}"
    );
    let stdout = p.stdout();
    assert!(
        stdout.contains("\"cn\":\"app1\"") && stdout.contains("\"sni\":\"api.test\""),
        "{stdout}"
    );

    // SIGHUP with a new certificate in the same files: new handshakes get it.
    assert!(served_subject(web, "www.test").contains("www.test"));
    let v2 = ca.issue(&Leaf {
        cn: "www v2",
        ..Leaf::server("www2", &["www.test"])
    });
    std::fs::copy(&v2.cert, &live_cert).unwrap();
    std::fs::copy(&v2.key, &live_key).unwrap();
    p.signal(Signal::SIGHUP);
    eventually_true("new certificate served", || {
        let s = served_subject(web, "www.test");
        if s.contains("www v2") { Ok(()) } else { Err(s) }
    });

    // A broken key: the reload is refused naming the file; the v2 certificate keeps serving.
    std::fs::write(&live_key, "not a key\n").unwrap();
    p.signal(Signal::SIGHUP);
    eventually_true("bad reload reported", || {
        let e = p.stderr();
        if e.contains("reload failed, the previous configuration keeps serving")
            && e.contains("live.key")
        {
            Ok(())
        } else {
            Err(e)
        }
    });
    assert!(served_subject(web, "www.test").contains("www v2"));
    let (ok, out) = curl(web, "www.test", &ca, None, &[]);
    assert!(ok, "{out}");

    // No signal at all: new files on disk are noticed and loaded (polled every 2 s).
    let v3 = ca.issue(&Leaf {
        cn: "www v3",
        ..Leaf::server("www3", &["www.test"])
    });
    std::fs::copy(&v3.cert, &live_cert).unwrap();
    std::fs::copy(&v3.key, &live_key).unwrap();
    eventually_true("changed files served without a signal", || {
        let s = served_subject(web, "www.test");
        if s.contains("www v3") { Ok(()) } else { Err(s) }
    });
    assert!(
        p.stderr()
            .contains("a TLS certificate, key or CA file changed: reloading")
    );
    assert!(p.terminate(Duration::from_secs(5)).success());
}

#[test]
fn ecp_authz_wasm_policy_decides_mutual_tls_tcp_connections() {
    require_tool("openssl");
    let ca = TestCa::new("ECP CA");
    let server = ca.issue(&Leaf::server("data", &["data.test"]));
    ca.issue(&Leaf::client("app1", "app1", &[]));
    ca.issue(&Leaf::client("app3", "app3", &[]));
    let member = sluice_test_support::MirrorMember::start(
        "datasrv",
        sluice_test_support::MirrorRole::Primary,
    );
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let db: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n[runtime]\nworker_threads = 2\nshutdown_grace = \"1s\"\n[access_log]\npath = \"off\"\n\
         [[policy]]\nname = \"ecp\"\nfile = {:?}\nworld = \"authz\"\nconfig = {{ client_systems = \"app1;app2\" }}\n\
         [[listener]]\nname = \"db\"\nbind = \"{db}\"\nprotocol = \"tcp\"\nservice = \"data\"\n\
         [listener.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nclient_auth = \"required\"\n\
         [listener.authz]\npolicy = \"ecp\"\n\
         [[service]]\nname = \"data\"\ninstances = [\"{}\"]\n",
        sluice_policy_test_artifacts::ECP_AUTHZ,
        server.cert,
        server.key,
        ca.ca_path,
        member.tcp()
    );
    let mut p = SluiceProcess::start(Path::new(BIN), &config, admin);
    assert_eq!(
        s_client_first_line_as(db, &ca, "app1"),
        "datasrv",
        "app1 is on the allow-list"
    );
    assert_eq!(s_client_first_line_as(db, &ca, "app3"), "", "app3 is not");
    eventually_true("denial counted and logged", || {
        let metrics = http_get(admin, "/metrics").map_err(|e| e.to_string())?.1;
        if metrics.contains(r#"sluice_authz_denied_total{listener="db",reason="policy"} 1"#) {
            Ok(())
        } else {
            Err(metrics)
        }
    });
    let stderr = p.stderr();
    assert!(
        stderr.contains("connection denied by [listener.authz]") && stderr.contains("app3"),
        "{stderr}"
    );
    assert!(p.terminate(Duration::from_secs(5)).success());
}
