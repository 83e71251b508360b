//! The Wasm policy host as the binary uses it: `sluice policy check`, and the host that serves
//! `[[policy]]` entries, created only once a configuration has policies (its epoch ticker and
//! compiled modules cost nothing to a proxy without any).

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sluice_config::{PolicyConfig, PolicySource};
use sluice_policy_host::check::CheckError;
use sluice_policy_host::{HostConfig, PolicyHost, PolicyStatus, PolicyWatcher, ReloadReport};

/// `sluice policy check`: exit 0 when the module loaded, configured and answered. `file` may
/// be `builtin:NAME`.
#[allow(clippy::print_stdout, reason = "the report is the command's output")]
pub(crate) fn check(file: &Path, config: Option<&str>, input: Option<&str>) -> ExitCode {
    let source = source_of(file);
    let builtins = crate::builtin::modules();
    match sluice_policy_host::check::check_source(&source, &builtins, config, input) {
        Ok(report) => {
            println!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("sluice: {}", CheckErrorLine(file, &e));
            ExitCode::FAILURE
        }
    }
}

/// A module argument: a file, or `builtin:NAME`.
fn source_of(file: &Path) -> PolicySource {
    match file.to_str() {
        Some(text) => PolicySource::parse(text, None),
        None => PolicySource::File(file.to_owned()),
    }
}

/// `sluice policy test`: exit 0 when every case passed. `file` may be `builtin:NAME`.
#[allow(clippy::print_stdout, reason = "the report is the command's output")]
pub(crate) fn test(file: &Path, cases: &Path, config: Option<&str>) -> ExitCode {
    let builtins = crate::builtin::modules();
    match sluice_policy_host::cases::run_cases_on(&source_of(file), &builtins, cases, config) {
        Ok(report) => {
            println!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(sluice_policy_host::cases::TestError::Module(e)) => {
            eprintln!("sluice: {}", CheckErrorLine(file, &e));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sluice: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// A `check` error prefixed with the module's path, unless the error names it already.
struct CheckErrorLine<'a>(&'a Path, &'a CheckError);

impl std::fmt::Display for CheckErrorLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            CheckError::Read { .. } | CheckError::Module { .. } => write!(f, "{}", self.1),
            other => write!(f, "{}: {other}", self.0.display()),
        }
    }
}

/// How long file changes must settle before a changed module is reloaded.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(200);

/// The loaded policies and the watcher of their files.
#[derive(Debug, Default)]
pub(crate) struct Policies {
    /// `[[kv]]`: what the policies' `kv-get` reads, live.
    pub(crate) kv: Arc<crate::kv::KvLayers>,
    /// Created with the first policy and kept for the process's life; a `OnceLock` so the
    /// per-connection authz path and every probe read it without taking a lock.
    shared_host: Arc<OnceLock<Arc<PolicyHost>>>,
    watcher: Mutex<Option<PolicyWatcher>>,
    /// `[runtime] policy_cache`, read when the host starts (with the first policy).
    compile_cache: Option<std::path::PathBuf>,
}

impl Policies {
    /// No policies yet; the host will keep compiled modules in `compile_cache`.
    pub(crate) fn new(compile_cache: Option<std::path::PathBuf>) -> Self {
        Policies {
            compile_cache,
            ..Policies::default()
        }
    }

    /// Loads, reloads or removes policies to match `configs` (blocking: compiles modules).
    /// Rejected policies keep their previous version, if any; the report says which.
    pub(crate) fn apply(&self, configs: &[PolicyConfig]) -> Result<ReloadReport, String> {
        let host = match (self.shared_host.get(), configs.is_empty()) {
            (None, true) => return Ok(ReloadReport::default()),
            (Some(h), _) => Arc::clone(h),
            (None, false) => {
                let kv = Arc::clone(&self.kv) as Arc<dyn sluice_policy_host::KvView>;
                let config = HostConfig {
                    builtins: crate::builtin::modules(),
                    compile_cache: self.compile_cache.clone(),
                    ..HostConfig::default()
                };
                let host = PolicyHost::new(config, kv)
                    .map_err(|e| format!("cannot start the policy host: {e}"))?;
                // Should two applies race here, the spare host is dropped and both use the
                // stored one.
                Arc::clone(self.shared_host.get_or_init(|| Arc::new(host)))
            }
        };
        let report = host.apply_config(configs);
        // The watcher watches the files that exist when it starts: restart it for the new set
        // (built-in policies have none).
        let watcher = if configs.is_empty() {
            None
        } else {
            match PolicyWatcher::start(&host, WATCH_DEBOUNCE) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch policy files; use POST /api/policies/reload");
                    None
                }
            }
        };
        if let Ok(mut w) = self.watcher.lock() {
            *w = watcher;
        }
        Ok(report)
    }

    /// Reloads every policy from its file (blocking).
    pub(crate) fn reload(&self) -> ReloadReport {
        self.current().map(|h| h.reload()).unwrap_or_default()
    }

    /// Every loaded policy's state, for `GET /api/policies`.
    pub(crate) fn list(&self) -> Vec<PolicyStatus> {
        self.current().map(|h| h.list()).unwrap_or_default()
    }

    /// The loaded routing policy called `name`.
    pub(crate) fn routing(&self, name: &str) -> Option<sluice_policy_host::RoutingHandle> {
        self.current().and_then(|h| h.routing(name))
    }

    pub(crate) fn current(&self) -> Option<Arc<PolicyHost>> {
        self.shared_host.get().cloned()
    }
}

