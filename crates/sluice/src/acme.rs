//! Certificates from an ACME CA (RFC 8555) for listeners with `[listener.tls.acme]`.
//!
//! The protocol is `instant-acme`'s; this module decides when to use it and where the results
//! go. Per such listener one task keeps a certificate for its `domains` in `storage`:
//!
//! - **Files.** `storage/account.json` (the account's credentials, created on first use),
//!   `storage/key.pem` and `storage/cert.pem` (what the listener serves: the loader names them
//!   as its first certificate). Each is written to a temporary file and renamed, the key before
//!   the certificate; the TLS file watch (`tls_watch.rs`) then reloads the listener's
//!   certificates, so new handshakes get the new one and open connections are not touched.
//! - **Start.** With no certificate yet, [`prepare`] writes a self-signed, already expired
//!   placeholder before the listener starts, so the listener can bind; the task replaces it at
//!   once.
//! - **Renewal.** The task sleeps until the certificate expires within `renew_before`, then
//!   orders a new one (HTTP-01: the token goes into the proxy's [`AcmeChallenges`], which
//!   every plain-HTTP listener answers). After a success it waits at least `retry_every`
//!   before the next order. TLS-ALPN-01 instead puts a challenge certificate into the
//!   listener's [`AlpnChallenges`].
//! - **Failures** (CA unreachable, a challenge refused, a timeout): logged with the CA's
//!   words, counted, and retried after `retry_every`, doubling up to an hour. The last good
//!   certificate keeps serving meanwhile.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use sluice_config::{AcmeChallengeKind, AcmeConfig, Config};
use sluice_proxy::AcmeChallenges;
use sluice_tls::AlpnChallenges;
use tokio::task::JoinHandle;

/// Certificate orders, by `listener` and `result` (`ok`, `failed`).
pub(crate) const ACME_ORDERS_TOTAL: &str = "sluice_acme_orders_total";
/// When the certificate an ACME listener serves expires (Unix seconds), by `listener`.
pub(crate) const ACME_CERT_EXPIRY: &str = "sluice_acme_certificate_expiry_timestamp_seconds";

/// The subject of the placeholder written before the first certificate.
const PLACEHOLDER_CN: &str = "sluice placeholder awaiting ACME";
/// The longest one order may take, from account to certificate.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest wait between failed attempts.
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// The longest single sleep (the due time is recomputed after it).
const MAX_SLEEP: Duration = Duration::from_secs(86_400);

/// The certificate tasks, one per ACME listener, kept in step with the configuration.
#[derive(Debug)]
pub(crate) struct AcmeManager {
    challenges: Challenges,
    tasks: Mutex<HashMap<String, (AcmeConfig, JoinHandle<()>)>>,
}

impl AcmeManager {
    pub(crate) fn new(http: Arc<AcmeChallenges>, tls_alpn: Arc<AlpnChallenges>) -> Self {
        Self {
            challenges: Challenges { http, tls_alpn },
            tasks: Mutex::default(),
        }
    }

    /// Starts a task for each ACME listener of `config`, keeps the tasks whose settings are
    /// unchanged, and stops the others.
    pub(crate) fn sync(&self, config: &Config) {
        let wanted: HashMap<String, AcmeConfig> = acme_listeners(config)
            .map(|(name, acme)| (name.to_owned(), acme.clone()))
            .collect();
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|name, (acme, task)| {
            let keep = wanted.get(name) == Some(acme);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, acme) in wanted {
            if tasks.contains_key(&name) {
                continue;
            }
            let job = Job {
                listener: name.clone(),
                acme: acme.clone(),
                challenges: self.challenges.clone(),
            };
            tasks.insert(name, (acme, tokio::spawn(job.run())));
        }
    }
}

impl Drop for AcmeManager {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, task) in tasks.values() {
            task.abort();
        }
    }
}

fn acme_listeners(config: &Config) -> impl Iterator<Item = (&str, &AcmeConfig)> {
    config.listeners.iter().filter_map(|l| {
        let acme = l.tls.as_ref()?.acme.as_ref()?;
        Some((l.name.as_str(), acme))
    })
}

/// Makes every ACME listener's storage and, where there is no certificate yet, writes the
/// placeholder, so the listeners can start.
pub(crate) fn prepare(config: &Config) -> anyhow::Result<()> {
    for (listener, acme) in acme_listeners(config) {
        std::fs::create_dir_all(&acme.storage).with_context(|| {
            format!(
                "listener `{listener}`: cannot create ACME storage {}",
                acme.storage.display()
            )
        })?;
        if !acme.cert_path().exists() || !acme.key_path().exists() {
            write_placeholder(acme)
                .with_context(|| format!("listener `{listener}`: writing the placeholder"))?;
        }
    }
    Ok(())
}

fn write_placeholder(acme: &AcmeConfig) -> anyhow::Result<()> {
    let mut params = rcgen::CertificateParams::new(acme.domains.clone())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, PLACEHOLDER_CN);
    // Expired from the start: nobody trusts it, and it is due for replacement at once.
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2000, 1, 2);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_atomically(&acme.key_path(), key.serialize_pem().as_bytes(), true)?;
    write_atomically(&acme.cert_path(), cert.pem().as_bytes(), false)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename;
