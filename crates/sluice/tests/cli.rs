//! The `sluice` binary end to end: real processes, real signals, real files.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use sluice_test_support::{
    Backend, SluiceProcess, eventually, eventually_blocking, free_port, http_get, http_request,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn ports() -> (SocketAddr, SocketAddr) {
    let admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let web = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    (admin, web)
}

fn config(admin: SocketAddr, web: SocketAddr, backends: &[&Backend], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr()))
        .collect();
    format!(
        "[admin]\nbind = \"{admin}\"\n[runtime]\nworker_threads = 2\nshutdown_grace = \"3s\"\n{extra}\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n[[route]]\npath = \"/\"\nservice = \"s\"\n\
         [[service]]\nname = \"s\"\ninstances = [{}]\n",
        list.join(", ")
    )
}

#[test]
fn check_lists_every_error_with_positions_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"web\"\nbind = \"nowhere\"\n\n[[route]]\nservice = \"missing\"\nstrp = \"/x\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let p = path.display();
    for expected in [
        format!("{p}:3:8: error: invalid bind address `nowhere`"),
        format!("{p}:6:11: error: route refers to unknown service `missing`"),
        format!("{p}:7:1: error: unknown key `strp` in [route]"),
        "hint: did you mean `strip`?".to_owned(),
        "3 errors found".to_owned(),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn check_accepts_a_good_file_and_version_prints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 listeners"));
    let v = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("sluice {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn run_refuses_an_invalid_file_before_binding_anything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let web = free_port();
    std::fs::write(
        &path,
        format!("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{web}\"\nbogus = 1\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key `bogus`"));
}

#[test]
fn admin_api_metrics_and_reloads() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (admin, web) = ports();
    let mut p = SluiceProcess::start(
        Path::new(BIN),
        &config(admin, web, &[&a], "[access_log]\npath = \"off\""),
        admin,
    );

    assert_eq!(http_get(admin, "/healthz").unwrap().0, 200);
    let (status, body) = http_get(web, "/hello").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"backend\":\"a\""), "{body}");

    let routes: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/api/routes").unwrap().1).unwrap();
    assert_eq!(routes[0]["service"], "s");
    let services: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/api/services").unwrap().1).unwrap();
    assert_eq!(services[0]["instances"][0]["address"], a.addr().to_string());
    assert_eq!(services[0]["instances"][0]["requests"], 1);

    let metrics = http_get(admin, "/metrics").unwrap().1;
    assert!(
        metrics.contains(
            r#"sluice_requests_total{listener="web",route="/",service="s",class="2xx"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_request_duration_seconds_bucket"),
        "histograms, not summaries"
    );
    assert!(metrics.contains(r#"sluice_connections_total{listener="web"}"#));

    // SIGHUP reload: point the service at `b`.
    std::fs::write(
        p.config_path(),
        config(admin, web, &[&b], "[access_log]\npath = \"off\""),
    )
    .unwrap();
    p.signal(Signal::SIGHUP);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(eventually(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async {
            let (_, body) = http_get(web, "/").map_err(|e| e.to_string())?;
            if body.contains("\"backend\":\"b\"") {
                Ok(())
            } else {
                Err(body)
            }
        },
    ));

    // An invalid file is rejected by the API with positioned errors; `b` keeps serving.
    std::fs::write(p.config_path(), "[[listener]]\nname = 5\n").unwrap();
    let (status, body) = http_request(admin, "POST", "/api/reload").unwrap();
    assert_eq!(status, 400, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["status"], "invalid");
    assert_eq!(j["errors"][0]["line"], 2);
    assert!(http_get(web, "/").unwrap().1.contains("\"backend\":\"b\""));
    // And a SIGHUP with the same bad file changes nothing either.
    p.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(200));
    assert!(http_get(web, "/").unwrap().1.contains("\"backend\":\"b\""));
    assert!(p.stderr().contains("reload rejected"), "{}", p.stderr());

    // A good file through the API.
    std::fs::write(
        p.config_path(),
        config(admin, web, &[&a], "[access_log]\npath = \"off\""),
    )
    .unwrap();
    let (status, body) = http_request(admin, "POST", "/api/reload").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(http_get(web, "/").unwrap().1.contains("\"backend\":\"a\""));
    let metrics = http_get(admin, "/metrics").unwrap().1;
    assert!(
        metrics.contains(r#"sluice_config_reloads_total{result="invalid"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_config_reloads_total{result="ok"} 2"#),
        "{metrics}"
    );
    assert_eq!(http_request(admin, "GET", "/api/reload").unwrap().0, 405);

    assert!(p.terminate(Duration::from_secs(5)).success());
}

/// `sluice_client_closes_total` of listener `web` for `reason` (0 before the first).
fn client_closes(admin: SocketAddr, reason: &str) -> u64 {
    let (_, metrics) = http_get(admin, "/metrics").unwrap();
    let series = format!(r#"sluice_client_closes_total{{listener="web",reason="{reason}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn clients_that_stop_reading_are_closed_and_counted_once_each() {
    let b = Backend::start("b");
    let (admin, web) = ports();
    let toml = format!(
        "[admin]\nbind = \"{admin}\"\n[access_log]\npath = \"off\"\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\nsend_timeout = \"300ms\"\n\
         [[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\ninstances = [\"{}\"]\n",
        b.addr()
    );
    let mut p = SluiceProcess::start(Path::new(BIN), &toml, admin);
    assert_eq!(client_closes(admin, "send_timeout"), 0);

    // One HTTP/1.1 and one HTTP/2 client ask for 50 MB each and read nothing.
    let mut h1 = std::net::TcpStream::connect(web).unwrap();
    h1.write_all(b"GET /big/50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut h2 = std::net::TcpStream::connect(web).unwrap();
    h2.write_all(&sluice_test_support::h2c_get_with_widest_windows(
        "/big/50000000",
    ))
    .unwrap();

    eventually_blocking(
        "both stalled clients closed for send_timeout",
        Duration::from_secs(10),
        || match client_closes(admin, "send_timeout") {
            2 => Ok(()),
            n => Err(format!("{n} send_timeout closes counted")),
        },
    );
    // Each was counted once, also after their sockets are read and closed.
    drop((h1, h2));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(client_closes(admin, "send_timeout"), 2);
    assert_eq!(http_get(web, "/ok").unwrap().0, 200, "others are served");
    assert!(p.terminate(Duration::from_secs(5)).success());
}

#[test]
fn access_log_file_is_appended_across_restarts() {
    let a = Backend::start("a");
    let (admin, web) = ports();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let extra = format!(
        "[access_log]\npath = \"{}\"\nformat = \"json\"",
        log.display()
    );
    for round in 0..2 {
        let mut p = SluiceProcess::start(Path::new(BIN), &config(admin, web, &[&a], &extra), admin);
        let (status, _) = http_get(web, &format!("/round/{round}?q=1")).unwrap();
        assert_eq!(status, 200);
        assert!(p.terminate(Duration::from_secs(5)).success());
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (round, line) in lines.iter().enumerate() {
        assert_eq!(line["path"], format!("/round/{round}?q=1"));
        assert_eq!(line["status"], 200);
        assert_eq!(line["service"], "s");
        assert_eq!(line["upstream"], a.addr().to_string());
        assert_eq!(line["method"], "GET");
        assert_eq!(line["retries"], 0);
        assert_eq!(line["completed"], true);
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(line["request_id"].as_str().unwrap().len(), 32);
    }
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    let a = Backend::start("a");
    let (admin, web) = ports();
    let mut p = SluiceProcess::start(
        Path::new(BIN),
        &config(admin, web, &[&a], "[access_log]\npath = \"off\""),
        admin,
    );
    let slow = std::thread::spawn(move || http_get(web, "/delay/700"));
    std::thread::sleep(Duration::from_millis(200));
    let status = p.terminate(Duration::from_secs(5));
    assert!(status.success(), "{status}");
    let (code, body) = slow.join().unwrap().unwrap();
    assert_eq!(
        code, 200,
        "the in-flight request completed during the drain: {body}"
    );
    assert!(
        std::net::TcpStream::connect(web).is_err(),
        "no longer listening"
    );
}
