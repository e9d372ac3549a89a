//! Resources stored in another resource's form.
//!
//! `events.k8s.io/v1` Events and core `v1` Events are one set of objects, as in
//! Kubernetes: controllers record through the former, `kubectl describe` reads the latter.
//! They are stored as core Events and converted field by field on the way in and out.
//!
//! The versions of a custom resource share its objects too: they are stored in the CRD's
//! storage version and served in the version asked for, with conversion `None` (only
//! `apiVersion` changes).

use serde_json::{Map, Value};

use crate::resources::ResourceDef;

/// `(events.k8s.io field, core/v1 field)` pairs that differ only in name.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

fn is_events_v1(def: &ResourceDef) -> bool {
    def.group == "events.k8s.io" && def.plural == "events"
}

/// `autoscaling/v1` HorizontalPodAutoscalers are stored as `autoscaling/v2` ones.
fn is_hpa_v1(def: &ResourceDef) -> bool {
    def.group == "autoscaling" && def.plural == "horizontalpodautoscalers" && def.version == "v1"
}

/// The `(group, plural)` whose storage a resource shares, if not its own.
pub fn storage_of(def: &ResourceDef) -> Option<(&'static str, &'static str)> {
    is_events_v1(def).then_some(("", "events"))
}

fn rename(obj: Value, api_version: &str, kind: &str, to_core: bool) -> Value {
    let Value::Object(map) = obj else {
        return obj;
    };
    let mut out = Map::with_capacity(map.len());
    for (key, value) in map {
        let renamed = EVENT_FIELDS
            .iter()
            .find_map(|(v1, core)| {
                let (from, to) = if to_core { (v1, core) } else { (core, v1) };
                (key == *from).then(|| (*to).to_owned())
            })
            .unwrap_or(key);
        out.insert(renamed, value);
    }
    out.insert("apiVersion".into(), api_version.into());
    out.insert("kind".into(), kind.into());
    Value::Object(out)
}

/// Whether objects of `def` are stored in another form than the one it serves.
pub fn converts(def: &ResourceDef) -> bool {
    is_events_v1(def) || is_hpa_v1(def) || def.storage_version.is_some()
}

/// The stored form of an object of `def`.
pub fn to_storage(def: &ResourceDef, mut obj: Value) -> Value {
    if is_events_v1(def) {
        rename(obj, "v1", "Event", true)
    } else if is_hpa_v1(def) {
        hpa_v1_to_v2(obj)
    } else {
        if let (Some(version), Some(map)) = (&def.storage_version, obj.as_object_mut()) {
            map.insert("apiVersion".into(), version.as_str().into());
        }
        obj
    }
}

/// The API form of a stored object of `def`.
pub fn from_storage(def: &ResourceDef, mut obj: Value) -> Value {
    if is_events_v1(def) {
        rename(obj, "events.k8s.io/v1", "Event", false)
    } else if is_hpa_v1(def) {
        hpa_v2_to_v1(obj)
    } else {
        if let (Some(_), Some(map)) = (&def.storage_version, obj.as_object_mut()) {
            map.insert("apiVersion".into(), def.api_version().into());
        }
        obj
    }
}

/// Annotations that carry, on an `autoscaling/v1` HPA, what only `autoscaling/v2` can
/// express, so a v1 client's update keeps it (as Kubernetes' conversion does; the values
/// here are in v2's JSON form).
const HPA_METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const HPA_BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const HPA_CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const HPA_CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";

/// The fields both versions share, unchanged.
const HPA_SPEC_KEYS: &[&str] = &["scaleTargetRef", "minReplicas", "maxReplicas"];
const HPA_STATUS_KEYS: &[&str] = &[
    "observedGeneration",
    "lastScaleTime",
    "currentReplicas",
    "desiredReplicas",
];

fn copy_keys(from: &Value, keys: &[&str]) -> Map<String, Value> {
    keys.iter()
        .filter_map(|k| from.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect()
}

fn is_cpu(metric: &Value) -> bool {
    metric.get("type").and_then(Value::as_str) == Some("Resource")
        && metric.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
}

/// An `autoscaling/v2` HPA as `autoscaling/v1` shows it: the CPU utilisation target as
/// `targetCPUUtilizationPercentage`, everything else in annotations.
pub fn hpa_v2_to_v1(obj: Value) -> Value {
    let Value::Object(mut v2) = obj else {
        return obj;
    };
    let mut annotations = Map::new();
    let mut out = Map::new();
    out.insert("apiVersion".into(), "autoscaling/v1".into());
    out.insert("kind".into(), "HorizontalPodAutoscaler".into());
    // Filled in last (the annotations are known at the end), but first in key order.
    out.insert("metadata".into(), Value::Null);
    let mut meta = v2
        .remove("metadata")
        .unwrap_or_else(|| Value::Object(Map::new()));
    let spec = v2.remove("spec").unwrap_or_default();
    let mut v1_spec = copy_keys(&spec, HPA_SPEC_KEYS);
    let mut others = Vec::new();
    for metric in spec
        .get("metrics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let utilization = metric
            .pointer("/resource/target")
            .filter(|t| t.get("type").and_then(Value::as_str) == Some("Utilization"))
            .and_then(|t| t.get("averageUtilization"));
        match utilization {
            Some(u)
                if is_cpu(metric) && !v1_spec.contains_key("targetCPUUtilizationPercentage") =>
            {
                v1_spec.insert("targetCPUUtilizationPercentage".into(), u.clone());
            }
            _ => others.push(metric.clone()),
        }
    }
    if !others.is_empty() {
        annotations.insert(HPA_METRICS.into(), Value::Array(others).to_string().into());
    }
    if let Some(behavior) = spec.get("behavior") {
        annotations.insert(HPA_BEHAVIOR.into(), behavior.to_string().into());
    }
    out.insert("spec".into(), Value::Object(v1_spec));
    if let Some(status) = v2.remove("status") {
        let mut v1_status = copy_keys(&status, HPA_STATUS_KEYS);
        let mut others = Vec::new();
        for metric in status
            .get("currentMetrics")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match metric.pointer("/resource/current/averageUtilization") {
                Some(u)
                    if is_cpu(metric)
                        && !v1_status.contains_key("currentCPUUtilizationPercentage") =>
                {
                    v1_status.insert("currentCPUUtilizationPercentage".into(), u.clone());
                }
                _ => others.push(metric.clone()),
            }
        }
        if !others.is_empty() {
            annotations.insert(
                HPA_CURRENT_METRICS.into(),
                Value::Array(others).to_string().into(),
            );
        }
        if let Some(conditions) = status
            .get("conditions")
            .filter(|c| c.as_array().is_some_and(|a| !a.is_empty()))
        {
            annotations.insert(HPA_CONDITIONS.into(), conditions.to_string().into());
        }
        out.insert("status".into(), Value::Object(v1_status));
    }
    if !annotations.is_empty()
        && let Some(meta) = meta.as_object_mut()
    {
        let existing = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(existing) = existing.as_object_mut() {
            existing.extend(annotations);
        }
    }
    out.insert("metadata".into(), meta);
    Value::Object(out)
}

