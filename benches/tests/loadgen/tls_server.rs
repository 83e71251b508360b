//! A TLS server on loopback for loadgen's tests: rustls with a certificate from a CA made for
//! the test, ALPN `h2` and `http/1.1`, answering every request `200 ok` with hyper's server for
//! the protocol ALPN settled on, and counting the requests of each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sluice_test_support::certs::{Leaf, TestCa};

/// The name the server's certificate is for.
pub(crate) const NAME: &str = "tls.test";

/// Requests served, by protocol.
#[derive(Default)]
struct Hits {
    http1: AtomicU64,
    http2: AtomicU64,
}

/// A running server; stopped when dropped (with its runtime).
pub(crate) struct TlsServer {
    addr: std::net::SocketAddr,
    hits: Arc<Hits>,
    ca: TestCa,
    _runtime: tokio::runtime::Runtime,
}

impl TlsServer {
    pub(crate) fn start() -> Self {
        let ca = TestCa::new("Loadgen Test CA");
        let files = ca.issue(&Leaf::server("server", &[NAME]));
        let cert = CertificateDer::from_pem_file(&files.cert).expect("server certificate");
        let key = PrivateKeyDer::from_pem_file(&files.key).expect("server key");
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server TLS config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(Hits::default());
        runtime.spawn(serve(listener, acceptor, Arc::clone(&hits)));
        Self {
            addr,
            hits,
            ca,
            _runtime: runtime,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("https://{}/", self.addr)
    }

    /// The CA certificate to trust, PEM.
    pub(crate) fn ca(&self) -> &str {
        self.ca.ca_path.to_str().expect("utf-8 temp path")
    }

    /// Requests served so far over (HTTP/1.1, HTTP/2).
    pub(crate) fn hits(&self) -> (u64, u64) {
        (self.hits.http1.load(Relaxed), self.hits.http2.load(Relaxed))
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    hits: Arc<Hits>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        let hits = Arc::clone(&hits);
        tokio::spawn(async move {
            // A handshake the client refuses ends here: nothing was served.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let service = service_fn(move |_request| {
                let counter = if http2 { &hits.http2 } else { &hits.http1 };
                counter.fetch_add(1, Relaxed);
                async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"ok\n"),
                    )))
                }
            });
            let io = TokioIo::new(tls);
            // A connection's error (the load generator closing it at the end) ends it.
            let _ = if http2 {
                http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
            } else {
                http1::Builder::new().serve_connection(io, service).await
            };
        });
    }
}
