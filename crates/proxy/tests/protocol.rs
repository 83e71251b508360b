//! Protocol handling at the client edge: HTTP/2, WebSocket, oversized heads, slow clients,
//! keep-alive, streaming bodies, connection limits.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use sluice_test_support::{Backend, Client};
use tokio_tungstenite::tungstenite::Message;

fn config(backend: SocketAddr, listener_extra: &str, service_extra: &str) -> String {
    format!(
        "[access_log]\npath = \"off\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n{listener_extra}\n\
         [[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\n{service_extra}\n",
        instances(&[backend])
    )
}

/// Reads what the server sends until it closes the connection (or 5 s pass).
fn read_all(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_proxied_to_http1() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "", "")).await;
    let c = Client::h2c();
    for _ in 0..5 {
        let r = c.get(&format!("http://{addr}/h2")).await.unwrap();
        assert_eq!(r.status, 200);
        let j = r.json();
        assert_eq!(j["path"], "/h2");
        assert_eq!(
            j["headers"]["host"],
            addr.to_string(),
            ":authority becomes Host for HTTP/1.1"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_stops_reading_is_cut_off_at_the_send_timeout() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "send_timeout = \"300ms\"", "")).await;
    // A raw HTTP/2 client that opens every window as wide as it goes, asks for 50 MB and
    // then reads nothing: flow control lets Sluice send, the socket buffers fill.
    let mut s = TcpStream::connect(addr).unwrap();
    let out = sluice_test_support::h2c_get_with_widest_windows("/big/50000000");
    s.write_all(&out).unwrap();
    std::thread::sleep(Duration::from_millis(1500));

    // Sluice gave up on the connection: what it had sent arrives, then the end.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let ended = s.read_to_end(&mut got);
    // The end is EOF or a reset; a connection left open runs into the 5 s read timeout.
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "the connection was closed, not left open: {ended:?} after {:?}",
        t.elapsed()
    );
    assert!(
        got.len() < 50_000_000,
        "the response was cut off ({} bytes arrived)",
        got.len()
    );
    // Others are still served.
    let r = Client::h2c()
        .get(&format!("http://{addr}/ok"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "", "")).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::Text(format!("ping {i}").into()))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("ping {i}"));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_gets_431() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "max_header_bytes = 8192", "")).await;
    let mut s = TcpStream::connect(addr).unwrap();
    // Far more than the limit: the client is still sending when the answer comes, and the
    // proxy must read and discard the rest (lingering close) instead of resetting the
    // connection, or the client would never see the 431.
    let big = "a".repeat(100_000);
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n")
        .expect("the whole head is accepted");
    let reply = read_all(s);
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_gets_408_at_the_header_timeout() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "header_read_timeout = \"300ms\"", "")).await;
    let mut s = TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap(); // never finished
    let reply = read_all(s);
    let took = t.elapsed();
    assert!(
        reply.starts_with("HTTP/1.1 408 Request Timeout"),
        "{reply:?}"
    );
    assert!(reply.contains("request header timeout"), "{reply}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_close_quietly() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(
        b.addr(),
        "header_read_timeout = \"2s\"\nkeepalive_timeout = \"300ms\"",
        "",
    ))
    .await;
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let t = Instant::now();
    let reply = read_all(s);
    let took = t.elapsed();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(
        reply.matches("HTTP/1.1").count(),
        1,
        "no 408 after an idle keep-alive period: {reply}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "closed after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_silent_connections_are_closed_at_the_header_timeout() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(
        b.addr(),
        "header_read_timeout = \"300ms\"\nkeepalive_timeout = \"60s\"",
        "",
    ))
    .await;
    let t = Instant::now();
    let reply = read_all(TcpStream::connect(addr).unwrap());
    assert_eq!(reply, "", "nothing was asked, nothing is answered");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "closed after {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "", "")).await;
    let c = Client::http1();
    let r = c.get(&format!("http://{addr}/big/5000000")).await.unwrap();
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 5_000_000));
    // A pattern that shows a lost, repeated or reordered piece of the relay.
    let upload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = c
        .request(
            http::Method::POST,
            &format!("http://{addr}/echo"),
            &[],
            upload.clone(),
        )
        .await
        .unwrap();
    assert_eq!(r.body.len(), upload.len());
    assert!(r.body == upload, "the echoed body differs from the upload");
    // An idempotent PUT larger than the retry buffer is streamed too.
    let r = c
        .request(
            http::Method::PUT,
            &format!("http://{addr}/echo"),
            &[],
            upload,
        )
        .await
        .unwrap();
    assert_eq!(r.body.len(), 3_000_000);
}

