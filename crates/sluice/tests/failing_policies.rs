//! Policies that fail inside the running proxy: a health policy that traps or loops never takes
//! a service down (the previous verdict is kept, marked stale in the API and counted, and
//! traffic keeps flowing to the primary); an authz policy that panics or loops fails closed for
//! that connection only, and the proxy itself never panics.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_policy_test_artifacts::{MISBEHAVING_AUTHZ, MISBEHAVING_HEALTH};
use sluice_test_support::{SluiceProcess, free_port, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A TCP server that writes the current `reply` to every connection and closes it.
fn replier(reply: Arc<Mutex<String>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let text = reply.lock().unwrap().clone();
            let _ = s.write_all(text.as_bytes());
        }
    });
    addr
}

fn through(tcp: SocketAddr) -> String {
    let mut s = TcpStream::connect(tcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

fn instance_health(admin: SocketAddr) -> serde_json::Value {
    let (_, body) = http_get(admin, "/api/services").unwrap();
    let services: serde_json::Value = serde_json::from_str(&body).unwrap();
    services[0]["instances"][0]["health"].clone()
}

fn wait_for(
    admin: SocketAddr,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let h = instance_health(admin);
        if ok(&h) {
            return h;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{what}: {h}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_trapping_or_looping_health_policy_keeps_the_last_verdict_and_says_so() {
    // The check prints this file; the policy misbehaves when it reads `panic` or `loop`.
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status");
    std::fs::write(&status, "ok").unwrap();
    let reply = Arc::new(Mutex::new("ok".to_owned()));
    let server = replier(Arc::clone(&reply));
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tcp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n[access_log]\npath = \"off\"\n\
         [[policy]]\nname = \"shaky\"\nworld = \"health\"\nfile = \"{MISBEHAVING_HEALTH}\"\ntimeout = \"50ms\"\n\
         [[listener]]\nname = \"db\"\nbind = \"{tcp}\"\nprotocol = \"tcp\"\nservice = \"db\"\n\
         [[service]]\nname = \"db\"\ninstances = [\"{server}\"]\nserve = \"primary\"\n\
         health = {{ kind = \"command\", args = [\"cat\", \"{}\"], policy = \"shaky\", interval = \"100ms\", timeout = \"100ms\", jitter = \"0s\" }}\n",
        status.display()
    );
    let sluice = SluiceProcess::start(Path::new(BIN), &config, admin);
    wait_for(admin, "primary", |h| {
        h["role"] == "primary" && h["stale"] == false
    });
    assert_eq!(through(tcp), "ok");

    for misbehaviour in ["panic", "loop"] {
        *reply.lock().unwrap() = misbehaviour.to_owned();
        std::fs::write(&status, misbehaviour).unwrap();
        let h = wait_for(admin, misbehaviour, |h| h["stale"] == true);
        assert_eq!(h["role"], "primary", "the previous verdict holds: {h}");
        assert!(
            h["last_probe"]["evaluator_error"]
                .as_str()
                .is_some_and(|e| !e.is_empty()),
            "the policy's failure is shown: {h}"
        );
        // Still the primary: traffic flows (the server now answers the trigger text).
        assert_eq!(through(tcp), misbehaviour);
        *reply.lock().unwrap() = "ok".to_owned();
        std::fs::write(&status, "ok").unwrap();
        wait_for(admin, "recovered", |h| {
            h["stale"] == false && h["role"] == "primary"
        });
    }
    let (_, metrics) = http_get(admin, "/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sluice_health_probes_total") && l.contains("result=\"stale\"")),
        "stale verdicts are counted: {metrics}"
    );
    assert!(
        sluice.stderr().contains("keeping the previous verdict"),
        "{}",
        sluice.stderr()
    );
}

#[test]
fn an_authz_policy_that_panics_or_loops_fails_closed_without_hurting_the_proxy() {
    // The guest misbehaves by listener name; `fine` uses the same policy and must keep working.
    let reply = Arc::new(Mutex::new("data".to_owned()));
    let server = replier(Arc::clone(&reply));
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listeners: Vec<(&str, SocketAddr)> = ["panic", "loop", "fine"]
        .into_iter()
        .map(|name| {
            let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            (name, bind)
        })
        .collect();
    let mut config = format!(
        "[admin]\nbind = \"{admin}\"\n[runtime]\nworker_threads = 1\n[access_log]\npath = \"off\"\n\
         [[policy]]\nname = \"shaky\"\nworld = \"authz\"\nfile = \"{MISBEHAVING_AUTHZ}\"\ntimeout = \"50ms\"\n\
         [[service]]\nname = \"db\"\ninstances = [\"{server}\"]\n"
    );
    for (name, bind) in &listeners {
        config.push_str(&format!(
            "[[listener]]\nname = \"{name}\"\nbind = \"{bind}\"\nprotocol = \"tcp\"\nservice = \"db\"\n\
             [listener.authz]\npolicy = \"shaky\"\n"
        ));
    }
    let sluice = SluiceProcess::start(Path::new(BIN), &config, admin);
    let [(_, panics), (_, loops), (_, fine)] = listeners[..] else {
        unreachable!()
    };
    // Four crashes stay within the default crash budget (5 within 10 s).
    for _ in 0..2 {
        assert_eq!(through(fine), "data", "an allowed connection is relayed");
        assert_eq!(through(panics), "", "a panicking policy denies (closed)");
        assert_eq!(
            through(loops),
            "",
            "a looping policy denies at its deadline"
        );
    }
    assert_eq!(
        through(fine),
        "data",
        "the proxy still serves after the failures"
    );
    // The fifth suspends the policy: every listener that asks it fails closed for the
    // suspension (1 s at first), then it answers again.
    assert_eq!(through(panics), "");
    assert_eq!(through(fine), "", "a suspended policy fails closed");
    let start = Instant::now();
    while through(fine) != "data" {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the suspension ends after its backoff"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _) = http_get(admin, "/healthz").unwrap();
    assert_eq!(status, 200);
    let stderr = sluice.stderr();
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("panicked at") && !l.contains("guest stderr")),
        "a guest's panic never panics the proxy: {stderr}"
    );
    assert!(
        stderr.contains("authz policy call failed")
            && stderr.contains("asked to panic")
            && stderr.contains("connection denied by [listener.authz] listener=\"panic\""),
        "the failure is logged with the guest's own message: {stderr}"
    );
    let (_, metrics) = http_get(admin, "/metrics").unwrap();
    for name in ["panic", "loop"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("sluice_authz_denied_total")
                    && l.contains(&format!("listener=\"{name}\""))
                    && l.ends_with(if name == "panic" { " 3" } else { " 2" })),
            "each failed call is a counted denial on `{name}`: {metrics}"
        );
    }
}
