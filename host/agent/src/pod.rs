//! One worker per pod bound to this node, level-triggered like the kubelet's pod workers:
//! from the pod object and what its containers are doing, it makes the sandbox, pulls
//! images, runs the init containers in order and then the app containers, restarts them by
//! the restart policy with exponential back-off, writes the pod's status, and on deletion
//! stops the containers within the grace period and finishes the API's two-phase delete.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::Shared;
use crate::image::{Image, ImageStore};
use crate::runtime::{ContainerConfig, ContainerRuntime, ContainerState, Exit, Started};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::spec::{ImageConfig, Inputs};
use skiff_events::Kind;

/// The first back-off after a container fails again, doubled each time up to the cap.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
/// The longest back-off (CrashLoopBackOff and ImagePullBackOff).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

const UID: &str = "io.kubernetes.pod.uid";
const NAME: &str = "io.kubernetes.container.name";
const RESTARTS: &str = "io.kubernetes.container.restartCount";

/// What the agent knows of one container of the pod.
#[derive(Debug, Clone)]
struct Ctr {
    spec: Container,
    init: bool,
    /// The current (or last) container's ID.
    id: Option<String>,
    running: Option<Started>,
    /// The current container's exit, while it is not running.
    exited: Option<Exit>,
    /// The termination before the current one (`lastState`).
    previous: Option<Terminated>,
    restarts: i32,
    waiting: Option<(String, String)>,
    /// The delay before the next restart after a failure (none: at once).
    backoff: Option<Duration>,
    /// The delay now being waited, for messages.
    delay: Duration,
    retry_at: Option<Instant>,
    image: Option<Image>,
    /// A start error: terminated with StartError without a process.
    start_error: Option<String>,
    /// The readiness probe passes (or there is none) — for the running container.
    ready: bool,
    /// The startup probe passed (or there is none).
    started: bool,
    /// The running container's prober.
    prober: Option<tokio::task::AbortHandle>,
}

#[derive(Debug, Clone)]
struct Terminated {
    id: String,
    exit: Exit,
    reason: String,
    message: Option<String>,
}

impl Ctr {
    fn new(spec: &Container, init: bool) -> Self {
        Ctr {
            spec: spec.clone(),
            init,
            id: None,
            running: None,
            exited: None,
            previous: None,
            restarts: 0,
            waiting: Some(("ContainerCreating".into(), String::new())),
            backoff: None,
            delay: Duration::ZERO,
            retry_at: None,
            image: None,
            start_error: None,
            ready: false,
            started: false,
            prober: None,
        }
    }

    /// The container stopped running: its probes stop and it is neither ready nor started.
    fn stopped(&mut self) {
        if let Some(p) = self.prober.take() {
            p.abort();
        }
        self.ready = false;
        self.started = false;
    }

    /// Schedules the next attempt after a failure at `now`.
    fn back_off(&mut self, now: Instant) {
        match self.backoff {
            None => {
                self.retry_at = None;
                self.delay = Duration::ZERO;
                self.backoff = Some(INITIAL_BACKOFF);
            }
            Some(b) => {
                self.retry_at = Some(now + b);
                self.delay = b;
                self.backoff = Some((b * 2).min(MAX_BACKOFF));
            }
        }
    }

    fn succeeded(&self) -> bool {
        self.running.is_none() && self.exited.as_ref().is_some_and(|e| e.exit_code == 0)
    }

    fn terminated(&self) -> Option<Terminated> {
        let exit = self.exited.clone()?;
        let reason = if self.start_error.is_some() {
            "StartError"
        } else if exit.oom_killed {
            "OOMKilled"
        } else if exit.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        Some(Terminated {
            id: self.id.clone().unwrap_or_default(),
            exit,
            reason: reason.into(),
            message: self.start_error.clone(),
        })
    }
}

enum Msg {
    Exited(String, Exit),
    Probe(String, crate::probe::Outcome),
}

/// The pod worker.
pub(crate) struct Worker<R: ContainerRuntime> {
    shared: Arc<Shared<R>>,
    pod: Arc<Pod>,
    uid: String,
    ctrs: Vec<Ctr>,
    sandbox: Option<Sandbox>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    last_status: Option<Value>,
    start_time: Option<jiff::Timestamp>,
    finished: bool,
}