/// A one-line summary of the policies a report rejected.
pub(crate) fn rejected_summary(report: &ReloadReport) -> Option<String> {
    let rejected: Vec<String> = report
        .rejected()
        .map(|(name, error)| format!("{name}: {error}"))
        .collect();
    (!rejected.is_empty()).then(|| rejected.join("; "))
}

/// Health checks that name a policy are evaluated by it, looked up by name at each probe so a
/// check never depends on the order policies and services were (re)loaded in. A policy that is
/// not loaded, traps or times out leaves the previous verdict in place, marked stale.
impl sluice_health::EvaluatorSource for Policies {
    fn evaluator(&self, policy: &str) -> Option<Arc<dyn sluice_health::Evaluator>> {
        Some(Arc::new(WasmHealth {
            host: self.host_slot(),
            policy: policy.to_owned(),
        }))
    }
}

impl Policies {
    fn host_slot(&self) -> HostSlot {
        HostSlot(Arc::clone(&self.shared_host))
    }
}

/// A handle on the (lazily created) policy host that evaluators can keep.
#[derive(Debug, Clone)]
struct HostSlot(Arc<OnceLock<Arc<PolicyHost>>>);

#[derive(Debug)]
struct WasmHealth {
    host: HostSlot,
    policy: String,
}

impl sluice_health::Evaluator for WasmHealth {
    fn evaluate(
        &self,
        instance: &sluice_health::ProbedInstance,
        probe: &sluice_health::ProbeResult,
    ) -> sluice_health::Evaluation {
        use sluice_health::{Evaluation, Role, Verdict};
        use sluice_policy_host::types;
        let host = self.host.0.get().cloned();
        let Some(handle) = host.and_then(|h| h.health(&self.policy)) else {
            return Evaluation::KeepPrevious {
                error: format!("health policy `{}` is not loaded", self.policy),
            };
        };
        let wasm_instance = types::Instance {
            id: instance.id.clone(),
            service: instance.service.clone(),
            address: instance.address.clone(),
            port: instance.port,
            tags: Vec::new(),
            metadata: Vec::new(),
            health: types::HealthStatus::Unknown,
        };
        let wasm_probe = types::ProbeResult {
            kind: match probe.kind {
                sluice_health::ProbeKind::Http => types::ProbeKind::Http,
                sluice_health::ProbeKind::Tcp => types::ProbeKind::Tcp,
                sluice_health::ProbeKind::Command => types::ProbeKind::Command,
                // The policy world (sluice:policy@0.1.0) has no grpc kind: a gRPC check is an
                // HTTP/2 call, and the policy tells it by its grpc-status header.
                sluice_health::ProbeKind::Grpc => types::ProbeKind::Http,
            },
            status: probe.status,
            headers: probe.headers.clone(),
            body_prefix: probe.body_prefix.clone(),
            latency_us: probe.latency_us,
            error: probe.error.as_ref().map(|e| types::ProbeError {
                kind: match e.kind {
                    sluice_health::ProbeErrorKind::Timeout => types::ProbeErrorKind::Timeout,
                    sluice_health::ProbeErrorKind::Refused => types::ProbeErrorKind::Refused,
                    sluice_health::ProbeErrorKind::Reset => types::ProbeErrorKind::Reset,
                    sluice_health::ProbeErrorKind::Other => types::ProbeErrorKind::Other,
                },
                message: e.message.clone(),
            }),
        };
        match handle.evaluate(&wasm_instance, &wasm_probe) {
            sluice_policy_host::HealthOutcome::Verdict(types::Verdict::Up(up)) => {
                Evaluation::Verdict(Verdict::Up {
                    role: match up.role {
                        types::Role::Primary => Role::Primary,
                        types::Role::Backup => Role::Backup,
                        types::Role::Any => Role::Any,
                    },
                    weight: up.weight,
                })
            }
            sluice_policy_host::HealthOutcome::Verdict(types::Verdict::Down(reason)) => {
                Evaluation::Verdict(Verdict::Down { reason })
            }
            sluice_policy_host::HealthOutcome::KeepPrevious { error } => Evaluation::KeepPrevious {
                error: error.to_string(),
            },
        }
    }
}

