//! The SDK's side of the `scheduler` interface: the node cache and the per-node loops.

use std::collections::HashMap;

use crate::bindings::exports::skiff::plugin::scheduler::PluginInfo;
use crate::{Cluster, NodeInfo, Pod, PreFilterResult, Resources, SchedulerPlugin};

// The host calls `init` first on every instance, and `begin` before a cycle's extension
// points; anything else is a host bug, so these are panics (a trap, which the host reports).
const INIT_FIRST: &str = "init is called before any other export";
const BEGIN_FIRST: &str = "begin is called before the cycle's extension points";

/// The state behind an exported plugin: the plugin itself and the cache the host feeds.
/// [`export_scheduler!`](crate::export_scheduler) keeps one per instance.
pub struct Runtime<P> {
    plugin: Option<P>,
    nodes: Vec<Option<NodeInfo>>,
    /// Which slot each placed pod is on, by uid.
    placed: HashMap<String, u32>,
    /// The pod of the scheduling cycle (from `begin`).
    current: Option<Pod>,
}

impl<P> Default for Runtime<P> {
    fn default() -> Self {
        Runtime {
            plugin: None,
            nodes: Vec::new(),
            placed: HashMap::new(),
            current: None,
        }
    }
}

/// Counts a node with its pods into (`sign` 1) or out of (-1) the plugin's own sums: pods
/// after their node comes, before it goes.
fn count<P: SchedulerPlugin>(plugin: &mut P, info: &NodeInfo, sign: i64) {
    if sign > 0 {
        plugin.count_node(info, sign);
    }
    for pod in &info.pods {
        plugin.count_pod(info, pod, sign);
    }
    if sign < 0 {
        plugin.count_node(info, sign);
    }
}

/// Adds (`sign` 1) or takes away (`sign` -1) a pod's requests from a node's sums.
fn account(node: &mut NodeInfo, pod: &Pod, sign: i64) {
    add(&mut node.requested, &pod.requests, sign);
    node.non_zero_requested.0 += sign * pod.non_zero_requests.0;
    node.non_zero_requested.1 += sign * pod.non_zero_requests.1;
}

fn add(total: &mut Resources, r: &Resources, sign: i64) {
    total.milli_cpu += sign * r.milli_cpu;
    total.memory += sign * r.memory;
    total.ephemeral_storage += sign * r.ephemeral_storage;
    total.pods += sign * r.pods;
    for (name, amount) in &r.scalar {
        match total.scalar.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v += sign * amount,
            None => total.scalar.push((name.clone(), sign * amount)),
        }
    }
}

fn empty() -> Resources {
    Resources {
        milli_cpu: 0,
        memory: 0,
        ephemeral_storage: 0,
        pods: 0,
        scalar: Vec::new(),
    }
}

impl<P: SchedulerPlugin> Runtime<P> {
    /// An instance before `init`.
    pub fn new() -> Self {
        Self::default()
    }

    fn plugin(&self) -> &P {
        self.plugin.as_ref().expect(INIT_FIRST)
    }

    /// The plugin, the node cache and the cycle's pod, borrowed apart.
    fn parts(&mut self) -> (&mut P, Cluster<'_>, &Pod) {
        let Runtime {
            plugin,
            nodes,
            current,
            ..
        } = self;
        let plugin = plugin.as_mut().expect(INIT_FIRST);
        (
            plugin,
            Cluster { nodes },
            current.as_ref().expect(BEGIN_FIRST),
        )
    }

    fn current(&self) -> &Pod {
        self.current.as_ref().expect(BEGIN_FIRST)
    }

    fn node(&self, slot: u32) -> Option<&NodeInfo> {
        self.nodes.get(slot as usize).and_then(Option::as_ref)
    }

    /// `init`: makes the plugin and reports what it needs.
    pub fn init(&mut self, config: &str) -> Result<PluginInfo, String> {
        let plugin = P::init(config)?;
        let info = PluginInfo {
            reasons: plugin.reasons(),
            wants_pods: plugin.wants_pods(),
            wants_pod_json: plugin.wants_pod_json(),
        };
        self.plugin = Some(plugin);
        Ok(info)
    }

    /// `upsert-node`: keeps the pods already placed on the slot.
    pub fn upsert_node(&mut self, slot: u32, node: crate::Node) {
        let i = slot as usize;
        if self.nodes.len() <= i {
            self.nodes.resize_with(i + 1, || None);
        }
        let plugin = self.plugin.as_mut().expect(INIT_FIRST);
        match &mut self.nodes[i] {
            Some(info) if info.node.name == node.name => {
                count(plugin, info, -1);
                info.node = node;
                count(plugin, info, 1);
            }
            entry => {
                // A reused slot: the host removes a node before reusing its slot, but a
                // stale one must not keep its pods.
                if let Some(old) = entry.take() {
                    count(plugin, &old, -1);
                    for pod in &old.pods {
                        self.placed.remove(&pod.uid);
                    }
                }
                let info = entry.insert(NodeInfo {
                    slot,
                    node,
                    pods: Vec::new(),
                    requested: empty(),
                    non_zero_requested: (0, 0),
                });
                plugin.count_node(info, 1);
            }
        }
    }

