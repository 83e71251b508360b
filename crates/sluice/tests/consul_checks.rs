//! Checks declared in registrations, through the real binary and a file registry (and etcd), with
//! Consul's semantics: critical at the first failure unless `failures_before_critical` says
//! otherwise, each registration's check probed on the host and port it names, and
//! `deregister_critical_service_after` removing an instance until its registration is put
//! again.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    BIN, EVERY, WITHIN, addr, backends_seen, catalog, config, until_backends, until_log,
    write_atomically,
};
use sluice_test_support::etcd::Etcd;
use sluice_test_support::{Backend, Client, Mode, SluiceProcess, eventually, http_get};

fn file_discovery(dir: &Path) -> String {
    format!(
        "[[discovery]]\nkind = \"file\"\ndir = \"{}\"\npoll_interval = \"100ms\"\n",
        dir.display()
    )
}

/// A registration of service `web` routed on `/web`, with `check` as its Consul check.
fn registration(id: &str, backend: &Backend, check: serde_json::Value) -> String {
    serde_json::json!({"service": {
        "name": "web", "id": id, "address": "127.0.0.1", "port": backend.addr().port(),
        "tags": ["urlprefix-/web"], "check": check
    }})
    .to_string()
}

/// The instance at `address` of the proxy service `web`, as `GET /api/services` shows it;
/// `None` once it left the service.
fn instance_view(admin: SocketAddr, address: SocketAddr) -> Option<serde_json::Value> {
    let (status, body) = http_get(admin, "/api/services").unwrap();
    assert_eq!(status, 200, "{body}");
    let services: serde_json::Value = serde_json::from_str(&body).unwrap();
    services
        .as_array()?
        .iter()
        .filter(|s| s["name"] == "web")
        .flat_map(|s| s["instances"].as_array().cloned().unwrap_or_default())
        .find(|i| i["address"] == address.to_string())
}

fn health_status(view: &serde_json::Value) -> &str {
    view["health"]["status"].as_str().unwrap_or_default()
}

async fn until_up(admin: SocketAddr, addresses: &[SocketAddr]) {
    eventually(WITHIN, EVERY, || async {
        let states: Vec<Option<String>> = addresses
            .iter()
            .map(|a| instance_view(admin, *a).map(|v| health_status(&v).to_owned()))
            .collect();
        if states.iter().all(|s| s.as_deref() == Some("up")) {
            Ok(())
        } else {
            Err(format!("{states:?}"))
        }
    })
    .await;
}

/// Seed 004's definitions check every 30 s. Consul (and Fabio after it) drops an instance at
/// its check's first failure; with the proxy's own `fall = 3` it took three intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_leaves_the_routes_within_one_interval() {
    const INTERVAL: Duration = Duration::from_secs(30);
    const TIMEOUT: Duration = Duration::from_secs(1);
    // Process start-up aside, what a loaded 2-core machine may add: the probe's jitter
    // (≤ 100 ms), the rebuild, and this test's own polling.
    const MARGIN: Duration = Duration::from_secs(3);
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let registry = tempfile::tempdir().unwrap();
    let dir = registry.path();
    for (id, backend) in [("web-1", &b1), ("web-2", &b2)] {
        let check = serde_json::json!({"tcp": backend.addr().to_string(),
                                       "interval": "30s", "timeout": "1s"});
        write_atomically(
            dir,
            &format!("{id}.json"),
            &registration(id, backend, check),
        );
    }
    let (admin, web) = (addr(), addr());
    let config = config(admin, web, &file_discovery(dir));
    let _process = SluiceProcess::start(Path::new(BIN), &config, admin);
    let client = Client::http1();
    until_backends(&client, web, "/web/", &["b1", "b2"]).await;
    // Both had their first probe (sent at once when the check starts): b2 dies right after
    // its probe, the worst moment of the probe cycle.
    let b2_addr = b2.addr();
    until_up(admin, &[b1.addr(), b2_addr]).await;
    b2.stop();
    let died = Instant::now();

    // No traffic meanwhile: only the active check can take it out.
    eventually(INTERVAL + TIMEOUT + MARGIN, EVERY, || async {
        match instance_view(admin, b2_addr) {
            None => Ok(()),
            Some(view) if view["state"] == "down" => Ok(()),
            Some(view) => Err(format!("after {:?}: {view}", died.elapsed())),
        }
    })
    .await;
    let gone_after = died.elapsed();
    eprintln!(
        "the dead instance left after {gone_after:?} (interval {INTERVAL:?}, timeout {TIMEOUT:?})"
    );
    // The criterion itself, with only this test's polling period on top (the wait above
    // allows more so that a miss is reported with its figure, not as a timeout).
    assert!(
        gone_after <= INTERVAL + TIMEOUT + EVERY,
        "taken out after {gone_after:?}: more than one interval + timeout"
    );
    until_backends(&client, web, "/web/", &["b1"]).await;
}

