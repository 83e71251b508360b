//! The `examples/simplemirror` topology (seed 001) end to end: the example's own config file,
//! the real `mirror-primary` Wasm policy as the binary carries it (`builtin:mirror-primary`), four simulated mirror members on 127.0.0.11-14 and
//! the `sluice` binary on 127.0.0.10. It walks the README's four states and, in the second,
//! fails over while clients keep sending: no request may fail, and traffic must reach the new
//! primary within one check interval + timeout (1 s + 500 ms) plus a margin.
//!
//! The addresses are the example's fixed ones, so everything runs in this one test.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_test_support::{Client, MirrorMember, MirrorRole, SluiceProcess, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const EXAMPLE: &str = include_str!("../../../examples/simplemirror/sluice.toml");
const POLICY_LINE: &str = "file = \"builtin:mirror-primary\"";

/// Failover bound: check interval + check timeout + margin for scheduling on a busy machine.
const FAILOVER_BOUND: Duration = Duration::from_millis(1000 + 500 + 500);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The example's config as it is: its policy is the built-in one, so nothing needs a path.
fn example_config() -> String {
    assert!(
        EXAMPLE.contains(POLICY_LINE),
        "the example config no longer names the built-in policy"
    );
    EXAMPLE.to_owned()
}

fn member(name: &str, role: MirrorRole, ip: &str) -> MirrorMember {
    MirrorMember::start_on(
        name,
        role,
        addr(&format!("{ip}:52773")),
        addr(&format!("{ip}:1972")),
    )
}

/// `HostName` of `/apN/api/get`, or the status and error of a failure.
async fn host_of(client: &Client, path: &str) -> Result<String, String> {
    let r = client.get(&format!("http://127.0.0.10:8080{path}")).await?;
    if r.status != 200 {
        return Err(format!("{} {}", r.status, r.text()));
    }
    Ok(r.json()["host"].as_str().unwrap_or_default().to_owned())
}

/// The name a superserver connection is greeted with.
fn greeting(addr: SocketAddr) -> std::io::Result<String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::other("closed without a greeting"));
    }
    Ok(line.trim().to_owned())
}

