//! Pod events from the agent (`source.component: kubelet`, as kubectl's describe expects),
//! aggregated like client-go's recorder: a repeat of the same reason and message on the
//! same object bumps `count` and `lastTimestamp` of one Event instead of making another.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tracing::debug;

/// What makes two events the same: pod UID, field path, reason and message.
type Key = (String, String, String, String);

/// Writes events for one node's pods.
pub struct Recorder {
    client: kube::Client,
    node: String,
    /// The Event each key was written as, and its count.
    seen: Mutex<HashMap<Key, (String, i64)>>,
}

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

impl Recorder {
    /// A recorder whose events name `node` as their source host.
    pub fn new(client: kube::Client, node: String) -> Self {
        Recorder {
            client,
            node,
            seen: Mutex::default(),
        }
    }

    /// Records an event about `pod` (and its container at `field_path`, if any).
    pub async fn pod(
        &self,
        pod: &Pod,
        field_path: Option<String>,
        kind: Kind,
        reason: &str,
        message: String,
    ) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let now = jiff::Timestamp::now().to_string();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let key = (
            uid.clone(),
            field_path.clone().unwrap_or_default(),
            reason.to_owned(),
            message.clone(),
        );
        let repeat = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some((event_name, count)) = repeat {
            let patch = json!({"count": count + 1, "lastTimestamp": now});
            if api
                .patch(&event_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                self.seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, (event_name, count + 1));
                return;
            }
        }
        let event_name = format!("{name}.{:016x}", rand::random::<u64>());
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event_name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": namespace,
                "name": name,
                "uid": uid,
                "fieldPath": field_path,
            },
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": self.node},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": match kind { Kind::Normal => "Normal", Kind::Warning => "Warning" },
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
        });
        let event: Event = match serde_json::from_value(event) {
            Ok(e) => e,
            Err(_) => return,
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                self.seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, (event_name, 1));
            }
            Err(e) => debug!(error = %e, reason, "writing an event failed"),
        }
    }

    /// Forgets the aggregation state of a pod that is gone.
    pub fn forget(&self, uid: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| k.0 != uid);
    }
}
