//! The `kind = "grpc"` probe: one `grpc.health.v1.Health/Check` call over cleartext HTTP/2 with
//! prior knowledge (h2c), spoken with the `h2` crate directly (a gRPC library would bring
//! tonic, prost and code generation for two one-field messages).
//!
//! What the probe reports: the serving status as the result's `status`, `grpc-status` and
//! `grpc-message` (percent-decoded) among its `headers`, the response message as its body.
//! Anything short of a complete `grpc-status: 0` answer is a [`ProbeError`] whose message says
//! what went wrong — the target does not speak HTTP/2 (and what it answered instead), the stream
//! was reset, the HTTP status was not 200, the gRPC status was an error (by code and name), or
//! the message was malformed. The whole probe runs under the check's timeout (`probe::run`).

use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Request, StatusCode, header};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::grpc_wire as wire;
use super::{Answer, io_error};
use crate::verdict::{ProbeError, ProbeErrorKind};

/// The most bytes of response read: a real `HealthCheckResponse` takes 7 bytes, so a longer
/// answer is not one, and a broken server streaming forever must not fill memory.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// Bytes kept of what the target sent first, to say what it speaks when it is not HTTP/2.
const FIRST_BYTES_KEPT: usize = 64;

/// Asks the health service at `addr` about `service`; keeps `body_bytes` of the message.
pub(super) async fn probe(
    addr: SocketAddr,
    service: &str,
    body_bytes: usize,
) -> Result<Answer, ProbeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| io_error("connect", &e))?;
    let _ = stream.set_nodelay(true);
    let first = FirstBytes::default();
    let io = Recorded {
        io: stream,
        first: first.clone(),
    };
    let (client, mut connection) = h2::client::Builder::new()
        .initial_window_size(MAX_ANSWER_BYTES as u32)
        .max_header_list_size(MAX_ANSWER_BYTES as u32)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| h2_error(&e, &first))?;
    let mut call = pin!(call(client, request(addr)?, service));
    // The connection is driven here, next to the call: dropping the probe at its timeout ends
    // both, with no task left behind.
    let reply = tokio::select! {
        biased;
        reply = &mut call => reply,
        ended = &mut connection => match ended {
            Ok(()) => call.await,
            Err(e) => Err(e),
        },
    };
    let reply = reply.map_err(|e| h2_error(&e, &first))?;
    Ok(reply.into_answer(body_bytes))
}

fn request(addr: SocketAddr) -> Result<Request<()>, ProbeError> {
    // `:authority` comes from the URI: the address probed, as the HTTP probe's `Host`.
    Request::post(format!("http://{addr}{}", wire::PATH))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, "sluice-health")
        .body(())
        .map_err(|e| ProbeError {
            kind: ProbeErrorKind::Other,
            message: format!("request: {e}"),
        })
}

/// What the target answered, before any gRPC meaning is given to it.
struct Reply {
    status: StatusCode,
    head: HeaderMap,
    data: Vec<u8>,
    /// More than [`MAX_ANSWER_BYTES`] arrived; reading stopped there.
    too_long: bool,
    trailers: Option<HeaderMap>,
}

async fn call(
    client: SendRequest<Bytes>,
    request: Request<()>,
    service: &str,
) -> Result<Reply, h2::Error> {
    let mut client = client.ready().await?;
    let (response, mut body) = client.send_request(request, false)?;
    body.send_data(wire::request(service), true)?;
    let (head, mut incoming) = response.await?.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = incoming.data().await {
        let chunk = chunk?;
        let _ = incoming.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
        if data.len() > MAX_ANSWER_BYTES {
            return Ok(Reply {
                status: head.status,
                head: head.headers,
                data,
                too_long: true,
                trailers: None,
            });
        }
    }
    Ok(Reply {
        status: head.status,
        head: head.headers,
        data,
        too_long: false,
        trailers: incoming.trailers().await?,
    })
}

