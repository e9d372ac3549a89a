//! The `skiff` binary: subcommands, configuration and logging; the work is in the crates.

mod bench;
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
    /// Measure a part of skiff and print a table.
    Bench(bench::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Scheduler(args) => scheduler::run(args).await,
            Command::Plugin(args) => plugin::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    })
}
