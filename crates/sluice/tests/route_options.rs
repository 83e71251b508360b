//! Route options through the real binary, from `[[route]]` keys and from `urlprefix-` tags in
//! a file registry alike: `redirect` (Fabio `redirect=`, nginx `return 301`), `allow`/`deny`
//! (Fabio `allow=`/`deny=`), `upstream_host` (Fabio `host=`, nginx `proxy_set_header Host`),
//! TLS to instances (`proto=https`, `tlsskipverify=`), and health from the active checker
//! taking critical instances out of the routes and back.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_test_support::certs::{CertFiles, Leaf, TestCa};
use sluice_test_support::{Backend, Client, Mode, SluiceProcess, eventually, free_port, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const WITHIN: Duration = Duration::from_secs(20);
const EVERY: Duration = Duration::from_millis(100);

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn write_atomically(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn head(admin: SocketAddr, web: SocketAddr, log: &Path) -> String {
    format!(
        "[admin]\nbind = \"{admin}\"\n[access_log]\npath = {log:?}\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n"
    )
}

fn file_registry(dir: &Path) -> String {
    format!(
        "[routing]\ndebounce = \"20ms\"\n\
         [[discovery]]\nkind = \"file\"\ndir = {dir:?}\npoll_interval = \"100ms\"\n"
    )
}

/// Waits until `path` answers something other than 404 (the route exists).
async fn until_routed(client: &Client, web: SocketAddr, path: &str) {
    eventually(WITHIN, EVERY, || async {
        let reply = client.get(&format!("http://{web}{path}")).await?;
        if reply.status == 404 {
            Err(format!("{path}: no route yet"))
        } else {
            Ok(())
        }
    })
    .await;
}

/// `sluice_route_denied_total` of `route` (0 before the first refusal).
fn denied_count(admin: SocketAddr, route: &str) -> u64 {
    let (_, metrics) = http_get(admin, "/metrics").unwrap();
    metrics
        .lines()
        .find(|l| {
            l.starts_with("sluice_route_denied_total") && l.contains(&format!("route=\"{route}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// What both the static and the tag-generated routes must do. `backend` serves the routes
/// that forward; `denied_route` is the name the `/admin` route has in metrics.
async fn assert_route_options(
    client: &Client,
    admin: SocketAddr,
    web: SocketAddr,
    backend: &Backend,
    denied_route: &str,
    log: &Path,
) {
    // Redirect: status and Location, `$path` replaced, the query kept, nothing forwarded.
    let denied_before = denied_count(admin, denied_route);
    let hits = backend.hits();
    let reply = client
        .get(&format!("http://{web}/old/page?x=1"))
        .await
        .unwrap();
    assert_eq!(reply.status, 301, "{}", reply.text());
    assert_eq!(
        reply.headers["location"],
        "https://new.example.com/old/page?x=1"
    );
    assert!(reply.headers.contains_key("x-request-id"));
    assert_eq!(backend.hits(), hits, "a redirect never reaches an instance");

    // deny: the loopback client is refused with the JSON error body; allow lets it in, and
    // an allow list without it refuses it.
    let reply = client.get(&format!("http://{web}/admin/x")).await.unwrap();
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.headers["content-type"], "application/json");
    let body = reply.json();
    assert_eq!(body["error"], "access_denied", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("127.0.0.1"),
        "{body}"
    );
    assert_eq!(
        body["request_id"],
        reply.headers["x-request-id"].to_str().unwrap()
    );
    let reply = client.get(&format!("http://{web}/open/x")).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = client.get(&format!("http://{web}/lan/x")).await.unwrap();
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(backend.hits(), hits + 1, "only /open reached the instance");

    // upstream_host: a fixed name, each instance's address, or (by default) the client's.
    let host_seen = |reply: sluice_test_support::Reply| {
        let json = reply.json();
        (
            json["headers"]["host"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            json["headers"]["x-forwarded-host"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let named = client.get(&format!("http://{web}/named/x")).await.unwrap();
    assert_eq!(
        host_seen(named),
        ("api.internal".to_owned(), web.to_string()),
        "the name upstream, the client's host in X-Forwarded-Host"
    );
    let dst = client.get(&format!("http://{web}/dst/x")).await.unwrap();
    assert_eq!(host_seen(dst).0, backend.addr().to_string());
    let plain = client.get(&format!("http://{web}/open/y")).await.unwrap();
    assert_eq!(
        host_seen(plain).0,
        web.to_string(),
        "the default is unchanged"
    );

    // Counted, and access-logged like every answer.
    assert_eq!(denied_count(admin, denied_route), denied_before + 1);
    let (_, metrics) = http_get(admin, "/metrics").unwrap();
    assert!(
        metrics.contains("sluice_route_redirects_total{"),
        "{metrics}"
    );
    eventually(WITHIN, EVERY, || async {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let denied = lines.iter().any(|l| {
            l["status"] == 403 && l["error"] == "access_denied" && l["path"] == "/admin/x"
        });
        let redirected = lines
            .iter()
            .any(|l| l["status"] == 301 && l["path"] == "/old/page?x=1");
        if denied && redirected {
            Ok(())
        } else {
            Err(format!("access log lacks the 403 or the 301:\n{text}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_routes_redirect_refuse_and_set_the_upstream_host() {
    let backend = Backend::start("static");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (admin, web) = (addr(), addr());
    let route = |path: &str, extra: &str| {
        format!("[[route]]\npath = \"{path}\"\nservice = \"app\"\n{extra}\n")
    };
    let config = format!(
        "{}\
         [[route]]\npath = \"/old\"\nredirect = {{ code = 301, url = \"https://new.example.com$path\" }}\n\
         {}{}{}{}{}\
         [[service]]\nname = \"app\"\ninstances = [\"{}\"]\n",
        head(admin, web, &log),
        route("/admin", "deny = [\"127.0.0.0/8\", \"::1\"]"),
        route("/open", "allow = [\"127.0.0.1\", \"::1\"]"),
        route("/lan", "allow = [\"10.0.0.0/8\"]"),
        route("/named", "upstream_host = \"api.internal\""),
        route("/dst", "upstream_host = \"dst\""),
        backend.addr()
    );
    let _process = SluiceProcess::start(Path::new(BIN), &config, admin);
    let client = Client::http1();
    assert_route_options(&client, admin, web, &backend, "/admin", &log).await;
    let (_, routes) = http_get(admin, "/api/routes").unwrap();
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
    let old = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "/old")
        .unwrap();
    assert_eq!(old["redirect"]["code"], 301, "{old}");
    assert_eq!(old["service"], serde_json::Value::Null, "{old}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urlprefix_tags_redirect_refuse_and_set_the_upstream_host() {
    let backend = Backend::start("tagged");
    let registry = tempfile::tempdir().unwrap();
    let log = registry.path().join("access.log");
    let defs = tempfile::tempdir().unwrap();
    let tags = [
        "urlprefix-/old redirect=301,https://new.example.com$path",
        "urlprefix-/admin deny=ip:127.0.0.0/8,ip:::1",
        "urlprefix-/open allow=ip:127.0.0.1,ip:::1",
        "urlprefix-/lan allow=ip:10.0.0.0/8",
        "urlprefix-/named host=api.internal",
        "urlprefix-/dst host=dst",
    ];
    write_atomically(
        defs.path(),
        "app.json",
        &serde_json::json!({"service": {
            "name": "app", "id": "app-1", "address": "127.0.0.1",
            "port": backend.addr().port(), "tags": tags,
        }})
        .to_string(),
    );
    let (admin, web) = (addr(), addr());
    let config = format!("{}{}", head(admin, web, &log), file_registry(defs.path()));
    let process = SluiceProcess::start(Path::new(BIN), &config, admin);
    let client = Client::http1();
    for path in ["/old", "/admin", "/open", "/lan", "/named", "/dst"] {
        until_routed(&client, web, path).await;
    }
    assert!(
        !process.stderr().contains("route skipped"),
        "every option is served:\n{}",
        process.stderr()
    );
    assert_route_options(&client, admin, web, &backend, "discovered:/admin", &log).await;
}

/// An HTTPS instance (HTTP/1.1) with `cert`, answering `tls <name> host=<Host header>`.
async fn https_backend(name: &'static str, cert: &CertFiles) -> SocketAddr {
    let tls = cert.server_tls(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok((stream, _)) = tls.accept(tcp, Duration::from_secs(5)).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    let host = req
                        .headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(format!(
                                "tls {name} host={host}"
                            ))),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_https_tags_and_service_tls_reach_tls_instances() {
    let ca = TestCa::new("Instance CA");
    let other = TestCa::new("Unrelated CA");
    // The instances' certificates name their IP: that is what they are verified against.
    let trusted = https_backend("verified", &ca.issue(&Leaf::server("v", &["127.0.0.1"]))).await;
    let foreign = https_backend("foreign", &other.issue(&Leaf::server("f", &["127.0.0.1"]))).await;
    let defs = tempfile::tempdir().unwrap();
    let definition = |id: &str, service: &str, port: u16, tag: &str| {
        serde_json::json!({"service": {
            "name": service, "id": id, "address": "127.0.0.1", "port": port, "tags": [tag],
        }})
        .to_string()
    };
    write_atomically(
        defs.path(),
        "secure.json",
        &definition(
            "secure-1",
            "secure",
            trusted.port(),
            "urlprefix-/secure proto=https",
        ),
    );
    write_atomically(
        defs.path(),
        "skip.json",
        &definition(
            "skip-1",
            "skip",
            foreign.port(),
            "urlprefix-/skip proto=https tlsskipverify=true",
        ),
    );
    write_atomically(
        defs.path(),
        "untrusted.json",
        &definition(
            "untrusted-1",
            "untrusted",
            foreign.port(),
            "urlprefix-/untrusted proto=https",
        ),
    );
    let (admin, web) = (addr(), addr());
    let log = defs.path().join("access.log");
    // The file gives the CA of the tagged services (`secure`, `untrusted`), and a static
    // route to the same verified instance through [service.tls].
    let config = format!(
        "{}{}\
         [[service]]\nname = \"secure\"\n[service.tls]\nca = {:?}\n\
         [[service]]\nname = \"untrusted\"\nretries = {{ attempts = 0 }}\n[service.tls]\nca = {:?}\n\
         [[route]]\npath = \"/static\"\nservice = \"static\"\n\
         [[service]]\nname = \"static\"\ninstances = [\"{trusted}\"]\n[service.tls]\nca = {:?}\n",
        head(admin, web, &log),
        file_registry(defs.path()),
        ca.ca_path,
        ca.ca_path,
        ca.ca_path,
    );
    let _process = SluiceProcess::start(Path::new(BIN), &config, admin);
    let client = Client::http1();
    for path in ["/secure", "/skip", "/untrusted"] {
        until_routed(&client, web, path).await;
    }
    let text = |path: &'static str| {
        let client = &client;
        async move {
            let reply = client.get(&format!("http://{web}{path}")).await.unwrap();
            (reply.status.as_u16(), reply.text())
        }
    };
    assert_eq!(
        text("/secure").await,
        (200, format!("tls verified host={web}"))
    );
    assert_eq!(
        text("/static").await,
        (200, format!("tls verified host={web}"))
    );
    assert_eq!(
        text("/skip").await,
        (200, format!("tls foreign host={web}")),
        "tlsskipverify accepts a certificate from any CA"
    );
    let (status, body) = text("/untrusted").await;
    assert_eq!(status, 502, "verification stays on unless asked: {body}");
    assert!(body.contains("TLS handshake"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_check_takes_an_instance_out_of_the_routes_and_back() {
    let b1 = Backend::start("h1");
    let b2 = Backend::start("h2");
    let defs = tempfile::tempdir().unwrap();
    let definition = |id: &str, backend: &Backend| {
        serde_json::json!({"service": {
            "name": "web", "id": id, "address": "127.0.0.1", "port": backend.addr().port(),
            "tags": ["urlprefix-/web"],
            "check": {"http": format!("http://{}/health", backend.addr()),
                      "interval": "200ms", "timeout": "150ms"}
        }})
        .to_string()
    };
    write_atomically(defs.path(), "h1.json", &definition("h1", &b1));
    write_atomically(defs.path(), "h2.json", &definition("h2", &b2));
    let (admin, web) = (addr(), addr());
    let log = defs.path().join("access.log");
    let config = format!("{}{}", head(admin, web, &log), file_registry(defs.path()));
    let process = SluiceProcess::start(Path::new(BIN), &config, admin);
    // The instances of `web` in `state` (`active` or `down`).
    let listed = |state: &str| {
        let (_, body) = http_get(admin, "/api/services").unwrap();
        let services: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut found: Vec<String> = services
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == "web")
            .flat_map(|s| s["instances"].as_array().cloned().unwrap_or_default())
            .filter(|i| i["state"] == state)
            .map(|i| i["address"].as_str().unwrap_or_default().to_owned())
            .collect();
        found.sort();
        found
    };
    let instances = || listed("active");
    let mut both = vec![b1.addr().to_string(), b2.addr().to_string()];
    both.sort();
    let until = |want: Vec<String>| async move {
        eventually(WITHIN, EVERY, || {
            let want = want.clone();
            async move {
                let found = instances();
                if found == want {
                    Ok(())
                } else {
                    Err(format!("instances {found:?}, want {want:?}"))
                }
            }
        })
        .await;
    };
    until(both.clone()).await;

    // h1's check fails: after `fall` probes it leaves the routes (the policy skips critical
    // instances), and traffic only reaches h2.
    b1.set_mode(Mode::Status(500));
    until(vec![b2.addr().to_string()]).await;
    // It stays in the proxy's service, down, where the proxy's checker keeps probing it.
    assert_eq!(listed("down"), [b1.addr().to_string()]);
    let client = Client::http1();
    for _ in 0..5 {
        let reply = client.get(&format!("http://{web}/web")).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.backend(), "h2");
    }
    // Both failing: the route goes (no instance is routable), then comes back with h2.
    b2.set_mode(Mode::Status(500));
    eventually(WITHIN, EVERY, || async {
        let (_, routes) = http_get(admin, "/api/routes").unwrap();
        if routes.contains("/web") {
            Err(format!("route still listed: {routes}"))
        } else {
            Ok(())
        }
    })
    .await;
    b2.set_mode(Mode::Normal);
    until(vec![b2.addr().to_string()]).await;
    // h1 recovers: `rise` passing probes bring it back.
    b1.set_mode(Mode::Normal);
    until(both).await;
    let log = process.stderr();
    assert!(log.contains("left out of the routes"), "{log}");
    assert!(log.contains("passes its check again"), "{log}");
}

#[test]
fn check_reports_bad_route_options_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n\
         [[service]]\nname = \"s\"\n\
         [[route]]\npath = \"/a\"\nredirect = { code = 304, url = \"/x\" }\n\
         [[route]]\npath = \"/b\"\nservice = \"s\"\nallow = [\"10.0.0.0/8\"]\ndeny = [\"10.0.0.1\"]\n",
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
        format!("{p}:8:21: error: redirect code 304 is not a redirect status"),
        format!("{p}:13:8: error: a route takes `allow` or `deny`, not both"),
        "2 errors found".to_owned(),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
}
