//! Deployments: rollouts of a pod template through ReplicaSets (kube-controller-manager's
//! deployment controller, whose rules this follows step by step).
//!
//! - Each template gets a ReplicaSet named `<deployment>-<pod-template-hash>`, the hash
//!   also in its selector and pods' labels; the one whose template equals the
//!   deployment's (the hash aside) is the new one, the others are old. A rollback (`kubectl
//!   rollout undo` writes an old template back) makes an old ReplicaSet new again.
//! - Revisions: the new ReplicaSet carries `deployment.kubernetes.io/revision` one above
//!   the old ones' (a reused one keeps its earlier numbers in `revision-history`), and the
//!   deployment carries its new ReplicaSet's revision. `revisionHistoryLimit` (10) old,
//!   scaled-down ReplicaSets are kept for rollbacks; older ones are deleted.
//! - RollingUpdate: the new ReplicaSet grows while all pods stay within `replicas +
//!   maxSurge`; old ones shrink (unavailable pods first) while the available pods stay at
//!   `replicas - maxUnavailable` or more (25% and 25% by default, percentages of replicas
//!   rounded up for the surge and down for unavailability). Recreate: the old ReplicaSets
//!   go to zero, their pods go, then the new one is scaled up.
//! - Scaling during a rollout splits the change among the ReplicaSets in proportion to
//!   their size (their `max-replicas` annotation records the total they were sized for).
//! - A paused deployment is only scaled. The status counts the pods, the updated, ready,
//!   available and unavailable ones; the `Available` condition follows the minimum
//!   availability, `Progressing` the rollout, up to `ProgressDeadlineExceeded` when it
//!   made no progress for `progressDeadlineSeconds`.
//! - Scaling a ReplicaSet is an event (`ScalingReplicaSet`), as in Kubernetes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource as _, ResourceExt as _};
use serde_json::{Value, json};
use skiff_events::Kind;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info_span, warn};

use crate::history;
use crate::owners::controller_of;

/// The name events are reported under.
const CONTROLLER: &str = "deployment-controller";
/// The label (and selector) that tells a deployment's ReplicaSets apart.
pub const HASH_LABEL: &str = "pod-template-hash";
/// A ReplicaSet's (and the deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The revisions a reused ReplicaSet had before.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The deployment's replicas when a ReplicaSet was last sized.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// The deployment's replicas plus surge when a ReplicaSet was last sized.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Annotations of a deployment its ReplicaSets don't copy.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// Why a deployment could not be synced this time (it is retried).
#[derive(Debug, thiserror::Error)]
#[error("{what} for deployment {namespace}/{name}")]
pub struct Error {
    namespace: String,
    name: String,
    what: &'static str,
    #[source]
    source: kube::Error,
}

struct Ctx {
    client: Client,
    recorder: skiff_events::Recorder,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let sets: Api<ReplicaSet> = Api::all(client.clone());
    let recorder = skiff_events::Recorder::new(client.clone(), CONTROLLER, None);
    let ctx = Arc::new(Ctx { client, recorder });
    Controller::new(deployments, watcher::Config::default())
        .owns(sets, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_d: Arc<Deployment>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    warn!(
        error = err as &dyn std::error::Error,
        "syncing a deployment"
    );
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let span = info_span!("reconcile", deployment = %d.name_any(), namespace = d.namespace().unwrap_or_default());
    Sync::new(&d, &ctx).run().instrument(span).await
}

/// Resolves `maxSurge` or `maxUnavailable` against `replicas`: an absolute number, or a
/// percentage rounded up (surge) or down (unavailability).
pub fn resolve(value: Option<&IntOrString>, default: &str, replicas: i32, round_up: bool) -> i32 {
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => percent(s, replicas, round_up),
        None => percent(default, replicas, round_up),
    }
}

