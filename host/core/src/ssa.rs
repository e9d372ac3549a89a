//! Server-side apply and field ownership (`metadata.managedFields`).
//!
//! Every write records which *field manager* owns which fields, as Kubernetes does:
//! an ordinary write (create, update, patch) gives its manager the fields it set or changed
//! and takes them away from everyone else; an apply (`application/apply-patch+yaml`) makes
//! its manager own exactly the fields of its configuration, merges that configuration into
//! the live object (lists by their keys, sets as sets, atomic values whole), removes fields
//! the manager applied before but no longer does (unless someone else owns them), and fails
//! with a conflict when it would change a value another manager owns, unless forced.
//!
//! Field sets use the `FieldsV1` encoding: `f:<field>`, `k:{<list-map key>}`,
//! `v:<set value>`, with `.` marking a node that is itself owned.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::schema::{ListType, Schemas, list_type, map_is_atomic};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// A field of an object: `f:name`.
    Field(String),
    /// An item of a list keyed by fields: `k:{"name":"nginx"}` (canonical JSON).
    Key(String),
    /// An item of a set: `v:"a"` (JSON).
    Value(String),
    /// An item of a list by position: `i:0`.
    Index(usize),
}

/// A path from the object's root.
pub type Path = Vec<Step>;

/// A set of owned paths.
pub type FieldSet = BTreeSet<Path>;

/// Paths no manager owns: identity and bookkeeping the server controls.
fn ignored(path: &[Step]) -> bool {
    match path {
        [Step::Field(f), ..] if f == "apiVersion" || f == "kind" => true,
        [Step::Field(m), Step::Field(f), ..] if m == "metadata" => matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "managedFields"
                | "selfLink"
        ),
        _ => false,
    }
}

fn canonical(v: &Value) -> String {
    // serde_json with preserve_order keeps insertion order; key objects are built in key
    // order, so their text is canonical.
    v.to_string()
}

/// The fields an object sets, per its schema. `only` limits the walk to one top-level
/// field (`status` for the status subresource); `skip` excludes one (`status` for the main
/// resource).
pub fn fields_of(
    schemas: &Schemas,
    schema: &Value,
    obj: &Value,
    only: Option<&str>,
    skip: Option<&str>,
) -> FieldSet {
    let mut out = FieldSet::new();
    if let Some(map) = obj.as_object() {
        for (k, v) in map {
            if only.is_some_and(|o| o != k) || skip == Some(k.as_str()) {
                continue;
            }
            let child = schemas.property(schema, k).cloned().unwrap_or(Value::Null);
            walk(
                schemas,
                &child,
                v,
                &mut vec![Step::Field(k.clone())],
                &mut out,
                0,
            );
        }
    }
    out.retain(|p| !ignored(p));
    out
}

