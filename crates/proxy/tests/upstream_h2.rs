//! HTTP/2 to instances (`protocol = "h2c"`), against hyper's HTTP/2 server on loopback: both
//! client protocols reach the instance as HTTP/2, bodies of every size arrive whole both ways,
//! a request body and its response flow at the same time, many requests share a few
//! connections, and an instance that goes away is failed over like an HTTP/1.1 one.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Method;
use sluice_test_support::{Backend, Client};

fn config(backends: &[SocketAddr], service_extra: &str) -> String {
    format!(
        "{LISTENER}[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\nprotocol = \"h2c\"\n{}\n{service_extra}\n",
        instances(backends)
    )
}

/// Bytes that differ at every offset of a 251-byte cycle, so a lost, repeated or reordered
/// piece shows.
fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_client_protocols_reach_the_instance_over_http2() {
    let backend = Backend::start_h2c("h2-a");
    let (proxy, addr) = start(&config(&[backend.addr()], "")).await;
    for client in [Client::http1(), Client::h2c()] {
        let r = client
            .request(
                Method::GET,
                &format!("http://{addr}/hello?x=1"),
                &[("x-custom", "kept"), ("connection", "x-custom")],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = r.json();
        assert_eq!(seen["backend"], "h2-a");
        assert_eq!(seen["version"], "h2");
        assert_eq!(seen["path"], "/hello");
        assert_eq!(seen["query"], "x=1");
        assert_eq!(seen["authority"], addr.to_string(), "{seen}");
        let headers = &seen["headers"];
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{seen}");
        assert!(headers["x-request-id"].is_string(), "{seen}");
        assert!(headers.get("connection").is_none(), "{seen}");
        assert!(headers.get("host").is_none(), "{seen}");
    }
    // The HTTP/1.1 client's `Connection: x-custom` named a hop-by-hop field.
    let r = Client::http1()
        .request(
            Method::GET,
            &format!("http://{addr}/"),
            &[("x-custom", "dropped"), ("connection", "x-custom")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert!(
        r.json()["headers"].get("x-custom").is_none(),
        "{}",
        r.text()
    );
    let views = proxy.services();
    let instance = &views[0].instances[0];
    assert_eq!(instance.http2_connections, 1, "{instance:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_every_size_arrive_whole_both_ways() {
    let backend = Backend::start_h2c("h2-a");
    let (_proxy, addr) = start(&config(&[backend.addr()], "")).await;
    for client in [Client::http1(), Client::h2c()] {
        for len in [0, 1, 1024, 16 * 1024, 128 * 1024, 3 * 1024 * 1024] {
            let body = patterned(len);
            let r = client
                .request(
                    Method::POST,
                    &format!("http://{addr}/echo"),
                    &[],
                    body.clone(),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            assert!(r.body == body, "echo of {len} bytes differs");
            let r = client
                .get(&format!("http://{addr}/big/{len}"))
                .await
                .unwrap();
            assert_eq!(r.body.len(), len);
        }
    }
}

/// An HTTP/2 client's upload and the instance's answer flow at the same time: each piece comes
/// back through the proxy before the next is sent (as a gRPC bidirectional stream needs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_and_its_response_flow_at_once() {
    let backend = Backend::start_h2c("h2-a");
    let (_proxy, addr) = start(&config(&[backend.addr()], "")).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = http::Request::post(format!("http://{addr}/stream-echo"))
        .body(())
        .unwrap();
    let (response, mut upload) = send
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap();
    upload
        .send_data(Bytes::from_static(b"ping-0"), false)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("the head comes while the upload is open")
        .unwrap();
    let mut body = response.into_body();
    for i in 0..5 {
        let got = tokio::time::timeout(Duration::from_secs(5), body.data())
            .await
            .expect("each piece is echoed before the next is sent")
            .unwrap()
            .unwrap();
        body.flow_control().release_capacity(got.len()).unwrap();
        assert_eq!(got, format!("ping-{i}").as_bytes());
        let last = i == 4;
        let next = if last {
            Bytes::new()
        } else {
            Bytes::from(format!("ping-{}", i + 1))
        };
        upload.send_data(next, last).unwrap();
    }
    // The answer ends with the upload (maybe with an empty last DATA frame), cleanly.
    let mut rest = Vec::new();
    while let Some(data) = body.data().await {
        rest.extend_from_slice(&data.unwrap());
    }
    assert!(rest.is_empty(), "{rest:?}");
}

/// Requests in flight share the instance's connections: with 200 at once, a handful of
/// connections carry them all, none is refused, and none waits for another's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_share_a_few_connections() {
    let backend = Backend::start_h2c("h2-a");
    let cfg = config(
        &[backend.addr()],
        "[service.pool]\nhttp2_max_connections = 2",
    );
    let (proxy, addr) = start(&cfg).await;
    let client = Client::http1();
    let started = Instant::now();
    let calls = (0..200).map(|_| {
        let client = client.clone();
        let url = format!("http://{addr}/delay/300");
        tokio::spawn(async move { client.get(&url).await.map(|r| r.status) })
    });
    for call in futures_util::future::join_all(calls).await {
        assert_eq!(call.unwrap().unwrap(), 200);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "200 requests of 300 ms each took {elapsed:?}: they were not multiplexed"
    );
    let open = proxy.services()[0].instances[0].http2_connections;
    assert!((1..=2).contains(&open), "{open} HTTP/2 connections open");
    assert_eq!(backend.hits(), 200);
}

/// An instance that stops is failed over, and one that comes back on the same address gets a
/// new connection (the old one, closed by the instance, is not used again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_is_failed_over_and_a_restarted_one_reconnected() {
    let a = Backend::start_h2c("h2-a");
    let b = Backend::start_h2c("h2-b");
    let a_addr = a.addr();
    let (_proxy, addr) = start(&config(&[a_addr, b.addr()], "")).await;
    let client = Client::h2c();
    let seen = tally(&client, &format!("http://{addr}/"), 4).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    a.stop();
    let seen = tally(&client, &format!("http://{addr}/"), 6).await;
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["h2-b"], "{seen:?}");
    drop(b);
    let back = Backend::start_h2c_on("h2-a2", a_addr);
    let url = format!("http://{addr}/");
    sluice_test_support::eventually(
        Duration::from_secs(15),
        Duration::from_millis(50),
        || async {
            let r = client.get(&url).await?;
            if r.status == 200 && r.backend() == "h2-a2" {
                Ok(())
            } else {
                Err(format!("{} from {}", r.status, r.backend()))
            }
        },
    )
    .await;
    assert!(back.hits() >= 1);
}

/// No instance answers: HTTP/1.1 and plain HTTP/2 requests get Sluice's JSON error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_refuses_gets_the_usual_error() {
    let gone = {
        let b = Backend::start_h2c("gone");
        b.addr()
    };
    let (_proxy, addr) = start(&config(&[gone], "")).await;
    for client in [Client::http1(), Client::h2c()] {
        let r = client.get(&format!("http://{addr}/")).await.unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["error"], "connect_failed", "{}", r.text());
    }
}

