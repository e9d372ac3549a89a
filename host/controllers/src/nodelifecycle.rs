//! Node lifecycle (kube-controller-manager's node-lifecycle-controller) and evictions for
//! NoExecute taints (its taint-eviction-controller).
//!
//! - A node whose heartbeat (its Lease's renewTime, or its Ready condition's
//!   lastHeartbeatTime) has not moved for the grace period (`--node-monitor-grace-period`,
//!   40 s) gets its Ready and pressure conditions set to Unknown (`NodeStatusUnknown`,
//!   "Kubelet stopped posting node status."), and its pods are marked not ready. Staleness
//!   is judged by when this controller saw the heartbeat change, not by the agent's clock.
//! - Taints follow the conditions: `node.kubernetes.io/unreachable` (Ready Unknown) and
//!   `not-ready` (Ready False) as NoSchedule and NoExecute; `memory-pressure`,
//!   `disk-pressure`, `pid-pressure`, `network-unavailable` and `unschedulable` (cordoned)
//!   as NoSchedule. They go again when the condition clears.
//! - Evictions: a pod on a node with a NoExecute taint it does not tolerate is deleted at
//!   once; one that tolerates it for `tolerationSeconds` (300 for unreachable and
//!   not-ready, which the API server adds to every pod) is deleted that long after the taint
//!   was added. The pod gets the `DisruptionTarget` condition first, and an event.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Client, Resource as _, ResourceExt as _};
use serde_json::{Value, json};
use skiff_core::scheduling::tolerates;
use skiff_events::Kind;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// kube-controller-manager's default `--node-monitor-grace-period`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(40);
/// The node conditions that go Unknown with the node.
const CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
/// Taint keys this controller owns.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The not-ready taint.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
const OWNED: &[&str] = &[
    UNREACHABLE,
    NOT_READY,
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/pid-pressure",
    "node.kubernetes.io/network-unavailable",
    "node.kubernetes.io/unschedulable",
];

fn condition<'a>(
    node: &'a Node,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// The taints a node's conditions and cordon call for, keeping the time an existing
