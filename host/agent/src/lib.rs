//! skiff's node agent (the kubelet's part): registers the Node and keeps its Lease, watches
//! the pods bound to it and runs each in real containers through a [`ContainerRuntime`]
//! (youki's libcontainer, through per-container shims), with images from OCI registries.
//!
//! Like every skiff component but the API server, it is an API client: it lists and watches
//! through the HTTP API and writes pod status, events and deletions back through it.

pub mod attach;
pub mod image;
pub mod join;
pub mod logs;
pub mod metrics;
pub mod node;
mod pod;
pub mod portforward;
pub mod probe;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod shim;
pub mod spdy;
pub mod spec;
pub mod status;
pub mod streams;
pub mod trim;
pub mod youki;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use runtime::{ContainerRuntime, FakeRuntime};
pub use youki::{YoukiConfig, YoukiRuntime};

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The Node's name.
    pub node_name: String,
    /// Extra labels for the Node.
    pub node_labels: Vec<(String, String)>,
    /// The node's address (InternalIP; the hostIP of its pods).
    pub address: IpAddr,
    /// The agent's HTTPS port, published in the Node's daemonEndpoints.
    pub port: u16,
    /// Images, pod logs and pod directories live under this.
    pub data_dir: PathBuf,
    /// Registries pulled from over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The parent of every pod's cgroup (`/skiff`).
    pub cgroup_root: String,
    /// The `pods` capacity.
    pub max_pods: u32,
    /// CPUs, for resourceFieldRef of unlimited containers.
    pub capacity_cpu: u64,
    /// Memory bytes, likewise.
    pub capacity_memory: u64,
    /// The HTTPS endpoint's certificate and client CA. Without them the agent asks the
    /// cluster for a serving certificate once its Node is registered, if it joined with
    /// [`join::client`] (`serving_certificate_dir`); else the endpoint is not served (and
    /// `kubectl logs` can't reach this node).
    pub tls: Option<server::ServerTls>,
    /// Where [`join`] keeps the node's credentials: set when the agent joined a cluster.
    pub serving_certificate_dir: Option<PathBuf>,
    /// Unmap the executable's start-up pages once the first pod list is in (see [`trim`]):
    /// for an agent process of its own, not one inside `skiff server`.
    pub trim_startup_pages: bool,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The API refused or could not be reached.
    #[error("registering the node: {0}")]
    Register(#[source] kube::Error),
    /// The image store could not be opened.
    #[error(transparent)]
    Images(#[from] image::ImageError),
    /// The HTTPS endpoint could not be set up.
    #[error("serving the agent's API: {0}")]
    Serve(String),
}

/// What every pod worker shares.
pub(crate) struct Shared<R: ContainerRuntime> {
    pub(crate) client: kube::Client,
    pub(crate) config: AgentConfig,
    pub(crate) runtime: Arc<R>,
    pub(crate) images: image::ImageStore,
    pub(crate) recorder: skiff_events::Recorder,
    /// What the log endpoint needs of each container: (namespace, pod, container).
    pub(crate) views: std::sync::Mutex<HashMap<(String, String, String), CtrView>>,
}

/// What the agent's API knows of one container.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CtrView {
    pub(crate) uid: String,
    /// The current container's ID.
    pub(crate) id: Option<String>,
    pub(crate) restarts: i32,
    pub(crate) running: bool,
    /// Its current (or last) run started, so there is a log.
    pub(crate) started: bool,
    /// A run before that one exists (`--previous`).
    pub(crate) started_before: bool,
    pub(crate) waiting: Option<String>,
    /// The pod's network namespace (none: the host's).
    pub(crate) netns: Option<PathBuf>,
}

impl<R: ContainerRuntime> Shared<R> {
    pub(crate) fn view(&self, namespace: &str, pod: &str, container: &str) -> Option<CtrView> {
        let views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views
            .get(&(namespace.to_owned(), pod.to_owned(), container.to_owned()))
            .cloned()
    }

    /// The network namespace of a pod on this node, if it is here (`Some(None)`: the host's).
    pub(crate) fn pod_netns(&self, namespace: &str, pod: &str) -> Option<Option<PathBuf>> {
        let views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views
            .iter()
            .find(|((ns, p, _), v)| ns == namespace && p == pod && v.running)
            .map(|(_, v)| v.netns.clone())
    }

