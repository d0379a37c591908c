//! The `countersign` binary: parse the command line, run it, exit with the documented code
//! (see `countersign --help`).

use std::process::ExitCode;

use clap::Parser as _;
use countersign_cli::{Cli, exit_code, run};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version go to stdout and succeed; usage errors go to stderr.
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() {
                exit_code::USAGE
            } else {
                exit_code::OK
            });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("countersign: starting the runtime: {error}");
            return ExitCode::from(exit_code::SOFTWARE);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match runtime.block_on(run(cli, &mut stdout, &mut stderr, stop)) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(error) => {
            eprintln!("countersign: {}", error.chain());
            ExitCode::from(error.exit_code())
        }
    }
}
