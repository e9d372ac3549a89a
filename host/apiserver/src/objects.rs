//! What the server does to an object before storing it: schema normalisation, defaulting,
//! system metadata, status handling, generation, validation; and the Service IP and
//! NodePort allocator.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use serde_json::{Map, Value, json};
use skiff_core::resources::{ResourceDef, SchemaSource};
use skiff_core::status::{ApiError, FieldError};
use skiff_core::{defaults, validation};

use crate::ApiServer;

/// `fieldValidation`: what to do with fields the schema does not declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and warn (the default).
    Warn,
    /// Refuse the request.
    Strict,
}

impl FieldValidation {
    pub(crate) fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
            ))),
        }
    }
}

/// Which part of an object an update writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpdateMode {
    /// The object itself: status changes are ignored.
    Main,
    /// `/status`: only the status changes.
    Status,
    /// `namespaces/finalize`: only `spec.finalizers` changes.
    Finalize,
    /// `pods/binding`: the node name and the scheduling condition change together.
    Binding,
    /// `certificatesigningrequests/approval`: only the Approved and Denied conditions.
    Approval,
}

impl UpdateMode {
    /// The subresource managedFields name for writes in this mode.
    pub(crate) fn subresource(self) -> Option<&'static str> {
        match self {
            UpdateMode::Status => Some("status"),
            UpdateMode::Approval => Some("approval"),
            _ => None,
        }
    }
}

/// The schema root to normalise objects of a resource against.
fn schema_root(def: &ResourceDef) -> (Value, bool) {
    match &def.schema {
        SchemaSource::Builtin(b) => (
            json!({"$ref": format!("#/components/schemas/{}", b.name)}),
            false,
        ),
        SchemaSource::Custom(schema) => ((**schema).clone(), true),
    }
}

/// Whether objects of the resource track `metadata.generation`.
pub(crate) fn tracks_generation(def: &ResourceDef) -> bool {
    matches!(def.schema, SchemaSource::Custom(_))
        || matches!(
            def.group.as_str(),
            "apps" | "batch" | "autoscaling" | "policy" | "apiextensions.k8s.io"
        )
}

