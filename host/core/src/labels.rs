//! Label selectors: the `labelSelector` query syntax and `LabelSelector` objects.
//!
//! Grammar (as in apimachinery's `labels.Parse`):
//! `requirement (, requirement)*` where a requirement is `key`, `!key`, `key = v`,
//! `key == v`, `key != v`, `key in (v1, v2)`, `key notin (v1)`, `key > 3` or `key < 3`.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

use crate::names::{is_label_value, qualified_name_errors};

/// A selector that failed to parse, with apimachinery's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct ParseError(pub String);

/// One requirement on one label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `key=v` / `key==v`.
    Equals(String),
    /// `key!=v` (also matches when the label is absent).
    NotEquals(String),
    /// `key in (…)`.
    In(BTreeSet<String>),
    /// `key notin (…)` (also matches when the label is absent).
    NotIn(BTreeSet<String>),
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
    /// `key > n`.
    GreaterThan(i64),
    /// `key < n`.
    LessThan(i64),
}

/// A requirement: a key and what its value must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The condition.
    pub op: Op,
}

impl Requirement {
    /// Whether the requirement holds for a label's value (`None`: the label is absent).
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::Exists, v) => v.is_some(),
            (Op::DoesNotExist, v) => v.is_none(),
            (Op::Equals(want), Some(v)) => v == want,
            (Op::NotEquals(want), Some(v)) => v != want,
            (Op::NotEquals(_) | Op::NotIn(_), None) => true,
            (Op::In(set), Some(v)) => set.contains(v),
            (Op::NotIn(set), Some(v)) => !set.contains(v),
            (Op::GreaterThan(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v > *n),
            (Op::LessThan(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v < *n),
            (_, None) => false,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
        match &self.op {
            Op::Equals(v) => write!(f, "{}={v}", self.key),
            Op::NotEquals(v) => write!(f, "{}!={v}", self.key),
            Op::In(s) => write!(f, "{} in ({})", self.key, set(s)),
            Op::NotIn(s) => write!(f, "{} notin ({})", self.key, set(s)),
            Op::Exists => write!(f, "{}", self.key),
            Op::DoesNotExist => write!(f, "!{}", self.key),
            Op::GreaterThan(n) => write!(f, "{}>{n}", self.key),
            Op::LessThan(n) => write!(f, "{}<{n}", self.key),
        }
    }
}

/// A conjunction of requirements; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// All must hold.
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.matches_with(|key| labels?.get(key)?.as_str())
    }

    /// Whether labels looked up by `get` satisfy the selector (for typed label maps).
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches_value(get(&r.key)))
    }

    /// Whether an object (with `metadata.labels`) satisfies the selector.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.matches(
            object
                .pointer("/metadata/labels")
                .and_then(Value::as_object),
        )
    }

    /// Parses the query syntax.
    pub fn parse(input: &str) -> Result<Selector, ParseError> {
        Parser::new(input).parse()
    }

    /// Converts a `LabelSelector` object (`matchLabels`, `matchExpressions`).
    pub fn from_label_selector(selector: &Value) -> Result<Selector, ParseError> {
        let mut requirements = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                let v = v.as_str().unwrap_or_default();
                check_key(k)?;
                check_value(v)?;
                requirements.push(Requirement {
                    key: k.clone(),
                    op: Op::Equals(v.to_owned()),
                });
            }
        }
        for expr in selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = expr.get("key").and_then(Value::as_str).unwrap_or_default();
            check_key(key)?;
            let values: BTreeSet<String> = expr
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            let operator = expr
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let op = match operator {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(ParseError(format!(
                        "for '{operator}' operator, the values set can't be empty"
                    )));
                }
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(ParseError(format!(
                        "values: Invalid value: must be empty for operator {operator}"
                    )));
                }
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(ParseError(format!(
                        "{other:?} is not a valid label selector operator"
                    )));
                }
            };
            requirements.push(Requirement {
                key: key.to_owned(),
                op,
            });
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Selector { requirements })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// Formats a `LabelSelector` object like `metav1.FormatLabelSelector`: `<none>` when empty.
pub fn format_label_selector(selector: Option<&Value>) -> String {
    match selector.map(Selector::from_label_selector) {
        Some(Ok(s)) if !s.is_empty() => s.to_string(),
        Some(Err(_)) => "<error>".to_owned(),
        _ => "<none>".to_owned(),
    }
}

