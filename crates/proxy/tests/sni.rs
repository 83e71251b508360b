#![allow(clippy::unwrap_used)]
//! TLS passthrough routed by SNI (`[[listener.sni]]`): two rustls backends with their own
//! certificates behind one TCP listener. Clients see the backend's certificate (the proxy did
//! not touch the handshake), reach the right backend by name, and anything that is not a usable
//! ClientHello is closed.

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use sluice_test_support::certs::{CertFiles, Leaf, TestCa};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A TLS backend (no client auth): greets with `backend=NAME sni=SNI`, then echoes lines.
async fn tls_backend(name: &'static str, cert: &CertFiles) -> SocketAddr {
    let tls = cert.server_tls(false);
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
                let sni = info.sni.clone().unwrap_or_else(|| "-".into());
                let (r, mut w) = tokio::io::split(stream);
                if w.write_all(format!("backend={name} sni={sni}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{name}:{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn client_config(ca: &TestCa, max_fragment: Option<usize>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&ca.ca_path).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.max_fragment_size = max_fragment;
    Arc::new(cfg)
}

/// Writes at most `chunk` bytes per call with a pause after each, for the first `limit` bytes:
/// the ClientHello reaches the proxy in many TCP segments.
struct Trickle {
    inner: TcpStream,
    chunk: usize,
    limit: usize,
    written: usize,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(pause) = self.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let n = if self.written < self.limit {
            buf.len().min(self.chunk)
        } else {
            buf.len()
        };
        let r = Pin::new(&mut self.inner).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(n)) = &r {
            self.written += n;
            if self.written < self.limit {
                self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(3))));
            }
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connects through the proxy with `name` as server name (an IP: no SNI is sent), checks the
/// served leaf certificate is `expect_cert`, and returns the greeting and one echoed line.
async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    cfg: Arc<rustls::ClientConfig>,
    name: &str,
    expect_cert: &CertFiles,
) -> Result<(String, String), String> {
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(server_name, io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    assert_eq!(
        served, expect_cert.der,
        "{name}: the client must see the backend's own certificate"
    );
    let mut r = BufReader::new(tls);
    let mut greeting = String::new();
    r.read_line(&mut greeting)
        .await
        .map_err(|e| e.to_string())?;
    r.get_mut().write_all(b"ping\n").await.unwrap();
    let mut echo = String::new();
    r.read_line(&mut echo).await.map_err(|e| e.to_string())?;
    Ok((greeting.trim().to_owned(), echo.trim().to_owned()))
}

/// Sends `bytes` and waits for the proxy to close; returns how long that took.
async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the proxy closes the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing may be answered to {bytes:?}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_routes_by_sni_without_touching_the_handshake() {
    let ca = TestCa::new("Passthrough CA");
    let a_cert = ca.issue(&Leaf::server("a", &["a.test", "127.0.0.1"]));
    let b_cert = ca.issue(&Leaf::server("b", &["*.b.test"]));
    let a = tls_backend("a", &a_cert).await;
    let b = tls_backend("b", &b_cert).await;
    let log_path = ca.dir().join("access.log");
    let config = format!(
        "[access_log]\npath = {log_path:?}\n\
         [[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nservice = \"a\"\nsni_timeout = \"300ms\"\n\
         [[listener.sni]]\nhost = \"A.test\"\nservice = \"a\"\n\
         [[listener.sni]]\nhost = \"*.b.test\"\nservice = \"b\"\n\
         [[listener]]\nname = \"strict\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nsni_max_bytes = 1024\n\
         [[listener.sni]]\nhost = \"a.test\"\nservice = \"a\"\n\
         [[service]]\nname = \"a\"\n{}\n[[service]]\nname = \"b\"\n{}\n",
        instances(&[a]),
        instances(&[b])
    );
    let (proxy, addr) = start(&config).await;
    let strict = proxy.listener_addrs()["strict"];
    let cfg = client_config(&ca, None);

    // By name, exact (case-insensitive in the config) and wildcard.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (greeting, echo) = talk(tcp, Arc::clone(&cfg), "a.test", &a_cert)
        .await
        .unwrap();
    assert_eq!(greeting, "backend=a sni=a.test");
    assert_eq!(echo, "a:ping");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (greeting, echo) = talk(tcp, Arc::clone(&cfg), "x.b.test", &b_cert)
        .await
        .unwrap();
    assert_eq!(greeting, "backend=b sni=x.b.test");
    assert_eq!(echo, "b:ping");

    // A ClientHello in many TCP segments, and one cut into many small TLS records.
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let trickle = Trickle {
        inner: tcp,
        chunk: 40,
        limit: 4096,
        written: 0,
        pause: None,
    };
    let (greeting, _) = talk(trickle, Arc::clone(&cfg), "y.b.test", &b_cert)
        .await
        .unwrap();
    assert_eq!(greeting, "backend=b sni=y.b.test");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (greeting, _) = talk(tcp, client_config(&ca, Some(64)), "z.b.test", &b_cert)
        .await
        .unwrap();
    assert_eq!(greeting, "backend=b sni=z.b.test");

    // No SNI (an IP address as server name): the listener's default service.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (greeting, _) = talk(tcp, Arc::clone(&cfg), "127.0.0.1", &a_cert)
        .await
        .unwrap();
    assert_eq!(greeting, "backend=a sni=-");

    // Without a default service, an unknown name or no name is closed.
    let tcp = TcpStream::connect(strict).await.unwrap();
    let err = talk(tcp, Arc::clone(&cfg), "x.b.test", &b_cert)
        .await
        .unwrap_err();
    assert!(err.starts_with("handshake"), "{err}");
    let tcp = TcpStream::connect(strict).await.unwrap();
    assert!(
        talk(tcp, Arc::clone(&cfg), "127.0.0.1", &a_cert)
            .await
            .is_err()
    );
    let tcp = TcpStream::connect(strict).await.unwrap();
    let (greeting, _) = talk(tcp, Arc::clone(&cfg), "a.test", &a_cert)
        .await
        .unwrap();
    assert_eq!(greeting, "backend=a sni=a.test");

    // Garbage, plain HTTP, an oversized hello and a silent client: closed, never answered.
    closed_after(addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    closed_after(addr, &[0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0, 0, 1, 0]).await;
    closed_after(
        strict,
        &[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc],
    )
    .await;
    let silent = closed_after(addr, &[0x16, 0x03]).await;
    assert!(
        silent >= Duration::from_millis(250) && silent < Duration::from_secs(3),
        "a slow client is closed at sni_timeout, took {silent:?}"
    );

    // The access log names the server name each session was routed on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("\"sni\":\"a.test\""), "{log}");
    assert!(log.contains("\"sni\":\"x.b.test\""), "{log}");
    proxy.shutdown(Duration::from_secs(1)).await;
}
