//! CronJobs: a Job at each time of a schedule (kube-controller-manager's cronjob
//! controller, its v2).
//!
//! - The schedule is read in `spec.timeZone` (the server's own zone without one). At each
//!   sync the latest scheduled time since the last one (or the CronJob's creation) that
//!   has not run yet runs, unless `startingDeadlineSeconds` has passed since it
//!   (`MissSchedule`); more than 100 missed times are reported (`TooManyMissedTimes`).
//! - The Job is named `<cronjob>-<scheduled minutes since the epoch>` (so a time runs
//!   once, whoever retries it), annotated with its scheduled time, and owned by the
//!   CronJob. `concurrencyPolicy`: `Allow` runs jobs side by side, `Forbid` skips a time
//!   while one still runs (`JobAlreadyActive`), `Replace` deletes the running ones first.
//! - `suspend` stops new runs. `status.active` lists the running jobs;
//!   `lastScheduleTime` and `lastSuccessfulTime` record the latest run and success;
//!   finished jobs beyond `successfulJobsHistoryLimit` (3) and `failedJobsHistoryLimit`
//!   (1) are deleted, oldest first.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use jiff::Zoned;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource as _, ResourceExt as _};
use serde_json::{Value, json};
use skiff_core::cron::Schedule;
use skiff_events::Kind;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

use crate::job::finished;
use crate::owners::controller_of;
use crate::pods::Error;

/// The name events are reported under.
const CONTROLLER: &str = "cronjob-controller";
/// A CronJob's job's scheduled time (RFC 3339, in the schedule's zone).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed times than this are reported.
const MAX_MISSED: usize = 100;

struct Ctx {
    client: Client,
    recorder: skiff_events::Recorder,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let cronjobs: Api<CronJob> = Api::all(client.clone());
    let jobs: Api<Job> = Api::all(client.clone());
    let recorder = skiff_events::Recorder::new(client.clone(), CONTROLLER, None);
    let ctx = Arc::new(Ctx { client, recorder });
    Controller::new(cronjobs, watcher::Config::default())
        .owns(jobs, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_cj: Arc<CronJob>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    warn!(error = err as &dyn std::error::Error, "syncing a cronjob");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let span = info_span!("reconcile", cronjob = %cj.name_any(), namespace = cj.namespace().unwrap_or_default());
    Sync::new(&cj, &ctx).run().instrument(span).await
}

/// What is due at `now`.
#[derive(Debug, PartialEq)]
pub struct Due {
    /// The latest scheduled time not run yet, and whether it is too late to run it.
    pub time: Option<(Zoned, bool)>,
    /// More than [`MAX_MISSED`] times were missed.
    pub too_many_missed: bool,
    /// The next time after `now`.
    pub next: Option<Zoned>,
}

/// What is due at `now` for a schedule last run at `last` (or created then), with an
/// optional starting deadline. Pure, so tested with any clock.
pub fn due(schedule: &Schedule, last: &Zoned, now: &Zoned, starting_deadline: Option<i64>) -> Due {
    let mut earliest = last.clone();
    if let Some(deadline) = starting_deadline {
        let floor = now.saturating_sub(jiff::SignedDuration::from_secs(deadline.max(0)));
        if floor > earliest {
            earliest = floor;
        }
    }
    let times = schedule.times_between(&earliest, now, MAX_MISSED);
    let time = times.last().map(|t| {
        let late = starting_deadline
            .is_some_and(|d| now.duration_since(t) > jiff::SignedDuration::from_secs(d.max(0)));
        (t.clone(), late)
    });
    Due {
        time,
        too_many_missed: times.len() > MAX_MISSED,
        next: schedule.next_after(now),
    }
}

/// The finished jobs to delete: beyond the history limits, oldest first.
pub fn beyond_history(jobs: &[&Job], successful_limit: i32, failed_limit: i32) -> Vec<String> {
    let mut doomed = Vec::new();
    for (complete, limit) in [(true, successful_limit), (false, failed_limit)] {
        let mut done: Vec<&&Job> = jobs
            .iter()
            .filter(|j| finished(j).is_some() && is_complete(j) == complete)
            .collect();
        done.sort_by_key(|j| {
            let start = j
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0);
            (
                start.or(j.metadata.creation_timestamp.as_ref().map(|t| t.0)),
                j.name_any(),
            )
        });
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        doomed.extend(done.into_iter().take(extra).map(|j| j.name_any()));
    }
    doomed
}

