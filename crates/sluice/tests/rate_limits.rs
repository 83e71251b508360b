//! Per-route rate limits through the binary: many clients (each from its own loopback
//! address, with curl as the client) against a limited route whose instance is slow — the
//! admitted requests finish, the rest get `429` at once with `Retry-After` and the JSON error
//! body; HTTP/2 clients alike; keys by header with a bounded table under a flood of new keys;
//! keys by client certificate on a mutual-TLS listener; buckets kept across a reload that leaves
//! the limit unchanged; metrics.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use sluice_test_support::certs::{Leaf, TestCa};
use sluice_test_support::require_tool;
use sluice_test_support::{Backend, Mode, SluiceProcess, free_port, http_get, http_request};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn config(admin: SocketAddr, web: SocketAddr, backend: &Backend, routes: &str) -> String {
    format!(
        "[admin]\nbind = \"{admin}\"\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [[service]]\nname = \"s\"\ninstances = [\"{}\"]\n{routes}",
        backend.addr()
    )
}

/// One answer as curl saw it.
#[derive(Debug)]
struct Seen {
    status: u16,
    seconds: f64,
    retry_after: String,
    body: String,
}

/// `count` GETs of `url` by one curl process over one keep-alive connection, from `source`
/// (a loopback address), with `extra` arguments.
fn curl_burst(source: &str, url: &str, count: usize, extra: &[&str]) -> Vec<Seen> {
    const MARK: &str = "\n@@seen@@ ";
    let mut cmd = Command::new(require_tool("curl"));
    cmd.args(["-sS", "--interface", source, "--max-time", "30"])
        .args(extra)
        .args([
            "-w",
            &format!("{MARK}%{{http_code}} %{{time_total}} [%header{{retry-after}}]\n"),
        ]);
    for _ in 0..count {
        cmd.arg(url);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut seen = Vec::new();
    let mut body = String::new();
    for piece in text.split(MARK) {
        if let Some((facts, rest)) = piece.split_once('\n') {
            let mut words = facts.split(' ');
            if let (Some(status), Some(seconds), Some(retry)) =
                (words.next(), words.next(), words.next())
                && seen.len() < count
                && !body.is_empty()
            {
                seen.push(Seen {
                    status: status.parse().unwrap(),
                    seconds: seconds.parse().unwrap(),
                    retry_after: retry.trim_matches(['[', ']']).to_owned(),
                    body: std::mem::take(&mut body),
                });
                body = rest.to_owned();
                continue;
            }
        }
        body = piece.to_owned();
    }
    assert_eq!(seen.len(), count, "curl output:\n{text}");
    seen
}

/// A metric's value for `route` (0 when absent).
fn metric(admin: SocketAddr, name: &str, route: &str) -> f64 {
    let (_, text) = http_get(admin, "/metrics").unwrap();
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("route=\"{route}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn many_clients_get_their_rate_and_the_rest_429_at_once() {
    let backend = Backend::start("slow");
    backend.set_mode(Mode::Delay(250));
    let (admin, web) = (addr(), addr());
    let routes = "[[route]]\npath = \"/api/\"\nservice = \"s\"\nname = \"api\"\n\
                  rate_limit = { rate = 1, per = \"1s\", burst = 3 }\n";
    let sluice = SluiceProcess::start(BIN.as_ref(), &config(admin, web, &backend, routes), admin);
    let url = format!("http://{web}/api/x");

    // 30 clients at once, each from its own address, each trying 12 requests in a row.
    const CLIENTS: usize = 30;
    const TRIES: usize = 12;
    let started = std::time::Instant::now();
    let runs: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || curl_burst(&format!("127.0.0.{}", 10 + i), &url, TRIES, &[]))
        })
        .collect();
    let runs: Vec<Vec<Seen>> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    let elapsed = started.elapsed().as_secs_f64();

    let mut admitted_total = 0;
    for (i, run) in runs.iter().enumerate() {
        let admitted: Vec<&Seen> = run.iter().filter(|s| s.status == 200).collect();
        let refused: Vec<&Seen> = run.iter().filter(|s| s.status == 429).collect();
        assert_eq!(admitted.len() + refused.len(), TRIES, "client {i}: {run:?}");
        // A client's own bucket: its burst at once, then 1 a second over the run at most.
        let ceiling = 3 + elapsed.ceil() as usize;
        assert!(
            (3..=ceiling).contains(&admitted.len()),
            "client {i} had {} admitted in {elapsed:.2}s (burst 3, 1/s): {run:?}",
            admitted.len()
        );
        for s in &admitted {
            assert!(
                s.seconds >= 0.2,
                "an admitted request reached the slow instance: {s:?}"
            );
        }
        for s in &refused {
            assert!(s.seconds < 0.15, "a refusal waits for nothing: {s:?}");
            assert_eq!(s.retry_after, "1", "{s:?}");
            let body: serde_json::Value = serde_json::from_str(&s.body).unwrap();
            assert_eq!(body["error"], "rate_limited", "{body}");
            assert_eq!(body["service"], "s", "{body}");
            let detail = body["detail"].as_str().unwrap();
            assert!(
                detail.contains("1 request per 1s (burst 3) by client"),
                "{detail}"
            );
        }
        admitted_total += admitted.len();
    }
    assert_eq!(
        backend.hits() as usize,
        admitted_total,
        "only admitted requests reach it"
    );
    let refused_total = CLIENTS * TRIES - admitted_total;
    assert!(refused_total > CLIENTS * 4, "{refused_total} refused");
    assert_eq!(
        metric(admin, "sluice_route_rate_limited_total", "api") as usize,
        refused_total
    );
    assert_eq!(
        metric(admin, "sluice_route_rate_limit_keys", "api") as usize,
        CLIENTS
    );
    drop(sluice);
}

