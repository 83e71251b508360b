//! `loadgen`: an open-loop HTTP/1.1 load generator for latency at a fixed request rate.
//!
//! Requests are scheduled at fixed intended times spread over `--connections` keep-alive
//! connections (no pipelining). Latency is measured from a request's *intended* send time, so
//! a stalled server is charged for the requests it delayed (no coordinated omission, as in
//! wrk2). Prints one JSON object: requests, errors, achieved rate and latency percentiles in µs.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

#[derive(Debug, Parser)]
struct Args {
    /// Target, e.g. http://127.0.0.1:8080/
    #[arg(long)]
    url: String,
    /// Requests per second, in total.
    #[arg(long)]
    rate: u64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 50)]
    connections: u64,
    /// Measured duration, in seconds (after a 1 s warm-up that is not recorded).
    #[arg(long, default_value_t = 10)]
    duration: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

#[allow(clippy::print_stdout, reason = "the result is the program's output")]
async fn run(args: Args) -> anyhow::Result<()> {
    let uri: http::Uri = args.url.parse()?;
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .ok_or_else(|| anyhow::anyhow!("url needs host:port"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let interval = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let warmup = Duration::from_secs(1);
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + warmup + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for conn in 0..args.connections {
        let (authority, path) = (authority.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut errors = 0u64;
            let stream = tokio::net::TcpStream::connect(&authority).await?;
            stream.set_nodelay(true)?;
            let (mut sender, c) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await?;
            tokio::spawn(c);
            let step = interval * args.connections as u32;
            let mut intended = start + interval * conn as u32;
            while intended < end {
                tokio::time::sleep_until(intended.into()).await;
                let req = http::Request::get(path.as_str())
                    .header("host", authority.as_str())
                    .body(Empty::new())?;
                let ok = match sender.send_request(req).await {
                    Ok(resp) => {
                        resp.status().is_success() && resp.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                if intended >= start + warmup {
                    if ok {
                        let us = intended.elapsed().as_micros() as u64;
                        hist.saturating_record(us.max(1));
                    } else {
                        errors += 1;
                    }
                }
                if !ok {
                    break;
                }
                intended += step;
            }
            Ok::<_, anyhow::Error>((hist, errors))
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        total.add(h)?;
        errors += e;
    }
    let secs = args.duration as f64;
    println!(
        "{{\"target_rate\":{},\"requests\":{},\"errors\":{},\"achieved_rate\":{:.0},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        args.rate,
        total.len(),
        errors,
        total.len() as f64 / secs,
        total.value_at_quantile(0.50),
        total.value_at_quantile(0.90),
        total.value_at_quantile(0.99),
        total.value_at_quantile(0.999),
        total.max(),
    );
    Ok(())
}