/// `failures_before_critical: 3`: one failed probe does not take the instance out, the third
/// does. The two instances share an IP and are told apart by the check port each
/// registration names (Consul's `http` URL per registration), so one check fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_before_critical_and_a_check_port_per_registration() {
    let (t1, t2) = (Backend::start("t1"), Backend::start("t2"));
    let (s1, s2) = (Backend::start("s1"), Backend::start("s2"));
    let registry = tempfile::tempdir().unwrap();
    let dir = registry.path();
    for (id, traffic, status) in [("web-1", &t1, &s1), ("web-2", &t2, &s2)] {
        // Written from inside the registrant: `localhost` is the instance itself.
        let check = serde_json::json!({
            "http": format!("http://localhost:{}/health", status.addr().port()),
            "interval": "300ms", "timeout": "200ms", "failures_before_critical": 3
        });
        write_atomically(
            dir,
            &format!("{id}.json"),
            &registration(id, traffic, check),
        );
    }
    let (admin, web) = (addr(), addr());
    let config = config(admin, web, &file_discovery(dir));
    let _process = SluiceProcess::start(Path::new(BIN), &config, admin);
    let client = Client::http1();
    until_backends(&client, web, "/web/", &["t1", "t2"]).await;
    until_up(admin, &[t1.addr(), t2.addr()]).await;
    assert!(
        s1.hits() > 0 && s2.hits() > 0,
        "each instance is probed on its own check port"
    );
    let traffic = t1.hits() + t2.hits();

    // Only web-2's status page fails.
    s2.set_mode(Mode::Status(503));
    let mut survived_a_failure = false;
    eventually(WITHIN, Duration::from_millis(30), || {
        let seen = instance_view(admin, t2.addr());
        let status = seen.as_ref().map(|v| health_status(v).to_owned());
        let verdict = seen.as_ref().and_then(|v| {
            v["health"]["last_probe"]["verdict"]
                .as_str()
                .map(str::to_owned)
        });
        // Up although its latest probe failed: it outlived at least one failure.
        if status.as_deref() == Some("up") && verdict.is_some_and(|v| v.starts_with("down")) {
            survived_a_failure = true;
        }
        let out = seen.is_none() || status.as_deref() == Some("down");
        async move {
            if out {
                Ok(())
            } else {
                Err(format!("web-2 still in: {status:?}"))
            }
        }
    })
    .await;
    assert!(
        survived_a_failure,
        "web-2 was taken out without outliving a failed probe"
    );
    let web_1 = instance_view(admin, t1.addr()).unwrap();
    assert_eq!(
        health_status(&web_1),
        "up",
        "web-1's check is its own: {web_1}"
    );
    until_backends(&client, web, "/web/", &["t1"]).await;
    assert!(
        t1.hits() + t2.hits() > traffic,
        "the checks never went to the traffic ports, only the requests"
    );
}

/// Where the deregistration tests put registrations: a file registry directory or etcd.
enum Registry {
    Dir(tempfile::TempDir),
    Etcd(Etcd),
}

