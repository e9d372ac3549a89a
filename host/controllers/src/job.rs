//! Jobs: pods run to completion (kube-controller-manager's job controller), and finished
//! Jobs deleted after their `ttlSecondsAfterFinished` (its ttl-after-finished controller).
//!
//! - Up to `parallelism` pods run at once until `completions` of them have succeeded (or,
//!   with no `completions`, until one has and the rest have finished). In `Indexed` mode
//!   each pod gets an index (annotation, label, `JOB_COMPLETION_INDEX`, hostname
//!   `<job>-<index>`) and the job is complete when every index in `0..completions` has
//!   succeeded once (`status.completedIndexes`).
//! - Finished pods are counted exactly once, as Kubernetes counts them: pods carry the
//!   `batch.kubernetes.io/job-tracking` finalizer; a finished pod's uid goes into
//!   `status.uncountedTerminatedPods` first, then its finalizer is removed, then it moves
//!   into `succeeded` or `failed`. A pod deleted before it finished counts as failed.
//! - A failed pod is replaced after an exponential backoff (10 s, doubling, at most 6
//!   minutes); more than `backoffLimit` failures fail the job (`BackoffLimitExceeded`), as
//!   does running longer than `activeDeadlineSeconds` (`DeadlineExceeded`) or a failed pod
//!   that a `podFailurePolicy` rule with `FailJob` matches (`Ignore` rules keep a failure
//!   from counting). A failing or complete job's remaining pods are deleted.
//! - A suspended job has no pods; resuming it restarts its deadline.
//! - The status has the counts (`active`, `ready`, `terminating`, `succeeded`, `failed`),
//!   `startTime`, `completionTime` and the `Complete`, `Failed`, `FailureTarget` and
//!   `Suspended` conditions, each also an event.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::batch::v1::{Job, JobSpec, PodFailurePolicy};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};
use skiff_core::labels::Selector;
use skiff_events::Kind;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

use crate::pods::{Error, PodControl, is_active, ready_since};
use crate::replicaset::deletion_rank;
use crate::status::set_condition;

/// The name events are reported under.
const CONTROLLER: &str = "job-controller";
/// The finalizer that keeps a job's finished pod until it is counted.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// An Indexed job's pod's index (annotation and label).
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The first pod replacement's delay after a failure; it doubles with each failure.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest delay.
const BACKOFF_MAX: Duration = Duration::from_secs(360);

struct Ctx {
    client: Client,
    recorder: skiff_events::Recorder,
}

/// Runs the job controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let jobs: Api<Job> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let recorder = skiff_events::Recorder::new(client.clone(), CONTROLLER, None);
    let ctx = Arc::new(Ctx { client, recorder });
    Controller::new(jobs, watcher::Config::default())
        .owns(pods, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_job: Arc<Job>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    warn!(error = err as &dyn std::error::Error, "syncing a job");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let span = info_span!("reconcile", job = %job.name_any(), namespace = job.namespace().unwrap_or_default());
    sync(job, ctx).instrument(span).await
}

/// How a finished pod ended: succeeded, or failed (which a deleted unfinished pod also is).
fn outcome(pod: &Pod) -> Option<bool> {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => Some(true),
        Some("Failed") => Some(false),
        _ if pod.metadata.deletion_timestamp.is_some() => Some(false),
        _ => None,
    }
}

/// An Indexed job pod's index.
fn index_of(pod: &Pod) -> Option<u32> {
    pod.annotations().get(COMPLETION_INDEX)?.parse().ok()
}

/// When a failed pod finished: its last container's exit, or failing that its Ready
/// condition's last change.
fn finished_at(pod: &Pod) -> Option<jiff::Timestamp> {
    let status = pod.status.as_ref()?;
    let exits = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref());
    exits.map(|t| t.0).max().or_else(|| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0)
    })
}

