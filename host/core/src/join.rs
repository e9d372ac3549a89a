//! Join tokens: all a new node needs to join a cluster without trusting the network.
//!
//! A join token is `sha256:<hex>:<id>.<secret>`: the hash of the cluster CA's public key
//! (as kubeadm's `--discovery-token-ca-cert-hash` pins it: SHA-256 of the CA certificate's
//! DER SubjectPublicKeyInfo) and a bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`, kept as a
//! `bootstrap.kubernetes.io/token` Secret in `kube-system`). The node reads the CA from the
//! public `cluster-info` ConfigMap, checks it against the hash, and only then sends the
//! bootstrap token, over TLS verified against that CA, to ask for its certificate.

use sha2::Digest as _;
use x509_parser::prelude::FromDer as _;

/// A join token's parts.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// `sha256:<64 hex digits>` of the CA's SubjectPublicKeyInfo.
    pub ca_hash: String,
    /// The bootstrap token's ID (`bootstrap-token-<id>` names its Secret).
    pub id: String,
    /// The bootstrap token's secret.
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A join token or a CA certificate that can't be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinError {
    /// The token is not `sha256:<hex>:<id>.<secret>`.
    #[error(
        "a join token is sha256:<64 hex digits>:<6 of [a-z0-9]>.<16 of [a-z0-9]> (the server writes it to <data-dir>/join-token)"
    )]
    Malformed,
    /// The CA certificate does not parse.
    #[error("the CA certificate does not parse")]
    Certificate,
}

/// The group every bootstrap token's user is in.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";

fn is_token_part(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The ID and secret of a bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`, kubeadm's format).
pub fn bootstrap_token_parts(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    (is_token_part(id, 6) && is_token_part(secret, 16)).then_some((id, secret))
}

impl JoinToken {
    /// Reads `sha256:<hex>:<id>.<secret>`.
    pub fn parse(text: &str) -> Result<JoinToken, JoinError> {
        let rest = text
            .trim()
            .strip_prefix("sha256:")
            .ok_or(JoinError::Malformed)?;
        let (hex, token) = rest.split_once(':').ok_or(JoinError::Malformed)?;
        let (id, secret) = bootstrap_token_parts(token).ok_or(JoinError::Malformed)?;
        let hex_ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok {
            return Err(JoinError::Malformed);
        }
        Ok(JoinToken {
            ca_hash: format!("sha256:{}", hex.to_ascii_lowercase()),
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The bootstrap token a joining node authenticates with: `<id>.<secret>`.
    pub fn bootstrap_token(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The token as `skiff agent --token` takes it.
    pub fn to_text(&self) -> String {
        format!("{}:{}", self.ca_hash, self.bootstrap_token())
    }
}

/// `sha256:<hex>` of the first certificate's SubjectPublicKeyInfo in `ca_pem`.
pub fn ca_cert_hash(ca_pem: &[u8]) -> Result<String, JoinError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem).map_err(|_| JoinError::Certificate)?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&pem.contents)
        .map_err(|_| JoinError::Certificate)?;
    let digest = sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

/// How a kubeconfig's user proves who it is.
pub enum Credential<'a> {
    /// A bearer token.
    Token(&'a str),
    /// A client certificate and its key.
    Certificate {
        /// The certificate, PEM.
        cert_pem: &'a str,
        /// Its private key, PEM.
        key_pem: &'a str,
    },
}

/// A kubeconfig with one cluster (`server`, verified against `ca_pem`), one user and one
/// context, named `skiff`, in the `default` namespace.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, credential: &Credential<'_>) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user_lines = match credential {
        Credential::Token(token) => format!("    token: {token}\n"),
        Credential::Certificate { cert_pem, key_pem } => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(cert_pem),
            b64(key_pem)
        ),
    };
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n\
         - name: {user}\n  user:\n{user_lines}\
         contexts:\n\
         - name: skiff\n  context:\n    cluster: skiff\n    user: {user}\n    namespace: default\n\
         current-context: skiff\n\
         preferences: {{}}\n",
        ca = b64(ca_pem),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip_and_refuse_other_shapes() {
        let text = format!("sha256:{}:abcdef.0123456789abcdef", "ab".repeat(32));
        let token = JoinToken::parse(&text).unwrap();
        assert_eq!(token.id, "abcdef");
        assert_eq!(token.bootstrap_token(), "abcdef.0123456789abcdef");
        assert_eq!(token.to_text(), text);
        assert!(!format!("{token:?}").contains("0123456789abcdef"));
        for bad in [
            "abcdef.0123456789abcdef",
            &format!("sha256:{}:abcdef.0123456789abcdef", "ab".repeat(31)),
            &format!("sha256:{}:ABCDEF.0123456789abcdef", "ab".repeat(32)),
            &format!("md5:{}:abcdef.0123456789abcdef", "ab".repeat(32)),
        ] {
            assert_eq!(JoinToken::parse(bad), Err(JoinError::Malformed), "{bad}");
        }
    }

    #[test]
    fn the_ca_hash_is_kubeadms() {
        // `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum` of
        // this certificate gives the same digest.
        let ca = "-----BEGIN CERTIFICATE-----
MIIBfTCCASOgAwIBAgIUOpKDVRVrLdH0uLVoQMx1mitONPYwCgYIKoZIzj0EAwIw
EzERMA8GA1UEAwwIc2tpZmYtY2EwIBcNMjYxMjA1MDgwNzAwWhgPMjEyNjExMTEw
ODA3MDBaMBMxETAPBgNVBAMMCHNraWZmLWNhMFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAE9bamrRBfkFKzTM+5IeSulyAC0QAVige0azoU9WGvtLfDYbS4aYcas+6n
yzsqHtrhyI1KjAi+oG5rITom0N1zo6NTMFEwHQYDVR0OBBYEFM7FR3Q0iVwZBQj7
92UHqKc15SMnMB8GA1UdIwQYMBaAFM7FR3Q0iVwZBQj792UHqKc15SMnMA8GA1Ud
EwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgQyivCfvvqVkUtn88zLSBQAcs
zvldZr10CdEKF3gEhx0CIQCvIxwGyTPsvjOg6Bg+d7lChDDNciCGyK18bFjv1hvZ
mQ==
-----END CERTIFICATE-----
";
        assert_eq!(
            ca_cert_hash(ca.as_bytes()).unwrap(),
            "sha256:10c926e8dd2d8b3594b5763a11b55de6445fef0fab300dd875b4b2b4a8f80888"
        );
        assert_eq!(ca_cert_hash(b"junk"), Err(JoinError::Certificate));
    }
}
