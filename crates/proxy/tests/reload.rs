//! Configuration reloads: atomic, lossless, and keeping live state.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use sluice_test_support::{Backend, Client, Mode};

fn two_services(a: &Backend, b: &Backend, weight_b: u32, extra_route: bool) -> String {
    let extra = if extra_route {
        "[[route]]\npath = \"/extra\"\nservice = \"b\"\n"
    } else {
        ""
    };
    format!(
        r#"{LISTENER}
[[route]]
path = "/"
service = "ab"
{extra}
[[service]]
name = "ab"
instances = [{{ address = "{}", weight = 1 }}, {{ address = "{}", weight = {weight_b} }}]
[[service]]
name = "b"
instances = ["{}"]
"#,
        a.addr(),
        b.addr(),
        b.addr()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (proxy, addr) = start(&two_services(&a, &b, 1, false)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for i in 0..8 {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        clients.push(tokio::spawn(async move {
            // Half keep connections alive, half use HTTP/2: both must ride through reloads.
            let c = if i % 2 == 0 {
                Client::http1()
            } else {
                Client::h2c()
            };
            while !stop.load(Ordering::Relaxed) {
                match c.get(&format!("http://{addr}/")).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!("failed: {} {}", r.status, r.text());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for round in 0..40u32 {
        apply(&proxy, &two_services(&a, &b, 1 + round % 4, round % 2 == 0)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across 40 reloads",
        ok + failed
    );
    assert!(ok > 200, "load was too light to prove anything: {ok}");
}

#[tokio::test]
async fn sticky_hashing_survives_reloads() {
    let backends: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("b{i}"))).collect();
    let cfg = |n: usize, extra: &str| {
        let addrs: Vec<_> = backends[..n].iter().map(|b| b.addr()).collect();
        format!(
            "{LISTENER}\n{extra}\n[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\nbalancer = \"hash\"\nhash_on = \"header:x-user\"\n{}\n",
            instances(&addrs)
        )
    };
    let (proxy, addr) = start(&cfg(3, "")).await;
    let c = Client::http1();
    let owners = |c: Client| async move {
        let mut v = Vec::new();
        for u in 0..90 {
            let user = format!("user-{u}");
            let r = c
                .request(
                    http::Method::GET,
                    &format!("http://{addr}/"),
                    &[("x-user", &user)],
                    "",
                )
                .await
                .unwrap();
            v.push(r.backend());
        }
        v
    };
    let before = owners(c.clone()).await;
    apply(
        &proxy,
        &cfg(3, "[[route]]\npath = \"/other\"\nservice = \"s\""),
    )
    .await;
    assert_eq!(
        owners(c.clone()).await,
        before,
        "an unrelated reload must not move any key"
    );
    apply(&proxy, &cfg(4, "")).await;
    let after = owners(c.clone()).await;
    let moved: Vec<_> = before.iter().zip(&after).filter(|(x, y)| x != y).collect();
    assert!(
        moved.iter().all(|(_, to)| to.as_str() == "b3"),
        "keys only move to the new instance: {moved:?}"
    );
    assert!(
        moved.len() < 45,
        "about a quarter of the keys should move, not {}",
        moved.len()
    );
}

#[tokio::test]
async fn pooled_connections_and_ejections_survive_reload() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let cfg = |route: &str| {
        format!(
            "{LISTENER}\n[[route]]\npath = \"{route}\"\nservice = \"s\"\n[[service]]\nname = \"s\"\nbalancer = \"least_request\"\noutlier = {{ consecutive_failures = 2, base_ejection = \"60s\" }}\n{}\n",
            instances(&[a.addr(), b.addr()])
        )
    };
    let (proxy, addr) = start(&cfg("/")).await;
    a.set_mode(Mode::Status(500));
    let c = Client::http1();
    while proxy.services()[0].ejected == 0 {
        c.get(&format!("http://{addr}/")).await.unwrap();
    }
    // `a` is out now, so this one goes to `b` and leaves a pooled connection behind.
    assert_eq!(
        c.get(&format!("http://{addr}/")).await.unwrap().backend(),
        "b"
    );
    let idle_before = proxy.services()[0].instances[1].idle_connections;
    assert!(idle_before >= 1);
    apply(&proxy, &cfg("/v2")).await;
    let s = &proxy.services()[0];
    assert_eq!(
        s.instances[0].state, "ejected",
        "ejection kept across reload"
    );
    assert_eq!(
        s.instances[1].idle_connections, idle_before,
        "pool kept across reload"
    );
    let r = c.get(&format!("http://{addr}/v2/x")).await.unwrap();
    assert_eq!(r.backend(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_the_old_routes() {
    let b = Backend::start("b");
    let (proxy, addr) = start(&format!(
        "{LISTENER}\n[[route]]\npath = \"/slow\"\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\n",
        instances(&[b.addr()])
    ))
    .await;
    let c = Client::http1();
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get(&format!("http://{addr}/slow/delay/400"))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    apply(&proxy, &format!("{LISTENER}\n[[route]]\npath = \"/new\"\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\n", instances(&[b.addr()]))).await;
    assert_eq!(
        slow.await.unwrap().status,
        200,
        "the request that started before the reload completes"
    );
    assert_eq!(
        c.get(&format!("http://{addr}/slow")).await.unwrap().status,
        404,
        "its route is gone for new requests"
    );
}

#[tokio::test]
async fn listeners_are_bound_and_closed_by_reload() {
    let b = Backend::start("b");
    let service = format!("[[service]]\nname = \"s\"\n{}\n", instances(&[b.addr()]));
    let one = format!("{LISTENER}\n[[route]]\nservice = \"s\"\n{service}");
    let two = format!(
        "{LISTENER}\n[[listener]]\nname = \"extra\"\nbind = \"127.0.0.1:0\"\n[[route]]\nlistener = \"web\"\nservice = \"s\"\n[[route]]\nlistener = \"extra\"\nservice = \"s\"\n{service}"
    );
    let (proxy, _addr) = start(&one).await;
    let cfg = sluice_config::parse_str("t.toml", &two).unwrap();
    let summary = proxy.apply(cfg).await.unwrap();
    assert_eq!(summary.listeners_added, ["extra"]);
    let extra = proxy.listener_addrs()["extra"];
    assert_eq!(
        Client::http1()
            .get(&format!("http://{extra}/"))
            .await
            .unwrap()
            .status,
        200
    );
    let cfg = sluice_config::parse_str("t.toml", &one).unwrap();
    let summary = proxy.apply(cfg).await.unwrap();
    assert_eq!(summary.listeners_removed, ["extra"]);
    assert!(
        std::net::TcpStream::connect(extra).is_err(),
        "the removed listener's port is closed"
    );
}

#[tokio::test]
async fn a_reload_that_cannot_bind_changes_nothing() {
    let b = Backend::start("b");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let service = format!("[[service]]\nname = \"s\"\n{}\n", instances(&[b.addr()]));
    let (proxy, addr) = start(&format!(
        "{LISTENER}\n[[route]]\npath = \"/old\"\nservice = \"s\"\n{service}"
    ))
    .await;
    let bad = format!(
        "{LISTENER}\n[[listener]]\nname = \"clash\"\nbind = \"{}\"\n[[route]]\nlistener = \"web\"\npath = \"/new\"\nservice = \"s\"\n{service}",
        taken.local_addr().unwrap()
    );
    let err = proxy
        .apply(sluice_config::parse_str("t.toml", &bad).unwrap())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot bind listener `clash`"),
        "{err}"
    );
    let c = Client::http1();
    assert_eq!(
        c.get(&format!("http://{addr}/old")).await.unwrap().status,
        200,
        "old routes still serve"
    );
    assert_eq!(
        c.get(&format!("http://{addr}/new")).await.unwrap().status,
        404,
        "new routes were not applied"
    );
}
