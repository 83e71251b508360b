//! Discovery operations through the real binary: route overrides read from a watched `[[kv]]`
//! key (file and etcd), `[[discovery]]` changes applied by a reload, the file registry seen
//! through inotify, and an etcd outage (stale catalog, metrics, resumed watch).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::{
    BIN, EVERY, WITHIN, addr, backends_seen, catalog, config, definition, until_backends,
    until_log, until_status, write_atomically,
};
use sluice_test_support::etcd::Etcd;
use sluice_test_support::{Backend, Client, SluiceProcess, eventually, http_get, http_request};

/// A static `[[discovery]]` source named `name` with one `web` instance tagged `/web`.
fn static_web(name: &str, id: &str, backend: &Backend, prefix: &str) -> String {
    format!(
        "[[discovery]]\nname = \"{name}\"\nkind = \"static\"\n[[discovery.instances]]\nname = \"web\"\n\
         id = \"{id}\"\naddress = \"127.0.0.1\"\nport = {}\ntags = [\"urlprefix-{prefix}\"]\n",
        backend.addr().port()
    )
}

fn metric_line(admin: SocketAddr, name: &str) -> Option<String> {
    let (_, metrics) = http_get(admin, "/metrics").ok()?;
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .map(str::to_owned)
}

async fn until_catalog(admin: SocketAddr, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    eventually(WITHIN, EVERY, || async {
        let listing = catalog(admin);
        if check(&listing) {
            Ok(())
        } else {
            Err(format!("{what}: {listing}"))
        }
    })
    .await;
}

