//! ReplicaSets: as many pods as `spec.replicas`, each from the template (kube-controller-
//! manager's replicaset controller).
//!
//! A ReplicaSet's pods are the pods of its namespace it controls (an owner reference with
//! `controller: true`). Orphans its selector matches are adopted; pods it controls that its
//! selector no longer matches are released. Missing pods are created in batches that double
//! while they succeed (1, 2, 4, …, as Kubernetes' slow start); extra pods are deleted,
//! the least useful first (unscheduled, then pending, not ready, ready the shortest time,
//! most restarted, newest). The status counts the pods, the fully labelled ones, the
//! ready ones and the available ones (ready for `minReadySeconds`), and records the
//! generation seen. Creates and deletes are recorded as events (`SuccessfulCreate`,
//! `SuccessfulDelete`, `FailedCreate`).

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::json;
use skiff_core::labels::Selector;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info_span, warn};

use crate::owners::controller_of;
use crate::pods::PodControl;
pub use crate::pods::{is_active, ready_since};

/// The name events are reported under.
const CONTROLLER: &str = "replicaset-controller";
/// At most this many pods are created or deleted per pass (Kubernetes' burstReplicas).
const BURST: usize = 500;

pub use crate::pods::Error;

struct Ctx {
    client: Client,
    recorder: skiff_events::Recorder,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let sets: Api<ReplicaSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let controller = Controller::new(sets, watcher::Config::default());
    let store = controller.store();
    let recorder = skiff_events::Recorder::new(client.clone(), CONTROLLER, None);
    let ctx = Arc::new(Ctx { client, recorder });
    controller
        // A pod change concerns the ReplicaSet that controls it, or, for an orphan, every
        // ReplicaSet of its namespace whose selector matches it (one may adopt it).
        .watches(pods, watcher::Config::default(), move |pod| {
            let namespace = pod.namespace().unwrap_or_default();
            if let Some(owner) = controller_of(&pod.metadata.owner_references) {
                return if owner.kind == "ReplicaSet" {
                    vec![ObjectRef::<ReplicaSet>::new(&owner.name).within(&namespace)]
                } else {
                    Vec::new()
                };
            }
            let labels = serde_json::to_value(&pod.metadata.labels).unwrap_or_default();
            let object = json!({"metadata": {"labels": labels}});
            store
                .state()
                .into_iter()
                .filter(|rs| rs.namespace().as_deref() == Some(namespace.as_str()))
                .filter(|rs| {
                    selector_of(rs).is_ok_and(|s| !s.is_empty() && s.matches_object(&object))
                })
                .map(|rs| ObjectRef::from_obj(&*rs))
                .collect()
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_rs: Arc<ReplicaSet>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    warn!(
        error = err as &dyn std::error::Error,
        "reconciling a replicaset"
    );
    Action::requeue(Duration::from_secs(5))
}

fn selector_of(rs: &ReplicaSet) -> Result<Selector, String> {
    let selector = rs
        .spec
        .as_ref()
        .map(|s| serde_json::to_value(&s.selector).unwrap_or_default())
        .unwrap_or_default();
    Selector::from_label_selector(&selector).map_err(|e| e.to_string())
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let span = info_span!("reconcile", replicaset = %rs.name_any(), namespace = rs.namespace().unwrap_or_default());
    reconcile_one(rs, ctx).instrument(span).await
}

/// Whether a ready pod has been ready for `min_ready` at `now`; if not yet, how long until.
pub fn available(
    pod: &Pod,
    min_ready: Duration,
    now: jiff::Timestamp,
) -> Result<(), Option<Duration>> {
    let Some(since) = ready_since(pod) else {
        return Err(None);
    };
    let ready_for = now.duration_since(since).unsigned_abs();
    if min_ready.is_zero() || ready_for >= min_ready {
        Ok(())
    } else {
        Err(Some(min_ready - ready_for))
    }
}

/// The order pods are deleted in when there are too many: the first is deleted first.
pub fn deletion_rank(pod: &Pod) -> impl Ord + use<> {
    let status = pod.status.as_ref();
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let ready = ready_since(pod);
    let cost: i64 = pod
        .annotations()
        .get("controller.kubernetes.io/pod-deletion-cost")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let restarts: i32 = status
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0);
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (
        scheduled,
        phase,
        ready.is_some(),
        cost,
        // Ready more recently, restarted more, created later: deleted sooner.
        Reverse(ready),
        Reverse(restarts),
        Reverse(created),
    )
}

async fn reconcile_one(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if rs.metadata.deletion_timestamp.is_some() {
        // The garbage collector deletes (or orphans) its pods.
        return Ok(Action::await_change());
    }
    let name = rs.name_any();
    let control = PodControl::new(ctx.client.clone(), &ctx.recorder, &*rs, "apps/v1");
    let selector = selector_of(&rs).map_err(|reason| control.bad_selector(reason))?;
    let spec = rs.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
    let mine = control.claim(control.list().await?, &selector).await?;
    let active: Vec<&Pod> = mine.iter().filter(|p| is_active(p)).collect();
    let mut failure = None;
    if active.len() < replicas {
        let missing = (replicas - active.len()).min(BURST);
        let mut pod = control.pod_from(spec.template.as_ref());
        pod.metadata.generate_name = Some(format!("{name}-"));
        failure = control.create_batches(missing, |_| pod.clone()).await.1;
    } else if active.len() > replicas {
        let mut doomed = active.clone();
        doomed.sort_by_cached_key(|p| deletion_rank(p));
        for pod in doomed
            .into_iter()
            .take((active.len() - replicas).min(BURST))
        {
            control.delete(pod).await?;
        }
    }

    // The status, from the pods as they were found.
    let now = jiff::Timestamp::now();
    let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let labels = p.labels();
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| ready_since(p).is_some()).count();
    let mut recheck = None;
    let mut available_count = 0;
    for pod in &active {
        match available(pod, min_ready, now) {
            Ok(()) => available_count += 1,
            Err(Some(wait)) => recheck = Some(recheck.map_or(wait, |r: Duration| r.min(wait))),
            Err(None) => {}
        }
    }
    let mut status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available_count,
        "observedGeneration": rs.metadata.generation,
    });
    let had_failure = rs
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "ReplicaFailure"));
    match (&failure, had_failure) {
        (Some(message), _) => {
            status["conditions"] = json!([{
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": message,
                "lastTransitionTime": skiff_core::time::format_time(now),
            }]);
        }
        (None, true) if active.len() == replicas => status["conditions"] = json!(null),
        _ => {}
    }
    let current = serde_json::to_value(&rs.status).unwrap_or_default();
    crate::status::write(&ctx.client, &*rs, &current, status)
        .await
        .map_err(control.error("updating the status"))?;
    Ok(crate::status::next(failure.is_some(), recheck))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(
        name: &str,
        node: Option<&str>,
        phase: &str,
        ready_at: Option<&str>,
        created: &str,
    ) -> Pod {
        let mut conditions = Vec::new();
        if let Some(at) = ready_at {
            conditions.push(json!({"type": "Ready", "status": "True", "lastTransitionTime": at}));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"containers": [], "nodeName": node},
            "status": {"phase": phase, "conditions": conditions},
        }))
        .unwrap()
    }

    #[test]
    fn the_least_useful_pods_are_deleted_first() {
        let mut pods = [
            pod(
                "ready-old",
                Some("n"),
                "Running",
                Some("2026-01-01T00:00:00Z"),
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "ready-new",
                Some("n"),
                "Running",
                Some("2026-01-02T00:00:00Z"),
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "not-ready",
                Some("n"),
                "Running",
                None,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "pending",
                Some("n"),
                "Pending",
                None,
                "2026-01-01T00:00:00Z",
            ),
            pod("unscheduled", None, "Pending", None, "2026-01-01T00:00:00Z"),
        ];
        pods.sort_by_cached_key(deletion_rank);
        let order: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        assert_eq!(
            order,
            [
                "unscheduled",
                "pending",
                "not-ready",
                "ready-new",
                "ready-old"
            ]
        );
    }

    #[test]
    fn pods_are_available_after_min_ready_seconds() {
        let p = pod(
            "p",
            Some("n"),
            "Running",
            Some("2026-01-01T00:00:00Z"),
            "2026-01-01T00:00:00Z",
        );
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert_eq!(
            available(&p, Duration::ZERO, at("2026-01-01T00:00:00Z")),
            Ok(())
        );
        assert_eq!(
            available(&p, Duration::from_secs(10), at("2026-01-01T00:00:04Z")),
            Err(Some(Duration::from_secs(6)))
        );
        assert_eq!(
            available(&p, Duration::from_secs(10), at("2026-01-01T00:00:10Z")),
            Ok(())
        );
        let unready = pod("u", Some("n"), "Running", None, "2026-01-01T00:00:00Z");
        assert_eq!(
            available(&unready, Duration::ZERO, at("2026-01-01T00:00:00Z")),
            Err(None)
        );
    }
}
