#![allow(clippy::unwrap_used)]
//! TLS passthrough through the `sluice` binary, with `openssl s_client` as the client: each
//! server name reaches its backend, whose own certificate the client verifies; garbage and
//! unknown names are closed, logged with the reason, and counted.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_test_support::certs::{CertFiles, Leaf, TestCa};
use sluice_test_support::{SluiceProcess, free_port, http_get, require_tool};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A rustls backend on its own thread: after the handshake it writes one line naming itself
/// and the SNI it saw, then closes.
fn tls_backend(name: &'static str, cert: &CertFiles) -> SocketAddr {
    let tls = cert.server_tls(false);
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use tokio::io::AsyncWriteExt;
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Ok((mut s, info)) = tls.accept(tcp, Duration::from_secs(5)).await {
                        let sni = info.sni.unwrap_or_else(|| "-".into());
                        let _ = s
                            .write_all(format!("backend={name} sni={sni}\n").as_bytes())
                            .await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
    });
    addr
}

/// `openssl s_client` to `addr` with `sni`, verifying against the CA: its stdout.
fn s_client(addr: SocketAddr, sni: &str, ca: &TestCa) -> String {
    require_tool("openssl");
    let out = Command::new(require_tool("timeout"))
        .args(["5", "openssl", "s_client", "-connect", &addr.to_string()])
        .args([
            "-servername",
            sni,
            "-verify_return_error",
            "-ign_eof",
            "-CAfile",
        ])
        .arg(&ca.ca_path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn eventually_true(what: &str, check: impl FnMut() -> Result<(), String>) {
    sluice_test_support::eventually_blocking(what, Duration::from_secs(10), check);
}

/// Sends `bytes`; true when the proxy closed without answering.
fn closed_silently(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(0))
}

#[test]
fn sni_passthrough_with_openssl_clients_metrics_and_logs() {
    require_tool("openssl");
    let ca = TestCa::new("SNI CA");
    let a = ca.issue(&Leaf::server("a", &["a.test"]));
    let b = ca.issue(&Leaf {
        cn: "b backend",
        ..Leaf::server("b", &["*.b.test"])
    });
    let (a_addr, b_addr) = (tls_backend("a", &a), tls_backend("b", &b));
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n[runtime]\nworker_threads = 2\nshutdown_grace = \"1s\"\n[access_log]\npath = \"stdout\"\n\
         [[listener]]\nname = \"tls\"\nbind = \"{web}\"\nprotocol = \"tcp\"\nsni_timeout = \"300ms\"\nsni_max_bytes = 2048\n\
         [[listener.sni]]\nhost = \"a.test\"\nservice = \"a\"\n\
         [[listener.sni]]\nhost = \"*.b.test\"\nservice = \"b\"\n\
         [[service]]\nname = \"a\"\ninstances = [\"{a_addr}\"]\n\
         [[service]]\nname = \"b\"\ninstances = [\"{b_addr}\"]\n"
    );
    let mut p = SluiceProcess::start(Path::new(BIN), &config, admin);

    let out = s_client(web, "a.test", &ca);
    assert!(out.contains("backend=a sni=a.test"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    let out = s_client(web, "X.B.test", &ca);
    assert!(out.contains("backend=b sni=x.b.test"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("subject=") && l.contains("b backend")),
        "the client sees backend b's own certificate: {out}"
    );
    let out = s_client(web, "nobody.test", &ca);
    assert!(!out.contains("backend="), "{out}");

    assert!(closed_silently(
        web,
        b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"
    ));
    assert!(closed_silently(web, b"SSH-2.0-OpenSSH_9.6\r\n"));
    // A ServerHello where a ClientHello belongs; a hello announcing 16 KiB (over the 2 KiB
    // limit); a client that stops after two bytes (closed at sni_timeout).
    assert!(closed_silently(web, &[0x16, 3, 1, 0, 4, 2, 0, 0, 0]));
    assert!(closed_silently(
        web,
        &[0x16, 3, 1, 0x40, 0, 1, 0, 0x3f, 0xfc]
    ));
    assert!(closed_silently(web, &[0x16, 3]));
    eventually_true("rejections counted by reason", || {
        let m = http_get(admin, "/metrics").map_err(|e| e.to_string())?.1;
        let want = [
            r#"sluice_sni_rejected_total{listener="tls",reason="not_tls"} 2"#,
            r#"sluice_sni_rejected_total{listener="tls",reason="no_route"} 1"#,
            r#"sluice_sni_rejected_total{listener="tls",reason="malformed"} 1"#,
            r#"sluice_sni_rejected_total{listener="tls",reason="too_large"} 1"#,
            r#"sluice_sni_rejected_total{listener="tls",reason="timeout"} 1"#,
            r#"sluice_sni_routed_total{listener="tls",service="a",match="sni"} 1"#,
            r#"sluice_sni_routed_total{listener="tls",service="b",match="sni"} 1"#,
        ];
        if want.iter().all(|w| m.contains(w)) {
            Ok(())
        } else {
            Err(m)
        }
    });
    let stderr = p.stderr();
    assert!(
        stderr.contains("TLS passthrough: no usable ClientHello")
            && stderr.contains("not_tls")
            && stderr.contains("starts with \"GET / HT\""),
        "{stderr}"
    );
    assert!(stderr.contains("nobody.test"), "{stderr}");
    assert!(p.stdout().contains("\"sni\":\"a.test\""), "{}", p.stdout());
    assert!(p.terminate(Duration::from_secs(5)).success());
}
