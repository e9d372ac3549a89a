//! What a node needs to join the cluster, published through the API as kubeadm's
//! bootstrap-token phase publishes it:
//! - a bootstrap token, kept as a `bootstrap.kubernetes.io/token` Secret in `kube-system`
//!   (deleting the Secret revokes the token; the API server reads it on every use);
//! - the `cluster-info` ConfigMap in `kube-public`, readable without credentials: a
//!   kubeconfig with the server's URL and the cluster CA, which a joining node checks
//!   against the CA hash of its join token (see `skiff_core::join`).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tracing::info;

/// The field manager of what this module writes.
const MANAGER: &str = "skiff-bootstrap";
/// The group, under `system:bootstrappers`, of users of the server's own join token.
const EXTRA_GROUP: &str = "system:bootstrappers:skiff:default-node-token";

/// A new random bootstrap token: an ID of 6 and a secret of 16 of `[a-z0-9]`.
pub fn new_token() -> (String, String) {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let pick = |n: usize| -> String {
        (0..n)
            .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
            .collect()
    };
    (pick(6), pick(16))
}

/// The Secret of a bootstrap token.
fn token_secret(id: &str, secret: &str) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        ("token-id", id),
        ("token-secret", secret),
        ("usage-bootstrap-authentication", "true"),
        ("usage-bootstrap-signing", "true"),
        ("auth-extra-groups", EXTRA_GROUP),
        (
            "description",
            "The join token of skiff server. Delete this Secret to revoke it; the server makes a new one when it next starts.",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(format!("bootstrap-token-{id}")),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some("bootstrap.kubernetes.io/token".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// A bootstrap token the cluster accepts: `existing` (the one handed out before) while its
/// Secret still holds it, else a new one, stored as a Secret. Returns (id, secret).
pub async fn ensure_token(
    client: &Client,
    existing: Option<(String, String)>,
) -> Result<(String, String), kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    if let Some((id, secret)) = existing {
        let stored = secrets.get_opt(&format!("bootstrap-token-{id}")).await?;
        let holds = stored
            .and_then(|s| s.data)
            .and_then(|d| d.get("token-secret").cloned())
            .is_some_and(|s| s.0 == secret.as_bytes());
        if holds {
            return Ok((id, secret));
        }
        info!(token.id = %id, "the join token was revoked; making a new one");
    }
    let (id, secret) = new_token();
    secrets
        .create(&PostParams::default(), &token_secret(&id, &secret))
        .await?;
    Ok((id, secret))
}

/// Publishes (or updates) the `cluster-info` ConfigMap in `kube-public`: the server's URL
/// and the cluster CA, in a kubeconfig without users.
pub async fn publish_cluster_info(
    client: &Client,
    server_url: &str,
    ca_pem: &str,
) -> Result<(), kube::Error> {
    use base64::Engine as _;
    let kubeconfig = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: \"\"\n  cluster:\n    certificate-authority-data: {ca}\n    server: {server_url}\n\
         contexts: []\n\
         current-context: \"\"\n\
         preferences: {{}}\n\
         users: []\n",
        ca = base64::engine::general_purpose::STANDARD.encode(ca_pem),
    );
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some("cluster-info".into()),
            namespace: Some("kube-public".into()),
            ..Default::default()
        },
        data: Some([("kubeconfig".to_owned(), kubeconfig)].into()),
        ..Default::default()
    };
    let mut value = serde_json::to_value(&config_map).unwrap_or_default();
    value["apiVersion"] = "v1".into();
    value["kind"] = "ConfigMap".into();
    Api::<ConfigMap>::namespaced(client.clone(), "kube-public")
        .patch(
            "cluster-info",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(value),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tokens_have_kubeadms_shape() {
        let (id, secret) = new_token();
        let token = format!("{id}.{secret}");
        assert_eq!(
            skiff_core::join::bootstrap_token_parts(&token),
            Some((id.as_str(), secret.as_str()))
        );
        assert_ne!(new_token(), new_token());
        let s = token_secret(&id, &secret);
        assert_eq!(s.type_.as_deref(), Some("bootstrap.kubernetes.io/token"));
        assert_eq!(s.metadata.name.unwrap(), format!("bootstrap-token-{id}"));
    }
}
