//! `skiff bench scheduler`: scheduling throughput and cycle latency through the real API.
//!
//! For each cluster size and scenario a fresh `skiff server` (without its own scheduler) gets
//! simulated Node objects (capacity, zone and hostname labels, every tenth node tainted; no
//! agent), so every scenario starts from the same empty cluster. The scenario then creates a
//! backlog of pending pods in its own namespace, and, where it uses Wasm plugins, their Plugin
//! objects; only then does a scheduler start, in this process, as an API client like `skiff
//! scheduler`. It waits for its caches and plugins before the first cycle, so every pod of the
//! backlog is scheduled with the scenario's plugins. A watch on the namespace sees each
//! binding arrive: pods/s is the backlog over the time from the first binding to the last.
//! The cycle latencies (filters, scores, reserve; not the binding, which runs in parallel) are
//! every attempt's exact duration, taken from the scheduler's metrics. Scenarios are compared
//! by median and by mean: the mean carries the tail of cycles slowed by the API server
//! sharing the two cores, which varies from run to run more than the plugins do.
//!
//! Plugin load time is measured on the plugin host directly: a cold compile into an empty
//! cache, a fresh host reading the compiled component from the disk cache, and the same host
//! again from its memory cache.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Server, create_namespace, ms, percentile, post_many, print_table, send};

/// Flags of `skiff bench scheduler`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Small sizes, to check the benchmark runs (figures are not meaningful).
    #[arg(long)]
    quick: bool,
    /// Cluster sizes, in simulated nodes.
    #[arg(long, value_delimiter = ',', default_values_t = [500, 5000])]
    nodes: Vec<usize>,
    /// Pods scheduled in each scenario.
    #[arg(long, default_value_t = 5000)]
    pods: usize,
    /// The scenarios to run (a, b, c); (a) is always run first, as the baseline.
    #[arg(long, value_delimiter = ',', default_values_t = ["a".to_owned(), "b".to_owned(), "c".to_owned()])]
    scenarios: Vec<String>,
    /// Where the built plugins (`*.wasm`) are; by default the release plugins of the target
    /// directory this binary was built into.
    #[arg(long)]
    plugins: Option<PathBuf>,
}

/// A set of plugins to schedule with.
struct Scenario {
    name: &'static str,
    label: &'static str,
    /// Plugin objects: (component, extension points, weight, replaces).
    plugins: &'static [(
        &'static str,
        &'static [&'static str],
        i64,
        &'static [&'static str],
    )],
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "a",
        label: "default plugins",
        plugins: &[],
    },
    Scenario {
        name: "b",
        label: "defaults + Wasm filter (zone-spread) + Wasm scorer (bin-packing)",
        plugins: &[
            ("zone_spread", &["PreFilter", "Filter"], 1, &[]),
            ("bin_packing", &["Score"], 1, &[]),
        ],
    },
    Scenario {
        name: "c",
        label: "Wasm NodeResourcesFit in place of the native one",
        plugins: &[(
            "node_resources_fit",
            &["Filter", "Score"],
            1,
            &["NodeResourcesFit"],
        )],
    },
];

/// What one scenario measured.
struct Measured {
    pods_per_second: f64,
    /// Cycle durations by the wall clock (what a pod waits).
    wall: Cycles,
    /// By the scheduling thread's CPU clock (what the cycle costs, without the time the
    /// thread was preempted by the API server sharing the cores).
    cpu: Cycles,
}

