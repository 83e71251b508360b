//! gRPC through the proxy: Sluice's own errors reach gRPC calls as gRPC errors (trailers-only
//! responses), and a call's `grpc-timeout` bounds how long Sluice waits for its instance.
//! Calls are made with the h2 crate's client so the test sees the frames as sent.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use sluice_test_support::Backend;

/// A unary call to `authority` (on the proxy at `addr`) with `extra` fields; returns the
/// response head and whether it ended the stream (a trailers-only response).
async fn call(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> (http::response::Parts, bool) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = http::Request::post(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (n, v) in extra {
        request = request.header(*n, *v);
    }
    let (response, mut body) = send
        .ready()
        .await
        .unwrap()
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    // One empty message: the 5-byte frame header alone.
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let response = response.await.unwrap();
    let ended = response.body().is_end_stream();
    (response.into_parts().0, ended)
}

fn grpc_status(head: &http::response::Parts) -> (&str, &str) {
    let get = |n: &str| head.headers.get(n).map_or("", |v| v.to_str().unwrap());
    (get("grpc-status"), get("grpc-message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluices_own_errors_are_grpc_errors() {
    let gone = Backend::start_h2c("gone").addr();
    let cfg = format!(
        "{LISTENER}[[route]]\nhost = \"known\"\nservice = \"s\"\n[[route]]\nhost = \"closed\"\nservice = \"s\"\nallow = [\"10.9.9.9\"]\n\
         [[service]]\nname = \"s\"\nprotocol = \"h2c\"\n{}\n",
        instances(&[gone])
    );
    let (_proxy, addr) = start(&cfg).await;
    for (host, code, kind) in [
        ("known", "14", "connect_failed"),
        ("unknown", "12", "no_route"),
        ("closed", "7", "access_denied"),
    ] {
        let (head, ended) = call(addr, host, "/pkg.Svc/Call", &[]).await;
        assert_eq!(head.status, 200, "{host}: {head:?}");
        assert!(ended, "{host}: a trailers-only response");
        assert_eq!(head.headers["content-type"], "application/grpc");
        let (status, message) = grpc_status(&head);
        assert_eq!(status, code, "{host}: {head:?}");
        assert!(message.starts_with(kind), "{host}: {message}");
    }
}

/// The call's own deadline (`grpc-timeout`) ends the wait for a slow instance long before
/// the service's `total`, and the client is told DEADLINE_EXCEEDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_grpc_timeout_is_its_deadline() {
    let slow = Backend::start_h2c("slow");
    let cfg = format!(
        "{LISTENER}[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\nprotocol = \"h2c\"\n{}\n\
         [service.timeouts]\ntotal = \"30s\"\n",
        instances(&[slow.addr()])
    );
    let (_proxy, addr) = start(&cfg).await;
    let started = Instant::now();
    let (head, ended) = call(addr, "slow", "/delay/5000", &[("grpc-timeout", "300m")]).await;
    let took = started.elapsed();
    assert!(ended);
    let (status, message) = grpc_status(&head);
    assert_eq!(status, "4", "{head:?}");
    assert!(message.starts_with("deadline_exceeded"), "{message}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "answered after {took:?}"
    );
    // Without a grpc-timeout, and for a request that is not a gRPC call, the service's
    // deadline stands, and errors are Sluice's usual JSON.
    let client = sluice_test_support::Client::h2c();
    let r = client
        .request(
            http::Method::GET,
            &format!("http://{addr}/delay/100"),
            &[("grpc-timeout", "1m")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
