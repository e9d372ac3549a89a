//! The agent's Node: registered with the machine's capacity, labels, addresses and node
//! info; its conditions (Ready and the pressure conditions) from the machine; heartbeats
//! through a Lease in kube-node-lease every 10 s, as the kubelet does.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::AgentConfig;

/// How often the Lease is renewed.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The Lease's duration: the node lifecycle controller marks the node unreachable after it.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the node's status is written when nothing changed (the kubelet's
/// nodeStatusReportFrequency).
const STATUS_REPORT: Duration = Duration::from_secs(60);

/// What the machine has, read once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// CPUs.
    pub cpus: u64,
    /// Memory in bytes.
    pub memory: u64,
    /// The size of the filesystem holding the agent's data, in bytes.
    pub storage: u64,
    /// `uname -r`.
    pub kernel: String,
    /// PRETTY_NAME of /etc/os-release.
    pub os_image: String,
    /// /etc/machine-id.
    pub machine_id: String,
    /// The boot ID.
    pub boot_id: String,
}

/// The Go name of this machine's architecture (`amd64`, `arm64`).
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A `/proc/meminfo` field in bytes.
fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

impl Machine {
    /// Reads the machine's facts; `data_dir` is where images and logs live.
    pub fn read(data_dir: &std::path::Path) -> Machine {
        let storage = rustix::fs::statvfs(data_dir)
            .map(|s| s.f_blocks * s.f_frsize)
            .unwrap_or(0);
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("PRETTY_NAME=")
                        .map(|v| v.trim_matches('"').to_owned())
                })
            })
            .unwrap_or_else(|| "Linux".into());
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1),
            memory: meminfo("MemTotal").unwrap_or(0),
            storage,
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            os_image,
            machine_id: read_trim("/etc/machine-id"),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// The conditions the machine's state gives, with the kubelet's reasons and messages.
fn conditions(config: &AgentConfig, now: &str, old: &[Value]) -> Vec<Value> {
    let available = meminfo("MemAvailable").unwrap_or(u64::MAX);
    // The kubelet's default hard eviction thresholds: memory.available < 100Mi,
    // nodefs.available < 10%.
    let memory_pressure = available < 100 << 20;
    let disk_pressure = rustix::fs::statvfs(&config.data_dir)
        .map(|s| s.f_bavail * 10 < s.f_blocks)
        .unwrap_or(false);
    let pid_max: u64 = read_trim("/proc/sys/kernel/pid_max")
        .parse()
        .unwrap_or(u64::MAX);
    let pids = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count() as u64
        })
        .unwrap_or(0);
    let pid_pressure = pids * 10 > pid_max * 9;
    let table = [
        (
            "MemoryPressure",
            memory_pressure,
            "KubeletHasInsufficientMemory",
            "kubelet has insufficient memory available",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        (
            "DiskPressure",
            disk_pressure,
            "KubeletHasDiskPressure",
            "kubelet has disk pressure",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        (
            "PIDPressure",
            pid_pressure,
            "KubeletHasInsufficientPID",
            "kubelet has insufficient PID available",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        // The agent runs, so the node is Ready (the node lifecycle controller makes it
        // Unknown when the Lease stops being renewed).
        (
            "Ready",
            true,
            "KubeletReady",
            "kubelet is posting ready status",
            "KubeletNotReady",
            "kubelet is not ready",
        ),
    ];
    table
        .iter()
        .map(
            |(kind, on, on_reason, on_message, off_reason, off_message)| {
                let status = if *on { "True" } else { "False" };
                let (reason, message) = if *on {
                    (on_reason, on_message)
                } else {
                    (off_reason, off_message)
                };
                let since = old
                    .iter()
                    .find(|c| c["type"] == *kind && c["status"] == status)
                    .and_then(|c| c["lastTransitionTime"].as_str())
                    .unwrap_or(now)
                    .to_owned();
                json!({
                    "type": kind, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": now, "lastTransitionTime": since,
                })
            },
        )
        .collect()
}

/// The Node object's status.
pub fn status(config: &AgentConfig, machine: &Machine, old: &[Value]) -> Value {
    let now = jiff::Timestamp::now().to_string();
    let resources = json!({
        "cpu": machine.cpus.to_string(),
        "memory": format!("{}Ki", machine.memory / 1024),
        "ephemeral-storage": format!("{}Ki", machine.storage / 1024),
        "pods": config.max_pods.to_string(),
    });
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": conditions(config, &now, old),
        "addresses": [
            {"type": "InternalIP", "address": config.address.to_string()},
            {"type": "Hostname", "address": config.node_name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": config.port}},
        "nodeInfo": {
            "machineID": machine.machine_id,
            "systemUUID": machine.machine_id,
            "bootID": machine.boot_id,
            "kernelVersion": machine.kernel,
            "osImage": machine.os_image,
            "containerRuntimeVersion": concat!("skiff://", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": "v1.33.0",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch(),
        },
    })
}

/// Creates the Node (or takes over an existing one of the same name) and writes its status.
pub async fn register(
    client: &kube::Client,
    config: &AgentConfig,
    machine: &Machine,
) -> kube::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let name = &config.node_name;
    let mut labels = json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch(),
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": arch(),
    });
    for (k, v) in &config.node_labels {
        labels[k] = json!(v);
    }
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
    }))
    .expect("a valid Node");
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => info!(node = %name, "registered the node"),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = json!({"metadata": {"labels": labels}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            info!(node = %name, "took over the existing node");
        }
        Err(e) => return Err(e),
    }
    let status = status(config, machine, &[]);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// Renews the node's Lease every [`LEASE_RENEW`] and writes its status when a condition
/// changes (or every minute), until `shutdown`.
pub async fn heartbeat(
    client: kube::Client,
    config: AgentConfig,
    machine: Machine,
    shutdown: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let name = config.node_name.clone();
    let mut last_report = tokio::time::Instant::now();
    let mut last_conditions: Vec<(String, String)> = Vec::new();
    loop {
        let now = jiff::Timestamp::now();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            },
        });
        let renewed = match leases
            .patch(
                &name,
                &PatchParams::apply("skiff-agent").force(),
                &Patch::Apply(&lease),
            )
            .await
        {
            Ok(_) => true,
            Err(e) => {
                warn!(node = %name, error = %e, "renewing the node lease");
                false
            }
        };
        if renewed {
            let old: Vec<Value> = nodes
                .get_status(&name)
                .await
                .ok()
                .and_then(|n| n.status?.conditions)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect();
            let status = status(&config, &machine, &old);
            let summary: Vec<(String, String)> = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| (c["type"].to_string(), c["status"].to_string()))
                .collect();
            if summary != last_conditions || last_report.elapsed() >= STATUS_REPORT {
                match nodes
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": status})),
                    )
                    .await
                {
                    Ok(_) => {
                        last_conditions = summary;
                        last_report = tokio::time::Instant::now();
                    }
                    Err(e) => warn!(node = %name, error = %e, "writing the node's status"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(LEASE_RENEW) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