/// `secret` files are readable by their owner only.
fn write_atomically(path: &Path, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Where pending challenges are answered: HTTP-01 tokens on the plain-HTTP listeners,
/// TLS-ALPN-01 certificates on the ACME listeners.
#[derive(Debug, Clone)]
struct Challenges {
    http: Arc<AcmeChallenges>,
    tls_alpn: Arc<AlpnChallenges>,
}

/// One pending challenge's answer, withdrawn once the CA has looked.
enum Posted {
    Token(String),
    AlpnName(String),
}

/// The answers posted for one order; withdrawn when dropped, however the order ends (an
/// error, or the order's timeout dropping it mid-way).
struct PostedAnswers<'a> {
    challenges: &'a Challenges,
    posted: Vec<Posted>,
}

impl Drop for PostedAnswers<'_> {
    fn drop(&mut self) {
        for p in &self.posted {
            match p {
                Posted::Token(token) => self.challenges.http.remove(token),
                Posted::AlpnName(name) => self.challenges.tls_alpn.remove(name),
            }
        }
    }
}

impl Challenges {
    /// Posts the answer to `challenge` for `name`.
    fn post(
        &self,
        name: &str,
        challenge: &instant_acme::ChallengeHandle<'_>,
    ) -> anyhow::Result<Posted> {
        let key_authorization = challenge.key_authorization();
        if challenge.r#type == ChallengeType::Http01 {
            self.http.add(&challenge.token, key_authorization.as_str());
            return Ok(Posted::Token(challenge.token.clone()));
        }
        let (cert, key) = alpn_certificate(name, key_authorization.digest().as_ref())?;
        self.tls_alpn.add(name, cert, key)?;
        Ok(Posted::AlpnName(name.to_owned()))
    }
}

/// The self-signed TLS-ALPN-01 certificate for `name` (RFC 8737 §3): the name as its only
/// SAN and the key authorization's SHA-256 `digest` in a critical `acmeIdentifier`
/// extension. DER certificate and PKCS#8 key.
fn alpn_certificate(name: &str, digest: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}

/// One listener's certificate upkeep.
struct Job {
    listener: String,
    acme: AcmeConfig,
    challenges: Challenges,
}