fn check_key(key: &str) -> Result<(), ParseError> {
    match qualified_name_errors(key).first() {
        Some(why) => Err(ParseError(format!("key: Invalid value: {key:?}: {why}"))),
        None => Ok(()),
    }
}

fn check_value(value: &str) -> Result<(), ParseError> {
    if is_label_value(value) {
        Ok(())
    } else {
        Err(ParseError(format!(
            "values[0][{value}]: Invalid value: {value:?}: {}",
            crate::names::LABEL_VALUE_MSG
        )))
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Comma,
    Open,
    Close,
    Eq,
    DoubleEq,
    NotEq,
    Not,
    Gt,
    Lt,
    In,
    NotIn,
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    input: String,
}

impl Parser {
    fn new(input: &str) -> Self {
        let mut tokens = Vec::new();
        let mut chars = input.chars().peekable();
        while let Some(&c) = chars.peek() {
            match c {
                c if c.is_whitespace() => {
                    chars.next();
                }
                ',' => {
                    chars.next();
                    tokens.push(Token::Comma);
                }
                '(' => {
                    chars.next();
                    tokens.push(Token::Open);
                }
                ')' => {
                    chars.next();
                    tokens.push(Token::Close);
                }
                '=' => {
                    chars.next();
                    if chars.peek() == Some(&'=') {
                        chars.next();
                        tokens.push(Token::DoubleEq);
                    } else {
                        tokens.push(Token::Eq);
                    }
                }
                '!' => {
                    chars.next();
                    if chars.peek() == Some(&'=') {
                        chars.next();
                        tokens.push(Token::NotEq);
                    } else {
                        tokens.push(Token::Not);
                    }
                }
                '>' => {
                    chars.next();
                    tokens.push(Token::Gt);
                }
                '<' => {
                    chars.next();
                    tokens.push(Token::Lt);
                }
                _ => {
                    let mut word = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_whitespace() || ",()=!<>".contains(c) {
                            break;
                        }
                        word.push(c);
                        chars.next();
                    }
                    tokens.push(match word.as_str() {
                        "in" => Token::In,
                        "notin" => Token::NotIn,
                        _ => Token::Ident(word),
                    });
                }
            }
        }
        Parser {
            tokens,
            pos: 0,
            input: input.to_owned(),
        }
    }

    fn next(&mut self) -> Option<&Token> {
        let t = self.tokens.get(self.pos);
        self.pos += 1;
        t
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn fail<T>(&self, why: &str) -> Result<T, ParseError> {
        Err(ParseError(format!("{why} in {:?}", self.input)))
    }

    fn parse(mut self) -> Result<Selector, ParseError> {
        let mut requirements = Vec::new();
        if self.tokens.is_empty() {
            return Ok(Selector::default());
        }
        loop {
            requirements.push(self.requirement()?);
            match self.next() {
                None => break,
                Some(Token::Comma) => {}
                Some(_) => return self.fail("found unexpected token, expected ','"),
            }
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Selector { requirements })
    }

    fn requirement(&mut self) -> Result<Requirement, ParseError> {
        let negated = self.peek() == Some(&Token::Not);
        if negated {
            self.pos += 1;
        }
        let key = match self.next() {
            Some(Token::Ident(k)) => k.clone(),
            _ => return self.fail("expected a label key"),
        };
        check_key(&key)?;
        if negated {
            return Ok(Requirement {
                key,
                op: Op::DoesNotExist,
            });
        }
        let op = match self.peek() {
            None | Some(Token::Comma) => Op::Exists,
            Some(Token::Eq | Token::DoubleEq) => {
                self.pos += 1;
                Op::Equals(self.single_value()?)
            }
            Some(Token::NotEq) => {
                self.pos += 1;
                Op::NotEquals(self.single_value()?)
            }
            Some(Token::In) => {
                self.pos += 1;
                Op::In(self.value_set()?)
            }
            Some(Token::NotIn) => {
                self.pos += 1;
                Op::NotIn(self.value_set()?)
            }
            Some(Token::Gt | Token::Lt) => {
                let gt = self.next() == Some(&Token::Gt);
                let v = self.single_value()?;
                let Ok(n) = v.parse::<i64>() else {
                    return self.fail("for 'Gt', 'Lt' operators, the value must be an integer");
                };
                if gt {
                    Op::GreaterThan(n)
                } else {
                    Op::LessThan(n)
                }
            }
            Some(_) => return self.fail("found unexpected token, expected an operator"),
        };
        Ok(Requirement { key, op })
    }

    fn single_value(&mut self) -> Result<String, ParseError> {
        let value = match self.peek() {
            Some(Token::Ident(v)) => {
                let v = v.clone();
                self.pos += 1;
                v
            }
            // `key=` selects an empty value.
            None | Some(Token::Comma) => String::new(),
            Some(_) => return self.fail("found unexpected token, expected a value"),
        };
        check_value(&value)?;
        Ok(value)
    }

    fn value_set(&mut self) -> Result<BTreeSet<String>, ParseError> {
        if self.next() != Some(&Token::Open) {
            return self.fail("found unexpected token, expected '('");
        }
        let mut set = BTreeSet::new();
        loop {
            match self.next() {
                Some(Token::Ident(v)) => {
                    let v = v.clone();
                    check_value(&v)?;
                    set.insert(v);
                }
                Some(Token::Close) if set.is_empty() => break,
                _ => return self.fail("found unexpected token, expected a value"),
            }
            match self.next() {
                Some(Token::Comma) => {}
                Some(Token::Close) => break,
                _ => return self.fail("found unexpected token, expected ',' or ')'"),
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn parses_every_operator_and_matches() {
        let sel = Selector::parse("app in (web,db), tier!=backend,!legacy,env").unwrap();
        assert!(sel.matches(Some(&labels(
            json!({"app":"web","tier":"frontend","env":"x"})
        ))));
        assert!(!sel.matches(Some(&labels(
            json!({"app":"web","tier":"backend","env":"x"})
        ))));
        assert!(!sel.matches(Some(&labels(json!({"app":"web","legacy":"1","env":"x"})))));
        assert!(!sel.matches(Some(&labels(json!({"app":"api","env":"x"})))));
        assert!(!sel.matches(None));
        let sel = Selector::parse("a==1,b notin (x),c>3").unwrap();
        assert!(sel.matches(Some(&labels(json!({"a":"1","c":"4"})))));
        assert!(!sel.matches(Some(&labels(json!({"a":"1","c":"3"})))));
        assert_eq!(Selector::parse("").unwrap(), Selector::default());
        assert!(
            Selector::parse("x=")
                .unwrap()
                .matches(Some(&labels(json!({"x":""}))))
        );
    }

    #[test]
    fn rejects_malformed_selectors() {
        for bad in [
            "app in web",
            "app in (",
            "=x",
            "a b",
            "bad key=1",
            "a=b c",
            "a>x",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_selector_objects_convert_and_format() {
        let sel = json!({"matchLabels": {"app": "web"},
                         "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                              {"key": "old", "operator": "DoesNotExist"}]});
        assert_eq!(
            format_label_selector(Some(&sel)),
            "app=web,!old,tier in (a,b)"
        );
        assert_eq!(format_label_selector(Some(&json!({}))), "<none>");
        let bad = json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]});
        assert!(Selector::from_label_selector(&bad).is_err());
    }
}
