//! How long validating a large configuration takes (it runs on every reload).

use criterion::{Criterion, criterion_group, criterion_main};
use std::fmt::Write as _;

fn big_config(services: usize) -> String {
    let mut s = String::from("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\n");
    for i in 0..services {
        let _ = write!(
            s,
            "[[route]]\npath = \"/svc{i}\"\nstrip = \"/svc{i}\"\nservice = \"svc{i}\"\n\
             [[service]]\nname = \"svc{i}\"\ninstances = [\"127.0.0.1:{}\", \"127.0.0.2:{}\"]\n",
            10000 + i,
            10000 + i
        );
    }
    s
}

fn bench_parse(c: &mut Criterion) {
    let text = big_config(1000);
    c.bench_function("config/parse_1k_services", |b| {
        b.iter(|| sluice_config::parse_str("bench.toml", &text).expect("valid"))
    });
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
