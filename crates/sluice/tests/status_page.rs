//! The status page through the real binary, with Debian's Chromium (headless) as the browser:
//! the page draws listeners, routes, services, policies and discovery sources from the admin
//! API and follows an instance going down and coming back; its files are typed, cached by `ETag` and locked down by a
//! Content-Security-Policy; it loads without a token while the data needs one; and
//! `/api/reloads` remembers what each reload did, shown escaped on the page.
//!
//! `SLUICE_STATUS_SCREENSHOT=FILE` saves the page with one instance down to FILE (how
//! docs/images/status-page.png is made).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use nix::sys::signal::Signal;
use sluice_policy_test_artifacts::MIRROR_PRIMARY;
use sluice_test_support::{
    Backend, Client, Reply, SluiceProcess, eventually_blocking, free_port, http_get, http_request,
    require_tool,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const WITHIN: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(200);
const TOKEN: &str = "read-token-for-the-status-page";

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// A listener `web`, a route `/` to service `app` on `instances`, checked by TCP every 200 ms
/// (one failed probe marks an instance down, one good one up again); `admin_extra` goes under
/// `[admin]`.
fn config(
    admin: SocketAddr,
    web: SocketAddr,
    instances: &[SocketAddr],
    admin_extra: &str,
) -> String {
    let instances: Vec<String> = instances.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[admin]\nbind = \"{admin}\"\n{admin_extra}\n[access_log]\npath = \"off\"\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [[route]]\nname = \"everything\"\nlistener = \"web\"\npath = \"/\"\nservice = \"app\"\n\
         [[service]]\nname = \"app\"\ninstances = [{}]\n\
         health = {{ kind = \"tcp\", interval = \"200ms\", timeout = \"150ms\", jitter = \"0s\", rise = 1, fall = 1 }}\n",
        instances.join(", ")
    )
}

// ---- Chromium -------------------------------------------------------------------------------

/// Runs headless Chromium on `url` with `args` and returns what it printed. Each run gets a
/// fresh profile (nothing cached between runs) and `--no-sandbox`, since Chromium's sandbox
/// refuses to start as root, which CI containers are; the page is our own, on loopback.
fn chromium(url: &str, args: &[&str]) -> String {
    let browser = require_tool("chromium");
    let profile = tempfile::tempdir().unwrap();
    let out_path = profile.path().join("stdout");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(out_path).unwrap()
}

/// The page's DOM after its first polls: the virtual time budget lets its 2 s timer fire
/// twice (virtual time waits for the fetches in flight).
fn page_dom(admin: SocketAddr) -> String {
    let dom = chromium(
        &format!("http://{admin}/"),
        &["--virtual-time-budget=4500", "--dump-dom"],
    );
    assert!(
        dom.contains("<h1>Sluice</h1>"),
        "chromium printed no page:\n{dom}"
    );
    dom
}

/// Saves a 1280×1000 screenshot of the page to `file`.
fn screenshot(admin: SocketAddr, file: &Path) {
    chromium(
        &format!("http://{admin}/"),
        &[
            "--virtual-time-budget=2500",
            "--window-size=1280,1000",
            &format!("--screenshot={}", file.display()),
        ],
    );
    let png = std::fs::read(file).unwrap();
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        file.display()
    );
}

/// The `<tr>` the page drew for `instance`, if any.
fn instance_row(dom: &str, instance: SocketAddr) -> Option<&str> {
    let start = dom.find(&format!("<tr data-instance=\"{instance}\""))?;
    let len = dom[start..].find("</tr>")?;
    Some(&dom[start..start + len])
}

/// Waits until the page shows `instance` in `state` with `health` (`up`, `down`).
fn until_page_shows(admin: SocketAddr, instance: SocketAddr, state: &str, health: &str) -> String {
    let mut last = String::new();
    eventually_blocking("the status page", WITHIN, || {
        last = page_dom(admin);
        let row = instance_row(&last, instance).ok_or(format!("no row for {instance}"))?;
        let want_state = format!("data-state=\"{state}\"");
        let want_health = format!(">{health} for ");
        if row.contains(&want_state) && row.contains(&want_health) {
            Ok(())
        } else {
            Err(format!(
                "{instance} is not {state}/{health} on the page: {row}"
            ))
        }
    });
    last
}

