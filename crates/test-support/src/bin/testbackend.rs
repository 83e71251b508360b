//! `sluice-testbackend NAME ADDR`: the test backend as a program, for the quickstart and the
//! examples. Answers every request with a JSON description of it, including its own name, so
//! balancing is visible with curl.

use std::net::SocketAddr;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(name), Some(addr)) = (args.next(), args.next()) else {
        anyhow::bail!(
            "usage: sluice-testbackend NAME ADDR   (e.g. sluice-testbackend b1 127.0.0.1:9001)"
        );
    };
    let addr: SocketAddr = addr.parse()?;
    let backend = sluice_test_support::Backend::start_on(&name, addr);
    eprintln!("backend {name} listening on {}", backend.addr());
    loop {
        std::thread::park();
    }
}