fn percent(s: &str, replicas: i32, round_up: bool) -> i32 {
    let p: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
    let scaled = p * replicas as i64;
    (if round_up {
        (scaled + 99) / 100
    } else {
        scaled / 100
    }) as i32
}

/// `(maxSurge, maxUnavailable)` of a rolling update; both zero is read as an
/// unavailability of one, as Kubernetes reads it.
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.as_ref();
    let replicas = replicas_of(d);
    let rolling = spec
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    if !is_rolling(d) {
        return (0, 0);
    }
    let surge = resolve(
        rolling.and_then(|r| r.max_surge.as_ref()),
        "25%",
        replicas,
        true,
    );
    let mut unavailable = resolve(
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        "25%",
        replicas,
        false,
    )
    .min(replicas);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

fn replicas_of(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// A template as JSON without its pod-template-hash label, in canonical form (see
/// [`history::canonical`]), so two templates that mean the same compare and hash the same.
fn canonical(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
    }
    history::canonical(t)
}

/// The pod-template-hash of a template: [`history::hash`] of its canonical form.
pub fn template_hash(template: &PodTemplateSpec, collisions: Option<i32>) -> String {
    history::hash(&canonical(template), collisions)
}

/// How many replicas the new ReplicaSet may have now in a rolling update: up to the
/// deployment's, while all ReplicaSets together stay within `replicas + maxSurge`.
pub fn new_rs_replicas(replicas: i32, surge: i32, all_replicas: i32, new_replicas: i32) -> i32 {
    let max_total = replicas + surge;
    if all_replicas >= max_total {
        return new_replicas;
    }
    let up = (max_total - all_replicas)
        .min(replicas - new_replicas)
        .max(0);
    new_replicas + up
}

/// One sync of one deployment.
struct Sync<'a> {
    d: &'a Deployment,
    /// The deployment's template, canonical: what a current ReplicaSet's equals.
    want: Value,
    ctx: &'a Ctx,
    name: String,
    namespace: String,
    sets: Api<ReplicaSet>,
}

impl<'a> Sync<'a> {
    fn new(d: &'a Deployment, ctx: &'a Ctx) -> Self {
        let namespace = d.namespace().unwrap_or_default();
        Sync {
            d,
            want: canonical(
                &d.spec
                    .as_ref()
                    .map(|s| s.template.clone())
                    .unwrap_or_default(),
            ),
            ctx,
            name: d.name_any(),
            sets: Api::namespaced(ctx.client.clone(), &namespace),
            namespace,
        }
    }

    fn error(&self, what: &'static str) -> impl FnOnce(kube::Error) -> Error + use<> {
        let (namespace, name) = (self.namespace.clone(), self.name.clone());
        move |source| Error {
            namespace,
            name,
            what,
            source,
        }
    }

    async fn run(self) -> Result<Action, Error> {
        if self.d.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let uid = self.d.uid().unwrap_or_default();
        let mut all: Vec<ReplicaSet> = self
            .sets
            .list(&ListParams::default())
            .await
            .map_err(self.error("listing replicasets"))?
            .items
            .into_iter()
            .filter(|rs| controller_of(&rs.metadata.owner_references).is_some_and(|o| o.uid == uid))
            .collect();
        // Oldest first: the order old ReplicaSets are scaled down in.
        all.sort_by_key(|rs| {
            (
                rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
                rs.name_any(),
            )
        });
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        let scaling = all.iter().any(|rs| {
            rs_replicas(rs) > 0
                && rs
                    .annotations()
                    .get(DESIRED_REPLICAS)
                    .and_then(|v| v.parse::<i32>().ok())
                    != Some(replicas_of(self.d))
        });
        let mut note = None;
        if paused || scaling {
            let new = self.new_rs(&mut all, false, &mut note).await?;
            self.scale(&mut all, new).await?;
        } else if is_rolling(self.d) {
            let new = self.new_rs(&mut all, true, &mut note).await?;
            self.rolling(&mut all, new).await?;
        } else {
            self.recreate(&mut all, &mut note).await?;
        }
        let new = all.iter().position(|rs| self.is_current(rs));
        if new.is_some() && !paused {
            self.cleanup(&all, new).await?;
        }
        self.status(&all, new, note).await
    }

