//! Who may use the admin API: bearer tokens with a `read` or an `admin` scope.
//!
//! Tokens come from `[admin] tokens_file` (one `SCOPE TOKEN` per line, `#` comments) and from
//! the environment variables named by `token_env` (admin) and `read_token_env` (read). `GET`s
//! need `read` (which `admin` includes), everything else `admin`; `/healthz` and `/readyz` stay
//! open for orchestrators' probes, and so do `GET`/`HEAD` of the status page's files (`/`,
//! `/assets/*`): they hold no data, and a browser must load them before it can ask for a token
//! (the page's data comes from `/api/*`, which need one). Without any token source the API is open, which the
//! configuration allows only on a loopback address or with `insecure = true`.
//!
//! Only SHA-256 digests of the tokens are kept, and a presented token is compared by its
//! digest: the time a comparison takes tells nothing about the secret. The file is read again
//! on every reload, so tokens can be rotated without a restart; a file that no longer reads
//! keeps the previous tokens.

use std::path::Path;

use arc_swap::ArcSwap;
use http::Method;
use sha2::{Digest, Sha256};
use sluice_config::AdminConfig;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scope {
    Read,
    Admin,
}

/// What a request needs: `None` for the open paths (probes, the status page's files), `read`
/// for reading, `admin` for anything that changes something.
pub(crate) fn scope_of(method: &Method, path: &str) -> Option<Scope> {
    let reads = method == Method::GET || method == Method::HEAD;
    match path {
        "/healthz" | "/readyz" => None,
        _ if reads && crate::status_page::is_page_path(path) => None,
        _ if reads => Some(Scope::Read),
        _ => Some(Scope::Admin),
    }
}

/// Why a token source could not be read; the message names the file and line or the variable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("admin tokens_file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("admin tokens_file {path}:{line}: {why}")]
    Line {
        path: String,
        line: usize,
        why: &'static str,
    },
    #[error("admin token variable {name}: {why}")]
    Env { name: String, why: &'static str },
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No `Authorization: Bearer` field.
    Missing,
    /// A token that is not one of the configured ones.
    Invalid,
    /// A `read` token on a request that needs `admin`.
    Scope,
}

impl Denied {
    /// The `reason` label of `sluice_admin_auth_failures_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Invalid => "invalid",
            Denied::Scope => "scope",
        }
    }
}

/// A token's scope and the SHA-256 digest of the token.
type Grant = (Scope, [u8; 32]);

/// Shortest token accepted: shorter ones could be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// The admin API's tokens, replaced whole on reload.
#[derive(Debug)]
pub(crate) struct AdminAuth {
    config: AdminConfig,
    /// `None`: no token source, the API is open.
    tokens: ArcSwap<Option<Vec<Grant>>>,
}

impl AdminAuth {
    /// Reads every token source of `config`.
    pub(crate) fn load(config: &AdminConfig) -> Result<Self, TokenError> {
        let tokens = read_tokens(config)?;
        Ok(AdminAuth {
            config: config.clone(),
            tokens: ArcSwap::from_pointee(tokens),
        })
    }

    /// Reads the token sources again (the file's content, the variables' values).
    pub(crate) fn reload(&self) -> Result<(), TokenError> {
        self.tokens
            .store(std::sync::Arc::new(read_tokens(&self.config)?));
        Ok(())
    }

    /// Whether a request with this `Authorization` value, on a connection whose client
    /// certificate was verified (`client_cert`) or not, may do what needs `scope`. A verified
    /// certificate is worth `[admin.tls] client_scope`; a token can still grant more.
    pub(crate) fn check(
        &self,
        scope: Scope,
        authorization: Option<&[u8]>,
        client_cert: bool,
    ) -> Result<(), Denied> {
        let by_cert = self.cert_scope().filter(|_| client_cert);
        if by_cert.is_some_and(|granted| granted >= scope) {
            return Ok(());
        }
        let by_token = self.check_token(scope, authorization);
        match (by_token, by_cert) {
            // A certificate that allows less than the request needs, and no better token.
            (Err(Denied::Missing), Some(_)) => Err(Denied::Scope),
            (outcome, _) => outcome,
        }
    }

