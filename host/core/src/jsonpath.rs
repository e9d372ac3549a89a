//! The JSONPath subset CRD printer columns use: `.spec.replicas`, `.items[0].name`,
//! `.status.conditions[?(@.type=="Ready")].status`, optionally wrapped in `{…}`.

use serde_json::Value;

enum Step {
    Field(String),
    Index(usize),
    All,
    Filter { field: String, value: String },
}

fn parse(path: &str) -> Option<Vec<Step>> {
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    let path = path.strip_prefix('$').unwrap_or(path);
    let mut steps = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end > 0 {
                steps.push(Step::Field(r[..end].to_owned()));
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = r[..end].trim();
            rest = &r[end + 1..];
            if inner == "*" {
                steps.push(Step::All);
            } else if let Ok(n) = inner.parse() {
                steps.push(Step::Index(n));
            } else if let Some(filter) =
                inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')'))
            {
                let (field, value) = filter.split_once("==")?;
                let value = value.trim().trim_matches(['"', '\'']).to_owned();
                steps.push(Step::Filter {
                    field: field.trim().to_owned(),
                    value,
                });
            } else {
                let quoted = inner.trim_matches(['"', '\'']);
                steps.push(Step::Field(quoted.to_owned()));
            }
        } else {
            return None;
        }
    }
    Some(steps)
}

/// The first value the path selects, if any.
pub fn find(obj: &Value, path: &str) -> Option<Value> {
    let steps = parse(path)?;
    let mut current = vec![obj];
    for step in &steps {
        let mut next = Vec::new();
        for v in current {
            match step {
                Step::Field(f) => next.extend(v.get(f)),
                Step::Index(n) => next.extend(v.as_array().and_then(|a| a.get(*n))),
                Step::All => next.extend(v.as_array().into_iter().flatten()),
                Step::Filter { field, value } => {
                    next.extend(v.as_array().into_iter().flatten().filter(|item| {
                        match item.get(field) {
                            Some(Value::String(s)) => s == value,
                            Some(other) => *other == *value.as_str(),
                            None => false,
                        }
                    }))
                }
            }
        }
        current = next;
    }
    current.first().map(|v| (*v).clone())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn selects_fields_indexes_and_filters() {
        let o = json!({"spec": {"replicas": 3, "items": [{"n": "a"}, {"n": "b"}]},
                       "status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(find(&o, ".spec.replicas"), Some(json!(3)));
        assert_eq!(find(&o, "{.spec.items[1].n}"), Some(json!("b")));
        assert_eq!(
            find(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(json!("True"))
        );
        assert_eq!(find(&o, ".spec.items[*].n"), Some(json!("a")));
        assert_eq!(find(&o, ".nope"), None);
        assert_eq!(find(&o, "spec"), None);
    }
}
