//! Subresources that are views or actions rather than parts of the object: `scale`,
//! `pods/binding` and `pods/eviction`.

use ::http::{Response, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};
use skiff_core::labels::Selector;
use skiff_core::registry::collection_prefix;
use skiff_core::resources::ScalePaths;
use skiff_core::status::{ApiError, FieldError, Reason};
use skiff_store::{ListOptions, Preconditions};

use crate::http::{self, Body};
use crate::objects::UpdateMode;
use crate::rest::{self, Ctx, Track, Written, decode_body, store_error, to_value, write_update};

fn scale_paths(ctx: &Ctx) -> Result<&ScalePaths, ApiError> {
    ctx.def.scale().ok_or_else(ApiError::no_route)
}

/// The `autoscaling/v1` Scale view of an object.
fn scale_of(ctx: &Ctx, obj: &Value) -> Result<Value, ApiError> {
    let paths = scale_paths(ctx)?;
    let selector = match &paths.label_selector {
        // Built-ins keep a LabelSelector object; CRDs point at a selector string.
        Some(p) => match obj.pointer(p) {
            Some(Value::String(s)) => s.clone(),
            Some(sel @ Value::Object(_)) => Selector::from_label_selector(sel)
                .map(|s| s.to_string())
                .unwrap_or_default(),
            _ => String::new(),
        },
        None => String::new(),
    };
    let meta = obj.get("metadata").cloned().unwrap_or_default();
    let mut scale = json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer(&paths.spec_replicas).and_then(Value::as_i64).unwrap_or(0)},
        "status": {"replicas": obj.pointer(&paths.status_replicas).and_then(Value::as_i64).unwrap_or(0)},
    });
    if let Some(m) = scale["metadata"].as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    if !selector.is_empty() {
        scale["status"]["selector"] = json!(selector);
    }
    Ok(scale)
}

/// `GET …/scale`.
pub(crate) async fn get_scale(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let stored = ctx
        .store()
        .get(&ctx.key())
        .await
        .map_err(store_error)?
        .ok_or_else(|| ctx.not_found())?;
    Ok(http::json(
        StatusCode::OK,
        &scale_of(ctx, &to_value(&stored)?)?,
    ))
}

fn replicas_of(scale: &Value) -> Result<i64, ApiError> {
    let invalid = |v: Value, why: &str| {
        let name = scale
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        ApiError::invalid(
            "autoscaling",
            "Scale",
            name,
            &[FieldError::invalid("spec.replicas", v, why)],
        )
    };
    match scale.pointer("/spec/replicas") {
        None | Some(Value::Null) => Ok(0),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Ok(n),
            Some(n) => Err(invalid(json!(n), "must be greater than or equal to 0")),
            None => Err(invalid(v.clone(), "must be an integer")),
        },
    }
}

async fn write_scale(
    ctx: &Ctx,
    replicas: i64,
    precondition: Option<u64>,
) -> Result<Response<Body>, ApiError> {
    let pointer = scale_paths(ctx)?.spec_replicas.clone();
    let dry_run = ctx.dry_run()?;
    let manager = ctx.field_manager();
    let (status, written) = write_update(
        ctx,
        UpdateMode::Main,
        precondition,
        dry_run,
        Track::Update(&manager),
        |current| {
            let mut obj = current.clone();
            set_pointer(&mut obj, &pointer, json!(replicas));
            Ok(obj)
        },
    )
    .await?;
    let obj = match written {
        Written::Stored(s) => to_value(&s)?,
        Written::DryRun(v) => v,
    };
    Ok(http::json(status, &scale_of(ctx, &obj)?))
}

/// `PUT …/scale`.
pub(crate) async fn update_scale(ctx: &Ctx, body: Bytes) -> Result<Response<Body>, ApiError> {
    let scale = decode_body(&ctx.headers, &body)?;
    let precondition = rest::resource_version_of(&scale)?;
    write_scale(ctx, replicas_of(&scale)?, precondition).await
}

/// `PATCH …/scale`: the patch applies to the Scale view.
pub(crate) async fn patch_scale(ctx: &Ctx, body: Bytes) -> Result<Response<Body>, ApiError> {
    let stored = ctx
        .store()
        .get(&ctx.key())
        .await
        .map_err(store_error)?
        .ok_or_else(|| ctx.not_found())?;
    let current = scale_of(ctx, &to_value(&stored)?)?;
    let patched = crate::patch::apply_simple(ctx, &current, &body, None)?;
    let precondition = rest::resource_version_of(&patched)?.filter(|rv| {
        Some(*rv)
            != current
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
    });
    write_scale(ctx, replicas_of(&patched)?, precondition).await
}

fn set_pointer(obj: &mut Value, pointer: &str, value: Value) {
    let mut target = obj;
    let parts: Vec<&str> = pointer.split('/').skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            if let Some(m) = target.as_object_mut() {
                m.insert((*part).to_owned(), value);
            }
            return;
        }
        if !target.get(*part).is_some_and(Value::is_object) {
            target[*part] = json!({});
        }
        target = &mut target[*part];
    }
}

