//! Object schemas: OpenAPI definitions of the built-in types, and a walker that checks and
//! normalises objects against a schema.
//!
//! Built-in definitions come from k8s-openapi's `schemars` implementations (OpenAPI 3
//! settings, so references read `#/components/schemas/io.k8s.api.core.v1.PodSpec` and a
//! reference with a description becomes `allOf: [{$ref}]`, as in Kubernetes' documents).
//! Those schemas lack Kubernetes' merge annotations, so [`Schemas::builtin`] adds them from
//! [`crate::generated::patch_meta`] (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`,
//! `x-kubernetes-patch-strategy`, `x-kubernetes-patch-merge-key`, `x-kubernetes-map-type`)
//! and tags each kind's schema with `x-kubernetes-group-version-kind`.
//!
//! [`Schemas::normalize`] walks an object against a schema: it drops `null` fields (JSON
//! null means "unset" in the Kubernetes API), removes fields the schema does not declare
//! (or reports them, for `fieldValidation=Strict`), turns numeric quantities into strings,
//! and reports values of the wrong type. For custom resources it also checks the value
//! constraints of the structural schema (`enum`, `pattern`, bounds, `required`, …).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::generated::patch_meta::{FieldStrategy, PATCH_META};
use crate::resources::{BuiltinSchema, ResourceDef, SchemaSource};
use crate::status::FieldError;

/// How a list merges, from its schema's annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole.
    Atomic,
    /// Scalars merged as a set.
    Set,
    /// Objects merged by these keys.
    Map(Vec<String>),
}

/// The OpenAPI definitions of the built-in types, annotated for merging.
#[derive(Debug, Default)]
pub struct Schemas {
    definitions: HashMap<String, Value>,
}

/// Types referenced by the API's paths that are not resources themselves.
fn extra_types() -> Vec<BuiltinSchema> {
    use k8s_openapi::api::{
        autoscaling::v1 as autoscaling, core::v1 as core, policy::v1 as policy,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    vec![
        BuiltinSchema::of::<meta::Status>(),
        BuiltinSchema::of::<meta::DeleteOptions>(),
        BuiltinSchema::of::<meta::Patch>(),
        BuiltinSchema::of::<meta::APIResourceList>(),
        BuiltinSchema::of::<autoscaling::Scale>(),
        BuiltinSchema::of::<policy::Eviction>(),
        BuiltinSchema::of::<core::Binding>(),
    ]
}

impl Schemas {
    /// Generates the definitions of these resources' built-in types (and the API's helper
    /// types), with merge annotations and group-version-kind tags.
    pub fn builtin(resources: &[impl AsRef<ResourceDef>]) -> Self {
        let mut generator =
            schemars::SchemaGenerator::new(schemars::generate::SchemaSettings::openapi3());
        let mut kinds: Vec<(&'static str, Value)> = Vec::new();
        for def in resources {
            let def = def.as_ref();
            if let SchemaSource::Builtin(schema) = &def.schema {
                (schema.generate)(&mut generator);
                let gvk = json!({"group": def.group, "version": def.version, "kind": def.kind});
                kinds.push((schema.name, gvk));
            }
        }
        for extra in extra_types() {
            (extra.generate)(&mut generator);
        }
        let mut definitions: HashMap<String, Value> =
            generator.take_definitions(true).into_iter().collect();
        for (name, gvk) in kinds {
            if let Some(Value::Object(def)) = definitions.get_mut(name) {
                let tags = def
                    .entry("x-kubernetes-group-version-kind")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Some(tags) = tags.as_array_mut()
                    && !tags.contains(&gvk)
                {
                    tags.push(gvk);
                }
            }
        }
        // k8s-openapi declares apiextensions' `JSON` (a schema's `default`, `enum`,
        // `example`) as an object; Kubernetes declares no type: it holds any JSON value.
        if let Some(Value::Object(def)) =
            definitions.get_mut("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON")
        {
            def.remove("type");
        }
        for (name, field, strategy) in PATCH_META {
            let Some(prop) = definitions
                .get_mut(*name)
                .and_then(|d| d.pointer_mut(&format!("/properties/{field}")))
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            annotate(prop, *strategy);
        }
        Schemas { definitions }
    }

    /// A definition by name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.definitions.get(name)
    }

    /// Every definition.
    pub fn definitions(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.definitions.iter()
    }

    /// Follows a `$ref` (directly or as the single `allOf` entry) to its definition.
    pub fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        let mut schema = schema;
        for _ in 0..8 {
            let target = schema
                .get("$ref")
                .or_else(|| schema.pointer("/allOf/0/$ref"))
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .and_then(|name| self.definitions.get(name));
            match target {
                Some(t) => schema = t,
                None => break,
            }
        }
        schema
    }

    /// The schema of an object's field: a declared property, or the `additionalProperties`
    /// schema of a map. `schema` may be a reference.
    pub fn property<'a>(&'a self, schema: &'a Value, field: &str) -> Option<&'a Value> {
        let schema = self.resolve(schema);
        schema
            .get("properties")
            .and_then(|p| p.get(field))
            .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
    }

    /// The item schema of a list.
    pub fn items<'a>(&'a self, schema: &'a Value) -> Option<&'a Value> {
        self.resolve(schema).get("items")
    }

    /// Checks and normalises an object against the schema of its resource; see the module
    /// docs. Unknown fields are removed and listed in the result (the caller decides whether
    /// they are an error); type errors and, for custom resources, constraint violations are
    /// returned as field errors.
    pub fn normalize(&self, root: &Value, object: &mut Value, custom: bool) -> Normalized {
        let mut out = Normalized::default();
        let mut walker = Walker {
            schemas: self,
            custom,
            out: &mut out,
        };
        walker.walk(root, object, &mut String::new(), 0);
        out
    }
}

