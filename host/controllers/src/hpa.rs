//! HorizontalPodAutoscalers (autoscaling/v2): the replicas of a scalable workload follow
//! its pods' CPU or memory use (kube-controller-manager's horizontal-pod-autoscaler).
//!
//! - Every sync period (`--horizontal-pod-autoscaler-sync-period`, 15 s) each autoscaler
//!   reads its target's scale subresource (replicas and pod selector), the pods, and their
//!   usage from metrics.k8s.io.
//! - Resource metrics with an `Utilization` target (percent of the pods' requests) or an
//!   `AverageValue` target: desired = ceil(ratio × pods), unless the ratio is within the
//!   0.1 tolerance. Pods without metrics count as using their whole request when scaling
//!   down and nothing when scaling up; not-ready pods count as nothing when scaling up
//!   (CPU), as Kubernetes' replica calculator does. Several metrics: the largest wins.
//! - Behavior: recommendations are stabilized (the lowest of the scale-up window, 0 s by
//!   default; the highest of the scale-down window, 300 s), then limited by the policies
//!   (up: 100 % or 4 pods per 15 s, the larger; down: 100 % per 15 s), then kept within
//!   min and max replicas.
//! - The status has the current and desired replicas, each metric's current value, the
//!   last scale time and the AbleToScale, ScalingActive and ScalingLimited conditions; each
//!   rescale is a `SuccessfulRescale` event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscaler, MetricSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource as _, ResourceExt as _};
use serde_json::{Value, json};
use skiff_core::quantity::Quantity;
use skiff_events::Kind;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

use crate::pods::{Error, ready_since};

/// The name events are reported under.
const CONTROLLER: &str = "horizontal-pod-autoscaler";
/// kube-controller-manager's default `--horizontal-pod-autoscaler-sync-period`.
pub const DEFAULT_SYNC: Duration = Duration::from_secs(15);
/// Changes of less than this fraction are not made.
const TOLERANCE: f64 = 0.1;

/// What one pod contributes to a metric.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSample {
    /// Ready (counts when scaling up).
    pub ready: bool,
    /// The sum of its containers' requests of the resource (milli-units), if all have one.
    pub request: Option<i64>,
    /// Its usage (milli-units), if the metrics API has it.
    pub usage: Option<i64>,
}

/// A metric's target: a percentage of requests, or an average value (milli-units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// `Utilization`: percent of the pods' requests.
    Utilization(i32),
    /// `AverageValue`: per pod.
    AverageValue(i64),
}

/// A metric's recommendation and current value.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// Replicas the metric asks for.
    pub replicas: i32,
    /// The ready pods' utilization (percent of requests), for Utilization targets.
    pub utilization: Option<i32>,
    /// The ready pods' average usage (milli-units).
    pub average: i64,
}

