//! The SDK's side of the `scheduler` interface: the node cache and the per-node loops.

use std::collections::HashMap;

use crate::bindings::exports::skiff::plugin::scheduler::PluginInfo;
use crate::{Cluster, NodeInfo, Pod, PreFilterResult, Resources, SchedulerPlugin};

/// The state behind an exported plugin: the plugin itself and the cache the host feeds.
/// [`export_scheduler!`](crate::export_scheduler) keeps one per instance.
pub struct Runtime<P> {
    plugin: Option<P>,
    nodes: Vec<Option<NodeInfo>>,
    /// Which slot each placed pod is on, by uid.
    placed: HashMap<String, u32>,
}

impl<P> Default for Runtime<P> {
    fn default() -> Self {
        Runtime {
            plugin: None,
            nodes: Vec::new(),
            placed: HashMap::new(),
        }
    }
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
        // The host calls `init` first on every instance; anything else first is a host bug.
        self.plugin
            .as_ref()
            .expect("init is called before any other export")
    }

    fn plugin_and_cluster(&mut self) -> (&mut P, Cluster<'_>) {
        let plugin = self
            .plugin
            .as_mut()
            .expect("init is called before any other export");
        (plugin, Cluster { nodes: &self.nodes })
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
        match &mut self.nodes[i] {
            Some(info) if info.node.name == node.name => info.node = node,
            entry => {
                *entry = Some(NodeInfo {
                    slot,
                    node,
                    pods: Vec::new(),
                    requested: empty(),
                })
            }
        }
    }

    /// `remove-node`: forgets the node and its pods.
    pub fn remove_node(&mut self, slot: u32) {
        if let Some(entry) = self.nodes.get_mut(slot as usize)
            && let Some(info) = entry.take()
        {
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
        add(&mut info.requested, &pod.requests, 1);
        self.placed.insert(pod.uid.clone(), slot);
        info.pods.push(pod);
    }

    /// `remove-pod`.
    pub fn remove_pod(&mut self, uid: &str) {
        let Some(slot) = self.placed.remove(uid) else {
            return;
        };
        if let Some(Some(info)) = self.nodes.get_mut(slot as usize)
            && let Some(i) = info.pods.iter().position(|p| p.uid == uid)
        {
            let pod = info.pods.swap_remove(i);
            add(&mut info.requested, &pod.requests, -1);
        }
    }

    /// `pre-filter`.
    pub fn pre_filter(&mut self, pod: &Pod) -> PreFilterResult {
        let (plugin, cluster) = self.plugin_and_cluster();
        plugin.pre_filter(pod, &cluster)
    }

    /// `filter`: one code per candidate; a slot the cache doesn't know doesn't fit (code 1).
    pub fn filter(&self, pod: &Pod, candidates: &[u32]) -> Vec<u16> {
        let plugin = self.plugin();
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
    pub fn pre_score(&mut self, pod: &Pod, candidates: &[u32]) -> bool {
        let (plugin, cluster) = self.plugin_and_cluster();
        plugin.pre_score(pod, &cluster, candidates)
    }

    /// `score`: one score per candidate; 0 for a slot the cache doesn't know.
    pub fn score(&self, pod: &Pod, candidates: &[u32]) -> Vec<i64> {
        let plugin = self.plugin();
        candidates
            .iter()
            .map(|&slot| self.node(slot).map_or(0, |node| plugin.score(pod, node)))
            .collect()
    }

    /// `normalize-score`.
    pub fn normalize_score(&self, pod: &Pod, mut scores: Vec<i64>) -> Vec<i64> {
        self.plugin().normalize_score(pod, &mut scores);
        scores
    }

    /// `reserve`.
    pub fn reserve(&mut self, pod: &Pod, slot: u32) -> Result<(), String> {
        let Some(node) = self.nodes.get(slot as usize).and_then(Option::as_ref) else {
            return Err(format!("node slot {slot} is not in the plugin's cache"));
        };
        let plugin = self
            .plugin
            .as_mut()
            .expect("init is called before any other export");
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