impl<R: ContainerRuntime> Worker<R> {
    pub(crate) fn new(shared: Arc<Shared<R>>, pod: Arc<Pod>) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let ctrs = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| Ctr::new(c, true))
            .chain(spec.containers.iter().map(|c| Ctr::new(c, false)))
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        Worker {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0),
            shared,
            pod,
            ctrs,
            sandbox: None,
            tx,
            rx,
            last_status: None,
            finished: false,
        }
    }

    fn namespace(&self) -> String {
        self.pod.metadata.namespace.clone().unwrap_or_default()
    }

    fn name(&self) -> String {
        self.pod.metadata.name.clone().unwrap_or_default()
    }

    fn dir(&self) -> PathBuf {
        self.shared.pod_dir(&self.uid)
    }

    /// Runs until the pod is gone from the API (deleted) and its containers are cleaned up.
    pub(crate) async fn run(mut self, mut updates: watch::Receiver<Option<Arc<Pod>>>) {
        self.adopt();
        loop {
            let current = updates.borrow_and_update().clone();
            let Some(pod) = current else {
                self.stop_all(Some(0)).await;
                self.cleanup();
                return;
            };
            self.pod = pod;
            if self.pod.metadata.deletion_timestamp.is_some() {
                let grace = self.pod.metadata.deletion_grace_period_seconds;
                self.stop_all(grace).await;
                self.write_status().await;
                self.cleanup();
                self.finish_delete().await;
                return;
            }
            if !self.finished {
                self.sync().await;
            }
            self.write_status().await;
            // Only future retries: one that has passed was acted on by this sync (or its
            // container won't restart at all).
            let now = Instant::now();
            let retry = self
                .ctrs
                .iter()
                .filter_map(|c| c.retry_at)
                .filter(|at| *at > now)
                .min();
            tokio::select! {
                changed = updates.changed() => {
                    if changed.is_err() {
                        // The manager dropped us: the agent is shutting down.
                        return;
                    }
                }
                Some(msg) = self.rx.recv() => self.handle(msg).await,
                _ = sleep_until(retry) => {}
            }
            // Take every exit that arrived meanwhile before syncing.
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg).await;
            }
        }
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Probe(id, outcome) => self.probed(&id, outcome).await,
            Msg::Exited(id, exit) => {
                if let Some(c) = self.ctrs.iter_mut().find(|c| c.id.as_deref() == Some(&id)) {
                    debug!(container = %c.spec.name, code = exit.exit_code, "container exited");
                    // The first restart is at once, later ones back off (10 s doubling to
                    // 5 min); a container that ran for twice the cap starts over.
                    let ran = exit.finished_at.duration_since(exit.started_at);
                    if ran > jiff::SignedDuration::try_from(2 * MAX_BACKOFF).unwrap_or_default() {
                        c.backoff = None;
                    }
                    c.back_off(Instant::now());
                    c.running = None;
                    c.exited = Some(exit);
                    c.stopped();
                }
            }
        }
    }

    /// Takes over containers a previous agent process started for this pod.
    fn adopt(&mut self) {
        let Ok(listed) = self.shared.runtime.list() else {
            return;
        };
        let mut adopted = Vec::new();
        let mut mine: Vec<_> = listed
            .into_iter()
            .filter(|l| l.annotations.get(UID) == Some(&self.uid))
            .collect();
        mine.sort_by_key(|l| {
            l.annotations
                .get(RESTARTS)
                .and_then(|r| r.parse::<i32>().ok())
                .unwrap_or(0)
        });
        for l in mine {
            let Some(name) = l.annotations.get(NAME) else {
                continue;
            };
            let Some(c) = self.ctrs.iter_mut().find(|c| &c.spec.name == name) else {
                continue;
            };
            let restarts = l
                .annotations
                .get(RESTARTS)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            if let Some(old) = c.id.take() {
                if let Some(t) = c.terminated() {
                    c.previous = Some(t);
                }
                let _ = self.shared.runtime.remove(&old);
                let _ = ImageStore::release_rootfs(&self.shared.rootfs_dir(&old));
            }
            c.id = Some(l.id.clone());
            c.restarts = restarts;
            c.waiting = None;
            match l.state {
                ContainerState::Running(started) => {
                    c.running = Some(started);
                    c.exited = None;
                    watch_exit(&self.shared, &self.tx, &l.id);
                    adopted.push(l.id.clone());
                }
                ContainerState::Exited(exit) => c.exited = Some(exit),
                ContainerState::Unknown => c.exited = Some(crate::runtime::lost_exit(None)),
            }
            info!(pod = %self.name(), container = %name, id = %l.id, "re-adopted a container");
        }
        if self.ctrs.iter().any(|c| c.id.is_some()) {
            self.sandbox = self.make_sandbox().ok();
        }
        for id in adopted {
            if let Some(i) = self.ctrs.iter().position(|c| c.id.as_deref() == Some(&id)) {
                self.start_probes(i);
            }
        }
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    async fn sync(&mut self) {
        if self.start_time.is_none() {
            self.start_time = Some(jiff::Timestamp::now());
        }
        if self.sandbox.is_none() {
            match self.make_sandbox() {
                Ok(s) => self.sandbox = Some(s),
                Err(e) => {
                    self.event(
                        None,
                        Kind::Warning,
                        "FailedCreatePodSandBox",
                        format!("Failed to create pod sandbox: {e}"),
                    )
                    .await;
                    return;
                }
            }
        }
        let policy = self.restart_policy().to_owned();
        // Init containers, in order: the first one not yet done is run (again).
        let inits: Vec<usize> = (0..self.ctrs.len())
            .filter(|&i| self.ctrs[i].init)
            .collect();
        for i in inits {
            if self.ctrs[i].succeeded() {
                continue;
            }
            if self.ctrs[i].running.is_some() {
                return;
            }
            if self.ctrs[i].exited.is_some() && policy == "Never" {
                // A failed init container fails the pod.
                self.finished = true;
                self.release_sandbox();
                return;
            }
            self.start_or_back_off(i).await;
            return;
        }
        let apps: Vec<usize> = (0..self.ctrs.len())
            .filter(|&i| !self.ctrs[i].init)
            .collect();
        for &i in &apps {
            let c = &self.ctrs[i];
            if c.running.is_some() {
                continue;
            }
            let restart = match (&c.exited, policy.as_str()) {
                (None, _) => true,
                (Some(_), "Always") => true,
                (Some(e), "OnFailure") => e.exit_code != 0,
                _ => false,
            };
            if restart {
                self.start_or_back_off(i).await;
            }
        }
        let done = apps.iter().all(|&i| {
            let c = &self.ctrs[i];
            c.running.is_none()
                && c.exited.as_ref().is_some_and(|e| match policy.as_str() {
                    "Never" => true,
                    "OnFailure" => e.exit_code == 0,
                    _ => false,
                })
        });
        if done {
            self.finished = true;
            self.release_sandbox();
        }
    }

    /// Starts container `i`, unless it is backing off after a failure.
    async fn start_or_back_off(&mut self, i: usize) {
        let now = Instant::now();
        let pod_ref = format!("{}_{}({})", self.name(), self.namespace(), self.uid);
        if let Some(at) = self.ctrs[i].retry_at
            && at > now
        {
            let c = &mut self.ctrs[i];
            let secs = c.delay.as_secs();
            let pulling = c
                .waiting
                .as_ref()
                .is_some_and(|w| w.0 == "ErrImagePull" || w.0 == "ImagePullBackOff");
            let name = c.spec.name.clone();
            let image = c.spec.image.clone().unwrap_or_default();
            let field = field_path(c);
            let config_error = c.waiting.as_ref().is_some_and(|w| {
                matches!(
                    w.0.as_str(),
                    "CreateContainerConfigError" | "CreateContainerError" | "ErrImageNeverPull"
                )
            });
            if pulling {
                c.waiting = Some((
                    "ImagePullBackOff".into(),
                    format!("Back-off pulling image \"{image}\""),
                ));
                self.event(
                    Some(field),
                    Kind::Normal,
                    "BackOff",
                    format!("Back-off pulling image \"{image}\""),
                )
                .await;
            } else if !config_error {
                c.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!("back-off {secs}s restarting failed container={name} pod={pod_ref}"),
                ));
                self.event(
                    Some(field),
                    Kind::Warning,
                    "BackOff",
                    format!("Back-off restarting failed container {name} in pod {pod_ref}"),
                )
                .await;
            }
            return;
        }
        match self.start(i).await {
            Ok(()) => {
                let c = &mut self.ctrs[i];
                c.retry_at = None;
            }
            Err(reason) => {
                let c = &mut self.ctrs[i];
                // Failing to start (or to pull) backs off from the first time.
                c.backoff.get_or_insert(INITIAL_BACKOFF);
                c.back_off(now);
                debug!(container = %c.spec.name, %reason, delay = ?c.delay, "container not started");
            }
        }
    }

    /// Pulls the image if needed and starts a new container for `ctrs[i]`.
    async fn start(&mut self, i: usize) -> Result<(), String> {
        let field = field_path(&self.ctrs[i]);
        let image = self.ensure_image(i).await?;
        let config = self
            .shared
            .images
            .config(&image)
            .map_err(|e| self.fail_waiting(i, "CreateContainerError", e.to_string()))?;
        let env = match self.env(&self.ctrs[i].spec.clone()).await {
            Ok(env) => env,
            Err(message) => {
                self.event(
                    Some(field.clone()),
                    Kind::Warning,
                    "Failed",
                    format!("Error: {message}"),
                )
                .await;
                return Err(self.fail_waiting(i, "CreateContainerConfigError", message));
            }
        };
        let restarts = if self.ctrs[i].id.is_some() {
            self.ctrs[i].restarts + 1
        } else {
            0
        };
        let id = new_id();
        let result = self.create(i, &id, &image, &config, env, restarts).await;
        let (namespace, pod_name) = (self.namespace(), self.name());
        let c = &mut self.ctrs[i];
        // The container that ran before becomes lastState; its files go.
        if let Some(old) = c.id.replace(id.clone()) {
            if let Some(t) = c.terminated() {
                c.previous = Some(t);
            }
            let _ = self.shared.runtime.remove(&old);
            let _ = ImageStore::release_rootfs(&self.shared.rootfs_dir(&old));
            self.shared
                .prune_logs(&self.uid, &namespace, &pod_name, &c.spec.name, restarts);
        }
        c.restarts = restarts;
        let name = c.spec.name.clone();
        match result {
            Ok(started) => {
                c.running = Some(started);
                c.exited = None;
                c.waiting = None;
                c.start_error = None;
                watch_exit(&self.shared, &self.tx, &id);
                self.event(
                    Some(field.clone()),
                    Kind::Normal,
                    "Created",
                    format!("Created container: {name}"),
                )
                .await;
                self.event(
                    Some(field.clone()),
                    Kind::Normal,
                    "Started",
                    format!("Started container {name}"),
                )
                .await;
                // postStart runs before the next container starts, as in the kubelet;
                // failing it kills the container.
                let post_start = self.ctrs[i]
                    .spec
                    .lifecycle
                    .as_ref()
                    .and_then(|l| l.post_start.as_ref())
                    .and_then(hook_handler);
                if let Some(hook) = post_start
                    && let Err(message) = self.run_hook(i, &hook).await
                {
                    self.event(
                        Some(field),
                        Kind::Warning,
                        "FailedPostStartHook",
                        format!("PostStartHook failed: {message}"),
                    )
                    .await;
                    self.kill(i, "FailedPostStartHook").await;
                    return Ok(());
                }
                self.start_probes(i);
                Ok(())
            }
            Err(message) => {
                let now = jiff::Timestamp::now();
                c.running = None;
                c.waiting = None;
                c.start_error = Some(message.clone());
                c.exited = Some(Exit {
                    exit_code: 128,
                    signal: None,
                    oom_killed: false,
                    started_at: now,
                    finished_at: now,
                });
                let _ = ImageStore::release_rootfs(&self.shared.rootfs_dir(&id));
                self.event(
                    Some(field),
                    Kind::Warning,
                    "Failed",
                    format!("Error: {message}"),
                )
                .await;
                Err(message)
            }
        }
    }

    /// How probes and hooks reach container `i`.
    fn target(&self, i: usize) -> Option<crate::probe::Target<R>> {
        let c = &self.ctrs[i];
        Some(crate::probe::Target {
            runtime: self.shared.runtime.clone(),
            id: c.id.clone()?,
            netns: self.sandbox.as_ref().and_then(|s| s.net.clone()),
            ports: c
                .spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| Some((p.name.clone()?, p.container_port)))
                .collect(),
        })
    }

    /// Starts the prober of the running container `i`.
    fn start_probes(&mut self, i: usize) {
        let Some(target) = self.target(i) else { return };
        let tx = self.tx.clone();
        let id = target.id.clone();
        let spec = self.ctrs[i].spec.clone();
        let task = tokio::spawn(crate::probe::run(spec, target, move |outcome| {
            tx.send(Msg::Probe(id.clone(), outcome)).is_ok()
        }));
        if let Some(old) = self.ctrs[i].prober.replace(task.abort_handle()) {
            old.abort();
        }
    }

    async fn probed(&mut self, id: &str, outcome: crate::probe::Outcome) {
        use crate::probe::Outcome;
        let Some(i) = self
            .ctrs
            .iter()
            .position(|c| c.id.as_deref() == Some(id) && c.running.is_some())
        else {
            return;
        };
        let field = field_path(&self.ctrs[i]);
        match outcome {
            Outcome::Started => self.ctrs[i].started = true,
            Outcome::Ready(ready) => self.ctrs[i].ready = ready,
            Outcome::Failed(kind, message) => {
                self.event(
                    Some(field),
                    Kind::Warning,
                    "Unhealthy",
                    format!("{} probe failed: {message}", kind.name()),
                )
                .await;
            }
            Outcome::Restart(kind, _) => {
                let name = self.ctrs[i].spec.name.clone();
                self.event(
                    Some(field),
                    Kind::Normal,
                    "Killing",
                    format!(
                        "Container {name} failed {} probe, will be restarted",
                        kind.name().to_ascii_lowercase()
                    ),
                )
                .await;
                self.kill(i, "probe").await;
            }
        }
    }

    /// Stops container `i` (its preStop hook, SIGTERM, SIGKILL after the grace period) for
    /// the restart policy to act on; the exit arrives as usual.
    async fn kill(&mut self, i: usize, why: &str) {
        self.ctrs[i].stopped();
        let Some(id) = self.ctrs[i].id.clone() else {
            return;
        };
        self.pre_stop(i).await;
        debug!(container = %self.ctrs[i].spec.name, why, "killing a container");
        let _ = self.shared.runtime.signal(&id, 15, false);
        let grace = self.grace_period();
        let runtime = self.shared.runtime.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = runtime.signal(&id, 9, true);
        });
    }

    fn grace_period(&self) -> Duration {
        let secs = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }

    /// Runs a lifecycle hook of container `i`, bounded by the grace period.
    async fn run_hook(&self, i: usize, hook: &Hook) -> Result<(), String> {
        let timeout = self.grace_period().max(Duration::from_secs(1));
        match hook {
            Hook::Sleep(d) => {
                tokio::time::sleep(*d.min(&timeout)).await;
                Ok(())
            }
            Hook::Handler(h) => {
                let target = self.target(i).ok_or("the container is not running")?;
                h.run(&target, timeout).await
            }
        }
    }

    /// Runs container `i`'s preStop hook, if it has one and runs.
    async fn pre_stop(&self, i: usize) {
        let hook = self.ctrs[i]
            .spec
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(hook_handler);
        if let Some(hook) = hook
            && self.ctrs[i].running.is_some()
            && let Err(message) = self.run_hook(i, &hook).await
        {
            self.event(
                Some(field_path(&self.ctrs[i])),
                Kind::Warning,
                "FailedPreStopHook",
                format!("PreStopHook failed: {message}"),
            )
            .await;
        }
    }

    fn fail_waiting(&mut self, i: usize, reason: &str, message: String) -> String {
        self.ctrs[i].waiting = Some((reason.to_owned(), message.clone()));
        message
    }

    async fn ensure_image(&mut self, i: usize) -> Result<Image, String> {
        let c = &self.ctrs[i];
        let reference = c.spec.image.clone().unwrap_or_default();
        let field = field_path(c);
        let tag_latest = !reference.contains('@')
            && reference
                .rsplit('/')
                .next()
                .is_none_or(|last| !last.contains(':') || last.ends_with(":latest"));
        let policy = c
            .spec
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| if tag_latest { "Always" } else { "IfNotPresent" }.into());
        let present = self.shared.images.get(&reference);
        let pull = match (policy.as_str(), &present) {
            ("Never", None) => {
                let message = format!(
                    "Container image \"{reference}\" is not present with pull policy of Never"
                );
                self.event(
                    Some(field),
                    Kind::Warning,
                    "ErrImageNeverPull",
                    message.clone(),
                )
                .await;
                return Err(self.fail_waiting(i, "ErrImageNeverPull", message));
            }
            ("Always", _) => true,
            (_, None) => true,
            _ => false,
        };
        if !pull {
            let image = present.expect("present");
            self.event(
                Some(field),
                Kind::Normal,
                "Pulled",
                format!("Container image \"{reference}\" already present on machine"),
            )
            .await;
            self.ctrs[i].image = Some(image.clone());
            return Ok(image);
        }
        self.event(
            Some(field.clone()),
            Kind::Normal,
            "Pulling",
            format!("Pulling image \"{reference}\""),
        )
        .await;
        let started = std::time::Instant::now();
        match self.shared.images.pull(&reference).await {
            Ok(image) => {
                let took = started.elapsed();
                self.event(
                    Some(field),
                    Kind::Normal,
                    "Pulled",
                    format!(
                        "Successfully pulled image \"{reference}\" in {took:.3?} ({took:.3?} including waiting). Image size: {} bytes.",
                        image.size
                    ),
                )
                .await;
                self.ctrs[i].image = Some(image.clone());
                Ok(image)
            }
            Err(e) => {
                let message = format!("Failed to pull image \"{reference}\": {}", error_chain(&e));
                self.event(
                    Some(field.clone()),
                    Kind::Warning,
                    "Failed",
                    message.clone(),
                )
                .await;
                self.event(
                    Some(field),
                    Kind::Warning,
                    "Failed",
                    "Error: ErrImagePull".into(),
                )
                .await;
                Err(self.fail_waiting(i, "ErrImagePull", message))
            }
        }
    }

    /// The container's environment: `envFrom` first, then `env`, with `$(VAR)` references
    /// expanded against what came before, as the kubelet does.
    async fn env(&self, c: &Container) -> Result<Vec<(String, String)>, String> {
        let mut env: Vec<(String, String)> = Vec::new();
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
            env.retain(|(n, _)| n != &k);
            env.push((k, v));
        };
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(cm) = &from.config_map_ref {
                match self.config_map(&cm.name).await? {
                    Some(data) => data
                        .into_iter()
                        .for_each(|(k, v)| set(&mut env, format!("{prefix}{k}"), v)),
                    None if cm.optional == Some(true) => {}
                    None => return Err(format!("configmap \"{}\" not found", cm.name)),
                }
            }
            if let Some(s) = &from.secret_ref {
                match self.secret(&s.name).await? {
                    Some(data) => data
                        .into_iter()
                        .for_each(|(k, v)| set(&mut env, format!("{prefix}{k}"), v)),
                    None if s.optional == Some(true) => {}
                    None => return Err(format!("secret \"{}\" not found", s.name)),
                }
            }
        }
        for var in c.env.iter().flatten() {
            let value = if let Some(v) = &var.value {
                expand(v, &env)
            } else if let Some(from) = &var.value_from {
                if let Some(f) = &from.field_ref {
                    self.field(&f.field_path)?
                } else if let Some(r) = &from.config_map_key_ref {
                    let data = self.config_map(&r.name).await?;
                    match key_of(
                        data,
                        &r.key,
                        r.optional,
                        "ConfigMap",
                        &self.namespace(),
                        &r.name,
                    )? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let data = self.secret(&r.name).await?;
                    match key_of(
                        data,
                        &r.key,
                        r.optional,
                        "Secret",
                        &self.namespace(),
                        &r.name,
                    )? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(r) = &from.resource_field_ref {
                    self.resource_field(c, &r.resource)?
                } else {
                    String::new()
                }
            } else {
                String::new()
            };
            set(&mut env, var.name.clone(), value);
        }
        Ok(env)
    }

    fn field(&self, path: &str) -> Result<String, String> {
        let meta = &self.pod.metadata;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let label = |map: &Option<BTreeMap<String, String>>, key: &str| {
            map.as_ref()
                .and_then(|m| m.get(key).cloned())
                .unwrap_or_default()
        };
        let bracket = |prefix: &str| {
            path.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix("['").and_then(|r| r.strip_suffix("']")))
                .map(str::to_owned)
        };
        Ok(match path {
            "metadata.name" => self.name(),
            "metadata.namespace" => self.namespace(),
            "metadata.uid" => self.uid.clone(),
            "spec.nodeName" => spec.node_name.unwrap_or_default(),
            "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
            "status.hostIP" | "status.hostIPs" => self.shared.config.address.to_string(),
            "status.podIP" | "status.podIPs" => self.pod_ip().unwrap_or_default(),
            _ => {
                if let Some(k) = bracket("metadata.labels") {
                    label(&meta.labels, &k)
                } else if let Some(k) = bracket("metadata.annotations") {
                    label(&meta.annotations, &k)
                } else {
                    return Err(format!("unsupported fieldRef {path}"));
                }
            }
        })
    }

    fn resource_field(&self, c: &Container, resource: &str) -> Result<String, String> {
        let res = c.resources.clone().unwrap_or_default();
        let (map, name) = match resource.split_once('.') {
            Some(("limits", n)) => (res.limits, n),
            Some(("requests", n)) => (res.requests, n),
            _ => return Err(format!("unsupported resourceFieldRef {resource}")),
        };
        let q = map.and_then(|m| m.get(name).cloned());
        Ok(match (name, q) {
            ("cpu", Some(q)) => {
                // Rounded up to whole cores, as the kubelet does with the default divisor.
                let m = crate::spec::millicores(&q).map_err(|e| e.to_string())?;
                ((m + 999) / 1000).to_string()
            }
            (_, Some(q)) => crate::spec::bytes(&q)
                .map_err(|e| e.to_string())?
                .to_string(),
            ("cpu", None) => self.shared.config.capacity_cpu.to_string(),
            ("memory", None) => self.shared.config.capacity_memory.to_string(),
            _ => "0".into(),
        })
    }

    async fn config_map(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), &self.namespace());
        match api.get_opt(name).await {
            Ok(cm) => Ok(cm.map(|cm| cm.data.unwrap_or_default())),
            Err(e) => Err(format!("getting configmap {name}: {e}")),
        }
    }

    async fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &self.namespace());
        match api.get_opt(name).await {
            Ok(s) => Ok(s.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .chain(s.string_data.unwrap_or_default())
                    .collect()
            })),
            Err(e) => Err(format!("getting secret {name}: {e}")),
        }
    }

    async fn create(
        &self,
        i: usize,
        id: &str,
        image: &Image,
        config: &ImageConfig,
        env: Vec<(String, String)>,
        restarts: i32,
    ) -> Result<Started, String> {
        let c = &self.ctrs[i];
        let sandbox = self.sandbox.clone().unwrap_or_default();
        let rootfs_dir = self.shared.rootfs_dir(id);
        let rootfs = self
            .shared
            .images
            .prepare_rootfs(image, &rootfs_dir)
            .map_err(|e| format!("preparing the root filesystem: {e}"))?;
        let etc = self.dir().join("etc");
        let mut spec = crate::spec::build(&Inputs {
            pod: &self.pod,
            container: &c.spec,
            image: config,
            env,
            rootfs: &rootfs,
            sandbox: &sandbox,
            etc: &etc,
            cgroup: format!("{}/{id}", self.cgroup_parent()),
        })
        .map_err(|e| e.to_string())?;
        let annotations = [
            (UID.to_owned(), self.uid.clone()),
            (NAME.to_owned(), c.spec.name.clone()),
            (RESTARTS.to_owned(), restarts.to_string()),
            ("io.kubernetes.pod.name".to_owned(), self.name()),
            ("io.kubernetes.pod.namespace".to_owned(), self.namespace()),
        ];
        spec.set_annotations(Some(annotations.into_iter().collect::<HashMap<_, _>>()));
        let log_path = self.shared.log_path(
            &self.namespace(),
            &self.name(),
            &self.uid,
            &c.spec.name,
            restarts,
        );
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating the log directory: {e}"))?;
        }
        self.shared
            .runtime
            .start(ContainerConfig {
                id: id.to_owned(),
                spec,
                log_path,
                stdin: c.spec.stdin.unwrap_or(false),
                stdin_once: c.spec.stdin_once.unwrap_or(false),
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// The pod's cgroup, the parent of its containers'.
    fn cgroup_parent(&self) -> String {
        format!("{}/pod{}", self.shared.config.cgroup_root, self.uid)
    }

    fn host_network(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
    }

    fn pod_ip(&self) -> Option<String> {
        // Without a network plugin a pod has only loopback; hostNetwork pods have the node's.
        self.host_network()
            .then(|| self.shared.config.address.to_string())
    }

    fn make_sandbox(&self) -> Result<Sandbox, String> {
        // The pod's cgroup first, as the kubelet makes it: its containers' go inside.
        let limits = crate::spec::pod_limits(&self.pod).map_err(|e| e.to_string())?;
        self.shared
            .runtime
            .configure_pod(&self.cgroup_parent(), &limits)
            .map_err(|e| format!("configuring the pod's cgroup: {e}"))?;
        let dir = self.dir();
        let spec = self.pod.spec.clone().unwrap_or_default();
        let hostname = if self.host_network() {
            self.shared.config.node_name.clone()
        } else {
            spec.hostname.clone().unwrap_or_else(|| self.name())
        };
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(|e| format!("creating {}: {e}", etc.display()))?;
        let mut hosts = String::from(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
        if let Some(ip) = self.pod_ip() {
            let fqdn = spec
                .subdomain
                .as_ref()
                .map(|s| format!("{hostname}.{s}.{}.svc.cluster.local\t", self.namespace()))
                .unwrap_or_default();
            hosts.push_str(&format!("{ip}\t{fqdn}{hostname}\n"));
        }
        for alias in spec.host_aliases.iter().flatten() {
            hosts.push_str(&format!(
                "{}\t{}\n",
                alias.ip,
                alias.hostnames.clone().unwrap_or_default().join("\t")
            ));
        }
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        for (file, contents) in [
            ("hosts", hosts),
            ("hostname", format!("{hostname}\n")),
            ("resolv.conf", resolv),
        ] {
            std::fs::write(etc.join(file), contents)
                .map_err(|e| format!("writing /etc/{file}: {e}"))?;
        }
        crate::sandbox::ensure(&SandboxConfig {
            dir: dir.join("ns"),
            hostname,
            host_network: self.host_network(),
            host_ipc: spec.host_ipc.unwrap_or(false),
        })
        .map_err(|e| e.to_string())
    }

    fn release_sandbox(&mut self) {
        if self.sandbox.take().is_some()
            && let Err(e) = crate::sandbox::remove(&self.dir().join("ns"))
        {
            warn!(pod = %self.name(), error = %e, "releasing the sandbox");
        }
    }

    /// Stops every running container: SIGTERM, then SIGKILL once the grace period is over.
    async fn stop_all(&mut self, grace: Option<i64>) {
        let grace = Duration::from_secs(grace.unwrap_or(30).max(0) as u64);
        let deadline = Instant::now() + grace;
        let running: Vec<(String, String)> = self
            .ctrs
            .iter()
            .filter(|c| c.running.is_some())
            .filter_map(|c| Some((c.id.clone()?, c.spec.name.clone())))
            .collect();
        for c in &mut self.ctrs {
            c.stopped();
        }
        // preStop hooks run first, within the grace period (each is bounded by it).
        if !grace.is_zero() {
            let hooks = (0..self.ctrs.len()).map(|i| self.pre_stop(i));
            let _ = tokio::time::timeout_at(deadline, futures::future::join_all(hooks)).await;
        }
        for (id, name) in &running {
            let field = self
                .ctrs
                .iter()
                .find(|c| &c.spec.name == name)
                .map(field_path);
            self.event(
                field,
                Kind::Normal,
                "Killing",
                format!("Stopping container {name}"),
            )
            .await;
            let signal = if grace.is_zero() { 9 } else { 15 };
            if let Err(e) = self.shared.runtime.signal(id, signal, false) {
                warn!(%id, error = %e, "signalling a container");
            }
        }
        while self.ctrs.iter().any(|c| c.running.is_some()) {
            tokio::select! {
                Some(msg) = self.rx.recv() => self.handle(msg).await,
                _ = tokio::time::sleep_until(deadline) => {
                    for c in self.ctrs.iter().filter(|c| c.running.is_some()) {
                        if let Some(id) = &c.id {
                            let _ = self.shared.runtime.signal(id, 9, true);
                        }
                    }
                    // SIGKILL can't be refused; wait for the exits without a deadline.
                    while self.ctrs.iter().any(|c| c.running.is_some()) {
                        match self.rx.recv().await {
                            Some(msg) => self.handle(msg).await,
                            None => break,
                        }
                    }
                }
            }
        }
    }

    /// Removes every container, root filesystem and the sandbox of the pod.
    fn cleanup(&mut self) {
        for c in &self.ctrs {
            if let Some(id) = &c.id {
                let _ = self.shared.runtime.remove(id);
                let _ = ImageStore::release_rootfs(&self.shared.rootfs_dir(id));
            }
        }
        self.release_sandbox();
        let _ = std::fs::remove_dir_all(self.dir());
        crate::youki::remove_cgroup(&self.cgroup_parent());
        self.shared.recorder.forget(&self.uid);
        self.shared
            .set_views(&self.namespace(), &self.name(), &self.uid, Vec::new());
        let _ = std::fs::remove_dir_all(crate::log_dir(
            &self.shared.config.data_dir,
            &self.namespace(),
            &self.name(),
            &self.uid,
            "",
        ));
    }

    /// The last step of a graceful delete: remove the object (grace 0, this UID only).
    async fn finish_delete(&self) {
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&self.name(), &params).await {
            Ok(_) => info!(pod = %self.name(), "pod deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => warn!(pod = %self.name(), error = %e, "finishing the pod's deletion"),
        }
    }

    async fn event(&self, field_path: Option<String>, kind: Kind, reason: &str, message: String) {
        // `source.component: kubelet`, as kubectl's describe expects of pod events.
        let mut regarding = kube::Resource::object_ref(&*self.pod, &());
        regarding.field_path = field_path;
        self.shared
            .recorder
            .publish(&regarding, kind, reason, message)
            .await;
    }

    fn container_status(&self, c: &Ctr) -> Value {
        let state = if let Some(r) = &c.running {
            json!({"running": {"startedAt": r.started_at.to_string()}})
        } else if let Some((reason, message)) = &c.waiting {
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            json!({"waiting": w})
        } else if let Some(t) = c.terminated() {
            terminated(&t)
        } else {
            json!({"waiting": {"reason": "ContainerCreating"}})
        };
        // While waiting to restart, the exit just seen is the last state.
        let last = if c.running.is_none() && c.waiting.is_some() {
            c.terminated().or_else(|| c.previous.clone())
        } else {
            c.previous.clone()
        };
        let ready = c.running.is_some() && c.ready && !c.init;
        let mut status = json!({
            "name": c.spec.name,
            "image": c.spec.image.clone().unwrap_or_default(),
            "imageID": c.image.as_ref().map(Image::image_id).unwrap_or_default(),
            "ready": ready,
            "restartCount": c.restarts,
            "started": c.running.is_some() && c.started,
            "state": state,
            "lastState": last.as_ref().map(terminated).unwrap_or_else(|| json!({})),
        });
        if let Some(id) = &c.id {
            status["containerID"] = json!(format!("skiff://{id}"));
        }
        status
    }

    /// The pod's status as the kubelet computes it (`getPhase` and the conditions).
    fn status(&self) -> Value {
        let policy = self.restart_policy();
        let inits: Vec<&Ctr> = self.ctrs.iter().filter(|c| c.init).collect();
        let apps: Vec<&Ctr> = self.ctrs.iter().filter(|c| !c.init).collect();
        let initialized = inits.iter().all(|c| c.succeeded());
        let init_failed = policy == "Never"
            && inits.iter().any(|c| {
                c.running.is_none() && c.exited.as_ref().is_some_and(|e| e.exit_code != 0)
            });
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for c in &apps {
            if c.running.is_some() {
                running += 1;
            } else if c.exited.is_some() {
                stopped += 1;
                if c.exited.as_ref().is_some_and(|e| e.exit_code == 0) {
                    succeeded += 1;
                }
            } else {
                waiting += 1;
            }
        }
        let phase = if init_failed {
            "Failed"
        } else if !initialized || waiting > 0 {
            "Pending"
        } else if running > 0 {
            "Running"
        } else if stopped > 0 {
            match policy {
                "Always" => "Running",
                _ if stopped == succeeded => "Succeeded",
                "Never" => "Failed",
                _ => "Running",
            }
        } else {
            "Pending"
        };
        let terminal = matches!(phase, "Succeeded" | "Failed");
        let unready: Vec<&str> = apps
            .iter()
            .filter(|c| c.running.is_none() || !c.ready)
            .map(|c| c.spec.name.as_str())
            .collect();
        let pending_inits: Vec<&str> = inits
            .iter()
            .filter(|c| !c.succeeded())
            .map(|c| c.spec.name.as_str())
            .collect();
        let mut conditions = vec![
            (
                "PodReadyToStartContainers",
                self.sandbox.is_some() || terminal && self.ctrs.iter().any(|c| c.id.is_some()),
                None,
                None,
            ),
            (
                "Initialized",
                initialized,
                (!initialized).then_some("ContainersNotInitialized"),
                (!initialized).then(|| {
                    format!(
                        "containers with incomplete status: [{}]",
                        pending_inits.join(" ")
                    )
                }),
            ),
        ];
        let ready = unready.is_empty() && initialized && !terminal;
        let (reason, message) = if terminal {
            (Some("PodCompleted"), None)
        } else if !ready {
            (
                Some("ContainersNotReady"),
                Some(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                )),
            )
        } else {
            (None, None)
        };
        conditions.push(("ContainersReady", ready, reason, message.clone()));
        conditions.push(("Ready", ready, reason, message));
        if terminal {
            conditions[0].1 = false;
        }
        let old: Vec<Value> = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        let now = jiff::Timestamp::now().to_string();
        let mut out: Vec<Value> = old
            .iter()
            .filter(|c| !conditions.iter().any(|(t, ..)| c["type"] == *t))
            .cloned()
            .collect();
        for (kind, status, reason, message) in conditions {
            let status = if status { "True" } else { "False" };
            let since = old
                .iter()
                .find(|c| c["type"] == kind && c["status"] == status)
                .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
                .unwrap_or_else(|| now.clone());
            let mut c = json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            if let Some(m) = message {
                c["message"] = json!(m);
            }
            out.push(c);
        }
        let host_ip = self.shared.config.address.to_string();
        let mut status = json!({
            "phase": phase,
            "conditions": out,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "qosClass": crate::status::qos_class(&self.pod),
            "containerStatuses": apps.iter().map(|c| self.container_status(c)).collect::<Vec<_>>(),
        });
        if !inits.is_empty() {
            status["initContainerStatuses"] = json!(
                inits
                    .iter()
                    .map(|c| self.container_status(c))
                    .collect::<Vec<_>>()
            );
        }
        if let Some(t) = self.start_time {
            status["startTime"] = json!(t.to_string());
        }
        if let Some(ip) = self.pod_ip() {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        status
    }

    fn publish_views(&self) {
        let views = self
            .ctrs
            .iter()
            .map(|c| {
                (
                    c.spec.name.clone(),
                    crate::CtrView {
                        uid: self.uid.clone(),
                        id: c.id.clone(),
                        restarts: c.restarts,
                        running: c.running.is_some(),
                        started: c.id.is_some() && c.start_error.is_none(),
                        started_before: c.previous.is_some(),
                        waiting: c.waiting.as_ref().map(|w| w.0.clone()),
                        netns: self.sandbox.as_ref().and_then(|s| s.net.clone()),
                    },
                )
            })
            .collect();
        self.shared
            .set_views(&self.namespace(), &self.name(), &self.uid, views);
    }

    async fn write_status(&mut self) {
        self.publish_views();
        let status = self.status();
        // Timestamps of unchanged conditions are kept, so an unchanged status compares equal.
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace());
        let patch = json!({"status": status});
        match api
            .patch_status(&self.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(pod) => {
                self.pod = Arc::new(pod);
                self.last_status = Some(status);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => warn!(pod = %self.name(), error = %e, "writing the pod's status"),
        }
    }
}

/// A lifecycle hook: a handler, or `sleep`.
enum Hook {
    Handler(crate::probe::Handler),
    Sleep(Duration),
}

fn hook_handler(h: &k8s_openapi::api::core::v1::LifecycleHandler) -> Option<Hook> {
    if let Some(s) = &h.sleep {
        return Some(Hook::Sleep(Duration::from_secs(s.seconds.max(0) as u64)));
    }
    crate::probe::Handler::of(h.exec.as_ref(), h.http_get.as_ref(), h.tcp_socket.as_ref())
        .map(Hook::Handler)
}

fn terminated(t: &Terminated) -> Value {
    let mut v = json!({
        "exitCode": t.exit.exit_code,
        "reason": t.reason,
        "startedAt": t.exit.started_at.to_string(),
        "finishedAt": t.exit.finished_at.to_string(),
        "containerID": format!("skiff://{}", t.id),
    });
    if let Some(s) = t.exit.signal {
        v["signal"] = json!(s);
    }
    if let Some(m) = &t.message {
        v["message"] = json!(m);
    }
    json!({"terminated": v})
}

fn field_path(c: &Ctr) -> String {
    let list = if c.init {
        "initContainers"
    } else {
        "containers"
    };
    format!("spec.{list}{{{}}}", c.spec.name)
}

/// Expands `$(NAME)` references to variables defined earlier; `$$` escapes, and unknown
/// references stay as written (the kubelet's `expansion` rules).
pub fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(')
            && let Some(end) = r.find(')')
        {
            let name = &r[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of `key` in a ConfigMap's or Secret's data (`None` when it may be absent and
/// is), or the kubelet's error for what is missing.
fn key_of(
    data: Option<BTreeMap<String, String>>,
    key: &str,
    optional: Option<bool>,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, String> {
    let optional = optional == Some(true);
    match data {
        Some(data) => match data.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(format!(
                "couldn't find key {key} in {kind} {namespace}/{name}"
            )),
        },
        None if optional => Ok(None),
        None => Err(format!(
            "{} \"{name}\" not found",
            kind.to_ascii_lowercase()
        )),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn watch_exit<R: ContainerRuntime>(shared: &Shared<R>, tx: &mpsc::UnboundedSender<Msg>, id: &str) {
    let wait = shared.runtime.wait(id);
    let tx = tx.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        let exit = wait
            .await
            .unwrap_or_else(|_| crate::runtime::lost_exit(None));
        let _ = tx.send(Msg::Exited(id, exit));
    });
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod worker_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_as_the_kubelet_expands_them() {
        let env = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "x".to_owned()),
        ];
        assert_eq!(expand("$(A)-$(B)", &env), "1-x");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$(C)", &env), "$(C)");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }
}
