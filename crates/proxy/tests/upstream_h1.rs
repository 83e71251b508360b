//! The upstream half of HTTP/1.1 against instances that answer byte by byte what each test
//! scripts: response framings (chunked with trailers, read to the close, interim responses,
//! HTTP/1.0), malformed responses, connections the instance closes (the keep-alive race), and
//! answers that arrive before the request body is complete.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// One request as the scripted instance read it.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
    /// Index of the connection it came on (0 = first accepted).
    conn: usize,
}

/// What the instance does with a request.
enum Act {
    /// Write these bytes and keep reading requests on the connection.
    Reply(Vec<u8>),
    /// Write these bytes, then close the connection.
    ReplyClose(Vec<u8>),
    /// Close without answering.
    Close,
    /// Answer without reading the body, then close.
    ReplyUnread(Vec<u8>),
    /// Send an unasked `100 Continue` before reading the body, then answer with the body's
    /// length.
    ContinueThenCount,
}

type Script = dyn Fn(&Seen, usize) -> Act + Send + Sync;

/// An instance on 127.0.0.1:0 that runs `script(request, index_of_request)` for each request.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    conns: Arc<AtomicUsize>,
}

impl Scripted {
    fn start(script: impl Fn(&Seen, usize) -> Act + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let script: Arc<Script> = Arc::new(script);
        let (seen2, conns2) = (Arc::clone(&seen), Arc::clone(&conns));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let conn = conns2.fetch_add(1, Ordering::SeqCst);
                let (seen, script) = (Arc::clone(&seen2), Arc::clone(&script));
                std::thread::spawn(move || serve(stream, conn, &seen, &*script));
            }
        });
        Self { addr, seen, conns }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

fn serve(stream: TcpStream, conn: usize, seen: &Mutex<Vec<Seen>>, script: &Script) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let lower = head.to_ascii_lowercase();
        let request = Seen {
            head: head.clone(),
            body: Vec::new(),
            conn,
        };
        let index = seen.lock().unwrap().len();
        // Decide before reading the body, so an instance can answer an upload early.
        let act = script(&request, index);
        if let Act::ReplyUnread(bytes) = &act {
            seen.lock().unwrap().push(request);
            let _ = writer.write_all(bytes);
            let _ = writer.shutdown(Shutdown::Write);
            // Keep the socket open for reading a moment, as servers that reject an upload do.
            std::thread::sleep(Duration::from_millis(300));
            return;
        }
        if matches!(act, Act::ContinueThenCount) {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        }
        let mut body = Vec::new();
        if let Some(len) = header_value(&lower, "content-length") {
            body.resize(len.parse().unwrap(), 0);
            reader.read_exact(&mut body).unwrap();
        } else if header_value(&lower, "transfer-encoding").is_some_and(|v| v == "chunked") {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                reader.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        let body_len = body.len();
        seen.lock().unwrap().push(Seen { body, ..request });
        match act {
            Act::Reply(bytes) => {
                if writer.write_all(&bytes).is_err() {
                    return;
                }
            }
            Act::ReplyClose(bytes) => {
                let _ = writer.write_all(&bytes);
                return;
            }
            Act::ContinueThenCount => {
                if writer.write_all(&ok(&body_len.to_string())).is_err() {
                    return;
                }
            }
            Act::Close | Act::ReplyUnread(_) => return,
        }
    }
}

fn header_value<'a>(lower_head: &'a str, name: &str) -> Option<&'a str> {
    lower_head
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

async fn proxy_for(instance: &Scripted, service_extra: &str) -> (sluice_proxy::Proxy, SocketAddr) {
    start(&format!(
        "{LISTENER}[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\n{service_extra}\n",
        instances(&[instance.addr])
    ))
    .await
}

