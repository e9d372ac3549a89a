//! `skiff server`: certificates, kubeconfig, store and API, until SIGTERM or SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus_client::registry::Registry;
use skiff_apiserver::pki::{self, Pki};
use skiff_apiserver::{ApiServer, Authenticator, Config, tls};
use skiff_store::{Config as StoreConfig, RedbStore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Flags of `skiff server`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The address to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1", env = "SKIFF_BIND_ADDRESS")]
    pub bind_address: IpAddr,
    /// The port to serve HTTPS on (0 picks a free one).
    #[arg(long, default_value_t = 6443, env = "SKIFF_PORT")]
    pub port: u16,
    /// Where certificates, the kubeconfig and the database live.
    #[arg(long, default_value = "/var/lib/skiff", env = "SKIFF_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Extra subject alternative names for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    pub tls_sans: Vec<String>,
    /// A kube-apiserver style token file: `token,user,uid,"group1,group2"` per line.
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    /// How many revisions of history the store keeps for watches.
    #[arg(long, default_value_t = 10_000)]
    pub history_revisions: u64,
    /// How often watches that ask for bookmarks get one, in seconds.
    #[arg(long, default_value_t = 10)]
    pub bookmark_interval_seconds: u64,
    /// How often the node agents' resource metrics are read for metrics.k8s.io (`kubectl
    /// top`, autoscaling), as metrics-server's `--metric-resolution`.
    #[arg(long, default_value = "15s", value_parser = skiff_core::time::parse_duration)]
    pub metric_resolution: Duration,
    /// Don't run the scheduler inside the server.
    #[arg(long)]
    pub disable_scheduler: bool,
    #[command(flatten)]
    pub scheduler: crate::scheduler::SchedulerFlags,
    /// Don't run a node agent (the local node) inside the server.
    #[arg(long)]
    pub disable_agent: bool,
    #[command(flatten)]
    pub agent: crate::agent::AgentFlags,
    #[command(flatten)]
    pub controllers: crate::controllers::ControllerFlags,
}