/// NoExecute taint was added and every taint this controller does not own.
pub fn taints_for(node: &Node, now: jiff::Timestamp) -> Vec<Taint> {
    let status = |t: &str| condition(node, t).map(|c| c.status.as_str());
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    match status("Ready") {
        Some("False") => wanted.extend([(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")]),
        Some("Unknown") => wanted.extend([(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]),
        // Ready, or not reported yet (it becomes Unknown after the grace period).
        _ => {}
    }
    for (type_, key) in [
        ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
        ("DiskPressure", "node.kubernetes.io/disk-pressure"),
        ("PIDPressure", "node.kubernetes.io/pid-pressure"),
        (
            "NetworkUnavailable",
            "node.kubernetes.io/network-unavailable",
        ),
    ] {
        if status(type_) == Some("True") {
            wanted.push((key, "NoSchedule"));
        }
    }
    let spec = node.spec.clone().unwrap_or_default();
    if spec.unschedulable == Some(true) {
        wanted.push(("node.kubernetes.io/unschedulable", "NoSchedule"));
    }
    let current = spec.taints.unwrap_or_default();
    let mut taints: Vec<Taint> = current
        .iter()
        .filter(|t| {
            !OWNED.contains(&t.key.as_str())
                || wanted.contains(&(t.key.as_str(), t.effect.as_str()))
        })
        .cloned()
        .collect();
    for (key, effect) in wanted {
        if !taints.iter().any(|t| t.key == key && t.effect == effect) {
            taints.push(Taint {
                key: key.into(),
                effect: effect.into(),
                time_added: (effect == "NoExecute").then_some(Time(now)),
                value: None,
            });
        }
    }
    taints
}

/// The conditions of a node whose agent stopped reporting: each of Ready and the pressure
/// conditions Unknown (`None`: they already are).
pub fn unknown_conditions(node: &Node, now: jiff::Timestamp) -> Option<Vec<Value>> {
    let mut conditions: Vec<Value> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    let now = skiff_core::time::format_time(now);
    let mut changed = false;
    for type_ in CONDITIONS {
        match conditions.iter_mut().find(|c| c["type"] == *type_) {
            Some(c) if c["status"] == "Unknown" => {}
            Some(c) => {
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(now);
                changed = true;
            }
            None => {
                conditions.push(json!({
                    "type": type_, "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                    "message": "Kubelet never posted node status.",
                    "lastHeartbeatTime": now, "lastTransitionTime": now,
                }));
                changed = true;
            }
        }
    }
    changed.then_some(conditions)
}

/// What a node's heartbeats were when last seen to change, and when that was.
#[derive(Debug)]
struct Seen {
    beats: (Option<String>, Option<String>),
    at: Instant,
}

/// Runs the node lifecycle controller until `shutdown`: a pass every few seconds.
pub async fn run(client: Client, grace: Duration, shutdown: CancellationToken) {
    let recorder = skiff_events::Recorder::new(client.clone(), "node-controller", None);
    let period = (grace / 8).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut seen: HashMap<String, Seen> = HashMap::new();
    loop {
        if let Err(e) = pass(&client, &recorder, grace, &mut seen).await {
            warn!(error = %e, "monitoring nodes");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

async fn pass(
    client: &Client,
    recorder: &skiff_events::Recorder,
    grace: Duration,
    seen: &mut HashMap<String, Seen>,
) -> Result<(), kube::Error> {
    let nodes_api: Api<Node> = Api::all(client.clone());
    let nodes = nodes_api.list(&ListParams::default()).await?.items;
    let leases: HashMap<String, String> =
        Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|l| {
                let renewed = l.spec?.renew_time?;
                Some((
                    l.metadata.name?,
                    skiff_core::time::format_micro_time(renewed.0),
                ))
            })
            .collect();
    let now = Instant::now();
    seen.retain(|name, _| nodes.iter().any(|n| n.name_any() == *name));
    for node in nodes {
        let name = node.name_any();
        let beats = (
            leases.get(&name).cloned(),
            condition(&node, "Ready")
                .and_then(|c| c.last_heartbeat_time.as_ref())
                .map(|t| skiff_core::time::format_time(t.0)),
        );
        // A node first seen gets the whole grace period from now.
        let entry = seen.entry(name.clone()).or_insert_with(|| Seen {
            beats: beats.clone(),
            at: now,
        });
        if entry.beats != beats {
            entry.beats = beats;
            entry.at = now;
        }
        let stale = now.duration_since(entry.at) > grace;
        let wall = jiff::Timestamp::now();
        let mut node = node;
        if stale && let Some(conditions) = unknown_conditions(&node, wall) {
            info!(node = %name, "no heartbeat within the grace period; its status is now Unknown");
            let patch = json!({"status": {"conditions": conditions}});
            node = nodes_api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
            recorder
                .publish(
                    &node.object_ref(&()),
                    Kind::Normal,
                    "NodeNotReady",
                    format!("Node {name} status is now: NodeNotReady"),
                )
                .await;
            mark_pods_not_ready(client, &name).await?;
        }
        let taints = taints_for(&node, wall);
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if taints != current {
            info!(node = %name, ?taints, "tainting the node for its conditions");
            // The resourceVersion makes it a compare-and-swap: a concurrent change wins,
            // and the next pass sees it.
            let patch = json!({
                "metadata": {"resourceVersion": node.resource_version()},
                "spec": {"taints": if taints.is_empty() { Value::Null } else { json!(taints) }},
            });
            match nodes_api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Sets the Ready condition of the node's pods to False: their node can't say otherwise.
async fn mark_pods_not_ready(client: &Client, node: &str) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?
        .items;
    let now = skiff_core::time::format_time(jiff::Timestamp::now());
    for pod in on_node {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        if ready.is_none_or(|c| c.status == "False") {
            continue;
        }
        let patch = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": now},
        ]}});
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// When a pod is to be evicted from a node with these taints.
#[derive(Debug, PartialEq)]
pub enum Eviction {
    /// It tolerates every NoExecute taint for good.
    Never,
    /// Now: a NoExecute taint it does not tolerate, or its toleration ran out.
    Now,
    /// After this long.
    After(Duration),
}

/// The eviction rule: every NoExecute taint needs a toleration; the shortest
/// `tolerationSeconds` among them, counted from when its taint was added, is how long the
/// pod may stay.
pub fn eviction(tolerations: &[Toleration], taints: &[Taint], now: jiff::Timestamp) -> Eviction {
    let mut deadline: Option<jiff::Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Eviction::Now;
        }
        // Tolerated for good by one of them: this taint sets no deadline.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let seconds = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let added = taint.time_added.as_ref().map_or(now, |t| t.0);
        let at = added + jiff::SignedDuration::from_secs(seconds);
        deadline = Some(deadline.map_or(at, |d| d.min(at)));
    }
    match deadline {
        None => Eviction::Never,
        Some(at) if at <= now => Eviction::Now,
        Some(at) => Eviction::After(now.duration_until(at).unsigned_abs()),
    }
}

/// Runs the taint eviction controller until `shutdown`: a pass a second over the nodes
/// with NoExecute taints.
pub async fn run_evictions(client: Client, shutdown: CancellationToken) {
    let recorder = skiff_events::Recorder::new(client.clone(), "taint-eviction-controller", None);
    loop {
        if let Err(e) = evict_pass(&client, &recorder).await {
            warn!(error = %e, "evicting pods from tainted nodes");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn evict_pass(client: &Client, recorder: &skiff_events::Recorder) -> Result<(), kube::Error> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let now = jiff::Timestamp::now();
    for node in nodes {
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if !taints.iter().any(|t| t.effect == "NoExecute") {
            continue;
        }
        let name = node.name_any();
        let pods = Api::<Pod>::all(client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
            .await?
            .items;
        for pod in pods {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if pod.metadata.deletion_timestamp.is_some()
                || matches!(phase, Some("Succeeded" | "Failed"))
            {
                continue;
            }
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            if eviction(&tolerations, &taints, now) == Eviction::Now {
                evict(client, recorder, &pod).await?;
            }
        }
    }
    Ok(())
}

async fn evict(
    client: &Client,
    recorder: &skiff_events::Recorder,
    pod: &Pod,
) -> Result<(), kube::Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    info!(pod = %name, %namespace, "evicting for a NoExecute taint");
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let condition = json!({"status": {"conditions": [{
        "type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
        "message": "Taint manager: deleting due to NoExecute taint",
        "lastTransitionTime": skiff_core::time::format_time(jiff::Timestamp::now()),
    }]}});
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let done = async {
        api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(condition))
            .await?;
        recorder
            .publish(
                &pod.object_ref(&()),
                Kind::Normal,
                "TaintManagerEviction",
                format!("Marking for deletion Pod {namespace}/{name}"),
            )
            .await;
        api.delete(&name, &params).await
    };
    match done.await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(conditions: Value, spec: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": spec,
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn keys(taints: &[Taint]) -> Vec<String> {
        taints
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect()
    }

    #[test]
    fn taints_follow_conditions_and_the_cordon() {
        let now = at("2026-12-05T10:00:00Z");
        let ready = node(json!([{"type": "Ready", "status": "True"}]), json!({}));
        assert!(taints_for(&ready, now).is_empty());
        let unknown = node(
            json!([{"type": "Ready", "status": "Unknown"}]),
            json!({"unschedulable": true, "taints": [{"key": "team", "value": "a", "effect": "NoSchedule"}]}),
        );
        let taints = taints_for(&unknown, now);
        assert_eq!(
            keys(&taints),
            [
                "team:NoSchedule",
                "node.kubernetes.io/unreachable:NoSchedule",
                "node.kubernetes.io/unreachable:NoExecute",
                "node.kubernetes.io/unschedulable:NoSchedule"
            ]
        );
        assert_eq!(taints[2].time_added, Some(Time(now)));
        // Back to Ready: the owned taints go, others stay; an existing taint keeps its time.
        let back = node(
            json!([{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "True"}]),
            json!({"taints": taints}),
        );
        assert_eq!(
            keys(&taints_for(&back, now)),
            [
                "team:NoSchedule",
                "node.kubernetes.io/disk-pressure:NoSchedule"
            ]
        );
        let later = node(
            json!([{"type": "Ready", "status": "Unknown"}]),
            json!({"taints": taints}),
        );
        assert_eq!(
            taints_for(&later, at("2026-12-05T11:00:00Z"))[2].time_added,
            Some(Time(now))
        );
    }

    #[test]
    fn a_silent_node_goes_unknown_once() {
        let now = at("2026-12-05T10:00:00Z");
        let n = node(
            json!([{"type": "Ready", "status": "True", "reason": "KubeletReady"}]),
            json!({}),
        );
        let conditions = unknown_conditions(&n, now).unwrap();
        assert_eq!(conditions.len(), 4);
        assert_eq!(conditions[0]["status"], "Unknown");
        assert_eq!(conditions[0]["reason"], "NodeStatusUnknown");
        assert_eq!(conditions[1]["reason"], "NodeStatusNeverUpdated");
        let unknown = node(json!(conditions), json!({}));
        assert_eq!(unknown_conditions(&unknown, now), None);
    }

    #[test]
    fn pods_are_evicted_when_their_tolerations_run_out() {
        let now = at("2026-12-05T10:01:00Z");
        let taints: Vec<Taint> = serde_json::from_value(json!([
            {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "2026-12-05T10:00:00Z"},
            {"key": UNREACHABLE, "effect": "NoSchedule"},
        ]))
        .unwrap();
        let tol = |v: Value| -> Vec<Toleration> { serde_json::from_value(v).unwrap() };
        assert_eq!(eviction(&[], &taints, now), Eviction::Now);
        let default = tol(
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]),
        );
        assert_eq!(
            eviction(&default, &taints, now),
            Eviction::After(Duration::from_secs(240))
        );
        assert_eq!(
            eviction(&default, &taints, at("2026-12-05T10:05:00Z")),
            Eviction::Now
        );
        let forever = tol(json!([{"operator": "Exists"}]));
        assert_eq!(eviction(&forever, &taints, now), Eviction::Never);
        let short =
            tol(json!([{"key": UNREACHABLE, "operator": "Exists", "tolerationSeconds": 30}]));
        assert_eq!(eviction(&short, &taints, now), Eviction::Now);
        assert_eq!(
            eviction(&[], &taints[1..], now),
            Eviction::Never,
            "NoSchedule evicts nothing"
        );
    }
}
