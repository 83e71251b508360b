//! The `examples/consul-demo` web tier (seed 004) end to end, with the example's own files:
//! its `sluice.toml` and Consul-format definitions (`consul.d/web-*.json`) for the file
//! registry, and its `sluice-etcd-1.toml` / `sluice-etcd-2.toml` for two Sluice processes
//! watching one real etcd. Only the addresses are changed, to free loopback ports.
//!
//! What is asserted is what the system guarantees: with both instances registered, `/web` is
//! balanced over both; when one instance stops, requests are retried on the other (a refused
//! connection never reached an instance, an idempotent request cut mid-way may be replayed), so
//! no client request fails and none started after the stop is answered by the stopped one; its
//! declared check marks it down within `fall` probe rounds; a removed registration removes it.
//! For etcd: after a registration, a deregistration (lease revoked) and a lease expiry, both
//! Sluice processes serve the same routes and the same instances.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_test_support::etcd::Etcd;
use sluice_test_support::{
    Backend, Client, SluiceProcess, eventually, eventually_blocking, free_port, http_get,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const FILE_CONFIG: &str = include_str!("../../../examples/consul-demo/sluice.toml");
const ETCD_CONFIG_1: &str = include_str!("../../../examples/consul-demo/sluice-etcd-1.toml");
const ETCD_CONFIG_2: &str = include_str!("../../../examples/consul-demo/sluice-etcd-2.toml");
const WEB_1: &str = include_str!("../../../examples/consul-demo/consul.d/web-1.json");
const WEB_2: &str = include_str!("../../../examples/consul-demo/consul.d/web-2.json");
const SIDECAR_1: &str = include_str!("../../../examples/consul-demo/sidecar/web-1.toml");
const SIDECAR_2: &str = include_str!("../../../examples/consul-demo/sidecar/web-2.toml");

const WITHIN: Duration = Duration::from_secs(20);
const EVERY: Duration = Duration::from_millis(50);
/// Consul's thresholds, which a check taken from a registration follows: critical at the
/// first failed probe, passing at the first good one (the example's definitions set neither
/// `failures_before_critical` nor `success_before_passing`).
const FALL: u32 = 1;
const RISE: u32 = 1;
/// The most jitter a check taken from a registration adds to its interval.
const JITTER: Duration = Duration::from_millis(100);

fn loopback() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// `text` with `from` (which must occur exactly once) replaced by `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "the example config no longer contains `{from}` exactly once"
    );
    text.replacen(from, to, 1)
}

/// `bind = "{from}"` moved to `to`.
fn replace_bind(text: &str, from: &str, to: SocketAddr) -> String {
    replace_once(
        text,
        &format!("bind = \"{from}\""),
        &format!("bind = \"{to}\""),
    )
}

fn duration(go: &str) -> Duration {
    if let Some(ms) = go.strip_suffix("ms") {
        Duration::from_millis(ms.parse().unwrap())
    } else {
        Duration::from_secs(go.strip_suffix('s').unwrap().parse().unwrap())
    }
}

/// One of the example's Consul definitions, checked to be what the example promises, with its
/// port (and its check's port) moved to `backend`.
fn definition(text: &str, id: &str, backend: &Backend) -> serde_json::Value {
    let mut doc: serde_json::Value = serde_json::from_str(text).unwrap();
    let service = &mut doc["service"];
    assert_eq!(service["name"], "web", "{text}");
    assert_eq!(service["id"], id, "{text}");
    assert_eq!(
        service["tags"],
        serde_json::json!(["urlprefix-/web"]),
        "{text}"
    );
    let port = service["port"].as_u64().unwrap();
    assert_eq!(
        service["check"]["tcp"],
        format!("127.0.0.1:{port}"),
        "the check probes the instance: {text}"
    );
    service["port"] = backend.addr().port().into();
    service["check"]["tcp"] = backend.addr().to_string().into();
    doc
}

/// interval, timeout of the example's declared check (both definitions declare the same).
fn declared_check() -> (Duration, Duration) {
    let check = |text: &str| {
        let doc: serde_json::Value = serde_json::from_str(text).unwrap();
        let check = &doc["service"]["check"];
        (
            duration(check["interval"].as_str().unwrap()),
            duration(check["timeout"].as_str().unwrap()),
        )
    };
    assert_eq!(check(WEB_1), check(WEB_2));
    check(WEB_1)
}