    /// What a verified client certificate allows, when client certificates are taken.
    fn cert_scope(&self) -> Option<Scope> {
        let tls = self.config.tls.as_ref()?;
        tls.client_ca.as_ref()?;
        Some(match tls.client_scope {
            sluice_config::AdminScope::Read => Scope::Read,
            sluice_config::AdminScope::Admin => Scope::Admin,
        })
    }

    /// The bearer-token check: open when there is no credential source at all.
    fn check_token(&self, scope: Scope, authorization: Option<&[u8]>) -> Result<(), Denied> {
        let tokens = self.tokens.load();
        let Some(tokens) = tokens.as_ref() else {
            // No token sources: only client certificates authenticate, if anything does.
            return match (
                self.config.authenticates(),
                authorization.and_then(bearer_token),
            ) {
                (false, _) => Ok(()),
                (true, Some(_)) => Err(Denied::Invalid),
                (true, None) => Err(Denied::Missing),
            };
        };
        let presented = authorization
            .and_then(bearer_token)
            .ok_or(Denied::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let granted = tokens
            .iter()
            .filter(|(_, d)| *d == digest)
            .map(|(s, _)| *s)
            .max()
            .ok_or(Denied::Invalid)?;
        if granted >= scope {
            Ok(())
        } else {
            Err(Denied::Scope)
        }
    }
}

/// The token of `Bearer TOKEN` (scheme case-insensitive, RFC 9110 §11.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn read_tokens(config: &AdminConfig) -> Result<Option<Vec<Grant>>, TokenError> {
    if !config.has_token_sources() {
        return Ok(None);
    }
    let mut tokens = Vec::new();
    if let Some(path) = &config.tokens_file {
        tokens.extend(read_file(path)?);
    }
    for (name, scope) in [
        (&config.token_env, Scope::Admin),
        (&config.read_token_env, Scope::Read),
    ] {
        if let Some(name) = name {
            tokens.push((scope, digest(&env_token(name)?)));
        }
    }
    if tokens.is_empty() {
        tracing::warn!(
            "the admin API has token sources but no token: every request needing one is refused"
        );
    }
    Ok(Some(tokens))
}

fn read_file(path: &Path) -> Result<Vec<Grant>, TokenError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TokenError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut tokens = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let at = |why| TokenError::Line {
            path: shown.clone(),
            line: i + 1,
            why,
        };
        let line = std::str::from_utf8(line)
            .map_err(|_| at("not UTF-8"))?
            .trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (scope, token) = line
            .split_once(char::is_whitespace)
            .ok_or(at("expected `read TOKEN` or `admin TOKEN`"))?;
        let scope = match scope {
            "read" => Scope::Read,
            "admin" => Scope::Admin,
            _ => return Err(at("the scope is `read` or `admin`")),
        };
        check_token(token.trim()).map_err(at)?;
        tokens.push((scope, digest(token.trim())));
    }
    Ok(tokens)
}

fn env_token(name: &str) -> Result<String, TokenError> {
    let err = |why| TokenError::Env {
        name: name.to_owned(),
        why,
    };
    let value = match std::env::var(name) {
        Ok(v) => v,
        Err(std::env::VarError::NotPresent) => return Err(err("is not set")),
        Err(std::env::VarError::NotUnicode(_)) => return Err(err("is not UTF-8")),
    };
    check_token(value.trim()).map_err(err)?;
    Ok(value.trim().to_owned())
}

