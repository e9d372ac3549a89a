//! `PATCH`: JSON patch, merge patch, strategic merge patch and server-side apply.

use ::http::{Response, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};
use skiff_core::resources::SchemaSource;
use skiff_core::ssa::{self, ApplyError};
use skiff_core::status::{ApiError, Cause, FieldError, Reason};

use crate::http::{self, Body};
use crate::objects::UpdateMode;
use crate::rest::{self, Ctx, Track, Written, check_type, decode_yaml, write_update};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Json,
    Merge,
    Strategic,
    Apply,
}

fn kind(ctx: &Ctx) -> Result<Kind, ApiError> {
    let media = http::content_type(&ctx.headers);
    let kind = match media.as_str() {
        "application/json-patch+json" => Kind::Json,
        "application/merge-patch+json" => Kind::Merge,
        "application/strategic-merge-patch+json" => Kind::Strategic,
        "application/apply-patch+yaml" => Kind::Apply,
        _ => return Err(unsupported(ctx)),
    };
    if kind == Kind::Strategic && matches!(ctx.def.schema, SchemaSource::Custom(_)) {
        return Err(unsupported(ctx));
    }
    Ok(kind)
}

fn unsupported(ctx: &Ctx) -> ApiError {
    let accepted = if matches!(ctx.def.schema, SchemaSource::Custom(_)) {
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    } else {
        "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
    };
    ApiError::new(
        Reason::UnsupportedMediaType,
        format!(
            "the body of the request was in an unknown format - accepted media types include: {accepted}"
        ),
    )
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the patch could not be decoded as JSON: {e}")))
}

/// The schema root of the resource, for strategic merges and field ownership.
pub(crate) fn schema_root(ctx: &Ctx) -> Value {
    match &ctx.def.schema {
        SchemaSource::Builtin(b) => json!({"$ref": format!("#/components/schemas/{}", b.name)}),
        SchemaSource::Custom(s) => (**s).clone(),
    }
}

fn apply_patch(
    ctx: &Ctx,
    kind: Kind,
    current: &Value,
    patch: &Value,
    schema: Option<&Value>,
) -> Result<Value, ApiError> {
    match kind {
        Kind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("the JSON patch is malformed: {e}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &ops)
                .map_err(|e| ApiError::new(Reason::Invalid, e.to_string()))?;
            Ok(doc)
        }
        Kind::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let mut doc = current.clone();
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
        Kind::Strategic => match schema {
            Some(schema) => skiff_core::smp::apply(ctx.server.schemas(), schema, current, patch)
                .map_err(|e| ApiError::bad_request(e.0)),
            // Views without a schema (Scale) merge plainly.
            None => apply_patch(ctx, Kind::Merge, current, patch, None),
        },
        Kind::Apply => Err(unsupported(ctx)),
    }
}

/// Applies a JSON, merge or strategic patch to a schema-less view (the Scale of an object).
pub(crate) fn apply_simple(
    ctx: &Ctx,
    current: &Value,
    body: &[u8],
    schema: Option<&Value>,
) -> Result<Value, ApiError> {
    let kind = kind(ctx)?;
    if kind == Kind::Apply {
        return Err(unsupported(ctx));
    }
    apply_patch(ctx, kind, current, &parse_json(body)?, schema)
}

/// `PATCH` an object or its status.
pub(crate) async fn patch(
    ctx: &Ctx,
    body: Bytes,
    mode: UpdateMode,
) -> Result<Response<Body>, ApiError> {
    let kind = kind(ctx)?;
    if kind == Kind::Apply {
        return apply(ctx, &body, mode).await;
    }
    let patch = parse_json(&body)?;
    let validation = ctx.field_validation()?;
    let dry_run = ctx.dry_run()?;
    let schema = schema_root(ctx);
    let manager = ctx.field_manager();
    let mut warnings = Vec::new();
    let (status, written) = write_update(
        ctx,
        mode,
        None,
        dry_run,
        Track::Update(&manager),
        |current| {
            let mut patched = apply_patch(ctx, kind, current, &patch, Some(&schema))?;
            check_type(&ctx.def, &mut patched)?;
            // A resourceVersion in the patch is a precondition.
            let rv = |v: &Value| v.pointer("/metadata/resourceVersion").cloned();
            if rv(&patched) != rv(current) && rv(&patched).is_some_and(|v| v != Value::Null) {
                return Err(ApiError::conflict(
                    &ctx.def.group,
                    &ctx.def.plural,
                    ctx.name(),
                    ApiError::STALE,
                ));
            }
            warnings = ctx.server.normalize(&ctx.def, &mut patched, validation)?;
            Ok(patched)
        },
    )
    .await?;
    let mut resp = written_response(ctx, status, written)?;
    rest::warning_headers(&mut resp, &warnings);
    Ok(resp)
}

