//! DaemonSets: one pod on each node that should run one (kube-controller-manager's
//! daemonset controller).
//!
//! - A node should run the pod when it matches the template's `nodeSelector` and required
//!   node affinity and every NoSchedule and NoExecute taint is tolerated; a pod already
//!   there may stay while only NoExecute taints are. Pods get the DaemonSet tolerations
//!   Kubernetes adds (not-ready and unreachable NoExecute; disk, memory and PID pressure
//!   and unschedulable NoSchedule; network-unavailable for host-network pods) and a
//!   required node affinity for their node's name, so the scheduler binds them there.
//! - Nodes that join get a pod; pods on nodes that left, or no longer qualify, are
//!   deleted, as are failed pods (and then replaced) and extra pods on a node.
//! - Templates are kept as ControllerRevisions (see [`crate::history`]) and pods carry
//!   their revision's `controller-revision-hash`. RollingUpdate replaces old pods node by
//!   node with at most `maxUnavailable` (1) nodes unavailable, or, with `maxSurge`, starts
//!   the new pod beside the old one first; OnDelete waits for pods to be deleted.
//! - The status counts the nodes (desired, current, misscheduled, ready, available,
//!   updated, unavailable) as `kubectl get ds` and `rollout status` read them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Toleration,
};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::json;
use skiff_core::labels::Selector;
use skiff_core::scheduling::{node_affinity_matches, untolerated};
use skiff_events::Kind;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info_span, warn};

use crate::deployment::resolve;
use crate::history::{self, REVISION_HASH};
use crate::pods::{Error, PodControl, is_active};
use crate::replicaset::available;

/// The name events are reported under.
const CONTROLLER: &str = "daemonset-controller";
/// The (deprecated) label with the DaemonSet's generation its pods were made at.
const TEMPLATE_GENERATION: &str = "pod-template-generation";

struct Ctx {
    client: Client,
    recorder: skiff_events::Recorder,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let sets: Api<DaemonSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let recorder = skiff_events::Recorder::new(client.clone(), CONTROLLER, None);
    let ctx = Arc::new(Ctx { client, recorder });
    let controller = Controller::new(sets, watcher::Config::default());
    let store = controller.store();
    controller
        .owns(pods, watcher::Config::default())
        // A node joining, leaving or changing concerns every DaemonSet.
        .watches(nodes, watcher::Config::default(), move |_node| {
            store
                .state()
                .into_iter()
                .map(|ds| ObjectRef::from_obj(&*ds))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_ds: Arc<DaemonSet>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    warn!(error = err as &dyn std::error::Error, "syncing a daemonset");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let span = info_span!("reconcile", daemonset = %ds.name_any(), namespace = ds.namespace().unwrap_or_default());
    sync(ds, ctx).instrument(span).await
}

/// The tolerations Kubernetes gives every DaemonSet pod, so that it runs (and stays) on
/// nodes with these conditions.
pub fn daemon_tolerations(spec: &mut PodSpec) {
    let host_network = spec.host_network == Some(true);
    let tolerations = spec.tolerations.get_or_insert_default();
    let wanted = [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    let network = host_network.then_some(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    for (key, effect) in wanted.into_iter().chain(network) {
        let present = tolerations.iter().any(|t| {
            t.key.as_deref() == Some(key)
                && t.operator.as_deref() == Some("Exists")
                && t.effect.as_deref() == Some(effect)
        });
        if !present {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Default::default()
            });
        }
    }
}

/// Whether a node should run the DaemonSet's pod, and whether a pod already there may
/// keep running.
pub fn eligibility(spec: &PodSpec, node: &Node) -> (bool, bool) {
    if !node_affinity_matches(spec, node) {
        return (false, false);
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let run = untolerated(node, tolerations, &["NoSchedule", "NoExecute"])
        .next()
        .is_none();
    let stay = untolerated(node, tolerations, &["NoExecute"])
        .next()
        .is_none();
    (run, stay)
}

/// The node a DaemonSet pod is for: where it is bound, or the node its affinity names.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(node.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

/// Pins a pod to a node: its required node affinity becomes that node's name (whether the
/// node qualifies was decided already).
fn pin(spec: &mut PodSpec, node: &str) {
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            match_expressions: None,
        }],
    });
}

/// One node's part in a sync.
#[derive(Debug, Default)]
struct NodeState<'a> {
    run: bool,
    stay: bool,
    /// The node's live pods, oldest first.
    pods: Vec<&'a Pod>,
}

