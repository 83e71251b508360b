//! A real gRPC stack for tests: a server and a client run by Debian's `python3-grpcio` (the C
//! core every gRPC language but Go and Java shares), so Sluice is tested against the
//! implementation real services use, not against itself.
//!
//! No protobuf code generation: the scripts (`grpc_server.py`, `grpc_client.py`, embedded
//! here) pass every message as raw bytes, and the two health-check messages are encoded by hand.
//! They run under `/usr/bin/python3` only: that is the interpreter Debian's package installs
//! for (a `python3` earlier on `PATH` may not have it).
//!
//! [`GrpcServer`] serves, as tag `T`:
//! - `/sluice.test.Echo/Unary`: the request back, with initial metadata `x-served-by: T` and
//!   trailing metadata `x-tag: T`; a request `fail:MSG` is answered `INVALID_ARGUMENT` with
//!   details `MSG`, one starting `sleep:MS` is answered after MS milliseconds;
//! - `/sluice.test.Echo/ServerStream`: request `N` (ASCII) → N messages `T:0` … `T:N-1`;
//! - `/sluice.test.Echo/ClientStream`: every request message, concatenated, once;
//! - `/sluice.test.Echo/Bidi`: `T:` + each message, each sent before the next one is read;
//! - `/grpc.health.v1.Health/Check`: the serving status set per service
//!   ([`GrpcServer::set_health`]; `""` is `SERVING` from the start), `NOT_FOUND` (details
//!   `unknown service NAME`) for a name never set, as grpc's own health service answers;
//! - `/sluice.test.Control/SetHealth` (`"SERVICE=SERVING|NOT_SERVING|UNKNOWN|SERVICE_UNKNOWN"`,
//!   or `"SERVICE=-"` to forget it) and `/sluice.test.Control/LastMetadata` (request: a method
//!   path, or `""` for the last call of any method; answer: [`SeenCall`] as JSON). With TLS
//!   ([`GrpcServer::start_tls`]) everything is also served in cleartext on a second port, where
//!   the control calls go.
//!
//! [`grpc_call`] and [`grpc_calls`] make calls with grpcio's client, one `python3` process per
//! batch. Both block: from an async test, call them in `spawn_blocking`.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::json;

/// The interpreter Debian's `python3-grpcio` is installed for.
pub const PYTHON: &str = "/usr/bin/python3";

const SERVER_SCRIPT: &str = include_str!("grpc_server.py");
const CLIENT_SCRIPT: &str = include_str!("grpc_client.py");

/// How long a server may take to print its port (importing grpc takes ~0.2 s).
const START_DEADLINE: Duration = Duration::from_secs(20);

