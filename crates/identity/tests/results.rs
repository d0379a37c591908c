//! Result verification against SVIDs generated at test time: every check rejects with its own
//! reason code, and the good paths (ECDSA, RSA, federation) verify.

mod common;

use std::collections::BTreeMap;

use common::*;
use countersign_identity::spiffe_id::SpiffeId;
use countersign_identity::svid::SigningSvid;
use countersign_identity::tekton::{
    Freshness, ReasonCode, ResultsPolicy, ResultsVerifier, signed_step_entries,
};
use rcgen::KeyUsagePurpose;

fn policy() -> ResultsPolicy {
    ResultsPolicy::new(
        SpiffeId::new(TASKRUN_ID).unwrap(),
        Freshness::IssuedAfterTaskRunCreated(taskrun_created()),
    )
}

fn results() -> Vec<(String, String)> {
    fixture_results()
}

/// Verifies `map` with the example.org CA's bundle and returns the reason, or `None` if it
/// verified.
fn reason(ca: &TestCa, map: &BTreeMap<String, String>) -> Option<ReasonCode> {
    let bundles = ca.bundles();
    let policy = policy();
    ResultsVerifier::new(&bundles, &policy)
        .verify_step(map, signing_time())
        .err()
        .map(|error| error.reason())
}

fn good_svid(ca: &TestCa) -> SigningSvid {
    ca.issue(&SvidSpec::workload(TASKRUN_ID))
}

#[test]
fn a_well_formed_set_verifies() {
    let ca = TestCa::new("example.org");
    let map = signed_map(&results(), &good_svid(&ca));
    assert_eq!(reason(&ca, &map), None);
    // A set signed by hand (independently of the crate's signer) verifies too.
    let (certificate, key) = ca.issue_raw(&SvidSpec::workload(TASKRUN_ID));
    assert_eq!(
        reason(&ca, &hand_signed_map(&results(), &certificate, &key)),
        None
    );
}

#[test]
fn rsa_signed_results_verify() {
    let ca = TestCa::new("example.org");
    let mut spec = SvidSpec::workload(TASKRUN_ID);
    spec.rsa_key_pem = Some(
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/rsa-2048.TEST-ONLY.key.pem"
        ))
        .unwrap(),
    );
    let svid = ca.issue(&spec);
    assert_eq!(
        svid.key().algorithm(),
        countersign_identity::crypto::PublicKeyAlgorithm::RsaPkcs1Sha256
    );
    let map = signed_map(&results(), &svid);
    assert_eq!(reason(&ca, &map), None);
    // And tampering is still caught with RSA.
    let mut tampered = map.clone();
    tampered.insert("commit".into(), "0000".into());
    assert_eq!(reason(&ca, &tampered), Some(ReasonCode::SignatureInvalid));
}

#[test]
fn expired_svid_is_not_valid_at_signing() {
    let ca = TestCa::new("example.org");
    let mut spec = SvidSpec::workload(TASKRUN_ID);
    spec.not_before = (2026, 8, 20);
    spec.not_after = (2026, 8, 21); // midnight, before the 10:00 signing time
    let svid = ca.issue(&spec);
    let bundles = ca.bundles();
    let policy = ResultsPolicy::new(
        SpiffeId::new(TASKRUN_ID).unwrap(),
        Freshness::IssuedAfterTaskRunCreated(time("2026-08-19T23:59:59Z")),
    );
    let error = ResultsVerifier::new(&bundles, &policy)
        .verify_step(&signed_map(&results(), &svid), signing_time())
        .unwrap_err();
    assert_eq!(error.reason(), ReasonCode::SvidNotValidAtSigning);
}

#[test]
fn svid_from_another_ca_does_not_chain() {
    let ca = TestCa::new("example.org");
    let rogue = TestCa::new("example.org");
    let map = signed_map(&results(), &good_svid(&rogue));
    assert_eq!(reason(&ca, &map), Some(ReasonCode::ChainInvalid));
}

#[test]
fn svid_of_another_trust_domain_is_rejected() {
    // The ID names other.org: it is not the TaskRun's ID.
    let ca = TestCa::new("example.org");
    let other = TestCa::new("other.org");
    let other_id = "spiffe://other.org/ns/default/taskrun/build-push-run-x7k2p";
    let map = signed_map(&results(), &other.issue(&SvidSpec::workload(other_id)));
    assert_eq!(reason(&ca, &map), Some(ReasonCode::SpiffeIdMismatch));

    // Expecting other.org's ID but holding no bundle for it: trust domain unknown.
    let bundles = ca.bundles();
    let policy = ResultsPolicy::new(
        SpiffeId::new(other_id).unwrap(),
        Freshness::IssuedAfterTaskRunCreated(taskrun_created()),
    );
    let error = ResultsVerifier::new(&bundles, &policy)
        .verify_step(&map, signing_time())
        .unwrap_err();
    assert_eq!(error.reason_code(), "trust_domain_unknown");
}

