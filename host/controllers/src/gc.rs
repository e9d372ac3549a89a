//! The garbage collector: objects whose owners are gone are deleted, and the three ways of
//! deleting an owner (`kubectl delete --cascade=background|foreground|orphan`) are carried
//! out (kube-controller-manager's garbage collector).
//!
//! It watches the metadata (`PartialObjectMetadata`) of every resource discovery lists as
//! listable, watchable and deletable (events aside, as Kubernetes leaves them aside) and
//! keeps a graph of owner references. For each object that changes it looks at:
//! - **dependents whose owners are gone**: an owner missing from the graph is looked up
//!   live (by name, then uid) before anything happens; a dependent whose owners are all
//!   gone is deleted (background, with a uid precondition), one with some owners left
//!   loses the references to the missing ones;
//! - **owners deleted in the foreground** (`foregroundDeletion` finalizer): their
//!   dependents are deleted (in the foreground too where they block their owner), and the
//!   finalizer is removed once no dependent with `blockOwnerDeletion` is left;
//! - **owners deleted with orphaning** (`orphan` finalizer): their dependents lose the
//!   reference to them, then the finalizer is removed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, DynamicObject, PartialObjectMeta, Preconditions, PropagationPolicy,
};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Discovery, Scope, verbs};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The finalizer of an owner deleted in the foreground.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of an owner deleted with its dependents orphaned.
pub const ORPHAN: &str = "orphan";

/// How often discovery is run again, for resources (custom ones) that appear later.
const REDISCOVER: Duration = Duration::from_secs(30);
/// How long the collector waits for every watch's first list before it starts.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How soon an object whose handling failed is looked at again.
const RETRY: Duration = Duration::from_secs(2);

type Meta = PartialObjectMeta<DynamicObject>;

/// One object of the graph.
#[derive(Clone, Debug)]
struct Node {
    resource: Arc<ApiResource>,
    namespaced: bool,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Node {
    fn api(&self, client: &Client) -> Api<Meta> {
        match (&self.namespace, self.namespaced) {
            (Some(ns), true) => Api::namespaced_with(client.clone(), ns, &*self.resource),
            _ => Api::all_with(client.clone(), &*self.resource),
        }
    }
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    /// Owner uid → the uids of the objects that name it.
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    /// Stores `node` under `uid`; returns the uids worth a look because of the change.
    fn upsert(&mut self, uid: &str, node: Node) -> Vec<String> {
        let mut touched = vec![uid.to_owned()];
        if let Some(old) = self.nodes.get(uid) {
            for o in &old.owners {
                if let Some(d) = self.dependents.get_mut(&o.uid) {
                    d.remove(uid);
                }
                touched.push(o.uid.clone());
            }
        }
        for o in &node.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.to_owned());
            touched.push(o.uid.clone());
        }
        self.nodes.insert(uid.to_owned(), node);
        touched
    }

    /// Forgets `uid`; returns its owners and dependents, which may now need handling.
    fn remove(&mut self, uid: &str) -> Vec<String> {
        let mut touched = Vec::new();
        if let Some(old) = self.nodes.remove(uid) {
            for o in &old.owners {
                if let Some(d) = self.dependents.get_mut(&o.uid) {
                    d.remove(uid);
                }
                touched.push(o.uid.clone());
            }
        }
        touched.extend(self.dependents.get(uid).into_iter().flatten().cloned());
        touched
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, Node)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d).map(|n| (d.clone(), n.clone())))
            .collect()
    }
}

/// Why an object could not be handled this time (it is retried).
#[derive(Debug, thiserror::Error)]
#[error("{what} {resource} {name}")]
pub struct Error {
    what: &'static str,
    resource: String,
    name: String,
    #[source]
    source: kube::Error,
}

struct Collector {
    client: Client,
    graph: Mutex<Graph>,
    discovery: tokio::sync::RwLock<Arc<Discovery>>,
    queue: mpsc::UnboundedSender<String>,
}

/// Runs the garbage collector until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    // Every step (discovery, the first lists, a handled object) ends at shutdown, even one
    // waiting on a server that is shutting down too.
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = collect(client, shutdown.clone()) => {}
    }
}