/// Kubernetes' replica calculator for one resource metric. `cpu`: not-ready pods are
/// left out (as their CPU use is not yet telling).
pub fn recommend(
    current: i32,
    target: Target,
    pods: &[PodSample],
    cpu: bool,
) -> Result<Recommendation, String> {
    let counted: Vec<&PodSample> = pods
        .iter()
        .filter(|p| p.usage.is_some() && (p.ready || !cpu))
        .collect();
    if counted.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let missing = pods.iter().filter(|p| p.usage.is_none()).count();
    let unready = pods
        .iter()
        .filter(|p| p.usage.is_some() && !p.ready && cpu)
        .count();
    let usage: i64 = counted.iter().filter_map(|p| p.usage).sum();
    let (ratio, utilization, per_pod_full) = match target {
        Target::Utilization(percent) => {
            let mut requests = 0;
            for p in &counted {
                requests += p.request.ok_or("missing request for the resource")?;
            }
            if requests <= 0 {
                return Err("missing request for the resource".into());
            }
            let utilization = usage as f64 * 100.0 / requests as f64;
            (
                utilization / percent.max(1) as f64,
                Some(utilization.round() as i32),
                None,
            )
        }
        Target::AverageValue(value) => {
            let average = usage as f64 / counted.len() as f64;
            (average / value.max(1) as f64, None, Some(value))
        }
    };
    let average = usage / counted.len() as i64;
    let done = |replicas| Recommendation {
        replicas,
        utilization,
        average,
    };
    if missing == 0 && unready == 0 {
        if (ratio - 1.0).abs() <= TOLERANCE {
            return Ok(done(current));
        }
        return Ok(done((ratio * counted.len() as f64).ceil() as i32));
    }
    // Pods without metrics: their whole request (or the target) when scaling down,
    // nothing when scaling up; unready pods: nothing when scaling up.
    let up = ratio > 1.0;
    let mut total_usage = usage as f64;
    let mut total_base = match target {
        Target::Utilization(percent) => {
            counted.iter().filter_map(|p| p.request).sum::<i64>() as f64 * percent as f64 / 100.0
        }
        Target::AverageValue(value) => (value * counted.len() as i64) as f64,
    };
    let mut considered = counted.len();
    for p in pods
        .iter()
        .filter(|p| p.usage.is_none() || (up && !p.ready && cpu))
    {
        let base = match target {
            Target::Utilization(percent) => p.request.unwrap_or(0) as f64 * percent as f64 / 100.0,
            Target::AverageValue(_) => per_pod_full.unwrap_or(0) as f64,
        };
        if p.usage.is_none() && !up {
            total_usage += match target {
                Target::Utilization(_) => p.request.unwrap_or(0) as f64,
                Target::AverageValue(v) => v as f64,
            };
        }
        total_base += base;
        considered += 1;
    }
    let new_ratio = if total_base > 0.0 {
        total_usage / total_base
    } else {
        ratio
    };
    if (new_ratio - 1.0).abs() <= TOLERANCE || (new_ratio > 1.0) != up {
        return Ok(done(current));
    }
    let replicas = (new_ratio * considered as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(done(current));
    }
    Ok(done(replicas))
}

/// Scaling rules with Kubernetes' defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// The stabilization window.
    pub window: Duration,
    /// (`Pods` or `Percent`, value, period).
    pub policies: Vec<(String, i32, Duration)>,
    /// `Max`, `Min` or `Disabled`.
    pub select: String,
}

impl Rules {
    /// The rules for one direction, from the spec's (or the defaults).
    pub fn of(rules: Option<&HPAScalingRules>, up: bool) -> Rules {
        let default_policies = if up {
            vec![
                ("Percent".to_owned(), 100, Duration::from_secs(15)),
                ("Pods".to_owned(), 4, Duration::from_secs(15)),
            ]
        } else {
            vec![("Percent".to_owned(), 100, Duration::from_secs(15))]
        };
        let window = rules
            .and_then(|r| r.stabilization_window_seconds)
            .map(|s| s.max(0) as u64)
            .unwrap_or(if up { 0 } else { 300 });
        let policies = rules
            .and_then(|r| r.policies.clone())
            .map(|ps| {
                ps.into_iter()
                    .map(|p| {
                        (
                            p.type_,
                            p.value,
                            Duration::from_secs(p.period_seconds.max(1) as u64),
                        )
                    })
                    .collect()
            })
            .unwrap_or(default_policies);
        Rules {
            window: Duration::from_secs(window),
            policies,
            select: rules
                .and_then(|r| r.select_policy.clone())
                .unwrap_or_else(|| "Max".into()),
        }
    }
}

/// What an autoscaler remembers between syncs: its recommendations and its scale changes.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    /// (when, recommended replicas).
    pub recommendations: Vec<(jiff::Timestamp, i32)>,
    /// (when, change in replicas).
    pub changes: Vec<(jiff::Timestamp, i32)>,
}

