//! The server's TLS settings: our serving certificate, HTTP/2 and HTTP/1.1 by ALPN, and
//! client certificates verified against the cluster CA when a client offers one.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::pki::Pki;

/// The TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM block did not parse.
    #[error("cannot parse the {what} PEM")]
    Pem {
        /// Which PEM.
        what: &'static str,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the settings.
    #[error("invalid TLS settings")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("invalid client CA")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn pem_error(what: &'static str) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError {
    move |source| TlsError::Pem { what, source }
}

/// The API server's rustls configuration.
pub fn server_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(pki.server_cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error("serving certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes())
        .map_err(pem_error("serving key"))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.ca_cert.as_bytes()) {
        roots.add(ca.map_err(pem_error("CA certificate"))?)?;
    }
    // Clients may also authenticate with a bearer token, so a certificate is optional.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
