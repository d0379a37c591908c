//! The `countersign` command: check TaskRun results and attestations offline, read
//! attestations from NATS.
//!
//! - `verify-results`: a TaskRun JSON checked offline with the attestor's own rules
//!   ([`verify_results`]).
//! - `verify`: a signed attestation (or an attestation event) checked offline against a trust
//!   bundle and the attestor's SPIFFE ID ([`verify`]).
//! - `get NAMESPACE/NAME`: the stored attestation of a TaskRun ([`nats::get`]).
//! - `tail`: attestation events as they are published ([`nats::tail`]).
//! - `export`: a stored attestation written as Sigstore bundle files, with its VSAs
//!   ([`export`]).
//! - `bundles export`: the trust bundle history, for `verify --bundle-history`, which checks
//!   an attestation at its signing time against it ([`bundles`]).
//!
//! [`args`] is the command line, [`exit`] the exit codes and errors, [`render`] the output for
//! people. The binary (`main.rs`) only parses, runs [`run`] and exits with its code.

pub mod args;
pub mod bundles;
pub mod exit;
pub mod export;
pub mod inputs;
pub mod nats;
pub mod render;
pub mod verify;
pub mod verify_results;

use std::io::Write;

pub use args::{Cli, Command};
pub use exit::{CliError, Outcome, exit_code};

/// Runs a parsed command line, writing results to `out` and progress to `status`, until done
/// (or, for `tail`, until `stop` resolves).
pub async fn run(
    cli: Cli,
    out: &mut dyn Write,
    status: &mut dyn Write,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Outcome, CliError> {
    match &cli.command {
        Command::VerifyResults(args) => verify_results::verify_results(args, out),
        Command::Verify(args) if args.bundle_history_from_nats => {
            verify::verify_from_nats(&cli.nats, args, out).await
        }
        Command::Verify(args) => verify::verify(args, out),
        Command::Get(args) => nats::get(&cli.nats, args, out).await,
        Command::Tail(args) => nats::tail(&cli.nats, args, out, status, stop).await,
        Command::Export(args) => export::export(&cli.nats, args, out).await,
        Command::Bundles(args::BundlesCommand::Export(args)) => {
            bundles::export(&cli.nats, args, out).await
        }
    }
}