/// The replicas to scale to, and the ScalingLimited reason and message if something held
/// the recommendation back.
#[allow(
    clippy::too_many_arguments,
    reason = "the inputs of Kubernetes' normalization"
)]
pub fn normalize(
    current: i32,
    recommendation: i32,
    min: i32,
    max: i32,
    up: &Rules,
    down: &Rules,
    memory: &Memory,
    now: jiff::Timestamp,
) -> (i32, Option<(&'static str, String)>) {
    // Stabilization.
    let within =
        |t: jiff::Timestamp, window: Duration| now.duration_since(t).unsigned_abs() <= window;
    let (mut up_rec, mut down_rec) = (recommendation, recommendation);
    for &(t, r) in &memory.recommendations {
        if within(t, up.window) {
            up_rec = up_rec.min(r);
        }
        if within(t, down.window) {
            down_rec = down_rec.max(r);
        }
    }
    let mut desired = current.max(up_rec).min(down_rec);
    let mut limited = None;
    // Rate limits.
    let changed_since = |period: Duration, sign: i32| -> i32 {
        memory
            .changes
            .iter()
            .filter(|(t, c)| within(*t, period) && c.signum() == sign)
            .map(|(_, c)| c.abs())
            .sum()
    };
    if desired > current && up.select != "Disabled" {
        let limits = up.policies.iter().map(|(kind, value, period)| {
            let start = current - changed_since(*period, 1);
            match kind.as_str() {
                "Pods" => start + value,
                _ => (start as f64 * (1.0 + *value as f64 / 100.0)).ceil() as i32,
            }
        });
        let limit = if up.select == "Min" {
            limits.min()
        } else {
            limits.max()
        };
        if let Some(limit) = limit
            && desired > limit
        {
            desired = limit.max(current);
            limited = Some((
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate"
                    .to_owned(),
            ));
        }
    } else if desired > current {
        desired = current;
    }
    if desired < current && down.select != "Disabled" {
        let limits = down.policies.iter().map(|(kind, value, period)| {
            let start = current + changed_since(*period, -1);
            match kind.as_str() {
                "Pods" => start - value,
                _ => (start as f64 * (1.0 - *value as f64 / 100.0)).ceil() as i32,
            }
        });
        let limit = if down.select == "Min" {
            limits.max()
        } else {
            limits.min()
        };
        if let Some(limit) = limit
            && desired < limit
        {
            desired = limit.min(current);
            limited = Some((
                "ScaleDownLimit",
                "the desired replica count is decreasing faster than the maximum scale rate"
                    .to_owned(),
            ));
        }
    } else if desired < current {
        desired = current;
    }
    if desired > max {
        desired = max;
        limited = Some((
            "TooManyReplicas",
            "the desired replica count is more than the maximum replica count".to_owned(),
        ));
    } else if desired < min {
        desired = min;
        limited = Some((
            "TooFewReplicas",
            "the desired replica count is less than the minimum replica count".to_owned(),
        ));
    }
    (desired, limited)
}

struct Ctx {
    client: Client,
    recorder: skiff_events::Recorder,
    sync: Duration,
    memory: Mutex<HashMap<String, Memory>>,
}

/// Runs the controller until `shutdown`, syncing every autoscaler each `sync` period.
pub async fn run(client: Client, sync: Duration, shutdown: CancellationToken) {
    let hpas: Api<HorizontalPodAutoscaler> = Api::all(client.clone());
    let recorder = skiff_events::Recorder::new(client.clone(), CONTROLLER, None);
    let ctx = Arc::new(Ctx {
        client,
        recorder,
        sync,
        memory: Mutex::default(),
    });
    Controller::new(hpas, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_hpa: Arc<HorizontalPodAutoscaler>, err: &Error, ctx: Arc<Ctx>) -> Action {
    warn!(
        error = err as &dyn std::error::Error,
        "syncing an autoscaler"
    );
    Action::requeue(ctx.sync)
}

async fn reconcile(hpa: Arc<HorizontalPodAutoscaler>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let span = info_span!("reconcile", hpa = %hpa.name_any(), namespace = hpa.namespace().unwrap_or_default());
    sync(hpa, ctx).instrument(span).await
}

/// The target's scale: its resource and (replicas, selector).
async fn scale_of(
    client: &Client,
    namespace: &str,
    hpa: &HorizontalPodAutoscaler,
) -> Result<(Api<DynamicObject>, i32, String), String> {
    let target = hpa
        .spec
        .as_ref()
        .map(|s| s.scale_target_ref.clone())
        .unwrap_or_default();
    let (group, version) = match target
        .api_version
        .as_deref()
        .unwrap_or("v1")
        .split_once('/')
    {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (
            String::new(),
            target.api_version.clone().unwrap_or_else(|| "v1".into()),
        ),
    };
    let plural = format!("{}s", target.kind.to_ascii_lowercase());
    let gvk = GroupVersionKind::gvk(&group, &version, &target.kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let scale = api.get_scale(&target.name).await.map_err(|e| match e {
        kube::Error::Api(s) => s.message,
        other => other.to_string(),
    })?;
    let status = scale.status.unwrap_or_default();
    Ok((
        api,
        scale.spec.and_then(|s| s.replicas).unwrap_or(0),
        status.selector.unwrap_or_default(),
    ))
}

/// Milli-units of a quantity.
fn milli(q: &str) -> Option<i64> {
    Quantity::parse(q).map(Quantity::milli_value)
}

async fn sync(hpa: Arc<HorizontalPodAutoscaler>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let namespace = hpa.namespace().unwrap_or_default();
    let name = hpa.name_any();
    let reference = hpa.object_ref(&());
    let spec = hpa.spec.clone().unwrap_or_default();
    let old = hpa.status.clone().unwrap_or_default();
    let now = jiff::Timestamp::now();
    let now_text = skiff_core::time::format_time(now);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &namespace);
    let error = |what: &'static str| {
        let (namespace, name) = (namespace.clone(), name.clone());
        move |source| Error::Api {
            kind: "horizontalpodautoscaler",
            namespace,
            name,
            what,
            source,
        }
    };
    let mut conditions = crate::status::conditions_of(&old.conditions);
    let mut set = |type_: &str, status: &str, reason: &str, message: &str| {
        crate::status::set_condition(&mut conditions, type_, status, reason, message, &now_text)
    };
    let write = |status: Value| {
        let hpas = hpas.clone();
        let name = name.clone();
        async move {
            hpas.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        }
    };

    let (scale_api, current, selector) = match scale_of(&ctx.client, &namespace, &hpa).await {
        Ok(s) => s,
        Err(message) => {
            set(
                "AbleToScale",
                "False",
                "FailedGetScale",
                &format!(
                    "the HPA controller was unable to get the target's current scale: {message}"
                ),
            );
            ctx.recorder
                .publish(&reference, Kind::Warning, "FailedGetScale", message)
                .await;
            write(json!({"conditions": conditions}))
                .await
                .map_err(error("updating the status"))?;
            return Ok(Action::requeue(ctx.sync));
        }
    };
    let target_name = spec.scale_target_ref.name.clone();

    // The pods and their usage.
    let pods: Vec<Pod> = Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(error("listing pods"))?
        .items
        .into_iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            p.metadata.deletion_timestamp.is_none() && phase != Some("Failed")
        })
        .collect();
    let usage = pod_usage(&ctx.client, &namespace, &selector).await;

    let mut recommendation: Option<i32> = None;
    let mut current_metrics = Vec::new();
    let mut failure: Option<String> = None;
    let mut reason_metric = String::new();
    for metric in spec.metrics.iter().flatten() {
        match evaluate(metric, current, &pods, &usage) {
            Ok((rec, status, what)) => {
                if recommendation.is_none_or(|r| rec.replicas > r) {
                    recommendation = Some(rec.replicas);
                    reason_metric = what;
                }
                current_metrics.push(status);
            }
            Err(message) => {
                failure.get_or_insert(message);
            }
        }
    }
    let key = hpa.uid().unwrap_or_default();
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    if current == 0 && min != 0 {
        set(
            "ScalingActive",
            "False",
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
        );
        write(json!({"currentReplicas": 0, "desiredReplicas": 0, "conditions": conditions}))
            .await
            .map_err(error("updating the status"))?;
        return Ok(Action::requeue(ctx.sync));
    }
    // Out of bounds, the bound applies whatever the metrics say.
    let bound = if current > max {
        Some((max, "Current number of replicas above Spec.MaxReplicas"))
    } else if current < min {
        Some((min, "Current number of replicas below Spec.MinReplicas"))
    } else {
        None
    };
    let (desired, reason) = match (bound, recommendation) {
        (Some((desired, reason)), _) => (desired, reason.to_owned()),
        (None, None) => {
            let message = failure.unwrap_or_else(|| "no metrics to scale on".into());
            set(
                "ScalingActive",
                "False",
                "FailedGetResourceMetric",
                &format!("the HPA was unable to compute the replica count: {message}"),
            );
            ctx.recorder
                .publish(
                    &reference,
                    Kind::Warning,
                    "FailedGetResourceMetric",
                    message,
                )
                .await;
            write(json!({"currentReplicas": current, "conditions": conditions}))
                .await
                .map_err(error("updating the status"))?;
            return Ok(Action::requeue(ctx.sync));
        }
        (None, Some(recommendation)) => {
            set(
                "ScalingActive",
                "True",
                "ValidMetricFound",
                &format!(
                    "the HPA was able to successfully calculate a replica count from {reason_metric}"
                ),
            );
            let behavior = spec.behavior.clone().unwrap_or_default();
            let up = Rules::of(behavior.scale_up.as_ref(), true);
            let down = Rules::of(behavior.scale_down.as_ref(), false);
            let (desired, limited) = {
                let mut all = ctx.memory.lock().unwrap_or_else(|p| p.into_inner());
                let memory = all.entry(key.clone()).or_default();
                let keep = up.window.max(down.window).max(Duration::from_secs(600));
                memory
                    .recommendations
                    .retain(|(t, _)| now.duration_since(*t).unsigned_abs() <= keep);
                memory
                    .changes
                    .retain(|(t, _)| now.duration_since(*t).unsigned_abs() <= keep);
                let result = normalize(current, recommendation, min, max, &up, &down, memory, now);
                memory.recommendations.push((now, recommendation));
                result
            };
            match &limited {
                Some((reason, message)) => set("ScalingLimited", "True", reason, message),
                None => set(
                    "ScalingLimited",
                    "False",
                    "DesiredWithinRange",
                    "the desired count is within the acceptable range",
                ),
            }
            let reason = if desired > current {
                format!("{reason_metric} above target")
            } else {
                "All metrics below target".to_owned()
            };
            (desired, reason)
        }
    };
    let mut last_scale = old
        .last_scale_time
        .as_ref()
        .map(|t| skiff_core::time::format_time(t.0));
    if desired != current {
        let patch = json!({"spec": {"replicas": desired}});
        match scale_api
            .patch_scale(&target_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(from = current, to = desired, "rescaled");
                ctx.memory
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(key)
                    .or_default()
                    .changes
                    .push((now, desired - current));
                set(
                    "AbleToScale",
                    "True",
                    "SucceededRescale",
                    &format!("the HPA controller was able to update the target scale to {desired}"),
                );
                ctx.recorder
                    .publish(
                        &reference,
                        Kind::Normal,
                        "SuccessfulRescale",
                        format!("New size: {desired}; reason: {reason}"),
                    )
                    .await;
                last_scale = Some(now_text.clone());
            }
            Err(e) => {
                let message = e.to_string();
                set(
                    "AbleToScale",
                    "False",
                    "FailedUpdateScale",
                    &format!("the HPA controller was unable to update the target scale: {message}"),
                );
                ctx.recorder
                    .publish(&reference, Kind::Warning, "FailedRescale", message)
                    .await;
            }
        }
    } else {
        set(
            "AbleToScale",
            "True",
            "ReadyForNewScale",
            "recommended size matches current size",
        );
    }
    let status = json!({
        "observedGeneration": hpa.metadata.generation,
        "currentReplicas": current,
        "desiredReplicas": desired,
        "currentMetrics": current_metrics,
        "lastScaleTime": last_scale,
        "conditions": conditions,
    });
    write(status).await.map_err(error("updating the status"))?;
    Ok(Action::requeue(ctx.sync))
}

