#![allow(clippy::unwrap_used)]
//! Real handshakes on loopback: a rustls (or openssl) client against `ServerTls::accept`, with a
//! CA made at test time.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use sluice_test_support::certs::{CertFiles, Leaf, TestCa};
use sluice_tls::{
    CertKeyPaths, ClientAuth, HandshakeError, HandshakeInfo, MinVersion, ServerTls,
    ServerTlsSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn settings(certs: &[&CertFiles]) -> ServerTlsSettings {
    ServerTlsSettings {
        certs: certs
            .iter()
            .map(|c| CertKeyPaths {
                cert: c.cert.clone(),
                key: c.key.clone(),
            })
            .collect(),
        client_ca: None,
        client_auth: ClientAuth::Off,
        min_version: MinVersion::Tls12,
        alpn_h2: true,
        alpn_http1: true,
    }
}

/// Accepts one connection with `tls`; answers "ok" on success. Returns the server's result.
async fn serve_one(
    tls: ServerTls,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<HandshakeInfo, HandshakeError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut stream, info) = tls.accept(tcp, Duration::from_millis(1500)).await?;
        let _ = stream.write_all(b"ok").await;
        let _ = stream.shutdown().await;
        Ok(info)
    });
    (addr, task)
}

fn client_config(
    ca: &Path,
    client: Option<&CertFiles>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some(c) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(&c.cert).unwrap()],
                PrivateKeyDer::from_pem_file(&c.key).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// Connects, reads the server's "ok"; returns the server certificate seen and the ALPN.
