//! Namespaces being deleted: their contents are deleted, then the namespace goes
//! (kube-controller-manager's namespace controller).
//!
//! A deleted namespace is `Terminating` with the `kubernetes` finalizer in
//! `spec.finalizers` (the API server puts both there). This controller deletes every
//! namespaced resource in it that discovery lists as deletable (a delete-collection where the
//! resource allows it, one delete per object otherwise), and reports what is left in the
//! namespace's `NamespaceContentRemaining` and `NamespaceFinalizersRemaining` conditions,
//! worded as Kubernetes words them. Once nothing is left it removes its finalizer through
//! the `finalize` subresource, and the API server deletes the namespace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

/// The finalizer in `spec.finalizers` this controller is responsible for.
pub const FINALIZER: &str = "kubernetes";

/// How soon a namespace whose content is still going away is looked at again (pods
/// finishing their grace periods, finalizers being removed by their owners).
const RECHECK: Duration = Duration::from_secs(2);

/// How soon a namespace that changed under a write is looked at again.
const CONFLICT: Duration = Duration::from_millis(200);

/// Why a namespace could not be finished this time (it is retried).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Discovery, a delete, a list or the finalize call failed.
    #[error("{what} in namespace {namespace}")]
    Api {
        /// The namespace.
        namespace: String,
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

struct Ctx {
    client: Client,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client });
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_ns: Arc<Namespace>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    warn!(
        error = err as &dyn std::error::Error,
        "deleting a namespace's content"
    );
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let span = info_span!("reconcile", namespace = %ns.name_any());
    reconcile_one(ns, ctx).instrument(span).await
}

/// What is left in a namespace after a round of deletes.
#[derive(Debug, Default, PartialEq)]
pub struct Remaining {
    /// Objects still there, by `resource.group`.
    pub resources: BTreeMap<String, usize>,
    /// Finalizers holding objects, with how many objects each holds.
    pub finalizers: BTreeMap<String, usize>,
}

impl Remaining {
    fn count(&mut self, resource: &ApiResource, objects: &[DynamicObject]) {
        if objects.is_empty() {
            return;
        }
        *self
            .resources
            .entry(format!("{}.{}", resource.plural, resource.group))
            .or_default() += objects.len();
        for o in objects {
            for f in o.finalizers() {
                *self.finalizers.entry(f.clone()).or_default() += 1;
            }
        }
    }

    /// The namespace's deletion conditions for this state, as Kubernetes sets them.
    pub fn conditions(&self, now: &str) -> Vec<Value> {
        let condition = |type_: &str, status: bool, reason: &str, message: String| {
            json!({
                "type": type_,
                "status": if status { "True" } else { "False" },
                "lastTransitionTime": now,
                "reason": reason,
                "message": message,
            })
        };
        let content = if self.resources.is_empty() {
            condition(
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".into(),
            )
        } else {
            let listed: Vec<String> = self
                .resources
                .iter()
                .map(|(r, n)| format!("{r} has {n} resource instances"))
                .collect();
            condition(
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", listed.join(", ")),
            )
        };
        let finalizers = if self.finalizers.is_empty() {
            condition(
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
            )
        } else {
            let listed: Vec<String> = self
                .finalizers
                .iter()
                .map(|(f, n)| format!("{f} in {n} resource instances"))
                .collect();
            condition(
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    listed.join(", ")
                ),
            )
        };
        vec![content, finalizers]
    }
}

/// Whether the namespace controller deletes this resource's objects: namespaced, listable
/// and deletable.
fn deletable(caps: &ApiCapabilities) -> bool {
    caps.scope == Scope::Namespaced
        && caps.supports_operation(verbs::LIST)
        && (caps.supports_operation(verbs::DELETE_COLLECTION)
            || caps.supports_operation(verbs::DELETE))
}

