//! A real HTTP/1.1 backend on `127.0.0.1:0`, run on its own thread and runtime so it behaves
//! like a separate server whatever the test's runtime does.
//!
//! Paths it understands (any method):
//! - `/status/NNN` answers NNN; `/delay/MS` answers after MS milliseconds;
//! - `/echo` echoes the request body; `/stream-echo` sends each piece of the request body back
//!   as it arrives (both ways at once over HTTP/2); `/big/N` sends N bytes;
//! - `/stall-body/MS` sends the head, then waits MS before the body;
//! - `/ws` accepts a WebSocket and echoes every message;
//! - anything else answers 200 with a JSON description of the request (backend name, method,
//!   path, query, headers (a value that is not UTF-8 as `\xNN` per byte), body length, HTTP version and the URI's authority).
//!
//! [`Backend::start_h2c`] starts one that speaks HTTP/2 with prior knowledge instead.
//!
//! [`Backend::set_mode`] makes every request fail in a chosen way, to test failover.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

type Body = BoxBody<Bytes, Infallible>;

/// How the backend treats every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer normally (see the module docs).
    Normal,
    /// Answer this status to everything.
    Status(u16),
    /// Read the request and never answer.
    Hang,
    /// Close the connection without answering.
    Reset,
    /// Answer normally, after this many milliseconds.
    Delay(u64),
}

#[derive(Debug)]
struct Shared {
    name: String,
    hits: AtomicU64,
    mode: AtomicU8,
    status: AtomicU64,
    /// Request-ids seen, in order, so tests can follow one request.
    seen: Mutex<Vec<String>>,
    /// A JSON settings file the backend reads on every request and reports as `settings`
    /// (how an app would read what a sidecar rendered for it).
    settings: Option<std::path::PathBuf>,
}

/// A running backend; stopped when dropped.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend answering as `name` on a fresh loopback port.
    pub fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().expect("loopback"))
    }

    /// Starts a backend on a chosen address (e.g. to bring one back on the same port).
    pub fn start_on(name: &str, addr: SocketAddr) -> Self {
        Self::start_with_settings(name, addr, None)
    }

    /// Starts a backend that also reports, in every normal answer, the JSON found in
    /// `settings` at that moment (`"settings": null` while the file is absent or not JSON).
    pub fn start_with_settings(
        name: &str,
        addr: SocketAddr,
        settings: Option<std::path::PathBuf>,
    ) -> Self {
        Self::start_speaking(name, addr, settings, false)
    }

    /// Starts a backend speaking HTTP/2 with prior knowledge (h2c) on a fresh loopback port.
    pub fn start_h2c(name: &str) -> Self {
        let addr = "127.0.0.1:0".parse().expect("loopback");
        Self::start_speaking(name, addr, None, true)
    }

    /// Starts an h2c backend on a chosen address (to bring one back on the same port).
    pub fn start_h2c_on(name: &str, addr: SocketAddr) -> Self {
        Self::start_speaking(name, addr, None, true)
    }

    fn start_speaking(
        name: &str,
        addr: SocketAddr,
        settings: Option<std::path::PathBuf>,
        h2c: bool,
    ) -> Self {
        let std_listener = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("backend {name}: bind {addr}: {e}"));
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            hits: AtomicU64::new(0),
            mode: AtomicU8::new(0),
            status: AtomicU64::new(200),
            seen: Mutex::new(Vec::new()),
            settings,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(serve(std_listener, s, stop_rx, h2c));
            })
            .expect("spawn backend thread");
        Self {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name, as it appears in its answers.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// The `x-request-id` of every request received, in order.
    pub fn request_ids(&self) -> Vec<String> {
        self.shared
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Changes how every following request is treated.
    pub fn set_mode(&self, mode: Mode) {
        let (code, status) = match mode {
            Mode::Normal => (0, 200),
            Mode::Status(s) => (1, u64::from(s)),
            Mode::Hang => (2, 200),
            Mode::Reset => (3, 200),
            Mode::Delay(ms) => (4, ms),
        };
        self.shared.status.store(status, Ordering::SeqCst);
        self.shared.mode.store(code, Ordering::SeqCst);
    }

    /// Stops listening and closes every connection; the port then refuses connections.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    h2c: bool,
) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                let mut stop = stop.clone();
                tasks.spawn(async move {
                    if shared.mode.load(Ordering::SeqCst) == 3 {
                        return; // Reset: drop the connection unanswered.
                    }
                    let svc = service_fn(move |req| handle(req, Arc::clone(&shared)));
                    let io = TokioIo::new(stream);
                    if h2c {
                        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc);
                        tokio::select! {
                            _ = conn => {}
                            _ = stop.changed() => {}
                        }
                        return;
                    }
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        }
    }
    drop(listener);
    tasks.abort_all();
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

