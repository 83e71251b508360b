//! Discovery through the real binary: Consul-format definition files (and etcd keys) with
//! `urlprefix-` tags become routes served by the embedded urlprefix policy; removing a
//! registration removes its instance; a malformed document or a bad tag is logged and skipped.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::{
    BIN, EVERY, WITHIN, addr, backends_seen, catalog, config, definition, until_backends,
    until_log, write_atomically,
};
use sluice_test_support::etcd::Etcd;
use sluice_test_support::{Backend, Client, SluiceProcess, eventually, free_port, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_registry_routes_by_urlprefix_tags() {
    let b1 = Backend::start("b1");
    let b2 = Backend::start("b2");
    let registry = tempfile::tempdir().unwrap();
    let dir = registry.path();
    write_atomically(
        dir,
        "web-1.json",
        &definition("web-1", &b1, &["urlprefix-/web"]),
    );
    write_atomically(
        dir,
        "web-2.json",
        &definition("web-2", &b2, &["urlprefix-/web"]),
    );
    let (admin, web) = (addr(), addr());
    let discovery = format!(
        "[[discovery]]\nkind = \"file\"\ndir = \"{}\"\npoll_interval = \"100ms\"\n",
        dir.display()
    );
    let process = SluiceProcess::start(Path::new(BIN), &config(admin, web, &discovery), admin);
    let client = Client::http1();

    until_backends(&client, web, "/web/page", &["b1", "b2"]).await;
    let listing = catalog(admin);
    assert_eq!(
        listing["instances"].as_array().unwrap().len(),
        2,
        "{listing}"
    );
    assert_eq!(listing["instances"][0]["source"], "file");
    assert_eq!(listing["instances"][0]["stale"], false);
    assert_eq!(listing["stale"], false);
    // The rebuild report is stored just after the new table is swapped in ("unchanged" when a
    // later poll rebuilt the same table, which a slow machine sees).
    eventually(WITHIN, EVERY, || async {
        let listing = catalog(admin);
        let report = &listing["last_rebuild"];
        let result = report["result"].as_str().unwrap_or_default();
        if matches!(result, "ok" | "unchanged")
            && report["error"].is_null()
            && report["routes"] == 1
        {
            Ok(())
        } else {
            Err(format!("{listing}"))
        }
    })
    .await;
    let unrouted = client.get(&format!("http://{web}/other")).await.unwrap();
    assert_eq!(unrouted.status, 404, "only tagged prefixes are routed");

    // Deregistration: the file goes, so does the instance.
    std::fs::remove_file(dir.join("web-2.json")).unwrap();
    until_backends(&client, web, "/web/page", &["b1"]).await;

    // A malformed file is skipped with path:line:col; the rest keeps serving.
    std::fs::write(
        dir.join("broken.json"),
        "{\n  \"service\": {\"name\": \"web\",,}\n}",
    )
    .unwrap();
    let expected = format!("{}:2:", dir.join("broken.json").display());
    until_log(&process, &expected).await;
    // The log line is written when the file is read; the catalog follows after the debounce.
    eventually(WITHIN, EVERY, || async {
        let listing = catalog(admin);
        let invalid = listing["sources"][0]["invalid"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if invalid.starts_with(&expected) {
            Ok(())
        } else {
            Err(format!("{listing}"))
        }
    })
    .await;
    assert_eq!(
        backends_seen(&client, web, "/web/page")
            .await
            .unwrap()
            .len(),
        1
    );

    // A bad tag is logged and skipped; the instance's good tag still routes.
    write_atomically(
        dir,
        "web-2.json",
        &definition("web-2", &b2, &["urlprefix-/web", "urlprefix-/api bogus=1"]),
    );
    until_backends(&client, web, "/web/page", &["b1", "b2"]).await;
    until_log(&process, "unknown option `bogus`").await;

    let (status, metrics) = http_get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    for name in [
        "sluice_discovery_instances{source=\"file\"} 2",
        "sluice_discovery_stale{source=\"file\"} 0",
        "sluice_discovery_invalid_documents{source=\"file\"} 1",
        "sluice_route_rebuilds_total{result=\"ok\"}",
        "sluice_route_rebuild_duration_seconds_count",
        "sluice_discovery_route_errors_total{kind=\"tag\"}",
    ] {
        assert!(metrics.contains(name), "`{name}` missing from:\n{metrics}");
    }
    drop(process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_registry_routes_and_follows_deletes() {
    let etcd = Etcd::start();
    let b1 = Backend::start("e1");
    let b2 = Backend::start("e2");
    let key = |id: &str| format!("/sluice/services/web/{id}");
    let value = |id: &str, backend: &Backend| {
        serde_json::json!({"name": "web", "id": id, "address": "127.0.0.1",
                           "port": backend.addr().port(), "tags": ["urlprefix-/web strip=/web"]})
        .to_string()
    };
    etcd.put(&key("web-1"), &value("web-1", &b1));
    etcd.put(&key("web-2"), &value("web-2", &b2));
    let (admin, web) = (addr(), addr());
    let discovery = format!(
        "[[discovery]]\nkind = \"etcd\"\nendpoints = [\"{}\"]\n",
        etcd.endpoint()
    );
    let process = SluiceProcess::start(Path::new(BIN), &config(admin, web, &discovery), admin);
    let client = Client::http1();
    until_backends(&client, web, "/web/x", &["e1", "e2"]).await;
    assert_eq!(catalog(admin)["sources"][0]["kind"], "etcd");

    etcd.delete(&key("web-2"));
    until_backends(&client, web, "/web/x", &["e1"]).await;

    etcd.put(&key("broken"), "{\"name\": \"web\", \"port\": }");
    until_log(&process, &format!("{}:1:", key("broken"))).await;
    assert_eq!(
        backends_seen(&client, web, "/web/x").await.unwrap().len(),
        1
    );
    drop(process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_checks_feed_the_active_checker() {
    let b1 = Backend::start("h1");
    let b2 = Backend::start("h2");
    let registry = tempfile::tempdir().unwrap();
    let dir = registry.path();
    let with_check = |id: &str, backend: &Backend| {
        serde_json::json!({"service": {
            "name": "web", "id": id, "address": "127.0.0.1", "port": backend.addr().port(),
            "tags": ["urlprefix-/web"],
            "check": {"http": format!("http://localhost:{}/health", backend.addr().port()),
                      "interval": "200ms", "timeout": "100ms"}
        }})
        .to_string()
    };
    write_atomically(dir, "h1.json", &with_check("h1", &b1));
    write_atomically(dir, "h2.json", &with_check("h2", &b2));
    let (admin, web) = (addr(), addr());
    let discovery = format!(
        "[[discovery]]\nkind = \"file\"\ndir = \"{}\"\npoll_interval = \"100ms\"\n",
        dir.display()
    );
    let _process = SluiceProcess::start(Path::new(BIN), &config(admin, web, &discovery), admin);
    let client = Client::http1();
    until_backends(&client, web, "/web/", &["h1", "h2"]).await;

    // h2's check starts failing: the checker marks it down and traffic leaves it; then the
    // routing policy, told it is critical, leaves it out of the service (route_options.rs
    // follows it back).
    b2.set_mode(sluice_test_support::Mode::Status(503));
    let down = b2.addr().to_string();
    eventually(WITHIN, EVERY, || async {
        let (_, body) = http_get(admin, "/api/services").map_err(|e| e.to_string())?;
        let services: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let states: Vec<(String, String)> = services[0]["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["address"].as_str().unwrap_or_default().to_owned(),
                    i["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let expected = states
            .iter()
            .all(|(address, state)| (state == "down") == (*address == down));
        let h1_only = states.len() == 1 && states[0].0 != down;
        if (states.len() == 2 && expected) || h1_only {
            Ok(())
        } else {
            Err(format!("{states:?}"))
        }
    })
    .await;
    let hits = b2.hits();
    until_backends(&client, web, "/web/", &["h1"]).await;
    // Only probes (5 per second) reach h2 now, no client request is tried on it first.
    assert!(
        b2.hits() - hits < 20,
        "{} requests reached h2",
        b2.hits() - hits
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_routing_policy_that_fails_keeps_the_last_good_table() {
    let b1 = Backend::start("p1");
    let b2 = Backend::start("p2");
    let registry = tempfile::tempdir().unwrap();
    let dir = registry.path();
    // The misbehaving test guest routes `/<id>` to each instance, and panics on an id `panic`.
    write_atomically(dir, "w1.json", &definition("w1", &b1, &[]));
    let (admin, web) = (addr(), addr());
    let discovery = format!(
        "[[discovery]]\nkind = \"file\"\ndir = \"{}\"\npoll_interval = \"100ms\"\n\
         [[policy]]\nname = \"per-id\"\nfile = \"{}\"\nworld = \"routing\"\ntimeout = \"1s\"\n",
        dir.display(),
        sluice_policy_test_artifacts::MISBEHAVING_ROUTING
    );
    let text =
        config(admin, web, &discovery).replace("[routing]\n", "[routing]\npolicy = \"per-id\"\n");
    let process = SluiceProcess::start(Path::new(BIN), &text, admin);
    let client = Client::http1();
    until_backends(&client, web, "/w1", &["p1"]).await;

    write_atomically(dir, "panic.json", &definition("panic", &b2, &[]));
    eventually(WITHIN, EVERY, || async {
        let listing = catalog(admin);
        if listing["last_rebuild"]["result"] == "policy_failed" {
            Ok(())
        } else {
            Err(format!("{listing}"))
        }
    })
    .await;
    until_log(&process, "the last good table keeps serving").await;
    // The table from before the failure still serves; the failing catalog added nothing.
    assert_eq!(backends_seen(&client, web, "/w1").await.unwrap().len(), 1);
    let reply = client.get(&format!("http://{web}/panic")).await.unwrap();
    assert_eq!(reply.status, 404);

    std::fs::remove_file(dir.join("panic.json")).unwrap();
    write_atomically(dir, "w2.json", &definition("w2", &b2, &[]));
    until_backends(&client, web, "/w2", &["p2"]).await;
    let (_, metrics) = http_get(admin, "/metrics").unwrap();
    assert!(
        metrics.contains("sluice_route_rebuilds_total{result=\"policy_failed\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_routes_open_and_close_their_own_listeners() {
    let b1 = Backend::start("t1");
    let registry = tempfile::tempdir().unwrap();
    let dir = registry.path();
    let port = free_port();
    let (admin, web) = (addr(), addr());
    let tag = format!("urlprefix-:{port} proto=tcp");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_tag = format!("urlprefix-:{} proto=tcp", busy.local_addr().unwrap().port());
    write_atomically(dir, "t1.json", &definition("t1", &b1, &[&tag, &busy_tag]));
    let discovery = format!(
        "[[discovery]]\nkind = \"file\"\ndir = \"{}\"\npoll_interval = \"100ms\"\n",
        dir.display()
    );
    let text = config(admin, web, &discovery)
        .replace("[routing]\n", "[routing]\ntcp_bind = \"127.0.0.1\"\n");
    let process = SluiceProcess::start(Path::new(BIN), &text, admin);
    let client = Client::http1();
    // HTTP spoken through the TCP relay reaches the instance.
    let tcp: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    until_backends(&client, tcp, "/", &["t1"]).await;
    until_log(&process, "the port cannot be bound").await;
    let (_, listeners) = http_get(admin, "/api/listeners").unwrap();
    assert!(
        listeners.contains(&format!("discovered-tcp-{port}")),
        "{listeners}"
    );

    // Deregistered: the listener closes.
    std::fs::remove_file(dir.join("t1.json")).unwrap();
    eventually(WITHIN, EVERY, || async {
        match std::net::TcpStream::connect(tcp) {
            Err(_) => Ok(()),
            Ok(_) => Err(format!("{tcp} still accepts")),
        }
    })
    .await;
    drop(busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_overrides_add_a_canary_and_a_route() {
    let b1 = Backend::start("o1");
    let b2 = Backend::start("o2");
    let (admin, web) = (addr(), addr());
    let discovery = format!(
        "[[discovery]]\nkind = \"static\"\n[[discovery.instances]]\nname = \"web\"\nid = \"web-1\"\n\
         address = \"127.0.0.1\"\nport = {}\ntags = [\"urlprefix-/web\"]\n",
        b1.addr().port()
    );
    let overrides = format!(
        "overrides = \"\"\"\nroute add canary /web http://{b2}/ weight 0.5\nroute add manual /manual http://{b2}\n\"\"\"\n",
        b2 = b2.addr()
    );
    let text =
        config(admin, web, &discovery).replace("[routing]\n", &format!("[routing]\n{overrides}"));
    let _process = SluiceProcess::start(Path::new(BIN), &text, admin);
    let client = Client::http1();
    until_backends(&client, web, "/web", &["o1", "o2"]).await;
    until_backends(&client, web, "/manual", &["o2"]).await;
    let (_, routes) = http_get(admin, "/api/routes").unwrap();
    assert!(
        routes.contains("web@/web"),
        "a canary route is its own service: {routes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_discovered_routes_and_merges_the_new_file() {
    let b1 = Backend::start("r1");
    let b2 = Backend::start("r2");
    let registry = tempfile::tempdir().unwrap();
    let dir = registry.path();
    write_atomically(dir, "r1.json", &definition("r1", &b1, &["urlprefix-/web"]));
    let (admin, web) = (addr(), addr());
    let discovery = format!(
        "[[discovery]]\nkind = \"file\"\ndir = \"{}\"\npoll_interval = \"100ms\"\n",
        dir.display()
    );
    let process = SluiceProcess::start(Path::new(BIN), &config(admin, web, &discovery), admin);
    let client = Client::http1();
    until_backends(&client, web, "/web", &["r1"]).await;

    // The file gains a static route; the discovered one must survive the reload.
    let file_route = format!(
        "[[route]]\npath = \"/static\"\nservice = \"pinned\"\n[[service]]\nname = \"pinned\"\ninstances = [\"{}\"]\n",
        b2.addr()
    );
    std::fs::write(
        process.config_path(),
        format!("{}{file_route}", config(admin, web, &discovery)),
    )
    .unwrap();
    let (status, body) = sluice_test_support::http_request(admin, "POST", "/api/reload").unwrap();
    assert_eq!(status, 200, "{body}");
    until_backends(&client, web, "/static", &["r2"]).await;
    until_backends(&client, web, "/web", &["r1"]).await;
    // And discovery keeps working after the reload.
    write_atomically(dir, "r2.json", &definition("r2", &b2, &["urlprefix-/web"]));
    until_backends(&client, web, "/web", &["r1", "r2"]).await;
}
