//! The pod worker against the recording fake runtime and a fake API server (a kube Client
//! over a `service_fn` that keeps pods and records writes), with tokio's clock paused so
//! back-offs and grace periods pass at once. The sandbox and root filesystem are real
//! (these tests run as root, as CI does); the image is imported from an OCI layout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::sync::watch;

use super::Worker;
use crate::runtime::{Call, FakeRuntime};
use crate::{AgentConfig, Shared};

#[derive(Default)]
struct Api {
    pods: HashMap<String, Value>,
    /// Every status the worker wrote, in order.
    statuses: Vec<Value>,
    events: Vec<Value>,
    /// Bodies of DELETE requests (the delete options).
    deletes: Vec<Value>,
}

fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// A kube Client whose requests the fake API answers.
fn client(api: Arc<Mutex<Api>>) -> kube::Client {
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let api = api.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let path = parts.uri.path().to_owned();
            let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let mut api = api.lock().unwrap();
            let (code, answer) = match (parts.method.as_str(), segments.as_slice()) {
                ("PATCH", ["api", "v1", "namespaces", _, "pods", name, "status"]) => {
                    match api.pods.get_mut(*name) {
                        Some(pod) => {
                            merge(pod, &body);
                            let pod = pod.clone();
                            api.statuses.push(body["status"].clone());
                            (200, pod)
                        }
                        None => (404, not_found()),
                    }
                }
                ("DELETE", ["api", "v1", "namespaces", _, "pods", name]) => {
                    api.deletes.push(body);
                    match api.pods.remove(*name) {
                        Some(pod) => (200, pod),
                        None => (404, not_found()),
                    }
                }
                ("POST", ["api", "v1", "namespaces", _, "events"]) => {
                    api.events.push(body.clone());
                    (201, body)
                }
                ("PATCH", ["api", "v1", "namespaces", _, "events", name]) => {
                    let event = api
                        .events
                        .iter_mut()
                        .find(|e| e["metadata"]["name"] == *name)
                        .map(|e| {
                            merge(e, &body);
                            e.clone()
                        });
                    match event {
                        Some(e) => (200, e),
                        None => (404, not_found()),
                    }
                }
                _ => (404, not_found()),
            };
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(Bytes::from(answer.to_string())))
                    .unwrap(),
            )
        }
    });
    kube::Client::new(service, "default")
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

const IMAGE: &str = "example.com/test/img:v1";