/// A token as RFC 6750 allows it in `Authorization: Bearer`, long enough not to be guessed.
fn check_token(token: &str) -> Result<(), &'static str> {
    if token.len() < MIN_TOKEN_LEN {
        return Err("a token needs at least 16 characters");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if !token.chars().all(allowed) {
        return Err("a token has letters, digits and -._~+/= only");
    }
    Ok(())
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn auth_from(file: impl AsRef<[u8]>) -> Result<AdminAuth, TokenError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, file).unwrap();
        AdminAuth::load(&AdminConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            tokens_file: Some(path),
            token_env: None,
            read_token_env: None,
            insecure: false,
            tls: None,
        })
    }

    #[test]
    fn scopes_are_checked_by_digest() {
        let auth = auth_from("# operators\nadmin aaaaaaaaaaaaaaaa-1\n\nread rrrrrrrrrrrrrrrr-2\n")
            .unwrap();
        let bearer = |t: &str| format!("Bearer {t}").into_bytes();
        assert_eq!(auth.check(Scope::Read, None, false), Err(Denied::Missing));
        assert_eq!(
            auth.check(Scope::Read, Some(b"Basic abc"), false),
            Err(Denied::Missing)
        );
        assert_eq!(
            auth.check(Scope::Read, Some(&bearer("nope-nope-nope-nope")), false),
            Err(Denied::Invalid)
        );
        assert_eq!(
            auth.check(Scope::Read, Some(&bearer("rrrrrrrrrrrrrrrr-2")), false),
            Ok(())
        );
        assert_eq!(
            auth.check(Scope::Admin, Some(&bearer("rrrrrrrrrrrrrrrr-2")), false),
            Err(Denied::Scope)
        );
        assert_eq!(
            auth.check(Scope::Admin, Some(b"bearer   aaaaaaaaaaaaaaaa-1 "), false),
            Ok(())
        );
        assert_eq!(
            auth.check(Scope::Read, Some(&bearer("aaaaaaaaaaaaaaaa-1")), false),
            Ok(())
        );
    }

    #[test]
    fn only_probes_and_the_page_files_are_open() {
        for (method, path, want) in [
            (Method::GET, "/healthz", None),
            (Method::POST, "/readyz", None),
            (Method::GET, "/", None),
            (Method::HEAD, "/", None),
            (Method::GET, "/assets/status.js", None),
            (Method::HEAD, "/assets/status.css", None),
            (Method::POST, "/", Some(Scope::Admin)),
            (Method::PUT, "/assets/status.js", Some(Scope::Admin)),
            (Method::GET, "/api/services", Some(Scope::Read)),
            (Method::GET, "/api/reloads", Some(Scope::Read)),
            (Method::GET, "/metrics", Some(Scope::Read)),
            (Method::POST, "/api/reload", Some(Scope::Admin)),
        ] {
            assert_eq!(scope_of(&method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        for (file, want) in [
            ("admin short\n", ":1: a token needs at least 16 characters"),
            (
                "\nwrite aaaaaaaaaaaaaaaa-1\n",
                ":2: the scope is `read` or `admin`",
            ),
            ("admin\n", ":1: expected `read TOKEN` or `admin TOKEN`"),
            ("read aaaaaaaaaaaaaaaa\u{e9}\n", ":1: a token has letters"),
        ] {
            let err = auth_from(file).unwrap_err().to_string();
            assert!(err.contains(want), "{file:?}: {err}");
        }
        let err = auth_from(b"admin \xff\xfe\n").unwrap_err().to_string();
        assert!(err.ends_with(":1: not UTF-8"), "{err}");
    }

    #[test]
    fn a_verified_client_certificate_is_worth_its_scope_and_tokens_add_to_it() {
        let tls = |scope| sluice_config::AdminTlsConfig {
            cert: "a.pem".into(),
            key: "a.key".into(),
            client_ca: Some("ca.pem".into()),
            client_scope: scope,
        };
        let config = |scope| AdminConfig {
            bind: "0.0.0.0:9901".parse().unwrap(),
            tokens_file: None,
            token_env: None,
            read_token_env: None,
            insecure: false,
            tls: Some(tls(scope)),
        };
        let read = AdminAuth::load(&config(sluice_config::AdminScope::Read)).unwrap();
        assert_eq!(read.check(Scope::Read, None, true), Ok(()));
        assert_eq!(read.check(Scope::Admin, None, true), Err(Denied::Scope));
        assert_eq!(
            read.check(Scope::Read, None, false),
            Err(Denied::Missing),
            "no certificate, no token"
        );
        let admin = AdminAuth::load(&config(sluice_config::AdminScope::Admin)).unwrap();
        assert_eq!(admin.check(Scope::Admin, None, true), Ok(()));
        assert_eq!(
            admin.check(Scope::Admin, Some(b"Bearer unknown-unknown-1"), false),
            Err(Denied::Invalid),
            "a token where none are configured"
        );
    }
}
