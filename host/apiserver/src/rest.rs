//! The REST verbs on resources: get, list, create, update, patch, delete, deletecollection,
//! and the subresources that are plain object views (status, finalize).

use std::sync::Arc;

use ::http::{HeaderMap, Method, Request, Response, StatusCode};
use base64::Engine;
use bytes::Bytes;
use hyper::body::Incoming;
use serde_json::{Value, json};
use skiff_core::fields::FieldSelector;
use skiff_core::labels::Selector;
use skiff_core::proto::ProtoError;
use skiff_core::registry::{Registry, collection_prefix, object_key};
use skiff_core::resources::ResourceDef;
use skiff_core::ssa;
use skiff_core::status::{ApiError, Reason, error_chain};
use skiff_store::{ListOptions, Preconditions, Stored};
use tracing::debug;

use crate::authn::User;
use crate::http::{self, Body, Output, Query};
use crate::objects::{self, FieldValidation, UpdateMode};
use crate::route::ResourcePath;
use crate::{ApiServer, patch, subresources, watch};

/// How many times a write retries after losing a race with another writer.
const MAX_RETRIES: usize = 16;

/// One resource request, resolved.
pub(crate) struct Ctx {
    pub server: Arc<ApiServer>,
    pub registry: Arc<Registry>,
    pub def: Arc<ResourceDef>,
    pub path: ResourcePath,
    pub query: Query,
    pub headers: HeaderMap,
    pub user: User,
    /// The client's side of a protocol upgrade (exec, attach, port-forward), taken by the
    /// handler that answers 101.
    pub upgrade: std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>,
}

impl Ctx {
    pub fn namespace(&self) -> Option<&str> {
        if self.def.namespaced {
            self.path.namespace.as_deref()
        } else {
            None
        }
    }

    pub fn name(&self) -> &str {
        self.path.name.as_deref().unwrap_or_default()
    }

    pub fn key(&self) -> String {
        object_key(&self.def, self.namespace(), self.name())
    }

    pub fn dry_run(&self) -> Result<bool, ApiError> {
        let mut dry = false;
        for v in self.query.all("dryRun") {
            match v {
                "All" => dry = true,
                "" => {}
                other => {
                    return Err(ApiError::bad_request(format!(
                        "dryRun: Unsupported value: {other:?}: supported values: \"All\""
                    )));
                }
            }
        }
        Ok(dry)
    }

    pub fn field_validation(&self) -> Result<FieldValidation, ApiError> {
        FieldValidation::parse(self.query.get("fieldValidation"))
    }

    pub fn not_found(&self) -> ApiError {
        objects::not_found(&self.def, self.name())
    }

    pub fn store(&self) -> &dyn skiff_store::Storage {
        self.server.store.as_ref()
    }

    /// Whether the resource is stored in another form (events.k8s.io Events, the other
    /// versions of a custom resource).
    pub fn converts(&self) -> bool {
        skiff_core::convert::converts(&self.def)
    }

    /// A stored object in this resource's form.
    pub fn value(&self, stored: &Stored) -> Result<Value, ApiError> {
        let value = to_value(stored)?;
        Ok(if self.converts() {
            skiff_core::convert::from_storage(&self.def, value)
        } else {
            value
        })
    }

    /// An object in its stored form.
    pub fn to_storage(&self, obj: Value) -> Value {
        skiff_core::convert::to_storage(&self.def, obj)
    }

    /// A response carrying a stored object, converted if the resource needs it.
    pub fn respond(&self, status: StatusCode, stored: &Stored) -> Result<Response<Body>, ApiError> {
        if self.converts() {
            Ok(http::json(status, &self.value(stored)?))
        } else {
            Ok(stored_response(status, stored))
        }
    }

    /// The field manager of a write: `fieldManager`, else the User-Agent's product name
    /// (`kubectl` for `kubectl/v1.32.4 (linux/amd64) …`), as Kubernetes defaults it.
    pub fn field_manager(&self) -> String {
        if let Some(m) = self.query.get("fieldManager").filter(|m| !m.is_empty()) {
            return m.to_owned();
        }
        self.headers
            .get(::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|m| !m.is_empty())
            .unwrap_or("unknown")
            .chars()
            .take(128)
            .collect()
    }

    /// A context for the server's own writes (built-in objects).
    pub fn internal(
        server: &Arc<ApiServer>,
        group: &str,
        version: &str,
        plural: &str,
        namespace: Option<&str>,
    ) -> Ctx {
        let registry = server.registry();
        let def = registry
            .get(group, version, plural)
            .expect("a built-in resource")
            .clone();
        let mut headers = HeaderMap::new();
        headers.insert(
            ::http::header::USER_AGENT,
            ::http::HeaderValue::from_static("skiff-apiserver"),
        );
        Ctx {
            server: server.clone(),
            registry,
            def,
            path: ResourcePath {
                group: group.to_owned(),
                version: version.to_owned(),
                namespace: namespace.map(str::to_owned),
                resource: plural.to_owned(),
                name: None,
                subresource: None,
                watch_prefix: false,
            },
            query: Query::default(),
            headers,
            user: User {
                name: "system:apiserver".into(),
                uid: String::new(),
                groups: vec!["system:masters".into()],
            },
            upgrade: std::sync::Mutex::new(None),
        }
    }

    fn writer<'a>(
        &self,
        manager: &'a str,
        api_version: &'a str,
        mode: UpdateMode,
        now: &'a str,
    ) -> ssa::Writer<'a> {
        ssa::Writer {
            manager,
            api_version,
            subresource: mode.subresource(),
            now,
        }
    }
}

/// How a write records field ownership.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Track<'a> {
    /// An ordinary write by this manager.
    Update(&'a str),
    /// Server-side apply already recorded it.
    Applied,
}

/// Routes a resource request to its handler.
pub(crate) async fn handle(
    server: &Arc<ApiServer>,
    req: Request<Incoming>,
    path: ResourcePath,
    user: User,
) -> Result<Response<Body>, ApiError> {
    let registry = server.registry();
    let def = registry
        .get(&path.group, &path.version, &path.resource)
        .cloned()
        .ok_or_else(ApiError::no_route)?;
    let deprecation = def.deprecation_warning.clone();
    let mut resp = dispatch(server, req, path, user, registry, def).await?;
    if let Some(warning) = deprecation {
        warning_headers(&mut resp, &[warning]);
    }
    Ok(resp)
}

