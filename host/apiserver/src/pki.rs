//! The cluster's certificates: a CA, the API server's serving certificate and the admin's
//! client certificate, made on first start and reused afterwards, plus the admin kubeconfig.
//!
//! Layout under `<data-dir>/pki/`: `ca.crt`, `ca.key`, `apiserver.crt`, `apiserver.key`,
//! `apiserver.sans` (the SANs the serving certificate was made for, one per line),
//! `admin.crt`, `admin.key`. Keys are ECDSA P-256 and written with mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use skiff_core::join::{Credential, kubeconfig};

/// A PKI operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key or certificate could not be made or parsed.
    #[error("cannot make or parse {what}")]
    Certificate {
        /// Which certificate or key.
        what: &'static str,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
}

/// The certificates and keys, PEM-encoded.
#[derive(Clone)]
pub struct Pki {
    /// The CA certificate.
    pub ca_cert: String,
    ca_key: String,
    /// The serving certificate.
    pub server_cert: String,
    /// The serving key.
    pub server_key: String,
    /// The admin's client certificate (CN=skiff-admin, O=system:masters).
    pub admin_cert: String,
    /// The admin's client key.
    pub admin_key: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// How long leaf certificates are valid.
const LEAF_DAYS: i64 = 365;
/// How long the CA is valid.
const CA_DAYS: i64 = 3650;

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut file = options.open(&tmp).map_err(io)?;
        file.write_all(contents.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

fn cert_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Certificate { what, source }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clients whose clocks run a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

impl Pki {
    /// Loads the PKI from `<data_dir>/pki`, creating whatever is missing. The serving
    /// certificate is remade (with the same CA) when the requested SANs change.
    pub fn ensure(data_dir: &Path, sans: &[String]) -> Result<Pki, PkiError> {
        let dir = data_dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(|source| PkiError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = |name: &str| dir.join(name);
        let (ca_cert, ca_key) = match (read(&path("ca.crt"))?, read(&path("ca.key"))?) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let key = KeyPair::generate().map_err(cert_error("CA key"))?;
                let mut params = CertificateParams::default();
                params
                    .distinguished_name
                    .push(DnType::CommonName, "skiff-ca");
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                validity(&mut params, CA_DAYS);
                let cert = params
                    .self_signed(&key)
                    .map_err(cert_error("CA certificate"))?;
                write(&path("ca.key"), &key.serialize_pem(), true)?;
                write(&path("ca.crt"), &cert.pem(), false)?;
                // A new CA invalidates every leaf made by an old one.
                for leaf in ["apiserver.crt", "admin.crt"] {
                    let _ = std::fs::remove_file(path(leaf));
                }
                (cert.pem(), key.serialize_pem())
            }
        };
        let mut pki = Pki {
            ca_cert,
            ca_key,
            server_cert: String::new(),
            server_key: String::new(),
            admin_cert: String::new(),
            admin_key: String::new(),
        };
        let wanted_sans = sans.join("\n");
        let server = (
            read(&path("apiserver.crt"))?,
            read(&path("apiserver.key"))?,
            read(&path("apiserver.sans"))?,
        );
        match server {
            (Some(c), Some(k), Some(s)) if s == wanted_sans => {
                pki.server_cert = c;
                pki.server_key = k;
            }
            _ => {
                let (cert, key) = pki.issue(Leaf::Server {
                    common_name: "skiff-apiserver",
                    sans,
                })?;
                write(&path("apiserver.key"), &key, true)?;
                write(&path("apiserver.crt"), &cert, false)?;
                write(&path("apiserver.sans"), &wanted_sans, false)?;
                pki.server_cert = cert;
                pki.server_key = key;
            }
        }
        match (read(&path("admin.crt"))?, read(&path("admin.key"))?) {
            (Some(c), Some(k)) => {
                pki.admin_cert = c;
                pki.admin_key = k;
            }
            _ => {
                let (cert, key) = pki.issue(Leaf::Client {
                    common_name: "skiff-admin",
                    organizations: &["system:masters"],
                })?;
                write(&path("admin.key"), &key, true)?;
                write(&path("admin.crt"), &cert, false)?;
                pki.admin_cert = cert;
                pki.admin_key = key;
            }
        }
        Ok(pki)
    }

    /// The CA's private key (PEM), for the certificate signer.
    pub fn ca_key_pem(&self) -> &str {
        &self.ca_key
    }

    /// Issues a client certificate signed by the cluster CA (for agents and users).
    pub fn issue_client(
        &self,
        common_name: &str,
        organizations: &[&str],
    ) -> Result<(String, String), PkiError> {
        self.issue(Leaf::Client {
            common_name,
            organizations,
        })
    }

    /// Issues a serving certificate signed by the cluster CA (for node agents).
    pub fn issue_server(
        &self,
        common_name: &str,
        sans: &[String],
    ) -> Result<(String, String), PkiError> {
        self.issue(Leaf::Server { common_name, sans })
    }

    fn issue(&self, leaf: Leaf<'_>) -> Result<(String, String), PkiError> {
        let ca_key = KeyPair::from_pem(&self.ca_key).map_err(cert_error("CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert, ca_key)
            .map_err(cert_error("CA certificate"))?;
        let key = KeyPair::generate().map_err(cert_error("leaf key"))?;
        let mut params = match leaf {
            Leaf::Server { common_name, sans } => {
                let mut p = CertificateParams::new(sans.to_vec()).map_err(cert_error("SANs"))?;
                p.distinguished_name.push(DnType::CommonName, common_name);
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                p
            }
            Leaf::Client {
                common_name,
                organizations,
            } => {
                let mut p = CertificateParams::default();
                p.distinguished_name.push(DnType::CommonName, common_name);
                for org in organizations {
                    p.distinguished_name.push(DnType::OrganizationName, *org);
                }
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                p
            }
        };
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_DAYS);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(cert_error("leaf certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A kubeconfig for the admin, talking to `server` (`https://127.0.0.1:6443`) with TLS
    /// verification against the cluster CA.
    pub fn admin_kubeconfig(&self, server: &str) -> String {
        kubeconfig(
            server,
            &self.ca_cert,
            "skiff-admin",
            &Credential::Certificate {
                cert_pem: &self.admin_cert,
                key_pem: &self.admin_key,
            },
        )
    }
}

enum Leaf<'a> {
    Server {
        common_name: &'a str,
        sans: &'a [String],
    },
    Client {
        common_name: &'a str,
        organizations: &'a [&'a str],
    },
}

/// Writes a file readable only by its owner (a kubeconfig holds a private key).
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    write(path, contents, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let sans = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let first = Pki::ensure(dir.path(), &sans).unwrap();
        let again = Pki::ensure(dir.path(), &sans).unwrap();
        assert_eq!(first.ca_cert, again.ca_cert);
        assert_eq!(first.server_cert, again.server_cert);
        assert_eq!(first.admin_cert, again.admin_cert);
        let more = vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "10.0.0.9".to_owned(),
        ];
        let changed = Pki::ensure(dir.path(), &more).unwrap();
        assert_eq!(first.ca_cert, changed.ca_cert);
        assert_ne!(first.server_cert, changed.server_cert);
        let kc = first.admin_kubeconfig("https://127.0.0.1:6443");
        assert!(kc.contains("server: https://127.0.0.1:6443"));
        assert!(kc.contains("certificate-authority-data: "));
    }
}
