//! Failure semantics: precise statuses with JSON bodies within the timeouts, retries that hide
//! dead instances, passive ejection and return.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use sluice_test_support::{Backend, Blackhole, Client, Mode, eventually, free_port};

fn svc(addrs: &[SocketAddr], extra: &str) -> String {
    format!(
        "{LISTENER}\n[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\n{extra}\n",
        instances(addrs)
    )
}

fn refused() -> SocketAddr {
    format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("loopback address")
}

#[tokio::test]
async fn connect_refused_is_a_fast_json_502() {
    let (_p, addr) = start(&svc(&[refused()], "")).await;
    let t = Instant::now();
    let r = Client::http1()
        .get(&format!("http://{addr}/x"))
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "took {:?}",
        t.elapsed()
    );
    let j = r.json();
    assert_eq!(j["error"], "connect_failed");
    assert_eq!(j["service"], "s");
    assert!(j["detail"].as_str().unwrap().contains("refused"), "{j}");
    assert_eq!(j["request_id"], r.headers["x-request-id"].to_str().unwrap());
}

#[tokio::test]
async fn empty_service_is_a_json_503() {
    let (_p, addr) = start(&svc(&[], "")).await;
    let r = Client::http1()
        .get(&format!("http://{addr}/"))
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_healthy_instance");
}

#[tokio::test]
async fn silent_instance_is_a_504_at_the_response_header_timeout() {
    let hole = Blackhole::start();
    let (_p, addr) = start(&svc(
        &[hole.addr()],
        "timeouts = { response_header = \"300ms\" }\nretries = { attempts = 0 }",
    ))
    .await;
    let t = Instant::now();
    let r = Client::http1()
        .get(&format!("http://{addr}/"))
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "response_header_timeout");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(800),
        "took {took:?}"
    );
}

#[tokio::test]
async fn unreachable_instance_is_a_504_at_the_connect_timeout() {
    let hole = Blackhole::start().saturate();
    let (_p, addr) = start(&svc(&[hole.addr()], "timeouts = { connect = \"250ms\" }")).await;
    let t = Instant::now();
    let r = Client::http1()
        .get(&format!("http://{addr}/"))
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"], "connect_timeout");
    assert!(took < Duration::from_millis(900), "took {took:?}");
}

/// Requests that wait for a connect slot (`max_connecting`) spend their own connect timeout
/// waiting: behind a frozen TLS instance they all end at that timeout, not one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_a_connect_slot_end_at_their_connect_timeout() {
    let frozen = Blackhole::start();
    let (_p, addr) = start(&svc(
        &[frozen.addr()],
        "timeouts = { connect = \"300ms\" }\nretries = { attempts = 0 }\n\
         [service.pool]\nmax_connecting = 1\n[service.tls]\ninsecure_skip_verify = true",
    ))
    .await;
    let t = Instant::now();
    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { Client::http1().get(&format!("http://{addr}/")).await }))
        .collect();
    let mut waited = 0;
    for request in requests {
        let r = request.await.unwrap().unwrap();
        assert_eq!(r.status, 504, "{}", r.text());
        assert_eq!(r.json()["error"], "connect_timeout");
        let detail = r.json()["detail"].as_str().unwrap_or_default().to_owned();
        waited += usize::from(detail.contains("no connection free within 300ms"));
    }
    let took = t.elapsed();
    assert!(waited >= 1, "no request waited for the one connect slot");
    assert!(
        took < Duration::from_millis(1200),
        "five waits of 300ms took {took:?}: they ran one after another"
    );
}

#[tokio::test]
async fn total_deadline_bounds_retries() {
    let (h1, h2) = (Blackhole::start(), Blackhole::start());
    let (_p, addr) = start(&svc(
        &[h1.addr(), h2.addr()],
        "timeouts = { response_header = \"400ms\", total = \"600ms\" }",
    ))
    .await;
    let t = Instant::now();
    let r = Client::http1()
        .get(&format!("http://{addr}/"))
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.status, 504);
    assert!(
        took < Duration::from_millis(1000),
        "two 400 ms attempts are cut at 600 ms: {took:?}"
    );
}

#[tokio::test]
async fn retries_on_connect_failure_hide_a_dead_instance() {
    let b = Backend::start("alive");
    let (_p, addr) = start(&svc(&[refused(), b.addr(), refused()], "")).await;
    let c = Client::http1();
    for i in 0..100 {
        let method = if i % 2 == 0 {
            http::Method::GET
        } else {
            http::Method::POST
        };
        let r = c
            .request(method, &format!("http://{addr}/"), &[], "payload")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
}

#[tokio::test]
async fn idempotent_requests_retry_on_503_and_posts_do_not() {
    let (bad, good) = (Backend::start("bad"), Backend::start("good"));
    bad.set_mode(Mode::Status(503));
    let (_p, addr) = start(&svc(
        &[bad.addr(), good.addr()],
        "outlier = { consecutive_failures = 0 }\nretries = { budget_min_per_sec = 1000 }",
    ))
    .await;
    let c = Client::http1();
    for _ in 0..10 {
        let r = c
            .request(http::Method::GET, &format!("http://{addr}/"), &[], "")
            .await
            .unwrap();
        assert_eq!((r.status.as_u16(), r.backend()), (200, "good".into()));
        let r = c
            .request(
                http::Method::PUT,
                &format!("http://{addr}/"),
                &[],
                "small body",
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status.as_u16(), r.json()["body_len"].as_u64()),
            (200, Some(10)),
            "PUT replayed with its body"
        );
    }
    let mut saw_503 = false;
    for _ in 0..10 {
        let r = c
            .request(http::Method::POST, &format!("http://{addr}/"), &[], "x")
            .await
            .unwrap();
        saw_503 |= r.status == 503 && r.json()["forced"] == 503;
    }
    assert!(
        saw_503,
        "a POST answered 503 by the instance is passed through, not retried"
    );
}

