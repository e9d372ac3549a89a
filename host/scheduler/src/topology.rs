//! The built-ins that judge a node by its topology domain (the value of a node label such as
//! `topology.kubernetes.io/zone`) and the pods already in it: InterPodAffinity and
//! PodTopologySpread, with kube-scheduler's rules, messages and normalisation.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use skiff_plugin_host::PluginError;

use crate::builtins::{node_affinity_matches, untolerated_taint};
use crate::cache::{Cache, NodeState};
use crate::framework::{MAX_NODE_SCORE, Plugin, PreFilter, Rejection};
use crate::model::{AffinityTerm, PodInfo, SpreadConstraint};

static AFFINITY: LazyLock<Arc<str>> =
    LazyLock::new(|| Arc::from("node(s) didn't match pod affinity rules"));
static ANTI_AFFINITY: LazyLock<Arc<str>> =
    LazyLock::new(|| Arc::from("node(s) didn't match pod anti-affinity rules"));
static EXISTING_ANTI_AFFINITY: LazyLock<Arc<str>> =
    LazyLock::new(|| Arc::from("node(s) didn't satisfy existing pods anti-affinity rules"));
static SPREAD: LazyLock<Arc<str>> =
    LazyLock::new(|| Arc::from("node(s) didn't match pod topology spread constraints"));
static SPREAD_LABEL: LazyLock<Arc<str>> = LazyLock::new(|| {
    Arc::from("node(s) didn't match pod topology spread constraints (missing required label)")
});

/// What an existing pod's required affinity term adds to a node's score when the incoming
/// pod matches it (kube-scheduler's hardPodAffinityWeight).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// A number per topology domain: label key → label value → count or score. Two levels, so
/// a lookup with a node's `&str` labels allocates nothing.
#[derive(Debug, Default)]
struct Domains(HashMap<String, HashMap<String, i64>>);

impl Domains {
    fn add(&mut self, key: &str, value: &str, n: i64) {
        let values = match self.0.get_mut(key) {
            Some(v) => v,
            None => self.0.entry(key.to_owned()).or_default(),
        };
        match values.get_mut(value) {
            Some(v) => *v += n,
            None => {
                values.insert(value.to_owned(), n);
            }
        }
    }

    fn get(&self, key: &str, value: &str) -> i64 {
        self.0
            .get(key)
            .and_then(|v| v.get(value))
            .copied()
            .unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `n` to the node's domain of `term`, if the node has the term's topology label.
    fn add_term(&mut self, term: &AffinityTerm, node: &NodeState, n: i64) {
        if let Some(value) = node.info.label(&term.topology_key) {
            self.add(&term.topology_key, value, n);
        }
    }
}

/// What InterPodAffinity's pre-filter found for the pod being scheduled.
#[derive(Debug, Default)]
struct AffinityState {
    /// Domains holding a pod whose required anti-affinity selects the incoming pod.
    existing_anti: Domains,
    /// Per domain, the pods that match all of the incoming pod's required affinity terms.
    affinity: Domains,
    /// Per domain, the pods that match one of its required anti-affinity terms.
    anti: Domains,
    /// Whether the incoming pod matches its own required affinity terms (then the first pod
    /// of a group may go anywhere).
    self_match: bool,
}

/// Inter-pod affinity and anti-affinity: required terms filter (in both directions: the
/// incoming pod's terms and existing pods' anti-affinity), preferred terms and existing
/// pods' terms score.
#[derive(Debug, Default)]
pub struct InterPodAffinity {
    state: AffinityState,
    scores: Domains,
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &str {
        "InterPodAffinity"
    }
    fn filters(&self) -> bool {
        true
    }
    fn scores(&self) -> bool {
        true
    }

