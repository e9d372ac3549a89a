//! CRD validation rules: the CEL expressions of a structural schema's
//! `x-kubernetes-validations`, checked on every write of a custom resource.
//!
//! Each rule runs at its schema node with `self` bound to the value there (and `oldSelf` to
//! the stored value at the same place, on updates). A rule that evaluates to `false` fails
//! with its `message` (or the value of its `messageExpression`, or `failed rule: <rule>`) at
//! the node's path plus its `fieldPath`, with its `reason`; a rule that can't be evaluated
//! (a missing field, a type mismatch) fails too, as in Kubernetes. Rules that read `oldSelf`
//! are transition rules: they run only on updates where the old value exists.
//!
//! Old values are matched to new ones through object properties, map keys and the keys of
//! `x-kubernetes-list-type: map` lists, as Kubernetes correlates them; elements of other
//! lists have no old value.
//!
//! The standard CEL library is available (`size`, `has`, `all`, `exists`, `matches`,
//! `startsWith`, `int()`, ...); Kubernetes' extension libraries (`quantity()`, `url()`,
//! `ip()`, `lowerAscii()`, ...) are not, and rules using them fail to compile.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::schema::{ListType, MAX_DEPTH, join, list_type};
use crate::status::FieldError;

/// Why a rule does not compile, for CRD validation.
pub fn compile_error(rule: &str) -> Option<String> {
    cel::Program::compile(rule).err().map(|e| e.to_string())
}

/// Checks every validation rule of `schema` (a CRD version's `openAPIV3Schema`) against
/// `obj`, with `old` the stored object on update.
pub fn validate(schema: &Value, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut run = Run {
        programs: HashMap::new(),
        errors: Vec::new(),
    };
    run.walk(schema, obj, old, "", 0);
    run.errors
}

/// One validation: what it found, and each rule compiled once however many list items or
/// map values it applies to.
struct Run<'s> {
    programs: HashMap<&'s str, Result<cel::Program, String>>,
    errors: Vec<FieldError>,
}

impl<'s> Run<'s> {
    fn walk(
        &mut self,
        schema: &'s Value,
        value: &Value,
        old: Option<&Value>,
        path: &str,
        depth: usize,
    ) {
        if depth > MAX_DEPTH {
            return;
        }
        if let Some(rules) = schema
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        {
            for rule in rules {
                self.check(rule, schema, value, old, path);
            }
        }
        match value {
            Value::Object(map) => {
                let properties = schema.get("properties").and_then(Value::as_object);
                let additional = schema.get("additionalProperties").filter(|a| a.is_object());
                for (key, child) in map {
                    let Some(sub) = properties.and_then(|p| p.get(key)).or(additional) else {
                        continue;
                    };
                    let old_child = old.and_then(|o| o.get(key));
                    self.walk(sub, child, old_child, &join(path, key), depth + 1);
                }
            }
            Value::Array(items) => {
                let Some(item_schema) = schema.get("items") else {
                    return;
                };
                let keys = match list_type(schema) {
                    ListType::Map(keys) => Some(keys),
                    _ => None,
                };
                let old_items = old.and_then(Value::as_array);
                for (i, item) in items.iter().enumerate() {
                    let old_item = keys.as_ref().and_then(|keys| {
                        old_items?
                            .iter()
                            .find(|o| keys.iter().all(|k| o.get(k) == item.get(k)))
                    });
                    let item_path = format!("{path}[{i}]");
                    self.walk(item_schema, item, old_item, &item_path, depth + 1);
                }
            }
            _ => {}
        }
    }

