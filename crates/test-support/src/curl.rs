//! curl as a test's HTTP client: one request, its status, response fields and body.

use std::process::Command;

use crate::process::require_tool;

/// One answer as curl saw it.
#[derive(Debug)]
pub struct CurlAnswer {
    /// The status code.
    pub status: u16,
    /// The status line and response fields, lower-cased (`contains("x-name: value")`).
    pub fields: String,
    /// The body, as text.
    pub body: String,
}

impl CurlAnswer {
    /// The body as JSON; panics, showing the body, when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A GET of `url` with the request fields `headers` (`"name: value"`) and more curl arguments
/// `extra` (`--http2-prior-knowledge`, ...); panics when curl itself fails.
pub fn curl(url: &str, headers: &[&str], extra: &[&str]) -> CurlAnswer {
    let mut cmd = Command::new(require_tool("curl"));
    cmd.args(["-sS", "--max-time", "10", "-D", "-"]).args(extra);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().unwrap();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head from {url}: {text}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status from {url}: {head}"));
    CurlAnswer {
        status,
        fields: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}
