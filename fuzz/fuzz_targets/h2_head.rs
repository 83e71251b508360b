//! An HTTP/2 request (as the h2 layer hands it over: method, URI, header map) brought to the
//! shape of HTTP/1.x heads by `RequestHead::from_h2`, from arbitrary pseudo-header and field
//! bytes (whatever the `http` types accept).
//!
//! Properties:
//! - never panics;
//! - an accepted request keeps its method, path (in canonical form) and query, and every field
//!   in order;
//! - its host (from `:authority` or `Host`), if any, is `host[:port]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_codec::fields::valid_host;
use sluice_codec::path::normalize_target;
use sluice_codec::request::RequestHead;

fuzz_target!(|input: (Vec<u8>, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)| {
    let (method, uri, fields) = input;
    let Ok(method) = http::Method::from_bytes(&method) else {
        return;
    };
    let Ok(uri) = http::Uri::try_from(uri) else {
        return;
    };
    let mut request = http::Request::builder().method(method).uri(uri);
    for (name, value) in &fields {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            request = request.header(n, v);
        }
    }
    let Ok(request) = request.version(http::Version::HTTP_2).body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let Ok(head) = RequestHead::from_h2(&parts) else {
        return;
    };
    assert_eq!(head.method, parts.method);
    if let Some(pq) = parts.uri.path_and_query() {
        let canonical = normalize_target(pq.as_str()).expect("an accepted target normalizes");
        assert_eq!(head.target(), canonical);
    }
    if let Some(host) = head.host() {
        assert!(valid_host(host), "{host:?}");
    }
    let buf = head.buffer();
    let got: Vec<(&[u8], &[u8])> = head
        .field_list()
        .iter()
        .map(|f| (f.name.get(buf), f.value.get(buf)))
        .collect();
    let lengths = parts.headers.get_all(http::header::CONTENT_LENGTH).iter().count();
    if lengths <= 1 {
        let expected: Vec<(&[u8], &[u8])> = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            .collect();
        if !expected.iter().any(|(n, v)| *n == b"content-length" && v.contains(&b',')) {
            assert_eq!(got, expected);
        }
    }
});
