//! Validation: the rules an object must meet, reported as field errors (422 Invalid).
//!
//! [`validate`] checks metadata for every kind and the kind-specific rules of the built-in
//! resources; on update it also checks the fields Kubernetes treats as immutable. Messages
//! follow apimachinery's wording so kubectl output reads as it would against Kubernetes.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::labels::Selector;
use crate::names::{
    DNS1123_LABEL_MSG, DNS1123_SUBDOMAIN_MSG, LABEL_VALUE_MSG, is_dns1123_label,
    is_dns1123_subdomain, is_label_value, qualified_name_errors,
};
use crate::resources::ResourceDef;
use crate::status::FieldError;

/// Why a value is not a DNS-1035 label.
pub const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric \
characters or '-', start with an alphabetic character, and end with an alphanumeric character \
(e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// The most bytes all annotations of an object may take.
const ANNOTATIONS_MAX: usize = 256 * 1024;
/// The most bytes of data a ConfigMap or Secret may hold.
const DATA_MAX: usize = 1024 * 1024;

/// How a resource's names are checked.
enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    PathSegment,
}

fn name_rule(def: &ResourceDef) -> NameRule {
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "namespaces") => NameRule::Label,
        ("", "services") => NameRule::Dns1035,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

fn name_errors(rule: &NameRule, field: &str, name: &str) -> Vec<FieldError> {
    let (ok, msg) = match rule {
        NameRule::Subdomain => (is_dns1123_subdomain(name), DNS1123_SUBDOMAIN_MSG),
        NameRule::Label => (is_dns1123_label(name), DNS1123_LABEL_MSG),
        NameRule::Dns1035 => (is_dns1035_label(name), DNS1035_LABEL_MSG),
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                return vec![FieldError::invalid(
                    field,
                    name,
                    format!("may not be '{name}'"),
                )];
            }
            match ["/", "%"].iter().find(|c| name.contains(**c)) {
                Some(c) => {
                    return vec![FieldError::invalid(
                        field,
                        name,
                        format!("may not contain '{c}'"),
                    )];
                }
                None => return Vec::new(),
            }
        }
    };
    if ok {
        Vec::new()
    } else {
        vec![FieldError::invalid(field, name, msg)]
    }
}

/// An object being deleted may lose finalizers but not gain them.
fn no_new_finalizers_while_deleting(new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    if old.pointer("/metadata/deletionTimestamp").is_none() {
        return;
    }
    let list = |v: &Value| -> Vec<String> {
        v.pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = list(old);
    let mut added: Vec<String> = list(new)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    if added.is_empty() {
        return;
    }
    added.sort();
    added.dedup();
    // Go's %#v of the []string, as Kubernetes prints it.
    let shown: Vec<String> = added.iter().map(|f| format!("{f:?}")).collect();
    errs.push(FieldError::forbidden(
        "metadata.finalizers",
        format!(
            "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
            shown.join(", ")
        ),
    ));
}

/// Checks an object of the resource; `old` is the stored object on update.
pub fn validate(def: &ResourceDef, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let empty = Map::new();
    let meta = obj
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    validate_meta(def, meta, &mut errs);
    let spec = obj.get("spec");
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods") => match spec {
            Some(spec) => pod_spec(spec, "spec", &mut errs),
            None => errs.push(FieldError::required("spec.containers", "")),
        },
        ("", "services") => service(obj, &mut errs),
        ("", "nodes") => node_taints(obj, &mut errs),
        ("scheduling.k8s.io", "priorityclasses") => priority_class(obj, &mut errs),
        ("", "configmaps") => data_keys(obj, &["data", "binaryData"], &mut errs),
        ("", "secrets") => data_keys(obj, &["data", "stringData"], &mut errs),
        ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets") => {
            workload(obj, "spec", &mut errs);
            if def.plural == "deployments" {
                let strategy = obj.pointer("/spec/strategy/type").and_then(Value::as_str);
                if let Some(s) = strategy.filter(|s| !["RollingUpdate", "Recreate"].contains(s)) {
                    errs.push(FieldError::not_supported(
                        "spec.strategy.type",
                        s,
                        &["Recreate", "RollingUpdate"],
                    ));
                }
            }
        }
        ("batch", "jobs") => job(obj.get("spec"), "spec", &mut errs),
        ("batch", "cronjobs") => {
            match obj.pointer("/spec/schedule").and_then(Value::as_str) {
                None | Some("") => errs.push(FieldError::required("spec.schedule", "")),
                Some(schedule) => {
                    if let Err(e) = schedule.parse::<crate::cron::Schedule>() {
                        errs.push(FieldError::invalid(
                            "spec.schedule",
                            schedule,
                            e.to_string(),
                        ));
                    }
                }
            }
            if let Some(zone) = obj.pointer("/spec/timeZone").and_then(Value::as_str)
                && jiff::tz::TimeZone::get(zone).is_err()
            {
                errs.push(FieldError::invalid(
                    "spec.timeZone",
                    zone,
                    format!("unknown time zone {zone}"),
                ));
            }
            job(
                obj.pointer("/spec/jobTemplate/spec"),
                "spec.jobTemplate.spec",
                &mut errs,
            );
        }
        ("autoscaling", "horizontalpodautoscalers") => hpa(obj, &mut errs),
        ("certificates.k8s.io", "certificatesigningrequests") => {
            crate::csr::validate(obj, old, &mut errs)
        }
        _ => {}
    }
    if let Some(old) = old {
        immutable(def, obj, old, &mut errs);
    }
    errs
}