fn write_atomically(dir: &Path, name: &str, doc: &serde_json::Value) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, doc.to_string()).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// The backend that answered `GET {web}/web/hello`, or the failure.
async fn answer(client: &Client, web: SocketAddr) -> Result<String, String> {
    let reply = client.get(&format!("http://{web}/web/hello")).await?;
    if reply.status != 200 {
        return Err(format!("status {}: {}", reply.status, reply.text()));
    }
    Ok(reply.backend())
}

/// How many of 20 sequential requests each backend answered.
async fn tally(
    client: &Client,
    web: SocketAddr,
) -> Result<std::collections::BTreeMap<String, u32>, String> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..20 {
        *seen.entry(answer(client, web).await?).or_insert(0) += 1;
    }
    Ok(seen)
}

async fn until_backends(client: &Client, web: SocketAddr, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    eventually(WITHIN, EVERY, || {
        let want = want.clone();
        async move {
            let seen: BTreeSet<String> = tally(client, web).await?.into_keys().collect();
            if seen == want {
                Ok(())
            } else {
                Err(format!("saw {seen:?}, want {want:?}"))
            }
        }
    })
    .await;
}

fn get_json(admin: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let (status, body) = http_get(admin, path).map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{path}: {status} {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))
}

/// The active-health status (`unknown`, `up`, `down`) of the instance at `address` of service
/// `web` in `/api/services` (its `state` may also say `ejected`: passive health, which the
/// refused connections trigger too).
fn health_state(admin: SocketAddr, address: SocketAddr) -> Result<String, String> {
    let services = get_json(admin, "/api/services")?;
    services
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == "web")
        .flat_map(|s| s["instances"].as_array().cloned().unwrap_or_default())
        .find(|i| i["address"] == address.to_string())
        .map(|i| match i["health"]["status"].as_str() {
            Some(status) => Ok(status.to_owned()),
            None => Err(format!("no active health for {address}: {i}")),
        })
        .ok_or_else(|| format!("{address} not in {services}"))?
}

