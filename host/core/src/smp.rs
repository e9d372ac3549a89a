//! Strategic merge patch (`application/strategic-merge-patch+json`), what kubectl sends for
//! `patch`, client-side `apply`, `edit`, `cordon` and `taint`.
//!
//! Maps merge recursively and `null` deletes; lists merge by their patch merge key (e.g.
//! containers by `name`), lists of scalars marked `merge` (finalizers) merge as sets, and
//! every other list is replaced. The directives kubectl uses are honoured: `$patch:
//! replace|delete|merge`, `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>`,
//! `$retainKeys`. The merge metadata comes from the schema (see [`crate::schema`]).

use serde_json::{Map, Value};

use crate::schema::{Schemas, map_is_atomic, patch_merge_key, patch_merges_primitives};

/// A patch that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatchError(pub String);

const SET_ORDER: &str = "$setElementOrder/";
const DELETE_FROM: &str = "$deleteFromPrimitiveList/";

/// Applies a strategic merge patch to `original` whose schema is `schema`.
pub fn apply(
    schemas: &Schemas,
    schema: &Value,
    original: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    let Some(patch) = patch.as_object() else {
        return Err(PatchError(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    let mut result = original.as_object().cloned().unwrap_or_default();
    merge_map(schemas, schema, &mut result, patch, 0)?;
    Ok(Value::Object(result))
}

fn is_directive(key: &str) -> bool {
    key.starts_with('$')
}

/// A patch value with directives and nulls removed, for setting where nothing exists yet.
fn clean(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, v)| !is_directive(k) && !v.is_null())
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .map(clean)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_map(
    schemas: &Schemas,
    schema: &Value,
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    depth: usize,
) -> Result<(), PatchError> {
    if depth > 64 {
        return Err(PatchError("patch nests too deeply".into()));
    }
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *original = clean(&Value::Object(patch.clone()))
                .as_object()
                .cloned()
                .unwrap_or_default();
            return Ok(());
        }
        Some("merge") | None => {}
        Some("delete") => {
            original.clear();
            return Ok(());
        }
        Some(other) => return Err(PatchError(format!("unknown patch type: {other} in map"))),
    }
    for (key, value) in patch {
        if is_directive(key) {
            continue;
        }
        let field_schema = schemas
            .property(schema, key)
            .cloned()
            .unwrap_or(Value::Null);
        if value.is_null() {
            original.remove(key);
            continue;
        }
        match (original.get_mut(key), value) {
            (Some(Value::Object(o)), Value::Object(p)) if !map_is_atomic(&field_schema) => {
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    original.remove(key);
                } else {
                    merge_map(schemas, &field_schema, o, p, depth + 1)?;
                }
            }
            (Some(Value::Array(o)), Value::Array(p)) => {
                merge_list(schemas, &field_schema, o, p, depth)?;
            }
            (_, Value::Object(p)) if p.get("$patch").and_then(Value::as_str) == Some("delete") => {
                original.remove(key);
            }
            (_, v) => {
                original.insert(key.clone(), clean(v));
            }
        }
    }
    // Directives that act on lists and keys.
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_FROM) {
            let remove = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
        }
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(SET_ORDER) {
            let field_schema = schemas
                .property(schema, field)
                .cloned()
                .unwrap_or(Value::Null);
            if let (Some(Value::Array(list)), Some(order)) =
                (original.get_mut(field), value.as_array())
            {
                reorder(list, order, patch_merge_key(&field_schema));
            }
        }
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let keep: Vec<&str> = retain
            .as_array()
            .ok_or_else(|| PatchError("$retainKeys must be a list".into()))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        original.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_list(
    schemas: &Schemas,
    schema: &Value,
    original: &mut Vec<Value>,
    patch: &[Value],
    depth: usize,
) -> Result<(), PatchError> {
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *original = patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .map(clean)
            .collect();
        return Ok(());
    }
    if let Some(key) = patch_merge_key(schema) {
        let item_schema = schemas.items(schema).cloned().unwrap_or(Value::Null);
        for p in patch {
            let Some(pmap) = p.as_object() else {
                return Err(PatchError(format!(
                    "the list merged by {key:?} may only contain objects, got {p}"
                )));
            };
            let id = pmap.get(key);
            let position = id.and_then(|id| original.iter().position(|o| o.get(key) == Some(id)));
            match pmap.get("$patch").and_then(Value::as_str) {
                Some("delete") => {
                    if let Some(id) = id {
                        original.retain(|o| o.get(key) != Some(id));
                    }
                }
                Some("merge") | None => match position {
                    Some(i) => {
                        if let Some(omap) = original[i].as_object_mut() {
                            merge_map(schemas, &item_schema, omap, pmap, depth + 1)?;
                        }
                    }
                    None => original.push(clean(p)),
                },
                Some(other) => {
                    return Err(PatchError(format!("unknown patch type: {other} in list")));
                }
            }
        }
    } else if patch_merges_primitives(schema) {
        for p in patch {
            if !original.contains(p) {
                original.push(p.clone());
            }
        }
    } else {
        *original = patch.iter().map(clean).collect();
    }
    Ok(())
}

