//! `[service.concurrency]` and `[overload]`: parsed with their defaults, refused with
//! positions.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use sluice_config::{ConcurrencyLimit, OverloadConfig, parse_str};

const HEAD: &str = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n";

#[test]
fn concurrency_and_watermarks_are_parsed_with_their_defaults() {
    let text = format!(
        "{HEAD}[overload]\nmax_connections = 20000\nmax_memory_mb = 2048\n\
         [[service]]\nname = \"a\"\nconcurrency = {{ max_in_flight = 100 }}\n\
         [[service]]\nname = \"b\"\n[service.concurrency]\nmax_in_flight = 8\nmax_queued = 0\nqueue_timeout = \"250ms\"\n\
         [[service]]\nname = \"c\"\n"
    );
    let cfg = parse_str("o.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.overload,
        OverloadConfig {
            max_connections: Some(20000),
            max_memory_mb: Some(2048),
        }
    );
    assert_eq!(
        cfg.services[0].concurrency,
        Some(ConcurrencyLimit {
            max_in_flight: 100,
            max_queued: 100,
            queue_timeout: Duration::from_secs(1),
        })
    );
    assert_eq!(
        cfg.services[1].concurrency,
        Some(ConcurrencyLimit {
            max_in_flight: 8,
            max_queued: 0,
            queue_timeout: Duration::from_millis(250),
        })
    );
    assert_eq!(cfg.services[2].concurrency, None);
    let plain = parse_str("p.toml", HEAD).unwrap();
    assert_eq!(plain.overload, OverloadConfig::default(), "nothing watched");
}

#[test]
fn bad_limits_are_reported_with_positions() {
    let text = format!(
        "{HEAD}[overload]\nmax_connections = 0\nmax_memory_mb = 1\nmax_cpu = 90\n\
         [[service]]\nname = \"a\"\nconcurrency = {{ max_queued = 5 }}\n\
         [[service]]\nname = \"b\"\nconcurrency = {{ max_in_flight = -1, queue_timeout = \"soon\" }}\n"
    );
    let shown = parse_str("bad.toml", &text).unwrap_err().to_string();
    for expected in [
        "bad.toml:5:19: error: 0 is out of range",
        "bad.toml:6:17: error: 1 is out of range",
        "hint: use a value from 16 to 16777216",
        "bad.toml:7:1: error: unknown key `max_cpu` in [overload]",
        "bad.toml:10:15: error: [service.concurrency] needs `max_in_flight`",
        "bad.toml:13:33: error: -1 is out of range",
        "bad.toml:13:53: error: invalid duration `soon`",
    ] {
        assert!(
            shown.contains(expected),
            "missing {expected:?} in:\n{shown}"
        );
    }
}