impl Reply {
    /// The gRPC meaning of the answer: the serving status, or why there is none.
    fn into_answer(self, body_bytes: usize) -> Answer {
        if self.status != StatusCode::OK {
            return failed(
                Vec::new(),
                format!("HTTP status {} (gRPC answers 200)", self.status.as_u16()),
            );
        }
        if self.too_long {
            let message =
                format!("the answer is over {MAX_ANSWER_BYTES} bytes: not a HealthCheckResponse");
            return failed(Vec::new(), message);
        }
        // A trailers-only answer (an error, usually) carries grpc-status in its only HEADERS.
        let grpc = match &self.trailers {
            Some(trailers) if trailers.contains_key("grpc-status") => trailers,
            _ => &self.head,
        };
        let (code, headers) = match grpc_status(grpc, &self.head) {
            Ok(found) => found,
            Err(message) => return failed(Vec::new(), message),
        };
        if code != 0 {
            let mut message = format!("grpc-status {code} ({})", wire::code_name(code));
            let detail = headers.iter().find(|(name, _)| name == "grpc-message");
            if let Some((_, detail)) = detail.filter(|(_, d)| !d.is_empty()) {
                message = format!("{message}: {detail}");
            }
            return failed(headers, message);
        }
        let read = wire::message(&self.data)
            .and_then(|message| Ok((message, wire::serving_status(message)?)));
        match read {
            Ok((message, status)) => Answer {
                status: Some(status),
                headers,
                body: message[..message.len().min(body_bytes)].to_vec(),
                error: None,
            },
            Err(e) => failed(headers, format!("malformed HealthCheckResponse: {e}")),
        }
    }
}

/// `grpc-status` read from `grpc`, and the fields kept for a policy (`grpc-status`, then
/// `grpc-message` when sent); or why the answer has none.
fn grpc_status(grpc: &HeaderMap, head: &HeaderMap) -> Result<(u32, Vec<(String, String)>), String> {
    let Some(value) = grpc.get("grpc-status") else {
        let content_type = head
            .get(header::CONTENT_TYPE)
            .map_or("none".into(), |v| String::from_utf8_lossy(v.as_bytes()));
        return Err(format!(
            "no grpc-status in the answer (content-type {content_type}): not a gRPC server"
        ));
    };
    let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
    let code = text
        .parse::<u32>()
        .map_err(|_| format!("grpc-status {text:?} is not a number"))?;
    let mut kept = vec![("grpc-status".to_owned(), text)];
    if let Some(message) = grpc.get("grpc-message") {
        let message = wire::percent_decode(&String::from_utf8_lossy(message.as_bytes()));
        kept.push(("grpc-message".to_owned(), message));
    }
    Ok((code, kept))
}

/// An answer that tells the probe failed, keeping the gRPC fields a policy may read.
fn failed(headers: Vec<(String, String)>, message: String) -> Answer {
    Answer {
        status: None,
        headers,
        body: Vec::new(),
        error: Some(ProbeError {
            kind: ProbeErrorKind::Other,
            message,
        }),
    }
}

/// An HTTP/2 failure, said precisely: when the target never sent HTTP/2's SETTINGS, what it
/// did instead; else the stream reset, GOAWAY or I/O error with its reason.
fn h2_error(e: &h2::Error, first: &FirstBytes) -> ProbeError {
    let seen = first.get();
    if !starts_with_settings(&seen) {
        return ProbeError {
            kind: ProbeErrorKind::Other,
            message: format!(
                "HTTP/2 handshake failed: {}: it does not speak HTTP/2 with prior knowledge (h2c)",
                instead_of_h2(&seen, e)
            ),
        };
    }
    if let Some(io) = e.get_io() {
        return io_error("HTTP/2", io);
    }
    let kind = if e.is_reset() || e.is_go_away() {
        ProbeErrorKind::Reset
    } else {
        ProbeErrorKind::Other
    };
    let message = match (e.is_reset(), e.reason()) {
        (true, Some(reason)) => format!("the call's stream was reset: {reason}"),
        _ => format!("HTTP/2: {e}"),
    };
    ProbeError { kind, message }
}

/// A server's first frame is SETTINGS: 3 bytes length, then type 0x4.
fn starts_with_settings(seen: &[u8]) -> bool {
    seen.get(3) == Some(&0x4)
}

/// What a target that is not an h2c server did, from its first bytes (an HTTP/1.x server
/// answers the preface `400`, or closes without a word as hyper's does; a TLS one alerts).
fn instead_of_h2(seen: &[u8], e: &h2::Error) -> String {
    if seen.is_empty() {
        return format!("the target closed the connection without a byte ({e})");
    }
    if seen.starts_with(b"HTTP/") {
        let line = seen
            .split(|b| *b == b'\r' || *b == b'\n')
            .next()
            .unwrap_or(seen);
        return format!("the target answered {:?}", String::from_utf8_lossy(line));
    }
    format!(
        "the target's first bytes are not an HTTP/2 SETTINGS frame: \"{}\"",
        seen.escape_ascii()
    )
}

