//! `tekton`: what a Tekton user waits for on every TaskRun, measured on a real node with Tekton's
//! own controller and entrypointer (`countersign_system_tests::demo::tekton`).
//!
//! `taskruns` TaskRuns (default 50) of the two-step, four-result Task run one after the other.
//! For each:
//!
//! - pod scheduled (the watcher's `scheduled` event) → SPIRE entry created (the registrar's
//!   `registration.registered` event) → SVID served to the entrypointer (the agent's first
//!   `Fetched X.509 SVID` for the TaskRun's SPIFFE ID, from its log, in nanoseconds);
//! - TaskRun finished (the watcher's `finished` event) → attestation (the attestor's event).
//!
//! p50 and p99 of each are reported; the headline lines are `tekton: p99 scheduled->svid <ms>`
//! and `tekton: p99 finish->attestation <ms>`. The ratio is the entrypointer's budget (Tekton
//! fails a step that has no SVID 20 s after its command ended) over the p99 scheduled → SVID
//! (higher is better; target 4, a fifth of the budget).
//!
//! The node moves its thread into a network namespace of its own, so the case runs on a thread
//! with a current-thread runtime. Settings: `taskruns` (50).

use anyhow::Context as _;
use countersign_system_tests::demo::tekton::{TaskRunOutcome, TektonDemo, millis_between};
use countersign_system_tests::demo::{Binaries, Reporter};

use super::{Case, CaseFuture};
use crate::Options;
use crate::report::CaseReport;

/// The case.
pub(super) const CASE: Case = Case {
    name: "tekton",
    summary: "real Tekton on a real node: scheduled -> SPIRE entry -> SVID, finished -> attestation",
    run: run_boxed,
};

/// The entrypointer's budget for an SVID (Tekton's timeout), in ms.
const SVID_BUDGET_MS: f64 = 20_000.0;
/// The ratio the p99 should reach: a fifth of the budget.
const TARGET: f64 = 4.0;

fn run_boxed(options: Options) -> CaseFuture {
    Box::pin(run_case(options))
}

async fn run_case(options: Options) -> anyhow::Result<CaseReport> {
    let taskruns = match options.settings.get("taskruns") {
        Some(value) => value
            .parse::<usize>()
            .with_context(|| format!("setting taskruns={value:?} is not a number"))?,
        None => 50,
    };
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let outcome = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a current-thread runtime")
            .and_then(|runtime| runtime.block_on(run_on_node(taskruns)));
        let _ = sender.send(outcome);
    });
    let outcomes = receiver
        .await
        .context("the node's thread ended without an answer")??;

    let mut to_entry = Vec::new();
    let mut to_svid = Vec::new();
    let mut to_attestation = Vec::new();
    for outcome in &outcomes {
        to_entry.extend(millis_between(
            outcome.scheduled_at,
            outcome.entry_created_at,
        ));
        to_svid.extend(millis_between(outcome.scheduled_at, outcome.svid_served_at));
        to_attestation.extend(millis_between(outcome.finished_at, outcome.attested_at));
    }
    anyhow::ensure!(
        to_svid.len() == outcomes.len() && to_attestation.len() == outcomes.len(),
        "some TaskRuns lack a measurement: {} scheduled->svid and {} finish->attestation of {}",
        to_svid.len(),
        to_attestation.len(),
        outcomes.len()
    );
    let p99_svid = percentile(&mut to_svid, 0.99);
    let p99_attestation = percentile(&mut to_attestation, 0.99);
    println!("tekton: p99 scheduled->svid {p99_svid:.0}");
    println!("tekton: p99 finish->attestation {p99_attestation:.0}");
    let mut report = CaseReport {
        case: CASE.name.to_owned(),
        ratio: SVID_BUDGET_MS / p99_svid.max(1.0),
        target: TARGET,
        metrics: Vec::new(),
        notes: vec![
            format!(
                "{} TaskRuns of Tekton {}'s two-step, four-result Task on node worker-1, one after the other",
                outcomes.len(),
                countersign_test_support::peers().tekton_controller.version
            ),
            "ratio: the entrypointer's 20 s SVID budget over p99 scheduled -> SVID served"
                .to_owned(),
        ],
    };
    report.metric(
        "p50 scheduled -> entry created",
        percentile(&mut to_entry, 0.5),
        "ms",
    );
    report.metric(
        "p99 scheduled -> entry created",
        percentile(&mut to_entry, 0.99),
        "ms",
    );
    report.metric(
        "p50 scheduled -> SVID served",
        percentile(&mut to_svid, 0.5),
        "ms",
    );
    report.metric("p99 scheduled -> SVID served", p99_svid, "ms");
    report.metric(
        "p50 finished -> attestation",
        percentile(&mut to_attestation, 0.5),
        "ms",
    );
    report.metric("p99 finished -> attestation", p99_attestation, "ms");
    Ok(report)
}

/// Starts the system on a real node and runs `taskruns` TaskRuns (on the calling thread).
async fn run_on_node(taskruns: usize) -> anyhow::Result<Vec<TaskRunOutcome>> {
    let root = countersign_test_support::repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let binaries = tokio::task::spawn_blocking(move || Binaries::build(&cargo, &root, None))
        .await
        .context("the build task")?
        .context("building the services")?;
    let (reporter, captured) = Reporter::capture();
    println!(
        "tekton: starting the node (containerd, kubelet), Tekton's controller and the services ..."
    );
    let mut demo = match TektonDemo::start(binaries, reporter).await {
        Ok(demo) => demo,
        Err(error) => anyhow::bail!(
            "the system did not start: {}\n{}",
            countersign_test_support::error_lines(&error),
            captured.text()
        ),
    };
    // One line per TaskRun: a run takes several minutes.
    let outcomes = demo
        .run_many("bench", taskruns, |index, outcome| {
            let millis = |from, to| {
                millis_between(from, to).map_or_else(|| "?".to_owned(), |ms| format!("{ms:.0} ms"))
            };
            println!(
                "tekton: TaskRun {}/{taskruns}: scheduled->svid {}, finish->attestation {}",
                index + 1,
                millis(outcome.scheduled_at, outcome.svid_served_at),
                millis(outcome.finished_at, outcome.attested_at),
            );
        })
        .await;
    demo.shutdown().await;
    outcomes.map_err(|error| {
        anyhow::anyhow!(
            "{}\n{}",
            countersign_test_support::error_lines(&error),
            captured.text()
        )
    })
}

/// The `fraction` percentile (nearest rank) of `values`.
fn percentile(values: &mut [f64], fraction: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((fraction * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut values, 0.5), 50.0);
        assert_eq!(percentile(&mut values, 0.99), 99.0);
        assert_eq!(percentile(&mut [3.0], 0.99), 3.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }
}
