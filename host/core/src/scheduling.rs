//! Where a pod may run by its own rules: node selector terms and taints. The scheduler
//! and the DaemonSet controller (which decides for itself which nodes get a pod) both
//! follow these.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

/// Whether a node selector requirement holds for a node's `value` of its key.
pub fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// Whether a node selector term matches the node called `name` whose labels `label`
/// reads (its expressions and fields all hold; an empty term matches nothing).
pub fn term_matches<'a>(
    term: &NodeSelectorTerm,
    name: &str,
    label: impl Fn(&str) -> Option<&'a str>,
) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| requirement_matches(r, label(&r.key)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(name)))
}

/// Whether a node satisfies a pod's `nodeSelector` and required node affinity.
pub fn node_affinity_matches(spec: &PodSpec, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector_ok
        && required.is_none_or(|req| {
            req.node_selector_terms
                .iter()
                .any(|term| term_matches(term, name, |k| labels.get(k).map(String::as_str)))
        })
}

/// Whether a toleration tolerates a taint.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let exists = t.operator.as_deref() == Some("Exists");
    match t.key.as_deref().unwrap_or_default() {
        // An empty key tolerates everything, but only with Exists.
        "" => exists,
        key => {
            key == taint.key
                && (exists
                    || t.value.as_deref().unwrap_or_default()
                        == taint.value.as_deref().unwrap_or_default())
        }
    }
}

/// The node's taints with one of `effects` that none of `tolerations` tolerates.
pub fn untolerated<'a>(
    node: &'a Node,
    tolerations: &[Toleration],
    effects: &[&str],
) -> impl Iterator<Item = &'a Taint> {
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    taints.iter().filter(move |taint| {
        effects.contains(&taint.effect.as_str()) && !tolerations.iter().any(|t| tolerates(t, taint))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn selectors_affinity_and_taints() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"zone": "a", "cores": "8"}},
            "spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]},
        }))
        .unwrap();
        let spec = |v: serde_json::Value| -> PodSpec { serde_json::from_value(v).unwrap() };
        assert!(node_affinity_matches(
            &spec(json!({"containers": [], "nodeSelector": {"zone": "a"}})),
            &node
        ));
        assert!(!node_affinity_matches(
            &spec(json!({"containers": [], "nodeSelector": {"zone": "b"}})),
            &node
        ));
        let affinity = |terms: serde_json::Value| {
            spec(json!({"containers": [], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}))
        };
        assert!(node_affinity_matches(
            &affinity(
                json!([{"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}])
            ),
            &node
        ));
        assert!(node_affinity_matches(
            &affinity(
                json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}])
            ),
            &node
        ));
        assert!(!node_affinity_matches(
            &affinity(
                json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}])
            ),
            &node
        ));
        let tolerations =
            |v: serde_json::Value| -> Vec<Toleration> { serde_json::from_value(v).unwrap() };
        assert_eq!(untolerated(&node, &[], &["NoSchedule"]).count(), 1);
        assert_eq!(untolerated(&node, &[], &["NoExecute"]).count(), 0);
        for ok in [
            json!([{"key": "gpu", "operator": "Exists"}]),
            json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]),
            json!([{"operator": "Exists"}]),
        ] {
            assert_eq!(
                untolerated(&node, &tolerations(ok.clone()), &["NoSchedule"]).count(),
                0,
                "{ok}"
            );
        }
        for no in [
            json!([{"key": "gpu", "value": "no"}]),
            json!([{"key": "gpu", "operator": "Exists", "effect": "NoExecute"}]),
            json!([{"key": ""}]),
        ] {
            assert_eq!(
                untolerated(&node, &tolerations(no.clone()), &["NoSchedule"]).count(),
                1,
                "{no}"
            );
        }
    }
}