    fn pre_filter(&mut self, pod: &PodInfo, cache: &Cache) -> Result<PreFilter, PluginError> {
        let mut state = AffinityState::default();
        let own_namespace = cache.namespace_labels(pod.namespace());
        for (slot, other) in cache.pods_with_affinity() {
            let Some(node) = cache.node(slot) else {
                continue;
            };
            for term in &other.affinity.required_anti {
                if term.matches(pod, own_namespace) {
                    state.existing_anti.add_term(term, node, 1);
                }
            }
        }
        let terms = &pod.affinity;
        if terms.required.is_empty() && terms.required_anti.is_empty() {
            let skip = state.existing_anti.is_empty();
            self.state = state;
            return Ok(if skip {
                PreFilter::SkipFilter
            } else {
                PreFilter::Proceed
            });
        }
        for (_, node) in cache.nodes() {
            for other in node.pods.values() {
                let namespace = cache.namespace_labels(other.namespace());
                if !terms.required.is_empty()
                    && terms.required.iter().all(|t| t.matches(other, namespace))
                {
                    for term in &terms.required {
                        state.affinity.add_term(term, node, 1);
                    }
                }
                for term in &terms.required_anti {
                    if term.matches(other, namespace) {
                        state.anti.add_term(term, node, 1);
                    }
                }
            }
        }
        state.self_match = terms.required.iter().all(|t| t.matches(pod, own_namespace));
        self.state = state;
        Ok(PreFilter::Proceed)
    }

    fn filter_node(&self, pod: &PodInfo, node: &NodeState) -> Option<Rejection> {
        let state = &self.state;
        let label = |key: &str| node.info.label(key);
        let terms = &pod.affinity;
        if !terms.required.is_empty() {
            let mut pods_exist = true;
            for term in &terms.required {
                let Some(value) = label(&term.topology_key) else {
                    return Some(Rejection::new(&AFFINITY, true));
                };
                if state.affinity.get(&term.topology_key, value) <= 0 {
                    pods_exist = false;
                }
            }
            // No pod anywhere matches: the first pod of a group that matches its own terms
            // may start it on any node with the topology labels.
            let first_of_group = state.affinity.is_empty() && state.self_match;
            if !(pods_exist || first_of_group) {
                return Some(Rejection::new(&AFFINITY, true));
            }
        }
        let anti_hit = terms.required_anti.iter().any(|term| {
            label(&term.topology_key).is_some_and(|v| state.anti.get(&term.topology_key, v) > 0)
        });
        if anti_hit {
            return Some(Rejection::new(&ANTI_AFFINITY, false));
        }
        if !state.existing_anti.is_empty() {
            let labels = node.info.node.metadata.labels.iter().flatten();
            if labels
                .into_iter()
                .any(|(k, v)| state.existing_anti.get(k, v) > 0)
            {
                return Some(Rejection::new(&EXISTING_ANTI_AFFINITY, false));
            }
        }
        None
    }

    fn pre_score(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
        _feasible: &[u32],
    ) -> Result<bool, PluginError> {
        let terms = &pod.affinity;
        let own_namespace = cache.namespace_labels(pod.namespace());
        let mut scores = Domains::default();
        let mut visit = |node: &NodeState, other: &PodInfo| {
            let namespace = cache.namespace_labels(other.namespace());
            for term in &terms.preferred {
                if term.matches(other, namespace) {
                    scores.add_term(term, node, term.weight);
                }
            }
            for term in &terms.preferred_anti {
                if term.matches(other, namespace) {
                    scores.add_term(term, node, -term.weight);
                }
            }
            // The existing pod's terms about the incoming pod count the other way round.
            for term in &other.affinity.required {
                if term.matches(pod, own_namespace) {
                    scores.add_term(term, node, HARD_POD_AFFINITY_WEIGHT);
                }
            }
            for term in &other.affinity.preferred {
                if term.matches(pod, own_namespace) {
                    scores.add_term(term, node, term.weight);
                }
            }
            for term in &other.affinity.preferred_anti {
                if term.matches(pod, own_namespace) {
                    scores.add_term(term, node, -term.weight);
                }
            }
        };
        if terms.preferred.is_empty() && terms.preferred_anti.is_empty() {
            // Only pods with terms of their own can add anything.
            for (slot, other) in cache.pods_with_affinity() {
                if let Some(node) = cache.node(slot) {
                    visit(node, other);
                }
            }
        } else {
            for (_, node) in cache.nodes() {
                for other in node.pods.values() {
                    visit(node, other);
                }
            }
        }
        let any = !scores.is_empty();
        self.scores = scores;
        Ok(any)
    }

    fn score_node(&self, _pod: &PodInfo, node: &NodeState) -> i64 {
        self.scores
            .0
            .iter()
            .filter_map(|(key, values)| values.get(node.info.label(key)?))
            .sum()
    }

