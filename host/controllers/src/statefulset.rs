//! StatefulSets: pods with a stable identity and their own storage (kube-controller-
//! manager's statefulset controller).
//!
//! - Pod `<set>-<ordinal>` for each ordinal from `spec.ordinals.start` on, with hostname its
//!   name and subdomain the `serviceName`, labelled with its name, index and revision. Each
//!   `volumeClaimTemplates` entry gives each pod its PersistentVolumeClaim
//!   `<claim>-<set>-<ordinal>`, made before the pod and kept after it (unless
//!   `persistentVolumeClaimRetentionPolicy` says Delete: then the claim is owned by the set,
//!   or by the pod that a scale-down removes).
//! - OrderedReady (the default): a pod is made only when all before it are running and
//!   ready, and the highest goes first when scaling down, one at a time while the rest are
//!   healthy. Parallel: all at once.
//! - Templates are ControllerRevisions (see [`crate::history`]); pods carry their revision's
//!   name in `controller-revision-hash`. RollingUpdate replaces pods from the highest
//!   ordinal down to `partition`, one at a time, each after the one above it is ready
//!   again; pods below the partition (and new ones there) keep the current revision.
//!   OnDelete waits for pods to be deleted. Failed pods are replaced.
//! - The status counts the pods (replicas, ready, available, current, updated) and names
//!   the current and update revisions; the update revision becomes current once every pod
//!   runs it and is ready.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::json;
use skiff_core::labels::Selector;
use skiff_events::Kind;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info_span, warn};

use crate::history::{self, REVISION_HASH};
use crate::pods::{Error, PodControl, ready_since};
use crate::replicaset::available;

/// The name events are reported under.
const CONTROLLER: &str = "statefulset-controller";
/// A StatefulSet pod's name, as a label (a Service can select one pod by it).
pub const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
/// A StatefulSet pod's ordinal, as a label.
pub const POD_INDEX: &str = "apps.kubernetes.io/pod-index";

struct Ctx {
    client: Client,
    recorder: skiff_events::Recorder,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let sets: Api<StatefulSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let recorder = skiff_events::Recorder::new(client.clone(), CONTROLLER, None);
    let ctx = Arc::new(Ctx { client, recorder });
    Controller::new(sets, watcher::Config::default())
        .owns(pods, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_set: Arc<StatefulSet>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    warn!(
        error = err as &dyn std::error::Error,
        "syncing a statefulset"
    );
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let span = info_span!("reconcile", statefulset = %set.name_any(), namespace = set.namespace().unwrap_or_default());
    sync(set, ctx).instrument(span).await
}

/// The ordinal in a pod's name `<set>-<ordinal>`, if it is one of the set's.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    // No sign and no leading zeros: only the names the set gives.
    if n.starts_with('+') || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok().filter(|n| *n >= 0)
}

fn running_and_ready(pod: &Pod) -> bool {
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    running && ready_since(pod).is_some() && pod.metadata.deletion_timestamp.is_none()
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

fn revision_of(pod: &Pod) -> Option<&String> {
    pod.labels().get(REVISION_HASH)
}

/// What to do with the set's pods this pass: pure, so the ordering rules are tested
/// without a cluster.
#[derive(Debug, Default, PartialEq)]
pub struct Steps {
    /// Ordinals to create (with the revision name each gets).
    pub create: Vec<(i32, String)>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// Of those, the ones removed by a scale-down (their claims may go with them).
    pub condemned: Vec<i32>,
}

/// How a set changes its pods: its policies and revisions.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// OrderedReady (not Parallel).
    pub ordered: bool,
    /// RollingUpdate (not OnDelete).
    pub rolling: bool,
    /// Ordinals below `start + partition` keep the current revision.
    pub partition: i32,
    /// The current revision's name.
    pub current: &'a str,
    /// The update revision's name.
    pub update: &'a str,
}

