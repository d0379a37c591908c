//! Countersign's benchmarks, run against real peers (`cargo xtask bench [case]`).
//!
//! Each case is a module of [`cases`] registered in [`cases::CASES`]; it measures our code
//! against a baseline in the same run and reports a headline ratio (ours / baseline, higher is
//! better), printed as `<case>: ratio <number>`. The run writes `report.md` and `report.json`
//! (plus one pair per case) under the report directory.

mod cases;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "countersign-bench",
    about = "Countersign's benchmarks against real peers"
)]
struct Cli {
    /// The case to run; every case when absent.
    case: Option<String>,
    /// Where the report is written.
    #[arg(long, default_value = "target/bench")]
    report_dir: PathBuf,
    /// How many events a case publishes and consumes.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// How many times each side is measured (the best run counts).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Case-specific settings, `key=value` (repeatable).
    #[arg(long = "set", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
    /// List the cases and exit.
    #[arg(long)]
    list: bool,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

/// What every case receives.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many events to publish and consume.
    pub events: usize,
    /// How many rounds to measure.
    pub rounds: usize,
    /// Case-specific settings.
    pub settings: BTreeMap<String, String>,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    if cli.list {
        for case in cases::CASES {
            println!("{:<12} {}", case.name, case.summary);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let selected: Vec<&cases::Case> = match &cli.case {
        Some(name) => vec![cases::find(name).with_context(|| {
            let names: Vec<&str> = cases::CASES.iter().map(|case| case.name).collect();
            format!("no case {name:?}; cases: {}", names.join(", "))
        })?],
        None => cases::CASES.iter().collect(),
    };
    let options = Options {
        events: cli.events.max(1),
        rounds: cli.rounds.max(1),
        settings: cli.settings.into_iter().collect(),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let mut reports = Vec::new();
    for case in selected {
        eprintln!(
            "bench: running {} ({} events, {} rounds)",
            case.name, options.events, options.rounds
        );
        let report = runtime
            .block_on((case.run)(options.clone()))
            .with_context(|| format!("case {}", case.name))?;
        println!("{}", report.headline());
        for metric in &report.metrics {
            let value = report::CaseReport::format_value(metric.value);
            println!("  {:<40} {value:>12} {}", metric.name, metric.unit);
        }
        reports.push(report);
    }
    report::write(&cli.report_dir, &reports)?;
    Ok(ExitCode::SUCCESS)
}
