//! Server-side Tables (`meta.k8s.io/v1` Table): what `kubectl get` prints.
//!
//! Columns and cell logic follow Kubernetes' printers (`pkg/printers/internalversion`):
//! every row carries all cells, wide (priority 1) ones included, and kubectl hides those
//! unless asked for `-o wide`. Resources without a printer get `Name` and `Created At`;
//! custom resources get their CRD's `additionalPrinterColumns` and `Age`.

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use crate::labels::format_label_selector;
use crate::resources::ResourceDef;
use crate::time::{age, parse_time};

/// What each row carries besides its cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    /// Nothing.
    None,
    /// A PartialObjectMetadata (the default; kubectl needs it for `-A`, `--show-labels`).
    Metadata,
    /// The whole object (kubectl asks for it with `--sort-by`).
    Object,
}

struct Column {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    priority: u8,
    description: &'static str,
}

const fn col(
    name: &'static str,
    ty: &'static str,
    priority: u8,
    description: &'static str,
) -> Column {
    Column {
        name,
        ty,
        format: "",
        priority,
        description,
    }
}

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
};
const AGE: Column = col(
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);
const CONTAINERS: Column = col(
    "Containers",
    "string",
    1,
    "Names of each container in the template.",
);
const IMAGES: Column = col(
    "Images",
    "string",
    1,
    "Images referenced by each container in the template.",
);
const SELECTOR: Column = col("Selector", "string", 1, "Label selector for the resource.");

fn s(v: Option<&Value>) -> &str {
    v.and_then(Value::as_str).unwrap_or_default()
}

