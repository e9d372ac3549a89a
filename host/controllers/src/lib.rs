//! skiff's controllers: API clients with level-triggered reconcilers that bring the
//! cluster to what its objects ask for, as kube-controller-manager's do.
//!
//! - [`csr`]: approves node agents' CertificateSigningRequests that prove who they are,
//!   and signs approved requests with the cluster CA (kube's csrapproving and
//!   csrsigning controllers).
//! - [`cronjob`]: a Job at each time of a schedule.
//! - [`daemonset`]: a pod on each node that qualifies.
//! - [`deployment`]: rollouts of a pod template through ReplicaSets.
//! - [`disruption`]: PodDisruptionBudgets' status: how many pods may be evicted now.
//! - [`gc`]: the garbage collector: deletes objects whose owners are gone and carries out
//!   foreground and orphan deletion.
//! - [`history`]: template hashes and ControllerRevisions.
//! - [`hpa`]: replicas that follow the pods' CPU and memory use.
//! - [`job`]: pods run to completion, and finished jobs deleted after their TTL.
//! - [`namespace`]: deletes a deleted namespace's content, then the namespace.
//! - [`nodelifecycle`]: nodes that stop reporting go Unknown and are tainted; pods are
//!   evicted from NoExecute-tainted nodes.
//! - [`replicaset`]: as many pods as a ReplicaSet's replicas.
//! - [`serviceaccount`]: a `default` ServiceAccount in every namespace.
//! - [`statefulset`]: pods with stable names and their own claims, in order.
//! - [`bootstrap`]: what nodes need to join: a bootstrap token and the public
//!   `cluster-info` ConfigMap (kubeadm's bootstrap-token phase).
//!
//! [`run`] starts the ones a [`Selection`] (kube-controller-manager's `--controllers`)
//! enables:
//!
//! ```no_run
//! # async fn demo(client: kube::Client, ca_cert_pem: String, ca_key_pem: String) {
//! let selection: skiff_controllers::Selection = "*,-serviceaccount-controller".parse().unwrap();
//! let signer = skiff_controllers::csr::Signer::new(ca_cert_pem, ca_key_pem);
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let options = skiff_controllers::Options {
//!     signer: Some(signer),
//!     ..Default::default()
//! };
//! skiff_controllers::run(client, &selection, options, shutdown).await;
//! # }
//! ```

pub mod bootstrap;
pub mod cronjob;
pub mod csr;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod gc;
pub mod history;
pub mod hpa;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod owners;
pub mod pods;
pub mod replicaset;
pub mod serviceaccount;
pub mod statefulset;
mod status;

use futures::future::BoxFuture;
use kube::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Every controller, by the name kube-controller-manager's `--controllers` flag uses, with
/// the older short names it still accepts.
pub const CONTROLLERS: &[(&str, &[&str])] = &[
    (
        CSR_SIGNING,
        &[
            "csrsigning",
            "certificatesigningrequest-approving-controller",
            "csrapproving",
        ],
    ),
    ("cronjob-controller", &["cronjob"]),
    ("daemonset-controller", &["daemonset"]),
    ("deployment-controller", &["deployment"]),
    ("disruption-controller", &["disruption"]),
    ("garbage-collector-controller", &["garbagecollector"]),
    (
        "horizontal-pod-autoscaler-controller",
        &["horizontalpodautoscaling"],
    ),
    ("job-controller", &["job"]),
    ("namespace-controller", &["namespace"]),
    ("node-lifecycle-controller", &["nodelifecycle"]),
    ("replicaset-controller", &["replicaset"]),
    ("serviceaccount-controller", &["serviceaccount"]),
    ("statefulset-controller", &["statefulset"]),
    ("taint-eviction-controller", &[]),
    (
        "ttl-after-finished-controller",
        &["ttl-after-finished", "ttl"],
    ),
];

/// The certificate controller (approval and signing in one), which needs the CA's key.
const CSR_SIGNING: &str = "certificatesigningrequest-signing-controller";

/// Which controllers run, from a `--controllers` value: a comma-separated list of names,
/// `*` for all, `-name` to leave one out (`*,-namespace-controller`).
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    enabled: Vec<&'static str>,
}

/// A `--controllers` value that names no controller.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unknown controller {0:?} (known: {known})", known = CONTROLLERS.iter().map(|c| c.0).collect::<Vec<_>>().join(", "))]
pub struct UnknownController(pub String);

impl Default for Selection {
    fn default() -> Self {
        Selection {
            enabled: CONTROLLERS.iter().map(|c| c.0).collect(),
        }
    }
}

