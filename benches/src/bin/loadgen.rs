//! `loadgen`: an open-loop load generator for latency at a fixed request rate, over HTTP/1.1 or
//! HTTP/2, in clear text or over TLS.
//!
//! Requests are scheduled at fixed intended times spread over `--connections` keep-alive
//! connections. Latency is measured from a request's *intended* send time, so a stalled server
//! is charged for the requests it delayed (no coordinated omission, as in wrk2).
//!
//! - HTTP/1.1 (the default): one request at a time per connection, no pipelining; a request
//!   whose time comes while the connection is busy waits for it, and that wait counts.
//! - HTTP/2 (`--http2`: prior knowledge on `http://`, ALPN `h2` on `https://`): each request is
//!   its own stream, sent at its time whatever else is in flight on the connection.
//!
//! `https://` trusts only the certificates in `--ca` and checks them for `--server-name`.
//! Prints one JSON object: requests, errors, achieved rate and latency percentiles in µs.
//! `--histogram FILE` also writes every recorded latency bucket as a line `µs count`, so that
//! the runs of one contender can be pooled into percentiles over all of them.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

#[derive(Debug, Parser)]
struct Args {
    /// Target, e.g. http://127.0.0.1:8080/ or https://127.0.0.1:8443/
    #[arg(long)]
    url: String,
    /// Requests per second, in total.
    #[arg(long)]
    rate: u64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 50)]
    connections: u64,
    /// Measured duration, in seconds (after the warm-up, which is not recorded).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Warm-up before the measured duration, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// File to write the recorded latencies to, one `µs count` line per histogram bucket.
    #[arg(long)]
    histogram: Option<PathBuf>,
    /// Speak HTTP/2: with prior knowledge on http://, agreed by ALPN on https://.
    #[arg(long)]
    http2: bool,
    /// PEM file of the certificates trusted on https:// (required there).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Name the server's certificate is checked against on https:// (default: the URL's host).
    #[arg(long)]
    server_name: Option<String>,
}

/// Where and how to connect, shared by every connection.
struct Target {
    authority: String,
    path: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    http2: bool,
}

/// The run's connections, all of one protocol, opened before the schedule starts.
enum Lanes {
    Http1(Vec<http1::SendRequest<Empty<Bytes>>>),
    Http2(Vec<http2::SendRequest<Empty<Bytes>>>),
}

/// What was measured, shared by every request of the run.
struct Run {
    /// Requests intended before this are not recorded (the warm-up).
    recorded_from: Instant,
    record: Mutex<Record>,
}

struct Record {
    latency_us: Histogram<u64>,
    errors: u64,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

#[allow(clippy::print_stdout, reason = "the result is the program's output")]
async fn run(args: Args) -> anyhow::Result<()> {
    let target = Arc::new(target(&args)?);
    let lanes = Lanes::open(args.connections.max(1), &target).await?;
    let start = Instant::now() + Duration::from_millis(100);
    let run = Arc::new(Run {
        recorded_from: start + Duration::from_millis(args.warmup_ms),
        record: Mutex::new(Record {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            errors: 0,
        }),
    });
    let interval = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let end = run.recorded_from + Duration::from_secs(args.duration);
    dispatch(pace(start, interval, end), lanes, &target, &run).await;
    let record = run.record.lock().expect("record lock");
    let total = &record.latency_us;
    if let Some(path) = &args.histogram {
        write_histogram(path, total)?;
    }
    println!(
        "{{\"target_rate\":{},\"requests\":{},\"errors\":{},\"achieved_rate\":{:.0},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        args.rate,
        total.len(),
        record.errors,
        total.len() as f64 / args.duration as f64,
        total.value_at_quantile(0.50),
        total.value_at_quantile(0.90),
        total.value_at_quantile(0.99),
        total.value_at_quantile(0.999),
        total.max(),
    );
    Ok(())
}

/// Writes `µs count` for every bucket that recorded a latency, lowest first.
fn write_histogram(path: &std::path::Path, latency_us: &Histogram<u64>) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut lines = String::new();
    for bucket in latency_us.iter_recorded() {
        let _ = writeln!(
            lines,
            "{} {}",
            latency_us.highest_equivalent(bucket.value_iterated_to()),
            bucket.count_at_value()
        );
    }
    std::fs::write(path, lines).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// Each request's intended time, sent when it comes, from a thread of its own: tokio's timers
/// fire on whole milliseconds, which would add up to a millisecond to every latency measured.
/// The thread sleeps to each time; a request it hands on late is charged for that lateness.
fn pace(start: Instant, interval: Duration, end: Instant) -> mpsc::UnboundedReceiver<Instant> {
    let (due, times) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut intended = start;
        while intended < end {
            std::thread::sleep(intended.saturating_duration_since(Instant::now()));
            if due.send(intended).is_err() {
                return;
            }
            intended += interval;
        }
    });
    times
}

