//! Primary/backup roles through the `sluice` binary and the real `mirror-primary` Wasm policy:
//! a primary that hangs (the seed's stopped IRIS), split brain, and what happens to open TCP
//! sessions on a demoted member (`on_demotion`).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_test_support::{
    Client, MirrorMember, MirrorRole, SluiceProcess, free_port, free_port_on, http_get,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// Check interval + check timeout + a margin for a busy machine.
const FAILOVER_BOUND: Duration = Duration::from_millis(1000 + 500 + 500);
/// A split brain shows once both claims overlap: the new claimant's probe, then the
/// established primary's next confirmation — two intervals with their jitter (100 ms), plus
/// a margin for a busy machine.
const SPLIT_BRAIN_BOUND: Duration = Duration::from_millis(2 * 1100 + 500);

/// What the load generators saw: (time since the freeze, outcome).
type Seen = Arc<Mutex<Vec<(Duration, Result<String, String>)>>>;

struct Setup {
    sluice: SluiceProcess,
    web: SocketAddr,
    tcp: SocketAddr,
    a: MirrorMember,
    b: MirrorMember,
}

/// Members `a` (primary) and `b` (backup) on 127.0.0.21/22 sharing their port numbers, and
/// Sluice with an HTTP service and a TCP listener serving the primary.
fn setup(on_demotion: &str) -> Setup {
    setup_with(on_demotion, "")
}

/// [`setup`] with more keys for the HTTP service (`app_extra`: TOML lines).
fn setup_with(on_demotion: &str, app_extra: &str) -> Setup {
    let ips = ["127.0.0.21", "127.0.0.22"];
    let (web_port, tcp_port) = (free_port_on(&ips), free_port_on(&ips));
    let at = |ip: &str, port: u16| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    let a = MirrorMember::start_on(
        "a",
        MirrorRole::Primary,
        at(ips[0], web_port),
        at(ips[0], tcp_port),
    );
    let b = MirrorMember::start_on(
        "b",
        MirrorRole::Backup,
        at(ips[1], web_port),
        at(ips[1], tcp_port),
    );
    let admin = at("127.0.0.1", free_port());
    let web = at("127.0.0.1", free_port());
    let tcp = at("127.0.0.1", free_port());
    let health = format!(
        "{{ kind = \"http\", port = {web_port}, path = \"/csp/mirror_status.cxw\", policy = \"mirror\", interval = \"1s\", timeout = \"500ms\" }}"
    );
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n[access_log]\npath = \"off\"\n\
         [[policy]]\nname = \"mirror\"\nworld = \"health\"\nfile = \"builtin:mirror-primary\"\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [[listener]]\nname = \"db\"\nbind = \"{tcp}\"\nprotocol = \"tcp\"\nservice = \"db\"\n\
         [[route]]\nlistener = \"web\"\npath = \"/\"\nservice = \"app\"\n\
         [[service]]\nname = \"app\"\ninstances = [\"{}\", \"{}\"]\nserve = \"primary\"\non_demotion = \"{on_demotion}\"\nhealth = {health}\n{app_extra}\
         [[service]]\nname = \"db\"\ninstances = [\"{}\", \"{}\"]\nserve = \"primary\"\non_demotion = \"{on_demotion}\"\nhealth = {health}\n",
        a.web(),
        b.web(),
        a.tcp(),
        b.tcp(),
    );
    let sluice = SluiceProcess::start(Path::new(BIN), &config, admin);
    // Both services have seen a as primary before a test changes roles (their first probes
    // are spread by jitter).
    let start = Instant::now();
    loop {
        let (_, body) = http_get(admin, "/api/services").unwrap();
        let services: serde_json::Value = serde_json::from_str(&body).unwrap();
        let primaries: Vec<_> = services
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["primary"].clone())
            .collect();
        if primaries == [a.web().to_string(), a.tcp().to_string()] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "no primary yet: {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Setup {
        sluice,
        web,
        tcp,
        a,
        b,
    }
}

async fn host(client: &Client, web: SocketAddr) -> Result<String, String> {
    let r = client.get(&format!("http://{web}/api/get")).await?;
    if r.status != 200 {
        return Err(format!("{} {}", r.status, r.text()));
    }
    Ok(r.json()["host"].as_str().unwrap_or_default().to_owned())
}

