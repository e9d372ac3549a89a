//! Field selectors (`fieldSelector=status.phase=Running,spec.nodeName!=n1`).
//!
//! Each resource supports `metadata.name` and `metadata.namespace` plus the fields the real
//! apiserver indexes for it; any other field is a 400 `field label not supported`.

use serde_json::Value;

use crate::resources::ResourceDef;
use crate::status::ApiError;

/// One `field=value` or `field!=value` term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    /// The field path, e.g. `spec.nodeName`.
    pub field: String,
    /// `true` for `=`/`==`, `false` for `!=`.
    pub equals: bool,
    /// The value compared with the field's string form.
    pub value: String,
}

/// A conjunction of field requirements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// All must hold.
    pub requirements: Vec<FieldRequirement>,
}

/// The fields a resource can be selected by, beyond `metadata.name` and `metadata.namespace`.
fn supported_fields(def: &ResourceDef) -> &'static [&'static str] {
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "events") | ("events.k8s.io", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "namespaces") => &["status.phase"],
        ("", "secrets") => &["type"],
        ("", "services") => &["spec.clusterIP", "spec.type"],
        ("", "persistentvolumeclaims") => &["status.phase"],
        ("", "persistentvolumes") => &["status.phase"],
        ("apps", "replicasets") => &["status.replicas"],
        ("batch", "jobs") => &["status.successful"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Whether there are no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Parses `a=b,c!=d`, honouring `\,` `\=` `\!` and `\\` escapes in values.
    pub fn parse(input: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in split_unescaped(input, ',') {
            if term.trim().is_empty() {
                continue;
            }
            let (field, equals, value) = if let Some(i) = find_unescaped(&term, "!=") {
                (&term[..i], false, &term[i + 2..])
            } else if let Some(i) = find_unescaped(&term, "==") {
                (&term[..i], true, &term[i + 2..])
            } else if let Some(i) = find_unescaped(&term, "=") {
                (&term[..i], true, &term[i + 1..])
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: invalid selector: '{input}'; can't understand '{term}'"
                )));
            };
            requirements.push(FieldRequirement {
                field: field.trim().to_owned(),
                equals,
                value: unescape(value.trim()),
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Checks that the resource supports every field selected on.
    pub fn validate_for(&self, def: &ResourceDef) -> Result<(), ApiError> {
        for r in &self.requirements {
            let field = r.field.as_str();
            if field != "metadata.name"
                && field != "metadata.namespace"
                && !supported_fields(def).contains(&field)
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
        }
        Ok(())
    }

    /// Whether the object satisfies every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field_value(object, &r.field);
            (actual == r.value) == r.equals
        })
    }

    /// The name the selector pins with `metadata.name=…`, if it does.
    pub fn pinned_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.equals && r.field == "metadata.name")
            .map(|r| r.value.as_str())
    }
}

/// The string form of a selectable field: booleans and numbers as text, missing as `""`.
fn field_value(object: &Value, field: &str) -> String {
    let pointer = match field {
        // Events select their source by component.
        "source" => "/source/component".to_owned(),
        _ => format!("/{}", field.replace('.', "/")),
    };
    match object.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        // An unset boolean selects as false (`spec.unschedulable=false` matches nodes
        // without the field), as the real field label functions report it.
        None if matches!(field, "spec.unschedulable" | "spec.hostNetwork") => "false".into(),
        None if field == "status.replicas" || field == "status.successful" => "0".into(),
        _ => String::new(),
    }
}

fn split_unescaped(input: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in input.chars() {
        if escaped {
            parts.last_mut().expect("non-empty").extend(['\\', c]);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("non-empty").push(c);
        }
    }
    parts
}

fn find_unescaped(term: &str, op: &str) -> Option<usize> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if term[i..].starts_with(op) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::registry::Registry;

    #[test]
    fn selects_pods_by_phase_and_node() {
        let reg = Registry::builtin();
        let pods = reg.get("", "v1", "pods").unwrap();
        let sel = FieldSelector::parse("status.phase=Running,spec.nodeName!=n2").unwrap();
        sel.validate_for(pods).unwrap();
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(sel.matches(&pod));
        let pod2 = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n2"}, "status": {"phase": "Running"}});
        assert!(!sel.matches(&pod2));
        assert_eq!(
            FieldSelector::parse("metadata.name==x")
                .unwrap()
                .pinned_name(),
            Some("x")
        );
    }

    #[test]
    fn unsupported_fields_are_bad_requests() {
        let reg = Registry::builtin();
        let pods = reg.get("", "v1", "pods").unwrap();
        let err = FieldSelector::parse("spec.bogus=x")
            .unwrap()
            .validate_for(pods)
            .unwrap_err();
        assert_eq!(err.message, "field label not supported: spec.bogus");
        assert!(FieldSelector::parse("nonsense").is_err());
    }

    #[test]
    fn event_source_and_escapes() {
        let ev = json!({"source": {"component": "kubelet"}, "reason": "a,b"});
        assert!(FieldSelector::parse("source=kubelet").unwrap().matches(&ev));
        assert!(FieldSelector::parse("reason=a\\,b").unwrap().matches(&ev));
    }
}
