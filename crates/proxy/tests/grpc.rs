//! gRPC through the proxy. With grpcio on both sides: every kind of call (unary, streaming each
//! way, bidirectional ping-pong) with its metadata and trailers, errors and deadlines as a gRPC
//! client sees them, HTTP/2 over TLS to the instance, instances stopping between waves of
//! calls, and `kind = "grpc"` health checks. With the h2 crate's client, to see the frames:
//! Sluice's own errors reach gRPC calls as gRPC errors (trailers-only responses), and a call's
//! `grpc-timeout` bounds how long Sluice waits for its instance.

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
    // One empty message: the 5-byte frame header alone. Sluice may have answered (and closed
    // the stream) already, which makes this send fail: the answer is what the test reads.
    let _ = body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true);
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

// With grpcio's own client and server (Debian's python3-grpcio: the C core most gRPC
// languages share) on both sides of the proxy.

use sluice_test_support::certs::{Leaf, TestCa};
use sluice_test_support::{GrpcCall, GrpcOutcome, GrpcServer, grpc_call, grpc_calls};

fn grpc_config(servers: &[SocketAddr], extra: &str) -> String {
    format!(
        "{LISTENER}[[route]]\nservice = \"g\"\n[[service]]\nname = \"g\"\nprotocol = \"h2c\"\n{}\n{extra}\n",
        instances(servers)
    )
}

/// Runs blocking calls (each a `python3` process) off the test's runtime.
async fn calls(target: SocketAddr, batch: Vec<GrpcCall>) -> Vec<GrpcOutcome> {
    tokio::task::spawn_blocking(move || grpc_calls(&target.to_string(), &batch))
        .await
        .unwrap()
}