#[test]
fn federated_trust_domains_each_chain_to_their_own_bundle() {
    let example = TestCa::new("example.org");
    let other = TestCa::new("other.org");
    let mut bundles = example.bundles();
    other.add_to(&mut bundles);
    let other_id = "spiffe://other.org/ns/default/taskrun/build-push-run-x7k2p";
    let policy = ResultsPolicy::new(
        SpiffeId::new(other_id).unwrap(),
        Freshness::IssuedAfterTaskRunCreated(taskrun_created()),
    );
    let verifier = ResultsVerifier::new(&bundles, &policy);
    // other.org's CA issued other.org's ID: verifies.
    let map = signed_map(&results(), &other.issue(&SvidSpec::workload(other_id)));
    assert!(verifier.verify_step(&map, signing_time()).is_ok());
    // example.org's CA issuing an other.org ID is not trusted for other.org.
    let map = signed_map(&results(), &example.issue(&SvidSpec::workload(other_id)));
    assert_eq!(
        verifier
            .verify_step(&map, signing_time())
            .unwrap_err()
            .reason(),
        ReasonCode::ChainInvalid
    );
}

#[test]
fn svid_issued_before_the_taskrun_was_created_is_a_replay() {
    let ca = TestCa::new("example.org");
    let map = signed_map(&results(), &good_svid(&ca)); // notBefore 2026-08-21T00:00:00Z
    let bundles = ca.bundles();
    let verify = |created: &str| {
        let policy = ResultsPolicy::new(
            SpiffeId::new(TASKRUN_ID).unwrap(),
            Freshness::IssuedAfterTaskRunCreated(time(created)),
        );
        ResultsVerifier::new(&bundles, &policy)
            .verify_step(&map, signing_time())
            .err()
            .map(|error| error.reason())
    };
    // Within backdate (10 s) + default skew (5 s): accepted.
    assert_eq!(verify("2026-08-21T00:00:15Z"), None);
    // Later than that: the SVID belonged to an earlier TaskRun of the same name.
    assert_eq!(
        verify("2026-08-21T00:00:16Z"),
        Some(ReasonCode::SvidPredatesTaskrun)
    );
    assert_eq!(
        verify("2026-08-21T09:00:00Z"),
        Some(ReasonCode::SvidPredatesTaskrun)
    );
}

#[test]
fn two_uri_sans_are_an_invalid_spiffe_id() {
    let ca = TestCa::new("example.org");
    let mut spec = SvidSpec::workload(TASKRUN_ID);
    spec.uris
        .push("spiffe://example.org/ns/default/taskrun/other".into());
    let (certificate, key) = ca.issue_raw(&spec);
    let map = hand_signed_map(&results(), &certificate, &key);
    assert_eq!(reason(&ca, &map), Some(ReasonCode::SpiffeIdInvalid));
    // No URI SAN, or a non-SPIFFE URI, is the same failure.
    for uris in [vec![], vec!["https://example.org/x".to_owned()]] {
        let mut spec = SvidSpec::workload(TASKRUN_ID);
        spec.uris = uris;
        let (certificate, key) = ca.issue_raw(&spec);
        let map = hand_signed_map(&results(), &certificate, &key);
        assert_eq!(reason(&ca, &map), Some(ReasonCode::SpiffeIdInvalid));
    }
}

#[test]
fn a_ca_leaf_is_an_invalid_svid() {
    let ca = TestCa::new("example.org");
    let mut spec = SvidSpec::workload(TASKRUN_ID);
    spec.is_ca = true;
    let map = signed_map(&results(), &ca.issue(&spec));
    assert_eq!(reason(&ca, &map), Some(ReasonCode::SvidInvalid));
}

#[test]
fn wrong_key_usage_is_an_invalid_svid() {
    let ca = TestCa::new("example.org");
    for usages in [
        vec![KeyUsagePurpose::KeyEncipherment],
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ],
        vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign],
        vec![],
    ] {
        let mut spec = SvidSpec::workload(TASKRUN_ID);
        spec.key_usages = usages.clone();
        let map = signed_map(&results(), &ca.issue(&spec));
        assert_eq!(
            reason(&ca, &map),
            Some(ReasonCode::SvidInvalid),
            "{usages:?}"
        );
    }
}

