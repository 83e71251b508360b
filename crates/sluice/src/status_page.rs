//! The status page at `/` on the admin listener: an HTML shell, one script and one style sheet,
//! compiled into the binary so the page works wherever the binary runs.
//!
//! The files hold no data: the script fetches `/api/*` every 2 s and draws what they answer,
//! so the files are served without a token (admin_auth.rs) and every answer can be cached by
//! its `ETag`. The `Content-Security-Policy` lets the page run only its own script and style
//! and talk only to its own origin: no inline script, nothing injected runs.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use sha2::{Digest, Sha256};

/// Only the page's own files, only its own origin; no plugins, frames, forms posted elsewhere
/// or `<base>` tricks.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Browsers keep the files but ask again each time (answered `304` while the `ETag` holds),
/// so a new binary's page shows at the next load.
const CACHE_CONTROL: &str = "no-cache";

/// One embedded file and the `ETag` of its content.
#[derive(Debug)]
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(path: &'static str, content_type: &'static str, body: &'static str) -> Self {
        Asset {
            path,
            content_type,
            body,
            etag: etag_of(body),
        }
    }
}

/// The files, with their digests computed once, at the first request.
static ASSETS: LazyLock<[Asset; 3]> = LazyLock::new(|| {
    [
        Asset::new(
            "/",
            "text/html; charset=utf-8",
            include_str!("../assets/index.html"),
        ),
        Asset::new(
            "/assets/status.js",
            "text/javascript; charset=utf-8",
            include_str!("../assets/status.js"),
        ),
        Asset::new(
            "/assets/status.css",
            "text/css; charset=utf-8",
            include_str!("../assets/status.css"),
        ),
    ]
});

/// A strong `ETag`: the first 128 bits of the content's SHA-256, in hex, quoted.
fn etag_of(body: &str) -> HeaderValue {
    let digest = Sha256::digest(body.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::try_from(format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

/// Whether `path` is one of the page's files (or would be, under `/assets/`): paths that carry
/// no data and need no token.
pub(crate) fn is_page_path(path: &str) -> bool {
    path == "/" || path.starts_with("/assets/")
}

/// The answer for one of the page's files; `None` for any other path (or an unknown asset,
/// which the admin API answers `404`).
pub(crate) fn serve(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<Response<Full<Bytes>>> {
    let asset = ASSETS.iter().find(|a| a.path == path)?;
    if method != Method::GET && method != Method::HEAD {
        return Some(method_not_allowed());
    }
    // HEAD gets the same head; hyper sends no body after it.
    if matches_etag(headers, &asset.etag) {
        return Some(with_headers(asset, StatusCode::NOT_MODIFIED, Bytes::new()));
    }
    Some(with_headers(
        asset,
        StatusCode::OK,
        Bytes::from_static(asset.body.as_bytes()),
    ))
}

/// Whether `If-None-Match` names `etag` (or is `*`); weak tags compare by their value, as
/// RFC 9110 §13.1.2 says for this field.
fn matches_etag(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

fn with_headers(asset: &Asset, status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::ETAG, asset.etag.clone());
    for (name, value) in [
        (header::CONTENT_TYPE, asset.content_type),
        (header::CACHE_CONTROL, CACHE_CONTROL),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    resp
}

fn method_not_allowed() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(
        b"{\"error\": \"method not allowed\"}\n",
    )));
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn if_none_match(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, value.parse().unwrap());
        headers
    }

    #[test]
    fn etags_differ_by_content_and_match_weakly() {
        let js = &ASSETS[1].etag;
        assert_ne!(js, &ASSETS[2].etag);
        assert_eq!(js.len(), 34, "{js:?}");
        let tag = js.to_str().unwrap();
        assert!(matches_etag(&if_none_match(tag), js));
        assert!(matches_etag(&if_none_match(&format!("\"x\", W/{tag}")), js));
        assert!(matches_etag(&if_none_match("*"), js));
        assert!(!matches_etag(&if_none_match("\"x\""), js));
        assert!(!matches_etag(&HeaderMap::new(), js));
    }

    #[test]
    fn only_the_page_files_are_served() {
        let none = HeaderMap::new();
        assert!(serve(&Method::GET, "/api/services", &none).is_none());
        assert!(serve(&Method::GET, "/assets/other.js", &none).is_none());
        let post = serve(&Method::POST, "/", &none).unwrap();
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(is_page_path("/assets/other.js") && !is_page_path("/api/services"));
    }
}
