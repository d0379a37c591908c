//! The `countersign-signer` binary: parse the flags, sign, report, exit with the code of the
//! outcome (see `countersign_signer::exit_code`).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use countersign_error_report::error_chain;
use countersign_signer::{Args, MAX_TERMINATION_MESSAGE_BYTES, exit_code, run};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
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
            eprintln!("countersign-signer: starting the runtime: {error}");
            return ExitCode::from(exit_code::SIGNING_FAILED);
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(signed) => {
            let names: Vec<&str> = signed
                .results
                .iter()
                .map(|(name, _)| name.as_str())
                .collect();
            eprintln!(
                "countersign-signer: signed {} result(s) [{}] as {}",
                names.len(),
                names.join(","),
                signed.spiffe_id
            );
            if signed.termination_message.len() > MAX_TERMINATION_MESSAGE_BYTES {
                eprintln!(
                    "countersign-signer: warning: the signed results take {} bytes, over Tekton's \
                     {MAX_TERMINATION_MESSAGE_BYTES}-byte termination message limit",
                    signed.termination_message.len()
                );
            }
            if args.print_termination_message {
                let mut stdout = std::io::stdout().lock();
                if writeln!(stdout, "{}", signed.termination_message).is_err() {
                    return ExitCode::from(exit_code::CANNOT_WRITE);
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("countersign-signer: {}", error_chain(&error));
            ExitCode::from(error.exit_code())
        }
    }
}
