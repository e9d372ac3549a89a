//! Objects every cluster has: the default namespaces, the `kubernetes` Service with its
//! Endpoints and EndpointSlice, and the system priority classes. Created at start when
//! missing, and recreated within [`REPAIR_INTERVAL`] if deleted, as kube-apiserver's
//! bootstrap controller does.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use skiff_core::registry::collection_prefix;
use skiff_core::status::{ApiError, Reason};
use skiff_store::ListOptions;
use tracing::{info, warn};

use crate::ApiServer;
use crate::rest::{self, Ctx};

const NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Teaches the allocator which Service IPs and ports are taken, before it hands out more.
/// Once at start: afterwards the allocator sees every Service write itself.
pub(crate) async fn observe_services(server: &Arc<ApiServer>) -> Result<(), ApiError> {
    let registry = server.registry();
    let services = registry
        .get("", "v1", "services")
        .expect("built in")
        .clone();
    let existing = server
        .store
        .list(ListOptions {
            prefix: collection_prefix(&services, None),
            ..Default::default()
        })
        .await
        .map_err(rest::store_error)?;
    for svc in &existing.items {
        server.allocator.observe(&rest::to_value(svc)?);
    }
    Ok(())
}

/// Creates the built-in objects that are missing.
pub(crate) async fn ensure_builtin_objects(server: &Arc<ApiServer>) -> Result<(), ApiError> {
    for ns in NAMESPACES {
        ensure(
            server,
            "",
            "namespaces",
            None,
            json!({"metadata": {"name": ns}}),
        )
        .await?;
    }
    let advertise = server.config.advertise_address;
    ensure(
        server,
        "",
        "services",
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": server.allocator.first_ip().to_string(),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": advertise.port()}],
                "sessionAffinity": "None",
            },
        }),
    )
    .await?;
    ensure(
        server,
        "",
        "endpoints",
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{
                "addresses": [{"ip": advertise.ip().to_string()}],
                "ports": [{"name": "https", "port": advertise.port(), "protocol": "TCP"}],
            }],
        }),
    )
    .await?;
    ensure(
        server,
        "discovery.k8s.io",
        "endpointslices",
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": if advertise.is_ipv4() { "IPv4" } else { "IPv6" },
            "endpoints": [{"addresses": [advertise.ip().to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": advertise.port(), "protocol": "TCP"}],
        }),
    )
    .await?;
    for (name, value) in skiff_core::validation::SYSTEM_PRIORITY_CLASSES {
        ensure(
            server,
            "scheduling.k8s.io",
            "priorityclasses",
            None,
            json!({"metadata": {"name": name}, "value": value,
                   "description": "Used for system critical pods that must not be moved from their current node."}),
        )
        .await?;
    }
    Ok(())
}

/// How often deleted built-in objects are recreated.
pub(crate) const REPAIR_INTERVAL: Duration = Duration::from_secs(10);

/// Recreates deleted built-in objects every [`REPAIR_INTERVAL`] until shutdown. The task
/// holds the server weakly, so it ends when the server is dropped too.
pub(crate) fn spawn_repair(server: &Arc<ApiServer>) {
    let weak: Weak<ApiServer> = Arc::downgrade(server);
    let shutdown = server.shutdown.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(REPAIR_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let Some(server) = weak.upgrade() else { break };
            if let Err(err) = ensure_builtin_objects(&server).await {
                warn!(
                    error = &err as &dyn std::error::Error,
                    "repairing built-in objects failed"
                );
            }
        }
    });
}

/// Creates an object unless one of that name exists.
async fn ensure(
    server: &Arc<ApiServer>,
    group: &str,
    plural: &str,
    namespace: Option<&str>,
    mut obj: Value,
) -> Result<(), ApiError> {
    let ctx = Ctx::internal(server, group, "v1", plural, namespace);
    rest::check_type(&ctx.def, &mut obj)?;
    if let Some(ns) = namespace {
        obj["metadata"]["namespace"] = json!(ns);
    }
    match rest::create_object(&ctx, obj, false, rest::Track::Update("skiff-apiserver")).await {
        Ok(_) => {
            info!(
                object.resource = plural,
                object.namespace = namespace,
                "created built-in object"
            );
            Ok(())
        }
        Err(e) if e.reason == Reason::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}
