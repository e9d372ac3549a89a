//! Joining a cluster with a URL and a join token, and the agent's certificates: the
//! kubelet's TLS bootstrap (a client certificate through a CertificateSigningRequest made
//! with a bootstrap token) and its serving certificate request.
//!
//! 1. **Discovery.** The agent reads the public `cluster-info` ConfigMap (no credentials,
//!    the server's certificate not yet checkable), takes the CA from it and checks it
//!    against the hash the join token pins. Only then does the token leave the machine,
//!    over TLS verified against that CA.
//! 2. **Client certificate.** With the bootstrap token it asks for a
//!    `kubernetes.io/kube-apiserver-client-kubelet` certificate for
//!    `CN=system:node:<name>, O=system:nodes`, waits for it to be approved and issued, and
//!    keeps the key, the certificate and a kubeconfig in `<dir>`. Later starts reuse them;
//!    when less than a fifth of its validity is left the agent asks for a new one with the
//!    old one.
//! 3. **Serving certificate.** Once its Node is registered it asks, as itself, for a
//!    `kubernetes.io/kubelet-serving` certificate naming its address and name, which the
//!    API server checks when it proxies logs, exec, attach and port-forward.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use skiff_core::join::{Credential, JoinToken, kubeconfig};
use tracing::info;

use crate::server::ServerTls;

/// Why joining or getting a certificate failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// `cluster-info` could not be read from the server.
    #[error("reading the cluster-info ConfigMap from {server}: {reason}")]
    Discovery {
        /// The server's URL.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// The server's CA is not the one the token pins: not the cluster the token is for, or
    /// someone in between.
    #[error(
        "the server's CA has public key hash {found}, the join token pins {pinned}: refusing to join"
    )]
    CaMismatch {
        /// The hash of the CA the server showed.
        found: String,
        /// The hash in the token.
        pinned: String,
    },
    /// No stored credentials, and no join token to get some with.
    #[error("no credentials in {dir} and no join token (--token) to get them with")]
    NoCredentials {
        /// Where credentials are kept.
        dir: PathBuf,
    },
    /// The API refused or could not be reached.
    #[error("asking the API for a certificate")]
    Api(#[source] kube::Error),
    /// A kubeconfig the agent made or stored does not load.
    #[error("loading the kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Watching the request failed.
    #[error("watching certificatesigningrequest {name}")]
    Wait {
        /// The request.
        name: String,
        /// Why.
        #[source]
        source: kube::runtime::wait::Error,
    },
    /// The request was denied or its signer failed it.
    #[error("certificatesigningrequest {name} was {outcome}: {message}")]
    Refused {
        /// The request.
        name: String,
        /// `denied` or `failed`.
        outcome: &'static str,
        /// The condition's message.
        message: String,
    },
    /// A key or request could not be made, or an issued certificate does not parse.
    #[error("making a key or certificate request")]
    Key(#[source] rcgen::Error),
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> JoinError + '_ {
    move |source| JoinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a file only its owner may read (keys, kubeconfigs).
fn write_private(path: &Path, contents: &str) -> Result<(), JoinError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

/// The files of a node's credentials under its directory.
struct Files {
    kubeconfig: PathBuf,
    ca: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
}

impl Files {
    fn new(dir: &Path) -> Files {
        Files {
            kubeconfig: dir.join("kubeconfig.yaml"),
            ca: dir.join("ca.crt"),
            serving_cert: dir.join("serving.crt"),
            serving_key: dir.join("serving.key"),
        }
    }
}

async fn client_from(path: &Path, yaml: &str) -> Result<kube::Client, JoinError> {
    let error = |source| JoinError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let parsed = Kubeconfig::from_yaml(yaml).map_err(error)?;
    let config = kube::Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .map_err(error)?;
    kube::Client::try_from(config).map_err(JoinError::Api)
}

/// The validity left of the first certificate in `pem`, as (left, whole lifetime).
fn validity_left(pem: &[u8]) -> Option<(Duration, Duration)> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = block.parse_x509().ok()?;
    let now = jiff::Timestamp::now().as_second();
    let (from, to) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    let left = u64::try_from(to - now).ok()?;
    let whole = u64::try_from(to - from).ok()?;
    Some((Duration::from_secs(left), Duration::from_secs(whole)))
}

/// Whether a certificate has more than a fifth of its lifetime left (the kubelet renews at
/// 70–90% of it).
fn fresh(pem: &[u8]) -> bool {
    validity_left(pem).is_some_and(|(left, whole)| left > whole / 5)
}

/// The client certificate in a stored kubeconfig.
fn stored_client_cert(yaml: &str) -> Option<Vec<u8>> {
    let config = Kubeconfig::from_yaml(yaml).ok()?;
    let data = config
        .auth_infos
        .first()?
        .auth_info
        .as_ref()?
        .client_certificate_data
        .clone()?;
    base64::engine::general_purpose::STANDARD.decode(data).ok()
}

/// The agent's API client: from the credentials stored in `dir` while they are fresh, else
/// by renewing them with themselves, else by joining `server` with `token`.
pub async fn client(
    server: &str,
    token: Option<&JoinToken>,
    node_name: &str,
    dir: &Path,
) -> Result<kube::Client, JoinError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let files = Files::new(dir);
    let stored = std::fs::read_to_string(&files.kubeconfig).ok();
    let ca_pem = std::fs::read_to_string(&files.ca).ok();
    if let (Some(yaml), Some(ca_pem)) = (&stored, &ca_pem)
        && let Some(cert) = stored_client_cert(yaml)
        && validity_left(&cert).is_some()
    {
        let current = client_from(&files.kubeconfig, yaml).await?;
        if fresh(&cert) {
            return Ok(current);
        }
        info!("the node's client certificate is near its end; asking for a new one");
        return node_client(&current, server, ca_pem, node_name, &files, "self").await;
    }
    let token = token.ok_or_else(|| JoinError::NoCredentials {
        dir: dir.to_owned(),
    })?;
    let ca_pem = discover_ca(server, token).await?;
    std::fs::write(&files.ca, &ca_pem).map_err(io_error(&files.ca))?;
    let bootstrap_yaml = kubeconfig(
        server,
        &ca_pem,
        &format!("system:bootstrap:{}", token.id),
        &Credential::Token(&token.bootstrap_token()),
    );
    let bootstrap = client_from(Path::new("<bootstrap kubeconfig>"), &bootstrap_yaml).await?;
    info!(%server, node = %node_name, "joining the cluster");
    node_client(&bootstrap, server, &ca_pem, node_name, &files, "bootstrap").await
}

