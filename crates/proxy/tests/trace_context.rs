//! W3C Trace Context: a client's valid `traceparent` reaches the instance unchanged (with its
//! `tracestate`), a missing or invalid one is replaced by a trace Sluice starts, and the access
//! log carries the trace id either way — over HTTP/1.1 and HTTP/2 to the instance.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use sluice_test_support::{Backend, Client, eventually};

const CLIENT_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A trace id as version 00 writes it: 32 lowercase hex digits, not all zero.
fn is_trace_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && s != "0".repeat(32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_kept_or_started_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    for h2 in [false, true] {
        let backend = if h2 {
            Backend::start_h2c("b")
        } else {
            Backend::start("b")
        };
        let protocol = if h2 { "protocol = \"h2c\"" } else { "" };
        let cfg = format!(
            "[access_log]\npath = \"{}\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
             [[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\n{protocol}\ninstances = [\"{}\"]\n",
            log.display(),
            backend.addr()
        );
        let (_proxy, addr) = common::start(&cfg).await;
        let seen = |fields: Vec<(&'static str, &'static str)>| {
            let url = format!("http://{addr}/");
            async move {
                let r = Client::http1()
                    .request(Method::GET, &url, &fields, Bytes::new())
                    .await
                    .unwrap();
                let json = r.json();
                let header = |n: &str| json["headers"][n].as_str().map(str::to_owned);
                (header("traceparent"), header("tracestate"))
            }
        };
        // Kept, with its state.
        let kept = seen(vec![
            ("traceparent", CLIENT_TRACE),
            ("tracestate", "vendor=1"),
        ])
        .await;
        assert_eq!(
            kept,
            (Some(CLIENT_TRACE.to_owned()), Some("vendor=1".to_owned()))
        );
        // Started: none sent, an invalid one (upper-case hex, all-zero id), or two.
        let bad_trace = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        let zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        for fields in [
            vec![],
            vec![("traceparent", bad_trace), ("tracestate", "vendor=1")],
            vec![("traceparent", zero)],
            vec![("traceparent", CLIENT_TRACE), ("traceparent", CLIENT_TRACE)],
        ] {
            let (parent, state) = seen(fields).await;
            let parent = parent.expect("a traceparent is always sent");
            let parts: Vec<&str> = parent.split('-').collect();
            assert_eq!(parts.len(), 4, "{parent}");
            assert_eq!((parts[0], parts[3]), ("00", "01"), "{parent}");
            assert!(
                is_trace_id(parts[1]) && parts[1] != "4bf92f3577b34da6a3ce929d0e0e4736",
                "{parent}"
            );
            assert_eq!(parts[2].len(), 16, "{parent}");
            assert_eq!(state, None, "the state of a replaced trace is dropped");
        }
    }
    // Every request's line has its trace id: the client's for the kept ones.
    let lines = eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if lines.len() == 10 {
                Ok(lines)
            } else {
                Err(format!("{} lines", lines.len()))
            }
        },
    )
    .await;
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["trace_id"].as_str().unwrap())
        .collect();
    assert!(ids.iter().all(|id| is_trace_id(id)), "{ids:?}");
    assert_eq!(
        ids.iter()
            .filter(|id| **id == "4bf92f3577b34da6a3ce929d0e0e4736")
            .count(),
        2
    );
}
