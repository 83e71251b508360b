//! `sluice-testbackend NAME ADDR [--settings FILE]`: the test backend as a program, for the
//! quickstart and the examples. Answers every request with a JSON description of it, including
//! its own name, so balancing is visible with curl. With `--settings`, the answer also carries
//! the JSON in FILE, read per request (an app reading the settings its sidecar renders).

use std::net::SocketAddr;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(name), Some(addr)) = (args.next(), args.next()) else {
        anyhow::bail!(
            "usage: sluice-testbackend NAME ADDR   (e.g. sluice-testbackend b1 127.0.0.1:9001)"
        );
    };
    let addr: SocketAddr = addr.parse()?;
    let settings = match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("--settings"), Some(file)) => Some(std::path::PathBuf::from(file)),
        _ => anyhow::bail!("usage: sluice-testbackend NAME ADDR [--settings FILE]"),
    };
    let backend = sluice_test_support::Backend::start_with_settings(&name, addr, settings);
    eprintln!("backend {name} listening on {}", backend.addr());
    loop {
        std::thread::park();
    }
}