impl Job {
    async fn run(self) {
        let mut retry = self.acme.retry_every;
        loop {
            let due_in = self.renewal_due_in();
            if !due_in.is_zero() {
                tokio::time::sleep(due_in.min(MAX_SLEEP)).await;
                continue;
            }
            let outcome = tokio::time::timeout(ORDER_TIMEOUT, self.order()).await;
            let outcome =
                outcome.unwrap_or_else(|_| bail!("no certificate within {ORDER_TIMEOUT:?}"));
            let result = if outcome.is_ok() { "ok" } else { "failed" };
            metrics::counter!(ACME_ORDERS_TOTAL, "listener" => self.listener.clone(), "result" => result)
                .increment(1);
            match outcome {
                Ok(expires) => {
                    self.report_expiry(expires);
                    tracing::info!(listener = %self.listener, domains = ?self.acme.domains, expires = %humantime::format_rfc3339_seconds(expires), "ACME: new certificate stored; the listener serves it from its next reload");
                    retry = self.acme.retry_every;
                    tokio::time::sleep(self.acme.retry_every).await;
                }
                Err(e) => {
                    tracing::error!(listener = %self.listener, directory = %self.acme.directory, error = format!("{e:#}"), retry_in_s = retry.as_secs(), "ACME: no certificate; the current one keeps serving");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// How long until the stored certificate is due for renewal (zero: now); a placeholder,
    /// a missing or an unreadable certificate is due at once. Reports its expiry.
    fn renewal_due_in(&self) -> Duration {
        let Ok(expires) = expiry(&self.acme.cert_path()) else {
            return Duration::ZERO;
        };
        self.report_expiry(expires);
        expires
            .checked_sub(self.acme.renew_before)
            .and_then(|due| due.duration_since(SystemTime::now()).ok())
            .unwrap_or_default()
    }

    fn report_expiry(&self, expires: SystemTime) {
        let seconds = expires
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(ACME_CERT_EXPIRY, "listener" => self.listener.clone()).set(seconds);
    }

    /// Orders and stores a certificate for the listener's domains; returns its expiry.
    async fn order(&self) -> anyhow::Result<SystemTime> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> =
            self.acme.domains.iter().map(|d| identifier(d)).collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .context("creating the order")?;
        let posted = self.answer_challenges(&mut order).await?;
        let ready = order.poll_ready(&RetryPolicy::default()).await;
        drop(posted);
        let status = ready.context("waiting for the CA to validate")?;
        if status != OrderStatus::Ready {
            bail!(
                "the CA did not validate the order: {}",
                order_problem(&mut order).await
            );
        }
        let key_pem = order.finalize().await.context("finalizing the order")?;
        let chain_pem = order
            .poll_certificate(&RetryPolicy::default())
            .await
            .context("downloading the certificate")?;
        write_atomically(&self.acme.key_path(), key_pem.as_bytes(), true)?;
        write_atomically(&self.acme.cert_path(), chain_pem.as_bytes(), false)?;
        expiry(&self.acme.cert_path())
    }

    /// Posts the answer to each pending authorization's challenge of the configured kind and
    /// tells the CA to validate; the answers stay posted until what is returned is dropped.
    async fn answer_challenges(
        &self,
        order: &mut instant_acme::Order,
    ) -> anyhow::Result<PostedAnswers<'_>> {
        let kind = match self.acme.challenge {
            AcmeChallengeKind::Http01 => ChallengeType::Http01,
            AcmeChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut answers = PostedAnswers {
            challenges: &self.challenges,
            posted: Vec::new(),
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.context("reading an authorization")?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            let name = authz.identifier().to_string();
            let mut challenge = authz
                .challenge(kind.clone())
                .with_context(|| format!("the CA offers no {kind:?} challenge for {name}"))?;
            answers
                .posted
                .push(self.challenges.post(&name, &challenge)?);
            challenge
                .set_ready()
                .await
                .with_context(|| format!("asking the CA to validate {name}"))?;
        }
        Ok(answers)
    }

    /// The account: loaded from `account.json`, or created (and saved) on first use.
    async fn account(&self) -> anyhow::Result<Account> {
        let builder = || match &self.acme.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        let path = self.acme.account_path();
        if let Ok(saved) = std::fs::read(&path) {
            let credentials: AccountCredentials = serde_json::from_slice(&saved)
                .with_context(|| format!("{} is not an ACME account", path.display()))?;
            return builder()?
                .from_credentials(credentials)
                .await
                .context("loading the ACME account");
        }
        let contact: Vec<&str> = self.acme.contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = builder()?
            .create(&new, self.acme.directory.clone(), None)
            .await
            .context("creating the ACME account")?;
        let json = serde_json::to_vec_pretty(&credentials)?;
        write_atomically(&path, &json, true)?;
        tracing::info!(listener = %self.listener, account = account.id(), "ACME: account created");
        Ok(account)
    }
}

/// What the CA said about an order that did not become ready.
async fn order_problem(order: &mut instant_acme::Order) -> String {
    let mut problems = Vec::new();
    if let Some(p) = &order.state().error {
        problems.push(p.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                problems.push(format!("{}: {p}", authz.identifier()));
            }
        }
    }
    if problems.is_empty() {
        "no reason given".to_owned()
    } else {
        problems.join("; ")
    }
}

/// An IP address is an IP identifier (RFC 8738); anything else a DNS name.
fn identifier(name: &str) -> Identifier {
    match name.parse() {
        Ok(ip) => Identifier::Ip(ip),
        Err(_) => Identifier::Dns(name.to_owned()),
    }
}

/// When the first certificate in the PEM file at `path` expires; an error for the
/// placeholder.
fn expiry(path: &Path) -> anyhow::Result<SystemTime> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} holds no PEM certificate: {e}", path.display()))?;
    let cert = block
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("{} holds no X.509 certificate: {e}", path.display()))?;
    let placeholder = cert
        .subject()
        .iter_common_name()
        .any(|cn| cn.as_str() == Ok(PLACEHOLDER_CN));
    if placeholder {
        bail!("{} is the placeholder", path.display());
    }
    let seconds = cert.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn acme_in(dir: &Path) -> AcmeConfig {
        AcmeConfig {
            directory: "https://ca.test/dir".into(),
            domains: vec!["www.example.com".into()],
            contact: Vec::new(),
            storage: dir.to_owned(),
            ca_root: None,
            renew_before: Duration::from_secs(30 * 86_400),
            retry_every: Duration::from_secs(60),
            challenge: AcmeChallengeKind::Http01,
        }
    }

    #[test]
    fn the_placeholder_is_due_at_once_and_its_key_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let acme = acme_in(dir.path());
        write_placeholder(&acme).unwrap();
        let err = expiry(&acme.cert_path()).unwrap_err().to_string();
        assert!(err.contains("is the placeholder"), "{err}");
        let mode = std::fs::metadata(acme.key_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn posted_answers_are_withdrawn_when_dropped() {
        let challenges = Challenges {
            http: Arc::default(),
            tls_alpn: Arc::default(),
        };
        challenges.http.add("tok", "tok.thumb");
        let (cert, key) = alpn_certificate("www.example.com", &[7; 32]).unwrap();
        challenges
            .tls_alpn
            .add("www.example.com", cert, key)
            .unwrap();
        let answers = PostedAnswers {
            challenges: &challenges,
            posted: vec![
                Posted::Token("tok".into()),
                Posted::AlpnName("www.example.com".into()),
            ],
        };
        // As when the order's timeout drops the future holding them.
        drop(answers);
        assert!(challenges.http.is_empty());
        assert!(challenges.tls_alpn.is_empty());
    }
}
