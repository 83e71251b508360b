//! Reading an [`HttpRequest`] and building a request policy's answers.
//!
//! ```
//! use sluice_policy_sdk::{Action, HttpRequest, request};
//!
//! fn on_request(req: &HttpRequest) -> Action {
//!     match req.header("x-api-key") {
//!         Some("letmein") => request::forward().set_header("x-user", "demo").into(),
//!         _ => request::error_reply(401, "unauthorized", "missing or wrong x-api-key"),
//!     }
//! }
//! ```

use crate::types::{Action, Forward, HeaderEdit, HttpRequest, Reply};

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
