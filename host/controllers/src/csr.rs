//! CertificateSigningRequests: approval and signing (kube-controller-manager's
//! csrapproving and csrsigning controllers in one reconciler).
//!
//! **Approval.** A request is approved automatically when it is what a node agent asks for
//! and its requester may ask for it:
//! - a client certificate (`kubernetes.io/kube-apiserver-client-kubelet`) for
//!   `CN=system:node:<name>, O=system:nodes`, no alternative names, usages digital
//!   signature and client auth (key encipherment allowed), requested with a bootstrap token
//!   (a new node) or by that node itself (a renewal), as kube's approver allows them;
//! - a serving certificate (`kubernetes.io/kubelet-serving`) for the same subject, asked
//!   by that node itself, whose IP alternative names are all among its Node's addresses and
//!   whose DNS names are its name or Hostname addresses, usages digital signature and
//!   server auth (key encipherment allowed). Kubernetes leaves these to an administrator;
//!   skiff approves the ones that name only what the node has published about itself, so
//!   `kubectl logs` works on a joined node without a manual step.
//!
//! Anything else waits for `kubectl certificate approve` or `deny`.
//!
//! **Signing.** Approved requests for the three `kubernetes.io` signers above (and
//! `kubernetes.io/kube-apiserver-client`) get a certificate from the cluster CA, valid from
//! five minutes ago (for clocks behind ours) for `spec.expirationSeconds` or at most
//! [`Signer::max_duration`], with the request's subject and alternative names and the key
//! usages of `spec.usages`. A request a signer can't honour gets a Failed condition.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use rcgen::{ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};
use skiff_core::csr::{
    KUBE_APISERVER_CLIENT, KUBE_APISERVER_CLIENT_KUBELET, KUBELET_SERVING, Request,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

/// The field manager of the controller's writes.
const MANAGER: &str = "skiff-csr-controller";

/// The cluster CA that signs approved requests.
#[derive(Clone)]
pub struct Signer {
    ca_cert_pem: String,
    ca_key_pem: String,
    /// The longest validity a certificate gets (kube's `--cluster-signing-duration`,
    /// one year by default).
    pub max_duration: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("max_duration", &self.max_duration)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer with the CA's certificate and key (PEM), issuing for up to a year.
    pub fn new(ca_cert_pem: String, ca_key_pem: String) -> Self {
        Signer {
            ca_cert_pem,
            ca_key_pem,
            max_duration: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// Why a reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing through the API failed.
    #[error("writing certificatesigningrequest {name}")]
    Api {
        /// The request.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The CA could not sign (its key or certificate is unusable).
    #[error("signing certificatesigningrequest {name} with the cluster CA")]
    Sign {
        /// The request.
        name: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
}

struct Ctx {
    client: Client,
    signer: Signer,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, signer: Signer, shutdown: CancellationToken) {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client, signer });
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_csr: Arc<CertificateSigningRequest>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    warn!(
        error = err as &dyn std::error::Error,
        "reconciling a certificate signing request"
    );
    Action::requeue(Duration::from_secs(5))
}

/// The state of a request, from its conditions and certificate.
fn has_condition(csr: &Value, type_: &str) -> bool {
    skiff_core::csr::condition(csr, type_).is_some()
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let span = info_span!("reconcile", csr.name = %csr.name_any());
    reconcile_one(csr, ctx).instrument(span).await
}

async fn reconcile_one(
    csr: Arc<CertificateSigningRequest>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    let name = csr.name_any();
    let obj = serde_json::to_value(csr.as_ref()).unwrap_or_default();
    let issued = obj
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty());
    if issued || has_condition(&obj, "Denied") || has_condition(&obj, "Failed") {
        return Ok(Action::await_change());
    }
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let api_error = |source| Error::Api {
        name: name.clone(),
        source,
    };
    let request = skiff_core::csr::request_pem(&obj)
        .ok_or_else(|| "spec.request is not base64".to_owned())
        .and_then(|pem| skiff_core::csr::parse_request(&pem));
    if !has_condition(&obj, "Approved") {
        let Ok(request) = &request else {
            return Ok(Action::await_change());
        };
        if let Some(message) = approval(&obj, request, &ctx.client).await {
            info!(%message, "approving");
            let patch = with_condition(&obj, "Approved", "AutoApproved", &message);
            api.patch_approval(&name, &PatchParams::apply(MANAGER), &Patch::Merge(patch))
                .await
                .map_err(api_error)?;
        }
        // The approval's own update brings the request back for signing.
        return Ok(Action::await_change());
    }
    let signer_name = obj
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if ![
        KUBE_APISERVER_CLIENT,
        KUBE_APISERVER_CLIENT_KUBELET,
        KUBELET_SERVING,
    ]
    .contains(&signer_name)
    {
        // Another signer's request.
        return Ok(Action::await_change());
    }
    let usages = usages(&obj);
    let checked = request.and_then(|r| {
        signer_rules(signer_name, &r, &usages)?;
        Ok(r)
    });
    let patch = match checked {
        Ok(request) => {
            let pem = sign(&ctx.signer, &request, &usages, expiration(&obj)).map_err(|source| {
                Error::Sign {
                    name: name.clone(),
                    source,
                }
            })?;
            info!(signer = signer_name, subject = %request.common_name, "issued");
            let mut patch = json!({"status": {
                "certificate": base64::engine::general_purpose::STANDARD.encode(pem),
            }});
            patch["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"].clone();
            patch
        }
        Err(why) => {
            warn!(signer = signer_name, %why, "refusing to sign");
            with_condition(&obj, "Failed", "SignerValidationFailure", &why)
        }
    };
    api.patch_status(&name, &PatchParams::apply(MANAGER), &Patch::Merge(patch))
        .await
        .map_err(api_error)?;
    Ok(Action::await_change())
}

/// A merge patch adding a True condition (conditions are a whole list to a merge patch);
/// the resourceVersion makes it fail rather than overwrite a concurrent change.
fn with_condition(obj: &Value, type_: &str, reason: &str, message: &str) -> Value {
    let now = skiff_core::time::format_time(jiff::Timestamp::now());
    let mut conditions = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    conditions.push(json!({
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
    }));
    json!({
        "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
        "status": {"conditions": conditions},
    })
}

fn usages(obj: &Value) -> Vec<String> {
    obj.pointer("/spec/usages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect()
}

fn expiration(obj: &Value) -> Option<Duration> {
    obj.pointer("/spec/expirationSeconds")
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
}

/// The node a subject names (`system:node:<name>` in `system:nodes`), if it is a node's.
fn node_subject(request: &Request) -> Option<&str> {
    let node = request.common_name.strip_prefix("system:node:")?;
    (!node.is_empty() && request.organizations == ["system:nodes"]).then_some(node)
}

/// Whether `usages` has every one of `required` and nothing outside `allowed`.
fn usages_fit(usages: &[String], required: &[&str], allowed: &[&str]) -> bool {
    required.iter().all(|r| usages.iter().any(|u| u == r))
        && usages.iter().all(|u| allowed.contains(&u.as_str()))
}

const CLIENT_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];
const SERVING_USAGES: &[&str] = &["digital signature", "key encipherment", "server auth"];

/// What a signer requires of the requests it signs, whoever approved them.
fn signer_rules(signer: &str, request: &Request, usages: &[String]) -> Result<(), String> {
    let no_sans = request.dns_names.is_empty()
        && request.ip_addresses.is_empty()
        && request.emails.is_empty()
        && request.uris.is_empty();
    match signer {
        KUBE_APISERVER_CLIENT_KUBELET => {
            if node_subject(request).is_none() {
                return Err("subject must be CN=system:node:<name>, O=system:nodes".into());
            }
            if !no_sans {
                return Err("a node client certificate may not have alternative names".into());
            }
            if !usages_fit(usages, &["client auth"], CLIENT_USAGES) {
                return Err(format!(
                    "usages must include \"client auth\" and be among {CLIENT_USAGES:?}"
                ));
            }
        }
        KUBELET_SERVING => {
            if node_subject(request).is_none() {
                return Err("subject must be CN=system:node:<name>, O=system:nodes".into());
            }
            if request.dns_names.is_empty() && request.ip_addresses.is_empty() {
                return Err("a serving certificate needs a DNS or IP alternative name".into());
            }
            if !request.emails.is_empty() || !request.uris.is_empty() {
                return Err("email and URI alternative names are not allowed".into());
            }
            if !usages_fit(usages, &["server auth"], SERVING_USAGES) {
                return Err(format!(
                    "usages must include \"server auth\" and be among {SERVING_USAGES:?}"
                ));
            }
        }
        _ => {
            if !usages_fit(usages, &["client auth"], CLIENT_USAGES) {
                return Err(format!(
                    "usages must include \"client auth\" and be among {CLIENT_USAGES:?}"
                ));
            }
        }
    }
    Ok(())
}

/// The approval message, if the request is one skiff approves on its own (see the module
/// documentation).
async fn approval(obj: &Value, request: &Request, client: &Client) -> Option<String> {
    let signer = obj.pointer("/spec/signerName").and_then(Value::as_str)?;
    let username = obj
        .pointer("/spec/username")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let groups: Vec<&str> = obj
        .pointer("/spec/groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    signer_rules(signer, request, &usages(obj)).ok()?;
    let node = node_subject(request)?;
    let by_itself = username == request.common_name && groups.contains(&"system:nodes");
    match signer {
        KUBE_APISERVER_CLIENT_KUBELET => {
            if groups.contains(&skiff_core::join::BOOTSTRAPPERS) {
                Some("Auto approving kubelet client certificate after SubjectAccessReview.".into())
            } else if by_itself {
                Some(
                    "Auto approving self kubelet client certificate after SubjectAccessReview."
                        .into(),
                )
            } else {
                None
            }
        }
        KUBELET_SERVING if by_itself => {
            let published = Api::<Node>::all(client.clone())
                .get_opt(node)
                .await
                .ok()??;
            serving_names_published(node, request, &published)
                .then(|| "Auto approving kubelet serving certificate: it names only the node's own name and addresses.".into())
        }
        _ => None,
    }
}

/// Whether every alternative name of a serving request is the node's name or one of the
/// addresses its Node publishes.
fn serving_names_published(node: &str, request: &Request, published: &Node) -> bool {
    let addresses: Vec<(String, String)> = published
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.type_, a.address))
        .collect();
    let has = |kinds: &[&str], value: &str| {
        addresses
            .iter()
            .any(|(t, a)| kinds.contains(&t.as_str()) && a == value)
    };
    request
        .ip_addresses
        .iter()
        .all(|ip| has(&["InternalIP", "ExternalIP"], &ip.to_string()))
        && request
            .dns_names
            .iter()
            .all(|d| d == node || has(&["Hostname", "InternalDNS", "ExternalDNS"], d))
}

/// A certificate (PEM) for the request, signed by the cluster CA.
fn sign(
    signer: &Signer,
    request: &Request,
    usages: &[String],
    expiration: Option<Duration>,
) -> Result<String, rcgen::Error> {
    let ca_key = KeyPair::from_pem(&signer.ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&signer.ca_cert_pem, ca_key)?;
    let mut csr = rcgen::CertificateSigningRequestParams::from_der(&request.der.as_slice().into())?;
    let duration = expiration
        .unwrap_or(signer.max_duration)
        .min(signer.max_duration);
    let now = time::OffsetDateTime::now_utc();
    let params = &mut csr.params;
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + duration;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(rcgen::SerialNumber::from(
        rand::random::<[u8; 16]>().to_vec(),
    ));
    params.key_usages = usages
        .iter()
        .filter_map(|u| match u.as_str() {
            "signing" | "digital signature" => Some(KeyUsagePurpose::DigitalSignature),
            "content commitment" => Some(KeyUsagePurpose::ContentCommitment),
            "key encipherment" => Some(KeyUsagePurpose::KeyEncipherment),
            "key agreement" => Some(KeyUsagePurpose::KeyAgreement),
            "data encipherment" => Some(KeyUsagePurpose::DataEncipherment),
            "cert sign" => Some(KeyUsagePurpose::KeyCertSign),
            "crl sign" => Some(KeyUsagePurpose::CrlSign),
            "encipher only" => Some(KeyUsagePurpose::EncipherOnly),
            "decipher only" => Some(KeyUsagePurpose::DecipherOnly),
            _ => None,
        })
        .collect();
    params.extended_key_usages = usages
        .iter()
        .filter_map(|u| match u.as_str() {
            "any" => Some(ExtendedKeyUsagePurpose::Any),
            "server auth" => Some(ExtendedKeyUsagePurpose::ServerAuth),
            "client auth" => Some(ExtendedKeyUsagePurpose::ClientAuth),
            "code signing" => Some(ExtendedKeyUsagePurpose::CodeSigning),
            "email protection" => Some(ExtendedKeyUsagePurpose::EmailProtection),
            "timestamping" => Some(ExtendedKeyUsagePurpose::TimeStamping),
            "ocsp signing" => Some(ExtendedKeyUsagePurpose::OcspSigning),
            _ => None,
        })
        .collect();
    Ok(csr.signed_by(&issuer)?.pem())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, SanType};

    fn request(cn: &str, orgs: &[&str], sans: Vec<SanType>) -> Request {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        for o in orgs {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        params.subject_alt_names = sans;
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        skiff_core::csr::parse_request(pem.as_bytes()).unwrap()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn signers_take_only_node_shaped_requests() {
        let client = request("system:node:n1", &["system:nodes"], vec![]);
        let usages = strings(&["digital signature", "client auth"]);
        assert!(signer_rules(KUBE_APISERVER_CLIENT_KUBELET, &client, &usages).is_ok());
        let admin = request("system:node:n1", &["system:masters"], vec![]);
        assert!(signer_rules(KUBE_APISERVER_CLIENT_KUBELET, &admin, &usages).is_err());
        let server_usage = strings(&["digital signature", "server auth", "client auth"]);
        assert!(signer_rules(KUBE_APISERVER_CLIENT_KUBELET, &client, &server_usage).is_err());
        // A serving certificate needs a name to serve.
        let serving_usages = strings(&["digital signature", "server auth"]);
        assert!(signer_rules(KUBELET_SERVING, &client, &serving_usages).is_err());
        let serving = request(
            "system:node:n1",
            &["system:nodes"],
            vec![SanType::IpAddress([10, 0, 0, 7].into())],
        );
        assert!(signer_rules(KUBELET_SERVING, &serving, &serving_usages).is_ok());
    }

    #[test]
    fn serving_names_must_be_the_nodes_own() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.7"},
                {"type": "Hostname", "address": "n1.example"},
            ]},
        }))
        .unwrap();
        let own = request(
            "system:node:n1",
            &["system:nodes"],
            vec![
                SanType::IpAddress([10, 0, 0, 7].into()),
                SanType::DnsName("n1".try_into().unwrap()),
                SanType::DnsName("n1.example".try_into().unwrap()),
            ],
        );
        assert!(serving_names_published("n1", &own, &node));
        let other = request(
            "system:node:n1",
            &["system:nodes"],
            vec![SanType::IpAddress([10, 0, 0, 8].into())],
        );
        assert!(!serving_names_published("n1", &other, &node));
    }

    #[test]
    fn a_signed_certificate_has_the_requested_names_and_usages() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "test-ca");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let signer = Signer::new(ca_cert.pem(), ca_key.serialize_pem());
        let req = request(
            "system:node:n1",
            &["system:nodes"],
            vec![SanType::IpAddress([10, 0, 0, 7].into())],
        );
        let usages = strings(&["digital signature", "server auth"]);
        let pem = sign(&signer, &req, &usages, Some(Duration::from_secs(3600))).unwrap();
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = block.parse_x509().unwrap();
        assert_eq!(cert.issuer().to_string(), "CN=test-ca");
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "system:node:n1"
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + 300, "an hour, from five minutes back");
    }
}
