//! A stand-in for one member of an IRIS mirror set (seed 001), as real servers on loopback:
//!
//! - a web port answering `GET /csp/mirror_status.cxw` with `200 SUCCESS` as primary and
//!   `503 FAILED` as backup, and `GET /api/...` with `{"host": NAME, "role": ...}` (the role
//!   when the answer is sent; `?delay_ms=N` answers N ms late; the answer also says how many
//!   request body bytes came, `"received"`, and `?pad=N` adds N bytes of `"pad"`, for
//!   bodies larger than a packet);
//! - a TCP port (the superserver, 1972 in the seed) that greets each connection with
//!   `NAME\n` and then echoes what it receives.
//!
//! A member can switch role, *freeze* (keep its ports open but answer nothing: a hung server,
//! whose status page times out) or *stop* (close its ports: connections are refused), and
//! start again on the same ports.
//!
//! For failover tests it can also answer slowly ([`MirrorMember::set_answer_delay`]: requests
//! pile up on it, as on a loaded server), tell when it last answered its status page (so a test
//! can break it right after a probe, the worst moment of the probe cycle), and keep a log of
//! the answers it gave and in which role ([`MirrorMember::answers`]).
//!
//! Its listeners are bound with `std::net::TcpListener::bind`, whose listen backlog is 128
//! connections on Linux (std's fixed value; `net.core.somaxconn` only caps it). A burst of new
//! connections larger than that, arriving faster than the member's accept loop drains them,
//! overflows the accept queue and the kernel drops the SYNs (the client retransmits after 1 s),
//! as on a real server with a default backlog. It is deliberately left at std's value.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
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

/// At most this many answers are kept in the log (a long-running member keeps its memory).
const ANSWER_LOG_CAP: usize = 200_000;

/// What a member answered: an `/api/...` request or a superserver greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// `GET /api/...` on the web port.
    Api,
    /// The `NAME\n` greeting on the TCP port.
    Greeting,
}

/// One answer in a member's log.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    /// What was answered.
    pub kind: AnswerKind,
    /// When the request (or connection) reached the member.
    pub received: Instant,
    /// When the answer was sent (after any delay).
    pub answered: Instant,
    /// The member's role when it answered.
    pub role: MirrorRole,
}

/// The member's status page answers so far (`GET /csp/mirror_status.cxw`: the proxies' probes).
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusProbes {
    /// How many were answered.
    pub count: u64,
    /// When the last one was answered.
    pub last: Option<Instant>,
}

#[derive(Debug)]
struct State {
    name: String,
    mode: watch::Sender<u8>,
    /// Milliseconds every `/api/` answer and greeting waits before it is sent.
    delay_ms: AtomicU64,
    status_probes: watch::Sender<StatusProbes>,
    answers: Mutex<Vec<Answer>>,
}

impl State {
    /// Waits while the member is frozen (a hung server answers nothing; it answers what it
    /// held once it thaws, as after a long pause; a stop aborts it), and returns the role it
    /// then has: the role to answer in.
    async fn thawed(&self) -> MirrorRole {
        let mut mode = self.mode.subscribe();
        let primary = mode
            .wait_for(|m| *m != FROZEN)
            .await
            .map(|m| *m == PRIMARY)
            .unwrap_or(false);
        if primary {
            MirrorRole::Primary
        } else {
            MirrorRole::Backup
        }
    }

    fn log(&self, kind: AnswerKind, received: Instant, role: MirrorRole) {
        if let Ok(mut log) = self.answers.lock()
            && log.len() < ANSWER_LOG_CAP
        {
            log.push(Answer {
                kind,
                received,
                answered: Instant::now(),
                role,
            });
        }
    }
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
            mode: watch::Sender::new(match role {
                MirrorRole::Primary => PRIMARY,
                MirrorRole::Backup => BACKUP,
            }),
            delay_ms: AtomicU64::new(0),
            status_probes: watch::Sender::new(StatusProbes::default()),
            answers: Mutex::new(Vec::new()),
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

    /// Switches role (and unfreezes: requests held by a freeze are answered, in this role).
    pub fn set_role(&self, role: MirrorRole) {
        self.state
            .mode
            .send_replace(if role == MirrorRole::Primary {
                PRIMARY
            } else {
                BACKUP
            });
    }

