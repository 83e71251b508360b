//! Running one probe of one instance: HTTP, TCP, a command or a gRPC health check (`grpc`),
//! always bounded by the check's timeout and by the body size kept. A probe never fails in a way that escapes as an error:
//! every problem becomes a [`ProbeResult`] with [`ProbeError`] set.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sluice_config::{CheckKind, HealthCheckConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::verdict::{ProbeError, ProbeErrorKind, ProbeKind, ProbeResult};

mod grpc;
pub(crate) mod grpc_wire;

/// Where a probe goes and what it is about.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// Address probed (the check address and port when configured, else the instance's).
    pub addr: SocketAddr,
    /// The instance's traffic address (for commands' environment).
    pub instance: SocketAddr,
    /// Service name (for commands' environment).
    pub service: String,
}

/// Runs one probe as `check` describes it, within `check.timeout`.
pub async fn run(target: &ProbeTarget, check: &HealthCheckConfig) -> ProbeResult {
    let started = Instant::now();
    let kind = match check.kind {
        CheckKind::Http { .. } => ProbeKind::Http,
        CheckKind::Tcp { .. } => ProbeKind::Tcp,
        CheckKind::Command { .. } => ProbeKind::Command,
        CheckKind::Grpc { .. } => ProbeKind::Grpc,
    };
    let outcome = tokio::time::timeout(check.timeout, async {
        match &check.kind {
            CheckKind::Http {
                method, path, host, ..
            } => http(target.addr, method, path, host.as_deref(), check.body_bytes).await,
            CheckKind::Tcp { send, expect } => {
                tcp(
                    target.addr,
                    send.as_deref(),
                    expect.as_ref().map_or(0, String::len),
                )
                .await
            }
            CheckKind::Command { args } => command(target, args, check.body_bytes).await,
            CheckKind::Grpc { service } => {
                grpc::probe(target.addr, service, check.body_bytes).await
            }
        }
    })
    .await;
    let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match outcome {
        Ok(Ok(answer)) => ProbeResult {
            kind,
            status: answer.status,
            headers: answer.headers,
            body_prefix: answer.body,
            latency_us,
            error: answer.error,
        },
        Ok(Err(error)) => failed(kind, latency_us, error),
        Err(_) => failed(
            kind,
            latency_us,
            ProbeError {
                kind: ProbeErrorKind::Timeout,
                message: format!("no answer within {}ms", check.timeout.as_millis()),
            },
        ),
    }
}

fn failed(kind: ProbeKind, latency_us: u64, error: ProbeError) -> ProbeResult {
    ProbeResult {
        kind,
        status: None,
        headers: Vec::new(),
        body_prefix: Vec::new(),
        latency_us,
        error: Some(error),
    }
}

/// What a probe got back.
struct Answer {
    status: Option<u16>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Set when the answer itself says the probe failed (a gRPC error status): unlike an
    /// `Err`, the fields received are kept for a policy.
    error: Option<ProbeError>,
}

fn io_error(context: &str, e: &std::io::Error) -> ProbeError {
    use std::io::ErrorKind as K;
    let kind = match e.kind() {
        K::ConnectionRefused => ProbeErrorKind::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            ProbeErrorKind::Reset
        }
        K::TimedOut => ProbeErrorKind::Timeout,
        _ => ProbeErrorKind::Other,
    };
    ProbeError {
        kind,
        message: format!("{context}: {e}"),
    }
}

/// Headers kept from an HTTP probe's response: enough for a policy, bounded.
const MAX_HEADERS_KEPT: usize = 32;

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: Option<&str>,
    body_bytes: usize,
) -> Result<Answer, ProbeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| io_error("connect", &e))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| ProbeError {
                kind: ProbeErrorKind::Other,
                message: format!("handshake: {e}"),
            })?;
    let driver = tokio::spawn(conn);
    let host = host.map_or_else(|| addr.to_string(), str::to_owned);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "sluice-health")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| ProbeError {
            kind: ProbeErrorKind::Other,
            message: format!("request: {e}"),
        })?;
    // Connected, then no valid answer: closed or reset on us, unless it answered garbage.
    let response = sender.send_request(request).await.map_err(|e| ProbeError {
        kind: if e.is_parse() {
            ProbeErrorKind::Other
        } else {
            ProbeErrorKind::Reset
        },
        message: format!("request: {e}"),
    });
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            driver.abort();
            return Err(e);
        }
    };
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .take(MAX_HEADERS_KEPT)
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    let mut incoming = response.into_body();
    while body.len() < body_bytes {
        match incoming.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = body_bytes - body.len();
                    body.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            // A body cut short still tells what the status said.
            Some(Err(_)) | None => break,
        }
    }
    driver.abort();
    Ok(Answer {
        status: Some(status),
        headers,
        body,
        error: None,
    })
}

async fn tcp(
    addr: SocketAddr,
    send: Option<&str>,
    expect_len: usize,
) -> Result<Answer, ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| io_error("connect", &e))?;
    if let Some(bytes) = send {
        stream
            .write_all(bytes.as_bytes())
            .await
            .map_err(|e| io_error("send", &e))?;
    }
    let mut body = vec![0u8; expect_len];
    let mut filled = 0;
    while filled < expect_len {
        match stream.read(&mut body[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(io_error("read", &e)),
        }
    }
    body.truncate(filled);
    Ok(Answer {
        status: None,
        headers: Vec::new(),
        body,
        error: None,
    })
}

async fn command(
    target: &ProbeTarget,
    args: &[String],
    body_bytes: usize,
) -> Result<Answer, ProbeError> {
    let fill = |a: &String| {
        a.replace("{address}", &target.addr.ip().to_string())
            .replace("{port}", &target.addr.port().to_string())
    };
    let Some((program, rest)) = args.split_first() else {
        return Err(ProbeError {
            kind: ProbeErrorKind::Other,
            message: "no program".to_owned(),
        });
    };
    let mut child = tokio::process::Command::new(fill(program))
        .args(rest.iter().map(fill))
        .env("SLUICE_CHECK_ADDRESS", target.addr.ip().to_string())
        .env("SLUICE_CHECK_PORT", target.addr.port().to_string())
        .env("SLUICE_INSTANCE_ADDRESS", target.instance.ip().to_string())
        .env("SLUICE_INSTANCE_PORT", target.instance.port().to_string())
        .env("SLUICE_SERVICE", &target.service)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // A probe that times out is dropped; its program must not outlive it.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ProbeError {
            kind: ProbeErrorKind::Other,
            message: format!("cannot run {program}: {e}"),
        })?;
    let mut body = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let mut chunk = [0u8; 1024];
        while body.len() < body_bytes {
            match out.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n.min(body_bytes - body.len())]),
            }
        }
    }
    let status = child.wait().await.map_err(|e| io_error("wait", &e))?;
    // Killed by a signal: report 128 + signal, as shells do.
    let code = status.code().or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        status.signal().map(|s| 128 + s)
    });
    Ok(Answer {
        status: code.and_then(|c| u16::try_from(c).ok()),
        headers: Vec::new(),
        body,
        error: None,
    })
}

/// A random delay in `0..max` (probes of many instances should not fire in lockstep).
pub fn jitter(max: Duration) -> Duration {
    let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if max_ns == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(fastrand::u64(..max_ns))
}
