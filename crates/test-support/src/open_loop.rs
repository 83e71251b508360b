//! An open-loop load generator: requests go out on a fixed schedule (`rate` per second), each
//! on its own task and its own connection, whether or not earlier ones were answered, which
//! is how many independent clients behave and how a failover meets a herd. A closed loop (N
//! clients each waiting for its answer) sends less when the proxy stalls and so hides the
//! pile-up; this one does not.
//!
//! Each request records when it was scheduled, when it really went out, when the first byte
//! of its answer came, when it ended, and its outcome, so a test can count the requests in
//! flight at any instant, the failures by kind, and who answered when.
//!
//! ```no_run
//! # async fn f(addr: std::net::SocketAddr) {
//! use sluice_test_support::open_loop::{OpenLoop, Summary, Target};
//! let load = OpenLoop::new(Target::http_get(addr, "/api/get"), 200.0).start();
//! tokio::time::sleep(std::time::Duration::from_secs(3)).await;
//! let records = load.finish().await;
//! eprintln!("{}", Summary::of(&records));
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::client::Client;

/// What each request does.
#[derive(Debug, Clone)]
pub enum Target {
    /// `GET path` as HTTP/1.1 with `Connection: close`, over a new TCP connection.
    HttpGet {
        /// Where to connect.
        addr: SocketAddr,
        /// Request target (path and query).
        path: String,
        /// More request fields, each a `name: value` line ([`Target::with_field`]).
        fields: String,
    },
    /// A superserver session (see `MirrorMember`): connect, read the greeting line (the
    /// member's name), send a line, read it back, close.
    TcpEcho {
        /// Where to connect.
        addr: SocketAddr,
    },
    /// `PUT url` with `body` over HTTP/2 with prior knowledge, multiplexed on a few shared
    /// connections (request `i` on connection `i % connections`), as a gRPC or browser
    /// client sends; the answer must say it `"received"` the whole body and carry `pad`
    /// bytes of `"pad"` (a mirror member's `?pad=N`), or the request fails at `body`.
    H2Put {
        /// One client per connection (each keeps its own).
        clients: Arc<Vec<Client>>,
        /// `http://HOST:PORT/path?pad=N`.
        url: String,
        /// The request body.
        body: Bytes,
        /// The `"pad"` length the answer must carry.
        pad: usize,
    },
}

impl Target {
    /// `GET path` on `addr`.
    pub fn http_get(addr: SocketAddr, path: &str) -> Self {
        Self::HttpGet {
            addr,
            path: path.to_owned(),
            fields: String::new(),
        }
    }

    /// The same `GET`, sending the field `name: value` too (no effect on other targets).
    pub fn with_field(mut self, name: &str, value: &str) -> Self {
        if let Self::HttpGet { fields, .. } = &mut self {
            fields.push_str(&format!("{name}: {value}\r\n"));
        }
        self
    }

    /// A greeting-and-echo session on `addr`.
    pub fn tcp_echo(addr: SocketAddr) -> Self {
        Self::TcpEcho { addr }
    }

    /// `PUT` of `body_bytes` bytes to `path` on `addr` over `connections` HTTP/2 connections,
    /// asking a mirror member for an answer padded with `pad` bytes.
    pub fn h2_put(
        addr: SocketAddr,
        path: &str,
        connections: usize,
        body_bytes: usize,
        pad: usize,
    ) -> Self {
        Self::H2Put {
            clients: Arc::new((0..connections.max(1)).map(|_| Client::h2c()).collect()),
            url: format!("http://{addr}{path}?pad={pad}"),
            body: Bytes::from(vec![b'b'; body_bytes]),
            pad,
        }
    }
}

/// The load's settings; [`OpenLoop::start`] runs it.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    target: Target,
    rate: f64,
    max_duration: Duration,
    timeout: Duration,
}