    /// Whether `rs` runs the deployment's template (the new ReplicaSet), not an old one.
    fn is_current(&self, rs: &ReplicaSet) -> bool {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| canonical(t) == self.want)
    }

    async fn patch_rs(
        &self,
        rs: &ReplicaSet,
        patch: Value,
        what: &'static str,
    ) -> Result<ReplicaSet, Error> {
        self.sets
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(self.error(what))
    }

    /// The new ReplicaSet's index in `all`, found (its revision brought up to date) or,
    /// with `create`, made.
    async fn new_rs(
        &self,
        all: &mut Vec<ReplicaSet>,
        create: bool,
        note: &mut Option<(&'static str, String)>,
    ) -> Result<Option<usize>, Error> {
        let found = all.iter().position(|rs| self.is_current(rs));
        let max_old = all
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != found)
            .map(|(_, rs)| revision_of(rs))
            .max()
            .unwrap_or(0);
        let revision = max_old + 1;
        if let Some(i) = found {
            let rs = &all[i];
            let mut annotations = json!({});
            let current = revision_of(rs);
            if current < revision {
                annotations[REVISION] = json!(revision.to_string());
                if current > 0 {
                    let mut history: Vec<String> = rs
                        .annotations()
                        .get(REVISION_HISTORY)
                        .map(|h| h.split(',').map(str::to_owned).collect())
                        .unwrap_or_default();
                    history.push(current.to_string());
                    annotations[REVISION_HISTORY] = json!(history.join(","));
                }
            }
            for (k, v) in self.copied_annotations() {
                if rs.annotations().get(&k) != Some(&v) {
                    annotations[k] = json!(v);
                }
            }
            let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let stale_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds) != min_ready;
            if annotations.as_object().is_some_and(|a| !a.is_empty()) || stale_min_ready {
                let patch = json!({
                    "metadata": {"annotations": annotations},
                    "spec": {"minReadySeconds": min_ready},
                });
                all[i] = self
                    .patch_rs(rs, patch, "updating the new replicaset")
                    .await?;
            }
            self.set_revision(&all[i]).await?;
            if note.is_none() {
                *note = Some((
                    "FoundNewReplicaSet",
                    format!("Found new replica set \"{}\"", all[i].name_any()),
                ));
            }
            return Ok(Some(i));
        }
        if !create {
            return Ok(None);
        }
        let mut collisions = self.d.status.as_ref().and_then(|s| s.collision_count);
        loop {
            let hash = history::hash(&self.want, collisions);
            let rs = self.rs_for(&hash, revision, all);
            match self.sets.create(&PostParams::default(), &rs).await {
                Ok(made) => {
                    let replicas = rs_replicas(&made);
                    self.event(
                        Kind::Normal,
                        "ScalingReplicaSet",
                        format!(
                            "Scaled up replica set {} from 0 to {replicas}",
                            made.name_any()
                        ),
                    )
                    .await;
                    *note = Some((
                        "NewReplicaSetCreated",
                        format!("Created new replica set \"{}\"", made.name_any()),
                    ));
                    self.set_revision(&made).await?;
                    if collisions != self.d.status.as_ref().and_then(|s| s.collision_count) {
                        let patch = json!({"status": {"collisionCount": collisions}});
                        Api::<Deployment>::namespaced(self.ctx.client.clone(), &self.namespace)
                            .patch_status(
                                &self.name,
                                &PatchParams::default(),
                                &Patch::Merge(&patch),
                            )
                            .await
                            .map_err(self.error("recording a hash collision"))?;
                    }
                    all.push(made);
                    return Ok(Some(all.len() - 1));
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // Taken by a ReplicaSet with another template: another hash.
                    collisions = Some(collisions.unwrap_or(0) + 1);
                    if collisions > Some(100) {
                        return Err(self.error("naming the new replicaset")(kube::Error::Api(s)));
                    }
                }
                Err(e) => return Err(self.error("creating the new replicaset")(e)),
            }
        }
    }

    fn copied_annotations(&self) -> BTreeMap<String, String> {
        self.d
            .annotations()
            .iter()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The deployment's revision annotation follows its new ReplicaSet's.
    async fn set_revision(&self, rs: &ReplicaSet) -> Result<(), Error> {
        let revision = revision_of(rs).to_string();
        if self.d.annotations().get(REVISION) == Some(&revision) {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
        Api::<Deployment>::namespaced(self.ctx.client.clone(), &self.namespace)
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(self.error("recording the revision"))?;
        Ok(())
    }

    /// A new ReplicaSet for the template, sized as the strategy allows.
    fn rs_for(&self, hash: &str, revision: i64, all: &[ReplicaSet]) -> ReplicaSet {
        let spec = self.d.spec.clone().unwrap_or_default();
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.into());
        let mut selector: LabelSelector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.into());
        let replicas = replicas_of(self.d);
        let (surge, _) = surge_and_unavailable(self.d);
        let size = if is_rolling(self.d) {
            new_rs_replicas(replicas, surge, all.iter().map(rs_replicas).sum(), 0)
        } else {
            replicas
        };
        let mut annotations = self.copied_annotations();
        annotations.insert(REVISION.into(), revision.to_string());
        annotations.insert(DESIRED_REPLICAS.into(), replicas.to_string());
        annotations.insert(MAX_REPLICAS.into(), (replicas + surge).to_string());
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{}-{hash}", self.name)),
                namespace: Some(self.namespace.clone()),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                annotations: Some(annotations),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: self.name.clone(),
                    uid: self.d.uid().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
                replicas: Some(size),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        }
    }

    /// Sets one ReplicaSet's size (and the annotations that record what it was sized
    /// for); an event says so. Returns whether it changed.
    async fn scale_rs(&self, all: &mut [ReplicaSet], i: usize, to: i32) -> Result<bool, Error> {
        let rs = &all[i];
        let from = rs_replicas(rs);
        let replicas = replicas_of(self.d);
        let (surge, _) = surge_and_unavailable(self.d);
        let annotated = rs.annotations().get(DESIRED_REPLICAS) == Some(&replicas.to_string())
            && rs.annotations().get(MAX_REPLICAS) == Some(&(replicas + surge).to_string());
        if from == to && annotated {
            return Ok(false);
        }
        let patch = json!({
            "metadata": {"annotations": {
                DESIRED_REPLICAS: replicas.to_string(),
                MAX_REPLICAS: (replicas + surge).to_string(),
            }},
            "spec": {"replicas": to},
        });
        all[i] = self.patch_rs(rs, patch, "scaling a replicaset").await?;
        if from != to {
            let direction = if to > from { "up" } else { "down" };
            self.event(
                Kind::Normal,
                "ScalingReplicaSet",
                format!(
                    "Scaled {direction} replica set {} from {from} to {to}",
                    all[i].name_any()
                ),
            )
            .await;
        }
        Ok(from != to)
    }

    async fn event(&self, kind: Kind, reason: &str, message: String) {
        self.ctx
            .recorder
            .publish(&self.d.object_ref(&()), kind, reason, message)
            .await;
    }

    /// A rolling update's step: grow the new ReplicaSet, else shrink old ones.
    async fn rolling(&self, all: &mut [ReplicaSet], new: Option<usize>) -> Result<(), Error> {
        let Some(new) = new else { return Ok(()) };
        let replicas = replicas_of(self.d);
        let (surge, unavailable) = surge_and_unavailable(self.d);
        // The new ReplicaSet.
        let new_size = rs_replicas(&all[new]);
        if new_size > replicas {
            self.scale_rs(all, new, replicas).await?;
            return Ok(());
        }
        let total: i32 = all.iter().map(rs_replicas).sum();
        let grown = new_rs_replicas(replicas, surge, total, new_size);
        if self.scale_rs(all, new, grown).await? {
            return Ok(());
        }
        // The old ones.
        let old: Vec<usize> = (0..all.len()).filter(|i| *i != new).collect();
        if old.iter().all(|i| rs_replicas(&all[*i]) == 0) {
            return Ok(());
        }
        let total: i32 = all.iter().map(rs_replicas).sum();
        let min_available = replicas - unavailable;
        let new_unavailable = rs_replicas(&all[new]) - rs_available(&all[new]);
        let max_scaled_down = total - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(());
        }
        // Unavailable pods of old ReplicaSets go first: removing them costs no availability.
        let mut scaled_down = 0;
        for &i in &old {
            let size = rs_replicas(&all[i]);
            let unhealthy = size - rs_available(&all[i]);
            if size == 0 || unhealthy <= 0 || scaled_down >= max_scaled_down {
                continue;
            }
            let by = unhealthy.min(max_scaled_down - scaled_down);
            self.scale_rs(all, i, size - by).await?;
            scaled_down += by;
        }
        // Then available ones, as long as enough stay available.
        let available: i32 = all.iter().map(rs_available).sum();
        if available > min_available {
            let mut budget = available - min_available;
            for &i in &old {
                let size = rs_replicas(&all[i]);
                if size == 0 || budget == 0 {
                    continue;
                }
                let by = size.min(budget);
                self.scale_rs(all, i, size - by).await?;
                budget -= by;
            }
        }
        Ok(())
    }

    /// Recreate: old ReplicaSets to zero, their pods gone, then the new one up.
    async fn recreate(
        &self,
        all: &mut Vec<ReplicaSet>,
        note: &mut Option<(&'static str, String)>,
    ) -> Result<(), Error> {
        let mut scaled = false;
        for i in 0..all.len() {
            if !self.is_current(&all[i]) && rs_replicas(&all[i]) > 0 {
                scaled |= self.scale_rs(all, i, 0).await?;
            }
        }
        if scaled {
            return Ok(());
        }
        // Old pods still running (or terminating) hold the new ones back.
        let old_uids: Vec<String> = all
            .iter()
            .filter(|rs| !self.is_current(rs))
            .filter_map(|rs| rs.uid())
            .collect();
        if !old_uids.is_empty() {
            let pods = Api::<Pod>::namespaced(self.ctx.client.clone(), &self.namespace)
                .list(&ListParams::default())
                .await
                .map_err(self.error("listing pods"))?;
            let running = pods.items.iter().any(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                controller_of(&p.metadata.owner_references)
                    .is_some_and(|o| old_uids.contains(&o.uid))
                    && !matches!(phase, Some("Succeeded" | "Failed"))
            });
            if running {
                return Ok(());
            }
        }
        if let Some(i) = self.new_rs(all, true, note).await? {
            self.scale_rs(all, i, replicas_of(self.d)).await?;
        }
        Ok(())
    }

    /// A scaling event (or a paused deployment): the replicas are shared out among the
    /// active ReplicaSets in proportion to their sizes.
    async fn scale(&self, all: &mut [ReplicaSet], new: Option<usize>) -> Result<(), Error> {
        let replicas = replicas_of(self.d);
        let active: Vec<usize> = (0..all.len())
            .filter(|i| rs_replicas(&all[*i]) > 0)
            .collect();
        // One active ReplicaSet (or none: the newest) takes all.
        let only = match active.as_slice() {
            [one] => Some(*one),
            [] => new.or(all.len().checked_sub(1)),
            _ => None,
        };
        if let Some(i) = only {
            self.scale_rs(all, i, replicas).await?;
            return Ok(());
        }
        // The new ReplicaSet saturated: the old ones go.
        if let Some(n) = new
            && rs_replicas(&all[n]) == replicas
            && rs_available(&all[n]) == replicas
        {
            for i in active.into_iter().filter(|i| *i != n) {
                self.scale_rs(all, i, 0).await?;
            }
            return Ok(());
        }
        if !is_rolling(self.d) {
            return Ok(());
        }
        let (surge, _) = surge_and_unavailable(self.d);
        let sizes: Vec<(i32, i32, Option<jiff::Timestamp>)> = active
            .iter()
            .map(|i| {
                let rs = &all[*i];
                let annotated = rs
                    .annotations()
                    .get(MAX_REPLICAS)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| {
                        self.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0)
                    });
                (
                    rs_replicas(rs),
                    annotated,
                    rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
                )
            })
            .collect();
        let target = proportional(replicas, surge, &sizes);
        for (k, i) in active.into_iter().enumerate() {
            self.scale_rs(all, i, target[k]).await?;
        }
        Ok(())
    }

    /// Old ReplicaSets beyond `revisionHistoryLimit` that have no pods are deleted.
    async fn cleanup(&self, all: &[ReplicaSet], new: Option<usize>) -> Result<(), Error> {
        let limit = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let mut idle: Vec<&ReplicaSet> = all
            .iter()
            .enumerate()
            .filter(|(i, rs)| {
                Some(*i) != new
                    && rs_replicas(rs) == 0
                    && rs.status.as_ref().map_or(0, |s| s.replicas) == 0
                    && rs.metadata.deletion_timestamp.is_none()
            })
            .map(|(_, rs)| rs)
            .collect();
        if idle.len() <= limit {
            return Ok(());
        }
        idle.sort_by_key(|rs| revision_of(rs));
        for rs in &idle[..idle.len() - limit] {
            match self
                .sets
                .delete(&rs.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(self.error("deleting an old replicaset")(e)),
            }
        }
        Ok(())
    }

    /// The status: counts from the ReplicaSets, the Available and Progressing conditions.
    async fn status(
        &self,
        all: &[ReplicaSet],
        new: Option<usize>,
        note: Option<(&'static str, String)>,
    ) -> Result<Action, Error> {
        let replicas = replicas_of(self.d);
        let (_, unavailable) = surge_and_unavailable(self.d);
        let sum = |f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<i32>| -> i32 {
            all.iter()
                .filter_map(|rs| rs.status.as_ref().and_then(f))
                .sum()
        };
        let total = sum(|s| Some(s.replicas));
        let ready = sum(|s| s.ready_replicas);
        let available = sum(|s| s.available_replicas);
        let updated = new
            .and_then(|i| all[i].status.as_ref())
            .map_or(0, |s| s.replicas);
        let old_total: i32 = all
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new)
            .filter_map(|(_, rs)| rs.status.as_ref().map(|s| s.replicas))
            .sum();
        let now = jiff::Timestamp::now();
        let old = self.d.status.clone().unwrap_or_default();
        let mut conditions: Vec<DeploymentCondition> = old.conditions.clone().unwrap_or_default();
        let set = |conditions: &mut Vec<DeploymentCondition>,
                   type_: &str,
                   status: &str,
                   reason: &str,
                   message: String,
                   touch: bool| {
            let existing = conditions.iter_mut().find(|c| c.type_ == type_);
            match existing {
                Some(c)
                    if c.status == status
                        && c.reason.as_deref() == Some(reason)
                        && c.message.as_deref() == Some(&message) =>
                {
                    if touch {
                        c.last_update_time =
                            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
                    }
                }
                Some(c) => {
                    if c.status != status {
                        c.last_transition_time =
                            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
                    }
                    c.status = status.into();
                    c.reason = Some(reason.into());
                    c.message = Some(message);
                    c.last_update_time =
                        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
                }
                None => conditions.push(DeploymentCondition {
                    type_: type_.into(),
                    status: status.into(),
                    reason: Some(reason.into()),
                    message: Some(message),
                    last_update_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        now,
                    )),
                    last_transition_time: Some(
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
                    ),
                }),
            }
        };
        if available >= replicas - unavailable {
            set(
                &mut conditions,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                false,
            );
        } else {
            set(
                &mut conditions,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                false,
            );
        }
        let generation = self.d.metadata.generation.unwrap_or(0);
        let complete = updated == replicas && total == replicas && available == replicas;
        let deadline = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(600);
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        let rs_name = new.map(|i| all[i].name_any()).unwrap_or_default();
        let mut requeue = None;
        if paused {
            set(
                &mut conditions,
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                false,
            );
        } else if let Some((reason, message)) = note.filter(|(r, _)| *r == "NewReplicaSetCreated") {
            set(
                &mut conditions,
                "Progressing",
                "True",
                reason,
                message,
                true,
            );
        } else if complete && new.is_some() {
            set(
                &mut conditions,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                false,
            );
        } else if new.is_some() {
            let progressed = updated > old.updated_replicas.unwrap_or(0)
                || ready > old.ready_replicas.unwrap_or(0)
                || available > old.available_replicas.unwrap_or(0)
                || old_total < old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
            let was_resumed = conditions.iter().any(|c| {
                c.type_ == "Progressing" && c.reason.as_deref() == Some("DeploymentPaused")
            });
            let last = conditions
                .iter()
                .find(|c| c.type_ == "Progressing")
                .and_then(|c| c.last_update_time.as_ref().map(|t| t.0));
            if progressed || last.is_none() || was_resumed {
                let reason = if was_resumed {
                    "DeploymentResumed"
                } else {
                    "ReplicaSetUpdated"
                };
                let message = if was_resumed {
                    "Deployment is resumed".to_owned()
                } else {
                    format!("ReplicaSet \"{rs_name}\" is progressing.")
                };
                set(
                    &mut conditions,
                    "Progressing",
                    "True",
                    reason,
                    message,
                    true,
                );
                requeue = Some(Duration::from_secs(deadline.max(0) as u64));
            } else if let Some(last) = last {
                let since = now.duration_since(last).unsigned_abs();
                let limit = Duration::from_secs(deadline.max(0) as u64);
                if since >= limit {
                    let message = format!("ReplicaSet \"{rs_name}\" has timed out progressing.");
                    set(
                        &mut conditions,
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        message.clone(),
                        false,
                    );
                    if old
                        .conditions
                        .iter()
                        .flatten()
                        .all(|c| c.reason.as_deref() != Some("ProgressDeadlineExceeded"))
                    {
                        self.event(Kind::Warning, "ProgressDeadlineExceeded", message)
                            .await;
                    }
                } else {
                    requeue = Some(limit - since + Duration::from_millis(100));
                }
            }
        }
        let status = json!({
            "observedGeneration": generation,
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": (replicas - available).max(0),
            "conditions": conditions,
        });
        let current = serde_json::to_value(&old).unwrap_or_default();
        let changed = status.as_object().into_iter().flatten().any(|(k, v)| {
            let have = current.get(k).cloned().unwrap_or(Value::Null);
            have != *v && !(have.is_null() && *v == 0)
        });
        if changed {
            Api::<Deployment>::namespaced(self.ctx.client.clone(), &self.namespace)
                .patch_status(
                    &self.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await
                .map_err(self.error("updating the status"))?;
        }
        Ok(match requeue {
            Some(after) => Action::requeue(after),
            None => Action::await_change(),
        })
    }
}