/// The rules: which pods to make and which to delete, given the pods by ordinal.
pub fn steps(pods: &BTreeMap<i32, &Pod>, range: std::ops::Range<i32>, rules: Rules<'_>) -> Steps {
    let Rules {
        ordered,
        rolling,
        partition,
        current,
        update,
    } = rules;
    let mut steps = Steps::default();
    let healthy = |p: &Pod| running_and_ready(p);
    // Failed pods go first; they are made again on a later pass.
    for (&i, pod) in pods {
        if range.contains(&i) && finished(pod) && pod.metadata.deletion_timestamp.is_none() {
            steps.delete.push(pod.name_any());
            if ordered {
                return steps;
            }
        }
    }
    let revision_for = |i: i32| {
        if rolling && i < range.start + partition {
            current.to_owned()
        } else {
            update.to_owned()
        }
    };
    for i in range.clone() {
        match pods.get(&i) {
            None => {
                steps.create.push((i, revision_for(i)));
                if ordered {
                    return steps;
                }
            }
            Some(p) if ordered && !healthy(p) => return steps,
            Some(_) => {}
        }
    }
    // Scale-down: the highest first.
    let condemned: Vec<(&i32, &&Pod)> = pods
        .iter()
        .rev()
        .filter(|(i, _)| !range.contains(i))
        .collect();
    for (&i, pod) in condemned {
        if pod.metadata.deletion_timestamp.is_some() {
            if ordered {
                return steps;
            }
            continue;
        }
        if ordered
            && pods
                .values()
                .any(|p| !healthy(p) && p.name_any() != pod.name_any())
        {
            return steps;
        }
        steps.delete.push(pod.name_any());
        steps.condemned.push(i);
        if ordered {
            return steps;
        }
    }
    if !rolling {
        return steps;
    }
    // Rolling update, from the top down to the partition, one pod at a time.
    for i in range.clone().rev() {
        if i < range.start + partition {
            break;
        }
        let Some(pod) = pods.get(&i) else { break };
        if revision_of(pod).map(String::as_str) != Some(update)
            && pod.metadata.deletion_timestamp.is_none()
        {
            steps.delete.push(pod.name_any());
            break;
        }
        if !healthy(pod) {
            break;
        }
    }
    steps
}

/// The claim name of a volume claim template for a pod.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

async fn sync(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let control = PodControl::new(ctx.client.clone(), &ctx.recorder, &*set, "apps/v1");
    let name = set.name_any();
    let namespace = set.namespace().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let selector = serde_json::to_value(&spec.selector).unwrap_or_default();
    let selector = Selector::from_label_selector(&selector)
        .map_err(|e| control.bad_selector(e.to_string()))?;
    let mine = control.claim(control.list().await?, &selector).await?;
    let old = set.status.clone().unwrap_or_default();

    let in_use: BTreeSet<String> = mine
        .iter()
        .filter_map(|p| {
            revision_of(p)
                .and_then(|r| r.strip_prefix(&format!("{name}-")))
                .map(str::to_owned)
        })
        .collect();
    let owner = history::Owner::new(
        &ctx.client,
        &namespace,
        &control.owner,
        &spec.template,
        set.annotations(),
        spec.revision_history_limit,
        old.collision_count,
    );
    let history = owner
        .sync(&history::data_of(&spec.template), &in_use)
        .await
        .map_err(control.error("recording the template's revision"))?;
    let update = history.name(&name);
    let current = old
        .current_revision
        .clone()
        .filter(|r| history.template(r).is_some())
        .unwrap_or_else(|| update.clone());

    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let range = start..start + replicas;
    let mut by_ordinal: BTreeMap<i32, &Pod> = BTreeMap::new();
    for pod in &mine {
        if let Some(i) = ordinal_of(&name, &pod.name_any()) {
            by_ordinal.insert(i, pod);
        }
    }
    let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let rolling = strategy
        .type_
        .as_deref()
        .is_none_or(|t| t == "RollingUpdate");
    let partition = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);
    let rules = Rules {
        ordered,
        rolling,
        partition,
        current: &current,
        update: &update,
    };
    let plan = steps(&by_ordinal, range.clone(), rules);

    let retention = spec
        .persistent_volume_claim_retention_policy
        .clone()
        .unwrap_or_default();
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    for ordinal in &plan.condemned {
        if retention.when_scaled.as_deref() == Some("Delete")
            && let Some(pod) = by_ordinal.get(ordinal)
        {
            // The claim goes with the pod (the garbage collector deletes it).
            let owner = OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod.name_any(),
                uid: pod.uid().unwrap_or_default(),
                controller: None,
                block_owner_deletion: None,
            };
            for t in spec.volume_claim_templates.iter().flatten() {
                let claim = claim_name(&t.name_any(), &name, *ordinal);
                let patch = json!({"metadata": {"ownerReferences": [owner]}});
                match claims_api
                    .patch(&claim, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(control.error("handing a claim to its pod")(e)),
                }
            }
        }
    }
    for pod_name in &plan.delete {
        if let Some(pod) = mine.iter().find(|p| p.name_any() == *pod_name) {
            control.delete(pod).await?;
        }
    }
    let mut failure = None;
    for (ordinal, revision) in &plan.create {
        let template = history
            .template(revision)
            .unwrap_or_else(|| spec.template.clone());
        let pod = stateful_pod(&control, &set, &template, *ordinal, revision);
        ensure_claims(&control, &claims_api, &set, *ordinal, &retention).await?;
        if let Err(message) = control.create(&pod).await {
            failure = Some(message);
            break;
        }
    }

    // The status, from the pods as they were found.
    let now = jiff::Timestamp::now();
    let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
    let live: Vec<&Pod> = mine
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !plan.delete.contains(&p.name_any()))
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| live.iter().filter(|p| f(p)).count() as i32;
    let ready = count(&|p| running_and_ready(p));
    let available_n = count(&|p| running_and_ready(p) && available(p, min_ready, now).is_ok());
    let current_n = count(&|p| revision_of(p) == Some(&current));
    let updated = count(&|p| revision_of(p) == Some(&update));
    let created = plan.create.len() as i32 * i32::from(failure.is_none());
    let mut status = json!({
        "replicas": live.len() as i32 + created,
        "readyReplicas": ready,
        "availableReplicas": available_n,
        "currentReplicas": current_n,
        "updatedReplicas": updated,
        "currentRevision": current,
        "updateRevision": update,
        "observedGeneration": set.metadata.generation,
        "collisionCount": history.collisions,
    });
    // The rollout is complete: the update revision is the current one.
    if updated == replicas && ready == replicas && live.len() as i32 == replicas {
        status["currentRevision"] = json!(update);
        status["currentReplicas"] = json!(updated);
    }
    let recheck = live
        .iter()
        .filter_map(|p| available(p, min_ready, now).err().flatten())
        .min();
    let was = serde_json::to_value(&set.status).unwrap_or_default();
    crate::status::write(&ctx.client, &*set, &was, status)
        .await
        .map_err(control.error("updating the status"))?;
    Ok(crate::status::next(failure.is_some(), recheck))
}