/// The first bytes the target sent, shared between the stream (inside h2) and the probe.
#[derive(Debug, Clone, Default)]
struct FirstBytes(Arc<Mutex<Vec<u8>>>);

impl FirstBytes {
    fn get(&self) -> Vec<u8> {
        self.0.lock().map(|b| b.clone()).unwrap_or_default()
    }

    fn record(&self, read: &[u8]) {
        if let Ok(mut kept) = self.0.lock() {
            let room = FIRST_BYTES_KEPT.saturating_sub(kept.len());
            kept.extend_from_slice(&read[..read.len().min(room)]);
        }
    }
}

/// The connection to the target, recording the first bytes read from it.
struct Recorded {
    io: TcpStream,
    first: FirstBytes,
}

impl AsyncRead for Recorded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.first.record(&buf.filled()[before..]);
        polled
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, head: &[(&str, &str)], data: &[u8], trailers: &[(&str, &str)]) -> Reply {
        let map = |fields: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in fields {
                let name =
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
                map.append(name, v.parse().unwrap_or_else(|e| panic!("{e}")));
            }
            map
        };
        Reply {
            status: StatusCode::from_u16(status).unwrap_or_else(|e| panic!("{e}")),
            head: map(head),
            data: data.to_vec(),
            too_long: false,
            trailers: (!trailers.is_empty()).then(|| map(trailers)),
        }
    }

    fn error(answer: &Answer) -> &str {
        answer.error.as_ref().map_or("", |e| e.message.as_str())
    }

    #[test]
    fn answers_are_read_from_trailers_or_a_trailers_only_head() {
        let grpc = ("content-type", "application/grpc");
        let ok = reply(
            200,
            &[grpc],
            &[0, 0, 0, 0, 2, 0x08, 2],
            &[("grpc-status", "0")],
        );
        let answer = ok.into_answer(1);
        assert_eq!(
            (answer.status, answer.body.as_slice()),
            (Some(2), &[0x08][..])
        );
        assert_eq!(answer.headers, [("grpc-status".to_owned(), "0".to_owned())]);

        let only = reply(
            200,
            &[grpc, ("grpc-status", "12"), ("grpc-message", "no%20health")],
            &[],
            &[],
        );
        let answer = only.into_answer(64);
        assert_eq!(error(&answer), "grpc-status 12 (UNIMPLEMENTED): no health");
        assert_eq!(
            answer.headers[1],
            ("grpc-message".to_owned(), "no health".to_owned())
        );

        let no_message = reply(200, &[grpc], &[], &[("grpc-status", "14")]);
        assert_eq!(
            error(&no_message.into_answer(64)),
            "grpc-status 14 (UNAVAILABLE)"
        );
    }

    #[test]
    fn answers_that_are_not_a_health_response_say_why() {
        let grpc = ("content-type", "application/grpc");
        let status = ("grpc-status", "0");
        assert_eq!(
            error(&reply(404, &[], &[], &[]).into_answer(64)),
            "HTTP status 404 (gRPC answers 200)"
        );
        assert_eq!(
            error(&reply(200, &[grpc], &[], &[("grpc-status", "OK")]).into_answer(64)),
            "grpc-status \"OK\" is not a number"
        );
        assert_eq!(
            error(&reply(200, &[grpc], &[0, 0, 0, 0, 2, 0x08], &[status]).into_answer(64)),
            "malformed HealthCheckResponse: the message frame says 2 bytes, 1 arrived"
        );
        let mut long = reply(200, &[grpc], &[0; 10], &[status]);
        long.too_long = true;
        assert_eq!(
            error(&long.into_answer(64)),
            "the answer is over 16384 bytes: not a HealthCheckResponse"
        );
    }

    #[test]
    fn what_a_target_sent_instead_of_http2_is_named() {
        let e = h2::Error::from(h2::Reason::PROTOCOL_ERROR);
        assert_eq!(
            instead_of_h2(b"\x15\x03\x01\x00\x02\x02\x32", &e),
            "the target's first bytes are not an HTTP/2 SETTINGS frame: \"\\x15\\x03\\x01\\x00\\x02\\x022\""
        );
        assert!(starts_with_settings(&[0, 0, 6, 4, 0]));
        assert!(!starts_with_settings(b"HTTP/1.1 400"));
    }
}
