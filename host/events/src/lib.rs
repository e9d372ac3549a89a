//! Events (`core/v1`), aggregated like client-go's recorder: a repeat of the same reason
//! and message about the same object bumps `count` and `lastTimestamp` of one Event instead
//! of making another, so `kubectl describe` shows `(x5 over 2m)`. Different messages (each
//! pod a ReplicaSet creates) stay different events, as in Kubernetes.
//!
//! ```no_run
//! # async fn demo(client: kube::Client, rs: k8s_openapi::api::apps::v1::ReplicaSet) {
//! use kube::Resource as _;
//! let recorder = skiff_events::Recorder::new(client, "replicaset-controller", None);
//! recorder
//!     .publish(&rs.object_ref(&()), skiff_events::Kind::Normal, "SuccessfulCreate", "Created pod: web-x7k2p".into())
//!     .await;
//! # }
//! ```

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tracing::debug;

/// What makes two events the same: object uid, field path, reason and message.
type Key = (String, String, String, String);

/// Writes one component's events.
pub struct Recorder {
    client: kube::Client,
    component: String,
    host: Option<String>,
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
    /// A recorder whose events come from `component` (`source.component`, and the
    /// reporting component), on `host` if it is a node's.
    pub fn new(client: kube::Client, component: &str, host: Option<String>) -> Self {
        Recorder {
            client,
            component: component.to_owned(),
            host,
            seen: Mutex::default(),
        }
    }

    /// Records an event about the object `regarding` refers to (its `fieldPath` names a
    /// part of it, such as a pod's container). Failures are logged, never returned: an
    /// event is not worth failing the action it reports.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        kind: Kind,
        reason: &str,
        message: String,
    ) {
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let name = regarding.name.clone().unwrap_or_default();
        let now = jiff::Timestamp::now().to_string();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let key = (
            regarding.uid.clone().unwrap_or_default(),
            regarding.field_path.clone().unwrap_or_default(),
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
            "involvedObject": regarding,
            "reason": reason,
            "message": message,
            "source": {"component": self.component, "host": self.host},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": match kind { Kind::Normal => "Normal", Kind::Warning => "Warning" },
            "reportingComponent": self.component,
            "reportingInstance": self.host.clone().unwrap_or_else(|| self.component.clone()),
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

    /// Forgets the aggregation state of an object that is gone.
    pub fn forget(&self, uid: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| k.0 != uid);
    }
}
