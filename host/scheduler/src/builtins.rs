//! The built-in plugins of kube-scheduler's default profile, with its messages and weights.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use k8s_openapi::api::core::v1 as core;

use crate::cache::NodeState;
use crate::framework::{MAX_NODE_SCORE, Plugin, Rejection, default_normalize};
use crate::model::PodInfo;
pub use crate::topology::{InterPodAffinity, PodTopologySpread};
use skiff_plugin_host::PluginError;

fn reason(s: &str) -> Arc<str> {
    Arc::from(s)
}

static NODE_NAME: LazyLock<Arc<str>> =
    LazyLock::new(|| reason("node(s) didn't match the requested node name"));
static UNSCHEDULABLE: LazyLock<Arc<str>> = LazyLock::new(|| reason("node(s) were unschedulable"));
static AFFINITY: LazyLock<Arc<str>> =
    LazyLock::new(|| reason("node(s) didn't match Pod's node affinity/selector"));
static PORTS: LazyLock<Arc<str>> =
    LazyLock::new(|| reason("node(s) didn't have free ports for the requested pod ports"));
static TOO_MANY_PODS: LazyLock<Arc<str>> = LazyLock::new(|| reason("Too many pods"));
static CPU: LazyLock<Arc<str>> = LazyLock::new(|| reason("Insufficient cpu"));
static MEMORY: LazyLock<Arc<str>> = LazyLock::new(|| reason("Insufficient memory"));
static EPHEMERAL: LazyLock<Arc<str>> = LazyLock::new(|| reason("Insufficient ephemeral-storage"));

/// The built-in plugins and their default score weights, in kube-scheduler's order.
pub fn defaults() -> Vec<(Box<dyn Plugin>, i64)> {
    vec![
        (Box::new(NodeUnschedulable), 0),
        (Box::new(NodeName), 0),
        (Box::new(TaintToleration), 3),
        (Box::new(NodeAffinity), 2),
        (Box::new(NodePorts), 0),
        (Box::new(NodeResourcesFit), 1),
        (Box::new(PodTopologySpread::default()), 2),
        (Box::new(InterPodAffinity::default()), 2),
        (Box::new(NodeResourcesBalancedAllocation), 1),
    ]
}

/// The names of the built-ins, for configuration checks.
pub fn names() -> Vec<String> {
    defaults()
        .iter()
        .map(|(plugin, _)| plugin.name().to_owned())
        .collect()
}

/// `spec.nodeName` set by the user: only that node fits.
pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &str {
        "NodeName"
    }
    fn filters(&self) -> bool {
        true
    }
    fn scores(&self) -> bool {
        false
    }
    fn filter_node(&self, pod: &PodInfo, node: &NodeState) -> Option<Rejection> {
        match pod.node_name() {
            Some(name) if name != node.info.name() => Some(Rejection::new(&NODE_NAME, true)),
            _ => None,
        }
    }
}

/// Cordoned nodes take only pods that tolerate `node.kubernetes.io/unschedulable`.
pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &str {
        "NodeUnschedulable"
    }
    fn filters(&self) -> bool {
        true
    }
    fn scores(&self) -> bool {
        false
    }
    fn filter_node(&self, pod: &PodInfo, node: &NodeState) -> Option<Rejection> {
        if !node.info.wasm.unschedulable {
            return None;
        }
        let tolerated = pod.wasm.tolerations.iter().any(|t| {
            (t.key.is_empty() && t.exists || t.key == "node.kubernetes.io/unschedulable")
                && matches!(
                    t.effect,
                    None | Some(skiff_plugin_host::TaintEffect::NoSchedule)
                )
        });
        (!tolerated).then(|| Rejection::new(&UNSCHEDULABLE, true))
    }
}

/// Whether a toleration tolerates a taint.
pub fn tolerates(t: &skiff_plugin_host::Toleration, taint: &skiff_plugin_host::Taint) -> bool {
    if let Some(effect) = t.effect
        && effect != taint.effect
    {
        return false;
    }
    if t.key.is_empty() {
        // An empty key tolerates everything, but only with Exists.
        return t.exists;
    }
    t.key == taint.key && (t.exists || t.value == taint.value)
}

