//! The plugin manager: watches `Plugin` objects (`skiff.dev/v1alpha1`) and hot-loads the
//! scheduler plugins among them.
//!
//! For each new generation of a Plugin it fetches the component, compiles it (or takes it
//! from the cache), checks it against the `scheduler-plugin` world, makes a trial instance
//! with the plugin's config, and only then asks the scheduling thread to swap it in; the
//! swap itself replays the cache into a fresh instance and replaces the old entry between
//! two cycles. Anything that fails on the way leaves the working version in place and is
//! written to the Plugin's status and events. Deleting the object unloads the plugin.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use skiff_core::status::error_chain;
use skiff_plugin_host::{Host, Limits, PluginError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::core::Msg;
use crate::report::Reporter;
use crate::wasm::{FailurePolicy, Points, WasmSpec};

/// The Plugin resource, for the dynamic client.
pub fn resource() -> ApiResource {
    ApiResource {
        group: "skiff.dev".into(),
        version: "v1alpha1".into(),
        api_version: "skiff.dev/v1alpha1".into(),
        kind: "Plugin".into(),
        plural: "plugins".into(),
    }
}

pub(crate) fn api(client: &kube::Client) -> kube::Api<DynamicObject> {
    kube::Api::all_with(client.clone(), &resource())
}

/// A Plugin's spec, read for the scheduler.
struct Parsed {
    spec: WasmSpec,
    profile: String,
    source: Source,
}

enum Source {
    File(String),
    Oci(String),
    Inline(Vec<u8>),
}

/// Why a Plugin can't be loaded (before any Wasm is involved).
#[derive(Debug, thiserror::Error)]
enum SpecError {
    #[error("skiff has no host for {0} plugins yet; only scheduler plugins are loaded")]
    UnsupportedKind(String),
    #[error("spec.component: {0}")]
    Component(String),
    #[error("spec.scheduler.extensionPoints: unknown extension point {0:?}")]
    ExtensionPoint(String),
}

fn parse(obj: &DynamicObject) -> Result<Parsed, SpecError> {
    let spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
    let kind = spec["kind"].as_str().unwrap_or_default();
    if kind != "scheduler" {
        return Err(SpecError::UnsupportedKind(kind.to_owned()));
    }
    let component = &spec["component"];
    let source = if let Some(path) = component["file"].as_str() {
        Source::File(path.to_owned())
    } else if let Some(reference) = component["oci"].as_str() {
        Source::Oci(reference.to_owned())
    } else if let Some(b64) = component["inline"].as_str() {
        Source::Inline(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| SpecError::Component(format!("inline is not base64: {e}")))?,
        )
    } else {
        return Err(SpecError::Component("set file, oci or inline".into()));
    };
    let scheduler = &spec["scheduler"];
    let points = match scheduler["extensionPoints"].as_array() {
        Some(names) if !names.is_empty() => Points::parse(names.iter().filter_map(Value::as_str))
            .map_err(SpecError::ExtensionPoint)?,
        _ => Points::ALL,
    };
    let defaults = Limits::default();
    let limits = &spec["limits"];
    let limits = Limits {
        memory_bytes: limits["memoryBytes"]
            .as_u64()
            .map_or(defaults.memory_bytes, |b| b as usize),
        call_timeout: limits["timeoutMilliseconds"]
            .as_u64()
            .map_or(defaults.call_timeout, Duration::from_millis),
        fuel: limits["fuel"].as_u64(),
    };
    let name = obj.metadata.name.clone().unwrap_or_default();
    Ok(Parsed {
        spec: WasmSpec {
            name,
            config: spec
                .get("config")
                .map_or_else(|| "{}".to_owned(), Value::to_string),
            failure_policy: match spec["failurePolicy"].as_str() {
                Some("Ignore") => FailurePolicy::Ignore,
                _ => FailurePolicy::Fail,
            },
            points,
            weight: scheduler["weight"].as_i64().unwrap_or(1),
            replaces: scheduler["replaces"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            limits,
            generation: obj.metadata.generation.unwrap_or(0),
        },
        profile: scheduler["profile"]
            .as_str()
            .unwrap_or("default-scheduler")
            .to_owned(),
        source,
    })
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": type_,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": jiff::Timestamp::now().to_string(),
        "observedGeneration": generation,
    })
}

async fn write_status(client: &kube::Client, name: &str, status: Value) {
    let patch = json!({ "status": status });
    if let Err(e) = api(client)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        warn!(
            plugin.name = name,
            error = &e as &dyn std::error::Error,
            "cannot write plugin status"
        );
    }
}

