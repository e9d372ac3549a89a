//! The `skiff` binary: subcommands, configuration and logging; the work is in the crates.

mod agent;
mod bench;
mod controllers;
mod plugin;
mod scheduler;
mod server;

use clap::{Parser, Subcommand};

// The API server allocates and frees many small objects per request (JSON values, field
// sets); mimalloc handles that pattern with far less overhead than glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

/// A small, fast, Kubernetes-compatible orchestrator.
#[derive(Parser, Debug)]
#[command(name = "skiff", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the cluster: the HTTPS API and its store.
    Server(server::Args),
    /// Run the scheduler on its own, against a cluster's API.
    Scheduler(scheduler::Args),
    /// Tools for plugin authors (push a component to a registry).
    Plugin(plugin::Args),
    /// Run the controllers on their own, against a cluster's API.
    ControllerManager(controllers::Args),
    /// Run the node agent on its own, against a cluster's API.
    Agent(agent::Args),
    /// The agent's image store: import images for offline machines, list them.
    Image(agent::ImageArgs),
    /// Measure a part of skiff and print a table.
    Bench(bench::Args),
    /// The per-container shim the agent starts (not for direct use).
    #[command(hide = true, subcommand)]
    Shim(ShimCommand),
}

#[derive(Subcommand, Debug)]
enum ShimCommand {
    /// Create, start and supervise one container.
    Run(skiff_agent::shim::RunArgs),
    /// Run a process in a running container.
    Exec(skiff_agent::shim::ExecArgs),
    /// Fork a shim for each container the agent asks for on stdin.
    Server,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The shim must stay single-threaded (libcontainer clones it) and must not log to the
    // container's stdio: it runs before any runtime or subscriber exists.
    let command = match cli.command {
        Command::Shim(ShimCommand::Run(args)) => skiff_agent::shim::run(args),
        Command::Shim(ShimCommand::Exec(args)) => skiff_agent::shim::exec(args),
        Command::Shim(ShimCommand::Server) => skiff_agent::shim::server(),
        Command::Image(args) => return agent::image(args),
        other => other,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SKIFF_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match command {
            Command::Server(args) => server::run(args).await,
            Command::Scheduler(args) => scheduler::run(args).await,
            Command::Plugin(args) => plugin::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::ControllerManager(args) => controllers::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Shim(_) | Command::Image(_) => unreachable!("handled before the runtime"),
        }
    })
}
