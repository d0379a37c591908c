//! `cargo xtask schemas [--check]`: regenerate `schemas/` (one JSON Schema per event type and the
//! AsyncAPI document) from the Rust types in `crates/events`, by running its
//! `countersign-schemas` binary. With `--check`, write nothing and fail when the committed files
//! differ.

use std::process::ExitCode;

use anyhow::Context as _;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only check that the committed files are up to date.
    #[arg(long)]
    check: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut command = crate::cargo::command(&[
        "run",
        "--package",
        "countersign-events",
        "--bin",
        "countersign-schemas",
        "--",
    ])?;
    if args.check {
        command.arg("--check");
    }
    let status = command.status().context("running countersign-schemas")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
