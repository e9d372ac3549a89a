//! `skiff bench pods`: the node agent with real containers, and a table of:
//!
//! - pod start: from the create request to `Running` seen through a watch, over N pods
//!   created one after another on a server with its agent, the image already present
//!   (imported, `imagePullPolicy: Never`); p50 and p99, scheduler included;
//! - container create+start+wait+delete of one `true` container: through skiff's runtime
//!   (a `skiff shim run` process driving libcontainer) against `runc run` and `crun run` on
//!   the same bundle, medians over M runs, as ratios;
//! - the resident memory of an idle `skiff agent` process.
//!
//! Needs root, Debian's busybox-static (`/usr/bin/busybox`) for the image, and runc and
//! crun for the comparison (a runtime that is missing or refuses the host is reported).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use skiff_agent::ContainerRuntime as _;

use super::{Server, print_table};

/// Flags of `skiff bench pods`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Pods started, one after another.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Runs of each runtime in the create+start+delete comparison.
    #[arg(long, default_value_t = 50)]
    runs: usize,
}

const IMAGE: &str = "localhost/bench/busybox:v1";

/// A busybox root filesystem: the binary, its applets as symlinks, /etc/passwd.
fn busybox_rootfs(root: &Path) -> anyhow::Result<()> {
    let busybox = Path::new("/usr/bin/busybox");
    if !busybox.exists() {
        bail!("/usr/bin/busybox is missing: apt-get install busybox-static");
    }
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    let list = Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

/// An OCI image layout holding `rootfs` as one layer, named [`IMAGE`].
fn image_layout(rootfs: &Path, layout: &Path) -> anyhow::Result<()> {
    use sha2::Digest as _;
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> anyhow::Result<(String, usize)> {
        let hex = format!("{:x}", sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes)?;
        Ok((format!("sha256:{hex}"), bytes.len()))
    };
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", rootfs)?;
    let (layer, layer_size) = put(&tar.into_inner()?)?;
    let config = json!({
        "architecture": skiff_agent::node::arch(), "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    });
    let (config, config_size) = put(config.to_string().as_bytes())?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}],
    });
    let (manifest, manifest_size) = put(manifest.to_string().as_bytes())?;
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest, "size": manifest_size,
        "annotations": {"io.containerd.image.name": IMAGE},
    }]});
    std::fs::write(layout.join("index.json"), index.to_string())?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(())
}

/// The bundle every runtime runs: `true` in new pid, network, IPC, UTS, mount and cgroup
/// namespaces with the usual mounts and a cgroup of its own (what `runc spec` makes).
fn bundle_spec(rootfs: &Path, cgroup: &str) -> serde_json::Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["true"],
            "env": ["PATH=/bin"], "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
                "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
                "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
            },
            "noNewPrivileges": true,
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
            "cgroupsPath": cgroup,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Median create+start+wait+delete of `runtime run` (runc, crun) on the bundle, or why it
/// can't be measured.
/// An OCI runtime binary (`runc`, `crun`) and its state directory.
struct External {
    name: &'static str,
    binary: std::path::PathBuf,
    state: tempfile::TempDir,
}