/// The first `podFailurePolicy` rule a failed pod matches: its action and the message a
/// `FailJob` action gives the job.
pub fn failure_rule(policy: &PodFailurePolicy, pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    let pod_name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    let exits: Vec<(&str, i32)> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter_map(|c| {
            let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
            // Containers that succeeded are no failure's cause.
            (code != 0).then_some((c.name.as_str(), code))
        })
        .collect();
    for (i, rule) in policy.rules.iter().enumerate() {
        if let Some(req) = &rule.on_exit_codes {
            let hit = exits.iter().find(|(name, code)| {
                req.container_name.as_deref().is_none_or(|n| n == *name)
                    && match req.operator.as_str() {
                        "In" => req.values.contains(code),
                        "NotIn" => !req.values.contains(code),
                        _ => false,
                    }
            });
            if let Some((name, code)) = hit {
                let message = format!(
                    "Container {name} for pod {pod_name} failed with exit code {code} matching {} rule at index {i}",
                    rule.action
                );
                return Some((rule.action.clone(), message));
            }
        }
        for pattern in rule.on_pod_conditions.iter().flatten() {
            let want = if pattern.status.is_empty() {
                "True"
            } else {
                &pattern.status
            };
            let has = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == pattern.type_ && c.status == want);
            if has {
                let message = format!(
                    "Pod {pod_name} has condition {} matching {} rule at index {i}",
                    pattern.type_, rule.action
                );
                return Some((rule.action.clone(), message));
            }
        }
    }
    None
}

/// The delay before a job with `failures` failed pods gets a replacement.
pub fn backoff(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16) as u32;
    (BACKOFF_BASE * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

/// Completed indexes as `status.completedIndexes` writes them: `0,2-4,7`.
pub fn format_indexes(indexes: &BTreeSet<u32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().expect("peeked");
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// The other way round; unreadable parts are skipped.
pub fn parse_indexes(text: &str) -> BTreeSet<u32> {
    let mut set = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    set.extend(a..=b);
                }
            }
            None => set.extend(part.parse::<u32>().ok()),
        }
    }
    set
}

/// What the job's pods add up to once its finished pods are counted.
#[derive(Debug, Default, Clone)]
pub struct Counted {
    /// Succeeded pods (Indexed: completed indexes).
    pub succeeded: i32,
    /// Failed pods that count toward the backoff limit.
    pub failed: i32,
    /// Indexed: the indexes that have succeeded.
    pub completed: BTreeSet<u32>,
    /// A `FailJob` rule matched a failed pod: the message.
    pub fail_job: Option<String>,
    /// When the latest failed pod finished.
    pub last_failure: Option<jiff::Timestamp>,
}

/// What a sync does: the pods to delete and create, the status to write, the events.
#[derive(Debug, Default)]
pub struct Plan {
    /// Positions in the pods given to [`plan`].
    pub delete: Vec<usize>,
    /// One entry a pod to create: its index (Indexed) or `None`.
    pub create: Vec<Option<u32>>,
    /// The job's whole new status.
    pub status: Value,
    /// Events: kind, reason, message.
    pub events: Vec<(Kind, &'static str, String)>,
    /// When to look again even if nothing changes (a deadline, a backoff).
    pub requeue: Option<Duration>,
}

fn condition(conditions: &[Value], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c["type"] == type_ && c["status"] == "True")
}

