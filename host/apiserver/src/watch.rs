//! Watch streams: `GET <collection>?watch=true`.
//!
//! A watch from resourceVersion N sends every later change in order; unset or "0" first
//! sends the current objects as synthetic ADDED events (`kubectl get X -w` relies on it),
//! as does `sendInitialEvents=true`, which ends its initial batch with a bookmark annotated
//! `k8s.io/initial-events-end`. With selectors, an object that starts matching is ADDED and
//! one that stops matching is DELETED. Events are newline-delimited JSON objects, or
//! one-row Tables when the client asked for Tables. A watch whose starting revision has
//! left the history gets one ERROR event with a 410 Expired Status and ends.

use std::convert::Infallible;
use std::time::Duration;

use ::http::{Response, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use rand::Rng;
use serde_json::{Value, json};
use skiff_core::registry::collection_prefix;
use skiff_core::status::ApiError;
use skiff_core::table::{IncludeObject, to_table};
use skiff_store::EventType;
use tokio::sync::mpsc;
use tracing::debug;

use crate::http::{self, Body, Output};
use crate::rest::{self, Ctx, Filter, store_error};

/// How many encoded events may wait for a slow client before the watch stops reading the
/// store (the store keeps history, so nothing is lost meanwhile).
const BUFFER: usize = 256;

struct Encoder {
    output: Output,
    include: IncludeObject,
    /// Whether the column definitions went out yet (only the first Table event has them).
    headers_sent: bool,
    def: std::sync::Arc<skiff_core::resources::ResourceDef>,
}

impl Encoder {
    fn event(&mut self, kind: &str, object: &Value, raw: Option<&Bytes>) -> Bytes {
        match self.output {
            Output::Json => {
                let mut line = Vec::with_capacity(raw.map_or(256, |r| r.len() + 32));
                line.extend_from_slice(b"{\"type\":\"");
                line.extend_from_slice(kind.as_bytes());
                line.extend_from_slice(b"\",\"object\":");
                match raw {
                    Some(r) => line.extend_from_slice(r),
                    None => line.extend_from_slice(&serde_json::to_vec(object).unwrap_or_default()),
                }
                line.extend_from_slice(b"}\n");
                Bytes::from(line)
            }
            Output::Metadata => {
                line(&json!({"type": kind, "object": http::partial_metadata(object)}))
            }
            Output::Table => {
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                let mut table = to_table(
                    &self.def,
                    std::slice::from_ref(object),
                    jiff::Timestamp::now(),
                    self.include,
                    rv,
                    None,
                );
                if self.headers_sent {
                    table["columnDefinitions"] = Value::Null;
                }
                self.headers_sent = true;
                line(&json!({"type": kind, "object": table}))
            }
        }
    }

    fn bookmark(&self, revision: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object =
            json!({"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": meta});
        line(&json!({"type": "BOOKMARK", "object": object}))
    }
}

fn line(value: &Value) -> Bytes {
    let mut v = serde_json::to_vec(value).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn expired_event(err: &ApiError) -> Bytes {
    line(&json!({"type": "ERROR", "object": err.to_status()}))
}

/// `GET …/<collection>?watch=true`.
pub(crate) async fn serve(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let filter = Filter::parse(&ctx)?;
    let output = http::negotiate(&ctx.headers)?;
    let include = rest::include_object(&ctx.query)?;
    let bookmarks = ctx.query.flag("allowWatchBookmarks");
    let send_initial = ctx.query.get("sendInitialEvents").map(|v| v == "true");
    let rv = ctx.query.get("resourceVersion").filter(|v| !v.is_empty());
    let timeout = match ctx.query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {t}")))?,
        ),
        None => {
            let min = ctx.server.config.min_request_timeout;
            min + min.mul_f64(rand::rng().random::<f64>())
        }
    };
    let initial = match (send_initial, rv) {
        (Some(true), _) => true,
        (Some(false), _) => false,
        (None, None | Some("0")) => true,
        (None, Some(_)) => false,
    };
    let mut encoder = Encoder {
        output,
        include,
        headers_sent: false,
        def: ctx.def.clone(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFER);
    // The initial state, if any, is read before answering so errors are plain HTTP errors.
    let mut initial_events = Vec::new();
    let start = if initial {
        let page = rest::list_page(&ctx, &filter, 0).await?;
        for item in &page.items {
            let value = ctx.value(item)?;
            let raw = (!ctx.converts()).then_some(&item.data);
            initial_events.push(encoder.event("ADDED", &value, raw));
        }
        if send_initial == Some(true) {
            initial_events.push(encoder.bookmark(page.revision, true));
        }
        page.revision
    } else {
        let rv = rv.unwrap_or("0");
        rv.parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?
    };
    let prefix = collection_prefix(&ctx.def, ctx.namespace());
    let watch = ctx.server.store.watch(prefix, start);
    let shutdown = ctx.server.shutdown.clone();
    let bookmark_interval = ctx.server.config.bookmark_interval;
    let def = ctx.def.clone();
    let converts = ctx.converts();
    tokio::spawn(async move {
        for event in initial_events {
            if tx.send(event).await.is_err() {
                return;
            }
        }
        let mut watch = match watch {
            Ok(w) => w,
            Err(err) => {
                let _ = tx.send(expired_event(&store_error(err))).await;
                return;
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + bookmark_interval,
            bookmark_interval,
        );
        loop {
            let next = tokio::select! {
                _ = &mut deadline => break,
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(encoder.bookmark(watch.progress(), false)).await.is_err() {
                        break;
                    }
                    continue;
                }
                next = watch.next() => next,
            };
            let event = match next {
                None => break,
                Some(Err(err)) => {
                    let _ = tx.send(expired_event(&store_error(err))).await;
                    break;
                }
                Some(Ok(event)) => event,
            };
            let Some(object) = event.object_value() else {
                continue;
            };
            let now_matches = filter.is_empty() || filter.matches(object);
            let was_matching = match event.kind {
                EventType::Added => false,
                _ => event
                    .prev_value()
                    .is_some_and(|p| filter.is_empty() || filter.matches(p)),
            };
            let kind = match event.kind {
                EventType::Added if now_matches => "ADDED",
                EventType::Modified if now_matches && was_matching => "MODIFIED",
                EventType::Modified if now_matches => "ADDED",
                EventType::Modified if was_matching => "DELETED",
                EventType::Deleted if was_matching => "DELETED",
                _ => continue,
            };
            // An object that stops matching is DELETED in its last matching state, with the
            // revision of the change (as Kubernetes' watch cache sends it).
            let left = event.kind == EventType::Modified && !now_matches;
            let bytes = if left || converts {
                let mut shown = match event.prev_value() {
                    Some(prev) if left => prev.clone(),
                    _ => object.clone(),
                };
                if left {
                    shown["metadata"]["resourceVersion"] = event.revision.to_string().into();
                }
                let shown = if converts {
                    skiff_core::convert::from_storage(&def, shown)
                } else {
                    shown
                };
                encoder.event(kind, &shown, None)
            } else {
                encoder.event(kind, object, Some(&event.object))
            };
            if tx.send(bytes).await.is_err() {
                break;
            }
        }
        debug!("watch ended");
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    *resp.status_mut() = StatusCode::OK;
    let content_type = match output {
        Output::Json | Output::Metadata => http::JSON,
        Output::Table => http::TABLE,
    };
    resp.headers_mut().insert(
        ::http::header::CONTENT_TYPE,
        ::http::HeaderValue::from_static(content_type),
    );
    Ok(resp)
}

/// `GET …/watch/<collection>/<name>`: the legacy single-object watch path.
pub(crate) async fn serve_one(mut ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let name = ctx.path.name.take().unwrap_or_default();
    let selector = format!("metadata.name={name}");
    let mut pairs: Vec<String> = vec![format!("fieldSelector={}", selector.replace('=', "%3D"))];
    for key in ["resourceVersion", "timeoutSeconds", "allowWatchBookmarks"] {
        if let Some(v) = ctx.query.get(key) {
            pairs.push(format!("{key}={v}"));
        }
    }
    ctx.query = http::Query::parse(Some(&pairs.join("&")));
    serve(ctx).await
}