/// What one request of the load saw: when it started (since the stop began), and its outcome.
type Seen = Arc<Mutex<Vec<(Duration, Result<String, String>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_registry_balances_web_and_drops_a_stopped_instance() {
    let web_1 = Backend::start("web-1");
    let web_2 = Backend::start("web-2");
    let registry = tempfile::tempdir().unwrap();
    let dir = registry.path();
    write_atomically(dir, "web-1.json", &definition(WEB_1, "web-1", &web_1));
    write_atomically(dir, "web-2.json", &definition(WEB_2, "web-2", &web_2));
    let (admin, web) = (loopback(), loopback());
    let config = replace_bind(FILE_CONFIG, "127.0.0.1:9901", admin);
    let config = replace_bind(&config, "127.0.0.1:8080", web);
    let config = replace_once(
        &config,
        "dir = \"registry\"",
        &format!("dir = \"{}\"", dir.display()),
    );
    let _sluice = SluiceProcess::start(Path::new(BIN), &config, admin);
    let client = Client::http1();

    // Both registered instances answer on /web, in turn.
    until_backends(&client, web, &["web-1", "web-2"]).await;
    let counts = tally(&client, web).await.unwrap();
    assert!(
        counts.values().all(|n| *n >= 8),
        "round robin over two instances: {counts:?}"
    );
    let routes = get_json(admin, "/api/routes").unwrap();
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"] == "/web"),
        "{routes}"
    );
    assert_eq!(
        client
            .get(&format!("http://{web}/other"))
            .await
            .unwrap()
            .status,
        404,
        "only the tagged prefix is routed"
    );

    // web-2 stops while two clients keep sending.
    let (interval, timeout) = declared_check();
    let began = Arc::new(Mutex::new(None::<Instant>));
    let since = {
        let began = Arc::clone(&began);
        move || {
            began
                .lock()
                .unwrap()
                .map_or(Duration::ZERO, |t| t.elapsed())
        }
    };
    let seen: Seen = Arc::default();
    let stop_load = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (client, seen, stop, since) = (
            Client::http1(),
            Arc::clone(&seen),
            Arc::clone(&stop_load),
            since.clone(),
        );
        load.spawn(async move {
            while !stop.load(SeqCst) {
                let started = since();
                let got = answer(&client, web).await;
                seen.lock().unwrap().push((started, got));
            }
        });
    }
    // Let the load reach both instances before the stop (not an assertion: checked below).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let web_2_addr = web_2.addr();
    *began.lock().unwrap() = Some(Instant::now());
    tokio::task::spawn_blocking(move || web_2.stop())
        .await
        .unwrap();
    let stopped_after = since();

    // The declared check (tcp, `interval`, `timeout`) marks it down after FALL failed probes;
    // each round may be up to JITTER late. One second of margin for a busy box.
    let down_bound = FALL * (interval + JITTER) + timeout + Duration::from_secs(1);
    // Down, and soon after left out of the service by the routing policy (critical).
    eventually(down_bound, EVERY, || async {
        match health_state(admin, web_2_addr) {
            Ok(state) if state == "down" => Ok(()),
            Err(e) if e.contains(" not in ") => Ok(()),
            Ok(other) => Err(format!("web-2 is {other}")),
            Err(e) => Err(e),
        }
    })
    .await;
    let down_after = since();
    // Keep the load going a little after the verdict, then look at what the clients saw.
    tokio::time::sleep(interval).await;
    stop_load.store(true, SeqCst);
    while load.join_next().await.is_some() {}
    {
        let seen = seen.lock().unwrap();
        let failures: Vec<_> = seen.iter().filter(|(_, r)| r.is_err()).collect();
        assert!(
            failures.is_empty(),
            "no client-visible failure while web-2 stops: {failures:?}"
        );
        let before: BTreeSet<&str> = seen
            .iter()
            .filter(|(t, _)| t.is_zero())
            .filter_map(|(_, r)| r.as_deref().ok())
            .collect();
        assert_eq!(
            before,
            BTreeSet::from(["web-1", "web-2"]),
            "the load reached both before the stop"
        );
        let late: Vec<_> = seen
            .iter()
            .filter(|(t, r)| *t > stopped_after && r.as_deref() != Ok("web-1"))
            .collect();
        assert!(
            late.is_empty(),
            "requests started after web-2 stopped are answered by web-1: {late:?}"
        );
        let after = seen.iter().filter(|(t, _)| *t > down_after).count();
        assert!(after > 3, "traffic went on after the verdict: {after}");
        eprintln!(
            "{} requests, none failed; web-2 marked down {down_after:?} after the stop \
             (bound {down_bound:?})",
            seen.len()
        );
    }

    // web-2 comes back on the same port: its registration is still there, the check passes
    // RISE times and it takes traffic again.
    let web_2 = Backend::start_on("web-2", web_2_addr);
    let up_bound = RISE * (interval + JITTER) + timeout + Duration::from_secs(1);
    eventually(up_bound, EVERY, || async {
        match health_state(admin, web_2_addr)?.as_str() {
            "up" => Ok(()),
            other => Err(format!("web-2 is {other}")),
        }
    })
    .await;
    until_backends(&client, web, &["web-1", "web-2"]).await;

    // Deregistration (what a sidecar does before stopping its app): the file goes, and so does
    // the instance, from the catalog and from the rotation.
    std::fs::remove_file(dir.join("web-2.json")).unwrap();
    until_backends(&client, web, &["web-1"]).await;
    let catalog = get_json(admin, "/api/catalog").unwrap();
    let ids: Vec<&str> = catalog["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, ["web-1"], "{catalog}");
    let hits = web_2.hits();
    tally(&client, web).await.unwrap();
    assert_eq!(
        web_2.hits(),
        hits,
        "no request reaches a deregistered instance"
    );
}

/// What two Sluice processes must agree on: their route table and the instances they serve.
fn view(admin: SocketAddr) -> Result<(serde_json::Value, BTreeSet<String>), String> {
    let routes = get_json(admin, "/api/routes")?;
    let catalog = get_json(admin, "/api/catalog")?;
    if catalog["sources"][0]["synced"] != true || catalog["stale"] != false {
        return Err(format!("etcd not read, or stale: {catalog}"));
    }
    let has_instances = catalog["instances"]
        .as_array()
        .is_some_and(|i| !i.is_empty());
    if has_instances && catalog["last_rebuild"]["catalog_version"] != catalog["version"] {
        return Err(format!(
            "routes not rebuilt from the latest catalog: {catalog}"
        ));
    }
    let instances = catalog["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            format!(
                "{} {} {}:{} {}",
                i["service"], i["id"], i["address"], i["port"], i["tags"]
            )
        })
        .collect();
    Ok((routes, instances))
}