fn i(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(text: &str) -> Value {
    if text.is_empty() {
        "<none>".into()
    } else {
        text.into()
    }
}

/// A printer: the columns and how to make one row's cells.
type Cells = fn(&Value, Timestamp) -> Vec<Value>;

fn printer(def: &ResourceDef) -> Option<(Vec<Column>, Cells)> {
    let p: (Vec<Column>, Cells) = match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods") => (
            vec![
                NAME,
                col(
                    "Ready",
                    "string",
                    0,
                    "The aggregate readiness state of this pod for accepting traffic.",
                ),
                col(
                    "Status",
                    "string",
                    0,
                    "The aggregate status of the containers in this pod.",
                ),
                col(
                    "Restarts",
                    "string",
                    0,
                    "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
                ),
                AGE,
                col(
                    "IP",
                    "string",
                    1,
                    "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
                ),
                col(
                    "Node",
                    "string",
                    1,
                    "NodeName is a request to schedule this pod onto a specific node.",
                ),
                col(
                    "Nominated Node",
                    "string",
                    1,
                    "nominatedNodeName is set when this pod preempts other pods on the node.",
                ),
                col(
                    "Readiness Gates",
                    "string",
                    1,
                    "If specified, all readiness gates will be evaluated for pod readiness.",
                ),
            ],
            pod_cells,
        ),
        ("apps", "deployments") => (
            vec![
                NAME,
                col("Ready", "string", 0, "Number of the pod with ready state"),
                col(
                    "Up-to-date",
                    "integer",
                    0,
                    "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
                ),
                col(
                    "Available",
                    "integer",
                    0,
                    "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
                ),
                AGE,
                CONTAINERS,
                IMAGES,
                SELECTOR,
            ],
            |o, now| {
                let mut cells = vec![
                    name(o),
                    format!(
                        "{}/{}",
                        i(o.pointer("/status/readyReplicas")),
                        i(o.pointer("/spec/replicas"))
                    )
                    .into(),
                    i(o.pointer("/status/updatedReplicas")).into(),
                    i(o.pointer("/status/availableReplicas")).into(),
                    age_of(o, now),
                ];
                cells.extend(template_cells(o));
                cells
            },
        ),
        ("apps", "replicasets") => (
            vec![
                NAME,
                col(
                    "Desired",
                    "integer",
                    0,
                    "Replicas is the number of desired replicas.",
                ),
                col(
                    "Current",
                    "integer",
                    0,
                    "Replicas is the most recently observed number of replicas.",
                ),
                col(
                    "Ready",
                    "integer",
                    0,
                    "The number of ready replicas for this replica set.",
                ),
                AGE,
                CONTAINERS,
                IMAGES,
                SELECTOR,
            ],
            |o, now| {
                let mut cells = vec![
                    name(o),
                    i(o.pointer("/spec/replicas")).into(),
                    i(o.pointer("/status/replicas")).into(),
                    i(o.pointer("/status/readyReplicas")).into(),
                    age_of(o, now),
                ];
                cells.extend(template_cells(o));
                cells
            },
        ),
        ("apps", "statefulsets") => (
            vec![
                NAME,
                col("Ready", "string", 0, "Number of the pod with ready state"),
                AGE,
                CONTAINERS,
                IMAGES,
            ],
            |o, now| {
                let mut cells = vec![
                    name(o),
                    format!(
                        "{}/{}",
                        i(o.pointer("/status/readyReplicas")),
                        i(o.pointer("/spec/replicas"))
                    )
                    .into(),
                    age_of(o, now),
                ];
                cells.extend(template_cells(o).into_iter().take(2));
                cells
            },
        ),
        ("apps", "daemonsets") => (
            vec![
                NAME,
                col(
                    "Desired",
                    "integer",
                    0,
                    "The total number of nodes that should be running the daemon pod.",
                ),
                col(
                    "Current",
                    "integer",
                    0,
                    "The number of nodes that are running at least 1 daemon pod.",
                ),
                col(
                    "Ready",
                    "integer",
                    0,
                    "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
                ),
                col(
                    "Up-to-date",
                    "integer",
                    0,
                    "The total number of nodes that are running updated daemon pod",
                ),
                col(
                    "Available",
                    "integer",
                    0,
                    "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
                ),
                col(
                    "Node Selector",
                    "string",
                    0,
                    "NodeSelector is a selector which must be true for the pod to fit on a node.",
                ),
                AGE,
                CONTAINERS,
                IMAGES,
                SELECTOR,
            ],
            |o, now| {
                let node_selector = o
                    .pointer("/spec/template/spec/nodeSelector")
                    .and_then(Value::as_object)
                    .map(format_labels)
                    .unwrap_or_default();
                let mut cells = vec![
                    name(o),
                    i(o.pointer("/status/desiredNumberScheduled")).into(),
                    i(o.pointer("/status/currentNumberScheduled")).into(),
                    i(o.pointer("/status/numberReady")).into(),
                    i(o.pointer("/status/updatedNumberScheduled")).into(),
                    i(o.pointer("/status/numberAvailable")).into(),
                    or_none(&node_selector),
                    age_of(o, now),
                ];
                cells.extend(template_cells(o));
                cells
            },
        ),
        ("batch", "jobs") => (
            vec![
                NAME,
                col("Status", "string", 0, "Status of the job."),
                col(
                    "Completions",
                    "string",
                    0,
                    "The desired number of successfully finished pods the job should be run with.",
                ),
                col(
                    "Duration",
                    "string",
                    0,
                    "Time required to complete the job.",
                ),
                AGE,
                CONTAINERS,
                IMAGES,
                SELECTOR,
            ],
            job_cells,
        ),
        ("batch", "cronjobs") => (
            vec![
                NAME,
                col("Schedule", "string", 0, "The schedule in Cron format."),
                col(
                    "Timezone",
                    "string",
                    0,
                    "The time zone name for the given schedule.",
                ),
                col(
                    "Suspend",
                    "boolean",
                    0,
                    "This flag tells the controller to suspend subsequent executions.",
                ),
                col(
                    "Active",
                    "integer",
                    0,
                    "A list of pointers to currently running jobs.",
                ),
                col(
                    "Last Schedule",
                    "string",
                    0,
                    "Information when was the last time the job was successfully scheduled.",
                ),
                AGE,
                CONTAINERS,
                IMAGES,
                SELECTOR,
            ],
            |o, now| {
                let last = o
                    .pointer("/status/lastScheduleTime")
                    .and_then(Value::as_str);
                let tmpl = o.pointer("/spec/jobTemplate").cloned().unwrap_or_default();
                let (containers, images) =
                    containers_and_images(tmpl.pointer("/spec/template/spec"));
                vec![
                    name(o),
                    s(o.pointer("/spec/schedule")).into(),
                    or_none(s(o.pointer("/spec/timeZone"))),
                    // The printer's printBoolPtr: a string cell, `<unset>` when absent.
                    match o.pointer("/spec/suspend").and_then(Value::as_bool) {
                        Some(true) => "True",
                        Some(false) => "False",
                        None => "<unset>",
                    }
                    .into(),
                    (o.pointer("/status/active")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len) as i64)
                        .into(),
                    last.map_or_else(|| "<none>".into(), |l| age(Some(l), now).into()),
                    age_of(o, now),
                    containers,
                    images,
                    format_label_selector(tmpl.pointer("/spec/selector")).into(),
                ]
            },
        ),
        ("", "services") => (
            vec![
                NAME,
                col("Type", "string", 0, "The type of service."),
                col("Cluster-IP", "string", 0, "The IP address of the service."),
                col(
                    "External-IP",
                    "string",
                    0,
                    "The external IP addresses of the service.",
                ),
                col("Port(s)", "string", 0, "The ports of the service."),
                AGE,
                col(
                    "Selector",
                    "string",
                    1,
                    "Route service traffic to pods with label keys and values matching this selector.",
                ),
            ],
            service_cells,
        ),
        ("", "nodes") => (
            vec![
                NAME,
                col("Status", "string", 0, "The status of the node"),
                col("Roles", "string", 0, "The roles of the node"),
                AGE,
                col(
                    "Version",
                    "string",
                    0,
                    "Kubelet Version reported by the node.",
                ),
                col(
                    "Internal-IP",
                    "string",
                    1,
                    "List of addresses reachable to the node. Queried from cloud provider, if available.",
                ),
                col(
                    "External-IP",
                    "string",
                    1,
                    "List of addresses reachable to the node. Queried from cloud provider, if available.",
                ),
                col(
                    "OS-Image",
                    "string",
                    1,
                    "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
                ),
                col(
                    "Kernel-Version",
                    "string",
                    1,
                    "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
                ),
                col(
                    "Container-Runtime",
                    "string",
                    1,
                    "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
                ),
            ],
            node_cells,
        ),
        ("", "namespaces") => (
            vec![
                NAME,
                col("Status", "string", 0, "The status of the namespace"),
                AGE,
            ],
            |o, now| {
                vec![
                    name(o),
                    s(o.pointer("/status/phase")).into(),
                    age_of(o, now),
                ]
            },
        ),
        ("", "events") | ("events.k8s.io", "events") => (
            vec![
                col(
                    "Last Seen",
                    "string",
                    0,
                    "Time when this Event was last observed.",
                ),
                col(
                    "Type",
                    "string",
                    0,
                    "Type of this event (Normal, Warning), new types could be added in the future.",
                ),
                col(
                    "Reason",
                    "string",
                    0,
                    "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
                ),
                col(
                    "Object",
                    "string",
                    0,
                    "The object that this event is about.",
                ),
                col(
                    "Subobject",
                    "string",
                    1,
                    "The subobject that this event is about.",
                ),
                col("Source", "string", 1, "The component reporting this event."),
                col(
                    "Message",
                    "string",
                    0,
                    "A human-readable description of the status of this operation.",
                ),
                col(
                    "First Seen",
                    "string",
                    1,
                    "The time at which the event was first recorded.",
                ),
                col(
                    "Count",
                    "string",
                    1,
                    "The number of times this event has occurred.",
                ),
                Column {
                    priority: 1,
                    ..NAME
                },
            ],
            event_cells,
        ),
        ("", "configmaps") => (
            vec![
                NAME,
                col(
                    "Data",
                    "integer",
                    0,
                    "Data contains the configuration data.",
                ),
                AGE,
            ],
            |o, now| {
                let n = count(o.get("data")) + count(o.get("binaryData"));
                vec![name(o), n.into(), age_of(o, now)]
            },
        ),
        ("", "resourcequotas") => (
            vec![
                NAME,
                AGE,
                col(
                    "Request",
                    "string",
                    0,
                    "Request represents a minimum amount of cpu/memory that a container may consume.",
                ),
                col(
                    "Limit",
                    "string",
                    0,
                    "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
                ),
            ],
            |o, now| {
                // `resource: used/hard` for each resource in status.hard, sorted; the
                // `limits.*` ones in the second column.
                let hard = o.pointer("/status/hard").and_then(Value::as_object);
                let mut resources: Vec<&String> =
                    hard.map(|h| h.keys().collect()).unwrap_or_default();
                resources.sort();
                let (mut requests, mut limits) = (Vec::new(), Vec::new());
                for r in resources {
                    let used = o
                        .pointer(&format!(
                            "/status/used/{}",
                            r.replace('~', "~0").replace('/', "~1")
                        ))
                        .and_then(Value::as_str)
                        .unwrap_or("0");
                    let hard = hard
                        .and_then(|h| h.get(r))
                        .and_then(Value::as_str)
                        .unwrap_or("0");
                    let cell = format!("{r}: {used}/{hard}");
                    if r.split('.').count() > 1 && r.starts_with("limits.") {
                        limits.push(cell);
                    } else {
                        requests.push(cell);
                    }
                }
                vec![
                    name(o),
                    age_of(o, now),
                    requests.join(", ").into(),
                    limits.join(", ").into(),
                ]
            },
        ),
        ("", "secrets") => (
            vec![
                NAME,
                col("Type", "string", 0, "The type of the secret"),
                col("Data", "integer", 0, "The number of items in the secret"),
                AGE,
            ],
            |o, now| {
                let n = count(o.get("data")) + count(o.get("stringData"));
                vec![name(o), s(o.get("type")).into(), n.into(), age_of(o, now)]
            },
        ),
        ("", "serviceaccounts") => (
            vec![
                NAME,
                col(
                    "Secrets",
                    "integer",
                    0,
                    "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
                ),
                AGE,
            ],
            |o, now| {
                let n = o
                    .get("secrets")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len) as i64;
                vec![name(o), n.into(), age_of(o, now)]
            },
        ),
        ("", "endpoints") => (
            vec![
                NAME,
                col(
                    "Endpoints",
                    "string",
                    0,
                    "Endpoints is the list of endpoints comprising a service.",
                ),
                AGE,
            ],
            |o, now| vec![name(o), endpoints_text(o).into(), age_of(o, now)],
        ),
        ("", "persistentvolumeclaims") => (
            vec![
                NAME,
                col("Status", "string", 0, "The phase of the claim."),
                col(
                    "Volume",
                    "string",
                    0,
                    "The binding reference to the PersistentVolume backing this claim.",
                ),
                col(
                    "Capacity",
                    "string",
                    0,
                    "The actual resources of the underlying volume.",
                ),
                col(
                    "Access Modes",
                    "string",
                    0,
                    "The actual access modes the volume backing the PVC has.",
                ),
                col(
                    "StorageClass",
                    "string",
                    0,
                    "The name of the StorageClass required by the claim.",
                ),
                col(
                    "VolumeAttributesClass",
                    "string",
                    0,
                    "The name of the VolumeAttributesClass used by the claim.",
                ),
                AGE,
                col("VolumeMode", "string", 1, "The volume mode of the claim."),
            ],
            |o, now| {
                vec![
                    name(o),
                    s(o.pointer("/status/phase")).into(),
                    s(o.pointer("/spec/volumeName")).into(),
                    s(o.pointer("/status/capacity/storage")).into(),
                    access_modes(o.pointer("/status/accessModes")).into(),
                    or_none(s(o.pointer("/spec/storageClassName"))),
                    or_none(s(o.pointer("/spec/volumeAttributesClassName"))),
                    age_of(o, now),
                    s(o.pointer("/spec/volumeMode")).into(),
                ]
            },
        ),
        ("", "persistentvolumes") => (
            vec![
                NAME,
                col("Capacity", "string", 0, "The capacity of the volume."),
                col(
                    "Access Modes",
                    "string",
                    0,
                    "The access modes of the volume.",
                ),
                col(
                    "Reclaim Policy",
                    "string",
                    0,
                    "What happens to the volume when released from its claim.",
                ),
                col("Status", "string", 0, "The phase of the volume."),
                col("Claim", "string", 0, "The claim bound to the volume."),
                col(
                    "StorageClass",
                    "string",
                    0,
                    "The StorageClass of the volume.",
                ),
                col(
                    "VolumeAttributesClass",
                    "string",
                    0,
                    "The VolumeAttributesClass of the volume.",
                ),
                col("Reason", "string", 0, "Why the volume is in its phase."),
                AGE,
                col("VolumeMode", "string", 1, "The volume mode."),
            ],
            |o, now| {
                let claim = match (
                    s(o.pointer("/spec/claimRef/namespace")),
                    s(o.pointer("/spec/claimRef/name")),
                ) {
                    (_, "") => String::new(),
                    (ns, n) => format!("{ns}/{n}"),
                };
                vec![
                    name(o),
                    s(o.pointer("/spec/capacity/storage")).into(),
                    access_modes(o.pointer("/spec/accessModes")).into(),
                    s(o.pointer("/spec/persistentVolumeReclaimPolicy")).into(),
                    s(o.pointer("/status/phase")).into(),
                    claim.into(),
                    s(o.pointer("/spec/storageClassName")).into(),
                    or_none(s(o.pointer("/spec/volumeAttributesClassName"))),
                    s(o.pointer("/status/reason")).into(),
                    age_of(o, now),
                    s(o.pointer("/spec/volumeMode")).into(),
                ]
            },
        ),
        ("autoscaling", "horizontalpodautoscalers") => (
            vec![
                NAME,
                col(
                    "Reference",
                    "string",
                    0,
                    "Reference to the object being scaled.",
                ),
                col(
                    "Targets",
                    "string",
                    0,
                    "Current and target values of the metrics.",
                ),
                col(
                    "MinPods",
                    "string",
                    0,
                    "Lower limit for the number of pods.",
                ),
                col(
                    "MaxPods",
                    "integer",
                    0,
                    "Upper limit for the number of pods.",
                ),
                col("Replicas", "integer", 0, "Current number of replicas."),
                AGE,
            ],
            hpa_cells,
        ),
        ("certificates.k8s.io", "certificatesigningrequests") => (
            vec![
                NAME,
                AGE,
                col("SignerName", "string", 0, "The name of the signer."),
                col("Requestor", "string", 0, "The user who made the request."),
                col(
                    "RequestedDuration",
                    "string",
                    0,
                    "The validity the request asked for.",
                ),
                col("Condition", "string", 0, "The state of the request."),
            ],
            |o, now| {
                let duration = o
                    .pointer("/spec/expirationSeconds")
                    .and_then(Value::as_i64)
                    .map(crate::time::human_duration)
                    .unwrap_or_else(|| "<none>".into());
                vec![
                    name(o),
                    age_of(o, now),
                    s(o.pointer("/spec/signerName")).into(),
                    s(o.pointer("/spec/username")).into(),
                    duration.into(),
                    csr_condition(o).into(),
                ]
            },
        ),
        ("coordination.k8s.io", "leases") => (
            vec![
                NAME,
                col("Holder", "string", 0, "The holder of the lease."),
                AGE,
            ],
            |o, now| {
                vec![
                    name(o),
                    s(o.pointer("/spec/holderIdentity")).into(),
                    age_of(o, now),
                ]
            },
        ),
        ("storage.k8s.io", "storageclasses") => (
            vec![
                NAME,
                col(
                    "Provisioner",
                    "string",
                    0,
                    "The provisioner of the storage class.",
                ),
                col(
                    "ReclaimPolicy",
                    "string",
                    0,
                    "The reclaim policy of dynamically provisioned volumes.",
                ),
                col(
                    "VolumeBindingMode",
                    "string",
                    0,
                    "When volumes are bound and provisioned.",
                ),
                col(
                    "AllowVolumeExpansion",
                    "string",
                    0,
                    "Whether volumes may be expanded.",
                ),
                AGE,
            ],
            |o, now| {
                let mut n = name(o);
                let default =
                    o.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class");
                if s(default) == "true" {
                    n = format!("{} (default)", s(Some(&n))).into();
                }
                vec![
                    n,
                    s(o.get("provisioner")).into(),
                    s(o.get("reclaimPolicy")).into(),
                    s(o.get("volumeBindingMode")).into(),
                    (o.get("allowVolumeExpansion").and_then(Value::as_bool) == Some(true))
                        .to_string()
                        .into(),
                    age_of(o, now),
                ]
            },
        ),
        ("scheduling.k8s.io", "priorityclasses") => (
            vec![
                NAME,
                col("Value", "integer", 0, "The value of this priority class."),
                col(
                    "Global-Default",
                    "boolean",
                    0,
                    "Whether this priority class is the default.",
                ),
                AGE,
                col(
                    "PreemptionPolicy",
                    "string",
                    0,
                    "The preemption policy of pods with this class.",
                ),
            ],
            |o, now| {
                vec![
                    name(o),
                    i(o.get("value")).into(),
                    (o.get("globalDefault").and_then(Value::as_bool) == Some(true)).into(),
                    age_of(o, now),
                    s(o.get("preemptionPolicy")).into(),
                ]
            },
        ),
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => (
            vec![
                NAME,
                col("Role", "string", 0, "The role the binding grants."),
                AGE,
                col("Users", "string", 1, "Users in the binding."),
                col("Groups", "string", 1, "Groups in the binding."),
                col(
                    "ServiceAccounts",
                    "string",
                    1,
                    "ServiceAccounts in the binding.",
                ),
            ],
            |o, now| {
                let subjects = o
                    .get("subjects")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let of_kind = |k: &str| {
                    subjects
                        .iter()
                        .filter(|x| s(x.get("kind")) == k)
                        .map(|x| match (k, s(x.get("namespace"))) {
                            ("ServiceAccount", ns) => format!("{ns}/{}", s(x.get("name"))),
                            _ => s(x.get("name")).to_owned(),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                vec![
                    name(o),
                    format!(
                        "{}/{}",
                        s(o.pointer("/roleRef/kind")),
                        s(o.pointer("/roleRef/name"))
                    )
                    .into(),
                    age_of(o, now),
                    of_kind("User").into(),
                    of_kind("Group").into(),
                    of_kind("ServiceAccount").into(),
                ]
            },
        ),
        ("apps", "controllerrevisions") => (
            vec![
                NAME,
                col(
                    "Controller",
                    "string",
                    0,
                    "The controller that owns the revision.",
                ),
                col("Revision", "integer", 0, "The revision number."),
                AGE,
            ],
            |o, now| {
                let owner = o
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .and_then(|refs| {
                        refs.iter()
                            .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
                    })
                    .map(|r| {
                        let group = s(r.get("apiVersion")).split('/').next().unwrap_or_default();
                        format!(
                            "{}.{group}/{}",
                            s(r.get("kind")).to_ascii_lowercase(),
                            s(r.get("name"))
                        )
                    })
                    .unwrap_or_else(|| "<none>".into());
                vec![
                    name(o),
                    owner.into(),
                    i(o.get("revision")).into(),
                    age_of(o, now),
                ]
            },
        ),
        ("discovery.k8s.io", "endpointslices") => (
            vec![
                NAME,
                col(
                    "AddressType",
                    "string",
                    0,
                    "The type of address carried by this EndpointSlice.",
                ),
                col("Ports", "string", 0, "The ports exposed by the endpoints."),
                col("Endpoints", "string", 0, "The addresses of the endpoints."),
                AGE,
            ],
            |o, now| {
                let ports: Vec<String> = o
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| i(p.get("port")).to_string())
                    .collect();
                let addrs: Vec<String> = o
                    .get("endpoints")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .flat_map(|e| {
                        e.get("addresses")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect();
                vec![
                    name(o),
                    s(o.get("addressType")).into(),
                    or_none(&ports.join(",")),
                    or_none(&truncate_list(&addrs)),
                    age_of(o, now),
                ]
            },
        ),
        ("policy", "poddisruptionbudgets") => (
            vec![
                NAME,
                col(
                    "Min Available",
                    "string",
                    0,
                    "The minimum number of pods that must be available.",
                ),
                col(
                    "Max Unavailable",
                    "string",
                    0,
                    "The maximum number of pods that may be unavailable.",
                ),
                col(
                    "Allowed Disruptions",
                    "integer",
                    0,
                    "How many pods may be disrupted now.",
                ),
                AGE,
            ],
            |o, now| {
                let text = |v: Option<&Value>| match v {
                    Some(Value::String(x)) => x.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => "N/A".into(),
                };
                vec![
                    name(o),
                    text(o.pointer("/spec/minAvailable")).into(),
                    text(o.pointer("/spec/maxUnavailable")).into(),
                    i(o.pointer("/status/disruptionsAllowed")).into(),
                    age_of(o, now),
                ]
            },
        ),
        _ => return None,
    };
    Some(p)
}

/// Converts objects of a resource into a Table.
pub fn to_table(
    def: &ResourceDef,
    items: &[Value],
    now: Timestamp,
    include: IncludeObject,
    resource_version: Option<&str>,
    continue_token: Option<&str>,
) -> Value {
    let (columns, rows): (Vec<Value>, Vec<Vec<Value>>) = if !def.printer_columns.is_empty() {
        custom_columns(def, items, now)
    } else if let Some((columns, cells)) = printer(def) {
        (
            columns.iter().map(column_json).collect(),
            items.iter().map(|o| cells(o, now)).collect(),
        )
    } else if matches!(def.schema, crate::resources::SchemaSource::Custom(_)) {
        (
            vec![column_json(&NAME), column_json(&AGE)],
            items
                .iter()
                .map(|o| vec![name(o), age_of(o, now)])
                .collect(),
        )
    } else {
        let created = Column {
            name: "Created At",
            ty: "date",
            format: "",
            priority: 0,
            description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
        };
        (
            vec![column_json(&NAME), column_json(&created)],
            items
                .iter()
                .map(|o| vec![name(o), s(o.pointer("/metadata/creationTimestamp")).into()])
                .collect(),
        )
    };
    let rows: Vec<Value> = items
        .iter()
        .zip(rows)
        .map(|(o, cells)| {
            let mut row = json!({"cells": cells});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
                    });
                }
                IncludeObject::Object => row["object"] = o.clone(),
            }
            row
        })
        .collect();
    let mut meta = Map::new();
    if let Some(rv) = resource_version {
        meta.insert("resourceVersion".into(), rv.into());
    }
    if let Some(c) = continue_token {
        meta.insert("continue".into(), c.into());
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

fn column_json(c: &Column) -> Value {
    json!({"name": c.name, "type": c.ty, "format": c.format, "description": c.description, "priority": c.priority})
}

fn custom_columns(
    def: &ResourceDef,
    items: &[Value],
    now: Timestamp,
) -> (Vec<Value>, Vec<Vec<Value>>) {
    let mut columns = vec![column_json(&NAME)];
    for c in &def.printer_columns {
        columns.push(json!({"name": c.name, "type": c.type_, "format": c.format,
                            "description": c.description, "priority": c.priority}));
    }
    let has_age = def
        .printer_columns
        .iter()
        .any(|c| c.json_path == ".metadata.creationTimestamp");
    if !has_age {
        columns.push(column_json(&AGE));
    }
    let rows = items
        .iter()
        .map(|o| {
            let mut cells = vec![name(o)];
            for c in &def.printer_columns {
                let value = crate::jsonpath::find(o, &c.json_path);
                cells.push(match (c.type_.as_str(), value) {
                    (_, None) => Value::Null,
                    ("date", Some(Value::String(t))) => age(Some(&t), now).into(),
                    ("integer" | "number" | "boolean", Some(v)) => v,
                    (_, Some(Value::String(t))) => t.into(),
                    (_, Some(v)) => v.to_string().into(),
                });
            }
            if !has_age {
                cells.push(age_of(o, now));
            }
            cells
        })
        .collect();
    (columns, rows)
}

fn name(o: &Value) -> Value {
    s(o.pointer("/metadata/name")).into()
}

fn age_of(o: &Value, now: Timestamp) -> Value {
    age(
        o.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str),
        now,
    )
    .into()
}

