//! Routing precedence, path rewriting and request headers, through real backends.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::*;
use sluice_test_support::{Backend, Client};

#[tokio::test]
async fn host_and_path_precedence() {
    let (exact, wild, any, api) = (
        Backend::start("exact"),
        Backend::start("wild"),
        Backend::start("any"),
        Backend::start("api"),
    );
    let toml = format!(
        r#"{LISTENER}
[[route]]
host = "shop.example.com"
path = "/"
service = "exact"
[[route]]
host = "*.example.com"
path = "/"
service = "wild"
[[route]]
path = "/"
service = "any"
[[route]]
path = "/api/"
service = "api"
[[service]]
name = "exact"
{}
[[service]]
name = "wild"
{}
[[service]]
name = "any"
{}
[[service]]
name = "api"
{}
"#,
        instances(&[exact.addr()]),
        instances(&[wild.addr()]),
        instances(&[any.addr()]),
        instances(&[api.addr()]),
    );
    let (_proxy, addr) = start(&toml).await;
    let c = Client::http1();
    let get = |host: &'static str, path: &'static str| {
        let c = c.clone();
        async move {
            c.request(
                http::Method::GET,
                &format!("http://{addr}{path}"),
                &[("host", host)],
                "",
            )
            .await
            .unwrap()
            .backend()
        }
    };
    assert_eq!(
        get("shop.example.com", "/x").await,
        "exact",
        "exact host beats wildcard"
    );
    assert_eq!(
        get("SHOP.Example.com:8080", "/x").await,
        "exact",
        "host is case-insensitive, port ignored"
    );
    assert_eq!(
        get("a.b.example.com", "/x").await,
        "wild",
        "wildcard beats any"
    );
    assert_eq!(get("example.org", "/x").await, "any");
    assert_eq!(
        get("example.org", "/api/v1").await,
        "api",
        "longest prefix wins"
    );
    assert_eq!(
        get("example.org", "/apix").await,
        "any",
        "prefix is a string prefix: /api/ does not match /apix"
    );
    // The exact host has no /api/ route of its own: lookup falls through to host-less routes.
    assert_eq!(
        get("shop.example.com", "/api/v1").await,
        "exact",
        "the exact host's / still matches first"
    );
}

#[tokio::test]
async fn no_route_is_a_json_404() {
    let b = Backend::start("b");
    let toml = format!(
        "{LISTENER}\n[[route]]\npath = \"/only\"\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\n",
        instances(&[b.addr()])
    );
    let (_proxy, addr) = start(&toml).await;
    let r = Client::http1()
        .get(&format!("http://{addr}/elsewhere"))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let j = r.json();
    assert_eq!(j["error"], "no_route");
    assert_eq!(j["request_id"].as_str().unwrap().len(), 32);
    assert_eq!(r.headers["x-request-id"], j["request_id"].as_str().unwrap());
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn strip_and_prepend_rewrite_the_path_like_fabio() {
    let b = Backend::start("b");
    let toml = format!(
        r#"{LISTENER}
[[route]]
path = "/ap1a"
strip = "/ap1a"
service = "s"
[[route]]
path = "/legacy/"
strip = "/legacy"
prepend = "/v2/"
service = "s"
[[service]]
name = "s"
{}
"#,
        instances(&[b.addr()])
    );
    let (_proxy, addr) = start(&toml).await;
    let c = Client::http1();
    let seen = |p: &'static str| {
        let c = c.clone();
        async move {
            let j = c.get(&format!("http://{addr}{p}")).await.unwrap().json();
            (
                j["path"].as_str().unwrap().to_owned(),
                j["query"].as_str().map(str::to_owned),
            )
        }
    };
    assert_eq!(
        seen("/ap1a/csp/mirror_status.cxw").await,
        ("/csp/mirror_status.cxw".into(), None)
    );
    assert_eq!(
        seen("/ap1a").await,
        ("/".into(), None),
        "stripping everything leaves /"
    );
    assert_eq!(
        seen("/ap1a/x?y=1&z=%20").await,
        ("/x".into(), Some("y=1&z=%20".into())),
        "query kept verbatim"
    );
    assert_eq!(
        seen("/legacy/items/7").await,
        ("/v2/items/7".into(), None),
        "strip then prepend, no double slash"
    );
}

#[tokio::test]
async fn forwarded_headers_request_id_and_hop_by_hop() {
    let b = Backend::start("b");
    let toml = format!(
        "{LISTENER}\n[[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\n",
        instances(&[b.addr()])
    );
    let (_proxy, addr) = start(&toml).await;
    let r = Client::http1()
        .request(
            http::Method::GET,
            &format!("http://{addr}/h"),
            &[
                ("host", "app.example.com"),
                ("x-forwarded-for", "203.0.113.9"),
                ("connection", "x-internal"),
                ("x-internal", "secret"),
                ("te", "trailers"),
                ("x-request-id", "client-chosen-id"),
            ],
            "",
        )
        .await
        .unwrap();
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "app.example.com");
    assert_eq!(
        h["host"], "app.example.com",
        "the client's Host is passed on"
    );
    assert_eq!(h["x-request-id"], "client-chosen-id");
    assert!(
        h.get("x-internal").is_none(),
        "headers named by Connection are hop-by-hop"
    );
    assert!(h.get("te").is_none());
    assert_eq!(r.headers["x-request-id"], "client-chosen-id");
    assert_eq!(b.request_ids(), ["client-chosen-id"]);
}