    /// Keeps the ports open but answers nothing, on both ports: new connections are accepted
    /// (by the kernel and the member) and get no byte; requests already received, answers
    /// still waiting for their delay, and echoes on open superserver sessions all wait. No
    /// connection is closed. The status page times out.
    pub fn freeze(&self) {
        self.state.mode.send_replace(FROZEN);
    }

    /// Every `/api/` answer and every superserver greeting from now on waits `delay` before it
    /// is sent (a slow or loaded server: at R requests per second, about R × delay requests
    /// are in flight on it). The status page is never delayed.
    pub fn set_answer_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), SeqCst);
    }

    /// The status page answers so far; `changed()` on the receiver wakes at the next one.
    pub fn status_probes(&self) -> watch::Receiver<StatusProbes> {
        self.state.status_probes.subscribe()
    }

    /// Waits for the next status page answer (a probe) and returns when it was answered, or
    /// `None` if none came within `within`.
    pub async fn next_status_probe(&self, within: Duration) -> Option<Instant> {
        let mut probes = self.status_probes();
        probes.mark_unchanged();
        match tokio::time::timeout(within, probes.changed()).await {
            Ok(Ok(())) => probes.borrow().last,
            _ => None,
        }
    }

    /// The answers given so far (`/api/` requests and greetings), in the order they were sent;
    /// at most the first 200,000.
    pub fn answers(&self) -> Vec<Answer> {
        self.state
            .answers
            .lock()
            .map(|log| log.clone())
            .unwrap_or_default()
    }

    /// Starts a [`MirrorMember::stop`] and returns at once: the member's thread closes its
    /// ports and connections within a few milliseconds (a `stop` after it waits for that).
    pub fn begin_stop(&self) {
        if let Ok(r) = self.running.lock()
            && let Some(r) = r.as_ref()
        {
            let _ = r.stop.send(true);
        }
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
            Ok((stream, _)) = tcp.accept() => {
                tasks.spawn(superserver(stream, Arc::clone(&state)));
            }
            // Finished connections leave the set (a long-running member keeps its memory).
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.abort_all();
}

async fn superserver(mut stream: tokio::net::TcpStream, state: Arc<State>) {
    let received = Instant::now();
    let mut role = state.thawed().await;
    let delay = state.delay_ms.load(SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        role = state.thawed().await;
    }
    if stream
        .write_all(format!("{}\n", state.name).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    state.log(AnswerKind::Greeting, received, role);
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                state.thawed().await;
                if stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// `name=N` from a query string.
fn query_number(query: Option<&str>, name: &str) -> Option<u64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

async fn web_answer(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let received = Instant::now();
    let mut role = state.thawed().await;
    let status_page = req.uri().path() == "/csp/mirror_status.cxw";
    let (parts, body) = req.into_parts();
    // A body cut short counts what came: the client compares it with what it sent.
    let body_bytes = body.collect().await.map_or(0, |b| b.to_bytes().len());
    if !status_page {
        let delay =
            query_number(parts.uri.query(), "delay_ms").unwrap_or(state.delay_ms.load(SeqCst));
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            role = state.thawed().await;
        }
    }
    let (status, body) = if status_page {
        state.status_probes.send_modify(|p| {
            p.count += 1;
            p.last = Some(Instant::now());
        });
        if role == MirrorRole::Primary {
            (StatusCode::OK, "SUCCESS".to_owned())
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "FAILED".to_owned())
        }
    } else {
        state.log(AnswerKind::Api, received, role);
        (
            StatusCode::OK,
            format!(
                "{{\"host\":\"{}\",\"role\":\"{}\",\"path\":\"{}\",\"received\":{body_bytes},\"pad\":\"{}\"}}",
                state.name,
                if role == MirrorRole::Primary {
                    "primary"
                } else {
                    "backup"
                },
                parts.uri.path(),
                "x".repeat(
                    query_number(parts.uri.query(), "pad")
                        .unwrap_or(0)
                        .min(1 << 24) as usize
                )
            ),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    Ok(resp)
}