/// A TCP session through Sluice, greeted by the member's name.
fn session(tcp: SocketAddr) -> (String, BufReader<TcpStream>) {
    let s = TcpStream::connect(tcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    (line.trim().to_owned(), r)
}

fn metric(admin: SocketAddr, prefix: &str) -> f64 {
    let (_, text) = http_get(admin, "/metrics").unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_primary_fails_over_without_failed_requests_and_its_sessions_are_closed() {
    let s = setup("close");
    let client = Client::http1();
    assert_eq!(host(&client, s.web).await, Ok("a".into()));
    let (name, mut held) = session(s.tcp);
    assert_eq!(name, "a");

    let seen: Seen = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now() + Duration::from_millis(300);
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (client, seen, stop, web) =
            (Client::http1(), Arc::clone(&seen), Arc::clone(&stop), s.web);
        load.spawn(async move {
            while !stop.load(SeqCst) {
                let got = host(&client, web).await;
                seen.lock()
                    .unwrap()
                    .push((Instant::now().saturating_duration_since(began), got));
            }
        });
    }
    tokio::time::sleep_until(began.into()).await;
    // The seed's "iris stop": the member's ports stay open but nothing answers.
    s.a.freeze();
    s.b.set_role(MirrorRole::Primary);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, SeqCst);
    while load.join_next().await.is_some() {}

    let seen = seen.lock().unwrap();
    let failures: Vec<_> = seen.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failures.is_empty(),
        "requests hung on the frozen primary are retried: {failures:?}"
    );
    let first_b = seen
        .iter()
        .find(|(_, r)| r.as_deref() == Ok("b"))
        .unwrap()
        .0;
    assert!(
        first_b <= FAILOVER_BOUND,
        "b first answered {first_b:?} after the freeze"
    );
    assert!(
        seen.iter().filter(|(t, _)| t.is_zero()).count() > 3,
        "traffic before the freeze"
    );
    eprintln!(
        "{} requests, none failed; b answered {first_b:?} after a froze",
        seen.len()
    );

    // The session to the demoted member was closed by Sluice (the member itself is silent).
    let t = Instant::now();
    let mut rest = Vec::new();
    let end = held.read_to_end(&mut rest);
    assert!(
        end.is_ok() || t.elapsed() < Duration::from_secs(4),
        "closed, not timed out: {end:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "already closed: {:?}",
        t.elapsed()
    );
    assert_eq!(session(s.tcp).0, "b", "new sessions reach the new primary");
}

/// Requests waiting on a primary that Sluice demotes move to the new one without drawing on
/// the retry budget (Sluice's own failover is not an instance failure): with a budget of zero
/// every one of them still succeeds. A TCP session the frozen member never greeted moves too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_moved_by_a_failover_cost_no_retry_budget_and_ungreeted_sessions_move() {
    let s = setup_with(
        "close",
        "retries = { budget_ratio = 0.0, budget_min_per_sec = 0 }\n",
    );
    let client = Client::http1();
    assert_eq!(host(&client, s.web).await, Ok("a".into()));
    s.a.freeze();
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let web = s.web;
        waiting.spawn(async move { host(&Client::http1(), web).await });
    }
    let tcp = s.tcp;
    let ungreeted = tokio::task::spawn_blocking(move || session(tcp).0);
    // Everything has reached the frozen member before the backup is promoted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.b.set_role(MirrorRole::Primary);
    let mut answers = Vec::new();
    while let Some(answer) = waiting.join_next().await {
        answers.push(answer.unwrap());
    }
    assert!(
        answers.iter().all(|a| a.as_deref() == Ok("b")),
        "every waiting request answered by the new primary: {answers:?}\n{}",
        s.sluice.stderr()
    );
    assert_eq!(ungreeted.await.unwrap(), "b", "{}", s.sluice.stderr());
    assert_eq!(
        metric(s.sluice.admin, "sluice_retry_budget_exhausted_total"),
        0.0,
        "no retry was refused by the budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_brain_keeps_the_established_primary_loudly() {
    let s = setup("close");
    let client = Client::http1();
    assert_eq!(host(&client, s.web).await, Ok("a".into()));
    let before = metric(s.sluice.admin, "sluice_split_brain_total");
    s.b.set_role(MirrorRole::Primary);
    // Both services (HTTP and TCP) probe b on their own schedule: wait for both to see it.
    let start = Instant::now();
    loop {
        let (_, body) = http_get(s.sluice.admin, "/api/services").unwrap();
        let services: serde_json::Value = serde_json::from_str(&body).unwrap();
        if services
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["split_brain"] == true)
        {
            break;
        }
        assert!(
            start.elapsed() < SPLIT_BRAIN_BOUND,
            "split brain not shown in the API: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        metric(s.sluice.admin, "sluice_split_brain_total") >= before + 2.0,
        "counted once per service"
    );
    for _ in 0..20 {
        assert_eq!(
            host(&client, s.web).await,
            Ok("a".into()),
            "the established primary keeps the traffic"
        );
    }
    assert_eq!(session(s.tcp).0, "a", "{}", s.sluice.stderr());
    assert!(
        s.sluice.stderr().contains("split brain"),
        "logged: {}",
        s.sluice.stderr()
    );

    // a steps down: b, the only claimant left, takes over at a's next probe.
    s.a.set_role(MirrorRole::Backup);
    let start = Instant::now();
    loop {
        let got = host(&client, s.web).await;
        if got == Ok("b".into()) {
            break;
        }
        assert!(
            start.elapsed() < FAILOVER_BOUND,
            "b never took over; last answer {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demotion_keep_lets_sessions_finish() {
    let s = setup("keep");
    let (name, mut held) = session(s.tcp);
    assert_eq!(name, "a");
    s.a.set_role(MirrorRole::Backup);
    s.b.set_role(MirrorRole::Primary);
    let start = Instant::now();
    while session(s.tcp).0 != "b" {
        assert!(start.elapsed() < FAILOVER_BOUND, "b never took over");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The session to the old primary still works.
    held.get_mut().write_all(b"still here\n").unwrap();
    let mut line = String::new();
    held.read_line(&mut line).unwrap();
    assert_eq!(line, "still here\n");
}