/// The first NoSchedule or NoExecute taint of the node that the pod doesn't tolerate.
pub fn untolerated_taint<'a>(
    pod: &PodInfo,
    node: &'a NodeState,
) -> Option<&'a skiff_plugin_host::Taint> {
    node.info.wasm.taints.iter().find(|taint| {
        taint.effect != skiff_plugin_host::TaintEffect::PreferNoSchedule
            && !pod.wasm.tolerations.iter().any(|t| tolerates(t, taint))
    })
}

/// Taints: NoSchedule and NoExecute taints keep pods that don't tolerate them off; each
/// untolerated PreferNoSchedule taint lowers the score.
pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &str {
        "TaintToleration"
    }
    fn filters(&self) -> bool {
        true
    }
    fn scores(&self) -> bool {
        true
    }
    fn filter_node(&self, pod: &PodInfo, node: &NodeState) -> Option<Rejection> {
        let taint = untolerated_taint(pod, node)?;
        let message = format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key, taint.value
        );
        Some(Rejection::new(&Arc::from(message), true))
    }
    fn score_node(&self, pod: &PodInfo, node: &NodeState) -> i64 {
        use skiff_plugin_host::TaintEffect;
        node.info
            .wasm
            .taints
            .iter()
            .filter(|taint| {
                taint.effect == TaintEffect::PreferNoSchedule
                    && !pod.wasm.tolerations.iter().any(|t| {
                        // Score only counts tolerations that name PreferNoSchedule or no effect.
                        matches!(t.effect, None | Some(TaintEffect::PreferNoSchedule))
                            && tolerates(t, taint)
                    })
            })
            .count() as i64
    }
    fn normalize(
        &mut self,
        _pod: &PodInfo,
        _feasible: &[u32],
        scores: &mut [i64],
    ) -> Result<(), PluginError> {
        default_normalize(scores, true);
        Ok(())
    }
}

/// Whether a node selector term matches (its expressions and fields all hold; an empty
/// term matches nothing).
pub fn term_matches(term: &core::NodeSelectorTerm, node: &NodeState) -> bool {
    skiff_core::scheduling::term_matches(term, node.info.name(), |k| node.info.label(k))
}

fn node_affinity(pod: &PodInfo) -> Option<&core::NodeAffinity> {
    pod.pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()
}

/// Whether the node satisfies the pod's `nodeSelector` and required node affinity.
pub fn node_affinity_matches(pod: &PodInfo, node: &NodeState) -> bool {
    let selector_ok = pod
        .wasm
        .node_selector
        .iter()
        .all(|(k, v)| node.info.label(k) == Some(v.as_str()));
    selector_ok
        && node_affinity(pod)
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_none_or(|req| {
                req.node_selector_terms
                    .iter()
                    .any(|term| term_matches(term, node))
            })
}

/// `nodeSelector` and node affinity: required terms filter, preferred terms score.
pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &str {
        "NodeAffinity"
    }
    fn filters(&self) -> bool {
        true
    }
    fn scores(&self) -> bool {
        true
    }
    fn filter_node(&self, pod: &PodInfo, node: &NodeState) -> Option<Rejection> {
        (!node_affinity_matches(pod, node)).then(|| Rejection::new(&AFFINITY, true))
    }
    fn score_node(&self, pod: &PodInfo, node: &NodeState) -> i64 {
        node_affinity(pod)
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .filter(|p| p.weight != 0 && term_matches(&p.preference, node))
            .map(|p| i64::from(p.weight))
            .sum()
    }
    fn normalize(
        &mut self,
        _pod: &PodInfo,
        _feasible: &[u32],
        scores: &mut [i64],
    ) -> Result<(), PluginError> {
        default_normalize(scores, false);
        Ok(())
    }
}