async fn dispatch(
    server: &Arc<ApiServer>,
    req: Request<Incoming>,
    path: ResourcePath,
    user: User,
    registry: Arc<Registry>,
    def: Arc<ResourceDef>,
) -> Result<Response<Body>, ApiError> {
    if path.namespace.is_some() && !def.namespaced {
        return Err(ApiError::no_route());
    }
    let mut req = req;
    let upgrade = req
        .headers()
        .contains_key(::http::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let ctx = Ctx {
        server: server.clone(),
        registry,
        def,
        query: Query::parse(parts.uri.query()),
        headers: parts.headers,
        path,
        user,
        upgrade: std::sync::Mutex::new(upgrade),
    };
    let method = parts.method;
    let sub = ctx.path.subresource.clone();
    if let Some(sub) = &sub
        && ctx.def.subresource(sub).is_none()
    {
        return Err(ApiError::no_route());
    }
    let has_name = ctx.path.name.is_some();
    // A namespaced object is only addressable inside a namespace.
    if has_name && ctx.def.namespaced && ctx.path.namespace.is_none() {
        return Err(ApiError::no_route());
    }
    let read = |limit| http::read_body(body, limit);
    let limit = server.config.max_body_bytes;
    if ctx.def.group == "metrics.k8s.io" {
        return crate::usage::serve(&ctx, &method, has_name).await;
    }
    if !ctx.def.stored {
        return match (&method, has_name) {
            (&Method::POST, false) => crate::reviews::create(&ctx, read(limit).await?).await,
            _ => Err(ApiError::method_not_allowed(
                method.as_str(),
                &ctx.def.plural,
            )),
        };
    }
    let verb_allowed = |verb: &str| {
        if ctx.def.allows(verb) {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed(verb, &ctx.def.plural))
        }
    };
    match (&method, has_name, sub.as_deref()) {
        (&Method::GET, false, None) => {
            if ctx.query.flag("watch") || ctx.path.watch_prefix {
                verb_allowed("watch")?;
                watch::serve(ctx).await
            } else {
                verb_allowed("list")?;
                list(&ctx).await
            }
        }
        (&Method::GET, true, None | Some("status" | "finalize" | "approval")) => {
            if ctx.path.watch_prefix {
                return watch::serve_one(ctx).await;
            }
            get(&ctx).await
        }
        (&Method::GET, true, Some("scale")) => subresources::get_scale(&ctx).await,
        (&Method::GET, true, Some("log")) => crate::proxy::pod_log(&ctx).await,
        (&Method::GET | &Method::POST, true, Some("exec")) => crate::proxy::pod_exec(&ctx).await,
        (&Method::GET | &Method::POST, true, Some("attach")) => {
            crate::proxy::pod_attach(&ctx).await
        }
        (&Method::GET | &Method::POST, true, Some("portforward")) => {
            crate::proxy::pod_port_forward(&ctx).await
        }
        (&Method::POST, false, None) => {
            verb_allowed("create")?;
            create(&ctx, read(limit).await?).await
        }
        (&Method::POST, true, Some("binding")) => {
            subresources::bind(&ctx, read(limit).await?).await
        }
        (&Method::POST, true, Some("eviction")) => {
            subresources::evict(&ctx, read(limit).await?).await
        }
        (&Method::PUT, true, Some("scale")) => {
            subresources::update_scale(&ctx, read(limit).await?).await
        }
        (&Method::PUT, true, mode) => {
            let mode = update_mode(mode)?;
            update(&ctx, read(limit).await?, mode).await
        }
        (&Method::PATCH, true, Some("scale")) => {
            subresources::patch_scale(&ctx, read(limit).await?).await
        }
        (&Method::PATCH, true, mode) => {
            let mode = update_mode(mode)?;
            patch::patch(&ctx, read(limit).await?, mode).await
        }
        (&Method::DELETE, true, None) => {
            verb_allowed("delete")?;
            delete(&ctx, read(limit).await?).await
        }
        (&Method::DELETE, false, None) => {
            verb_allowed("deletecollection")?;
            delete_collection(&ctx, read(limit).await?).await
        }
        _ => Err(ApiError::method_not_allowed(
            method.as_str(),
            &ctx.def.plural,
        )),
    }
}

fn update_mode(sub: Option<&str>) -> Result<UpdateMode, ApiError> {
    match sub {
        None => Ok(UpdateMode::Main),
        Some("status") => Ok(UpdateMode::Status),
        Some("finalize") => Ok(UpdateMode::Finalize),
        Some("approval") => Ok(UpdateMode::Approval),
        Some(_) => Err(ApiError::no_route()),
    }
}

/// Decodes a request body: JSON, YAML or Kubernetes protobuf.
pub(crate) fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let media = http::content_type(headers);
    let value = match media.as_str() {
        "application/json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/json-patch+json" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request could not be decoded as JSON: {e}"
            ))
        })?,
        "application/yaml" | "application/apply-patch+yaml" => decode_yaml(body)?,
        "application/vnd.kubernetes.protobuf" => {
            skiff_core::proto::decode_envelope(body).map_err(|e| match e {
                // As for a custom resource in Kubernetes: the client must fall back to JSON.
                ProtoError::UnknownKind { .. } => {
                    ApiError::new(Reason::UnsupportedMediaType, e.to_string())
                }
                _ => ApiError::bad_request(format!(
                    "the body of the request could not be decoded as protobuf: {}",
                    error_chain(&e)
                )),
            })?
        }
        other => {
            return Err(ApiError::new(
                Reason::UnsupportedMediaType,
                format!(
                    "the body of the request was in an unknown format ({other}) - accepted media types include: \
                     application/json, application/yaml, application/vnd.kubernetes.protobuf"
                ),
            ));
        }
    };
    Ok(value)
}

/// Parses YAML (or JSON, which is YAML) into JSON values.
pub(crate) fn decode_yaml(body: &[u8]) -> Result<Value, ApiError> {
    let yaml: serde_yaml::Value = serde_yaml::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as YAML: {e}"
        ))
    })?;
    serde_json::to_value(yaml)
        .map_err(|e| ApiError::bad_request(format!("the YAML body does not map to JSON: {e}")))
}

