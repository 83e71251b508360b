//! Programs run as real child processes, stopped when dropped.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Fails the test with an install hint when a tool the test needs is missing.
pub fn require_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed; run scripts/setup.sh (it installs every tool the tests use)"
    );
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests on one machine).
///
/// Picked at random below the kernel's ephemeral range (32768 and up on Linux): a port from
/// that range can be taken, between this check and the test's own bind, as the source port of
/// any outgoing connection (a proxy's upstream connection, curl), which made tests fail now
/// and then with "Address already in use".
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    static PICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    for _ in 0..1000 {
        let pick = PICKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let random = RandomState::new().hash_one((pick, std::process::id()));
        let port = 10_000 + (random % 22_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A TCP port free on every one of `ips` (loopback addresses such as 127.0.0.2, 127.0.0.3:
/// several "hosts" with the same port on one machine, as in a multi-host deployment).
pub fn free_port_on(ips: &[&str]) -> u16 {
    for _ in 0..100 {
        let port = free_port();
        let all_free = ips.iter().all(|ip| {
            std::net::TcpListener::bind((
                ip.parse::<std::net::IpAddr>().expect("an IP address"),
                port,
            ))
            .is_ok()
        });
        if all_free {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// A running `sluice` process with its own config file and log files.
#[derive(Debug)]
pub struct SluiceProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The admin API's address.
    pub admin: std::net::SocketAddr,
}

impl SluiceProcess {
    /// Writes `config` to a temp dir and starts `binary run -c` on it; waits until `/readyz`
    /// answers 200 (panics with the process's stderr after 10 s).
    pub fn start(binary: &Path, config: &str, admin: std::net::SocketAddr) -> Self {
        Self::start_within(binary, config, admin, Duration::from_secs(10))
    }

    /// [`SluiceProcess::start`], waiting up to `within` for readiness: for configs whose start
    /// takes longer (a Python policy compiles for seconds in a debug build).
    pub fn start_within(
        binary: &Path,
        config: &str,
        admin: std::net::SocketAddr,
        within: Duration,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = dir.path().join("sluice.toml");
        std::fs::write(&cfg, config).expect("write config");
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout log");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
        let child = Command::new(binary)
            .args(["run", "-c"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn sluice");
        let mut p = Self {
            child: Some(child),
            dir,
            admin,
        };
        p.wait_ready(within);
        p
    }

    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "sluice exited during start-up ({status}):\n{}",
                    self.stderr()
                );
            }
            if let Ok((200, _)) = http_get(self.admin, "/readyz") {
                return;
            }
            if Instant::now() > deadline {
                panic!("sluice not ready within {within:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The directory holding the config and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sluice.toml")
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// What the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid() as i32), sig);
    }

    /// Sends SIGTERM and waits for the exit status (SIGKILL after `within`).
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait().expect("wait");
                self.child = None;
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate(Duration::from_secs(5));
        }
    }
}

/// The value of the first line of the admin API's `/metrics` at `admin` that starts with
/// `line_start` (a metric name and the start of its labels); `None` when there is none.
pub fn metric_value(admin: std::net::SocketAddr, line_start: &str) -> Option<f64> {
    let (_, text) = http_get(admin, "/metrics").ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
}

/// A minimal blocking HTTP/1.0 GET for control-plane checks from synchronous code: returns the
/// status and body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path)
}

/// A minimal blocking HTTP/1.0 request with an empty body.
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {out:?}")))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
