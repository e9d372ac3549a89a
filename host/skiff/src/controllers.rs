//! `skiff controller-manager`: the controllers `skiff server` runs inside itself, on their
//! own against a cluster's API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// The controller flags `skiff server` and `skiff controller-manager` share.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerFlags {
    /// The controllers to run: `*` for all, names to pick, `-name` to leave one out, as
    /// kube-controller-manager's flag.
    #[arg(long, default_value = "*")]
    pub controllers: skiff_controllers::Selection,
    /// How long a node may go without a heartbeat before it is marked unreachable (and,
    /// after its pods' tolerationSeconds, they are evicted).
    #[arg(long, default_value = "40s", value_parser = skiff_core::time::parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// How often each HorizontalPodAutoscaler is synced.
    #[arg(long, default_value = "15s", value_parser = skiff_core::time::parse_duration)]
    pub horizontal_pod_autoscaler_sync_period: Duration,
}

impl ControllerFlags {
    /// The controllers' options, with the cluster CA if there is one.
    pub fn options(
        &self,
        signer: Option<skiff_controllers::csr::Signer>,
    ) -> skiff_controllers::Options {
        skiff_controllers::Options {
            signer,
            node_monitor_grace_period: Some(self.node_monitor_grace_period),
            hpa_sync_period: Some(self.horizontal_pod_autoscaler_sync_period),
        }
    }
}

/// Flags of `skiff controller-manager`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The kubeconfig to reach the API with.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    #[command(flatten)]
    pub controllers: ControllerFlags,
    /// The cluster CA's certificate (PEM), for signing approved certificate requests.
    #[arg(long, requires = "cluster_signing_key_file")]
    pub cluster_signing_cert_file: Option<PathBuf>,
    /// The cluster CA's private key (PEM).
    #[arg(long, requires = "cluster_signing_cert_file")]
    pub cluster_signing_key_file: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = crate::scheduler::client(&args.kubeconfig).await?;
    let signer = match (
        &args.cluster_signing_cert_file,
        &args.cluster_signing_key_file,
    ) {
        (Some(cert), Some(key)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            Some(skiff_controllers::csr::Signer::new(read(cert)?, read(key)?))
        }
        _ => None,
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::server::wait_for_signal().await;
        stop.cancel();
    });
    tracing::info!("skiff controller-manager running");
    let options = args.controllers.options(signer);
    skiff_controllers::run(client, &args.controllers.controllers, options, shutdown).await;
    Ok(())
}
