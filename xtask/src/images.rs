//! `cargo xtask images [--debug | --from-source]`: builds every image the manifests and the
//! Compose file name (`ghcr.io/countersign-dev/countersign-<service>:0.1.0`, and NATS, nats-box
//! and SPIRE under their public names) into podman or docker, whichever runs here.
//!
//! Ensures the peers (NATS, natscli and SPIRE are built from the Go module proxy), then runs the
//! binary `countersign-images` of `tests/system` with `cargo run` (cargo's progress shown), which
//! builds the services, builds their images from their Dockerfiles and writes and loads the
//! others; see that binary for what they hold.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Build the services in cargo's dev profile (faster to build, larger images).
    #[arg(long, conflicts_with = "from_source")]
    debug: bool,
    /// Build the services from source in their Dockerfiles' `rust` stage instead of with cargo
    /// here (needs a registry for the base images; NATS and SPIRE are then pulled by Compose).
    #[arg(long)]
    from_source: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.from_source {
        crate::peers::ensure()?;
    }
    let mut command = crate::cargo::command(&[
        "run",
        "--package",
        "countersign-system-tests",
        "--bin",
        "countersign-images",
        "--",
    ])?;
    if args.debug {
        command.arg("--debug");
    }
    if args.from_source {
        command.arg("--from-source");
    }
    eprintln!("images: building and running the image builder: {command:?}");
    Err(crate::cargo::exec(command))
}
