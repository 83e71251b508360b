//! What a probe found and what it means: probe results, verdicts, roles, evaluators.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use sluice_config::CheckKind;

use crate::probe::grpc_wire::{SERVING, serving_status_name};

/// The kind of probe that produced a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// An HTTP request.
    Http,
    /// A TCP connection.
    Tcp,
    /// A program.
    Command,
    /// A gRPC health check (`grpc.health.v1.Health/Check`).
    Grpc,
}

/// Why a probe produced no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeErrorKind {
    /// No answer within the check timeout.
    Timeout,
    /// The connection was refused.
    Refused,
    /// The connection was reset or closed early.
    Reset,
    /// Anything else (unreachable, bad response, cannot start the program).
    Other,
}

/// A probe that failed before producing an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeError {
    /// Classification.
    pub kind: ProbeErrorKind,
    /// Detail for operators.
    pub message: String,
}

impl fmt::Display for ProbeError {
    /// `kind: message`, the message as written: gRPC's names (`UNIMPLEMENTED`, `NOT_SERVING`)
    /// and what a server answered are quoted exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ProbeErrorKind::Timeout => "timeout",
            ProbeErrorKind::Refused => "refused",
            ProbeErrorKind::Reset => "reset",
            ProbeErrorKind::Other => "other",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

/// Everything one probe observed, handed to the evaluator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeResult {
    /// Probe kind.
    pub kind: ProbeKind,
    /// HTTP status, the command's exit status, or the gRPC serving status (0 `UNKNOWN`,
    /// 1 `SERVING`, 2 `NOT_SERVING`, 3 `SERVICE_UNKNOWN`); `None` for TCP or on error.
    pub status: Option<u16>,
    /// Response headers (HTTP), in order; for gRPC, `grpc-status` and `grpc-message`
    /// (percent-decoded), kept when the call failed too.
    pub headers: Vec<(String, String)>,
    /// The first bytes of the body (HTTP), of the reply (TCP) or of stdout (command).
    #[serde(skip)]
    pub body_prefix: Vec<u8>,
    /// Time the probe took.
    pub latency_us: u64,
    /// Set when the probe failed before producing an answer.
    pub error: Option<ProbeError>,
}

impl ProbeResult {
    /// A one-line description for the API and logs.
    pub fn summary(&self) -> String {
        match (&self.error, self.status) {
            (Some(e), _) => e.to_string(),
            (None, Some(s)) if self.kind == ProbeKind::Grpc => {
                format!("serving status {}", serving_status_name(s))
            }
            (None, Some(s)) => {
                let body = String::from_utf8_lossy(&self.body_prefix);
                let body: String = body.chars().take(40).collect();
                format!("{s} {}", body.trim())
            }
            (None, None) => "connected".to_owned(),
        }
    }
}

/// An instance's role in its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The one member that takes writes (a mirror primary).
    Primary,
    /// A standby member.
    Backup,
    /// No role: any healthy instance is as good as another.
    Any,
}

/// What one probe means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Able to take traffic in this role (`weight` overrides the configured one when set).
    Up {
        /// Role reported.
        role: Role,
        /// Weight override.
        weight: Option<u32>,
    },
    /// Not able to take traffic.
    Down {
        /// Why, for the API and logs.
        reason: String,
    },
}

impl Verdict {
    /// Whether this verdict is up.
    pub fn is_up(&self) -> bool {
        matches!(self, Verdict::Up { .. })
    }

    /// The role, when up.
    pub fn role(&self) -> Option<Role> {
        match self {
            Verdict::Up { role, .. } => Some(*role),
            Verdict::Down { .. } => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Up { role, .. } => write!(f, "up ({role:?})"),
            Verdict::Down { reason } => write!(f, "down: {reason}"),
        }
    }
}

/// The instance a probe was about, as an evaluator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbedInstance {
    /// Instance id (`ip:port`).
    pub id: String,
    /// Service name.
    pub service: String,
    /// Traffic address.
    pub address: String,
    /// Traffic port.
    pub port: u16,
}

/// The outcome of evaluating one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evaluation {
    /// A verdict.
    Verdict(Verdict),
    /// The evaluator failed (a policy trapped or timed out): keep the previous verdict and mark
    /// it stale.
    KeepPrevious {
        /// What failed.
        error: String,
    },
}

/// Turns a probe result into a verdict. Implemented natively ([`NativeEvaluator`]) and, in
/// the binary, by a Wasm health policy.
pub trait Evaluator: Send + Sync + fmt::Debug {
    /// Evaluates one probe.
    fn evaluate(&self, instance: &ProbedInstance, probe: &ProbeResult) -> Evaluation;
}

/// Finds the evaluator of a named health policy (the binary maps names to Wasm policies).
pub trait EvaluatorSource: Send + Sync + fmt::Debug {
    /// The evaluator for `policy`, if it is loaded.
    fn evaluator(&self, policy: &str) -> Option<Arc<dyn Evaluator>>;
}

/// No policies: every check uses the native rules.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPolicies;

impl EvaluatorSource for NoPolicies {
    fn evaluator(&self, _policy: &str) -> Option<Arc<dyn Evaluator>> {
        None
    }
}

/// The rules a check states in configuration: for HTTP, the status is one of `expect_status`
/// and the body prefix contains `expect_body`; for TCP, the connection succeeded and the reply
/// starts with `expect`; for a command, exit status 0; for gRPC, serving status `SERVING`.
/// Roles are always `any`.
#[derive(Debug, Clone)]
pub struct NativeEvaluator {
    kind: CheckKind,
}

impl NativeEvaluator {
    /// Rules from a check's configuration.
    pub fn new(kind: CheckKind) -> Self {
        Self { kind }
    }
}

impl Evaluator for NativeEvaluator {
    fn evaluate(&self, _instance: &ProbedInstance, probe: &ProbeResult) -> Evaluation {
        let up = Verdict::Up {
            role: Role::Any,
            weight: None,
        };
        let down = |reason: String| Evaluation::Verdict(Verdict::Down { reason });
        if let Some(e) = &probe.error {
            return down(e.to_string());
        }
        match &self.kind {
            CheckKind::Http {
                expect_status,
                expect_body,
                ..
            } => {
                let status = probe.status.unwrap_or(0);
                if !expect_status
                    .iter()
                    .any(|(lo, hi)| (*lo..=*hi).contains(&status))
                {
                    return down(format!("status {status}"));
                }
                if let Some(needle) = expect_body
                    && !contains(&probe.body_prefix, needle.as_bytes())
                {
                    return down(format!("body does not contain {needle:?}"));
                }
                Evaluation::Verdict(up)
            }
            CheckKind::Tcp { expect, .. } => match expect {
                Some(e) if !probe.body_prefix.starts_with(e.as_bytes()) => {
                    down(format!("reply does not start with {e:?}"))
                }
                _ => Evaluation::Verdict(up),
            },
            CheckKind::Command { .. } => match probe.status {
                Some(0) => Evaluation::Verdict(up),
                Some(code) => down(format!("exit status {code}")),
                None => down("no exit status".to_owned()),
            },
            CheckKind::Grpc { .. } => match probe.status {
                Some(SERVING) => Evaluation::Verdict(up),
                Some(status) => down(format!("serving status {}", serving_status_name(status))),
                None => down("no serving status".to_owned()),
            },
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
