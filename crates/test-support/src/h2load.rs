//! `h2load` (nghttp2's load generator) as tests run it: many HTTP/2 streams at once.

use std::process::Command;

/// Runs `h2load` with `args`; its standard output.
pub fn h2load(args: &[&str]) -> String {
    let out = Command::new("h2load")
        .args(args)
        .output()
        .expect("h2load runs (install nghttp2-client: scripts/setup.sh)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number of requests `h2load` reports answered ("requests: … N succeeded").
pub fn h2load_succeeded(output: &str) -> Option<usize> {
    let line = output.lines().find(|l| l.starts_with("requests:"))?;
    line.split(" succeeded")
        .next()?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}