/// Host ports: a node fits if none of the pod's host ports is taken there.
pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &str {
        "NodePorts"
    }
    fn filters(&self) -> bool {
        true
    }
    fn preemptible(&self) -> bool {
        true
    }
    fn scores(&self) -> bool {
        false
    }
    fn filter_node(&self, pod: &PodInfo, node: &NodeState) -> Option<Rejection> {
        // Ports of pods nominated here (of at least this priority) are spoken for too.
        let conflict = pod.host_ports.iter().any(|want| {
            node.host_ports
                .iter()
                .chain(node.reserved_for(pod).flat_map(|n| &n.host_ports))
                .any(|used| used.conflicts(want))
        });
        conflict.then(|| Rejection::new(&PORTS, false))
    }
}

/// Resources: the node must have room for the pod's requests; scoring prefers the least
/// allocated nodes (LeastAllocated over cpu and memory, weights 1 and 1).
pub struct NodeResourcesFit;

/// The reasons a node lacks room for a pod (empty: it fits).
pub fn insufficient(pod: &PodInfo, node: &NodeState) -> Vec<Arc<str>> {
    let free = &node.info.allocatable;
    // Room nominated for pods of at least this one's priority counts as used.
    let mut used = Cow::Borrowed(&node.requested);
    let mut pods = node.pods.len();
    for nominated in node.reserved_for(pod) {
        used.to_mut().add(&nominated.requests, 1);
        pods += 1;
    }
    let want = &pod.requests;
    let mut reasons = Vec::new();
    if pods as i64 + 1 > free.pods {
        reasons.push(TOO_MANY_PODS.clone());
    }
    if want.milli_cpu > 0 && want.milli_cpu > free.milli_cpu - used.milli_cpu {
        reasons.push(CPU.clone());
    }
    if want.memory > 0 && want.memory > free.memory - used.memory {
        reasons.push(MEMORY.clone());
    }
    if want.ephemeral_storage > 0
        && want.ephemeral_storage > free.ephemeral_storage - used.ephemeral_storage
    {
        reasons.push(EPHEMERAL.clone());
    }
    for (name, amount) in &want.scalar {
        let have = free.scalar.get(name).copied().unwrap_or(0);
        let taken = used.scalar.get(name).copied().unwrap_or(0);
        if *amount > 0 && *amount > have - taken {
            reasons.push(Arc::from(format!("Insufficient {name}")));
        }
    }
    reasons
}

fn fraction(requested: i64, allocatable: i64) -> f64 {
    if allocatable <= 0 {
        return 1.0;
    }
    (requested as f64 / allocatable as f64).min(1.0)
}

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &str {
        "NodeResourcesFit"
    }
    fn filters(&self) -> bool {
        true
    }
    fn preemptible(&self) -> bool {
        true
    }
    fn scores(&self) -> bool {
        true
    }
    fn filter_node(&self, pod: &PodInfo, node: &NodeState) -> Option<Rejection> {
        let reasons = insufficient(pod, node);
        (!reasons.is_empty()).then_some(Rejection {
            reasons,
            unresolvable: false,
        })
    }
    fn score_node(&self, pod: &PodInfo, node: &NodeState) -> i64 {
        let least = |requested: i64, allocatable: i64| {
            if allocatable <= 0 || requested > allocatable {
                0
            } else {
                (allocatable - requested) * MAX_NODE_SCORE / allocatable
            }
        };
        let free = &node.info.allocatable;
        let cpu = least(node.non_zero.0 + pod.non_zero.0, free.milli_cpu);
        let mem = least(node.non_zero.1 + pod.non_zero.1, free.memory);
        (cpu + mem) / 2
    }
}

/// Prefers nodes whose cpu and memory would be used in equal proportion.
pub struct NodeResourcesBalancedAllocation;