    /// `remove-node`: forgets the node and its pods.
    pub fn remove_node(&mut self, slot: u32) {
        if let Some(entry) = self.nodes.get_mut(slot as usize)
            && let Some(info) = entry.take()
        {
            count(self.plugin.as_mut().expect(INIT_FIRST), &info, -1);
            for pod in &info.pods {
                self.placed.remove(&pod.uid);
            }
        }
    }

    /// `upsert-pod`: places (or moves, or updates) a pod.
    pub fn upsert_pod(&mut self, slot: u32, pod: Pod) {
        self.remove_pod(&pod.uid);
        let Some(Some(info)) = self.nodes.get_mut(slot as usize) else {
            return;
        };
        account(info, &pod, 1);
        self.placed.insert(pod.uid.clone(), slot);
        info.pods.push(pod);
        let pod = info.pods.last().expect("just pushed");
        self.plugin
            .as_mut()
            .expect(INIT_FIRST)
            .count_pod(info, pod, 1);
    }

    /// `remove-pod`.
    pub fn remove_pod(&mut self, uid: &str) {
        let Some(slot) = self.placed.remove(uid) else {
            return;
        };
        if let Some(Some(info)) = self.nodes.get_mut(slot as usize)
            && let Some(i) = info.pods.iter().position(|p| p.uid == uid)
        {
            let plugin = self.plugin.as_mut().expect(INIT_FIRST);
            plugin.count_pod(info, &info.pods[i], -1);
            let pod = info.pods.swap_remove(i);
            account(info, &pod, -1);
        }
    }

    /// `begin`: the pod the cycle's calls are about, after placing the previous cycle's pod
    /// where `assumed` says.
    pub fn begin(&mut self, pod: Pod, assumed: Option<u32>) {
        if let Some(slot) = assumed {
            self.assume(slot);
        }
        self.current = Some(pod);
    }

    /// `assume`: the cycle's pod was placed on `slot`; the cycle is over.
    pub fn assume(&mut self, slot: u32) {
        let Some(mut pod) = self.current.take() else {
            return;
        };
        if let Some(node) = self.node(slot) {
            pod.node_name = Some(node.node.name.clone());
        }
        self.upsert_pod(slot, pod);
    }

    /// `pre-filter`.
    pub fn pre_filter(&mut self) -> PreFilterResult {
        let (plugin, cluster, pod) = self.parts();
        plugin.pre_filter(pod, &cluster)
    }

    /// `filter`: one code per candidate; a slot the cache doesn't know doesn't fit (code 1).
    pub fn filter(&self, candidates: &[u32]) -> Vec<u16> {
        let plugin = self.plugin();
        let pod = self.current();
        candidates
            .iter()
            .map(|&slot| match self.node(slot) {
                Some(node) => match plugin.filter(pod, node) {
                    Ok(()) => 0,
                    Err(code) => code.max(1),
                },
                None => 1,
            })
            .collect()
    }

    /// `pre-score`.
    pub fn pre_score(&mut self, candidates: &[u32]) -> bool {
        let (plugin, cluster, pod) = self.parts();
        plugin.pre_score(pod, &cluster, candidates)
    }

    /// `score`: one score per candidate; 0 for a slot the cache doesn't know.
    pub fn score(&self, candidates: &[u32]) -> Vec<i64> {
        let plugin = self.plugin();
        let pod = self.current();
        candidates
            .iter()
            .map(|&slot| self.node(slot).map_or(0, |node| plugin.score(pod, node)))
            .collect()
    }

    /// `normalize-score`.
    pub fn normalize_score(&self, mut scores: Vec<i64>) -> Vec<i64> {
        self.plugin().normalize_score(self.current(), &mut scores);
        scores
    }

    /// `reserve`.
    pub fn reserve(&mut self, slot: u32) -> Result<(), String> {
        let (plugin, cluster, pod) = self.parts();
        let Some(node) = cluster.node(slot) else {
            return Err(format!("node slot {slot} is not in the plugin's cache"));
        };
        plugin.reserve(pod, node)
    }

    /// `unreserve`.
    pub fn unreserve(&mut self, pod: &Pod, slot: u32) {
        if let (Some(plugin), Some(Some(node))) =
            (self.plugin.as_mut(), self.nodes.get(slot as usize))
        {
            plugin.unreserve(pod, node);
        }
    }
}
