//! Template history: the hashes that name a workload's pod templates, and the
//! ControllerRevisions in which DaemonSets and StatefulSets keep their past templates for
//! `kubectl rollout history` and `undo` (Kubernetes' controller history).
//!
//! A revision's `data` is what Kubernetes stores, a strategic merge patch that puts the
//! whole template back (`{"spec": {"template": {…, "$patch": "replace"}}}`), so that `kubectl
//! rollout undo` can apply it as it is. Its name is `<owner>-<hash of the data>`; its
//! number is one above the newest. Going back to an old template renumbers its revision as
//! the newest, as a Deployment's rollback does.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tracing::info;

use crate::owners::controller_of;

/// The label on a DaemonSet's or StatefulSet's pods (and revisions) naming their revision.
pub const REVISION_HASH: &str = "controller-revision-hash";
/// Hash collisions tried before giving up (each bumps the collision count).
const MAX_COLLISIONS: i32 = 5;

/// JSON with empty maps, lists and nulls dropped and keys sorted, so two objects that mean
/// the same compare and hash the same.
pub fn canonical(v: Value) -> Value {
    fn clean(v: Value) -> Option<Value> {
        match v {
            Value::Null => None,
            Value::Object(m) => {
                let sorted: BTreeMap<String, Value> = m
                    .into_iter()
                    .filter_map(|(k, v)| clean(v).map(|v| (k, v)))
                    .collect();
                (!sorted.is_empty()).then(|| Value::Object(sorted.into_iter().collect()))
            }
            Value::Array(a) => {
                let items: Vec<Value> = a.into_iter().filter_map(clean).collect();
                (!items.is_empty()).then_some(Value::Array(items))
            }
            other => Some(other),
        }
    }
    clean(v).unwrap_or_default()
}

/// FNV-1a (32 bits) of canonical JSON and the collision count, written in Kubernetes'
/// alphabet for names.
pub fn hash(canonical: &Value, collisions: Option<i32>) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut text = canonical.to_string();
    if let Some(c) = collisions {
        text.push_str(&c.to_string());
    }
    let mut hash: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        hash ^= b as u32;
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.to_string()
        .bytes()
        .map(|b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect()
}

/// A revision's data for a template: the patch that restores it, canonical.
pub fn data_of(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(REVISION_HASH);
    }
    if let Some(map) = t.as_object_mut() {
        map.insert("$patch".into(), json!("replace"));
    }
    canonical(json!({"spec": {"template": t}}))
}

/// The current revision, after [`sync`].
#[derive(Debug, Clone)]
pub struct Current {
    /// Its hash: the `controller-revision-hash` of the pods made from it.
    pub hash: String,
    /// Its number.
    pub revision: i64,
    /// The collision count used (for the workload's `status.collisionCount`).
    pub collisions: Option<i32>,
    /// The revisions kept, current included, oldest first.
    pub revisions: Vec<ControllerRevision>,
}

impl Current {
    /// The revision's name: `<owner>-<hash>`.
    pub fn name(&self, owner: &str) -> String {
        format!("{owner}-{}", self.hash)
    }

    /// The template of the revision named `name`, if it is kept.
    pub fn template(&self, name: &str) -> Option<PodTemplateSpec> {
        let r = self
            .revisions
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))?;
        let mut t = r.data.as_ref()?.0.pointer("/spec/template")?.clone();
        t.as_object_mut()?.remove("$patch");
        serde_json::from_value(t).ok()
    }
}

/// What a workload's history is kept for.
pub(crate) struct Owner<'a> {
    /// The workload's pods' API (its namespace).
    pub api: Api<ControllerRevision>,
    /// The reference its revisions carry.
    pub owner: &'a OwnerReference,
    /// Its template's labels, which its revisions carry too (kubectl finds them by the
    /// workload's selector).
    pub labels: BTreeMap<String, String>,
    /// Its annotations, copied (`kubernetes.io/change-cause` shows in the history).
    pub annotations: BTreeMap<String, String>,
    /// Its `revisionHistoryLimit`.
    pub limit: usize,
    /// Its `status.collisionCount`.
    pub collisions: Option<i32>,
}

impl<'a> Owner<'a> {
    /// The history of the workload `owner` in `namespace`, with its template, annotations,
    /// `revisionHistoryLimit` (10) and `status.collisionCount`.
    pub fn new(
        client: &kube::Client,
        namespace: &str,
        owner: &'a OwnerReference,
        template: &PodTemplateSpec,
        annotations: &BTreeMap<String, String>,
        limit: Option<i32>,
        collisions: Option<i32>,
    ) -> Self {
        Owner {
            api: Api::namespaced(client.clone(), namespace),
            owner,
            labels: template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default(),
            annotations: annotations.clone(),
            limit: limit.unwrap_or(10).max(0) as usize,
            collisions,
        }
    }

