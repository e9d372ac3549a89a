//! CustomResourceDefinitions: their validation, the status the server gives them, and the
//! resources they make the API serve.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::names::{DNS1123_LABEL_MSG, is_dns1123_label, is_dns1123_subdomain};
use crate::resources::{
    PrinterColumn, ResourceDef, STANDARD_VERBS, ScalePaths, SchemaSource, Subresource,
};
use crate::status::FieldError;

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// The name of the version marked `storage: true`.
fn storage_version(crd: &Value) -> Option<&str> {
    versions(crd)
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .and_then(|v| v.get("name").and_then(Value::as_str))
}

fn versions(crd: &Value) -> &[Value] {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Checks what a CRD must satisfy beyond its schema.
pub fn validate(crd: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let group = s(crd, "/spec/group");
    let plural = s(crd, "/spec/names/plural");
    let kind = s(crd, "/spec/names/kind");
    let name = s(crd, "/metadata/name");
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if group.is_empty() {
        errs.push(FieldError::required("spec.group", ""));
    } else if !is_dns1123_subdomain(group) || !group.contains('.') {
        errs.push(FieldError::invalid(
            "spec.group",
            group,
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        errs.push(FieldError::required("spec.names.plural", ""));
    } else if !is_dns1123_label(plural) {
        errs.push(FieldError::invalid(
            "spec.names.plural",
            plural,
            DNS1123_LABEL_MSG,
        ));
    }
    let singular = s(crd, "/spec/names/singular");
    if !singular.is_empty() && !is_dns1123_label(singular) {
        errs.push(FieldError::invalid(
            "spec.names.singular",
            singular,
            DNS1123_LABEL_MSG,
        ));
    }
    if kind.is_empty() {
        errs.push(FieldError::required("spec.names.kind", ""));
    } else if !kind.starts_with(|c: char| c.is_ascii_alphabetic())
        || !kind.chars().all(|c| c.is_ascii_alphanumeric())
    {
        errs.push(FieldError::invalid(
            "spec.names.kind",
            kind,
            "may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?",
        ));
    }
    match s(crd, "/spec/scope") {
        "Namespaced" | "Cluster" => {}
        "" => errs.push(FieldError::required("spec.scope", "")),
        other => errs.push(FieldError::not_supported(
            "spec.scope",
            other,
            &["Cluster", "Namespaced"],
        )),
    }
    let versions = versions(crd);
    if versions.is_empty() {
        errs.push(FieldError::invalid(
            "spec.versions",
            json!([]),
            "must have exactly one version marked as storage version",
        ));
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        errs.push(FieldError::invalid(
            "spec.versions",
            json!(versions.iter().map(|v| s(v, "/name")).collect::<Vec<_>>()),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        let path = format!("spec.versions[{i}]");
        let vname = s(v, "/name");
        if !is_dns1123_label(vname) {
            errs.push(FieldError::invalid(
                format!("{path}.name"),
                vname,
                DNS1123_LABEL_MSG,
            ));
        }
        match v.pointer("/schema/openAPIV3Schema") {
            None => errs.push(FieldError::required(
                format!("{path}.schema.openAPIV3Schema"),
                "schemas are required",
            )),
            Some(schema) => {
                let preserve = schema
                    .get("x-kubernetes-preserve-unknown-fields")
                    .and_then(Value::as_bool)
                    == Some(true);
                if schema.get("type").and_then(Value::as_str) != Some("object") && !preserve {
                    errs.push(FieldError::invalid(
                        format!("{path}.schema.openAPIV3Schema.type"),
                        schema.get("type").cloned().unwrap_or(Value::Null),
                        "must be object at the root",
                    ));
                }
                rule_errors(
                    schema,
                    &format!("{path}.schema.openAPIV3Schema"),
                    0,
                    &mut errs,
                );
            }
        }
        for (j, c) in v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let cpath = format!("{path}.additionalPrinterColumns[{j}]");
            for key in ["name", "type", "jsonPath"] {
                if s(c, &format!("/{key}")).is_empty() {
                    errs.push(FieldError::required(format!("{cpath}.{key}"), ""));
                }
            }
            let ty = s(c, "/type");
            if !ty.is_empty() && !["integer", "number", "string", "boolean", "date"].contains(&ty) {
                errs.push(FieldError::not_supported(
                    format!("{cpath}.type"),
                    ty,
                    &["boolean", "date", "integer", "number", "string"],
                ));
            }
        }
        if let Some(scale) = v.pointer("/subresources/scale") {
            for key in ["specReplicasPath", "statusReplicasPath"] {
                let p = s(scale, &format!("/{key}"));
                if !p.starts_with('.') {
                    errs.push(FieldError::invalid(
                        format!("{path}.subresources.scale.{key}"),
                        p,
                        "should be a json path under .spec or .status",
                    ));
                }
            }
        }
    }
    errs
}

/// Validation rules (`x-kubernetes-validations`) that do not compile, anywhere in a schema.
fn rule_errors(schema: &Value, path: &str, depth: usize, errs: &mut Vec<FieldError>) {
    if depth > crate::schema::MAX_DEPTH {
        return;
    }
    for (i, rule) in schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let source = s(rule, "/rule");
        let field = format!("{path}.x-kubernetes-validations[{i}].rule");
        if source.is_empty() {
            errs.push(FieldError::required(field, ""));
        } else if let Some(why) = crate::cel::compile_error(source) {
            errs.push(FieldError::invalid(
                field,
                source,
                format!("compilation failed: {why}"),
            ));
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (key, sub) in props {
            rule_errors(sub, &format!("{path}.properties[{key}]"), depth + 1, errs);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = schema.get(key).filter(|s| s.is_object()) {
            rule_errors(sub, &format!("{path}.{key}"), depth + 1, errs);
        }
    }
}

/// Fills the status the API server reports for a CRD whose names it accepted.
pub fn init_status(crd: &mut Value) {
    let now = crate::time::format_time(jiff::Timestamp::now());
    let names = crd
        .pointer("/spec/names")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let stored: Vec<&str> = storage_version(crd).into_iter().collect();
    crd["status"] = json!({
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "acceptedNames": names,
        "storedVersions": stored,
    });
}

/// Adds the CRD's storage version to `status.storedVersions` (objects may now exist in it
/// as well as in the versions listed before).
pub fn record_storage_version(crd: &mut Value) {
    let Some(storage) = storage_version(crd).map(Value::from) else {
        return;
    };
    let Some(status) = crd.get_mut("status").and_then(Value::as_object_mut) else {
        return;
    };
    let stored = status.entry("storedVersions").or_insert_with(|| json!([]));
    if let Some(list) = stored.as_array_mut()
        && !list.contains(&storage)
    {
        list.push(storage);
    }
}

/// Turns `.spec.replicas` into the JSON pointer `/spec/replicas`.
fn pointer(path: &str) -> String {
    path.split('.')
        .filter(|p| !p.is_empty())
        .fold(String::new(), |mut acc, p| {
            acc.push('/');
            acc.push_str(p);
            acc
        })
}

/// The resources a CRD serves: one per served version.
pub fn resource_defs(crd: &Value) -> Vec<ResourceDef> {
    let group = s(crd, "/spec/group").to_owned();
    let kind = s(crd, "/spec/names/kind").to_owned();
    let plural = s(crd, "/spec/names/plural").to_owned();
    let singular = match s(crd, "/spec/names/singular") {
        "" => kind.to_ascii_lowercase(),
        other => other.to_owned(),
    };
    let list_kind = match s(crd, "/spec/names/listKind") {
        "" => format!("{kind}List"),
        other => other.to_owned(),
    };
    let strings = |ptr: &str| -> Vec<String> {
        crd.pointer(ptr)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let namespaced = s(crd, "/spec/scope") != "Cluster";
    // Only a CRD with several versions converts between them.
    let storage_version = storage_version(crd)
        .filter(|_| versions(crd).len() > 1)
        .map(|v| format!("{group}/{v}"));
    versions(crd)
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool) != Some(false))
        .map(|v| {
            let mut subresources = Vec::new();
            if v.pointer("/subresources/status").is_some() {
                subresources.push(Subresource::Status);
            }
            if let Some(scale) = v.pointer("/subresources/scale") {
                subresources.push(Subresource::Scale(ScalePaths {
                    spec_replicas: pointer(s(scale, "/specReplicasPath")),
                    status_replicas: pointer(s(scale, "/statusReplicasPath")),
                    label_selector: Some(s(scale, "/labelSelectorPath"))
                        .filter(|p| !p.is_empty())
                        .map(pointer),
                }));
            }
            let schema = v
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            let preserve = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            let printer_columns = v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| PrinterColumn {
                    name: s(c, "/name").to_owned(),
                    type_: s(c, "/type").to_owned(),
                    format: s(c, "/format").to_owned(),
                    description: s(c, "/description").to_owned(),
                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    json_path: s(c, "/jsonPath").to_owned(),
                })
                .collect();
            ResourceDef {
                group: group.clone(),
                version: s(v, "/name").to_owned(),
                kind: kind.clone(),
                list_kind: list_kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                namespaced,
                short_names: strings("/spec/names/shortNames"),
                categories: strings("/spec/names/categories"),
                verbs: STANDARD_VERBS.iter().map(|s| (*s).into()).collect(),
                subresources,
                schema: SchemaSource::Custom(Arc::new(with_object_fields(schema))),
                stored: true,
                printer_columns,
                preserve_unknown_fields: preserve,
                storage_version: storage_version.clone(),
                deprecation_warning: (v.get("deprecated").and_then(Value::as_bool) == Some(true))
                    .then(|| match s(v, "/deprecationWarning") {
                        "" => format!("{group}/{} {kind} is deprecated", s(v, "/name")),
                        text => text.to_owned(),
                    }),
            }
        })
        .collect()
}

/// A CRD schema with the fields every object has (`apiVersion`, `kind`, `metadata`), which
/// CRD authors leave out.
fn with_object_fields(mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        let props = obj
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut all = serde_json::Map::new();
        all.insert(
            "apiVersion".into(),
            json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}),
        );
        all.insert(
            "kind".into(),
            json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}),
        );
        all.insert(
            "metadata".into(),
            json!({"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}],
                   "description": "Standard object's metadata."}),
        );
        for (k, v) in props {
            if k != "metadata" {
                all.insert(k, v);
            }
        }
        obj.insert("properties".into(), serde_json::Value::Object(all));
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crontab() -> Value {
        json!({"metadata": {"name": "crontabs.stable.example.com"},
            "spec": {"group": "stable.example.com", "scope": "Namespaced",
                "names": {"plural": "crontabs", "kind": "CronTab", "shortNames": ["ct"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}}},
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}},
                    "additionalPrinterColumns": [{"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}]}]}})
    }

    #[test]
    fn a_crd_serves_its_versions() {
        assert!(
            validate(&crontab()).is_empty(),
            "{:?}",
            validate(&crontab())
        );
        let defs = resource_defs(&crontab());
        assert_eq!(defs.len(), 1);
        let d = &defs[0];
        assert_eq!(
            (d.kind.as_str(), d.list_kind.as_str(), d.singular.as_str()),
            ("CronTab", "CronTabList", "crontab")
        );
        assert!(d.has_status());
        assert_eq!(
            d.scale().unwrap().label_selector.as_deref(),
            Some("/status/selector")
        );
        let SchemaSource::Custom(schema) = &d.schema else {
            panic!()
        };
        assert!(schema.pointer("/properties/metadata/allOf").is_some());
        assert_eq!(d.printer_columns[0].json_path, ".spec.replicas");
    }

    #[test]
    fn bad_crds_are_refused() {
        let mut bad = crontab();
        bad["metadata"]["name"] = json!("wrong");
        bad["spec"]["versions"][0]["storage"] = json!(false);
        bad["spec"]["scope"] = json!("Galaxy");
        let fields: Vec<String> = validate(&bad).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["metadata.name", "spec.scope", "spec.versions"]);
    }
}
