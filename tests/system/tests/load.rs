//! The load run of `cargo xtask bench system`, short: the machinery, not the speed. Every
//! service runs as its own process from its real binary against the real peers, the registrar
//! and the attestor in two replicas each; TaskRuns with results signed by SVIDs of the real
//! SPIRE server are played for a few seconds, straight onto the bus and through the real
//! kube-apiserver. Every TaskRun must be attested exactly once (one message in the attestation
//! stream each, the replicas' latency histograms adding up to one observation each), each pod
//! registered, each attestation delivered by the relay, and both replicas must have taken part.
//! A backlog of old TaskRuns goes through the attestor's throttled backlog lane while live
//! TaskRuns are attested at once, and every TaskRun of both is attested exactly once.

use std::path::Path;
use std::time::Duration;

use countersign_system_tests::demo::configs::ServiceKind;
use countersign_system_tests::demo::{Binaries, error_lines};
use countersign_system_tests::load::{
    ApiDriver, BusDriver, Driver, LoadSystem, Mode, run_window, run_with_backlog, signed_names,
};
use countersign_test_support::wait;

async fn binaries() -> Binaries {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = countersign_test_support::repo_root();
    let target = countersign_test_support::workspace::target_dir();
    tokio::task::spawn_blocking(move || Binaries::build(&cargo, Path::new(&root), Some(&target)))
        .await
        .expect("the build task")
        .unwrap_or_else(|error| panic!("building the binaries: {}", error_lines(&error)))
}

/// The value of the sample `series` (a full series name, labels included) in each of `texts`.
fn metric_sum(texts: &[String], series: &str) -> Vec<f64> {
    texts
        .iter()
        .map(|text| countersign_test_support::metrics::value(text, series))
        .collect()
}

async fn check_exactly_once(system: &LoadSystem, expected: usize) {
    let tracker = system.tracker().clone();
    let now = std::time::Instant::now();
    let since = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
    wait::until_true(
        "the relay to deliver every attestation",
        Duration::from_secs(60),
        || {
            let tracker = tracker.clone();
            async move { tracker.tally(since).delivered >= expected }
        },
    )
    .await
    .expect("every attestation delivered");
    assert_eq!(
        system.attestations_in_stream().await.unwrap(),
        expected as u64,
        "one attestation message per TaskRun"
    );
    let attestors = system.metrics_of(ServiceKind::Attestor).await;
    assert_eq!(attestors.len(), 2);
    let per_replica = metric_sum(&attestors, "countersign_attestation_latency_seconds_count");
    assert_eq!(
        per_replica.iter().sum::<f64>(),
        expected as f64,
        "each TaskRun's attestation stored once: {per_replica:?}"
    );
    assert!(
        per_replica.iter().all(|count| *count > 0.0),
        "both attestor replicas took part: {per_replica:?}"
    );
    // A pod whose TaskRun finished before the registrar got to it is never registered (the
    // tombstone wins, as it should); every other pod's entry is created once.
    wait::until_true(
        "each registration observed by the registrars once",
        Duration::from_secs(60),
        || {
            let tracker = tracker.clone();
            async move {
                let registrars = system.metrics_of(ServiceKind::Registrar).await;
                let created: f64 = metric_sum(
                    &registrars,
                    "countersign_registration_latency_seconds_count",
                )
                .iter()
                .sum();
                let registered = tracker.tally(since).registration.count;
                created == registered as f64 && registered > 0 && registered <= expected
            }
        },
    )
    .await
    .expect("each pod's entry created once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_bus_every_taskrun_is_attested_exactly_once_by_two_replicas() {
    let binaries = binaries().await;
    let system = LoadSystem::start(&binaries, Mode::Bus, 2)
        .await
        .unwrap_or_else(|error| panic!("starting: {}", error_lines(&error)));
    let names = signed_names(&system, "load", 4).await.unwrap();
    let driver = Driver::Bus(
        BusDriver::new(&system, names, Duration::from_secs(1))
            .await
            .unwrap(),
    );
    let window = run_window(&system, &driver, "bus", 40.0, Duration::from_secs(4))
        .await
        .unwrap_or_else(|error| panic!("the run: {}", error_lines(&error)));
    println!("{}", window.describe());
    assert!(window.tally.finished >= 150, "{}", window.describe());
    assert_eq!(window.tally.attested, window.tally.finished);
    assert!(window.tally.registration.count > 0);
    assert_eq!(
        window
            .processes
            .iter()
            .filter(|p| p.name.starts_with("countersign-"))
            .count(),
        5
    );
    check_exactly_once(&system, window.tally.finished).await;
    system.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_api_server_every_taskrun_is_attested_exactly_once() {
    let binaries = binaries().await;
    let system = LoadSystem::start(&binaries, Mode::ApiServer, 2)
        .await
        .unwrap_or_else(|error| panic!("starting: {}", error_lines(&error)));
    // Each name is held until its TaskRun is attested and pruned (seconds on a loaded machine).
    let names = signed_names(&system, "load", 48).await.unwrap();
    let driver = Driver::Api(ApiDriver::new(&system, names, Duration::from_millis(200)).unwrap());
    let window = run_window(&system, &driver, "api", 8.0, Duration::from_secs(4))
        .await
        .unwrap_or_else(|error| panic!("the run: {}", error_lines(&error)));
    println!("{}", window.describe());
    assert!(window.tally.finished >= 20, "{}", window.describe());
    assert_eq!(window.not_started, 0);
    assert_eq!(window.tally.attested, window.tally.finished);
    assert!(window.tally.registration.count > 0);
    check_exactly_once(&system, window.tally.finished).await;
    system.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_taskruns_are_attested_ahead_of_a_backlog_and_the_backlog_drains() {
    let binaries = binaries().await;
    let system = LoadSystem::start(&binaries, Mode::Bus, 1)
        .await
        .unwrap_or_else(|error| panic!("starting: {}", error_lines(&error)));
    let names = signed_names(&system, "load", 4).await.unwrap();
    let driver = BusDriver::new(&system, names, Duration::from_millis(100))
        .await
        .unwrap();
    // 800 old TaskRuns at the attestor's throttle of 100/s take 8 s to drain; live ones keep
    // coming meanwhile and must not wait behind them.
    let report = run_with_backlog(
        &system,
        &driver,
        800,
        10.0,
        Duration::from_secs(4),
        Duration::from_secs(90),
    )
    .await
    .unwrap_or_else(|error| panic!("the run: {}", error_lines(&error)));
    println!("{}", report.live.describe());
    assert_eq!(report.backlog, 800);
    assert_eq!(
        report.backlog_attested, 800,
        "the backlog drains, nothing lost"
    );
    let live = &report.live.tally;
    assert!(live.finished >= 30);
    assert_eq!(live.attested, live.finished);
    assert!(
        live.attestation.max_ms * 2.0 < report.drained_in.as_secs_f64() * 1000.0,
        "a live TaskRun waited {} ms, the backlog drained in {:?}",
        live.attestation.max_ms,
        report.drained_in
    );
    assert_eq!(
        system.attestations_in_stream().await.unwrap(),
        (800 + live.finished) as u64,
        "every TaskRun of both lanes attested exactly once"
    );
    system.stop();
}
