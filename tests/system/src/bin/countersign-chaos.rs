//! `countersign-chaos [--taskruns N] [--seed S] [--short] [--replicas N] [--cluster]`: the
//! demo's system under faults. What
//! `cargo xtask chaos` runs (with `cargo run`, cargo's progress shown while it builds).
//!
//! Builds the six binaries, starts the system as the demo does, and runs
//! `countersign_system_tests::demo::chaos` (1,000 TaskRuns by default, `--short` for the test
//! suite's 60), printing each wave and each fault as it happens, then the report; its last line
//! reads `chaos: missing <n>, duplicated <n>, wrong <n>, stale <n>, p99 finish->attestation <s> s`.
//! Exits 0 only when every count is 0, no event was dead-lettered and every service is ready.
//! Without `--seed` the seed comes from the clock; it is printed first, so a run can be replayed.

use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use countersign_system_tests::demo::chaos::ChaosPlan;
use countersign_system_tests::demo::{Binaries, Demo, Origin, Reporter, binaries, error_lines};

/// The exit status of a bad command line (`EX_USAGE`).
const USAGE: u8 = 64;

const HELP: &str = "usage: countersign-chaos [--taskruns N] [--seed S] [--short] [--replicas N] [--cluster]\n\n  \
    --taskruns N  how many TaskRuns to play (default 1000; 60 with --short)\n  \
    --seed S      the seed of every random choice (default: from the clock; printed)\n  \
    --short       the test suite's plan: 60 TaskRuns in waves of 10, 2 replicas\n  \
    --replicas N  processes of each service (default 1; 2 with --short); a kill hits one\n  \
    --cluster     a 3-node JetStream cluster, every stream and bucket R3, instead of one\n                \
nats-server; its nats-server kills hit one node";

/// The command line.
struct Options {
    taskruns: Option<usize>,
    seed: Option<u64>,
    short: bool,
    replicas: Option<usize>,
    cluster: bool,
}

fn parse_options() -> Result<Option<Options>, String> {
    let mut options = Options {
        taskruns: None,
        seed: None,
        short: false,
        replicas: None,
        cluster: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--short" => options.short = true,
            "--cluster" => options.cluster = true,
            "--taskruns" => {
                let value = args.next().ok_or("--taskruns needs a number")?;
                options.taskruns = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--taskruns {value:?} is not a number"))?,
                );
            }
            "--seed" => {
                let value = args.next().ok_or("--seed needs a number")?;
                options.seed = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--seed {value:?} is not a number"))?,
                );
            }
            "--replicas" => {
                let value = args.next().ok_or("--replicas needs a number")?;
                options.replicas = Some(
                    value
                        .parse::<usize>()
                        .ok()
                        .filter(|replicas| *replicas > 0)
                        .ok_or_else(|| format!("--replicas {value:?} is not a positive number"))?,
                );
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unexpected argument {other:?} (try --help)")),
        }
    }
    Ok(Some(options))
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("countersign-chaos: {message}");
            return ExitCode::from(USAGE);
        }
    };
    let seed = options.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|since| since.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut plan = if options.short {
        ChaosPlan::short(seed)
    } else {
        ChaosPlan::full(seed)
    };
    if let Some(taskruns) = options.taskruns {
        plan.taskruns = taskruns;
    }
    if let Some(replicas) = options.replicas {
        plan.replicas = replicas;
    }
    if options.cluster {
        plan.nats_nodes = 3;
    }
    println!(
        "chaos: seed {seed} ({} TaskRuns, {} replica(s) of each service, {} NATS node(s))",
        plan.taskruns, plan.replicas, plan.nats_nodes
    );

    let started = Instant::now();
    let root = countersign_test_support::repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "chaos: building the services: cargo {}",
        binaries::build_args(None).join(" ")
    );
    let binaries = match Binaries::build(&cargo, &root, None) {
        Ok(binaries) => binaries,
        Err(error) => {
            eprintln!(
                "chaos: building the binaries failed: {}",
                error_lines(&error)
            );
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chaos: starting the Tokio runtime failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run_chaos(plan, binaries, started))
}

async fn run_chaos(plan: ChaosPlan, binaries: Binaries, started: Instant) -> ExitCode {
    let progress = Reporter::stdout();
    // The system's own output (every event on the bus) is kept out of the way.
    let (quiet, _captured) = Reporter::capture();
    progress.line(Origin::Demo, "starting the system as the demo does ...");
    let mut demo = match Demo::start_shaped(binaries, quiet, plan.shape()).await {
        Ok(demo) => demo,
        Err(error) => {
            progress.line(
                Origin::Demo,
                format!("FAILED: the system did not start: {}", error_lines(&error)),
            );
            return ExitCode::FAILURE;
        }
    };
    progress.line(
        Origin::Demo,
        format!(
            "the system is up; logs under {}",
            demo.dir().join("logs").display()
        ),
    );
    let outcome = tokio::select! {
        outcome = demo.chaos(&plan, &progress) => Some(outcome),
        _ = tokio::signal::ctrl_c() => None,
    };
    demo.shutdown().await;
    match outcome {
        None => {
            progress.line(Origin::Demo, "interrupted");
            ExitCode::from(130)
        }
        Some(Err(error)) => {
            progress.line(
                Origin::Demo,
                format!(
                    "FAILED: the chaos run did not finish: {}",
                    error_lines(&error)
                ),
            );
            ExitCode::FAILURE
        }
        Some(Ok(report)) => {
            progress.plain(report.summary());
            progress.plain(format!(
                "finished in {:.1} s\n",
                started.elapsed().as_secs_f64()
            ));
            // The last line, on its own.
            println!("{}", report.last_line());
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