async fn reconcile_one(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = ns.name_any();
    let ours = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    if ns.metadata.deletion_timestamp.is_none() || !ours {
        return Ok(Action::await_change());
    }
    let api_error = |what: String| {
        let namespace = name.clone();
        move |source| Error::Api {
            namespace,
            what,
            source,
        }
    };
    let discovery = Discovery::new(ctx.client.clone())
        .run()
        .await
        .map_err(api_error("discovering resources".into()))?;
    let mut remaining = Remaining::default();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            if !deletable(&caps) {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &name, &resource);
            let what = |verb: &str| format!("{verb} {}.{}", resource.plural, resource.group);
            // Background propagation: the garbage collector deletes what these owned.
            let background = DeleteParams::background();
            if caps.supports_operation(verbs::DELETE_COLLECTION) {
                api.delete_collection(&background, &ListParams::default())
                    .await
                    .map_err(api_error(what("deleting")))?;
            } else {
                for o in api
                    .list(&ListParams::default())
                    .await
                    .map_err(api_error(what("listing")))?
                {
                    match api.delete(&o.name_any(), &background).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => return Err(api_error(what("deleting"))(e)),
                    }
                }
            }
            let left = api
                .list(&ListParams::default())
                .await
                .map_err(api_error(what("listing")))?;
            remaining.count(&resource, &left.items);
        }
    }
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string();
    let conditions = remaining.conditions(&now);
    let mut current = (*ns).clone();
    if conditions_changed(&ns, &conditions) {
        current = namespaces
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": conditions}})),
            )
            .await
            .map_err(api_error("updating the status".into()))?;
    }
    if !remaining.resources.is_empty() {
        debug!(?remaining, "content remains");
        return Ok(Action::requeue(RECHECK));
    }
    // Everything is gone: our finalizer goes, and with it the namespace.
    let mut finalized = current;
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(
            spec.finalizers
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f != FINALIZER)
                .collect(),
        );
    }
    match namespaces
        .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
        .await
    {
        Ok(_) => info!("namespace content deleted; namespace finalized"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        // Changed meanwhile: the change brings it back here, at its new version.
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Action::requeue(CONFLICT)),
        Err(e) => return Err(api_error("finalizing".into())(e)),
    }
    Ok(Action::await_change())
}

/// Whether `conditions` say something the namespace's status doesn't already (ignoring the
/// transition times), so an unchanged state is not written again.
fn conditions_changed(ns: &Namespace, conditions: &[Value]) -> bool {
    let current = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .cloned()
        .unwrap_or_default();
    conditions.iter().any(|want| {
        !current.iter().any(|have| {
            have.type_ == want["type"].as_str().unwrap_or_default()
                && have.status == want["status"].as_str().unwrap_or_default()
                && have.message.as_deref() == want["message"].as_str()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, finalizers: &[&str]) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "finalizers": finalizers},
        }))
        .unwrap()
    }

    #[test]
    fn conditions_name_what_remains_as_kubernetes_does() {
        let mut remaining = Remaining::default();
        let configmaps = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        let deployments = ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&());
        remaining.count(
            &configmaps,
            &[object("a", &["example.com/hold"]), object("b", &[])],
        );
        remaining.count(&deployments, &[]);
        let c = remaining.conditions("2026-12-06T00:00:00Z");
        assert_eq!(c[0]["type"], "NamespaceContentRemaining");
        assert_eq!(c[0]["status"], "True");
        assert_eq!(
            c[0]["message"],
            "Some resources are remaining: configmaps. has 2 resource instances"
        );
        assert_eq!(
            c[1]["message"],
            "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
        );
        let done = Remaining::default().conditions("2026-12-06T00:00:00Z");
        assert_eq!(
            (done[0]["status"].as_str(), done[1]["reason"].as_str()),
            (Some("False"), Some("ContentHasNoFinalizers"))
        );
    }

    #[test]
    fn an_unchanged_state_is_not_written_again() {
        let remaining = Remaining::default();
        let conditions = remaining.conditions("2026-12-06T00:00:00Z");
        let mut ns = Namespace::default();
        assert!(conditions_changed(&ns, &conditions));
        ns.status = Some(
            serde_json::from_value(json!({
                "conditions": remaining.conditions("2026-12-06T00:00:09Z"),
            }))
            .unwrap(),
        );
        assert!(!conditions_changed(&ns, &conditions));
    }
}