impl std::str::FromStr for Selection {
    type Err = UnknownController;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let canonical = |name: &str| {
            CONTROLLERS
                .iter()
                .find(|(c, aliases)| *c == name || aliases.contains(&name))
                .map(|c| c.0)
                .ok_or_else(|| UnknownController(name.to_owned()))
        };
        let mut all = false;
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.strip_prefix('-') {
                _ if item == "*" => all = true,
                Some(name) => off.push(canonical(name)?),
                None => on.push(canonical(item)?),
            }
        }
        let enabled = CONTROLLERS
            .iter()
            .map(|c| c.0)
            .filter(|c| (all || on.contains(c)) && !off.contains(c))
            .collect();
        Ok(Selection { enabled })
    }
}

impl Selection {
    /// Whether the controller named (canonically) `name` runs.
    pub fn enabled(&self, name: &str) -> bool {
        self.enabled.contains(&name)
    }
}

/// What some controllers need besides a client.
#[derive(Clone, Default)]
pub struct Options {
    /// The cluster CA, for the certificate controller (which does not run without it).
    pub signer: Option<csr::Signer>,
    /// How long a node may go without a heartbeat before it is unreachable
    /// ([`nodelifecycle::DEFAULT_GRACE`] when not given).
    pub node_monitor_grace_period: Option<std::time::Duration>,
    /// How often each HorizontalPodAutoscaler is synced ([`hpa::DEFAULT_SYNC`] when not
    /// given).
    pub hpa_sync_period: Option<std::time::Duration>,
}

/// Runs the selected controllers until `shutdown`.
pub async fn run(
    client: Client,
    selection: &Selection,
    options: Options,
    shutdown: CancellationToken,
) {
    let Options {
        signer,
        node_monitor_grace_period,
        hpa_sync_period,
    } = options;
    let mut running: Vec<BoxFuture<'static, ()>> = Vec::new();
    for name in &selection.enabled {
        let (client, shutdown) = (client.clone(), shutdown.clone());
        match *name {
            CSR_SIGNING => match signer.clone() {
                Some(signer) => running.push(Box::pin(csr::run(client, signer, shutdown))),
                None => {
                    warn!("{CSR_SIGNING} needs the cluster CA's certificate and key; not started");
                    continue;
                }
            },
            "cronjob-controller" => running.push(Box::pin(cronjob::run(client, shutdown))),
            "daemonset-controller" => running.push(Box::pin(daemonset::run(client, shutdown))),
            "disruption-controller" => running.push(Box::pin(disruption::run(client, shutdown))),
            "deployment-controller" => running.push(Box::pin(deployment::run(client, shutdown))),
            "garbage-collector-controller" => running.push(Box::pin(gc::run(client, shutdown))),
            "horizontal-pod-autoscaler-controller" => {
                let sync = hpa_sync_period.unwrap_or(hpa::DEFAULT_SYNC);
                running.push(Box::pin(hpa::run(client, sync, shutdown)))
            }
            "job-controller" => running.push(Box::pin(job::run(client, shutdown))),
            "node-lifecycle-controller" => {
                let grace = node_monitor_grace_period.unwrap_or(nodelifecycle::DEFAULT_GRACE);
                running.push(Box::pin(nodelifecycle::run(client, grace, shutdown)))
            }
            "namespace-controller" => running.push(Box::pin(namespace::run(client, shutdown))),
            "replicaset-controller" => running.push(Box::pin(replicaset::run(client, shutdown))),
            "serviceaccount-controller" => {
                running.push(Box::pin(serviceaccount::run(client, shutdown)))
            }
            "statefulset-controller" => running.push(Box::pin(statefulset::run(client, shutdown))),
            "taint-eviction-controller" => {
                running.push(Box::pin(nodelifecycle::run_evictions(client, shutdown)))
            }
            "ttl-after-finished-controller" => {
                running.push(Box::pin(job::run_ttl(client, shutdown)))
            }
            other => unreachable!("{other} is in CONTROLLERS but has no runner"),
        }
        info!(controller = name, "started");
    }
    futures::future::join_all(running).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_are_selected_as_kube_controller_manager_selects_them() {
        let all: Selection = "*".parse().unwrap();
        assert_eq!(all, Selection::default());
        let but: Selection = "*,-namespace".parse().unwrap();
        assert!(!but.enabled("namespace-controller"));
        assert!(but.enabled("serviceaccount-controller"));
        let only: Selection = "serviceaccount-controller".parse().unwrap();
        assert_eq!(only.enabled, vec!["serviceaccount-controller"]);
        assert_eq!(
            "*,-nope".parse::<Selection>(),
            Err(UnknownController("nope".into()))
        );
    }
}
