//! Status writing shared by the workload controllers: conditions kept as Kubernetes keeps
//! them, a status written only when it changed, and when to look again.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt as _};
use serde_json::{Value, json};

/// A status's typed conditions as JSON, for [`set_condition`].
pub(crate) fn conditions_of<T: serde::Serialize>(conditions: &Option<Vec<T>>) -> Vec<Value> {
    conditions
        .iter()
        .flatten()
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect()
}

/// Sets a condition, keeping its transition time when its status is unchanged.
pub(crate) fn set_condition(
    conditions: &mut Vec<Value>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) {
    let new = json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": now,
    });
    match conditions.iter_mut().find(|c| c["type"] == type_) {
        Some(c) if c["status"] == status => {
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        Some(c) => *c = new,
        None => conditions.push(new),
    }
}

/// Whether any field of `status` differs from the object's current status (a zero where
/// the field is absent is no difference: Kubernetes leaves zeros out).
pub(crate) fn changed(current: &Value, status: &Value) -> bool {
    status.as_object().into_iter().flatten().any(|(k, v)| {
        let was = current.get(k).unwrap_or(&Value::Null);
        was != v && !(v == 0 && was.is_null())
    })
}

/// Merges `status` into the workload's status if it changed anything.
pub(crate) async fn write<K>(
    client: &kube::Client,
    workload: &K,
    current: &Value,
    status: Value,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if !changed(current, &status) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(client.clone(), &workload.namespace().unwrap_or_default());
    api.patch_status(
        &workload.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// When a workload is looked at again: soon after a failed create, when a pod becomes
/// available (`recheck`), or on its next change.
pub(crate) fn next(failed: bool, recheck: Option<Duration>) -> Action {
    match (failed, recheck) {
        (true, _) => Action::requeue(Duration::from_secs(5)),
        (false, Some(wait)) => Action::requeue(wait + Duration::from_millis(100)),
        (false, None) => Action::await_change(),
    }
}
