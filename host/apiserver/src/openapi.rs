//! `/openapi/v3`: an index of per-group-version OpenAPI 3 documents, generated from the
//! built-in schemas and the CRDs' schemas.
//!
//! kubectl needs these for `create`, `apply`, `edit` (it checks that each kind's PATCH
//! operation declares `fieldValidation`, then sends `fieldValidation=Strict` and leaves
//! validation to the server) and for `explain` (real component schemas, found by their
//! `x-kubernetes-group-version-kind`). Documents are built on first request and cached
//! until the set of resources changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use ::http::header::{CACHE_CONTROL, ETAG};
use ::http::{HeaderValue, Response, StatusCode};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};
use skiff_core::registry::Registry;
use skiff_core::resources::{ResourceDef, SchemaSource, Subresource};
use skiff_core::schema::Schemas;
use skiff_core::status::ApiError;

use crate::ApiServer;
use crate::discovery::GIT_VERSION;
use crate::http::{self, Body};

/// The documents built for one registry, by group-version path.
type Built = (Arc<Registry>, HashMap<String, Arc<Document>>);

/// Built documents for one registry.
#[derive(Default)]
pub(crate) struct Cache {
    /// A std Mutex: held while looking up or storing, and while building (building is
    /// CPU-only, and concurrent first requests would only build the same thing twice).
    inner: Mutex<Option<Built>>,
}

struct Document {
    body: Bytes,
    hash: String,
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

impl ApiServer {
    fn openapi_documents(&self) -> HashMap<String, Arc<Document>> {
        let registry = self.registry();
        let mut cache = self.openapi.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_for, docs)) = cache.as_ref()
            && Arc::ptr_eq(built_for, &registry)
        {
            return docs.clone();
        }
        let schemas = self.schemas();
        let mut docs = HashMap::new();
        for (group, versions) in registry.groups() {
            for version in versions {
                let defs: Vec<&Arc<ResourceDef>> =
                    registry.group_version(&group, &version).collect();
                let doc = build(schemas, &defs, &group, &version);
                let body = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
                let hash = hex_upper(&Sha512::digest(&body));
                docs.insert(gv_path(&group, &version), Arc::new(Document { body, hash }));
            }
        }
        *cache = Some((registry, docs.clone()));
        docs
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// `GET /openapi/v3`.
pub fn index(server: &ApiServer) -> Response<Body> {
    let docs = server.openapi_documents();
    let paths: BTreeMap<&String, Value> = docs
        .iter()
        .map(|(path, doc)| {
            (
                path,
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", doc.hash)}),
            )
        })
        .collect();
    http::json(StatusCode::OK, &json!({"paths": paths}))
}

/// `GET /openapi/v3/<api/v1 | apis/group/version>`.
pub fn document(
    server: &ApiServer,
    group: &str,
    version: &str,
) -> Result<Response<Body>, ApiError> {
    let docs = server.openapi_documents();
    let doc = docs
        .get(&gv_path(group, version))
        .ok_or_else(ApiError::no_route)?;
    let mut resp = http::respond(StatusCode::OK, http::JSON, doc.body.clone());
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", doc.hash)) {
        resp.headers_mut().insert(ETAG, etag);
    }
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("public, immutable"));
    Ok(resp)
}

/// `GET /openapi/v2`. kubectl only falls back to it for a group version the v3 index lacks
/// (a kind the server does not serve), and only to validate before it looks the kind up;
/// an empty document lets it get to its "no matches for kind" error, as against Kubernetes.
pub fn v2(headers: &::http::HeaderMap) -> Response<Body> {
    const PROTO: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
    let wants_proto = headers
        .get_all(::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(PROTO));
    if wants_proto {
        // gnostic openapi_v2.Document { swagger = 1; info = 2 { title = 1; version = 2 } }.
        let field = |tag: u8, bytes: &[u8]| {
            let mut out = vec![(tag << 3) | 2, bytes.len() as u8];
            out.extend_from_slice(bytes);
            out
        };
        let info = [field(1, b"Kubernetes"), field(2, GIT_VERSION.as_bytes())].concat();
        let doc = [field(1, b"2.0"), field(2, &info)].concat();
        // The real server labels the body octet-stream: Go cannot parse the request type.
        return http::respond(StatusCode::OK, "application/octet-stream", doc);
    }
    http::json(
        StatusCode::OK,
        &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": GIT_VERSION}, "paths": {}, "definitions": {}}),
    )
}

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn query_param(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": format!("{name} of the resource"), "schema": {"type": "string", "uniqueItems": true}})
}

