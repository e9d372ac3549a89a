//! PodDisruptionBudgets' status (kube-controller-manager's disruption controller): how
//! many of the pods a budget selects are healthy, how many must stay so, and so how many
//! may be evicted now (`disruptionsAllowed`, which `kubectl drain`'s evictions spend).
//!
//! - `minAvailable` as a number: expected pods are the pods selected, desired healthy is
//!   the number. As a percentage, or with `maxUnavailable`, expected pods are the replicas
//!   of the pods' controllers (ReplicaSet, or the Deployment above it; StatefulSet;
//!   ReplicationController), and the percentage is of those, rounded up.
//! - Healthy: ready and not being deleted, and not just evicted: the eviction subresource
//!   records each pod it evicts in `disruptedPods`; an entry goes when its pod is gone or
//!   being deleted, or after two minutes if the pod never went.
//! - The `DisruptionAllowed` condition says whether an eviction would be allowed now.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};
use skiff_core::labels::Selector;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info_span, warn};

use crate::deployment::resolve;
use crate::owners::controller_of;
use crate::pods::{Error, ready_since};

/// How long an evicted pod may take to go before it counts again.
const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let budgets: Api<PodDisruptionBudget> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let controller = Controller::new(budgets, watcher::Config::default());
    let store = controller.store();
    controller
        // A pod concerns the budgets of its namespace that select it.
        .watches(pods, watcher::Config::default(), move |pod| {
            let namespace = pod.namespace();
            store
                .state()
                .into_iter()
                .filter(|b| {
                    b.namespace() == namespace
                        && selector_of(b).is_some_and(|s| selects(&s, pod.metadata.labels.as_ref()))
                })
                .map(|b| ObjectRef::from_obj(&*b))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, Arc::new(client))
        .for_each(|_| async {})
        .await;
}

fn error_policy(_b: Arc<PodDisruptionBudget>, err: &Error, _client: Arc<Client>) -> Action {
    warn!(
        error = err as &dyn std::error::Error,
        "syncing a disruption budget"
    );
    Action::requeue(Duration::from_secs(2))
}

/// The budget's selector; in policy/v1 an empty one selects every pod of the namespace and
/// none selects nothing.
fn selector_of(budget: &PodDisruptionBudget) -> Option<Selector> {
    let selector = budget.spec.as_ref()?.selector.as_ref()?;
    Selector::from_label_selector(&serde_json::to_value(selector).ok()?).ok()
}

fn selects(selector: &Selector, labels: Option<&BTreeMap<String, String>>) -> bool {
    selector.matches_with(|k| labels.and_then(|l| l.get(k)).map(String::as_str))
}

async fn reconcile(budget: Arc<PodDisruptionBudget>, client: Arc<Client>) -> Result<Action, Error> {
    let span = info_span!("reconcile", budget = %budget.name_any(), namespace = budget.namespace().unwrap_or_default());
    sync(budget, client).instrument(span).await
}

/// Expected pods and desired healthy pods, from the spec, the selected pods and the
/// replicas their controllers want.
pub fn expectations(
    budget: &PodDisruptionBudget,
    selected: usize,
    controller_replicas: Option<i32>,
) -> (i32, i32) {
    let spec = budget.spec.clone().unwrap_or_default();
    let scaled = || controller_replicas.unwrap_or(selected as i32);
    match (&spec.min_available, &spec.max_unavailable) {
        (_, Some(max)) => {
            let expected = scaled();
            let unavailable = resolve(Some(max), "0", expected, true);
            (expected, (expected - unavailable).max(0))
        }
        (Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)), None) => {
            (selected as i32, *n)
        }
        (Some(min), None) => {
            let expected = scaled();
            (expected, resolve(Some(min), "0", expected, true))
        }
        (None, None) => (selected as i32, 0),
    }
}

