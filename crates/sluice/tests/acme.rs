//! `[listener.tls.acme]` against Debian's `pebble`, the ACME test CA, started by each test:
//! an account is created, the CA's HTTP-01 challenge is answered on the plain-HTTP listener,
//! the certificate is stored and served (curl verifies it against pebble's root), a restart
//! serves the stored certificate without a new order, renewal replaces it without a restart
//! or closing open connections, and with the CA gone the last good certificate keeps serving
//! while the failure is logged.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_test_support::certs::{Leaf, TestCa};
use sluice_test_support::{Backend, SluiceProcess, free_port, metric_value, require_tool};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const WITHIN: Duration = Duration::from_secs(30);

/// A running pebble; killed when dropped.
struct Pebble {
    child: Child,
    /// The CA pebble's own HTTPS listeners are signed by (Sluice's `ca_root`).
    tls_ca: TestCa,
    directory: String,
    management: SocketAddr,
}

impl Pebble {
    /// Starts pebble validating HTTP-01 challenges on `http_port` and TLS-ALPN-01 ones on
    /// `tls_port` of 127.0.0.1.
    fn start(http_port: u16, tls_port: u16) -> Self {
        let tls_ca = TestCa::new("Pebble API CA");
        let api = tls_ca.issue(&Leaf::server("pebble", &["localhost", "127.0.0.1"]));
        let (listen, management) = (free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": api.cert, "privateKey": api.key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        let config_path = tls_ca.dir().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::File::create(tls_ca.dir().join("pebble.log")).unwrap();
        let child = Command::new(require_tool("pebble"))
            .arg("-config")
            .arg(&config_path)
            // Validate at once (no random sleep) and never reject a nonce on purpose.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pebble = Self {
            child,
            tls_ca,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management: format!("127.0.0.1:{management}").parse().unwrap(),
        };
        eventually("pebble answers", || pebble.root().map(|_| ()));
        pebble
    }

