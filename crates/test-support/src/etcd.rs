//! A real single-member etcd (Debian's `etcd-server`) for tests: free loopback ports, a
//! temporary data directory, killed on drop. It can be stopped and restarted on the same ports
//! and data to simulate an outage.
//!
//! The helpers that read and write keys speak HTTP/1.0 to etcd's JSON gateway over a plain
//! `std::net::TcpStream`, independently of `sluice-kv`'s client, so tests that check that client
//! do not check it against itself.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// How long etcd may take to become healthy (a single member elects itself in about a second).
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A running etcd; see the module docs.
#[derive(Debug)]
pub struct Etcd {
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

fn find_etcd() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("etcd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([
            PathBuf::from("/usr/bin/etcd"),
            PathBuf::from("/usr/sbin/etcd"),
        ])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "etcd is not installed: run scripts/setup.sh (it installs Debian's etcd-server); \
                 this test needs a real etcd and does not skip"
            )
        })
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind a loopback port for etcd: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read a bound port: {e}"))
        .port()
}

impl Etcd {
    /// Starts etcd and waits until it reports healthy. Panics (failing the test) with etcd's own
    /// log when it cannot, or with a pointer to `scripts/setup.sh` when etcd is not installed.
    pub fn start() -> Etcd {
        let binary = find_etcd();
        let dir = tempfile::Builder::new()
            .prefix("sluice-etcd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for etcd: {e}"));
        let mut etcd = Etcd {
            binary,
            dir,
            client_port: 0,
            peer_port: 0,
            child: None,
        };
        let mut last_error = String::new();
        // Another process can grab a port between our probe and etcd's bind: try fresh ports.
        for _ in 0..3 {
            etcd.client_port = free_port();
            etcd.peer_port = free_port();
            match etcd.launch() {
                Ok(()) => return etcd,
                Err(error) => last_error = error,
            }
        }
        panic!("etcd did not start: {last_error}");
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// Kills etcd (SIGKILL, as in a crash) and waits for it to exit. Data stays for [`restart`].
    ///
    /// [`restart`]: Etcd::restart
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports with the same data, and waits until healthy.
    pub fn restart(&mut self) {
        self.stop();
        let mut last_error = String::new();
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            match self.launch() {
                Ok(()) => return,
                // The old socket can linger briefly; the port is ours, so wait for it.
                Err(error) => last_error = error,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("etcd did not restart: {last_error}");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn launch(&mut self) -> Result<(), String> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.log_path()).map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.binary)
            .args(["--name", "sluice-test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("sluice-test={peer}")])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "etcd exited with {status}; log:\n{}",
                    self.log_tail()
                ));
            }
            if let Ok(body) = http(self.client_port, "GET", "/health", None)
                && body.contains("\"health\":\"true\"")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "etcd not healthy after {START_DEADLINE:?}; log:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Writes `key` (through etcd's JSON gateway); returns the new revision.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            BASE64.encode(key),
            BASE64.encode(value)
        );
        let answer = self.call("/v3/kv/put", &body);
        revision_of(&answer)
    }

    /// Grants a lease of `ttl_seconds` (never kept alive by this helper: it expires, as a dead
    /// registrant's does); returns its id.
    pub fn grant_lease(&self, ttl_seconds: u64) -> i64 {
        let answer = self.call("/v3/lease/grant", &format!(r#"{{"TTL":"{ttl_seconds}"}}"#));
        let value: serde_json::Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("etcd answered non-JSON {answer:?}: {e}"));
        value["ID"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no lease ID in {answer}"))
    }

    /// Writes `key` attached to `lease`; returns the new revision.
    pub fn put_with_lease(&self, key: &str, value: &str, lease: i64) -> i64 {
        let body = format!(
            r#"{{"key":"{}","value":"{}","lease":"{lease}"}}"#,
            BASE64.encode(key),
            BASE64.encode(value)
        );
        let answer = self.call("/v3/kv/put", &body);
        revision_of(&answer)
    }

    /// Revokes `lease`, deleting every key attached to it (what a registrant does when it
    /// deregisters).
    pub fn revoke_lease(&self, lease: i64) {
        self.call("/v3/lease/revoke", &format!(r#"{{"ID":"{lease}"}}"#));
    }

    /// Reads `key`; `None` when absent.
    pub fn get(&self, key: &str) -> Option<String> {
        let answer = self.call(
            "/v3/kv/range",
            &format!(r#"{{"key":"{}"}}"#, BASE64.encode(key)),
        );
        let value: serde_json::Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("etcd answered non-JSON {answer:?}: {e}"));
        let encoded = value["kvs"][0]["value"].as_str()?;
        let bytes = BASE64
            .decode(encoded)
            .unwrap_or_else(|e| panic!("etcd value is not base64: {e}"));
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Every key under `prefix` with its value.
    pub fn list(&self, prefix: &str) -> Vec<(String, String)> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let answer = self.call(
            "/v3/kv/range",
            &format!(
                r#"{{"key":"{}","range_end":"{}"}}"#,
                BASE64.encode(prefix),
                BASE64.encode(&end)
            ),
        );
        let value: serde_json::Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("etcd answered non-JSON {answer:?}: {e}"));
        let decode = |v: &serde_json::Value| {
            String::from_utf8_lossy(&BASE64.decode(v.as_str().unwrap_or("")).unwrap_or_default())
                .into_owned()
        };
        value["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (decode(&kv["key"]), decode(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) {
        self.call(
            "/v3/kv/deleterange",
            &format!(r#"{{"key":"{}"}}"#, BASE64.encode(key)),
        );
    }

    /// Compacts the history up to `revision` (to test watch resumption after compaction).
    pub fn compact(&self, revision: i64) {
        self.call(
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        );
    }

    fn call(&self, path: &str, body: &str) -> String {
        http(self.client_port, "POST", path, Some(body))
            .unwrap_or_else(|e| panic!("etcd {path} failed: {e}"))
    }

    /// The data directory (for tests that inspect it).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

fn revision_of(answer: &str) -> i64 {
    let value: serde_json::Value = serde_json::from_str(answer)
        .unwrap_or_else(|e| panic!("etcd answered non-JSON {answer:?}: {e}"));
    value["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {answer}"))
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP/1.0 exchange (HTTP/1.0 so the server closes the connection and never chunks).
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no response head in {response:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{method} {path}: {head} {body}"));
    }
    Ok(body.to_owned())
}
