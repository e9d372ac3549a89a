//! The set of resources the API serves right now, and where their objects are stored.
//!
//! A [`Registry`] is immutable; the API server swaps in a new one when a CRD is created,
//! changed or deleted, so a request sees one consistent set of resources from start to end.

use std::collections::HashMap;
use std::sync::Arc;

use crate::resources::{ResourceDef, builtin_resources};

/// Resources by group, version and plural name.
#[derive(Clone, Debug)]
pub struct Registry {
    resources: Vec<Arc<ResourceDef>>,
    by_path: HashMap<(String, String, String), usize>,
}

impl Registry {
    /// The built-in resources only.
    pub fn builtin() -> Self {
        Self::from_defs(builtin_resources())
    }

    /// A registry of these definitions, in this order.
    pub fn from_defs(defs: Vec<ResourceDef>) -> Self {
        let resources: Vec<Arc<ResourceDef>> = defs.into_iter().map(Arc::new).collect();
        let by_path = resources
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.group.clone(), r.version.clone(), r.plural.clone()), i))
            .collect();
        Registry { resources, by_path }
    }

    /// The built-ins plus the given custom resources (built-ins win on a clash).
    pub fn with_custom(custom: Vec<ResourceDef>) -> Self {
        let mut defs = builtin_resources();
        for def in custom {
            let clash = defs.iter().any(|d| {
                d.group == def.group && d.version == def.version && d.plural == def.plural
            });
            if !clash {
                defs.push(def);
            }
        }
        Self::from_defs(defs)
    }

    /// The resource served at `group/version/plural`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<ResourceDef>> {
        self.by_path
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
            .map(|&i| &self.resources[i])
    }

    /// The resource whose objects have this apiVersion and kind.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&Arc<ResourceDef>> {
        let (group, version) = split_api_version(api_version);
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind && r.stored)
    }

    /// Every resource, in discovery order.
    pub fn resources(&self) -> &[Arc<ResourceDef>] {
        &self.resources
    }

    /// The API groups with their versions, core (`""`) first, then in order of appearance.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for r in &self.resources {
            match groups.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) => {
                    if !versions.contains(&r.version) {
                        versions.push(r.version.clone());
                    }
                }
                None => groups.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        groups.sort_by_key(|(g, _)| !g.is_empty());
        for (_, versions) in &mut groups {
            versions.sort_by_key(|v| version_priority(v));
        }
        groups
    }

    /// The resources of one group version.
    pub fn group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a Arc<ResourceDef>> + 'a {
        self.resources
            .iter()
            .filter(move |r| r.group == group && r.version == version)
    }
}

/// Splits `apps/v1` into `("apps", "v1")` and `v1` into `("", "v1")`.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

/// The sort key of Kubernetes' version priority, first = preferred: GA before beta before
/// alpha, higher numbers first (`v2`, `v1`, `v1beta2`, `v1beta1`, `v1alpha1`), then names
/// that are not Kubernetes versions, alphabetically.
fn version_priority(version: &str) -> (u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, String) {
    use std::cmp::Reverse;
    let parsed = version.strip_prefix('v').and_then(|rest| {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major: u64 = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        if tail.is_empty() {
            return Some((0, major, 0));
        }
        let (level, minor) = if let Some(m) = tail.strip_prefix("beta") {
            (1, m)
        } else {
            (2, tail.strip_prefix("alpha")?)
        };
        Some((level, major, minor.parse().ok()?))
    });
    match parsed {
        Some((level, major, minor)) => (level, Reverse(major), Reverse(minor), String::new()),
        None => (3, Reverse(0), Reverse(0), version.to_owned()),
    }
}

/// The storage key of an object: `<group>/<plural>/<namespace>/<name>`, or
/// `<group>/<plural>/<name>` when cluster-scoped, with `core` for the empty group. The
/// version is not part of it, so every version of a resource shares its objects.
pub fn object_key(def: &ResourceDef, namespace: Option<&str>, name: &str) -> String {
    let mut key = collection_prefix(def, namespace);
    key.push_str(name);
    key
}

/// The key prefix of a collection: all namespaces when `namespace` is `None`.
pub fn collection_prefix(def: &ResourceDef, namespace: Option<&str>) -> String {
    let (group, plural) = crate::convert::storage_of(def).unwrap_or((&def.group, &def.plural));
    let group = if group.is_empty() { "core" } else { group };
    match namespace {
        Some(ns) if def.namespaced => format!("{group}/{plural}/{ns}/"),
        _ => format!("{group}/{plural}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_namespaces_under_the_resource() {
        let reg = Registry::builtin();
        let pods = reg.get("", "v1", "pods").unwrap();
        assert_eq!(
            object_key(pods, Some("default"), "web"),
            "core/pods/default/web"
        );
        assert_eq!(collection_prefix(pods, None), "core/pods/");
        let nodes = reg.get("", "v1", "nodes").unwrap();
        assert_eq!(object_key(nodes, None, "n1"), "core/nodes/n1");
        let deploy = reg.by_kind("apps/v1", "Deployment").unwrap();
        assert_eq!(collection_prefix(deploy, Some("a")), "apps/deployments/a/");
        let events = reg.get("events.k8s.io", "v1", "events").unwrap();
        assert_eq!(
            collection_prefix(events, Some("a")),
            "core/events/a/",
            "shares core events"
        );
    }

    #[test]
    fn versions_sort_by_kubernetes_priority() {
        let mut versions = [
            "v1alpha1", "foo", "v1", "v2beta1", "v1beta2", "v2", "v1beta1", "v10",
        ];
        versions.sort_by_key(|v| version_priority(v));
        assert_eq!(
            versions,
            [
                "v10", "v2", "v1", "v2beta1", "v1beta2", "v1beta1", "v1alpha1", "foo"
            ]
        );
    }

    #[test]
    fn groups_list_core_first() {
        let groups = Registry::builtin().groups();
        assert_eq!(groups[0], ("".to_owned(), vec!["v1".to_owned()]));
        assert!(groups.iter().any(|(g, v)| g == "apps" && v == &["v1"]));
    }
}