async fn sync(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let control = PodControl::new(ctx.client.clone(), &ctx.recorder, &*ds, "apps/v1");
    let spec = ds.spec.clone().unwrap_or_default();
    let selector = serde_json::to_value(&spec.selector).unwrap_or_default();
    let selector = Selector::from_label_selector(&selector)
        .map_err(|e| control.bad_selector(e.to_string()))?;
    let namespace = ds.namespace().unwrap_or_default();
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&Default::default())
        .await
        .map_err(control.error("listing nodes"))?
        .items;
    let mut pods = control.claim(control.list().await?, &selector).await?;
    pods.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            p.name_any(),
        )
    });

    // The template's revision.
    let in_use: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.labels().get(REVISION_HASH).cloned())
        .collect();
    let owner = history::Owner::new(
        &ctx.client,
        &namespace,
        &control.owner,
        &spec.template,
        ds.annotations(),
        spec.revision_history_limit,
        ds.status.as_ref().and_then(|s| s.collision_count),
    );
    let current = owner
        .sync(&history::data_of(&spec.template), &in_use)
        .await
        .map_err(control.error("recording the template's revision"))?;
    let mut template_spec = spec.template.spec.clone().unwrap_or_default();
    daemon_tolerations(&mut template_spec);

    let mut by_node: BTreeMap<String, NodeState> = BTreeMap::new();
    for node in &nodes {
        let (run, stay) = eligibility(&template_spec, node);
        by_node.insert(
            node.name_any(),
            NodeState {
                run,
                stay,
                pods: Vec::new(),
            },
        );
    }
    let mut delete: Vec<&Pod> = Vec::new();
    for pod in &pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if phase == Some("Failed") {
            let node = target_node(pod).unwrap_or_default();
            control
                .event(
                    Kind::Warning,
                    "FailedDaemonPod",
                    format!("Found failed daemon pod {namespace}/{} on node {node}, will try to kill it", pod.name_any()),
                )
                .await;
            delete.push(pod);
            continue;
        }
        match target_node(pod).and_then(|n| by_node.get_mut(&n)) {
            Some(state) => state.pods.push(pod),
            // Its node is gone.
            None => delete.push(pod),
        }
    }

    let now = jiff::Timestamp::now();
    let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
    let is_available = |p: &Pod| available(p, min_ready, now).is_ok();
    let is_new = |p: &Pod| p.labels().get(REVISION_HASH) == Some(&current.hash);
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    let desired = by_node.values().filter(|s| s.run).count() as i32;
    let rolling_update = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let max_surge = resolve(
        rolling_update.and_then(|r| r.max_surge.as_ref()),
        "0",
        desired,
        true,
    );
    let mut max_unavailable = resolve(
        rolling_update.and_then(|r| r.max_unavailable.as_ref()),
        "1",
        desired,
        true,
    );
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    let mut create: Vec<String> = Vec::new();
    let mut unavailable = by_node
        .values()
        .filter(|s| s.run && !s.pods.iter().any(|p| is_available(p)))
        .count() as i32;
    let mut surge_left = max_surge
        - by_node
            .values()
            .filter(|s| s.pods.iter().any(|p| is_new(p)) && s.pods.iter().any(|p| !is_new(p)))
            .count() as i32;
    for (name, state) in &by_node {
        if !state.stay || (!state.run && state.pods.is_empty()) {
            delete.extend(&state.pods);
            continue;
        }
        if state.pods.is_empty() {
            if state.run {
                create.push(name.clone());
            }
            continue;
        }
        let (new, old): (Vec<&Pod>, Vec<&Pod>) = state.pods.iter().partition(|p| is_new(p));
        if !rolling || old.is_empty() {
            // One pod a node: the oldest stays.
            delete.extend(state.pods.iter().skip(1));
            continue;
        }
        delete.extend(new.iter().skip(1));
        delete.extend(old.iter().skip(1));
        let (old, new) = (old[0], new.first().copied());
        match new {
            // The new pod is up beside the old: the old goes.
            Some(new) if is_available(new) => delete.push(old),
            Some(_) => {}
            None if !is_available(old) => delete.push(old),
            // With a surge, the new pod starts beside the old one.
            None if max_surge > 0 && surge_left > 0 => {
                surge_left -= 1;
                create.push(name.clone());
            }
            None if max_surge > 0 => {}
            None if unavailable < max_unavailable => {
                unavailable += 1;
                delete.push(old);
            }
            None => {}
        }
    }
    for pod in &delete {
        control.delete(pod).await?;
    }
    let generation = ds.metadata.generation.unwrap_or(0);
    let (_, failure) = control
        .create_batches(create.len(), |i| {
            let mut pod = control.pod_from(Some(&spec.template));
            pod.metadata.generate_name = Some(format!("{}-", ds.name_any()));
            let labels = pod.metadata.labels.get_or_insert_default();
            labels.insert(REVISION_HASH.into(), current.hash.clone());
            labels.insert(TEMPLATE_GENERATION.into(), generation.to_string());
            let mut pod_spec = template_spec.clone();
            pin(&mut pod_spec, &create[i]);
            pod.spec = Some(pod_spec);
            pod
        })
        .await;

    // The status, from the nodes as they were found.
    let gone: BTreeSet<&str> = delete
        .iter()
        .map(|p| p.metadata.uid.as_deref().unwrap_or_default())
        .collect();
    let (mut scheduled, mut misscheduled, mut ready, mut available_n, mut updated) =
        (0, 0, 0, 0, 0);
    let mut recheck: Option<Duration> = None;
    for state in by_node.values() {
        let pods: Vec<&Pod> = state
            .pods
            .iter()
            .copied()
            .filter(|p| {
                is_active(p) && !gone.contains(p.metadata.uid.as_deref().unwrap_or_default())
            })
            .collect();
        if pods.is_empty() {
            continue;
        }
        if !state.run {
            misscheduled += 1;
            continue;
        }
        scheduled += 1;
        if pods.iter().any(|p| crate::pods::ready_since(p).is_some()) {
            ready += 1;
        }
        if pods.iter().any(|p| is_available(p)) {
            available_n += 1;
        }
        for p in &pods {
            if let Err(Some(wait)) = available(p, min_ready, now) {
                recheck = Some(recheck.map_or(wait, |r| r.min(wait)));
            }
        }
        if pods.iter().any(|p| is_new(p)) {
            updated += 1;
        }
    }
    let status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": scheduled,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": available_n,
        "numberUnavailable": (desired - available_n).max(0),
        "updatedNumberScheduled": updated,
        "observedGeneration": ds.metadata.generation,
        "collisionCount": current.collisions,
    });
    let old = serde_json::to_value(&ds.status).unwrap_or_default();
    crate::status::write(&ctx.client, &*ds, &old, status)
        .await
        .map_err(control.error("updating the status"))?;
    Ok(crate::status::next(failure.is_some(), recheck))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
        }))
        .unwrap()
    }

    #[test]
    fn nodes_qualify_by_selector_and_taints_with_the_daemon_tolerations() {
        let mut spec: PodSpec = serde_json::from_value(json!({
            "containers": [], "nodeSelector": {"role": "edge"},
        }))
        .unwrap();
        daemon_tolerations(&mut spec);
        daemon_tolerations(&mut spec);
        assert_eq!(spec.tolerations.as_ref().unwrap().len(), 6, "added once");
        let edge = json!({"role": "edge"});
        assert_eq!(
            eligibility(&spec, &node("a", edge.clone(), json!([]))),
            (true, true)
        );
        assert_eq!(
            eligibility(&spec, &node("b", json!({}), json!([]))),
            (false, false)
        );
        // Cordoned or unreachable nodes keep their daemon.
        let cordoned = json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]);
        assert_eq!(
            eligibility(&spec, &node("c", edge.clone(), cordoned)),
            (true, true)
        );
        let unreachable = json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]);
        assert_eq!(
            eligibility(&spec, &node("d", edge.clone(), unreachable)),
            (true, true)
        );
        // Other taints: NoSchedule stops new pods, NoExecute removes them.
        let dedicated = json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]);
        assert_eq!(
            eligibility(&spec, &node("e", edge.clone(), dedicated)),
            (false, true)
        );
        let evicting = json!([{"key": "dedicated", "value": "db", "effect": "NoExecute"}]);
        assert_eq!(
            eligibility(&spec, &node("f", edge, evicting)),
            (false, false)
        );
    }

    #[test]
    fn pods_are_pinned_to_their_node_by_name() {
        let mut spec: PodSpec = serde_json::from_value(json!({"containers": []})).unwrap();
        pin(&mut spec, "n7");
        let pod = Pod {
            spec: Some(spec.clone()),
            ..Default::default()
        };
        assert_eq!(target_node(&pod).as_deref(), Some("n7"));
        let n7 = node("n7", json!({}), json!([]));
        let n8 = node("n8", json!({}), json!([]));
        assert!(node_affinity_matches(&spec, &n7));
        assert!(!node_affinity_matches(&spec, &n8));
    }
}
