//! Issue 14's acceptance criteria for failover under real load, through the `sluice` binary,
//! the real `mirror-primary` Wasm policy and the service settings of
//! `examples/simplemirror/sluice.toml` (copied from the file, so these tests track the example).
//!
//! Every case runs an open-loop client (`sluice_test_support::open_loop`): 200 requests per
//! second on a schedule, each on its own connection (the HTTP/2 cases: multiplexed on 8, with
//! 16 KiB request and answer bodies), never waiting for earlier answers. The
//! primary `a` answers its `/api/` requests and superserver greetings 2 s late (a loaded
//! server), so about 400 requests are in flight on it at any moment, and at the flip (the
//! issue asks for ≥ 200; its own harness runs 400 concurrent clients). The
//! flip happens right after `a` answered a status-page probe — the worst moment of the probe
//! cycle: the next probe is a whole interval away. Then `a` stops (ports closed) or hangs
//! (ports open, nothing answered) and, in the failover cases, `b` reports primary at once.
//!
//! Criteria (`interval + timeout + 100 ms` is computed from the example's check settings):
//! - failover (HTTP/1.1, HTTP/2 and TCP, stopped and hung primary): ≥ 200 requests in
//!   flight at the flip;
//!   every request answered by a member (0 failed); every answer given by a member that was
//!   primary when it answered (0 non-primary answers); the first answer from `b` within the
//!   bound of the flip; `sluice_split_brain_total` 0 for the service (a clean flip).
//! - nobody primary (a stopped or hung primary, `b` stays backup): every request in flight at
//!   the loss or sent after it gets `503` with `{"error": "no_primary"}` within the bound of
//!   the loss (or of its sending, if later); never a 502.
//!
//! The cases share the machine's two cores, so they run one at a time (a lock), each with its
//! own members on their own loopback addresses (127.0.14.x) and its own `sluice`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_policy_test_artifacts::MIRROR_PRIMARY;
use sluice_test_support::open_loop::{self, OpenLoop, Outcome, Record, Summary, Target, relative};
use sluice_test_support::{
    AnswerKind, MirrorMember, MirrorRole, SluiceProcess, free_port, free_port_on, http_get,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const EXAMPLE: &str = include_str!("../../../examples/simplemirror/sluice.toml");

/// Requests per second.
const RATE: f64 = 200.0;
/// How late the primary answers: RATE × ANSWER_DELAY = 400 requests in flight on it.
const ANSWER_DELAY: Duration = Duration::from_secs(2);
/// Load before the flip (longer than ANSWER_DELAY, so the pile is complete).
const WARMUP: Duration = Duration::from_millis(2500);
/// Load after the flip (longer than the bound, with room to see what follows).
const AFTER: Duration = Duration::from_secs(3);
/// Requests in flight at the flip the issue asks for.
const MIN_IN_FLIGHT: usize = 200;

/// One case at a time: two cores cannot carry two of these loads and stay fair to Sluice.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http,
    /// HTTP/2 clients (h2c, requests multiplexed on H2_CONNECTIONS connections) sending
    /// `PUT`s with an H2_BODY-byte body and asking for an H2_BODY-byte answer: bodies larger
    /// than a packet, replayed when a request moves to the new primary.
    H2,
    Tcp,
}

/// HTTP/2 connections the H2 clients share.
const H2_CONNECTIONS: usize = 8;
/// Request and answer body size of the H2 cases.
const H2_BODY: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Break {
    /// Ports closed, open connections cut: connections are refused.
    Stop,
    /// Ports open, nothing answered, nothing closed.
    Hang,
}

/// The lines of the example's `[[service]]` named `name`, without its name and instances.
fn example_service(name: &str) -> Vec<String> {
    let blocks = EXAMPLE.split("\n[[").filter(|b| b.starts_with("service]]"));
    let block = blocks
        .into_iter()
        .find(|b| b.lines().any(|l| l.trim() == format!("name = \"{name}\"")))
        .unwrap_or_else(|| panic!("examples/simplemirror/sluice.toml has no service {name}"));
    block
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !l.starts_with("name ") && !l.starts_with("instances "))
        .map(str::to_owned)
        .collect()
}

