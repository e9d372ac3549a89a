//! CertificateSigningRequests (`certificates.k8s.io/v1`): reading the PKCS#10 request they
//! carry, the checks kube-apiserver makes on them, and the split of their conditions between
//! `/approval` (the Approved or Denied decision) and `/status` (Failed, the certificate).

use std::net::IpAddr;

use base64::Engine as _;
use serde_json::Value;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;

use crate::status::FieldError;

/// The signer of node agents' client certificates (`system:node:<name>`).
pub const KUBE_APISERVER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of node agents' serving certificates.
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// The signer of other client certificates for the API server.
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";

/// The key usages a request may ask for (Kubernetes' `KeyUsage` values).
pub const USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// What a PKCS#10 certificate request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The subject's common name.
    pub common_name: String,
    /// The subject's organizations (the groups of a client certificate).
    pub organizations: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// Email subject alternative names.
    pub emails: Vec<String>,
    /// URI subject alternative names.
    pub uris: Vec<String>,
    /// The request, DER-encoded.
    pub der: Vec<u8>,
}

/// Reads the PEM `CERTIFICATE REQUEST` block of `spec.request` (already base64-decoded)
/// and checks its signature.
pub fn parse_request(pem: &[u8]) -> Result<Request, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_owned())?;
    if block.label != "CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".to_owned());
    }
    let (_, csr) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|e| format!("the certificate request does not parse: {e}"))?;
    csr.verify_signature()
        .map_err(|_| "the certificate request's signature does not verify".to_owned())?;
    let subject = &csr.certification_request_info.subject;
    let mut request = Request {
        common_name: subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned(),
        organizations: subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_owned))
            .collect(),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        emails: Vec::new(),
        uris: Vec::new(),
        der: block.contents.clone(),
    };
    for ext in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = ext else {
            continue;
        };
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(d) => request.dns_names.push((*d).to_owned()),
                GeneralName::RFC822Name(e) => request.emails.push((*e).to_owned()),
                GeneralName::URI(u) => request.uris.push((*u).to_owned()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => request
                        .ip_addresses
                        .push(IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("4 bytes"))),
                    16 => request.ip_addresses.push(IpAddr::from(
                        <[u8; 16]>::try_from(*bytes).expect("16 bytes"),
                    )),
                    _ => return Err("an IP address SAN is neither IPv4 nor IPv6".to_owned()),
                },
                _ => {}
            }
        }
    }
    Ok(request)
}

/// `spec.request` of a CSR object, base64-decoded.
pub fn request_pem(obj: &Value) -> Option<Vec<u8>> {
    let text = obj.pointer("/spec/request")?.as_str()?;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// The condition of `type_` with status True, if the CSR has one.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == "True")
}

/// Whether a condition is the approval decision (Approved or Denied), which only
/// `/approval` writes.
pub fn is_decision(condition: &Value) -> bool {
    matches!(condition["type"].as_str(), Some("Approved" | "Denied"))
}