impl External {
    fn find(name: &'static str) -> Result<External, String> {
        let binary = ["/usr/sbin", "/usr/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
            .ok_or_else(|| format!("{name} is not installed"))?;
        Ok(External {
            name,
            binary,
            state: tempfile::tempdir().map_err(|e| e.to_string())?,
        })
    }

    /// One `<runtime> run` of a `true` container on the bundle.
    fn run_once(&self, bundle: &Path, rootfs: &Path, i: usize) -> Result<Duration, String> {
        let id = format!("skiff-bench-{}-{i}", self.name);
        let spec = bundle_spec(rootfs, &format!("/skiff-bench/{id}"));
        std::fs::write(bundle.join("config.json"), spec.to_string()).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let out = Command::new(&self.binary)
            .arg("--root")
            .arg(self.state.path())
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let took = started.elapsed();
        skiff_agent::youki::remove_cgroup(&format!("/skiff-bench/{id}"));
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "{}: {}",
                self.name,
                err.lines().last().unwrap_or("failed").trim()
            ));
        }
        Ok(took)
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let rootfs = work.path().join("bundle/rootfs");
    busybox_rootfs(&rootfs)?;
    let mut rows = Vec::new();

    // 1. Pod start through the API, the scheduler and the agent.
    let layout = work.path().join("layout");
    image_layout(&rootfs, &layout)?;
    let data = tempfile::tempdir()?;
    skiff_agent::image::ImageStore::open(&data.path().join("agent/images"), &[])?
        .import(&layout)
        .context("importing the bench image")?;
    let (server, _) = Server::start_in(
        data,
        &["--agent-port", "0", "--cgroup-root", "/skiff-bench"],
    )
    .await?;
    let kubeconfig = server.dir.path().join("kubeconfig.yaml");
    let client = crate::scheduler::client(&kubeconfig).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.list(&Default::default()).await?.items.is_empty() {
        if Instant::now() > deadline {
            bail!("the agent did not register its node");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (running_tx, mut running_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch = tokio::spawn({
        let pods = pods.clone();
        async move {
            let mut stream = watcher(pods, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = stream.next().await {
                if let watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) = event
                    && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                {
                    let _ =
                        running_tx.send((pod.metadata.name.unwrap_or_default(), Instant::now()));
                }
            }
        }
    });
    let mut starts = Vec::with_capacity(args.pods);
    for i in 0..args.pods {
        let name = format!("bench-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}],
            },
        }))?;
        let created = Instant::now();
        pods.create(&PostParams::default(), &pod).await?;
        let running = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some((n, at)) = running_rx.recv().await {
                if n == name {
                    return Some(at);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .with_context(|| format!("pod {name} did not become Running in 60 s"))?;
        starts.push(running - created);
    }
    watch.abort();
    starts.sort();
    rows.push((
        format!(
            "pod create → Running (watch), p50 / p99 over {} pods",
            args.pods
        ),
        format!(
            "{} / {}",
            ms(percentile(&starts, 0.5)),
            ms(percentile(&starts, 0.99))
        ),
        "p50 < 100 ms, p99 < 250 ms",
    ));
    for i in 0..args.pods {
        let _ = pods
            .delete(&format!("bench-{i}"), &DeleteParams::default())
            .await;
    }
    // The agent stops the containers (1 s grace) and finishes the deletes; the server
    // must outlive that, or the containers would outlive it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pods.list(&Default::default()).await?.items.is_empty() {
        if Instant::now() > deadline {
            bail!("the bench pods were not deleted in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 2. An idle agent of its own (its API endpoint served), against the same server.
    let idle_dir = tempfile::tempdir()?;
    let pki = skiff_apiserver::pki::Pki::ensure(server.dir.path(), &["127.0.0.1".to_owned()])?;
    let (cert, key) = pki.issue_server("system:node:bench-idle", &["127.0.0.1".to_owned()])?;
    for (file, text) in [
        ("tls.crt", &cert),
        ("tls.key", &key),
        ("ca.crt", &pki.ca_cert),
    ] {
        std::fs::write(idle_dir.path().join(file), text)?;
    }
    let mut agent = Command::new(std::env::current_exe()?)
        .arg("agent")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--data-dir")
        .arg(idle_dir.path().join("data"))
        .args([
            "--node-name",
            "bench-idle",
            "--agent-port",
            "0",
            "--cgroup-root",
            "/skiff-bench",
        ])
        .arg("--tls-cert-file")
        .arg(idle_dir.path().join("tls.crt"))
        .arg("--tls-private-key-file")
        .arg(idle_dir.path().join("tls.key"))
        .arg("--client-ca-file")
        .arg(idle_dir.path().join("ca.crt"))
        .env("SKIFF_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.get_opt("bench-idle").await?.is_none() {
        if Instant::now() > deadline {
            let _ = agent.kill();
            bail!("the idle agent did not register");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled: registered, a lease renewal or two, nothing to run.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let rss = std::fs::read_to_string(format!("/proc/{}/status", agent.id()))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    let _ = agent.kill();
    let _ = agent.wait();
    rows.push((
        "agent idle RSS (skiff agent, one node, no pods)".into(),
        rss,
        "< 20 MB",
    ));

    // 3. One container's create+start+wait+delete: skiff's runtime against runc and crun,
    // on a machine without the server (and its agent) of the parts above.
    drop(server);
    let bundle = work.path().join("bundle");
    let state = work.path().join("state");
    let runtime = skiff_agent::YoukiRuntime::new(skiff_agent::YoukiConfig {
        dir: state.join("containers"),
        root: state.join("youki"),
        shim: std::env::current_exe()?,
    })?;
    // The runtimes take turns, run by run, so a machine that gets busier or quieter
    // during the measurement weighs on all of them alike.
    /// Another runtime: its name, its target, and its times or why it has none.
    type Contender = (
        &'static str,
        &'static str,
        Result<External, String>,
        Vec<Duration>,
    );
    let mut externals: Vec<Contender> = vec![
        (
            "runc",
            "skiff ≤ 0.5× runc",
            External::find("runc"),
            Vec::new(),
        ),
        ("crun", "", External::find("crun"), Vec::new()),
    ];
    let mut ours = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        let id = format!("{:032x}", i);
        let spec = serde_json::from_value(bundle_spec(&rootfs, &format!("/skiff-bench/{id}")))?;
        let started = Instant::now();
        runtime
            .start(skiff_agent::runtime::ContainerConfig {
                id: id.clone(),
                spec,
                log_path: state.join(format!("{id}.log")),
                stdin: false,
                stdin_once: false,
            })
            .await?;
        let exit = runtime.wait(&id).await?;
        runtime.remove(&id)?;
        let took = started.elapsed();
        if exit.exit_code != 0 {
            bail!("the bench container exited with {}", exit.exit_code);
        }
        ours.push(took);
        skiff_agent::youki::remove_cgroup(&format!("/skiff-bench/{id}"));
        for (_, _, external, times) in &mut externals {
            if let Ok(runtime) = external {
                match runtime.run_once(&bundle, &rootfs, i) {
                    Ok(took) => times.push(took),
                    Err(why) => *external = Err(why),
                }
            }
        }
    }
    let ours = median(ours);
    rows.push((
        format!(
            "container create+start+wait+delete, skiff (shim + libcontainer), median of {}",
            args.runs
        ),
        ms(ours),
        "",
    ));
    for (name, target, external, times) in externals {
        let value = match external {
            Ok(_) => {
                let theirs = median(times);
                format!(
                    "{} (skiff {:.2}×)",
                    ms(theirs),
                    ours.as_secs_f64() / theirs.as_secs_f64()
                )
            }
            Err(why) => format!("not measured: {why}"),
        };
        rows.push((
            format!(
                "container create+start+wait+delete, {name} run, median of {}",
                args.runs
            ),
            value,
            target,
        ));
    }
    skiff_agent::youki::remove_cgroup("/skiff-bench");
    print_table("skiff bench pods", &rows);
    Ok(())
}