// ---- HTTP -----------------------------------------------------------------------------------

async fn request(method: Method, url: &str, headers: &[(&str, &str)]) -> Reply {
    Client::http1()
        .request(method, url, headers, "")
        .await
        .unwrap()
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", reply.headers))
        .to_str()
        .unwrap()
}

// ---- Tests ----------------------------------------------------------------------------------

#[test]
fn page_follows_an_instance_down_and_back() {
    require_tool("chromium"); // before anything starts: the failure names scripts/setup.sh
    let (admin, web) = (addr(), addr());
    let a = Backend::start("a");
    let b = Backend::start("b");
    let b_addr = b.addr();
    let cfg = config(admin, web, &[a.addr(), b_addr], "");
    let sluice = SluiceProcess::start(BIN.as_ref(), &cfg, admin);

    let dom = until_page_shows(admin, b_addr, "active", "up");
    assert!(
        dom.contains(&format!("<td>web</td><td>{web}</td>")),
        "listener: {dom}"
    );
    assert!(
        dom.contains("<td>everything</td><td>web</td><td>*</td><td>/</td><td>app</td>"),
        "route: {dom}"
    );
    assert!(dom.contains("data-service=\"app\""), "service: {dom}");
    let row = instance_row(&dom, a.addr()).unwrap();
    assert!(
        row.contains("data-state=\"active\"") && row.contains(">up for "),
        "{row}"
    );
    assert!(dom.contains("No discovery configured."), "{dom}");
    assert!(dom.contains("No reload since start-up."), "{dom}");
    assert!(
        dom.contains("id=\"token-form\" hidden"),
        "no token needed here: {dom}"
    );

    // Traffic through both instances, and a reload: the page counts and lists them.
    for _ in 0..6 {
        assert_eq!(http_get(web, "/").unwrap().0, 200);
    }
    assert_eq!(http_request(admin, "POST", "/api/reload").unwrap().0, 200);
    b.stop();
    let dom = until_page_shows(admin, b_addr, "down", "down");
    let a_requests = format!("<td class=\"number\">{}</td>", a.hits());
    assert!(
        a.hits() > 0 && instance_row(&dom, a.addr()).unwrap().contains(&a_requests),
        "{dom}"
    );
    assert!(dom.contains("<td>api</td>"), "the reload: {dom}");
    let row = instance_row(&dom, b_addr).unwrap();
    assert!(row.contains("refused"), "the last probe's result: {row}");
    let row = instance_row(&dom, a.addr()).unwrap();
    assert!(row.contains("data-state=\"active\""), "a stays up: {row}");

    let shot = match std::env::var_os("SLUICE_STATUS_SCREENSHOT") {
        Some(file) => file.into(),
        None => sluice.dir().join("status-page.png"),
    };
    screenshot(admin, &shot);

    let _b = Backend::start_on("b", b_addr);
    until_page_shows(admin, b_addr, "active", "up");
}

