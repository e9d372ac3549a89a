//! A bin-packing scorer: prefers the nodes that are already most allocated, so pods fill
//! nodes one by one and whole nodes stay free (for large pods, or to be scaled away). With
//! an extended resource such as `nvidia.com/gpu` weighted in, it packs GPU pods onto the
//! fewest GPU nodes and keeps pods that need no GPU off GPU nodes (`avoidIdle`).
//!
//! Config (all optional): `{"weights": {"cpu": 1, "memory": 1, "nvidia.com/gpu": 3},
//! "avoidIdle": ["nvidia.com/gpu"]}`. Scores are MostAllocated: requested (including this
//! pod) over allocatable, weighted, 0..=100.

use std::collections::BTreeMap;

use serde::Deserialize;
use skiff_plugin_sdk::{MAX_NODE_SCORE, NodeInfo, Pod, Resources, SchedulerPlugin};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct Config {
    weights: BTreeMap<String, i64>,
    avoid_idle: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            weights: [("cpu".to_owned(), 1), ("memory".to_owned(), 1)].into(),
            avoid_idle: Vec::new(),
        }
    }
}

struct BinPacking {
    config: Config,
}

fn amount(r: &Resources, name: &str) -> i64 {
    match name {
        "cpu" => r.milli_cpu,
        "memory" => r.memory,
        "ephemeral-storage" => r.ephemeral_storage,
        other => r.scalar(other),
    }
}

impl SchedulerPlugin for BinPacking {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("config: {e}"))?;
        if let Some((name, w)) = config.weights.iter().find(|(_, w)| **w < 0) {
            return Err(format!(
                "config: weight of {name} is {w}; weights can't be negative"
            ));
        }
        if config.weights.values().sum::<i64>() == 0 {
            return Err("config: at least one weight must be positive".into());
        }
        Ok(BinPacking { config })
    }

    fn wants_pods(&self) -> bool {
        true
    }

    fn score(&self, pod: &Pod, node: &NodeInfo) -> i64 {
        let allocatable = &node.node.allocatable;
        for name in &self.config.avoid_idle {
            if amount(&pod.requests, name) == 0 && amount(allocatable, name) > 0 {
                return 0;
            }
        }
        let (mut total, mut weights) = (0, 0);
        for (name, &weight) in &self.config.weights {
            let capacity = amount(allocatable, name);
            if capacity <= 0 || weight == 0 {
                continue;
            }
            let used = (amount(&node.requested, name) + amount(&pod.requests, name)).min(capacity);
            total += used * MAX_NODE_SCORE / capacity * weight;
            weights += weight;
        }
        if weights == 0 { 0 } else { total / weights }
    }
}

skiff_plugin_sdk::export_scheduler!(BinPacking);