/// Checks a body's apiVersion and kind against the resource, filling them in if absent.
pub(crate) fn check_type(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    };
    let api_version = def.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("apiVersion".into(), api_version.clone().into());
        }
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("kind".into(), def.kind.clone().into());
        }
        Some(k) if k == def.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                def.kind
            )));
        }
    }
    if !map.get("metadata").is_none_or(Value::is_object) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(())
}

/// Checks the body's namespace against the URL's, filling it in if absent.
fn check_namespace(ctx: &Ctx, obj: &mut Value) -> Result<(), ApiError> {
    let meta = objects::child(obj.as_object_mut().expect("checked"), "metadata");
    if let Some(url_ns) = ctx.namespace() {
        match meta.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("namespace".into(), url_ns.into());
            }
            Some(ns) if ns == url_ns => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    } else {
        meta.remove("namespace");
    }
    Ok(())
}

/// Fails unless the request's namespace exists and is not being deleted; `name` is the
/// object being created, for the message.
pub(crate) async fn require_namespace(ctx: &Ctx, name: &str) -> Result<(), ApiError> {
    let Some(ns) = ctx.namespace() else {
        return Ok(());
    };
    let ns_def = ctx
        .registry
        .get("", "v1", "namespaces")
        .expect("namespaces are built in");
    let stored = ctx
        .store()
        .get(&object_key(ns_def, None, ns))
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("", "namespaces", ns))?;
    let value = to_value(&stored)?;
    if value.pointer("/metadata/deletionTimestamp").is_some()
        || value.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
    {
        return Err(objects::namespace_terminating(&ctx.def, name, ns));
    }
    Ok(())
}

/// The stored PriorityClasses marked `globalDefault` (`def` is the priorityclasses resource).
async fn global_default_classes(ctx: &Ctx, def: &ResourceDef) -> Result<Vec<Value>, ApiError> {
    let all = ctx
        .store()
        .list(ListOptions {
            prefix: collection_prefix(def, None),
            ..Default::default()
        })
        .await
        .map_err(store_error)?;
    let mut defaults = Vec::new();
    for stored in &all.items {
        let class = to_value(stored)?;
        if class["globalDefault"] == true {
            defaults.push(class);
        }
    }
    Ok(defaults)
}

/// The Priority admission plugin for PriorityClasses: only one may be `globalDefault`.
pub(crate) async fn admit_priority_class(ctx: &Ctx, obj: &Value) -> Result<(), ApiError> {
    if obj["globalDefault"] != true {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    for class in global_default_classes(ctx, &ctx.def).await? {
        let other = class["metadata"]["name"].as_str().unwrap_or_default();
        if other != name {
            return Err(ApiError::forbidden(
                "scheduling.k8s.io",
                "priorityclasses",
                name,
                &format!(
                    "PriorityClass {other} is already marked as default. Only one default can exist"
                ),
            ));
        }
    }
    Ok(())
}

fn is_priority_class(ctx: &Ctx) -> bool {
    ctx.def.group == "scheduling.k8s.io" && ctx.def.plural == "priorityclasses"
}

/// The Priority admission plugin: a new pod's `priorityClassName`, or else the class marked
/// `globalDefault` (the lowest-valued if several are), sets `spec.priority` and
/// `spec.preemptionPolicy`; an unknown class, or a pod spelling out different values, is
/// refused with 403 as Kubernetes does.
pub(crate) async fn admit_priority(ctx: &Ctx, obj: &mut Value) -> Result<(), ApiError> {
    let def = ctx
        .registry
        .get("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("priority classes are built in")
        .clone();
    let name = obj
        .pointer("/metadata/name")
        .or_else(|| obj.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let forbidden = |why: String| ApiError::forbidden("", "pods", &name, &why);
    let requested = spec
        .get("priorityClassName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let class = match &requested {
        Some(class) => {
            let stored = ctx
                .store()
                .get(&object_key(&def, None, class))
                .await
                .map_err(store_error)?
                .ok_or_else(|| {
                    forbidden(format!("no PriorityClass with name {class} was found"))
                })?;
            Some(to_value(&stored)?)
        }
        None => global_default_classes(ctx, &def)
            .await?
            .into_iter()
            .min_by_key(|c| c["value"].as_i64().unwrap_or(0)),
    };
    let Some(class) = class else {
        return Ok(());
    };
    let value = class["value"].as_i64().unwrap_or(0);
    let policy = class["preemptionPolicy"]
        .as_str()
        .unwrap_or("PreemptLowerPriority")
        .to_owned();
    if let Some(given) = spec.get("priority").and_then(Value::as_i64)
        && given != value
    {
        return Err(forbidden(format!(
            "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
        )));
    }
    if let Some(given) = spec.get("preemptionPolicy").and_then(Value::as_str)
        && given != policy
    {
        return Err(forbidden(format!(
            "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
        )));
    }
    spec.insert(
        "priorityClassName".into(),
        class["metadata"]["name"].clone(),
    );
    spec.insert("priority".into(), json!(value));
    spec.insert("preemptionPolicy".into(), json!(policy));
    Ok(())
}

pub(crate) fn to_value(stored: &Stored) -> Result<Value, ApiError> {
    stored
        .to_value()
        .map_err(|_| ApiError::internal(format!("stored object {} is corrupt", stored.key)))
}

/// The single place store errors become API errors.
pub(crate) fn store_error(err: skiff_store::Error) -> ApiError {
    use skiff_store::Error as E;
    match err {
        E::NotFound { key } => ApiError::new(Reason::NotFound, format!("{key} not found")),
        E::AlreadyExists { key } => {
            ApiError::new(Reason::AlreadyExists, format!("{key} already exists"))
        }
        E::RevisionMismatch { .. } => ApiError::new(Reason::Conflict, ApiError::STALE),
        E::UidMismatch {
            expected, actual, ..
        } => ApiError::new(
            Reason::Conflict,
            format!(
                "Precondition failed: UID in precondition: {expected}, UID in object meta: {actual}"
            ),
        ),
        E::Compacted {
            requested,
            compacted,
        } => ApiError::expired(format!(
            "too old resource version: {requested} ({compacted})"
        )),
        E::FutureRevision { requested, current } => {
            let mut e = ApiError::new(
                Reason::Timeout,
                format!("Too large resource version: {requested}, current: {current}"),
            );
            e.details.retry_after_seconds = Some(1);
            // client-go's reflector looks for this cause to relist instead of retrying.
            e.details.causes.push(skiff_core::status::Cause {
                reason: "ResourceVersionTooLarge".into(),
                message: "Too large resource version".into(),
                field: String::new(),
            });
            e
        }
        E::Closed => ApiError::new(Reason::InternalError, "the server is shutting down"),
        other => ApiError::internal(error_chain(&other)),
    }
}

/// A JSON response from stored bytes.
pub(crate) fn stored_response(status: StatusCode, stored: &Stored) -> Response<Body> {
    http::respond(status, http::JSON, stored.data.clone())
}

/// `GET` one object (also `/status`).
async fn get(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let stored = ctx
        .store()
        .get(&ctx.key())
        .await
        .map_err(store_error)?
        .ok_or_else(|| ctx.not_found())?;
    match http::negotiate(&ctx.headers)? {
        Output::Json => ctx.respond(StatusCode::OK, &stored),
        Output::Metadata => Ok(http::json(
            StatusCode::OK,
            &http::partial_metadata(&ctx.value(&stored)?),
        )),
        Output::Table => {
            let value = ctx.value(&stored)?;
            let table = skiff_core::table::to_table(
                &ctx.def,
                std::slice::from_ref(&value),
                jiff::Timestamp::now(),
                include_object(&ctx.query)?,
                Some(&stored.revision.to_string()),
                None,
            );
            Ok(http::json(StatusCode::OK, &table))
        }
    }
}

pub(crate) fn include_object(query: &Query) -> Result<skiff_core::table::IncludeObject, ApiError> {
    use skiff_core::table::IncludeObject;
    match query.get("includeObject") {
        None | Some("") | Some("Metadata") => Ok(IncludeObject::Metadata),
        Some("Object") => Ok(IncludeObject::Object),
        Some("None") => Ok(IncludeObject::None),
        Some(other) => Err(ApiError::bad_request(format!(
            "includeObject: Unsupported value: {other:?}: supported values: \"None\", \"Metadata\", \"Object\""
        ))),
    }
}

/// The selectors of a list or watch.
pub(crate) struct Filter {
    pub labels: Selector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn parse(ctx: &Ctx) -> Result<Filter, ApiError> {
        let labels = Selector::parse(ctx.query.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("labelSelector: {e}")))?;
        let fields = FieldSelector::parse(ctx.query.get("fieldSelector").unwrap_or_default())?;
        fields.validate_for(&ctx.def)?;
        Ok(Filter { labels, fields })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches(obj)
    }
}

/// A `continue` token: the revision of the first page and the last key returned.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: u64,
    start: String,
}

fn encode_continue(revision: u64, last_key: &str) -> String {
    let token = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv: revision,
        start: last_key.to_owned(),
    };
    base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&token).unwrap_or_default())
}