/// Each pod's usage from metrics.k8s.io: (cpu, memory) in milli-units, by pod name.
async fn pod_usage(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> HashMap<String, (i64, i64)> {
    // Percent-encoded: set-based selectors have spaces, commas and parentheses.
    let encoded: String = selector
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let path =
        format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods?labelSelector={encoded}");
    let request = match http::Request::get(path).body(Vec::new()) {
        Ok(r) => r,
        Err(_) => return HashMap::new(),
    };
    let list: Value = match client.request(request).await {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "reading pod metrics");
            return HashMap::new();
        }
    };
    let mut usage = HashMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let name = item["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (mut cpu, mut memory) = (0, 0);
        for c in item["containers"].as_array().into_iter().flatten() {
            cpu += c["usage"]["cpu"].as_str().and_then(milli).unwrap_or(0);
            memory += c["usage"]["memory"].as_str().and_then(milli).unwrap_or(0);
        }
        usage.insert(name, (cpu, memory));
    }
    usage
}

/// One metric: its recommendation, its `currentMetrics` entry, and how to name it.
fn evaluate(
    metric: &MetricSpec,
    current: i32,
    pods: &[Pod],
    usage: &HashMap<String, (i64, i64)>,
) -> Result<(Recommendation, Value, String), String> {
    let Some(resource) = metric
        .resource
        .as_ref()
        .filter(|_| metric.type_ == "Resource")
    else {
        return Err(format!(
            "the HPA controller does not support {} metrics yet",
            metric.type_
        ));
    };
    let cpu = resource.name == "cpu";
    if !cpu && resource.name != "memory" {
        return Err(format!("unknown resource {}", resource.name));
    }
    let target = match (resource.target.type_.as_str(), &resource.target) {
        ("Utilization", t) => Target::Utilization(t.average_utilization.unwrap_or(80)),
        ("AverageValue", t) => Target::AverageValue(
            t.average_value
                .as_ref()
                .and_then(|q| milli(&q.0))
                .ok_or("averageValue is missing")?,
        ),
        (other, _) => return Err(format!("invalid target type {other} for a resource metric")),
    };
    let samples: Vec<PodSample> = pods
        .iter()
        .map(|p| {
            let containers = p
                .spec
                .as_ref()
                .map(|s| s.containers.clone())
                .unwrap_or_default();
            let requests: Option<i64> = containers
                .iter()
                .map(|c| {
                    c.resources
                        .as_ref()
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| r.get(&resource.name))
                        .and_then(|q| milli(&q.0))
                })
                .sum();
            let used = usage
                .get(&p.name_any())
                .map(|(c, m)| if cpu { *c } else { *m });
            PodSample {
                ready: ready_since(p).is_some(),
                request: requests,
                usage: used,
            }
        })
        .collect();
    let rec = recommend(current, target, &samples, cpu)?;
    // As Kubernetes writes them: millicores, and bytes.
    let average = if cpu {
        format!("{}m", rec.average)
    } else {
        (rec.average / 1000).to_string()
    };
    let mut current_value = json!({"averageValue": average});
    if let Some(u) = rec.utilization {
        current_value["averageUtilization"] = json!(u);
    }
    let status =
        json!({"type": "Resource", "resource": {"name": resource.name, "current": current_value}});
    let what = match target {
        Target::Utilization(_) => format!(
            "{} resource utilization (percentage of request)",
            resource.name
        ),
        Target::AverageValue(_) => format!("{} resource", resource.name),
    };
    Ok((rec, status, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ready: bool, request: i64, usage: Option<i64>) -> PodSample {
        PodSample {
            ready,
            request: Some(request),
            usage,
        }
    }

    #[test]
    fn replicas_follow_usage_outside_the_tolerance() {
        let target = Target::Utilization(50);
        // 2 pods at 100%: 4.
        let busy = [pod(true, 100, Some(100)), pod(true, 100, Some(100))];
        assert_eq!(recommend(2, target, &busy, true).unwrap().replicas, 4);
        assert_eq!(
            recommend(2, target, &busy, true).unwrap().utilization,
            Some(100)
        );
        // 54%: within 10% of 50%.
        let near = [pod(true, 100, Some(54)), pod(true, 100, Some(54))];
        assert_eq!(recommend(2, target, &near, true).unwrap().replicas, 2);
        // 10% of 3: 1.
        let idle = [
            pod(true, 100, Some(10)),
            pod(true, 100, Some(10)),
            pod(true, 100, Some(10)),
        ];
        assert_eq!(recommend(3, target, &idle, true).unwrap().replicas, 1);
        // Average value: 300m a pod against 100m: 3 × 2 pods.
        let avg = [pod(true, 100, Some(300)), pod(true, 100, Some(300))];
        assert_eq!(
            recommend(2, Target::AverageValue(100), &avg, true)
                .unwrap()
                .replicas,
            6
        );
        assert!(recommend(2, target, &[pod(false, 100, Some(100))], true).is_err());
        let no_request = PodSample {
            ready: true,
            request: None,
            usage: Some(5),
        };
        assert!(recommend(1, target, &[no_request], true).is_err());
    }

    #[test]
    fn missing_and_unready_pods_damp_the_change() {
        let target = Target::Utilization(50);
        // Scaling up: the pod without metrics counts as idle: (100+100+0)/(3×50) → 4.
        let pods = [
            pod(true, 100, Some(100)),
            pod(true, 100, Some(100)),
            pod(true, 100, None),
        ];
        assert_eq!(recommend(3, target, &pods, true).unwrap().replicas, 4);
        // Scaling down: it counts as at its request: (10+100)/(2×50)=1.1 → no change.
        let pods = [pod(true, 100, Some(10)), pod(true, 100, None)];
        assert_eq!(recommend(2, target, &pods, true).unwrap().replicas, 2);
    }

    #[test]
    fn behavior_stabilizes_and_limits_the_rate() {
        let now: jiff::Timestamp = "2026-12-05T10:05:00Z".parse().unwrap();
        let ago = |s: i64| now - jiff::SignedDuration::from_secs(s);
        let up = Rules::of(None, true);
        let down = Rules::of(None, false);
        let memory = Memory::default();
        // Up from 1 to 10: 100% or 4 pods, the larger: 5.
        assert_eq!(
            normalize(1, 10, 1, 20, &up, &down, &memory, now),
            (
                5,
                Some((
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate"
                        .into()
                ))
            )
        );
        // Beyond max.
        assert_eq!(normalize(1, 10, 1, 3, &up, &down, &memory, now).0, 3);
        // Down: within the 300 s window a higher recommendation holds it.
        let remembered = Memory {
            recommendations: vec![(ago(200), 6), (ago(400), 9)],
            changes: Vec::new(),
        };
        assert_eq!(normalize(6, 2, 1, 20, &up, &down, &remembered, now).0, 6);
        let quick = Rules {
            window: Duration::ZERO,
            ..down.clone()
        };
        assert_eq!(normalize(6, 2, 1, 20, &up, &quick, &remembered, now).0, 2);
        // Already scaled up by 4 in the last 15 s: only 4 more (from a start of 2).
        let scaled = Memory {
            recommendations: Vec::new(),
            changes: vec![(ago(5), 4)],
        };
        assert_eq!(normalize(6, 20, 1, 30, &up, &down, &scaled, now).0, 6);
        // Never below min.
        assert_eq!(
            normalize(3, 0, 2, 10, &up, &quick, &Memory::default(), now).0,
            2
        );
    }
}