    fn normalize(
        &mut self,
        _pod: &PodInfo,
        _feasible: &[u32],
        scores: &mut [i64],
    ) -> Result<(), PluginError> {
        // Min-max scaling: the best node gets 100, the worst 0; all equal gives 0.
        let (Some(&min), Some(&max)) = (scores.iter().min(), scores.iter().max()) else {
            return Ok(());
        };
        for s in scores.iter_mut() {
            *s = if max > min {
                (MAX_NODE_SCORE as f64 * (*s - min) as f64 / (max - min) as f64) as i64
            } else {
                0
            };
        }
        Ok(())
    }
}

/// Whether a node counts for a spread constraint of `pod`: it passes the node inclusion
/// policies and has every constraint's topology label.
fn eligible(
    pod: &PodInfo,
    node: &NodeState,
    constraint: &SpreadConstraint,
    all: &[&SpreadConstraint],
) -> bool {
    all.iter()
        .all(|c| node.info.label(&c.topology_key).is_some())
        && (!constraint.honor_node_affinity || node_affinity_matches(pod, node))
        && (!constraint.honor_taints || untolerated_taint(pod, node).is_none())
}

/// How many pods on the node a constraint of `pod` counts.
fn matching(pod: &PodInfo, node: &NodeState, constraint: &SpreadConstraint) -> i64 {
    node.pods
        .values()
        .filter(|other| constraint.counts(other, pod.namespace()))
        .count() as i64
}

/// One DoNotSchedule constraint's domains, as the pre-filter counted them.
#[derive(Debug)]
struct HardDomains {
    /// Index into the pod's constraints.
    index: usize,
    /// Matching pods per domain value; every eligible domain is present.
    counts: HashMap<String, i64>,
    /// The smallest count (0 with fewer domains than minDomains); `None` with no domains.
    min: Option<i64>,
}

/// Topology spread: DoNotSchedule constraints filter (a node may not raise its domain's
/// count more than maxSkew above the emptiest domain), ScheduleAnyway constraints score
/// (fewer matching pods in the domain is better). Only the pod's own constraints apply;
/// kube-scheduler's cluster-level default constraints are not used.
#[derive(Debug, Default)]
pub struct PodTopologySpread {
    hard: Vec<HardDomains>,
    /// ScheduleAnyway constraints (indices), their domain counts and weights.
    soft: Vec<usize>,
    soft_counts: Vec<HashMap<String, i64>>,
    soft_weights: Vec<f64>,
    /// Feasible nodes without every constraint's label: scored 0.
    ignored: HashSet<u32>,
}

const HOSTNAME: &str = "kubernetes.io/hostname";

impl Plugin for PodTopologySpread {
    fn name(&self) -> &str {
        "PodTopologySpread"
    }
    fn filters(&self) -> bool {
        true
    }
    fn scores(&self) -> bool {
        true
    }

    fn pre_filter(&mut self, pod: &PodInfo, cache: &Cache) -> Result<PreFilter, PluginError> {
        self.hard.clear();
        let hard: Vec<&SpreadConstraint> = pod.spread.iter().filter(|c| c.hard).collect();
        if hard.is_empty() {
            return Ok(PreFilter::SkipFilter);
        }
        for (index, constraint) in pod.spread.iter().enumerate().filter(|(_, c)| c.hard) {
            let mut counts: HashMap<String, i64> = HashMap::new();
            for (_, node) in cache.nodes() {
                if !eligible(pod, node, constraint, &hard) {
                    continue;
                }
                let value = node
                    .info
                    .label(&constraint.topology_key)
                    .unwrap_or_default();
                *counts.entry(value.to_owned()).or_default() += matching(pod, node, constraint);
            }
            let mut min = counts.values().copied().min();
            if constraint
                .min_domains
                .is_some_and(|m| (counts.len() as i64) < m)
            {
                min = Some(0);
            }
            self.hard.push(HardDomains { index, counts, min });
        }
        Ok(PreFilter::Proceed)
    }

    fn filter_node(&self, pod: &PodInfo, node: &NodeState) -> Option<Rejection> {
        for domains in &self.hard {
            let constraint = &pod.spread[domains.index];
            let Some(value) = node.info.label(&constraint.topology_key) else {
                return Some(Rejection::new(&SPREAD_LABEL, true));
            };
            let Some(min) = domains.min else {
                continue;
            };
            let here = domains.counts.get(value).copied().unwrap_or(0);
            let skew = here + i64::from(constraint.selects(pod)) - min;
            if skew > constraint.max_skew {
                return Some(Rejection::new(&SPREAD, false));
            }
        }
        None
    }