async fn connect(
    addr: std::net::SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let mut s = connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    if buf != b"ok" {
        return Err(std::io::Error::other(format!("server said {buf:?}")));
    }
    let (_, conn) = s.get_ref();
    Ok((
        conn.peer_certificates().unwrap()[0].to_vec(),
        conn.alpn_protocol().map(<[u8]>::to_vec),
    ))
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[tokio::test]
async fn sni_selects_the_certificate_and_unknown_names_get_the_default() {
    let ca = TestCa::new("SNI CA");
    let a = ca.issue(&Leaf::server("a", &["a.test"]));
    let b = ca.issue(&Leaf::server("b", &["b.test", "*.wild.test"]));
    let tls = ServerTls::load(&settings(&[&a, &b])).unwrap();
    assert_eq!(tls.certificate_names()[1], vec!["b.test", "*.wild.test"]);
    for (sni, want) in [
        ("a.test", &a),
        ("b.test", &b),
        ("x.wild.test", &b),
        ("a.test.", &a),
    ] {
        let (addr, server) = serve_one(tls.clone()).await;
        let sni_clean = sni.trim_end_matches('.');
        let (cert, _) = connect(addr, sni_clean, client_config(&ca.ca_path, None, BOTH, &[]))
            .await
            .unwrap();
        assert_eq!(cert, want.der, "SNI {sni} got the wrong certificate");
        let info = server.await.unwrap().unwrap();
        assert_eq!(info.sni.as_deref(), Some(sni_clean));
        assert!(info.identity.is_none());
    }
    // An unknown name gets the default (a's) certificate: the client rejects it by name,
    // which proves which certificate was served.
    let (addr, _server) = serve_one(tls.clone()).await;
    let err = connect(
        addr,
        "other.test",
        client_config(&ca.ca_path, None, BOTH, &[]),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("valid for DnsName(\"a.test\")"),
        "{err}"
    );
}

#[tokio::test]
async fn alpn_negotiates_h2_and_http1_and_tls13_minimum_refuses_tls12() {
    let ca = TestCa::new("ALPN CA");
    let a = ca.issue(&Leaf::server("a", &["a.test"]));
    let tls = ServerTls::load(&settings(&[&a])).unwrap();
    for proto in [&b"h2"[..], b"http/1.1"] {
        let (addr, server) = serve_one(tls.clone()).await;
        let (_, alpn) = connect(
            addr,
            "a.test",
            client_config(&ca.ca_path, None, BOTH, &[proto]),
        )
        .await
        .unwrap();
        assert_eq!(alpn.as_deref(), Some(proto));
        assert_eq!(server.await.unwrap().unwrap().alpn.as_deref(), Some(proto));
    }
    // TLS 1.2 works by default and is refused with min_version = 1.3.
    let tls12 = &[&rustls::version::TLS12][..];
    let (addr, server) = serve_one(tls.clone()).await;
    connect(addr, "a.test", client_config(&ca.ca_path, None, tls12, &[]))
        .await
        .unwrap();
    assert_eq!(server.await.unwrap().unwrap().version, "TLSv1.2");
    let mut s = settings(&[&a]);
    s.min_version = MinVersion::Tls13;
    let (addr, server) = serve_one(ServerTls::load(&s).unwrap()).await;
    assert!(
        connect(addr, "a.test", client_config(&ca.ca_path, None, tls12, &[]))
            .await
            .is_err()
    );
    assert_eq!(server.await.unwrap().unwrap_err().reason, "incompatible");
}

fn mtls(ca: &TestCa, server: &CertFiles, mode: ClientAuth) -> ServerTls {
    let mut s = settings(&[server]);
    s.client_ca = Some(ca.ca_path.clone());
    s.client_auth = mode;
    ServerTls::load(&s).unwrap()
}

#[tokio::test]
async fn mutual_tls_gives_the_identity_and_refuses_each_bad_certificate_with_its_reason() {
    let ca = TestCa::new("Client CA");
    let server = ca.issue(&Leaf::server("srv", &["data.test"]));
    let good = ca.issue(&Leaf::client(
        "app1",
        "app1",
        &["app1.test", "spiffe://ecp/app1"],
    ));
    let expired = ca.issue(&Leaf {
        valid_days: (-30, -1),
        ..Leaf::client("old", "old", &[])
    });
    let server_only = ca.issue(&Leaf::server("notclient", &["notclient.test"]));
    let other_ca = TestCa::new("Other CA");
    let stranger = other_ca.issue(&Leaf::client("stranger", "stranger", &[]));
    let tls = mtls(&ca, &server, ClientAuth::Required);

    let (addr, srv) = serve_one(tls.clone()).await;
    connect(
        addr,
        "data.test",
        client_config(&ca.ca_path, Some(&good), BOTH, &[]),
    )
    .await
    .unwrap();
    let id = srv.await.unwrap().unwrap().identity.unwrap();
    assert_eq!(id.subject_cn.as_deref(), Some("app1"));
    assert_eq!(id.dns_sans, vec!["app1.test"]);
    assert_eq!(id.uri_sans, vec!["spiffe://ecp/app1"]);
    assert!(id.issuer.contains("CN=Client CA"), "{}", id.issuer);
    assert_eq!(id.fingerprint_sha256.len(), 64);
    assert_eq!(
        *id,
        sluice_tls::ClientIdentity::from_der(&good.der).unwrap()
    );
    assert!(
        id.not_after
            .starts_with(&(time::OffsetDateTime::now_utc().year() + 1).to_string()),
        "{}",
        id.not_after
    );

    for (client, reason) in [
        (None, "no_client_cert"),
        (Some(&expired), "cert_expired"),
        (Some(&server_only), "cert_wrong_usage"),
        (Some(&stranger), "cert_untrusted"),
    ] {
        let (addr, srv) = serve_one(tls.clone()).await;
        let _ = connect(
            addr,
            "data.test",
            client_config(&ca.ca_path, client, BOTH, &[]),
        )
        .await;
        let err = srv.await.unwrap().unwrap_err();
        assert_eq!(err.reason, reason, "{err}");
    }
}

#[tokio::test]
async fn optional_client_auth_lets_anonymous_clients_in_but_still_refuses_bad_certificates() {
    let ca = TestCa::new("Optional CA");
    let server = ca.issue(&Leaf::server("srv", &["data.test"]));
    let other = TestCa::new("Other CA");
    let stranger = other.issue(&Leaf::client("stranger", "stranger", &[]));
    let tls = mtls(&ca, &server, ClientAuth::Optional);
    let (addr, srv) = serve_one(tls.clone()).await;
    connect(
        addr,
        "data.test",
        client_config(&ca.ca_path, None, BOTH, &[]),
    )
    .await
    .unwrap();
    assert!(srv.await.unwrap().unwrap().identity.is_none());
    let (addr, srv) = serve_one(tls.clone()).await;
    let _ = connect(
        addr,
        "data.test",
        client_config(&ca.ca_path, Some(&stranger), BOTH, &[]),
    )
    .await;
    assert_eq!(srv.await.unwrap().unwrap_err().reason, "cert_untrusted");
}

#[tokio::test]
async fn garbage_and_silence_are_refused_with_reasons() {
    let ca = TestCa::new("Garbage CA");
    let a = ca.issue(&Leaf::server("a", &["a.test"]));
    let tls = ServerTls::load(&settings(&[&a])).unwrap();
    let (addr, srv) = serve_one(tls.clone()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(srv.await.unwrap().unwrap_err().reason, "not_tls");
    // Random bytes that look like nothing.
    let (addr, srv) = serve_one(tls.clone()).await;
    let mut c2 = TcpStream::connect(addr).await.unwrap();
    c2.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert_eq!(srv.await.unwrap().unwrap_err().reason, "not_tls");
    // A client that says nothing hits the timeout (1.5 s in serve_one).
    let (addr, srv) = serve_one(tls).await;
    let _c3 = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let err = srv.await.unwrap().unwrap_err();
    assert_eq!(err.reason, "timeout");
    assert!(started.elapsed() >= Duration::from_millis(1400));
    drop((c, c2));
}

#[tokio::test]
async fn bad_files_are_errors_naming_the_file() {
    let ca = TestCa::new("Files CA");
    let a = ca.issue(&Leaf::server("a", &["a.test"]));
    let b = ca.issue(&Leaf::server("b", &["b.test"]));
    let missing = ca.dir().join("missing.pem");
    let empty = ca.dir().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let garbage = ca.dir().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let cases = [
        (
            CertKeyPaths {
                cert: missing.clone(),
                key: a.key.clone(),
            },
            "missing.pem",
        ),
        (
            CertKeyPaths {
                cert: empty.clone(),
                key: a.key.clone(),
            },
            "empty.pem",
        ),
        (
            CertKeyPaths {
                cert: garbage.clone(),
                key: a.key.clone(),
            },
            "garbage.pem",
        ),
        (
            CertKeyPaths {
                cert: a.cert.clone(),
                key: empty.clone(),
            },
            "empty.pem",
        ),
        // The key of another certificate.
        (
            CertKeyPaths {
                cert: a.cert.clone(),
                key: b.key.clone(),
            },
            "b.key",
        ),
    ];
    for (pair, names) in cases {
        let mut s = settings(&[&a]);
        s.certs = vec![pair];
        let err = ServerTls::load(&s).unwrap_err().to_string();
        assert!(err.contains(names), "error {err:?} does not name {names}");
    }
    let mut s = settings(&[&a]);
    s.client_auth = ClientAuth::Required;
    assert!(
        ServerTls::load(&s)
            .unwrap_err()
            .to_string()
            .contains("client_ca")
    );
    assert!(sluice_tls::ClientIdentity::from_der(b"not a certificate").is_err());
}

#[tokio::test]
async fn openssl_s_client_presents_a_client_certificate() {
    sluice_test_support::require_tool("openssl");
    let ca = TestCa::new("OpenSSL CA");
    let server = ca.issue(&Leaf::server("srv", &["data.test"]));
    let app = ca.issue(&Leaf::client("app2", "app2", &["app2.test"]));
    let tls = mtls(&ca, &server, ClientAuth::Required);
    let (addr, srv) = serve_one(tls).await;
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "data.test",
            "-CAfile",
        ])
        .arg(&ca.ca_path)
        .arg("-cert")
        .arg(&app.cert)
        .arg("-key")
        .arg(&app.key)
        .args(["-verify_return_error", "-ign_eof"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    let info = srv.await.unwrap().unwrap();
    assert_eq!(info.identity.unwrap().subject_cn.as_deref(), Some("app2"));
}

#[tokio::test]
async fn sessions_resume_with_tls13_tickets_and_tls12_session_ids() {
    let ca = TestCa::new("Resume CA");
    let a = ca.issue(&Leaf::server("a", &["a.test"]));
    let tls = ServerTls::load(&settings(&[&a])).unwrap();
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        // One client config = one client session cache.
        let cfg = client_config(&ca.ca_path, None, versions, &[]);
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let (addr, server) = serve_one(tls.clone()).await;
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut s = tokio_rustls::TlsConnector::from(Arc::clone(&cfg))
                .connect(ServerName::try_from("a.test").unwrap(), tcp)
                .await
                .unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            assert_eq!(buf, b"ok");
            kinds.push(s.get_ref().1.handshake_kind());
            server.await.unwrap().unwrap();
        }
        assert_eq!(
            kinds,
            vec![
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed)
            ],
            "{versions:?}"
        );
    }
}
