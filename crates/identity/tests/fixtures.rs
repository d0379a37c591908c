//! The vendored Tekton vectors (fixtures/tekton/spire/generated) as tests: the signed vector
//! verifies, every negative variant is rejected with its own reason code, and signing with the
//! fixture's TEST-ONLY key round-trips. (The released-Tekton TaskRun at TaskRun level is
//! `countersign-verdict`'s test, with the one TaskRun rule.)

mod common;

use common::*;
use countersign_identity::spiffe_id::SpiffeId;
use countersign_identity::svid::SigningSvid;
use countersign_identity::tekton::{
    Check, Freshness, Outcome, ReasonCode, ResultsPolicy, ResultsVerifier, TerminationMessage,
    canonical, sign_results,
};

/// The fixture SVID is valid 2026-01-01..2046-01-01, which predates its TaskRun (created
/// 2026-08-20T10:00:00Z): a real SPIRE SVID would be issued after the TaskRun. So the
/// fixture's own vectors are verified with the freshness check explicitly off, and
/// `fixture_svid_predates_its_taskrun` shows the check rejecting them.
fn fixture_policy() -> ResultsPolicy {
    ResultsPolicy::new(SpiffeId::new(TASKRUN_ID).unwrap(), Freshness::NotChecked)
}

#[test]
fn signed_results_vector_verifies_for_both_steps_with_matching_canonical_values() {
    let vector = fixture_json("signed-results.json");
    let bundles = fixture_bundles();
    let policy = fixture_policy();
    let verifier = ResultsVerifier::new(&bundles, &policy);
    let expected_canonical = vector["canonicalSignedValues"].as_object().unwrap();
    let finish_times = [
        ("step-clone", "2026-08-20T10:00:09Z", vec!["commit"]),
        (
            "step-build",
            "2026-08-20T10:01:13Z",
            vec!["commit", "IMAGE_DIGEST", "image", "tags"],
        ),
    ];
    for (step, finished, manifest) in finish_times {
        let raw = vector["steps"][step]["rawTerminationMessage"]
            .as_str()
            .unwrap();
        let message = TerminationMessage::parse(raw).unwrap();
        let verified = verifier
            .verify_step(&message.task_run_results(), time(finished))
            .unwrap();
        assert_eq!(verified.manifest(), manifest.as_slice(), "{step}");
        assert_eq!(verified.spiffe_id().to_string(), TASKRUN_ID);
        assert_eq!(verified.trust_domain().as_str(), "example.org");
        for (name, value) in verified.results() {
            assert_eq!(
                value.canonical,
                expected_canonical[name].as_str().unwrap(),
                "{step}/{name}"
            );
            assert_eq!(canonical(&value.raw), value.canonical);
        }
        let outcomes: Vec<Outcome> = verified.checks().iter().map(|c| c.outcome).collect();
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Outcome::Passed | Outcome::Skipped))
        );
        assert!(
            verified
                .checks()
                .iter()
                .any(|c| c.check == Check::IssuedAfterTaskrunCreated
                    && c.outcome == Outcome::Skipped)
        );
    }
}

#[test]
fn the_sorted_view_verifies_like_the_raw_message() {
    let vector = fixture_json("signed-results.json");
    let sorted = &vector["steps"]["step-build"]["parsedSortedWithoutInternal"];
    let message = TerminationMessage::parse(&sorted.to_string()).unwrap();
    let bundles = fixture_bundles();
    let policy = fixture_policy();
    let verified = ResultsVerifier::new(&bundles, &policy)
        .verify_step(&message.task_run_results(), time("2026-08-20T10:01:13Z"))
        .unwrap();
    assert_eq!(verified.results().len(), 4);
}

#[test]
fn every_negative_variant_is_rejected_with_its_own_reason_code() {
    let vector = fixture_json("signed-results-negative.json");
    let bundles = fixture_bundles();
    let policy = fixture_policy();
    let verifier = ResultsVerifier::new(&bundles, &policy);
    let expected = [
        (
            "value of IMAGE_DIGEST changed after signing",
            ReasonCode::SignatureInvalid,
        ),
        (
            "a manifest-listed result (tags) and its .sig removed",
            ReasonCode::ManifestIncomplete,
        ),
        ("RESULT_MANIFEST removed", ReasonCode::ManifestMissing),
        (
            "correctly signed, but by the SVID of a different TaskRun",
            ReasonCode::SpiffeIdMismatch,
        ),
        (
            "extra result not in manifest and without .sig",
            ReasonCode::UnsignedResult,
        ),
        (
            "self-signed cert with the right SPIFFE ID but not issued by the trust bundle",
            ReasonCode::ChainInvalid,
        ),
    ];
    let variants = vector["variants"].as_array().unwrap();
    assert_eq!(variants.len(), expected.len());
    let mut codes = std::collections::BTreeSet::new();
    for variant in variants {
        let description = variant["description"].as_str().unwrap();
        let (_, reason) = expected
            .iter()
            .find(|(known, _)| *known == description)
            .unwrap_or_else(|| panic!("unexpected variant {description}"));
        let message = TerminationMessage::parse(&variant["results"].to_string()).unwrap();
        let error = verifier
            .verify_step(&message.task_run_results(), time("2026-08-20T10:01:13Z"))
            .unwrap_err();
        assert_eq!(error.reason(), *reason, "{description}: {error}");
        codes.insert(error.reason_code());
    }
    assert_eq!(codes.len(), expected.len(), "each variant has its own code");
}

#[test]
fn signing_with_the_fixture_test_only_key_round_trips() {
    let svid = SigningSvid::from_pem(
        &fixture("taskrun-svid.pem"),
        &fixture("taskrun-svid.TEST-ONLY.key.pem"),
    )
    .unwrap();
    let results = fixture_results();
    let entries = sign_results(&results, &svid).unwrap();
    let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "SVID",
            "commit.sig",
            "IMAGE_DIGEST.sig",
            "image.sig",
            "tags.sig",
            "RESULT_MANIFEST",
            "RESULT_MANIFEST.sig"
        ]
    );
    // The SVID entry is byte-identical to what the entrypointer wrote.
    let vector = fixture_json("signed-results.json");
    let raw = vector["steps"]["step-build"]["rawTerminationMessage"]
        .as_str()
        .unwrap();
    let fixture_map = TerminationMessage::parse(raw).unwrap().task_run_results();
    assert_eq!(entries[0].value, fixture_map["SVID"]);
    assert_eq!(entries[5].value, fixture_map["RESULT_MANIFEST"]);

    let bundles = fixture_bundles();
    let policy = fixture_policy();
    let verified = ResultsVerifier::new(&bundles, &policy)
        .verify_step(&signed_map(&results, &svid), time("2026-08-20T10:01:13Z"))
        .unwrap();
    assert_eq!(verified.results().len(), 4);
    assert_eq!(verified.svid_fingerprint(), svid.leaf().fingerprint());

    // Written as a termination message (plain and tknz:), it parses back to the same set.
    let message = TerminationMessage::from_entries(
        countersign_identity::tekton::signed_step_entries(&results, &svid).unwrap(),
    );
    assert!(message.to_json().len() < 4096);
    for text in [message.to_json(), message.to_compressed()] {
        let parsed = TerminationMessage::parse(&text).unwrap();
        ResultsVerifier::new(&bundles, &policy)
            .verify_step(&parsed.task_run_results(), time("2026-08-20T10:01:13Z"))
            .unwrap();
    }
}
