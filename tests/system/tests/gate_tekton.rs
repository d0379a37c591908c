//! The gate beside real Tekton on a real node (`countersign_system_tests::demo::tekton::gate`):
//! the node, Tekton's controller, the watcher, registrar, attestor and relay as in `tekton.rs`,
//! plus `countersign-gate` registered as a ValidatingWebhookConfiguration for TaskRun CREATE
//! (`caBundle` from a CA this test makes, `failurePolicy: Fail`) with the namespace labelled
//! `enforce`.
//!
//! - honest: task `publish` reads `$(tasks.build.results.digest)`; the gate admits the TaskRun
//!   Tekton creates for it (a `{p}.gate.allowed` event) and the PipelineRun succeeds;
//! - forged: `build`'s `digest` is changed in its TaskRun status after it finished (and was
//!   attested) and before Tekton creates `publish` (which also waits for a task the test
//!   releases only after the change). The gate denies `publish` naming the upstream TaskRun,
//!   the result and `value_differs` (or `upstream_rejected`); Tekton records that denial in a
//!   `TaskRunsCreationFailed` event; `{p}.gate.denied` is published; `publish` is never created.
//!
//! The progress output is captured and shown only when the test fails.

use std::path::Path;

use countersign_system_tests::demo::tekton::gate::{
    BUILT_DIGEST, GATED_FORGED, GatedOutcome, UPSTREAM_RESULT, UPSTREAM_TASK,
};
use countersign_system_tests::demo::tekton::{NAMESPACE, TektonDemo};
use countersign_system_tests::demo::{Binaries, Reporter, error_lines};

/// The codes a forged upstream value may be denied with: the value differs from the one the
/// upstream signed, or the upstream was (re-)attested as rejected.
const FORGED_CODES: [&str; 2] = ["value_differs", "upstream_rejected"];

// A current-thread runtime: the node moves this thread into its network namespace.
#[tokio::test]
async fn the_gate_admits_a_signed_result_and_stops_a_forged_one_before_tekton_creates_the_next_taskrun()
 {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = countersign_test_support::repo_root();
    let target = countersign_test_support::workspace::target_dir();
    let binaries = tokio::task::spawn_blocking(move || {
        Binaries::build(&cargo, Path::new(&root), Some(&target))
    })
    .await
    .expect("the build task")
    .unwrap_or_else(|error| panic!("building the binaries: {}", error_lines(&error)));
    // Built with the others, in one cargo invocation (one feature set, no second build).
    let gate_program = binaries.gate.clone();

    let (reporter, captured) = Reporter::capture();
    let demo = match TektonDemo::start(binaries, reporter).await {
        Ok(demo) => demo,
        Err(error) => panic!(
            "the system did not start: {}\n---- output ----\n{}",
            error_lines(&error),
            captured.text()
        ),
    };
    let mut gate = match demo.start_gate(&gate_program).await {
        Ok(gate) => gate,
        Err(error) => {
            let text = captured.text();
            demo.shutdown().await;
            panic!(
                "the gate did not start: {}\n---- output ----\n{text}",
                error_lines(&error)
            )
        }
    };
    let honest = demo.run_gated_honest().await;
    let forged = match &honest {
        Ok(_) => Some(demo.run_gated_forged().await),
        Err(_) => None,
    };
    let gate_log = gate.log_tail();
    gate.stop();
    demo.shutdown().await;
    let output = captured.text();
    let honest = honest
        .unwrap_or_else(|error| not_finished("the honest PipelineRun", &error, &output, &gate_log));
    let forged = forged
        .expect("played after the honest one")
        .unwrap_or_else(|error| not_finished("the forged PipelineRun", &error, &output, &gate_log));

    // Honest: admitted by the gate, run by Tekton with the signed value.
    assert_eq!(
        honest.pipeline_reason.as_deref(),
        Some("Succeeded"),
        "{honest:?}\n{output}"
    );
    assert!(honest.downstream_created, "{output}");
    assert_eq!(
        honest.published.as_deref(),
        Some(format!("published {BUILT_DIGEST}").as_str()),
        "{output}"
    );
    assert!(
        honest.decisions.iter().any(Option::is_none),
        "no gate.allowed for publish: {honest:?}\n{output}"
    );

    // Forged: denied, named, published on the bus, and never created.
    assert_forged_denied(&forged, &output);
}

fn not_finished(what: &str, error: &dyn std::error::Error, output: &str, gate_log: &str) -> ! {
    panic!(
        "{what} did not finish: {}\n---- output ----\n{output}\n---- countersign-gate log tail ----\n{gate_log}",
        error_lines(error)
    )
}

fn assert_forged_denied(forged: &GatedOutcome, output: &str) {
    let upstream = format!("{NAMESPACE}/{GATED_FORGED}-{UPSTREAM_TASK}");
    assert!(
        !forged.downstream_created,
        "publish was created: {forged:?}\n{output}"
    );
    assert_eq!(forged.pipeline_reason, None, "{forged:?}\n{output}");
    assert!(
        forged.decisions.iter().all(Option::is_some),
        "the gate admitted publish: {forged:?}\n{output}"
    );
    let denials: Vec<_> = forged.decisions.iter().flatten().flatten().collect();
    assert!(!denials.is_empty(), "{forged:?}\n{output}");
    for denial in &denials {
        assert!(
            FORGED_CODES.contains(&denial.code.as_str()),
            "{denial:?}\n{output}"
        );
        assert_eq!(
            denial.upstream_taskrun.as_deref(),
            Some(upstream.as_str()),
            "{denial:?}"
        );
        assert_eq!(
            denial.result.as_deref(),
            Some(UPSTREAM_RESULT),
            "{denial:?}"
        );
    }
    // Tekton's own record of the denial names the upstream TaskRun, the result and the reason.
    let message = forged
        .creation_failed
        .as_deref()
        .expect("Tekton's TaskRunsCreationFailed event");
    assert!(message.contains(&upstream), "{message}");
    assert!(
        message.contains(&format!("result {UPSTREAM_RESULT} ")),
        "{message}"
    );
    assert!(
        FORGED_CODES.iter().any(|code| message.contains(code)),
        "{message}"
    );
}