impl Registry {
    /// Puts (or puts again) `id`'s registration of service `web`, as a registrant does.
    fn put(&self, id: &str, backend: &Backend, check: serde_json::Value) {
        match self {
            Registry::Dir(dir) => write_atomically(
                dir.path(),
                &format!("{id}.json"),
                &registration(id, backend, check),
            ),
            Registry::Etcd(etcd) => {
                // etcd holds the bare definition; every put is a new revision, equal or not.
                let definition = serde_json::json!({
                    "name": "web", "id": id, "address": "127.0.0.1",
                    "port": backend.addr().port(), "tags": ["urlprefix-/web"], "check": check
                });
                etcd.put(
                    &format!("/sluice/services/web/{id}"),
                    &definition.to_string(),
                );
            }
        }
    }

    fn discovery(&self) -> String {
        match self {
            Registry::Dir(dir) => file_discovery(dir.path()),
            Registry::Etcd(etcd) => format!(
                "[[discovery]]\nkind = \"etcd\"\nendpoints = [\"{}\"]\n",
                etcd.endpoint()
            ),
        }
    }
}

/// `deregister_critical_service_after`, from a file registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_critical_file_registration_is_deregistered_until_put_again() {
    a_long_critical_instance_is_deregistered_until_registered_again(Registry::Dir(
        tempfile::tempdir().unwrap(),
    ))
    .await;
}

/// `deregister_critical_service_after`, from etcd: the same key put again (same value, a new
/// revision) brings the instance back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_critical_etcd_registration_is_deregistered_until_put_again() {
    a_long_critical_instance_is_deregistered_until_registered_again(Registry::Etcd(Etcd::start()))
        .await;
}

/// `deregister_critical_service_after`: critical that long, the instance goes until its
/// registration is put again, even healthy again in between (nothing probes it any more).
async fn a_long_critical_instance_is_deregistered_until_registered_again(registry: Registry) {
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let check = |backend: &Backend| {
        serde_json::json!({"http": format!("http://{}/health", backend.addr()),
                           "interval": "200ms", "timeout": "100ms",
                           "deregister_critical_service_after": "1s"})
    };
    registry.put("web-1", &b1, check(&b1));
    registry.put("web-2", &b2, check(&b2));
    let (admin, web) = (addr(), addr());
    let config = config(admin, web, &registry.discovery());
    let process = SluiceProcess::start(Path::new(BIN), &config, admin);
    let client = Client::http1();
    until_backends(&client, web, "/web/", &["b1", "b2"]).await;
    let deregistered = |admin| {
        catalog(admin)["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["deregistered"] == true)
            .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };

    let b1_addr = b1.addr();
    b1.stop();
    let died = Instant::now();
    until_log(&process, "deregistered until its registration is put again").await;
    assert!(
        died.elapsed() >= Duration::from_secs(1),
        "deregistered only after a second critical: {:?}",
        died.elapsed()
    );
    eventually(WITHIN, EVERY, || async {
        let ids = deregistered(admin);
        if ids == ["web-1"] {
            Ok(())
        } else {
            Err(format!("{ids:?}"))
        }
    })
    .await;
    let (_, metrics) = http_get(admin, "/metrics").unwrap();
    let counted = "sluice_discovery_deregistered_total{service=\"web\"} 1";
    assert!(metrics.contains(counted), "`{counted}` missing:\n{metrics}");

    // Back on its port and healthy, but deregistered: nothing routes to it or probes it.
    let b1 = Backend::start_on("b1", b1_addr);
    let check_b1 = check(&b1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        backends_seen(&client, web, "/web/").await.unwrap(),
        ["b2".to_owned()].into(),
        "a deregistered instance stays out"
    );
    assert_eq!(b1.hits(), 0, "and is not probed");
    assert_eq!(deregistered(admin), ["web-1"]);

    // The registrant writes its registration again, unchanged (as a restarted one does).
    registry.put("web-1", &b1, check_b1);
    until_backends(&client, web, "/web/", &["b1", "b2"]).await;
    assert!(deregistered(admin).is_empty());
    until_log(&process, "registered again").await;
}