#[test]
fn tampering_and_structural_changes_each_have_their_reason() {
    let ca = TestCa::new("example.org");
    let svid = good_svid(&ca);
    let good = signed_map(&results(), &svid);
    let variant = |change: &dyn Fn(&mut BTreeMap<String, String>)| {
        let mut map = good.clone();
        change(&mut map);
        reason(&ca, &map)
    };
    assert_eq!(
        variant(&|m| {
            m.insert("commit".into(), "tampered".into());
        }),
        Some(ReasonCode::SignatureInvalid)
    );
    let other_signature = good["tags.sig"].clone();
    assert_eq!(
        variant(&|m| {
            m.insert("commit.sig".into(), other_signature.clone());
        }),
        Some(ReasonCode::SignatureInvalid)
    );
    assert_eq!(
        variant(&|m| {
            m.insert("commit.sig".into(), "not base64!".into());
        }),
        Some(ReasonCode::SignatureInvalid)
    );
    assert_eq!(
        variant(&|m| {
            m.insert("RESULT_MANIFEST".into(), "commit,IMAGE_DIGEST".into());
        }),
        // The shortened manifest no longer matches its signature... but first, tags is
        // outside it.
        Some(ReasonCode::UnsignedResult)
    );
    assert_eq!(
        variant(&|m| {
            m.remove("RESULT_MANIFEST");
        }),
        Some(ReasonCode::ManifestMissing)
    );
    assert_eq!(
        variant(&|m| {
            m.remove("RESULT_MANIFEST.sig");
        }),
        Some(ReasonCode::SignatureMissing)
    );
    assert_eq!(
        variant(&|m| {
            m.remove("tags");
            m.remove("tags.sig");
        }),
        Some(ReasonCode::ManifestIncomplete)
    );
    assert_eq!(
        variant(&|m| {
            m.insert("extra".into(), "x".into());
        }),
        Some(ReasonCode::UnsignedResult)
    );
    assert_eq!(
        variant(&|m| {
            m.remove("image.sig");
        }),
        Some(ReasonCode::SignatureMissing)
    );
    assert_eq!(
        variant(&|m| {
            m.remove("SVID");
        }),
        Some(ReasonCode::SvidMissing)
    );
    assert_eq!(
        variant(&|m| {
            m.insert(
                "SVID".into(),
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            );
        }),
        Some(ReasonCode::SvidInvalid)
    );
    assert_eq!(
        variant(&|m| {
            m.retain(|key, _| !countersign_identity::tekton::is_signing_key(key));
        }),
        Some(ReasonCode::UnsignedResults)
    );
}

#[test]
fn a_manifest_that_was_re_signed_by_nobody_is_invalid() {
    // Dropping `tags` from the manifest AND from the set leaves a manifest whose signature no
    // longer matches.
    let ca = TestCa::new("example.org");
    let mut map = signed_map(&results(), &good_svid(&ca));
    map.insert("RESULT_MANIFEST".into(), "commit,IMAGE_DIGEST,image".into());
    map.remove("tags");
    map.remove("tags.sig");
    assert_eq!(reason(&ca, &map), Some(ReasonCode::SignatureInvalid));
}

#[test]
fn another_taskruns_svid_is_a_mismatch() {
    let ca = TestCa::new("example.org");
    let svid = ca.issue(&SvidSpec::workload(
        "spiffe://example.org/ns/default/taskrun/some-other-taskrun",
    ));
    assert_eq!(
        reason(&ca, &signed_map(&results(), &svid)),
        Some(ReasonCode::SpiffeIdMismatch)
    );
}

#[test]
fn an_empty_manifest_with_no_results_verifies_with_no_results() {
    let ca = TestCa::new("example.org");
    let map = signed_map(&[], &good_svid(&ca));
    assert_eq!(map["RESULT_MANIFEST"], "");
    let bundles = ca.bundles();
    let policy = policy();
    let verified = ResultsVerifier::new(&bundles, &policy)
        .verify_step(&map, signing_time())
        .unwrap();
    assert!(verified.results().is_empty());
}

#[test]
fn signing_refuses_reserved_and_duplicate_names() {
    let ca = TestCa::new("example.org");
    let svid = good_svid(&ca);
    for bad in [
        vec![("SVID".to_owned(), "x".to_owned())],
        vec![("a.sig".to_owned(), "x".to_owned())],
        vec![
            ("a".to_owned(), "1".to_owned()),
            ("a".to_owned(), "2".to_owned()),
        ],
        vec![("a,b".to_owned(), "1".to_owned())],
    ] {
        assert!(signed_step_entries(&bad, &svid).is_err(), "{bad:?}");
    }
}

#[test]
fn every_reason_code_string_is_distinct_and_snake_case() {
    let codes: std::collections::BTreeSet<&str> =
        ReasonCode::ALL.iter().map(|code| code.as_str()).collect();
    assert_eq!(codes.len(), ReasonCode::ALL.len());
    for code in ReasonCode::ALL {
        assert_eq!(
            serde_json::to_value(code).unwrap(),
            serde_json::Value::String(code.as_str().to_owned())
        );
    }
}
