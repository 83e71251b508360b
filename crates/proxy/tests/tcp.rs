//! TCP listeners: relaying, half-close, connect fallback, refusal, idle timeout, PROXY
//! protocol, least connections.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use sluice_test_support::{MirrorMember, MirrorRole, free_port};

fn tcp_config(members: &[SocketAddr], listener_extra: &str, service_extra: &str) -> String {
    format!(
        "[access_log]\npath = \"off\"\n[[listener]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nservice = \"db\"\n{listener_extra}\n\
         [[service]]\nname = \"db\"\n{}\n{service_extra}\n",
        instances(members)
    )
}

fn greeting(addr: SocketAddr) -> (String, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    (line.trim().to_owned(), r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_both_ways_and_passes_half_close() {
    let (a, b) = (
        MirrorMember::start("a", MirrorRole::Primary),
        MirrorMember::start("b", MirrorRole::Primary),
    );
    let (_p, addr) = start(&tcp_config(&[a.tcp(), b.tcp()], "", "")).await;
    let names: Vec<String> = (0..4).map(|_| greeting(addr).0).collect();
    assert_eq!(
        names.iter().filter(|n| *n == "a").count(),
        2,
        "round-robin: {names:?}"
    );

    // Half-close: the client finishes sending; the echo still comes back, then EOF.
    let (_, mut r) = greeting(addr);
    let payload = vec![b'z'; 200_000];
    r.get_mut().write_all(&payload).unwrap();
    r.get_mut().shutdown(Shutdown::Write).unwrap();
    let mut echoed = Vec::new();
    r.read_to_end(&mut echoed).unwrap();
    assert_eq!(
        echoed.len(),
        payload.len(),
        "every byte echoed after the client's half-close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_fall_back_and_nothing_to_connect_to_closes_at_once() {
    let good = MirrorMember::start("good", MirrorRole::Primary);
    let refused: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (_p, addr) = start(&tcp_config(&[refused, good.tcp()], "", "")).await;
    for _ in 0..6 {
        assert_eq!(greeting(addr).0, "good");
    }
    let (_p2, empty) = start(&tcp_config(&[], "", "")).await;
    let mut s = TcpStream::connect(empty).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 16];
    assert!(
        matches!(s.read(&mut buf), Ok(0) | Err(_)),
        "closed without a byte"
    );
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "at once: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let a = MirrorMember::start("a", MirrorRole::Primary);
    let (_p, addr) = start(&tcp_config(&[a.tcp()], "idle_timeout = \"200ms\"", "")).await;
    let (_, mut r) = greeting(addr);
    let t = Instant::now();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1500),
        "closed after {took:?}"
    );
}

/// An upstream that records what each connection sends until it has sent `hello` (or closes).
fn recorder() -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().take(2) {
            let mut s = s.unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            while !got.ends_with(b"hello") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send(got);
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_reach_the_instance() {
    for (version, check) in [("v1", 1u8), ("v2", 2u8)] {
        let (up, rx) = recorder();
        let (_p, addr) = start(&tcp_config(
            &[up],
            &format!("proxy_protocol = \"{version}\""),
            "",
        ))
        .await;
        let mut c = TcpStream::connect(addr).unwrap();
        let client_port = c.local_addr().unwrap().port();
        c.write_all(b"hello").unwrap();
        let got = rx.recv_timeout(Duration::from_secs(6)).unwrap();
        if check == 1 {
            let text = String::from_utf8_lossy(&got);
            assert_eq!(
                text,
                format!(
                    "PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {}\r\nhello",
                    addr.port()
                )
            );
        } else {
            assert_eq!(&got[..12], b"\r\n\r\n\0\r\nQUIT\n");
            assert_eq!(&got[12..16], &[0x21, 0x11, 0, 12]);
            assert_eq!(u16::from_be_bytes([got[24], got[25]]), client_port);
            assert_eq!(u16::from_be_bytes([got[26], got[27]]), addr.port());
            assert_eq!(&got[28..], b"hello");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_counts_open_connections() {
    let (a, b) = (
        MirrorMember::start("a", MirrorRole::Primary),
        MirrorMember::start("b", MirrorRole::Primary),
    );
    let (_p, addr) = start(&tcp_config(
        &[a.tcp(), b.tcp()],
        "",
        "balancer = \"least_request\"",
    ))
    .await;
    let (first, _held) = greeting(addr);
    for _ in 0..5 {
        let (name, mut r) = greeting(addr);
        assert_ne!(
            name, first,
            "the instance holding an open connection is not least loaded"
        );
        // Close this one fully before the next pick, so only the held connection counts.
        r.get_mut().shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
}