/// What is loaded, by Plugin name.
#[derive(Default)]
struct Loaded {
    /// The generation last acted on (loaded or refused).
    seen: HashMap<String, i64>,
    /// The digest serving now.
    serving: HashMap<String, String>,
    /// Generations whose load failed in a way another try may fix (a file not written yet,
    /// a registry down), tried again with backoff as controllers requeue.
    retries: HashMap<String, Retry>,
}

/// A failed load to try again.
struct Retry {
    obj: DynamicObject,
    due: tokio::time::Instant,
    backoff: Duration,
    /// The failure's message: a retry that fails the same way writes no status or event.
    message: String,
}

/// The first retry's delay; it doubles per failure up to [`MAX_RETRY_BACKOFF`].
const FIRST_RETRY_BACKOFF: Duration = Duration::from_secs(1);
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(300);

/// Why a generation didn't load: the status message, and whether trying again may help.
struct LoadError {
    message: String,
    transient: bool,
}

impl LoadError {
    fn permanent(message: impl Into<String>) -> Self {
        LoadError {
            message: message.into(),
            transient: false,
        }
    }

    fn transient(message: String) -> Self {
        LoadError {
            message,
            transient: true,
        }
    }
}

/// Watches Plugin objects until cancelled.
pub(crate) async fn manage(
    client: kube::Client,
    host: Arc<Host>,
    registry: skiff_oci::Registry,
    tx: Sender<Msg>,
    reporter: Reporter,
    shutdown: CancellationToken,
) {
    let work = async {
        let mut state = Loaded::default();
        let mut listed = HashSet::new();
        let mut stream = watcher(api(&client), watcher::Config::default()).boxed();
        loop {
            let due = state.retries.values().map(|r| r.due).min();
            let event = tokio::select! {
                event = stream.next() => match event {
                    Some(event) => event,
                    None => break,
                },
                () = async {
                    match due {
                        Some(due) => tokio::time::sleep_until(due).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = tokio::time::Instant::now();
                    let ready: Vec<String> = state
                        .retries
                        .iter()
                        .filter(|(_, r)| r.due <= now)
                        .map(|(n, _)| n.clone())
                        .collect();
                    for name in ready {
                        // Forgetting the generation makes apply try it again.
                        let obj = state.retries[&name].obj.clone();
                        state.seen.remove(&name);
                        apply(&client, &host, &registry, &tx, &reporter, &mut state, obj).await;
                    }
                    continue;
                }
            };
            match event {
                Ok(watcher::Event::Apply(obj)) => {
                    apply(&client, &host, &registry, &tx, &reporter, &mut state, obj).await
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    listed.insert(obj.metadata.name.clone().unwrap_or_default());
                    apply(&client, &host, &registry, &tx, &reporter, &mut state, obj).await
                }
                Ok(watcher::Event::Delete(obj)) => {
                    let name = obj.metadata.name.unwrap_or_default();
                    unload(&tx, &mut state, &name);
                }
                Ok(watcher::Event::Init) => listed.clear(),
                Ok(watcher::Event::InitDone) => {
                    // Every listed plugin has been applied (loaded or refused) by now.
                    let _ = tx.send(Msg::PluginsListed);
                    let gone: Vec<String> = state
                        .seen
                        .keys()
                        .filter(|n| !listed.contains(*n))
                        .cloned()
                        .collect();
                    for name in gone {
                        unload(&tx, &mut state, &name);
                    }
                }
                Err(e) => {
                    warn!(
                        error = &e as &dyn std::error::Error,
                        "plugin watch failed; retrying"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    };
    tokio::select! {
        _ = work => {}
        _ = shutdown.cancelled() => {}
    }
}

fn unload(tx: &Sender<Msg>, state: &mut Loaded, name: &str) {
    state.seen.remove(name);
    state.retries.remove(name);
    if state.serving.remove(name).is_some() {
        let _ = tx.send(Msg::Uninstall(name.to_owned()));
    }
}

async fn apply(
    client: &kube::Client,
    host: &Arc<Host>,
    registry: &skiff_oci::Registry,
    tx: &Sender<Msg>,
    reporter: &Reporter,
    state: &mut Loaded,
    obj: DynamicObject,
) {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    let generation = obj.metadata.generation.unwrap_or(0);
    if obj.metadata.deletion_timestamp.is_some() {
        unload(tx, state, &name);
        return;
    }
    // Status writes (ours included) don't change the generation: nothing to do.
    if state.seen.get(&name) == Some(&generation) {
        return;
    }
    state.seen.insert(name.clone(), generation);
    let started = std::time::Instant::now();
    let outcome = load(host, registry, tx, &obj).await;
    let previous = state.serving.get(&name).cloned();
    let retry = state.retries.remove(&name);
    match outcome {
        Ok(digest) => {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            info!(plugin.name = %name, plugin.digest = %digest, generation, load.ms = ms, "plugin ready");
            let message = format!("serving {digest}");
            write_status(
                client,
                &name,
                json!({
                    "observedGeneration": generation,
                    "digest": digest,
                    "loadMilliseconds": (ms * 1000.0).round() / 1000.0,
                    "failures": 0,
                    "conditions": [
                        condition("Loaded", true, "Loaded", "the component was compiled, checked and initialised", generation),
                        condition("Ready", true, "Serving", &message, generation),
                    ],
                }),
            )
            .await;
            reporter.plugin_event(
                &name,
                &uid,
                false,
                "Loaded",
                &format!("Loaded generation {generation}: {message}"),
            );
            state.serving.insert(name, digest);
        }
        Err(LoadError { message, transient }) => {
            let retry = retry.filter(|r| r.obj.metadata.generation == obj.metadata.generation);
            let repeated = retry.as_ref().is_some_and(|r| r.message == message);
            if transient {
                // The same generation failing again backs off further; a new one starts over.
                let backoff = retry.map_or(FIRST_RETRY_BACKOFF, |r| {
                    (r.backoff * 2).min(MAX_RETRY_BACKOFF)
                });
                state.retries.insert(
                    name.clone(),
                    Retry {
                        due: tokio::time::Instant::now() + backoff,
                        backoff,
                        obj: obj.clone(),
                        message: message.clone(),
                    },
                );
            }
            if repeated {
                debug!(plugin.name = %name, generation, error = %message, "plugin still not loaded");
                return;
            }
            warn!(plugin.name = %name, generation, error = %message, transient, "plugin not loaded");
            let (ready, reason, ready_message) = match &previous {
                Some(digest) => (
                    true,
                    "PreviousVersion",
                    format!("still serving {digest}; generation {generation} failed to load"),
                ),
                None => (false, "LoadFailed", message.clone()),
            };
            write_status(
                client,
                &name,
                json!({
                    "observedGeneration": generation,
                    "lastError": message,
                    "lastErrorTime": jiff::Timestamp::now().to_string(),
                    "conditions": [
                        condition("Loaded", false, "LoadFailed", &message, generation),
                        condition("Ready", ready, reason, &ready_message, generation),
                    ],
                }),
            )
            .await;
            reporter.plugin_event(&name, &uid, true, "FailedLoad", &message);
        }
    }
}

/// Loads one Plugin generation into the scheduler; the error is the status message.
async fn load(
    host: &Arc<Host>,
    registry: &skiff_oci::Registry,
    tx: &Sender<Msg>,
    obj: &DynamicObject,
) -> Result<String, LoadError> {
    let parsed = parse(obj).map_err(|e| LoadError::permanent(e.to_string()))?;
    let bytes = match &parsed.source {
        Source::File(path) => tokio::fs::read(path)
            .await
            .map_err(|e| LoadError::transient(format!("spec.component.file {path:?}: {e}")))?,
        Source::Oci(reference) => {
            let pulled = registry.pull_component(reference).await.map_err(|e| {
                let message = format!("spec.component.oci: {}", error_chain(&e));
                if e.is_transient() {
                    LoadError::transient(message)
                } else {
                    LoadError::permanent(message)
                }
            })?;
            info!(plugin.name = %parsed.spec.name, oci.reference = %reference, oci.manifest = %pulled.manifest_digest, "pulled component");
            pulled.bytes
        }
        Source::Inline(bytes) => bytes.clone(),
    };
    let host = host.clone();
    let spec = parsed.spec.clone();
    // Compiling takes tens of milliseconds (seconds for Python): off the async runtime. The
    // trial instance checks that the plugin accepts its config before anything depends on it.
    let pre = tokio::task::spawn_blocking(move || -> Result<_, PluginError> {
        let loaded = host.load(&spec.name, &bytes)?;
        let pre = host.scheduler(&spec.name, &loaded)?;
        pre.instantiate(spec.limits.clone())?.init(&spec.config)?;
        Ok(pre)
    })
    .await
    .map_err(|e| LoadError::permanent(format!("the load task failed: {e}")))?
    .map_err(|e| LoadError::permanent(e.to_string()))?;
    let digest = pre.digest().to_owned();
    let (reply, answer) = tokio::sync::oneshot::channel();
    tx.send(Msg::Install(Box::new(crate::core::Install {
        spec: parsed.spec,
        profile: parsed.profile,
        pre,
        reply,
    })))
    .map_err(|_| LoadError::permanent("the scheduler is shutting down"))?;
    answer
        .await
        .map_err(|_| LoadError::permanent("the scheduler is shutting down"))?
        .map_err(|e| LoadError::permanent(e.to_string()))?;
    Ok(digest)
}
