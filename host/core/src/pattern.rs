//! `pattern` constraints of CRD schemas, compiled once per distinct pattern.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Whether `value` matches the ECMA-262-style `pattern` (unanchored, as OpenAPI specifies).
/// A pattern that does not compile matches nothing.
pub fn matches(pattern: &str, value: &str) -> bool {
    // A std Mutex: held only for a map lookup or insert, never across an await.
    static CACHE: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() > 4096 {
        cache.clear();
    }
    cache
        .entry(pattern.to_owned())
        .or_insert_with(|| regex::Regex::new(pattern).ok())
        .as_ref()
        .is_some_and(|re| re.is_match(value))
}

#[cfg(test)]
mod tests {
    #[test]
    fn patterns_are_unanchored_unless_they_anchor() {
        assert!(super::matches("[a-z]+", "ABc"));
        assert!(!super::matches("^[a-z]+$", "ABc"));
        assert!(!super::matches("(unclosed", "x"));
    }
}