async fn eventually_host(client: &Client, path: &str, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = host_of(client, path).await;
        if got.as_deref() == Ok(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{path} still answers {got:?}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the load generators saw: (time since the failover began, outcome).
type Seen = Arc<Mutex<Vec<(Duration, Result<String, String>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_states_of_seed_001_with_failover_under_load() {
    let ap1a = member("ap1a", MirrorRole::Primary, "127.0.0.11");
    let ap1b = member("ap1b", MirrorRole::Backup, "127.0.0.12");
    let _ap2a = member("ap2a", MirrorRole::Primary, "127.0.0.13");
    let _ap2b = member("ap2b", MirrorRole::Backup, "127.0.0.14");
    let mut sluice =
        SluiceProcess::start(Path::new(BIN), &example_config(), addr("127.0.0.10:9901"));
    let (ap1_tcp, ap2_tcp) = (addr("127.0.0.10:1972"), addr("127.0.0.10:11972"));
    let client = Client::http1();

    // State 1: ap1a primary, ap1b backup. Right after start-up: requests wait for the first
    // verdicts rather than answering "no primary".
    assert_eq!(host_of(&client, "/ap1/api/get").await, Ok("ap1a".into()));
    assert_eq!(host_of(&client, "/ap2/api/get").await, Ok("ap2a".into()));
    assert_eq!(greeting(ap1_tcp).unwrap(), "ap1a");
    assert_eq!(greeting(ap2_tcp).unwrap(), "ap2a");
    let r = client
        .get("http://127.0.0.10:8080/ap1b/csp/mirror_status.cxw")
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (503, "FAILED".to_owned()),
        "a backup's own answer"
    );
    let r = client
        .get("http://127.0.0.10:8080/ap1a/csp/mirror_status.cxw")
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "SUCCESS".to_owned()));

    // State 2: ap1a stops and ap1b is promoted, while clients keep sending.
    let began = Arc::new(Mutex::new(None::<Instant>));
    let since = {
        let began = Arc::clone(&began);
        move || {
            began
                .lock()
                .unwrap()
                .map_or(Duration::ZERO, |t: Instant| t.elapsed())
        }
    };
    let http_seen: Seen = Arc::default();
    let tcp_seen: Seen = Arc::default();
    let stop_load = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (client, seen, stop, since) = (
            Client::http1(),
            Arc::clone(&http_seen),
            Arc::clone(&stop_load),
            since.clone(),
        );
        load.spawn(async move {
            while !stop.load(SeqCst) {
                let got = host_of(&client, "/ap1/api/get").await;
                seen.lock().unwrap().push((since(), got));
            }
        });
    }
    {
        let (seen, stop, since) = (Arc::clone(&tcp_seen), Arc::clone(&stop_load), since.clone());
        load.spawn_blocking(move || {
            while !stop.load(SeqCst) {
                // Stamped when the connection starts: one already open to ap1a when it stops
                // is cut, as with a moving VIP; only connections made after must all succeed.
                let started = since();
                let got = greeting(ap1_tcp).map_err(|e| e.to_string());
                seen.lock().unwrap().push((started, got));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    *began.lock().unwrap() = Some(Instant::now());
    let ap1a = tokio::task::spawn_blocking(move || {
        ap1a.stop();
        ap1a
    })
    .await
    .unwrap();
    let stopped_after = since();
    ap1b.set_role(MirrorRole::Primary);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_load.store(true, SeqCst);
    while load.join_next().await.is_some() {}

    for (what, seen) in [("HTTP", &http_seen), ("TCP", &tcp_seen)] {
        let seen = seen.lock().unwrap();
        // HTTP requests are retried, so none may fail; TCP ones only if opened before ap1a
        // had finished stopping.
        let cut_ok = if what == "TCP" {
            stopped_after
        } else {
            Duration::ZERO
        };
        let failures: Vec<_> = seen
            .iter()
            .filter(|(t, r)| r.is_err() && (what == "HTTP" || *t > cut_ok))
            .collect();
        assert!(
            failures.is_empty(),
            "{what}: every request succeeds during the failover: {failures:?}"
        );
        let first_b = seen
            .iter()
            .find(|(_, r)| r.as_deref() == Ok("ap1b"))
            .unwrap_or_else(|| panic!("{what}: traffic never reached ap1b"))
            .0;
        assert!(
            first_b <= FAILOVER_BOUND,
            "{what}: first answer from ap1b after {first_b:?}"
        );
        let late_a = seen
            .iter()
            .filter(|(t, r)| *t > first_b && r.as_deref() == Ok("ap1a"))
            .count();
        assert_eq!(late_a, 0, "{what}: nothing reaches ap1a once ap1b answered");
        let before = seen.iter().filter(|(t, _)| t.is_zero()).count();
        assert!(
            before > 3 && seen.len() > before + 3,
            "{what}: traffic before and after: {}",
            seen.len()
        );
        eprintln!(
            "{what}: {} requests, none failed, ap1b first answered {first_b:?} after the stop",
            seen.len()
        );
    }
    let r = client
        .get("http://127.0.0.10:8080/ap1a/csp/mirror_status.cxw")
        .await
        .unwrap();
    assert_eq!(
        r.status,
        503,
        "the stopped member's own route: {}",
        r.text()
    );
    assert_eq!(r.json()["error"], "no_healthy_instance");
    assert_eq!(
        greeting(ap2_tcp).unwrap(),
        "ap2a",
        "the other mirror set is untouched"
    );

    // The admin API shows the verdicts and roles.
    let (status, body) = http_get(sluice.admin, "/api/services").unwrap();
    assert_eq!(status, 200);
    let services: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ap1 = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ap1")
        .unwrap();
    let b = &ap1["instances"][1];
    assert_eq!(b["health"]["role"], "primary", "{ap1}");
    assert_eq!(ap1["instances"][0]["health"]["status"], "down", "{ap1}");

    // State 3: both members of AP1 stopped: an immediate 503 naming the reason, and TCP
    // connections closed at once, instead of the seed's two-minute 504.
    let _ap1b = tokio::task::spawn_blocking(move || {
        ap1b.stop();
        ap1b
    })
    .await
    .unwrap();
    // A request that finds the primary gone waits for a fresh probe round (nobody promoted);
    // after it, "no primary" is answered at once, and superserver connections are closed at
    // once.
    let start = Instant::now();
    loop {
        let t = Instant::now();
        let r = client
            .get("http://127.0.0.10:8080/ap1/api/get")
            .await
            .unwrap();
        // Never a 502: the request that found ap1b refusing is answered "no primary" too,
        // once the probes it kicked found nobody to promote.
        assert_eq!(
            (r.status.as_u16(), r.json()["error"].as_str()),
            (503, Some("no_primary")),
            "{}",
            r.text()
        );
        if t.elapsed() < Duration::from_millis(200) {
            break;
        }
        assert!(
            start.elapsed() < 2 * FAILOVER_BOUND,
            "still {} {} after {:?}",
            r.status,
            r.text(),
            start.elapsed()
        );
    }
    let start = Instant::now();
    loop {
        let t = Instant::now();
        let got = greeting(ap1_tcp);
        assert!(got.is_err(), "no primary, yet greeted by {got:?}");
        if t.elapsed() < Duration::from_millis(200) {
            break;
        }
        assert!(
            start.elapsed() < 2 * FAILOVER_BOUND,
            "TCP connections still wait after {:?}",
            start.elapsed()
        );
    }

    // State 4: ap1a starts again and becomes primary; ap1b stays stopped.
    ap1a.restart(MirrorRole::Primary);
    let took = eventually_host(&client, "/ap1/api/get", "ap1a", FAILOVER_BOUND).await;
    eprintln!("ap1a back as primary: served after {took:?}");
    let start = Instant::now();
    while greeting(ap1_tcp).ok().as_deref() != Some("ap1a") {
        assert!(
            start.elapsed() < FAILOVER_BOUND,
            "TCP does not reach ap1a again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = client
        .get("http://127.0.0.10:8080/ap1b/api/get")
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());

    let (_, metrics) = http_get(sluice.admin, "/metrics").unwrap();
    assert!(
        metrics.contains("sluice_health_changes_total{"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_primary{"), "{metrics}");
    assert!(
        sluice.terminate(Duration::from_secs(5)).success(),
        "{}",
        sluice.stderr()
    );
}
