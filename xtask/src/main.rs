//! Developer tasks, run as `cargo xtask <task>`:
//!
//! - `test`: check tidiness, make sure the real peers are built, then run every test and print
//!   one summary line;
//! - `tidy`: the workspace's conventions checked from its metadata (no service depends on
//!   another);
//! - `peers`: build or locate nats-server, spire-server, spire-agent, etcd and kube-apiserver;
//! - `schemas`: regenerate `schemas/` from the event types in `crates/events`;
//! - `bench`: build the benchmarks in release and run one case or all, writing a report;
//! - `demo`: the whole system on one machine, end to end, against the real peers;
//! - `images`: build every image the manifests and the Compose file name, into podman or docker;
//! - `chaos`: the same system under SIGKILLs and restarts, 1,000 TaskRuns, checked at the end;
//!
//! It needs nothing but cargo (and Go, to build the peers the first time), and is small to
//! build: the demo, the benchmarks and the schema generator are binaries of their own crates
//! that the tasks build and run with cargo's progress shown ([`cargo`]).

mod bench;
mod cargo;
mod chaos;
mod demo;
mod images;
mod peers;
mod schemas;
mod test;
mod tidy;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Countersign's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Check tidiness, build the real peers if they are missing, then run every test in the
    /// workspace.
    Test(test::Args),
    /// Check the workspace's conventions (no service crate depends on another).
    Tidy,
    /// Build or locate the real peers and print their versions and paths.
    Peers,
    /// Regenerate schemas/ (JSON Schemas and the AsyncAPI document) from the event types.
    Schemas(schemas::Args),
    /// Run the benchmarks in release (one case or all) and write a report under target/bench/.
    Bench(bench::Args),
    /// The whole system on one machine: the real peers and every service, two TaskRuns played
    /// through the API server (one honest, one tampered with), every event shown as it happens.
    /// Exits non-zero unless the verdicts are the expected ones.
    Demo(demo::Args),
    /// Build every image the manifests and compose/compose.yaml name (the services', NATS,
    /// nats-box, SPIRE) without a registry, and load them into podman or docker.
    Images(images::Args),
    /// The demo's system under faults: TaskRuns in waves while every service, nats-server and
    /// spire-server are killed and started again; exits non-zero unless every TaskRun is
    /// attested once with the right verdict and nothing is stale or dead-lettered.
    Chaos(chaos::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Test(args) => test::run(args),
        Task::Tidy => tidy::run(),
        Task::Peers => peers::run(),
        Task::Schemas(args) => schemas::run(args),
        Task::Bench(args) => bench::run(args),
        Task::Demo(args) => demo::run(args),
        Task::Images(args) => images::run(args),
        Task::Chaos(args) => chaos::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
