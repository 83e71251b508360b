//! `[service.concurrency]` through the binary: a burst of clients against a slow service —
//! `max_in_flight` requests reach the instances, `max_queued` more wait and are served after
//! them, the rest get `503 overloaded` at once; a queued request gives up after
//! `queue_timeout`; metrics count both refusals. The process-wide `[overload]` watermarks:
//! past `max_connections` or `max_memory_mb` new requests get `503 overloaded` at once, near
//! them keep-alive is shed (HTTP/1.1 `connection: close`, HTTP/2 GOAWAY), and below them
//! everything is as before.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use sluice_test_support::{Backend, Mode, SluiceProcess, free_port, http_get, metric_value};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn start(backend: &Backend, concurrency: &str) -> (SluiceProcess, SocketAddr) {
    let (admin, web) = (addr(), addr());
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [[route]]\nservice = \"slow\"\n\
         [[service]]\nname = \"slow\"\ninstances = [\"{}\"]\nconcurrency = {{ {concurrency} }}\n",
        backend.addr()
    );
    (SluiceProcess::start(BIN.as_ref(), &config, admin), web)
}

/// One answer: status, body and how long it took.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    took: Duration,
}

/// `GET /` on a connection of its own.
fn get_once(web: SocketAddr) -> Answer {
    let started = Instant::now();
    let mut s = TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    Answer {
        status,
        body,
        took: started.elapsed(),
    }
}

/// `count` clients sending one request each at the same moment.
fn burst(web: SocketAddr, count: usize) -> Vec<Answer> {
    let go = Arc::new(Barrier::new(count));
    let clients: Vec<_> = (0..count)
        .map(|_| {
            let go = Arc::clone(&go);
            std::thread::spawn(move || {
                go.wait();
                get_once(web)
            })
        })
        .collect();
    clients.into_iter().map(|c| c.join().unwrap()).collect()
}

fn overloaded_count(admin: SocketAddr, reason: &str) -> u64 {
    let (_, text) = http_get(admin, "/metrics").unwrap();
    text.lines()
        .find(|l| {
            l.starts_with("sluice_service_overloaded_total{")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn past_the_places_and_the_queue_clients_get_503_at_once_and_the_admitted_finish() {
    let backend = Backend::start("slow");
    backend.set_mode(Mode::Delay(500));
    let (sluice, web) = start(
        &backend,
        "max_in_flight = 5, max_queued = 5, queue_timeout = \"5s\"",
    );
    let answers = burst(web, 40);

    let served: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!(served.len(), 10, "5 in flight + 5 queued: {answers:?}");
    assert_eq!(refused.len(), 30, "{answers:?}");
    for a in &refused {
        assert!(
            a.took < Duration::from_millis(300),
            "a refusal waits for nothing: {a:?}"
        );
        let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(body["error"], "overloaded", "{body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("its queue is full"),
            "{body}"
        );
    }
    // The first five were answered after one instance delay, the queued five after two.
    let mut took: Vec<Duration> = served.iter().map(|a| a.took).collect();
    took.sort();
    assert!(took[4] < Duration::from_millis(950), "{took:?}");
    assert!(took[5] >= Duration::from_millis(950), "{took:?}");
    assert!(took[9] < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        backend.hits(),
        10,
        "refused requests never reach the instance"
    );
    assert_eq!(overloaded_count(sluice.admin, "queue_full"), 30);
}

#[test]
fn a_queued_request_gives_up_after_queue_timeout() {
    let backend = Backend::start("slow");
    backend.set_mode(Mode::Delay(2000));
    let (sluice, web) = start(
        &backend,
        "max_in_flight = 1, max_queued = 10, queue_timeout = \"200ms\"",
    );
    let answers = burst(web, 3);
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 503, 503], "{answers:?}");
    for a in answers.iter().filter(|a| a.status == 503) {
        assert!(
            (Duration::from_millis(150)..Duration::from_millis(1500)).contains(&a.took),
            "{a:?}"
        );
        assert!(a.body.contains("no place came free"), "{a:?}");
    }
    assert_eq!(overloaded_count(sluice.admin, "queue_timeout"), 2);
    // The place is free again once the admitted request is done.
    backend.set_mode(Mode::Normal);
    assert_eq!(get_once(web).status, 200);
}

/// A started Sluice with `[overload] {overload}` in front of `backend`.
fn start_with_watermarks(backend: &Backend, overload: &str) -> (SluiceProcess, SocketAddr) {
    let (admin, web) = (addr(), addr());
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n[overload]\n{overload}\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [[route]]\nservice = \"s\"\n\
         [[service]]\nname = \"s\"\ninstances = [\"{}\"]\n",
        backend.addr()
    );
    (SluiceProcess::start(BIN.as_ref(), &config, admin), web)
}

/// Status, whether the server said `connection: close`, and the body of one `GET /` sent on
/// a connection of its own that asks for keep-alive.
fn get_keep_alive(web: SocketAddr) -> (u16, bool, String) {
    let mut s = TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the body promised by Content-Length has come, or the server closed.
    loop {
        let n = s.read(&mut buf).unwrap();
        text.extend_from_slice(&buf[..n]);
        let t = String::from_utf8_lossy(&text).into_owned();
        if n == 0 || response_complete(&t) {
            let (head, body) = t.split_once("\r\n\r\n").unwrap();
            let head = head.to_ascii_lowercase();
            let status = head[9..12].parse().unwrap();
            return (
                status,
                head.contains("\r\nconnection: close"),
                body.to_owned(),
            );
        }
    }
}

fn response_complete(text: &str) -> bool {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|n| n.trim().parse::<usize>())
        })
        .and_then(Result::ok);
    length.is_some_and(|n| body.len() >= n)
}