/// An HTTP/1.1-only instance behind `protocol = "h2c"`: the handshake fails, and the client
/// is told so rather than left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_instance_behind_h2c_is_a_clear_error() {
    let backend = Backend::start("h1-only");
    let (_proxy, addr) = start(&config(&[backend.addr()], "")).await;
    let r = Client::http1()
        .get(&format!("http://{addr}/"))
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.json()["detail"].as_str().unwrap().contains("HTTP/2"),
        "{}",
        r.text()
    );
}

/// An instance that stops answering without closing anything (frozen; here a port whose
/// connections are never accepted): requests on its connection time out as usual, and the
/// connection itself is closed once a PING goes unanswered, so later requests do not queue
/// on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_a_frozen_instance_is_closed_after_an_unanswered_ping() {
    let frozen = sluice_test_support::Blackhole::start();
    let cfg = config(
        &[frozen.addr()],
        "[service.timeouts]\nresponse_header = \"300ms\"\n[service.retries]\nattempts = 0\n\
         [service.pool]\nidle_timeout = \"120s\"",
    );
    let (proxy, addr) = start(&cfg).await;
    let r = Client::http1()
        .get(&format!("http://{addr}/"))
        .await
        .unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(proxy.services()[0].instances[0].http2_connections, 1);
    // PINGs go every 10 s; the one that is still unanswered at the next tick closes it.
    sluice_test_support::eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            match proxy.services()[0].instances[0].http2_connections {
                0 => Ok(()),
                n => Err(format!("{n} connections still open")),
            }
        },
    )
    .await;
}