#[derive(Clone, Copy)]
struct Cycles {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

pub async fn run(mut args: Args) -> anyhow::Result<()> {
    if args.quick {
        args.nodes = vec![64];
        args.pods = 256;
    }
    let plugins = match args.plugins.take() {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .context("the binary has no directory")?
            .join("../wasm32-wasip2/release"),
    };
    for scenario in &SCENARIOS {
        for (component, ..) in scenario.plugins {
            let path = plugins.join(format!("{component}.wasm"));
            if !path.exists() {
                bail!(
                    "{} is missing: build the plugins (cd plugins && cargo build --release) or pass --plugins",
                    path.display()
                );
            }
        }
    }
    let plugins = plugins.canonicalize()?;

    let mut rows: Vec<(String, String, &str)> = Vec::new();
    for component in ["node_resources_fit", "zone_spread", "bin_packing"] {
        let (cold, disk, memory) = load_times(&plugins.join(format!("{component}.wasm")))?;
        rows.push((
            format!("plugin load {component}: cold / disk cache / memory cache"),
            format!("{} / {} / {}", ms(cold), ms(disk), ms(memory)),
            "cache < 1 ms",
        ));
    }

    for &nodes in &args.nodes {
        let cache = tempfile::tempdir()?;
        let mut baseline = None;
        let wanted = SCENARIOS
            .iter()
            .filter(|s| s.name == "a" || args.scenarios.iter().any(|n| n == s.name));
        for scenario in wanted {
            // Each scenario gets a fresh server with the same empty nodes, so none of them
            // schedules around the pods an earlier one left behind.
            let (server, _) = Server::start(&["--disable-scheduler"]).await?;
            let nodes = make_nodes(&server, nodes).await?;
            let client =
                crate::scheduler::client(&server.dir.path().join("kubeconfig.yaml")).await?;
            let m = scenario_run(
                &server,
                &client,
                &plugins,
                cache.path(),
                scenario,
                args.pods,
            )
            .await
            .with_context(|| format!("{nodes} nodes, scenario ({})", scenario.name))?;
            let (base_wall, base_cpu) = *baseline.get_or_insert((m.wall, m.cpu));
            rows.push((
                format!(
                    "{nodes} nodes, ({}) {}: pods/s",
                    scenario.name, scenario.label
                ),
                format!("{:.0}", m.pods_per_second),
                if scenario.name == "a" && nodes >= 5000 {
                    "≥ 2,000"
                } else {
                    ""
                },
            ));
            let target = if scenario.name == "c" {
                "≤ 1.25× of (a)"
            } else {
                ""
            };
            for (clock, c, base) in [("wall", m.wall, base_wall), ("CPU", m.cpu, base_cpu)] {
                rows.push((
                    format!(
                        "{nodes} nodes, ({}): cycle {clock} p50 / p99 / mean (p50, mean × of (a))",
                        scenario.name
                    ),
                    format!(
                        "{} / {} / {} ({:.2}×, {:.2}×)",
                        us(c.p50),
                        us(c.p99),
                        us(c.mean),
                        c.p50.as_secs_f64() / base.p50.as_secs_f64(),
                        c.mean.as_secs_f64() / base.mean.as_secs_f64()
                    ),
                    target,
                ));
            }
        }
    }
    print_table("skiff bench scheduler", &rows);
    Ok(())
}

/// Cycles take tens of microseconds: milliseconds to two places would hide the difference.
fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Compiles a component into an empty cache, then loads it through a fresh host from the
/// disk cache, then once more from that host's memory.
fn load_times(path: &Path) -> anyhow::Result<(Duration, Duration, Duration)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let cache = tempfile::tempdir()?;
    let host = || {
        skiff_plugin_host::Host::new(skiff_plugin_host::Config {
            cache_dir: Some(cache.path().to_owned()),
            ..Default::default()
        })
    };
    let time = |host: &skiff_plugin_host::Host| -> anyhow::Result<Duration> {
        let started = Instant::now();
        let loaded = host.load("bench", &bytes)?;
        // The world check is part of every load the scheduler makes.
        host.scheduler("bench", &loaded)?;
        Ok(started.elapsed())
    };
    let cold = time(&host()?)?;
    let warm = host()?;
    let disk = time(&warm)?;
    let memory = time(&warm)?;
    Ok((cold, disk, memory))
}

/// How `count` creates are shared among at most 32 clients: (clients, creates each). The
/// most clients (at least 16) that share `count` evenly, so the total is exact (100 nodes:
/// 25 × 4); otherwise 32, and the total is rounded up to a multiple of them.
fn split(count: usize) -> (usize, usize) {
    let even = (16..=32)
        .rev()
        .find(|c| count.is_multiple_of(*c) && *c <= count);
    let clients = even.unwrap_or_else(|| 32.min(count).max(1));
    (clients, count.div_ceil(clients))
}