/// An `autoscaling/v1` HPA in its stored `autoscaling/v2` form.
pub fn hpa_v1_to_v2(obj: Value) -> Value {
    let Value::Object(mut v1) = obj else {
        return obj;
    };
    let mut meta = v1
        .remove("metadata")
        .unwrap_or_else(|| Value::Object(Map::new()));
    let mut take = |key: &str| -> Option<Value> {
        let annotations = meta.get_mut("annotations")?.as_object_mut()?;
        let text = annotations.remove(key)?;
        serde_json::from_str(text.as_str()?).ok()
    };
    let (metrics, behavior, current, conditions) = (
        take(HPA_METRICS),
        take(HPA_BEHAVIOR),
        take(HPA_CURRENT_METRICS),
        take(HPA_CONDITIONS),
    );
    if let Some(m) = meta.as_object_mut()
        && m.get("annotations")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
    {
        m.remove("annotations");
    }
    let mut out = Map::new();
    out.insert("apiVersion".into(), "autoscaling/v2".into());
    out.insert("kind".into(), "HorizontalPodAutoscaler".into());
    out.insert("metadata".into(), meta);
    let spec = v1.remove("spec").unwrap_or_default();
    let mut v2_spec = copy_keys(&spec, HPA_SPEC_KEYS);
    let mut all = Vec::new();
    if let Some(cpu) = spec.get("targetCPUUtilizationPercentage") {
        all.push(
            serde_json::json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": cpu}}}),
        );
    }
    if let Some(Value::Array(others)) = metrics {
        all.extend(others);
    }
    if !all.is_empty() {
        v2_spec.insert("metrics".into(), Value::Array(all));
    }
    if let Some(b) = behavior {
        v2_spec.insert("behavior".into(), b);
    }
    out.insert("spec".into(), Value::Object(v2_spec));
    if let Some(status) = v1.remove("status") {
        let mut v2_status = copy_keys(&status, HPA_STATUS_KEYS);
        let mut all = Vec::new();
        if let Some(cpu) = status.get("currentCPUUtilizationPercentage") {
            all.push(
                serde_json::json!({"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": cpu}}}),
            );
        }
        if let Some(Value::Array(others)) = current {
            all.extend(others);
        }
        if !all.is_empty() {
            v2_status.insert("currentMetrics".into(), Value::Array(all));
        }
        if let Some(c) = conditions {
            v2_status.insert("conditions".into(), c);
        }
        out.insert("status".into(), Value::Object(v2_status));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::registry::Registry;

    #[test]
    fn events_round_trip_between_versions() {
        let reg = Registry::builtin();
        let v1 = reg.get("events.k8s.io", "v1", "events").unwrap();
        let event = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "web"}, "note": "pulled", "reason": "Pulled",
            "reportingController": "skiff-agent", "eventTime": "2026-11-22T10:00:00.000000Z"});
        let core = to_storage(v1, event.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "web");
        assert_eq!(core["message"], "pulled");
        assert_eq!(core["reportingComponent"], "skiff-agent");
        assert_eq!(from_storage(v1, core), event);
        let pods = reg.get("", "v1", "pods").unwrap();
        assert_eq!(storage_of(pods), None);
        assert_eq!(storage_of(v1), Some(("", "events")));
    }

    #[test]
    fn hpas_round_trip_between_v1_and_v2() {
        let v2 = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "annotations": {"team": "a"}},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "200Mi"}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}},
            "status": {"currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 70}}}],
                "conditions": [{"type": "AbleToScale", "status": "True"}]}});
        let v1 = hpa_v2_to_v1(v2.clone());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 70);
        assert_eq!(v1["metadata"]["annotations"]["team"], "a");
        assert!(
            v1["metadata"]["annotations"][HPA_METRICS]
                .as_str()
                .unwrap()
                .contains("200Mi")
        );
        assert_eq!(hpa_v1_to_v2(v1), v2);
        // A plain v1 HPA, as `kubectl autoscale` makes it.
        let plain = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3,
                "targetCPUUtilizationPercentage": 80}});
        let stored = hpa_v1_to_v2(plain.clone());
        assert_eq!(
            stored["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert_eq!(hpa_v2_to_v1(stored), plain);
    }
}
