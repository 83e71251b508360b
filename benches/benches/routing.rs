//! Route lookup cost against the number of routes: 10, 1k and 10k routes, with exact hosts,
//! wildcard hosts and host-less prefixes of varied lengths, looked up by hits and misses.

use std::fmt::Write as _;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sluice_proxy::RouteTable;

/// A configuration with `n` routes over `n / 10` services: a third exact hosts, a third
/// wildcard hosts, a third host-less, with paths of 1 to 4 segments.
fn config(n: usize) -> sluice_config::Config {
    let mut s = String::from("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\n");
    let services = (n / 10).max(1);
    for i in 0..services {
        let _ = write!(
            s,
            "[[service]]\nname = \"s{i}\"\ninstances = [\"127.0.0.1:{}\"]\n",
            10_000 + i % 50_000
        );
    }
    for i in 0..n {
        let depth = 1 + i % 4;
        let path: String = (0..depth)
            .map(|d| format!("/seg{}", (i + d) % 97))
            .collect();
        let host = match i % 3 {
            0 => format!("host = \"app{i}.example.com\"\n"),
            1 => format!("host = \"*.zone{i}.example.com\"\n"),
            _ => String::new(),
        };
        let _ = write!(
            s,
            "[[route]]\n{host}path = \"{path}/r{i}\"\nservice = \"s{}\"\n",
            i % services
        );
    }
    sluice_config::parse_str("bench.toml", &s).expect("valid bench config")
}

fn bench_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in [10usize, 1_000, 10_000] {
        let table = RouteTable::from_config(&config(n), "web");
        assert_eq!(table.routes().len(), n);
        // A hit on each kind of host, and a miss that falls through every level.
        let probes = [
            (Some("app0.example.com"), "/seg0/r0/extra/path?q=1"),
            (Some("a.b.zone1.example.com"), "/seg1/seg2/r1/x"),
            (None, "/seg2/seg3/seg4/r2"),
            (Some("nowhere.example.org"), "/nothing/here/at/all"),
        ];
        group.bench_with_input(BenchmarkId::from_parameter(n), &table, |b, table| {
            b.iter(|| {
                let mut found = 0;
                for (host, path) in probes {
                    found += usize::from(
                        table
                            .lookup(std::hint::black_box(host), std::hint::black_box(path))
                            .is_some(),
                    );
                }
                found
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_lookup);
criterion_main!(benches);
