//! The scheduling thread: owns the cache, the queue and the profiles; takes messages from
//! the informers, the plugin manager and the binders; schedules one pod at a time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use kube::runtime::watcher;
use skiff_plugin_host::{PluginError, SchedulerPre};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cache::Cache;
use crate::framework::{CycleError, Entry, Profile, histogram};
use crate::metrics::{Metrics, Outcome};
use crate::model::{NodeInfo, PodInfo};
use crate::report::Reporter;
use crate::wasm::{WasmPlugin, WasmSpec};
use crate::{Config, Error, builtins};

/// What the scheduling thread is told.
pub(crate) enum Msg {
    Pod(Arc<core::Pod>),
    PodDeleted(Arc<core::Pod>),
    /// A relist finished: pods not in the set are gone.
    PodsListed(HashSet<String>),
    Node(Arc<core::Node>),
    NodeDeleted(String),
    NodesListed(HashSet<String>),
    Namespace(Arc<core::Namespace>),
    NamespaceDeleted(String),
    NamespacesListed(HashSet<String>),
    /// The Plugin objects listed at start are loaded (or refused).
    PluginsListed,
    /// Load a Wasm plugin (replacing one of the same name); the reply says whether it
    /// took over.
    Install(Box<Install>),
    Uninstall(String),
    Bound {
        pod: Arc<PodInfo>,
        profile: String,
        slot: u32,
        result: Result<(), BindError>,
    },
    Stop,
}

/// A Wasm plugin to swap in.
pub(crate) struct Install {
    pub(crate) spec: WasmSpec,
    pub(crate) profile: String,
    pub(crate) pre: SchedulerPre,
    pub(crate) reply: tokio::sync::oneshot::Sender<Result<(), PluginError>>,
}

/// How a binding failed.
#[derive(Debug)]
pub(crate) enum BindError {
    /// The pod is gone or already bound: forget it.
    Gone,
    /// Retry later.
    Retry(String),
}

/// Builds the profiles of the configuration with their built-ins.
pub(crate) fn profiles(config: &Config) -> Result<HashMap<String, Profile>, Error> {
    let known = builtins::names();
    let mut out = HashMap::new();
    for p in &config.profiles {
        for name in p.disabled.iter().chain(p.weights.keys()) {
            if !known.contains(name) {
                return Err(Error::UnknownPlugin {
                    profile: p.scheduler_name.clone(),
                    plugin: name.clone(),
                });
            }
        }
        let mut profile = Profile::new(&p.scheduler_name);
        profile.percentage_of_nodes_to_score = config.percentage_of_nodes_to_score;
        for (plugin, weight) in builtins::defaults() {
            if p.disabled.iter().any(|d| d == plugin.name()) {
                continue;
            }
            let weight = p.weights.get(plugin.name()).copied().unwrap_or(weight);
            profile.entries.push(Entry {
                plugin,
                weight,
                wasm: false,
                replaces: Vec::new(),
            });
        }
        out.insert(p.scheduler_name.clone(), profile);
    }
    Ok(out)
}

pub(crate) struct Core {
    profiles: HashMap<String, Profile>,
    cache: Cache,
    queue: crate::queue::Queue,
    rx: Receiver<Msg>,
    tx: Sender<Msg>,
    reporter: Reporter,
    client: kube::Client,
    runtime: tokio::runtime::Handle,
    bindings: Arc<Semaphore>,
    /// Known pods (bound or pending), by uid, for relists.
    pods: HashMap<String, Arc<PodInfo>>,
    metrics: Metrics,
    /// What has not finished its first listing. No pod is scheduled before the cache holds
    /// the whole cluster and the plugins that existed at start serve: a restart must not
    /// place pods without the filters their tenants loaded.
    unsynced: HashSet<&'static str>,
}