fn written_response(
    ctx: &Ctx,
    status: StatusCode,
    written: Written,
) -> Result<Response<Body>, ApiError> {
    match written {
        Written::Stored(s) => ctx.respond(status, &s),
        Written::DryRun(v) => Ok(http::json(status, &v)),
    }
}

fn conflict_error(ctx: &Ctx, err: ApplyError) -> ApiError {
    match &err {
        ApplyError::Conflicts(conflicts) => {
            let mut e = ApiError::conflict(&ctx.def.group, &ctx.def.plural, ctx.name(), "");
            e.message = err.to_string();
            e.details.causes = conflicts
                .iter()
                .map(|c| Cause {
                    reason: "FieldManagerConflict".into(),
                    message: format!("conflict with \"{}\" using {}", c.manager, c.api_version),
                    field: ssa::path_string(&c.path),
                })
                .collect();
            e
        }
        _ => ApiError::bad_request(err.to_string()),
    }
}

/// Server-side apply: creates the object if missing, else merges the configuration with
/// field ownership and conflicts.
async fn apply(ctx: &Ctx, body: &[u8], mode: UpdateMode) -> Result<Response<Body>, ApiError> {
    let Some(manager) = ctx
        .query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
    else {
        return Err(ApiError::invalid(
            "",
            "PatchOptions",
            "",
            &[FieldError::required(
                "fieldManager",
                "is required for apply patch",
            )],
        ));
    };
    let force = ctx.query.flag("force");
    let mut config = decode_yaml(body)?;
    check_type(&ctx.def, &mut config)?;
    match config.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if n == ctx.name() => {}
        None | Some("") => config["metadata"]["name"] = json!(ctx.name()),
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                ctx.name()
            )));
        }
    }
    if let Some(ns) = ctx.namespace() {
        match config
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
        {
            None | Some("") => config["metadata"]["namespace"] = json!(ns),
            Some(n) if n == ns => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    }
    let warnings = ctx
        .server
        .normalize(&ctx.def, &mut config, ctx.field_validation()?)?;
    let dry_run = ctx.dry_run()?;
    let schema = schema_root(ctx);
    let now = skiff_core::time::format_time(jiff::Timestamp::now());
    let api_version = ctx.def.api_version();
    let writer = ssa::Writer {
        manager: &manager,
        api_version: &api_version,
        subresource: mode.subresource(),
        now: &now,
    };
    let exists = ctx
        .store()
        .get(&ctx.key())
        .await
        .map_err(rest::store_error)?
        .is_some();
    let mut resp = if !exists {
        if mode != UpdateMode::Main {
            return Err(ctx.not_found());
        }
        let merged = ssa::apply(ctx.server.schemas(), &schema, None, &config, &writer, force)
            .map_err(|e| conflict_error(ctx, e))?;
        let (stored, obj) = rest::create_object(ctx, merged, dry_run, Track::Applied).await?;
        match stored {
            Some(s) => ctx.respond(StatusCode::CREATED, &s)?,
            None => http::json(StatusCode::CREATED, &obj),
        }
    } else {
        let (status, written) = write_update(ctx, mode, None, dry_run, Track::Applied, |current| {
            ssa::apply(
                ctx.server.schemas(),
                &schema,
                Some(current),
                &config,
                &writer,
                force,
            )
            .map_err(|e| conflict_error(ctx, e))
        })
        .await?;
        written_response(ctx, status, written)?
    };
    rest::warning_headers(&mut resp, &warnings);
    Ok(resp)
}