#[tokio::test]
async fn retry_budget_limits_retries() {
    let (bad1, bad2) = (Backend::start("bad1"), Backend::start("bad2"));
    bad1.set_mode(Mode::Status(503));
    bad2.set_mode(Mode::Status(503));
    let (_p, addr) = start(&svc(
        &[bad1.addr(), bad2.addr()],
        "outlier = { consecutive_failures = 0 }\nretries = { attempts = 1, budget_ratio = 0.0, budget_min_per_sec = 3 }",
    ))
    .await;
    let c = Client::http1();
    for _ in 0..20 {
        assert_eq!(c.get(&format!("http://{addr}/")).await.unwrap().status, 503);
    }
    // 20 first attempts, and within this second at most 3 retries.
    let total = bad1.hits() + bad2.hits();
    assert!(
        (20..=26).contains(&total),
        "budget allows ≤3 retries per second plus one per new second: {total}"
    );
}

#[tokio::test]
async fn failing_instance_is_ejected_then_returns() {
    let (flaky, steady) = (Backend::start("flaky"), Backend::start("steady"));
    flaky.set_mode(Mode::Status(500));
    let (proxy, addr) = start(&svc(
        &[flaky.addr(), steady.addr()],
        "outlier = { consecutive_failures = 3, base_ejection = \"700ms\" }",
    ))
    .await;
    let c = Client::http1();
    // 500 is not retried by default: the client sees them until the instance is ejected.
    let mut fails = 0;
    for _ in 0..20 {
        if c.get(&format!("http://{addr}/")).await.unwrap().status == 500 {
            fails += 1;
        }
    }
    assert_eq!(fails, 3, "exactly the ejection threshold reached clients");
    let s = &proxy.services()[0];
    assert_eq!((s.ejected, s.instances[0].state), (1, "ejected"));
    let hits_while_ejected = flaky.hits();
    for _ in 0..10 {
        assert_eq!(
            c.get(&format!("http://{addr}/")).await.unwrap().backend(),
            "steady"
        );
    }
    assert_eq!(flaky.hits(), hits_while_ejected, "no traffic while ejected");
    // Heal it; after the ejection it gets traffic again.
    flaky.set_mode(Mode::Normal);
    eventually(
        Duration::from_secs(3),
        Duration::from_millis(50),
        || async {
            let r = c
                .get(&format!("http://{addr}/"))
                .await
                .map_err(|e| e.to_string())?;
            if r.backend() == "flaky" {
                Ok(())
            } else {
                Err("flaky not back yet".into())
            }
        },
    )
    .await;
    assert_eq!(proxy.services()[0].instances[0].state, "active");
}

#[tokio::test]
async fn ejection_never_empties_a_service() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    a.set_mode(Mode::Status(500));
    b.set_mode(Mode::Status(500));
    let (proxy, addr) = start(&svc(
        &[a.addr(), b.addr()],
        "outlier = { consecutive_failures = 2 }",
    ))
    .await;
    let c = Client::http1();
    for _ in 0..20 {
        assert_eq!(c.get(&format!("http://{addr}/")).await.unwrap().status, 500);
    }
    let s = &proxy.services()[0];
    assert_eq!(
        (s.ejected, s.max_ejected),
        (1, 1),
        "50% of 2 instances: only one may be out"
    );
}

#[tokio::test]
async fn single_instance_services_are_never_ejected() {
    let a = Backend::start("a");
    a.set_mode(Mode::Status(500));
    let (proxy, addr) = start(&svc(&[a.addr()], "outlier = { consecutive_failures = 1 }")).await;
    for _ in 0..5 {
        Client::http1()
            .get(&format!("http://{addr}/"))
            .await
            .unwrap();
    }
    assert_eq!(proxy.services()[0].ejected, 0);
    assert_eq!(a.hits(), 5);
}

#[tokio::test]
async fn reset_instances_are_retried_for_get() {
    let (broken, good) = (Backend::start("broken"), Backend::start("good"));
    broken.set_mode(Mode::Reset);
    let (_p, addr) = start(&svc(&[broken.addr(), good.addr()], "")).await;
    let c = Client::http1();
    for _ in 0..20 {
        let r = c.get(&format!("http://{addr}/")).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
}
