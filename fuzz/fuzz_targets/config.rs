//! The configuration loader on arbitrary bytes: `sluice_config::load_file` without its I/O
//! (`sluice_config::fuzzing::parse_bytes`: host names do not resolve, TLS files are not opened).
//!
//! Properties:
//! - never panics, on any bytes (text that is not UTF-8 included);
//! - a rejected file has at least one diagnostic, all naming the file, sorted, each at a line
//!   of the input and a column within that line (or just past its end);
//! - an accepted configuration keeps the model's promises (`model.rs`): unique names, routes
//!   pointing at declared listeners and services, valid redirects, override weights in (0, 1];
//! - accepting is stable: appending a comment line changes nothing.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice_config::{Config, Diagnostics, RedirectConfig, RouteOverride, fuzzing::parse_bytes};

const PATH: &str = "/etc/sluice/fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let path = Path::new(PATH);
    match parse_bytes(path, data) {
        Ok(config) => {
            check_config(&config);
            let mut commented = data.to_vec();
            commented.extend_from_slice(b"\n# fuzz\n");
            assert_eq!(
                parse_bytes(path, &commented).as_ref(),
                Ok(&config),
                "a trailing comment changed the configuration"
            );
        }
        Err(diags) => check_diagnostics(path, data, &diags),
    }
});

fn check_diagnostics(path: &Path, data: &[u8], diags: &Diagnostics) {
    assert!(!diags.0.is_empty(), "rejected without a diagnostic");
    // Lines are split at '\n' as the loader does; a line's length is in characters, and a
    // non-UTF-8 file's only diagnostic is inside its valid prefix, which lossy decoding keeps.
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.split('\n').collect();
    let mut previous = (0, 0);
    for d in &diags.0 {
        assert_eq!(d.file, path, "{d}");
        assert!(
            (1..=lines.len()).contains(&d.line),
            "line {} outside 1..={}: {d}",
            d.line,
            lines.len()
        );
        let width = lines[d.line - 1].chars().count();
        assert!(
            (1..=width + 1).contains(&d.col),
            "column {} outside 1..={} of line {:?}: {d}",
            d.col,
            width + 1,
            lines[d.line - 1]
        );
        assert!((d.line, d.col) >= previous, "diagnostics out of order");
        previous = (d.line, d.col);
        assert!(d.to_string().starts_with(PATH), "{d}");
    }
}

fn check_config(config: &Config) {
    unique("listener", config.listeners.iter().map(|l| l.name.as_str()));
    unique("service", config.services.iter().map(|s| s.name.as_str()));
    unique("policy", config.policies.iter().map(|p| p.name.as_str()));
    unique(
        "discovery",
        config.discovery.iter().map(|d| d.name.as_str()),
    );
    for route in &config.routes {
        assert!(
            config.listener(&route.listener).is_some(),
            "route {:?} names an undeclared listener",
            route.name
        );
        match &route.redirect {
            Some(redirect) => {
                assert!(RedirectConfig::valid_code(i64::from(redirect.code)));
                assert_eq!(RedirectConfig::url_problem(&redirect.url), None);
            }
            None => assert!(
                config.service(&route.service).is_some(),
                "route {:?} names an undeclared service {:?}",
                route.name,
                route.service
            ),
        }
    }
    for command in &config.routing.overrides {
        let weight = match command {
            RouteOverride::Add { weight, .. } => *weight,
            RouteOverride::Weight { weight, .. } => Some(*weight),
            RouteOverride::Del { .. } => None,
        };
        if let Some(w) = weight {
            assert!(w > 0.0 && w <= 1.0, "override weight {w}");
        }
    }
}

fn unique<'a>(what: &str, names: impl Iterator<Item = &'a str>) {
    let mut seen = HashSet::new();
    for name in names {
        assert!(seen.insert(name), "{what} name {name:?} declared twice");
    }
}