/// Asks, through `client`, for a node client certificate and stores it with a kubeconfig.
async fn node_client(
    client: &kube::Client,
    server: &str,
    ca_pem: &str,
    node_name: &str,
    files: &Files,
    how: &str,
) -> Result<kube::Client, JoinError> {
    let key = KeyPair::generate().map_err(JoinError::Key)?;
    let params = node_subject(node_name, Vec::new())?;
    let cert_pem = request_certificate(
        client,
        "node-csr-",
        skiff_core::csr::KUBE_APISERVER_CLIENT_KUBELET,
        &["digital signature", "client auth"],
        &key,
        params,
    )
    .await?;
    let key_pem = key.serialize_pem();
    let yaml = kubeconfig(
        server,
        ca_pem,
        &format!("system:node:{node_name}"),
        &Credential::Certificate {
            cert_pem: &cert_pem,
            key_pem: &key_pem,
        },
    );
    write_private(&files.kubeconfig, &yaml)?;
    info!(node = %node_name, how, "got the node's client certificate");
    client_from(&files.kubeconfig, &yaml).await
}

fn node_subject(node_name: &str, sans: Vec<SanType>) -> Result<CertificateParams, JoinError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("system:node:{node_name}"));
    params.subject_alt_names = sans;
    Ok(params)
}