fn write_params() -> Vec<Value> {
    vec![
        query_param(
            "dryRun",
            "string",
            "When present, indicates that modifications should not be persisted.",
        ),
        query_param(
            "fieldManager",
            "string",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        query_param(
            "fieldValidation",
            "string",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict.",
        ),
    ]
}

fn list_params() -> Vec<Value> {
    let mut params = vec![
        query_param(
            "allowWatchBookmarks",
            "boolean",
            "allowWatchBookmarks requests watch events with type \"BOOKMARK\".",
        ),
        query_param(
            "continue",
            "string",
            "The continue option should be set when retrieving more results from the server.",
        ),
        query_param(
            "fieldSelector",
            "string",
            "A selector to restrict the list of returned objects by their fields.",
        ),
        query_param(
            "labelSelector",
            "string",
            "A selector to restrict the list of returned objects by their labels.",
        ),
        query_param(
            "resourceVersion",
            "string",
            "resourceVersion sets a constraint on what resource versions a request may be served from.",
        ),
        query_param(
            "resourceVersionMatch",
            "string",
            "resourceVersionMatch determines how resourceVersion is applied to list calls.",
        ),
        query_param(
            "sendInitialEvents",
            "boolean",
            "`sendInitialEvents=true` may be set together with `watch=true`.",
        ),
        query_param(
            "timeoutSeconds",
            "integer",
            "Timeout for the list/watch call.",
        ),
        query_param(
            "watch",
            "boolean",
            "Watch for changes to the described resources.",
        ),
    ];
    params.push(
        json!({"name": "limit", "in": "query", "schema": {"type": "integer", "uniqueItems": true}}),
    );
    params
}

fn op_id(verb: &str, def: &ResourceDef, namespaced: bool, suffix: &str) -> String {
    let scope = if namespaced && def.namespaced {
        "Namespaced"
    } else {
        ""
    };
    let kind = if verb == "list" && !namespaced && def.namespaced {
        format!("{}ForAllNamespaces", def.kind)
    } else {
        def.kind.clone()
    };
    let gv = format!("{}{}", camel(&def.group), camel(&def.version));
    format!("{verb}{gv}{scope}{kind}{suffix}")
}

fn camel(s: &str) -> String {
    s.split(['.', '-'])
        .take(1)
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

fn response(schema: Value) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": schema}, "application/yaml": {"schema": schema}}})
}

fn gvk(def: &ResourceDef) -> Value {
    json!({"group": def.group, "version": def.version, "kind": def.kind})
}

fn operation(
    verb: &str,
    action: &str,
    def: &ResourceDef,
    kind_ref: &Value,
    params: Vec<Value>,
    body: Option<Value>,
    id: String,
) -> Value {
    let mut op = json!({
        "operationId": id,
        "description": format!("{verb} {}", def.kind),
        "tags": [def.api_version().replace('/', "_")],
        "parameters": params,
        "responses": {"200": response(kind_ref.clone()), "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(def),
    });
    if verb == "create" || verb == "patch" {
        op["responses"]["201"] = response(kind_ref.clone());
    }
    if let Some(body) = body {
        op["requestBody"] = body;
    }
    op
}

fn json_body(schema: &Value) -> Value {
    json!({"content": {"*/*": {"schema": schema}}, "required": true})
}

/// The PATCH body's media types. Custom resources have no strategic merge patch, and
/// kubectl's client-side apply reads this list to choose between it and a merge patch.
fn patch_body(def: &ResourceDef) -> Value {
    let patch = reference(&format!("{META}.Patch"));
    let mut content = json!({
        "application/apply-patch+yaml": {"schema": patch},
        "application/json-patch+json": {"schema": patch},
        "application/merge-patch+json": {"schema": patch},
    });
    if !matches!(def.schema, SchemaSource::Custom(_)) {
        content["application/strategic-merge-patch+json"] = json!({"schema": patch});
    }
    json!({"content": content, "required": true})
}

fn resource_paths(paths: &mut Map<String, Value>, def: &ResourceDef, kind_ref: &Value) {
    let prefix = format!("/{}", gv_path(&def.group, &def.version));
    let list_ref = reference(&format!("{META}.Status"));
    let mut patch_params = write_params();
    patch_params.push(query_param(
        "force",
        "boolean",
        "Force is going to \"force\" Apply requests.",
    ));
    if !def.stored {
        // Review-style resources: create only.
        let collection = format!("{prefix}/{}", def.plural);
        paths.insert(
            collection,
            json!({"post": operation("create", "post", def, kind_ref, write_params(), Some(json_body(kind_ref)), op_id("create", def, false, ""))}),
        );
        return;
    }
    let scopes: Vec<(String, bool)> = if def.namespaced {
        vec![
            (
                format!("{prefix}/namespaces/{{namespace}}/{}", def.plural),
                true,
            ),
            (format!("{prefix}/{}", def.plural), false),
        ]
    } else {
        vec![(format!("{prefix}/{}", def.plural), false)]
    };
    for (collection, namespaced) in scopes {
        let mut common = vec![];
        if namespaced {
            common.push(path_param("namespace"));
        }
        let mut item = Map::new();
        item.insert(
            "get".into(),
            operation(
                "list",
                "list",
                def,
                &list_ref,
                list_params(),
                None,
                op_id("list", def, namespaced, ""),
            ),
        );
        if namespaced || !def.namespaced {
            item.insert(
                "post".into(),
                operation(
                    "create",
                    "post",
                    def,
                    kind_ref,
                    write_params(),
                    Some(json_body(kind_ref)),
                    op_id("create", def, namespaced, ""),
                ),
            );
            if def.allows("deletecollection") {
                item.insert(
                    "delete".into(),
                    operation(
                        "deletecollection",
                        "deletecollection",
                        def,
                        &list_ref,
                        list_params(),
                        None,
                        op_id("deleteCollection", def, namespaced, ""),
                    ),
                );
            }
        }
        item.insert("parameters".into(), Value::Array(common.clone()));
        paths.insert(collection.clone(), Value::Object(item));
        if namespaced || !def.namespaced {
            let mut params = common.clone();
            params.insert(0, path_param("name"));
            let named = format!("{collection}/{{name}}");
            paths.insert(
                named.clone(),
                json!({
                    "parameters": params,
                    "get": operation("read", "get", def, kind_ref, vec![], None, op_id("read", def, namespaced, "")),
                    "put": operation("replace", "put", def, kind_ref, write_params(), Some(json_body(kind_ref)), op_id("replace", def, namespaced, "")),
                    "patch": operation("patch", "patch", def, kind_ref, patch_params.clone(), Some(patch_body(def)), op_id("patch", def, namespaced, "")),
                    "delete": operation("delete", "delete", def, &list_ref, vec![query_param("gracePeriodSeconds", "integer", "The duration in seconds before the object should be deleted."), query_param("propagationPolicy", "string", "Whether and how garbage collection will be performed.")], None, op_id("delete", def, namespaced, "")),
                }),
            );
            for sub in &def.subresources {
                let (sub_ref, suffix) = match sub {
                    Subresource::Status => (kind_ref.clone(), "Status"),
                    Subresource::Approval => (kind_ref.clone(), "Approval"),
                    Subresource::Scale(_) => {
                        (reference("io.k8s.api.autoscaling.v1.Scale"), "Scale")
                    }
                    _ => continue,
                };
                paths.insert(
                    format!("{named}/{}", sub.name()),
                    json!({
                        "parameters": params,
                        "get": operation("read", "get", def, &sub_ref, vec![], None, op_id("read", def, namespaced, suffix)),
                        "put": operation("replace", "put", def, &sub_ref, write_params(), Some(json_body(&sub_ref)), op_id("replace", def, namespaced, suffix)),
                        "patch": operation("patch", "patch", def, &sub_ref, patch_params.clone(), Some(patch_body(def)), op_id("patch", def, namespaced, suffix)),
                    }),
                );
            }
        }
    }
}

/// The definition name of a CRD kind: reversed group, version, kind
/// (`com.example.stable.v1.CronTab`), as kube-apiserver names them.
fn custom_name(def: &ResourceDef) -> String {
    let mut parts: Vec<&str> = def.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{}", parts.join("."), def.version, def.kind)
}

/// Builds the document of one group version.
fn build(schemas: &Schemas, defs: &[&Arc<ResourceDef>], group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    let mut custom: BTreeMap<String, Value> = BTreeMap::new();
    let mut roots: BTreeSet<String> = [
        format!("{META}.Status"),
        format!("{META}.Patch"),
        format!("{META}.DeleteOptions"),
    ]
    .into_iter()
    .collect();
    for def in defs {
        let kind_ref = match &def.schema {
            SchemaSource::Builtin(b) => {
                roots.insert(b.name.to_owned());
                reference(b.name)
            }
            SchemaSource::Custom(schema) => {
                let name = custom_name(def);
                let mut schema = (**schema).clone();
                if let Some(obj) = schema.as_object_mut() {
                    let props = obj
                        .entry("properties")
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                        .map(std::mem::take)
                        .unwrap_or_default();
                    let mut all = Map::new();
                    all.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
                    all.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
                    all.insert("metadata".into(), json!({"allOf": [reference(&format!("{META}.ObjectMeta"))], "description": "Standard object's metadata."}));
                    all.extend(props);
                    obj.insert("properties".into(), Value::Object(all));
                    obj.insert("x-kubernetes-group-version-kind".into(), json!([gvk(def)]));
                }
                roots.insert(format!("{META}.ObjectMeta"));
                custom.insert(name.clone(), schema);
                reference(&name)
            }
        };
        if def.scale().is_some() {
            roots.insert("io.k8s.api.autoscaling.v1.Scale".into());
        }
        resource_paths(&mut paths, def, &kind_ref);
    }
    // Components: everything the roots reference, transitively.
    let mut components: BTreeMap<String, Value> = BTreeMap::new();
    let mut pending: Vec<String> = roots.into_iter().collect();
    while let Some(name) = pending.pop() {
        if components.contains_key(&name) {
            continue;
        }
        let Some(schema) = schemas.get(&name) else {
            continue;
        };
        collect_refs(schema, &mut pending);
        components.insert(name, schema.clone());
    }
    components.extend(custom);
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": components},
        "x-skiff-group-version": if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") },
    })
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(r) = map.get("$ref").and_then(Value::as_str)
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                out.push(name.to_owned());
            }
            for v in map.values() {
                collect_refs(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