    /// Makes sure the current template has the newest revision, and deletes the oldest
    /// revisions beyond the limit that no pod in `in_use` (hashes of live pods) runs.
    pub async fn sync(
        &self,
        data: &Value,
        in_use: &BTreeSet<String>,
    ) -> Result<Current, kube::Error> {
        let mut revisions: Vec<ControllerRevision> = self
            .api
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter(|r| {
                controller_of(&r.metadata.owner_references).is_some_and(|o| o.uid == self.owner.uid)
            })
            .collect();
        revisions.sort_by_key(|r| r.revision);
        let newest = revisions.last().map_or(0, |r| r.revision);
        let same = |r: &ControllerRevision| {
            r.data.as_ref().map(|d| canonical(d.0.clone())).as_ref() == Some(data)
        };
        let mut current = match revisions.iter().rposition(same) {
            Some(i) => {
                let r = &mut revisions[i];
                let mut revision = r.revision;
                if revision < newest {
                    // Back to an old template: its revision becomes the newest.
                    revision = newest + 1;
                    self.api
                        .patch(
                            &r.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(json!({"revision": revision})),
                        )
                        .await?;
                    r.revision = revision;
                }
                Current {
                    hash: r
                        .labels()
                        .get(REVISION_HASH)
                        .cloned()
                        .unwrap_or_else(|| hash(data, self.collisions)),
                    revision,
                    collisions: self.collisions,
                    revisions: Vec::new(),
                }
            }
            None => {
                let (current, made) = self.create(data, newest + 1).await?;
                revisions.extend(made);
                current
            }
        };
        let in_use = |r: &ControllerRevision| {
            r.labels()
                .get(REVISION_HASH)
                .is_some_and(|h| in_use.contains(h) || *h == current.hash)
        };
        let removable: Vec<String> = revisions
            .iter()
            .filter(|r| !in_use(r))
            .map(|r| r.name_any())
            .collect();
        let extra = removable.len().saturating_sub(self.limit);
        let doomed = &removable[..extra];
        for name in doomed {
            info!(revision = %name, "beyond the history limit; deleting it");
            match self.api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        revisions.retain(|r| !doomed.contains(&r.name_any()));
        revisions.sort_by_key(|r| r.revision);
        current.revisions = revisions;
        Ok(current)
    }

    /// A new revision (and the object made, unless an earlier sync made it); a name taken
    /// by other data is a hash collision, and the next collision count is tried.
    async fn create(
        &self,
        data: &Value,
        revision: i64,
    ) -> Result<(Current, Option<ControllerRevision>), kube::Error> {
        let mut collisions = self.collisions;
        loop {
            let hash = hash(data, collisions);
            let mut labels = self.labels.clone();
            labels.insert(REVISION_HASH.into(), hash.clone());
            let mut annotations = self.annotations.clone();
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
            let cr = ControllerRevision {
                metadata: kube::api::ObjectMeta {
                    name: Some(format!("{}-{hash}", self.owner.name)),
                    labels: Some(labels),
                    annotations: Some(annotations),
                    owner_references: Some(vec![self.owner.clone()]),
                    ..Default::default()
                },
                data: Some(RawExtension(data.clone())),
                revision,
            };
            match self.api.create(&PostParams::default(), &cr).await {
                Ok(made) => {
                    let current = Current {
                        hash,
                        revision,
                        collisions,
                        revisions: Vec::new(),
                    };
                    return Ok((current, Some(made)));
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let existing = self.api.get(&cr.name_any()).await?;
                    let ours = controller_of(&existing.metadata.owner_references)
                        .is_some_and(|o| o.uid == self.owner.uid);
                    if ours
                        && existing
                            .data
                            .as_ref()
                            .map(|d| canonical(d.0.clone()))
                            .as_ref()
                            == Some(data)
                    {
                        let current = Current {
                            hash,
                            revision: existing.revision,
                            collisions,
                            revisions: Vec::new(),
                        };
                        return Ok((current, Some(existing)));
                    }
                    let next = collisions.unwrap_or(0) + 1;
                    if next > MAX_COLLISIONS {
                        return Err(kube::Error::Api(s));
                    }
                    collisions = Some(next);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_data_restores_the_whole_template_and_ignores_the_hash_label() {
        let template: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "a", REVISION_HASH: "x"}},
            "spec": {"containers": [{"name": "c", "image": "i", "env": []}]},
        }))
        .unwrap();
        let data = data_of(&template);
        assert_eq!(
            data,
            json!({"spec": {"template": {
                "$patch": "replace",
                "metadata": {"labels": {"app": "a"}},
                "spec": {"containers": [{"image": "i", "name": "c"}]},
            }}})
        );
        assert_eq!(hash(&data, None), hash(&data, None));
        assert_ne!(hash(&data, None), hash(&data, Some(1)));
    }
}