impl OpenLoop {
    /// `rate` requests per second to `target`, until [`Load::finish`] (or 60 s); each request
    /// gives up after 10 s.
    pub fn new(target: Target, rate: f64) -> Self {
        assert!(rate > 0.0 && rate.is_finite(), "rate must be positive");
        Self {
            target,
            rate,
            max_duration: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }

    /// Stops sending after `d` even without [`Load::finish`].
    pub fn max_duration(mut self, d: Duration) -> Self {
        self.max_duration = d;
        self
    }

    /// A request not finished after `t` ends as a failure (`timeout`).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Starts sending (on the current Tokio runtime). The first request goes out at once.
    pub fn start(self) -> Load {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let period = Duration::from_secs_f64(1.0 / self.rate);
        let scheduler = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut tasks = Vec::new();
                for index in 0usize.. {
                    let scheduled = started + period.mul_f64(index as f64);
                    if scheduled > started + self.max_duration {
                        break;
                    }
                    // Behind schedule (a busy machine), this returns at once: the missed
                    // requests go out in a burst, as independent clients would send them.
                    tokio::time::sleep_until(scheduled.into()).await;
                    if stop.load(SeqCst) {
                        break;
                    }
                    let (target, timeout) = (self.target.clone(), self.timeout);
                    tasks.push(tokio::spawn(one(index, scheduled, target, timeout)));
                }
                tasks
            })
        };
        Load {
            started,
            stop,
            scheduler,
        }
    }
}

/// A running load.
#[derive(Debug)]
pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    scheduler: JoinHandle<Vec<JoinHandle<Record>>>,
}

impl Load {
    /// When the first request was scheduled.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops sending and waits for every request sent to end (each within its timeout);
    /// returns them in the order they were scheduled.
    pub async fn finish(self) -> Vec<Record> {
        self.stop.store(true, SeqCst);
        let tasks = self.scheduler.await.expect("the load's scheduler panicked");
        let mut records = Vec::with_capacity(tasks.len());
        for (index, task) in tasks.into_iter().enumerate() {
            records.push(task.await.unwrap_or_else(|e| {
                let now = Instant::now();
                Record {
                    index,
                    scheduled: now,
                    sent: now,
                    answered: None,
                    done: now,
                    outcome: Outcome::Failed {
                        stage: "task",
                        error: format!("the request's task failed: {e}"),
                        greeted_by: None,
                    },
                }
            }));
        }
        records
    }
}

/// One request's fate.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its place in the schedule (0, 1, ...).
    pub index: usize,
    /// When the schedule said to send it.
    pub scheduled: Instant,
    /// When it really started (before connecting).
    pub sent: Instant,
    /// When the first byte of the answer (status line, greeting) arrived.
    pub answered: Option<Instant>,
    /// When it ended (answer read, failure, or timeout).
    pub done: Instant,
    /// What came back.
    pub outcome: Outcome,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A complete HTTP response.
    Http {
        /// Status code.
        status: u16,
        /// `host` of a JSON body (a mirror member's name).
        member: Option<String>,
        /// `role` of a JSON body (what the member was when it answered).
        role: Option<String>,
        /// `error` of a JSON body (Sluice's own answers: `no_primary`, `upstream_reset`, ...).
        error: Option<String>,
        /// The body's first 200 bytes.
        body: String,
    },
    /// A TCP session greeted by `member` that echoed the line back.
    Tcp {
        /// The greeting.
        member: String,
    },
    /// No complete answer.
    Failed {
        /// How far it got: `connect`, `send`, `head`, `body`, `greeting`, `echo`.
        stage: &'static str,
        /// What went wrong (`timeout after 10s`, an I/O error, `closed`, ...).
        error: String,
        /// The member whose greeting came before the failure (TCP sessions that failed at
        /// the echo: established with that member, then cut).
        greeted_by: Option<String>,
    },
}

impl Record {
    /// The member that answered: a `200` naming it, or a TCP session it greeted and echoed.
    pub fn answered_by(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Http {
                status: 200,
                member: Some(m),
                ..
            }
            | Outcome::Tcp { member: m } => Some(m),
            _ => None,
        }
    }

    /// Whether it was in flight at `t`: sent at or before `t` and not yet ended.
    pub fn in_flight_at(&self, t: Instant) -> bool {
        self.sent <= t && self.done > t
    }

    /// A short name for the outcome, to group by: `200 from a`, `503 no_primary`,
    /// `502 upstream_reset`, `greeted by b`, `failed at head: timeout after 10s`.
    pub fn kind(&self) -> String {
        match &self.outcome {
            Outcome::Http {
                status,
                member,
                role,
                error,
                ..
            } => match (member, error) {
                (Some(m), _) if *status == 200 => {
                    format!("200 from {m} ({})", role.as_deref().unwrap_or("no role"))
                }
                (_, Some(e)) => format!("{status} {e}"),
                _ => format!("{status}"),
            },
            Outcome::Tcp { member } => format!("greeted by {member}"),
            Outcome::Failed {
                stage,
                error,
                greeted_by: Some(m),
            } => format!("failed at {stage} after {m}'s greeting: {error}"),
            Outcome::Failed { stage, error, .. } => format!("failed at {stage}: {error}"),
        }
    }

    /// The body excerpt of an HTTP answer, or the error text.
    pub fn detail(&self) -> &str {
        match &self.outcome {
            Outcome::Http { body, .. } => body,
            Outcome::Tcp { member } => member,
            Outcome::Failed { error, .. } => error,
        }
    }
}