impl sluice_tls::PolicyAuthorizer for Policies {
    /// `[listener.authz] policy`: asks the Wasm `authz` policy; fails closed when it is not
    /// loaded, and applies the policy's failure mode when its call fails.
    fn authorize(
        &self,
        policy: &str,
        peer: &sluice_tls::PeerFacts<'_>,
    ) -> Result<(), sluice_tls::PolicyDenied> {
        use sluice_policy_host::types;
        let host = self.shared_host.get().cloned();
        let Some(handle) = host.and_then(|h| h.authz(policy)) else {
            return Err(sluice_tls::PolicyDenied::Unavailable {
                policy: policy.to_owned(),
            });
        };
        let outcome = handle.authorize(&wasm_peer(peer));
        if let sluice_policy_host::AuthzOutcome::Failed { error, .. } = &outcome {
            tracing::warn!(policy, %error, "authz policy call failed; applying its failure mode");
        }
        match outcome.decision() {
            types::Decision::Allow => Ok(()),
            types::Decision::Deny(reason) => Err(sluice_tls::PolicyDenied::Denied {
                policy: policy.to_owned(),
                reason: reason.clone(),
            }),
        }
    }
}

/// The contract's view of a connection's peer.
pub(crate) fn wasm_peer(peer: &sluice_tls::PeerFacts<'_>) -> sluice_policy_host::types::Peer {
    let mut wasm = sluice_policy_host::empty_peer();
    fill_peer(&mut wasm, peer, &mut None);
    wasm
}

/// Makes `wasm` describe `peer`, reusing its buffers (and its certificate when it is the same
/// one, as on every request of a keep-alive mutual-TLS connection). `shown_ip` is the address
/// `wasm.source_address` spells now, if known: the text is written again only when it changes.
pub(crate) fn fill_peer(
    wasm: &mut sluice_policy_host::types::Peer,
    peer: &sluice_tls::PeerFacts<'_>,
    shown_ip: &mut Option<std::net::IpAddr>,
) {
    use sluice_policy_host::{lossy_text, set_text, types};
    use std::fmt::Write as _;
    set_text(&mut wasm.listener, peer.listener);
    let ip = peer.source.ip().to_canonical();
    if *shown_ip != Some(ip) {
        wasm.source_address.clear();
        let _ = write!(wasm.source_address, "{ip}");
        *shown_ip = Some(ip);
    }
    wasm.source_port = peer.source.port();
    set_optional_text(&mut wasm.sni, peer.sni);
    set_optional_text(&mut wasm.alpn, peer.alpn.map(lossy_text).as_deref());
    let Some(id) = peer.identity else {
        wasm.client_certificate = None;
        return;
    };
    let same = wasm
        .client_certificate
        .as_ref()
        .is_some_and(|known| known.sha256_fingerprint == id.fingerprint_sha256);
    if !same {
        wasm.client_certificate = Some(types::ClientCertificate {
            subject_cn: id.subject_cn.clone(),
            dns_sans: id.dns_sans.clone(),
            uri_sans: id.uri_sans.clone(),
            issuer: id.issuer.clone(),
            sha256_fingerprint: id.fingerprint_sha256.clone(),
            not_before: id.not_before_unix,
            not_after: id.not_after_unix,
        });
    }
}

fn set_optional_text(slot: &mut Option<String>, text: Option<&str>) {
    match (slot.as_mut(), text) {
        (Some(kept), Some(text)) => sluice_policy_host::set_text(kept, text),
        (_, text) => *slot = text.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn facts(source: &str) -> sluice_tls::PeerFacts<'static> {
        sluice_tls::PeerFacts {
            listener: "web",
            source: source.parse().unwrap(),
            sni: None,
            alpn: None,
            identity: None,
        }
    }

    #[test]
    fn a_refilled_peer_spells_each_new_client_address_and_keeps_an_unchanged_one() {
        let mut wasm = sluice_policy_host::empty_peer();
        let mut shown = None;
        let seen: Vec<(String, u16)> = [
            "127.0.0.1:4000",
            "127.0.0.1:4001",
            "[::ffff:10.0.0.2]:5000",
            "[2001:db8::7]:443",
            "127.0.0.1:4000",
        ]
        .into_iter()
        .map(|source| {
            fill_peer(&mut wasm, &facts(source), &mut shown);
            let fresh = wasm_peer(&facts(source));
            assert_eq!(fresh.source_address, wasm.source_address, "{source}");
            (wasm.source_address.clone(), wasm.source_port)
        })
        .collect();
        let expected = [
            ("127.0.0.1", 4000),
            ("127.0.0.1", 4001),
            ("10.0.0.2", 5000),
            ("2001:db8::7", 443),
            ("127.0.0.1", 4000),
        ];
        let expected: Vec<(String, u16)> =
            expected.iter().map(|(a, p)| (a.to_string(), *p)).collect();
        assert_eq!(seen, expected);
        let last: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(shown, Some(last.ip()));
    }
}