async fn handle(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    shared.hits.fetch_add(1, Ordering::SeqCst);
    if let (Some(id), Ok(mut seen)) = (
        req.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        shared.seen.lock(),
    ) {
        seen.push(id.to_owned());
    }
    match shared.mode.load(Ordering::SeqCst) {
        1 => {
            let status = StatusCode::from_u16(shared.status.load(Ordering::SeqCst) as u16)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(full(
                status,
                format!(
                    "{{\"backend\":\"{}\",\"forced\":{}}}",
                    shared.name,
                    status.as_u16()
                ),
            ));
        }
        2 => std::future::pending::<()>().await,
        4 => tokio::time::sleep(Duration::from_millis(shared.status.load(Ordering::SeqCst))).await,
        _ => {}
    }
    let path = req.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (first, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match first {
        "status" => {
            let code = arg
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            return Ok(full(
                code,
                format!(
                    "{{\"backend\":\"{}\",\"status\":{}}}",
                    shared.name,
                    code.as_u16()
                ),
            ));
        }
        "delay" => {
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(0))).await;
        }
        "echo" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Ok(full(StatusCode::OK, body));
        }
        "big" => return Ok(full(StatusCode::OK, vec![b'x'; arg.parse().unwrap_or(0)])),
        "stream-echo" => {
            // Each piece goes back as it comes; a failed request body ends the answer.
            let pieces = http_body_util::BodyStream::new(req.into_body())
                .take_while(|f| std::future::ready(f.is_ok()))
                .filter_map(|f| std::future::ready(f.ok().and_then(|f| f.into_data().ok())))
                .map(|data| Ok::<_, Infallible>(Frame::data(data)));
            return Ok(Response::new(BodyExt::boxed(StreamBody::new(pieces))));
        }
        "stall-body" => {
            let ms = arg.parse().unwrap_or(0);
            let stream = futures_util::stream::once(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"late body")))
            });
            return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
        }
        "ws" => return Ok(websocket(&mut req)),
        _ => {}
    }
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                // A value that is not UTF-8 is shown byte for byte, so a test can tell the
                // bytes a proxy forwarded.
                match std::str::from_utf8(v.as_bytes()) {
                    Ok(text) => text.to_owned(),
                    Err(_) => v.as_bytes().iter().map(|b| format!("\\x{b:02x}")).collect(),
                },
            )
        })
        .collect();
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_owned);
    // As ALPN names them (`h2`, `http/1.1`).
    let version = match req.version() {
        http::Version::HTTP_2 => "h2",
        http::Version::HTTP_10 => "http/1.0",
        _ => "http/1.1",
    };
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "backend": shared.name,
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body_len": body.len(),
        "version": version,
        "authority": authority,
    });
    let mut json = json;
    if let Some(path) = &shared.settings {
        json["settings"] = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(serde_json::Value::Null);
    }
    let mut resp = full(
        StatusCode::OK,
        serde_json::to_vec(&json).unwrap_or_default(),
    );
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn websocket(req: &mut Request<Incoming>) -> Response<Body> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return full(StatusCode::BAD_REQUEST, "not a websocket request");
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut resp = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = resp.headers_mut();
    h.insert("upgrade", http::HeaderValue::from_static("websocket"));
    h.insert("connection", http::HeaderValue::from_static("upgrade"));
    if let Ok(v) = http::HeaderValue::from_str(&key) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}

/// A TCP port that never answers: connections complete in the kernel's backlog and then hang
/// (a frozen server), or — once [`Blackhole::saturate`]d — do not complete at all.
#[derive(Debug)]
pub struct Blackhole {
    addr: SocketAddr,
    _listener: std::net::TcpListener,
    fillers: Vec<std::net::TcpStream>,
}

impl Blackhole {
    /// Listens on a fresh loopback port and never accepts.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        Self {
            addr: listener.local_addr().expect("addr"),
            _listener: listener,
            fillers: Vec::new(),
        }
    }

    /// Fills the accept queue so that further connection attempts get no SYN-ACK: a connect
    /// to this address then times out, like one to an unreachable host, without leaving
    /// loopback.
    pub fn saturate(mut self) -> Self {
        // Linux drops SYNs once the accept queue (backlog + 1 for `std`'s 128) is full.
        for _ in 0..200 {
            match std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) {
                Ok(s) => self.fillers.push(s),
                Err(_) => break,
            }
        }
        self
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