/// Waits until both processes show the same view, holding exactly the instances `ids`; returns
/// how long that took.
fn until_same_view(admins: [SocketAddr; 2], ids: &[&str], within: Duration) -> Duration {
    let start = Instant::now();
    eventually_blocking(
        &format!("both Sluice processes serve {ids:?}"),
        within,
        || {
            let (a, b) = (view(admins[0])?, view(admins[1])?);
            let have: Vec<String> =
                a.1.iter()
                    .map(|i| {
                        i.split(' ')
                            .nth(1)
                            .unwrap_or("")
                            .trim_matches('"')
                            .to_owned()
                    })
                    .collect();
            if a == b && have == ids {
                Ok(())
            } else {
                Err(format!("first: {a:?}\nsecond: {b:?}"))
            }
        },
    );
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sluices_watching_one_etcd_serve_the_same_routes() {
    // The registrations the example's sidecars make: name, id, port and tag as in the
    // definitions, each key on a lease.
    for (sidecar, id, port) in [(SIDECAR_1, "web-1", 8001), (SIDECAR_2, "web-2", 8002)] {
        for line in [
            "kind = \"etcd\"".to_owned(),
            "prefix = \"/sluice/services/\"".to_owned(),
            "name = \"web\"".to_owned(),
            format!("id = \"{id}\""),
            format!("port = {port}"),
            "tags = [\"urlprefix-/web\"]".to_owned(),
        ] {
            assert!(sidecar.contains(&line), "sidecar/{id}.toml lacks `{line}`");
        }
    }
    let etcd = Etcd::start();
    let web_1 = Backend::start("web-1");
    let web_2 = Backend::start("web-2");
    let value = |text: &str, id: &str, backend: &Backend| {
        definition(text, id, backend)["service"].to_string()
    };
    let key = |id: &str| format!("/sluice/services/web/{id}");

    let mut sluices = Vec::new();
    let mut webs = Vec::new();
    for (text, admin_at, web_at) in [
        (ETCD_CONFIG_1, "127.0.0.1:9911", "127.0.0.1:8081"),
        (ETCD_CONFIG_2, "127.0.0.1:9912", "127.0.0.1:8082"),
    ] {
        let (admin, web) = (loopback(), loopback());
        let config = replace_bind(text, admin_at, admin);
        let config = replace_bind(&config, web_at, web);
        let config = replace_once(&config, "http://127.0.0.1:2379", &etcd.endpoint());
        sluices.push(SluiceProcess::start(Path::new(BIN), &config, admin));
        webs.push(web);
    }
    let admins = [sluices[0].admin, sluices[1].admin];
    let client = Client::http1();
    until_same_view(admins, &[], WITHIN);

    // Registration: both instances, each on its registrant's lease.
    let lease_1 = etcd.grant_lease(60);
    let lease_2 = etcd.grant_lease(60);
    etcd.put_with_lease(&key("web-1"), &value(WEB_1, "web-1", &web_1), lease_1);
    etcd.put_with_lease(&key("web-2"), &value(WEB_2, "web-2", &web_2), lease_2);
    let took = until_same_view(admins, &["web-1", "web-2"], WITHIN);
    eprintln!("registration: both Sluice processes agree after {took:?}");
    let routes = view(admins[0]).unwrap().0;
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"] == "/web"),
        "{routes}"
    );
    for web in &webs {
        until_backends(&client, *web, &["web-1", "web-2"]).await;
    }

    // Deregistration: web-2's registrant revokes its lease (a sidecar stopping).
    etcd.revoke_lease(lease_2);
    let took = until_same_view(admins, &["web-1"], WITHIN);
    eprintln!("deregistration: both agree after {took:?}");
    for web in &webs {
        until_backends(&client, *web, &["web-1"]).await;
    }

    // Lease expiry: web-2 registers again on a short lease nobody refreshes (its sidecar
    // died). Both see it, then both drop it once etcd expires the lease.
    let ttl = Duration::from_secs(3);
    let granted = Instant::now();
    let lease_3 = etcd.grant_lease(ttl.as_secs());
    etcd.put_with_lease(&key("web-2"), &value(WEB_2, "web-2", &web_2), lease_3);
    until_same_view(admins, &["web-1", "web-2"], ttl);
    // etcd checks leases every 500 ms; a margin of 3 s for a busy machine.
    until_same_view(admins, &["web-1"], ttl + Duration::from_secs(3));
    let expired_after = granted.elapsed();
    assert!(
        etcd.get(&key("web-2")).is_none(),
        "the key went with its lease"
    );
    assert!(
        expired_after >= ttl - Duration::from_millis(500),
        "web-2 dropped after {expired_after:?}, before its lease could expire"
    );
    eprintln!("lease expiry: both dropped web-2 {expired_after:?} after the grant (ttl {ttl:?})");
    for web in &webs {
        until_backends(&client, *web, &["web-1"]).await;
    }
    for mut sluice in sluices {
        assert!(
            sluice.terminate(Duration::from_secs(5)).success(),
            "{}",
            sluice.stderr()
        );
    }
}