    /// The running containers, with their cgroups, for the resource metrics.
    pub(crate) fn measured(&self) -> Vec<metrics::Measured> {
        let views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        let root = &self.config.cgroup_root;
        views
            .iter()
            .filter(|(_, v)| v.running)
            .filter_map(|((namespace, pod, container), v)| {
                let pod_cgroup = format!("{root}/pod{}", v.uid);
                Some(metrics::Measured {
                    namespace: namespace.clone(),
                    pod: pod.clone(),
                    container: container.clone(),
                    cgroup: format!("{pod_cgroup}/{}", v.id.as_ref()?),
                    pod_cgroup,
                })
            })
            .collect()
    }

    /// Replaces what is known of a pod's containers (none: the pod is gone).
    pub(crate) fn set_views(
        &self,
        namespace: &str,
        pod: &str,
        uid: &str,
        views: Vec<(String, CtrView)>,
    ) {
        let mut all = self.views.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(ns, p, _), v| !(ns == namespace && p == pod && v.uid == uid));
        for (name, view) in views {
            all.insert((namespace.to_owned(), pod.to_owned(), name), view);
        }
    }

    /// A pod's own directory: its sandbox's namespace files and its /etc files.
    pub(crate) fn pod_dir(&self, uid: &str) -> PathBuf {
        self.config.data_dir.join("pods").join(uid)
    }

    /// A container's root filesystem directory.
    pub(crate) fn rootfs_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("rootfs").join(id)
    }

    /// The log of one run of a container, where the kubelet keeps it
    /// (`<ns>_<pod>_<uid>/<container>/<restartCount>.log`).
    pub(crate) fn log_path(
        &self,
        namespace: &str,
        pod: &str,
        uid: &str,
        container: &str,
        restarts: i32,
    ) -> PathBuf {
        log_dir(&self.config.data_dir, namespace, pod, uid, container)
            .join(format!("{restarts}.log"))
    }

    /// Keeps the logs of the current run and the one before (`logs --previous`).
    pub(crate) fn prune_logs(
        &self,
        uid: &str,
        namespace: &str,
        pod: &str,
        container: &str,
        current: i32,
    ) {
        let dir = log_dir(&self.config.data_dir, namespace, pod, uid, container);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let n: Option<i32> = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse().ok());
            if n.is_some_and(|n| n < current - 1) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Where a container's logs are.
pub fn log_dir(
    data_dir: &std::path::Path,
    namespace: &str,
    pod: &str,
    uid: &str,
    container: &str,
) -> PathBuf {
    data_dir
        .join("logs")
        .join(format!("{namespace}_{pod}_{uid}"))
        .join(container)
}

/// Runs the agent until `shutdown`: registers the node, heartbeats, and runs the pods bound
/// to it. Containers keep running when the agent stops; the next agent re-adopts them.
pub async fn run<R: ContainerRuntime>(
    client: kube::Client,
    config: AgentConfig,
    runtime: R,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let mut config = config;
    let serves = config.tls.is_some() || config.serving_certificate_dir.is_some();
    let listener = if serves {
        let listener = tokio::net::TcpListener::bind((config.address, config.port))
            .await
            .map_err(|e| {
                AgentError::Serve(format!("binding {}:{}: {e}", config.address, config.port))
            })?;
        // Port 0 picks a free port; the Node publishes the real one.
        config.port = listener
            .local_addr()
            .map_err(|e| AgentError::Serve(e.to_string()))?
            .port();
        Some(listener)
    } else {
        warn!("no serving certificate: logs and exec can't reach this node");
        None
    };
    let given_tls = match &config.tls {
        Some(tls) => Some(server::tls_config(tls).map_err(AgentError::Serve)?),
        None => None,
    };
    let machine = node::Machine::read(&config.data_dir);
    node::register(&client, &config, &machine)
        .await
        .map_err(AgentError::Register)?;
    tokio::spawn(node::heartbeat(
        client.clone(),
        config.clone(),
        machine,
        shutdown.clone(),
    ));
    let images =
        image::ImageStore::open(&config.data_dir.join("images"), &config.insecure_registries)?;
    let shared = Arc::new(Shared {
        recorder: skiff_events::Recorder::new(
            client.clone(),
            "kubelet",
            Some(config.node_name.clone()),
        ),
        client: client.clone(),
        config: config.clone(),
        runtime: Arc::new(runtime),
        images,
        views: Default::default(),
    });
    if let Some(listener) = listener {
        tokio::spawn(serve_api(
            listener,
            given_tls,
            shared.clone(),
            shutdown.clone(),
        ));
    }
    info!(node = %config.node_name, port = config.port, "agent running");
    tokio::select! {
        _ = manage(shared, client, config.node_name.clone()) => {}
        _ = shutdown.cancelled() => {}
    }
    Ok(())
}