/// `"1s"`, `"500ms"`, `"1.5s"` in the example's `health = { ... }` line.
fn health_setting(lines: &[String], key: &str) -> Duration {
    let health = lines
        .iter()
        .find(|l| l.starts_with("health "))
        .expect("the example's service has a health check");
    let value = health
        .split(&format!("{key} = \""))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no {key} in the example's {health}"));
    if let Some(ms) = value.strip_suffix("ms") {
        Duration::from_millis(ms.parse().unwrap())
    } else if let Some(s) = value.strip_suffix('s') {
        Duration::from_secs_f64(s.parse().unwrap())
    } else {
        panic!("unexpected duration {value:?} in {health}")
    }
}

struct Mirror {
    sluice: SluiceProcess,
    a: MirrorMember,
    b: MirrorMember,
    /// Where the load goes: Sluice's HTTP listener or its TCP listener.
    front: SocketAddr,
    target: Target,
    service: &'static str,
    /// interval + timeout + 100 ms.
    bound: Duration,
    proto: Proto,
}

/// Members `a` (primary, answering ANSWER_DELAY late) and `b` (backup) on 127.0.14.`pair`
/// and .`pair + 1`, sharing their port numbers (the TCP service's check asks the web port, one
/// port for the whole service, as in the example), and Sluice in front with the example's
/// service settings: the `ap1` HTTP service behind `/ap1/`, or the `ap1-superserver` TCP
/// service behind its own listener.
fn setup(proto: Proto, pair: u8) -> Mirror {
    let ips = [format!("127.0.14.{pair}"), format!("127.0.14.{}", pair + 1)];
    let ip_refs = [ips[0].as_str(), ips[1].as_str()];
    let (web_port, tcp_port) = (free_port_on(&ip_refs), free_port_on(&ip_refs));
    let at = |ip: &str, port: u16| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    let a = MirrorMember::start_on(
        "a",
        MirrorRole::Primary,
        at(&ips[0], web_port),
        at(&ips[0], tcp_port),
    );
    let b = MirrorMember::start_on(
        "b",
        MirrorRole::Backup,
        at(&ips[1], web_port),
        at(&ips[1], tcp_port),
    );
    let admin = at("127.0.0.1", free_port());
    let front = at("127.0.0.1", free_port());
    let mut config = format!(
        "[admin]\nbind = \"{admin}\"\n[access_log]\npath = \"off\"\n\
         [[policy]]\nname = \"mirror-primary\"\nworld = \"health\"\nfile = \"{MIRROR_PRIMARY}\"\n"
    );
    let (service, lines, instances, target) = match proto {
        Proto::Http | Proto::H2 => {
            let _ = write!(
                config,
                "[[listener]]\nname = \"web\"\nbind = \"{front}\"\n\
                 [[route]]\npath = \"/ap1/\"\nstrip = \"/ap1\"\nservice = \"ap1\"\n"
            );
            (
                "ap1",
                example_service("ap1"),
                [a.web(), b.web()],
                if proto == Proto::H2 {
                    Target::h2_put(front, "/ap1/api/put", H2_CONNECTIONS, H2_BODY, H2_BODY)
                } else {
                    Target::http_get(front, "/ap1/api/get")
                },
            )
        }
        Proto::Tcp => {
            let _ = write!(
                config,
                "[[listener]]\nname = \"ap1-superserver\"\nbind = \"{front}\"\nprotocol = \"tcp\"\n\
                 service = \"ap1-superserver\"\n"
            );
            let example_port = "port = 52773";
            let lines: Vec<String> = example_service("ap1-superserver")
                .into_iter()
                .map(|l| l.replace(example_port, &format!("port = {web_port}")))
                .collect();
            assert!(
                example_service("ap1-superserver")
                    .iter()
                    .any(|l| l.contains(example_port)),
                "the example's superserver check no longer says `{example_port}`: update this test"
            );
            (
                "ap1-superserver",
                lines,
                [a.tcp(), b.tcp()],
                Target::tcp_echo(front),
            )
        }
    };
    let bound = health_setting(&lines, "interval")
        + health_setting(&lines, "timeout")
        + Duration::from_millis(100);
    let _ = write!(
        config,
        "[[service]]\nname = \"{service}\"\ninstances = [\"{}\", \"{}\"]\n{}\n",
        instances[0],
        instances[1],
        lines.join("\n")
    );
    let sluice = SluiceProcess::start(Path::new(BIN), &config, admin);
    // Sluice has seen a as primary before the load starts.
    let start = Instant::now();
    loop {
        let (_, body) = http_get(admin, "/api/services").unwrap();
        let services: serde_json::Value = serde_json::from_str(&body).unwrap();
        let primary = services
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == service)
            .map(|s| s["primary"].clone());
        if primary == Some(serde_json::json!(instances[0].to_string())) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a is not primary in Sluice after 5 s: {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    a.set_answer_delay(ANSWER_DELAY);
    Mirror {
        sluice,
        a,
        b,
        front,
        target,
        service,
        bound,
        proto,
    }
}

impl Mirror {
    /// Waits for a's next status-page answer, then breaks a (and, with `promote`, makes b
    /// primary at once). Returns the flip instant, taken just before a is broken (so every
    /// duration measured from it includes the whole change), and how long after a's probe
    /// answer that was.
    async fn flip(&self, how: Break, promote: bool) -> (Instant, Duration) {
        let probe = self
            .a
            .next_status_probe(Duration::from_secs(3))
            .await
            .expect("a's status page was not probed within 3 s");
        // The probe's answer ("primary") was built before the notification; 10 ms lets it
        // reach Sluice even when a is about to stop. a's next probe is an interval away.
        tokio::time::sleep_until((probe + Duration::from_millis(10)).into()).await;
        // b is promoted right after a's stop *begins*: a's thread takes a few milliseconds
        // (up to ~20 with 400 connections) to close them all, and promoting b only after that
        // would leave a window with nobody primary that the test made, not the scenario ("a
        // stops and b is promoted"). Sluice learns of the stop from the cut connections, by
        // then b already reports primary. Before the stop began, b was backup: no overlap.
        let flip = Instant::now();
        match how {
            Break::Stop => self.a.begin_stop(),
            Break::Hang => self.a.freeze(),
        }
        if promote {
            self.b.set_role(MirrorRole::Primary);
        }
        if how == Break::Stop {
            tokio::task::block_in_place(|| self.a.stop());
        }
        eprintln!(
            "flip: a broken (and b {}) {:?} after the flip",
            if promote { "promoted" } else { "left backup" },
            flip.elapsed()
        );
        (flip, flip - probe)
    }

    fn metric(&self, prefix: &str) -> f64 {
        let (_, text) = http_get(self.sluice.admin, "/metrics").unwrap();
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Sluice's log lines that say what happened to the service (errors, warnings, roles).
    fn log_excerpt(&self) -> String {
        let stderr = self.sluice.stderr();
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("role changed"))
            .collect();
        let skip = lines.len().saturating_sub(30);
        lines[skip..].join("\n")
    }

    fn what(&self, how: Break) -> String {
        format!(
            "{} {} primary",
            match self.proto {
                Proto::Http => "HTTP",
                Proto::H2 => "HTTP/2 16 KiB PUT",
                Proto::Tcp => "TCP",
            },
            if how == Break::Stop {
                "stopped"
            } else {
                "hung"
            }
        )
    }
}

/// Starts the open-loop load, runs WARMUP, flips, runs AFTER, and waits for every request.
async fn run_load(m: &Mirror, how: Break, promote: bool) -> (Instant, Duration, Vec<Record>) {
    let load = OpenLoop::new(m.target.clone(), RATE).start();
    tokio::time::sleep(WARMUP).await;
    let (flip, after_probe) = m.flip(how, promote).await;
    tokio::time::sleep(AFTER).await;
    (flip, after_probe, load.finish().await)
}

/// `count × kind` lines with send times relative to the flip and an example each.
fn by_kind(records: &[&Record], flip: Instant) -> String {
    let owned: Vec<Record> = records.iter().map(|r| (*r).clone()).collect();
    Summary::of(&owned).describe(flip)
}

async fn failover(proto: Proto, how: Break, pair: u8) {
    let _serial = SERIAL.lock().await;
    open_loop::ensure_open_files(8192);
    let m = setup(proto, pair);
    let what = m.what(how);
    let (flip, after_probe, records) = run_load(&m, how, true).await;
    let since = |t: Instant| relative(t, flip);
    let mut problems = Vec::new();

    let in_flight = open_loop::in_flight_at(&records, flip);
    if in_flight < MIN_IN_FLIGHT {
        problems.push(format!(
            "scenario: only {in_flight} requests in flight at the flip (the issue asks for \
             ≥ {MIN_IN_FLIGHT}); the client or the machine did not keep the schedule"
        ));
    }

    // Failed: anything but an answer from a member. One exception, TCP sessions a had
    // already greeted (answered) before it broke, cut before their echo: a session is bound
    // to the member that greeted it, and no proxy can move it (a VIP cannot either). They are
    // counted and printed, not failed; with greetings 2 s late there are 0 or 1 of them
    // (the echo follows the greeting by well under a millisecond).
    let cut = |r: &&Record| matches!(&r.outcome, Outcome::Failed { stage: "echo", greeted_by: Some(m), .. } if m == "a");
    let cut_sessions = records.iter().filter(cut).count();
    let failed: Vec<&Record> = records
        .iter()
        .filter(|r| r.answered_by().is_none() && !cut(r))
        .collect();
    if !failed.is_empty() {
        problems.push(format!(
            "{} of {} requests failed:\n{}",
            failed.len(),
            records.len(),
            by_kind(&failed, flip)
        ));
    }

    // Non-primary answers, seen by the client (HTTP bodies carry the member's role when it
    // answered) and by the members themselves (their logs hold every answer and its role;
    // the only way to know it for TCP greetings). A broken a answers nothing, so every answer
    // of a's was given while it was primary.
    let wrong_role: Vec<&Record> = records
        .iter()
        .filter(|r| matches!(&r.outcome, Outcome::Http { status: 200, role, .. } if role.as_deref() != Some("primary")))
        .collect();
    if !wrong_role.is_empty() {
        problems.push(format!(
            "{} answers from a member that was not primary (client side):\n{}",
            wrong_role.len(),
            by_kind(&wrong_role, flip)
        ));
    }
    let kind = if proto != Proto::Tcp {
        AnswerKind::Api
    } else {
        AnswerKind::Greeting
    };
    let a_log = m.a.answers();
    let b_log = m.b.answers();
    let member_wrong: Vec<String> = a_log
        .iter()
        .map(|x| ("a", x))
        .chain(b_log.iter().map(|x| ("b", x)))
        .filter(|(_, x)| x.kind == kind)
        .filter(|(_, x)| x.role != MirrorRole::Primary)
        .map(|(who, x)| format!("{who} as {:?} at {}", x.role, since(x.answered)))
        .collect();
    if !member_wrong.is_empty() {
        problems.push(format!(
            "{} answers given by a member that was not primary (member side): {:?}",
            member_wrong.len(),
            &member_wrong[..member_wrong.len().min(10)]
        ));
    }

    // The first answer from the new primary, timed by when its first byte reached the client
    // (`answered`: the status line, the greeting). Not by when the request was sent: a request
    // sent 10 ms after the flip and parked until the promotion would credit Sluice with a
    // 10 ms failover. Not by when b received it either (printed too): the client's view is
    // what the criterion is about. b answers without delay, so this is the failover time.
    let first_b = records
        .iter()
        .filter(|r| r.answered_by() == Some("b"))
        .filter_map(|r| r.answered)
        .min();
    let b_received = b_log
        .iter()
        .filter(|x| x.kind == kind)
        .map(|x| x.received)
        .min();
    match first_b {
        None => problems.push("b never answered".to_owned()),
        Some(t) if t.saturating_duration_since(flip) > m.bound => problems.push(format!(
            "the first answer from b came {} after the flip (bound: interval + timeout + \
             100 ms = {:?}); b first received a request at {}",
            since(t),
            m.bound,
            b_received.map_or("never".to_owned(), since)
        )),
        Some(_) => {}
    }
    let herd = first_b.map_or(0, |t| open_loop::in_flight_at(&records, t));

    let split = m.metric(&format!(
        "sluice_split_brain_total{{service=\"{}\"}}",
        m.service
    ));
    if split > 0.0 {
        problems.push(format!(
            "sluice_split_brain_total{{service=\"{}\"}} = {split} after a clean flip",
            m.service
        ));
    }

    let summary = Summary::of(&records);
    eprintln!(
        "{what} (flipped {after_probe:?} after a's probe): sent {} at {RATE}/s (send lag ≤ {:?}), ok {}, failed {}, sessions cut after \
         a's greeting {cut_sessions}, non-primary {}, \
         in flight at the flip {in_flight} (max {}), in flight at b's first answer {herd}, \
         first answer from b {} (b first received {}), bound {:?}, split brain {split}",
        summary.sent,
        summary.max_send_lag,
        summary.ok,
        failed.len(),
        wrong_role.len() + member_wrong.len(),
        summary.max_in_flight,
        first_b.map_or("never".to_owned(), since),
        b_received.map_or("never".to_owned(), since),
        m.bound,
    );
    assert!(
        problems.is_empty(),
        "{what} through {} ({} requests; times relative to the flip):\n- {}\n\nall outcomes:\n{}\nSluice's log:\n{}",
        m.front,
        records.len(),
        problems.join("\n- "),
        summary.describe(flip),
        m.log_excerpt()
    );
}

async fn nobody_primary(how: Break, pair: u8) {
    let _serial = SERIAL.lock().await;
    open_loop::ensure_open_files(8192);
    let m = setup(Proto::Http, pair);
    let what = format!(
        "nobody primary after a {} primary",
        if how == Break::Stop {
            "stopped"
        } else {
            "hung"
        }
    );
    let (loss, after_probe, records) = run_load(&m, how, false).await;
    let since = |t: Instant| relative(t, loss);
    let mut problems = Vec::new();

    // Requests that ended before the loss were answered by a, the primary.
    let early_bad: Vec<&Record> = records
        .iter()
        .filter(|r| r.done <= loss && r.answered_by() != Some("a"))
        .collect();
    if !early_bad.is_empty() {
        problems.push(format!(
            "{} requests failed before the loss:\n{}",
            early_bad.len(),
            by_kind(&early_bad, loss)
        ));
    }
    // Every other one (in flight at the loss, or sent after it) gets 503 no_primary, within
    // the bound of the loss, or of its sending when that is later: no request waits longer
    // than a probe round for the verdict. Except an answer a gave as primary just before it
    // broke, reaching the client just after (a broken a answers nothing: checked below on
    // a's own log).
    let after: Vec<&Record> = records
        .iter()
        .filter(|r| r.done > loss && r.answered_by() != Some("a"))
        .collect();
    let not_503: Vec<&Record> = after
        .iter()
        .copied()
        .filter(|r| {
            !matches!(&r.outcome, Outcome::Http { status: 503, error: Some(e), .. } if e == "no_primary")
        })
        .collect();
    // a's answers all came before it broke (50 ms: the stop itself takes a few), as primary.
    let a_late: Vec<String> = m
        .a
        .answers()
        .iter()
        .filter(|x| x.answered > loss + Duration::from_millis(50) || x.role != MirrorRole::Primary)
        .map(|x| format!("as {:?} at {}", x.role, since(x.answered)))
        .collect();
    if !a_late.is_empty() {
        problems.push(format!(
            "a answered after it broke (a fault of the test's member): {:?}",
            &a_late[..a_late.len().min(10)]
        ));
    }
    if !not_503.is_empty() {
        problems.push(format!(
            "{} of {} requests in flight at the loss or sent after it did not get \
             503 no_primary:\n{}",
            not_503.len(),
            after.len(),
            by_kind(&not_503, loss)
        ));
    }
    let late: Vec<&Record> = after
        .iter()
        .copied()
        .filter(|r| r.done > r.sent.max(loss) + m.bound)
        .collect();
    if !late.is_empty() {
        problems.push(format!(
            "{} requests ended more than interval + timeout + 100 ms = {:?} after the loss \
             (or after they were sent, if later):\n{}",
            late.len(),
            m.bound,
            by_kind(&late, loss)
        ));
    }
    let in_flight = open_loop::in_flight_at(&records, loss);
    if in_flight < MIN_IN_FLIGHT {
        problems.push(format!(
            "scenario: only {in_flight} requests in flight at the loss (want ≥ {MIN_IN_FLIGHT})"
        ));
    }
    let first_503 = after
        .iter()
        .filter(|r| matches!(&r.outcome, Outcome::Http { status: 503, .. }))
        .map(|r| r.done)
        .min();
    let last_in_flight_done = records
        .iter()
        .filter(|r| r.in_flight_at(loss))
        .map(|r| r.done)
        .max();
    let summary = Summary::of(&records);
    eprintln!(
        "{what} (a broke {after_probe:?} after its probe): sent {} at {RATE}/s, in flight at the loss {in_flight}, after the loss {} \
         (not 503 no_primary: {}, late: {}), first 503 {}, last request in flight at the loss \
         ended {}, bound {:?}",
        summary.sent,
        after.len(),
        not_503.len(),
        late.len(),
        first_503.map_or("never".to_owned(), since),
        last_in_flight_done.map_or("—".to_owned(), since),
        m.bound,
    );
    assert!(
        problems.is_empty(),
        "{what} ({} requests; times relative to the loss):\n- {}\n\nall outcomes:\n{}\nSluice's log:\n{}",
        records.len(),
        problems.join("\n- "),
        summary.describe(loss),
        m.log_excerpt()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_failover_from_a_stopped_primary_under_open_loop_load() {
    failover(Proto::Http, Break::Stop, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_failover_from_a_hung_primary_under_open_loop_load() {
    failover(Proto::Http, Break::Hang, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_failover_with_16k_bodies_from_a_stopped_primary_under_open_loop_load() {
    failover(Proto::H2, Break::Stop, 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_failover_with_16k_bodies_from_a_hung_primary_under_open_loop_load() {
    failover(Proto::H2, Break::Hang, 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_failover_from_a_stopped_primary_under_open_loop_load() {
    failover(Proto::Tcp, Break::Stop, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_failover_from_a_hung_primary_under_open_loop_load() {
    failover(Proto::Tcp, Break::Hang, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_primary_after_a_hung_primary_answers_503_within_a_probe_round() {
    nobody_primary(Break::Hang, 9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_primary_after_a_stopped_primary_answers_503_within_a_probe_round() {
    nobody_primary(Break::Stop, 11).await;
}
