//! Spreads the pods of each app evenly across zones: a node is feasible only if placing the
//! pod there keeps the app's pod count in that zone within `maxSkew` of the emptiest zone.
//!
//! A simpler, always-hard cousin of PodTopologySpread that needs no per-pod configuration:
//! the platform team loads it once and every app with the label is spread.
//!
//! Config (all optional): `{"appLabel": "app", "topologyKey": "topology.kubernetes.io/zone",
//! "maxSkew": 1}`. Pods without the app label, and nodes without the topology key, are left
//! alone.

use std::collections::BTreeMap;

use serde::Deserialize;
use skiff_plugin_sdk::{Cluster, NodeInfo, Pod, PreFilterResult, Reason, SchedulerPlugin};

const UNBALANCED: u16 = 1;
const NO_ZONE: u16 = 2;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct Config {
    app_label: String,
    topology_key: String,
    max_skew: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            app_label: "app".into(),
            topology_key: "topology.kubernetes.io/zone".into(),
            max_skew: 1,
        }
    }
}

struct ZoneSpread {
    config: Config,
    /// For the pod being scheduled: matching pods per zone, and the smallest count.
    counts: BTreeMap<String, i64>,
    min: i64,
}

impl SchedulerPlugin for ZoneSpread {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("config: {e}"))?;
        if config.max_skew < 1 {
            return Err(format!(
                "config: maxSkew must be at least 1, not {}",
                config.max_skew
            ));
        }
        Ok(ZoneSpread {
            config,
            counts: BTreeMap::new(),
            min: 0,
        })
    }

    fn reasons(&self) -> Vec<Reason> {
        vec![
            Reason {
                message: format!(
                    "node(s) would unbalance the app across {}",
                    self.config.topology_key
                ),
                unresolvable: false,
            },
            Reason {
                message: format!("node(s) had no {} label", self.config.topology_key),
                unresolvable: true,
            },
        ]
    }

    fn wants_pods(&self) -> bool {
        true
    }

    fn pre_filter(&mut self, pod: &Pod, cluster: &Cluster<'_>) -> PreFilterResult {
        let Some(app) = pod.label(&self.config.app_label) else {
            return PreFilterResult::Skip;
        };
        self.counts.clear();
        for node in cluster.nodes() {
            let Some(zone) = node.node.label(&self.config.topology_key) else {
                continue;
            };
            let same = node
                .pods
                .iter()
                .filter(|p| {
                    p.namespace == pod.namespace && p.label(&self.config.app_label) == Some(app)
                })
                .count() as i64;
            *self.counts.entry(zone.to_owned()).or_default() += same;
        }
        self.min = self.counts.values().copied().min().unwrap_or(0);
        PreFilterResult::Proceed
    }

    fn filter(&self, _pod: &Pod, node: &NodeInfo) -> Result<(), u16> {
        let Some(zone) = node.node.label(&self.config.topology_key) else {
            return Err(NO_ZONE);
        };
        let here = self.counts.get(zone).copied().unwrap_or(0);
        if here + 1 - self.min > self.config.max_skew {
            return Err(UNBALANCED);
        }
        Ok(())
    }
}

skiff_plugin_sdk::export_scheduler!(ZoneSpread);
