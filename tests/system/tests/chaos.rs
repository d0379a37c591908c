//! The chaos run, short (`cargo xtask chaos` runs it in full): the demo's system, every service
//! its own process against the real peers, 60 TaskRuns played through the API server in waves
//! (about one in five tampered with) while watcher, registrar, attestor and relay are killed
//! with SIGKILL and started again, and nats-server and spire-server are killed and started
//! again on their data. Afterwards every TaskRun has exactly one attestation with the expected
//! verdict, SPIRE holds no entry of a finished TaskRun, nothing was dead-lettered and every
//! service is ready. The seed is printed (set `CHAOS_SEED` to replay one), and so is the report
//! with each fault's recovery time and the finish->attestation percentiles.

use std::path::{Path, PathBuf};

use countersign_system_tests::demo::chaos::ChaosPlan;
use countersign_system_tests::demo::{Binaries, Demo, Reporter, error_lines};

/// `<target>`, from this test's own path `<target>/<profile>/deps/<test>`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors()
        .nth(3)
        .expect("tests run from <target>/<profile>/deps")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_kills_and_restarts_every_taskrun_is_attested_once_with_the_right_verdict() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|since| since.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("chaos: seed {seed}");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = countersign_test_support::repo_root();
    let target = target_dir();
    let binaries = tokio::task::spawn_blocking(move || {
        Binaries::build(&cargo, Path::new(&root), Some(&target))
    })
    .await
    .expect("the build task")
    .unwrap_or_else(|error| panic!("building the binaries: {}", error_lines(&error)));

    let (quiet, captured) = Reporter::capture();
    let (progress, progress_text) = Reporter::capture();
    let mut demo = match Demo::start(binaries, quiet).await {
        Ok(demo) => demo,
        Err(error) => panic!(
            "the system did not start: {}\n---- demo output ----\n{}",
            error_lines(&error),
            captured.text()
        ),
    };
    let outcome = demo.chaos(&ChaosPlan::short(seed), &progress).await;
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
    assert_eq!(report.taskruns, 60);
    assert!(
        !report.recoveries.is_empty(),
        "at least one fault was injected"
    );
}
