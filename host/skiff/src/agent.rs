//! `skiff agent` (the node agent on its own, against a cluster's API), the agent `skiff
//! server` runs as its local node, and `skiff image`.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// Flags shared by `skiff agent` and `skiff server`'s local agent.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentFlags {
    /// The Node's name (default: the hostname).
    #[arg(long = "node-name", env = "SKIFF_NODE_NAME")]
    pub node_name: Option<String>,
    /// The node's address, its InternalIP (default: 127.0.0.1).
    #[arg(long = "node-ip")]
    pub node_ip: Option<IpAddr>,
    /// Extra Node labels, `key=value` (repeatable).
    #[arg(long = "node-label")]
    pub node_labels: Vec<String>,
    /// The agent's HTTPS port, published in the Node's daemonEndpoints.
    #[arg(long = "agent-port", default_value_t = 10250)]
    pub agent_port: u16,
    /// The parent cgroup of every pod.
    #[arg(long = "cgroup-root", default_value = "/skiff")]
    pub cgroup_root: String,
    /// The agent's serving certificate (PEM), as the kubelet's flag.
    #[arg(long = "tls-cert-file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long = "tls-private-key-file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// The CA whose client certificates may use the agent's API (the API server's).
    #[arg(long = "client-ca-file")]
    pub client_ca_file: Option<PathBuf>,
    /// A registry (`host:port`) images are pulled from over plain HTTP (repeatable).
    #[arg(long = "image-insecure-registry")]
    pub image_insecure_registries: Vec<String>,
}

/// Flags of `skiff agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The API server to join (`https://host:6443`), with `--token`: the agent gets its own
    /// client and serving certificates from the cluster and keeps them in
    /// `<data-dir>/pki`.
    #[arg(long)]
    pub server: Option<String>,
    /// The join token (`skiff server` writes it to `<its data dir>/join-token`). Needed to
    /// join; later starts reuse the node's certificates.
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A kubeconfig to reach the API with instead of joining (then the serving certificate
    /// comes from the `--tls-*` flags).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Where images, pod directories and logs live.
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub flags: AgentFlags,
}

/// The agent's configuration from its flags.
pub fn config(flags: &AgentFlags, data_dir: PathBuf) -> anyhow::Result<skiff_agent::AgentConfig> {
    let node_name = match &flags.node_name {
        Some(n) => n.clone(),
        None => crate::server::hostname().context("no --node-name and no hostname")?,
    };
    let mut node_labels = Vec::new();
    for label in &flags.node_labels {
        let (k, v) = label
            .split_once('=')
            .with_context(|| format!("--node-label {label:?} is not key=value"))?;
        node_labels.push((k.to_owned(), v.to_owned()));
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let machine = skiff_agent::node::Machine::read(&data_dir);
    Ok(skiff_agent::AgentConfig {
        node_name: node_name.to_ascii_lowercase(),
        node_labels,
        address: flags.node_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
        port: flags.agent_port,
        data_dir,
        insecure_registries: flags.image_insecure_registries.clone(),
        cgroup_root: flags.cgroup_root.trim_end_matches('/').to_owned(),
        max_pods: 110,
        capacity_cpu: machine.cpus,
        capacity_memory: machine.memory,
        tls: tls_files(flags)?,
        serving_certificate_dir: None,
        trim_startup_pages: false,
    })
}

/// The serving certificate from `--tls-cert-file`, `--tls-private-key-file` and
/// `--client-ca-file` (all three or none).
fn tls_files(flags: &AgentFlags) -> anyhow::Result<Option<skiff_agent::server::ServerTls>> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    match (
        &flags.tls_cert_file,
        &flags.tls_private_key_file,
        &flags.client_ca_file,
    ) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(skiff_agent::server::ServerTls {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            client_ca_pem: read(ca)?,
        })),
        _ => anyhow::bail!(
            "--tls-cert-file, --tls-private-key-file and --client-ca-file go together"
        ),
    }
}

/// The youki runtime keeping its state under `data_dir`, with this binary as the shim.
pub fn runtime(data_dir: &std::path::Path) -> anyhow::Result<skiff_agent::YoukiRuntime> {
    let shim = std::env::current_exe().context("finding the skiff binary")?;
    skiff_agent::YoukiRuntime::new(skiff_agent::YoukiConfig {
        dir: data_dir.join("containers"),
        root: data_dir.join("youki"),
        shim,
    })
    .context("starting the container runtime")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = config(&args.flags, args.data_dir.clone())?;
    // A process of its own: what only start-up ran need not stay resident.
    config.trim_startup_pages = true;
    let client = match (&args.server, &args.kubeconfig) {
        (Some(server), _) => {
            let token = args
                .token
                .as_deref()
                .map(skiff_core::join::JoinToken::parse)
                .transpose()
                .context("--token")?;
            let dir = args.data_dir.join("pki");
            let client = skiff_agent::join::client(server, token.as_ref(), &config.node_name, &dir)
                .await
                .with_context(|| format!("joining {server}"))?;
            if config.tls.is_none() {
                config.serving_certificate_dir = Some(dir);
            }
            client
        }
        (None, Some(kubeconfig)) => crate::scheduler::client(kubeconfig).await?,
        (None, None) => {
            anyhow::bail!("give --server and --token to join a cluster, or --kubeconfig")
        }
    };
    let runtime = runtime(&args.data_dir)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::server::wait_for_signal().await;
        stop.cancel();
    });
    skiff_agent::run(client, config, runtime, shutdown)
        .await
        .context("the agent failed")
}

/// `skiff image`: the agent's image store, for offline machines.
#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// The agent's data directory.
    #[arg(
        long,
        default_value = "/var/lib/skiff/agent",
        env = "SKIFF_AGENT_DATA_DIR"
    )]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// What `skiff image` does.
#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Imports the images of an OCI image layout (directory or tarball) or a `docker save`
    /// tarball.
    Import {
        /// The layout or tarball.
        path: PathBuf,
    },
    /// Lists the images in the store.
    Ls,
}

pub fn image(args: ImageArgs) -> anyhow::Result<()> {
    let store = skiff_agent::image::ImageStore::open(&args.data_dir.join("images"), &[])
        .context("opening the image store")?;
    match args.command {
        ImageCommand::Import { path } => {
            for image in store
                .import(&path)
                .with_context(|| format!("importing {}", path.display()))?
            {
                println!("imported {} ({})", image.reference, image.digest);
            }
        }
        ImageCommand::Ls => {
            println!("{:<60} {:<20} {:>12}", "IMAGE", "ID", "SIZE");
            for image in store.list() {
                let id = image.id.trim_start_matches("sha256:");
                println!(
                    "{:<60} {:<20} {:>12}",
                    image.reference,
                    &id[..id.len().min(12)],
                    image.size
                );
            }
        }
    }
    Ok(())
}
