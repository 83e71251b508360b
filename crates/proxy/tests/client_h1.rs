//! The HTTP/1.x client edge, on the wire: pipelining, HTTP/1.0, chunked uploads,
//! `Expect: 100-continue`, malformed heads, `HEAD`, trailers, `Date`, `Connection: close`,
//! unread bodies, absolute-form targets, clients that leave, and draining at shutdown.
//! Clients are raw sockets (to see the exact bytes) and curl; instances are the test backend
//! or scripted sockets.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use sluice_test_support::{Backend, require_tool};

fn config(backend: SocketAddr, extra: &str) -> String {
    format!(
        "{LISTENER}\n[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\n{extra}\n",
        instances(&[backend])
    )
}

/// Connects and sends `bytes`; the connection is read through the returned reader.
fn send(addr: SocketAddr, bytes: &[u8]) -> BufReader<TcpStream> {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    BufReader::new(s)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// One response read off a connection: status line, fields (names lower-cased), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one response, framed as HTTP/1.1 says (`Content-Length`, chunked, or to the close).
/// `head_request`: the response has no body whatever its fields say.
fn read_answer(r: &mut BufReader<TcpStream>, head_request: bool) -> Answer {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 "), "status line {line:?}");
    let status = line[9..12].parse().unwrap();
    let mut fields = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').unwrap();
        fields.push((n.to_ascii_lowercase(), v.trim().to_owned()));
    }
    let mut answer = Answer {
        status,
        fields,
        body: Vec::new(),
    };
    if head_request || status == 204 || status == 304 || status < 200 {
        return answer;
    }
    if let Some(n) = answer.field("content-length") {
        answer.body = vec![0; n.parse().unwrap()];
        r.read_exact(&mut answer.body).unwrap();
    } else if answer.field("transfer-encoding") == Some("chunked") {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim_end(), 16).unwrap();
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    let (n, v) = l.split_once(':').unwrap();
                    answer.fields.push((
                        format!("trailer:{}", n.to_ascii_lowercase()),
                        v.trim().into(),
                    ));
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).unwrap();
            answer.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        r.read_to_end(&mut answer.body).unwrap();
    }
    answer
}

/// Whether the server closed the connection (a read sees the end within 2 s).
fn closed_by_server(r: &mut BufReader<TcpStream>) -> bool {
    r.get_ref()
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut rest = Vec::new();
    matches!(r.read_to_end(&mut rest), Ok(0))
}

