//! Owner references and guarded writes, shared by the controllers that adopt, release or
//! orphan objects or drop their finalizers (the workload controllers, the garbage collector).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// The owner reference with `controller: true`, if any.
pub fn controller_of(owners: &Option<Vec<OwnerReference>>) -> Option<&OwnerReference> {
    owners.iter().flatten().find(|o| o.controller == Some(true))
}

/// A JSON patch that sets an object's owner references to `owners` (the field left out
/// when there are none, as Kubernetes leaves it out), applied only if the object is still
/// the one with `uid` and still has `current` (`None`: no such field).
pub(crate) fn set_owners(
    uid: &str,
    current: Option<&[OwnerReference]>,
    owners: &[OwnerReference],
) -> json_patch::Patch {
    let test_current = match current {
        Some(current) => {
            json!({"op": "test", "path": "/metadata/ownerReferences", "value": current})
        }
        // Absent: adding the array fails if it appeared meanwhile.
        None => json!({"op": "add", "path": "/metadata/ownerReferences", "value": []}),
    };
    let set = if owners.is_empty() {
        json!({"op": "remove", "path": "/metadata/ownerReferences"})
    } else {
        json!({"op": "replace", "path": "/metadata/ownerReferences", "value": owners})
    };
    let patch = json!([
        {"op": "test", "path": "/metadata/uid", "value": uid},
        test_current,
        set,
    ]);
    serde_json::from_value(patch).expect("a valid JSON patch")
}

/// A JSON patch that takes `finalizer` out of an object's `current` finalizers, applied
/// only if the object is still the one with `uid` and still has exactly those.
pub(crate) fn without_finalizer(
    uid: &str,
    current: &[String],
    finalizer: &str,
) -> json_patch::Patch {
    let kept: Vec<&String> = current.iter().filter(|f| *f != finalizer).collect();
    // The field goes when it empties, as Kubernetes leaves empty lists out.
    let set = if kept.is_empty() {
        json!({"op": "remove", "path": "/metadata/finalizers"})
    } else {
        json!({"op": "replace", "path": "/metadata/finalizers", "value": kept})
    };
    let patch = json!([
        {"op": "test", "path": "/metadata/uid", "value": uid},
        {"op": "test", "path": "/metadata/finalizers", "value": current},
        set,
    ]);
    serde_json::from_value(patch).expect("a valid JSON patch")
}

/// Applies a JSON patch whose tests guard it. `Ok(false)` when the object is gone or
/// changed (404, 409, or 422 for a failed test): the change's own event brings it back.
pub(crate) async fn guarded_patch<K>(
    api: &Api<K>,
    name: &str,
    patch: json_patch::Patch,
) -> Result<bool, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api
        .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(false),
        Err(e) => Err(e),
    }
}