/// Panics, naming the setup script, unless `/usr/bin/python3` can import grpc. Checked once.
pub fn require_grpcio() {
    static CHECKED: OnceLock<bool> = OnceLock::new();
    let importable = CHECKED.get_or_init(|| {
        Command::new(PYTHON)
            .args(["-c", "import grpc"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(
        *importable,
        "python3-grpcio is not installed; run scripts/setup.sh"
    );
}

/// A gRPC server on `127.0.0.1` (see the module docs for what it serves); killed when dropped.
#[derive(Debug)]
pub struct GrpcServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its tag, in its answers and metadata.
    pub tag: String,
    /// Where the control calls go: `addr`, or for a TLS server a second, cleartext port.
    control: SocketAddr,
    child: Child,
    /// Held open: the script exits when it closes, should this process die without dropping.
    _stdin: ChildStdin,
    dir: tempfile::TempDir,
}

impl GrpcServer {
    /// Starts a cleartext (h2c) server answering as `tag` on a fresh port.
    pub fn start(tag: &str) -> GrpcServer {
        Self::spawn(tag, None)
    }

    /// Starts a TLS server (grpcio negotiates ALPN `h2`) with this certificate and key (PEM),
    /// answering as `tag`. Its control calls ([`GrpcServer::set_health`],
    /// [`GrpcServer::last_call`]) go to a second, cleartext port, so they need no CA.
    pub fn start_tls(tag: &str, cert_pem: &Path, key_pem: &Path) -> GrpcServer {
        Self::spawn(tag, Some((cert_pem, key_pem)))
    }

    fn spawn(tag: &str, tls: Option<(&Path, &Path)>) -> GrpcServer {
        require_grpcio();
        let dir = tempfile::Builder::new()
            .prefix("sluice-grpc-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir for the gRPC server: {e}"));
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut command = Command::new(PYTHON);
        command.args(["-c", SERVER_SCRIPT, tag]);
        if let Some((cert, key)) = tls {
            command.arg(cert).arg(key);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {PYTHON}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let (port, control) = read_ports(&mut child, dir.path());
        GrpcServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tag: tag.to_owned(),
            control: SocketAddr::from(([127, 0, 0, 1], control)),
            child,
            _stdin: stdin,
            dir,
        }
    }

    /// `127.0.0.1:PORT`, as a call's target.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// What the server wrote to stderr (Python tracebacks).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Makes the health service answer `SERVING` (or `NOT_SERVING`) for `service`
    /// (`""`: the whole server).
    pub fn set_health(&self, service: &str, serving: bool) {
        let status = if serving { "SERVING" } else { "NOT_SERVING" };
        self.control("SetHealth", format!("{service}={status}").into_bytes());
    }

    /// What the last call of `method` (a path; `""` for any method) received; `None` before
    /// any such call.
    pub fn last_call(&self, method: &str) -> Option<SeenCall> {
        let reply = self.control("LastMetadata", method.as_bytes().to_vec());
        let json = reply.responses.first().map_or(&b"null"[..], Vec::as_slice);
        serde_json::from_slice(json)
            .unwrap_or_else(|e| panic!("LastMetadata answered {json:?}: {e}"))
    }

    fn control(&self, method: &str, message: Vec<u8>) -> GrpcOutcome {
        let mut call = GrpcCall::unary(message).method(&format!("/sluice.test.Control/{method}"));
        call.deadline = Some(Duration::from_secs(10));
        let outcome = grpc_call(&self.control.to_string(), &call);
        assert!(
            outcome.is_ok(),
            "control call {method}: {outcome:?}\n{}",
            self.stderr()
        );
        outcome
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the `PORT port control` line the server prints once listening; panics with its
/// stderr when it exits or stays silent.
fn read_ports(child: &mut Child, dir: &Path) -> (u16, u16) {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(START_DEADLINE).unwrap_or_default();
    let ports = line.strip_prefix("PORT ").and_then(|p| {
        let (port, control) = p.trim().split_once(' ')?;
        Some((port.parse().ok()?, control.parse().ok()?))
    });
    ports.unwrap_or_else(|| {
        let _ = child.kill();
        let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        panic!("the gRPC test server did not start (printed {line:?}):\n{stderr}")
    })
}

/// What the server saw of a call (`/sluice.test.Control/LastMetadata`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SeenCall {
    /// The method's path.
    pub method: String,
    /// `:authority` as received.
    pub authority: Option<String>,
    /// The call's metadata in order (`-bin` values in hex). grpc core consumes `te` (it
    /// refuses calls without `te: trailers`) and `grpc-timeout` (see `deadline_ms`).
    pub metadata: Vec<(String, String)>,
    /// Milliseconds left of the call's deadline when it arrived; `None` without one.
    pub deadline_ms: Option<u64>,
    /// The peer, e.g. `ipv4:127.0.0.1:40000`.
    pub peer: String,
}

impl SeenCall {
    /// The first value of metadata `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        metadata_value(&self.metadata, key)
    }
}

fn metadata_value<'a>(metadata: &'a [(String, String)], key: &str) -> Option<&'a str> {
    metadata
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// The shape of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcKind {
    /// One message each way.
    Unary,
    /// One request, a stream of responses.
    ServerStream,
    /// A stream of requests, one response.
    ClientStream,
    /// Streams both ways, in ping-pong: each message is sent once the reply to the previous
    /// one was read (a server that waited for the whole request stream would never answer).
    Bidi,
}

impl GrpcKind {
    fn script_name(self) -> &'static str {
        match self {
            GrpcKind::Unary => "unary",
            GrpcKind::ServerStream => "server_stream",
            GrpcKind::ClientStream => "client_stream",
            GrpcKind::Bidi => "bidi",
        }
    }
}

/// TLS to the target: trust `root_cert` (PEM) and, when set, check the certificate against
/// `server_name` instead of the target's host (`grpc.ssl_target_name_override`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTls {
    /// The CA certificate to trust.
    pub root_cert: PathBuf,
    /// The name the server's certificate must hold.
    pub server_name: Option<String>,
}

/// One call for [`grpc_call`] / [`grpc_calls`]; build it with the constructors and setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    /// Its shape.
    pub kind: GrpcKind,
    /// The method path, e.g. `/sluice.test.Echo/Unary`.
    pub method: String,
    /// The request messages (exactly one for unary and server-streaming calls).
    pub messages: Vec<Vec<u8>>,
    /// grpcio's `timeout=`: sent as `grpc-timeout`, and the client gives up then.
    pub deadline: Option<Duration>,
    /// Metadata sent with the call (keys in lower case, as gRPC requires).
    pub metadata: Vec<(String, String)>,
    /// TLS to the target; cleartext HTTP/2 (h2c) when `None`.
    pub tls: Option<GrpcTls>,
}

impl GrpcCall {
    fn echo(kind: GrpcKind, method: &str, messages: Vec<Vec<u8>>) -> GrpcCall {
        GrpcCall {
            kind,
            method: format!("/sluice.test.Echo/{method}"),
            messages,
            deadline: None,
            metadata: Vec::new(),
            tls: None,
        }
    }

    /// `/sluice.test.Echo/Unary` with `message` (`fail:…` and `sleep:MS` as in the module docs).
    pub fn unary(message: impl Into<Vec<u8>>) -> GrpcCall {
        Self::echo(GrpcKind::Unary, "Unary", vec![message.into()])
    }

