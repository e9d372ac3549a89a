//! NodeResourcesFit as a Wasm plugin: the built-in filter and LeastAllocated scorer, ported
//! so the two can be compared side by side (`skiff bench scheduler`).
//!
//! Filter: a node fits if it has room for one more pod and, for every resource the pod
//! requests, allocatable minus what its pods already request covers the request.
//! Score: LeastAllocated over cpu and memory (weights 1 and 1) of the non-zero requests, as
//! the native one: containers that request nothing count as 100m cpu and 200 MiB memory.
//!
//! Config (all optional): `{"extendedResources": ["nvidia.com/gpu"]}` names extended
//! resources that get their own reason ("Insufficient nvidia.com/gpu"); others share one.

use serde::Deserialize;
use skiff_plugin_sdk::{MAX_NODE_SCORE, NodeInfo, Pod, Reason, SchedulerPlugin};

const TOO_MANY_PODS: u16 = 1;
const CPU: u16 = 2;
const MEMORY: u16 = 3;
const EPHEMERAL: u16 = 4;
const EXTENDED: u16 = 5;
/// Codes from here on name `extendedResources[code - FIRST_NAMED]`.
const FIRST_NAMED: u16 = 6;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    #[serde(default)]
    extended_resources: Vec<String>,
}

struct Fit {
    named: Vec<String>,
}

fn least_allocated(requested: i64, allocatable: i64) -> i64 {
    if allocatable <= 0 || requested > allocatable {
        return 0;
    }
    (allocatable - requested) * MAX_NODE_SCORE / allocatable
}

impl SchedulerPlugin for Fit {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("config: {e}"))?;
        Ok(Fit {
            named: config.extended_resources,
        })
    }

    fn reasons(&self) -> Vec<Reason> {
        let reason = |message: &str| Reason {
            message: message.to_owned(),
            unresolvable: false,
        };
        let mut reasons = vec![
            reason("Too many pods"),
            reason("Insufficient cpu"),
            reason("Insufficient memory"),
            reason("Insufficient ephemeral-storage"),
            reason("Insufficient extended resources"),
        ];
        reasons.extend(
            self.named
                .iter()
                .map(|n| reason(&format!("Insufficient {n}"))),
        );
        reasons
    }

    fn wants_pods(&self) -> bool {
        true
    }

    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), u16> {
        let free = &node.node.allocatable;
        let used = &node.requested;
        let want = &pod.requests;
        if node.pods.len() as i64 + 1 > free.pods {
            return Err(TOO_MANY_PODS);
        }
        if want.milli_cpu > 0 && want.milli_cpu > free.milli_cpu - used.milli_cpu {
            return Err(CPU);
        }
        if want.memory > 0 && want.memory > free.memory - used.memory {
            return Err(MEMORY);
        }
        if want.ephemeral_storage > 0
            && want.ephemeral_storage > free.ephemeral_storage - used.ephemeral_storage
        {
            return Err(EPHEMERAL);
        }
        for (name, amount) in &want.scalar {
            if *amount > 0 && *amount > free.scalar(name) - used.scalar(name) {
                return Err(match self.named.iter().position(|n| n == name) {
                    Some(i) => FIRST_NAMED + i as u16,
                    None => EXTENDED,
                });
            }
        }
        Ok(())
    }

    fn score(&self, pod: &Pod, node: &NodeInfo) -> i64 {
        // Non-zero requests, as kube-scheduler scores: pods without requests still count.
        let cpu = node.non_zero_requested.0 + pod.non_zero_requests.0;
        let mem = node.non_zero_requested.1 + pod.non_zero_requests.1;
        let free = &node.node.allocatable;
        (least_allocated(cpu, free.milli_cpu) + least_allocated(mem, free.memory)) / 2
    }
}

skiff_plugin_sdk::export_scheduler!(Fit);