/// A child process sent SIGTERM (and waited for) when the test ends, also by a panic: the
/// sidecar then stops its app too.
struct StopOnDrop(std::process::Child);

impl StopOnDrop {
    fn stop(&mut self) -> std::process::ExitStatus {
        if let Ok(Some(status)) = self.0.try_wait() {
            return status;
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.0.wait().unwrap()
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A workspace binary built next to `sluice`: the README's test command (`scripts/test.sh`)
/// builds them before running the tests.
fn sibling_binary(name: &str) -> std::path::PathBuf {
    let path = Path::new(BIN).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p sluice-sidecar -p sluice-test-support \
         --bins`, or run the tests with scripts/test.sh",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_settings_come_from_kv_through_its_sidecar_and_follow_a_change() {
    // Seed 004's app settings in KV, as `consul kv put` left them.
    let etcd = Etcd::start();
    etcd.put("web/debug", "false");
    etcd.put("web/allowed_hosts", "example.com");

    // web-1 under the example's own sidecar configuration: it renders the settings from KV,
    // starts the app, registers it once its check passes, and keeps the settings current.
    let dir = tempfile::tempdir().unwrap();
    let app = loopback();
    assert_eq!(
        SIDECAR_1.matches("http://127.0.0.1:2379").count(),
        2,
        "sidecar/web-1.toml: registry and KV on the demo's etcd"
    );
    let config = SIDECAR_1.replace("http://127.0.0.1:2379", &etcd.endpoint());
    let config = replace_once(&config, "port = 8001", &format!("port = {}", app.port()));
    let config = replace_once(
        &config,
        "tcp = \"127.0.0.1:8001\"",
        &format!("tcp = \"{app}\""),
    );
    std::fs::write(dir.path().join("web-1.toml"), config).unwrap();
    let log = std::fs::File::create(dir.path().join("sidecar.log")).unwrap();
    let mut sidecar = StopOnDrop(
        std::process::Command::new(sibling_binary("sluice-sidecar"))
            .current_dir(dir.path())
            .args(["--config", "web-1.toml", "--"])
            .arg(sibling_binary("sluice-testbackend"))
            .args([
                "web-1",
                &app.to_string(),
                "--settings",
                "web-1.settings.json",
            ])
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    let (admin, web) = (loopback(), loopback());
    let config = replace_bind(ETCD_CONFIG_1, "127.0.0.1:9911", admin);
    let config = replace_bind(&config, "127.0.0.1:8081", web);
    let config = replace_once(&config, "http://127.0.0.1:2379", &etcd.endpoint());
    let _sluice = SluiceProcess::start(Path::new(BIN), &config, admin);

    let client = Client::http1();
    let sidecar_log = dir.path().join("sidecar.log");
    let settings = |want_debug: bool| {
        let (client, sidecar_log) = (&client, &sidecar_log);
        async move {
            let r = client.get(&format!("http://{web}/web/settings")).await?;
            let j = r.json();
            if r.status == 200
                && j["backend"] == "web-1"
                && j["settings"]["debug"] == want_debug
                && j["settings"]["allowed_hosts"] == "example.com"
            {
                Ok(())
            } else {
                let log = std::fs::read_to_string(sidecar_log).unwrap_or_default();
                Err(format!("{} {}\nsidecar log:\n{log}", r.status, r.text()))
            }
        }
    };
    eventually(WITHIN, EVERY, || settings(false)).await;
    // A changed key reaches the running app: the sidecar re-renders its settings.
    etcd.put("web/debug", "true");
    eventually(WITHIN, EVERY, || settings(true)).await;

    // The sidecar deregisters and stops its app on SIGTERM, exiting as the app did: the test
    // backend has no SIGTERM handler, so 128 + 15 (docs/sidecar.md, exit codes).
    let status = sidecar.stop();
    let log = std::fs::read_to_string(&sidecar_log).unwrap_or_default();
    assert_eq!(status.code(), Some(143), "sidecar: {status}\n{log}");
    assert!(log.contains("received SIGTERM"), "{log}");
}