async fn one(target: SocketAddr, call: GrpcCall) -> GrpcOutcome {
    tokio::task::spawn_blocking(move || grpc_call(&target.to_string(), &call))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_call_passes_through_with_its_metadata() {
    let server = GrpcServer::start("g1");
    let (_proxy, addr) = start(&grpc_config(&[server.addr], "")).await;
    let big = vec![7u8; 1024 * 1024];
    let batch = vec![
        GrpcCall::unary("hello"),
        GrpcCall::server_stream(5),
        GrpcCall::client_stream(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]),
        GrpcCall::bidi(vec![b"x".to_vec(), b"y".to_vec(), b"z".to_vec()]),
        GrpcCall::unary("fail:no such thing"),
        GrpcCall::unary(big.clone()),
    ];
    let out = calls(addr, batch).await;
    assert!(out[0].is_ok(), "{:?}", out[0]);
    assert_eq!(out[0].responses, [b"hello".to_vec()]);
    assert_eq!(out[0].initial("x-served-by"), Some("g1"), "{:?}", out[0]);
    assert_eq!(out[0].trailing("x-tag"), Some("g1"), "{:?}", out[0]);
    assert_eq!(out[1].texts(), ["g1:0", "g1:1", "g1:2", "g1:3", "g1:4"]);
    assert_eq!(out[2].responses, [b"abc".to_vec()], "{:?}", out[2]);
    assert_eq!(out[3].texts(), ["g1:x", "g1:y", "g1:z"], "{:?}", out[3]);
    assert_eq!(out[4].code, "INVALID_ARGUMENT", "{:?}", out[4]);
    assert_eq!(out[4].details, "no such thing");
    assert!(out[5].is_ok() && out[5].responses == [big], "1 MiB echo");
    // What the server received with a call: the client's metadata and Sluice's fields.
    let traced = one(
        addr,
        GrpcCall::unary("traced").with_metadata("x-trace", "t-1"),
    )
    .await;
    assert!(traced.is_ok(), "{traced:?}");
    let seen = server.last_call("/sluice.test.Echo/Unary").unwrap();
    assert_eq!(seen.get("x-trace"), Some("t-1"), "{seen:?}");
    assert_eq!(seen.get("x-forwarded-for"), Some("127.0.0.1"), "{seen:?}");
    assert!(seen.get("x-request-id").is_some(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_sees_unavailable_and_deadline_exceeded() {
    let server = GrpcServer::start("g1");
    let gone = GrpcServer::start("gone");
    let gone_addr = gone.addr;
    drop(gone);
    let (_proxy, addr) = start(&grpc_config(&[server.addr], "")).await;
    let started = Instant::now();
    let late = one(
        addr,
        GrpcCall::unary("sleep:3000").deadline(Duration::from_millis(500)),
    )
    .await;
    assert_eq!(late.code, "DEADLINE_EXCEEDED", "{late:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let (_proxy, addr) = start(&grpc_config(&[gone_addr], "")).await;
    let down = one(addr, GrpcCall::unary("hello")).await;
    assert_eq!(down.code, "UNAVAILABLE", "{down:?}");
    assert!(down.details.starts_with("connect_failed"), "{down:?}");
}

/// `protocol = "h2"`: HTTP/2 over TLS to the instance, agreed by ALPN, its certificate checked
/// against the configured name; a name the certificate does not hold is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_a_tls_instance_over_h2() {
    let ca = TestCa::new("grpc-ca");
    let leaf = ca.issue(&Leaf::server("grpc", &["grpc.test"]));
    let server = GrpcServer::start_tls("tls1", &leaf.cert, &leaf.key);
    let config = |name: &str| {
        format!(
            "{LISTENER}[[route]]\nservice = \"g\"\n[[service]]\nname = \"g\"\nprotocol = \"h2\"\n{}\n\
             [service.tls]\nca = \"{}\"\nserver_name = \"{name}\"\n",
            instances(&[server.addr]),
            ca.ca_path.display()
        )
    };
    let (_proxy, addr) = start(&config("grpc.test")).await;
    let out = calls(
        addr,
        vec![GrpcCall::unary("over tls"), GrpcCall::server_stream(3)],
    )
    .await;
    assert!(out[0].is_ok(), "{:?}", out[0]);
    assert_eq!(out[0].initial("x-served-by"), Some("tls1"));
    assert_eq!(out[1].texts(), ["tls1:0", "tls1:1", "tls1:2"]);
    let (_proxy, addr) = start(&config("other.test")).await;
    let refused = one(addr, GrpcCall::unary("over tls")).await;
    assert_eq!(refused.code, "UNAVAILABLE", "{refused:?}");
}

/// Many calls at once over one client connection, and an instance that stops between two
/// waves: the second wave is carried by the other instance, every call answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_of_calls_survive_an_instance_stopping_between_them() {
    let a = GrpcServer::start("a");
    let b = GrpcServer::start("b");
    let (_proxy, addr) = start(&grpc_config(&[a.addr, b.addr], "")).await;
    let wave = || {
        (0..100)
            .map(|i| GrpcCall::unary(format!("sleep:{}", 50 + i % 5)))
            .collect()
    };
    let first = calls(addr, wave()).await;
    assert!(
        first.iter().all(GrpcOutcome::is_ok),
        "{:?}",
        first.iter().find(|o| !o.is_ok())
    );
    let served: std::collections::BTreeSet<_> = first
        .iter()
        .filter_map(|o| o.initial("x-served-by"))
        .collect();
    assert_eq!(served.len(), 2, "{served:?}");
    drop(a);
    let second = calls(addr, wave()).await;
    assert!(
        second.iter().all(GrpcOutcome::is_ok),
        "{:?}",
        second.iter().find(|o| !o.is_ok())
    );
    assert!(second.iter().all(|o| o.initial("x-served-by") == Some("b")));
}

/// `kind = "grpc"` checks steer traffic: an instance whose health service says NOT_SERVING
/// gets no calls until it says SERVING again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_take_an_instance_out_and_back() {
    let a = GrpcServer::start("a");
    let b = GrpcServer::start("b");
    let health = "[service.health]\nkind = \"grpc\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1";
    let (_proxy, addr) = start(&grpc_config(&[a.addr, b.addr], health)).await;
    let served_by = |out: Vec<GrpcOutcome>| -> std::collections::BTreeSet<String> {
        out.iter()
            .filter_map(|o| o.initial("x-served-by").map(str::to_owned))
            .collect()
    };
    let wave = || (0..10).map(|_| GrpcCall::unary("hi")).collect::<Vec<_>>();
    sluice_test_support::eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let by = served_by(calls(addr, wave()).await);
            (by.len() == 2)
                .then_some(())
                .ok_or(format!("served by {by:?}"))
        },
    )
    .await;
    a.set_health("", false);
    sluice_test_support::eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let by = served_by(calls(addr, wave()).await);
            (by.iter().eq(["b"]))
                .then_some(())
                .ok_or(format!("served by {by:?}"))
        },
    )
    .await;
    a.set_health("", true);
    sluice_test_support::eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let by = served_by(calls(addr, wave()).await);
            (by.len() == 2)
                .then_some(())
                .ok_or(format!("served by {by:?}"))
        },
    )
    .await;
}
