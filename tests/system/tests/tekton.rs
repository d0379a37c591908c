//! Countersign beside real Tekton on a real node (`countersign_system_tests::demo::tekton`, what
//! `cargo xtask demo` runs): Tekton's controller creates the pods, the kubelet runs them through
//! containerd and runc, Tekton's entrypointer gets its SVID from the SPIRE agent (reached through
//! the SPIFFE CSI driver, attested by the agent's `k8s` attestor against the kubelet) under the
//! entry our registrar created, and signs the results; the watcher (watch and Tekton's
//! CloudEvents), registrar, attestor and relay do the rest.
//!
//! A TaskRun with two steps and four results (string, array, object) and the two TaskRuns of a
//! PipelineRun passing a result downstream are verified; a TaskRun whose result a client allowed
//! only `taskruns/status` changed after it finished is rejected with `results_mismatch`.
//!
//! The progress output is captured and shown only when the test fails.

use std::path::Path;

use countersign_events::data::ReasonCode;
use countersign_system_tests::demo::tekton::{HONEST, TAMPERED, TektonDemo};
use countersign_system_tests::demo::{Attested, Binaries, Reporter, error_lines};

// A current-thread runtime: the node moves this thread into its network namespace.
#[tokio::test]
async fn tektons_own_runs_are_verified_and_a_result_changed_after_the_run_is_rejected() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = countersign_test_support::repo_root();
    let target = countersign_test_support::workspace::target_dir();
    let binaries = tokio::task::spawn_blocking(move || {
        Binaries::build(&cargo, Path::new(&root), Some(&target))
    })
    .await
    .expect("the build task")
    .unwrap_or_else(|error| panic!("building the binaries: {}", error_lines(&error)));

    let (reporter, captured) = Reporter::capture();
    let mut demo = match TektonDemo::start(binaries, reporter).await {
        Ok(demo) => demo,
        Err(error) => panic!(
            "the system did not start: {}\n---- output ----\n{}",
            error_lines(&error),
            captured.text()
        ),
    };
    let played = demo.play().await;
    demo.shutdown().await;
    let report = played.unwrap_or_else(|error| {
        panic!(
            "the scenario did not finish: {}\n---- output ----\n{}",
            error_lines(&error),
            captured.text()
        )
    });
    let output = captured.text();
    assert!(
        report.unexpected().is_empty(),
        "{:?}\n---- output ----\n{output}",
        report.unexpected()
    );

    // The honest TaskRun: Tekton succeeded it, and its four declared results are what the
    // entrypointer signed, under the TaskRun's SPIFFE ID.
    assert_eq!(report.taskrun.name, HONEST);
    assert_eq!(report.taskrun.tekton_reason, "Succeeded");
    match &report.taskrun.attested {
        Attested::Verified { results, signed_by } => {
            let mut names = results.clone();
            names.sort();
            assert_eq!(
                names,
                ["IMAGE_DIGEST", "commit", "image", "tags"],
                "{output}"
            );
            assert_eq!(
                signed_by.as_deref(),
                Some("spiffe://example.org/ns/demo/taskrun/build-push")
            );
        }
        other => panic!("the honest TaskRun: {other:?}\n{output}"),
    }
    // The registrar's entry came after the pod was scheduled and before its SVID was served.
    let taskrun = &report.taskrun;
    let (scheduled, entry, served) = (
        taskrun.scheduled_at.expect("a scheduled event"),
        taskrun.entry_created_at.expect("an entry registered"),
        taskrun
            .svid_served_at
            .expect("the agent served the TaskRun's SVID"),
    );
    assert!(scheduled <= entry && entry <= served, "{output}");

    // Both TaskRuns of the PipelineRun are verified (rows of `unexpected`), the second having
    // taken the first's result.
    assert_eq!(report.pipeline.len(), 2, "{output}");
    assert!(
        output.contains("result published = published sha256:beef"),
        "{output}"
    );

    // The result changed after the run: rejected because the merged results differ from what
    // the step signed.
    assert_eq!(report.tampered.name, TAMPERED);
    assert_eq!(report.tampered.tekton_reason, "Succeeded");
    match &report.tampered.attested {
        Attested::Rejected { reason, .. } => {
            assert_eq!(*reason, ReasonCode::ResultsMismatch, "{output}")
        }
        other => panic!("the tampered TaskRun: {other:?}\n{output}"),
    }
}
