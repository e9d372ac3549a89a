//! Pod status as the kubelet reports it: QoS class, phase and conditions from the
//! containers' states.

use k8s_openapi::api::core::v1::{Container, Pod};

/// The pod's QoS class (Guaranteed, Burstable, BestEffort) by the kubelet's rules;
/// requests left out default to the limits.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let res = c.resources.as_ref();
        let limits = res.and_then(|r| r.limits.as_ref());
        let requests = res.and_then(|r| r.requests.as_ref());
        for name in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(name));
            let request = requests.and_then(|r| r.get(name)).or(limit);
            if limit.is_some() || request.is_some() {
                any = true;
            }
            match (request, limit) {
                (Some(r), Some(l)) if same_quantity(name, r, l) => {}
                _ => guaranteed = false,
            }
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

fn same_quantity(
    name: &str,
    a: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    b: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
) -> bool {
    if name == "cpu" {
        crate::spec::millicores(a).ok() == crate::spec::millicores(b).ok()
    } else {
        crate::spec::bytes(a).ok() == crate::spec::bytes(b).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(resources: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": resources}]},
        }))
        .unwrap()
    }

    #[test]
    fn qos_classes_follow_the_kubelets_rules() {
        assert_eq!(qos_class(&pod(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&pod(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&pod(
                json!({"requests": {"cpu": "1000m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}})
            )),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&pod(json!({"requests": {"cpu": "100m"}}))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&pod(json!({"limits": {"memory": "1Gi"}}))),
            "Burstable"
        );
    }
}