impl Core {
    pub(crate) fn spawn(
        profiles: HashMap<String, Profile>,
        (tx, rx): (Sender<Msg>, Receiver<Msg>),
        reporter: Reporter,
        client: kube::Client,
        runtime: tokio::runtime::Handle,
        parallel_bindings: usize,
        metrics: Metrics,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let mut core = Core {
            profiles,
            cache: Cache::default(),
            queue: Default::default(),
            rx,
            // The binders report back on the same channel.
            tx,
            reporter,
            client,
            runtime,
            bindings: Arc::new(Semaphore::new(parallel_bindings.max(1))),
            pods: HashMap::new(),
            metrics,
            unsynced: ["pods", "nodes", "namespaces", "plugins"].into(),
        };
        std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || core.run())
    }

    fn run(&mut self) {
        let mut last_flush = Instant::now();
        loop {
            // Events first: the cycle should see the cluster as it is now.
            loop {
                match self.rx.try_recv() {
                    Ok(Msg::Stop) => return,
                    Ok(msg) => self.handle(msg),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if now.duration_since(last_flush) > Duration::from_secs(5) {
                self.queue.flush_stale(now);
                last_flush = now;
            }
            if self.unsynced.is_empty()
                && let Some(pod) = self.queue.pop(now)
            {
                self.schedule_one(pod);
                continue;
            }
            let wait = self
                .queue
                .next_due()
                .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now))
                .min(Duration::from_secs(1));
            match self.rx.recv_timeout(wait) {
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(msg) => self.handle(msg),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn synced(&mut self, what: &'static str) {
        if self.unsynced.remove(what) && self.unsynced.is_empty() {
            info!(
                nodes = self.cache.len(),
                pending = self.queue.len(),
                "caches synced; scheduling"
            );
        }
    }

    fn observe(&mut self, change: crate::cache::Change) {
        for profile in self.profiles.values_mut() {
            profile.observe(&self.cache, &change);
        }
    }

    fn handle(&mut self, msg: Msg) {
        let now = Instant::now();
        match msg {
            Msg::Pod(pod) => self.pod(Arc::new(PodInfo::new(pod)), now),
            Msg::PodDeleted(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                self.forget_pod(&uid, now);
            }
            Msg::PodsListed(seen) => {
                self.synced("pods");
                let gone: Vec<String> = self
                    .pods
                    .keys()
                    .filter(|uid| !seen.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    self.forget_pod(&uid, now);
                }
            }
            Msg::Node(node) => {
                let change = self.cache.upsert_node(NodeInfo::new(node));
                self.observe(change);
                self.queue.move_unschedulable(now);
            }
            Msg::NodeDeleted(name) => {
                if let Some(change) = self.cache.remove_node(&name) {
                    self.observe(change);
                }
            }
            Msg::NodesListed(seen) => {
                self.synced("nodes");
                let gone: Vec<String> = self
                    .cache
                    .nodes()
                    .map(|(_, n)| n.info.name().to_owned())
                    .filter(|n| !seen.contains(n))
                    .collect();
                for name in gone {
                    if let Some(change) = self.cache.remove_node(&name) {
                        self.observe(change);
                    }
                }
            }
            Msg::Namespace(ns) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                let labels = ns.metadata.labels.clone().unwrap_or_default();
                self.cache.upsert_namespace(name, labels);
                // Labels select namespaces for affinity terms.
                self.queue.move_unschedulable(now);
            }
            Msg::NamespaceDeleted(name) => self.cache.remove_namespace(&name),
            Msg::NamespacesListed(seen) => {
                self.synced("namespaces");
                let gone: Vec<String> = self
                    .cache
                    .namespace_names()
                    .filter(|n| !seen.contains(*n))
                    .map(str::to_owned)
                    .collect();
                for name in gone {
                    self.cache.remove_namespace(&name);
                }
            }
            Msg::PluginsListed => self.synced("plugins"),
            Msg::Install(install) => {
                let Install {
                    spec,
                    profile,
                    pre,
                    reply,
                } = *install;
                let result = self.install(spec, &profile, pre);
                if result.is_ok() {
                    self.queue.move_unschedulable(now);
                }
                let _ = reply.send(result);
            }
            Msg::Uninstall(name) => {
                for profile in self.profiles.values_mut() {
                    profile
                        .entries
                        .retain(|e| !(e.wasm && e.plugin.name() == name));
                }
                info!(plugin.name = %name, "plugin unloaded");
                self.queue.move_unschedulable(now);
            }
            Msg::Bound {
                pod,
                profile,
                slot,
                result,
            } => match result {
                Ok(()) => {
                    self.cache.confirm(&pod.uid);
                    self.queue.remove(&pod.uid);
                }
                Err(e) => {
                    if let Some(change) = self.cache.remove_pod(&pod.uid) {
                        self.observe(change);
                    }
                    if let Some(p) = self.profiles.get_mut(&profile) {
                        p.unreserve(&pod, slot);
                    }
                    match e {
                        BindError::Gone => self.queue.remove(&pod.uid),
                        BindError::Retry(message) => {
                            warn!(pod.key = %pod.key, error = %message, "binding failed; retrying");
                            self.reporter
                                .failed(&pod, &format!("Binding rejected: {message}"));
                            self.queue.backoff(&pod.uid, now);
                        }
                    }
                }
            },
            Msg::Stop => {}
        }
    }

    fn install(
        &mut self,
        spec: WasmSpec,
        profile: &str,
        pre: SchedulerPre,
    ) -> Result<(), PluginError> {
        let name = spec.name.clone();
        let weight = spec.weight;
        let replaces = spec.replaces.clone();
        let plugin = WasmPlugin::new(spec, pre, &self.cache, self.reporter.plugin_failures())?;
        // A plugin moving between profiles leaves the old one.
        for p in self.profiles.values_mut() {
            if p.name != profile {
                p.entries.retain(|e| !(e.wasm && e.plugin.name() == name));
            }
        }
        let created = !self.profiles.contains_key(profile);
        let target = self.profiles.entry(profile.to_owned()).or_insert_with(|| {
            let mut p = Profile::new(profile);
            for (plugin, weight) in builtins::defaults() {
                p.entries.push(Entry {
                    plugin,
                    weight,
                    wasm: false,
                    replaces: Vec::new(),
                });
            }
            p
        });
        let entry = Entry {
            plugin: Box::new(plugin),
            weight,
            wasm: true,
            replaces,
        };
        // The swap: the next cycle uses the new version; the old one is dropped here.
        match target
            .entries
            .iter()
            .position(|e| e.wasm && e.plugin.name() == name)
        {
            Some(i) => target.entries[i] = entry,
            None => target.entries.push(entry),
        }
        info!(plugin.name = %name, profile, "plugin loaded");
        if created {
            // Pods naming this scheduler were waiting for a profile to exist; `pod` decides
            // which of them are pending.
            let waiting: Vec<Arc<PodInfo>> = self
                .pods
                .values()
                .filter(|p| p.scheduler_name == profile)
                .cloned()
                .collect();
            let now = Instant::now();
            for pod in waiting {
                self.pod(pod, now);
            }
        }
        Ok(())
    }

    fn pod(&mut self, pod: Arc<PodInfo>, now: Instant) {
        let uid = pod.uid.clone();
        if pod.is_terminal() {
            self.forget_pod(&uid, now);
            return;
        }
        let previous = self.pods.insert(uid.clone(), pod.clone());
        if let Some(node) = pod.node_name() {
            self.queue.remove(&uid);
            let was_assumed = self.cache.is_assumed(&uid);
            if let Some(change) = self.cache.place(pod.clone(), node, false) {
                // Our own binding arriving needs no replay: the plugins saw it assumed.
                if !was_assumed {
                    self.observe(change);
                }
            }
            return;
        }
        if self.cache.is_placed(&uid) {
            // Assumed: its binding is in flight.
            return;
        }
        // A preemption's nomination holds room on its node until the pod is placed, goes
        // or loses it; room given up may fit pods that were waiting. An update that never
        // carried the nomination keeps the one made in memory: its patch may land later.
        let cleared = previous.is_some_and(|p| p.nominated_node().is_some());
        match pod.nominated_node() {
            Some(node) if !pod.is_terminating() => self.cache.nominate(pod.clone(), node),
            _ if (cleared || pod.is_terminating()) && self.cache.unnominate(&uid) => {
                self.queue.move_unschedulable(now);
            }
            _ => {}
        }
        if pod.is_terminating() {
            // Nothing to schedule.
            return;
        }
        if self.profiles.contains_key(&pod.scheduler_name) {
            self.queue.add_or_update(pod);
        }
    }

    fn forget_pod(&mut self, uid: &str, now: Instant) {
        self.pods.remove(uid);
        self.queue.remove(uid);
        let freed = self.cache.unnominate(uid);
        if let Some(change) = self.cache.remove_pod(uid) {
            self.observe(change);
        } else if !freed {
            return;
        }
        // Resources were freed.
        self.queue.move_unschedulable(now);
    }

    fn schedule_one(&mut self, pod: Arc<PodInfo>) {
        let now = Instant::now();
        let Some(profile) = self.profiles.get_mut(&pod.scheduler_name) else {
            self.queue.remove(&pod.uid);
            return;
        };
        let watch = self.metrics.stopwatch();
        match profile.schedule(&pod, &self.cache) {
            Ok(decision) => {
                let Some(node) = self
                    .cache
                    .node(decision.slot)
                    .map(|n| n.info.name().to_owned())
                else {
                    self.queue.backoff(&pod.uid, now);
                    return;
                };
                debug!(pod.key = %pod.key, node.name = %node, evaluated = decision.evaluated, feasible = decision.feasible, "scheduled");
                if let Some(change) = self.cache.place(pod.clone(), &node, true) {
                    // The profile that scheduled the pod has just seen it; the others learn
                    // of it as of any placement.
                    for (name, p) in &mut self.profiles {
                        if *name == pod.scheduler_name {
                            p.assumed(&self.cache, &change);
                        } else {
                            p.observe(&self.cache, &change);
                        }
                    }
                }
                self.metrics
                    .attempt(&pod.scheduler_name, Outcome::Scheduled, &watch);
                self.bind(pod, node, decision.slot);
            }
            Err(e) => {
                let outcome = match e {
                    CycleError::Unschedulable { .. } => Outcome::Unschedulable,
                    CycleError::Plugin(_) | CycleError::Reserve { .. } => Outcome::Error,
                };
                self.metrics.attempt(&pod.scheduler_name, outcome, &watch);
                let mut message = e.message();
                if let CycleError::Unschedulable {
                    nodes,
                    preemptible,
                    resolvable,
                    ..
                } = &e
                    && *nodes > 0
                    && let Some(why) = self.preempt(&pod, *nodes, *resolvable, preemptible)
                {
                    message = format!("{message} {why}");
                }
                debug!(pod.key = %pod.key, %message, "not scheduled");
                self.reporter.failed(&pod, &message);
                match e {
                    CycleError::Unschedulable { .. } => self.queue.unschedulable(&pod.uid, now),
                    CycleError::Plugin(_) | CycleError::Reserve { .. } => {
                        self.queue.backoff(&pod.uid, now)
                    }
                }
            }
        }
    }

    /// PostFilter: makes room for an unschedulable pod by evicting lower-priority pods, and
    /// nominates the node. Returns why it didn't, in kube-scheduler's words.
    fn preempt(
        &mut self,
        pod: &Arc<PodInfo>,
        nodes: usize,
        resolvable: usize,
        candidates: &[u32],
    ) -> Option<String> {
        if pod.never_preempts() {
            return Some("preemption: not eligible due to preemptionPolicy=Never.".into());
        }
        // Room is already being made: wait for the victims to go.
        if let Some(node) = pod.nominated_node().and_then(|n| self.cache.slot(n))
            && self.cache.node(node).is_some_and(|n| {
                n.pods
                    .values()
                    .any(|p| p.is_terminating() && p.priority < pod.priority)
            })
        {
            return Some(
                "preemption: not eligible due to a terminating pod on the nominated node.".into(),
            );
        }
        let profile = self.profiles.get(&pod.scheduler_name)?;
        let Some(chosen) = profile.preempt(pod, &self.cache, candidates) else {
            let reasons = [
                ("No preemption victims found for incoming pod", resolvable),
                (
                    "Preemption is not helpful for scheduling",
                    nodes - resolvable,
                ),
            ];
            return Some(format!("preemption: {}", histogram(nodes, reasons)));
        };
        let node = self.cache.node(chosen.slot)?.info.name().to_owned();
        info!(pod.key = %pod.key, node.name = %node, victims = chosen.victims.len(), "preempting");
        // The room is the pod's from now, not only once the API has the nomination.
        self.cache.nominate(pod.clone(), &node);
        self.reporter.preempt(pod, &node, chosen.victims);
        None
    }

    fn bind(&self, pod: Arc<PodInfo>, node: String, slot: u32) {
        let client = self.client.clone();
        let tx = self.tx.clone();
        let reporter = self.reporter.clone();
        let permits = self.bindings.clone();
        let profile = pod.scheduler_name.clone();
        self.runtime.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let api: kube::Api<core::Pod> = kube::Api::namespaced(client, pod.namespace());
            let binding = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": pod.name(), "namespace": pod.namespace(), "uid": pod.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            let result = api
                .create_subresource::<serde_json::Value, serde_json::Value>(
                    "binding",
                    pod.name(),
                    &kube::api::PostParams::default(),
                    &binding,
                )
                .await;
            let result = match result {
                Ok(_) => {
                    reporter.scheduled(&pod, &node);
                    Ok(())
                }
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
                    Err(BindError::Gone)
                }
                Err(e) => Err(BindError::Retry(e.to_string())),
            };
            let _ = tx.send(Msg::Bound {
                pod,
                profile,
                slot,
                result,
            });
        });
    }
}

