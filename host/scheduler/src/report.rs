//! Writes what the scheduler has to say to the API, off the scheduling thread: pod events
//! (`Scheduled`, `FailedScheduling`, aggregated like kube's event recorder), the
//! `PodScheduled=False` condition, and Plugin status and events for plugin failures.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as core;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use skiff_plugin_host::PluginError;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::model::PodInfo;
use crate::wasm::WasmSpec;

/// The `source.component` / `reportingComponent` of the scheduler's own events (about
/// plugins); events about a pod name the profile (`schedulerName`) that handled it, as
/// kube-scheduler's per-profile recorders do.
pub(crate) const COMPONENT: &str = "default-scheduler";
/// A failing plugin's status and events are written at most this often.
const PLUGIN_REPORT_INTERVAL: Duration = Duration::from_secs(2);

enum Report {
    Scheduled(Arc<PodInfo>, String),
    Failed(Arc<PodInfo>, String),
    /// Evict these pods to make room for the first on the node.
    Preempt(Arc<PodInfo>, String, Vec<Arc<PodInfo>>),
    PluginFailed(String, PluginError),
    /// Something else about a plugin worth an event (load failures).
    PluginEvent {
        name: String,
        uid: String,
        warning: bool,
        reason: String,
        message: String,
    },
}

/// A handle to the reporting task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Reporter {
    tx: UnboundedSender<Report>,
}

impl Reporter {
    pub(crate) fn start(client: kube::Client, shutdown: CancellationToken) -> Self {
        let (tx, rx) = unbounded_channel();
        tokio::spawn(async move {
            tokio::select! {
                _ = work(client, rx) => {}
                _ = shutdown.cancelled() => {}
            }
        });
        Reporter { tx }
    }

    pub(crate) fn scheduled(&self, pod: &Arc<PodInfo>, node: &str) {
        let _ = self
            .tx
            .send(Report::Scheduled(pod.clone(), node.to_owned()));
    }

    pub(crate) fn failed(&self, pod: &Arc<PodInfo>, message: &str) {
        let _ = self
            .tx
            .send(Report::Failed(pod.clone(), message.to_owned()));
    }

    pub(crate) fn preempt(&self, pod: &Arc<PodInfo>, node: &str, victims: Vec<Arc<PodInfo>>) {
        let _ = self
            .tx
            .send(Report::Preempt(pod.clone(), node.to_owned(), victims));
    }

    pub(crate) fn plugin_event(
        &self,
        name: &str,
        uid: &str,
        warning: bool,
        reason: &str,
        message: &str,
    ) {
        let _ = self.tx.send(Report::PluginEvent {
            name: name.to_owned(),
            uid: uid.to_owned(),
            warning,
            reason: reason.to_owned(),
            message: message.to_owned(),
        });
    }

    /// The callback Wasm plugins report failed calls through.
    pub(crate) fn plugin_failures(&self) -> crate::wasm::Reporter {
        let tx = self.tx.clone();
        Arc::new(move |spec: &WasmSpec, e: &PluginError| {
            let _ = tx.send(Report::PluginFailed(spec.name.clone(), e.clone()));
        })
    }
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn event_name(object: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{object}.{nanos:x}")
}

fn event(
    component: &str,
    namespace: &str,
    involved: Value,
    warning: bool,
    reason: &str,
    message: &str,
    object: &str,
) -> Value {
    let time = now();
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(object), "namespace": namespace},
        "involvedObject": involved,
        "type": if warning { "Warning" } else { "Normal" },
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": time,
        "lastTimestamp": time,
        "count": 1,
    })
}

fn pod_ref(pod: &PodInfo) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": pod.namespace(),
        "name": pod.name(),
        "uid": pod.uid,
        "resourceVersion": pod.pod.metadata.resource_version,
    })
}

/// The last FailedScheduling event of a pod, so repeats bump its count.
struct LastFailure {
    message: String,
    event: String,
    count: i64,
}

#[derive(Default)]
struct PluginFailures {
    total: i64,
    last_write: Option<Instant>,
    pending: Option<PluginError>,
}

async fn create_event(client: &kube::Client, namespace: &str, event: &Value) {
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        client.clone(),
        namespace,
        &kube::api::ApiResource::erase::<core::Event>(&()),
    );
    let Ok(object) = serde_json::from_value(event.clone()) else {
        return;
    };
    if let Err(e) = api.create(&PostParams::default(), &object).await {
        warn!(
            error = &e as &dyn std::error::Error,
            "cannot record an event"
        );
    }
}