/// What a scripted HTTP/2 instance does with the `n`th stream it is sent.
#[derive(Clone, Copy)]
enum H2Act {
    Refuse,
    HugeHead,
    Answer,
}

/// An HTTP/2 instance made with the h2 crate's server, acting as `script(n)` says for the
/// `n`th stream (0-based, over all its connections).
async fn scripted_h2(script: fn(usize) -> H2Act) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let streams = std::sync::Arc::clone(&streams);
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(tcp).await.unwrap();
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    let n = streams.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut head = http::Response::builder().status(200);
                    match script(n) {
                        H2Act::Refuse => {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        H2Act::HugeHead => head = head.header("x-big", "b".repeat(100 * 1024)),
                        H2Act::Answer => head = head.header("x-stream", n.to_string()),
                    }
                    let _ = respond.send_response(head.body(()).unwrap(), true);
                }
            });
        }
    });
    addr
}

/// A stream the instance refuses was not processed: a request that can be sent again is, even
/// to the same instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_sent_again() {
    let instance = scripted_h2(|n| if n == 0 { H2Act::Refuse } else { H2Act::Answer }).await;
    let (_proxy, addr) = start(&config(&[instance], "")).await;
    let r = Client::http1()
        .get(&format!("http://{addr}/"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-stream"], "1");
}

/// A response head larger than Sluice accepts fails the attempt with a 502; it is not taken
/// for a refusal (the instance processed the request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_response_head_is_a_bad_gateway() {
    let instance = scripted_h2(|_| H2Act::HugeHead).await;
    let (_proxy, addr) = start(&config(&[instance], "[service.retries]\nattempts = 0")).await;
    let r = Client::http1()
        .request(Method::POST, &format!("http://{addr}/"), &[], "body")
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
}

/// Uploads of many streams sharing one connection to the instance, whose frames go out
/// together (held writes): each body reaches the instance, and comes back, whole and its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_sharing_a_connection_each_arrive_whole() {
    let backend = Backend::start_h2c("h2-a");
    let cfg = config(
        &[backend.addr()],
        "[service.pool]\nhttp2_max_connections = 1",
    );
    let (_proxy, addr) = start(&cfg).await;
    let client = Client::h2c();
    let sizes = [1, 300, 1024, 5000, 16 * 1024 + 3, 70_000, 200_000];
    let calls = (0..120).map(|i| {
        let client = client.clone();
        let url = format!("http://{addr}/echo");
        // Bytes no other request sends: the request's number, then a counter.
        let body: Vec<u8> = (0..sizes[i % sizes.len()])
            .map(|n| (i * 7 + n) as u8)
            .collect();
        tokio::spawn(async move {
            let r = client
                .request(Method::POST, &url, &[], body.clone())
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            assert!(
                r.body == body,
                "request {i}: its {} bytes came back changed",
                body.len()
            );
        })
    });
    for call in futures_util::future::join_all(calls).await {
        call.unwrap();
    }
}