/// How a watched kind becomes messages for the scheduling thread.
struct Feed<K> {
    what: &'static str,
    apply: fn(K) -> Msg,
    delete: fn(K) -> Msg,
    /// The key relists compare by (uid for pods, name for nodes).
    key: fn(&K) -> String,
    listed: fn(HashSet<String>) -> Msg,
}

/// Watches one kind and feeds the scheduling thread, until the thread is gone.
async fn feed<K>(api: kube::Api<K>, tx: Sender<Msg>, feed: Feed<K>)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut seen = HashSet::new();
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    while let Some(event) = stream.next().await {
        let sent = match event {
            Ok(watcher::Event::Apply(obj)) => tx.send((feed.apply)(obj)),
            Ok(watcher::Event::Delete(obj)) => tx.send((feed.delete)(obj)),
            Ok(watcher::Event::Init) => {
                seen.clear();
                Ok(())
            }
            Ok(watcher::Event::InitApply(obj)) => {
                seen.insert((feed.key)(&obj));
                tx.send((feed.apply)(obj))
            }
            Ok(watcher::Event::InitDone) => tx.send((feed.listed)(std::mem::take(&mut seen))),
            Err(e) => {
                warn!(
                    watch.kind = feed.what,
                    error = &e as &dyn std::error::Error,
                    "watch failed; retrying"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(())
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Watches pods, nodes and namespaces and feeds the scheduling thread, until cancelled.
pub(crate) async fn informers(client: kube::Client, tx: Sender<Msg>, shutdown: CancellationToken) {
    let pods = feed(
        kube::Api::<core::Pod>::all(client.clone()),
        tx.clone(),
        Feed {
            what: "pods",
            apply: |p| Msg::Pod(Arc::new(p)),
            delete: |p| Msg::PodDeleted(Arc::new(p)),
            key: |p| p.metadata.uid.clone().unwrap_or_default(),
            listed: Msg::PodsListed,
        },
    );
    let nodes = feed(
        kube::Api::<core::Node>::all(client.clone()),
        tx.clone(),
        Feed {
            what: "nodes",
            apply: |n| Msg::Node(Arc::new(n)),
            delete: |n| Msg::NodeDeleted(n.metadata.name.unwrap_or_default()),
            key: |n| n.metadata.name.clone().unwrap_or_default(),
            listed: Msg::NodesListed,
        },
    );
    let namespaces = feed(
        kube::Api::<core::Namespace>::all(client),
        tx,
        Feed {
            what: "namespaces",
            apply: |n| Msg::Namespace(Arc::new(n)),
            delete: |n| Msg::NamespaceDeleted(n.metadata.name.unwrap_or_default()),
            key: |n| n.metadata.name.clone().unwrap_or_default(),
            listed: Msg::NamespacesListed,
        },
    );
    tokio::select! {
        _ = pods => {}
        _ = nodes => {}
        _ = namespaces => {}
        _ = shutdown.cancelled() => {}
    }
}