fn reload(admin: SocketAddr) -> (u16, String) {
    http_request(admin, "POST", "/api/reload").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_from_a_kv_file_key_apply_without_reload_and_a_bad_line_keeps_the_last_good_set()
{
    let b1 = Backend::start("k1");
    let b2 = Backend::start("k2");
    let kv = tempfile::tempdir().unwrap();
    let key_dir = kv.path().join("sluice");
    std::fs::create_dir(&key_dir).unwrap();
    let (admin, web) = (addr(), addr());
    let rest = format!(
        "overrides_key = \"sluice/overrides\"\n[[kv]]\nsource = \"file\"\npath = \"{}\"\npoll = \"50ms\"\n{}",
        kv.path().display(),
        static_web("pinned", "web-1", &b1, "/web")
    );
    let process = SluiceProcess::start(Path::new(BIN), &config(admin, web, &rest), admin);
    let client = Client::http1();
    until_backends(&client, web, "/web", &["k1"]).await;

    // A canary and a new route, from the key: applied without a reload.
    let write_key = |text: &str| write_atomically(&key_dir, "overrides", text);
    let good = format!(
        "# canary\nroute add canary /web http://{b2}/ weight 0.5\nroute add manual /manual http://{b2}\n",
        b2 = b2.addr()
    );
    write_key(&good);
    until_backends(&client, web, "/web", &["k1", "k2"]).await;
    until_backends(&client, web, "/manual", &["k2"]).await;
    until_catalog(admin, "2 overrides applied", |c| {
        c["overrides"]["applied_commands"] == 2 && c["overrides"]["rejected"] == false
    })
    .await;

    // A bad line: reported with its line and column, the last good set keeps applying.
    write_key(&format!("route del web\nroute bogus /web\n{good}"));
    until_catalog(admin, "the bad value rejected", |c| {
        c["overrides"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("sluice/overrides:2:7: unknown command `route bogus`"))
    })
    .await;
    until_log(&process, "sluice/overrides:2:7").await;
    assert_eq!(
        metric_line(admin, "sluice_routing_overrides_rejected").as_deref(),
        Some("sluice_routing_overrides_rejected 1")
    );
    assert_eq!(
        backends_seen(&client, web, "/web").await.unwrap().len(),
        2,
        "the last good set (with the canary) still applies, not `route del web`"
    );

    // Fixed: the new set applies (web's own target removed, only the canary is left).
    write_key(&format!("route del web\n{good}"));
    until_backends(&client, web, "/web", &["k2"]).await;
    until_catalog(admin, "accepted again", |c| {
        c["overrides"]["rejected"] == false
    })
    .await;
    assert_eq!(
        metric_line(admin, "sluice_routing_overrides_rejected").as_deref(),
        Some("sluice_routing_overrides_rejected 0")
    );

    // The key removed: no KV overrides, the generated route alone.
    std::fs::remove_file(key_dir.join("overrides")).unwrap();
    until_backends(&client, web, "/web", &["k1"]).await;
    let manual = client.get(&format!("http://{web}/manual")).await.unwrap();
    assert_eq!(manual.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_from_an_etcd_key_follow_puts_and_deletes() {
    let etcd = Etcd::start();
    let b1 = Backend::start("x1");
    let b2 = Backend::start("x2");
    let (admin, web) = (addr(), addr());
    let rest = format!(
        "overrides_key = \"sluice/overrides\"\n[[kv]]\nsource = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"sluice/\"\n{}",
        etcd.endpoint(),
        static_web("pinned", "web-1", &b1, "/web")
    );
    let _process = SluiceProcess::start(Path::new(BIN), &config(admin, web, &rest), admin);
    let client = Client::http1();
    until_backends(&client, web, "/web", &["x1"]).await;

    etcd.put(
        "sluice/overrides",
        &format!(
            "route add canary /web http://{}/ weight 0.5\nroute del web /web\n",
            b2.addr()
        ),
    );
    until_backends(&client, web, "/web", &["x2"]).await;
    etcd.put(
        "sluice/overrides",
        "route add web /web http://not-an-ip:1\n",
    );
    until_catalog(admin, "rejected", |c| {
        c["overrides"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("sluice/overrides:1:20:"))
    })
    .await;
    assert_eq!(
        backends_seen(&client, web, "/web").await.unwrap().len(),
        1,
        "the last good set keeps applying"
    );
    etcd.delete("sluice/overrides");
    until_backends(&client, web, "/web", &["x1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_changes_and_removes_discovery_sources() {
    let b1 = Backend::start("d1");
    let b2 = Backend::start("d2");
    let b3 = Backend::start("d3");
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_atomically(
        one.path(),
        "d1.json",
        &definition("d1", &b1, &["urlprefix-/web"]),
    );
    write_atomically(
        two.path(),
        "d3.json",
        &definition("d3", &b3, &["urlprefix-/web"]),
    );
    let file_source = |dir: &Path| {
        format!(
            "[[discovery]]\nname = \"files\"\nkind = \"file\"\ndir = \"{}\"\n",
            dir.display()
        )
    };
    let (admin, web) = (addr(), addr());
    // Started without discovery: the first reload starts it.
    let process = SluiceProcess::start(Path::new(BIN), &config(admin, web, ""), admin);
    let client = Client::http1();
    let write_config = |rest: &str| {
        std::fs::write(process.config_path(), config(admin, web, rest)).unwrap();
    };

    write_config(&file_source(one.path()));
    let (status, body) = reload(admin);
    assert_eq!(status, 200, "{body}");
    until_backends(&client, web, "/web", &["d1"]).await;

    // A source added: the unchanged one keeps its watch (not restarted), the new one starts.
    write_config(&format!(
        "{}{}",
        file_source(one.path()),
        static_web("pinned", "api-1", &b2, "/api")
    ));
    let (status, body) = reload(admin);
    assert_eq!(status, 200, "{body}");
    until_backends(&client, web, "/api", &["d2"]).await;
    until_backends(&client, web, "/web", &["d1"]).await;
    until_log(&process, "kept=[\"files\"] started=[\"pinned\"] stopped=[]").await;

    // A changed source (another directory) restarts; its old instances go.
    write_config(&format!(
        "{}{}",
        file_source(two.path()),
        static_web("pinned", "api-1", &b2, "/api")
    ));
    let (status, body) = reload(admin);
    assert_eq!(status, 200, "{body}");
    until_backends(&client, web, "/web", &["d3"]).await;

    // A reload that fails validation changes nothing.
    write_config(&format!(
        "{}[[discovery]]\nname = \"broken\"\nkind = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]\n",
        file_source(two.path())
    ));
    let (status, body) = reload(admin);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid etcd endpoint"), "{body}");
    until_backends(&client, web, "/api", &["d2"]).await;
    until_backends(&client, web, "/web", &["d3"]).await;
    let names: Vec<String> = catalog(admin)["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["files", "pinned"]);

    // Every source removed: the discovered routes go.
    write_config("");
    let (status, body) = reload(admin);
    assert_eq!(status, 200, "{body}");
    until_status(&client, web, "/web", 404).await;
    assert_eq!(catalog(admin)["sources"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_registry_is_watched_with_inotify() {
    let b1 = Backend::start("n1");
    let b2 = Backend::start("n2");
    let registry = tempfile::tempdir().unwrap();
    let dir = registry.path();
    write_atomically(dir, "n1.json", &definition("n1", &b1, &["urlprefix-/web"]));
    let (admin, web) = (addr(), addr());
    // Polls an hour apart: only inotify can bring the changes below in time.
    let rest = format!(
        "[[discovery]]\nkind = \"file\"\ndir = \"{}\"\npoll_interval = \"1h\"\nfallback_poll_interval = \"1h\"\n",
        dir.display()
    );
    let _process = SluiceProcess::start(Path::new(BIN), &config(admin, web, &rest), admin);
    let client = Client::http1();
    until_backends(&client, web, "/web", &["n1"]).await;
    write_atomically(dir, "n2.json", &definition("n2", &b2, &["urlprefix-/web"]));
    until_backends(&client, web, "/web", &["n1", "n2"]).await;
    // Written in place (several events), not renamed.
    std::fs::write(
        dir.join("n1.json"),
        definition("n1", &b1, &["urlprefix-/other"]),
    )
    .unwrap();
    until_backends(&client, web, "/web", &["n2"]).await;
    std::fs::remove_file(dir.join("n2.json")).unwrap();
    until_status(&client, web, "/web", 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_keeps_routes_marks_them_stale_and_the_watch_resumes() {
    let mut etcd = Etcd::start();
    let b1 = Backend::start("s1");
    let b2 = Backend::start("s2");
    let key = |id: &str| format!("/sluice/services/web/{id}");
    let value = |id: &str, backend: &Backend| {
        serde_json::json!({"name": "web", "id": id, "address": "127.0.0.1",
                           "port": backend.addr().port(), "tags": ["urlprefix-/web"]})
        .to_string()
    };
    etcd.put(&key("s1"), &value("s1", &b1));
    let (admin, web) = (addr(), addr());
    let etcd_source = format!(
        "[[discovery]]\nname = \"registry\"\nkind = \"etcd\"\nendpoints = [\"{}\"]\n",
        etcd.endpoint()
    );
    let process = SluiceProcess::start(Path::new(BIN), &config(admin, web, &etcd_source), admin);
    let client = Client::http1();
    until_backends(&client, web, "/web", &["s1"]).await;
    assert_eq!(
        metric_line(admin, "sluice_discovery_stale{source=\"registry\"}").as_deref(),
        Some("sluice_discovery_stale{source=\"registry\"} 0")
    );

    etcd.stop();
    until_catalog(admin, "stale", |c| {
        c["stale"] == true && c["sources"][0]["stale"] == true && c["instances"][0]["stale"] == true
    })
    .await;
    until_log(&process, "keeping its last known instances, marked stale").await;
    let age = |c: &serde_json::Value| c["age_seconds"].as_f64().unwrap_or(-1.0);
    let first = age(&catalog(admin));
    assert!(first >= 0.0, "{}", catalog(admin));
    // The route keeps serving the last good instances meanwhile.
    until_backends(&client, web, "/web", &["s1"]).await;
    until_catalog(admin, "a growing age", |c| age(c) > first + 0.5).await;
    assert_eq!(
        metric_line(admin, "sluice_discovery_stale{source=\"registry\"}").as_deref(),
        Some("sluice_discovery_stale{source=\"registry\"} 1")
    );
    let stale_age = metric_line(
        admin,
        "sluice_discovery_stale_age_seconds{source=\"registry\"}",
    )
    .unwrap();
    let seconds: f64 = stale_age
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(seconds > 0.0, "{stale_age}");

    // A reload that adds a source keeps the unchanged etcd source as it is: stale, serving.
    let pinned = static_web("pinned", "api-1", &b2, "/api");
    std::fs::write(
        process.config_path(),
        config(admin, web, &format!("{etcd_source}{pinned}")),
    )
    .unwrap();
    let (status, body) = reload(admin);
    assert_eq!(status, 200, "{body}");
    until_backends(&client, web, "/api", &["s2"]).await;
    until_backends(&client, web, "/web", &["s1"]).await;
    assert_eq!(catalog(admin)["sources"][0]["stale"], true);

    // etcd back: a change made after the restart reaches the routes, staleness clears.
    etcd.restart();
    etcd.put(&key("s2"), &value("s2", &b2));
    until_backends(&client, web, "/web", &["s1", "s2"]).await;
    until_catalog(admin, "fresh again", |c| {
        c["stale"] == false && c["sources"][0]["stale"] == false && c["age_seconds"].is_null()
    })
    .await;
    assert_eq!(
        metric_line(admin, "sluice_discovery_stale{source=\"registry\"}").as_deref(),
        Some("sluice_discovery_stale{source=\"registry\"} 0")
    );
    etcd.delete(&key("s1"));
    until_backends(&client, web, "/web", &["s2"]).await;
}