async fn work(client: kube::Client, mut rx: UnboundedReceiver<Report>) {
    let mut failures: HashMap<String, LastFailure> = HashMap::new();
    let mut plugins: HashMap<String, PluginFailures> = HashMap::new();
    let mut tick = tokio::time::interval(PLUGIN_REPORT_INTERVAL);
    // Scheduled events are independent of each other: written concurrently, so a burst
    // of bindings doesn't queue up behind one request at a time.
    let writers = Arc::new(tokio::sync::Semaphore::new(32));
    loop {
        let report = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => return },
            _ = tick.tick() => {
                for (name, state) in &mut plugins {
                    if let Some(e) = state.pending.take() {
                        state.last_write = Some(Instant::now());
                        plugin_failed(&client, name, state.total, &e).await;
                    }
                }
                continue;
            }
        };
        match report {
            Report::Scheduled(pod, node) => {
                failures.remove(&pod.uid);
                let message = format!("Successfully assigned {} to {node}", pod.key);
                let e = event(
                    &pod.scheduler_name,
                    pod.namespace(),
                    pod_ref(&pod),
                    false,
                    "Scheduled",
                    &message,
                    pod.name(),
                );
                let (client, permit) = (client.clone(), writers.clone().acquire_owned().await);
                tokio::spawn(async move {
                    create_event(&client, pod.namespace(), &e).await;
                    drop(permit);
                });
            }
            Report::Failed(pod, message) => {
                let events: kube::Api<core::Event> =
                    kube::Api::namespaced(client.clone(), pod.namespace());
                if let Some(last) = failures.get_mut(&pod.uid)
                    && last.message == message
                {
                    last.count += 1;
                    let patch = json!({"count": last.count, "lastTimestamp": now()});
                    let _ = events
                        .patch(&last.event, &PatchParams::default(), &Patch::Merge(&patch))
                        .await;
                    continue;
                }
                let e = event(
                    &pod.scheduler_name,
                    pod.namespace(),
                    pod_ref(&pod),
                    true,
                    "FailedScheduling",
                    &message,
                    pod.name(),
                );
                let name = e["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                create_event(&client, pod.namespace(), &e).await;
                failures.insert(
                    pod.uid.clone(),
                    LastFailure {
                        message: message.clone(),
                        event: name,
                        count: 1,
                    },
                );
                let pods: kube::Api<core::Pod> =
                    kube::Api::namespaced(client.clone(), pod.namespace());
                let patch = json!({"status": {"conditions": [{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastProbeTime": null,
                    "lastTransitionTime": now(),
                }]}});
                if let Err(e) = pods
                    .patch_status(
                        pod.name(),
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await
                    && !matches!(&e, kube::Error::Api(s) if s.code == 404)
                {
                    warn!(pod.key = %pod.key, error = &e as &dyn std::error::Error, "cannot set PodScheduled=False");
                }
            }
            Report::Preempt(pod, node, victims) => preempt(&client, &pod, &node, &victims).await,
            Report::PluginFailed(name, e) => {
                let state = plugins.entry(name.clone()).or_default();
                state.total += 1;
                let due = state
                    .last_write
                    .is_none_or(|t| t.elapsed() >= PLUGIN_REPORT_INTERVAL);
                if due {
                    state.last_write = Some(Instant::now());
                    state.pending = None;
                    plugin_failed(&client, &name, state.total, &e).await;
                } else {
                    state.pending = Some(e);
                }
            }
            Report::PluginEvent {
                name,
                uid,
                warning,
                reason,
                message,
            } => {
                if reason == "Loaded" {
                    plugins.remove(&name);
                }
                let involved = json!({"apiVersion": "skiff.dev/v1alpha1", "kind": "Plugin", "name": name, "uid": uid});
                let e = event(
                    COMPONENT, "default", involved, warning, &reason, &message, &name,
                );
                create_event(&client, "default", &e).await;
            }
        }
    }
}

/// Evicts the victims as kube-scheduler does (a DisruptionTarget condition, a graceful
/// delete, a Preempted event on each) and nominates the node on the preemptor's status.
async fn preempt(client: &kube::Client, pod: &PodInfo, node: &str, victims: &[Arc<PodInfo>]) {
    for victim in victims {
        let pods: kube::Api<core::Pod> = kube::Api::namespaced(client.clone(), victim.namespace());
        let condition = json!({"status": {"conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "PreemptionByScheduler",
            "message": format!("{}: preempting to accommodate a higher priority pod", pod.scheduler_name),
            "lastTransitionTime": now(),
        }]}});
        if let Err(e) = pods
            .patch_status(
                victim.name(),
                &PatchParams::default(),
                &Patch::Strategic(&condition),
            )
            .await
        {
            warn!(pod.key = %victim.key, error = &e as &dyn std::error::Error, "cannot mark a preemption victim");
        }
        // The uid precondition: a pod recreated under the same name is not a victim.
        let delete = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: Some(victim.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods.delete(victim.name(), &delete).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => continue,
            Err(e) => {
                warn!(pod.key = %victim.key, error = &e as &dyn std::error::Error, "cannot evict a preemption victim");
                continue;
            }
        }
        let message = format!("Preempted by pod {} on node {node}", pod.uid);
        let e = event(
            &pod.scheduler_name,
            victim.namespace(),
            pod_ref(victim),
            false,
            "Preempted",
            &message,
            victim.name(),
        );
        create_event(client, victim.namespace(), &e).await;
    }
    let pods: kube::Api<core::Pod> = kube::Api::namespaced(client.clone(), pod.namespace());
    let nominated = json!({"status": {"nominatedNodeName": node}});
    if let Err(e) = pods
        .patch_status(
            pod.name(),
            &PatchParams::default(),
            &Patch::Merge(&nominated),
        )
        .await
    {
        warn!(pod.key = %pod.key, error = &e as &dyn std::error::Error, "cannot nominate a node");
    }
}

async fn plugin_failed(client: &kube::Client, name: &str, total: i64, e: &PluginError) {
    warn!(
        plugin.name = name,
        error = e as &dyn std::error::Error,
        failures = total,
        "plugin call failed"
    );
    let api = crate::plugins::api(client);
    let patch = json!({"status": {
        "failures": total,
        "lastError": e.to_string(),
        "lastErrorTime": now(),
    }});
    let uid = match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(obj) => obj.metadata.uid.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let involved =
        json!({"apiVersion": "skiff.dev/v1alpha1", "kind": "Plugin", "name": name, "uid": uid});
    let reason = match e.kind {
        skiff_plugin_host::ErrorKind::Timeout => "PluginTimeout",
        skiff_plugin_host::ErrorKind::MemoryLimit => "PluginMemoryLimit",
        _ => "PluginFailed",
    };
    let ev = event(
        COMPONENT,
        "default",
        involved,
        true,
        reason,
        &e.to_string(),
        name,
    );
    create_event(client, "default", &ev).await;
}