#[test]
fn past_max_connections_new_requests_get_503_and_near_it_keep_alive_is_shed() {
    let backend = Backend::start("b");
    let (sluice, web) = start_with_watermarks(&backend, "max_connections = 10");
    let (status, closed, _) = get_keep_alive(web);
    assert_eq!((status, closed), (200, false), "well below the watermark");

    // Nine idle connections: with the request's own, ten — at the watermark (90 % and more).
    let mut idle = idle_connections(web, 9);
    let (status, closed, _) = get_keep_alive(web);
    assert_eq!(
        (status, closed),
        (200, true),
        "keep-alive is shed near the watermark"
    );

    // Two more: eleven with the request's — past it.
    idle.extend(idle_connections(web, 2));
    let (status, closed, body) = get_keep_alive(web);
    assert_eq!((status, closed), (503, true), "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "overloaded", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("past its max_connections of 10"),
        "{body}"
    );
    assert_eq!(connection_refusals(sluice.admin), Some(1.0));

    // The idle clients leave: back to normal.
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    let (status, closed, _) = get_keep_alive(web);
    assert_eq!((status, closed), (200, false));
    assert_eq!(
        backend.hits(),
        3,
        "the refused request never reached the instance"
    );
}

#[test]
fn past_max_memory_new_requests_get_503_until_a_reload_raises_it() {
    let backend = Backend::start("b");
    // Sluice's own resident memory is well past 16 MiB.
    let (sluice, web) = start_with_watermarks(&backend, "max_memory_mb = 16");
    std::thread::sleep(Duration::from_millis(600)); // two samples
    let (status, closed, body) = get_keep_alive(web);
    assert_eq!((status, closed), (503, true), "{body}");
    assert!(body.contains("past its max_memory_mb of 16"), "{body}");
    assert_eq!(
        metric_value(sluice.admin, "sluice_overload_level"),
        Some(2.0)
    );
    let resident = metric_value(sluice.admin, "sluice_process_resident_bytes").unwrap();
    assert!(resident > 16.0 * 1048576.0, "{resident}");

    let raised = std::fs::read_to_string(sluice.config_path())
        .unwrap()
        .replace("max_memory_mb = 16", "max_memory_mb = 100000");
    std::fs::write(sluice.config_path(), raised).unwrap();
    let (status, text) =
        sluice_test_support::http_request(sluice.admin, "POST", "/api/reload").unwrap();
    assert_eq!(status, 200, "{text}");
    let (status, closed, _) = get_keep_alive(web);
    assert_eq!((status, closed), (200, false));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        metric_value(sluice.admin, "sluice_overload_level"),
        Some(0.0)
    );
    assert!(
        sluice.stderr().contains("overload level changed"),
        "{}",
        sluice.stderr()
    );
}

/// `count` connections to `to` that send nothing, accepted (and counted) by the time this
/// returns.
fn idle_connections(to: SocketAddr, count: usize) -> Vec<TcpStream> {
    let idle = (0..count)
        .map(|_| TcpStream::connect(to).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    idle
}

/// Requests and TCP connections refused past the connection watermark.
fn connection_refusals(admin: SocketAddr) -> Option<f64> {
    metric_value(
        admin,
        "sluice_overload_refused_total{watermark=\"connections\"}",
    )
}

/// `nghttp -v` (HTTP/2 with prior knowledge) fetching `/` once: its frame log.
fn nghttp(web: SocketAddr) -> String {
    let out = std::process::Command::new(sluice_test_support::require_tool("nghttp"))
        .args(["-nv", "-t", "10", &format!("http://{web}/")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn http2_connections_get_a_goaway_near_the_watermark_and_503_past_it() {
    let backend = Backend::start("b");
    let (_sluice, web) = start_with_watermarks(&backend, "max_connections = 4");
    let log = nghttp(web);
    assert!(
        log.contains(":status: 200") && !log.contains("recv GOAWAY"),
        "{log}"
    );

    // Three idle connections: with nghttp's own, four — at the watermark.
    let mut idle = idle_connections(web, 3);
    let log = nghttp(web);
    assert!(log.contains(":status: 200"), "the stream is served:\n{log}");
    assert!(
        log.contains("recv GOAWAY"),
        "and the connection told to go:\n{log}"
    );

    // One more: five with nghttp's — past it.
    idle.extend(idle_connections(web, 1));
    let log = nghttp(web);
    assert!(log.contains(":status: 503"), "{log}");
    drop(idle);
}

#[test]
fn past_max_connections_a_tcp_listener_closes_new_connections_at_once() {
    let backend = Backend::start("b");
    let (admin, web, tcp) = (addr(), addr(), addr());
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n[overload]\nmax_connections = 2\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [[listener]]\nname = \"raw\"\nbind = \"{tcp}\"\nprotocol = \"tcp\"\nservice = \"s\"\n\
         [[route]]\nlistener = \"web\"\nservice = \"s\"\n\
         [[service]]\nname = \"s\"\ninstances = [\"{}\"]\n",
        backend.addr()
    );
    let sluice = SluiceProcess::start(BIN.as_ref(), &config, admin);
    // An HTTP request relayed byte for byte by the TCP listener: the answer's first bytes.
    let relayed = || {
        let mut s = TcpStream::connect(tcp).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(relayed().starts_with("HTTP/1.1 200"), "below the watermark");
    // Two idle connections on the HTTP listener: a third, on the TCP one, is past it.
    let idle = idle_connections(web, 2);
    assert_eq!(relayed(), "", "closed at once, nothing relayed");
    assert_eq!(connection_refusals(sluice.admin), Some(1.0));
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    assert!(relayed().starts_with("HTTP/1.1 200"), "below it again");
}
