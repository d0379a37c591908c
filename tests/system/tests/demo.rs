//! The demo's scenario (what `cargo xtask demo` shows), as a system test: the real peers, every
//! service as its own process from its real binary and config file, two TaskRuns played through
//! the real API server with their results signed by the real signer as workloads of the real
//! agent. The honest TaskRun must be verified, the one whose result was changed after signing
//! rejected with `signature_invalid`, and `countersign verify` must accept the first attestation;
//! on the way, each pod's SPIRE entry must be registered and released, the relay must deliver
//! each attestation and the attestor must annotate each TaskRun (the scenario fails otherwise).
//!
//! The progress output is captured and shown only when the test fails.

use std::path::Path;

use countersign_events::data::ReasonCode;
use countersign_system_tests::demo::{Attested, Binaries, Demo, Reporter, error_lines};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_honest_taskrun_is_verified_and_the_tampered_one_rejected_with_signature_invalid() {
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
    let demo = match Demo::start(binaries, reporter).await {
        Ok(demo) => demo,
        Err(error) => panic!(
            "the system did not start: {}\n---- demo output ----\n{}",
            error_lines(&error),
            captured.text()
        ),
    };
    let played = demo.play().await;
    demo.shutdown().await;
    let report = played.unwrap_or_else(|error| {
        panic!(
            "the scenario did not finish: {}\n---- demo output ----\n{}",
            error_lines(&error),
            captured.text()
        )
    });

    let output = captured.text();
    assert!(
        report.unexpected().is_empty(),
        "{:?}\n---- demo output ----\n{output}",
        report.unexpected()
    );
    match &report.honest.attested {
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
                Some("spiffe://example.org/ns/default/taskrun/build-push-run-x7k2p")
            );
        }
        other => panic!("the honest TaskRun: {other:?}\n{output}"),
    }
    match &report.tampered.attested {
        Attested::Rejected { reason, step, .. } => {
            assert_eq!(*reason, ReasonCode::SignatureInvalid, "{output}");
            assert_eq!(step.as_deref(), Some("build"), "{output}");
        }
        other => panic!("the tampered TaskRun: {other:?}\n{output}"),
    }
    assert_eq!(report.verify.exit_code, Some(0), "{output}");
    assert!(
        report
            .verify
            .stdout
            .contains("signed by spiffe://example.org/countersign/attestor"),
        "{}",
        report.verify.stdout
    );
    // Each pod had its own entry, with the registrar's id prefix, released since.
    assert!(report.honest.workload_entry.starts_with("countersign.pod."));
    assert!(
        report
            .tampered
            .workload_entry
            .starts_with("countersign.pod.")
    );
    assert_ne!(report.honest.workload_entry, report.tampered.workload_entry);
    // Everything that was shown as it happened is in the output.
    for expected in [
        "taskrun.scheduled",
        "registration.registered",
        "taskrun.step-completed",
        "attestation.verified",
        "attestation.rejected",
        "registration.released",
        "the relay delivered",
        "TAMPERING after signing",
    ] {
        assert!(output.contains(expected), "no {expected:?} in\n{output}");
    }
    assert!(!output.contains("DEAD LETTER"), "{output}");
}
