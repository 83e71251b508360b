//! A certificate authority made at test time (rcgen), writing PEM files to a temp directory.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A CA whose certificate and key live in a temp directory for the test's lifetime.
pub struct TestCa {
    dir: tempfile::TempDir,
    params: CertificateParams,
    key: KeyPair,
    /// The CA certificate, PEM file.
    pub ca_path: PathBuf,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("ca_path", &self.ca_path)
            .finish()
    }
}

/// A certificate and key written as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// Certificate (leaf only).
    pub cert: PathBuf,
    /// Private key (PKCS#8).
    pub key: PathBuf,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

impl CertFiles {
    /// Server-side TLS with this certificate and no client authentication, for instances a
    /// test starts; `alpn_http1` offers `http/1.1` in ALPN.
    pub fn server_tls(&self, alpn_http1: bool) -> sluice_tls::ServerTls {
        sluice_tls::ServerTls::load(&sluice_tls::ServerTlsSettings {
            certs: vec![sluice_tls::CertKeyPaths {
                cert: self.cert.clone(),
                key: self.key.clone(),
            }],
            client_ca: None,
            client_auth: sluice_tls::ClientAuth::Off,
            min_version: sluice_tls::MinVersion::Tls12,
            alpn_h2: false,
            alpn_http1,
        })
        .expect("the test certificate loads")
    }
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone)]
pub struct Leaf<'a> {
    /// File stem in the CA's directory.
    pub file: &'a str,
    /// Subject CN.
    pub cn: &'a str,
    /// DNS SANs (`spiffe://...` entries become URI SANs).
    pub sans: &'a [&'a str],
    /// Extended key usage: server auth, client auth, or both when both are true.
    pub server: bool,
    /// See `server`.
    pub client: bool,
    /// Validity window in days relative to now (negative end = already expired).
    pub valid_days: (i64, i64),
}

impl Leaf<'_> {
    /// A server certificate for `sans`, valid from yesterday for a year.
    pub fn server<'a>(file: &'a str, sans: &'a [&'a str]) -> Leaf<'a> {
        Leaf {
            file,
            cn: sans.first().copied().unwrap_or(file),
            sans,
            server: true,
            client: false,
            valid_days: (-1, 365),
        }
    }

    /// A client certificate with CN `cn`, valid from yesterday for a year.
    pub fn client<'a>(file: &'a str, cn: &'a str, sans: &'a [&'a str]) -> Leaf<'a> {
        Leaf {
            file,
            cn,
            sans,
            server: false,
            client: true,
            valid_days: (-1, 365),
        }
    }
}

impl TestCa {
    /// A new self-signed CA with common name `cn`.
    pub fn new(cn: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Sluice Tests");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let ca_path = dir.path().join(format!("{cn}.ca.pem").replace(' ', "_"));
        std::fs::write(&ca_path, cert.pem()).unwrap();
        Self {
            dir,
            params,
            key,
            ca_path,
        }
    }

    /// The directory the files are written to.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Issues a leaf certificate and writes `<file>.pem` and `<file>.key`.
    pub fn issue(&self, leaf: &Leaf<'_>) -> CertFiles {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, leaf.cn);
        for san in leaf.sans {
            if san.contains("://") {
                params
                    .subject_alt_names
                    .push(SanType::URI(san.to_string().try_into().unwrap()));
            } else if let Ok(ip) = san.parse::<std::net::IpAddr>() {
                params.subject_alt_names.push(SanType::IpAddress(ip));
            } else {
                params
                    .subject_alt_names
                    .push(SanType::DnsName(san.to_string().try_into().unwrap()));
            }
        }
        if leaf.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if leaf.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(leaf.valid_days.0);
        params.not_after = now + time::Duration::days(leaf.valid_days.1);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let cert_path = self.dir.path().join(format!("{}.pem", leaf.file));
        let key_path = self.dir.path().join(format!("{}.key", leaf.file));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        CertFiles {
            cert: cert_path,
            key: key_path,
            der: cert.der().to_vec(),
        }
    }
}