fn decode_continue(token: &str, prefix: &str) -> Result<(u64, String), ApiError> {
    let bad =
        || ApiError::bad_request("continue key is not valid: the continue token is malformed");
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| bad())?;
    let token: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if token.v != "meta.k8s.io/v1" || !token.start.starts_with(prefix) {
        return Err(bad());
    }
    Ok((token.rv, token.start))
}

/// A page of matching objects.
pub(crate) struct Page {
    pub items: Vec<Stored>,
    pub revision: u64,
    pub continue_token: Option<String>,
}

/// Lists matching objects: at most `limit` (0 = all), from a continue token or a
/// resourceVersion, filtering with the selectors.
pub(crate) async fn list_page(ctx: &Ctx, filter: &Filter, limit: usize) -> Result<Page, ApiError> {
    let prefix = match filter.fields.pinned_name() {
        // `metadata.name=x` narrows to one key; still a prefix, so `x-2` would match it:
        // the field filter below drops those.
        Some(_) | None => collection_prefix(&ctx.def, ctx.namespace()),
    };
    let (mut revision, mut start_after) = (None, None);
    if let Some(token) = ctx.query.get("continue").filter(|t| !t.is_empty()) {
        if ctx
            .query
            .get("resourceVersion")
            .is_some_and(|rv| !rv.is_empty())
        {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let (rv, start) = decode_continue(token, &prefix)?;
        revision = Some(rv);
        start_after = Some(start);
    } else if let Some(rv) = ctx
        .query
        .get("resourceVersion")
        .filter(|rv| !rv.is_empty() && *rv != "0")
    {
        let rv: u64 = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
        match ctx.query.get("resourceVersionMatch") {
            Some("Exact") => revision = Some(rv),
            None | Some("") | Some("NotOlderThan") => {
                let current = ctx.server.store.revision();
                if rv > current {
                    return Err(store_error(skiff_store::Error::FutureRevision {
                        requested: rv,
                        current,
                    }));
                }
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
        }
    }
    let mut items = Vec::new();
    let mut read_revision = revision;
    let page_size = if limit == 0 { 0 } else { limit.max(16) };
    loop {
        let result = ctx
            .store()
            .list(ListOptions {
                prefix: prefix.clone(),
                revision: read_revision,
                limit: page_size,
                start_after: start_after.clone(),
            })
            .await
            .map_err(|e| match e {
                skiff_store::Error::Compacted { .. } if ctx.query.get("continue").is_some() => ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter, or use the continue token \
                     in this response to retrieve the remainder of the results. Continuing with the \
                     provided token results in an inconsistent list - objects that were created, \
                     modified, or deleted between the time the first chunk was returned and now may \
                     show up in the list.",
                ),
                other => store_error(other),
            })?;
        // Later pages read at the same revision as the first.
        read_revision = Some(result.revision);
        let last_key = result.items.last().map(|i| i.key.clone());
        for item in result.items {
            if limit != 0 && items.len() == limit {
                // The page is full; continue from the item before this one.
                let last = items
                    .last()
                    .map(|i: &Stored| i.key.clone())
                    .unwrap_or_default();
                return Ok(Page {
                    items,
                    revision: result.revision,
                    continue_token: Some(encode_continue(result.revision, &last)),
                });
            }
            if filter.is_empty() || filter.matches(&to_value(&item)?) {
                items.push(item);
            }
        }
        if !result.more {
            return Ok(Page {
                items,
                revision: result.revision,
                continue_token: None,
            });
        }
        start_after = last_key;
        if limit != 0 && items.len() == limit {
            let last = items.last().map(|i| i.key.clone()).unwrap_or_default();
            return Ok(Page {
                items,
                revision: result.revision,
                continue_token: Some(encode_continue(result.revision, &last)),
            });
        }
    }
}

/// `GET` a collection.
async fn list(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let filter = Filter::parse(ctx)?;
    let limit = match ctx.query.get("limit") {
        None | Some("") => 0,
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?
            .max(0) as usize,
    };
    let page = list_page(ctx, &filter, limit).await?;
    let output = http::negotiate(&ctx.headers)?;
    debug!(
        list.items = page.items.len(),
        list.revision = page.revision,
        "listed"
    );
    match output {
        Output::Json => {
            // Assemble the list from the stored bytes without re-encoding them.
            let mut meta = json!({"resourceVersion": page.revision.to_string()});
            if let Some(token) = &page.continue_token {
                meta["continue"] = json!(token);
            }
            let mut body = Vec::with_capacity(
                page.items.iter().map(|i| i.data.len() + 1).sum::<usize>() + 256,
            );
            body.extend_from_slice(
                format!(
                    "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
                    ctx.def.list_kind,
                    ctx.def.api_version(),
                    meta
                )
                .as_bytes(),
            );
            for (i, item) in page.items.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                if ctx.converts() {
                    body.extend_from_slice(
                        &serde_json::to_vec(&ctx.value(item)?).unwrap_or_default(),
                    );
                } else {
                    body.extend_from_slice(&item.data);
                }
            }
            body.extend_from_slice(b"]}");
            Ok(http::respond(StatusCode::OK, http::JSON, Bytes::from(body)))
        }
        Output::Metadata => {
            let mut meta = json!({"resourceVersion": page.revision.to_string()});
            if let Some(token) = &page.continue_token {
                meta["continue"] = json!(token);
            }
            let items = page
                .items
                .iter()
                .map(|item| Ok(http::partial_metadata(&ctx.value(item)?)))
                .collect::<Result<Vec<_>, ApiError>>()?;
            Ok(http::json(
                StatusCode::OK,
                &json!({
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": meta,
                    "items": items,
                }),
            ))
        }
        Output::Table => {
            let values = page
                .items
                .iter()
                .map(|item| ctx.value(item))
                .collect::<Result<Vec<_>, _>>()?;
            let table = skiff_core::table::to_table(
                &ctx.def,
                &values,
                jiff::Timestamp::now(),
                include_object(&ctx.query)?,
                Some(&page.revision.to_string()),
                page.continue_token.as_deref(),
            );
            Ok(http::json(StatusCode::OK, &table))
        }
    }
}