/// Replaces the conditions of `result` that `from_old` selects with those of `old`: the
/// part of the conditions a subresource may not write stays as it was.
pub fn keep_conditions(result: &mut Value, old: &Value, from_old: impl Fn(&Value) -> bool) {
    let list = |v: &Value| -> Vec<Value> {
        v.pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut conditions: Vec<Value> = list(result).into_iter().filter(|c| !from_old(c)).collect();
    conditions.extend(list(old).into_iter().filter(|c| from_old(c)));
    if conditions.is_empty() {
        if let Some(status) = result.get_mut("status").and_then(Value::as_object_mut) {
            status.remove("conditions");
        }
    } else {
        result["status"]["conditions"] = Value::Array(conditions);
    }
}

/// Whether a signer name is a fully qualified domain and a path (`example.com/signer`).
fn is_signer_name(name: &str) -> bool {
    let Some((domain, path)) = name.split_once('/') else {
        return false;
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    domain.contains('.')
        && domain.len() <= 253
        && domain.split('.').all(label)
        && !path.is_empty()
        && path.len() <= 571
        && !path.contains("..")
}

/// The checks kube-apiserver makes on a CertificateSigningRequest, on create (`old`
/// None) and on every update.
pub fn validate(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match request_pem(obj) {
        None => errs.push(FieldError::required("spec.request", "")),
        Some(pem) => {
            if let Err(why) = parse_request(&pem) {
                errs.push(FieldError::invalid("spec.request", "<request>", why));
            }
        }
    }
    match spec["signerName"].as_str() {
        None | Some("") => errs.push(FieldError::required("spec.signerName", "")),
        Some(name) if !is_signer_name(name) => errs.push(FieldError::invalid(
            "spec.signerName",
            name,
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        )),
        Some(_) => {}
    }
    let usages = spec["usages"].as_array().cloned().unwrap_or_default();
    if usages.is_empty() {
        errs.push(FieldError::required(
            "spec.usages",
            "usages must be provided",
        ));
    }
    let mut seen = Vec::new();
    for (i, usage) in usages.iter().enumerate() {
        let field = format!("spec.usages[{i}]");
        match usage.as_str() {
            Some(u) if USAGES.contains(&u) => {
                if seen.contains(&u) {
                    errs.push(FieldError::duplicate(field, u));
                }
                seen.push(u);
            }
            _ => errs.push(FieldError::not_supported(field, usage.clone(), USAGES)),
        }
    }
    if let Some(seconds) = spec.get("expirationSeconds").and_then(Value::as_i64)
        && seconds < 600
    {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            seconds,
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    conditions(obj, errs);
    certificate(obj, errs);
    if let Some(old) = old {
        if obj.get("spec") != old.get("spec") {
            errs.push(FieldError::invalid("spec", "<spec>", "field is immutable"));
        }
        for type_ in ["Approved", "Denied", "Failed"] {
            if condition(old, type_).is_some() && condition(obj, type_).is_none() {
                errs.push(FieldError::forbidden(
                    "status.conditions",
                    format!("updates may not remove a condition of type {type_:?}"),
                ));
            }
        }
        let issued = |o: &Value| {
            o.pointer("/status/certificate")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
        };
        if let Some(before) = issued(old)
            && issued(obj).as_ref() != Some(&before)
        {
            errs.push(FieldError::forbidden(
                "status.certificate",
                "updates may not modify existing certificate content",
            ));
        }
    }
}

fn conditions(obj: &Value, errs: &mut Vec<FieldError>) {
    let list = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut seen = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let field = format!("status.conditions[{i}]");
        let type_ = c["type"].as_str().unwrap_or_default();
        if type_.is_empty() {
            errs.push(FieldError::required(format!("{field}.type"), ""));
            continue;
        }
        if matches!(type_, "Approved" | "Denied" | "Failed") {
            if seen.contains(&type_) {
                errs.push(FieldError::duplicate(format!("{field}.type"), type_));
            }
            seen.push(type_);
            if c["status"] != "True" {
                errs.push(FieldError::not_supported(
                    format!("{field}.status"),
                    c["status"].clone(),
                    &["True"],
                ));
            }
        }
    }
    if seen.contains(&"Approved") && seen.contains(&"Denied") {
        errs.push(FieldError::invalid(
            "status.conditions",
            "<conditions>",
            "Approved and Denied conditions are mutually exclusive",
        ));
    }
}

fn certificate(obj: &Value, errs: &mut Vec<FieldError>) {
    let Some(text) = obj
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
    else {
        return;
    };
    let field = "status.certificate";
    if condition(obj, "Approved").is_none()
        || condition(obj, "Denied").is_some()
        || condition(obj, "Failed").is_some()
    {
        errs.push(FieldError::invalid(
            field,
            "<certificate data>",
            "a certificate may only be issued for an Approved request that is neither Denied nor Failed",
        ));
        return;
    }
    let Ok(pem) = base64::engine::general_purpose::STANDARD.decode(text) else {
        errs.push(FieldError::invalid(
            field,
            "<certificate data>",
            "must be base64-encoded PEM",
        ));
        return;
    };
    let mut blocks = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(&pem) {
        match block {
            Ok(b) if b.label == "CERTIFICATE" && b.parse_x509().is_ok() => blocks += 1,
            Ok(b) if b.label == "CERTIFICATE" => {
                errs.push(FieldError::invalid(
                    field,
                    "<certificate data>",
                    "a CERTIFICATE block does not parse",
                ));
                return;
            }
            Ok(b) => {
                errs.push(FieldError::invalid(
                    field,
                    "<certificate data>",
                    format!(
                        "only PEM CERTIFICATE blocks are allowed, found {:?}",
                        b.label
                    ),
                ));
                return;
            }
            Err(_) => break,
        }
    }
    if blocks == 0 {
        errs.push(FieldError::invalid(
            field,
            "<certificate data>",
            "must contain at least one CERTIFICATE PEM block",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A request for CN=system:node:n1, O=system:nodes with a DNS and an IP SAN, made with
    /// `openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj
    /// "/O=system:nodes/CN=system:node:n1" -addext "subjectAltName=DNS:n1,IP:10.0.0.7"`.
    const REQUEST: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIIBEjCBuAIBADAwMRUwEwYDVQQKDAxzeXN0ZW06bm9kZXMxFzAVBgNVBAMMDnN5
c3RlbTpub2RlOm4xMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEBQ8B1KgvWIAG
qber6um4Y90Slzp6J2/IYd5pEnkOW33hedef35Rno8+jDdhG4UQKm4V3gu4Qy+Uw
VerN0hhnCaAmMCQGCSqGSIb3DQEJDjEXMBUwEwYDVR0RBAwwCoICbjGHBAoAAAcw
CgYIKoZIzj0EAwIDSQAwRgIhAOPxfOrDXJv7prfBD2Q0PfiAgyE9HGQ9bRTRx35Y
01xaAiEA5NhuGvHwp7MCQ/ZkJlKP0Y95PvJrfQRls7u7FYrmveM=
-----END CERTIFICATE REQUEST-----
";

    fn csr(extra_spec: Value, status: Value) -> Value {
        let mut obj = json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": "node-csr-1"},
            "spec": {
                "request": base64::engine::general_purpose::STANDARD.encode(REQUEST),
                "signerName": KUBELET_SERVING,
                "usages": ["digital signature", "server auth"],
            },
            "status": status,
        });
        for (k, v) in extra_spec.as_object().unwrap() {
            obj["spec"][k] = v.clone();
        }
        obj
    }

    fn fields(obj: &Value, old: Option<&Value>) -> Vec<String> {
        let mut errs = Vec::new();
        validate(obj, old, &mut errs);
        errs.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_request_names_its_subject_and_alternative_names() {
        let r = parse_request(REQUEST.as_bytes()).unwrap();
        assert_eq!(r.common_name, "system:node:n1");
        assert_eq!(r.organizations, ["system:nodes"]);
        assert_eq!(r.dns_names, ["n1"]);
        assert_eq!(r.ip_addresses, [IpAddr::from([10, 0, 0, 7])]);
        let cert = REQUEST.replace("CERTIFICATE REQUEST", "CERTIFICATE");
        assert!(parse_request(cert.as_bytes()).is_err());
    }

    #[test]
    fn requests_are_checked_as_kube_apiserver_checks_them() {
        assert!(fields(&csr(json!({}), json!({})), None).is_empty());
        let bad = csr(
            json!({"signerName": "nodomain", "usages": ["server auth", "flying", "server auth"], "expirationSeconds": 60, "request": "bm90IHBlbQ=="}),
            json!({}),
        );
        assert_eq!(
            fields(&bad, None),
            [
                "spec.request",
                "spec.signerName",
                "spec.usages[1]",
                "spec.usages[2]",
                "spec.expirationSeconds"
            ]
        );
    }

    #[test]
    fn the_decision_and_the_certificate_are_final() {
        let pending = csr(json!({}), json!({}));
        let both = csr(
            json!({}),
            json!({"conditions": [{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]}),
        );
        assert_eq!(fields(&both, Some(&pending)), ["status.conditions"]);
        let approved = csr(
            json!({}),
            json!({"conditions": [{"type": "Approved", "status": "True"}]}),
        );
        assert!(fields(&approved, Some(&pending)).is_empty());
        assert_eq!(
            fields(&pending, Some(&approved)),
            ["status.conditions"],
            "an approval can't be taken back"
        );
        // A certificate needs an approval; the request itself is no certificate.
        let mut unapproved = pending.clone();
        unapproved["status"]["certificate"] =
            json!(base64::engine::general_purpose::STANDARD.encode(REQUEST));
        assert_eq!(fields(&unapproved, Some(&pending)), ["status.certificate"]);
        let mut wrong = approved.clone();
        wrong["status"]["certificate"] = unapproved["status"]["certificate"].clone();
        assert_eq!(fields(&wrong, Some(&approved)), ["status.certificate"]);
        let mut changed = approved.clone();
        changed["spec"]["usages"] = json!(["client auth"]);
        assert_eq!(fields(&changed, Some(&approved)), ["spec"]);
    }

    #[test]
    fn each_subresource_keeps_the_others_conditions() {
        let old = json!({"status": {"conditions": [{"type": "Approved", "status": "True"}]}});
        let mut new = json!({"status": {"conditions": [{"type": "Failed", "status": "True"}]}});
        keep_conditions(&mut new, &old, is_decision);
        assert_eq!(
            new["status"]["conditions"],
            json!([{"type": "Failed", "status": "True"}, {"type": "Approved", "status": "True"}])
        );
    }
}
