//! A stand-in for one member of an IRIS mirror set (seed 001), as real servers on loopback:
//!
//! - a web port answering `GET /csp/mirror_status.cxw` with `200 SUCCESS` as primary and
//!   `503 FAILED` as backup, and `GET /api/...` with `{"host": NAME, "role": ...}`;
//! - a TCP port (the superserver, 1972 in the seed) that greets each connection with
//!   `NAME\n` and then echoes what it receives.
//!
//! A member can switch role, *freeze* (keep its ports open but answer nothing: a hung server,
//! whose status page times out) or *stop* (close its ports: connections are refused), and
//! start again on the same ports.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The role a member reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorRole {
    /// `200 SUCCESS`.
    Primary,
    /// `503 FAILED`.
    Backup,
}

const PRIMARY: u8 = 0;
const BACKUP: u8 = 1;
const FROZEN: u8 = 2;

#[derive(Debug)]
struct State {
    name: String,
    mode: AtomicU8,
}

/// A running mirror member; stopped when dropped.
#[derive(Debug)]
pub struct MirrorMember {
    state: Arc<State>,
    web: SocketAddr,
    tcp: SocketAddr,
    running: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl MirrorMember {
    /// Starts a member on fresh loopback ports.
    pub fn start(name: &str, role: MirrorRole) -> Self {
        let any = "127.0.0.1:0".parse().expect("loopback");
        Self::start_on(name, role, any, any)
    }

    /// Starts a member on chosen addresses (port 0 picks one).
    pub fn start_on(name: &str, role: MirrorRole, web: SocketAddr, tcp: SocketAddr) -> Self {
        let state = Arc::new(State {
            name: name.to_owned(),
            mode: AtomicU8::new(match role {
                MirrorRole::Primary => PRIMARY,
                MirrorRole::Backup => BACKUP,
            }),
        });
        let web =
            std::net::TcpListener::bind(web).unwrap_or_else(|e| panic!("{name}: bind {web}: {e}"));
        let tcp =
            std::net::TcpListener::bind(tcp).unwrap_or_else(|e| panic!("{name}: bind {tcp}: {e}"));
        let (web_addr, tcp_addr) = (
            web.local_addr().expect("addr"),
            tcp.local_addr().expect("addr"),
        );
        let member = Self {
            state,
            web: web_addr,
            tcp: tcp_addr,
            running: Mutex::new(None),
        };
        member.serve(web, tcp);
        member
    }

    fn serve(&self, web: std::net::TcpListener, tcp: std::net::TcpListener) {
        web.set_nonblocking(true).expect("nonblocking");
        tcp.set_nonblocking(true).expect("nonblocking");
        let (stop, stopped) = watch::channel(false);
        let state = Arc::clone(&self.state);
        let thread = std::thread::Builder::new()
            .name(format!("mirror-{}", self.state.name))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(run(state, web, tcp, stopped));
            })
            .expect("spawn member thread");
        if let Ok(mut r) = self.running.lock() {
            *r = Some(Running { stop, thread });
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The web port (status page, REST).
    pub fn web(&self) -> SocketAddr {
        self.web
    }

    /// The TCP port (superserver).
    pub fn tcp(&self) -> SocketAddr {
        self.tcp
    }

    /// Switches role (and unfreezes).
    pub fn set_role(&self, role: MirrorRole) {
        self.state.mode.store(
            if role == MirrorRole::Primary {
                PRIMARY
            } else {
                BACKUP
            },
            SeqCst,
        );
    }

    /// Keeps the ports open but answers nothing, on both ports.
    pub fn freeze(&self) {
        self.state.mode.store(FROZEN, SeqCst);
    }

    /// Closes both ports and every connection: later connections are refused.
    pub fn stop(&self) {
        let running = self.running.lock().ok().and_then(|mut r| r.take());
        if let Some(r) = running {
            let _ = r.stop.send(true);
            let _ = r.thread.join();
        }
    }

    /// Starts again on the same ports, in `role`.
    pub fn restart(&self, role: MirrorRole) {
        self.stop();
        self.set_role(role);
        let web = std::net::TcpListener::bind(self.web).expect("rebind web");
        let tcp = std::net::TcpListener::bind(self.tcp).expect("rebind tcp");
        self.serve(web, tcp);
    }
}

impl Drop for MirrorMember {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn run(
    state: Arc<State>,
    web: std::net::TcpListener,
    tcp: std::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let web = TcpListener::from_std(web).expect("web listener");
    let tcp = TcpListener::from_std(tcp).expect("tcp listener");
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Ok((stream, _)) = web.accept() => {
                let state = Arc::clone(&state);
                tasks.spawn(async move {
                    let svc = service_fn(move |req| web_answer(req, Arc::clone(&state)));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
            Ok((mut stream, _)) = tcp.accept() => {
                let state = Arc::clone(&state);
                tasks.spawn(async move {
                    if state.mode.load(SeqCst) == FROZEN {
                        std::future::pending::<()>().await;
                    }
                    if stream.write_all(format!("{}\n", state.name).as_bytes()).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        }
    }
    tasks.abort_all();
}

async fn web_answer(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mode = state.mode.load(SeqCst);
    if mode == FROZEN {
        std::future::pending::<()>().await;
    }
    let role = if mode == PRIMARY { "primary" } else { "backup" };
    let (status, body) = if req.uri().path() == "/csp/mirror_status.cxw" {
        if mode == PRIMARY {
            (StatusCode::OK, "SUCCESS".to_owned())
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "FAILED".to_owned())
        }
    } else {
        (
            StatusCode::OK,
            format!(
                "{{\"host\":\"{}\",\"role\":\"{role}\",\"path\":\"{}\"}}",
                state.name,
                req.uri().path()
            ),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    Ok(resp)
}
