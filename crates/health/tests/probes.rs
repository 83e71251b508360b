//! Probes against real servers and programs on this machine.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice_config::{CheckKind, HealthCheckConfig};
use sluice_health::probe::{ProbeTarget, run};
use sluice_health::{
    Evaluation, Evaluator, NativeEvaluator, ProbeErrorKind, ProbedInstance, Verdict,
};
use sluice_test_support::{Backend, Blackhole, Mode, free_port};

fn check(kind: CheckKind, timeout_ms: u64) -> HealthCheckConfig {
    HealthCheckConfig {
        kind,
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(timeout_ms),
        rise: 2,
        fall: 3,
        jitter: Duration::ZERO,
        address: None,
        port: None,
        policy: None,
        body_bytes: 64,
    }
}

fn http(path: &str, body: Option<&str>) -> CheckKind {
    CheckKind::Http {
        method: "GET".into(),
        path: path.into(),
        host: Some("status.example".into()),
        expect_status: vec![(200, 299)],
        expect_body: body.map(str::to_owned),
    }
}

fn target(addr: SocketAddr) -> ProbeTarget {
    ProbeTarget {
        addr,
        instance: addr,
        service: "svc".into(),
    }
}

fn verdict(kind: &CheckKind, probe: &sluice_health::ProbeResult) -> Verdict {
    let instance = ProbedInstance {
        id: "i".into(),
        service: "svc".into(),
        address: "127.0.0.1".into(),
        port: 1,
    };
    match NativeEvaluator::new(kind.clone()).evaluate(&instance, probe) {
        Evaluation::Verdict(v) => v,
        Evaluation::KeepPrevious { error } => panic!("native evaluator cannot fail: {error}"),
    }
}

#[tokio::test]
async fn http_probe_reads_status_headers_and_body_prefix() {
    let b = Backend::start("status-page");
    let kind = http("/anything", Some("status-page"));
    let p = run(&target(b.addr()), &check(kind.clone(), 1000)).await;
    assert_eq!(p.error, None);
    assert_eq!(p.status, Some(200));
    assert!(
        p.headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json")
    );
    assert_eq!(p.body_prefix.len(), 64, "the body is capped at body_bytes");
    assert!(verdict(&kind, &p).is_up(), "the backend's JSON names it");

    let p = run(&target(b.addr()), &check(http("/status/503", None), 1000)).await;
    assert_eq!(p.status, Some(503));
    assert_eq!(
        verdict(&http("/", None), &p),
        Verdict::Down {
            reason: "status 503".into()
        }
    );
    let wrong_body = http("/", Some("SUCCESS"));
    let p = run(&target(b.addr()), &check(wrong_body.clone(), 1000)).await;
    assert!(!verdict(&wrong_body, &p).is_up());
}

#[tokio::test]
async fn failures_are_classified() {
    let refused: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let p = run(&target(refused), &check(http("/", None), 1000)).await;
    assert_eq!(p.error.as_ref().unwrap().kind, ProbeErrorKind::Refused);

    let hole = Blackhole::start();
    let t = Instant::now();
    let p = run(&target(hole.addr()), &check(http("/", None), 300)).await;
    assert_eq!(p.error.as_ref().unwrap().kind, ProbeErrorKind::Timeout);
    assert!(
        t.elapsed() < Duration::from_millis(800),
        "bounded by the timeout: {:?}",
        t.elapsed()
    );

    let b = Backend::start("b");
    b.set_mode(Mode::Reset);
    let p = run(&target(b.addr()), &check(http("/", None), 1000)).await;
    assert_eq!(
        p.error.as_ref().unwrap().kind,
        ProbeErrorKind::Reset,
        "{p:?}"
    );
}

#[tokio::test]
async fn tcp_probe_connects_sends_and_expects() {
    let b = Backend::start("b");
    let plain = CheckKind::Tcp {
        send: None,
        expect: None,
    };
    assert!(
        verdict(
            &plain,
            &run(&target(b.addr()), &check(plain.clone(), 500)).await
        )
        .is_up()
    );
    let speak = CheckKind::Tcp {
        send: Some("GET / HTTP/1.0\r\n\r\n".into()),
        expect: Some("HTTP/1.0 200".into()),
    };
    let p = run(&target(b.addr()), &check(speak.clone(), 1000)).await;
    assert!(verdict(&speak, &p).is_up(), "{p:?}");
    let wrong = CheckKind::Tcp {
        send: Some("GET / HTTP/1.0\r\n\r\n".into()),
        expect: Some("+PONG".into()),
    };
    assert!(
        !verdict(
            &wrong,
            &run(&target(b.addr()), &check(wrong.clone(), 1000)).await
        )
        .is_up()
    );
}

#[tokio::test]
async fn command_probe_exit_status_environment_and_timeout() {
    let addr: SocketAddr = "127.0.0.1:1972".parse().unwrap();
    let ok = CheckKind::Command {
        args: vec![
            "sh".into(),
            "-c".into(),
            "test \"$SLUICE_CHECK_PORT\" = 1972 && test \"$1\" = 127.0.0.1".into(),
            "sh".into(),
            "{address}".into(),
        ],
    };
    let p = run(&target(addr), &check(ok.clone(), 2000)).await;
    assert_eq!(p.status, Some(0), "{p:?}");
    assert!(verdict(&ok, &p).is_up());
    let fails = CheckKind::Command {
        args: vec!["sh".into(), "-c".into(), "echo not primary; exit 3".into()],
    };
    let p = run(&target(addr), &check(fails.clone(), 2000)).await;
    assert_eq!(
        (p.status, p.body_prefix.as_slice()),
        (Some(3), &b"not primary\n"[..])
    );
    assert_eq!(
        verdict(&fails, &p),
        Verdict::Down {
            reason: "exit status 3".into()
        }
    );

    // A program that outlives the timeout is killed with the probe.
    let dir = std::env::temp_dir().join(format!("sluice-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pidfile = dir.join("pid");
    let slow = CheckKind::Command {
        args: vec![
            "sh".into(),
            "-c".into(),
            format!("echo $$ > {}; exec sleep 30", pidfile.display()),
        ],
    };
    let p = run(&target(addr), &check(slow, 300)).await;
    assert_eq!(p.error.as_ref().unwrap().kind, ProbeErrorKind::Timeout);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            Instant::now() < deadline,
            "the timed-out probe's program is still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);

    let missing = CheckKind::Command {
        args: vec!["/nonexistent/check".into()],
    };
    let p = run(&target(addr), &check(missing, 500)).await;
    assert!(
        p.error.as_ref().unwrap().message.contains("cannot run"),
        "{p:?}"
    );
}