impl ApiServer {
    /// Normalises against the schema: drops nulls and undeclared fields (an error under
    /// Strict; a warning otherwise) and checks types. Returns warnings.
    pub(crate) fn normalize(
        &self,
        def: &ResourceDef,
        obj: &mut Value,
        validation: FieldValidation,
    ) -> Result<Vec<String>, ApiError> {
        let (root, custom) = schema_root(def);
        let found = if def.preserve_unknown_fields {
            Default::default()
        } else {
            self.schemas().normalize(&root, obj, custom)
        };
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if !found.errors.is_empty() {
            if custom {
                return Err(ApiError::invalid(
                    &def.group,
                    &def.kind,
                    &name,
                    &found.errors,
                ));
            }
            let detail = found
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {detail}",
                def.kind, def.version, def.kind
            )));
        }
        match validation {
            FieldValidation::Strict if !found.unknown.is_empty() => {
                let errors: Vec<FieldError> =
                    found.unknown.iter().map(FieldError::unknown).collect();
                Err(ApiError::invalid(&def.group, &def.kind, &name, &errors))
            }
            FieldValidation::Warn => Ok(found
                .unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect()),
            _ => Ok(Vec::new()),
        }
    }

    /// Prepares a new object for storage. `uid` and `now` are the server's.
    pub(crate) fn prepare_create(
        &self,
        def: &ResourceDef,
        obj: &mut Value,
        uid: &str,
        now: &str,
    ) -> Result<(), ApiError> {
        let map = obj.as_object_mut().expect("checked to be an object");
        let meta = child(map, "metadata");
        for system in [
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "generation",
        ] {
            meta.remove(system);
        }
        meta.insert("uid".into(), uid.into());
        meta.insert("creationTimestamp".into(), now.into());
        if tracks_generation(def) {
            meta.insert("generation".into(), 1.into());
        }
        reset_status(def, map);
        defaults::apply(def, obj);
        if def.group == "batch" && def.plural == "jobs" {
            job_selector(obj, uid);
        }
        if let ("", "pods") = (def.group.as_str(), def.plural.as_str()) {
            let qos = defaults::qos_class(obj.get("spec").unwrap_or(&Value::Null));
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        self.validate(def, obj, None)
    }

    /// Prepares an update of `old` with the client's `new` for the given part of the object.
    pub(crate) fn prepare_update(
        &self,
        def: &ResourceDef,
        new: Value,
        old: &Value,
        mode: UpdateMode,
    ) -> Result<Value, ApiError> {
        let mut result = match mode {
            UpdateMode::Main => {
                let mut result = new;
                let map = result.as_object_mut().expect("checked to be an object");
                let old_meta = old.get("metadata").and_then(Value::as_object);
                let meta = child(map, "metadata");
                for system in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "namespace",
                ] {
                    match old_meta.and_then(|m| m.get(system)) {
                        Some(v) => meta.insert(system.into(), v.clone()),
                        None => meta.remove(system),
                    };
                }
                meta.remove("resourceVersion");
                meta.remove("selfLink");
                if !meta.contains_key("managedFields")
                    && let Some(mf) = old_meta.and_then(|m| m.get("managedFields"))
                {
                    meta.insert("managedFields".into(), mf.clone());
                }
                if def.has_status() {
                    match old.get("status") {
                        Some(s) => map.insert("status".into(), s.clone()),
                        None => map.remove("status"),
                    };
                }
                if def.group == "apiextensions.k8s.io" {
                    skiff_core::crd::record_storage_version(&mut result);
                }
                result
            }
            UpdateMode::Status => {
                let mut result = old.clone();
                match new.get("status") {
                    Some(s) => result["status"] = s.clone(),
                    None => {
                        if let Some(m) = result.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                if let Some(mf) = new.pointer("/metadata/managedFields") {
                    result["metadata"]["managedFields"] = mf.clone();
                }
                if def.group == "certificates.k8s.io" {
                    // The approval decision is only written through /approval.
                    skiff_core::csr::keep_conditions(
                        &mut result,
                        old,
                        skiff_core::csr::is_decision,
                    );
                }
                result
            }
            UpdateMode::Approval => {
                let mut result = old.clone();
                result["status"]["conditions"] = new
                    .pointer("/status/conditions")
                    .cloned()
                    .unwrap_or(json!([]));
                // Everything but the decision (Failed, say) is written through /status.
                skiff_core::csr::keep_conditions(&mut result, old, |c| {
                    !skiff_core::csr::is_decision(c)
                });
                if let Some(mf) = new.pointer("/metadata/managedFields") {
                    result["metadata"]["managedFields"] = mf.clone();
                }
                result
            }
            UpdateMode::Binding => new,
            UpdateMode::Finalize => {
                let mut result = old.clone();
                let finalizers = new
                    .pointer("/spec/finalizers")
                    .cloned()
                    .unwrap_or(json!([]));
                result["spec"]["finalizers"] = finalizers;
                result
            }
        };
        defaults::apply(def, &mut result);
        if tracks_generation(def) && spec_changed(&result, old) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            result["metadata"]["generation"] = json!(generation + 1);
        }
        self.validate(def, &result, Some(old))?;
        Ok(result)
    }

    fn validate(
        &self,
        def: &ResourceDef,
        obj: &Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let mut errors = validation::validate(def, obj, old);
        if def.group == "apiextensions.k8s.io" {
            errors.extend(skiff_core::crd::validate(obj));
        }
        if let SchemaSource::Custom(schema) = &def.schema {
            errors.extend(skiff_core::cel::validate(schema, obj, old));
        }
        if old.is_some() {
            let name = |o: &Value| o.pointer("/metadata/name").cloned();
            if name(obj) != old.and_then(name) {
                errors.push(FieldError::invalid(
                    "metadata.name",
                    name(obj).unwrap_or(Value::Null),
                    "field is immutable",
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Err(ApiError::invalid(&def.group, &def.kind, name, &errors))
        }
    }
}

/// Whether anything but metadata and status differs.
fn spec_changed(new: &Value, old: &Value) -> bool {
    let strip = |v: &Value| {
        let mut m = v.as_object().cloned().unwrap_or_default();
        m.remove("metadata");
        m.remove("status");
        m
    };
    strip(new) != strip(old)
}

/// The status an object starts with: the server's, not the client's.
fn reset_status(def: &ResourceDef, obj: &mut Map<String, Value>) {
    match (def.group.as_str(), def.plural.as_str()) {
        // Agents register nodes with their status; volumes start Pending.
        ("", "nodes") => {}
        ("", "namespaces") => {
            obj.insert("status".into(), json!({"phase": "Active"}));
        }
        ("", "persistentvolumeclaims" | "persistentvolumes") => {
            obj.insert("status".into(), json!({"phase": "Pending"}));
        }
        _ if def.has_status() => {
            obj.remove("status");
        }
        _ => {}
    }
}

/// A Job's generated selector: its pods are labelled with the job's uid and name.
fn job_selector(obj: &mut Value, uid: &str) {
    let manual = obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true);
    if manual {
        return;
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let spec = obj
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .expect("defaulted jobs have a spec");
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    let template = child(spec, "template");
    let labels = child(child(template, "metadata"), "labels");
    labels.insert("batch.kubernetes.io/controller-uid".into(), uid.into());
    labels.insert("batch.kubernetes.io/job-name".into(), name.clone().into());
    labels.insert("controller-uid".into(), uid.into());
    labels.insert("job-name".into(), name.into());
}

pub(crate) fn child<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().expect("just made an object")
}

/// Hands out Service cluster IPs and NodePorts, and takes them back.
pub(crate) struct Allocator {
    /// A std Mutex: allocation is a few set operations.
    state: Mutex<AllocState>,
}

struct AllocState {
    base: u32,
    size: u32,
    cidr: String,
    ips: BTreeSet<u32>,
    next_ip: u32,
    ports: BTreeSet<u16>,
    port_range: (u16, u16),
    next_port: u16,
}

impl Allocator {
    /// An allocator over an IPv4 CIDR and an inclusive port range.
    pub(crate) fn new(cidr: &str, port_range: (u16, u16)) -> Option<Self> {
        let (addr, bits) = cidr.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let bits: u32 = bits.parse().ok().filter(|b| (8..=30).contains(b))?;
        let size = 1u32 << (32 - bits);
        let base = u32::from(addr) & !(size - 1);
        Some(Allocator {
            state: Mutex::new(AllocState {
                base,
                size,
                cidr: cidr.to_owned(),
                ips: BTreeSet::new(),
                next_ip: 2,
                ports: BTreeSet::new(),
                port_range,
                next_port: port_range.0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AllocState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first usable address, reserved for the `kubernetes` Service.
    pub(crate) fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.lock().base + 1)
    }

    /// Records the addresses and ports an existing Service holds.
    pub(crate) fn observe(&self, svc: &Value) {
        let mut state = self.lock();
        for ip in cluster_ips(svc) {
            let offset = u32::from(ip).wrapping_sub(state.base);
            if offset < state.size {
                state.ips.insert(offset);
            }
        }
        for port in node_ports(svc) {
            state.ports.insert(port);
        }
    }

    /// Releases what a Service held.
    pub(crate) fn release(&self, svc: &Value) {
        let mut state = self.lock();
        for ip in cluster_ips(svc) {
            let offset = u32::from(ip).wrapping_sub(state.base);
            state.ips.remove(&offset);
        }
        for port in node_ports(svc) {
            state.ports.remove(&port);
        }
    }

    /// Allocates what a new or changed Service needs: a cluster IP (the requested one or
    /// the next free one) and NodePorts for NodePort and LoadBalancer services. `old` is the
    /// stored Service on update, whose allocations carry over.
    pub(crate) fn allocate(&self, svc: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        let name = svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let invalid = |field: &str, value: Value, detail: String| {
            ApiError::invalid(
                "",
                "Service",
                &name,
                &[FieldError::invalid(field, value, detail)],
            )
        };
        let kind = svc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_owned();
        let mut state = self.lock();
        let mut taken_ip = None;
        let old_ips = old.map(cluster_ips).unwrap_or_default();
        if kind != "ExternalName" {
            let requested = svc
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if requested == "None" {
                svc["spec"]["clusterIPs"] = json!(["None"]);
            } else if requested.is_empty() {
                let offset = state.next_free_ip().ok_or_else(|| {
                    ApiError::internal(format!("no free IP addresses in {}", state.cidr))
                })?;
                state.ips.insert(offset);
                taken_ip = Some(offset);
                let ip = Ipv4Addr::from(state.base + offset).to_string();
                svc["spec"]["clusterIP"] = json!(ip);
                svc["spec"]["clusterIPs"] = json!([ip]);
            } else {
                let ip: Ipv4Addr = requested.parse().map_err(|_| {
                    invalid(
                        "spec.clusterIP",
                        requested.clone().into(),
                        "must be a valid IP address".into(),
                    )
                })?;
                let offset = u32::from(ip).wrapping_sub(state.base);
                if !old_ips.contains(&ip) {
                    if offset == 0 || offset >= state.size - 1 {
                        return Err(invalid(
                            "spec.clusterIPs",
                            json!([requested]),
                            format!(
                                "failed to allocate IP {requested}: provided IP is not in the valid range. The range of valid IPs is {}",
                                state.cidr
                            ),
                        ));
                    }
                    if !state.ips.insert(offset) {
                        return Err(invalid(
                            "spec.clusterIPs",
                            json!([requested]),
                            format!(
                                "failed to allocate IP {requested}: provided IP is already allocated"
                            ),
                        ));
                    }
                    taken_ip = Some(offset);
                }
                svc["spec"]["clusterIPs"] = json!([requested]);
            }
            if svc.pointer("/spec/clusterIP").and_then(Value::as_str) != Some("None") {
                svc["spec"]["ipFamilies"] = json!(["IPv4"]);
                svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
            }
        }
        let mut taken_ports = Vec::new();
        let old_ports = old.map(node_ports).unwrap_or_default();
        let wants_ports = kind == "NodePort" || kind == "LoadBalancer";
        let ports = svc
            .pointer_mut("/spec/ports")
            .and_then(Value::as_array_mut)
            .map(std::mem::take)
            .unwrap_or_default();
        let mut result_ports = Vec::with_capacity(ports.len());
        let mut failure = None;
        for (i, mut port) in ports.into_iter().enumerate() {
            if !wants_ports {
                if let Some(p) = port.as_object_mut() {
                    p.remove("nodePort");
                }
                result_ports.push(port);
                continue;
            }
            let requested = port.get("nodePort").and_then(Value::as_u64).unwrap_or(0) as u16;
            if requested == 0 {
                match state.next_free_port() {
                    Some(p) => {
                        state.ports.insert(p);
                        taken_ports.push(p);
                        port["nodePort"] = json!(p);
                    }
                    None => {
                        failure = Some(ApiError::internal("no free NodePorts"));
                        break;
                    }
                }
            } else if !old_ports.contains(&requested) {
                if !state.ports.insert(requested) {
                    failure = Some(invalid(
                        &format!("spec.ports[{i}].nodePort"),
                        json!(requested),
                        "provided port is already allocated".into(),
                    ));
                    break;
                }
                taken_ports.push(requested);
            }
            result_ports.push(port);
        }
        if let Some(ports) = svc.pointer_mut("/spec").and_then(Value::as_object_mut) {
            ports.insert("ports".into(), Value::Array(result_ports));
        }
        if let Some(err) = failure {
            if let Some(offset) = taken_ip {
                state.ips.remove(&offset);
            }
            for p in taken_ports {
                state.ports.remove(&p);
            }
            return Err(err);
        }
        // Ports the update no longer uses are free again.
        let now_ports = node_ports(svc);
        for p in old_ports.iter().filter(|p| !now_ports.contains(p)) {
            state.ports.remove(p);
        }
        Ok(())
    }
}

impl AllocState {
    fn next_free_ip(&mut self) -> Option<u32> {
        // Offsets 0 (network) and size-1 (broadcast) are never handed out; 1 is the
        // kubernetes Service's and is taken explicitly.
        for _ in 0..self.size {
            let candidate = self.next_ip;
            self.next_ip = if self.next_ip + 1 >= self.size - 1 {
                2
            } else {
                self.next_ip + 1
            };
            if !self.ips.contains(&candidate) {
                return Some(candidate);
            }
        }
        None
    }

    fn next_free_port(&mut self) -> Option<u16> {
        let (lo, hi) = self.port_range;
        for _ in lo..=hi {
            let candidate = self.next_port;
            self.next_port = if self.next_port >= hi {
                lo
            } else {
                self.next_port + 1
            };
            if !self.ports.contains(&candidate) {
                return Some(candidate);
            }
        }
        None
    }
}

fn cluster_ips(svc: &Value) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = svc
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str()?.parse().ok())
        .collect();
    if let Some(ip) = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    ips
}

fn node_ports(svc: &Value) -> Vec<u16> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort")?.as_u64())
        .map(|p| p as u16)
        .collect()
}

/// Refuses writes that would reuse a name kind: helper for the not-found shape of a
/// namespaced object (`pods "x" not found`).
pub(crate) fn not_found(def: &ResourceDef, name: &str) -> ApiError {
    ApiError::not_found(&def.group, &def.plural, name)
}

/// 403 for creating `name` in a namespace being deleted, as the NamespaceLifecycle
/// admission plugin answers: `configmaps "y" is forbidden: unable to create new content in
/// namespace term because it is being terminated`.
pub(crate) fn namespace_terminating(def: &ResourceDef, name: &str, namespace: &str) -> ApiError {
    let mut err = ApiError::forbidden(
        &def.group,
        &def.plural,
        name,
        &format!(
            "unable to create new content in namespace {namespace} because it is being terminated"
        ),
    );
    err.details.causes.push(skiff_core::status::Cause {
        reason: "NamespaceTerminating".into(),
        message: format!("namespace {namespace} is being terminated"),
        field: "metadata.namespace".into(),
    });
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_ips_and_ports_and_refuses_taken_ones() {
        let alloc = Allocator::new("10.96.0.0/12", (30000, 30002)).unwrap();
        assert_eq!(alloc.first_ip(), Ipv4Addr::new(10, 96, 0, 1));
        let mut kube = json!({"metadata": {"name": "kubernetes"}, "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 443}]}});
        alloc.allocate(&mut kube, None).unwrap();
        let mut a = json!({"metadata": {"name": "a"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        alloc.allocate(&mut a, None).unwrap();
        assert_eq!(a["spec"]["clusterIP"], "10.96.0.2");
        assert_eq!(a["spec"]["ports"][0]["nodePort"], 30000);
        let mut b = json!({"metadata": {"name": "b"}, "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}});
        let err = alloc.allocate(&mut b, None).unwrap_err();
        assert!(
            err.message.contains("provided IP is already allocated"),
            "{}",
            err.message
        );
        let mut c = json!({"metadata": {"name": "c"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30000}]}});
        let err = alloc.allocate(&mut c, None).unwrap_err();
        assert!(err.message.contains("provided port is already allocated"));
        alloc.release(&a);
        alloc.allocate(&mut c, None).unwrap();
        let mut outside = json!({"metadata": {"name": "d"}, "spec": {"clusterIP": "192.168.0.1", "ports": [{"port": 1}]}});
        assert!(
            alloc
                .allocate(&mut outside, None)
                .unwrap_err()
                .message
                .contains("not in the valid range")
        );
    }
}
