//! The scheduler's cache: nodes by slot, the pods placed on each (bound, or assumed while
//! their binding is in flight) and what they add up to. Fed by the informers; read by every
//! plugin in the cycle.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::model::{HostPort, NodeInfo, PodInfo, Resources};

/// One node and what is placed on it.
#[derive(Debug)]
pub struct NodeState {
    /// The node.
    pub info: NodeInfo,
    /// Pods placed here, by uid.
    pub pods: HashMap<String, Arc<PodInfo>>,
    /// The sum of their requests.
    pub requested: Resources,
    /// The sum of their non-zero cpu and memory (for scoring).
    pub non_zero: (i64, i64),
    /// Host ports in use.
    pub host_ports: Vec<HostPort>,
    /// Pending pods a preemption nominated for this node (`status.nominatedNodeName`): the
    /// room their victims leave is theirs, so pods of no higher priority must not take it.
    pub nominated: Vec<Arc<PodInfo>>,
}

impl NodeState {
    /// A copy to try changes on (preemption's what-if), sharing the pods.
    pub fn scratch(&self) -> NodeState {
        NodeState {
            info: self.info.clone(),
            pods: self.pods.clone(),
            requested: self.requested.clone(),
            non_zero: self.non_zero,
            host_ports: self.host_ports.clone(),
            nominated: self.nominated.clone(),
        }
    }

    /// The nominated pods whose room `pod` must leave alone: those of at least its priority,
    /// as kube-scheduler's filters count them, but not the pod itself.
    pub fn reserved_for<'a>(&'a self, pod: &'a PodInfo) -> impl Iterator<Item = &'a PodInfo> {
        self.nominated
            .iter()
            .filter(move |n| n.priority >= pod.priority && n.uid != pod.uid)
            .map(|n| &**n)
    }

    /// Puts a pod on the node (replacing one with its uid).
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.remove_pod(&pod.uid);
        self.add(&pod, 1);
        self.pods.insert(pod.uid.clone(), pod);
    }

    /// Takes a pod off the node.
    pub fn remove_pod(&mut self, uid: &str) {
        if let Some(pod) = self.pods.remove(uid) {
            self.add(&pod, -1);
        }
    }

    fn add(&mut self, pod: &PodInfo, sign: i64) {
        self.requested.add(&pod.requests, sign);
        self.non_zero.0 += sign * pod.non_zero.0;
        self.non_zero.1 += sign * pod.non_zero.1;
        if sign > 0 {
            self.host_ports.extend(pod.host_ports.iter().cloned());
        } else {
            for port in &pod.host_ports {
                if let Some(i) = self.host_ports.iter().position(|p| p == port) {
                    self.host_ports.swap_remove(i);
                }
            }
        }
    }
}

/// What changed in the cache, for plugins that keep their own copy (Wasm plugins).
#[derive(Debug)]
pub enum Change {
    /// A node was added or changed in this slot.
    NodeUpserted(u32),
    /// The node in this slot is gone (with its pods).
    NodeRemoved(u32),
    /// A pod was placed on this slot.
    PodPlaced(u32, Arc<PodInfo>),
    /// A placed pod is gone.
    PodRemoved(String),
}

/// Nodes by slot and placed pods by uid.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: Vec<Option<NodeState>>,
    by_name: HashMap<String, u32>,
    free: Vec<u32>,
    /// Where each placed pod is.
    placed: HashMap<String, u32>,
    /// Placed pods whose binding is still in flight.
    assumed: HashMap<String, u32>,
    /// Nominated pods: the slot each is nominated for, by uid.
    nominations: HashMap<String, u32>,
    /// Placed pods with inter-pod (anti-)affinity terms, by uid, so a pod without terms of
    /// its own checks only these instead of every pod.
    with_affinity: HashMap<String, (u32, Arc<PodInfo>)>,
    /// Namespace labels by name, for affinity terms' namespace selectors.
    namespaces: HashMap<String, BTreeMap<String, String>>,
}

impl Cache {
    /// The node in `slot`.
    pub fn node(&self, slot: u32) -> Option<&NodeState> {
        self.nodes.get(slot as usize)?.as_ref()
    }

    /// The slot of a node.
    pub fn slot(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Every node's slot, in slot order.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_some())
            .map(|(i, _)| i as u32)
    }