async fn collect(client: Client, shutdown: CancellationToken) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let discovery = loop {
        match Discovery::new(client.clone()).run().await {
            Ok(d) => break d,
            Err(e) => {
                warn!(error = %e, "garbage collector: discovery failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    };
    let gc = Arc::new(Collector {
        client,
        graph: Mutex::default(),
        discovery: tokio::sync::RwLock::new(Arc::new(discovery)),
        queue: tx,
    });
    let (synced_tx, mut synced_rx) = mpsc::unbounded_channel::<()>();
    let mut watched: HashSet<String> = HashSet::new();
    let initial = gc.watch_new(&mut watched, &synced_tx, &shutdown).await;
    // Owners and dependents must all be known before anything is deleted for want of them.
    let waiting = async {
        for _ in 0..initial {
            synced_rx.recv().await;
        }
    };
    if tokio::time::timeout(SYNC_TIMEOUT, waiting).await.is_err() {
        warn!("garbage collector: not every resource was listed in time; starting anyway");
    }
    info!(resources = watched.len(), "garbage collector synced");
    let mut rediscover = tokio::time::interval(REDISCOVER);
    rediscover.tick().await;
    let mut pending: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = rediscover.tick() => {
                if let Ok(d) = Discovery::new(gc.client.clone()).run().await {
                    *gc.discovery.write().await = Arc::new(d);
                    gc.watch_new(&mut watched, &synced_tx, &shutdown).await;
                }
            }
            uid = rx.recv() => {
                let Some(uid) = uid else { return };
                // Drain what queued meanwhile, each uid once.
                pending.insert(uid);
                while let Ok(more) = rx.try_recv() {
                    pending.insert(more);
                }
                for uid in pending.drain() {
                    if let Err(e) = gc.handle(&uid).await {
                        warn!(error = &e as &dyn std::error::Error, "garbage collector");
                        let queue = gc.queue.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(RETRY).await;
                            let _ = queue.send(uid);
                        });
                    }
                }
            }
        }
    }
}

/// Whether the collector watches this resource.
fn collected(resource: &ApiResource, caps: &kube::discovery::ApiCapabilities) -> bool {
    [verbs::LIST, verbs::WATCH, verbs::DELETE]
        .iter()
        .all(|v| caps.supports_operation(v))
        && resource.plural != "events"
}

impl Collector {
    /// Starts a watch for every collected resource not watched yet; returns how many.
    async fn watch_new(
        self: &Arc<Self>,
        watched: &mut HashSet<String>,
        synced: &mpsc::UnboundedSender<()>,
        shutdown: &CancellationToken,
    ) -> usize {
        let discovery = self.discovery.read().await.clone();
        let mut started = 0;
        for group in discovery.groups() {
            for (resource, caps) in group.recommended_resources() {
                let key = format!("{}.{}", resource.plural, resource.group);
                if !collected(&resource, &caps) || !watched.insert(key) {
                    continue;
                }
                started += 1;
                let namespaced = caps.scope == Scope::Namespaced;
                tokio::spawn(self.clone().watch(
                    Arc::new(resource),
                    namespaced,
                    synced.clone(),
                    shutdown.clone(),
                ));
            }
        }
        started
    }