#[tokio::test]
async fn page_files_are_typed_cached_and_locked_down() {
    let (admin, web) = (addr(), addr());
    let _sluice = SluiceProcess::start(BIN.as_ref(), &config(admin, web, &[], ""), admin);
    let url = |path: &str| format!("http://{admin}{path}");

    let page = request(Method::GET, &url("/"), &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    let csp = header(&page, "content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{directive} missing: {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    let html = page.text();
    assert!(
        html.contains("src=\"assets/status.js\"") && html.contains("href=\"assets/status.css\""),
        "{html}"
    );
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=").count(),
        "inline script: {html}"
    );

    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/status.js", "text/javascript; charset=utf-8"),
        ("/assets/status.css", "text/css; charset=utf-8"),
    ] {
        assert_cacheable(&url(path), content_type).await;
    }
    let js = request(Method::GET, &url("/assets/status.js"), &[])
        .await
        .text();
    assert!(
        js.contains("setTimeout(poll, POLL_MS)") && js.contains("const POLL_MS = 2000;"),
        "{js}"
    );
    assert!(!js.contains("innerHTML"), "data must go in as text only");

    assert_eq!(
        request(Method::GET, &url("/assets/nothing.js"), &[])
            .await
            .status,
        404
    );
    let post = request(Method::POST, &url("/"), &[]).await;
    assert_eq!(
        (post.status.as_u16(), header(&post, "allow")),
        (405, "GET, HEAD")
    );
    assert_eq!(
        request(Method::HEAD, &url("/api/services"), &[])
            .await
            .status,
        405
    );
}

/// `url` answers with `content_type`, the page's security fields and an `ETag`; the `ETag`
/// gets `304`, and `HEAD` the same head without the body.
async fn assert_cacheable(url: &str, content_type: &str) {
    let full = request(Method::GET, url, &[]).await;
    assert_eq!(full.status, 200, "{url}");
    assert_eq!(header(&full, "content-type"), content_type, "{url}");
    assert_eq!(header(&full, "x-content-type-options"), "nosniff", "{url}");
    assert_eq!(header(&full, "cache-control"), "no-cache", "{url}");
    assert!(header(&full, "content-security-policy").contains("script-src 'self'"));
    let etag = header(&full, "etag");
    assert!(
        etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
        "{url}: {etag}"
    );

    let again = request(Method::GET, url, &[("if-none-match", etag)]).await;
    assert_eq!(again.status, 304, "{url}");
    assert!(again.body.is_empty(), "{url}");
    assert_eq!(header(&again, "etag"), etag);
    let other = request(Method::GET, url, &[("if-none-match", "\"something-else\"")]).await;
    assert_eq!(other.status, 200, "{url}");

    let head = request(Method::HEAD, url, &[]).await;
    assert_eq!(head.status, 200, "{url}");
    assert!(head.body.is_empty(), "{url}");
    assert_eq!(
        header(&head, "content-length"),
        full.body.len().to_string(),
        "{url}"
    );
    assert_eq!(header(&head, "etag"), etag, "{url}");
}

