//! What every controller that owns pods does with them (Kubernetes' PodControl and
//! PodControllerRefManager): claiming the pods its selector matches, creating pods from
//! its template in slow-start batches, and deleting them, with an event for each.

use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt as _};
use serde_json::json;
use skiff_core::labels::Selector;
use skiff_events::{Kind, Recorder};

use crate::owners::{self, controller_of};

/// Why a workload could not be brought to what it asks for this time (it is retried).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Listing, creating, deleting or patching through the API failed.
    #[error("{what} for {kind} {namespace}/{name}")]
    Api {
        /// The workload's kind, in lower case.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The selector can't be used (validation keeps these out; an old object may have one).
    #[error("{kind} {namespace}/{name} has an invalid selector: {reason}")]
    Selector {
        /// The workload's kind, in lower case.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// One workload's hands on its pods.
pub(crate) struct PodControl<'a> {
    /// Pods of the workload's namespace.
    pub api: Api<Pod>,
    recorder: &'a Recorder,
    /// The workload, for its events.
    pub reference: ObjectReference,
    /// The owner reference its pods carry.
    pub owner: OwnerReference,
    kind: &'static str,
}

impl<'a> PodControl<'a> {
    /// Hands on the pods of `workload` (of API version `api_version`).
    pub fn new<K>(
        client: kube::Client,
        recorder: &'a Recorder,
        workload: &K,
        api_version: &str,
    ) -> Self
    where
        K: Resource<DynamicType = ()>,
    {
        let namespace = workload.meta().namespace.clone().unwrap_or_default();
        PodControl {
            api: Api::namespaced(client, &namespace),
            recorder,
            reference: workload.object_ref(&()),
            owner: OwnerReference {
                api_version: api_version.into(),
                kind: K::kind(&()).into_owned(),
                name: workload.meta().name.clone().unwrap_or_default(),
                uid: workload.meta().uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
            kind: match K::kind(&()).as_ref() {
                "ReplicaSet" => "replicaset",
                "Job" => "job",
                "DaemonSet" => "daemonset",
                "StatefulSet" => "statefulset",
                _ => "workload",
            },
        }
    }

    /// An error about this workload.
    pub fn error(&self, what: &'static str) -> impl FnOnce(kube::Error) -> Error + use<> {
        let (kind, namespace, name) = (
            self.kind,
            self.reference.namespace.clone().unwrap_or_default(),
            self.owner.name.clone(),
        );
        move |source| Error::Api {
            kind,
            namespace,
            name,
            what,
            source,
        }
    }

    /// An invalid-selector error about this workload.
    pub fn bad_selector(&self, reason: String) -> Error {
        Error::Selector {
            kind: self.kind,
            namespace: self.reference.namespace.clone().unwrap_or_default(),
            name: self.owner.name.clone(),
            reason,
        }
    }

    /// The pods of the namespace.
    pub async fn list(&self) -> Result<Vec<Pod>, Error> {
        Ok(self
            .api
            .list(&Default::default())
            .await
            .map_err(self.error("listing pods"))?
            .items)
    }

    /// The workload's pods among `pods`: those it controls that `selector` still matches,
    /// and the orphans it matches, which it adopts. Pods it controls that no longer match
    /// are released.
    pub async fn claim(&self, pods: Vec<Pod>, selector: &Selector) -> Result<Vec<Pod>, Error> {
        let mut mine = Vec::new();
        for pod in pods {
            let object = json!({"metadata": {"labels": pod.metadata.labels}});
            let matches = !selector.is_empty() && selector.matches_object(&object);
            match controller_of(&pod.metadata.owner_references) {
                Some(owner) if owner.uid == self.owner.uid => {
                    if matches {
                        mine.push(pod);
                    } else {
                        // No longer selected: released, and no longer counted.
                        self.set_controller(&pod, false).await?;
                    }
                }
                Some(_) => {}
                None if matches
                    && pod.metadata.deletion_timestamp.is_none()
                    && self.set_controller(&pod, true).await? =>
                {
                    mine.push(pod);
                }
                None => {}
            }
        }
        Ok(mine)
    }

    /// Adopts or releases a pod, if it is still the pod as read. Returns whether it changed.
    async fn set_controller(&self, pod: &Pod, adopt: bool) -> Result<bool, Error> {
        let current = pod.metadata.owner_references.as_deref();
        let mut owners: Vec<OwnerReference> = current
            .into_iter()
            .flatten()
            .filter(|o| o.controller != Some(true))
            .cloned()
            .collect();
        if adopt {
            owners.push(self.owner.clone());
        }
        let patch = owners::set_owners(&pod.uid().unwrap_or_default(), current, &owners);
        owners::guarded_patch(&self.api, &pod.name_any(), patch)
            .await
            .map_err(self.error(if adopt {
                "adopting a pod"
            } else {
                "releasing a pod"
            }))
    }

    /// A pod from `template` owned by the workload; the caller names it.
    pub fn pod_from(&self, template: Option<&PodTemplateSpec>) -> Pod {
        let template = template.cloned().unwrap_or_default();
        let mut metadata = template.metadata.unwrap_or_default();
        metadata.name = None;
        metadata.namespace = self.reference.namespace.clone();
        metadata.owner_references = Some(vec![self.owner.clone()]);
        Pod {
            metadata,
            spec: template.spec,
            status: None,
        }
    }

    /// Creates a pod, recording `SuccessfulCreate` or `FailedCreate` (in the words
    /// Kubernetes uses for the workload's kind). `Err` carries the
    /// API's message when it refused the pod.
    pub async fn create(&self, pod: &Pod) -> Result<Pod, String> {
        match self.api.create(&PostParams::default(), pod).await {
            Ok(p) => {
                let message = match self.kind {
                    "statefulset" => format!(
                        "create Pod {} in StatefulSet {} successful",
                        p.name_any(),
                        self.owner.name
                    ),
                    _ => format!("Created pod: {}", p.name_any()),
                };
                self.event(Kind::Normal, "SuccessfulCreate", message).await;
                Ok(p)
            }
            Err(e) => {
                let message = match &e {
                    kube::Error::Api(s) => s.message.clone(),
                    other => other.to_string(),
                };
                let event = match self.kind {
                    "statefulset" => format!(
                        "create Pod {} in StatefulSet {} failed error: {message}",
                        pod.name_any(),
                        self.owner.name
                    ),
                    _ => format!("Error creating: {message}"),
                };
                self.event(Kind::Warning, "FailedCreate", event).await;
                Err(message)
            }
        }
    }

    /// Creates `count` pods made by `pod(i)` in batches that double while they succeed (1,
    /// 2, 4, …: Kubernetes' slow start, so a template the API refuses costs one request,
    /// not hundreds). Returns how many were created and, if one failed, why.
    pub async fn create_batches(
        &self,
        count: usize,
        pod: impl Fn(usize) -> Pod,
    ) -> (usize, Option<String>) {
        let (mut created, mut batch) = (0, 1);
        while created < count {
            let size = batch.min(count - created);
            let pods: Vec<Pod> = (created..created + size).map(&pod).collect();
            let results = futures::future::join_all(pods.iter().map(|p| self.create(p))).await;
            for result in results {
                match result {
                    Ok(_) => created += 1,
                    Err(message) => return (created, Some(message)),
                }
            }
            batch *= 2;
        }
        (created, None)
    }

    /// Deletes a pod if it is still the one read (its uid), recording `SuccessfulDelete`.
    pub async fn delete(&self, pod: &Pod) -> Result<(), Error> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api.delete(&pod.name_any(), &params).await {
            Ok(_) => {
                let message = match self.kind {
                    "statefulset" => format!(
                        "delete Pod {} in StatefulSet {} successful",
                        pod.name_any(),
                        self.owner.name
                    ),
                    _ => format!("Deleted pod: {}", pod.name_any()),
                };
                self.event(Kind::Normal, "SuccessfulDelete", message).await;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(self.error("deleting a pod")(e)),
        }
    }

    /// Takes `finalizer` off a pod, if it is still the pod as read. Returns whether it
    /// changed.
    pub async fn remove_finalizer(&self, pod: &Pod, finalizer: &str) -> Result<bool, Error> {
        let current = pod.metadata.finalizers.as_deref().unwrap_or_default();
        if !current.iter().any(|f| f == finalizer) {
            return Ok(false);
        }
        let patch = owners::without_finalizer(&pod.uid().unwrap_or_default(), current, finalizer);
        owners::guarded_patch(&self.api, &pod.name_any(), patch)
            .await
            .map_err(self.error("removing a pod's finalizer"))
    }

    /// Records an event about the workload.
    pub async fn event(&self, kind: Kind, reason: &str, message: String) {
        self.recorder
            .publish(&self.reference, kind, reason, message)
            .await;
    }
}

/// Whether a pod counts as running for its workload: not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// When the pod became Ready, if it is.
pub fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let ready = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        ready
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    )
}