    /// Feeds one resource's objects into the graph until `shutdown`.
    async fn watch(
        self: Arc<Self>,
        resource: Arc<ApiResource>,
        namespaced: bool,
        synced: mpsc::UnboundedSender<()>,
        shutdown: CancellationToken,
    ) {
        let api: Api<Meta> = Api::all_with(self.client.clone(), &*resource);
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
        // The uids seen since a relist began: what is not seen again went meanwhile.
        let mut relisted: Option<HashSet<String>> = None;
        let mut first = true;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = events.next() => e,
            };
            let event = match event {
                None => return,
                Some(Err(e)) => {
                    debug!(resource = %resource.plural, error = %e, "garbage collector watch");
                    continue;
                }
                Some(Ok(e)) => e,
            };
            let touched = match event {
                watcher::Event::Init => {
                    relisted = Some(HashSet::new());
                    Vec::new()
                }
                watcher::Event::InitApply(o) => {
                    if let (Some(seen), Some(uid)) = (relisted.as_mut(), o.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    self.apply(&resource, namespaced, o)
                }
                watcher::Event::InitDone => {
                    let seen = relisted.take().unwrap_or_default();
                    let mut graph = self.graph.lock().unwrap_or_else(|p| p.into_inner());
                    let gone: Vec<String> = graph
                        .nodes
                        .iter()
                        .filter(|(uid, n)| n.resource == resource && !seen.contains(*uid))
                        .map(|(uid, _)| uid.clone())
                        .collect();
                    let touched = gone.iter().flat_map(|uid| graph.remove(uid)).collect();
                    if std::mem::take(&mut first) {
                        let _ = synced.send(());
                    }
                    touched
                }
                watcher::Event::Apply(o) => self.apply(&resource, namespaced, o),
                watcher::Event::Delete(o) => match &o.metadata.uid {
                    Some(uid) => self
                        .graph
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(uid),
                    None => Vec::new(),
                },
            };
            for uid in touched {
                let _ = self.queue.send(uid);
            }
        }
    }

    fn apply(&self, resource: &Arc<ApiResource>, namespaced: bool, o: Meta) -> Vec<String> {
        let Some(uid) = o.metadata.uid.clone() else {
            return Vec::new();
        };
        let node = Node {
            resource: resource.clone(),
            namespaced,
            namespace: o.metadata.namespace.clone(),
            name: o.name_any(),
            owners: o.metadata.owner_references.clone().unwrap_or_default(),
            deleting: o.metadata.deletion_timestamp.is_some(),
            finalizers: o.metadata.finalizers.clone().unwrap_or_default(),
        };
        self.graph
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .upsert(&uid, node)
    }

    fn error<'a>(
        what: &'static str,
        node: &'a Node,
    ) -> impl FnOnce(kube::Error) -> Error + use<'a> {
        move |source| Error {
            what,
            resource: format!("{}.{}", node.resource.plural, node.resource.group),
            name: match &node.namespace {
                Some(ns) => format!("{ns}/{}", node.name),
                None => node.name.clone(),
            },
            source,
        }
    }

    /// Brings one object in line with its owners, or its dependents in line with it.
    async fn handle(&self, uid: &str) -> Result<(), Error> {
        let node = self
            .graph
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .get(uid)
            .cloned();
        let Some(node) = node else { return Ok(()) };
        if node.deleting {
            if node.finalizers.iter().any(|f| f == ORPHAN) {
                return self.orphan_dependents(uid, &node).await;
            }
            if node.finalizers.iter().any(|f| f == FOREGROUND) {
                return self.delete_dependents(uid, &node).await;
            }
            return Ok(());
        }
        if node.owners.is_empty() {
            return Ok(());
        }
        let mut gone = Vec::new();
        for owner in &node.owners {
            if !self.owner_exists(&node, owner).await? {
                gone.push(owner.uid.clone());
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        let api = node.api(&self.client);
        if gone.len() == node.owners.len() {
            info!(
                resource = %node.resource.plural,
                namespace = node.namespace.as_deref().unwrap_or(""),
                name = %node.name,
                "deleting an object whose owners are gone"
            );
            let params = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                preconditions: Some(Preconditions {
                    uid: Some(uid.to_owned()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            return match api.delete(&node.name, &params).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                Err(e) => Err(Self::error("deleting", &node)(e)),
            };
        }
        let kept: Vec<OwnerReference> = node
            .owners
            .iter()
            .filter(|o| !gone.contains(&o.uid))
            .cloned()
            .collect();
        self.set_owners(uid, &node, &kept).await
    }

    /// Whether `owner` (of `dependent`) exists: in the graph, or else live, by name and uid.
    async fn owner_exists(&self, dependent: &Node, owner: &OwnerReference) -> Result<bool, Error> {
        if self
            .graph
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .contains_key(&owner.uid)
        {
            return Ok(true);
        }
        let (group, version) = match owner.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", owner.api_version.as_str()),
        };
        let gvk = GroupVersionKind::gvk(group, version, &owner.kind);
        let resolved = self.discovery.read().await.resolve_gvk(&gvk);
        // An owner of a kind the server doesn't serve can't be looked up: the dependent
        // stays (Kubernetes too leaves it until the kind can be resolved).
        let Some((resource, caps)) = resolved else {
            debug!(kind = %owner.kind, "an owner's kind is not served");
            return Ok(true);
        };
        let api: Api<Meta> = match (&dependent.namespace, caps.scope) {
            (Some(ns), Scope::Namespaced) => {
                Api::namespaced_with(self.client.clone(), ns, &resource)
            }
            (None, Scope::Namespaced) => return Ok(false),
            _ => Api::all_with(self.client.clone(), &resource),
        };
        match api.get_opt(&owner.name).await {
            Ok(found) => Ok(found.is_some_and(|o| o.metadata.uid.as_deref() == Some(&owner.uid))),
            Err(e) => Err(Self::error("looking up the owner of", dependent)(e)),
        }
    }

    /// Deletes the dependents of an owner deleted in the foreground; removes its
    /// finalizer once none that blocks it is left.
    async fn delete_dependents(&self, uid: &str, owner: &Node) -> Result<(), Error> {
        let dependents = self
            .graph
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dependents_of(uid);
        let mut blocking = 0;
        for (dep_uid, dep) in &dependents {
            let blocks = dep
                .owners
                .iter()
                .any(|o| o.uid == uid && o.block_owner_deletion == Some(true));
            if blocks {
                blocking += 1;
            }
            if dep.deleting {
                continue;
            }
            let params = DeleteParams {
                propagation_policy: Some(if blocks {
                    PropagationPolicy::Foreground
                } else {
                    PropagationPolicy::Background
                }),
                preconditions: Some(Preconditions {
                    uid: Some(dep_uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match dep.api(&self.client).delete(&dep.name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(Self::error("deleting a dependent", dep)(e)),
            }
        }
        if blocking > 0 {
            debug!(name = %owner.name, blocking, "waiting for dependents");
            return Ok(());
        }
        self.remove_finalizer(uid, owner, FOREGROUND).await
    }

    /// Takes an owner deleted with orphaning out of its dependents' owner references, then
    /// removes its finalizer.
    async fn orphan_dependents(&self, uid: &str, owner: &Node) -> Result<(), Error> {
        let dependents = self
            .graph
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dependents_of(uid);
        for (dep_uid, dep) in &dependents {
            let kept: Vec<OwnerReference> = dep
                .owners
                .iter()
                .filter(|o| o.uid != uid)
                .cloned()
                .collect();
            self.set_owners(dep_uid, dep, &kept).await?;
        }
        self.remove_finalizer(uid, owner, ORPHAN).await
    }

    /// Replaces an object's owner references, if it is still the object the graph knows
    /// (a JSON patch that tests the uid and the references it replaces).
    async fn set_owners(
        &self,
        uid: &str,
        node: &Node,
        owners: &[OwnerReference],
    ) -> Result<(), Error> {
        let patch = crate::owners::set_owners(uid, Some(&node.owners), owners);
        self.patch(node, patch, "updating the owner references of")
            .await
    }

    async fn remove_finalizer(&self, uid: &str, node: &Node, finalizer: &str) -> Result<(), Error> {
        let patch = crate::owners::without_finalizer(uid, &node.finalizers, finalizer);
        info!(
            resource = %node.resource.plural,
            name = %node.name,
            finalizer,
            "dependents handled; removing the finalizer"
        );
        self.patch(node, patch, "removing a finalizer of").await
    }

    /// A guarded JSON patch (see `owners::guarded_patch`).
    async fn patch(
        &self,
        node: &Node,
        patch: json_patch::Patch,
        what: &'static str,
    ) -> Result<(), Error> {
        crate::owners::guarded_patch(&node.api(&self.client), &node.name, patch)
            .await
            .map(|_| ())
            .map_err(Self::error(what, node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(owners: &[&str]) -> Node {
        Node {
            resource: Arc::new(ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(
                &(),
            )),
            namespaced: true,
            namespace: Some("default".into()),
            name: "x".into(),
            owners: owners
                .iter()
                .map(|uid| OwnerReference {
                    uid: (*uid).into(),
                    ..Default::default()
                })
                .collect(),
            deleting: false,
            finalizers: Vec::new(),
        }
    }

    #[test]
    fn the_graph_follows_owner_references_as_they_change() {
        let mut g = Graph::default();
        g.upsert("rs", node(&["deploy"]));
        let touched = g.upsert("pod", node(&["rs"]));
        assert!(touched.contains(&"rs".to_owned()));
        assert_eq!(g.dependents_of("rs").len(), 1);
        // Re-owned: the old owner loses it and both owners get a look.
        let touched = g.upsert("pod", node(&["other"]));
        assert!(touched.contains(&"rs".to_owned()) && touched.contains(&"other".to_owned()));
        assert!(g.dependents_of("rs").is_empty());
        // An owner that goes brings its dependents up for a look.
        g.upsert("pod2", node(&["rs"]));
        let touched = g.remove("rs");
        assert!(touched.contains(&"pod2".to_owned()) && touched.contains(&"deploy".to_owned()));
    }
}
