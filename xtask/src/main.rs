//! Developer tasks, run as `cargo xtask <task>`:
//!
//! - `test`: make sure the real peers are built, then run every test and print one summary line;
//! - `peers`: build or locate nats-server, spire-server, spire-agent, etcd and kube-apiserver;
//!
//! It needs nothing but cargo (and Go, to build the peers the first time).

mod peers;
mod test;

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
    /// Build the real peers if they are missing, then run every test in the workspace.
    Test(test::Args),
    /// Build or locate the real peers and print their versions and paths.
    Peers,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Test(args) => test::run(args),
        Task::Peers => peers::run(),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