    fn check(
        &mut self,
        rule: &'s Value,
        schema: &Value,
        value: &Value,
        old: Option<&Value>,
        path: &str,
    ) {
        let Some(source) = rule.get("rule").and_then(Value::as_str) else {
            return;
        };
        let compiled = self
            .programs
            .entry(source)
            .or_insert_with(|| cel::Program::compile(source).map_err(|e| e.to_string()));
        let program = match compiled {
            Ok(p) => p,
            Err(e) => {
                let message = format!("compilation failed: {e}");
                self.errors.push(invalid(path, schema, message));
                return;
            }
        };
        let transition = program.references().has_variable("oldSelf");
        if transition && old.is_none() {
            return;
        }
        let mut context = cel::Context::default();
        context.add_variable_from_value("self", to_cel(value));
        if let Some(old) = old {
            context.add_variable_from_value("oldSelf", to_cel(old));
        }
        let field = match rule.get("fieldPath").and_then(Value::as_str) {
            Some(p) if !p.is_empty() => format!("{path}{p}"),
            _ => path.to_owned(),
        };
        let message = match program.execute(&context) {
            Ok(cel::Value::Bool(true)) => return,
            Ok(cel::Value::Bool(false)) => failure_message(rule, source, &context),
            Ok(other) => format!("rule {source} evaluated to {other:?}, not a bool"),
            Err(e) => format!("{e} evaluating rule: {source}"),
        };
        self.errors
            .push(match rule.get("reason").and_then(Value::as_str) {
                Some("FieldValueForbidden") => FieldError::forbidden(field, message),
                Some("FieldValueRequired") => FieldError::required(field, message),
                Some("FieldValueDuplicate") => FieldError::duplicate(field, schema_type(schema)),
                _ => invalid(&field, schema, message),
            });
    }
}

fn failure_message(rule: &Value, source: &str, context: &cel::Context) -> String {
    if let Some(expr) = rule.get("messageExpression").and_then(Value::as_str)
        && let Ok(program) = cel::Program::compile(expr)
        && let Ok(cel::Value::String(text)) = program.execute(context)
    {
        return text.to_string();
    }
    match rule.get("message").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => m.to_owned(),
        _ => format!("failed rule: {source}"),
    }
}

/// Kubernetes shows the schema type as the invalid value of a failed rule
/// (`spec: Invalid value: "object": ...`).
fn invalid(path: &str, schema: &Value, message: String) -> FieldError {
    let field = if path.is_empty() { "<root>" } else { path };
    FieldError::invalid(field, schema_type(schema), message)
}

fn schema_type(schema: &Value) -> String {
    schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("object")
        .to_owned()
}

/// A JSON value as CEL sees it: integers as `int`, other numbers as `double`.
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => {
            let entries: HashMap<cel::objects::Key, cel::Value> = map
                .iter()
                .map(|(k, v)| (cel::objects::Key::from(k.clone()), to_cel(v)))
                .collect();
            cel::Value::Map(cel::objects::Map {
                map: Arc::new(entries),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.minReplicas <= self.maxReplicas", "message": "min must not exceed max"},
                {"rule": "self.mode != 'bad'", "fieldPath": ".mode", "reason": "FieldValueForbidden"},
                {"rule": "self.mode == oldSelf.mode", "message": "mode is immutable"},
            ],
            "properties": {
                "minReplicas": {"type": "integer"},
                "maxReplicas": {"type": "integer"},
                "mode": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string",
                    "x-kubernetes-validations": [{"rule": "size(self) <= 5"}]}},
            },
        }}})
    }

    fn messages(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn rules_check_values_where_they_are_declared() {
        let ok =
            json!({"spec": {"minReplicas": 1, "maxReplicas": 3, "mode": "fast", "tags": ["a"]}});
        assert!(validate(&schema(), &ok, None).is_empty());
        let bad = json!({"spec": {"minReplicas": 5, "maxReplicas": 3, "mode": "bad", "tags": ["a", "toolong"]}});
        assert_eq!(
            messages(&validate(&schema(), &bad, None)),
            [
                "spec: Invalid value: \"object\": min must not exceed max",
                "spec.mode: Forbidden: failed rule: self.mode != 'bad'",
                "spec.tags[1]: Invalid value: \"string\": failed rule: size(self) <= 5",
            ]
        );
    }

    #[test]
    fn transition_rules_run_only_on_updates() {
        let new = json!({"spec": {"minReplicas": 1, "maxReplicas": 3, "mode": "slow"}});
        assert!(validate(&schema(), &new, None).is_empty());
        let old = json!({"spec": {"minReplicas": 1, "maxReplicas": 3, "mode": "fast"}});
        assert_eq!(
            messages(&validate(&schema(), &new, Some(&old))),
            ["spec: Invalid value: \"object\": mode is immutable"]
        );
    }

    #[test]
    fn a_rule_reading_a_missing_field_fails() {
        let partial = json!({"spec": {"minReplicas": 1, "mode": "x"}});
        let errors = messages(&validate(&schema(), &partial, None));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("maxReplicas"), "{errors:?}");
    }

    #[test]
    fn broken_rules_are_reported() {
        assert!(compile_error("self.a >").is_some());
        assert!(compile_error("self.a > 1").is_none());
    }
}
