//! The one TaskRun rule over the vendored released-Tekton TaskRun (v1.15, signed with the
//! fixture PKI), read from its JSON the way `countersign verify-results` reads it: it verifies
//! including its merged results, a changed merged result is a mismatch, and with the replay
//! check on, the fixture's SVID (issued before its TaskRun) is rejected.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use countersign_identity::spiffe_id::{TrustDomain, taskrun_spiffe_id};
use countersign_identity::svid::TrustBundleSet;
use countersign_identity::tekton::{Freshness, ReasonCode, ResultsPolicy, ResultsVerifier};
use countersign_verdict::snapshot::TaskRunSnapshot;
use countersign_verdict::steps::{StepInput, StepVerdict, verify_step};
use countersign_verdict::{Decision, Verdict, decide};

fn generated(name: &str) -> PathBuf {
    countersign_test_support::fixtures_dir()
        .join("tekton/spire/generated")
        .join(name)
}

fn released_taskrun() -> serde_json::Value {
    let text = std::fs::read_to_string(generated("taskrun-succeeded-spire-v1.15.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn example_org() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn fixture_bundles() -> TrustBundleSet {
    let mut bundles = TrustBundleSet::new();
    bundles
        .add_pem(
            example_org(),
            &std::fs::read_to_string(generated("trust-bundle.pem")).unwrap(),
        )
        .unwrap();
    bundles
}

/// The rule over a TaskRun JSON: every step checked, then the TaskRun decided.
fn decide_taskrun(
    taskrun: serde_json::Value,
    freshness: impl Fn(DateTime<Utc>) -> Freshness,
) -> Decision {
    let snapshot = TaskRunSnapshot::from_json(taskrun).unwrap();
    let bundles = fixture_bundles();
    let freshness = freshness(snapshot.created_at);
    let policy = ResultsPolicy::new(
        taskrun_spiffe_id(&example_org(), &snapshot.namespace, &snapshot.name).unwrap(),
        freshness,
    );
    let verifier = ResultsVerifier::new(&bundles, &policy);
    let steps: Vec<StepVerdict> = snapshot
        .steps
        .iter()
        .map(|step| {
            verify_step(
                &verifier,
                StepInput {
                    name: &step.step_name,
                    entries: &step.results,
                    finished_at: Some(step.finished_at),
                },
                Utc::now(),
            )
        })
        .collect();
    decide(&steps, &snapshot.results, &[], &freshness)
}

/// The fixture SVID is valid from 2026-01-01, before its TaskRun was created: its own vectors
/// verify with the replay check off.
fn not_checked(_: DateTime<Utc>) -> Freshness {
    Freshness::NotChecked
}

#[test]
fn the_released_tekton_taskrun_verifies_including_its_merged_results() {
    let decision = decide_taskrun(released_taskrun(), not_checked);
    assert_eq!(decision.verdict(), Verdict::Verified);
    let Decision::Verified(verified) = decision else {
        panic!("verified expected");
    };
    assert_eq!(
        verified.results.keys().collect::<Vec<_>>(),
        vec!["IMAGE_DIGEST", "commit", "image", "tags"]
    );
    assert_eq!(
        verified.results["image"].canonical,
        "digest,sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c,url,registry.example.com/team/app"
    );
}

#[test]
fn a_changed_merged_result_is_a_results_mismatch() {
    let mut taskrun = released_taskrun();
    let results = taskrun["status"]["results"].as_array_mut().unwrap();
    let tags = results
        .iter_mut()
        .find(|result| result["name"] == "tags")
        .unwrap();
    tags["value"] = serde_json::json!(["latest", "v6.6.6"]);
    assert_eq!(
        decide_taskrun(taskrun, not_checked).reason(),
        Some(ReasonCode::ResultsMismatch)
    );
}

#[test]
fn with_the_replay_check_the_fixture_svid_predates_its_taskrun() {
    assert_eq!(
        decide_taskrun(released_taskrun(), Freshness::IssuedAfterTaskRunCreated).reason(),
        Some(ReasonCode::SvidPredatesTaskrun)
    );
}
