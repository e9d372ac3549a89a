//! `/version` and API discovery: aggregated (`apidiscovery.k8s.io/v2`, what kubectl asks for
//! first) and legacy (`APIVersions`, `APIGroupList`, `APIResourceList`, which some commands
//! still request directly).

use ::http::{HeaderMap, Response, StatusCode};
use serde_json::{Value, json};
use skiff_core::resources::{ResourceDef, Subresource};
use skiff_core::status::ApiError;

use crate::ApiServer;
use crate::http::{self, Body};

/// The Kubernetes version skiff speaks. kubectl here is a dispatcher that runs the kubectl
/// whose minor version matches the server's, so this must say 1.32.
pub const GIT_VERSION: &str = "v1.32.4";

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": concat!("skiff-", env!("CARGO_PKG_VERSION")),
        "gitTreeState": "clean",
        "buildDate": "2026-11-22T00:00:00Z",
        "goVersion": "go1.23.6",
        "compiler": "gc",
        "platform": format!("linux/{}", arch()),
    })
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The kind and verbs a subresource answers with.
fn subresource_kind(def: &ResourceDef, sub: &Subresource) -> (Value, &'static [&'static str]) {
    let own = json!({"group": def.group, "version": def.version, "kind": def.kind});
    match sub {
        Subresource::Status => (own, &["get", "patch", "update"]),
        Subresource::Scale(_) => (
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
            &["get", "patch", "update"],
        ),
        Subresource::Binding => (
            json!({"group": "", "version": "v1", "kind": "Binding"}),
            &["create"],
        ),
        Subresource::Eviction => (
            json!({"group": "policy", "version": "v1", "kind": "Eviction"}),
            &["create"],
        ),
        Subresource::Finalize => (own, &["update"]),
        Subresource::Log => (own, &["get"]),
        Subresource::Exec => (
            json!({"group": "", "version": "v1", "kind": "PodExecOptions"}),
            &["create", "get"],
        ),
        Subresource::PortForward => (
            json!({"group": "", "version": "v1", "kind": "PodPortForwardOptions"}),
            &["create", "get"],
        ),
        Subresource::Attach => (
            json!({"group": "", "version": "v1", "kind": "PodAttachOptions"}),
            &["create", "get"],
        ),
        Subresource::Approval => (own, &["get", "patch", "update"]),
    }
}

fn aggregated_resource(def: &ResourceDef) -> Value {
    let subresources: Vec<Value> = def
        .subresources
        .iter()
        .map(|s| {
            let (kind, verbs) = subresource_kind(def, s);
            json!({"subresource": s.name(), "responseKind": kind, "verbs": verbs})
        })
        .collect();
    let mut r = json!({
        "resource": def.plural,
        "responseKind": {"group": def.group, "version": def.version, "kind": def.kind},
        "scope": if def.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": def.singular,
        "verbs": def.verbs,
    });
    if !def.short_names.is_empty() {
        r["shortNames"] = json!(def.short_names);
    }
    if !def.categories.is_empty() {
        r["categories"] = json!(def.categories);
    }
    if !subresources.is_empty() {
        r["subresources"] = Value::Array(subresources);
    }
    r
}

fn aggregated_group(server: &ApiServer, group: &str, versions: &[String]) -> Value {
    let registry = server.registry();
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = registry
                .group_version(group, v)
                .map(|d| aggregated_resource(d))
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
}

fn aggregated(items: Vec<Value>) -> Response<Body> {
    let doc = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    });
    let mut resp = http::json(StatusCode::OK, &doc);
    resp.headers_mut().insert(
        ::http::header::CONTENT_TYPE,
        ::http::HeaderValue::from_static(http::DISCOVERY_V2),
    );
    resp
}

/// `GET /api`.
pub fn api(server: &ApiServer, headers: &HeaderMap) -> Response<Body> {
    if http::wants_aggregated_discovery(headers) {
        return aggregated(vec![aggregated_group(server, "", &["v1".to_owned()])]);
    }
    http::json(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{
                "clientCIDR": "0.0.0.0/0",
                "serverAddress": server.config.advertise_address.to_string(),
            }],
        }),
    )
}

fn api_group(group: &str, versions: &[String]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": gvs,
        "preferredVersion": gvs.first().cloned().unwrap_or(Value::Null),
    })
}

/// `GET /apis`.
pub fn apis(server: &ApiServer, headers: &HeaderMap) -> Response<Body> {
    let groups: Vec<(String, Vec<String>)> = server
        .registry()
        .groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .collect();
    if http::wants_aggregated_discovery(headers) {
        let items = groups
            .iter()
            .map(|(g, vs)| aggregated_group(server, g, vs))
            .collect();
        return aggregated(items);
    }
    let groups: Vec<Value> = groups.iter().map(|(g, vs)| api_group(g, vs)).collect();
    http::json(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

/// `GET /apis/<group>`.
pub fn group(server: &ApiServer, group: &str) -> Result<Response<Body>, ApiError> {
    let (_, versions) = server
        .registry()
        .groups()
        .into_iter()
        .find(|(g, _)| g == group && !g.is_empty())
        .ok_or_else(ApiError::no_route)?;
    let mut doc = api_group(group, &versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Ok(http::json(StatusCode::OK, &doc))
}

/// `GET /api/v1`, `GET /apis/<group>/<version>`: the legacy resource list.
pub fn group_version(
    server: &ApiServer,
    group: &str,
    version: &str,
) -> Result<Response<Body>, ApiError> {
    let registry = server.registry();
    let defs: Vec<_> = registry.group_version(group, version).collect();
    if defs.is_empty() {
        return Err(ApiError::no_route());
    }
    let mut resources = Vec::new();
    for def in defs {
        let mut r = json!({
            "name": def.plural,
            "singularName": def.singular,
            "namespaced": def.namespaced,
            "kind": def.kind,
            "verbs": def.verbs,
        });
        if !def.short_names.is_empty() {
            r["shortNames"] = json!(def.short_names);
        }
        if !def.categories.is_empty() {
            r["categories"] = json!(def.categories);
        }
        resources.push(r);
        for sub in &def.subresources {
            let (kind, verbs) = subresource_kind(def, sub);
            let mut s = json!({
                "name": format!("{}/{}", def.plural, sub.name()),
                "singularName": "",
                "namespaced": def.namespaced,
                "kind": kind["kind"],
                "verbs": verbs,
            });
            if kind["group"] != json!(def.group) || kind["version"] != json!(def.version) {
                s["group"] = kind["group"].clone();
                s["version"] = kind["version"].clone();
            }
            resources.push(s);
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Ok(http::json(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }),
    ))
}
