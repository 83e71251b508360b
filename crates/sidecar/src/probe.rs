//! Readiness checks and role probes: a command (exit 0 passes), an HTTP GET (2xx passes) or a
//! TCP connect. The HTTP probe uses `sluice_kv::http`, the same small client etcd uses: a
//! status page on loopback needs neither pooling nor TLS, and hyper would double the binary.

use std::time::Duration;

use sluice_kv::http::{self, HttpEndpoint};

use crate::config::{CommandSpec, ProbeConfig, ProbeUrlError, parse_http_url};
use crate::reaper::Reaper;

#[derive(Debug, Clone)]
pub enum Probe {
    Command(Vec<String>),
    Http {
        endpoint: HttpEndpoint,
        path: String,
    },
    Tcp(String),
}

/// A probe configuration that makes no probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeConfigError {
    /// None of `command`, `http`, `tcp` is set.
    #[error("a probe needs one of `command`, `http`, `tcp`")]
    NoKind,
    #[error(transparent)]
    Url(#[from] ProbeUrlError),
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub passed: bool,
    pub detail: String,
}

impl Probe {
    /// The probe `config` describes: its `command`, else its `http`, else its `tcp`.
    pub fn from_config(config: &ProbeConfig) -> Result<Self, ProbeConfigError> {
        if let Some(command) = &config.command {
            return Ok(Probe::Command(command.argv()));
        }
        if let Some(url) = &config.http {
            let (endpoint, path) = parse_http_url(url)?;
            return Ok(Probe::Http { endpoint, path });
        }
        if let Some(address) = &config.tcp {
            return Ok(Probe::Tcp(address.clone()));
        }
        Err(ProbeConfigError::NoKind)
    }

    /// The Consul-format check published in the service definition, so the proxy can run the
    /// same check.
    pub fn to_check(
        &self,
        interval: Duration,
        timeout: Duration,
    ) -> sluice_kv::registry::CheckDefinition {
        let mut check = sluice_kv::registry::CheckDefinition {
            interval: Some(format!("{}s", interval.as_secs().max(1))),
            timeout: Some(format!("{}ms", timeout.as_millis().max(1))),
            ..Default::default()
        };
        match self {
            Probe::Command(argv) => check.args = argv.clone(),
            Probe::Http { endpoint, path } => check.http = Some(format!("{endpoint}{path}")),
            Probe::Tcp(address) => check.tcp = Some(address.clone()),
        }
        check
    }

    pub async fn run(&self, reaper: &Reaper, timeout: Duration) -> ProbeResult {
        match self {
            Probe::Command(argv) => match crate::command::run(reaper, argv, &[], timeout).await {
                Ok(outcome) => ProbeResult {
                    passed: outcome.success(),
                    detail: outcome.describe(timeout),
                },
                Err(e) => ProbeResult {
                    passed: false,
                    detail: e.to_string(),
                },
            },
            Probe::Http { endpoint, path } => {
                match http::request(endpoint, "GET", path, None, timeout).await {
                    Ok(response) => {
                        let body = String::from_utf8_lossy(&response.body);
                        let first_line = body
                            .lines()
                            .next()
                            .unwrap_or("")
                            .chars()
                            .take(80)
                            .collect::<String>();
                        ProbeResult {
                            passed: (200..300).contains(&response.status),
                            detail: format!("HTTP {} {first_line}", response.status),
                        }
                    }
                    Err(e) => ProbeResult {
                        passed: false,
                        detail: e.to_string(),
                    },
                }
            }
            Probe::Tcp(address) => {
                match tokio::time::timeout(
                    timeout,
                    tokio::net::TcpStream::connect(address.as_str()),
                )
                .await
                {
                    Ok(Ok(_)) => ProbeResult {
                        passed: true,
                        detail: format!("connected to {address}"),
                    },
                    Ok(Err(e)) => ProbeResult {
                        passed: false,
                        detail: format!("{address}: {e}"),
                    },
                    Err(_) => ProbeResult {
                        passed: false,
                        detail: format!("{address}: no connection within {timeout:?}"),
                    },
                }
            }
        }
    }
}

impl CommandSpec {
    /// For messages.
    pub fn display(&self) -> String {
        match self {
            CommandSpec::Argv(argv) => argv.join(" "),
            CommandSpec::Shell(line) => line.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_urls_split_into_endpoint_and_path() {
        let (endpoint, path) =
            parse_http_url("http://127.0.0.1:52773/csp/mirror_status.cxw").expect("valid");
        assert_eq!(
            (endpoint.port(), path.as_str()),
            (52773, "/csp/mirror_status.cxw")
        );
        assert_eq!(parse_http_url("http://h:1?x=1").expect("valid").1, "/?x=1");
        assert_eq!(parse_http_url("http://h:1").expect("valid").1, "/");
        let error = parse_http_url("https://h/").expect_err("not http");
        assert!(
            matches!(&error, ProbeUrlError::NotHttp { url } if url == "https://h/"),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "probe URL \"https://h/\" must start with http://"
        );
    }
}