/// An OCI image layout with one small layer, named [`IMAGE`].
fn image_layout(dir: &std::path::Path) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = format!("{:x}", sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&digest), bytes).unwrap();
        (format!("sha256:{digest}"), bytes.len())
    };
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    layer.append_data(&mut h, "bin/app", &b"app"[..]).unwrap();
    let (layer_digest, layer_size) = put(&layer.into_inner().unwrap());
    let (config_digest, config_size) =
        put(br#"{"config":{"Cmd":["/bin/app"]},"rootfs":{"type":"layers"}}"#);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"io.containerd.image.name": IMAGE},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

struct Harness {
    api: Arc<Mutex<Api>>,
    runtime: FakeRuntime,
    shared: Arc<Shared<FakeRuntime>>,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    image_layout(&layout);
    let images = crate::image::ImageStore::open(&dir.path().join("images"), &[]).unwrap();
    assert_eq!(images.import(&layout).unwrap()[0].reference, IMAGE);
    let api = Arc::new(Mutex::new(Api::default()));
    let client = client(api.clone());
    let runtime = FakeRuntime::default();
    let config = AgentConfig {
        node_name: "n1".into(),
        node_labels: vec![],
        address: [127, 0, 0, 1].into(),
        port: 0,
        data_dir: dir.path().to_owned(),
        insecure_registries: vec![],
        cgroup_root: "/skiff-test".into(),
        max_pods: 110,
        capacity_cpu: 2,
        capacity_memory: 1 << 30,
        tls: None,
        serving_certificate_dir: None,
        trim_startup_pages: false,
    };
    let shared = Arc::new(Shared {
        recorder: skiff_events::Recorder::new(client.clone(), "kubelet", Some("n1".into())),
        client,
        config,
        runtime: Arc::new(runtime.clone()),
        images,
        views: Default::default(),
    });
    Harness {
        api,
        runtime,
        shared,
        _dir: dir,
    }
}

impl Harness {
    /// Stores `pod` in the fake API and starts its worker.
    fn start(&self, pod: Value) -> (watch::Sender<Option<Arc<Pod>>>, tokio::task::JoinHandle<()>) {
        let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
        self.api.lock().unwrap().pods.insert(name, pod.clone());
        let pod: Arc<Pod> = Arc::new(serde_json::from_value(pod).unwrap());
        let (tx, rx) = watch::channel(Some(pod.clone()));
        let worker = Worker::new(self.shared.clone(), pod);
        (tx, tokio::spawn(worker.run(rx)))
    }

    fn last_status(&self) -> Value {
        self.api
            .lock()
            .unwrap()
            .statuses
            .last()
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Waits (in paused time) until the last written status satisfies `check`.
    async fn until(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..2000 {
            let status = self.last_status();
            if check(&status) {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("never saw {what}; last status {:#}", self.last_status());
    }
}

fn pod(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}-{:x}", rand::random::<u32>())},
        "spec": spec,
    })
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_first_and_failures_restart_with_back_off() {
    let h = harness();
    h.runtime.script("init", &[0]);
    // OnFailure: exits 1 twice, then 0.
    h.runtime.script("app", &[1, 1, 0]);
    let started = tokio::time::Instant::now();
    let (tx, worker) = h.start(pod(
        "p",
        json!({
            "nodeName": "n1",
            "restartPolicy": "OnFailure",
            "initContainers": [{"name": "init", "image": IMAGE, "command": ["init"]}],
            "containers": [{"name": "app", "image": IMAGE, "command": ["app"]}],
        }),
    ));
    let done = h.until("Succeeded", |s| s["phase"] == "Succeeded").await;
    // The first restart is at once, the second after the 10 s back-off.
    let took = started.elapsed();
    assert!(
        took >= super::INITIAL_BACKOFF && took < super::INITIAL_BACKOFF * 2,
        "{took:?}"
    );
    let starts: Vec<String> = h
        .runtime
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Start(_, args) => Some(args[0].clone()),
            _ => None,
        })
        .collect();
    assert_eq!(starts, ["init", "app", "app", "app"]);
    let app = &done["containerStatuses"][0];
    assert_eq!(app["restartCount"], 2, "{done:#}");
    assert_eq!(app["state"]["terminated"]["exitCode"], 0);
    assert_eq!(app["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(
        done["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    let conditions: HashMap<String, String> = done["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(conditions["Initialized"], "True");
    assert_eq!(conditions["Ready"], "False");
    // While it waited, the status said CrashLoopBackOff, and a BackOff event was written.
    let statuses = h.api.lock().unwrap().statuses.clone();
    assert!(
        statuses
            .iter()
            .any(|s| s["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff")
    );
    let reasons: Vec<String> = h
        .api
        .lock()
        .unwrap()
        .events
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    for r in ["Pulled", "Created", "Started", "BackOff"] {
        assert!(
            reasons.contains(&r.to_owned()),
            "{r} missing from {reasons:?}"
        );
    }
    // Gone from the API: the worker cleans up (root filesystems, sandbox) and ends.
    tx.send_replace(None);
    worker.await.unwrap();
    assert_eq!(
        h.runtime
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Remove(_)))
            .count(),
        4
    );
}

#[tokio::test(start_paused = true)]
async fn deletion_sends_sigterm_then_sigkill_after_the_grace_period_and_finishes_the_delete() {
    let h = harness();
    h.runtime.ignore_term("stubborn");
    let spec = json!({
        "nodeName": "n1",
        "containers": [
            {"name": "polite", "image": IMAGE, "command": ["polite"]},
            {"name": "stubborn", "image": IMAGE, "command": ["stubborn"]},
        ],
    });
    let p = pod("d", spec);
    let uid = p["metadata"]["uid"].as_str().unwrap().to_owned();
    let (tx, worker) = h.start(p.clone());
    let running = h
        .until("Running and Ready", |s| {
            s["phase"] == "Running"
                && s["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .await;
    assert_eq!(running["qosClass"], "BestEffort");
    let mut deleting = p.clone();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    deleting["metadata"]["deletionGracePeriodSeconds"] = json!(3);
    let started = tokio::time::Instant::now();
    tx.send_replace(Some(Arc::new(serde_json::from_value(deleting).unwrap())));
    worker.await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(3) && took < std::time::Duration::from_secs(4),
        "{took:?}"
    );
    let signals: Vec<(String, i32)> = h
        .runtime
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Signal(id, s) => Some((id, s)),
            _ => None,
        })
        .collect();
    let stubborn = h.runtime.started("stubborn")[0].clone();
    let polite = h.runtime.started("polite")[0].clone();
    assert!(
        signals.contains(&(polite.clone(), 15)) && !signals.contains(&(polite, 9)),
        "{signals:?}"
    );
    assert!(
        signals.contains(&(stubborn.clone(), 15)) && signals.contains(&(stubborn, 9)),
        "{signals:?}"
    );
    // The API's two-phase delete is finished: grace 0, for this UID only.
    let api = h.api.lock().unwrap();
    assert!(api.pods.is_empty());
    assert_eq!(api.deletes[0]["gracePeriodSeconds"], 0);
    assert_eq!(api.deletes[0]["preconditions"]["uid"], uid.as_str());
    let killing = api
        .events
        .iter()
        .filter(|e| e["reason"] == "Killing")
        .count();
    assert_eq!(killing, 2);
    // Every container was removed.
    let removed = h
        .runtime
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Remove(_)))
        .count();
    assert_eq!(removed, 2);
}

#[tokio::test(start_paused = true)]
async fn a_missing_config_map_keeps_the_container_waiting() {
    let h = harness();
    let (tx, worker) = h.start(pod(
        "cm",
        json!({
            "nodeName": "n1",
            "containers": [{
                "name": "app", "image": IMAGE, "command": ["app"],
                "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}],
            }],
        }),
    ));
    let waiting = h
        .until("CreateContainerConfigError", |s| {
            s["containerStatuses"][0]["state"]["waiting"]["reason"] == "CreateContainerConfigError"
        })
        .await;
    assert_eq!(
        waiting["containerStatuses"][0]["state"]["waiting"]["message"],
        "configmap \"absent\" not found"
    );
    assert_eq!(waiting["phase"], "Pending");
    assert!(h.runtime.started("app").is_empty());
    tx.send_replace(None);
    worker.await.unwrap();
}