/// Hands the requests to the connections in turn as they come due, then waits for every answer.
async fn dispatch(
    mut due: mpsc::UnboundedReceiver<Instant>,
    lanes: Lanes,
    target: &Arc<Target>,
    run: &Arc<Run>,
) {
    let mut tasks = JoinSet::new();
    match lanes {
        Lanes::Http1(senders) => {
            let mut queues = Vec::new();
            for sender in senders {
                let (queue, times) = mpsc::unbounded_channel();
                tasks.spawn(one_at_a_time(
                    sender,
                    times,
                    Arc::clone(target),
                    Arc::clone(run),
                ));
                queues.push(queue);
            }
            let mut turn = queues.iter().cycle();
            while let Some(intended) = due.recv().await {
                let queue = turn.next().expect("at least one connection");
                // A queue closes only if its task has ended, which it does not before the queue.
                let _ = queue.send(intended);
            }
        }
        Lanes::Http2(senders) => {
            let mut turn = senders.iter().cycle();
            while let Some(intended) = due.recv().await {
                let sender = turn.next().expect("at least one connection").clone();
                tasks.spawn(stream(
                    sender,
                    intended,
                    Arc::clone(target),
                    Arc::clone(run),
                ));
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

impl Lanes {
    async fn open(count: u64, target: &Target) -> anyhow::Result<Self> {
        let mut h1 = Vec::new();
        let mut h2 = Vec::new();
        for _ in 0..count {
            let io = TokioIo::new(connect(target).await?);
            if target.http2 {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .initial_stream_window_size(1 << 24)
                    .initial_connection_window_size(1 << 26)
                    .handshake(io)
                    .await?;
                tokio::spawn(conn);
                h2.push(sender);
            } else {
                let (sender, conn) = http1::handshake(io).await?;
                tokio::spawn(conn);
                h1.push(sender);
            }
        }
        Ok(if target.http2 {
            Self::Http2(h2)
        } else {
            Self::Http1(h1)
        })
    }
}

fn target(args: &Args) -> anyhow::Result<Target> {
    let uri: http::Uri = args.url.parse()?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("url needs host:port"))?;
    let tls = match uri.scheme_str() {
        Some("https") => {
            let name = args.server_name.as_deref().unwrap_or(authority.host());
            Some((tls_connector(args)?, ServerName::try_from(name.to_owned())?))
        }
        Some("http") => None,
        _ => anyhow::bail!("url must be http:// or https://"),
    };
    Ok(Target {
        authority: authority.to_string(),
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        tls,
        http2: args.http2,
    })
}

fn tls_connector(args: &Args) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let ca = args
        .ca
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("https:// needs --ca"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if args.http2 { &b"h2"[..] } else { b"http/1.1" }.to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn connect(target: &Target) -> anyhow::Result<Pin<Box<dyn Io>>> {
    let tcp = tokio::net::TcpStream::connect(&target.authority).await?;
    tcp.set_nodelay(true)?;
    Ok(match &target.tls {
        None => Box::pin(tcp),
        Some((connector, name)) => Box::pin(connector.connect(name.clone(), tcp).await?),
    })
}

fn request(target: &Target) -> anyhow::Result<http::Request<Empty<Bytes>>> {
    let req = if target.http2 {
        // HTTP/2 carries the scheme and authority as pseudo-headers, taken from the URI.
        let scheme = if target.tls.is_some() {
            "https"
        } else {
            "http"
        };
        http::Request::get(format!("{scheme}://{}{}", target.authority, target.path))
    } else {
        http::Request::get(target.path.as_str()).header("host", target.authority.as_str())
    };
    Ok(req.body(Empty::new())?)
}

/// An HTTP/1.1 connection: its requests in turn, each sent when due or when the one before it
/// is answered, whichever is later (no pipelining). Once the connection has failed, every
/// request still handed to it fails at once and counts as an error.
async fn one_at_a_time(
    mut sender: http1::SendRequest<Empty<Bytes>>,
    mut times: mpsc::UnboundedReceiver<Instant>,
    target: Arc<Target>,
    run: Arc<Run>,
) {
    while let Some(intended) = times.recv().await {
        let ok = match request(&target) {
            Ok(req) => answered(sender.send_request(req).await).await,
            Err(_) => false,
        };
        run.note(intended, ok);
    }
}

/// One HTTP/2 request, as its own stream.
async fn stream(
    mut sender: http2::SendRequest<Empty<Bytes>>,
    intended: Instant,
    target: Arc<Target>,
    run: Arc<Run>,
) {
    let ok = match request(&target) {
        Ok(req) => answered(sender.send_request(req).await).await,
        Err(_) => false,
    };
    run.note(intended, ok);
}

/// Whether the answer is a success whose whole body arrived; the body is read and dropped.
async fn answered(response: Result<http::Response<hyper::body::Incoming>, hyper::Error>) -> bool {
    let Ok(response) = response else {
        return false;
    };
    if !response.status().is_success() {
        return false;
    }
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return false;
        }
    }
    true
}

impl Run {
    fn note(&self, intended: Instant, ok: bool) {
        if intended < self.recorded_from {
            return;
        }
        let mut record = self.record.lock().expect("record lock");
        if ok {
            let us = intended.elapsed().as_micros() as u64;
            record.latency_us.saturating_record(us.max(1));
        } else {
            record.errors += 1;
        }
    }
}
