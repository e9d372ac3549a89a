//! The scheduler's view of pods and nodes: parsed once when an object arrives, so the
//! scheduling cycle never touches JSON or quantity strings. The plugin-facing records
//! (`skiff_plugin_host::{Pod, Node}`) are built here too and kept, so a Wasm plugin call
//! lowers a ready record instead of converting per call.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use skiff_core::labels::{Op, Requirement, Selector};
use skiff_core::quantity::Quantity;
use skiff_plugin_host as wasm;

/// The default requests kube-scheduler assumes, for scoring only, of a pod that requests
/// nothing (`NonZeroRequested`): 100m cpu and 200 MiB memory.
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// See [`DEFAULT_MILLI_CPU`].
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// Amounts of resources in base units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub milli_cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Bytes.
    pub ephemeral_storage: i64,
    /// Pods.
    pub pods: i64,
    /// Extended resources by name.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Reads a `ResourceList` (requests, allocatable).
    pub fn from_list(
        list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    ) -> Self {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            let Some(q) = Quantity::parse(&q.0) else {
                continue;
            };
            match name.as_str() {
                "cpu" => r.milli_cpu = q.milli_value(),
                "memory" => r.memory = q.value(),
                "ephemeral-storage" => r.ephemeral_storage = q.value(),
                "pods" => r.pods = q.value(),
                // hugepages and attachable volumes are not scheduled on here.
                n if n.starts_with("hugepages-") || n.starts_with("attachable-volumes-") => {}
                n if n.contains('/') => {
                    r.scalar.insert(n.to_owned(), q.value());
                }
                _ => {}
            }
        }
        r
    }

    /// Adds (`sign` 1) or subtracts (`sign` -1) `other`.
    pub fn add(&mut self, other: &Resources, sign: i64) {
        self.milli_cpu += sign * other.milli_cpu;
        self.memory += sign * other.memory;
        self.ephemeral_storage += sign * other.ephemeral_storage;
        self.pods += sign * other.pods;
        for (name, v) in &other.scalar {
            *self.scalar.entry(name.clone()).or_default() += sign * v;
        }
    }

    /// Element-wise maximum.
    fn max(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let e = self.scalar.entry(name.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    fn to_wasm(&self) -> wasm::Resources {
        wasm::Resources {
            milli_cpu: self.milli_cpu,
            memory: self.memory,
            ephemeral_storage: self.ephemeral_storage,
            pods: self.pods,
            scalar: self.scalar.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }
}

/// A host port a container asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// `hostIP`, `0.0.0.0` when unset.
    pub ip: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The port.
    pub port: i32,
}

impl HostPort {
    /// Whether two host ports can't both be used on a node (same port and protocol, and the
    /// same IP or either is the wildcard).
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// Converts an API label selector; `None` for a nil selector, which selects nothing (as
/// does one that fails to parse: the API refuses those). `match_keys` and `mismatch_keys`
/// (matchLabelKeys, mismatchLabelKeys) add `key in (v)` / `key notin (v)` for the pod's own
/// value of each key it has.
fn selector(
    selector: Option<&LabelSelector>,
    labels: Option<&BTreeMap<String, String>>,
    match_keys: &[String],
    mismatch_keys: &[String],
) -> Option<Selector> {
    let value = serde_json::to_value(selector?).ok()?;
    let mut parsed = Selector::from_label_selector(&value).ok()?;
    for (keys, mismatch) in [(match_keys, false), (mismatch_keys, true)] {
        for key in keys {
            if let Some(v) = labels.and_then(|l| l.get(key)) {
                let set = [v.clone()].into();
                parsed.requirements.push(Requirement {
                    key: key.clone(),
                    op: if mismatch {
                        Op::NotIn(set)
                    } else {
                        Op::In(set)
                    },
                });
            }
        }
    }
    Some(parsed)
}

/// A pod (anti-)affinity term.
#[derive(Debug)]
pub struct AffinityTerm {
    /// The pods it selects (`None` selects none).
    pub selector: Option<Selector>,
    /// Namespaces it looks in by name (the pod's own when no names and no selector are
    /// given).
    pub namespaces: Vec<String>,
    /// Namespaces it looks in by label (an empty selector: all of them).
    pub namespace_selector: Option<Selector>,
    /// The node label whose values are the domains (zone, hostname).
    pub topology_key: String,
    /// The weight of a preferred term; 0 for a required one.
    pub weight: i64,
}

impl AffinityTerm {
    fn new(term: &core::PodAffinityTerm, pod: &core::Pod, weight: i32) -> Self {
        let labels = pod.metadata.labels.as_ref();
        let namespace_selector = term
            .namespace_selector
            .as_ref()
            .and_then(|s| selector(Some(s), None, &[], &[]));
        let mut namespaces = term.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && namespace_selector.is_none() {
            namespaces.push(pod.metadata.namespace.clone().unwrap_or_default());
        }
        AffinityTerm {
            selector: selector(
                term.label_selector.as_ref(),
                labels,
                term.match_label_keys.as_deref().unwrap_or_default(),
                term.mismatch_label_keys.as_deref().unwrap_or_default(),
            ),
            namespaces,
            namespace_selector,
            topology_key: term.topology_key.clone(),
            weight: i64::from(weight),
        }
    }

    /// Whether the term selects `pod`, whose namespace has `namespace_labels`.
    pub fn matches(
        &self,
        pod: &PodInfo,
        namespace_labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        let Some(selector) = &self.selector else {
            return false;
        };
        let in_namespace = self.namespaces.iter().any(|n| n == pod.namespace())
            || self
                .namespace_selector
                .as_ref()
                .is_some_and(|s| s.matches_with(|k| namespace_labels?.get(k).map(String::as_str)));
        in_namespace && selector.matches_with(|k| pod.label(k))
    }
}

/// A pod's inter-pod affinity and anti-affinity terms.
#[derive(Debug, Default)]
pub struct PodAffinity {
    /// requiredDuringScheduling affinity.
    pub required: Vec<AffinityTerm>,
    /// requiredDuringScheduling anti-affinity.
    pub required_anti: Vec<AffinityTerm>,
    /// preferredDuringScheduling affinity, weighted.
    pub preferred: Vec<AffinityTerm>,
    /// preferredDuringScheduling anti-affinity, weighted.
    pub preferred_anti: Vec<AffinityTerm>,
}

impl PodAffinity {
    fn new(pod: &core::Pod) -> Self {
        let Some(affinity) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
            return PodAffinity::default();
        };
        let required = |terms: Option<&Vec<core::PodAffinityTerm>>| {
            terms
                .into_iter()
                .flatten()
                .map(|t| AffinityTerm::new(t, pod, 0))
                .collect()
        };
        let preferred = |terms: Option<&Vec<core::WeightedPodAffinityTerm>>| {
            terms
                .into_iter()
                .flatten()
                .filter(|t| t.weight != 0)
                .map(|t| AffinityTerm::new(&t.pod_affinity_term, pod, t.weight))
                .collect()
        };
        let (a, anti) = (
            affinity.pod_affinity.as_ref(),
            affinity.pod_anti_affinity.as_ref(),
        );
        PodAffinity {
            required: required(a.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            required_anti: required(anti.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred: preferred(a.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_anti: preferred(anti.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
        }
    }

    /// Whether the pod has no terms at all.
    pub fn is_empty(&self) -> bool {
        self.required.is_empty()
            && self.required_anti.is_empty()
            && self.preferred.is_empty()
            && self.preferred_anti.is_empty()
    }
}

/// A topology spread constraint.
#[derive(Debug)]
pub struct SpreadConstraint {
    /// How much the matching pods' counts may differ between domains.
    pub max_skew: i64,
    /// The node label whose values are the domains.
    pub topology_key: String,
    /// `DoNotSchedule` (a filter) rather than `ScheduleAnyway` (a score).
    pub hard: bool,
    /// The pods counted (`None` counts none), matchLabelKeys merged in.
    pub selector: Option<Selector>,
    /// Fewer eligible domains than this count as a global minimum of 0.
    pub min_domains: Option<i64>,
    /// nodeAffinityPolicy Honor (the default): only nodes the pod's node affinity and
    /// selector allow are counted.
    pub honor_node_affinity: bool,
    /// nodeTaintsPolicy Honor (default Ignore): only nodes whose taints the pod tolerates
    /// are counted.
    pub honor_taints: bool,
}

impl SpreadConstraint {
    fn all(pod: &core::Pod) -> Vec<SpreadConstraint> {
        let labels = pod.metadata.labels.as_ref();
        pod.spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_ref())
            .into_iter()
            .flatten()
            .map(|c| SpreadConstraint {
                max_skew: i64::from(c.max_skew),
                topology_key: c.topology_key.clone(),
                hard: c.when_unsatisfiable == "DoNotSchedule",
                selector: selector(
                    c.label_selector.as_ref(),
                    labels,
                    c.match_label_keys.as_deref().unwrap_or_default(),
                    &[],
                ),
                min_domains: c.min_domains.map(i64::from),
                honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            })
            .collect()
    }

    /// Whether the constraint counts `pod` (same namespace as `namespace`, selected, and
    /// not terminating).
    pub fn counts(&self, pod: &PodInfo, namespace: &str) -> bool {
        pod.namespace() == namespace && !pod.is_terminating() && self.selects(pod)
    }

    /// Whether the selector selects `pod`.
    pub fn selects(&self, pod: &PodInfo) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| s.matches_with(|k| pod.label(k)))
    }
}

/// A pod, parsed for scheduling.
#[derive(Debug)]
pub struct PodInfo {
    /// The object as it came from the API.
    pub pod: Arc<core::Pod>,
    /// `namespace/name`.
    pub key: String,
    /// `metadata.uid`.
    pub uid: String,
    /// The effective request: max(largest init container, sum of app containers) + overhead.
    pub requests: Resources,
    /// The same with kube-scheduler's non-zero defaults, for scoring.
    pub non_zero: (i64, i64),
    /// Host ports of all containers.
    pub host_ports: Vec<HostPort>,
    /// `spec.priority`.
    pub priority: i32,
    /// `spec.schedulerName`.
    pub scheduler_name: String,
    /// Inter-pod affinity and anti-affinity.
    pub affinity: PodAffinity,
    /// Topology spread constraints.
    pub spread: Vec<SpreadConstraint>,
    /// The record Wasm plugins get.
    pub wasm: wasm::Pod,
    /// The same with `json` filled, built on first use for plugins that want it.
    pub wasm_json: std::sync::OnceLock<wasm::Pod>,
}

fn sorted_pairs(map: Option<&BTreeMap<String, String>>) -> Vec<(String, String)> {
    // BTreeMap iterates in key order, which is what the WIT promises.
    map.into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn container_requests(c: &core::Container) -> Resources {
    let resources = c.resources.as_ref();
    let mut r = Resources::from_list(resources.and_then(|r| r.requests.as_ref()));
    // A limit without a request defaults the request (the API's defaulting does this for
    // stored pods; pods from older stores may lack it).
    let limits = Resources::from_list(resources.and_then(|r| r.limits.as_ref()));
    if r.milli_cpu == 0 {
        r.milli_cpu = limits.milli_cpu;
    }
    if r.memory == 0 {
        r.memory = limits.memory;
    }
    for (name, v) in limits.scalar {
        r.scalar.entry(name).or_insert(v);
    }
    r
}

fn taint_effect(effect: &str) -> Option<wasm::TaintEffect> {
    match effect {
        "NoSchedule" => Some(wasm::TaintEffect::NoSchedule),
        "PreferNoSchedule" => Some(wasm::TaintEffect::PreferNoSchedule),
        "NoExecute" => Some(wasm::TaintEffect::NoExecute),
        _ => None,
    }
}

impl PodInfo {
    /// Parses a pod.
    pub fn new(pod: Arc<core::Pod>) -> Self {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let uid = meta.uid.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let mut requests = Resources::default();
        let mut non_zero = (0, 0);
        let mut host_ports = Vec::new();
        if let Some(spec) = spec {
            for c in &spec.containers {
                let r = container_requests(c);
                non_zero.0 += if r.milli_cpu == 0 {
                    DEFAULT_MILLI_CPU
                } else {
                    r.milli_cpu
                };
                non_zero.1 += if r.memory == 0 {
                    DEFAULT_MEMORY
                } else {
                    r.memory
                };
                requests.add(&r, 1);
                for p in c.ports.iter().flatten() {
                    if let Some(port) = p.host_port.filter(|p| *p > 0) {
                        host_ports.push(HostPort {
                            ip: p
                                .host_ip
                                .clone()
                                .filter(|s| !s.is_empty())
                                .unwrap_or_else(|| "0.0.0.0".into()),
                            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            port,
                        });
                    }
                }
            }
            for c in spec.init_containers.iter().flatten() {
                let r = container_requests(c);
                // A restartable init container (a sidecar) runs alongside the app containers.
                if c.restart_policy.as_deref() == Some("Always") {
                    requests.add(&r, 1);
                } else {
                    requests.max(&r);
                }
            }
            let overhead = Resources::from_list(spec.overhead.as_ref());
            requests.add(&overhead, 1);
            non_zero.0 += overhead.milli_cpu;
            non_zero.1 += overhead.memory;
        }
        requests.pods = 1;
        let priority = spec.and_then(|s| s.priority).unwrap_or(0);
        let scheduler_name = spec
            .and_then(|s| s.scheduler_name.clone())
            .unwrap_or_else(|| "default-scheduler".into());
        let tolerations = spec
            .and_then(|s| s.tolerations.as_ref())
            .into_iter()
            .flatten()
            .map(|t| wasm::Toleration {
                key: t.key.clone().unwrap_or_default(),
                exists: t.operator.as_deref() == Some("Exists"),
                value: t.value.clone().unwrap_or_default(),
                effect: t.effect.as_deref().and_then(taint_effect),
            })
            .collect();
        let wasm = wasm::Pod {
            uid: uid.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
            labels: sorted_pairs(meta.labels.as_ref()),
            annotations: sorted_pairs(meta.annotations.as_ref()),
            requests: requests.to_wasm(),
            non_zero_requests: non_zero,
            node_selector: sorted_pairs(spec.and_then(|s| s.node_selector.as_ref())),
            tolerations,
            priority,
            node_name: spec.and_then(|s| s.node_name.clone()),
            json: None,
        };
        PodInfo {
            key: format!("{namespace}/{name}"),
            uid,
            requests,
            non_zero,
            host_ports,
            priority,
            scheduler_name,
            affinity: PodAffinity::new(&pod),
            spread: SpreadConstraint::all(&pod),
            wasm,
            wasm_json: std::sync::OnceLock::new(),
            pod,
        }
    }

    /// The value of a label.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.pod
            .metadata
            .labels
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// The pod's namespace.
    pub fn namespace(&self) -> &str {
        &self.wasm.namespace
    }

    /// The pod's name.
    pub fn name(&self) -> &str {
        &self.wasm.name
    }

    /// `spec.nodeName`, if bound.
    pub fn node_name(&self) -> Option<&str> {
        self.pod
            .spec
            .as_ref()?
            .node_name
            .as_deref()
            .filter(|n| !n.is_empty())
    }

    /// Whether the pod has finished (its resources are free again).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    }

    /// Whether `spec.preemptionPolicy` is `Never`.
    pub fn never_preempts(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.preemption_policy.as_deref())
            == Some("Never")
    }

    /// `status.nominatedNodeName`: where an earlier preemption made room for it.
    pub fn nominated_node(&self) -> Option<&str> {
        self.pod
            .status
            .as_ref()?
            .nominated_node_name
            .as_deref()
            .filter(|n| !n.is_empty())
    }

    /// Whether the pod is being deleted.
    pub fn is_terminating(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    /// The record for a Wasm plugin, with the pod's JSON if `json`.
    pub fn for_wasm(&self, json: bool) -> &wasm::Pod {
        if !json {
            return &self.wasm;
        }
        self.wasm_json.get_or_init(|| {
            let mut pod = self.wasm.clone();
            pod.json = Some(serde_json::to_string(&*self.pod).unwrap_or_default());
            pod
        })
    }

    /// A copy of the pod's record (with its JSON when `json`) as placed on `node`, for
    /// plugin caches.
    pub fn placed_on(&self, node: &str, json: bool) -> wasm::Pod {
        let mut pod = self.for_wasm(json).clone();
        pod.node_name = Some(node.to_owned());
        pod
    }
}

/// A node, parsed for scheduling.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The object as it came from the API.
    pub node: Arc<core::Node>,
    /// `status.allocatable`.
    pub allocatable: Resources,
    /// The record Wasm plugins get.
    pub wasm: wasm::Node,
}

impl NodeInfo {
    /// Parses a node.
    pub fn new(node: Arc<core::Node>) -> Self {
        let spec = node.spec.as_ref();
        let allocatable = Resources::from_list(
            node.status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref())),
        );
        let taints = spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            // The API refuses other effects; one stored before that check has no effect
            // kube knows, and kube's TaintToleration ignores such a taint too.
            .filter_map(|t| {
                Some(wasm::Taint {
                    key: t.key.clone(),
                    value: t.value.clone().unwrap_or_default(),
                    effect: taint_effect(&t.effect)?,
                })
            })
            .collect();
        let wasm = wasm::Node {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: sorted_pairs(node.metadata.labels.as_ref()),
            allocatable: allocatable.to_wasm(),
            taints,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        };
        NodeInfo {
            node,
            allocatable,
            wasm,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.wasm.name
    }

    /// The value of a label.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.node
            .metadata
            .labels
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }
}