/// Random suffixes for `generateName`, from Kubernetes' alphabet (no vowels, no lookalikes).
fn name_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn now() -> String {
    skiff_core::time::format_time(jiff::Timestamp::now())
}

pub(crate) fn warning_headers(resp: &mut Response<Body>, warnings: &[String]) {
    for w in warnings {
        // RFC 7234 quoted-string, as client-go unquotes it.
        let quoted = w.replace('\\', "\\\\").replace('"', "\\\"");
        let text = format!("299 - \"{quoted}\"");
        if let Ok(v) = ::http::HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", v);
        }
    }
}

/// `POST` a new object.
pub(crate) async fn create(ctx: &Ctx, body: Bytes) -> Result<Response<Body>, ApiError> {
    let mut obj = decode_body(&ctx.headers, &body)?;
    check_type(&ctx.def, &mut obj)?;
    check_namespace(ctx, &mut obj)?;
    let dry_run = ctx.dry_run()?;
    let warnings = ctx
        .server
        .normalize(&ctx.def, &mut obj, ctx.field_validation()?)?;
    let manager = ctx.field_manager();
    let (stored, obj) = create_object(ctx, obj, dry_run, Track::Update(&manager)).await?;
    let mut resp = match stored {
        Some(stored) => ctx.respond(StatusCode::CREATED, &stored)?,
        None => http::json(StatusCode::CREATED, &obj),
    };
    warning_headers(&mut resp, &warnings);
    Ok(resp)
}