/// Serves the agent's HTTPS endpoint: with the given certificate, or with one asked for
/// from the cluster now that the Node is registered (retried until it is issued; pods run
/// meanwhile).
async fn serve_api<R: ContainerRuntime>(
    listener: tokio::net::TcpListener,
    given: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Shared<R>>,
    shutdown: CancellationToken,
) {
    let tls = match given {
        Some(tls) => tls,
        None => {
            let config = &shared.config;
            let dir = config
                .serving_certificate_dir
                .clone()
                .expect("served without a certificate only when one can be asked for");
            loop {
                let asked =
                    join::serving_tls(&shared.client, &config.node_name, config.address, &dir);
                let outcome = tokio::select! {
                    outcome = asked => outcome,
                    _ = shutdown.cancelled() => return,
                };
                match outcome
                    .map_err(|e| e.to_string())
                    .and_then(|t| server::tls_config(&t))
                {
                    Ok(tls) => break tls,
                    Err(error) => {
                        warn!(%error, "getting a serving certificate; retrying in 10 s");
                        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                    }
                }
            }
        }
    };
    server::serve(listener, tls, shared, shutdown).await;
}

/// Starts a worker per pod bound to the node and feeds it the pod's changes; after each
/// (re)list, containers of pods that no longer exist are stopped and removed.
async fn manage<R: ContainerRuntime>(shared: Arc<Shared<R>>, client: kube::Client, node: String) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(api, config).boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Arc<Pod>>>> = HashMap::new();
    let mut listed: Option<Vec<String>> = None;
    let mut trimmed = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "watching pods");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        match event {
            watcher::Event::Init => listed = Some(Vec::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(seen) = &mut listed {
                    seen.push(uid.clone());
                }
                let pod = Arc::new(pod);
                workers.retain(|_, tx| !tx.is_closed());
                match workers.get(&uid) {
                    Some(tx) => {
                        tx.send_replace(Some(pod));
                    }
                    None => {
                        let (tx, rx) = watch::channel(Some(pod.clone()));
                        workers.insert(uid, tx);
                        let worker = pod::Worker::new(shared.clone(), pod);
                        tokio::spawn(worker.run(rx));
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(tx) = workers.remove(&uid) {
                    tx.send_replace(None);
                }
            }
            watcher::Event::InitDone => {
                let seen = listed.take().unwrap_or_default();
                workers.retain(|uid, tx| {
                    let keep = seen.contains(uid);
                    if !keep {
                        tx.send_replace(None);
                    }
                    keep
                });
                orphans(&shared, &seen);
                if shared.config.trim_startup_pages && !trimmed {
                    trimmed = true;
                    trim::trim_startup_pages();
                }
            }
        }
    }
}

/// Stops and removes containers (and sandboxes) of pods that are gone: deleted while no
/// agent was running.
fn orphans<R: ContainerRuntime>(shared: &Arc<Shared<R>>, live: &[String]) {
    let Ok(listed) = shared.runtime.list() else {
        return;
    };
    for l in listed {
        let Some(uid) = l.annotations.get("io.kubernetes.pod.uid").cloned() else {
            continue;
        };
        if live.contains(&uid) {
            continue;
        }
        info!(id = %l.id, pod.uid = %uid, "removing a container of a pod that is gone");
        if matches!(l.state, runtime::ContainerState::Running(_)) {
            let _ = shared.runtime.signal(&l.id, 9, true);
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = shared.runtime.wait(&l.id).await;
            let _ = shared.runtime.remove(&l.id);
            let _ = image::ImageStore::release_rootfs(&shared.rootfs_dir(&l.id));
            let dir = shared.pod_dir(&uid);
            let _ = sandbox::remove(&dir.join("ns"));
            let _ = std::fs::remove_dir_all(&dir);
            youki::remove_cgroup(&format!("{}/pod{uid}", shared.config.cgroup_root));
        });
    }
}
