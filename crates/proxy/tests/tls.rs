#![allow(clippy::unwrap_used)]
//! TLS termination and per-connection authorization on listeners, with rustls clients and a
//! CA made at test time.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use sluice_test_support::certs::{CertFiles, Leaf, TestCa};
use sluice_test_support::{Backend, MirrorMember, MirrorRole};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn client_config(
    ca: &TestCa,
    client: Option<&CertFiles>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&ca.ca_path).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
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

/// Opens a TLS connection and reads the first line (the mirror member's greeting). `Err` when
/// the handshake fails or the proxy closes the connection before a line.
async fn greeting_over_tls(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("data.test").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut r = BufReader::new(tls);
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => Ok(line.trim().to_owned()),
        other => Err(format!("no greeting: {other:?}")),
    }
}

fn ca_setup() -> (TestCa, CertFiles, CertFiles, CertFiles) {
    let ca = TestCa::new("Data CA");
    let server = ca.issue(&Leaf::server("data", &["data.test"]));
    let app1 = ca.issue(&Leaf::client("app1", "app1", &["app1.test"]));
    let app2 = ca.issue(&Leaf::client("app2", "app2", &[]));
    (ca, server, app1, app2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_with_mutual_tls_and_an_allow_list() {
    let (ca, server, app1, app2) = ca_setup();
    let member = MirrorMember::start("a", MirrorRole::Primary);
    let log_path = ca.dir().join("access.log");
    let cfg = format!(
        "[access_log]\npath = {log_path:?}\n[[listener]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nservice = \"db\"\n\
         [listener.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nclient_auth = \"required\"\nhandshake_timeout = \"1s\"\n\
         [listener.authz]\nallow_cn = [\"app1\"]\n\
         [[service]]\nname = \"db\"\ninstances = [\"{}\"]\n",
        server.cert,
        server.key,
        ca.ca_path,
        member.tcp()
    );
    let (_p, addr) = start(&cfg).await;

    // The allowed client reaches the instance, and the relay works through TLS.
    assert_eq!(
        greeting_over_tls(addr, client_config(&ca, Some(&app1), &[]))
            .await
            .unwrap(),
        "a"
    );
    // A valid certificate that is not on the allow-list: handshake done, then closed.
    let denied = greeting_over_tls(addr, client_config(&ca, Some(&app2), &[])).await;
    assert!(denied.is_err(), "app2 must be refused: {denied:?}");
    // No certificate: the handshake fails.
    assert!(
        greeting_over_tls(addr, client_config(&ca, None, &[]))
            .await
            .is_err()
    );
    // Plain TCP to a TLS port: closed without a byte of the instance's greeting.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"hello, not TLS\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&buf).contains('a'), "{buf:?}");
    // A silent client is cut at the handshake timeout (1 s).
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut [0u8; 16]))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}",
        started.elapsed()
    );
    // The allowed client still works afterwards.
    assert_eq!(
        greeting_over_tls(addr, client_config(&ca, Some(&app1), &[]))
            .await
            .unwrap(),
        "a"
    );
    // Sessions are logged with the client identity.
    sluice_test_support::eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let line = log
                .lines()
                .find(|l| l.contains("\"cn\":\"app1\""))
                .ok_or(log.clone())?;
            let j: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            if j["protocol"] == "tcp"
                && j["tls"]["sni"] == "data.test"
                && j["tls"]["fingerprint"]
                    .as_str()
                    .is_some_and(|f| f.len() == 64)
            {
                Ok(())
            } else {
                Err(line.to_owned())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_cidr_rules_apply_to_plain_listeners_too() {
    let member = MirrorMember::start("a", MirrorRole::Primary);
    let cfg = |cidr: &str| {
        format!(
            "[access_log]\npath = \"off\"\n[[listener]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nservice = \"db\"\n\
             [listener.authz]\nallow_cidr = [\"{cidr}\"]\n[[service]]\nname = \"db\"\ninstances = [\"{}\"]\n",
            member.tcp()
        )
    };
    let (p, addr) = start(&cfg("10.0.0.0/8")).await;
    let read_line = || async move {
        let mut r = BufReader::new(TcpStream::connect(addr).await.unwrap());
        let mut line = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
        line.trim().to_owned()
    };
    assert_eq!(read_line().await, "", "127.0.0.1 is not in 10.0.0.0/8");
    apply(&p, &cfg("127.0.0.0/8")).await;
    assert_eq!(read_line().await, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_negotiates_h2_and_sets_identity_headers_that_clients_cannot_forge() {
    let (ca, server, app1, _) = ca_setup();
    let backend = Backend::start("one");
    let cfg = format!(
        "[access_log]\npath = \"off\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         [listener.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nclient_auth = \"optional\"\n\
         identity_headers = {{ cn = \"x-client-cn\", san = \"x-client-san\", fingerprint = \"x-client-fp\" }}\n\
         [[route]]\npath = \"/\"\nservice = \"s\"\n[[service]]\nname = \"s\"\ninstances = [\"{}\"]\n",
        server.cert,
        server.key,
        ca.ca_path,
        backend.addr()
    );
    let (_p, addr) = start(&cfg).await;

    // HTTP/1.1 over TLS, with a client certificate and forged identity headers.
    let request = |client: Option<CertFiles>| {
        let cfg = client_config(&ca, client.as_ref(), &[b"http/1.1"]);
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(ServerName::try_from("data.test").unwrap(), tcp)
                .await
                .unwrap();
            tls.write_all(b"GET /who HTTP/1.1\r\nHost: data.test\r\nx-client-cn: forged\r\nX-Client-Fp: forged\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = String::new();
            tls.read_to_string(&mut out).await.unwrap();
            let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
            serde_json::from_str::<serde_json::Value>(&body)
                .unwrap_or_else(|e| panic!("{e}: {out}"))
        }
    };
    let j = request(Some(app1.clone())).await;
    let h = &j["headers"];
    assert_eq!(h["x-client-cn"], "app1", "{j}");
    assert_eq!(h["x-client-san"], "app1.test");
    assert_eq!(h["x-client-fp"], sluice_tls_fingerprint(&app1.der));
    assert_eq!(h["x-forwarded-proto"], "https");
    // Anonymous (optional client auth): the forged copies are removed, nothing is added.
    let j = request(None).await;
    assert!(j["headers"].get("x-client-cn").is_none(), "{j}");
    assert!(j["headers"].get("x-client-fp").is_none(), "{j}");

    // ALPN h2: an HTTP/2 client over TLS.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_config(&ca, Some(&app1), &[b"h2"]))
        .connect(ServerName::try_from("data.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://data.test/h2")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
}

fn sluice_tls_fingerprint(der: &[u8]) -> String {
    sluice_tls::ClientIdentity::from_der(der)
        .unwrap()
        .fingerprint_sha256
}

/// An HTTPS backend requiring a client certificate; answers with the client's CN.
async fn mtls_backend(ca: &TestCa, cert: &CertFiles) -> SocketAddr {
    let tls = sluice_tls::ServerTls::load(&sluice_tls::ServerTlsSettings {
        certs: vec![sluice_tls::CertKeyPaths {
            cert: cert.cert.clone(),
            key: cert.key.clone(),
        }],
        client_ca: Some(ca.ca_path.clone()),
        client_auth: sluice_tls::ClientAuth::Required,
        min_version: sluice_tls::MinVersion::Tls12,
        alpn_h2: false,
        alpn_http1: true,
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok((stream, info)) = tls.accept(tcp, Duration::from_secs(5)).await else {
                    return;
                };
                let cn = info
                    .identity
                    .and_then(|i| i.subject_cn.clone())
                    .unwrap_or_default();
                let svc = hyper::service::service_fn(move |_req| {
                    let body = format!("client={cn}");
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mutual_tls_with_server_name_and_refusal_of_an_untrusted_instance() {
    let ca = TestCa::new("Upstream CA");
    let backend_cert = ca.issue(&Leaf::server("backend", &["backend.test"]));
    let proxy_client = ca.issue(&Leaf::client("proxy", "sluice-proxy", &[]));
    let backend = mtls_backend(&ca, &backend_cert).await;
    let cfg = |tls: &str| {
        format!(
            "{LISTENER}[[route]]\npath = \"/\"\nservice = \"s\"\n[[service]]\nname = \"s\"\ninstances = [\"{backend}\"]\n\
             retries = {{ attempts = 0 }}\n[service.tls]\n{tls}\n"
        )
    };
    let good = format!(
        "ca = {:?}\ncert = {:?}\nkey = {:?}\nserver_name = \"backend.test\"",
        ca.ca_path, proxy_client.cert, proxy_client.key
    );
    let (p, addr) = start(&cfg(&good)).await;
    let client = sluice_test_support::Client::http1();
    let r = client.get(&format!("http://{addr}/x")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "client=sluice-proxy");
    // A second request reuses the pooled TLS connection.
    assert_eq!(
        client
            .get(&format!("http://{addr}/y"))
            .await
            .unwrap()
            .text(),
        "client=sluice-proxy"
    );

    drop(p);

    // Each refusal on a fresh proxy (an empty pool): a CA that did not sign the instance's
    // certificate, and a server name the certificate does not carry. Both are 502.
    let other = TestCa::new("Other CA");
    for (case, tls) in [
        (
            "untrusted CA",
            format!(
                "ca = {:?}\ncert = {:?}\nkey = {:?}\nserver_name = \"backend.test\"",
                other.ca_path, proxy_client.cert, proxy_client.key
            ),
        ),
        (
            "wrong name",
            format!(
                "ca = {:?}\ncert = {:?}\nkey = {:?}\nserver_name = \"other.test\"",
                ca.ca_path, proxy_client.cert, proxy_client.key
            ),
        ),
        (
            "no client certificate",
            format!("ca = {:?}\nserver_name = \"backend.test\"", ca.ca_path),
        ),
    ] {
        let (_p, addr) = start(&cfg(&tls)).await;
        let r = client.get(&format!("http://{addr}/z")).await.unwrap();
        assert_eq!(r.status, 502, "{case}: {}", r.text());
        if case != "no client certificate" {
            assert!(r.text().contains("TLS handshake"), "{case}: {}", r.text());
        }
    }
    // insecure_skip_verify accepts a certificate from any CA (and is logged at warn).
    let skip = format!(
        "insecure_skip_verify = true\ncert = {:?}\nkey = {:?}",
        proxy_client.cert, proxy_client.key
    );
    let (_p, addr) = start(&cfg(&skip)).await;
    assert_eq!(
        client
            .get(&format!("http://{addr}/w"))
            .await
            .unwrap()
            .text(),
        "client=sluice-proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_originates_mutual_tls_to_its_instances() {
    let ca = TestCa::new("TCP upstream CA");
    let backend_cert = ca.issue(&Leaf::server("datasrv", &["data.test"]));
    let proxy_client = ca.issue(&Leaf::client("appsrv", "appsrv", &[]));
    // A TLS instance requiring a client certificate: greets with the client's CN, then echoes.
    let tls = sluice_tls::ServerTls::load(&sluice_tls::ServerTlsSettings {
        certs: vec![sluice_tls::CertKeyPaths {
            cert: backend_cert.cert.clone(),
            key: backend_cert.key.clone(),
        }],
        client_ca: Some(ca.ca_path.clone()),
        client_auth: sluice_tls::ClientAuth::Required,
        min_version: sluice_tls::MinVersion::Tls12,
        alpn_h2: false,
        alpn_http1: false,
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok((stream, info)) = tls.accept(tcp, Duration::from_secs(5)).await else {
                    return;
                };
                let cn = info
                    .identity
                    .and_then(|i| i.subject_cn.clone())
                    .unwrap_or_default();
                let (mut r, mut w) = tokio::io::split(stream);
                let _ = w.write_all(format!("cn={cn}\n").as_bytes()).await;
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let cfg = |tls: &str| {
        format!(
            "[access_log]\npath = \"off\"\n[[listener]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nservice = \"data\"\n\
             [[service]]\nname = \"data\"\ninstances = [\"{backend}\"]\n[service.tls]\n{tls}\n"
        )
    };
    let good = format!(
        "ca = {:?}\ncert = {:?}\nkey = {:?}\nserver_name = \"data.test\"",
        ca.ca_path, proxy_client.cert, proxy_client.key
    );
    let (_p, addr) = start(&cfg(&good)).await;
    let mut c = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, "cn=appsrv\n");
    c.get_mut().write_all(b"ping\n").await.unwrap();
    line.clear();
    tokio::time::timeout(Duration::from_secs(5), c.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, "ping\n");

    // An instance certificate from another CA: the client connection is closed, no byte relayed.
    let other = TestCa::new("Other CA");
    let bad = format!(
        "ca = {:?}\ncert = {:?}\nkey = {:?}\nserver_name = \"data.test\"",
        other.ca_path, proxy_client.cert, proxy_client.key
    );
    let (_p2, addr) = start(&cfg(&bad)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf.is_empty(), "{buf:?}");
}

/// An HTTPS instance with an accept queue of `backlog` that accepts nothing for `pause` (a
/// stalled server), then serves "ok" on keep-alive connections. Its handle gives how many
/// connections were waiting in the queue when it started accepting.
async fn stalled_https_instance(
    cert: &CertFiles,
    backlog: u32,
    pause: Duration,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<usize>) {
    let tls = cert.server_tls(true);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(backlog).unwrap();
    let addr = listener.local_addr().unwrap();
    let (queued_tx, queued_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        tokio::time::sleep(pause).await;
        let mut queued = Vec::new();
        // Everything ready now was queued during the pause.
        while let Some(Ok((tcp, _))) = futures_util::FutureExt::now_or_never(listener.accept()) {
            queued.push(tcp);
        }
        let _ = queued_tx.send(queued.len());
        let serve = move |tcp: TcpStream| {
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok((stream, _)) = tls.accept(tcp, Duration::from_secs(5)).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        };
        queued.into_iter().for_each(&serve);
        while let Ok((tcp, _)) = listener.accept().await {
            serve(tcp);
        }
    });
    (addr, queued_rx)
}

/// Hundreds of requests want a connection to a TLS instance at once (as after a stall): at
/// most `max_connecting` connects are in progress, so the instance's accept queue never holds
/// more, and every request is served, most on connections the first ones give back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_opens_at_most_max_connecting_connections_at_once() {
    const REQUESTS: usize = 300;
    let ca = TestCa::new("Upstream CA");
    let cert = ca.issue(&Leaf::server("backend", &["backend.test"]));
    let (instance, queued) = stalled_https_instance(&cert, 64, Duration::from_millis(300)).await;
    let (_p, addr) = start(&format!(
        "{LISTENER}[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\ninstances = [\"{instance}\"]\n\
         retries = {{ attempts = 0 }}\ntimeouts = {{ connect = \"10s\" }}\n\
         [service.pool]\nmax_connecting = 4\n[service.tls]\nca = {:?}\nserver_name = \"backend.test\"\n",
        ca.ca_path
    ))
    .await;
    let requests: Vec<_> = (0..REQUESTS)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let mut reply = Vec::new();
                s.read_to_end(&mut reply).await.unwrap();
                String::from_utf8_lossy(&reply).into_owned()
            })
        })
        .collect();
    let mut served = 0;
    for request in requests {
        let reply = request.await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        served += 1;
    }
    assert_eq!(served, REQUESTS);
    let queued = queued.await.unwrap();
    assert!(
        (1..=4).contains(&queued),
        "{queued} connections were in the instance's accept queue; max_connecting is 4"
    );
}