/// The Job controller's rules: given the job, its pods and their counts at `now`, what to
/// do. Pure, so the rules are tested with any clock.
pub fn plan(job: &Job, pods: &[Pod], counted: &Counted, now: jiff::Timestamp) -> Plan {
    let spec: JobSpec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let now_text = skiff_core::time::format_time(now);
    let mut conditions = crate::status::conditions_of(&old.conditions);
    let mut start_time = old.start_time.as_ref().map(|t| t.0);
    let mut completion_time = old.completion_time.as_ref().map(|t| t.0);
    let active: Vec<usize> = (0..pods.len()).filter(|&i| is_active(&pods[i])).collect();
    let terminating = pods
        .iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            p.metadata.deletion_timestamp.is_some()
                && !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .count();
    let ready = active
        .iter()
        .filter(|&&i| ready_since(&pods[i]).is_some())
        .count();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let parallelism = spec.parallelism.unwrap_or(1).max(0) as usize;
    let suspended = spec.suspend == Some(true);
    let mut plan = Plan::default();

    let resuming = !suspended && condition(&conditions, "Suspended");
    if resuming {
        // The deadline counts from the resumption.
        start_time = Some(now);
    }
    let deadline = spec
        .active_deadline_seconds
        .map(|s| jiff::SignedDuration::from_secs(s.max(0)));
    let past_deadline = match (deadline, start_time) {
        (Some(d), Some(start)) if !suspended => now.duration_since(start) >= d,
        _ => false,
    };
    let failure = if let Some(message) = &counted.fail_job {
        Some(("PodFailurePolicy", message.as_str()))
    } else if counted.failed > spec.backoff_limit.unwrap_or(6) {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if past_deadline {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else {
        None
    };
    let success = match (indexed, spec.completions) {
        (true, Some(c)) => counted.completed.len() >= c.max(0) as usize,
        (false, Some(c)) => counted.succeeded >= c,
        (_, None) => counted.succeeded > 0 && active.is_empty(),
    };

    if let Some((reason, message)) = failure {
        plan.delete.clone_from(&active);
        set_condition(
            &mut conditions,
            "FailureTarget",
            "True",
            reason,
            message,
            &now_text,
        );
        set_condition(
            &mut conditions,
            "Failed",
            "True",
            reason,
            message,
            &now_text,
        );
        plan.events
            .push((Kind::Warning, reason, message.to_owned()));
    } else if success {
        plan.delete.clone_from(&active);
        set_condition(
            &mut conditions,
            "Complete",
            "True",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            &now_text,
        );
        completion_time = Some(now);
        plan.events
            .push((Kind::Normal, "Completed", "Job completed".into()));
    } else if suspended {
        plan.delete.clone_from(&active);
        if !condition(&conditions, "Suspended") {
            set_condition(
                &mut conditions,
                "Suspended",
                "True",
                "JobSuspended",
                "Job suspended",
                &now_text,
            );
            plan.events
                .push((Kind::Normal, "Suspended", "Job suspended".into()));
        }
    } else {
        if resuming {
            set_condition(
                &mut conditions,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
                &now_text,
            );
            plan.events
                .push((Kind::Normal, "Resumed", "Job resumed".into()));
        }
        let start = *start_time.get_or_insert(now);
        if let Some(d) = deadline {
            let left = d - now.duration_since(start);
            plan.requeue = Some(left.unsigned_abs());
        }
        let want = match (indexed, spec.completions) {
            (true, Some(c)) => (c.max(0) as usize - counted.completed.len().min(c.max(0) as usize))
                .min(parallelism),
            (false, Some(c)) => ((c - counted.succeeded).max(0) as usize).min(parallelism),
            // One has succeeded: the running ones finish, no more are started.
            (_, None) if counted.succeeded > 0 => active.len().min(parallelism),
            (_, None) => parallelism,
        };
        let wait = counted.last_failure.and_then(|last| {
            let since = now.duration_since(last).unsigned_abs();
            backoff(counted.failed)
                .checked_sub(since)
                .filter(|w| !w.is_zero())
        });
        if active.len() > want {
            let mut extra = active.clone();
            extra.sort_by_cached_key(|&i| deletion_rank(&pods[i]));
            plan.delete = extra.into_iter().take(active.len() - want).collect();
        } else if let Some(wait) = wait {
            plan.requeue = Some(plan.requeue.map_or(wait, |r| r.min(wait)));
        } else if active.len() < want {
            let missing = want - active.len();
            plan.create = if indexed {
                let running: BTreeSet<u32> =
                    active.iter().filter_map(|&i| index_of(&pods[i])).collect();
                (0..spec.completions.unwrap_or(0).max(0) as u32)
                    .filter(|i| !counted.completed.contains(i) && !running.contains(i))
                    .take(missing)
                    .map(Some)
                    .collect()
            } else {
                vec![None; missing]
            };
        }
    }

    let mut status = json!({
        "active": active.len() - plan.delete.len() + plan.create.len(),
        "ready": ready,
        "terminating": terminating + plan.delete.len(),
        "succeeded": counted.succeeded,
        "failed": counted.failed,
        "startTime": start_time.map(skiff_core::time::format_time),
        "completionTime": completion_time.map(skiff_core::time::format_time),
        "conditions": if conditions.is_empty() { Value::Null } else { json!(conditions) },
        "uncountedTerminatedPods": {"succeeded": null, "failed": null},
    });
    if indexed {
        let completed = format_indexes(&counted.completed);
        status["completedIndexes"] = json!(completed);
    }
    plan.status = status;
    plan
}

/// A pod of the job: from its template, tracked by the job's finalizer, named (and in
/// Indexed mode labelled, annotated, hostnamed and told `JOB_COMPLETION_INDEX`) as
/// Kubernetes names them.
fn job_pod(control: &PodControl<'_>, job: &Job, index: Option<u32>) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let mut pod = control.pod_from(Some(&spec.template));
    let name = job.name_any();
    pod.metadata.finalizers = Some(vec![TRACKING_FINALIZER.into()]);
    let Some(index) = index else {
        pod.metadata.generate_name = Some(format!("{name}-"));
        return pod;
    };
    pod.metadata.generate_name = Some(format!("{name}-{index}-"));
    pod.metadata
        .annotations
        .get_or_insert_default()
        .insert(COMPLETION_INDEX.into(), index.to_string());
    pod.metadata
        .labels
        .get_or_insert_default()
        .insert(COMPLETION_INDEX.into(), index.to_string());
    if let Some(pod_spec) = pod.spec.as_mut() {
        pod_spec.hostname.get_or_insert(format!("{name}-{index}"));
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                }),
                ..Default::default()
            }),
        };
        let containers = pod_spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(pod_spec.containers.iter_mut());
        for c in containers {
            let vars = c.env.get_or_insert_default();
            if !vars.iter().any(|v| v.name == env.name) {
                vars.push(env.clone());
            }
        }
    }
    pod
}

