//! The admin listener: health, readiness, Prometheus metrics and the JSON API.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/healthz` | 200 while the process runs |
//! | GET | `/readyz` | 200 once listeners are bound, 503 while starting or draining |
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/api/routes` | every route |
//! | GET | `/api/services` | every service and its instances' live state |
//! | GET | `/api/listeners` | listener name → bound address |
//! | GET | `/` | the status page (status_page.rs), which draws the `/api/*` answers below |
//! | GET | `/assets/status.js`, `/assets/status.css` | the status page's script and style |
//! | POST | `/api/reload` | re-reads the configuration file and applies it |
//! | GET | `/api/reloads` | the last 20 reloads: time, trigger, result, error |
//! | GET | `/api/catalog` | the discovery catalog: instances, their source, stale flag and age, each source's state and skipped documents, the last route rebuild |
//! | GET | `/api/policies` | loaded Wasm policies: world, file, SHA-256, state, call counts |
//! | POST | `/api/policies/reload` | recompiles every policy from its file, swapping the good ones |
//!
//! With tokens configured (`admin_auth`), `GET`s need a `read` token and `POST`s an `admin`
//! one (`Authorization: Bearer TOKEN`); `/healthz`, `/readyz` and the status page's files
//! (`GET`/`HEAD` of `/` and `/assets/*`, which hold no data) stay open. A refused request
//! gets `401` (no or unknown token) or `403` (a `read` token on an `admin` request), a warning
//! in the log with the client's address, and `sluice_admin_auth_failures_total{reason}`.
//! With `[admin.tls]` the listener speaks HTTPS, and with its `client_ca` a verified client
//! certificate counts as a credential of `client_scope`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use sluice_tls::{CertKeyPaths, ClientAuth, MinVersion, ServerTls, ServerTlsSettings};

use crate::admin_auth::Denied;
use crate::app::{App, ReloadError};
use crate::reloads::Trigger;
use crate::status_page;

/// Refused admin requests, by `reason` (`missing`, `invalid`, `scope`).
pub(crate) const ADMIN_AUTH_FAILURES_TOTAL: &str = "sluice_admin_auth_failures_total";

/// How long a client has to complete the admin listener's TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds the admin address and serves it (over TLS with `[admin.tls]`) until the returned
/// task is aborted.
pub(crate) async fn start(bind: SocketAddr, app: Arc<App>) -> std::io::Result<JoinHandle<()>> {
    let tls = admin_tls(&app.proxy.config().admin)?;
    let listener = TcpListener::bind(bind).await?;
    Ok(tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (app, tls) = (Arc::clone(&app), tls.clone());
            tokio::spawn(async move {
                let Some(tls) = tls else {
                    return serve(TokioIo::new(stream), app, peer, false).await;
                };
                match tls.accept(stream, HANDSHAKE_TIMEOUT).await {
                    Ok((stream, info)) => {
                        let client_cert = info.identity.is_some();
                        serve(TokioIo::new(stream), app, peer, client_cert).await;
                    }
                    Err(e) => {
                        tracing::info!(client = %peer, reason = e.reason, detail = %e.detail, "admin TLS handshake failed");
                    }
                }
            });
        }
    }))
}

/// `[admin.tls]`, loaded: client certificates are asked for, and optional, with `client_ca`.
fn admin_tls(config: &sluice_config::AdminConfig) -> std::io::Result<Option<ServerTls>> {
    let Some(t) = &config.tls else {
        return Ok(None);
    };
    let settings = ServerTlsSettings {
        certs: vec![CertKeyPaths {
            cert: t.cert.clone(),
            key: t.key.clone(),
        }],
        client_ca: t.client_ca.clone(),
        client_auth: if t.client_ca.is_some() {
            ClientAuth::Optional
        } else {
            ClientAuth::Off
        },
        min_version: MinVersion::Tls12,
        alpn_h2: false,
        alpn_http1: true,
    };
    ServerTls::load(&settings)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("[admin.tls]: {e}")))
}

/// Serves one admin connection; `client_cert`: its client certificate was verified.
async fn serve<IO>(io: IO, app: Arc<App>, peer: SocketAddr, client_cert: bool)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| guarded(req, Arc::clone(&app), peer, client_cert));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

/// Answers `req` once its credentials allow it.
async fn guarded(
    req: Request<Incoming>,
    app: Arc<App>,
    peer: SocketAddr,
    client_cert: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let scope = crate::admin_auth::scope_of(req.method(), req.uri().path());
    let authorization = req.headers().get(header::AUTHORIZATION);
    if let Some(scope) = scope
        && let Err(denied) =
            app.admin_auth
                .check(scope, authorization.map(|v| v.as_bytes()), client_cert)
    {
        return Ok(refused(denied, &req, peer));
    }
    handle(req, app).await
}

/// The answer to a request its token does not allow, logged and counted.
fn refused(denied: Denied, req: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    tracing::warn!(client = %peer, method = %req.method(), path = req.uri().path(), reason = denied.as_str(), "admin request refused");
    metrics::counter!(ADMIN_AUTH_FAILURES_TOTAL, "reason" => denied.as_str()).increment(1);
    let (status, detail) = match denied {
        Denied::Missing => (
            StatusCode::UNAUTHORIZED,
            "this API needs `Authorization: Bearer TOKEN` (or a client certificate, where [admin.tls] takes them)",
        ),
        Denied::Invalid => (
            StatusCode::UNAUTHORIZED,
            "the token is not one of this API's",
        ),
        Denied::Scope => (
            StatusCode::FORBIDDEN,
            "a `read` credential cannot do this: it needs an `admin` token or certificate",
        ),
    };
    let mut resp = json_response(status, &json!({"error": denied.as_str(), "detail": detail}));
    if status == StatusCode::UNAUTHORIZED {
        let challenge = if denied == Denied::Invalid {
            "Bearer realm=\"sluice-admin\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"sluice-admin\""
        };
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static(challenge),
        );
    }
    resp
}

async fn handle(
    req: Request<Incoming>,
    app: Arc<App>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(page) = status_page::serve(req.method(), req.uri().path(), req.headers()) {
        return Ok(page);
    }
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            let ready = app.ready.load(Ordering::SeqCst);
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(status, &json!({ "ready": ready }))
        }
        (&Method::GET, "/metrics") => {
            app.proxy.refresh_gauges();
            if let Some(discovery) = app.discovery.get() {
                discovery.refresh_gauges();
            }
            let mut resp = Response::new(Full::new(Bytes::from(app.metrics.render())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, "/api/routes") => json_response(StatusCode::OK, &app.proxy.routes()),
        (&Method::GET, "/api/services") => json_response(StatusCode::OK, &app.proxy.services()),
        (&Method::GET, "/api/listeners") => {
            json_response(StatusCode::OK, &app.proxy.listener_addrs())
        }
        (&Method::GET, "/api/reloads") => {
            json_response(StatusCode::OK, &app.reloads.newest_first())
        }
        (&Method::POST, "/api/reload") => match app.reload(Trigger::Api).await {
            Ok(summary) => {
                json_response(StatusCode::OK, &json!({"status": "ok", "applied": summary}))
            }
            Err(ReloadError::Invalid(diags)) => {
                let errors: Vec<_> = diags
                    .0
                    .iter()
                    .map(|d| {
                        json!({
                            "file": d.file, "line": d.line, "col": d.col,
                            "message": d.message, "hint": d.hint,
                            "text": d.to_string(),
                        })
                    })
                    .collect();
                json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"status": "invalid", "errors": errors}),
                )
            }
            Err(e @ ReloadError::Discovery(_)) => json_response(
                StatusCode::BAD_REQUEST,
                &json!({"status": "invalid", "error": e.to_string()}),
            ),
            Err(
                e
                @ (ReloadError::Apply(_) | ReloadError::Policies(_) | ReloadError::AdminTokens(_)),
            ) => json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"status": "failed", "error": e.to_string()}),
            ),
        },
        (&Method::GET, "/api/policies") => json_response(StatusCode::OK, &app.policies.list()),
        (&Method::GET, "/api/catalog") => match app.discovery.get() {
            Some(discovery) => json_response(StatusCode::OK, &discovery.catalog_json()),
            None => json_response(
                StatusCode::OK,
                &json!({"version": 0, "stale": false, "age_seconds": null, "sources": [], "instances": []}),
            ),
        },
        (&Method::POST, "/api/policies/reload") => {
            let policies = Arc::clone(&app.policies);
            match tokio::task::spawn_blocking(move || policies.reload()).await {
                Ok(report) => {
                    let status = if report.is_ok() {
                        StatusCode::OK
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    };
                    json_response(status, &report)
                }
                Err(e) => json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"error": e.to_string()}),
                ),
            }
        }
        (
            _,
            "/healthz"
            | "/readyz"
            | "/metrics"
            | "/api/routes"
            | "/api/services"
            | "/api/listeners"
            | "/api/reload"
            | "/api/reloads"
            | "/api/policies"
            | "/api/catalog"
            | "/api/policies/reload",
        ) => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method not allowed"}),
        ),
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    };
    Ok(resp)
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
