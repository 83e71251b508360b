//! The access log: one line per request, written by a dedicated thread.
//!
//! The request path formats its line and hands it over a bounded channel; it never waits for
//! the disk. When the writer falls behind and the channel is full, the line is dropped and
//! counted (`sluice_access_log_dropped_total`) rather than slowing traffic. The writer batches
//! lines and flushes whenever the channel runs empty, on reopen and on shutdown; files are
//! opened in append mode so a restarted Sluice continues the same log (seed 002's logger).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use http::{Method, Version};
use metrics::{Counter, counter};
use serde::Serialize;
use sluice_config::{AccessLogConfig, AccessLogFormat, AccessLogTarget};

use crate::metrics::ACCESS_LOG_DROPPED_TOTAL;

enum Msg {
    Line(String),
    Reopen,
    Shutdown,
}

/// A handle to the access-log writer; cheap to clone. `AccessLog::off()` logs nothing.
#[derive(Debug, Clone)]
pub struct AccessLog {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: SyncSender<Msg>,
    format: AccessLogFormat,
    dropped: Counter,
    writer: Mutex<Option<JoinHandle<()>>>,
    config: AccessLogConfig,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("config", &self.config)
            .finish()
    }
}

impl AccessLog {
    /// A log that writes nothing.
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// Starts the writer thread for `config`. Fails if the file cannot be opened.
    pub fn start(config: &AccessLogConfig) -> io::Result<Self> {
        let sink = match &config.target {
            AccessLogTarget::Off => return Ok(Self::off()),
            AccessLogTarget::Stdout => Sink::Stdout,
            AccessLogTarget::File(path) => Sink::File {
                path: path.clone(),
                file: open_append(path)?,
            },
        };
        let (tx, rx) = sync_channel(config.buffer_lines);
        let writer = std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || write_loop(rx, sink))?;
        Ok(Self {
            inner: Some(Arc::new(Inner {
                tx,
                format: config.format,
                dropped: counter!(ACCESS_LOG_DROPPED_TOTAL),
                writer: Mutex::new(Some(writer)),
                config: config.clone(),
            })),
        })
    }

    /// Whether lines are written at all (callers skip collecting fields when not).
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The configuration this log was started with (`None` when off).
    pub fn config(&self) -> Option<&AccessLogConfig> {
        self.inner.as_ref().map(|i| &i.config)
    }

    /// Reopens the file (after log rotation moved it away).
    pub fn reopen(&self) {
        if let Some(inner) = &self.inner {
            let _ = inner.tx.try_send(Msg::Reopen);
        }
    }

    /// Flushes what is queued and stops the writer. Lines logged afterwards are dropped.
    pub fn shutdown(&self) {
        if let Some(inner) = &self.inner {
            let _ = inner.tx.send(Msg::Shutdown);
            let handle = inner.writer.lock().ok().and_then(|mut w| w.take());
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
    }

    pub(crate) fn log(&self, entry: &Entry<'_>) {
        let Some(inner) = &self.inner else { return };
        let line = match inner.format {
            AccessLogFormat::Json => entry.json(),
            AccessLogFormat::Combined => entry.combined(),
        };
        self.log_line(line);
    }

    /// Queues a line that is already formatted (TCP sessions are logged as JSON whatever the
    /// format: the combined format has no fields for them).
    pub(crate) fn log_line(&self, line: String) {
        let Some(inner) = &self.inner else { return };
        match inner.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                inner.dropped.increment(1)
            }
        }
    }
}

enum Sink {
    Stdout,
    File { path: PathBuf, file: std::fs::File },
}

fn open_append(path: &PathBuf) -> io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_loop(rx: Receiver<Msg>, sink: Sink) {
    let (mut out, path): (BufWriter<Box<dyn Write + Send>>, Option<PathBuf>) = match sink {
        Sink::Stdout => (
            BufWriter::with_capacity(64 * 1024, Box::new(io::stdout())),
            None,
        ),
        Sink::File { path, file } => (
            BufWriter::with_capacity(64 * 1024, Box::new(file)),
            Some(path),
        ),
    };
    let report = |what: &str, e: io::Error| tracing::error!(error = %e, "access log {what} failed");
    while let Ok(msg) = rx.recv() {
        let mut next = Some(msg);
        // Drain whatever is queued before flushing: one write syscall per batch.
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(line) => {
                    if let Err(e) = out.write_all(line.as_bytes()) {
                        report("write", e);
                    }
                }
                Msg::Reopen => {
                    if let Err(e) = out.flush() {
                        report("flush", e);
                    }
                    if let Some(p) = &path {
                        match open_append(p) {
                            Ok(f) => out = BufWriter::with_capacity(64 * 1024, Box::new(f)),
                            Err(e) => report("reopen", e),
                        }
                    }
                }
                Msg::Shutdown => {
                    if let Err(e) = out.flush() {
                        report("flush", e);
                    }
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            report("flush", e);
        }
    }
    let _ = out.flush();
}