/// What [`Schemas::normalize`] found.
#[derive(Debug, Default)]
pub struct Normalized {
    /// Paths of fields the schema does not declare (already removed).
    pub unknown: Vec<String>,
    /// Values of the wrong type or out of bounds.
    pub errors: Vec<FieldError>,
}

/// The list type of a list schema (annotations on the property holding the list).
pub fn list_type(schema: &Value) -> ListType {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListType::Set,
        Some("map") => ListType::Map(
            schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|keys| {
                    keys.iter()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        Some(_) => ListType::Atomic,
        None => match schema
            .get("x-kubernetes-patch-merge-key")
            .and_then(Value::as_str)
        {
            Some(key) => ListType::Map(vec![key.to_owned()]),
            None => ListType::Atomic,
        },
    }
}

/// The strategic-merge merge key of a list schema, if its elements merge by key.
pub fn patch_merge_key(schema: &Value) -> Option<&str> {
    let strategy = schema
        .get("x-kubernetes-patch-strategy")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if strategy.split(',').any(|s| s == "merge") {
        schema
            .get("x-kubernetes-patch-merge-key")
            .and_then(Value::as_str)
    } else {
        None
    }
}

/// Whether a list schema merges its scalar elements as a set under strategic merge.
pub fn patch_merges_primitives(schema: &Value) -> bool {
    let strategy = schema
        .get("x-kubernetes-patch-strategy")
        .and_then(Value::as_str)
        .unwrap_or_default();
    strategy.split(',').any(|s| s == "merge")
        && schema.get("x-kubernetes-patch-merge-key").is_none()
}

/// Whether a map schema is atomic.
pub fn map_is_atomic(schema: &Value) -> bool {
    schema.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic")
}

fn annotate(prop: &mut Map<String, Value>, strategy: FieldStrategy) {
    // A nested key (StatefulSet volumeClaimTemplates by `metadata.name`) is no list-map
    // key: Kubernetes publishes that list as atomic.
    let strategy = match strategy {
        FieldStrategy::ListMap(keys) if keys.iter().any(|k| k.contains('.')) => {
            FieldStrategy::ListAtomic
        }
        other => other,
    };
    match strategy {
        FieldStrategy::ListMap(keys) => {
            prop.insert("x-kubernetes-list-type".into(), "map".into());
            prop.insert("x-kubernetes-list-map-keys".into(), json!(keys));
            prop.insert("x-kubernetes-patch-strategy".into(), "merge".into());
            prop.insert("x-kubernetes-patch-merge-key".into(), keys[0].into());
        }
        FieldStrategy::ListSet => {
            prop.insert("x-kubernetes-list-type".into(), "set".into());
            prop.insert("x-kubernetes-patch-strategy".into(), "merge".into());
        }
        FieldStrategy::ListAtomic => {
            prop.insert("x-kubernetes-list-type".into(), "atomic".into());
        }
        FieldStrategy::MapAtomic => {
            prop.insert("x-kubernetes-map-type".into(), "atomic".into());
        }
    }
}

/// Deepest nesting the walker follows; deeper values are left alone (and deeper objects
/// than this are refused by the body size limit long before in practice).
/// How deep schemas and objects are walked (deeper parts are left as they are).
pub(crate) const MAX_DEPTH: usize = 64;

struct Walker<'s, 'o> {
    schemas: &'s Schemas,
    custom: bool,
    out: &'o mut Normalized,
}

impl Walker<'_, '_> {
    fn error(&mut self, err: FieldError) {
        self.out.errors.push(err);
    }

    fn walk(&mut self, schema: &Value, value: &mut Value, path: &mut String, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let outer = schema;
        let schema = self.schemas.resolve(schema);
        let preserve = bool_at(schema, "x-kubernetes-preserve-unknown-fields")
            || bool_at(outer, "x-kubernetes-preserve-unknown-fields");
        let int_or_string = bool_at(schema, "x-kubernetes-int-or-string");
        let declared = schema.get("type").and_then(Value::as_str);
        if self.custom {
            self.check_constraints(schema, value, path);
        }
        match value {
            Value::Object(map) => {
                if let Some(t) = declared.filter(|t| *t != "object") {
                    self.type_error(path, value, t);
                    return;
                }
                let properties = schema.get("properties").and_then(Value::as_object);
                let additional = schema.get("additionalProperties").filter(|a| a.is_object());
                // A schema that declares nothing about the object's fields (RawExtension,
                // FieldsV1, `type: object` alone) keeps them as they are.
                if properties.is_none() && additional.is_none() {
                    map.retain(|_, v| !v.is_null());
                    return;
                }
                let keys: Vec<String> = map.keys().cloned().collect();
                for key in keys {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&key);
                    let sub = properties.and_then(|p| p.get(&key)).or(additional);
                    if map.get(&key).is_some_and(Value::is_null) {
                        // A null means "unset", except where a CRD's schema says the field is
                        // nullable: there Kubernetes keeps it.
                        if !(self.custom && sub.is_some_and(|s| bool_at(s, "nullable"))) {
                            map.remove(&key);
                        }
                    } else if let Some(sub) = sub {
                        let child = map.get_mut(&key).expect("key listed");
                        self.walk(sub, child, path, depth + 1);
                    } else if !preserve {
                        map.remove(&key);
                        self.out.unknown.push(path.clone());
                    }
                    path.truncate(len);
                }
                // A CRD's structural defaults fill fields that are absent (after nulls were
                // pruned), as Kubernetes applies them on every write.
                if self.custom
                    && let Some(properties) = properties
                {
                    for (key, sub) in properties {
                        if map.contains_key(key) {
                            continue;
                        }
                        if let Some(default) = self.schemas.resolve(sub).get("default") {
                            let mut value = default.clone();
                            let len = path.len();
                            *path = join(path, key);
                            self.walk(sub, &mut value, path, depth + 1);
                            path.truncate(len);
                            map.insert(key.clone(), value);
                        }
                    }
                }
                if self.custom
                    && let Some(required) = schema.get("required").and_then(Value::as_array)
                {
                    for field in required.iter().filter_map(Value::as_str) {
                        if !map.contains_key(field) {
                            let p = join(path, field);
                            self.error(FieldError::required(p, ""));
                        }
                    }
                }
            }
            Value::Array(items) => {
                if let Some(t) = declared.filter(|t| *t != "array") {
                    self.type_error(path, value, t);
                    return;
                }
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter_mut().enumerate() {
                        let len = path.len();
                        path.push_str(&format!("[{i}]"));
                        self.walk(item_schema, item, path, depth + 1);
                        path.truncate(len);
                    }
                }
            }
            Value::String(text) if is_quantity(schema) => {
                // Stored, like every Kubernetes quantity, in its canonical form.
                match crate::quantity::canonicalize(text) {
                    Some(canonical) => *text = canonical,
                    None => {
                        let field = if path.is_empty() {
                            "<root>"
                        } else {
                            path.as_str()
                        };
                        self.error(FieldError::invalid(
                            field,
                            text.clone(),
                            "quantities must match the regular expression \
                             '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                        ));
                    }
                }
            }
            Value::String(_) => {
                if let Some(t) = declared.filter(|t| *t != "string" && !int_or_string) {
                    self.type_error(path, value, t);
                }
            }
            Value::Number(n) => {
                let is_int = n.is_i64() || n.is_u64();
                match declared {
                    // Quantities accept numbers and are stored as strings, as the real API
                    // serialises them.
                    _ if is_quantity(schema) => {
                        let text = n.to_string();
                        let canonical = crate::quantity::canonicalize(&text).unwrap_or(text);
                        *value = Value::String(canonical);
                    }
                    Some("integer") if !is_int => self.type_error(path, value, "integer"),
                    Some("integer" | "number") => {}
                    _ if int_or_string && is_int => {}
                    _ if int_or_string => self.type_error(path, value, "integer,string"),
                    Some(t) => self.type_error(path, value, t),
                    None => {}
                }
            }
            Value::Bool(_) => {
                if let Some(t) = declared.filter(|t| *t != "boolean") {
                    self.type_error(path, value, t);
                } else if int_or_string {
                    self.type_error(path, value, "integer,string");
                }
            }
            Value::Null => {}
        }
    }

    /// kube-openapi's type error: the value shown is the JSON type that was found
    /// (`spec.replicas: Invalid value: "string": spec.replicas in body must be of type
    /// integer: "string"`).
    fn type_error(&mut self, path: &str, value: &Value, expected: &str) {
        let field = if path.is_empty() { "<root>" } else { path };
        let found = json_type(value);
        self.error(FieldError::invalid(
            field,
            found,
            format!("{field} in body must be of type {expected}: \"{found}\""),
        ));
    }

    /// Value constraints of a CRD's structural schema.
    fn check_constraints(&mut self, schema: &Value, value: &Value, path: &str) {
        let field = if path.is_empty() { "<root>" } else { path };
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.contains(value)
        {
            let allowed: Vec<String> = options
                .iter()
                .map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_owned))
                .collect();
            let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
            self.error(FieldError::not_supported(field, value.clone(), &allowed));
        }
        match value {
            Value::String(s) => {
                let len = s.chars().count() as u64;
                if let Some(max) = u64_at(schema, "maxLength")
                    && len > max
                {
                    self.error(FieldError::too_long(field, max as usize));
                }
                if let Some(min) = u64_at(schema, "minLength")
                    && len < min
                {
                    self.error(FieldError::invalid(
                        field,
                        value.clone(),
                        format!("{field} in body should be at least {min} chars long"),
                    ));
                }
                if let Some(format) = schema.get("format").and_then(Value::as_str)
                    && !format_matches(format, s)
                {
                    self.error(FieldError::invalid(
                        field,
                        value.clone(),
                        format!("{field} in body must be of type {format}: \"{s}\""),
                    ));
                }
                if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                    && !crate::pattern::matches(pattern, s)
                {
                    self.error(FieldError::invalid(
                        field,
                        value.clone(),
                        format!("{field} in body should match '{pattern}'"),
                    ));
                }
            }
            Value::Number(n) => {
                let v = n.as_f64().unwrap_or_default();
                if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                    let exclusive = bool_at(schema, "exclusiveMaximum");
                    if v > max || (exclusive && v == max) {
                        let op = if exclusive {
                            "less than"
                        } else {
                            "less than or equal to"
                        };
                        self.error(FieldError::invalid(
                            field,
                            value.clone(),
                            format!("{field} in body should be {op} {max}"),
                        ));
                    }
                }
                if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                    let exclusive = bool_at(schema, "exclusiveMinimum");
                    if v < min || (exclusive && v == min) {
                        let op = if exclusive {
                            "greater than"
                        } else {
                            "greater than or equal to"
                        };
                        self.error(FieldError::invalid(
                            field,
                            value.clone(),
                            format!("{field} in body should be {op} {min}"),
                        ));
                    }
                }
            }
            Value::Array(items) => {
                self.check_unique(schema, items, field);
                let len = items.len() as u64;
                if let Some(max) = u64_at(schema, "maxItems")
                    && len > max
                {
                    self.error(FieldError::invalid(
                        field,
                        value.clone(),
                        format!("{field} in body should have at most {max} items"),
                    ));
                }
                if let Some(min) = u64_at(schema, "minItems")
                    && len < min
                {
                    self.error(FieldError::invalid(
                        field,
                        value.clone(),
                        format!("{field} in body should have at least {min} items"),
                    ));
                }
            }
            Value::Object(map) => {
                let len = map.len() as u64;
                if let Some(max) = u64_at(schema, "maxProperties")
                    && len > max
                {
                    self.error(FieldError::too_long(field, max as usize));
                }
            }
            _ => {}
        }
        if value.is_null() && !bool_at(schema, "nullable") {
            self.error(FieldError::invalid(
                field,
                Value::Null,
                format!("{field} in body must not be null"),
            ));
        }
    }

    /// `x-kubernetes-list-type: set` items and `map` keys must be unique.
    fn check_unique(&mut self, schema: &Value, items: &[Value], field: &str) {
        let list_type = list_type(schema);
        let key_of = |item: &Value| -> Option<Value> {
            match &list_type {
                ListType::Set => Some(item.clone()),
                ListType::Map(keys) => {
                    let key: Map<String, Value> = keys
                        .iter()
                        .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
                        .collect();
                    Some(Value::Object(key))
                }
                ListType::Atomic => None,
            }
        };
        let mut seen: Vec<Value> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(key) = key_of(item) else { return };
            if seen.contains(&key) {
                self.error(FieldError::duplicate(format!("{field}[{i}]"), key));
            } else {
                seen.push(key);
            }
        }
    }
}