/// Creates a normalised object (name or generateName, defaults, validation, storage);
/// returns what was stored (None under dry run) and the object.
pub(crate) async fn create_object(
    ctx: &Ctx,
    obj: Value,
    dry_run: bool,
    track: Track<'_>,
) -> Result<(Option<Stored>, Value), ApiError> {
    let generate = obj
        .pointer("/metadata/generateName")
        .and_then(Value::as_str)
        .filter(|g| !g.is_empty())
        .map(str::to_owned);
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let has_name = name.is_some();
    let name_for_errors = name.or(generate.as_deref()).unwrap_or_default().to_owned();
    require_namespace(ctx, &name_for_errors).await?;
    let mut obj = obj;
    if ctx.def.group.is_empty() && ctx.def.plural == "pods" {
        admit_priority(ctx, &mut obj).await?;
    }
    if is_priority_class(ctx) {
        admit_priority_class(ctx, &obj).await?;
    }
    if ctx.def.group == "certificates.k8s.io" {
        requested_by(&ctx.user, &mut obj);
    }
    let attempts = if has_name || generate.is_none() { 1 } else { 8 };
    let mut last_err = None;
    for _ in 0..attempts {
        let mut candidate = obj.clone();
        if !has_name && let Some(prefix) = &generate {
            candidate["metadata"]["name"] = json!(format!("{prefix}{}", name_suffix()));
        }
        let uid = uuid::Uuid::new_v4().to_string();
        let now = now();
        ctx.server
            .prepare_create(&ctx.def, &mut candidate, &uid, &now)?;
        if let Track::Update(manager) = track {
            let api_version = ctx.def.api_version();
            let writer = ctx.writer(manager, &api_version, UpdateMode::Main, &now);
            ssa::track_update(
                ctx.server.schemas(),
                &crate::patch::schema_root(ctx),
                None,
                &mut candidate,
                &writer,
            );
        }
        let name = candidate["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let is_service = ctx.def.group.is_empty() && ctx.def.plural == "services";
        if ctx.def.group == "apiextensions.k8s.io" {
            skiff_core::crd::init_status(&mut candidate);
        }
        if dry_run {
            return Ok((None, candidate));
        }
        let key = object_key(&ctx.def, ctx.namespace(), &name);
        if is_service {
            // A taken name is AlreadyExists, not an allocation failure of its addresses.
            if ctx.store().get(&key).await.map_err(store_error)?.is_some() {
                last_err = Some(ApiError::already_exists(
                    &ctx.def.group,
                    &ctx.def.plural,
                    &name,
                ));
                continue;
            }
            ctx.server.allocator.allocate(&mut candidate, None)?;
        }
        match ctx
            .store()
            .create(key, ctx.to_storage(candidate.clone()))
            .await
        {
            Ok(stored) => {
                ctx.server.after_write(&ctx.def).await?;
                return Ok((Some(stored), candidate));
            }
            Err(skiff_store::Error::AlreadyExists { .. }) => {
                if is_service {
                    ctx.server.allocator.release(&candidate);
                }
                last_err = Some(ApiError::already_exists(
                    &ctx.def.group,
                    &ctx.def.plural,
                    &name,
                ));
            }
            Err(e) => {
                if is_service {
                    ctx.server.allocator.release(&candidate);
                }
                return Err(store_error(e));
            }
        }
    }
    Err(last_err.unwrap_or_else(|| ApiError::internal("create failed")))
}

/// A CertificateSigningRequest names who asked for it: the authenticated user, whatever
/// the body says (signers and approvers trust these fields).
fn requested_by(user: &User, obj: &mut Value) {
    let spec = &mut obj["spec"];
    spec["username"] = json!(user.name);
    spec["groups"] = json!(user.groups);
    match user.uid.as_str() {
        "" => spec.as_object_mut().map(|s| s.remove("uid")),
        uid => spec
            .as_object_mut()
            .map(|s| s.insert("uid".into(), json!(uid))),
    };
    if let Some(s) = spec.as_object_mut() {
        s.remove("extra");
    }
}

/// `PUT` an object (or its status or finalizers).
async fn update(ctx: &Ctx, body: Bytes, mode: UpdateMode) -> Result<Response<Body>, ApiError> {
    let mut obj = decode_body(&ctx.headers, &body)?;
    check_type(&ctx.def, &mut obj)?;
    check_namespace(ctx, &mut obj)?;
    match obj.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if n == ctx.name() => {}
        None | Some("") => {
            obj["metadata"]["name"] = json!(ctx.name());
        }
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                ctx.name()
            )));
        }
    }
    let precondition = resource_version_of(&obj)?;
    let dry_run = ctx.dry_run()?;
    let warnings = ctx
        .server
        .normalize(&ctx.def, &mut obj, ctx.field_validation()?)?;
    let manager = ctx.field_manager();
    let (status, stored) = write_update(
        ctx,
        mode,
        precondition,
        dry_run,
        Track::Update(&manager),
        |_current| Ok(obj.clone()),
    )
    .await?;
    let mut resp = match stored {
        Written::Stored(s) => ctx.respond(status, &s)?,
        Written::DryRun(v) => http::json(status, &v),
    };
    warning_headers(&mut resp, &warnings);
    Ok(resp)
}

/// The `metadata.resourceVersion` a client sent, as a precondition.
pub(crate) fn resource_version_of(obj: &Value) -> Result<Option<u64>, ApiError> {
    match obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        None | Some("") => Ok(None),
        Some(rv) => rv
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion: {rv:?}"))),
    }
}

/// What a write left behind.
pub(crate) enum Written {
    Stored(Stored),
    DryRun(Value),
}

/// Reads the object, builds its new state with `build`, and writes it if it changed,
/// retrying when another writer got there first (unless the client pinned a
/// resourceVersion, which then conflicts). Returns the HTTP status and the result.
pub(crate) async fn write_update(
    ctx: &Ctx,
    mode: UpdateMode,
    precondition: Option<u64>,
    dry_run: bool,
    track: Track<'_>,
    mut build: impl FnMut(&Value) -> Result<Value, ApiError>,
) -> Result<(StatusCode, Written), ApiError> {
    let key = ctx.key();
    let schema = crate::patch::schema_root(ctx);
    let api_version = ctx.def.api_version();
    for _ in 0..MAX_RETRIES {
        let current = ctx
            .store()
            .get(&key)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ctx.not_found())?;
        if let Some(rv) = precondition
            && rv != current.revision
        {
            return Err(ApiError::conflict(
                &ctx.def.group,
                &ctx.def.plural,
                ctx.name(),
                ApiError::STALE,
            ));
        }
        let old = ctx.value(&current)?;
        let new = build(&old)?;
        // A uid in the new object is a precondition, as in Kubernetes' registry.
        let old_uid = old.pointer("/metadata/uid").and_then(Value::as_str);
        if let Some(uid) = new.pointer("/metadata/uid").and_then(Value::as_str)
            && !uid.is_empty()
            && Some(uid) != old_uid
        {
            return Err(ApiError::conflict(
                &ctx.def.group,
                &ctx.def.plural,
                ctx.name(),
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old_uid.unwrap_or_default()
                ),
            ));
        }
        let mut new = ctx.server.prepare_update(&ctx.def, new, &old, mode)?;
        if is_priority_class(ctx) {
            admit_priority_class(ctx, &new).await?;
        }
        if let Track::Update(manager) = track {
            let now = now();
            let writer = ctx.writer(manager, &api_version, mode, &now);
            ssa::track_update(ctx.server.schemas(), &schema, Some(&old), &mut new, &writer);
        }
        let is_service = ctx.def.group.is_empty() && ctx.def.plural == "services";
        if is_service && mode == UpdateMode::Main && !dry_run {
            ctx.server.allocator.allocate(&mut new, Some(&old))?;
        }
        if unchanged(&new, &old) {
            return Ok((StatusCode::OK, Written::Stored(current)));
        }
        if dry_run {
            // Nothing was written, so the object keeps the revision it was read at.
            new["metadata"]["resourceVersion"] = json!(current.revision.to_string());
            return Ok((StatusCode::OK, Written::DryRun(new)));
        }
        // An object being deleted goes once its last finalizer is removed.
        let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
            && new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            && new
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                == Some(0)
            && !(ctx.def.group.is_empty()
                && ctx.def.plural == "namespaces"
                && new
                    .pointer("/spec/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty()));
        let result = if finalized {
            ctx.store()
                .delete(
                    key.clone(),
                    Preconditions {
                        revision: Some(current.revision),
                        uid: None,
                    },
                )
                .await
        } else {
            ctx.store()
                .update(
                    key.clone(),
                    ctx.to_storage(new),
                    Preconditions {
                        revision: Some(current.revision),
                        uid: None,
                    },
                )
                .await
        };
        match result {
            Ok(stored) => {
                if finalized {
                    ctx.server
                        .after_delete(&ctx.def, &ctx.value(&stored)?)
                        .await;
                }
                ctx.server.after_write(&ctx.def).await?;
                return Ok((StatusCode::OK, Written::Stored(stored)));
            }
            Err(skiff_store::Error::RevisionMismatch { .. }) if precondition.is_none() => continue,
            Err(skiff_store::Error::RevisionMismatch { .. }) => {
                return Err(ApiError::conflict(
                    &ctx.def.group,
                    &ctx.def.plural,
                    ctx.name(),
                    ApiError::STALE,
                ));
            }
            Err(skiff_store::Error::NotFound { .. }) => return Err(ctx.not_found()),
            Err(e) => return Err(store_error(e)),
        }
    }
    Err(ApiError::conflict(
        &ctx.def.group,
        &ctx.def.plural,
        ctx.name(),
        "too many concurrent updates; please try again",
    ))
}