fn walk(
    schemas: &Schemas,
    schema: &Value,
    value: &Value,
    path: &mut Path,
    out: &mut FieldSet,
    depth: usize,
) {
    if depth > 64 {
        out.insert(path.clone());
        return;
    }
    match value {
        Value::Object(map) if !map.is_empty() && !map_is_atomic(schema) => {
            for (k, v) in map {
                let child = schemas.property(schema, k).cloned().unwrap_or(Value::Null);
                path.push(Step::Field(k.clone()));
                walk(schemas, &child, v, path, out, depth + 1);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match list_type(schema) {
            ListType::Atomic => {
                out.insert(path.clone());
            }
            ListType::Set => {
                for item in items {
                    let mut p = path.clone();
                    p.push(Step::Value(canonical(item)));
                    out.insert(p);
                }
            }
            ListType::Map(keys) => {
                let item_schema = schemas.items(schema).cloned().unwrap_or(Value::Null);
                for item in items {
                    path.push(Step::Key(canonical(&key_of(item, &keys))));
                    out.insert(path.clone());
                    if let Some(fields) = item.as_object() {
                        for (k, v) in fields {
                            let child = schemas
                                .property(&item_schema, k)
                                .cloned()
                                .unwrap_or(Value::Null);
                            path.push(Step::Field(k.clone()));
                            walk(schemas, &child, v, path, out, depth + 1);
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

fn key_of(item: &Value, keys: &[String]) -> Value {
    let mut key = Map::new();
    for k in keys {
        if let Some(v) = item.get(k) {
            key.insert(k.clone(), v.clone());
        }
    }
    Value::Object(key)
}

/// Encodes a field set as `FieldsV1`.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for (i, step) in path.iter().enumerate() {
            let key = match step {
                Step::Field(f) => format!("f:{f}"),
                Step::Key(k) => format!("k:{k}"),
                Step::Value(v) => format!("v:{v}"),
                Step::Index(n) => format!("i:{n}"),
            };
            let entry = node.entry(key).or_insert_with(|| json!({}));
            let child = entry.as_object_mut().expect("nodes are objects");
            if i == path.len() - 1
                && set
                    .iter()
                    .any(|other| other.len() > path.len() && other.starts_with(path))
            {
                child.insert(".".into(), json!({}));
            }
            node = child;
        }
    }
    Value::Object(root)
}

/// Decodes `FieldsV1`.
pub fn from_fields_v1(value: &Value) -> FieldSet {
    fn go(node: &Map<String, Value>, path: &mut Path, out: &mut FieldSet) {
        for (key, child) in node {
            if key == "." {
                out.insert(path.clone());
                continue;
            }
            let step = if let Some(f) = key.strip_prefix("f:") {
                Step::Field(f.to_owned())
            } else if let Some(k) = key.strip_prefix("k:") {
                Step::Key(
                    serde_json::from_str::<Value>(k)
                        .map(|v| canonical(&v))
                        .unwrap_or_else(|_| k.to_owned()),
                )
            } else if let Some(v) = key.strip_prefix("v:") {
                Step::Value(
                    serde_json::from_str::<Value>(v)
                        .map(|v| canonical(&v))
                        .unwrap_or_else(|_| v.to_owned()),
                )
            } else if let Some(i) = key.strip_prefix("i:").and_then(|i| i.parse().ok()) {
                Step::Index(i)
            } else {
                continue;
            };
            path.push(step);
            match child.as_object() {
                Some(c) if !c.is_empty() => go(c, path, out),
                _ => {
                    out.insert(path.clone());
                }
            }
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    if let Some(map) = value.as_object() {
        go(map, &mut Vec::new(), &mut out);
    }
    out
}

/// A path as Kubernetes prints it in conflicts: `.spec.containers[name="nginx"].image`.
pub fn path_string(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Step::Key(k) => {
                let parts: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                    .unwrap_or_else(|_| vec![k.clone()]);
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            Step::Value(v) => out.push_str(&format!("[={v}]")),
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The value a path leads to.
pub fn value_at<'a>(obj: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut current = obj;
    for step in path {
        current = match step {
            Step::Field(f) => current.get(f)?,
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).ok()?;
                current
                    .as_array()?
                    .iter()
                    .find(|item| key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))?
            }
            Step::Value(v) => {
                let want: Value = serde_json::from_str(v).ok()?;
                current.as_array()?.iter().find(|item| **item == want)?
            }
            Step::Index(i) => current.as_array()?.get(*i)?,
        };
    }
    Some(current)
}

fn remove_at(obj: &mut Value, path: &[Step]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut parent = obj;
    for step in parent_path {
        let next = match step {
            Step::Field(f) => parent.get_mut(f),
            Step::Key(k) => {
                let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) else {
                    return;
                };
                parent.as_array_mut().and_then(|a| {
                    a.iter_mut()
                        .find(|item| key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))
                })
            }
            Step::Value(_) => None,
            Step::Index(i) => parent.as_array_mut().and_then(|a| a.get_mut(*i)),
        };
        match next {
            Some(n) => parent = n,
            None => return,
        }
    }
    match last {
        Step::Field(f) => {
            if let Some(m) = parent.as_object_mut() {
                m.remove(f);
            }
        }
        Step::Key(k) => {
            if let (Ok(key), Some(list)) = (
                serde_json::from_str::<Map<String, Value>>(k),
                parent.as_array_mut(),
            ) {
                list.retain(|item| !key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)));
            }
        }
        Step::Value(v) => {
            if let (Ok(want), Some(list)) =
                (serde_json::from_str::<Value>(v), parent.as_array_mut())
            {
                list.retain(|item| *item != want);
            }
        }
        Step::Index(i) => {
            if let Some(list) = parent.as_array_mut()
                && *i < list.len()
            {
                list.remove(*i);
            }
        }
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The manager's name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// The API version the fields were written in.
    pub api_version: String,
    /// When the set last changed.
    pub time: String,
    /// `status` for entries written through the status subresource.
    pub subresource: Option<String>,
    /// The fields owned.
    pub fields: FieldSet,
}

impl Entry {
    fn same_manager(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }
}

/// Reads `metadata.managedFields`.
pub fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e
                .get("manager")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            operation: e
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("Update")
                .to_owned(),
            api_version: e
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            time: e
                .get("time")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            subresource: e
                .get("subresource")
                .and_then(Value::as_str)
                .map(str::to_owned),
            fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
        })
        .collect()
}