/// The string formats of Kubernetes' structural schemas (kube-openapi's registry); formats
/// not listed here are accepted as Kubernetes accepts unknown formats.
fn format_matches(format: &str, s: &str) -> bool {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match format {
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.len() == 10 && s.parse::<jiff::civil::Date>().is_ok(),
        "uuid" | "uuid3" | "uuid4" | "uuid5" => {
            let hex = s.replace('-', "");
            s.len() == 36
                && [8, 13, 18, 23].iter().all(|&i| s.as_bytes()[i] == b'-')
                && hex.len() == 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        }
        "ipv4" => s.parse::<Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<Ipv6Addr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, bits)| {
            let max = match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => 32,
                Ok(IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            bits.parse::<u8>().is_ok_and(|b| b <= max)
        }),
        "byte" => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        "hostname" => crate::names::is_dns1123_subdomain(s),
        "mac" => {
            let parts: Vec<&str> = s.split([':', '-']).collect();
            matches!(parts.len(), 6 | 8 | 20)
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        }
        _ => true,
    }
}

fn bool_at(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn u64_at(schema: &Value, key: &str) -> Option<u64> {
    schema.get(key).and_then(Value::as_u64)
}

fn is_quantity(schema: &Value) -> bool {
    // k8s-openapi's Quantity schema is a plain string; its description names it.
    schema
        .get("description")
        .and_then(Value::as_str)
        .is_some_and(|d| d.starts_with("Quantity is a fixed-point representation"))
}

/// `path.field`, or `field` at the root.
pub(crate) fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// The JSON type of a value, as kube-openapi names it.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
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

    fn root(name: &str) -> Value {
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    #[test]
    fn builtin_definitions_carry_gvk_and_merge_annotations() {
        let s = schemas();
        let pod = s.get("io.k8s.api.core.v1.Pod").unwrap();
        assert_eq!(
            pod["x-kubernetes-group-version-kind"],
            json!([{"group": "", "version": "v1", "kind": "Pod"}])
        );
        let spec = s.get("io.k8s.api.core.v1.PodSpec").unwrap();
        let containers = &spec["properties"]["containers"];
        assert_eq!(patch_merge_key(containers), Some("name"));
        assert_eq!(list_type(containers), ListType::Map(vec!["name".into()]));
        assert_eq!(
            list_type(&spec["properties"]["tolerations"]),
            ListType::Atomic
        );
        let meta = s
            .get("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
            .unwrap();
        assert!(patch_merges_primitives(&meta["properties"]["finalizers"]));
        let svc = s.get("io.k8s.api.core.v1.ServiceSpec").unwrap();
        assert!(map_is_atomic(&svc["properties"]["selector"]));
        // References resolve through allOf wrappers.
        let spec_root = root("io.k8s.api.apps.v1.DeploymentSpec");
        let tmpl = s.property(&spec_root, "template").unwrap();
        assert!(s.resolve(tmpl).pointer("/properties/spec").is_some());
    }

    #[test]
    fn normalize_prunes_unknown_fields_and_nulls_and_checks_types() {
        let s = schemas();
        let mut deploy = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "creationTimestamp": null, "bogus": 1},
            "spec": {"replicaz": 3, "replicas": "three",
                     "template": {"spec": {"containers": [{"name": "c", "imagez": "x",
                        "resources": {"limits": {"cpu": 1}}}]}}}
        });
        let out = s.normalize(&root("io.k8s.api.apps.v1.Deployment"), &mut deploy, false);
        assert_eq!(
            out.unknown,
            [
                "metadata.bogus",
                "spec.replicaz",
                "spec.template.spec.containers[0].imagez"
            ]
        );
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].field, "spec.replicas");
        assert!(deploy["metadata"].get("creationTimestamp").is_none());
        assert_eq!(
            deploy.pointer("/spec/template/spec/containers/0/resources/limits/cpu"),
            Some(&json!("1"))
        );
        // int-or-string accepts both.
        let mut svc = json!({"spec": {"ports": [{"port": 80, "targetPort": "http"}, {"port": 81, "targetPort": 8081}]}});
        let out = s.normalize(&root("io.k8s.api.core.v1.Service"), &mut svc, false);
        assert!(out.errors.is_empty() && out.unknown.is_empty(), "{out:?}");
    }

    #[test]
    fn custom_schemas_enforce_constraints() {
        let s = Schemas::default();
        let schema = json!({"type": "object", "required": ["spec"], "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 5},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}});
        let mut obj = json!({"spec": {"size": 9, "mode": "c", "name": "ABCDEFG", "free": {"x": {"y": 1}}, "extra": 1}});
        let out = s.normalize(&schema, &mut obj, true);
        assert_eq!(out.unknown, ["spec.extra"]);
        let mut fields: Vec<&str> = out.errors.iter().map(|e| e.field.as_str()).collect();
        fields.sort();
        assert_eq!(fields, ["spec.mode", "spec.name", "spec.name", "spec.size"]);
        assert_eq!(obj["spec"]["free"], json!({"x": {"y": 1}}));
        let mut missing = json!({"spec": {}});
        let out = s.normalize(&schema, &mut missing, true);
        assert_eq!(out.errors[0].to_string(), "spec.size: Required value");
    }
}
