//! Pod status as the kubelet reports it: the QoS class.

use k8s_openapi::api::core::v1::Pod;

/// The pod's QoS class (Guaranteed, Burstable, BestEffort), by the API server's rules
/// (requests left out default to the limits).
pub fn qos_class(pod: &Pod) -> &'static str {
    let spec = pod
        .spec
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_default();
    skiff_core::defaults::qos_class(&spec)
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
