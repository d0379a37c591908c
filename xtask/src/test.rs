//! `cargo xtask test`: check tidiness (`cargo xtask tidy`), ensure the peers, run every test,
//! print the runner's summary.
//!
//! Each test binary prints its own `test result:` line; this task adds them up and ends with one line
//! for the whole run, which is what CI logs show.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::Context as _;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Extra arguments for `cargo test`, e.g. `-p countersign-events` (only that package instead
    /// of the whole workspace) or a test-name filter.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cargo_args: Vec<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    binaries: u32,
    passed: u64,
    failed: u64,
    ignored: u64,
    filtered_out: u64,
}

impl Summary {
    /// Adds one `test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; ...` line.
    fn add_line(&mut self, line: &str) -> bool {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return false;
        };
        self.binaries += 1;
        // After the verdict (`ok.` or `FAILED.`), each part is `<count> <label>`, e.g. `2 filtered out`.
        let counts = rest
            .split_once(". ")
            .map_or(rest, |(_verdict, counts)| counts);
        for part in counts.split(';') {
            let Some((count, label)) = part.trim().split_once(' ') else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                "filtered out" => self.filtered_out += count,
                _ => {}
            }
        }
        true
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let untidy = crate::tidy::check()?;
    if !untidy.is_empty() {
        for problem in &untidy {
            eprintln!("tidy: {problem}");
        }
        anyhow::bail!("the workspace is not tidy (cargo xtask tidy); no test was run");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let cargo_args = test_args(&args.cargo_args);
    // On a fresh machine the peers (Go builds) and the test binaries (cargo) each take many
    // minutes, and neither keeps both cores busy all the time: they are built side by side. A
    // missing or old Go is reported now, not after the test build.
    if countersign_peers::locate().is_err() {
        countersign_peers::go_version().context("the real test peers cannot be built")?;
    }
    let peers = std::thread::scope(|scope| {
        let peers = scope.spawn(crate::peers::ensure);
        build_tests(&cargo, &cargo_args);
        peers
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    for binary in peers.iter() {
        eprintln!(
            "peers: {} {} at {}",
            binary.peer,
            binary.version,
            binary.path.display()
        );
    }

    let mut command = Command::new(cargo);
    command.args(&cargo_args);
    command.stdout(Stdio::piped());
    eprintln!("running: cargo {}", cargo_args.join(" "));
    let mut child = command.spawn().context("running cargo test")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut summary = Summary::default();
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        summary.add_line(&line);
        writeln!(out, "{line}")?;
    }
    let status = child.wait().context("waiting for cargo test")?;
    let verdict = if status.success() && summary.failed == 0 {
        "ok"
    } else {
        "FAILED"
    };
    writeln!(
        out,
        "\ntest result: {verdict}. {} passed; {} failed; {} ignored; {} filtered out; {} test binaries; finished in {:.1}s",
        summary.passed,
        summary.failed,
        summary.ignored,
        summary.filtered_out,
        summary.binaries,
        started.elapsed().as_secs_f64()
    )?;
    Ok(if verdict == "ok" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Builds the test binaries `cargo <cargo_args>` will run (`--no-run`), showing cargo's
/// progress. A failed build is not an error here: the test run that follows reports it, with the
/// summary line.
fn build_tests(cargo: &std::ffi::OsStr, cargo_args: &[String]) {
    let mut args = vec!["test".to_owned(), "--no-run".to_owned()];
    args.extend(cargo_args.iter().skip(1).cloned());
    eprintln!("building: cargo {}", args.join(" "));
    match Command::new(cargo)
        .args(&args)
        .stdout(Stdio::null())
        .status()
    {
        Ok(status) if !status.success() => eprintln!("building the tests failed ({status})"),
        Ok(_) => {}
        Err(error) => eprintln!("building the tests: running cargo failed: {error}"),
    }
}

/// `cargo test` with every package (unless the arguments choose some: cargo would ignore `-p`
/// next to `--workspace`), not stopping at the first failing test binary, then `extra`.
fn test_args(extra: &[String]) -> Vec<String> {
    let chooses_packages = extra.iter().any(|arg| {
        arg == "-p"
            || arg == "--package"
            || arg.starts_with("--package=")
            || (arg.starts_with("-p") && arg.len() > 2)
    });
    let mut args = vec!["test".to_owned(), "--no-fail-fast".to_owned()];
    if !chooses_packages {
        args.push("--workspace".to_owned());
    }
    args.extend(extra.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_result_lines_and_ignores_the_rest() {
        let mut summary = Summary::default();
        assert!(summary.add_line(
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 0.01s"
        ));
        assert!(summary.add_line(
            "test result: FAILED. 4 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.2s"
        ));
        assert!(!summary.add_line("running 7 tests"));
        assert_eq!(
            summary,
            Summary {
                binaries: 2,
                passed: 7,
                failed: 2,
                ignored: 1,
                filtered_out: 2
            }
        );
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn runs_the_whole_workspace_unless_packages_are_chosen() {
        assert_eq!(
            test_args(&strings(&["attestor"])),
            strings(&["test", "--no-fail-fast", "--workspace", "attestor"])
        );
        for chosen in [
            &["-p", "countersign-events"][..],
            &["--package", "countersign-events"],
            &["--package=countersign-events"],
            &["-pcountersign-events"],
        ] {
            let args = test_args(&strings(chosen));
            assert!(!args.contains(&"--workspace".to_owned()), "{args:?}");
            assert!(args.ends_with(&strings(chosen)), "{args:?}");
        }
    }
}
