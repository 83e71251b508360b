//! Each balancer's distribution, measured over real requests to real backends.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::*;
use sluice_test_support::{Backend, Client};

fn one_service(balancer: &str, extra: &str, backends: &[&Backend]) -> String {
    let addrs: Vec<_> = backends.iter().map(|b| b.addr()).collect();
    format!(
        "{LISTENER}\n[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\nbalancer = \"{balancer}\"\n{extra}\n{}\n",
        instances(&addrs)
    )
}

#[tokio::test]
async fn round_robin_is_even_and_honours_weights() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let (_p, addr) = start(&one_service("round_robin", "", &[&a, &b, &c])).await;
    let counts = tally(&Client::http1(), &format!("http://{addr}/"), 300).await;
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [100, 100, 100],
        "{counts:?}"
    );

    let toml = format!(
        "{LISTENER}\n[[route]]\nservice = \"w\"\n[[service]]\nname = \"w\"\ninstances = [{{ address = \"{}\", weight = 1 }}, {{ address = \"{}\", weight = 3 }}]\n",
        a.addr(),
        b.addr()
    );
    let (_p2, addr2) = start(&toml).await;
    let counts = tally(&Client::http1(), &format!("http://{addr2}/"), 400).await;
    assert_eq!((counts["a"], counts["b"]), (100, 300), "{counts:?}");
}

#[tokio::test]
async fn least_request_sends_to_the_idle_instance() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (_p, addr) = start(&one_service("least_request", "", &[&a, &b])).await;
    let c = Client::http1();
    // Occupy one instance with a long request; while it runs, every request must go to the
    // other one (seed 002: no idle worker while requests wait).
    let long = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get(&format!("http://{addr}/delay/700"))
                .await
                .unwrap()
                .backend()
        })
    };
    sluice_test_support::eventually(Duration::from_secs(2), Duration::from_millis(5), || async {
        if a.hits() + b.hits() == 1 {
            Ok(())
        } else {
            Err("the long request has not arrived".into())
        }
    })
    .await;
    let busy = if a.hits() == 1 { "a" } else { "b" };
    for _ in 0..20 {
        let r = c.get(&format!("http://{addr}/")).await.unwrap();
        assert_ne!(
            r.backend(),
            busy,
            "a request went to the busy instance while another was idle"
        );
    }
    assert_eq!(long.await.unwrap(), busy);
}

#[tokio::test]
async fn p2c_ewma_prefers_the_faster_instance() {
    let (slow, fast) = (Backend::start("slow"), Backend::start("fast"));
    slow.set_mode(sluice_test_support::Mode::Delay(30));
    let (_p, addr) = start(&one_service("p2c_ewma", "", &[&slow, &fast])).await;
    let counts = tally(&Client::http1(), &format!("http://{addr}/"), 200).await;
    let slow_share = counts.get("slow").copied().unwrap_or(0);
    assert!(
        slow_share <= 10,
        "the slow instance should get almost nothing once measured: {counts:?}"
    );
    assert!(
        slow_share >= 1,
        "it must have been tried to be measured: {counts:?}"
    );
}

#[tokio::test]
async fn hash_is_sticky_per_key_and_spreads_keys() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let client = Client::http1();
    for (hash_on, header) in [("header:x-user", "x-user"), ("cookie:JSESSIONID", "cookie")] {
        let (_p, addr) = start(&one_service(
            "hash",
            &format!("hash_on = \"{hash_on}\""),
            &[&a, &b, &c],
        ))
        .await;
        let mut owners = std::collections::BTreeMap::new();
        for user in 0..60 {
            let value = if header == "cookie" {
                format!("JSESSIONID=user{user}; other=1")
            } else {
                format!("user{user}")
            };
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..3 {
                let r = client
                    .request(
                        http::Method::GET,
                        &format!("http://{addr}/"),
                        &[(header, value.as_str())],
                        "",
                    )
                    .await
                    .unwrap();
                seen.insert(r.backend());
            }
            assert_eq!(
                seen.len(),
                1,
                "{hash_on}: key {user} moved between instances: {seen:?}"
            );
            *owners.entry(seen.into_iter().next().unwrap()).or_insert(0) += 1;
        }
        assert_eq!(
            owners.len(),
            3,
            "{hash_on}: 60 keys should land on all 3 instances: {owners:?}"
        );
        assert!(
            owners.values().all(|&n| n >= 8),
            "{hash_on}: keys spread: {owners:?}"
        );
    }
}

#[tokio::test]
async fn hash_on_client_ip_is_stable() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (_p, addr) = start(&one_service("hash", "", &[&a, &b])).await;
    let counts = tally(&Client::http1(), &format!("http://{addr}/"), 30).await;
    assert_eq!(counts.len(), 1, "one client IP, one instance: {counts:?}");
}