/// How many of `records` were in flight at `t`.
pub fn in_flight_at(records: &[Record], t: Instant) -> usize {
    records.iter().filter(|r| r.in_flight_at(t)).count()
}

/// The most requests in flight at once, and when that was first reached.
pub fn max_in_flight(records: &[Record]) -> (usize, Option<Instant>) {
    // +1 at each send, -1 at each end; ends sort before sends at the same instant.
    let mut events: Vec<(Instant, i8)> = records
        .iter()
        .flat_map(|r| [(r.sent, 1), (r.done, -1)])
        .collect();
    events.sort();
    let (mut now, mut max, mut at) = (0i64, 0i64, None);
    for (t, d) in events {
        now += i64::from(d);
        if now > max {
            (max, at) = (now, Some(t));
        }
    }
    (usize::try_from(max).unwrap_or(0), at)
}

/// Outcomes of one kind.
#[derive(Debug, Clone)]
pub struct KindStats {
    /// How many.
    pub count: usize,
    /// Send time of the first and last.
    pub first_sent: Instant,
    /// Send time of the last.
    pub last_sent: Instant,
    /// The longest one took (sent to done).
    pub slowest: Duration,
    /// One of them, as [`Record::detail`].
    pub example: String,
}

/// Counts over a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Requests sent.
    pub sent: usize,
    /// Answered by a member ([`Record::answered_by`]).
    pub ok: usize,
    /// Every outcome by [`Record::kind`].
    pub kinds: BTreeMap<String, KindStats>,
    /// The most requests in flight at once.
    pub max_in_flight: usize,
    /// The latest a request went out after its scheduled time (the generator's own lag).
    pub max_send_lag: Duration,
    /// When the first request was sent (times in [`Summary::describe`] are relative to an
    /// origin the caller gives).
    pub first_sent: Option<Instant>,
}

impl Summary {
    /// Counts `records`.
    pub fn of(records: &[Record]) -> Self {
        let mut kinds: BTreeMap<String, KindStats> = BTreeMap::new();
        for r in records {
            let took = r.done.saturating_duration_since(r.sent);
            kinds
                .entry(r.kind())
                .and_modify(|k| {
                    k.count += 1;
                    k.first_sent = k.first_sent.min(r.sent);
                    k.last_sent = k.last_sent.max(r.sent);
                    k.slowest = k.slowest.max(took);
                })
                .or_insert_with(|| KindStats {
                    count: 1,
                    first_sent: r.sent,
                    last_sent: r.sent,
                    slowest: took,
                    example: r.detail().chars().take(200).collect(),
                });
        }
        Self {
            sent: records.len(),
            ok: records.iter().filter(|r| r.answered_by().is_some()).count(),
            kinds,
            max_in_flight: max_in_flight(records).0,
            max_send_lag: records
                .iter()
                .map(|r| r.sent.saturating_duration_since(r.scheduled))
                .max()
                .unwrap_or_default(),
            first_sent: records.iter().map(|r| r.sent).min(),
        }
    }

    /// One line per kind: count, send times relative to `origin` (negative: before it), the
    /// slowest, and an example body or error.
    pub fn describe(&self, origin: Instant) -> String {
        let mut out = String::new();
        for (kind, k) in &self.kinds {
            out.push_str(&format!(
                "  {:>5} × {kind}: sent {} .. {}, slowest {:.3} s; e.g. {:?}\n",
                k.count,
                relative(k.first_sent, origin),
                relative(k.last_sent, origin),
                k.slowest.as_secs_f64(),
                k.example,
            ));
        }
        out
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent, {} answered by a member, max {} in flight, send lag ≤ {:?}",
            self.sent, self.ok, self.max_in_flight, self.max_send_lag
        )?;
        if let Some(origin) = self.first_sent {
            write!(f, "\n{}", self.describe(origin))?;
        }
        Ok(())
    }
}