/// The set's pod for an ordinal, from the template of its revision.
fn stateful_pod(
    control: &PodControl<'_>,
    set: &StatefulSet,
    template: &PodTemplateSpec,
    ordinal: i32,
    revision: &str,
) -> Pod {
    let set_name = set.name_any();
    let spec = set.spec.clone().unwrap_or_default();
    let pod_name = format!("{set_name}-{ordinal}");
    let mut pod = control.pod_from(Some(template));
    pod.metadata.name = Some(pod_name.clone());
    let labels = pod.metadata.labels.get_or_insert_default();
    labels.insert(POD_NAME.into(), pod_name.clone());
    labels.insert(POD_INDEX.into(), ordinal.to_string());
    labels.insert(REVISION_HASH.into(), revision.into());
    if let Some(pod_spec) = pod.spec.as_mut() {
        pod_spec.hostname = Some(pod_name);
        if !spec.service_name.as_deref().unwrap_or_default().is_empty() {
            pod_spec.subdomain = spec.service_name.clone();
        }
        let volumes = pod_spec.volumes.get_or_insert_default();
        for t in spec.volume_claim_templates.iter().flatten() {
            let volume = Volume {
                name: t.name_any(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&t.name_any(), &set_name, ordinal),
                    read_only: None,
                }),
                ..Default::default()
            };
            volumes.retain(|v| v.name != volume.name);
            volumes.push(volume);
        }
    }
    pod
}