/// Whether the job has finished (a true `Complete` or `Failed` condition), and when.
pub fn finished(job: &Job) -> Option<jiff::Timestamp> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        })
}

async fn sync(cached: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let control = PodControl::new(ctx.client.clone(), &ctx.recorder, &*cached, "batch/v1");
    let jobs: Api<Job> =
        Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    let name = cached.name_any();
    // Counts accumulate, so they are built on the job as it is now, not on a cached copy
    // that may predate this controller's own last write; the writes below are
    // conditional on its resourceVersion.
    let Some(job) = jobs
        .get_opt(&name)
        .await
        .map_err(control.error("reading the job"))?
        .filter(|j| j.uid() == cached.uid())
    else {
        return Ok(Action::await_change());
    };
    let selector = job
        .spec
        .as_ref()
        .map(|s| serde_json::to_value(&s.selector).unwrap_or_default())
        .unwrap_or_default();
    let selector = Selector::from_label_selector(&selector)
        .map_err(|e| control.bad_selector(e.to_string()))?;
    let pods = control.claim(control.list().await?, &selector).await?;
    if job.metadata.deletion_timestamp.is_some() || finished(&job).is_some() {
        // Nothing more is counted: the pods may go.
        for pod in &pods {
            control.remove_finalizer(pod, TRACKING_FINALIZER).await?;
        }
        return Ok(Action::await_change());
    }
    let spec = job.spec.clone().unwrap_or_default();
    let mut version = job.resource_version();
    let status = job.status.clone().unwrap_or_default();

    // Finished pods are noted as uncounted, lose their finalizer, then are counted.
    let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut succeeded: BTreeSet<String> = uncounted.succeeded.into_iter().flatten().collect();
    let mut failed: BTreeSet<String> = uncounted.failed.into_iter().flatten().collect();
    let mut counted = Counted::default();
    let mut ignored = Vec::new();
    let mut noted = false;
    let rule_of = |pod: &Pod| {
        spec.pod_failure_policy
            .as_ref()
            .and_then(|p| failure_rule(p, pod))
    };
    for pod in &pods {
        let uid = pod.uid().unwrap_or_default();
        let tracked = pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER);
        if !tracked || succeeded.contains(&uid) || failed.contains(&uid) {
            continue;
        }
        match outcome(pod) {
            Some(true) => noted |= succeeded.insert(uid),
            Some(false) if rule_of(pod).is_some_and(|(action, _)| action == "Ignore") => {
                ignored.push(pod)
            }
            Some(false) => noted |= failed.insert(uid),
            None => {}
        }
    }
    // A FailJob rule fails the job for any failed pod not yet counted.
    counted.fail_job = pods
        .iter()
        .filter(|p| failed.contains(&p.uid().unwrap_or_default()))
        .filter_map(|p| rule_of(p).filter(|(action, _)| action == "FailJob"))
        .map(|(_, message)| message)
        .next();
    let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
    if noted {
        let patch = json!({
            "metadata": {"resourceVersion": version},
            "status": {"uncountedTerminatedPods": {"succeeded": succeeded, "failed": failed}},
        });
        match jobs
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(j) => version = j.resource_version(),
            Err(e) if conflict(&e) => return Ok(Action::requeue(Duration::from_millis(200))),
            Err(e) => return Err(control.error("noting finished pods")(e)),
        }
    }
    for pod in &pods {
        let uid = pod.uid().unwrap_or_default();
        if succeeded.contains(&uid)
            || failed.contains(&uid)
            || ignored.iter().any(|p| p.uid() == pod.uid())
        {
            control.remove_finalizer(pod, TRACKING_FINALIZER).await?;
        }
    }
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    counted.completed = parse_indexes(status.completed_indexes.as_deref().unwrap_or_default());
    for pod in pods
        .iter()
        .filter(|p| succeeded.contains(&p.uid().unwrap_or_default()))
    {
        counted.completed.extend(index_of(pod));
    }
    let completions = spec.completions.unwrap_or(0).max(0) as u32;
    counted.completed.retain(|&i| i < completions);
    counted.succeeded = if indexed {
        counted.completed.len() as i32
    } else {
        status.succeeded.unwrap_or(0) + succeeded.len() as i32
    };
    counted.failed = status.failed.unwrap_or(0) + failed.len() as i32;
    counted.last_failure = pods
        .iter()
        .filter(|p| outcome(p) == Some(false) && !ignored.iter().any(|i| i.uid() == p.uid()))
        .filter_map(finished_at)
        .max();

    let now = jiff::Timestamp::now();
    let plan = plan(&job, &pods, &counted, now);
    for &i in &plan.delete {
        control.delete(&pods[i]).await?;
    }
    if !plan.create.is_empty() {
        let (_, failure) = control
            .create_batches(plan.create.len(), |i| {
                job_pod(&control, &job, plan.create[i])
            })
            .await;
        if failure.is_some() {
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
    }
    for (kind, reason, message) in plan.events {
        info!(reason, %message, "job");
        control.event(kind, reason, message).await;
    }
    let current = serde_json::to_value(&job.status).unwrap_or_default();
    let changed = plan.status.as_object().into_iter().flatten().any(|(k, v)| {
        let now = current.get(k).unwrap_or(&Value::Null);
        match k.as_str() {
            "uncountedTerminatedPods" => !succeeded.is_empty() || !failed.is_empty(),
            _ => now != v && !(v == 0 && now.is_null()),
        }
    });
    if changed {
        let patch = json!({"metadata": {"resourceVersion": version}, "status": plan.status});
        match jobs
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(e) if conflict(&e) => return Ok(Action::requeue(Duration::from_millis(200))),
            Err(e) => return Err(control.error("updating the status")(e)),
        }
    }
    Ok(match plan.requeue {
        Some(wait) => Action::requeue(wait + Duration::from_millis(100)),
        None => Action::await_change(),
    })
}