/// A client that reads slowly makes the proxy's writes partial: every byte still arrives, in
/// order, whatever the read sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_a_large_body_whole() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "", "")).await;
    let upload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let expected = upload.clone();
    let received = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            upload.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&upload).unwrap();
        let mut reply = Vec::new();
        let mut piece = [0u8; 3001];
        loop {
            let n = s.read(&mut piece).unwrap();
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&piece[..n]);
            if reply.len() % 7 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        reply
    })
    .await
    .unwrap();
    let split = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&received[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let body = &received[split + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_vec()
    };
    assert_eq!(body.len(), expected.len());
    assert!(body == expected, "the body arrived changed");
}

/// The data of a complete chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("size line");
        let size_text = std::str::from_utf8(&raw[..line_end]).expect("size line text");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex size");
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upload_gets_408() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "request_body_timeout = \"300ms\"", "")).await;
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nfirst bytes")
        .unwrap();
    let t = Instant::now();
    let reply = read_all(s);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("client_body_timeout"), "{reply}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

/// `response_header` counts from the end of the request: an upload that keeps moving may take
/// longer than it (each pause under `request_body_timeout`), and is answered by the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_moving_upload_is_not_a_response_header_timeout() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(
        b.addr(),
        "request_body_timeout = \"2s\"",
        "timeouts = { response_header = \"500ms\" }",
    ))
    .await;
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let t = Instant::now();
    for byte in b"abcdef" {
        std::thread::sleep(Duration::from_millis(250));
        s.write_all(&[*byte]).unwrap();
    }
    let reply = read_all(s);
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("abcdef"), "{reply}");

    // Once the request is complete, the instance has `response_header` to answer.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        b"POST /delay/5000 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    s.write_all(b"ok").unwrap();
    let t = Instant::now();
    let reply = read_all(s);
    assert!(reply.starts_with("HTTP/1.1 504"), "{reply}");
    assert!(reply.contains("response_header_timeout"), "{reply}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

/// A small upload that stalls part-way is a 408 at `request_body_timeout`, not a 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_upload_stalled_part_way_gets_408() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(
        b.addr(),
        "request_body_timeout = \"1s\"",
        "timeouts = { total = \"1900ms\" }",
    ))
    .await;
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .unwrap();
    let t = Instant::now();
    let reply = read_all(s);
    // At the body timeout, not at twice it (the first stall used to re-arm the timer once),
    // and so before the total deadline.
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("client_body_timeout"), "{reply}");
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_response_body_is_cut_at_the_idle_timeout() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "", "timeouts = { idle = \"300ms\" }")).await;
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /stall-body/5000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let reply = read_all(s);
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "the head had already been sent: {reply}"
    );
    assert!(!reply.contains("late body"), "{reply}");
    assert!(
        t.elapsed() < Duration::from_millis(2000),
        "cut after {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_holds_extra_clients_in_the_backlog() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "max_connections = 1", "")).await;
    let mut first = TcpStream::connect(addr).unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 12];
    first.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    // The second connection is accepted by the kernel but not served while the first is open.
    let mut second = TcpStream::connect(addr).unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        second.read(&mut buf).is_err(),
        "second client served despite max_connections = 1"
    );
    drop(first);
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    second.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
}
