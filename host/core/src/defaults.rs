//! Server-side defaulting: the fields the Kubernetes API server (with its default admission
//! plugins) fills in, so objects read back exactly as kubectl and controllers expect.
//!
//! Pod templates inside workloads get the same container and pod-spec defaults as pods, so
//! that a template read back from a Deployment hashes the same as the one a ReplicaSet
//! carries (kubectl's `rollout undo` depends on it). Defaults that come from admission
//! plugins (service account, priority, default tolerations) apply to pods only, as in
//! Kubernetes.

use serde_json::{Map, Value, json};

use crate::resources::ResourceDef;

/// Fills defaults into an object of the given resource, in place. Idempotent.
pub fn apply(def: &ResourceDef, object: &mut Value) {
    let Some(obj) = object.as_object_mut() else {
        return;
    };
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods") => {
            let spec = child(obj, "spec");
            pod_spec(spec);
            pod_only(spec);
        }
        ("", "services") => service(obj),
        ("", "namespaces") => {
            let spec = child(obj, "spec");
            default(spec, "finalizers", json!(["kubernetes"]));
            // Every namespace carries its name as a label, for namespace selectors; set on
            // every write, so it can't be changed or removed.
            let name = obj.get("metadata").and_then(|m| m.get("name")).cloned();
            if let Some(name @ Value::String(_)) = name {
                let meta = child(obj, "metadata");
                child(meta, "labels").insert("kubernetes.io/metadata.name".into(), name);
            }
        }
        ("", "secrets") => default(obj, "type", json!("Opaque")),
        ("", "persistentvolumeclaims") => {
            default(child(obj, "spec"), "volumeMode", json!("Filesystem"));
        }
        ("", "persistentvolumes") => {
            let spec = child(obj, "spec");
            default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            default(spec, "volumeMode", json!("Filesystem"));
        }
        ("", "endpoints") => {
            for subset in array(obj, "subsets") {
                for port in array(subset, "ports") {
                    default(port, "protocol", json!("TCP"));
                }
            }
        }
        ("apps", "deployments") => {
            let spec = child(obj, "spec");
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = child(spec, "strategy");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = child(strategy, "rollingUpdate");
                default(ru, "maxUnavailable", json!("25%"));
                default(ru, "maxSurge", json!("25%"));
            }
            template(spec);
        }
        ("apps", "replicasets") => {
            let spec = child(obj, "spec");
            default(spec, "replicas", json!(1));
            template(spec);
        }
        ("apps", "statefulsets") => {
            let spec = child(obj, "spec");
            default(spec, "replicas", json!(1));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            default(spec, "revisionHistoryLimit", json!(10));
            let strategy = child(spec, "updateStrategy");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                default(child(strategy, "rollingUpdate"), "partition", json!(0));
            }
            let retention = child(spec, "persistentVolumeClaimRetentionPolicy");
            default(retention, "whenDeleted", json!("Retain"));
            default(retention, "whenScaled", json!("Retain"));
            for claim in array(spec, "volumeClaimTemplates") {
                default(child(claim, "spec"), "volumeMode", json!("Filesystem"));
            }
            template(spec);
        }
        ("apps", "daemonsets") => {
            let spec = child(obj, "spec");
            default(spec, "revisionHistoryLimit", json!(10));
            let strategy = child(spec, "updateStrategy");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = child(strategy, "rollingUpdate");
                default(ru, "maxUnavailable", json!(1));
                default(ru, "maxSurge", json!(0));
            }
            template(spec);
        }
        ("batch", "jobs") => job_spec(child(obj, "spec")),
        ("batch", "cronjobs") => {
            let spec = child(obj, "spec");
            default(spec, "concurrencyPolicy", json!("Allow"));
            default(spec, "suspend", json!(false));
            default(spec, "successfulJobsHistoryLimit", json!(3));
            default(spec, "failedJobsHistoryLimit", json!(1));
            job_spec(child(child(spec, "jobTemplate"), "spec"));
        }
        ("autoscaling", "horizontalpodautoscalers") => {
            let spec = child(obj, "spec");
            default(spec, "minReplicas", json!(1));
            // autoscaling/v1 has no metrics list (and no default target).
            if def.version == "v1" {
                return;
            }
            let empty = spec
                .get("metrics")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
            if empty {
                spec.insert(
                    "metrics".into(),
                    json!([{"type": "Resource", "resource": {"name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80}}}]),
                );
            }
        }
        ("storage.k8s.io", "storageclasses") => {
            default(obj, "reclaimPolicy", json!("Delete"));
            default(obj, "volumeBindingMode", json!("Immediate"));
        }
        ("scheduling.k8s.io", "priorityclasses") => {
            default(obj, "preemptionPolicy", json!("PreemptLowerPriority"));
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            let spec = child(obj, "spec");
            let names = child(spec, "names");
            if let Some(kind) = names.get("kind").and_then(Value::as_str).map(str::to_owned) {
                default(names, "singular", json!(kind.to_ascii_lowercase()));
                default(names, "listKind", json!(format!("{kind}List")));
            }
            default(child(spec, "conversion"), "strategy", json!("None"));
        }
        ("discovery.k8s.io", "endpointslices") => {
            for port in array(obj, "ports") {
                default(port, "protocol", json!("TCP"));
            }
        }
        _ => {}
    }
}

fn job_spec(spec: &mut Map<String, Value>) {
    if spec.get("completions").is_none() && spec.get("parallelism").is_none() {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    default(spec, "parallelism", json!(1));
    default(spec, "backoffLimit", json!(6));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    default(spec, "manualSelector", json!(false));
    default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    template(spec);
}

/// Defaults of a `spec.template` (a PodTemplateSpec).
fn template(spec: &mut Map<String, Value>) {
    let template = child(spec, "template");
    pod_spec(child(template, "spec"));
}

/// `SetDefaults_PodSpec` and the container defaults: for pods and pod templates alike.
pub fn pod_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for container in array(spec, list) {
            container_defaults(container);
        }
    }
    for volume in array(spec, "volumes") {
        for source in ["configMap", "secret", "downwardAPI", "projected"] {
            if let Some(src) = volume.get_mut(source).and_then(Value::as_object_mut) {
                default(src, "defaultMode", json!(420));
            }
        }
        if let Some(hp) = volume.get_mut("hostPath").and_then(Value::as_object_mut) {
            default(hp, "type", json!(""));
        }
    }
}

/// Defaults only pods get (from `SetDefaults_Pod` and the default admission plugins).
fn pod_only(spec: &mut Map<String, Value>) {
    default(spec, "enableServiceLinks", json!(true));
    let sa = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    default(spec, "serviceAccountName", json!(sa));
    default(spec, "serviceAccount", json!(sa));
    default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    if spec.get("priorityClassName").is_none() {
        default(spec, "priority", json!(0));
    }
    // Requests default to limits for each container that sets limits only.
    for list in ["initContainers", "containers"] {
        for container in array(spec, list) {
            let Some(limits) = container
                .get("resources")
                .and_then(|r| r.get("limits"))
                .and_then(Value::as_object)
                .cloned()
            else {
                continue;
            };
            let requests = child(child(container, "resources"), "requests");
            for (resource, quantity) in limits {
                requests.entry(resource).or_insert(quantity);
            }
        }
    }
    // DefaultTolerationSeconds: tolerate a not-ready or unreachable node for five minutes.
    let tolerations = spec
        .entry("tolerations")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Some(list) = tolerations.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let present = list.iter().any(|t| {
                let k = t.get("key").and_then(Value::as_str);
                let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
                let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
                (k == Some(key) || (k.is_none() && op == "Exists"))
                    && (effect.is_empty() || effect == "NoExecute")
            });
            if !present {
                list.push(
                    json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                                 "tolerationSeconds": 300}),
                );
            }
        }
    }
}