#[tokio::test]
async fn page_loads_without_a_token_and_asks_for_one() {
    require_tool("chromium"); // before anything starts: the failure names scripts/setup.sh
    let (admin, web) = (addr(), addr());
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("read {TOKEN}\n")).unwrap();
    let extra = format!("tokens_file = {:?}", tokens.display().to_string());
    let _sluice = SluiceProcess::start(BIN.as_ref(), &config(admin, web, &[], &extra), admin);
    let url = |path: &str| format!("http://{admin}{path}");

    assert_eq!(request(Method::GET, &url("/"), &[]).await.status, 200);
    assert_eq!(request(Method::HEAD, &url("/"), &[]).await.status, 200);
    assert_eq!(
        request(Method::GET, &url("/assets/status.js"), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        request(Method::HEAD, &url("/assets/status.css"), &[])
            .await
            .status,
        200
    );
    for path in ["/api/services", "/api/reloads", "/metrics"] {
        assert_eq!(
            request(Method::GET, &url(path), &[]).await.status,
            401,
            "{path}"
        );
    }
    let bearer = format!("Bearer {TOKEN}");
    let with_token = request(
        Method::GET,
        &url("/api/services"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(with_token.status, 200);
    assert_eq!(
        request(Method::POST, &url("/"), &[]).await.status,
        401,
        "only reading is open"
    );

    // The browser gets the page, its API calls get 401, and it asks for a token.
    let dom = tokio::task::spawn_blocking(move || page_dom(admin))
        .await
        .unwrap();
    assert!(
        dom.contains("<form id=\"token-form\">"),
        "the form is shown: {dom}"
    );
    assert!(dom.contains("This admin API needs a token."), "{dom}");
    assert!(
        dom.contains("<main id=\"status\" hidden"),
        "no data drawn: {dom}"
    );
}

#[tokio::test]
async fn reloads_are_remembered_with_their_errors() {
    require_tool("chromium"); // before anything starts: the failure names scripts/setup.sh
    let (admin, web) = (addr(), addr());
    let cfg = config(admin, web, &[], "");
    let sluice = SluiceProcess::start(BIN.as_ref(), &cfg, admin);
    let url = |path: &str| format!("http://{admin}{path}");
    let reloads = || async { request(Method::GET, &url("/api/reloads"), &[]).await.json() };
    assert_eq!(reloads().await, serde_json::json!([]));

    assert_eq!(
        request(Method::POST, &url("/api/reload"), &[]).await.status,
        200
    );
    sluice.signal(Signal::SIGHUP);
    sluice_test_support::eventually(WITHIN, EVERY, || async {
        let n = reloads().await.as_array().unwrap().len();
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} reloads remembered"))
        }
    })
    .await;
    // A key the file may not have, named in the error: HTML in it must stay text on the page.
    std::fs::write(
        sluice.config_path(),
        format!("{cfg}\n[log]\n\"<b>bold</b>\" = 1\n"),
    )
    .unwrap();
    let refused = request(Method::POST, &url("/api/reload"), &[]).await;
    assert_eq!(refused.status, 400, "{}", refused.text());

    let history = reloads().await;
    let history = history.as_array().unwrap();
    let summary: Vec<_> = history
        .iter()
        .map(|r| {
            (
                r["trigger"].as_str().unwrap(),
                r["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("api", "invalid"), ("signal", "ok"), ("api", "ok")],
        "newest first"
    );
    let error = history[0]["error"].as_str().unwrap();
    assert!(
        error.contains("sluice.toml") && error.contains("unknown key `<b>bold</b>` in [log]"),
        "{error}"
    );
    assert!(history[1]["error"].is_null());
    for record in history {
        let time = record["time"].as_str().unwrap();
        assert!(
            time.len() == 24 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
            "RFC 3339: {time}"
        );
    }

    let dom = tokio::task::spawn_blocking(move || page_dom(admin))
        .await
        .unwrap();
    assert!(dom.contains("<tr data-reload=\"invalid\">"), "{dom}");
    assert!(
        dom.contains("unknown key `&lt;b&gt;bold&lt;/b&gt;` in [log]"),
        "escaped: {dom}"
    );
    assert!(
        !dom.contains("<b>bold</b>"),
        "an error's HTML became markup: {dom}"
    );
    assert!(dom.contains("<td>signal</td>"), "{dom}");
}

#[test]
fn page_shows_policies_and_discovery_sources() {
    require_tool("chromium"); // before anything starts: the failure names scripts/setup.sh
    let (admin, web) = (addr(), addr());
    let registry = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[policy]]\nname = \"mirror\"\nfile = {MIRROR_PRIMARY:?}\nworld = \"health\"\n\
         config = {{ primary_status = 200 }}\n\
         [[discovery]]\nname = \"registry\"\nkind = \"file\"\ndir = {:?}\npoll_interval = \"100ms\"\n",
        registry.path().display().to_string()
    );
    let cfg = format!("{}{extra}", config(admin, web, &[], ""));
    let _sluice = SluiceProcess::start(BIN.as_ref(), &cfg, admin);

    let mut dom = String::new();
    eventually_blocking("the discovery source on the page", WITHIN, || {
        dom = page_dom(admin);
        let want = "<td>registry</td><td>file</td><td><span class=\"badge synced\">synced</span>";
        dom.contains(want)
            .then_some(())
            .ok_or(format!("no {want} in {dom}"))
    });
    let policy =
        "<td>mirror</td><td>health</td><td><span class=\"badge active\">active</span></td>";
    assert!(dom.contains(policy), "{dom}");
    assert!(dom.contains("Catalog version "), "{dom}");
    assert!(!dom.contains("No discovery configured."), "{dom}");
}
