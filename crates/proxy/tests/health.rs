//! Active health checks on live traffic (native evaluation; the Wasm health policy is tested
//! through the binary): check kinds, rise/fall, a check port apart from the traffic port,
//! instances leaving and rejoining, everything down, state kept across reloads.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::*;
use sluice_test_support::{Backend, Client, Mode, eventually, free_port_on};

const FAST: &str = "interval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\njitter = \"0s\"";

async fn backend_of(c: &Client, url: &str) -> String {
    let r = c.get(url).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.backend()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_takes_an_instance_out_and_rise_brings_it_back() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let toml = format!(
        "{LISTENER}\n[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\nretries = {{ attempts = 0 }}\n\
         [service.health]\nkind = \"http\"\npath = \"/health\"\nexpect_body = \"\\\"backend\\\"\"\n{FAST}\n",
        instances(&[a.addr(), b.addr()])
    );
    let (proxy, addr) = start(&toml).await;
    let c = Client::http1();
    let url = format!("http://{addr}/");
    eventually(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || async {
            let s = &proxy.services()[0];
            let up = s
                .instances
                .iter()
                .filter(|i| i.health.as_ref().unwrap().status == sluice_health::Status::Up)
                .count();
            if up == 2 {
                Ok(())
            } else {
                Err(format!("{up} up"))
            }
        },
    )
    .await;

    b.set_mode(Mode::Status(500));
    eventually(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || async {
            let s = &proxy.services()[0];
            if s.instances[1].state == "down" {
                Ok(())
            } else {
                Err(format!("{:?}", s.instances[1]))
            }
        },
    )
    .await;
    for _ in 0..20 {
        assert_eq!(
            backend_of(&c, &url).await,
            "a",
            "a down instance gets no traffic"
        );
    }
    let last = proxy.services()[0].instances[1]
        .health
        .clone()
        .unwrap()
        .last_probe
        .unwrap();
    assert!(last.result.starts_with("500"), "{last:?}");
    assert_eq!(last.verdict.as_deref(), Some("down: status 500"));

    b.set_mode(Mode::Normal);
    eventually(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || async {
            if backend_of(&c, &url).await == "b" {
                Ok(())
            } else {
                Err("b not back".into())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_port_apart_from_traffic_port() {
    // Two "hosts" on 127.0.0.2 and .3, each with traffic on one port and a status page on
    // another — the shape of seed 001 (superserver 1972, web 52773).
    let (traffic, status) = (
        free_port_on(&["127.0.0.2", "127.0.0.3"]),
        free_port_on(&["127.0.0.2", "127.0.0.3"]),
    );
    let a_traffic = Backend::start_on("a", format!("127.0.0.2:{traffic}").parse().unwrap());
    let b_traffic = Backend::start_on("b", format!("127.0.0.3:{traffic}").parse().unwrap());
    let _a_status = Backend::start_on("a-status", format!("127.0.0.2:{status}").parse().unwrap());
    let b_status = Backend::start_on("b-status", format!("127.0.0.3:{status}").parse().unwrap());
    let toml = format!(
        "{LISTENER}\n[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\n\
         [service.health]\nkind = \"http\"\npath = \"/status/200\"\nport = {status}\n{FAST}\n",
        instances(&[a_traffic.addr(), b_traffic.addr()])
    );
    let (proxy, addr) = start(&toml).await;
    let c = Client::http1();
    b_status.set_mode(Mode::Status(503));
    eventually(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || async {
            if proxy.services()[0].instances[1].state == "down" {
                Ok(())
            } else {
                Err("b still up".into())
            }
        },
    )
    .await;
    let before = b_traffic.hits();
    for _ in 0..10 {
        assert_eq!(backend_of(&c, &format!("http://{addr}/")).await, "a");
    }
    assert_eq!(
        b_traffic.hits(),
        before,
        "its traffic port is healthy, but its check says down"
    );
    assert!(b_status.hits() > 0, "the check went to the check port");
}

/// The states of service `s`'s instances, in configuration order.
fn states(proxy: &sluice_proxy::Proxy) -> Vec<&'static str> {
    proxy.services()[0]
        .instances
        .iter()
        .map(|i| match i.health.as_ref().map(|h| h.status) {
            Some(sluice_health::Status::Up) => "up",
            Some(sluice_health::Status::Down) => "down",
            _ => "unknown",
        })
        .collect()
}

async fn until_states(proxy: &sluice_proxy::Proxy, want: &[&str]) {
    eventually(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || async {
            let found = states(proxy);
            if found == want {
                Ok(())
            } else {
                Err(format!("{found:?}, want {want:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_one_ip_are_checked_on_their_own_ports() {
    // Two mirror members on one host: one IP, a traffic port and a web server port each.
    let a_traffic = Backend::start("a");
    let b_traffic = Backend::start("b");
    let a_status = Backend::start("a-status");
    // Nothing listens there: b's check is refused.
    let refused = sluice_test_support::free_port();
    let config = |b_check_port: u16| {
        format!(
            "{LISTENER}\n[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\n\
             instances = [{{ address = \"{}\", check_port = {} }}, {{ address = \"{}\", check_port = {b_check_port} }}]\n\
             [service.health]\nkind = \"http\"\npath = \"/status/200\"\n{FAST}\n",
            a_traffic.addr(),
            a_status.addr().port(),
            b_traffic.addr(),
        )
    };
    let (proxy, addr) = start(&config(refused)).await;
    until_states(&proxy, &["up", "down"]).await;
    let b_probe = proxy.services()[0].instances[1]
        .health
        .clone()
        .unwrap()
        .last_probe
        .unwrap();
    assert!(
        b_probe.result.starts_with("refused"),
        "b was probed on its own check port, not its traffic port: {b_probe:?}"
    );
    assert!(a_status.hits() > 0, "a was probed on its own check port");
    let c = Client::http1();
    let before = b_traffic.hits();
    for _ in 0..10 {
        assert_eq!(backend_of(&c, &format!("http://{addr}/")).await, "a");
    }
    assert_eq!(b_traffic.hits(), before, "only b went down");
    assert_eq!(
        a_traffic.hits(),
        10,
        "checks never went to the traffic ports"
    );

    // b's web server moves to a port that answers: its probe task starts over against it,
    // though its check and its traffic address are unchanged.
    let b_status = Backend::start("b-status");
    apply(&proxy, &config(b_status.addr().port())).await;
    until_states(&proxy, &["up", "up"]).await;
    assert!(b_status.hits() > 0, "b is probed on its new check port");
    assert_eq!(a_traffic.hits() + b_traffic.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_command_checks() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("b-is-up");
    std::fs::write(&flag, "").unwrap();
    let toml = format!(
        "{LISTENER}\n[[route]]\npath = \"/tcp\"\nservice = \"t\"\n[[route]]\npath = \"/cmd\"\nservice = \"c\"\n\
         [[service]]\nname = \"t\"\n{addrs}\n[service.health]\nkind = \"tcp\"\nsend = \"GET / HTTP/1.0\\r\\n\\r\\n\"\nexpect = \"HTTP/1.0 200\"\n{FAST}\n\
         [[service]]\nname = \"c\"\n{addrs}\n[service.health]\nkind = \"command\"\n\
         args = [\"sh\", \"-c\", \"[ $SLUICE_CHECK_PORT != {b_port} ] || [ -e {flag} ]\"]\n{FAST}\n",
        addrs = instances(&[a.addr(), b.addr()]),
        b_port = b.addr().port(),
        flag = flag.display(),
    );
    let (proxy, addr) = start(&toml).await;
    let state = |svc: usize, i: usize| {
        proxy.services()[svc].instances[i]
            .health
            .clone()
            .map(|h| h.status)
    };
    eventually(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || async {
            let all_up =
                (0..2).all(|s| (0..2).all(|i| state(s, i) == Some(sluice_health::Status::Up)));
            if all_up {
                Ok(())
            } else {
                Err("not all up".into())
            }
        },
    )
    .await;
    // The command check of b fails once its flag file is gone; its TCP check stays up.
    std::fs::remove_file(&flag).unwrap();
    eventually(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || async {
            if state(1, 1) == Some(sluice_health::Status::Down) {
                Ok(())
            } else {
                Err("command check still up".into())
            }
        },
    )
    .await;
    assert_eq!(state(0, 1), Some(sluice_health::Status::Up));
    let c = Client::http1();
    for _ in 0..6 {
        assert_eq!(backend_of(&c, &format!("http://{addr}/cmd")).await, "a");
    }
    // A stopped backend fails its TCP check.
    b.stop();
    eventually(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || async {
            if state(0, 1) == Some(sluice_health::Status::Down) {
                Ok(())
            } else {
                Err("tcp check still up".into())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_down_is_an_immediate_503_and_state_survives_reload() {
    let a = Backend::start("a");
    a.set_mode(Mode::Status(500));
    let svc = |route: &str| {
        format!(
            "{LISTENER}\n[[route]]\npath = \"{route}\"\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\n\
             [service.health]\nkind = \"http\"\n{FAST}\n",
            instances(&[a.addr()])
        )
    };
    let (proxy, addr) = start(&svc("/")).await;
    eventually(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || async {
            if proxy.services()[0].instances[0].state == "down" {
                Ok(())
            } else {
                Err("not down yet".into())
            }
        },
    )
    .await;
    let c = Client::http1();
    let t = std::time::Instant::now();
    let r = c.get(&format!("http://{addr}/")).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "no_healthy_instance");
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "answered at once: {:?}",
        t.elapsed()
    );

    // A reload that keeps the instance and its check keeps its verdict: no re-learning.
    apply(&proxy, &svc("/v2")).await;
    let h = proxy.services()[0].instances[0].health.clone().unwrap();
    assert_eq!(h.status, sluice_health::Status::Down);
    assert!(
        h.since_ms_ago.unwrap() > 0,
        "the status predates the reload: {h:?}"
    );
    assert_eq!(
        c.get(&format!("http://{addr}/v2")).await.unwrap().status,
        503
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_takes_an_instance_out_at_once_and_a_passing_check_brings_it_back() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    // Ejection for a minute on the first failure; checks every 100 ms, slow to mark down.
    let toml = format!(
        "{LISTENER}\n[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\nretries = {{ attempts = 0 }}\n\
         outlier = {{ consecutive_failures = 1, base_ejection = \"60s\" }}\n\
         [service.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 100\njitter = \"0s\"\n",
        instances(&[a.addr(), b.addr()])
    );
    let (proxy, addr) = start(&toml).await;
    let c = Client::http1();
    let url = format!("http://{addr}/");
    eventually(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || async {
            let up = proxy.services()[0]
                .instances
                .iter()
                .filter(|i| i.health.as_ref().unwrap().status == sluice_health::Status::Up)
                .count();
            if up == 2 {
                Ok(())
            } else {
                Err(format!("{up} up"))
            }
        },
    )
    .await;
    b.set_mode(Mode::Status(500));
    // One failed request ejects b: every later request goes to a.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(c.get(&url).await.unwrap().status.as_u16());
    }
    assert!(statuses.contains(&500), "b answered once: {statuses:?}");
    assert_eq!(proxy.services()[0].instances[1].state, "ejected");
    for _ in 0..10 {
        assert_eq!(c.get(&url).await.unwrap().backend(), "a");
    }
    // b recovers: its next passing probe ends the ejection, long before the minute is up.
    b.set_mode(Mode::Normal);
    eventually(
        Duration::from_secs(2),
        Duration::from_millis(20),
        || async {
            match proxy.services()[0].instances[1].state {
                "active" => Ok(()),
                other => Err(format!("b is {other}")),
            }
        },
    )
    .await;
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(c.get(&url).await.unwrap().backend());
    }
    assert!(
        backends.iter().any(|n| n == "b"),
        "b is back in rotation: {backends:?}"
    );
}