/// A CSR's state as kubectl prints it: its True conditions joined (`Approved,Issued` once
/// it has a certificate), or `Pending`.
fn csr_condition(o: &Value) -> String {
    let mut states: Vec<&str> = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c["status"] == "True")
        .filter_map(|c| c["type"].as_str())
        .collect();
    if states.is_empty() {
        states.push("Pending");
    }
    let issued = o
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty());
    if issued {
        states.push("Issued");
    }
    states.join(",")
}

fn count(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_object).map_or(0, |m| m.len() as i64)
}

fn format_labels(map: &Map<String, Value>) -> String {
    let mut parts: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    parts.sort();
    parts.join(",")
}

fn containers_and_images(spec: Option<&Value>) -> (Value, Value) {
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| s(c.get("name"))).collect();
    let images: Vec<&str> = containers.iter().map(|c| s(c.get("image"))).collect();
    (names.join(",").into(), images.join(",").into())
}

/// Containers, Images and Selector of a workload with `spec.template` and `spec.selector`.
fn template_cells(o: &Value) -> Vec<Value> {
    let (containers, images) = containers_and_images(o.pointer("/spec/template/spec"));
    vec![
        containers,
        images,
        format_label_selector(o.pointer("/spec/selector")).into(),
    ]
}

fn access_modes(v: Option<&Value>) -> String {
    let modes: Vec<&str> = v
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect();
    modes.join(",")
}

