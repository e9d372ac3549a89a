//! Resources stored in another resource's form.
//!
//! `events.k8s.io/v1` Events and core `v1` Events are one set of objects, as in
//! Kubernetes: controllers record through the former, `kubectl describe` reads the latter.
//! They are stored as core Events and converted field by field on the way in and out.

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

/// The stored form of an object of `def`.
pub fn to_storage(def: &ResourceDef, obj: Value) -> Value {
    if is_events_v1(def) {
        rename(obj, "v1", "Event", true)
    } else {
        obj
    }
}

/// The API form of a stored object of `def`.
pub fn from_storage(def: &ResourceDef, obj: Value) -> Value {
    if is_events_v1(def) {
        rename(obj, "events.k8s.io/v1", "Event", false)
    } else {
        obj
    }
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
}