/// The sizes of active ReplicaSets after a scaling event: each `(replicas, the total it
/// was sized for, created)` grows or shrinks by its share of the change, newest first when
/// growing and oldest first when shrinking, and what rounding leaves over goes to the
/// first (the largest) one.
pub fn proportional(
    replicas: i32,
    surge: i32,
    sets: &[(i32, i32, Option<jiff::Timestamp>)],
) -> Vec<i32> {
    let current: i32 = sets.iter().map(|s| s.0).sum();
    let allowed = if replicas > 0 { replicas + surge } else { 0 };
    let to_add = allowed - current;
    let mut order: Vec<usize> = (0..sets.len()).collect();
    if to_add > 0 {
        order.sort_by(|a, b| {
            sets[*b]
                .0
                .cmp(&sets[*a].0)
                .then(sets[*b].2.cmp(&sets[*a].2))
        });
    } else {
        order.sort_by(|a, b| {
            sets[*b]
                .0
                .cmp(&sets[*a].0)
                .then(sets[*a].2.cmp(&sets[*b].2))
        });
    }
    let mut sizes: Vec<i32> = sets.iter().map(|s| s.0).collect();
    if to_add == 0 {
        return sizes;
    }
    let mut added = 0;
    for &i in &order {
        let (size, annotated, _) = sets[i];
        if size == 0 || added == to_add {
            continue;
        }
        let fraction = if replicas == 0 {
            -size
        } else if annotated > 0 {
            ((size as f64 * (replicas + surge) as f64) / annotated as f64).round() as i32 - size
        } else {
            0
        };
        let left = to_add - added;
        let share = if to_add > 0 {
            fraction.min(left)
        } else {
            fraction.max(left)
        };
        sizes[i] += share;
        added += share;
    }
    if let Some(&first) = order.first() {
        sizes[first] = (sizes[first] + to_add - added).max(0);
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_rounds_up_and_unavailability_down() {
        assert_eq!(resolve(None, "25%", 10, true), 3);
        assert_eq!(resolve(None, "25%", 10, false), 2);
        assert_eq!(resolve(Some(&IntOrString::Int(4)), "25%", 10, false), 4);
        assert_eq!(
            resolve(Some(&IntOrString::String("50%".into())), "25%", 3, true),
            2
        );
    }

    #[test]
    fn the_new_replicaset_grows_within_the_surge() {
        // 4 replicas, surge 1: 4 old + 0 new → new may have 1.
        assert_eq!(new_rs_replicas(4, 1, 4, 0), 1);
        // At the limit: no growth.
        assert_eq!(new_rs_replicas(4, 1, 5, 1), 1);
        // Never beyond the deployment's replicas.
        assert_eq!(new_rs_replicas(4, 10, 4, 3), 4);
    }

    #[test]
    fn template_hashes_ignore_the_hash_label_and_follow_the_template() {
        let mut t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "a"}]},
        }))
        .unwrap();
        let h = template_hash(&t, None);
        assert!(
            h.len() >= 6
                && h.bytes()
                    .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
        t.metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(HASH_LABEL.into(), h.clone());
        assert_eq!(template_hash(&t, None), h);
        assert_ne!(template_hash(&t, Some(1)), h);
        t.spec.as_mut().unwrap().containers[0].image = Some("b".into());
        assert_ne!(template_hash(&t, None), h);
    }

    #[test]
    fn scaling_mid_rollout_is_shared_in_proportion() {
        // Kubernetes' example: 10 replicas, surge 3, mid-rollout 8 old + 5 new (sized for
        // 13); scaled to 15 (max 18): +5 shared 8:5 → 11 and 7.
        let t0 = "2026-01-01T00:00:00Z".parse().ok();
        let t1 = "2026-01-01T00:01:00Z".parse().ok();
        let sizes = proportional(15, 3, &[(8, 13, t0), (5, 13, t1)]);
        assert_eq!(sizes.iter().sum::<i32>(), 18);
        assert_eq!(sizes, vec![11, 7]);
        // Down to 0: everything goes.
        assert_eq!(proportional(0, 0, &[(8, 13, t0), (5, 13, t1)]), vec![0, 0]);
    }
}