fn validate_meta(def: &ResourceDef, meta: &Map<String, Value>, errs: &mut Vec<FieldError>) {
    match meta.get("name").and_then(Value::as_str) {
        None | Some("") => errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(name) => errs.extend(name_errors(&name_rule(def), "metadata.name", name)),
    }
    if def.namespaced
        && let Some(ns) = meta.get("namespace").and_then(Value::as_str)
        && !is_dns1123_label(ns)
    {
        errs.push(FieldError::invalid(
            "metadata.namespace",
            ns,
            DNS1123_LABEL_MSG,
        ));
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            for why in qualified_name_errors(k) {
                errs.push(FieldError::invalid("metadata.labels", k.as_str(), why));
            }
            match v.as_str() {
                Some(v) if is_label_value(v) => {}
                Some(v) => errs.push(FieldError::invalid("metadata.labels", v, LABEL_VALUE_MSG)),
                None => errs.push(FieldError::invalid(
                    "metadata.labels",
                    v.clone(),
                    "must be a string",
                )),
            }
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in annotations {
            for why in qualified_name_errors(&k.to_ascii_lowercase()) {
                errs.push(FieldError::invalid("metadata.annotations", k.as_str(), why));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > ANNOTATIONS_MAX {
            errs.push(FieldError::too_long(
                "metadata.annotations",
                ANNOTATIONS_MAX,
            ));
        }
    }
    for (i, f) in meta
        .get("finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("metadata.finalizers[{i}]");
        let name = f.as_str().unwrap_or_default();
        let standard = ["kubernetes", "orphan", "foregroundDeletion"].contains(&name);
        if let Some(why) = qualified_name_errors(name).into_iter().next() {
            errs.push(FieldError::invalid(field, name, why));
        } else if !standard && !name.contains('/') {
            errs.push(FieldError::invalid(
                field,
                name,
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
    for (i, owner) in meta
        .get("ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        for key in ["apiVersion", "kind", "name", "uid"] {
            if owner
                .get(key)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                errs.push(FieldError::required(
                    format!("metadata.ownerReferences[{i}].{key}"),
                    "",
                ));
            }
        }
    }
}

/// `[-._a-zA-Z][-._a-zA-Z0-9]*`: the shape of an environment variable name.
fn is_env_var_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"-._".contains(&c))
}

fn is_config_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._".contains(&c))
}

fn pod_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let volumes: HashSet<&str> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    let mut seen_volumes = HashSet::new();
    for (i, v) in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("{path}.volumes[{i}].name");
        match v.get("name").and_then(Value::as_str) {
            None | Some("") => errs.push(FieldError::required(field, "")),
            Some(n) if !is_dns1123_label(n) => {
                errs.push(FieldError::invalid(field, n, DNS1123_LABEL_MSG))
            }
            Some(n) if !seen_volumes.insert(n) => errs.push(FieldError::duplicate(field, n)),
            _ => {}
        }
    }
    let mut names = HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            container(
                c,
                &format!("{path}.{list}[{i}]"),
                &volumes,
                &mut names,
                errs,
            );
        }
    }
    check_enum(
        spec,
        "restartPolicy",
        path,
        &["Always", "OnFailure", "Never"],
        errs,
    );
    check_enum(
        spec,
        "dnsPolicy",
        path,
        &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
        errs,
    );
    if let Some(grace) = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        && grace < 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            grace,
            "must be greater than or equal to 0",
        ));
    }
    for (i, t) in spec
        .get("tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
        let field = format!("{path}.tolerations[{i}]");
        if !["Equal", "Exists"].contains(&op) {
            errs.push(FieldError::not_supported(
                format!("{field}.operator"),
                op,
                &["Equal", "Exists"],
            ));
        }
        if op == "Exists"
            && t.get("value")
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
        {
            errs.push(FieldError::invalid(
                format!("{field}.operator"),
                op,
                "value must be empty when `operator` is 'Exists'",
            ));
        }
        if let Some(effect) = t.get("effect").and_then(Value::as_str)
            && !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect)
        {
            errs.push(FieldError::not_supported(
                format!("{field}.effect"),
                effect,
                &["NoExecute", "NoSchedule", "PreferNoSchedule"],
            ));
        }
    }
}

