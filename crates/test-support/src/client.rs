//! A real HTTP client (hyper's pooled client) for tests, speaking HTTP/1.1 or HTTP/2 with
//! prior knowledge.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A complete response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body parsed as JSON (panics with the body text if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `backend` from a test backend's JSON answer.
    pub fn backend(&self) -> String {
        self.json()["backend"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// An HTTP client with keep-alive.
#[derive(Debug, Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// HTTP/1.1 with keep-alive.
    pub fn http1() -> Self {
        Self {
            inner: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// HTTP/2 with prior knowledge (h2c).
    pub fn h2c() -> Self {
        Self {
            inner: HyperClient::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// GET `url`.
    pub async fn get(&self, url: &str) -> Result<Reply, String> {
        self.request(Method::GET, url, &[], Bytes::new()).await
    }

    /// Sends a request with headers and a body; times out after 30 s so a broken proxy fails
    /// the test instead of hanging it.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let mut builder = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| format!("request to {url}: {e:?}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("body from {url}: {e}"))?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .map_err(|_| format!("request to {url} took more than 30 s"))?
    }
}