/// Creates a CertificateSigningRequest and waits until it is issued (or refused).
async fn request_certificate(
    client: &kube::Client,
    prefix: &str,
    signer: &str,
    usages: &[&str],
    key: &KeyPair,
    params: CertificateParams,
) -> Result<String, JoinError> {
    let request = params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(JoinError::Key)?;
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some(prefix.to_owned()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(request.into_bytes()),
            signer_name: signer.to_owned(),
            usages: Some(usages.iter().map(|u| (*u).to_owned()).collect()),
            ..Default::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .map_err(JoinError::Api)?;
    let name = created.metadata.name.clone().unwrap_or_default();
    info!(csr = %name, signer, "waiting for the certificate signing request to be approved and issued");
    loop {
        let done = tokio::time::timeout(
            Duration::from_secs(60),
            kube::runtime::wait::await_condition(
                api.clone(),
                &name,
                |c: Option<&CertificateSigningRequest>| c.is_none_or(|c| outcome(c).is_some()),
            ),
        )
        .await;
        let current = match done {
            Ok(Ok(c)) => c,
            Ok(Err(source)) => return Err(JoinError::Wait { name, source }),
            Err(_) => {
                info!(csr = %name, "still not issued: `kubectl certificate approve {name}` approves it");
                continue;
            }
        };
        let Some(current) = current else {
            return Err(JoinError::Refused {
                name,
                outcome: "deleted",
                message: "it was deleted before a certificate was issued".into(),
            });
        };
        return match outcome(&current).expect("waited for an outcome") {
            Outcome::Issued(pem) => Ok(pem),
            Outcome::Refused(outcome, message) => Err(JoinError::Refused {
                name,
                outcome,
                message,
            }),
        };
    }
}

enum Outcome {
    Issued(String),
    Refused(&'static str, String),
}

fn outcome(csr: &CertificateSigningRequest) -> Option<Outcome> {
    let status = csr.status.as_ref()?;
    for c in status.conditions.iter().flatten() {
        let message = c.message.clone().unwrap_or_default();
        match (c.type_.as_str(), c.status.as_str()) {
            ("Denied", "True") => return Some(Outcome::Refused("denied", message)),
            ("Failed", "True") => return Some(Outcome::Refused("failed", message)),
            _ => {}
        }
    }
    let cert = status.certificate.as_ref()?;
    (!cert.0.is_empty()).then(|| Outcome::Issued(String::from_utf8_lossy(&cert.0).into_owned()))
}

/// The agent's serving certificate: the one stored in `dir` while it is fresh and names
/// `address` and `node_name`, else a new one asked for through `client` (as the node).
pub async fn serving_tls(
    client: &kube::Client,
    node_name: &str,
    address: std::net::IpAddr,
    dir: &Path,
) -> Result<ServerTls, JoinError> {
    let files = Files::new(dir);
    let ca_pem = std::fs::read_to_string(&files.ca).map_err(io_error(&files.ca))?;
    let wanted_ip = address.to_string();
    if let (Ok(cert_pem), Ok(key_pem)) = (
        std::fs::read_to_string(&files.serving_cert),
        std::fs::read_to_string(&files.serving_key),
    ) && fresh(cert_pem.as_bytes())
        && names_of(cert_pem.as_bytes())
            .is_some_and(|(dns, ips)| dns == [node_name.to_owned()] && ips == [wanted_ip.clone()])
    {
        return Ok(ServerTls {
            cert_pem,
            key_pem,
            client_ca_pem: ca_pem,
        });
    }
    let key = KeyPair::generate().map_err(JoinError::Key)?;
    let sans = vec![
        SanType::DnsName(node_name.try_into().map_err(JoinError::Key)?),
        SanType::IpAddress(address),
    ];
    let params = node_subject(node_name, sans)?;
    let cert_pem = request_certificate(
        client,
        "csr-",
        skiff_core::csr::KUBELET_SERVING,
        &["digital signature", "server auth"],
        &key,
        params,
    )
    .await?;
    let key_pem = key.serialize_pem();
    write_private(&files.serving_key, &key_pem)?;
    std::fs::write(&files.serving_cert, &cert_pem).map_err(io_error(&files.serving_cert))?;
    info!(node = %node_name, "got the node's serving certificate");
    Ok(ServerTls {
        cert_pem,
        key_pem,
        client_ca_pem: ca_pem,
    })
}

/// The DNS and IP alternative names of a certificate.
fn names_of(pem: &[u8]) -> Option<(Vec<String>, Vec<String>)> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = block.parse_x509().ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    for name in &san.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::DNSName(d) => dns.push((*d).to_owned()),
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => ips.push(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => ips.push(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => {}
            },
            _ => {}
        }
    }
    Some((dns, ips))
}

