//! A deliberately small HTTP/1.1 client: one request per connection, `Content-Length`,
//! `chunked` and read-to-EOF bodies, and a line-oriented streaming body for etcd's watch.
//!
//! Why not hyper's client: the sidecar only ever talks to loopback or in-cluster plain-HTTP
//! endpoints (etcd's JSON gateway, a workload's status page), needs no pooling, TLS or HTTP/2, and
//! every dependency it links is paid for at every container start. This is ~250 lines over a
//! tokio `TcpStream` with `httparse` (no dependencies of its own) for the response head.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::KvError;

/// Largest response head accepted; etcd's are a few hundred bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest body read into memory for a unary call.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// The most one read of a body takes at once.
const READ_SIZE: usize = 8192;

/// `http://host:port` — where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEndpoint {
    host: String,
    port: u16,
}

impl HttpEndpoint {
    /// Parses `http://host:port`, `http://host` (port 80) or `host:port`. Paths are not part of
    /// an endpoint; `https` is refused with a clear reason instead of being spoken in plain text.
    pub fn parse(text: &str) -> Result<Self, KvError> {
        let bad = |reason: &str| KvError::BadEndpoint {
            endpoint: text.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = if let Some(rest) = text.strip_prefix("http://") {
            rest
        } else if text.starts_with("https://") {
            return Err(bad(
                "TLS is not supported by the built-in client; use http://",
            ));
        } else if text.contains("://") {
            return Err(bad("only http:// is supported"));
        } else {
            text
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(bad("expected http://host:port without a path"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                if host.contains(':') && !host.starts_with('[') {
                    return Err(bad(
                        "IPv6 addresses must be in brackets, e.g. http://[::1]:2379",
                    ));
                }
                let port: u16 = port
                    .parse()
                    .map_err(|_| bad("port is not a number 1-65535"))?;
                (host.to_owned(), port)
            }
            _ => (authority.to_owned(), 80),
        };
        if host.is_empty() || port == 0 {
            return Err(bad("missing host or port"));
        }
        Ok(Self { host, port })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn connect_target(&self) -> (String, u16) {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        (host.to_owned(), self.port)
    }

    fn host_header(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for HttpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}", self.host, self.port)
    }
}

/// A complete response to a unary request.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    Length(u64),
    Chunked,
    UntilEof,
}

/// A response whose body is read incrementally, one `\n`-terminated line at a time.
#[derive(Debug)]
pub struct HttpStream {
    endpoint: String,
    status: u16,
    reader: BufReader<TcpStream>,
    framing: BodyFraming,
    /// Bytes left in the current chunk (chunked) or in the body (length).
    remaining: u64,
    finished: bool,
    pending: Vec<u8>,
}

/// Sends one request and reads the whole response, all within `timeout`.
pub async fn request(
    endpoint: &HttpEndpoint,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, KvError> {
    let operation = format!("{method} {path}");
    let work = async {
        let mut stream = open(endpoint, method, path, body).await?;
        let body = stream.read_to_end().await?;
        Ok(HttpResponse {
            status: stream.status,
            body,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(KvError::Timeout {
                endpoint: endpoint.to_string(),
                operation,
                timeout,
            })
        })
}

/// Sends one request and returns as soon as the response head has arrived (within
/// `head_timeout`); the body is then read with [`HttpStream::next_line`], without a deadline.
pub async fn stream(
    endpoint: &HttpEndpoint,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    head_timeout: Duration,
) -> Result<HttpStream, KvError> {
    tokio::time::timeout(head_timeout, open(endpoint, method, path, body))
        .await
        .unwrap_or_else(|_| {
            Err(KvError::Timeout {
                endpoint: endpoint.to_string(),
                operation: format!("{method} {path}"),
                timeout: head_timeout,
            })
        })
}

async fn open(
    endpoint: &HttpEndpoint,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<HttpStream, KvError> {
    let name = endpoint.to_string();
    let unreachable = |source: std::io::Error| KvError::Unreachable {
        endpoint: name.clone(),
        source,
    };
    let mut tcp = TcpStream::connect(endpoint.connect_target())
        .await
        .map_err(unreachable)?;
    // Requests are small and latency matters more than packet count.
    tcp.set_nodelay(true).map_err(unreachable)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sluice\r\nAccept: */*\r\nConnection: close\r\n",
        endpoint.host_header()
    );
    if let Some(body) = body {
        head.push_str("Content-Type: application/json\r\n");
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    if let Some(body) = body {
        message.extend_from_slice(body);
    }
    tcp.write_all(&message).await.map_err(unreachable)?;

    let mut reader = BufReader::new(tcp);
    let mut head_bytes = Vec::with_capacity(512);
    loop {
        let before = head_bytes.len();
        let read = reader
            .read_until(b'\n', &mut head_bytes)
            .await
            .map_err(unreachable)?;
        if read == 0 {
            return Err(KvError::Protocol {
                endpoint: name,
                detail: "connection closed before the response head ended".into(),
            });
        }
        if head_bytes.len() > MAX_HEAD_BYTES {
            return Err(KvError::Protocol {
                endpoint: name,
                detail: format!("response head larger than {MAX_HEAD_BYTES} bytes"),
            });
        }
        let line = &head_bytes[before..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let parsed = response.parse(&head_bytes).map_err(|e| KvError::Protocol {
        endpoint: name.clone(),
        detail: e.to_string(),
    })?;
    if parsed.is_partial() {
        return Err(KvError::Protocol {
            endpoint: name,
            detail: "incomplete response head".into(),
        });
    }
    let status = response.code.unwrap_or(0);
    let mut framing = BodyFraming::UntilEof;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
            if value.contains("chunked") {
                framing = BodyFraming::Chunked;
            }
        } else if header.name.eq_ignore_ascii_case("content-length")
            && framing != BodyFraming::Chunked
        {
            let length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| KvError::Protocol {
                    endpoint: name.clone(),
                    detail: "invalid Content-Length".into(),
                })?;
            framing = BodyFraming::Length(length);
        }
    }
    let no_body =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    let remaining = match framing {
        BodyFraming::Length(length) => length,
        _ => 0,
    };
    Ok(HttpStream {
        endpoint: name,
        status,
        reader,
        framing,
        remaining,
        finished: no_body || framing == BodyFraming::Length(0),
        pending: Vec::new(),
    })
}

impl HttpStream {
    pub fn status(&self) -> u16 {
        self.status
    }

    fn protocol(&self, detail: impl Into<String>) -> KvError {
        KvError::Protocol {
            endpoint: self.endpoint.clone(),
            detail: detail.into(),
        }
    }

    fn io(&self, source: std::io::Error) -> KvError {
        KvError::Unreachable {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    /// Reads the next piece of the body into `pending`; `false` at the end of the body.
    async fn fill(&mut self) -> Result<bool, KvError> {
        if self.finished {
            return Ok(false);
        }
        match self.framing {
            BodyFraming::UntilEof => {
                let read = self.read_some(READ_SIZE).await?;
                self.finished = read == 0;
                Ok(read > 0)
            }
            BodyFraming::Length(_) => {
                self.read_counted("connection closed inside the body")
                    .await?;
                self.finished = self.remaining == 0;
                Ok(true)
            }
            BodyFraming::Chunked => {
                if self.remaining == 0 && !self.next_chunk().await? {
                    self.finished = true;
                    return Ok(false);
                }
                self.read_counted("connection closed inside a chunk")
                    .await?;
                if self.remaining == 0 {
                    self.chunk_end().await?;
                }
                Ok(true)
            }
        }
    }

    /// Reads at most `limit` bytes into `pending`; 0 at the end of the stream.
    async fn read_some(&mut self, limit: usize) -> Result<usize, KvError> {
        let mut buffer = [0u8; READ_SIZE];
        let limit = limit.min(READ_SIZE);
        let read = self
            .reader
            .read(&mut buffer[..limit])
            .await
            .map_err(|e| self.io(e))?;
        self.pending.extend_from_slice(&buffer[..read]);
        Ok(read)
    }

    /// Reads some of the `remaining` bytes of a sized body or chunk; the stream ending first is
    /// `closed_inside`.
    async fn read_counted(&mut self, closed_inside: &str) -> Result<(), KvError> {
        let want = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        let read = self.read_some(want).await?;
        if read == 0 {
            return Err(self.protocol(closed_inside));
        }
        self.remaining -= read as u64;
        Ok(())
    }

    /// Reads a chunk's size line into `remaining`; `false` for the last chunk (its trailers,
    /// which etcd sends as `Grpc-Trailer-...`, are read and dropped).
    async fn next_chunk(&mut self) -> Result<bool, KvError> {
        let size_line = self.read_line("connection closed between chunks").await?;
        let size_text = size_line.trim().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| self.protocol(format!("bad chunk size {size_text:?}")))?;
        if size > 0 {
            self.remaining = size;
            return Ok(true);
        }
        loop {
            let mut trailer = String::new();
            let read = self
                .reader
                .read_line(&mut trailer)
                .await
                .map_err(|e| self.io(e))?;
            if read == 0 || trailer.trim().is_empty() {
                return Ok(false);
            }
        }
    }

    /// One line of the chunked framing; the stream ending first is `closed`.
    async fn read_line(&mut self, closed: &str) -> Result<String, KvError> {
        let mut line = String::new();
        let read = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|e| self.io(e))?;
        if read == 0 {
            return Err(self.protocol(closed));
        }
        Ok(line)
    }

    /// The CRLF after a chunk's data.
    async fn chunk_end(&mut self) -> Result<(), KvError> {
        let mut crlf = [0u8; 2];
        self.reader
            .read_exact(&mut crlf)
            .await
            .map_err(|e| self.io(e))?;
        if &crlf != b"\r\n" {
            return Err(self.protocol("chunk not terminated by CRLF"));
        }
        Ok(())
    }

    /// The next line of the body without its `\n` (a last line without one is returned too);
    /// `None` at the end of the body.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, KvError> {
        loop {
            if let Some(position) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=position).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            if self.pending.len() > MAX_BODY_BYTES {
                return Err(self.protocol("line longer than the body limit"));
            }
            if !self.fill().await? {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.pending)));
            }
        }
    }

    /// Reads the rest of the body.
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>, KvError> {
        while self.fill().await? {
            if self.pending.len() > MAX_BODY_BYTES {
                return Err(self.protocol(format!("body larger than {MAX_BODY_BYTES} bytes")));
            }
        }
        Ok(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_or_explain() {
        let e = HttpEndpoint::parse("http://127.0.0.1:2379").expect("valid");
        assert_eq!((e.host(), e.port()), ("127.0.0.1", 2379));
        let e = HttpEndpoint::parse("localhost:8080/").expect("valid");
        assert_eq!((e.host(), e.port()), ("localhost", 8080));
        let e = HttpEndpoint::parse("http://[::1]:2379").expect("valid");
        assert_eq!(e.connect_target(), ("::1".to_owned(), 2379));
        assert_eq!(
            HttpEndpoint::parse("http://etcd").expect("valid").port(),
            80
        );
        for bad in [
            "https://x:1",
            "http://x:1/v3",
            "http://x:notaport",
            "ftp://x",
            "http://:1",
        ] {
            let err = HttpEndpoint::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