    /// Every node.
    pub fn nodes(&self) -> impl Iterator<Item = (u32, &NodeState)> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some((i as u32, n.as_ref()?)))
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Placed pods with inter-pod (anti-)affinity terms, with their slots.
    pub fn pods_with_affinity(&self) -> impl Iterator<Item = (u32, &Arc<PodInfo>)> + '_ {
        self.with_affinity.values().map(|(slot, pod)| (*slot, pod))
    }

    /// The labels of a namespace (`None` if it is unknown).
    pub fn namespace_labels(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(name)
    }

    /// Adds or updates a namespace's labels.
    pub fn upsert_namespace(&mut self, name: String, labels: BTreeMap<String, String>) {
        self.namespaces.insert(name, labels);
    }

    /// Forgets a namespace.
    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// The names of the known namespaces.
    pub fn namespace_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.namespaces.keys().map(String::as_str)
    }

    /// Whether the pod is placed (bound or assumed).
    pub fn is_placed(&self, uid: &str) -> bool {
        self.placed.contains_key(uid)
    }

    /// Whether the pod is assumed (binding in flight).
    pub fn is_assumed(&self, uid: &str) -> bool {
        self.assumed.contains_key(uid)
    }

    /// Adds or updates a node; keeps its pods.
    pub fn upsert_node(&mut self, info: NodeInfo) -> Change {
        if let Some(slot) = self.slot(info.name()) {
            if let Some(state) = self.nodes[slot as usize].as_mut() {
                state.info = info;
            }
            return Change::NodeUpserted(slot);
        }
        let slot = self.free.pop().unwrap_or(self.nodes.len() as u32);
        if self.nodes.len() <= slot as usize {
            self.nodes.resize_with(slot as usize + 1, || None);
        }
        self.by_name.insert(info.name().to_owned(), slot);
        self.nodes[slot as usize] = Some(NodeState {
            info,
            pods: HashMap::new(),
            requested: Resources::default(),
            non_zero: (0, 0),
            host_ports: Vec::new(),
            nominated: Vec::new(),
        });
        Change::NodeUpserted(slot)
    }

    /// Removes a node and forgets its pods.
    pub fn remove_node(&mut self, name: &str) -> Option<Change> {
        let slot = self.by_name.remove(name)?;
        if let Some(state) = self.nodes[slot as usize].take() {
            for uid in state.pods.keys() {
                self.placed.remove(uid);
                self.assumed.remove(uid);
                self.with_affinity.remove(uid);
            }
            for pod in &state.nominated {
                self.nominations.remove(&pod.uid);
            }
        }
        self.free.push(slot);
        Some(Change::NodeRemoved(slot))
    }

    /// Places a pod on a node (moving it if it was elsewhere). `None` if the node is unknown.
    pub fn place(&mut self, pod: Arc<PodInfo>, node: &str, assumed: bool) -> Option<Change> {
        let slot = self.slot(node)?;
        self.remove_pod(&pod.uid);
        // Placed, it holds room as a pod of the node now.
        self.unnominate(&pod.uid);
        let state = self.nodes[slot as usize].as_mut()?;
        state.add_pod(pod.clone());
        self.placed.insert(pod.uid.clone(), slot);
        if !pod.affinity.is_empty() {
            self.with_affinity
                .insert(pod.uid.clone(), (slot, pod.clone()));
        }
        if assumed {
            self.assumed.insert(pod.uid.clone(), slot);
        }
        Some(Change::PodPlaced(slot, pod))
    }

    /// Holds room on `node` for a pending pod a preemption nominated for it (replacing an
    /// earlier nomination of the pod). An unknown node holds nothing.
    pub fn nominate(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.unnominate(&pod.uid);
        let Some(slot) = self.slot(node) else {
            return;
        };
        if let Some(state) = self.nodes[slot as usize].as_mut() {
            self.nominations.insert(pod.uid.clone(), slot);
            state.nominated.push(pod);
        }
    }

    /// Gives up a pod's nomination; whether it had one.
    pub fn unnominate(&mut self, uid: &str) -> bool {
        let Some(slot) = self.nominations.remove(uid) else {
            return false;
        };
        if let Some(state) = self.nodes[slot as usize].as_mut() {
            state.nominated.retain(|p| p.uid != uid);
        }
        true
    }

    /// Confirms an assumed pod (its binding succeeded).
    pub fn confirm(&mut self, uid: &str) {
        self.assumed.remove(uid);
    }

    /// Removes a placed pod.
    pub fn remove_pod(&mut self, uid: &str) -> Option<Change> {
        let slot = self.placed.remove(uid)?;
        self.assumed.remove(uid);
        self.with_affinity.remove(uid);
        self.nodes[slot as usize].as_mut()?.remove_pod(uid);
        Some(Change::PodRemoved(uid.to_owned()))
    }
}