/// A TLS client configuration that accepts whatever certificate the server shows: for
/// reading `cluster-info`, whose CA is then checked against the token's pin before
/// anything secret is sent, and for HTTPS probes, which the kubelet doesn't verify either.
pub(crate) fn unverified_tls() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
    ))
}

#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads the cluster CA from `cluster-info` and checks it against the token's pin.
async fn discover_ca(server: &str, token: &JoinToken) -> Result<String, JoinError> {
    let failed = |reason: String| JoinError::Discovery {
        server: server.to_owned(),
        reason,
    };
    let uri: http::Uri = server
        .parse()
        .map_err(|e| failed(format!("not a URL: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| failed("the URL has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| failed(format!("dial tcp {host}:{port}: {e}")))?;
    let tls = unverified_tls().map_err(|e| failed(e.to_string()))?;
    let name =
        rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| failed(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| failed(format!("TLS: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(e.to_string()))?;
    tokio::spawn(conn);
    let req = http::Request::get("/api/v1/namespaces/kube-public/configmaps/cluster-info")
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::ACCEPT, "application/json")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| failed(e.to_string()))?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(failed(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    let config_map: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| failed(e.to_string()))?;
    let yaml = config_map
        .pointer("/data/kubeconfig")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| failed("it has no kubeconfig".into()))?;
    let info = Kubeconfig::from_yaml(yaml).map_err(|e| failed(e.to_string()))?;
    let ca_b64 = info
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .ok_or_else(|| failed("its kubeconfig has no CA".into()))?;
    let ca_pem = base64::engine::general_purpose::STANDARD
        .decode(ca_b64.trim())
        .map_err(|e| failed(format!("its CA is not base64: {e}")))?;
    let found = skiff_core::join::ca_cert_hash(&ca_pem).map_err(|e| failed(e.to_string()))?;
    if found != token.ca_hash {
        return Err(JoinError::CaMismatch {
            found,
            pinned: token.ca_hash.clone(),
        });
    }
    String::from_utf8(ca_pem).map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_renewed_in_their_last_fifth() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(10);
        params.not_after = now + time::Duration::days(90);
        let cert = params.self_signed(&key).unwrap().pem();
        assert!(fresh(cert.as_bytes()));
        params.not_after = now + time::Duration::days(1);
        let cert = params.self_signed(&key).unwrap().pem();
        assert!(!fresh(cert.as_bytes()));
        params.not_after = now - time::Duration::days(1);
        let cert = params.self_signed(&key).unwrap().pem();
        assert!(validity_left(cert.as_bytes()).is_none());
    }

    #[test]
    fn a_serving_certificate_names_the_node_and_its_address() {
        let key = KeyPair::generate().unwrap();
        let params = node_subject(
            "n1",
            vec![
                SanType::DnsName("n1".try_into().unwrap()),
                SanType::IpAddress([10, 0, 0, 7].into()),
            ],
        )
        .unwrap();
        let cert = params.self_signed(&key).unwrap().pem();
        assert_eq!(
            names_of(cert.as_bytes()),
            Some((vec!["n1".to_owned()], vec!["10.0.0.7".to_owned()]))
        );
    }

    #[test]
    fn kubeconfigs_load_with_either_credential() {
        let yaml = kubeconfig(
            "https://127.0.0.1:6443",
            "ca",
            "system:bootstrap:abcdef",
            &Credential::Token("abcdef.0123456789abcdef"),
        );
        let parsed = Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(parsed.auth_infos[0].name, "system:bootstrap:abcdef");
        let yaml = kubeconfig(
            "https://127.0.0.1:6443",
            "ca",
            "system:node:n1",
            &Credential::Certificate {
                cert_pem: "cert",
                key_pem: "key",
            },
        );
        assert_eq!(stored_client_cert(&yaml), Some(b"cert".to_vec()));
    }
}
