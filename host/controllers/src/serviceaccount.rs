//! A `default` ServiceAccount in every namespace (kube-controller-manager's serviceaccount
//! controller): made when a namespace is created, made again if it is deleted, never in a
//! namespace that is being deleted.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The ServiceAccount every namespace gets.
pub const DEFAULT: &str = "default";

/// Why a namespace's ServiceAccount could not be made (it is retried).
#[derive(Debug, thiserror::Error)]
#[error("creating serviceaccount {DEFAULT} in namespace {namespace}")]
pub struct Error {
    /// The namespace.
    pub namespace: String,
    /// Why.
    #[source]
    pub source: kube::Error,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    Controller::new(namespaces, watcher::Config::default())
        // A deleted `default` account brings its namespace back for a look.
        .watches(accounts, watcher::Config::default(), |sa| {
            (sa.name_any() == DEFAULT)
                .then(|| sa.namespace())
                .flatten()
                .map(|ns| ObjectRef::<Namespace>::new(&ns))
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, Arc::new(client))
        .for_each(|_| async {})
        .await;
}

fn error_policy(_ns: Arc<Namespace>, err: &Error, _client: Arc<Client>) -> Action {
    warn!(
        error = err as &dyn std::error::Error,
        "ensuring a namespace's default serviceaccount"
    );
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(ns: Arc<Namespace>, client: Arc<Client>) -> Result<Action, Error> {
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::await_change());
    }
    let namespace = ns.name_any();
    let api: Api<ServiceAccount> = Api::namespaced((*client).clone(), &namespace);
    let error = |source| Error {
        namespace: namespace.clone(),
        source,
    };
    if api.get_opt(DEFAULT).await.map_err(error)?.is_some() {
        return Ok(Action::await_change());
    }
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &account).await {
        Ok(_) => info!(%namespace, "created the default serviceaccount"),
        // Made meanwhile, or the namespace began terminating: nothing to do.
        Err(kube::Error::Api(s))
            if s.code == 409 || (s.code == 403 && s.message.contains("being terminated")) => {}
        Err(e) => return Err(error(e)),
    }
    Ok(Action::await_change())
}