/// Whether an update changes nothing (ignoring the resourceVersion), so nothing is written
/// and the object keeps its resourceVersion.
fn unchanged(new: &Value, old: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        v
    };
    strip(new) == strip(old)
}

/// `DeleteOptions` from the body and query.
#[derive(Debug, Default)]
pub(crate) struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub dry_run: bool,
    pub preconditions: Preconditions,
}

pub(crate) fn delete_options(ctx: &Ctx, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions {
        dry_run: ctx.dry_run()?,
        ..Default::default()
    };
    if !body.is_empty() {
        let value = decode_body(&ctx.headers, body)?;
        read_delete_options(&value, &mut opts)?;
    }
    if let Some(g) = ctx.query.get("gracePeriodSeconds") {
        opts.grace_period = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds: {g}")))?,
        );
    }
    if let Some(p) = ctx.query.get("propagationPolicy") {
        opts.propagation = Some(p.to_owned());
    }
    if ctx.query.get("orphanDependents") == Some("true") {
        opts.propagation = Some("Orphan".into());
    }
    match opts.propagation.as_deref() {
        None | Some("Background" | "Foreground" | "Orphan") => Ok(opts),
        Some(other) => Err(ApiError::bad_request(format!(
            "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
        ))),
    }
}

/// Reads a `DeleteOptions` object.
pub(crate) fn read_delete_options(value: &Value, opts: &mut DeleteOptions) -> Result<(), ApiError> {
    if let Some(g) = value.get("gracePeriodSeconds").and_then(Value::as_i64) {
        opts.grace_period = Some(g);
    }
    if let Some(p) = value.get("propagationPolicy").and_then(Value::as_str) {
        opts.propagation = Some(p.to_owned());
    }
    if value.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
        opts.propagation = Some("Orphan".into());
    }
    if let Some(dry) = value.get("dryRun").and_then(Value::as_array) {
        opts.dry_run |= dry.iter().any(|d| d == "All");
    }
    if let Some(uid) = value.pointer("/preconditions/uid").and_then(Value::as_str) {
        opts.preconditions.uid = Some(uid.to_owned());
    }
    if let Some(rv) = value
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
    {
        opts.preconditions.revision = Some(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion: {rv:?}")))?,
        );
    }
    Ok(())
}

/// `DELETE` an object.
async fn delete(ctx: &Ctx, body: Bytes) -> Result<Response<Body>, ApiError> {
    let opts = delete_options(ctx, &body)?;
    let (status, outcome) = delete_object(ctx, &ctx.key(), ctx.name(), &opts).await?;
    Ok(delete_response(ctx, status, &outcome))
}

/// What a delete did.
pub(crate) enum Deleted {
    /// The object is gone; its last state.
    Gone(Value),
    /// The object is being deleted (finalizers or graceful deletion); its state now.
    Pending(Value),
}

