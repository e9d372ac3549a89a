//! Preemption (kube-scheduler's DefaultPreemption PostFilter): when no node fits a pod, find
//! the node where evicting the fewest and least important lower-priority pods makes room.
//!
//! The what-if runs the profile's built-in filters on a copy of each candidate node with
//! pods taken off. Candidates are the nodes only a preemptible plugin (NodeResourcesFit,
//! NodePorts) rejected; nodes rejected by pod (anti-)affinity or spread constraints are not
//! tried, Wasm filters are not consulted in the what-if (the pod's next cycle runs them), and
//! PodDisruptionBudgets are not considered yet. The chosen node is nominated for the pod
//! (the cache's nominations), and the built-in resource and port filters keep its room from
//! pods of no higher priority until the pod is placed.

use std::cmp::Reverse;
use std::sync::Arc;

use crate::cache::{Cache, NodeState};
use crate::framework::Profile;
use crate::model::PodInfo;

/// The node chosen and the pods to evict from it.
#[derive(Debug)]
pub struct Preemption {
    /// The node's slot.
    pub slot: u32,
    /// The pods to evict, most important first.
    pub victims: Vec<Arc<PodInfo>>,
}

impl Preemption {
    /// kube's order of preference: the lowest highest victim priority, then the lowest sum
    /// of priorities, then the fewest victims.
    fn cost(&self) -> (i32, i64, usize) {
        let highest = self
            .victims
            .iter()
            .map(|v| v.priority)
            .max()
            .unwrap_or(i32::MIN);
        // Offset so negative priorities still add up to more victims costing more.
        let sum = self
            .victims
            .iter()
            .map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1)
            .sum();
        (highest, sum, self.victims.len())
    }
}

impl Profile {
    /// Whether `pod` passes every active built-in filter on `node`.
    fn fits_builtin(&self, pod: &PodInfo, node: &NodeState, active: &[usize]) -> bool {
        active.iter().all(|&i| {
            let e = &self.entries[i];
            e.wasm || !e.plugin.filters() || e.plugin.filter_node(pod, node).is_none()
        })
    }

    /// Picks the node and victims to make room for `pod` among `candidates`; `None` if
    /// evicting lower-priority pods helps nowhere. Runs right after the pod's failed cycle,
    /// whose pre-filter state the filters still hold.
    pub fn preempt(&self, pod: &PodInfo, cache: &Cache, candidates: &[u32]) -> Option<Preemption> {
        let active = self.active();
        let mut best: Option<Preemption> = None;
        for &slot in candidates {
            let Some(node) = cache.node(slot) else {
                continue;
            };
            let mut lower: Vec<Arc<PodInfo>> = node
                .pods
                .values()
                .filter(|p| p.priority < pod.priority)
                .cloned()
                .collect();
            if lower.is_empty() {
                continue;
            }
            let mut trial = node.scratch();
            for p in &lower {
                trial.remove_pod(&p.uid);
            }
            if !self.fits_builtin(pod, &trial, &active) {
                continue;
            }
            // Give back as many as still leave room, the most important first.
            lower.sort_by(|a, b| (Reverse(a.priority), &a.key).cmp(&(Reverse(b.priority), &b.key)));
            let mut victims = Vec::new();
            for p in lower {
                trial.add_pod(p.clone());
                if !self.fits_builtin(pod, &trial, &active) {
                    trial.remove_pod(&p.uid);
                    victims.push(p);
                }
            }
            if victims.is_empty() {
                continue;
            }
            let candidate = Preemption { slot, victims };
            if best.as_ref().is_none_or(|b| candidate.cost() < b.cost()) {
                best = Some(candidate);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::builtins::tests::profile;
    use crate::framework::CycleError;
    use crate::model::NodeInfo;

    fn pod(name: &str, priority: i32, cpu: &str) -> Arc<PodInfo> {
        let pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": name},
            "spec": {"priority": priority, "containers": [
                {"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}]},
        }))
        .unwrap();
        Arc::new(PodInfo::new(Arc::new(pod)))
    }

    /// A node's name and its pods' names, priorities and cpu requests.
    type NodeSpec<'a> = (&'a str, &'a [(&'a str, i32, &'a str)]);

    fn cache(nodes: &[NodeSpec]) -> Cache {
        let mut cache = Cache::default();
        for (name, pods) in nodes {
            let node = serde_json::from_value(json!({
                "metadata": {"name": name},
                "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}},
            }))
            .unwrap();
            cache.upsert_node(NodeInfo::new(Arc::new(node)));
            for (pod_name, priority, cpu) in *pods {
                cache.place(pod(pod_name, *priority, cpu), name, false);
            }
        }
        cache
    }

    /// Runs the failed cycle, then preemption; the node's name and the victims' names.
    fn preempt(cache: &Cache, incoming: &PodInfo) -> Option<(String, Vec<String>)> {
        let mut p = profile();
        let Err(CycleError::Unschedulable { preemptible, .. }) = p.schedule(incoming, cache) else {
            panic!("the pod should not fit");
        };
        let chosen = p.preempt(incoming, cache, &preemptible)?;
        let node = cache.node(chosen.slot).unwrap().info.name().to_owned();
        Some((
            node,
            chosen.victims.iter().map(|v| v.name().to_owned()).collect(),
        ))
    }

    #[test]
    fn evicts_the_fewest_and_least_important_lower_priority_pods() {
        let cache = cache(&[
            // Room only by evicting a priority-100 pod.
            ("a", &[("a-high", 100, "3"), ("a-low", 5, "1")]),
            // Room by evicting pods of priority 10 and 1: the highest victim is lower than
            // on "a". Given back first, b-1 doesn't leave room; b-2 does, so it stays.
            ("b", &[("b-1", 10, "2"), ("b-2", 10, "1"), ("b-3", 1, "1")]),
        ]);
        let incoming = pod("big", 1000, "3");
        assert_eq!(
            preempt(&cache, &incoming),
            Some(("b".into(), vec!["b-1".into(), "b-3".into()]))
        );
    }

    #[test]
    fn reprieves_pods_that_can_stay_and_never_evicts_equal_or_higher_priority() {
        let cache = cache(&[(
            "a",
            &[("keep", 50, "1"), ("go", 50, "2"), ("same", 500, "1")],
        )]);
        // 2 cpu needed: evicting "go" is enough; "keep" is given back.
        assert_eq!(
            preempt(&cache, &pod("p", 500, "2")),
            Some(("a".into(), vec!["go".into()]))
        );
        // Evicting every lower pod still leaves too little: no preemption.
        assert_eq!(preempt(&cache, &pod("q", 500, "3.5")), None);
        // Equal priority: nothing to evict.
        assert_eq!(preempt(&cache, &pod("r", 50, "3.5")), None);
    }
}