#[test]
fn http2_clients_are_limited_the_same_way() {
    let backend = Backend::start("b");
    let (admin, web) = (addr(), addr());
    let routes = "[[route]]\nservice = \"s\"\nname = \"all\"\n\
                  rate_limit = { rate = 1, per = \"1m\", burst = 2 }\n";
    let _sluice = SluiceProcess::start(BIN.as_ref(), &config(admin, web, &backend, routes), admin);
    let url = format!("http://{web}/x");
    // One connection per request: curl 7.88 cannot reuse a prior-knowledge HTTP/2 connection
    // (curl issue 10634, fixed in 8.0).
    let seen: Vec<Seen> = (0..5)
        .flat_map(|_| curl_burst("127.0.0.2", &url, 1, &["--http2-prior-knowledge"]))
        .collect();
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [200, 200, 429, 429, 429], "{seen:?}");
    // One request a minute: the next is due in 30 to 60 s.
    let wait: u64 = seen[2].retry_after.parse().unwrap();
    assert!((30..=60).contains(&wait), "{seen:?}");
    let body: serde_json::Value = serde_json::from_str(&seen[2].body).unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
}

/// A keep-alive HTTP/1.1 connection sending GETs one at a time.
struct KeepAlive(BufReader<TcpStream>);

impl KeepAlive {
    fn open(to: SocketAddr) -> Self {
        let s = TcpStream::connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self(BufReader::new(s))
    }

    /// The status of `GET path` with `fields` (each ending in CRLF); reads the body away.
    fn get(&mut self, path: &str, fields: &str) -> u16 {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
        self.0.get_mut().write_all(request.as_bytes()).unwrap();
        let mut status = 0;
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).unwrap();
            let lower = line.to_ascii_lowercase();
            if line.starts_with("HTTP/1.1 ") {
                status = line[9..12].parse().unwrap();
            } else if let Some(n) = lower.strip_prefix("content-length:") {
                length = n.trim().parse().unwrap();
            } else if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0; length];
        self.0.read_exact(&mut body).unwrap();
        status
    }
}

#[test]
fn a_flood_of_new_keys_stays_within_max_keys_and_held_keys_keep_their_buckets() {
    let backend = Backend::start("b");
    let (admin, web) = (addr(), addr());
    let routes = "[[route]]\nservice = \"s\"\nname = \"keyed\"\n\
                  rate_limit = { rate = 1, per = \"1h\", burst = 2, key = \"header:x-api-key\", max_keys = 100 }\n";
    let _sluice = SluiceProcess::start(BIN.as_ref(), &config(admin, web, &backend, routes), admin);
    let mut conn = KeepAlive::open(web);
    // A held key spends one of its two requests before the flood.
    assert_eq!(conn.get("/", "x-api-key: held\r\n"), 200);
    // 5,000 keys, each new: the table fills at 100, and the rest share one overflow bucket,
    // which admits its burst of 2 and refuses the others.
    let flood: Vec<u16> = (0..5000)
        .map(|i| conn.get("/", &format!("x-api-key: k{i}\r\n")))
        .collect();
    let admitted = flood.iter().filter(|s| **s == 200).count();
    assert_eq!(
        admitted,
        99 + 2,
        "99 own buckets, then the overflow's burst"
    );
    assert!(flood.iter().all(|s| *s == 200 || *s == 429));
    assert_eq!(
        metric(admin, "sluice_route_rate_limit_keys", "keyed"),
        100.0
    );
    assert_eq!(
        metric(admin, "sluice_route_rate_limit_overflow_total", "keyed"),
        (5000 - 99) as f64
    );
    assert_eq!(
        conn.get("/", "x-api-key: held\r\n"),
        200,
        "its second request"
    );
    assert_eq!(conn.get("/", "x-api-key: held\r\n"), 429);
    // Without the header a request is counted by its client address.
    assert_eq!(
        conn.get("/", ""),
        429,
        "the table is full: the overflow bucket, spent"
    );
}