fn container<'a>(
    c: &'a Value,
    path: &str,
    volumes: &HashSet<&str>,
    names: &mut HashSet<&'a str>,
    errs: &mut Vec<FieldError>,
) {
    match c.get("name").and_then(Value::as_str) {
        None | Some("") => errs.push(FieldError::required(format!("{path}.name"), "")),
        Some(n) if !is_dns1123_label(n) => {
            errs.push(FieldError::invalid(
                format!("{path}.name"),
                n,
                DNS1123_LABEL_MSG,
            ));
        }
        Some(n) if !names.insert(n) => errs.push(FieldError::duplicate(format!("{path}.name"), n)),
        _ => {}
    }
    if c.get("image")
        .and_then(Value::as_str)
        .is_none_or(|i| i.trim().is_empty())
    {
        errs.push(FieldError::required(format!("{path}.image"), ""));
    }
    check_enum(
        c,
        "imagePullPolicy",
        path,
        &["Always", "IfNotPresent", "Never"],
        errs,
    );
    for (i, p) in c
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("{path}.ports[{i}]");
        port_number(
            p.get("containerPort"),
            &format!("{field}.containerPort"),
            true,
            errs,
        );
        if p.get("hostPort").is_some() {
            port_number(p.get("hostPort"), &format!("{field}.hostPort"), false, errs);
        }
        check_enum(p, "protocol", &field, &["SCTP", "TCP", "UDP"], errs);
    }
    for (i, e) in c
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = e.get("name").and_then(Value::as_str).unwrap_or_default();
        let field = format!("{path}.env[{i}].name");
        if name.is_empty() {
            errs.push(FieldError::required(field, ""));
        } else if !is_env_var_name(name) {
            errs.push(FieldError::invalid(
                field,
                name,
                "a valid environment variable name must consist of alphabetic characters, \
                 digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  \
                 or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is \
                 '[-._a-zA-Z][-._a-zA-Z0-9]*')",
            ));
        }
    }
    for (i, m) in c
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("{path}.volumeMounts[{i}]");
        let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            errs.push(FieldError::required(format!("{field}.name"), ""));
        } else if !volumes.contains(name) {
            errs.push(FieldError {
                field: format!("{field}.name"),
                kind: crate::status::FieldErrorKind::Invalid(name.into()),
                detail: "volume not found".into(),
            });
        }
        if m.get("mountPath")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errs.push(FieldError::required(format!("{field}.mountPath"), ""));
        }
    }
    for (kind, q) in ["requests", "limits"].iter().flat_map(|k| {
        c.pointer(&format!("/resources/{k}"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(move |(r, q)| ((*k, r), q))
    }) {
        let field = format!("{path}.resources.{}[{}]", kind.0, kind.1);
        match q.as_str() {
            Some(s) if crate::quantity::Quantity::parse(s).is_some() => {}
            _ => errs.push(FieldError::invalid(
                field,
                q.clone(),
                "must match the regex ^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$",
            )),
        }
    }
    // Requests may not exceed limits.
    if let (Some(req), Some(lim)) = (
        c.pointer("/resources/requests").and_then(Value::as_object),
        c.pointer("/resources/limits").and_then(Value::as_object),
    ) {
        for (r, q) in req {
            let parse = |v: &Value| v.as_str().and_then(crate::quantity::Quantity::parse);
            if let (Some(rq), Some(lq)) = (parse(q), lim.get(r).and_then(parse))
                && rq > lq
            {
                errs.push(FieldError::invalid(
                    format!("{path}.resources.requests"),
                    q.clone(),
                    format!(
                        "must be less than or equal to {r} limit of {}",
                        lim[r].as_str().unwrap_or("")
                    ),
                ));
            }
        }
    }
}

fn port_number(v: Option<&Value>, field: &str, required: bool, errs: &mut Vec<FieldError>) {
    match v.and_then(Value::as_i64) {
        None if required => errs.push(FieldError::required(field, "")),
        None => {}
        Some(p) if !(1..=65535).contains(&p) => errs.push(FieldError::invalid(
            field,
            p,
            "must be between 1 and 65535, inclusive",
        )),
        _ => {}
    }
}

const TAINT_EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// A Node's taints, as kube's `validateNodeTaints`: a qualified key, a label-like value, one
/// of the three effects (the scheduler would otherwise have to guess what `Noschedule`
/// means), and each key and effect pair once.
fn node_taints(obj: &Value, errs: &mut Vec<FieldError>) {
    let mut seen = HashSet::new();
    for (i, t) in obj
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("spec.taints[{i}]");
        let key = t.get("key").and_then(Value::as_str).unwrap_or("");
        if key.is_empty() {
            errs.push(FieldError::required(format!("{field}.key"), ""));
        }
        for why in qualified_name_errors(key)
            .into_iter()
            .filter(|_| !key.is_empty())
        {
            errs.push(FieldError::invalid(format!("{field}.key"), key, why));
        }
        if let Some(v) = t.get("value").and_then(Value::as_str)
            && !is_label_value(v)
        {
            errs.push(FieldError::invalid(
                format!("{field}.value"),
                v,
                LABEL_VALUE_MSG,
            ));
        }
        match t.get("effect").and_then(Value::as_str).unwrap_or("") {
            "" => errs.push(FieldError::required(format!("{field}.effect"), "")),
            e if !TAINT_EFFECTS.contains(&e) => errs.push(FieldError::not_supported(
                format!("{field}.effect"),
                e,
                &TAINT_EFFECTS,
            )),
            e => {
                if !seen.insert((key, e)) {
                    errs.push(FieldError::duplicate(field, format!("{key}:{e}")));
                }
            }
        }
    }
}