/// Sends raw request bytes on a new connection and reads the reply until the proxy closes it
/// (requests here carry `Connection: close`).
fn exchange_raw(proxy: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn get(proxy: SocketAddr, path: &str) -> String {
    exchange_raw(
        proxy,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The body of a reply the proxy sent with `Content-Length` or chunked framing.
fn body_of(reply: &str) -> String {
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_are_decoded_and_the_connection_reused() {
    let instance = Scripted::start(|_, _| {
        Act::Reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-digest: abc\r\n\r\n"
                .to_vec(),
        )
    });
    let (_p, addr) = proxy_for(&instance, "").await;
    for _ in 0..3 {
        let reply = get(addr, "/c");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert_eq!(body_of(&reply), "hello, world", "{reply}");
    }
    assert_eq!(instance.seen().len(), 3);
    assert_eq!(
        instance.connections(),
        1,
        "a chunked body read to its end leaves the connection reusable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_delimited_by_the_close_is_complete_and_the_connection_not_reused() {
    let instance = Scripted::start(|_, i| {
        Act::ReplyClose(format!("HTTP/1.1 200 OK\r\n\r\nuntil close {i}").into_bytes())
    });
    let (_p, addr) = proxy_for(&instance, "").await;
    assert_eq!(body_of(&get(addr, "/a")), "until close 0");
    assert_eq!(body_of(&get(addr, "/b")), "until close 1");
    assert_eq!(instance.connections(), 2);
}

/// An instance that sends more than its `Content-Length` (a desync attempt: the surplus looks
/// like the next response) never has the surplus read as an answer to another request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_beyond_a_responses_length_never_answer_the_next_request() {
    let instance = Scripted::start(|seen, _| {
        if seen.head.starts_with("GET /smuggle") {
            Act::Reply(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
                  HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
                    .to_vec(),
            )
        } else {
            Act::Reply(ok("fine"))
        }
    });
    let (_p, addr) = proxy_for(&instance, "").await;
    assert_eq!(body_of(&get(addr, "/smuggle")), "ok");
    for _ in 0..3 {
        assert_eq!(body_of(&get(addr, "/next")), "fine");
    }
    let seen = instance.seen();
    assert_eq!(seen.len(), 4, "every request reached the instance");
    assert_ne!(
        seen[0].conn, seen[1].conn,
        "the connection holding unread bytes was pooled and reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_skipped() {
    let instance = Scripted::start(|_, _| {
        let mut bytes = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n".to_vec();
        bytes.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        bytes.extend_from_slice(&ok("final"));
        Act::Reply(bytes)
    });
    let (_p, addr) = proxy_for(&instance, "").await;
    let reply = get(addr, "/");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(body_of(&reply), "final");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_instances_without_keep_alive_get_a_connection_per_request() {
    let instance = Scripted::start(|_, _| {
        Act::Reply(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold".to_vec())
    });
    let (_p, addr) = proxy_for(&instance, "").await;
    assert_eq!(body_of(&get(addr, "/")), "old");
    assert_eq!(body_of(&get(addr, "/")), "old");
    assert_eq!(instance.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_without_a_body_by_status_or_method_leave_the_connection_reusable() {
    let instance = Scripted::start(|seen, _| {
        if seen.head.starts_with("HEAD") {
            // A HEAD answer announces the length of a body it does not send.
            Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec())
        } else {
            Act::Reply(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".to_vec())
        }
    });
    let (_p, addr) = proxy_for(&instance, "").await;
    let head = exchange_raw(
        addr,
        b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 1000"),
        "{head}"
    );
    let not_modified = get(addr, "/");
    assert!(not_modified.starts_with("HTTP/1.1 304"), "{not_modified}");
    let head = exchange_raw(
        addr,
        b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(instance.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_responses_get_502_bad_response() {
    let instance = Scripted::start(|seen, _| {
        if seen.head.starts_with("GET /conflict") {
            Act::Reply(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            )
        } else if seen.head.starts_with("GET /huge") {
            let mut bytes = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..80 {
                bytes.extend_from_slice(
                    format!("x-filler-{i}: {}\r\n", "y".repeat(1000)).as_bytes(),
                );
            }
            bytes.extend_from_slice(b"\r\n");
            Act::Reply(bytes)
        } else {
            Act::Reply(b"HTTP/1.1 2OO OK\r\n\r\n".to_vec())
        }
    });
    // No retries: a malformed answer is the instance's fault, and there is no other instance.
    let (_p, addr) = proxy_for(&instance, "retries = { attempts = 0 }").await;
    for path in ["/conflict", "/huge", "/garbage"] {
        let reply = get(addr, path);
        assert!(reply.starts_with("HTTP/1.1 502"), "{path}: {reply}");
        assert!(
            reply.contains("\"bad_upstream_response\""),
            "{path}: {reply}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_body_aborts_the_client_response() {
    let instance = Scripted::start(|_, _| {
        Act::ReplyClose(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..".to_vec())
    });
    let (_p, addr) = proxy_for(&instance, "").await;
    let reply = get(addr, "/");
    // The head may or may not have been flushed when the body failed; either way the client
    // must see the connection end before the announced 100 bytes.
    if let Some((head, body)) = reply.split_once("\r\n\r\n") {
        assert!(head.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(body.len() < 100, "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_instance_closed_is_replaced_without_errors() {
    // Every connection answers one request with keep-alive, then the instance closes it: the
    // pooled connection is dead by the next request.
    let instance = Scripted::start(|_, i| Act::ReplyClose(ok(&format!("r{i}"))));
    let (_p, addr) = proxy_for(&instance, "").await;
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(body_of(&get(addr, "/")), format!("r{i}"));
    }
    assert_eq!(instance.connections(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_closed_under_a_request_is_retried_only_when_idempotent() {
    // The second request on each connection is met by a close: the keep-alive race, where the
    // instance closes an idle connection just as a request is sent on it.
    let closer = Scripted::start({
        let counts = Arc::new(Mutex::new(std::collections::HashMap::<usize, usize>::new()));
        move |seen, _| {
            let mut counts = counts.lock().unwrap();
            let n = counts.entry(seen.conn).or_insert(0);
            *n += 1;
            if *n == 1 {
                Act::Reply(ok("first"))
            } else {
                Act::Close
            }
        }
    });
    let (_p, addr) = proxy_for(&closer, "retries = { attempts = 0 }").await;
    assert_eq!(body_of(&get(addr, "/")), "first");
    // GET: the request never got an answer on a reused connection; sent again on a new one.
    assert_eq!(body_of(&get(addr, "/")), "first");
    assert_eq!(closer.connections(), 2);
    // POST: it may have been processed, so it is not sent twice.
    let reply = exchange_raw(
        addr,
        b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    );
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
    let posts = closer
        .seen()
        .iter()
        .filter(|s| s.head.starts_with("POST"))
        .count();
    assert_eq!(posts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_upload_ends_reaches_the_client() {
    let instance = Scripted::start(|_, _| {
        Act::ReplyUnread(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n"
                .to_vec(),
        )
    });
    let (_p, addr) = proxy_for(&instance, "").await;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    // Keep uploading in the background until the proxy stops reading.
    let mut writer = s.try_clone().unwrap();
    let upload = std::thread::spawn(move || {
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..(50_000_000 / chunk.len()) {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let reply = String::from_utf8_lossy(&out);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.ends_with("too big\n"), "{reply}");
    drop(s);
    upload.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_are_sent_chunked() {
    let instance = Scripted::start(|_, _| Act::Reply(ok("got it")));
    let (_p, addr) = proxy_for(&instance, "").await;
    let reply = exchange_raw(
        addr,
        b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = instance.seen();
    assert_eq!(String::from_utf8_lossy(&seen[0].body), "hello world");
    let head = seen[0].head.to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unasked_100_continue_does_not_stop_the_upload() {
    let instance = Scripted::start(|_, _| Act::ContinueThenCount);
    let (_p, addr) = proxy_for(&instance, "").await;
    let c = sluice_test_support::Client::http1();
    let upload = vec![b'u'; 2_000_000];
    let r = c
        .request(
            http::Method::POST,
            &format!("http://{addr}/up"),
            &[],
            upload,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "2000000");
}

/// Issue 18 (5): responses whose framing two parsers could read differently are a 502, and
/// the connection that carried them is closed, never pooled for another client's request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguously_framed_responses_are_502_and_their_connection_is_closed() {
    let replies: [&[u8]; 9] = [
        // Codings besides chunked: the client would get the coded bytes as content.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n6\r\nGZDATA\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nGZDATA",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a\x00b\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    for reply in replies {
        let instance = Scripted::start(move |seen, _| {
            if seen.head.starts_with("GET /bad") {
                Act::Reply(reply.to_vec())
            } else {
                Act::Reply(ok("fine"))
            }
        });
        let (_p, addr) = proxy_for(&instance, "retries = { attempts = 0 }").await;
        let shown = String::from_utf8_lossy(reply);
        let answer = get(addr, "/bad");
        assert!(answer.starts_with("HTTP/1.1 502"), "{shown}: {answer}");
        assert!(
            answer.contains("\"bad_upstream_response\""),
            "{shown}: {answer}"
        );
        assert_eq!(body_of(&get(addr, "/next")), "fine", "{shown}");
        let seen = instance.seen();
        assert_eq!(seen.len(), 2, "{shown}");
        assert_ne!(
            seen[0].conn, seen[1].conn,
            "{shown}: the next request went on the connection that carried the bad response"
        );
    }
}

/// A bare LF later in a chunked body cannot become a 502 (the head has gone): the client's
/// response is cut short, and the connection is not reused either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_line_broken_mid_body_ends_both_connections() {
    let instance = Scripted::start(|seen, _| {
        if seen.head.starts_with("GET /bad") {
            Act::Reply(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\nworld\r\n0\r\n\r\n"
                    .to_vec(),
            )
        } else {
            Act::Reply(ok("fine"))
        }
    });
    let (_p, addr) = proxy_for(&instance, "retries = { attempts = 0 }").await;
    let answer = get(addr, "/bad");
    assert!(
        !answer.ends_with("0\r\n\r\n"),
        "the client must not see a complete chunked body: {answer}"
    );
    assert_eq!(body_of(&get(addr, "/next")), "fine");
    let seen = instance.seen();
    assert_ne!(seen[0].conn, seen[1].conn);
}

/// RFC 9110 §8.6: a repeated identical `Content-Length` goes on as one field with one value,
/// both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_content_lengths_are_forwarded_once() {
    let instance = Scripted::start(|_, _| {
        Act::Reply(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\nContent-Length: 4\r\n\r\nbody".to_vec(),
        )
    });
    let (_p, addr) = proxy_for(&instance, "").await;
    let reply = exchange_raw(
        addr,
        b"POST /u HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\nhello",
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let head = reply.split_once("\r\n\r\n").unwrap().0.to_ascii_lowercase();
    assert_eq!(head.matches("content-length").count(), 1, "{reply}");
    assert!(head.contains("content-length: 4\r\n"), "{reply}");
    let seen = &instance.seen()[0];
    let up = seen.head.to_ascii_lowercase();
    assert_eq!(up.matches("content-length").count(), 1, "{}", seen.head);
    assert!(up.contains("content-length: 5\r\n"), "{}", seen.head);
    assert_eq!(seen.body, b"hello");
}

/// An HTTP/2 client gets the instance's fields (a value that is not UTF-8 byte for byte) and
/// none of its HTTP/1.1 connection's, which HTTP/2 forbids (RFC 9113 §8.2.2), including the
/// ones its `Connection` field names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_gets_the_fields_without_the_instances_connection_fields() {
    let instance = Scripted::start(|_, _| {
        Act::Reply(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\n\
              Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Hop: 1\r\n\
              X-Kept: yes\r\nCache-Control: max-age=60\r\nX-Latin: caf\xe9\r\n\r\nok"
                .to_vec(),
        )
    });
    let (_p, addr) = proxy_for(&instance, "").await;
    for _ in 0..2 {
        let reply = sluice_test_support::Client::h2c()
            .get(&format!("http://{addr}/x"))
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.text(), "ok");
        for gone in ["connection", "keep-alive", "proxy-connection", "x-hop"] {
            assert!(!reply.headers.contains_key(gone), "{gone}: {reply:?}");
        }
        assert_eq!(reply.headers["x-kept"], "yes", "{reply:?}");
        assert_eq!(reply.headers["cache-control"], "max-age=60", "{reply:?}");
        // A value that is not UTF-8 passes byte for byte.
        assert_eq!(reply.headers["x-latin"].as_bytes(), b"caf\xe9", "{reply:?}");
        assert!(reply.headers.contains_key("date"), "{reply:?}");
    }
}

/// Issue 18 (1): an `Upgrade` the route does not allow never reaches the instance, so an
/// instance that would switch cannot open a tunnel past the route's access rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_other_than_the_routes_are_removed_and_cannot_tunnel_past_acls() {
    // An instance that switches to whatever it is asked for, and answers 200 otherwise.
    let instance = Scripted::start(|seen, _| {
        let lower = seen.head.to_ascii_lowercase();
        match header_value(&lower, "upgrade") {
            Some(p) => Act::Reply(
                format!("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {p}\r\n\r\n")
                    .into_bytes(),
            ),
            None => Act::Reply(ok("plain")),
        }
    });
    let (_p, addr) = start(&format!(
        "{LISTENER}[[route]]\npath = \"/admin/\"\nservice = \"s\"\nallow = [\"10.9.9.9\"]\n\
         [[route]]\npath = \"/\"\nservice = \"s\"\n\
         [[route]]\npath = \"/foo/\"\nservice = \"s\"\nupgrades = [\"foo\"]\n\
         [[service]]\nname = \"s\"\n{}\n",
        instances(&[instance.addr])
    ))
    .await;
    for (upgrade, settings) in [
        ("h2c", "HTTP2-Settings: AAMAAABkAAQAAP__\r\n"),
        ("foo", ""),
        ("websocket, foo", ""),
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {upgrade}\r\n{settings}\r\n"
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{upgrade}: {status}");
        // Whatever the client sends next is a request of its own, checked by the routes.
        let mut rest = String::new();
        while rest != "\r\n" {
            rest.clear();
            r.read_line(&mut rest).unwrap();
        }
        let mut body = [0u8; 5];
        r.read_exact(&mut body).unwrap();
        r.get_mut()
            .write_all(b"GET /admin/secret HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut after = String::new();
        let _ = r.read_to_string(&mut after);
        assert!(after.starts_with("HTTP/1.1 403"), "{upgrade}: {after}");
    }
    let seen = instance.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        let lower = s.head.to_ascii_lowercase();
        assert!(!lower.contains("upgrade"), "{}", s.head);
        assert!(!lower.contains("http2-settings"), "{}", s.head);
        assert!(!lower.contains("/admin/"), "{}", s.head);
    }
    // A route that lists the protocol lets it through.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /foo/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n")
        .unwrap();
    let mut status = String::new();
    BufReader::new(s).read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let last = instance.seen().pop().unwrap().head.to_ascii_lowercase();
    assert!(last.contains("upgrade: foo"), "{last}");
}

/// A route's access rules apply to every spelling of its path: encoded unreserved characters,
/// doubled slashes and dot segments are brought to one form before routing, and the instance
/// receives that form (so it cannot resolve the path differently than the rules did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_hold_for_every_spelling_of_a_path() {
    let instance = Scripted::start(|_, _| Act::Reply(ok("open")));
    let (_p, addr) = start(&format!(
        "{LISTENER}[[route]]\npath = \"/admin/\"\nservice = \"s\"\nallow = [\"10.9.9.9\"]\n\
         [[route]]\npath = \"/\"\nservice = \"s\"\n\
         [[service]]\nname = \"s\"\n{}\n",
        instances(&[instance.addr])
    ))
    .await;
    for spelling in [
        "/admin/secret",
        "/%61dmin/secret",
        "/%61%64%6d%69%6e/secret",
        "//admin/secret",
        "/./admin/secret",
        "/x/../admin/secret",
        "/x/%2e%2e/admin/secret",
        "/../admin/secret",
    ] {
        let reply = get(addr, spelling);
        assert!(reply.starts_with("HTTP/1.1 403"), "{spelling}: {reply}");
    }
    assert!(instance.seen().is_empty(), "{:?}", instance.seen());
    // Other paths are forwarded in their canonical form; an encoded slash stays data.
    for (spelling, forwarded) in [
        ("/x/./y//z?q=/./", "/x/y/z?q=/./"),
        ("/a/%7euser/%2f", "/a/~user/%2F"),
    ] {
        assert_eq!(body_of(&get(addr, spelling)), "open", "{spelling}");
        let head = instance.seen().pop().unwrap().head;
        assert!(
            head.starts_with(&format!("GET {forwarded} HTTP/1.1\r\n")),
            "{spelling}: {head}"
        );
    }
    let reply = get(addr, "/a%zz");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
}

/// A burst beyond `max_idle_per_instance` keeps its connections a while: the next burst reuses
/// them rather than opening as many again (connects by the thousand after every burst fill an
/// instance's accept queue). Left unused past the linger (here `idle_timeout`), they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bursts_connections_are_reused_by_the_next_burst_then_let_go() {
    let instance = Scripted::start(|_, _| {
        // Every request of a burst is at the instance at once.
        std::thread::sleep(Duration::from_millis(300));
        Act::Reply(ok("slow"))
    });
    let pool = "[service.pool]\nmax_idle_per_instance = 2\nidle_timeout = \"1s\"";
    let (_p, addr) = proxy_for(&instance, pool).await;
    let burst = || {
        let clients: Vec<_> = (0..10)
            .map(|_| std::thread::spawn(move || get(addr, "/")))
            .collect();
        for client in clients {
            assert_eq!(body_of(&client.join().unwrap()), "slow");
        }
    };
    burst();
    assert_eq!(
        instance.connections(),
        10,
        "one connection per request in flight"
    );
    burst();
    assert_eq!(
        instance.connections(),
        10,
        "the second burst reuses the first's connections, beyond the idle bound of 2"
    );
    std::thread::sleep(Duration::from_millis(1500));
    burst();
    assert_eq!(
        instance.connections(),
        20,
        "connections unused past idle_timeout are not reused"
    );
}

/// A request whose connect is stuck (its SYN dropped by a full accept queue, sent again only a
/// second later) takes a connection that comes back to the pool meanwhile, rather than
/// waiting out the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_takes_a_connection_that_comes_back_while_its_connect_is_stuck() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let instance = listener.local_addr().unwrap();
    let (accepted_tx, accepted) = tokio::sync::oneshot::channel();
    // Accepts one connection and no other: the first answer takes 500 ms, later ones none.
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = accepted_tx.send(());
        let mut tcp = tokio::io::BufReader::new(tcp);
        for body in ["first", "again"] {
            let mut line = String::new();
            while line != "\r\n" {
                line.clear();
                if tcp.read_line(&mut line).await.unwrap() == 0 {
                    return;
                }
            }
            if body == "first" {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{body}");
            tcp.get_mut().write_all(answer.as_bytes()).await.unwrap();
        }
        std::future::pending::<()>().await;
    });
    let (_p, addr) = start(&format!(
        "{LISTENER}[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\ninstances = [\"{instance}\"]\n\
         retries = {{ attempts = 0 }}\n"
    ))
    .await;
    let first = tokio::task::spawn_blocking(move || get(addr, "/first"));
    accepted.await.unwrap();
    // Fill the accept queue (backlog 1 holds 2): the next SYN to the instance is dropped.
    let fillers: Vec<_> = (0..10)
        .map_while(|_| TcpStream::connect_timeout(&instance, Duration::from_millis(200)).ok())
        .collect();
    assert!(
        fillers.len() < 10,
        "the instance's accept queue never filled"
    );
    let second = tokio::task::spawn_blocking(move || get(addr, "/second"))
        .await
        .unwrap();
    assert_eq!(body_of(&second), "again", "{second}");
    assert_eq!(body_of(&first.await.unwrap()), "first");
}