/// `t - origin` in seconds, signed, as text (`+1.234 s`, `-0.500 s`).
pub fn relative(t: Instant, origin: Instant) -> String {
    if t >= origin {
        format!("+{:.3} s", (t - origin).as_secs_f64())
    } else {
        format!("-{:.3} s", (origin - t).as_secs_f64())
    }
}

/// Makes sure this process (and the children it starts later, such as `sluice`) may open at
/// least `n` files: hundreds of requests in flight hold a socket each in the client, in the
/// proxy and in the backend. Raises the soft limit with util-linux's `prlimit` when the hard
/// limit allows; panics with the way out when it cannot.
pub fn ensure_open_files(n: u64) {
    let read = || -> Option<(u64, u64)> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        let mut nums = line.split_whitespace().filter_map(|w| {
            w.parse::<u64>()
                .ok()
                .or((w == "unlimited").then_some(u64::MAX))
        });
        Some((nums.next()?, nums.next()?))
    };
    let Some((soft, hard)) = read() else {
        panic!("cannot read the open-files limit from /proc/self/limits");
    };
    if soft >= n {
        return;
    }
    if hard >= n {
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={n}:"))
            .status();
    }
    let (soft, hard) = read().unwrap_or((soft, hard));
    assert!(
        soft >= n,
        "this test needs {n} open files but the limit is {soft} (hard {hard}), and `prlimit` \
         could not raise it: run `ulimit -n {n}` first"
    );
}

const STAGES: [&str; 6] = ["connect", "send", "head", "body", "greeting", "echo"];
const CONNECT: usize = 0;
const SEND: usize = 1;
const HEAD: usize = 2;
const BODY: usize = 3;
const GREETING: usize = 4;
const ECHO: usize = 5;

async fn one(index: usize, scheduled: Instant, target: Target, timeout: Duration) -> Record {
    let sent = Instant::now();
    let stage = AtomicUsize::new(CONNECT);
    let answered = OnceLock::new();
    let greeting = OnceLock::new();
    let run = async {
        match &target {
            Target::HttpGet { addr, path, fields } => {
                http_get(*addr, path, fields, &stage, &answered).await
            }
            Target::TcpEcho { addr } => tcp_echo(*addr, index, &stage, &answered, &greeting).await,
            Target::H2Put {
                clients,
                url,
                body,
                pad,
            } => {
                let client = &clients[index % clients.len()];
                h2_put(client, url, body, *pad, &stage, &answered).await
            }
        }
    };
    let failed = |error| Outcome::Failed {
        stage: STAGES[stage.load(SeqCst)],
        error,
        greeted_by: greeting.get().cloned(),
    };
    let outcome = match tokio::time::timeout(timeout, run).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => failed(error),
        Err(_) => failed(format!("timeout after {timeout:?}")),
    };
    Record {
        index,
        scheduled,
        sent,
        answered: answered.get().copied(),
        done: Instant::now(),
        outcome,
    }
}

fn io(e: std::io::Error) -> String {
    e.to_string()
}