/// Deletes one object per the options, honouring finalizers, graceful pod deletion and
/// propagation policy.
pub(crate) async fn delete_object(
    ctx: &Ctx,
    key: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<(StatusCode, Deleted), ApiError> {
    let not_found = || objects::not_found(&ctx.def, name);
    // The NamespaceLifecycle admission plugin's immortal namespaces.
    if ctx.def.group.is_empty()
        && ctx.def.plural == "namespaces"
        && ["default", "kube-system", "kube-public"].contains(&name)
    {
        return Err(ApiError::forbidden(
            "",
            "namespaces",
            name,
            "this namespace may not be deleted",
        ));
    }
    for _ in 0..MAX_RETRIES {
        let current = ctx
            .store()
            .get(key)
            .await
            .map_err(store_error)?
            .ok_or_else(not_found)?;
        let mut obj = to_value(&current)?;
        let uid = obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(expected) = &opts.preconditions.uid
            && *expected != uid
        {
            return Err(ApiError::conflict(
                &ctx.def.group,
                &ctx.def.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {expected}, UID in object meta: {uid}"
                ),
            ));
        }
        if let Some(rv) = opts.preconditions.revision
            && rv != current.revision
        {
            return Err(ApiError::conflict(
                &ctx.def.group,
                &ctx.def.plural,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    current.revision
                ),
            ));
        }
        let plan = plan_delete(&ctx.def, &obj, opts);
        let write = match plan {
            DeletePlan::Now => None,
            DeletePlan::Mark { grace, finalizers } => {
                let meta = objects::child(obj.as_object_mut().expect("object"), "metadata");
                let grace = grace.unwrap_or(0);
                let started = meta
                    .get("deletionTimestamp")
                    .and_then(Value::as_str)
                    .and_then(skiff_core::time::parse_time);
                let old_grace = meta
                    .get("deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                // A first delete starts the grace period; a later one may only shorten it,
                // counted from when the first began (as Kubernetes' BeforeDelete does).
                let when = match started {
                    None => Some(jiff::Timestamp::now()),
                    Some(at) if grace < old_grace => {
                        Some(at - jiff::SignedDuration::from_secs(old_grace))
                    }
                    Some(_) => None,
                };
                if let Some(start) = when {
                    let at = start + jiff::SignedDuration::from_secs(grace);
                    meta.insert(
                        "deletionTimestamp".into(),
                        skiff_core::time::format_time(at).into(),
                    );
                    meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
                }
                let list = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    for f in finalizers {
                        if !list.iter().any(|x| x == f) {
                            list.push(json!(f));
                        }
                    }
                }
                if meta
                    .get("finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty)
                {
                    meta.remove("finalizers");
                }
                if ctx.def.group.is_empty() && ctx.def.plural == "namespaces" {
                    obj["status"]["phase"] = json!("Terminating");
                }
                Some(obj)
            }
        };
        if opts.dry_run {
            let value = match write {
                Some(v) => Deleted::Pending(v),
                None => Deleted::Gone(ctx.value(&current)?),
            };
            return Ok((StatusCode::OK, value));
        }
        let preconditions = Preconditions {
            revision: Some(current.revision),
            uid: None,
        };
        let result = match write {
            Some(marked) => ctx
                .store()
                .update(key.to_owned(), ctx.to_storage(marked), preconditions)
                .await
                .map(|s| (false, s)),
            None => ctx
                .store()
                .delete(key.to_owned(), preconditions)
                .await
                .map(|s| (true, s)),
        };
        match result {
            Ok((gone, stored)) => {
                let value = ctx.value(&stored)?;
                if gone {
                    ctx.server.after_delete(&ctx.def, &value).await;
                    ctx.server.after_write(&ctx.def).await?;
                    return Ok((StatusCode::OK, Deleted::Gone(value)));
                }
                return Ok((StatusCode::OK, Deleted::Pending(value)));
            }
            Err(skiff_store::Error::RevisionMismatch { .. }) => continue,
            Err(skiff_store::Error::NotFound { .. }) => return Err(not_found()),
            Err(e) => return Err(store_error(e)),
        }
    }
    Err(ApiError::conflict(
        &ctx.def.group,
        &ctx.def.plural,
        name,
        "too many concurrent updates; please try again",
    ))
}

enum DeletePlan {
    /// Remove from the store now.
    Now,
    /// Mark deleted (deletionTimestamp) and leave removal to finalizers or the node agent.
    Mark {
        grace: Option<i64>,
        finalizers: Vec<&'static str>,
    },
}

fn plan_delete(def: &ResourceDef, obj: &Value, opts: &DeleteOptions) -> DeletePlan {
    let mut finalizers = Vec::new();
    match opts.propagation.as_deref() {
        Some("Foreground") => finalizers.push("foregroundDeletion"),
        Some("Orphan") => finalizers.push("orphan"),
        _ => {}
    }
    let has_finalizers = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let is_namespace = def.group.is_empty() && def.plural == "namespaces";
    let namespace_finalizers = is_namespace
        && obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
    // Pods bound to a node are deleted gracefully: the node agent stops the containers and
    // then finishes the deletion. Unbound and finished pods go at once.
    let graceful_pod = def.group.is_empty()
        && def.plural == "pods"
        && obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        && !matches!(
            obj.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
    let grace = if graceful_pod {
        let default = obj
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        let g = opts.grace_period.unwrap_or(default).max(0);
        // A grace period of zero means "now" but only after the node confirms; Kubernetes
        // turns an explicit 0 into 1 unless the deletion is forced past the node.
        Some(g)
    } else {
        None
    };
    let forced_pod = graceful_pod && grace == Some(0);
    if has_finalizers
        || namespace_finalizers
        || !finalizers.is_empty()
        || (graceful_pod && !forced_pod)
    {
        DeletePlan::Mark {
            grace: if graceful_pod { grace } else { Some(0) },
            finalizers,
        }
    } else {
        DeletePlan::Now
    }
}

fn delete_response(ctx: &Ctx, status: StatusCode, outcome: &Deleted) -> Response<Body> {
    let (value, gone) = match outcome {
        Deleted::Gone(v) => (v, true),
        Deleted::Pending(v) => (v, false),
    };
    // Pods and service accounts answer with the object; so does any object still present.
    let returns_object = !gone
        || (ctx.def.group.is_empty()
            && matches!(ctx.def.plural.as_str(), "pods" | "serviceaccounts"));
    if returns_object {
        let code = if gone { status } else { StatusCode::OK };
        return http::json(code, value);
    }
    let uid = value
        .pointer("/metadata/uid")
        .cloned()
        .unwrap_or(Value::Null);
    let name = value
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or(Value::Null);
    http::json(
        status,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": ctx.def.group, "kind": ctx.def.plural, "uid": uid},
        }),
    )
}

/// `DELETE` a collection: every matching object, each as a single delete would.
async fn delete_collection(ctx: &Ctx, body: Bytes) -> Result<Response<Body>, ApiError> {
    let opts = delete_options(ctx, &body)?;
    let filter = Filter::parse(ctx)?;
    let page = list_page(ctx, &filter, 0).await?;
    let mut items = Vec::new();
    for item in page.items {
        let value = to_value(&item)?;
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match delete_object(ctx, &item.key, &name, &opts).await {
            Ok((_, Deleted::Gone(v) | Deleted::Pending(v))) => items.push(v),
            Err(e) if e.reason == Reason::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(http::json(
        StatusCode::OK,
        &json!({
            "kind": ctx.def.list_kind,
            "apiVersion": ctx.def.api_version(),
            "metadata": {"resourceVersion": ctx.server.store.revision().to_string()},
            "items": items,
        }),
    ))
}

impl ApiServer {
    /// Work that follows a successful write of a resource: CRD changes change the API.
    pub(crate) async fn after_write(&self, def: &ResourceDef) -> Result<(), ApiError> {
        if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
            self.refresh_custom_resources().await?;
        }
        Ok(())
    }

    /// Work that follows an object's removal from the store.
    pub(crate) async fn after_delete(&self, def: &ResourceDef, obj: &Value) {
        if def.group.is_empty() && def.plural == "services" {
            self.allocator.release(obj);
        }
        if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
            self.delete_custom_objects(obj).await;
        }
    }
}
