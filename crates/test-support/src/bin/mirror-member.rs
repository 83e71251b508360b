//! `sluice-mirror-member NAME ROLE WEB_ADDR TCP_ADDR CONTROL_ADDR`: a stand-in for one member of
//! an IRIS mirror set (seed 001), for the simplemirror example. See `MirrorMember` for what
//! its ports answer. The control port takes `POST /primary`, `/backup`, `/freeze`, `/stop` and
//! `/start`, so the seed's failover states can be played with curl.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_test_support::{MirrorMember, MirrorRole};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, role, web, tcp, control] = args.as_slice() else {
        anyhow::bail!(
            "usage: sluice-mirror-member NAME primary|backup WEB_ADDR TCP_ADDR CONTROL_ADDR"
        );
    };
    let role = match role.as_str() {
        "primary" => MirrorRole::Primary,
        "backup" => MirrorRole::Backup,
        other => anyhow::bail!("role must be primary or backup, not {other}"),
    };
    let member = Arc::new(MirrorMember::start_on(
        name,
        role,
        web.parse()?,
        tcp.parse()?,
    ));
    let control: SocketAddr = control.parse()?;
    eprintln!(
        "{name}: web {} tcp {} control {control} ({role:?})",
        member.web(),
        member.tcp()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(control).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let member = Arc::clone(&member);
            tokio::spawn(async move {
                let svc = service_fn(move |req| control_answer(req, Arc::clone(&member)));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

async fn control_answer(
    req: Request<Incoming>,
    member: Arc<MirrorMember>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut waited = String::new();
    match req.uri().path() {
        "/probed" => {
            waited = match member.next_status_probe(Duration::from_secs(2)).await {
                Some(at) => format!(" ({:?} ago)", at.elapsed()),
                None => " (no probe within 2 s)".to_owned(),
            };
        }
        "/delay" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .and_then(|v| v.parse().ok());
            let Some(ms) = ms else {
                let mut r = Response::new(Full::new(Bytes::from_static(b"use /delay?ms=N\n")));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                return Ok(r);
            };
            member.set_answer_delay(Duration::from_millis(ms));
        }
        "/primary" => member.set_role(MirrorRole::Primary),
        "/backup" => member.set_role(MirrorRole::Backup),
        "/freeze" => member.freeze(),
        "/stop" => {
            // Blocking join of the member's thread: off the control runtime's thread.
            let m = Arc::clone(&member);
            let _ = tokio::task::spawn_blocking(move || m.stop()).await;
        }
        "/start" => {
            let m = Arc::clone(&member);
            let _ = tokio::task::spawn_blocking(move || m.restart(MirrorRole::Backup)).await;
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"use /primary, /backup, /freeze, /stop, /start, /probed or /delay?ms=N\n",
            )));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return Ok(r);
        }
    }
    Ok(Response::new(Full::new(Bytes::from(format!(
        "{}: {}{waited}\n",
        member.name(),
        req.uri().path().trim_start_matches('/')
    )))))
}
