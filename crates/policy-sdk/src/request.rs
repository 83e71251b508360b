//! Reading a [`Request`] and building a request policy's answers.
//!
//! ```
//! use sluice_policy_sdk::{Action, HttpRequest, Request, request};
//!
//! fn on_request(req: &Request<'_>) -> Action {
//!     match req.header("x-api-key").as_deref() {
//!         Some("letmein") => request::forward().set_header("x-user", "demo").into(),
//!         _ => request::error_reply(401, "unauthorized", "missing or wrong x-api-key"),
//!     }
//! }
//!
//! // In a unit test, a `Request` reads a whole `HttpRequest` built by the test.
//! let get = sluice_policy_sdk::testing::http_request("/", &[("x-api-key", "letmein")]);
//! assert!(matches!(on_request(&Request::from(&get)), Action::Forward(_)));
//! ```

use crate::__bindings::sluice::policy::http::RequestHead;
use crate::types::{Action, Forward, HeaderEdit, HttpRequest, Peer, Reply, RouteInfo};

/// The request a `request` policy decides on (its head: no body).
///
/// In WebAssembly it reads from the host on demand: each method call asks the host once and
/// copies only what it returns, so read a field once and keep the value. In native unit tests
/// it reads an [`HttpRequest`] the test built (`Request::from(&http_request)`).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a>(Source<'a>);

#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    Host(&'a RequestHead),
    Copied(&'a HttpRequest),
}

impl<'a> From<&'a HttpRequest> for Request<'a> {
    fn from(request: &'a HttpRequest) -> Self {
        Request(Source::Copied(request))
    }
}

impl<'a> Request<'a> {
    /// The request the host lends to `on-request` (used by [`crate::export_request!`]).
    #[doc(hidden)]
    pub fn from_host(head: &'a RequestHead) -> Self {
        Request(Source::Host(head))
    }

    /// `GET`, `POST`, ...
    pub fn method(&self) -> String {
        match self.0 {
            Source::Host(head) => head.method(),
            Source::Copied(request) => request.method.clone(),
        }
    }

    /// `http` or `https`: how the client reached Sluice.
    pub fn scheme(&self) -> String {
        match self.0 {
            Source::Host(head) => head.scheme(),
            Source::Copied(request) => request.scheme.clone(),
        }
    }

    /// The `Host` (or `:authority`) as sent; empty when absent.
    pub fn host(&self) -> String {
        match self.0 {
            Source::Host(head) => head.host(),
            Source::Copied(request) => request.host.clone(),
        }
    }

    /// The path, without the query.
    pub fn path(&self) -> String {
        match self.0 {
            Source::Host(head) => head.path(),
            Source::Copied(request) => request.path.clone(),
        }
    }

    /// The query without `?`; `None` when the target has no `?`.
    pub fn query(&self) -> Option<String> {
        match self.0 {
            Source::Host(head) => head.query(),
            Source::Copied(request) => request.query.clone(),
        }
    }

    /// The first value of the field `name` (any case). Bytes that are not UTF-8 come as U+FFFD.
    pub fn header(&self, name: &str) -> Option<String> {
        match self.0 {
            Source::Host(head) => head.header(name),
            Source::Copied(request) => request.header(name).map(str::to_owned),
        }
    }

    /// Every value of the field `name` (any case), in the order received.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        match self.0 {
            Source::Host(head) => head.header_values(name),
            Source::Copied(request) => request.headers_named(name).map(str::to_owned).collect(),
        }
    }

    /// The first value of the field `name` (any case), its bytes as the client sent them.
    pub fn header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        match self.0 {
            Source::Host(head) => head.header_bytes(name),
            Source::Copied(request) => request.header(name).map(|v| v.as_bytes().to_vec()),
        }
    }

    /// Every field, names in lower case, in the order received. Copies them all: prefer
    /// [`Request::header`] for the fields you need.
    pub fn headers(&self) -> Vec<(String, String)> {
        match self.0 {
            Source::Host(head) => head.headers(),
            Source::Copied(request) => request.headers.clone(),
        }
    }

    /// The connection the request came on.
    pub fn peer(&self) -> Peer {
        match self.0 {
            Source::Host(head) => head.peer(),
            Source::Copied(request) => request.peer.clone(),
        }
    }

    /// The route the request matched.
    pub fn route(&self) -> RouteInfo {
        match self.0 {
            Source::Host(head) => head.route(),
            Source::Copied(request) => request.route.clone(),
        }
    }

    /// Lets the host give this call's answer again, for up to `ttl` (at most ten minutes), to
    /// requests that agree with this one on every part this call read through `self` and every
    /// KV key it read: the host then answers them without calling the policy. Call it only when
    /// the answer depends on nothing else (not on the policy's own state, nor on the clock
    /// beyond `ttl`). In native unit tests it is recorded for [`crate::testing::take_cache_answer`].
    pub fn cache_answer(&self, ttl: std::time::Duration) {
        match self.0 {
            Source::Host(head) => {
                head.cache_answer(u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX));
            }
            Source::Copied(_) => crate::testing::record_cache_answer(ttl),
        }
    }
}

impl HttpRequest {
    /// The first value of the field `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the field `name` (case-insensitive), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Forward the request unchanged; add edits with the builder methods.
pub fn forward() -> Forward {
    Forward {
        headers: Vec::new(),
        path: None,
        service: None,
        response_context: None,
    }
}

impl Forward {
    /// Replaces every field `name` with one carrying `value`.
    pub fn set_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push(HeaderEdit::Set((name.to_owned(), value.to_owned())));
        self
    }

    /// Adds a field `name`, keeping those already there.
    pub fn append_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push(HeaderEdit::Append((name.to_owned(), value.to_owned())));
        self
    }

    /// Removes every field `name`.
    pub fn remove_header(mut self, name: &str) -> Self {
        self.headers.push(HeaderEdit::Remove(name.to_owned()));
        self
    }

    /// Sends the request to `service` (one of the route's `policy_services`) instead.
    pub fn to_service(mut self, service: &str) -> Self {
        self.service = Some(service.to_owned());
        self
    }

    /// Rewrites the path (and query) before the route's strip/prepend.
    pub fn with_path(mut self, path: &str) -> Self {
        self.path = Some(path.to_owned());
        self
    }
}

impl From<Forward> for Action {
    fn from(forward: Forward) -> Self {
        Action::Forward(forward)
    }
}

/// Answers with `status`, the fields given and `body` (at most 64 KiB).
pub fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Action {
    Action::Reply(Reply {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        body: body.into(),
    })
}

/// Answers with Sluice's JSON error shape: `{"error": code, "detail": detail}`.
pub fn error_reply(status: u16, code: &str, detail: &str) -> Action {
    let body = format!(
        "{{\"error\":{},\"detail\":{}}}\n",
        json_string(code),
        json_string(detail)
    );
    reply(status, &[("content-type", "application/json")], body)
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_is_json_with_escapes() {
        let Action::Reply(r) = error_reply(401, "unauthorized", "bad \"token\"\n") else {
            panic!("a reply");
        };
        assert_eq!(r.status, 401);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"], "unauthorized");
        assert_eq!(body["detail"], "bad \"token\"\n");
    }
}
