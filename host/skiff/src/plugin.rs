//! `skiff plugin`: tools for plugin authors.

use std::path::PathBuf;

use anyhow::Context;

/// Flags of `skiff plugin`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Push a component to a registry as a Wasm OCI artifact, for a Plugin's
    /// `spec.component.oci`.
    Push {
        /// The component (`.wasm`).
        component: PathBuf,
        /// Where to push it: registry/repository:tag.
        reference: String,
        /// Registries (`host:port`) reached over plain HTTP.
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Push {
            component,
            reference,
            insecure_registries,
        } => {
            let bytes = tokio::fs::read(&component)
                .await
                .with_context(|| format!("reading {}", component.display()))?;
            let url = skiff_oci::Registry::new(&insecure_registries)
                .push_component(&reference, bytes)
                .await?;
            println!("{url}");
            Ok(())
        }
    }
}
