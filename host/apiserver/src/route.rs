//! Request routing: what a path names, following kube-apiserver's RequestInfo rules.

/// A resource request's path, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePath {
    /// API group (`""` for `/api`).
    pub group: String,
    /// API version.
    pub version: String,
    /// Namespace from the path, if any.
    pub namespace: Option<String>,
    /// Plural resource name.
    pub resource: String,
    /// Object name, if the path names one.
    pub name: Option<String>,
    /// Subresource, if any.
    pub subresource: Option<String>,
    /// Whether the legacy `/watch/` path prefix was used.
    pub watch_prefix: bool,
}

/// What a request path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/version`.
    Version,
    /// `/healthz`, `/livez`, `/readyz` (and their sub-checks).
    Health,
    /// `/metrics`.
    Metrics,
    /// `/api`.
    Api,
    /// `/apis`.
    Apis,
    /// `/api/v1` or `/apis/<group>/<version>`: a legacy resource list.
    GroupVersion {
        /// The group.
        group: String,
        /// The version.
        version: String,
    },
    /// `/apis/<group>`.
    Group(String),
    /// `/openapi/v2`.
    OpenApiV2,
    /// `/openapi/v3`.
    OpenApiIndex,
    /// `/openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`.
    OpenApiDoc {
        /// The group.
        group: String,
        /// The version.
        version: String,
    },
    /// A resource, collection or subresource.
    Resource(ResourcePath),
    /// Nothing we serve.
    NotFound,
}

/// Parses a request path.
pub fn parse(path: &str) -> Route {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segments.as_slice() {
        ["version"] => Route::Version,
        [h, ..] if matches!(*h, "healthz" | "livez" | "readyz") => Route::Health,
        ["metrics"] => Route::Metrics,
        ["api"] => Route::Api,
        ["apis"] => Route::Apis,
        ["api", version] => Route::GroupVersion {
            group: String::new(),
            version: (*version).to_owned(),
        },
        ["apis", group] => Route::Group((*group).to_owned()),
        ["apis", group, version] => Route::GroupVersion {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
        },
        ["openapi", "v2"] => Route::OpenApiV2,
        ["openapi", "v3"] => Route::OpenApiIndex,
        ["openapi", "v3", "api", version] => Route::OpenApiDoc {
            group: String::new(),
            version: (*version).to_owned(),
        },
        ["openapi", "v3", "apis", group, version] => Route::OpenApiDoc {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
        },
        ["api", version, rest @ ..] => resource(String::new(), version, rest),
        ["apis", group, version, rest @ ..] => resource((*group).to_owned(), version, rest),
        _ => Route::NotFound,
    }
}

/// Subresources of a namespace, which are not namespaced resources.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

fn resource(group: String, version: &str, rest: &[&str]) -> Route {
    let mut parts = rest;
    let mut watch_prefix = false;
    if parts.first() == Some(&"watch") {
        watch_prefix = true;
        parts = &parts[1..];
    }
    let mut namespace = None;
    if parts.first() == Some(&"namespaces")
        && parts.len() > 2
        && !NAMESPACE_SUBRESOURCES.contains(&parts[2])
    {
        namespace = Some(parts[1].to_owned());
        parts = &parts[2..];
    }
    let (resource, name, subresource) = match parts {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(*n), None),
        [r, n, s] => (*r, Some(*n), Some(*s)),
        _ => return Route::NotFound,
    };
    Route::Resource(ResourcePath {
        group,
        version: version.to_owned(),
        namespace,
        resource: resource.to_owned(),
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
        watch_prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> ResourcePath {
        match parse(path) {
            Route::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn parses_kubernetes_paths() {
        let r = res("/api/v1/namespaces/acc/pods/web/status");
        assert_eq!(r.namespace.as_deref(), Some("acc"));
        assert_eq!(
            (
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("pods", Some("web"), Some("status"))
        );
        let r = res("/api/v1/namespaces/acc");
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref(), r.namespace),
            ("namespaces", Some("acc"), None)
        );
        let r = res("/api/v1/namespaces/acc/finalize");
        assert_eq!(
            (r.name.as_deref(), r.subresource.as_deref()),
            (Some("acc"), Some("finalize"))
        );
        let r = res("/api/v1/namespaces");
        assert_eq!((r.resource.as_str(), r.name), ("namespaces", None));
        let r = res("/apis/apps/v1/deployments");
        assert_eq!((r.group.as_str(), r.namespace), ("apps", None));
        let r = res("/api/v1/watch/namespaces/a/pods");
        assert!(r.watch_prefix);
        assert_eq!(
            parse("/apis/apps/v1"),
            Route::GroupVersion {
                group: "apps".into(),
                version: "v1".into()
            }
        );
        assert_eq!(
            parse("/openapi/v3/apis/apps/v1"),
            Route::OpenApiDoc {
                group: "apps".into(),
                version: "v1".into()
            }
        );
        assert_eq!(parse("/readyz/ping"), Route::Health);
        assert_eq!(parse("/nope"), Route::NotFound);
        assert_eq!(parse("/api/v1/a/b/c/d"), Route::NotFound);
    }
}