/// Runs the ttl-after-finished controller until `shutdown`: a finished job with
/// `ttlSecondsAfterFinished` is deleted (with its pods) that long after it finished.
pub async fn run_ttl(client: Client, shutdown: CancellationToken) {
    let jobs: Api<Job> = Api::all(client.clone());
    Controller::new(jobs, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(expire, ttl_error_policy, Arc::new(client))
        .for_each(|_| async {})
        .await;
}

fn ttl_error_policy(_job: Arc<Job>, err: &Error, _client: Arc<Client>) -> Action {
    warn!(error = err as &dyn std::error::Error, "expiring a job");
    Action::requeue(Duration::from_secs(5))
}

/// How long until a finished job expires (zero: now), if it does.
pub fn expires_in(job: &Job, now: jiff::Timestamp) -> Option<Duration> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let finished = finished(job)?;
    let at = finished + jiff::SignedDuration::from_secs(ttl.max(0) as i64);
    Some(
        at.duration_since(now)
            .max(jiff::SignedDuration::ZERO)
            .unsigned_abs(),
    )
}

async fn expire(job: Arc<Job>, client: Arc<Client>) -> Result<Action, Error> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(wait) = expires_in(&job, jiff::Timestamp::now()) else {
        return Ok(Action::await_change());
    };
    if !wait.is_zero() {
        return Ok(Action::requeue(wait + Duration::from_millis(100)));
    }
    let namespace = job.namespace().unwrap_or_default();
    info!(job = %job.name_any(), %namespace, "its time after finishing is up; deleting it");
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: Some(Preconditions {
            uid: job.uid(),
            resource_version: job.resource_version(),
        }),
        ..Default::default()
    };
    match Api::<Job>::namespaced((*client).clone(), &namespace)
        .delete(&job.name_any(), &params)
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Action::await_change()),
        Err(source) => Err(Error::Api {
            kind: "job",
            namespace,
            name: job.name_any(),
            what: "deleting an expired job",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value, status: Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "pi", "namespace": "default", "uid": "u1"},
            "spec": spec,
            "status": status,
        }))
        .unwrap()
    }

    fn pod(name: &str, phase: &str, index: Option<u32>) -> Pod {
        let annotations = index.map(|i| json!({COMPLETION_INDEX: i.to_string()}));
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": name, "annotations": annotations},
            "spec": {"containers": [{"name": "c"}], "nodeName": "n"},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn conditions(plan: &Plan) -> Vec<(String, String)> {
        plan.status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["type"].as_str().unwrap().to_owned(),
                    c["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn pods_run_in_parallel_until_the_completions_are_reached() {
        let j = job(
            json!({"completions": 5, "parallelism": 2, "template": {}}),
            json!({}),
        );
        let now = at("2026-12-05T10:00:00Z");
        let p = plan(&j, &[], &Counted::default(), now);
        assert_eq!(p.create, vec![None, None]);
        assert_eq!(p.status["startTime"], "2026-12-05T10:00:00Z");
        assert_eq!(p.status["active"], 2);
        // Four done, one running: no more are made.
        let running = [pod("a", "Running", None)];
        let four = Counted {
            succeeded: 4,
            ..Default::default()
        };
        let p = plan(&j, &running, &four, now);
        assert!(p.create.is_empty() && p.delete.is_empty());
        let five = Counted {
            succeeded: 5,
            ..Default::default()
        };
        let p = plan(&j, &[], &five, now);
        assert_eq!(
            conditions(&p),
            [("Complete".into(), "CompletionsReached".into())]
        );
        assert_eq!(p.status["completionTime"], "2026-12-05T10:00:00Z");
        assert_eq!(p.events[0].1, "Completed");
    }

    #[test]
    fn a_work_queue_job_completes_when_one_pod_succeeded_and_the_rest_finished() {
        let j = job(json!({"parallelism": 3, "template": {}}), json!({}));
        let now = at("2026-12-05T10:00:00Z");
        assert_eq!(plan(&j, &[], &Counted::default(), now).create.len(), 3);
        let one = Counted {
            succeeded: 1,
            ..Default::default()
        };
        let running = [pod("a", "Running", None)];
        let p = plan(&j, &running, &one, now);
        assert!(p.create.is_empty() && p.delete.is_empty() && conditions(&p).is_empty());
        assert_eq!(conditions(&plan(&j, &[], &one, now))[0].0, "Complete");
    }

    #[test]
    fn indexed_jobs_run_each_missing_index_once() {
        let j = job(
            json!({"completions": 4, "parallelism": 3, "completionMode": "Indexed", "template": {}}),
            json!({}),
        );
        let counted = Counted {
            succeeded: 1,
            completed: [0].into(),
            ..Default::default()
        };
        let p = plan(
            &j,
            &[pod("b", "Running", Some(2))],
            &counted,
            at("2026-12-05T10:00:00Z"),
        );
        assert_eq!(p.create, vec![Some(1), Some(3)]);
        assert_eq!(p.status["completedIndexes"], "0");
        assert_eq!(format_indexes(&[0, 1, 2, 4, 6, 7].into()), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), [0, 1, 2, 4, 6, 7].into());
    }

    #[test]
    fn failures_back_off_then_fail_the_job_past_its_limit() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(10), Duration::from_secs(360));
        let j = job(
            json!({"completions": 1, "parallelism": 1, "backoffLimit": 2, "template": {}}),
            json!({"startTime": "2026-12-05T10:00:00Z"}),
        );
        let two = Counted {
            failed: 2,
            last_failure: Some(at("2026-12-05T10:00:05Z")),
            ..Default::default()
        };
        // 20 s after the second failure: not yet.
        let p = plan(&j, &[], &two, at("2026-12-05T10:00:15Z"));
        assert!(p.create.is_empty());
        assert_eq!(p.requeue, Some(Duration::from_secs(10)));
        let p = plan(&j, &[], &two, at("2026-12-05T10:00:25Z"));
        assert_eq!(p.create.len(), 1);
        let three = Counted { failed: 3, ..two };
        let p = plan(
            &j,
            &[pod("a", "Running", None)],
            &three,
            at("2026-12-05T10:00:25Z"),
        );
        assert_eq!(p.delete, vec![0]);
        assert_eq!(
            conditions(&p),
            [
                ("FailureTarget".into(), "BackoffLimitExceeded".into()),
                ("Failed".into(), "BackoffLimitExceeded".into())
            ]
        );
    }

    #[test]
    fn the_active_deadline_fails_the_job_and_a_suspension_restarts_it() {
        let j = job(
            json!({"completions": 1, "parallelism": 1, "activeDeadlineSeconds": 30, "template": {}}),
            json!({"startTime": "2026-12-05T10:00:00Z"}),
        );
        let running = [pod("a", "Running", None)];
        let p = plan(
            &j,
            &running,
            &Counted::default(),
            at("2026-12-05T10:00:20Z"),
        );
        assert_eq!(p.requeue, Some(Duration::from_secs(10)));
        assert!(conditions(&p).is_empty());
        let p = plan(
            &j,
            &running,
            &Counted::default(),
            at("2026-12-05T10:00:30Z"),
        );
        assert_eq!(
            conditions(&p)[1],
            ("Failed".into(), "DeadlineExceeded".into())
        );
        assert_eq!(p.delete, vec![0]);

        let suspended = job(
            json!({"completions": 1, "parallelism": 1, "activeDeadlineSeconds": 30, "suspend": true, "template": {}}),
            json!({"startTime": "2026-12-05T10:00:00Z"}),
        );
        let p = plan(
            &suspended,
            &running,
            &Counted::default(),
            at("2026-12-05T10:01:00Z"),
        );
        assert_eq!(p.delete, vec![0]);
        assert_eq!(
            conditions(&p),
            [("Suspended".into(), "JobSuspended".into())]
        );
        // Resumed: the deadline counts from now.
        let resumed = job(
            json!({"completions": 1, "parallelism": 1, "activeDeadlineSeconds": 30, "template": {}}),
            json!({"startTime": "2026-12-05T10:00:00Z", "conditions": p.status["conditions"]}),
        );
        let p = plan(
            &resumed,
            &[],
            &Counted::default(),
            at("2026-12-05T10:02:00Z"),
        );
        assert_eq!(p.status["startTime"], "2026-12-05T10:02:00Z");
        assert_eq!(p.create.len(), 1);
        assert_eq!(conditions(&p), [("Suspended".into(), "JobResumed".into())]);
    }

    #[test]
    fn pod_failure_policy_rules_match_exit_codes_and_conditions_in_order() {
        let policy: PodFailurePolicy = serde_json::from_value(json!({"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1, 2]}},
        ]}))
        .unwrap();
        let failed = |code: i32, conditions: Value| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "ns"},
                "status": {"phase": "Failed", "conditions": conditions, "containerStatuses": [{
                    "name": "main", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": code}},
                }]},
            }))
            .unwrap()
        };
        let (action, message) = failure_rule(&policy, &failed(42, json!([]))).unwrap();
        assert_eq!(action, "FailJob");
        assert_eq!(
            message,
            "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
        );
        let disrupted = json!([{"type": "DisruptionTarget", "status": "True"}]);
        assert_eq!(
            failure_rule(&policy, &failed(42, disrupted)).unwrap().0,
            "Ignore"
        );
        assert_eq!(
            failure_rule(&policy, &failed(7, json!([]))).unwrap().0,
            "Count"
        );
        assert_eq!(failure_rule(&policy, &failed(1, json!([]))), None);
    }

    #[test]
    fn finished_jobs_expire_after_their_ttl() {
        let done = json!({"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-12-05T10:00:00Z"}]});
        let j = job(
            json!({"ttlSecondsAfterFinished": 60, "template": {}}),
            done.clone(),
        );
        assert_eq!(
            expires_in(&j, at("2026-12-05T10:00:20Z")),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            expires_in(&j, at("2026-12-05T10:02:00Z")),
            Some(Duration::ZERO)
        );
        let no_ttl = job(json!({"template": {}}), done);
        assert_eq!(expires_in(&no_ttl, at("2026-12-05T10:02:00Z")), None);
        let running = job(
            json!({"ttlSecondsAfterFinished": 0, "template": {}}),
            json!({}),
        );
        assert_eq!(expires_in(&running, at("2026-12-05T10:02:00Z")), None);
    }
}