async fn http_get(
    addr: SocketAddr,
    path: &str,
    fields: &str,
    stage: &AtomicUsize,
    answered: &OnceLock<Instant>,
) -> Result<Outcome, String> {
    let mut s = TcpStream::connect(addr).await.map_err(io)?;
    let _ = s.set_nodelay(true);
    stage.store(SEND, SeqCst);
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{fields}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .map_err(io)?;
    stage.store(HEAD, SeqCst);
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "closed without an answer".to_owned()
            } else {
                format!(
                    "closed inside the head: {:?}",
                    String::from_utf8_lossy(&buf)
                )
            });
        }
        let _ = answered.set(Instant::now());
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
    };
    stage.store(BODY, SeqCst);
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {head:?}"))?;
    let field = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let length: Option<usize> = field("content-length").and_then(|v| v.parse().ok());
    let chunked = field("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let mut body = buf.split_off(head_end);
    loop {
        if length.is_some_and(|l| body.len() >= l) {
            break;
        }
        let n = s.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            if let Some(l) = length {
                return Err(format!(
                    "closed after {} of {l} body bytes (status {status})",
                    body.len()
                ));
            }
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if chunked {
        body = dechunk(&body).ok_or_else(|| format!("bad chunked body (status {status})"))?;
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let text = |k: &str| json.as_ref().and_then(|j| j[k].as_str()).map(str::to_owned);
    Ok(Outcome::Http {
        status,
        member: text("host"),
        role: text("role"),
        error: text("error"),
        body: String::from_utf8_lossy(&body).chars().take(200).collect(),
    })
}

/// `answered` is when the whole answer had come (the client hands over complete answers):
/// later than its first byte by the time a few KiB take on loopback.
async fn h2_put(
    client: &Client,
    url: &str,
    body: &Bytes,
    pad: usize,
    stage: &AtomicUsize,
    answered: &OnceLock<Instant>,
) -> Result<Outcome, String> {
    stage.store(SEND, SeqCst);
    let reply = client
        .request(http::Method::PUT, url, &[], body.clone())
        .await?;
    let _ = answered.set(Instant::now());
    stage.store(BODY, SeqCst);
    let json: Option<serde_json::Value> = serde_json::from_slice(&reply.body).ok();
    let text = |k: &str| json.as_ref().and_then(|j| j[k].as_str()).map(str::to_owned);
    let member = text("host");
    if member.is_some() {
        let received = json.as_ref().and_then(|j| j["received"].as_u64());
        let padded = text("pad").map(|p| p.len());
        if received != Some(body.len() as u64) || padded != Some(pad) {
            return Err(format!(
                "{} answered with {received:?} of {} body bytes received and {padded:?} of {pad} \
                 pad bytes",
                member.unwrap_or_default(),
                body.len()
            ));
        }
    }
    Ok(Outcome::Http {
        status: reply.status.as_u16(),
        member,
        role: text("role"),
        error: text("error"),
        body: String::from_utf8_lossy(&reply.body)
            .chars()
            .take(200)
            .collect(),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The data of a complete chunked body (trailers ignored).
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = find(b, b"\r\n")?;
        let size = std::str::from_utf8(&b[..line]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        b = &b[line + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

async fn tcp_echo(
    addr: SocketAddr,
    index: usize,
    stage: &AtomicUsize,
    answered: &OnceLock<Instant>,
    greeted: &OnceLock<String>,
) -> Result<Outcome, String> {
    let mut s = TcpStream::connect(addr).await.map_err(io)?;
    let _ = s.set_nodelay(true);
    stage.store(GREETING, SeqCst);
    let mut buf = Vec::new();
    let greeting = read_line(&mut s, &mut buf, answered).await?;
    let _ = greeted.set(greeting.clone());
    stage.store(ECHO, SeqCst);
    let line = format!("ping {index}\n");
    s.write_all(line.as_bytes()).await.map_err(io)?;
    let echo = read_line(&mut s, &mut buf, answered).await?;
    if echo != line.trim_end() {
        return Err(format!("echoed {echo:?}"));
    }
    Ok(Outcome::Tcp { member: greeting })
}

/// The next `\n`-terminated line (without it); bytes after it stay in `buf`.
async fn read_line(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    answered: &OnceLock<Instant>,
) -> Result<String, String> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(i) = buf.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
        }
        let n = s.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "closed".to_owned()
            } else {
                format!("closed inside a line: {:?}", String::from_utf8_lossy(buf))
            });
        }
        let _ = answered.set(Instant::now());
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").as_deref(),
            Some(&b"abcde"[..])
        );
        assert_eq!(dechunk(b"3\r\nab"), None);
    }

    #[test]
    fn counts_in_flight() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let rec = |sent, done| Record {
            index: 0,
            scheduled: ms(sent),
            sent: ms(sent),
            answered: None,
            done: ms(done),
            outcome: Outcome::Tcp { member: "a".into() },
        };
        let records = [rec(0, 10), rec(5, 20), rec(10, 30), rec(25, 26)];
        assert_eq!(in_flight_at(&records, ms(10)), 2);
        assert_eq!(in_flight_at(&records, ms(25)), 2);
        assert_eq!(max_in_flight(&records), (2, Some(ms(5))));
    }
}