fn is_complete(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// One sync of one CronJob.
struct Sync<'a> {
    cj: &'a CronJob,
    ctx: &'a Ctx,
    jobs: Api<Job>,
    reference: ObjectReference,
}

impl<'a> Sync<'a> {
    fn new(cj: &'a CronJob, ctx: &'a Ctx) -> Self {
        Sync {
            cj,
            ctx,
            jobs: Api::namespaced(ctx.client.clone(), &cj.namespace().unwrap_or_default()),
            reference: cj.object_ref(&()),
        }
    }

    fn error(&self, what: &'static str) -> impl FnOnce(kube::Error) -> Error + use<> {
        let (namespace, name) = (self.cj.namespace().unwrap_or_default(), self.cj.name_any());
        move |source| Error::Api {
            kind: "cronjob",
            namespace,
            name,
            what,
            source,
        }
    }

    async fn event(&self, kind: Kind, reason: &str, message: String) {
        self.ctx
            .recorder
            .publish(&self.reference, kind, reason, message)
            .await;
    }

    async fn run(self) -> Result<Action, Error> {
        let cj = self.cj;
        let uid = cj.uid().unwrap_or_default();
        let spec = cj.spec.clone().unwrap_or_default();
        let old = cj.status.clone().unwrap_or_default();
        let mine: Vec<Job> = self
            .jobs
            .list(&Default::default())
            .await
            .map_err(self.error("listing jobs"))?
            .items
            .into_iter()
            .filter(|j| controller_of(&j.metadata.owner_references).is_some_and(|o| o.uid == uid))
            .collect();

        // Running jobs are active; ones that were and finished are seen.
        let was_active = |j: &Job| old.active.iter().flatten().any(|r| r.uid == j.uid());
        let mut active: Vec<ObjectReference> = Vec::new();
        let mut last_success = old.last_successful_time.as_ref().map(|t| t.0);
        for job in &mine {
            if finished(job).is_none() {
                active.push(job_ref(job));
            } else if was_active(job) {
                let condition = if is_complete(job) {
                    "Complete"
                } else {
                    "Failed"
                };
                self.event(
                    Kind::Normal,
                    "SawCompletedJob",
                    format!(
                        "Saw completed job: {}, condition: {condition}",
                        job.name_any()
                    ),
                )
                .await;
                let done = job.status.as_ref().and_then(|s| s.completion_time.as_ref());
                if let Some(t) = done.map(|t| t.0).filter(|_| is_complete(job)) {
                    last_success = Some(last_success.map_or(t, |l| l.max(t)));
                }
            }
        }
        let mut last_schedule = old.last_schedule_time.as_ref().map(|t| t.0);
        let action = self
            .schedule(&spec, &mut active, &mut last_schedule)
            .await?;

        // History.
        let refs: Vec<&Job> = mine.iter().collect();
        for name in beyond_history(
            &refs,
            spec.successful_jobs_history_limit.unwrap_or(3),
            spec.failed_jobs_history_limit.unwrap_or(1),
        ) {
            self.delete_job(&name, None).await?;
        }

        let status = json!({
            "active": if active.is_empty() { Value::Null } else { json!(active) },
            "lastScheduleTime": last_schedule.map(skiff_core::time::format_time),
            "lastSuccessfulTime": last_success.map(skiff_core::time::format_time),
        });
        let current = serde_json::to_value(&cj.status).unwrap_or_default();
        let changed = status
            .as_object()
            .into_iter()
            .flatten()
            .any(|(k, v)| current.get(k).unwrap_or(&Value::Null) != v);
        if changed {
            Api::<CronJob>::namespaced(
                self.ctx.client.clone(),
                &cj.namespace().unwrap_or_default(),
            )
            .patch_status(
                &cj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .map_err(self.error("updating the status"))?;
        }
        Ok(action)
    }

    /// Starts the job that is due, if one is. Returns when to look again.
    async fn schedule(
        &self,
        spec: &k8s_openapi::api::batch::v1::CronJobSpec,
        active: &mut Vec<ObjectReference>,
        last_schedule: &mut Option<jiff::Timestamp>,
    ) -> Result<Action, Error> {
        let cj = self.cj;
        if cj.metadata.deletion_timestamp.is_some() || spec.suspend == Some(true) {
            return Ok(Action::await_change());
        }
        let tz = match spec.time_zone.as_deref() {
            Some(name) => match TimeZone::get(name) {
                Ok(tz) => tz,
                Err(e) => {
                    self.event(
                        Kind::Warning,
                        "UnknownTimeZone",
                        format!("invalid timeZone: {name:?}: {e}"),
                    )
                    .await;
                    return Ok(Action::await_change());
                }
            },
            None => TimeZone::system(),
        };
        let schedule: Schedule = match spec.schedule.parse() {
            Ok(s) => s,
            Err(e) => {
                self.event(
                    Kind::Warning,
                    "UnparseableSchedule",
                    format!("unparseable schedule: {:?} : {e}", spec.schedule),
                )
                .await;
                return Ok(Action::await_change());
            }
        };
        let now = jiff::Timestamp::now().to_zoned(tz.clone());
        let last = last_schedule
            .or(cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now.timestamp())
            .to_zoned(tz.clone());
        let due = due(&schedule, &last, &now, spec.starting_deadline_seconds);
        let again = match &due.next {
            Some(next) => {
                let wait = now.duration_until(next).unsigned_abs();
                Action::requeue(wait + Duration::from_millis(100))
            }
            None => Action::await_change(),
        };
        if due.too_many_missed {
            self.event(
                Kind::Warning,
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
            )
            .await;
        }
        let Some((time, late)) = due.time else {
            return Ok(again);
        };
        let stamp = time.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string();
        if late {
            self.event(
                Kind::Warning,
                "MissSchedule",
                format!("Missed scheduled time to start a job: {stamp}"),
            )
            .await;
            return Ok(again);
        }
        match spec.concurrency_policy.as_deref() {
            Some("Forbid") if !active.is_empty() => {
                self.event(
                    Kind::Normal,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
                )
                .await;
                return Ok(again);
            }
            Some("Replace") => {
                for job in std::mem::take(active) {
                    self.delete_job(&job.name.unwrap_or_default(), job.uid)
                        .await?;
                }
            }
            _ => {}
        }
        let job = self.job_for(spec, &time, stamp);
        let name = job.name_any();
        match self.jobs.create(&PostParams::default(), &job).await {
            Ok(created) => {
                info!(job = %name, scheduled = %time, "started");
                self.event(
                    Kind::Normal,
                    "SuccessfulCreate",
                    format!("Created job {name}"),
                )
                .await;
                active.push(job_ref(&created));
            }
            // Made by an earlier sync whose status write was lost: this time has run.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                let message = match &e {
                    kube::Error::Api(s) => s.message.clone(),
                    other => other.to_string(),
                };
                self.event(
                    Kind::Warning,
                    "FailedCreate",
                    format!("Error creating job: {message}"),
                )
                .await;
                return Err(self.error("creating a job")(e));
            }
        }
        *last_schedule = Some(time.timestamp());
        Ok(again)
    }

    /// The job for the scheduled `time`.
    fn job_for(
        &self,
        spec: &k8s_openapi::api::batch::v1::CronJobSpec,
        time: &Zoned,
        stamp: String,
    ) -> Job {
        let cj = self.cj;
        let template = spec.job_template.clone();
        let mut metadata = template.metadata.unwrap_or_default();
        metadata.name = Some(format!(
            "{}-{}",
            cj.name_any(),
            time.timestamp().as_second() / 60
        ));
        metadata.namespace = cj.namespace();
        metadata
            .annotations
            .get_or_insert_default()
            .insert(SCHEDULED_TIMESTAMP.into(), stamp);
        metadata.owner_references = Some(vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "CronJob".into(),
            name: cj.name_any(),
            uid: cj.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        Job {
            metadata,
            spec: template.spec,
            status: None,
        }
    }

    /// Deletes a job and, in the background, its pods.
    async fn delete_job(&self, name: &str, uid: Option<String>) -> Result<(), Error> {
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.jobs.delete(name, &params).await {
            Ok(_) => {
                self.event(
                    Kind::Normal,
                    "SuccessfulDelete",
                    format!("Deleted job {name}"),
                )
                .await;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(self.error("deleting a job")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Zoned {
        s.parse::<jiff::Timestamp>()
            .unwrap()
            .to_zoned(TimeZone::UTC)
    }

    #[test]
    fn the_latest_missed_time_runs_unless_its_deadline_passed() {
        let every_minute: Schedule = "*/1 * * * *".parse().unwrap();
        let created = at("2026-12-05T10:00:30Z");
        // Not yet.
        let d = due(&every_minute, &created, &at("2026-12-05T10:00:50Z"), None);
        assert_eq!(d.time, None);
        assert_eq!(d.next, Some(at("2026-12-05T10:01:00Z")));
        // Three missed: the latest runs.
        let d = due(&every_minute, &created, &at("2026-12-05T10:03:10Z"), None);
        assert_eq!(d.time, Some((at("2026-12-05T10:03:00Z"), false)));
        assert!(!d.too_many_missed);
        // Ran at 10:03: nothing until 10:04.
        let d = due(
            &every_minute,
            &at("2026-12-05T10:03:00Z"),
            &at("2026-12-05T10:03:40Z"),
            None,
        );
        assert_eq!(d.time, None);
        // A starting deadline of 5 s, 10 s late: missed.
        let d = due(
            &every_minute,
            &created,
            &at("2026-12-05T10:03:10Z"),
            Some(5),
        );
        assert_eq!(d.time, None);
        let d = due(
            &every_minute,
            &created,
            &at("2026-12-05T10:03:04Z"),
            Some(5),
        );
        assert_eq!(d.time, Some((at("2026-12-05T10:03:00Z"), false)));
        // A deadline of 30 s: 10:03 ran late by 10 s is in time.
        let d = due(
            &every_minute,
            &created,
            &at("2026-12-05T10:03:10Z"),
            Some(30),
        );
        assert_eq!(d.time, Some((at("2026-12-05T10:03:00Z"), false)));
        // A day without a deadline: too many missed, the latest still runs.
        let d = due(&every_minute, &created, &at("2026-12-06T10:00:10Z"), None);
        assert!(d.too_many_missed);
        assert!(d.time.is_some());
        let hourly: Schedule = "@hourly".parse().unwrap();
        let d = due(&hourly, &created, &at("2026-12-05T12:20:00Z"), None);
        assert_eq!(d.time, Some((at("2026-12-05T12:00:00Z"), false)));
    }

    #[test]
    fn history_keeps_the_newest_finished_jobs() {
        let job = |name: &str, start: &str, condition: Option<&str>| -> Job {
            let conditions: Vec<Value> = condition
                .map(|c| json!({"type": c, "status": "True"}))
                .into_iter()
                .collect();
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "status": {"startTime": start, "conditions": conditions},
            }))
            .unwrap()
        };
        let jobs = [
            job("s1", "2026-12-05T10:01:00Z", Some("Complete")),
            job("f1", "2026-12-05T10:02:00Z", Some("Failed")),
            job("s2", "2026-12-05T10:03:00Z", Some("Complete")),
            job("f2", "2026-12-05T10:04:00Z", Some("Failed")),
            job("s3", "2026-12-05T10:05:00Z", Some("Complete")),
            job("running", "2026-12-05T10:00:00Z", None),
        ];
        let refs: Vec<&Job> = jobs.iter().collect();
        assert_eq!(beyond_history(&refs, 2, 1), ["s1", "f1"]);
        assert_eq!(beyond_history(&refs, 0, 0), ["s1", "s2", "s3", "f1", "f2"]);
        assert!(beyond_history(&refs, 3, 2).is_empty());
    }
}