/// What the request path knows when the request arrives (collected only when logging).
#[derive(Debug)]
pub(crate) struct RequestInfo {
    pub(crate) client: SocketAddr,
    pub(crate) listener: Arc<str>,
    pub(crate) method: Method,
    /// Path and query as received.
    pub(crate) target: String,
    pub(crate) version: Version,
    pub(crate) host: Option<String>,
    pub(crate) referer: Option<String>,
    pub(crate) user_agent: Option<String>,
    /// The connection's TLS session, on TLS listeners.
    pub(crate) tls: Option<Arc<crate::tls::ConnTls>>,
    /// The W3C trace id (32 hex digits), the client's or started by Sluice.
    pub(crate) trace_id: [u8; 32],
}

impl RequestInfo {
    pub(crate) fn new(
        head: &sluice_codec::request::RequestHead,
        client: SocketAddr,
        (listener, tls): (&Arc<str>, Option<&Arc<crate::tls::ConnTls>>),
        trace: &crate::trace::TraceContext,
    ) -> Self {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Self {
            client,
            listener: Arc::clone(listener),
            method: head.method.clone(),
            target: head.target().to_owned(),
            version: head.version,
            host: head.host().map(text),
            referer: head.referer().map(text),
            user_agent: head.user_agent().map(text),
            tls: tls.cloned(),
            trace_id: trace.trace_id().as_bytes().try_into().unwrap_or([b'0'; 32]),
        }
    }
}

/// One finished request.
#[derive(Debug, Serialize)]
pub(crate) struct Entry<'a> {
    pub(crate) time: String,
    pub(crate) listener: &'a str,
    pub(crate) client: SocketAddr,
    #[serde(serialize_with = "as_str")]
    pub(crate) method: &'a Method,
    pub(crate) host: Option<&'a str>,
    pub(crate) path: &'a str,
    pub(crate) proto: &'static str,
    pub(crate) status: u16,
    pub(crate) route: Option<&'a str>,
    pub(crate) service: Option<&'a str>,
    pub(crate) upstream: Option<&'a str>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) duration_ms: f64,
    pub(crate) upstream_ms: Option<f64>,
    pub(crate) retries: u32,
    pub(crate) request_id: &'a str,
    pub(crate) trace_id: &'a str,
    pub(crate) error: Option<String>,
    pub(crate) completed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls: Option<crate::tls::TlsLog<'a>>,
    #[serde(skip)]
    pub(crate) referer: Option<&'a str>,
    #[serde(skip)]
    pub(crate) user_agent: Option<&'a str>,
}

fn as_str<S: serde::Serializer>(m: &&Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}

pub(crate) fn proto_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2026-11-21T22:28:00.123Z`.
pub(crate) fn rfc3339_now() -> String {
    let t = time::OffsetDateTime::now_utc();
    let mut s = String::with_capacity(24);
    let _ = write!(
        s,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    );
    s
}

impl Entry<'_> {
    fn json(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }

    /// Apache "combined" plus Sluice's fields as `key=value`.
    fn combined(&self) -> String {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let t = time::OffsetDateTime::now_utc();
        let q = |v: Option<&str>| v.map_or_else(|| "-".to_owned(), |s| s.replace('"', "\\\""));
        let mut s = String::with_capacity(256);
        let _ = write!(
            s,
            "{} - - [{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000] \"{} {} {}\" {} {} \"{}\" \"{}\" rt={:.3} urt={} svc={} up={} retries={} rid={}",
            self.client.ip(),
            t.day(),
            MONTHS[usize::from(u8::from(t.month())) - 1],
            t.year(),
            t.hour(),
            t.minute(),
            t.second(),
            self.method,
            self.path.replace('"', "%22"),
            self.proto,
            self.status,
            self.bytes_out,
            q(self.referer),
            q(self.user_agent),
            self.duration_ms / 1000.0,
            self.upstream_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{:.3}", ms / 1000.0)),
            self.service.unwrap_or("-"),
            self.upstream.unwrap_or("-"),
            self.retries,
            self.request_id,
        );
        s.push('\n');
        s
    }
}