/// Makes the pod's claims that don't exist yet.
async fn ensure_claims(
    control: &PodControl<'_>,
    api: &Api<PersistentVolumeClaim>,
    set: &StatefulSet,
    ordinal: i32,
    retention: &k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy,
) -> Result<(), Error> {
    let spec = set.spec.clone().unwrap_or_default();
    let set_name = set.name_any();
    for t in spec.volume_claim_templates.iter().flatten() {
        let name = claim_name(&t.name_any(), &set_name, ordinal);
        if api
            .get_opt(&name)
            .await
            .map_err(control.error("reading a claim"))?
            .is_some()
        {
            continue;
        }
        let mut claim = t.clone();
        claim.metadata.name = Some(name.clone());
        claim.metadata.namespace = set.namespace();
        claim.status = None;
        let labels = claim.metadata.labels.get_or_insert_default();
        for (k, v) in spec.selector.match_labels.iter().flatten() {
            labels.insert(k.clone(), v.clone());
        }
        if retention.when_deleted.as_deref() == Some("Delete") {
            let mut owner = control.owner.clone();
            owner.controller = None;
            owner.block_owner_deletion = None;
            claim.metadata.owner_references = Some(vec![owner]);
        }
        let pod = format!("{set_name}-{ordinal}");
        match api.create(&PostParams::default(), &claim).await {
            Ok(_) => {
                control
                    .event(
                        Kind::Normal,
                        "SuccessfulCreate",
                        format!("create Claim {name} Pod {pod} in StatefulSet {set_name} success"),
                    )
                    .await;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                control
                    .event(
                        Kind::Warning,
                        "FailedCreate",
                        format!("create Claim {name} for Pod {pod} in StatefulSet {set_name} failed error: {e}"),
                    )
                    .await;
                return Err(control.error("creating a claim")(e));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, revision: &str, healthy: bool) -> Pod {
        let conditions = if healthy {
            json!([{"type": "Ready", "status": "True"}])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {REVISION_HASH: revision}},
            "status": {"phase": if healthy { "Running" } else { "Pending" }, "conditions": conditions},
        }))
        .unwrap()
    }

    fn run(pods: &[Pod], replicas: i32, ordered: bool, partition: i32) -> Steps {
        let by: BTreeMap<i32, &Pod> = pods
            .iter()
            .map(|p| (ordinal_of("web", &p.name_any()).unwrap(), p))
            .collect();
        let rules = Rules {
            ordered,
            rolling: true,
            partition,
            current: "web-old",
            update: "web-new",
        };
        steps(&by, 0..replicas, rules)
    }

    #[test]
    fn ordinals_come_from_names_the_set_gives() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        for other in ["web-01", "web--1", "web-x", "webs-1", "web-+1", "web"] {
            assert_eq!(ordinal_of("web", other), None, "{other}");
        }
    }

    #[test]
    fn ordered_pods_start_one_at_a_time_and_stop_from_the_top() {
        let s = run(&[], 3, true, 0);
        assert_eq!(s.create, [(0, "web-new".into())]);
        // web-0 not ready yet: nothing more.
        let s = run(&[pod("web-0", "web-new", false)], 3, true, 0);
        assert_eq!(s, Steps::default());
        let s = run(&[pod("web-0", "web-new", true)], 3, true, 0);
        assert_eq!(s.create, [(1, "web-new".into())]);
        // Parallel: all the missing at once.
        let s = run(&[pod("web-0", "web-new", false)], 3, false, 0);
        assert_eq!(s.create, [(1, "web-new".into()), (2, "web-new".into())]);
        // Scale 3 → 1: web-2 first, then web-1.
        let three = [
            pod("web-0", "web-new", true),
            pod("web-1", "web-new", true),
            pod("web-2", "web-new", true),
        ];
        let s = run(&three, 1, true, 0);
        assert_eq!((s.delete, s.condemned), (vec!["web-2".to_owned()], vec![2]));
        let s = run(&three, 1, false, 0);
        assert_eq!(s.delete, ["web-2", "web-1"]);
    }

    #[test]
    fn rolling_updates_go_down_to_the_partition_one_ready_pod_at_a_time() {
        let old = [
            pod("web-0", "web-old", true),
            pod("web-1", "web-old", true),
            pod("web-2", "web-old", true),
        ];
        assert_eq!(run(&old, 3, true, 0).delete, ["web-2"]);
        // web-2 came back new but isn't ready: wait.
        let mid = [
            pod("web-0", "web-old", true),
            pod("web-1", "web-old", true),
            pod("web-2", "web-new", false),
        ];
        assert_eq!(run(&mid, 3, true, 0), Steps::default());
        let next = [
            pod("web-0", "web-old", true),
            pod("web-1", "web-old", true),
            pod("web-2", "web-new", true),
        ];
        assert_eq!(run(&next, 3, true, 0).delete, ["web-1"]);
        // A partition of 2 keeps web-0 and web-1 old.
        assert!(run(&next, 3, true, 2).delete.is_empty());
        // A missing pod below the partition is made from the current revision.
        let gap = [pod("web-1", "web-old", true), pod("web-2", "web-new", true)];
        assert_eq!(run(&gap, 3, true, 2).create, [(0, "web-old".into())]);
    }
}
