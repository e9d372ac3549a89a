//! skiff's scheduler: an API client, like kube-scheduler, that assigns pending pods to nodes.
//!
//! Informers ([`kube::runtime::watcher`]) keep a [`cache::Cache`] of nodes and placed pods and
//! feed pending pods into the [`queue::Queue`]. One scheduling thread takes pods one at a time
//! and runs their profile's [`framework::Profile`]: built-in plugins ([`builtins`]) and Wasm
//! plugins ([`wasm`], hot-loaded from `Plugin` objects by [`plugins`]) behind one trait. The
//! chosen node is assumed in the cache at once and bound through `pods/binding` in the
//! background, so the next pod is scheduled while the binding is in flight. Failures become
//! `FailedScheduling` events with kube-scheduler's message and a `PodScheduled=False`
//! condition.
//!
//! Plugin calls are synchronous and bounded by their deadlines; they run only on the
//! scheduling thread, never on the async runtime.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), skiff_scheduler::Error> {
//! use std::sync::Arc;
//! let host = Arc::new(skiff_plugin_host::Host::new(Default::default()).unwrap());
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! skiff_scheduler::run(client, Default::default(), host, Default::default(), shutdown).await
//! # }
//! ```

pub mod builtins;
pub mod cache;
mod core;
pub mod framework;
mod metrics;
pub mod model;
pub mod plugins;
pub mod preemption;
pub mod queue;
mod report;
pub mod topology;
pub mod wasm;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use metrics::{Metrics, Sample};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// One profile: the `schedulerName` it serves and how its built-ins are set up.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileConfig {
    /// The `spec.schedulerName` of the pods it schedules.
    pub scheduler_name: String,
    /// Built-in plugins to switch off.
    #[serde(default)]
    pub disabled: Vec<String>,
    /// Score weights of built-ins, overriding the defaults.
    #[serde(default)]
    pub weights: BTreeMap<String, i64>,
}

/// The scheduler's configuration (`--config` file of `skiff scheduler`, JSON or YAML).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// The profiles; default one, `default-scheduler`, with every built-in.
    pub profiles: Vec<ProfileConfig>,
    /// Percentage of nodes to find feasible before scoring; 0 is kube-scheduler's
    /// adaptive default (all up to 100 nodes, then from 50% down to 5%).
    pub percentage_of_nodes_to_score: u32,
    /// How many bindings may be in flight at once.
    pub parallel_bindings: usize,
    /// Registries (`host:port`) that Plugin components are pulled from over plain HTTP.
    pub insecure_registries: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            profiles: vec![ProfileConfig {
                scheduler_name: "default-scheduler".into(),
                disabled: Vec::new(),
                weights: BTreeMap::new(),
            }],
            percentage_of_nodes_to_score: 0,
            parallel_bindings: 64,
            insecure_registries: Vec::new(),
        }
    }
}

/// Why the scheduler stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A profile names a built-in that doesn't exist.
    #[error("profile {profile:?}: unknown built-in plugin {plugin:?}")]
    UnknownPlugin {
        /// The profile.
        profile: String,
        /// The name.
        plugin: String,
    },
    /// The scheduling thread could not start or died.
    #[error("the scheduling thread failed")]
    Thread(#[source] std::io::Error),
}

/// Runs the scheduler until `shutdown` is cancelled. Pods are scheduled once pods, nodes
/// and Plugin objects have been listed and the listed plugins loaded.
pub async fn run(
    client: kube::Client,
    config: Config,
    host: Arc<skiff_plugin_host::Host>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let profiles = core::profiles(&config)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let reporter = report::Reporter::start(client.clone(), shutdown.clone());
    let runtime = tokio::runtime::Handle::current();
    let thread = core::Core::spawn(
        profiles,
        (tx.clone(), rx),
        reporter.clone(),
        client.clone(),
        runtime,
        config.parallel_bindings,
        metrics,
    )
    .map_err(Error::Thread)?;
    let informers = tokio::spawn(core::informers(
        client.clone(),
        tx.clone(),
        shutdown.clone(),
    ));
    let manager = tokio::spawn(plugins::manage(
        client,
        host,
        skiff_oci::Registry::new(&config.insecure_registries),
        tx.clone(),
        reporter,
        shutdown.clone(),
    ));
    shutdown.cancelled().await;
    let _ = tx.send(core::Msg::Stop);
    informers.abort();
    manager.abort();
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    Ok(())
}