fn check_enum(obj: &Value, key: &str, path: &str, allowed: &[&str], errs: &mut Vec<FieldError>) {
    if let Some(v) = obj.get(key).and_then(Value::as_str)
        && !allowed.contains(&v)
    {
        errs.push(FieldError::not_supported(
            format!("{path}.{key}"),
            v,
            allowed,
        ));
    }
}

/// A workload with `selector` and `template`: the selector must be set and select the
/// template's labels, and the template must be a valid pod spec.
fn workload(obj: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(spec) = obj.get("spec") else {
        errs.push(FieldError::required(path, ""));
        return;
    };
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64)
        && r < 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.replicas"),
            r,
            "must be greater than or equal to 0",
        ));
    }
    template_with_selector(spec, path, true, errs);
}

fn template_with_selector(
    spec: &Value,
    path: &str,
    selector_required: bool,
    errs: &mut Vec<FieldError>,
) {
    let selector = spec.get("selector");
    let empty = selector.is_none_or(|s| {
        s.get("matchLabels")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty)
            && s.get("matchExpressions")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
    });
    if empty {
        if selector_required {
            errs.push(FieldError::required(format!("{path}.selector"), ""));
        }
    } else if let Some(selector) = selector {
        match Selector::from_label_selector(selector) {
            Err(e) => errs.push(FieldError::invalid(
                format!("{path}.selector"),
                selector.clone(),
                e.0,
            )),
            Ok(sel) => {
                let labels = spec
                    .pointer("/template/metadata/labels")
                    .and_then(Value::as_object);
                if !sel.matches(labels) {
                    errs.push(FieldError::invalid(
                        format!("{path}.template.metadata.labels"),
                        labels.cloned().map(Value::Object).unwrap_or(Value::Null),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        }
    }
    match spec.pointer("/template/spec") {
        Some(t) => pod_spec(t, &format!("{path}.template.spec"), errs),
        None => errs.push(FieldError::required(
            format!("{path}.template.spec.containers"),
            "",
        )),
    }
}

fn job(spec: Option<&Value>, path: &str, errs: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errs.push(FieldError::required(path, ""));
        return;
    };
    // Job selectors are generated by the server unless manualSelector is set.
    template_with_selector(spec, path, false, errs);
    let restart = spec
        .pointer("/template/spec/restartPolicy")
        .and_then(Value::as_str);
    if let Some(r) = restart.filter(|r| !["OnFailure", "Never"].contains(r)) {
        errs.push(FieldError::not_supported(
            format!("{path}.template.spec.restartPolicy"),
            r,
            &["OnFailure", "Never"],
        ));
    }
    for key in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
    ] {
        if let Some(n) = spec.get(key).and_then(Value::as_i64)
            && n < 0
        {
            errs.push(FieldError::invalid(
                format!("{path}.{key}"),
                n,
                "must be greater than or equal to 0",
            ));
        }
    }
}

fn service(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or_default();
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&kind) {
        errs.push(FieldError::not_supported(
            "spec.type",
            kind,
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let ports = spec.get("ports").and_then(Value::as_array);
    if kind == "ExternalName" {
        if spec
            .get("externalName")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errs.push(FieldError::required("spec.externalName", ""));
        }
    } else if ports.is_none_or(Vec::is_empty)
        && spec.get("clusterIP").and_then(Value::as_str) != Some("None")
    {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let ports = ports.cloned().unwrap_or_default();
    let mut names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("{field}.name"), ""));
        } else if !name.is_empty() {
            if !is_dns1123_label(name) {
                errs.push(FieldError::invalid(
                    format!("{field}.name"),
                    name,
                    DNS1123_LABEL_MSG,
                ));
            } else if !names.insert(name.to_owned()) {
                errs.push(FieldError::duplicate(format!("{field}.name"), name));
            }
        }
        port_number(p.get("port"), &format!("{field}.port"), true, errs);
        check_enum(p, "protocol", &field, &["SCTP", "TCP", "UDP"], errs);
        match p.get("targetPort") {
            Some(Value::Number(n)) => port_number(
                Some(&Value::Number(n.clone())),
                &format!("{field}.targetPort"),
                true,
                errs,
            ),
            Some(Value::String(s)) if !is_port_name(s) => errs.push(FieldError::invalid(
                format!("{field}.targetPort"),
                s.as_str(),
                "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
            )),
            _ => {}
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
            if kind == "ClusterIP" && np != 0 {
                errs.push(FieldError::forbidden(
                    format!("{field}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if !(30000..=32767).contains(&np) {
                errs.push(FieldError::invalid(
                    format!("{field}.nodePort"),
                    np,
                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                ));
            }
        }
    }
    check_enum(
        &spec,
        "sessionAffinity",
        "spec",
        &["ClientIP", "None"],
        errs,
    );
}

fn is_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

fn data_keys(obj: &Value, fields: &[&str], errs: &mut Vec<FieldError>) {
    let mut total = 0;
    let mut seen = HashSet::new();
    for field in fields {
        for (k, v) in obj
            .get(*field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if !is_config_key(k) {
                errs.push(FieldError::invalid(
                    format!("{field}[{k}]"),
                    k.as_str(),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' \
                     (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation \
                     is '[-._a-zA-Z0-9]+')",
                ));
            }
            // configmaps may not repeat a key across data and binaryData.
            if field != &"stringData" && !seen.insert(k.as_str()) {
                errs.push(FieldError::invalid(
                    format!("{field}[{k}]"),
                    k.as_str(),
                    "duplicate of key present in another data field",
                ));
            }
            total += v.as_str().map_or(0, str::len);
        }
    }
    if total > DATA_MAX {
        errs.push(FieldError::too_long("data", DATA_MAX));
    }
}

fn hpa(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or_default();
    for key in ["kind", "name"] {
        if spec
            .pointer(&format!("/scaleTargetRef/{key}"))
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errs.push(FieldError::required(
                format!("spec.scaleTargetRef.{key}"),
                "",
            ));
        }
    }
    let min = spec.get("minReplicas").and_then(Value::as_i64).unwrap_or(1);
    match spec.get("maxReplicas").and_then(Value::as_i64) {
        None => errs.push(FieldError::required("spec.maxReplicas", "")),
        Some(max) if max < min => errs.push(FieldError::invalid(
            "spec.maxReplicas",
            max,
            "must be greater than or equal to `minReplicas`",
        )),
        _ => {}
    }
    if min < 1 {
        errs.push(FieldError::invalid(
            "spec.minReplicas",
            min,
            "must be greater than or equal to 1",
        ));
    }
}

/// The highest `value` of a PriorityClass that isn't one of the system's.
pub const HIGHEST_USER_DEFINABLE_PRIORITY: i64 = 1_000_000_000;

/// The system's PriorityClasses, which the server creates, and their values.
pub const SYSTEM_PRIORITY_CLASSES: [(&str, i64); 2] = [
    ("system-node-critical", 2_000_001_000),
    ("system-cluster-critical", 2_000_000_000),
];

/// `system-` names are the system's classes only; user classes stay at or below a billion.
fn priority_class(obj: &Value, errs: &mut Vec<FieldError>) {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let value = obj.get("value").and_then(Value::as_i64).unwrap_or(0);
    if name.starts_with("system-") {
        let known = SYSTEM_PRIORITY_CLASSES.iter().find(|(n, _)| *n == name);
        let why = match known {
            None => Some(format!("{name} is not a known system priority class")),
            Some((_, v)) if *v != value => {
                Some(format!("value of {name} PriorityClass must be {v}"))
            }
            Some(_) if obj["globalDefault"] == true => Some(format!(
                "globalDefault of {name} PriorityClass must be false"
            )),
            Some(_) => None,
        };
        if let Some(why) = why {
            errs.push(FieldError::forbidden(
                "metadata.name",
                format!(
                    "priority class names with 'system-' prefix are reserved for system use only. error: {why}"
                ),
            ));
        }
    } else if value > HIGHEST_USER_DEFINABLE_PRIORITY {
        errs.push(FieldError::forbidden(
            "value",
            format!(
                "maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE_PRIORITY}"
            ),
        ));
    }
    const PREEMPTION_POLICIES: [&str; 2] = ["Never", "PreemptLowerPriority"];
    if let Some(policy) = obj.get("preemptionPolicy").and_then(Value::as_str)
        && !PREEMPTION_POLICIES.contains(&policy)
    {
        errs.push(FieldError::not_supported(
            "preemptionPolicy",
            policy,
            &PREEMPTION_POLICIES,
        ));
    }
}

/// Fields that may not change after creation.
fn immutable(def: &ResourceDef, new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    no_new_finalizers_while_deleting(new, old, errs);
    let same = |ptr: &str| new.pointer(ptr) == old.pointer(ptr);
    let field_is_immutable = |ptr: &str, errs: &mut Vec<FieldError>| {
        if !same(ptr) {
            let field = ptr.trim_start_matches('/').replace('/', ".");
            errs.push(FieldError::invalid(
                field,
                new.pointer(ptr).cloned().unwrap_or(Value::Null),
                "field is immutable",
            ));
        }
    };
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods") => {
            // Only images, the active deadline, added tolerations and a shorter grace
            // period may change in a pod's spec.
            let strip = |v: &Value| {
                let mut spec = v.get("spec").cloned().unwrap_or_default();
                for list in ["containers", "initContainers"] {
                    if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                        for c in cs {
                            if let Some(c) = c.as_object_mut() {
                                c.remove("image");
                            }
                        }
                    }
                }
                if let Some(s) = spec.as_object_mut() {
                    for key in [
                        "activeDeadlineSeconds",
                        "tolerations",
                        "terminationGracePeriodSeconds",
                    ] {
                        s.remove(key);
                    }
                    // The scheduler binds through the binding subresource, which may set it.
                    s.remove("nodeName");
                }
                spec
            };
            if strip(new) != strip(old) {
                errs.push(FieldError::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`, \
                     `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, \
                     `spec.tolerations` (only additions to existing tolerations), \
                     `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was \
                     previously negative)",
                ));
            }
            let old_node = old
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !old_node.is_empty() && !same("/spec/nodeName") {
                field_is_immutable("/spec/nodeName", errs);
            }
        }
        ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets") => {
            field_is_immutable("/spec/selector", errs);
            if def.plural == "statefulsets" {
                for f in [
                    "/spec/serviceName",
                    "/spec/volumeClaimTemplates",
                    "/spec/podManagementPolicy",
                ] {
                    field_is_immutable(f, errs);
                }
            }
        }
        ("scheduling.k8s.io", "priorityclasses") => {
            // Pods already carry the old value; changing it would silently split them.
            if !same("/value") {
                errs.push(FieldError::forbidden(
                    "value",
                    "may not be changed in an update.",
                ));
            }
            field_is_immutable("/preemptionPolicy", errs);
        }
        ("batch", "jobs") => {
            field_is_immutable("/spec/selector", errs);
            field_is_immutable("/spec/completionMode", errs);
            let strip_gates = |v: &Value| {
                let mut t = v.pointer("/spec/template").cloned().unwrap_or_default();
                if let Some(spec) = t.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("schedulingGates");
                }
                t
            };
            if strip_gates(new) != strip_gates(old) {
                errs.push(FieldError::invalid(
                    "spec.template",
                    "object",
                    "field is immutable",
                ));
            }
        }
        ("", "services") => {
            let old_ip = old
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !old_ip.is_empty() {
                field_is_immutable("/spec/clusterIP", errs);
            }
        }
        ("", "configmaps" | "secrets") => {
            if old.get("immutable").and_then(Value::as_bool) == Some(true) {
                for f in ["/data", "/binaryData", "/immutable"] {
                    if !same(f) {
                        errs.push(FieldError::forbidden(
                            f.trim_start_matches('/'),
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
            }
            if def.plural == "secrets" {
                field_is_immutable("/type", errs);
            }
        }
        ("", "persistentvolumeclaims") => {
            let strip = |v: &Value| {
                let mut spec = v.get("spec").cloned().unwrap_or_default();
                if let Some(s) = spec.as_object_mut() {
                    s.remove("resources");
                    s.remove("volumeName");
                }
                spec
            };
            if strip(new) != strip(old) {
                errs.push(FieldError::forbidden(
                    "spec",
                    "spec is immutable after creation except resources.requests and \
                     volumeAttributesClassName for bound claims",
                ));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::registry::Registry;

    fn check(group: &str, plural: &str, obj: Value) -> Vec<String> {
        check_update(group, plural, obj, None)
    }

    fn check_update(group: &str, plural: &str, obj: Value, old: Option<Value>) -> Vec<String> {
        let reg = Registry::builtin();
        let def = reg
            .resources()
            .iter()
            .find(|r| r.group == group && r.plural == plural)
            .unwrap();
        validate(def, &obj, old.as_ref())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_pod_without_containers_is_invalid() {
        assert_eq!(
            check(
                "",
                "pods",
                json!({"metadata": {"name": "annotations-demo"}})
            ),
            ["spec.containers: Required value"]
        );
        let errs = check(
            "",
            "pods",
            json!({"metadata": {"name": "p"}, "spec": {"containers": [
                {"name": "a", "image": "x", "ports": [{"containerPort": 70000}]},
                {"name": "a"}]}}),
        );
        assert_eq!(
            errs,
            [
                "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
                "spec.containers[1].name: Duplicate value: \"a\"",
                "spec.containers[1].image: Required value",
            ]
        );
    }

    #[test]
    fn node_taints_need_a_known_effect_and_are_unique_by_key_and_effect() {
        let node = |taints: Value| json!({"metadata": {"name": "n"}, "spec": {"taints": taints}});
        assert_eq!(
            check(
                "",
                "nodes",
                node(json!([{"key": "gpu", "value": "true", "effect": "Noschedule"}]))
            ),
            [
                "spec.taints[0].effect: Unsupported value: \"Noschedule\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
            ]
        );
        assert_eq!(
            check(
                "",
                "nodes",
                node(json!([
                    {"key": "gpu", "effect": "NoSchedule"},
                    {"key": "gpu", "effect": "NoExecute"},
                    {"key": "gpu", "value": "x", "effect": "NoSchedule"},
                    {"value": "bad value!"}
                ]))
            ),
            [
                "spec.taints[2]: Duplicate value: \"gpu:NoSchedule\"",
                "spec.taints[3].key: Required value",
                "spec.taints[3].value: Invalid value: \"bad value!\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
                "spec.taints[3].effect: Required value",
            ]
        );
    }

    #[test]
    fn names_and_labels_follow_dns_rules() {
        let errs = check(
            "",
            "namespaces",
            json!({"metadata": {"name": "<名称空间的名字>"}}),
        );
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with(
            "metadata.name: Invalid value: \"<名称空间的名字>\": a lowercase RFC 1123 label"
        ));
        let errs = check(
            "",
            "configmaps",
            json!({"metadata": {"name": "c", "labels": {"bad key": "v"}}}),
        );
        assert!(
            errs[0].starts_with("metadata.labels: Invalid value: \"bad key\""),
            "{errs:?}"
        );
        assert_eq!(
            check("", "nodes", json!({"metadata": {"name": "10.240.79.157"}})),
            Vec::<String>::new()
        );
        assert!(
            !check(
                "",
                "services",
                json!({"metadata": {"name": "1svc"}, "spec": {"ports": [{"port": 1}]}})
            )
            .is_empty()
        );
    }

    #[test]
    fn workload_selectors_must_match_templates() {
        let errs = check(
            "apps",
            "deployments",
            json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
                   "template": {"metadata": {"labels": {"app": "b"}},
                                "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
        );
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("`selector` does not match template `labels`"));
    }

    #[test]
    fn cronjob_schedules_and_time_zones_must_parse() {
        let cronjob = |schedule: &str, zone: Value| {
            check(
                "batch",
                "cronjobs",
                json!({"metadata": {"name": "c"}, "spec": {"schedule": schedule, "timeZone": zone,
                       "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                           "containers": [{"name": "c", "image": "i"}]}}}}}}),
            )
        };
        assert!(cronjob("*/1 * * * *", json!("Europe/Berlin")).is_empty());
        assert!(cronjob("@hourly", Value::Null).is_empty());
        assert_eq!(
            cronjob("61 * * * *", json!("Mars/Olympus")),
            [
                "spec.schedule: Invalid value: \"61 * * * *\": minute 61 out of range [0, 59]",
                "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus",
            ]
        );
    }

    #[test]
    fn pod_specs_are_mostly_immutable() {
        let reg = Registry::builtin();
        let pods = reg.get("", "v1", "pods").unwrap();
        let old = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("b");
        assert!(validate(pods, &new, Some(&old)).is_empty());
        new["spec"]["containers"][0]["command"] = json!(["x"]);
        assert_eq!(validate(pods, &new, Some(&old)).len(), 1);
    }

    #[test]
    fn priority_classes_keep_system_names_and_values_for_the_system() {
        let errors = |obj: Value| check("scheduling.k8s.io", "priorityclasses", obj);
        let class = |name: &str, value: i64| json!({"metadata": {"name": name}, "value": value});
        assert!(errors(class("high", 1_000_000_000)).is_empty());
        assert!(errors(class("system-node-critical", 2_000_001_000)).is_empty());
        assert_eq!(
            errors(class("high", 1_000_000_001)),
            ["value: Forbidden: maximum allowed value of a user defined priority is 1000000000"]
        );
        assert_eq!(
            errors(class("system-mine", 5)),
            [
                "metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: system-mine is not a known system priority class"
            ]
        );
        assert_eq!(
            errors(class("system-cluster-critical", 7)),
            [
                "metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: value of system-cluster-critical PriorityClass must be 2000000000"
            ]
        );
        let changed = check_update(
            "scheduling.k8s.io",
            "priorityclasses",
            class("high", 11),
            Some(class("high", 10)),
        );
        assert_eq!(
            changed,
            ["value: Forbidden: may not be changed in an update."]
        );
    }
}