fn truncate_list(items: &[String]) -> String {
    if items.len() > 3 {
        format!("{} + {} more...", items[..3].join(","), items.len() - 3)
    } else {
        items.join(",")
    }
}

fn pod_cells(o: &Value, now: Timestamp) -> Vec<Value> {
    let spec = o.get("spec").cloned().unwrap_or_default();
    let status = o.get("status").cloned().unwrap_or_default();
    let init_specs = spec
        .get("initContainers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let restartable_init = init_specs
        .iter()
        .filter(|c| s(c.get("restartPolicy")) == "Always")
        .count();
    let total = spec
        .get("containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
        + restartable_init;
    let mut restarts = 0i64;
    let mut ready = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut note_restart = |c: &Value, restarts: &mut i64| {
        *restarts += i(c.get("restartCount"));
        if let Some(t) = c
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            .and_then(parse_time)
            && last_restart.is_none_or(|l| t > l)
        {
            last_restart = Some(t);
        }
    };
    let mut reason = s(status.get("phase")).to_owned();
    if let Some(r) = status
        .get("reason")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        reason = r.to_owned();
    }
    let init_statuses = status
        .get("initContainerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut initializing = false;
    for (idx, c) in init_statuses.iter().enumerate() {
        note_restart(c, &mut restarts);
        let terminated = c.pointer("/state/terminated");
        let waiting = c.pointer("/state/waiting");
        let restartable = init_specs
            .iter()
            .find(|sp| s(sp.get("name")) == s(c.get("name")))
            .is_some_and(|sp| s(sp.get("restartPolicy")) == "Always");
        if terminated.is_some_and(|t| i(t.get("exitCode")) == 0) {
            continue;
        }
        if restartable && c.get("started").and_then(Value::as_bool) == Some(true) {
            if c.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        initializing = true;
        reason = if let Some(t) = terminated {
            match t
                .get("reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                Some(r) => format!("Init:{r}"),
                None if i(t.get("signal")) != 0 => format!("Init:Signal:{}", i(t.get("signal"))),
                None => format!("Init:ExitCode:{}", i(t.get("exitCode"))),
            }
        } else if let Some(r) = waiting
            .and_then(|w| w.get("reason"))
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            format!("Init:{r}")
        } else {
            format!("Init:{idx}/{}", init_specs.len())
        };
        break;
    }
    let initialized_condition = status
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| s(c.get("type")) == "Initialized" && s(c.get("status")) == "True");
    if !initializing || initialized_condition {
        restarts = 0;
        for c in &init_statuses {
            restarts += i(c.get("restartCount"));
        }
        let mut has_running = false;
        let statuses = status
            .get("containerStatuses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in statuses.iter().rev() {
            note_restart(c, &mut restarts);
            let waiting_reason = c
                .pointer("/state/waiting/reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty());
            let terminated = c.pointer("/state/terminated");
            if let Some(r) = waiting_reason {
                reason = r.to_owned();
            } else if let Some(t) = terminated {
                reason = match t
                    .get("reason")
                    .and_then(Value::as_str)
                    .filter(|r| !r.is_empty())
                {
                    Some(r) => r.to_owned(),
                    None if i(t.get("signal")) != 0 => format!("Signal:{}", i(t.get("signal"))),
                    None => format!("ExitCode:{}", i(t.get("exitCode"))),
                };
            } else if c.get("ready").and_then(Value::as_bool) == Some(true)
                && c.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = status
                .get("conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| s(c.get("type")) == "Ready" && s(c.get("status")) == "True");
            reason = if pod_ready {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    let terminal = matches!(s(status.get("phase")), "Succeeded" | "Failed");
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        if s(status.get("reason")) == "NodeLost" {
            reason = "Unknown".into();
        } else if !terminal {
            reason = "Terminating".into();
        }
    }
    let restarts_text = match last_restart {
        Some(t) if restarts != 0 => format!(
            "{restarts} ({} ago)",
            crate::time::human_duration(now.as_second() - t.as_second())
        ),
        _ => restarts.to_string(),
    };
    let ip = status
        .pointer("/podIPs/0/ip")
        .or_else(|| status.get("podIP"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let gates = spec
        .get("readinessGates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let gates_text = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let conditions = status
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let met = gates
            .iter()
            .filter(|g| {
                conditions.iter().any(|c| {
                    s(c.get("type")) == s(g.get("conditionType")) && s(c.get("status")) == "True"
                })
            })
            .count();
        format!("{met}/{}", gates.len())
    };
    vec![
        name(o),
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts_text.into(),
        age_of(o, now),
        or_none(ip),
        or_none(s(spec.get("nodeName"))),
        or_none(s(status.get("nominatedNodeName"))),
        gates_text.into(),
    ]
}

fn job_cells(o: &Value, now: Timestamp) -> Vec<Value> {
    let succeeded = i(o.pointer("/status/succeeded"));
    let completions = o.pointer("/spec/completions").and_then(Value::as_i64);
    let parallelism = i(o.pointer("/spec/parallelism"));
    let completions_text = match completions {
        Some(c) => format!("{succeeded}/{c}"),
        None if parallelism > 1 => format!("{succeeded}/1 of {parallelism}"),
        None => format!("{succeeded}/1"),
    };
    let conditions = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has = |t: &str| {
        conditions
            .iter()
            .any(|c| s(c.get("type")) == t && s(c.get("status")) == "True")
    };
    let status = if has("Failed") {
        "Failed"
    } else if has("Complete") {
        "Complete"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if o.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else {
        "Running"
    };
    let start = o
        .pointer("/status/startTime")
        .and_then(Value::as_str)
        .and_then(parse_time);
    let end = o
        .pointer("/status/completionTime")
        .and_then(Value::as_str)
        .and_then(parse_time);
    let duration = match (start, end) {
        (Some(s), Some(e)) => crate::time::human_duration(e.as_second() - s.as_second()),
        (Some(s), None) => crate::time::human_duration(now.as_second() - s.as_second()),
        _ => String::new(),
    };
    let mut cells = vec![
        name(o),
        status.into(),
        completions_text.into(),
        duration.into(),
        age_of(o, now),
    ];
    cells.extend(template_cells(o));
    cells
}

fn service_cells(o: &Value, now: Timestamp) -> Vec<Value> {
    let kind = s(o.pointer("/spec/type"));
    let kind = if kind.is_empty() { "ClusterIP" } else { kind };
    let cluster_ip = o
        .pointer("/spec/clusterIPs/0")
        .or_else(|| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let external: Vec<String> = o
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let external_text = match kind {
        "ExternalName" => s(o.pointer("/spec/externalName")).to_owned(),
        "LoadBalancer" => {
            let mut ingress: Vec<String> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    i.get("ip")
                        .or_else(|| i.get("hostname"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .collect();
            ingress.extend(external.iter().cloned());
            if ingress.is_empty() {
                "<pending>".into()
            } else {
                ingress.join(",")
            }
        }
        _ if !external.is_empty() => external.join(","),
        _ => "<none>".into(),
    };
    let ports: Vec<String> = o
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = s(p.get("protocol"));
            let proto = if proto.is_empty() { "TCP" } else { proto };
            match i(p.get("nodePort")) {
                0 => format!("{}/{proto}", i(p.get("port"))),
                np => format!("{}:{np}/{proto}", i(p.get("port"))),
            }
        })
        .collect();
    let selector = o
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(format_labels)
        .unwrap_or_default();
    vec![
        name(o),
        kind.into(),
        or_none(cluster_ip),
        external_text.into(),
        or_none(&ports.join(",")),
        age_of(o, now),
        or_none(&selector),
    ]
}

fn node_cells(o: &Value, now: Timestamp) -> Vec<Value> {
    let conditions = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut status = match conditions
        .iter()
        .find(|c| s(c.get("type")) == "Ready")
        .map(|c| s(c.get("status")))
    {
        Some("True") => "Ready".to_owned(),
        // False or Unknown: kubectl's printer says NotReady for both.
        Some(_) => "NotReady".to_owned(),
        None => "Unknown".to_owned(),
    };
    if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                (!role.is_empty()).then(|| role.to_owned())
            } else if k == "kubernetes.io/role" {
                v.as_str().filter(|v| !v.is_empty()).map(str::to_owned)
            } else {
                None
            }
        })
        .collect();
    roles.sort();
    roles.dedup();
    let address = |t: &str| {
        o.pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| s(a.get("type")) == t)
            .map(|a| s(a.get("address")).to_owned())
            .unwrap_or_default()
    };
    let runtime = s(o.pointer("/status/nodeInfo/containerRuntimeVersion"));
    vec![
        name(o),
        status.into(),
        or_none(&roles.join(",")),
        age_of(o, now),
        s(o.pointer("/status/nodeInfo/kubeletVersion")).into(),
        or_none(&address("InternalIP")),
        or_none(&address("ExternalIP")),
        or_none(s(o.pointer("/status/nodeInfo/osImage"))),
        or_none(s(o.pointer("/status/nodeInfo/kernelVersion"))),
        if runtime.is_empty() {
            "<unknown>".into()
        } else {
            runtime.into()
        },
    ]
}

fn event_cells(o: &Value, now: Timestamp) -> Vec<Value> {
    // Both core/v1 and events.k8s.io/v1 shapes.
    let regarding = o
        .get("involvedObject")
        .or_else(|| o.get("regarding"))
        .cloned()
        .unwrap_or_default();
    let first = o
        .get("firstTimestamp")
        .or_else(|| o.get("deprecatedFirstTimestamp"))
        .or_else(|| o.get("eventTime"))
        .and_then(Value::as_str);
    let last = o
        .pointer("/series/lastObservedTime")
        .or_else(|| o.get("lastTimestamp"))
        .or_else(|| o.get("deprecatedLastTimestamp"))
        .or_else(|| o.get("eventTime"))
        .and_then(Value::as_str)
        .or(first);
    let since = |t: Option<&str>| t.map_or_else(|| "<unknown>".to_owned(), |t| age(Some(t), now));
    let source = o.get("source").or_else(|| o.get("deprecatedSource"));
    let component = s(source.and_then(|x| x.get("component")));
    let source_text = match (component, s(source.and_then(|x| x.get("host")))) {
        ("", _) => s(o
            .get("reportingController")
            .or_else(|| o.get("reportingComponent")))
        .to_owned(),
        (c, "") => c.to_owned(),
        (c, h) => format!("{c}, {h}"),
    };
    let count = o
        .get("count")
        .or_else(|| o.get("deprecatedCount"))
        .or_else(|| o.pointer("/series/count"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    vec![
        since(last).into(),
        s(o.get("type")).into(),
        s(o.get("reason")).into(),
        format!(
            "{}/{}",
            s(regarding.get("kind")).to_ascii_lowercase(),
            s(regarding.get("name"))
        )
        .into(),
        s(regarding.get("fieldPath")).into(),
        source_text.into(),
        s(o.get("message").or_else(|| o.get("note"))).trim().into(),
        since(first).into(),
        count.to_string().into(),
        name(o),
    ]
}

fn endpoints_text(o: &Value) -> String {
    let mut out = Vec::new();
    for subset in o
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<i64> = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| i(p.get("port")))
            .collect();
        for addr in subset
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ip = s(addr.get("ip"));
            if ports.is_empty() {
                out.push(ip.to_owned());
            }
            for p in &ports {
                out.push(format!("{ip}:{p}"));
            }
        }
    }
    if out.is_empty() {
        "<none>".into()
    } else {
        truncate_list(&out)
    }
}

fn hpa_cells(o: &Value, now: Timestamp) -> Vec<Value> {
    // autoscaling/v1 objects print like their v2 form, as the server's printer sees them.
    let converted;
    let o = if o.get("apiVersion").and_then(Value::as_str) == Some("autoscaling/v1") {
        converted = crate::convert::hpa_v1_to_v2(o.clone());
        &converted
    } else {
        o
    };
    let reference = format!(
        "{}/{}",
        s(o.pointer("/spec/scaleTargetRef/kind")),
        s(o.pointer("/spec/scaleTargetRef/name"))
    );
    let current = o
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let targets: Vec<String> = o
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(idx, m)| {
            let kind = s(m.get("type"));
            let field = match kind {
                "Resource" => "resource",
                "ContainerResource" => "containerResource",
                "Pods" => "pods",
                "Object" => "object",
                "External" => "external",
                _ => "",
            };
            let target = m
                .pointer(&format!("/{field}/target"))
                .cloned()
                .unwrap_or_default();
            let cur = current
                .get(idx)
                .and_then(|c| c.pointer(&format!("/{field}/current")))
                .cloned();
            let (want, have) = if let Some(u) =
                target.get("averageUtilization").and_then(Value::as_i64)
            {
                let have = cur
                    .as_ref()
                    .and_then(|c| c.get("averageUtilization"))
                    .and_then(Value::as_i64)
                    .map_or("<unknown>".to_owned(), |v| format!("{v}%"));
                (format!("{u}%"), have)
            } else {
                let want = s(target.get("averageValue").or_else(|| target.get("value"))).to_owned();
                let have = cur
                    .as_ref()
                    .and_then(|c| c.get("averageValue").or_else(|| c.get("value")))
                    .and_then(Value::as_str)
                    .unwrap_or("<unknown>")
                    .to_owned();
                (want, have)
            };
            let prefix = match kind {
                "Resource" | "ContainerResource" => {
                    format!("{}: ", s(m.pointer(&format!("/{field}/name"))))
                }
                _ => String::new(),
            };
            format!("{prefix}{have}/{want}")
        })
        .collect();
    let min = o
        .pointer("/spec/minReplicas")
        .and_then(Value::as_i64)
        .map_or("<unset>".to_owned(), |m| m.to_string());
    vec![
        name(o),
        reference.into(),
        or_none(&targets.join(", ")),
        min.into(),
        i(o.pointer("/spec/maxReplicas")).into(),
        i(o.pointer("/status/currentReplicas")).into(),
        age_of(o, now),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn table(plural: &str, group: &str, items: Vec<Value>) -> Value {
        let reg = Registry::builtin();
        let def = reg
            .resources()
            .iter()
            .find(|r| r.plural == plural && r.group == group)
            .unwrap();
        let now: Timestamp = "2026-11-22T10:05:00Z".parse().unwrap();
        to_table(def, &items, now, IncludeObject::Metadata, Some("7"), None)
    }

    #[test]
    fn running_pod_row_matches_kubectl() {
        let pod = json!({"metadata": {"name": "web-pod", "namespace": "acc", "creationTimestamp": "2026-11-22T10:00:00Z"},
            "spec": {"containers": [{"name": "nginx"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.244.0.13",
                "containerStatuses": [{"name": "nginx", "ready": true, "restartCount": 0, "state": {"running": {}}}]}});
        let t = table("pods", "", vec![pod]);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "web-pod",
                "1/1",
                "Running",
                "0",
                "5m",
                "10.244.0.13",
                "n1",
                "<none>",
                "<none>"
            ])
        );
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "acc");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
    }

    #[test]
    fn pending_and_terminating_pods() {
        let pending = json!({"metadata": {"name": "p", "creationTimestamp": "2026-11-22T10:04:50Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "status": {"phase": "Pending"}});
        let t = table("pods", "", vec![pending.clone()]);
        assert_eq!(t["rows"][0]["cells"][1], "0/2");
        assert_eq!(t["rows"][0]["cells"][2], "Pending");
        assert_eq!(t["rows"][0]["cells"][4], "10s");
        let mut term = pending;
        term["metadata"]["deletionTimestamp"] = json!("2026-11-22T10:05:00Z");
        assert_eq!(
            table("pods", "", vec![term])["rows"][0]["cells"][2],
            "Terminating"
        );
        let crash = json!({"metadata": {"name": "c"}, "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "a", "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"finishedAt": "2026-11-22T10:04:00Z"}}}]}});
        let cells = &table("pods", "", vec![crash])["rows"][0]["cells"];
        assert_eq!(
            (cells[2].as_str(), cells[3].as_str()),
            (Some("CrashLoopBackOff"), Some("3 (60s ago)"))
        );
    }

    #[test]
    fn deployments_services_nodes() {
        let d = json!({"metadata": {"name": "web", "creationTimestamp": "2026-11-22T10:00:00Z"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 2, "availableReplicas": 2}});
        assert_eq!(
            table("deployments", "apps", vec![d])["rows"][0]["cells"],
            json!(["web", "2/2", 2, 2, "5m", "nginx", "nginx:1.25", "app=web"])
        );
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.5",
            "ports": [{"port": 80, "nodePort": 32600, "protocol": "TCP"}], "selector": {"app": "nginx"}}});
        let cells = &table("services", "", vec![svc])["rows"][0]["cells"];
        assert_eq!(cells[4], "80:32600/TCP");
        assert_eq!(cells[6], "app=nginx");
        let node = json!({"metadata": {"name": "n", "labels": {"node-role.kubernetes.io/worker": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.32.4"}}});
        let cells = &table("nodes", "", vec![node])["rows"][0]["cells"];
        assert_eq!(
            (cells[1].as_str(), cells[2].as_str(), cells[4].as_str()),
            (
                Some("Ready,SchedulingDisabled"),
                Some("worker"),
                Some("v1.32.4")
            )
        );
    }

    #[test]
    fn unknown_kinds_get_name_and_created_at() {
        let role = json!({"metadata": {"name": "r", "creationTimestamp": "2026-11-22T10:00:00Z"}});
        let t = table("roles", "rbac.authorization.k8s.io", vec![role]);
        assert_eq!(t["columnDefinitions"][1]["name"], "Created At");
        assert_eq!(t["rows"][0]["cells"], json!(["r", "2026-11-22T10:00:00Z"]));
    }
}