async fn sync(budget: Arc<PodDisruptionBudget>, client: Arc<Client>) -> Result<Action, Error> {
    let namespace = budget.namespace().unwrap_or_default();
    let name = budget.name_any();
    let error = |what: &'static str| {
        let (namespace, name) = (namespace.clone(), name.clone());
        move |source| Error::Api {
            kind: "poddisruptionbudget",
            namespace,
            name,
            what,
            source,
        }
    };
    let pods: Vec<Pod> = match selector_of(&budget) {
        Some(selector) => Api::<Pod>::namespaced((*client).clone(), &namespace)
            .list(&Default::default())
            .await
            .map_err(error("listing pods"))?
            .items
            .into_iter()
            .filter(|p| selects(&selector, p.metadata.labels.as_ref()))
            .collect(),
        None => Vec::new(),
    };
    let now = jiff::Timestamp::now();
    let old = budget.status.clone().unwrap_or_default();
    // Evictions not yet seen through, until their pod goes or their time is up.
    let mut disrupted = BTreeMap::new();
    let mut recheck: Option<Duration> = None;
    for (pod, at) in old.disrupted_pods.iter().flatten() {
        let live = pods
            .iter()
            .any(|p| p.name_any() == *pod && p.metadata.deletion_timestamp.is_none());
        let left = (at.0 + jiff::SignedDuration::try_from(DELETION_TIMEOUT).unwrap_or_default())
            .duration_since(now);
        if live && left.is_positive() {
            disrupted.insert(pod.clone(), skiff_core::time::format_time(at.0));
            let left = left.unsigned_abs();
            recheck = Some(recheck.map_or(left, |r: Duration| r.min(left)));
        }
    }
    let healthy = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && ready_since(p).is_some()
                && !disrupted.contains_key(&p.name_any())
        })
        .count() as i32;
    let spec = budget.spec.clone().unwrap_or_default();
    let needs_scale = spec.max_unavailable.is_some()
        || matches!(
            spec.min_available,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(_))
        );
    let replicas = if needs_scale {
        Some(
            controller_replicas(&client, &namespace, &pods)
                .await
                .map_err(error("reading the pods' controllers"))?,
        )
    } else {
        None
    };
    let (expected, desired) = expectations(&budget, pods.len(), replicas);
    let allowed = (healthy - desired).max(0);
    let condition = if allowed > 0 {
        ("True", "SufficientPods", "")
    } else {
        ("False", "InsufficientPods", "")
    };
    let transition = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed" && c.status == condition.0)
        .map(|c| skiff_core::time::format_time(c.last_transition_time.0))
        .unwrap_or_else(|| skiff_core::time::format_time(now));
    let status = json!({
        "observedGeneration": budget.metadata.generation,
        "disruptedPods": if disrupted.is_empty() { Value::Null } else { json!(disrupted) },
        "disruptionsAllowed": allowed,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "conditions": [{
            "type": "DisruptionAllowed", "status": condition.0, "reason": condition.1,
            "message": condition.2, "lastTransitionTime": transition,
            "observedGeneration": budget.metadata.generation,
        }],
    });
    let current = serde_json::to_value(&budget.status).unwrap_or_default();
    let changed = status.as_object().into_iter().flatten().any(|(k, v)| {
        let was = current.get(k).unwrap_or(&Value::Null);
        was != v && !(v == 0 && was.is_null())
    });
    if changed {
        // With the resourceVersion read: an eviction's write in between wins, and this
        // sync runs again.
        let patch =
            json!({"metadata": {"resourceVersion": budget.resource_version()}, "status": status});
        match Api::<PodDisruptionBudget>::namespaced((*client).clone(), &namespace)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            Err(e) => return Err(error("updating the status")(e)),
        }
    }
    Ok(match recheck {
        Some(wait) => Action::requeue(wait + Duration::from_millis(100)),
        None => Action::await_change(),
    })
}

/// The replicas the selected pods' controllers want, each controller counted once.
async fn controller_replicas(
    client: &Client,
    namespace: &str,
    pods: &[Pod],
) -> Result<i32, kube::Error> {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for pod in pods {
        let Some(owner) = controller_of(&pod.metadata.owner_references) else {
            continue;
        };
        let (mut kind, mut name) = (owner.kind.clone(), owner.name.clone());
        if kind == "ReplicaSet" {
            let rs = Api::<ReplicaSet>::namespaced(client.clone(), namespace)
                .get_opt(&name)
                .await?;
            match rs
                .as_ref()
                .and_then(|rs| controller_of(&rs.metadata.owner_references))
            {
                Some(d) if d.kind == "Deployment" => {
                    (kind, name) = (d.kind.clone(), d.name.clone())
                }
                _ => {}
            }
        }
        if !seen.insert((kind.clone(), name.clone())) {
            continue;
        }
        let replicas = match kind.as_str() {
            "Deployment" => Api::<Deployment>::namespaced(client.clone(), namespace)
                .get_opt(&name)
                .await?
                .and_then(|d| d.spec?.replicas),
            "ReplicaSet" => Api::<ReplicaSet>::namespaced(client.clone(), namespace)
                .get_opt(&name)
                .await?
                .and_then(|r| r.spec?.replicas),
            "StatefulSet" => Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .get_opt(&name)
                .await?
                .and_then(|s| s.spec?.replicas),
            "ReplicationController" => {
                Api::<ReplicationController>::namespaced(client.clone(), namespace)
                    .get_opt(&name)
                    .await?
                    .and_then(|r| r.spec?.replicas)
            }
            _ => None,
        };
        total += replicas.unwrap_or(1);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(spec: Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({"metadata": {"name": "b"}, "spec": spec})).unwrap()
    }

    #[test]
    fn expected_and_desired_pods_follow_the_spec() {
        assert_eq!(
            expectations(&budget(json!({"minAvailable": 2})), 3, None),
            (3, 2)
        );
        assert_eq!(
            expectations(&budget(json!({"minAvailable": "50%"})), 3, Some(5)),
            (5, 3)
        );
        assert_eq!(
            expectations(&budget(json!({"maxUnavailable": 1})), 3, Some(4)),
            (4, 3)
        );
        assert_eq!(
            expectations(&budget(json!({"maxUnavailable": "30%"})), 3, Some(10)),
            (10, 7)
        );
    }
}