/// Writes `metadata.managedFields`, dropping entries that own nothing.
pub fn set_entries(obj: &mut Value, list: &[Entry]) {
    let encoded: Vec<Value> = list
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if encoded.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(encoded));
        }
    }
}

/// Who is writing, for managed fields.
#[derive(Clone, Debug)]
pub struct Writer<'a> {
    /// The field manager.
    pub manager: &'a str,
    /// The API version of the request.
    pub api_version: &'a str,
    /// `Some("status")` for status writes.
    pub subresource: Option<&'a str>,
    /// Now, RFC 3339.
    pub now: &'a str,
}

impl Writer<'_> {
    fn scope(&self) -> (Option<&str>, Option<&str>) {
        match self.subresource {
            Some("status") => (Some("status"), None),
            _ => (None, Some("status")),
        }
    }
}

/// Records an ordinary write (create, update, patch) of `new` over `old`: the writer owns
/// the fields it set or changed, and nobody owns what it removed.
pub fn track_update(
    schemas: &Schemas,
    schema: &Value,
    old: Option<&Value>,
    new: &mut Value,
    writer: &Writer<'_>,
) {
    let (only, skip) = writer.scope();
    let new_set = fields_of(schemas, schema, new, only, skip);
    let old_set = old
        .map(|o| fields_of(schemas, schema, o, only, skip))
        .unwrap_or_default();
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| {
            !old_set.contains(*p)
                || match p.last() {
                    Some(Step::Key(_) | Step::Value(_)) => false,
                    _ => old.and_then(|o| value_at(o, p)) != value_at(new, p),
                }
        })
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();
    let mut list = entries(new);
    if changed.is_empty() && removed.is_empty() {
        return;
    }
    for e in &mut list {
        if !e.same_manager(writer.manager, "Update", writer.subresource) {
            e.fields
                .retain(|p| !changed.contains(p) && !removed.contains(p));
        }
    }
    match list
        .iter_mut()
        .find(|e| e.same_manager(writer.manager, "Update", writer.subresource))
    {
        Some(mine) => {
            mine.fields.retain(|p| !removed.contains(p));
            mine.fields.extend(changed);
            mine.time = writer.now.to_owned();
            mine.api_version = writer.api_version.to_owned();
        }
        None => list.push(Entry {
            manager: writer.manager.to_owned(),
            operation: "Update".into(),
            api_version: writer.api_version.to_owned(),
            time: writer.now.to_owned(),
            subresource: writer.subresource.map(str::to_owned),
            fields: changed,
        }),
    }
    set_entries(new, &list);
}

