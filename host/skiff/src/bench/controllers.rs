//! `skiff bench controllers`: how long a Deployment of many replicas takes from its
//! creation to every pod bound, and what the controllers spend on it.
//!
//! A fresh `skiff server` runs the API and the scheduler, with simulated Node objects (no
//! agents: pods are bound, never run) and no controllers of its own; the controllers run in
//! a `skiff controller-manager` process beside it, so their CPU time is theirs alone (from
//! `/proc/<pid>/stat`). A watch on the namespace sees every pod appear and be bound. The
//! Deployment is created once the watch and the controllers are running.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::scheduler::{Bound, bindings, make_nodes};
use super::{Server, create_namespace, ms, print_table, send};

/// Flags of `skiff bench controllers`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Small sizes, to check the benchmark runs (figures are not meaningful).
    #[arg(long)]
    quick: bool,
    /// Simulated nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// The Deployment's replicas.
    #[arg(long, default_value_t = 1000)]
    replicas: usize,
}

/// CPU time (user + system) a process has used so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .context("a malformed /proc/<pid>/stat")?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("a short /proc/<pid>/stat")?.parse()?)
    };
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(total * 10))
}

struct Manager(Child);

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn run(mut args: Args) -> anyhow::Result<()> {
    if args.quick {
        args.nodes = 10;
        args.replicas = 50;
    }
    let (server, _) = Server::start(&["--controllers", ""]).await?;
    let nodes = make_nodes(&server, args.nodes).await?;
    let kubeconfig = server.dir.path().join("kubeconfig.yaml");
    let manager = Manager(
        Command::new(std::env::current_exe()?)
            .arg("controller-manager")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            // Simulated nodes send no heartbeats: a long grace keeps them Ready.
            .args(["--node-monitor-grace-period", "1h"])
            .env("SKIFF_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting skiff controller-manager")?,
    );
    let client = crate::scheduler::client(&kubeconfig).await?;
    let namespace = "bench-controllers";
    let mut admin = server.connect().await?;
    create_namespace(&mut admin, namespace).await?;

    let (listening, ready) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn(bindings(
        kube::Api::<Pod>::namespaced(client.clone(), namespace),
        args.replicas,
        listening,
    ));
    ready.await.context("the watch ended before listing")?;
    // The controllers' watches are up once the namespace's default ServiceAccount exists.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/default");
        if let Ok((StatusCode::OK, _)) = send(&mut admin, Method::GET, &path, None).await {
            break;
        }
        if Instant::now() > deadline {
            bail!("the controller-manager did not start within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let manager_before = cpu_time(manager.0.id())?;
    let server_before = cpu_time(server.child.id())?;

    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": args.replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "busybox:1.36",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
            },
        },
    });
    let started = Instant::now();
    let (status, body) = send(
        &mut admin,
        Method::POST,
        &format!("/apis/apps/v1/namespaces/{namespace}/deployments"),
        Some(serde_json::to_vec(&deployment)?),
    )
    .await?;
    if status != StatusCode::CREATED {
        bail!(
            "creating the deployment: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let Bound {
        all_seen: created,
        last: bound,
        ..
    } = tokio::time::timeout(Duration::from_secs(600), watch)
        .await
        .context("not every pod was bound within 600 s")???;
    let manager_cpu = cpu_time(manager.0.id())? - manager_before;
    let server_cpu = cpu_time(server.child.id())? - server_before;
    let per_thousand = |d: Duration| d.mul_f64(1000.0 / args.replicas as f64);
    let label = format!("{nodes} nodes, {} replicas", args.replicas);
    let rows = vec![
        (
            format!("{label}: create → every pod created"),
            ms(created - started),
            "",
        ),
        (
            format!("{label}: create → every pod bound"),
            ms(bound - started),
            "",
        ),
        (
            "controller-manager CPU per 1,000 pods".to_owned(),
            ms(per_thousand(manager_cpu)),
            "",
        ),
        (
            "server (API + scheduler) CPU per 1,000 pods".to_owned(),
            ms(per_thousand(server_cpu)),
            "",
        ),
    ];
    print_table("skiff bench controllers", &rows);
    Ok(())
}