pub(crate) fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// The serving certificate's SANs: loopback, localhost, the hostname, the bind address and
/// any extras.
fn sans(args: &Args) -> Vec<String> {
    let mut sans = vec![
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        "localhost".to_owned(),
    ];
    sans.extend(hostname());
    if !args.bind_address.is_unspecified() {
        sans.push(args.bind_address.to_string());
    }
    sans.extend(args.tls_sans.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    sans.retain(|s| seen.insert(s.clone()));
    sans
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let pki = Pki::ensure(&args.data_dir, &sans(&args)).context("preparing certificates")?;
    let authenticator = match &args.token_auth_file {
        Some(path) => {
            let contents = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Authenticator::with_token_file(&contents)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => Authenticator::default(),
    };
    let mut store_config = StoreConfig::new(args.data_dir.join("state.redb"));
    store_config.history_revisions = args.history_revisions;
    let store = Arc::new(RedbStore::open(store_config).context("opening the store")?);
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.bind_address, args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.bind_address, args.port))?;
    let local = listener.local_addr()?;
    let advertise = if local.ip().is_unspecified() {
        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), local.port())
    } else {
        local
    };
    let scheduler_config = crate::scheduler::config(&args.scheduler)?;
    let extra_metrics = Arc::new(std::sync::Mutex::new(Registry::default()));
    let agent_client = skiff_apiserver::proxy::AgentClient::new(&pki)
        .map_err(anyhow::Error::msg)
        .context("making the node agents' client certificate")?;
    let config = Config {
        advertise_address: advertise,
        agent_client: Some(agent_client),
        authenticator,
        bookmark_interval: Duration::from_secs(args.bookmark_interval_seconds.max(1)),
        extra_metrics: Some(extra_metrics.clone()),
        ..Config::default()
    };
    let server = ApiServer::new(config, store.clone())
        .await
        .context("starting the API")?;
    let url = match advertise.ip() {
        IpAddr::V6(ip) => format!("https://[{ip}]:{}", advertise.port()),
        IpAddr::V4(ip) => format!("https://{ip}:{}", advertise.port()),
    };
    let kubeconfig = args.data_dir.join("kubeconfig.yaml");
    pki::write_private(&kubeconfig, &pki.admin_kubeconfig(&url))
        .context("writing the kubeconfig")?;
    let tls = tls::server_config(&pki).context("configuring TLS")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(skiff_apiserver::usage::scrape(
        server.clone(),
        args.metric_resolution,
        shutdown.clone(),
    ));
    let serving = tokio::spawn(skiff_apiserver::serve(
        listener,
        tls,
        server,
        shutdown.clone(),
    ));
    let admin = crate::scheduler::client(&kubeconfig).await?;
    let signer =
        skiff_controllers::csr::Signer::new(pki.ca_cert.clone(), pki.ca_key_pem().to_owned());
    let controllers = {
        let (admin, shutdown) = (admin.clone(), shutdown.clone());
        tokio::spawn(async move {
            let options = args.controllers.options(Some(signer));
            skiff_controllers::run(admin, &args.controllers.controllers, options, shutdown).await
        })
    };
    let join_token = join_token(&admin, &args.data_dir, &url, &pki.ca_cert)
        .await
        .context("publishing what nodes need to join")?;
    let scheduler = if args.disable_scheduler {
        None
    } else {
        // Plugins compile lazily; the engine itself is cheap to make.
        let (host, metrics) =
            crate::scheduler::parts(&args.data_dir.join("plugin-cache"), &extra_metrics)?;
        Some(tokio::spawn(skiff_scheduler::run(
            admin.clone(),
            scheduler_config,
            host,
            metrics,
            shutdown.clone(),
        )))
    };
    let agent = if args.disable_agent {
        None
    } else {
        let data_dir = args.data_dir.join("agent");
        let mut config = crate::agent::config(&args.agent, data_dir.clone())?;
        if args.agent.node_ip.is_none() {
            config.address = advertise.ip();
        }
        if config.tls.is_none() {
            // The local agent gets a serving certificate from the cluster CA.
            let sans = vec![
                config.address.to_string(),
                config.node_name.clone(),
                "localhost".to_owned(),
            ];
            let (cert_pem, key_pem) = pki
                .issue_server(&format!("system:node:{}", config.node_name), &sans)
                .context("issuing the agent's certificate")?;
            config.tls = Some(skiff_agent::server::ServerTls {
                cert_pem,
                key_pem,
                client_ca_pem: pki.ca_cert.clone(),
            });
        }
        let runtime = crate::agent::runtime(&data_dir)?;
        Some(tokio::spawn(skiff_agent::run(
            admin.clone(),
            config,
            runtime,
            shutdown.clone(),
        )))
    };
    info!(
        listen.address = %local,
        kubeconfig = %kubeconfig.display(),
        join.token = %join_token.display(),
        startup.ms = started.elapsed().as_millis() as u64,
        "skiff server ready"
    );
    wait_for_signal().await;
    info!("shutting down");
    shutdown.cancel();
    if let Some(agent) = agent {
        agent.await.context("the agent task failed")??;
    }
    if let Some(scheduler) = scheduler {
        scheduler.await.context("the scheduler task failed")??;
    }
    // The controllers are API clients with nothing of their own to save: they get a
    // moment to finish what they are writing, then go with the server.
    if tokio::time::timeout(std::time::Duration::from_secs(5), controllers)
        .await
        .is_err()
    {
        warn!("the controllers did not stop within 5 s");
    }
    serving.await.context("the API server task failed")?;
    store.close();
    Ok(())
}

/// Publishes the `cluster-info` ConfigMap and makes sure the join token in
/// `<data-dir>/join-token` is one the cluster accepts (a new one if it was revoked or the
/// CA changed). Returns the token file's path.
async fn join_token(
    admin: &kube::Client,
    data_dir: &std::path::Path,
    url: &str,
    ca_pem: &str,
) -> anyhow::Result<PathBuf> {
    use skiff_core::join::{JoinToken, ca_cert_hash};
    skiff_controllers::bootstrap::publish_cluster_info(admin, url, ca_pem).await?;
    let ca_hash = ca_cert_hash(ca_pem.as_bytes())?;
    let path = data_dir.join("join-token");
    let existing = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| JoinToken::parse(&t).ok())
        .filter(|t| t.ca_hash == ca_hash)
        .map(|t| (t.id, t.secret));
    let (id, secret) = skiff_controllers::bootstrap::ensure_token(admin, existing).await?;
    let token = JoinToken {
        ca_hash,
        id,
        secret,
    };
    pki::write_private(&path, &format!("{}\n", token.to_text()))?;
    Ok(path)
}

pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