    /// `/sluice.test.Echo/ServerStream` asking for `n` messages.
    pub fn server_stream(n: usize) -> GrpcCall {
        Self::echo(
            GrpcKind::ServerStream,
            "ServerStream",
            vec![n.to_string().into_bytes()],
        )
    }

    /// `/sluice.test.Echo/ClientStream` sending `messages`.
    pub fn client_stream(messages: Vec<Vec<u8>>) -> GrpcCall {
        Self::echo(GrpcKind::ClientStream, "ClientStream", messages)
    }

    /// `/sluice.test.Echo/Bidi` sending `messages` in ping-pong.
    pub fn bidi(messages: Vec<Vec<u8>>) -> GrpcCall {
        Self::echo(GrpcKind::Bidi, "Bidi", messages)
    }

    /// `/grpc.health.v1.Health/Check` for `service` (the request encoded by hand).
    pub fn health(service: &str) -> GrpcCall {
        let mut message = Vec::new();
        if !service.is_empty() {
            assert!(service.len() < 128, "one-byte varint length");
            message.extend([0x0a, service.len() as u8]);
            message.extend_from_slice(service.as_bytes());
        }
        Self::unary(message).method("/grpc.health.v1.Health/Check")
    }

    /// Calls `path` instead, with the same shape.
    pub fn method(self, path: &str) -> GrpcCall {
        GrpcCall {
            method: path.to_owned(),
            ..self
        }
    }

    /// Sets the deadline.
    pub fn deadline(self, deadline: Duration) -> GrpcCall {
        GrpcCall {
            deadline: Some(deadline),
            ..self
        }
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: &str, value: &str) -> GrpcCall {
        self.metadata.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Calls over TLS, trusting `root_cert` and expecting `server_name` in the certificate.
    pub fn tls(self, root_cert: &Path, server_name: &str) -> GrpcCall {
        GrpcCall {
            tls: Some(GrpcTls {
                root_cert: root_cert.to_owned(),
                server_name: Some(server_name.to_owned()),
            }),
            ..self
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "kind": self.kind.script_name(),
            "method": self.method,
            "messages": self.messages.iter().map(|m| BASE64.encode(m)).collect::<Vec<_>>(),
            "timeout": self.deadline.map(|d| d.as_secs_f64()),
            "metadata": self.metadata,
            "tls": self.tls.as_ref().map(|t| json!({
                "root_cert": t.root_cert,
                "server_name": t.server_name,
            })),
        })
    }
}

/// How a call ended, as grpcio's client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GrpcOutcome {
    /// The status code's name: `OK`, `INVALID_ARGUMENT`, `UNAVAILABLE`, ….
    pub code: String,
    /// The status details (`grpc-message`).
    pub details: String,
    /// The response messages, in order.
    #[serde(deserialize_with = "base64_list")]
    pub responses: Vec<Vec<u8>>,
    /// The response headers' metadata (`-bin` values in base64).
    pub initial_metadata: Vec<(String, String)>,
    /// The trailers' metadata (`-bin` values in base64).
    pub trailing_metadata: Vec<(String, String)>,
    /// From the call's start to its end, in milliseconds.
    pub elapsed_ms: u64,
}

impl GrpcOutcome {
    /// Whether the call ended with status `OK`.
    pub fn is_ok(&self) -> bool {
        self.code == "OK"
    }

    /// The responses as text (lossy UTF-8).
    pub fn texts(&self) -> Vec<String> {
        let text = |r: &Vec<u8>| String::from_utf8_lossy(r).into_owned();
        self.responses.iter().map(text).collect()
    }

    /// The first initial-metadata value of `key`.
    pub fn initial(&self, key: &str) -> Option<&str> {
        metadata_value(&self.initial_metadata, key)
    }

    /// The first trailing-metadata value of `key`.
    pub fn trailing(&self, key: &str) -> Option<&str> {
        metadata_value(&self.trailing_metadata, key)
    }
}

fn base64_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|t| BASE64.decode(t).map_err(serde::de::Error::custom))
        .collect()
}

/// Makes `call` to `target` (`host:port`) with grpcio's client.
pub fn grpc_call(target: &str, call: &GrpcCall) -> GrpcOutcome {
    let mut outcomes = grpc_calls(target, std::slice::from_ref(call));
    outcomes.pop().expect("one outcome per call")
}

/// Makes every call at once (a thread each; the calls with the same TLS settings share one
/// channel, so one HTTP/2 connection) and returns their outcomes in the calls' order.
pub fn grpc_calls(target: &str, calls: &[GrpcCall]) -> Vec<GrpcOutcome> {
    require_grpcio();
    let request = json!({
        "target": target,
        "calls": calls.iter().map(GrpcCall::to_json).collect::<Vec<_>>(),
    });
    let mut child = Command::new(PYTHON)
        .args(["-c", CLIENT_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(request.to_string().as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the gRPC client failed:\n{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        let stdout = String::from_utf8_lossy(&out.stdout);
        panic!("the gRPC client printed {stdout:?} ({e}):\n{stderr}")
    })
}