    fn pre_score(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
        feasible: &[u32],
    ) -> Result<bool, PluginError> {
        self.soft = (0..pod.spread.len())
            .filter(|&i| !pod.spread[i].hard)
            .collect();
        self.ignored.clear();
        if self.soft.is_empty() {
            return Ok(false);
        }
        let soft: Vec<&SpreadConstraint> = self.soft.iter().map(|&i| &pod.spread[i]).collect();
        // The domains are those of the feasible nodes; per-hostname counts are taken per
        // node in `score`.
        self.soft_counts = vec![HashMap::new(); soft.len()];
        for &slot in feasible {
            let Some(node) = cache.node(slot) else {
                continue;
            };
            if !soft
                .iter()
                .all(|c| node.info.label(&c.topology_key).is_some())
            {
                self.ignored.insert(slot);
                continue;
            }
            for (k, c) in soft.iter().enumerate() {
                if c.topology_key != HOSTNAME {
                    let value = node.info.label(&c.topology_key).unwrap_or_default();
                    self.soft_counts[k].entry(value.to_owned()).or_insert(0);
                }
            }
        }
        let scored = feasible.len() - self.ignored.len();
        self.soft_weights = soft
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let size = if c.topology_key == HOSTNAME {
                    scored
                } else {
                    self.soft_counts[k].len()
                };
                ((size + 2) as f64).ln()
            })
            .collect();
        for (_, node) in cache.nodes() {
            for (k, c) in soft.iter().enumerate() {
                if c.topology_key == HOSTNAME || !eligible(pod, node, c, &soft) {
                    continue;
                }
                let value = node.info.label(&c.topology_key).unwrap_or_default();
                if let Some(count) = self.soft_counts[k].get_mut(value) {
                    *count += matching(pod, node, c);
                }
            }
        }
        Ok(true)
    }

    fn score(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
        feasible: &[u32],
    ) -> Result<Vec<i64>, PluginError> {
        Ok(feasible
            .iter()
            .map(|&slot| {
                let Some(node) = cache.node(slot).filter(|_| !self.ignored.contains(&slot)) else {
                    return 0;
                };
                let mut score = 0.0;
                for (k, &i) in self.soft.iter().enumerate() {
                    let c = &pod.spread[i];
                    let Some(value) = node.info.label(&c.topology_key) else {
                        continue;
                    };
                    let count = if c.topology_key == HOSTNAME {
                        matching(pod, node, c)
                    } else {
                        self.soft_counts[k].get(value).copied().unwrap_or(0)
                    };
                    score += count as f64 * self.soft_weights[k] + (c.max_skew - 1) as f64;
                }
                score.round() as i64
            })
            .collect())
    }

    fn normalize(
        &mut self,
        _pod: &PodInfo,
        feasible: &[u32],
        scores: &mut [i64],
    ) -> Result<(), PluginError> {
        // Fewer matching pods is better: the lowest raw score maps to 100.
        let counted = || {
            feasible
                .iter()
                .zip(scores.iter())
                .filter(|(slot, _)| !self.ignored.contains(slot))
                .map(|(_, s)| *s)
        };
        let min = counted().min().unwrap_or(0);
        let max = counted().max().unwrap_or(0);
        for (slot, s) in feasible.iter().zip(scores.iter_mut()) {
            *s = if self.ignored.contains(slot) {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *s) / max
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::builtins::tests::profile;
    use crate::framework::CycleError;
    use crate::model::NodeInfo;

    fn pod(
        namespace: &str,
        name: &str,
        labels: serde_json::Value,
        spec: serde_json::Value,
    ) -> Arc<PodInfo> {
        let mut spec = spec;
        spec["containers"] =
            json!([{"name": "c", "image": "x", "resources": {"requests": {"cpu": "1m"}}}]);
        let pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace, "uid": format!("{namespace}/{name}"), "labels": labels},
            "spec": spec,
        }))
        .unwrap();
        Arc::new(PodInfo::new(Arc::new(pod)))
    }

    /// Nodes `name:zone` (an empty zone: no zone label).
    fn cluster(nodes: &[&str]) -> Cache {
        let mut cache = Cache::default();
        for spec in nodes {
            let (name, zone) = spec.split_once(':').unwrap();
            let mut labels = json!({"kubernetes.io/hostname": name});
            if !zone.is_empty() {
                labels["topology.kubernetes.io/zone"] = json!(zone);
            }
            let node = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}},
            }))
            .unwrap();
            cache.upsert_node(NodeInfo::new(Arc::new(node)));
            cache.upsert_namespace("default".into(), Default::default());
        }
        cache
    }

    fn place(cache: &mut Cache, node: &str, pod: Arc<PodInfo>) {
        cache.place(pod, node, false).unwrap();
    }

    /// The nodes a pod may go to, by name, sorted.
    fn fits(cache: &Cache, pod: &PodInfo) -> Result<Vec<String>, String> {
        let mut p = profile();
        // Without scores every feasible node ties, and ties are broken at random: 64 cycles
        // choose each of a few feasible nodes at least once.
        p.entries.iter_mut().for_each(|e| e.weight = 0);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..64 {
            match p.schedule(pod, cache) {
                Ok(d) => {
                    seen.insert(cache.node(d.slot).unwrap().info.name().to_owned());
                    p.unreserve(pod, d.slot);
                }
                Err(e @ CycleError::Unschedulable { .. }) => return Err(e.message()),
                Err(e) => panic!("{e:?}"),
            }
        }
        Ok(seen.into_iter().collect())
    }

    fn term(selector: serde_json::Value, key: &str) -> serde_json::Value {
        json!({"labelSelector": selector, "topologyKey": key})
    }

    const ZONE: &str = "topology.kubernetes.io/zone";

    #[test]
    fn required_anti_affinity_keeps_pods_apart_by_hostname() {
        let mut cache = cluster(&["a:z1", "b:z1", "c:z2"]);
        place(
            &mut cache,
            "a",
            pod("default", "w1", json!({"app": "web"}), json!({})),
        );
        place(
            &mut cache,
            "b",
            pod("default", "w2", json!({"app": "web"}), json!({})),
        );
        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            [term(json!({"matchLabels": {"app": "web"}}), HOSTNAME)]}}});
        let w3 = pod("default", "w3", json!({"app": "web"}), anti.clone());
        assert_eq!(fits(&cache, &w3), Ok(vec!["c".to_owned()]));
        place(
            &mut cache,
            "c",
            pod("default", "w4", json!({"app": "web"}), json!({})),
        );
        assert_eq!(
            fits(&cache, &w3),
            Err("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.".into())
        );
        // Another namespace's pods are not selected by a term without namespaces.
        let other = pod("other", "w5", json!({"app": "web"}), anti);
        cache.upsert_namespace("other".into(), Default::default());
        assert_eq!(fits(&cache, &other).unwrap().len(), 3);
    }

    #[test]
    fn existing_pods_anti_affinity_is_symmetric() {
        let mut cache = cluster(&["a:z1", "b:z1", "c:z2"]);
        // A pod on "a" refuses app=db pods anywhere in its zone.
        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            [term(json!({"matchLabels": {"app": "db"}}), ZONE)]}}});
        place(&mut cache, "a", pod("default", "loner", json!({}), anti));
        let db = pod("default", "db", json!({"app": "db"}), json!({}));
        assert_eq!(fits(&cache, &db), Ok(vec!["c".to_owned()]));
        place(
            &mut cache,
            "c",
            pod(
                "default",
                "loner2",
                json!({}),
                json!({"affinity": {"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [term(json!({"matchLabels": {"app": "db"}}), HOSTNAME)]}}}),
            ),
        );
        assert_eq!(
            fits(&cache, &db),
            Err("0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules.".into())
        );
        // Pods it doesn't select are not affected.
        let web = pod("default", "web", json!({"app": "web"}), json!({}));
        assert_eq!(fits(&cache, &web).unwrap().len(), 3);
    }

    #[test]
    fn required_affinity_follows_matching_pods_and_lets_the_first_one_start() {
        let mut cache = cluster(&["a:z1", "b:z2", "c:z2", "d:"]);
        let with_cache = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            [term(json!({"matchLabels": {"app": "cache"}}), ZONE)]}}});
        // Nothing matches yet and the pod isn't a cache itself: nowhere.
        let web = pod("default", "web", json!({"app": "web"}), with_cache.clone());
        assert_eq!(
            fits(&cache, &web),
            Err("0/4 nodes are available: 4 node(s) didn't match pod affinity rules.".into())
        );
        // The first pod of a group that matches its own term goes to any node with the label.
        let first = pod(
            "default",
            "cache-0",
            json!({"app": "cache"}),
            with_cache.clone(),
        );
        assert_eq!(
            fits(&cache, &first),
            Ok(vec!["a".into(), "b".into(), "c".into()])
        );
        place(&mut cache, "b", first);
        assert_eq!(fits(&cache, &web), Ok(vec!["b".into(), "c".into()]));
    }

    #[test]
    fn namespace_selectors_and_match_label_keys_narrow_what_a_term_selects() {
        let mut cache = cluster(&["a:z1", "b:z2"]);
        let labels = |team: &str| [("team".to_owned(), team.to_owned())].into();
        cache.upsert_namespace("red".into(), labels("red"));
        cache.upsert_namespace("blue".into(), labels("blue"));
        place(
            &mut cache,
            "a",
            pod("red", "r", json!({"app": "web", "version": "1"}), json!({})),
        );
        place(
            &mut cache,
            "b",
            pod(
                "blue",
                "b",
                json!({"app": "web", "version": "2"}),
                json!({}),
            ),
        );
        let anti = |extra: serde_json::Value| {
            let mut t = term(json!({"matchLabels": {"app": "web"}}), HOSTNAME);
            t.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [t]}}})
        };
        let by_team = pod(
            "default",
            "p",
            json!({}),
            anti(json!({"namespaceSelector": {"matchLabels": {"team": "red"}}})),
        );
        assert_eq!(fits(&cache, &by_team), Ok(vec!["b".into()]));
        let everywhere = pod(
            "default",
            "p",
            json!({}),
            anti(json!({"namespaceSelector": {}})),
        );
        assert!(fits(&cache, &everywhere).is_err());
        let listed = pod(
            "default",
            "p",
            json!({}),
            anti(json!({"namespaces": ["blue"]})),
        );
        assert_eq!(fits(&cache, &listed), Ok(vec!["a".into()]));
        // matchLabelKeys: only pods with the same version count.
        let same_version = pod(
            "default",
            "p",
            json!({"version": "2"}),
            anti(json!({"namespaceSelector": {}, "matchLabelKeys": ["version"]})),
        );
        assert_eq!(fits(&cache, &same_version), Ok(vec!["a".into()]));
        let other_version = pod(
            "default",
            "p",
            json!({"version": "2"}),
            anti(json!({"namespaceSelector": {}, "mismatchLabelKeys": ["version"]})),
        );
        assert_eq!(fits(&cache, &other_version), Ok(vec!["b".into()]));
    }

    fn scores(plugin: &mut dyn Plugin, pod: &PodInfo, cache: &Cache) -> Vec<(String, i64)> {
        let feasible: Vec<u32> = cache.slots().collect();
        if !plugin.pre_score(pod, cache, &feasible).unwrap() {
            return Vec::new();
        }
        let mut scores = plugin.score(pod, cache, &feasible).unwrap();
        plugin.normalize(pod, &feasible, &mut scores).unwrap();
        feasible
            .iter()
            .map(|&s| cache.node(s).unwrap().info.name().to_owned())
            .zip(scores)
            .collect()
    }

    #[test]
    fn preferred_terms_and_existing_pods_terms_score_min_max() {
        let mut cache = cluster(&["a:z1", "b:z2", "c:z3"]);
        place(
            &mut cache,
            "a",
            pod("default", "web", json!({"app": "web"}), json!({})),
        );
        place(
            &mut cache,
            "b",
            pod("default", "batch", json!({"app": "batch"}), json!({})),
        );
        let prefers = pod(
            "default",
            "p",
            json!({"app": "api"}),
            json!({"affinity": {
            "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "podAffinityTerm": term(json!({"matchLabels": {"app": "web"}}), ZONE)}]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 5, "podAffinityTerm": term(json!({"matchLabels": {"app": "batch"}}), ZONE)}]}}}),
        );
        // Raw: z1 +10, z2 -5, z3 0 → (x - min) / (max - min).
        assert_eq!(
            scores(&mut InterPodAffinity::default(), &prefers, &cache),
            vec![("a".into(), 100), ("b".into(), 0), ("c".into(), 33)]
        );
        // An existing pod's required affinity for the incoming pod adds hardPodAffinityWeight.
        place(
            &mut cache,
            "c",
            pod(
                "default",
                "fan",
                json!({}),
                json!({"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [term(json!({"matchLabels": {"app": "api"}}), ZONE)]}}}),
            ),
        );
        let plain = pod("default", "q", json!({"app": "api"}), json!({}));
        assert_eq!(
            scores(&mut InterPodAffinity::default(), &plain, &cache),
            vec![("a".into(), 0), ("b".into(), 0), ("c".into(), 100)]
        );
        // Nothing to say: the score is skipped.
        let other = pod("default", "r", json!({"app": "other"}), json!({}));
        assert!(scores(&mut InterPodAffinity::default(), &other, &cache).is_empty());
    }

    fn spread(hard: bool, max_skew: i32, extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({
            "maxSkew": max_skew, "topologyKey": ZONE,
            "whenUnsatisfiable": if hard { "DoNotSchedule" } else { "ScheduleAnyway" },
            "labelSelector": {"matchLabels": {"app": "web"}},
        });
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"topologySpreadConstraints": [c]})
    }

    #[test]
    fn do_not_schedule_keeps_the_skew_within_max_skew() {
        let mut cache = cluster(&["a:z1", "b:z2", "c:z3", "d:"]);
        for (i, node) in ["a", "a", "b"].iter().enumerate() {
            place(
                &mut cache,
                node,
                pod(
                    "default",
                    &format!("w{i}"),
                    json!({"app": "web"}),
                    json!({}),
                ),
            );
        }
        // Another namespace's and other apps' pods don't count.
        place(
            &mut cache,
            "c",
            pod("default", "x", json!({"app": "other"}), json!({})),
        );
        let web = pod(
            "default",
            "new",
            json!({"app": "web"}),
            spread(true, 1, json!({})),
        );
        assert_eq!(fits(&cache, &web), Ok(vec!["c".into()]));
        // With minDomains above the 3 domains the minimum is 0, which z3 has anyway.
        let few = pod(
            "default",
            "n",
            json!({"app": "web"}),
            spread(true, 1, json!({"minDomains": 4})),
        );
        assert_eq!(fits(&cache, &few), Ok(vec!["c".into()]));
        place(
            &mut cache,
            "c",
            pod("default", "w3", json!({"app": "web"}), json!({})),
        );
        place(
            &mut cache,
            "b",
            pod("default", "w4", json!({"app": "web"}), json!({})),
        );
        // z1 2, z2 2, z3 1: minDomains 4 makes the minimum 0 and nothing fits maxSkew 1.
        let strict = pod(
            "default",
            "n",
            json!({"app": "web"}),
            spread(true, 1, json!({"minDomains": 4})),
        );
        assert_eq!(
            fits(&cache, &strict),
            Err("0/4 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label), 3 node(s) didn't match pod topology spread constraints.".into())
        );
        // nodeAffinityPolicy Honor: a domain the pod can't use doesn't hold the minimum down.
        let mut away = spread(true, 1, json!({}));
        away["nodeSelector"] = json!({ZONE: "z1"});
        assert_eq!(
            fits(
                &cache,
                &pod("default", "n", json!({"app": "web"}), away.clone())
            ),
            Ok(vec!["a".into()])
        );
        let mut ignore = spread(true, 1, json!({"nodeAffinityPolicy": "Ignore"}));
        ignore["nodeSelector"] = json!({ZONE: "z1"});
        assert!(fits(&cache, &pod("default", "n", json!({"app": "web"}), ignore)).is_err());
    }

    #[test]
    fn schedule_anyway_prefers_emptier_domains() {
        let mut cache = cluster(&["a:z1", "b:z2", "c:z3", "d:"]);
        for (i, node) in ["a", "a", "b"].iter().enumerate() {
            place(
                &mut cache,
                node,
                pod(
                    "default",
                    &format!("w{i}"),
                    json!({"app": "web"}),
                    json!({}),
                ),
            );
        }
        let web = pod(
            "default",
            "new",
            json!({"app": "web"}),
            spread(false, 1, json!({})),
        );
        // ln(3 + 2) per pod: z1 3.2, z2 1.6, z3 0 → raw 3, 2, 0; reversed by the maximum.
        assert_eq!(
            scores(&mut PodTopologySpread::default(), &web, &cache),
            vec![
                ("a".into(), 0),
                ("b".into(), 33),
                ("c".into(), 100),
                ("d".into(), 0)
            ]
        );
    }
}