/// Fields another manager owns that an apply would change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The owning manager.
    pub manager: String,
    /// The API version it wrote in.
    pub api_version: String,
    /// The field.
    pub path: Path,
}

/// Why an apply failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// Fields owned by other managers would change.
    #[error("Apply failed with {} conflict{}: {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, conflict_text(.0))]
    Conflicts(Vec<Conflict>),
    /// The configuration is not an object.
    #[error("the apply configuration must be an object")]
    NotAnObject,
}

fn conflict_text(conflicts: &[Conflict]) -> String {
    let parts: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "conflict with \"{}\" using {}: {}",
                c.manager,
                c.api_version,
                path_string(&c.path)
            )
        })
        .collect();
    parts.join("\n")
}

/// Applies `config` for `writer` over `live` (absent: the object is being created).
/// Returns the merged object with its managed fields updated.
pub fn apply(
    schemas: &Schemas,
    schema: &Value,
    live: Option<&Value>,
    config: &Value,
    writer: &Writer<'_>,
    force: bool,
) -> Result<Value, ApplyError> {
    if !config.is_object() {
        return Err(ApplyError::NotAnObject);
    }
    let (only, skip) = writer.scope();
    let applied = fields_of(schemas, schema, config, only, skip);
    let base = live.cloned().unwrap_or_else(|| json!({}));
    let mut list = entries(&base);
    let mine = |e: &Entry| e.same_manager(writer.manager, "Apply", writer.subresource);
    let mut conflicts = Vec::new();
    for e in list.iter().filter(|e| !mine(e)) {
        for p in applied.intersection(&e.fields) {
            let leaf = !matches!(p.last(), Some(Step::Key(_) | Step::Value(_)));
            if leaf && value_at(&base, p) != value_at(config, p) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    api_version: e.api_version.clone(),
                    path: p.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(ApplyError::Conflicts(conflicts));
    }
    for c in &conflicts {
        for e in list
            .iter_mut()
            .filter(|e| e.manager == c.manager && !mine(e))
        {
            e.fields.remove(&c.path);
        }
    }
    let mut merged = base.clone();
    merge(schemas, schema, &mut merged, config, only, skip, 0);
    // Fields this manager applied before and no longer applies go, unless others own them.
    let previous = list
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others: FieldSet = list
        .iter()
        .filter(|e| !mine(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut dropped: Vec<&Path> = previous
        .difference(&applied)
        .filter(|p| !others.contains(*p) && !others.iter().any(|o| o.starts_with(p)))
        .collect();
    // Remove only the top-most dropped paths: a list item goes whole, with its fields
    // (removing its key field first would make the item unfindable).
    dropped.sort();
    let mut removed: Vec<&Path> = Vec::new();
    for p in dropped {
        if removed.iter().any(|r| p.starts_with(r)) {
            continue;
        }
        remove_at(&mut merged, p);
        removed.push(p);
    }
    let changed = previous != applied;
    match list.iter_mut().find(|e| mine(e)) {
        Some(e) => {
            if changed {
                e.time = writer.now.to_owned();
            }
            e.fields = applied;
            e.api_version = writer.api_version.to_owned();
        }
        None => list.push(Entry {
            manager: writer.manager.to_owned(),
            operation: "Apply".into(),
            api_version: writer.api_version.to_owned(),
            time: writer.now.to_owned(),
            subresource: writer.subresource.map(str::to_owned),
            fields: applied,
        }),
    }
    set_entries(&mut merged, &list);
    Ok(merged)
}

/// Merges an applied configuration into the live object by the schema's list and map types.
fn merge(
    schemas: &Schemas,
    schema: &Value,
    live: &mut Value,
    config: &Value,
    only: Option<&str>,
    skip: Option<&str>,
    depth: usize,
) {
    let Some(cfg) = config.as_object() else {
        *live = config.clone();
        return;
    };
    if !live.is_object() {
        *live = json!({});
    }
    let target = live.as_object_mut().expect("just made an object");
    for (k, v) in cfg {
        if depth == 0 && (only.is_some_and(|o| o != k) || skip == Some(k.as_str())) {
            continue;
        }
        if depth == 0 && k == "metadata" {
            // Identity fields come from the live object; managedFields are the server's.
            let meta = target.entry("metadata").or_insert_with(|| json!({}));
            if let (Some(meta), Some(cfg_meta)) = (meta.as_object_mut(), v.as_object()) {
                for (mk, mv) in cfg_meta {
                    if [
                        "managedFields",
                        "resourceVersion",
                        "uid",
                        "creationTimestamp",
                        "generation",
                    ]
                    .contains(&mk.as_str())
                    {
                        continue;
                    }
                    let child = schemas
                        .property(&meta_schema(), mk)
                        .cloned()
                        .unwrap_or(Value::Null);
                    let slot = meta.entry(mk.clone()).or_insert(Value::Null);
                    merge_value(schemas, &child, slot, mv, depth + 1);
                }
            }
            continue;
        }
        let child = schemas.property(schema, k).cloned().unwrap_or(Value::Null);
        let slot = target.entry(k.clone()).or_insert(Value::Null);
        merge_value(schemas, &child, slot, v, depth + 1);
    }
}

fn meta_schema() -> Value {
    json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"})
}

fn merge_value(schemas: &Schemas, schema: &Value, live: &mut Value, config: &Value, depth: usize) {
    if depth > 64 {
        *live = config.clone();
        return;
    }
    match (live, config) {
        (live @ Value::Object(_), Value::Object(cfg)) if !map_is_atomic(schema) => {
            let target = live.as_object_mut().expect("matched an object");
            for (k, v) in cfg {
                let child = schemas.property(schema, k).cloned().unwrap_or(Value::Null);
                let slot = target.entry(k.clone()).or_insert(Value::Null);
                merge_value(schemas, &child, slot, v, depth + 1);
            }
        }
        (live @ Value::Array(_), Value::Array(cfg)) => match list_type(schema) {
            ListType::Atomic => *live = config.clone(),
            ListType::Set => {
                let target = live.as_array_mut().expect("matched an array");
                for item in cfg {
                    if !target.contains(item) {
                        target.push(item.clone());
                    }
                }
            }
            ListType::Map(keys) => {
                let item_schema = schemas.items(schema).cloned().unwrap_or(Value::Null);
                let target = live.as_array_mut().expect("matched an array");
                for item in cfg {
                    let key = key_of(item, &keys);
                    let found = target.iter_mut().find(|t| key_of(t, &keys) == key);
                    match found {
                        Some(existing) => {
                            merge_value(schemas, &item_schema, existing, item, depth + 1)
                        }
                        None => target.push(item.clone()),
                    }
                }
            }
        },
        (live, config) => *live = config.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::registry::Registry;

    fn schemas() -> &'static Schemas {
        static S: OnceLock<Schemas> = OnceLock::new();
        S.get_or_init(|| Schemas::builtin(Registry::builtin().resources()))
    }

    fn deploy_schema() -> Value {
        json!({"$ref": "#/components/schemas/io.k8s.api.apps.v1.Deployment"})
    }

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "apps/v1",
            subresource: None,
            now: "2026-11-22T10:00:00Z",
        }
    }

    fn config(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                   "spec": {"containers": [{"name": "nginx", "image": image}]}}}})
    }

    #[test]
    fn fields_v1_round_trips_with_list_keys() {
        let set = fields_of(
            schemas(),
            &deploy_schema(),
            &config(2, "nginx"),
            None,
            Some("status"),
        );
        let encoded = to_fields_v1(&set);
        let containers = &encoded["f:spec"]["f:template"]["f:spec"]["f:containers"];
        assert!(containers["k:{\"name\":\"nginx\"}"]["."].is_object());
        assert!(containers["k:{\"name\":\"nginx\"}"]["f:image"].is_object());
        assert_eq!(from_fields_v1(&encoded), set);
        assert!(!set.iter().any(|p| ignored(p)), "name is not owned");
    }

    #[test]
    fn apply_conflicts_with_other_managers_unless_forced() {
        let s = schemas();
        let schema = deploy_schema();
        // Created by an ordinary write (kubectl create), then applied by kubectl.
        let mut live = config(2, "nginx:1.25");
        track_update(
            s,
            &schema,
            None,
            &mut live,
            &writer("kubectl-client-side-apply"),
        );
        let err = apply(
            s,
            &schema,
            Some(&live),
            &config(3, "nginx:1.25"),
            &writer("kubectl"),
            false,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        );
        let forced = apply(
            s,
            &schema,
            Some(&live),
            &config(3, "nginx:1.25"),
            &writer("kubectl"),
            true,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let owners = entries(&forced);
        let csa = owners
            .iter()
            .find(|e| e.manager == "kubectl-client-side-apply")
            .unwrap();
        assert!(!csa.fields.contains(&vec![
            Step::Field("spec".into()),
            Step::Field("replicas".into())
        ]));
        // Same values: no conflict.
        assert!(
            apply(
                s,
                &schema,
                Some(&live),
                &config(2, "nginx:1.25"),
                &writer("kubectl"),
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn apply_removes_fields_it_no_longer_applies() {
        let s = schemas();
        let schema = deploy_schema();
        let mut with_label = config(1, "a");
        with_label["metadata"]["labels"]["extra"] = json!("x");
        with_label["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "side", "image": "b"}));
        let first = apply(s, &schema, None, &with_label, &writer("me"), false).unwrap();
        let second = apply(
            s,
            &schema,
            Some(&first),
            &config(1, "a"),
            &writer("me"),
            false,
        )
        .unwrap();
        assert!(second["metadata"]["labels"].get("extra").is_none());
        assert_eq!(
            second["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // A field another manager also owns stays.
        let mut shared = first.clone();
        let mut list = entries(&shared);
        list.push(Entry {
            manager: "other".into(),
            operation: "Update".into(),
            api_version: "apps/v1".into(),
            time: String::new(),
            subresource: None,
            fields: [vec![
                Step::Field("metadata".into()),
                Step::Field("labels".into()),
                Step::Field("extra".into()),
            ]]
            .into_iter()
            .collect(),
        });
        set_entries(&mut shared, &list);
        let third = apply(
            s,
            &schema,
            Some(&shared),
            &config(1, "a"),
            &writer("me"),
            false,
        )
        .unwrap();
        assert_eq!(third["metadata"]["labels"]["extra"], "x");
    }

    #[test]
    fn updates_take_ownership_of_changed_fields() {
        let s = schemas();
        let schema = deploy_schema();
        let mut obj = config(1, "a");
        track_update(s, &schema, None, &mut obj, &writer("creator"));
        let old = obj.clone();
        obj["spec"]["replicas"] = json!(5);
        track_update(s, &schema, Some(&old), &mut obj, &writer("scaler"));
        let list = entries(&obj);
        let replicas = vec![Step::Field("spec".into()), Step::Field("replicas".into())];
        assert!(
            list.iter()
                .find(|e| e.manager == "scaler")
                .unwrap()
                .fields
                .contains(&replicas)
        );
        assert!(
            !list
                .iter()
                .find(|e| e.manager == "creator")
                .unwrap()
                .fields
                .contains(&replicas)
        );
        // A write that changes nothing leaves managedFields alone.
        let before = obj.clone();
        track_update(s, &schema, Some(&before), &mut obj, &writer("noop"));
        assert_eq!(obj, before);
    }
}
