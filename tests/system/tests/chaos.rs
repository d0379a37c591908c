//! The chaos run, short (`cargo xtask chaos` runs it in full): the demo's system, two replicas
//! of every service, each its own process against the real peers, 60 TaskRuns played through
//! the API server in waves (about one in five tampered with, about one in twelve deleted
//! mid-flight, two with a result of 1.1 MiB, so their `finished` event is over nats-server's
//! max payload and they must be rejected `payload_too_large`, with the watcher's log saying
//! why) while a replica of each of watcher, registrar, attestor and relay is killed with
//! SIGKILL and started again, and nats-server, spire-server, spire-agent and kube-apiserver
//! with etcd are killed and started again on their data. Afterwards every finished TaskRun has
//! exactly one attestation with the expected verdict and every deleted one none, SPIRE holds no
//! entry of a finished or deleted TaskRun, nothing was dead-lettered and every service is ready.
//! A second, smaller run does the same on a 3-node JetStream cluster (every stream and bucket
//! R3) that loses a node and gets it back (`cargo xtask chaos --cluster` in full). The seed is
//! printed (set `CHAOS_SEED` to replay one), and so is the report with each fault's recovery
//! time and the finish->attestation percentiles. Set `CHAOS_KEEP_LOGS` to a directory to keep
//! every service's log of the run there (`<dir>/<seed>/`).

use std::path::Path;

use countersign_system_tests::demo::chaos::{ChaosPlan, ChaosReport, Fault};
use countersign_system_tests::demo::{Binaries, Demo, Reporter, error_lines};

/// Both runs start the whole system; on a 2-core machine they take turns.
static ONE_SYSTEM_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The seed: `CHAOS_SEED`, else from the clock.
fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|since| since.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// Copies the run's service logs to `$CHAOS_KEEP_LOGS/<seed>/`, when that is set.
fn keep_logs(demo: &Demo, seed: u64) {
    let Some(keep) = std::env::var_os("CHAOS_KEEP_LOGS") else {
        return;
    };
    let from = demo.dir().join("logs");
    let to = Path::new(&keep).join(seed.to_string());
    let copied = std::fs::create_dir_all(&to).and_then(|()| {
        for entry in std::fs::read_dir(&from)? {
            let entry = entry?;
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
        Ok(())
    });
    match copied {
        Ok(()) => println!("chaos: the services' logs are in {}", to.display()),
        Err(error) => println!(
            "chaos: keeping the logs in {} failed: {error}",
            to.display()
        ),
    }
}

/// Builds the binaries, starts the system in the plan's shape, plays the plan and checks that
/// everything held; returns the report.
async fn run(plan: ChaosPlan) -> ChaosReport {
    let _turn = ONE_SYSTEM_AT_A_TIME.lock().await;
    let seed = plan.seed;
    println!("chaos: seed {seed}");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = countersign_test_support::repo_root();
    let target = countersign_test_support::workspace::target_dir();
    let binaries = tokio::task::spawn_blocking(move || {
        Binaries::build(&cargo, Path::new(&root), Some(&target))
    })
    .await
    .expect("the build task")
    .unwrap_or_else(|error| panic!("building the binaries: {}", error_lines(&error)));

    let (quiet, captured) = Reporter::capture();
    let (progress, progress_text) = Reporter::capture();
    let mut demo = match Demo::start_shaped(binaries, quiet, plan.shape()).await {
        Ok(demo) => demo,
        Err(error) => panic!(
            "the system did not start: {}\n---- demo output ----\n{}",
            error_lines(&error),
            captured.text()
        ),
    };
    let outcome = demo.chaos(&plan, &progress).await;
    keep_logs(&demo, seed);
    demo.shutdown().await;
    let report = outcome.unwrap_or_else(|error| {
        panic!(
            "the chaos run (seed {seed}) did not finish: {}\n---- progress ----\n{}",
            error_lines(&error),
            progress_text.text()
        )
    });
    println!("{}\n{}", report.summary(), report.last_line());
    assert!(
        report.passed(),
        "seed {seed}: {}\n{}\n---- progress ----\n{}",
        report.summary(),
        report.last_line(),
        progress_text.text()
    );
    assert!(
        !report.recoveries.is_empty(),
        "at least one fault was injected"
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_kills_and_restarts_every_taskrun_is_attested_once_with_the_right_verdict() {
    let report = run(ChaosPlan::short(seed())).await;
    assert_eq!(report.taskruns, 60);
    assert_eq!(
        report.oversized, 2,
        "TaskRuns 15 and 45 have a finished event over the max payload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_three_node_cluster_losing_a_node_loses_no_attestation() {
    let report = run(ChaosPlan::short_cluster(seed())).await;
    assert_eq!(report.taskruns, 40);
    assert!(
        report
            .recoveries
            .iter()
            .any(|recovery| recovery.fault == Fault::KillNats),
        "a node of the cluster was killed and started again: {}",
        report.summary()
    );
}