impl Plugin for NodeResourcesBalancedAllocation {
    fn name(&self) -> &str {
        "NodeResourcesBalancedAllocation"
    }
    fn filters(&self) -> bool {
        false
    }
    fn scores(&self) -> bool {
        true
    }
    fn score_node(&self, pod: &PodInfo, node: &NodeState) -> i64 {
        let free = &node.info.allocatable;
        let cpu = fraction(node.non_zero.0 + pod.non_zero.0, free.milli_cpu);
        let mem = fraction(node.non_zero.1 + pod.non_zero.1, free.memory);
        // With two resources the standard deviation is half their difference.
        let std = (cpu - mem).abs() / 2.0;
        ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cache::Cache;
    use crate::framework::{CycleError, Entry, Profile};
    use crate::model::NodeInfo;

    pub(crate) fn pod(spec: serde_json::Value) -> Arc<PodInfo> {
        let pod: core::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": spec,
        }))
        .unwrap();
        Arc::new(PodInfo::new(Arc::new(pod)))
    }

    pub(crate) fn node(
        name: &str,
        labels: serde_json::Value,
        spec: serde_json::Value,
        cpu: &str,
    ) -> NodeInfo {
        let node: core::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "2"}},
        }))
        .unwrap();
        NodeInfo::new(Arc::new(node))
    }

    pub(crate) fn profile() -> Profile {
        let mut p = Profile::new("default-scheduler");
        for (plugin, weight) in defaults() {
            p.entries.push(Entry {
                plugin,
                weight,
                wasm: false,
                replaces: Vec::new(),
            });
        }
        p
    }

    pub(crate) fn container(cpu: &str) -> serde_json::Value {
        serde_json::json!({"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}})
    }

    #[test]
    fn requests_are_the_larger_of_init_and_app_containers_plus_overhead() {
        let p = pod(serde_json::json!({
            "initContainers": [container("2")],
            "containers": [container("500m"), container("700m")],
            "overhead": {"cpu": "100m"},
        }));
        assert_eq!(p.requests.milli_cpu, 2100);
        let p = pod(serde_json::json!({
            "initContainers": [container("1")],
            "containers": [container("800m"), container("700m")],
        }));
        assert_eq!(p.requests.milli_cpu, 1500);
        assert_eq!(p.requests.pods, 1);
        // Nothing requested: kube-scheduler's defaults count for scoring only.
        let p = pod(serde_json::json!({"containers": [{"name": "c", "image": "x"}]}));
        assert_eq!(p.requests.milli_cpu, 0);
        assert_eq!(p.non_zero, (100, 200 * 1024 * 1024));
    }

    #[test]
    fn tolerations_match_taints_by_key_value_and_effect() {
        let taint = skiff_plugin_host::Taint {
            key: "k".into(),
            value: "v".into(),
            effect: skiff_plugin_host::TaintEffect::NoSchedule,
        };
        let t = |key: &str, exists: bool, value: &str, effect| skiff_plugin_host::Toleration {
            key: key.into(),
            exists,
            value: value.into(),
            effect,
        };
        use skiff_plugin_host::TaintEffect::*;
        assert!(tolerates(&t("k", false, "v", Some(NoSchedule)), &taint));
        assert!(tolerates(&t("k", true, "", None), &taint));
        assert!(tolerates(&t("", true, "", None), &taint));
        assert!(!tolerates(&t("", false, "", None), &taint));
        assert!(!tolerates(&t("k", false, "w", None), &taint));
        assert!(!tolerates(&t("k", true, "", Some(NoExecute)), &taint));
    }

    /// One node "a" labelled zone=z1 and gen=5.
    fn zoned_node() -> Cache {
        let mut cache = Cache::default();
        cache.upsert_node(node(
            "a",
            serde_json::json!({"zone": "z1", "gen": "5"}),
            serde_json::json!({}),
            "4",
        ));
        cache
    }

    #[test]
    fn node_affinity_operators_and_terms() {
        let cache = zoned_node();
        let n = cache.node(0).unwrap();
        let affinity = |expr: serde_json::Value| {
            pod(serde_json::json!({
                "containers": [container("1m")],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchExpressions": [expr]}]}}}
            }))
        };
        let fits = |p: &PodInfo| NodeAffinity.filter_node(p, n).is_none();
        assert!(fits(&affinity(
            serde_json::json!({"key": "zone", "operator": "In", "values": ["z1", "z2"]})
        )));
        assert!(!fits(&affinity(
            serde_json::json!({"key": "zone", "operator": "NotIn", "values": ["z1"]})
        )));
        assert!(fits(&affinity(
            serde_json::json!({"key": "gen", "operator": "Gt", "values": ["4"]})
        )));
        assert!(!fits(&affinity(
            serde_json::json!({"key": "gen", "operator": "Lt", "values": ["4"]})
        )));
        assert!(fits(&affinity(
            serde_json::json!({"key": "gpu", "operator": "DoesNotExist"})
        )));
        assert!(!fits(&affinity(
            serde_json::json!({"key": "gpu", "operator": "Exists"})
        )));
    }

    #[test]
    fn the_failure_message_counts_nodes_per_reason_in_sorted_order() {
        let mut cache = Cache::default();
        cache.upsert_node(node(
            "small",
            serde_json::json!({}),
            serde_json::json!({}),
            "1",
        ));
        cache.upsert_node(node(
            "tainted",
            serde_json::json!({}),
            serde_json::json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
            "8",
        ));
        cache.upsert_node(node(
            "cordoned",
            serde_json::json!({}),
            serde_json::json!({"unschedulable": true}),
            "8",
        ));
        let big = pod(serde_json::json!({"containers": [container("2")]}));
        let err = profile().schedule(&big, &cache).unwrap_err();
        assert!(matches!(err, CycleError::Unschedulable { .. }));
        assert_eq!(
            err.message(),
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable."
        );
    }

    #[test]
    fn placed_pods_use_up_the_node_and_least_allocated_spreads() {
        let mut cache = Cache::default();
        cache.upsert_node(node("a", serde_json::json!({}), serde_json::json!({}), "4"));
        cache.upsert_node(node("b", serde_json::json!({}), serde_json::json!({}), "4"));
        let first = pod(serde_json::json!({"containers": [container("3")]}));
        cache.place(first, "a", true);
        let mut p = profile();
        // "b" is emptier; "a" has no room for 2 cpu anyway.
        let second = pod(serde_json::json!({"containers": [container("2")]}));
        let d = p.schedule(&second, &cache).unwrap();
        assert_eq!(cache.node(d.slot).unwrap().info.name(), "b");
        // Pod capacity: node "b" allows 2 pods.
        for uid in ["x1", "x2"] {
            let mut pod: core::Pod = (*second.pod).clone();
            pod.metadata.uid = Some(uid.into());
            cache.place(Arc::new(PodInfo::new(Arc::new(pod))), "b", false);
        }
        let third = pod(serde_json::json!({"containers": [container("10m")]}));
        assert!(
            p.schedule(&third, &cache)
                .is_ok_and(|d| cache.node(d.slot).unwrap().info.name() == "a")
        );
    }

    #[test]
    fn host_ports_conflict_on_the_same_port_protocol_and_ip() {
        let mut cache = Cache::default();
        cache.upsert_node(node("a", serde_json::json!({}), serde_json::json!({}), "4"));
        let with_port = |ip: &str| {
            pod(
                serde_json::json!({"containers": [{"name": "c", "image": "x",
                "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": ip}]}]}),
            )
        };
        cache.place(with_port("10.0.0.1"), "a", false);
        let n = cache.node(0).unwrap();
        assert!(NodePorts.filter_node(&with_port("10.0.0.1"), n).is_some());
        assert!(NodePorts.filter_node(&with_port("10.0.0.2"), n).is_none());
        assert!(NodePorts.filter_node(&with_port(""), n).is_some());
    }

    #[test]
    fn node_affinity_terms_are_ored_their_requirements_anded() {
        let cache = zoned_node();
        let n = cache.node(0).unwrap();
        let terms = |terms: serde_json::Value, selector: serde_json::Value| {
            pod(serde_json::json!({
                "containers": [container("1m")],
                "nodeSelector": selector,
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": terms}}}
            }))
        };
        let fits = |p: &PodInfo| NodeAffinity.filter_node(p, n).is_none();
        let zone = |z: &str| serde_json::json!({"key": "zone", "operator": "In", "values": [z]});
        let gen_over = |g: &str| serde_json::json!({"key": "gen", "operator": "Gt", "values": [g]});
        let none = serde_json::json!({});
        // One term holding is enough; within a term every requirement must hold.
        assert!(fits(&terms(
            serde_json::json!([{"matchExpressions": [zone("z9")]}, {"matchExpressions": [zone("z1"), gen_over("4")]}]),
            none.clone()
        )));
        assert!(!fits(&terms(
            serde_json::json!([{"matchExpressions": [zone("z1"), gen_over("9")]}]),
            none.clone()
        )));
        // matchFields knows metadata.name, and is ANDed with the term's expressions.
        let name =
            |v: &str| serde_json::json!({"key": "metadata.name", "operator": "In", "values": [v]});
        assert!(fits(&terms(
            serde_json::json!([{"matchFields": [name("a")], "matchExpressions": [zone("z1")]}]),
            none.clone()
        )));
        assert!(!fits(&terms(
            serde_json::json!([{"matchFields": [name("b")], "matchExpressions": [zone("z1")]}]),
            none.clone()
        )));
        // An empty term matches nothing; nodeSelector must hold as well as the affinity.
        assert!(!fits(&terms(serde_json::json!([{}]), none)));
        assert!(!fits(&terms(
            serde_json::json!([{"matchExpressions": [zone("z1")]}]),
            serde_json::json!({"gen": "6"})
        )));
        assert!(fits(&terms(
            serde_json::json!([{"matchExpressions": [zone("z1")]}]),
            serde_json::json!({"gen": "5"})
        )));
    }

    #[test]
    fn preferred_affinity_and_prefer_no_schedule_taints_weigh_in_scoring() {
        let prefer = serde_json::json!({"taints": [{"key": "spot", "value": "yes", "effect": "PreferNoSchedule"}]});
        let prefers_z2 = |weight: i32| {
            pod(serde_json::json!({
                "containers": [container("1m")],
                "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": weight, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z2"]}]}},
                    {"weight": 7, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}},
                ]}}
            }))
        };
        let placed = |nodes: Vec<NodeInfo>, pod: &PodInfo| {
            let mut cache = Cache::default();
            for n in nodes {
                cache.upsert_node(n);
            }
            let d = profile().schedule(pod, &cache).unwrap();
            cache.node(d.slot).unwrap().info.name().to_owned()
        };
        let plain = || node("plain", serde_json::json!({}), serde_json::json!({}), "4");
        let z2 = |spec: &serde_json::Value| {
            node("z2", serde_json::json!({"zone": "z2"}), spec.clone(), "4")
        };

        // Preferred terms add their weights: z2 scores 10 + 7 for this pod.
        let mut cache = Cache::default();
        cache.upsert_node(z2(&serde_json::json!({})));
        assert_eq!(
            NodeAffinity.score_node(&prefers_z2(10), cache.node(0).unwrap()),
            17
        );
        assert_eq!(
            placed(vec![plain(), z2(&serde_json::json!({}))], &prefers_z2(10)),
            "z2"
        );

        // A PreferNoSchedule taint counts unless tolerated for that effect (or any effect).
        let plain_pod = pod(serde_json::json!({"containers": [container("1m")]}));
        assert_eq!(placed(vec![z2(&prefer), plain()], &plain_pod), "plain");
        let mut cache = Cache::default();
        cache.upsert_node(z2(&prefer));
        let tainted = cache.node(0).unwrap();
        let tolerating = |effect: serde_json::Value| {
            pod(serde_json::json!({"containers": [container("1m")],
                "tolerations": [{"key": "spot", "operator": "Exists", "effect": effect}]}))
        };
        assert_eq!(TaintToleration.score_node(&plain_pod, tainted), 1);
        assert_eq!(
            TaintToleration.score_node(&tolerating("PreferNoSchedule".into()), tainted),
            0
        );
        assert_eq!(
            TaintToleration.score_node(&tolerating(serde_json::Value::Null), tainted),
            0
        );
        assert_eq!(
            TaintToleration.score_node(&tolerating("NoSchedule".into()), tainted),
            1
        );
        // Neither kind of preference filters: the tainted node still fits.
        assert!(TaintToleration.filter_node(&plain_pod, tainted).is_none());

        // kube's weights: TaintToleration (3) outweighs NodeAffinity (2), so even the
        // strongest preference for a node doesn't beat its untolerated PreferNoSchedule taint.
        assert_eq!(
            placed(vec![z2(&prefer), plain()], &prefers_z2(100)),
            "plain"
        );
    }

    #[test]
    fn room_nominated_for_a_preemptor_is_kept_from_pods_of_lower_priority() {
        let prioritized = |uid: &str, priority: i32, cpu: &str| {
            let pod: core::Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": uid, "namespace": "default", "uid": uid},
                "spec": {"priority": priority, "containers": [container(cpu)]},
            }))
            .unwrap();
            Arc::new(PodInfo::new(Arc::new(pod)))
        };
        let mut cache = Cache::default();
        cache.upsert_node(node(
            "n1",
            serde_json::json!({}),
            serde_json::json!({}),
            "4",
        ));
        let mut p = profile();
        let urgent = prioritized("urgent", 100, "3");
        cache.nominate(urgent.clone(), "n1");
        // A lower (or equal) priority pod that would fit the empty node must leave the room.
        for priority in [0, 100] {
            match p.schedule(&prioritized("low", priority, "2"), &cache) {
                Err(e) => assert_eq!(e.message(), "0/1 nodes are available: 1 Insufficient cpu."),
                Ok(d) => panic!("placed on slot {}", d.slot),
            }
        }
        // The nominated pod itself, and pods above it, may use it.
        assert!(p.schedule(&urgent, &cache).is_ok());
        assert!(p.schedule(&prioritized("higher", 200, "2"), &cache).is_ok());
        // Once it is placed, its requests count as a pod's, not twice.
        cache.place(urgent.clone(), "n1", true).unwrap();
        assert!(cache.node(0).unwrap().nominated.is_empty());
        assert!(p.schedule(&prioritized("small", 0, "1"), &cache).is_ok());
        // A nomination given up frees the room.
        cache.remove_pod(&urgent.uid);
        cache.nominate(urgent.clone(), "n1");
        assert!(cache.unnominate(&urgent.uid));
        assert!(p.schedule(&prioritized("low", 0, "2"), &cache).is_ok());
    }

    #[test]
    fn large_clusters_are_sampled_as_kube_scheduler_does() {
        let cluster = |cpu: fn(usize) -> &'static str| {
            let mut cache = Cache::default();
            for i in 0..1000 {
                let n = node(
                    &format!("n{i}"),
                    serde_json::json!({}),
                    serde_json::json!({}),
                    cpu(i),
                );
                cache.upsert_node(n);
            }
            cache
        };
        // Every tenth node is too small for the pod below.
        let cache = cluster(|i| if i % 10 == 0 { "100m" } else { "4" });
        let mut p = profile();
        let one = pod(serde_json::json!({"containers": [container("1")]}));
        // 1,000 nodes: 50% - 8% = 42% of them are wanted feasible, then scoring starts.
        let d = p.schedule(&one, &cache).unwrap();
        assert_eq!(d.feasible, 420);
        assert!(
            (420..=420 + 26 + 64).contains(&d.evaluated),
            "{}",
            d.evaluated
        );
        // The next cycle starts where this one stopped, so every node gets its turn; having
        // seen that nine in ten nodes fit, it finds its 420 in one chunk of fewer nodes.
        let d2 = p.schedule(&one, &cache).unwrap();
        assert_eq!(d2.feasible, 420);
        assert!(
            d2.evaluated < d.evaluated,
            "{} {}",
            d2.evaluated,
            d.evaluated
        );
        let slot = d2.slot as usize;
        assert!(
            (d.evaluated..d.evaluated + d2.evaluated).contains(&slot),
            "{slot}"
        );
        // When few nodes fit, all are looked at.
        let big = pod(serde_json::json!({"containers": [container("3900m")]}));
        let small = cluster(|i| if i % 100 == 0 { "4" } else { "1" });
        let d = p.schedule(&big, &small).unwrap();
        assert_eq!((d.evaluated, d.feasible), (1000, 10));
    }
}