/// An instance that answers every request on every connection with `reply`.
fn scripted(reply: &'static [u8]) -> SocketAddr {
    instance(
        move |mut r| {
            while read_request_head(&mut r) && r.get_mut().write_all(reply).is_ok() {}
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "")).await;
    let mut r = send(
        addr,
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let first = read_answer(&mut r, false);
    let second = read_answer(&mut r, false);
    let echo = read_answer(&mut r, false);
    let third = read_answer(&mut r, false);
    assert_eq!(first.json()["path"], "/first");
    assert_eq!(second.json()["path"], "/second");
    assert_eq!(echo.body, b"hello");
    assert_eq!(third.json()["path"], "/third");
    assert_eq!(third.field("connection"), Some("close"));
    assert!(closed_by_server(&mut r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_get_bodies_they_can_delimit() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "")).await;

    // A body of unknown length (the backend streams it chunked) cannot be chunked to an
    // HTTP/1.0 client: it ends with the connection.
    let mut r = send(
        addr,
        b"GET /stall-body/0 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    );
    let a = read_answer(&mut r, false);
    assert_eq!(a.status, 200);
    assert_eq!(a.field("transfer-encoding"), None);
    assert_eq!(a.field("connection"), Some("close"));
    assert_eq!(a.body, b"late body");

    // A known length keeps the connection when the client asked for keep-alive.
    let mut s = connect(addr);
    s.write_all(b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let a = read_answer(&mut r, false);
    assert_eq!(a.field("connection"), Some("keep-alive"));
    assert_eq!(a.json()["path"], "/one");
    // No Host from the client: HTTP/1.1 upstream gets the instance's address (RFC 9112 §3.2).
    assert_eq!(
        a.json()["headers"]["host"],
        b.addr().to_string(),
        "{:?}",
        a.json()
    );
    s.write_all(b"GET /two HTTP/1.0\r\n\r\n").unwrap();
    let a = read_answer(&mut r, false);
    assert_eq!(a.json()["path"], "/two");
    assert_eq!(a.field("connection"), Some("close"));
    assert!(
        closed_by_server(&mut r),
        "HTTP/1.0 without keep-alive closes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_reach_the_instance_whole() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "")).await;
    let mut s = connect(addr);
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: t\r\n\r\n\
          GET /after HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let a = read_answer(&mut r, false);
    assert_eq!(a.status, 200);
    assert_eq!(a.body, b"hello world");
    let next = read_answer(&mut r, false);
    assert_eq!(
        next.json()["path"],
        "/after",
        "the connection stays in step"
    );
}

/// Issue 18 (2): chunk lines end in CRLF and extensions follow their grammar; anything else
/// is a 400 and the connection closes (a proxy in front reading it differently would be out of
/// step with Sluice). Pipelined bytes after the refused body are never read as a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_chunked_uploads_are_refused() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "")).await;
    for body in [
        &b"5\nhello\n0\n\n"[..],
        b"5\r\nhello\n0\r\n\r\n",
        b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
        b"5;a\rb\r\nhello\r\n0\r\n\r\n",
        b"5 x\r\nhello\r\n0\r\n\r\n",
        b"10000000000000005\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
    ] {
        let mut request =
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(body);
        request.extend_from_slice(
            b"GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Request-Id: smuggled\r\n\r\n",
        );
        let mut r = send(addr, &request);
        let a = read_answer(&mut r, false);
        let shown = String::from_utf8_lossy(body);
        assert_eq!(a.status, 400, "{shown:?}");
        assert_eq!(a.json()["error"], "client_body_error", "{shown:?}");
        assert!(closed_by_server(&mut r), "{shown:?}");
    }
    assert!(
        !b.request_ids().iter().any(|id| id == "smuggled"),
        "bytes after a refused body were read as a request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_when_the_body_is_wanted() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "")).await;
    let mut s = connect(addr);
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"ping").unwrap();
    let a = read_answer(&mut BufReader::new(s), false);
    assert_eq!((a.status, a.body.as_slice()), (200, &b"ping"[..]));

    // curl sends the body only after the 100 (or after its own wait, 5 s here).
    let curl = require_tool("curl");
    let t = Instant::now();
    let out = Command::new(curl)
        .args([
            "-sS",
            "--expect100-timeout",
            "5",
            "-H",
            "Expect: 100-continue",
        ])
        .args(["--data-binary", "from curl", &format!("http://{addr}/echo")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from curl");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "curl waited for a 100 Continue: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_a_precise_status_and_the_connection_closes() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "")).await;
    let cases: &[(&str, u16, &str)] = &[
        ("GET / HTTP/1.1\r\n\r\n", 400, "bad_request"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4x\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "unsupported_transfer_coding",
        ),
        (
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            405,
            "method_not_allowed",
        ),
        (
            "GET / HTTP/3.0\r\nHost: a\r\n\r\n",
            505,
            "http_version_not_supported",
        ),
        ("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_request"),
        (
            "GET /<script> HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nBad Name: v\r\n\r\n",
            400,
            "bad_request",
        ),
        // RFC 9112 §5.2 obs-fold, §2.2 bare CR, RFC 9110 §5.5 control bytes in a value.
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n",
            400,
            "bad_request",
        ),
        ("GET /#x HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_request"),
        // RFC 9112 §3.2: a Host that is not host[:port].
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "bad_request"),
        (
            "GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n",
            400,
            "bad_request",
        ),
        // RFC 3986 §2: characters that must be percent-encoded in a target.
        ("GET /a|b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_request"),
        ("GET /{x} HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_request"),
        (
            "GET / HTTP/1.1\r\nHost: evil.com/x@y\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "GET / HTTP/1.1\r\nHost: <script>\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            400,
            "bad_request",
        ),
    ];
    for (request, status, error) in cases {
        let mut r = send(addr, request.as_bytes());
        let a = read_answer(&mut r, false);
        assert_eq!(a.status, *status, "{request:?}");
        assert_eq!(a.json()["error"], *error, "{request:?}");
        assert_eq!(a.field("connection"), Some("close"), "{request:?}");
        assert!(closed_by_server(&mut r), "{request:?}");
    }
    assert_eq!(b.hits(), 0, "nothing malformed reached the instance");
}

/// What the client's first read gets, for a request to an instance that writes its head and
/// its body apart.
async fn first_read_from(instance: SocketAddr) -> String {
    let (_p, addr) = start(&config(instance, "")).await;
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A head goes out with the first bytes of a body of stated length, in one write (nginx's
/// `postpone_output` holds it the same way), not alone a moment before them. A body of
/// unknown length may be a stream that starts late (server-sent events): its head goes at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_waits_for_the_first_bytes_of_a_body_of_stated_length_only() {
    for (parts, with_body) in [(STATED, true), (STATED_LARGE, true), (STREAMED, false)] {
        let instance = scripted_in_parts(parts, Duration::from_millis(500));
        let first = first_read_from(instance).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
        let (_, body) = first.split_once("\r\n\r\n").expect("a whole head");
        assert_eq!(
            !body.is_empty(),
            with_body,
            "body bytes in the first read: {first:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_responses_carry_no_body_and_keep_the_connection() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "")).await;
    let mut r = send(
        addr,
        b"HEAD /big/1000 HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let head = read_answer(&mut r, true);
    assert_eq!(head.status, 200);
    assert_eq!(head.field("content-length"), Some("1000"));
    let next = read_answer(&mut r, false);
    assert_eq!(next.json()["path"], "/after", "no body bytes came between");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_go_to_clients_that_accept_them_and_date_is_added() {
    let up = scripted(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
          3\r\nabc\r\n0\r\nx-checksum: 42\r\n\r\n",
    );
    let (_p, addr) = start(&config(up, "")).await;
    let mut r = send(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let with = read_answer(&mut r, false);
    assert_eq!(with.body, b"abc");
    assert_eq!(with.field("trailer:x-checksum"), Some("42"));
    assert!(
        with.field("date").is_some(),
        "Date added: the instance sent none"
    );
    assert_eq!(with.field("x-request-id").map(str::len), Some(32));
    let without = read_answer(&mut r, false);
    assert_eq!(without.body, b"abc");
    assert_eq!(without.field("trailer:x-checksum"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_and_unread_bodies_end_the_connection() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "")).await;
    let mut r = send(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        read_answer(&mut r, false).field("connection"),
        Some("close")
    );
    assert!(closed_by_server(&mut r));

    // A 404 for a POST whose body was never read: the rest of the body would be taken for the
    // next request, so the connection ends after the answer.
    let toml = format!(
        "{LISTENER}\n[[route]]\npath = \"/only\"\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\n",
        instances(&[b.addr()])
    );
    let (_p2, addr2) = start(&toml).await;
    let mut r = send(
        addr2,
        b"POST /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial",
    );
    let a = read_answer(&mut r, false);
    assert_eq!((a.status, a.field("connection")), (404, Some("close")));
    assert!(closed_by_server(&mut r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_targets_route_by_their_host() {
    let a = Backend::start("a");
    let other = Backend::start("other");
    let toml = format!(
        "{LISTENER}\n[[route]]\nhost = \"app.example\"\nservice = \"a\"\n\
         [[route]]\nservice = \"other\"\n\
         [[service]]\nname = \"a\"\n{}\n[[service]]\nname = \"other\"\n{}\n",
        instances(&[a.addr()]),
        instances(&[other.addr()])
    );
    let (_p, addr) = start(&toml).await;
    let answer = read_answer(
        &mut send(
            addr,
            b"GET http://app.example/x?y=1 HTTP/1.1\r\nHost: elsewhere\r\n\r\n",
        ),
        false,
    );
    let j = answer.json();
    assert_eq!(j["backend"], "a");
    assert_eq!(j["path"], "/x");
    assert_eq!(j["query"], "y=1");
    assert_eq!(j["headers"]["host"], "app.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_answer_is_logged_as_499() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let toml = format!(
        "[access_log]\npath = \"{}\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         [[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\n",
        log.display(),
        instances(&[b.addr()])
    );
    let (proxy, addr) = start(&toml).await;
    let mut s = connect(addr);
    s.write_all(b"GET /delay/2000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    let t = Instant::now();
    let line = loop {
        proxy.reopen_access_log();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break line.to_owned();
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no log line");
        std::thread::sleep(Duration::from_millis(50));
    };
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["status"], 499, "{line}");
    assert_eq!(j["completed"], false, "{line}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "logged when the client left, not when the instance answered: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight_and_closes_idle_connections_at_once() {
    let b = Backend::start("b");
    let (proxy, addr) = start(&config(b.addr(), "")).await;
    // An idle keep-alive connection, and one with a request in flight.
    let mut idle = connect(addr);
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut idle = BufReader::new(idle);
    assert_eq!(read_answer(&mut idle, false).status, 200);
    let mut busy = connect(addr);
    busy.write_all(b"GET /delay/700 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));

    let t = Instant::now();
    let shutdown = tokio::spawn(async move { proxy.shutdown(Duration::from_secs(10)).await });
    let idle_closed = tokio::task::spawn_blocking(move || {
        let closed = closed_by_server(&mut idle);
        (closed, Instant::now())
    });
    let answer = tokio::task::spawn_blocking(move || {
        let mut r = BufReader::new(busy);
        let a = read_answer(&mut r, false);
        (a, closed_by_server(&mut r))
    })
    .await
    .unwrap();
    let (idle_was_closed, idle_at) = idle_closed.await.unwrap();
    assert!(idle_was_closed, "the idle connection was closed");
    assert!(
        idle_at.duration_since(t) < Duration::from_millis(500),
        "idle connections close when draining starts, not at the grace period's end"
    );
    let (a, busy_closed) = answer;
    assert_eq!(a.status, 200, "the request in flight was answered");
    assert_eq!(a.field("connection"), Some("close"));
    assert!(busy_closed);
    shutdown.await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "shutdown waited for nothing but the request in flight: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_at_the_send_timeout() {
    let b = Backend::start("b");
    let toml = format!(
        "{LISTENER}send_timeout = \"300ms\"\n[[route]]\nservice = \"s\"\n\
         [[service]]\nname = \"s\"\n{}\n",
        instances(&[b.addr()])
    );
    let (_p, addr) = start(&toml).await;
    let mut s = connect(addr);
    s.write_all(b"GET /big/50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 1000];
    s.read_exact(&mut first).unwrap();
    // Stop reading: the socket buffers fill and Sluice's writes stall.
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let mut rest = Vec::new();
    let ended = s.read_to_end(&mut rest);
    let total = first.len() + rest.len();
    assert!(
        ended.is_ok() || t.elapsed() < Duration::from_secs(4),
        "the connection was closed, not left open: {ended:?} after {:?}",
        t.elapsed()
    );
    assert!(
        total < 50_000_000,
        "the response was cut off ({total} bytes arrived)"
    );
    // The instance and Sluice still serve others.
    let mut other = connect(addr);
    other
        .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut BufReader::new(other), false).status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unasked_protocol_switch_is_a_bad_upstream_response() {
    let up =
        scripted(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n");
    let (_p, addr) = start(&config(up, "")).await;
    let a = read_answer(&mut send(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), false);
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["error"], "bad_upstream_response");

    // A WebSocket request answered with a switch to another protocol, or to none named: the
    // tunnel would carry a protocol the route never vetted (RFC 9110 §7.8).
    let websocket = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    for reply in [
        &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"[..],
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket, h2c\r\nConnection: upgrade\r\n\r\n",
    ] {
        let (_p, addr) = start(&config(scripted(reply), "")).await;
        let a = read_answer(&mut send(addr, websocket), false);
        let shown = String::from_utf8_lossy(reply);
        assert_eq!(a.status, 502, "{shown}");
        assert_eq!(a.json()["error"], "bad_upstream_response", "{shown}");
    }
}

/// `accept_proxy_protocol`: the client a balancer in front names (v1 text, v2 binary, and
/// curl's own `--haproxy-protocol`) is the client instances are told of; a connection without
/// a valid header is closed before any byte of it is read as HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_protocol_header_names_the_client() {
    let b = Backend::start("b");
    let listener = LISTENER.replace(
        "bind = \"127.0.0.1:0\"\n",
        "bind = \"127.0.0.1:0\"\naccept_proxy_protocol = true\nheader_read_timeout = \"1s\"\n",
    );
    let (_p, addr) = start(&format!(
        "{listener}\n[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\n",
        instances(&[b.addr()])
    ))
    .await;
    let request = b"GET /pp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut v2 = sluice_codec::proxy_protocol::V2_SIGNATURE.to_vec();
    v2.extend([
        0x21, 0x11, 0, 12, 198, 51, 100, 9, 127, 0, 0, 1, 0x30, 0x39, 0, 80,
    ]);
    for (header, client) in [
        (
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n".to_vec(),
            "192.0.2.7",
        ),
        (v2, "198.51.100.9"),
        (b"PROXY UNKNOWN\r\n".to_vec(), "127.0.0.1"),
    ] {
        let a = read_answer(&mut send(addr, &[&header[..], request].concat()), false);
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["headers"]["x-forwarded-for"], client);
    }
    require_tool("curl");
    let out = Command::new("curl")
        .args(["-s", "--haproxy-protocol", &format!("http://{addr}/curl")])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["path"], "/curl");
    let hits = b.hits();
    // Closed with the client's bytes unread: an end of stream or a reset, never an answer.
    let refused = |bytes: &[u8]| {
        let mut r = send(addr, bytes);
        let mut rest = Vec::new();
        match r.read_to_end(&mut rest) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(n) => panic!("answered {n} bytes: {}", String::from_utf8_lossy(&rest)),
        }
    };
    for bad in [
        &request[..],
        b"PROXY TCP4 1.2.3.4\r\n",
        b"PROXY TCP4 300.1.1.1 1.1.1.1 1 1\r\n",
    ] {
        assert!(refused(bad), "{}", String::from_utf8_lossy(bad));
    }
    // A header that never completes: closed at header_read_timeout.
    let started = Instant::now();
    assert!(refused(b"PROXY TCP4 "));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        b.hits(),
        hits,
        "nothing without a valid header reached the instance"
    );
}