#[test]
fn a_reload_keeps_the_buckets_of_unchanged_limits() {
    let backend = Backend::start("b");
    let (admin, web) = (addr(), addr());
    let routes = |b_burst: u32| {
        format!(
            "[[route]]\npath = \"/a/\"\nservice = \"s\"\nrate_limit = {{ rate = 1, per = \"1h\", burst = 2 }}\n\
             [[route]]\npath = \"/b/\"\nservice = \"s\"\nrate_limit = {{ rate = 1, per = \"1h\", burst = {b_burst} }}\n\
             [[route]]\npath = \"/c/\"\nservice = \"s\"\n"
        )
    };
    let sluice = SluiceProcess::start(
        BIN.as_ref(),
        &config(admin, web, &backend, &routes(1)),
        admin,
    );
    let mut conn = KeepAlive::open(web);
    let statuses = |conn: &mut KeepAlive, path: &str, n: usize| -> Vec<u16> {
        (0..n).map(|_| conn.get(path, "")).collect()
    };
    assert_eq!(statuses(&mut conn, "/a/", 3), [200, 200, 429]);
    assert_eq!(statuses(&mut conn, "/b/", 2), [200, 429]);

    std::fs::write(
        sluice.config_path(),
        config(admin, web, &backend, &routes(3)),
    )
    .unwrap();
    let (status, body) = http_request(admin, "POST", "/api/reload").unwrap();
    assert_eq!(status, 200, "{body}");

    let mut conn = KeepAlive::open(web);
    assert_eq!(
        statuses(&mut conn, "/a/", 1),
        [429],
        "an unchanged limit keeps its buckets"
    );
    assert_eq!(
        statuses(&mut conn, "/b/", 4),
        [200, 200, 200, 429],
        "a changed limit starts with full buckets"
    );
    assert_eq!(
        statuses(&mut conn, "/c/", 5),
        [200; 5],
        "an unlimited route"
    );
}

/// The statuses of `count` GETs by one curl over one HTTPS keep-alive connection, with the
/// client certificate `client` (a name `ca` issued) or none.
fn https_statuses(web: SocketAddr, ca: &TestCa, client: Option<&str>, count: usize) -> Vec<u16> {
    let mut cmd = Command::new(require_tool("curl"));
    cmd.args(["-sS", "--max-time", "10", "-w", "%{http_code}\n"])
        .arg("--cacert")
        .arg(&ca.ca_path)
        .args(["--resolve", &format!("www.test:{}:127.0.0.1", web.port())]);
    if let Some(name) = client {
        cmd.arg("--cert")
            .arg(ca.dir().join(format!("{name}.pem")))
            .arg("--key")
            .arg(ca.dir().join(format!("{name}.key")));
    }
    for _ in 0..count {
        // `-o` applies to one URL: each needs its own.
        cmd.args(["-o", "/dev/null"])
            .arg(format!("https://www.test:{}/", web.port()));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
fn a_tls_identity_key_counts_each_client_certificate_on_its_own() {
    let ca = TestCa::new("Limits CA");
    let www = ca.issue(&Leaf::server("www", &["www.test"]));
    ca.issue(&Leaf::client("app1", "app1", &["app1.test"]));
    ca.issue(&Leaf::client("app2", "app2", &["app2.test"]));
    let backend = Backend::start("b");
    let (admin, web) = (addr(), addr());
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [listener.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nclient_auth = \"optional\"\n\
         [[service]]\nname = \"s\"\ninstances = [\"{}\"]\n\
         [[route]]\nservice = \"s\"\nname = \"by-cert\"\n\
         rate_limit = {{ rate = 1, per = \"1h\", burst = 2, key = \"tls_identity\" }}\n",
        www.cert,
        www.key,
        ca.ca_path,
        backend.addr()
    );
    let _sluice = SluiceProcess::start(BIN.as_ref(), &config, admin);
    assert_eq!(https_statuses(web, &ca, Some("app1"), 3), [200, 200, 429]);
    assert_eq!(
        https_statuses(web, &ca, Some("app2"), 3),
        [200, 200, 429],
        "another certificate from the same address has its own bucket"
    );
    assert_eq!(
        https_statuses(web, &ca, Some("app1"), 1),
        [429],
        "a new connection"
    );
    assert_eq!(
        https_statuses(web, &ca, None, 3),
        [200, 200, 429],
        "without a certificate: counted by the client address"
    );
}