/// Creates `count` simulated nodes (rounded up to a multiple of the clients making them):
/// 32 CPUs, 128 GiB, 110 pods, three zones, every tenth tainted `dedicated=infra:NoSchedule`.
/// Returns how many it made.
pub(super) async fn make_nodes(server: &Server, count: usize) -> anyhow::Result<usize> {
    let (clients, per_client) = split(count);
    post_many(server, "/api/v1/nodes", clients, per_client, move |c, i| {
        let n = c * per_client + i;
        let name = format!("node-{n:05}");
        let taints = if n % 10 == 9 {
            json!([{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}])
        } else {
            json!([])
        };
        let capacity =
            json!({"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "200Gi"});
        serde_json::to_vec(&json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "topology.kubernetes.io/zone": format!("zone-{}", n % 3),
            }},
            "spec": {"taints": taints},
            "status": {"capacity": capacity, "allocatable": capacity,
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap_or_default()
    })
    .await?;
    Ok(clients * per_client)
}

async fn scenario_run(
    server: &Server,
    client: &kube::Client,
    plugins: &Path,
    cache: &Path,
    scenario: &Scenario,
    pods: usize,
) -> anyhow::Result<Measured> {
    let namespace = format!("bench-{}", scenario.name);
    let mut admin = server.connect().await?;
    create_namespace(&mut admin, &namespace).await?;
    let mut names = Vec::new();
    for (component, points, weight, replaces) in scenario.plugins {
        let name = format!("bench-{}-{}", scenario.name, component.replace('_', "-"));
        let body = json!({
            "apiVersion": "skiff.dev/v1alpha1",
            "kind": "Plugin",
            "metadata": {"name": name},
            "spec": {
                "kind": "scheduler",
                "component": {"file": plugins.join(format!("{component}.wasm"))},
                "failurePolicy": "Fail",
                "scheduler": {"extensionPoints": points, "weight": weight, "replaces": replaces},
            },
        });
        let (status, text) = send(
            &mut admin,
            Method::POST,
            "/apis/skiff.dev/v1alpha1/plugins",
            Some(serde_json::to_vec(&body)?),
        )
        .await?;
        if status != StatusCode::CREATED {
            bail!(
                "creating plugin {name}: {status} {}",
                String::from_utf8_lossy(&text)
            );
        }
        names.push(name);
    }

    let (clients, per_client) = split(pods);
    let total = clients * per_client;
    post_many(
        server,
        &format!("/api/v1/namespaces/{namespace}/pods"),
        clients,
        per_client,
        |c, i| {
            serde_json::to_vec(&json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": format!("p-{c}-{i}"), "labels": {"app": format!("web-{}", i % 20)}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
            }))
            .unwrap_or_default()
        },
    )
    .await?;

    // The watch is listening before the scheduler starts, so no binding is missed.
    let (listening, ready) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn(bindings(
        kube::Api::<Pod>::namespaced(client.clone(), &namespace),
        total,
        listening,
    ));
    ready.await.context("the watch ended before listing")?;

    let host = Arc::new(skiff_plugin_host::Host::new(skiff_plugin_host::Config {
        cache_dir: Some(cache.to_owned()),
        ..Default::default()
    })?);
    let metrics = skiff_scheduler::Metrics::with_samples();
    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(skiff_scheduler::run(
        client.clone(),
        skiff_scheduler::Config::default(),
        host,
        metrics.clone(),
        shutdown.clone(),
    ));
    let outcome = tokio::time::timeout(Duration::from_secs(300), watch).await;
    shutdown.cancel();
    scheduler.await??;
    let Bound { first, last, .. } =
        outcome.context("not every pod was bound within 300 s")???;

    for name in names {
        let path = format!("/apis/skiff.dev/v1alpha1/plugins/{name}");
        send(&mut admin, Method::DELETE, &path, None).await?;
    }
    let samples = metrics.take_samples();
    if samples.len() < total {
        bail!(
            "{} scheduling attempts for {total} pods: the metrics missed some",
            samples.len()
        );
    }
    let stats = |mut d: Vec<Duration>| {
        d.sort();
        let sum: Duration = d.iter().sum();
        Cycles {
            p50: percentile(&d, 0.5),
            p99: percentile(&d, 0.99),
            mean: sum / d.len() as u32,
        }
    };
    Ok(Measured {
        pods_per_second: (total - 1).max(1) as f64 / (last - first).as_secs_f64(),
        wall: stats(samples.iter().map(|s| s.wall).collect()),
        cpu: stats(samples.iter().map(|s| s.cpu).collect()),
    })
}

/// When a watched namespace's pods were bound.
pub(super) struct Bound {
    /// The first binding seen.
    pub first: Instant,
    /// The last one.
    pub last: Instant,
    /// When the last of the expected pods appeared.
    pub all_seen: Instant,
}

/// Watches a namespace's pods until `expected` of them are bound.
pub(super) async fn bindings(
    api: kube::Api<Pod>,
    expected: usize,
    listening: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<Bound> {
    let mut listening = Some(listening);
    let (mut seen, mut bound) = (HashSet::new(), HashSet::new());
    let (mut first, mut all_seen) = (None, None);
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    while let Some(event) = stream.next().await {
        let pod = match event? {
            watcher::Event::InitDone => {
                if let Some(tx) = listening.take() {
                    let _ = tx.send(());
                }
                continue;
            }
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => pod,
            watcher::Event::Init | watcher::Event::Delete(_) => continue,
        };
        let name = pod.metadata.name.unwrap_or_default();
        let now = Instant::now();
        if seen.insert(name.clone()) && seen.len() == expected {
            all_seen = Some(now);
        }
        if pod.spec.and_then(|s| s.node_name).is_some() && bound.insert(name) {
            first.get_or_insert(now);
            if bound.len() == expected {
                return Ok(Bound {
                    first: first.unwrap_or(now),
                    last: now,
                    all_seen: all_seen.unwrap_or(now),
                });
            }
        }
    }
    bail!("the watch ended after {} bindings", bound.len())
}
