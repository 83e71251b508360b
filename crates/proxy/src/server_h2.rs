//! HTTP/2 on client connections — prior knowledge (h2c), or ALPN `h2` on TLS listeners —
//! served by hyper. Each request is brought to the shape HTTP/1.x requests have
//! ([`RequestHead::from_h2`]) and goes through the same handler; its answer goes back as
//! hyper's response.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;

use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::body::{DownBody, RequestBody};
use crate::conn::{ConnTimer, H2Io, Signal};
use crate::forward::{self, ConnCtx};
use sluice_codec::request::RequestHead;

/// Serves HTTP/2 streams on `io` until the client or an idle timeout ends the connection. When
/// the listener drains, the client is told to open no new streams (GOAWAY) and the open ones
/// finish.
pub(crate) async fn serve(
    io: H2Io,
    cx: Arc<ConnCtx>,
    builder: &http2::Builder<TokioExecutor>,
    drain: &Signal,
) {
    let mut drained = drain.watch();
    let peer = cx.peer;
    let service = service_fn(move |req: Request<Incoming>| {
        let cx = Arc::clone(&cx);
        async move { Ok::<_, Infallible>(handle(req, &cx).await) }
    });
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = drained.fired() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(client = %peer, error = %e, "HTTP/2 client connection ended with an error");
    }
}

async fn handle(req: Request<Incoming>, cx: &ConnCtx) -> Response<DownBody> {
    let (parts, body) = req.into_parts();
    let head = match RequestHead::from_h2(&parts) {
        Ok(head) => head,
        Err(e) => {
            let body = format!("{{\"error\":\"{}\",\"detail\":\"{}\"}}\n", e.kind, e.detail);
            let mut response = Response::new(DownBody::bare(body.into()));
            *response.status_mut() = e.status;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return response;
        }
    };
    let body = (!body.is_end_stream()).then_some(RequestBody::H2(body));
    // Each stream has its own timer (streams of a connection run concurrently).
    let mut timer = ConnTimer::default();
    forward::handle(&head, body, cx, &mut timer)
        .await
        .into_hyper()
}