    /// Pebble's root CA (it makes a new one every start), written next to its config.
    fn root(&self) -> Result<PathBuf, String> {
        let path = self.tls_ca.dir().join("pebble-root.pem");
        let out = Command::new(require_tool("curl"))
            .args(["-sSf", "--max-time", "5", "--cacert"])
            .arg(&self.tls_ca.ca_path)
            .arg(format!("https://{}/roots/0", self.management))
            .arg("-o")
            .arg(&path)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(path)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.tls_ca.dir().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn eventually(what: &str, check: impl FnMut() -> Result<(), String>) {
    sluice_test_support::eventually_blocking(what, WITHIN, check);
}

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// Sluice with a plain listener `web` (where the CA validates) and `secure`, whose
/// certificate comes from `pebble`.
fn config(
    (admin, web, secure): (SocketAddr, SocketAddr, SocketAddr),
    pebble: &Pebble,
    storage: &Path,
    extra: &str,
    backend: &Backend,
) -> String {
    format!(
        "[admin]\nbind = \"{admin}\"\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [[listener]]\nname = \"secure\"\nbind = \"{secure}\"\n\
         [listener.tls.acme]\ndirectory = \"{}\"\ndomains = [\"localhost\"]\n\
         contact = [\"mailto:ops@example.com\"]\nstorage = {storage:?}\nca_root = {:?}\n{extra}\n\
         [[route]]\nlistener = \"web\"\nservice = \"s\"\n\
         [[route]]\nlistener = \"secure\"\nservice = \"s\"\n\
         [[service]]\nname = \"s\"\ninstances = [\"{}\"]\n",
        pebble.directory,
        pebble.tls_ca.ca_path,
        backend.addr()
    )
}

/// A test's parts: a backend, pebble, a storage folder, and the configuration text.
struct Setup {
    /// Kept running for the test's length.
    _backend: Backend,
    admin: SocketAddr,
    web: SocketAddr,
    secure: SocketAddr,
    pebble: Pebble,
    storage: tempfile::TempDir,
    config: String,
}

impl Setup {
    /// Pebble validates HTTP-01 on the plain listener when `http_01`, else on nobody's port;
    /// TLS-ALPN-01 always on `secure`. `extra` goes into `[listener.tls.acme]`.
    fn new(extra: &str, http_01: bool) -> Self {
        let backend = Backend::start("app");
        let (admin, web, secure) = (addr(), addr(), addr());
        let http_port = if http_01 { web.port() } else { free_port() };
        let pebble = Pebble::start(http_port, secure.port());
        let storage = tempfile::tempdir().unwrap();
        let config = config(
            (admin, web, secure),
            &pebble,
            storage.path(),
            extra,
            &backend,
        );
        Self {
            _backend: backend,
            admin,
            web,
            secure,
            pebble,
            storage,
            config,
        }
    }
}

/// The issuer and serial of the certificate `secure` serves for `localhost`.
fn served(secure: SocketAddr) -> (String, String) {
    let script = format!(
        "echo | {} s_client -connect {secure} -servername localhost 2>/dev/null | {} x509 -noout -issuer -serial",
        require_tool("openssl").display(),
        require_tool("openssl").display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    (field("issuer="), field("serial="))
}

/// Waits until `secure` serves a certificate pebble issued other than `not`; returns its
/// serial.
fn until_issued(
    secure: SocketAddr,
    not: Option<&str>,
    pebble: &Pebble,
    sluice: &SluiceProcess,
) -> String {
    let mut serial = String::new();
    let started = Instant::now();
    while started.elapsed() < WITHIN {
        let (issuer, s) = served(secure);
        if issuer.contains("Pebble Intermediate CA") && Some(s.as_str()) != not {
            serial = s;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !serial.is_empty(),
        "no (new) pebble certificate served within {WITHIN:?}; sluice:\n{}\npebble:\n{}",
        sluice.stderr(),
        pebble.log()
    );
    serial
}

/// `GET https://localhost/` through `secure`, verified against `root`: the status.
fn verified_get(secure: SocketAddr, root: &Path) -> Result<u16, String> {
    let out = Command::new(require_tool("curl"))
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(root)
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", secure.port()),
        ])
        .arg(format!("https://localhost:{}/", secure.port()))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).parse().unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A TLS connection to `secure` held open by `openssl s_client`, to send requests on.
struct OpenConnection {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl OpenConnection {
    fn open(secure: SocketAddr) -> Self {
        let mut child = Command::new(require_tool("openssl"))
            .args(["s_client", "-quiet", "-connect", &secure.to_string()])
            .args(["-servername", "localhost"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The status line of the answer to `GET /` sent on this connection.
    fn get(&mut self) -> String {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                // The previous body has no line end: a status line may follow it directly.
                Ok(line) if line.contains("HTTP/1.1 ") => {
                    let at = line.find("HTTP/1.1 ").unwrap_or(0);
                    return line[at..].trim().to_owned();
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        "no answer on the open connection".to_owned()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_certificate_is_obtained_served_stored_and_reused_after_a_restart() {
    let Setup {
        admin,
        web,
        secure,
        pebble,
        storage,
        config: text,
        _backend: _running,
        ..
    } = Setup::new("", true);
    let mut sluice = SluiceProcess::start(BIN.as_ref(), &text, admin);

    let serial = until_issued(secure, None, &pebble, &sluice);
    let root = pebble.root().unwrap();
    assert_eq!(
        verified_get(secure, &root),
        Ok(200),
        "the chain verifies against pebble's root"
    );
    assert_eq!(
        metric_value(
            admin,
            "sluice_acme_orders_total{listener=\"secure\",result=\"ok\"}"
        ),
        Some(1.0)
    );
    let expiry = metric_value(admin, "sluice_acme_certificate_expiry_timestamp_seconds").unwrap();
    assert!(expiry > 1.7e9, "{expiry}");
    // The CA validated over HTTP, through Sluice's plain listener.
    let log = pebble.log();
    assert!(
        log.contains(&format!(
            "validate w/ HTTP: http://localhost:{}/.well-known/acme-challenge/",
            web.port()
        )) && log.contains("set VALID"),
        "{log}"
    );
    for (file, mode) in [
        ("account.json", 0o600),
        ("key.pem", 0o600),
        ("cert.pem", 0o644),
    ] {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(storage.path().join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }

    // A restart serves the stored certificate at once and orders nothing.
    sluice.terminate(Duration::from_secs(10));
    let sluice = SluiceProcess::start(BIN.as_ref(), &text, admin);
    assert_eq!(served(secure).1, serial, "the stored certificate");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        metric_value(admin, "sluice_acme_orders_total{listener=\"secure\""),
        None,
        "no order after the restart: {}",
        sluice.stderr()
    );
    assert_eq!(
        metric_value(admin, "sluice_acme_certificate_expiry_timestamp_seconds"),
        Some(expiry),
        "the stored certificate's expiry is reported at start"
    );
}

#[test]
fn renewal_replaces_the_certificate_and_a_lost_ca_leaves_the_last_one_serving() {
    // Pebble's certificates last five years: renewing with more than that left renews each
    // one as soon as `retry_every` has passed.
    let Setup {
        admin,
        secure,
        pebble,
        storage,
        config: text,
        _backend: _running,
        ..
    } = Setup::new("renew_before = \"50000h\"\nretry_every = \"1s\"", true);
    let sluice = SluiceProcess::start(BIN.as_ref(), &text, admin);

    let first = until_issued(secure, None, &pebble, &sluice);
    let mut open = OpenConnection::open(secure);
    assert_eq!(open.get(), "HTTP/1.1 200 OK");
    until_issued(secure, Some(&first), &pebble, &sluice);
    assert_eq!(
        open.get(),
        "HTTP/1.1 200 OK",
        "a connection opened before the renewal carries on"
    );
    // Pebble's root, kept past pebble's own folder.
    let root = storage.path().join("pebble-root.pem");
    std::fs::copy(pebble.root().unwrap(), &root).unwrap();
    assert_eq!(verified_get(secure, &root), Ok(200));

    // The CA goes away: orders fail, are logged, and the last certificate keeps serving.
    drop(pebble);
    eventually("a failed order is logged", || {
        let log = sluice.stderr();
        if log.contains("ACME: no certificate; the current one keeps serving") {
            Ok(())
        } else {
            Err(log)
        }
    });
    let (issuer, last) = served(secure);
    assert!(issuer.contains("Pebble Intermediate CA"), "{issuer}");
    assert!(
        !last.is_empty() && last != first,
        "{last}: the renewed one, or a later renewal"
    );
    assert_eq!(
        verified_get(secure, &root),
        Ok(200),
        "the last good certificate"
    );
    assert!(
        metric_value(
            admin,
            "sluice_acme_orders_total{listener=\"secure\",result=\"failed\"}"
        )
        .is_some_and(|n| n >= 1.0)
    );
}

#[test]
fn tls_alpn_01_is_answered_by_the_tls_listener_itself() {
    // Pebble's HTTP-01 port is nobody's: only the TLS listener can answer.
    let t = Setup::new("challenge = \"tls-alpn-01\"", false);
    let (secure, pebble) = (t.secure, &t.pebble);
    let sluice = SluiceProcess::start(BIN.as_ref(), &t.config, t.admin);
    until_issued(secure, None, pebble, &sluice);
    // Pebble validates from several vantage points; each is a handshake Sluice answered.
    assert!(pebble.log().contains("set VALID"), "{}", pebble.log());
    let stderr = sluice.stderr();
    assert!(
        stderr.contains("ACME TLS-ALPN-01 validation handshake answered listener=\"secure\""),
        "{stderr}"
    );
    assert_eq!(verified_get(secure, &pebble.root().unwrap()), Ok(200));
}

#[test]
fn bad_acme_settings_are_refused_with_positions() {
    let (admin, web) = (addr(), addr());
    let text = format!(
        "[admin]\nbind = \"{admin}\"\n\
         [[listener]]\nname = \"secure\"\nbind = \"{web}\"\n\
         [listener.tls]\ncert = \"x.pem\"\nkey = \"x.key\"\n\
         [listener.tls.acme]\ndirectory = \"http://ca.example/dir\"\ndomains = [\"*.example.com\"]\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{shown}");
    for expected in [
        "bad.toml:7:8: error: with [listener.tls.acme] the certificate comes from the CA",
        "bad.toml:9:1: error: [listener.tls.acme] needs `storage`",
        "error: ACME directory `http://ca.example/dir` is not an https:// URL",
        "error: `*.example.com` is neither a DNS name nor an IP address",
    ] {
        assert!(
            shown.contains(expected),
            "missing {expected:?} in:\n{shown}"
        );
    }
}