fn success(code: u16) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    http::json(
        status,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code}),
    )
}

/// `POST pods/<name>/binding`: assigns the pod to a node.
pub(crate) async fn bind(ctx: &Ctx, body: Bytes) -> Result<Response<Body>, ApiError> {
    let binding = decode_body(&ctx.headers, &body)?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "",
                "Binding",
                ctx.name(),
                &[FieldError::required("target.name", "")],
            )
        })?
        .to_owned();
    let name = ctx.name().to_owned();
    let now = skiff_core::time::format_time(jiff::Timestamp::now());
    let manager = ctx.field_manager();
    write_update(ctx, UpdateMode::Binding, None, ctx.dry_run()?, Track::Update(&manager), |current| {
        let mut pod = current.clone();
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict("", "pods", &name, "pod is being deleted, cannot be assigned to a host"));
        }
        match current.pointer("/spec/nodeName").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => {
                return Err(ApiError::conflict(
                    "",
                    "pods",
                    &name,
                    &format!("pod {name} is already assigned to node \"{n}\""),
                ));
            }
            _ => {}
        }
        pod["spec"]["nodeName"] = json!(node);
        let conditions = pod["status"]
            .as_object_mut()
            .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
        if let Some(Value::Array(list)) = conditions {
            list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            list.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
        }
        Ok(pod)
    })
    .await?;
    Ok(success(201))
}

/// `POST pods/<name>/eviction`: deletes the pod unless a PodDisruptionBudget forbids it.
pub(crate) async fn evict(ctx: &Ctx, body: Bytes) -> Result<Response<Body>, ApiError> {
    let eviction = decode_body(&ctx.headers, &body)?;
    let stored = ctx
        .store()
        .get(&ctx.key())
        .await
        .map_err(store_error)?
        .ok_or_else(|| ctx.not_found())?;
    let pod = to_value(&stored)?;
    let mut opts = rest::DeleteOptions {
        dry_run: ctx.dry_run()?,
        ..Default::default()
    };
    if let Some(o) = eviction.get("deleteOptions") {
        rest::read_delete_options(o, &mut opts)?;
    }
    let terminal = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if !terminal && pod.pointer("/metadata/deletionTimestamp").is_none() {
        charge_disruption_budget(ctx, &pod, opts.dry_run).await?;
    }
    rest::delete_object(ctx, &ctx.key(), ctx.name(), &opts).await?;
    Ok(success(201))
}

/// Takes one allowed disruption from the pod's budget, or refuses with 429.
async fn charge_disruption_budget(ctx: &Ctx, pod: &Value, dry_run: bool) -> Result<(), ApiError> {
    let Some(pdb_def) = ctx
        .registry
        .get("policy", "v1", "poddisruptionbudgets")
        .cloned()
    else {
        return Ok(());
    };
    let prefix = collection_prefix(&pdb_def, ctx.namespace());
    let budgets = ctx
        .store()
        .list(ListOptions {
            prefix,
            ..Default::default()
        })
        .await
        .map_err(store_error)?;
    let mut matching = Vec::new();
    for b in budgets.items {
        let value = to_value(&b)?;
        let selects = value
            .pointer("/spec/selector")
            .and_then(|s| Selector::from_label_selector(s).ok())
            .is_some_and(|s| !s.is_empty() && s.matches_object(pod));
        if selects {
            matching.push((b, value));
        }
    }
    let (stored, mut budget) = match matching.len() {
        0 => return Ok(()),
        1 => matching.remove(0),
        _ => {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
    };
    let name = budget
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let allowed = budget
        .pointer("/status/disruptionsAllowed")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if allowed <= 0 {
        let mut err = ApiError::new(
            Reason::TooManyRequests,
            "Cannot evict pod as it would violate the pod's disruption budget.",
        );
        err.details.causes.push(skiff_core::status::Cause {
            reason: "DisruptionBudget".into(),
            message: format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                budget
                    .pointer("/status/desiredHealthy")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                budget
                    .pointer("/status/currentHealthy")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            ),
            field: String::new(),
        });
        err.details.retry_after_seconds = Some(10);
        return Err(err);
    }
    if dry_run {
        return Ok(());
    }
    budget["status"]["disruptionsAllowed"] = json!(allowed - 1);
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    budget["status"]["disruptedPods"][pod_name] =
        json!(skiff_core::time::format_time(jiff::Timestamp::now()));
    ctx.store()
        .update(
            stored.key.clone(),
            budget,
            Preconditions {
                revision: Some(stored.revision),
                uid: None,
            },
        )
        .await
        .map_err(|e| match e {
            skiff_store::Error::RevisionMismatch { .. } => {
                let mut err = ApiError::new(
                    Reason::TooManyRequests,
                    "the disruption budget changed; please retry",
                );
                err.details.retry_after_seconds = Some(1);
                err
            }
            other => store_error(other),
        })?;
    Ok(())
}
