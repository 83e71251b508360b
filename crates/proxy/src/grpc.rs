//! gRPC on the request path. A gRPC call is an HTTP/2 request whose `content-type` is
//! `application/grpc` (or `application/grpc+…`); the proxy passes it through like any request
//! (trailers included), and only two things change:
//! - its `grpc-timeout` (the client's deadline) shortens the request's total deadline;
//! - Sluice's own errors reach the client as gRPC errors: a trailers-only response (HTTP 200,
//!   `grpc-status`, `grpc-message`) instead of a JSON body the client cannot read, with the
//!   code the gRPC spec's HTTP mapping gives, except that a timeout is DEADLINE_EXCEEDED.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use sluice_codec::request::RequestHead;

use crate::error::{ProxyError, ProxyErrorKind};

/// Whether `head` is a gRPC call (HTTP/2 only: gRPC never runs over HTTP/1.x, and HTTP/1.x
/// requests then pay nothing for the check).
pub(crate) fn is_grpc(head: &RequestHead) -> bool {
    head.version == Version::HTTP_2
        && head
            .get("content-type")
            .and_then(|ct| ct.strip_prefix(b"application/grpc"))
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

/// The call's `grpc-timeout`: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub(crate) fn timeout(head: &RequestHead) -> Option<Duration> {
    let value = head.get("grpc-timeout")?;
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status code (and its name) for one of Sluice's errors.
pub(crate) fn code(kind: ProxyErrorKind) -> (u8, &'static str) {
    use ProxyErrorKind as K;
    match kind {
        K::NoRoute => (12, "UNIMPLEMENTED"),
        K::ResponseHeaderTimeout | K::DeadlineExceeded | K::ClientBodyTimeout => {
            (4, "DEADLINE_EXCEEDED")
        }
        K::AccessDenied => (7, "PERMISSION_DENIED"),
        K::RateLimited => (8, "RESOURCE_EXHAUSTED"),
        K::ClientBodyError => (13, "INTERNAL"),
        K::NoInstance
        | K::NoPrimary
        | K::Overloaded
        | K::PolicyFailed
        | K::ConnectFailed
        | K::ConnectTimeout
        | K::UpstreamReset
        | K::BadResponse => (14, "UNAVAILABLE"),
    }
}

/// The head of a trailers-only response carrying `err` (its body is empty).
pub(crate) fn error_head(err: &ProxyError) -> (StatusCode, HeaderMap) {
    let (code, _) = code(err.kind);
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from(u16::from(code)),
    );
    let message = format!("{}: {}", err.kind.as_str(), err.detail);
    if let Ok(v) = HeaderValue::from_bytes(&percent_encode(message.as_bytes())) {
        headers.insert(HeaderName::from_static("grpc-message"), v);
    }
    (StatusCode::OK, headers)
}

/// `grpc-message` encoding: printable ASCII except `%` as is, every other byte `%XX`.
fn percent_encode(text: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use sluice_codec::h2::head::Head;

    fn h2_head(fields: &[(&str, &str)]) -> RequestHead {
        let pseudo = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "svc"),
            (":path", "/pkg.Svc/Call"),
        ];
        let bytes = pseudo
            .iter()
            .chain(fields)
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()));
        RequestHead::from_h2_head(&Head::checked(bytes, 4096, false).unwrap()).unwrap()
    }

    #[test]
    fn grpc_calls_are_told_by_content_type() {
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            assert_eq!(is_grpc(&h2_head(&[("content-type", ct)])), grpc, "{ct}");
        }
        assert!(!is_grpc(&h2_head(&[])));
    }

    #[test]
    fn grpc_timeouts_follow_the_spec() {
        let t = |v: &str| timeout(&h2_head(&[("grpc-timeout", v)]));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn errors_become_trailers_only_responses() {
        let err = ProxyError::new(ProxyErrorKind::NoInstance, "no instance of `greeter` is up");
        let (status, headers) = error_head(&err);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["grpc-status"], "14");
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(
            headers["grpc-message"],
            "no_healthy_instance: no instance of `greeter` is up"
        );
        assert_eq!(percent_encode("50% é\n".as_bytes()), b"50%25 %C3%A9%0A");
        assert_eq!(
            code(ProxyErrorKind::DeadlineExceeded).1,
            "DEADLINE_EXCEEDED"
        );
    }
}