fn container_defaults(c: &mut Map<String, Value>) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let policy = if image_is_latest(image) {
        "Always"
    } else {
        "IfNotPresent"
    };
    default(c, "imagePullPolicy", json!(policy));
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    for port in array(c, "ports") {
        default(port, "protocol", json!("TCP"));
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            default(p, "timeoutSeconds", json!(1));
            default(p, "periodSeconds", json!(10));
            default(p, "successThreshold", json!(1));
            default(p, "failureThreshold", json!(3));
            if let Some(get) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                default(get, "path", json!("/"));
                default(get, "scheme", json!("HTTP"));
            }
        }
    }
    for env in array(c, "env") {
        if let Some(field_ref) = env
            .get_mut("valueFrom")
            .and_then(|v| v.get_mut("fieldRef"))
            .and_then(Value::as_object_mut)
        {
            default(field_ref, "apiVersion", json!("v1"));
        }
    }
}

/// Whether an image reference means "latest" (no tag or `:latest`, and no digest).
fn image_is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

fn service(obj: &mut Map<String, Value>) {
    let spec = child(obj, "spec");
    default(spec, "type", json!("ClusterIP"));
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_owned();
    if kind != "ExternalName" {
        default(spec, "sessionAffinity", json!("None"));
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    for port in array(spec, "ports") {
        default(port, "protocol", json!("TCP"));
        if let Some(p) = port.get("port").cloned() {
            default(port, "targetPort", p);
        }
    }
    let status = child(obj, "status");
    default(status, "loadBalancer", json!({}));
}

/// The QoS class of a pod spec: BestEffort, Burstable or Guaranteed.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|l| spec.get(*l).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        let relevant = |m: Option<&Map<String, Value>>| {
            m.map(|m| {
                m.iter()
                    .filter(|(k, _)| *k == "cpu" || *k == "memory")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Map<String, Value>>()
            })
            .unwrap_or_default()
        };
        let (req, lim) = (relevant(requests), relevant(limits));
        if !req.is_empty() || !lim.is_empty() {
            any = true;
        }
        // Compared by value: `1000m` and `1` are the same request.
        let same = |a: &Value, b: &Value| {
            let q = |v: &Value| match v {
                Value::String(s) => crate::quantity::Quantity::parse(s),
                Value::Number(n) => crate::quantity::Quantity::parse(&n.to_string()),
                _ => None,
            };
            q(a).is_some() && q(a) == q(b)
        };
        if lim.len() < 2
            || req
                .iter()
                .any(|(k, v)| lim.get(k).is_none_or(|l| !same(v, l)))
        {
            guaranteed = false;
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The object at `key`, created empty if missing (or replaced if not an object).
pub(crate) fn child<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().expect("just made an object")
}

