//! Spreads the pods of each app evenly across zones: a node is feasible only if placing the
//! pod there keeps the app's pod count in that zone within `maxSkew` of the emptiest zone.
//!
//! A simpler, always-hard cousin of PodTopologySpread that needs no per-pod configuration:
//! the platform team loads it once and every app with the label is spread.
//!
//! Config (all optional): `{"appLabel": "app", "topologyKey": "topology.kubernetes.io/zone",
//! "maxSkew": 1}`. Pods without the app label, and nodes without the topology key, are left
//! alone.

use std::collections::{BTreeMap, HashMap};

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
    /// Nodes per zone: a zone with nodes but none of the app's pods counts as 0.
    zones: BTreeMap<String, i64>,
    /// Labelled pods per namespace, app and zone, kept up to date as pods come and go, so a
    /// cycle costs a look-up rather than a walk over every node.
    pods: HashMap<String, HashMap<String, BTreeMap<String, i64>>>,
    /// For the pod being scheduled: its app's pods per zone, and the smallest count.
    counts: BTreeMap<String, i64>,
    min: i64,
}

/// Adds `sign` to a count, dropping it at zero so departed zones and apps are forgotten.
fn add(counts: &mut BTreeMap<String, i64>, zone: &str, sign: i64) {
    match counts.get_mut(zone) {
        Some(n) => {
            *n += sign;
            if *n <= 0 {
                counts.remove(zone);
            }
        }
        None if sign > 0 => {
            counts.insert(zone.to_owned(), sign);
        }
        None => {}
    }
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
            zones: BTreeMap::new(),
            pods: HashMap::new(),
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

    fn count_node(&mut self, node: &NodeInfo, sign: i64) {
        if let Some(zone) = node.node.label(&self.config.topology_key) {
            add(&mut self.zones, zone, sign);
        }
    }

    fn count_pod(&mut self, node: &NodeInfo, pod: &Pod, sign: i64) {
        let (Some(app), Some(zone)) = (
            pod.label(&self.config.app_label),
            node.node.label(&self.config.topology_key),
        ) else {
            return;
        };
        let apps = self.pods.entry(pod.namespace.clone()).or_default();
        let counts = match apps.get_mut(app) {
            Some(counts) => counts,
            None => apps.entry(app.to_owned()).or_default(),
        };
        add(counts, zone, sign);
        if counts.is_empty() {
            apps.remove(app);
        }
    }

    fn pre_filter(&mut self, pod: &Pod, _cluster: &Cluster<'_>) -> PreFilterResult {
        let Some(app) = pod.label(&self.config.app_label) else {
            return PreFilterResult::Skip;
        };
        let placed = self.pods.get(&pod.namespace).and_then(|apps| apps.get(app));
        self.counts.clear();
        for zone in self.zones.keys() {
            let n = placed.and_then(|c| c.get(zone)).copied().unwrap_or(0);
            self.counts.insert(zone.clone(), n);
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
