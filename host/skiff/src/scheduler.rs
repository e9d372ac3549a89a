//! `skiff scheduler`, and the scheduler `skiff server` runs inside itself.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Flags shared by `skiff scheduler` and `skiff server`.
#[derive(clap::Args, Debug, Clone)]
pub struct SchedulerFlags {
    /// The scheduler's configuration (profiles, percentageOfNodesToScore), JSON or YAML.
    #[arg(long = "scheduler-config")]
    pub scheduler_config: Option<PathBuf>,
    /// A registry (`host:port`) that Plugin components are pulled from over plain HTTP, as
    /// containerd's insecure registries; repeatable, added to the configuration's.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
}

/// Flags of `skiff scheduler`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The kubeconfig to reach the API with.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// Where compiled plugins are cached.
    #[arg(long, default_value = "/var/lib/skiff/plugin-cache")]
    pub plugin_cache: PathBuf,
    #[command(flatten)]
    pub flags: SchedulerFlags,
}

/// Reads the scheduler configuration file, if any.
pub fn config(flags: &SchedulerFlags) -> anyhow::Result<skiff_scheduler::Config> {
    let mut config: skiff_scheduler::Config = match &flags.scheduler_config {
        None => skiff_scheduler::Config::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
    };
    config
        .insecure_registries
        .extend(flags.insecure_registries.iter().cloned());
    Ok(config)
}

/// A client from a kubeconfig file.
pub async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .context("loading the kubeconfig")?;
    kube::Client::try_from(config).context("making the API client")
}

/// The plugin host and the scheduler's metrics, both registered in `registry`.
pub fn parts(
    cache: &Path,
    registry: &Mutex<Registry>,
) -> anyhow::Result<(Arc<skiff_plugin_host::Host>, skiff_scheduler::Metrics)> {
    let host = skiff_plugin_host::Host::new(skiff_plugin_host::Config {
        cache_dir: Some(cache.to_owned()),
        ..Default::default()
    })
    .context("starting the plugin host")?;
    let metrics = skiff_scheduler::Metrics::default();
    let mut registry = registry.lock().unwrap_or_else(|p| p.into_inner());
    host.metrics().register(&mut registry);
    metrics.register(&mut registry);
    Ok((Arc::new(host), metrics))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = config(&args.flags)?;
    let client = client(&args.kubeconfig).await?;
    let registry = Mutex::new(Registry::default());
    let (host, metrics) = parts(&args.plugin_cache, &registry)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::server::wait_for_signal().await;
        stop.cancel();
    });
    tracing::info!("skiff scheduler running");
    skiff_scheduler::run(client, config, host, metrics, shutdown)
        .await
        .context("the scheduler failed")
}
