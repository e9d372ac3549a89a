//! Authorization before RBAC: what the narrow identities may do.
//!
//! Until RBAC arrives every authenticated user may do everything, except two identities
//! that Kubernetes confines with its default bindings, and which must not become admins
//! here just because there are no bindings yet:
//! - anonymous clients may read the `cluster-info` ConfigMap in `kube-public` (the
//!   `system:public-info-viewer` binding), from which a joining node learns the cluster's
//!   CA and checks it against the hash its join token pins;
//! - bootstrap-token users (`system:bootstrappers`) may read discovery and create and
//!   read CertificateSigningRequests (the `system:node-bootstrapper` role), so a join
//!   token gets a node its certificate and nothing else.

use ::http::Method;
use skiff_core::status::{ApiError, Reason};

use crate::authn::{BOOTSTRAPPERS, User};
use crate::route::{ResourcePath, Route};

/// The ConfigMap in `kube-public` anonymous clients may read.
pub const CLUSTER_INFO: &str = "cluster-info";

/// Whether an anonymous request may go on: the public endpoints, and `GET` of the
/// cluster-info ConfigMap.
pub(crate) fn anonymous_may(route: &Route, method: &Method) -> bool {
    match route {
        Route::Version | Route::Health | Route::Metrics => true,
        Route::Resource(p) => {
            method == Method::GET
                && p.group.is_empty()
                && p.resource == "configmaps"
                && p.namespace.as_deref() == Some("kube-public")
                && p.name.as_deref() == Some(CLUSTER_INFO)
                && p.subresource.is_none()
                && !p.watch_prefix
        }
        _ => false,
    }
}

/// The verb of a resource request, as RBAC names it.
fn verb(path: &ResourcePath, method: &Method, watch: bool) -> &'static str {
    match (method, path.name.is_some()) {
        (&Method::GET | &Method::HEAD, _) if watch || path.watch_prefix => "watch",
        (&Method::GET | &Method::HEAD, true) => "get",
        (&Method::GET | &Method::HEAD, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

/// Refuses what a bootstrap-token user may not do, with kube-apiserver's message.
pub(crate) fn authorize(
    user: &User,
    route: &Route,
    method: &Method,
    watch: bool,
) -> Result<(), ApiError> {
    if !user.groups.iter().any(|g| g == BOOTSTRAPPERS) {
        return Ok(());
    }
    let Route::Resource(path) = route else {
        // Discovery, OpenAPI, version and health are every authenticated user's.
        return Ok(());
    };
    let verb = verb(path, method, watch);
    let allowed = path.group == "certificates.k8s.io"
        && path.resource == "certificatesigningrequests"
        && path.subresource.is_none()
        && matches!(verb, "create" | "get" | "list" | "watch");
    if allowed {
        return Ok(());
    }
    let resource = match &path.subresource {
        Some(sub) => format!("{}/{sub}", path.resource),
        None => path.resource.clone(),
    };
    let qualified = if path.group.is_empty() {
        path.resource.clone()
    } else {
        format!("{}.{}", path.resource, path.group)
    };
    let named = path
        .name
        .as_deref()
        .map(|n| format!(" \"{n}\""))
        .unwrap_or_default();
    let scope = match &path.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    Err(ApiError::new(
        Reason::Forbidden,
        format!(
            "{qualified}{named} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
            user.name, path.group
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(group: &str, resource: &str, namespace: Option<&str>, name: Option<&str>) -> Route {
        Route::Resource(ResourcePath {
            group: group.into(),
            version: "v1".into(),
            namespace: namespace.map(Into::into),
            resource: resource.into(),
            name: name.map(Into::into),
            subresource: None,
            watch_prefix: false,
        })
    }

    #[test]
    fn a_bootstrap_token_may_only_ask_for_certificates() {
        let user = User {
            name: "system:bootstrap:abcdef".into(),
            uid: String::new(),
            groups: vec![BOOTSTRAPPERS.into(), "system:authenticated".into()],
        };
        let csrs = path(
            "certificates.k8s.io",
            "certificatesigningrequests",
            None,
            None,
        );
        assert!(authorize(&user, &csrs, &Method::POST, false).is_ok());
        assert!(authorize(&user, &csrs, &Method::GET, true).is_ok());
        assert!(authorize(&user, &Route::Apis, &Method::GET, false).is_ok());
        let err = authorize(&user, &csrs, &Method::DELETE, false).unwrap_err();
        assert_eq!(err.reason, Reason::Forbidden);
        let pods = path("", "pods", Some("default"), None);
        let err = authorize(&user, &pods, &Method::GET, false).unwrap_err();
        assert_eq!(
            err.message,
            "pods is forbidden: User \"system:bootstrap:abcdef\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let admin = User {
            name: "skiff-admin".into(),
            uid: String::new(),
            groups: vec!["system:masters".into()],
        };
        assert!(authorize(&admin, &pods, &Method::DELETE, false).is_ok());
    }

    #[test]
    fn anonymous_clients_read_only_cluster_info() {
        let info = path("", "configmaps", Some("kube-public"), Some(CLUSTER_INFO));
        assert!(anonymous_may(&info, &Method::GET));
        assert!(!anonymous_may(&info, &Method::PUT));
        let other = path("", "configmaps", Some("kube-public"), Some("other"));
        assert!(!anonymous_may(&other, &Method::GET));
        assert!(anonymous_may(&Route::Version, &Method::GET));
        assert!(!anonymous_may(&Route::Apis, &Method::GET));
    }
}