fn default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_owned(), value);
    }
}

fn array<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    map.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn defaulted(plural: &str, group: &str, mut obj: Value) -> Value {
        let reg = Registry::builtin();
        let def = reg
            .resources()
            .iter()
            .find(|r| r.plural == plural && r.group == group)
            .unwrap();
        apply(def, &mut obj);
        obj
    }

    #[test]
    fn pods_get_kubelet_visible_defaults() {
        let pod = defaulted(
            "pods",
            "",
            json!({"spec": {"containers": [{"name": "c", "image": "nginx:1.25",
                "ports": [{"containerPort": 80}], "resources": {"limits": {"cpu": "1"}}}]}}),
        );
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["containers"][0]["resources"]["requests"]["cpu"], "1");
        assert_eq!(spec["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(qos_class(spec), "Burstable");
        let again = defaulted("pods", "", pod.clone());
        assert_eq!(again, pod, "defaulting is idempotent");
    }

    #[test]
    fn templates_get_pod_spec_defaults_but_not_admission_ones() {
        let d = defaulted(
            "deployments",
            "apps",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
        );
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let tspec = &d["spec"]["template"]["spec"];
        assert_eq!(tspec["containers"][0]["imagePullPolicy"], "Always");
        assert!(tspec.get("serviceAccountName").is_none());
        assert!(tspec.get("tolerations").is_none());
    }

    #[test]
    fn services_default_types_and_target_ports() {
        let s = defaulted("services", "", json!({"spec": {"ports": [{"port": 80}]}}));
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn qos_classes() {
        assert_eq!(
            qos_class(&json!({"containers": [{"name": "a"}]})),
            "BestEffort"
        );
        let g = json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"},
                                                      "requests": {"cpu": "1", "memory": "1Gi"}}}]});
        assert_eq!(qos_class(&g), "Guaranteed");
    }
}