/// Orders a merged list as `$setElementOrder` says; items it does not name keep their
/// relative order after the named ones.
fn reorder(list: &mut Vec<Value>, order: &[Value], key: Option<&str>) {
    let ident = |v: &Value| match key {
        Some(k) => v.get(k).cloned(),
        None => Some(v.clone()),
    };
    let wanted: Vec<Value> = order.iter().filter_map(&ident).collect();
    let mut indexed: Vec<(usize, Value)> = std::mem::take(list)
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let rank = ident(&v)
                .and_then(|id| wanted.iter().position(|w| *w == id))
                .unwrap_or(wanted.len() + i);
            (rank, v)
        })
        .collect();
    indexed.sort_by_key(|(rank, _)| *rank);
    *list = indexed.into_iter().map(|(_, v)| v).collect();
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use serde_json::json;

    use super::*;
    use crate::registry::Registry;

    fn schemas() -> &'static Schemas {
        static S: OnceLock<Schemas> = OnceLock::new();
        S.get_or_init(|| Schemas::builtin(Registry::builtin().resources()))
    }

    fn root(name: &str) -> Value {
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    fn deploy() -> Value {
        json!({"metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
               "spec": {"replicas": 2, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
                 "template": {"spec": {"containers": [
                    {"name": "nginx", "image": "nginx:1.25", "ports": [{"containerPort": 80}]},
                    {"name": "side", "image": "busybox"}]}}}})
    }

    #[test]
    fn containers_merge_by_name() {
        let d = root("io.k8s.api.apps.v1.Deployment");
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}}}});
        let out = apply(schemas(), &d, &deploy(), &patch).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["image"], "nginx:1.27");
        assert_eq!(cs[0]["ports"][0]["containerPort"], 80);
        assert_eq!(cs[1]["name"], "side");
    }

    #[test]
    fn kubectl_apply_directives() {
        let d = root("io.k8s.api.apps.v1.Deployment");
        let patch = json!({"metadata": {"labels": {"app": null, "tier": "fe"}, "$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null},
              "template": {"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "nginx"}],
                "containers": [{"name": "side", "$patch": "delete"}, {"name": "new", "image": "x"}]}}}});
        let out = apply(schemas(), &d, &deploy(), &patch).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"tier": "fe"}));
        assert_eq!(out["metadata"]["finalizers"], json!([]));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["nginx", "new"]);
    }

    #[test]
    fn lists_without_keys_are_replaced_and_sets_union() {
        let n = root("io.k8s.api.core.v1.Node");
        let node = json!({"metadata": {"finalizers": ["x"]}, "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}});
        let out = apply(
            schemas(),
            &n,
            &node,
            &json!({"spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]},
            "metadata": {"finalizers": ["y"]}}),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["taints"],
            json!([{"key": "b", "effect": "NoSchedule"}])
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        let out = apply(
            schemas(),
            &n,
            &node,
            &json!({"spec": {"unschedulable": true}}),
        )
        .unwrap();
        assert_eq!(out["spec"]["unschedulable"], true);
        let out = apply(
            schemas(),
            &n,
            &out,
            &json!({"spec": {"unschedulable": null}}),
        )
        .unwrap();
        assert!(out["spec"].get("unschedulable").is_none());
    }

    #[test]
    fn replace_directive_and_atomic_maps() {
        let s = root("io.k8s.api.core.v1.Service");
        let svc = json!({"spec": {"selector": {"a": "1", "b": "2"}, "ports": [{"port": 80, "name": "http"}]}});
        let out = apply(
            schemas(),
            &s,
            &svc,
            &json!({"spec": {"selector": {"c": "3"}}}),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["selector"],
            json!({"c": "3"}),
            "service selectors are atomic"
        );
        let out = apply(
            schemas(),
            &s,
            &svc,
            &json!({"spec": {"ports": [{"port": 443}, {"$patch": "replace"}]}}),
        )
        .unwrap();
        assert_eq!(out["spec"]["ports"], json!([{"port": 443}]));
        assert!(apply(schemas(), &s, &svc, &json!([1])).is_err());
    }
}
