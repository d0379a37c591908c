//! Our VSAs verified by the real `slsa-verifier verify-vsa` (given the attestor's public key):
//! a PASSED VSA for an artifact digest is accepted, a FAILED one (a rejected TaskRun) is refused,
//! and so are a tampered VSA and a VSA for another digest.

mod interop;

use std::collections::BTreeMap;

use chrono::Utc;
use countersign_identity::dsse::Envelope;
use countersign_identity::intoto::Verdict as TaskRunVerdict;
use countersign_identity::svid::SigningSvid;
use countersign_identity::vsa::{
    ResourceRef, VsaFacts, VsaVerifier, artifact_vsa, find_artifacts, sign_vsa,
};
use countersign_peers::Peer;
use interop::*;

const DIGEST: &str = "586789aa031fafc7d78a5393cdc772e0b55107ea54bb8bcf3f2cdac6c6da51ee";
const IMAGE: &str = "registry.example.org/team/app";
const LEVEL: &str = "COUNTERSIGN_RESULTS_VERIFIED";

fn envelope(svid: &SigningSvid, verdict: TaskRunVerdict) -> Envelope {
    let digest = format!("sha256:{DIGEST}");
    let scan = find_artifacts([("IMAGE_URL", IMAGE), ("IMAGE_DIGEST", digest.as_str())]);
    let facts = VsaFacts {
        verifier: VsaVerifier {
            id: ATTESTOR_ID.into(),
            version: BTreeMap::new(),
        },
        time_verified: Utc::now(),
        policy: ResourceRef {
            uri: "https://countersign.dev/policy/taskrun-results/v1".into(),
            digest: BTreeMap::new(),
        },
        input_attestations: Vec::new(),
        verdict,
        verified_levels: vec![LEVEL.into()],
    };
    let statement = artifact_vsa(&scan.artifacts[0], &facts).unwrap();
    sign_vsa(&statement, svid).unwrap().envelope
}

fn verify_vsa(svid: &SigningSvid, envelope: &Envelope, subject_digest: &str) -> Verdict {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("attestor.pub.pem");
    let attestation = dir.path().join("vsa.intoto.json");
    std::fs::write(&key, public_key_pem(svid.leaf().der())).unwrap();
    std::fs::write(&attestation, serde_json::to_vec(envelope).unwrap()).unwrap();
    let subject = format!("sha256:{subject_digest}");
    run(
        Peer::SlsaVerifier,
        &[
            "verify-vsa",
            "--subject-digest",
            &subject,
            "--attestation-path",
            &attestation.display().to_string(),
            "--verifier-id",
            ATTESTOR_ID,
            "--resource-uri",
            IMAGE,
            "--verified-level",
            LEVEL,
            "--public-key-path",
            &key.display().to_string(),
        ],
    )
}

fn attestor() -> SigningSvid {
    NowCa::new().issue(ATTESTOR_ID, &SPIRE_EXTENDED_KEY_USAGES)
}

fn assert_refused(verdict: &Verdict, line: &str) {
    assert_eq!(verdict.code, Some(1), "{verdict:?}");
    assert_eq!(
        verdict.stderr_line("Verifying VSA:"),
        Some(line),
        "{verdict:?}"
    );
}

#[test]
fn slsa_verifier_accepts_a_passed_vsa() {
    let svid = attestor();
    let verdict = verify_vsa(&svid, &envelope(&svid, TaskRunVerdict::Verified), DIGEST);
    assert!(verdict.success, "{verdict:?}");
    assert_eq!(
        verdict.stderr_line("Verifying VSA:"),
        Some("Verifying VSA: PASSED")
    );
}

#[test]
fn slsa_verifier_refuses_the_vsa_of_a_rejected_taskrun() {
    let svid = attestor();
    let verdict = verify_vsa(&svid, &envelope(&svid, TaskRunVerdict::Rejected), DIGEST);
    assert_refused(
        &verdict,
        "Verifying VSA: FAILED: verificationResult is not PASSED: verification result is not Passed: FAILED",
    );
}

#[test]
fn slsa_verifier_refuses_a_tampered_vsa() {
    let svid = attestor();
    let signed = envelope(&svid, TaskRunVerdict::Rejected);
    let payload = String::from_utf8(signed.unverified_payload().to_vec())
        .unwrap()
        .replace("FAILED", "PASSED");
    let tampered = Envelope::from_parts(
        signed.payload_type(),
        payload.into_bytes(),
        signed.signatures().to_vec(),
    );
    let verdict = verify_vsa(&svid, &tampered, DIGEST);
    assert_eq!(verdict.code, Some(1), "{verdict:?}");
    assert!(
        verdict
            .stderr_line("Verifying VSA: FAILED:")
            .is_some_and(|line| line.contains("accepted signatures do not match threshold")),
        "{verdict:?}"
    );
}

#[test]
fn slsa_verifier_refuses_a_vsa_for_another_digest() {
    let svid = attestor();
    let other = "05f95b26ed10668b7183c1e2da98610e91372fa9f510046d4ce5812addad86b5";
    let verdict = verify_vsa(&svid, &envelope(&svid, TaskRunVerdict::Verified), other);
    assert_eq!(verdict.code, Some(1), "{verdict:?}");
    assert!(
        verdict
            .stderr_line("Verifying VSA: FAILED:")
            .is_some_and(|line| line.contains("expected digest not found")),
        "{verdict:?}"
    );
}
