//! DSSE-signed in-toto attestations: sign/verify round trip, and each way of forging one is
//! rejected with its own error.

mod common;

use common::*;
use countersign_identity::attestation::{
    AttestationTime, AttestationVerifier, AttestationVerifyError, SignedAttestation, SignerPolicy,
};
use countersign_identity::dsse::{DsseVerifyError, Envelope, IN_TOTO_PAYLOAD_TYPE};
use countersign_identity::intoto::{
    PredicateTimes, Statement, Subject, TASKRUN_RESULTS_PREDICATE_TYPE, TaskRunRef,
    TaskRunResultsPredicate, Verdict, taskrun_statement,
};
use countersign_identity::spiffe_id::SpiffeId;
use countersign_identity::svid::SigningSvid;
use countersign_identity::tekton::{Freshness, ResultsPolicy, ResultsVerifier};

const ATTESTOR_ID: &str = "spiffe://example.org/countersign/attestor";

struct Setup {
    ca: TestCa,
    attestor: SigningSvid,
    statement: Statement<TaskRunResultsPredicate>,
}

fn setup() -> Setup {
    let ca = TestCa::new("example.org");
    let taskrun_svid = ca.issue(&SvidSpec::workload(TASKRUN_ID));
    let bundles = ca.bundles();
    let policy = ResultsPolicy::new(
        SpiffeId::new(TASKRUN_ID).unwrap(),
        Freshness::IssuedAfterTaskRunCreated(taskrun_created()),
    );
    let verified = ResultsVerifier::new(&bundles, &policy)
        .verify_step(
            &signed_map(&fixture_results(), &taskrun_svid),
            signing_time(),
        )
        .unwrap();
    let predicate = TaskRunResultsPredicate {
        taskrun: TaskRunRef {
            namespace: "default".into(),
            name: "build-push-run-x7k2p".into(),
            uid: "6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14".into(),
        },
        cluster: "test".into(),
        spiffe_id: Some(verified.spiffe_id().to_string()),
        svid_fingerprint: Some(verified.svid_fingerprint().to_hex()),
        trust_bundle_digest: bundles.digest().to_hex(),
        verdict: Verdict::Verified,
        reason_code: None,
        checks: verified.checks().to_vec(),
        times: PredicateTimes {
            created: taskrun_created(),
            finished: Some(signing_time()),
            verified: time("2026-08-21T10:00:01Z"),
        },
        signing: None,
    };
    let statement = taskrun_statement(predicate, verified.results());
    let attestor = ca.issue(&SvidSpec::workload(ATTESTOR_ID));
    Setup {
        ca,
        attestor,
        statement,
    }
}

fn verify(
    setup: &Setup,
    attestation: &SignedAttestation,
) -> Result<countersign_identity::attestation::VerifiedAttestation, AttestationVerifyError> {
    let bundles = setup.ca.bundles();
    let signers = SignerPolicy::exact(SpiffeId::new(ATTESTOR_ID).unwrap());
    AttestationVerifier::new(&bundles, &signers).verify(
        attestation,
        AttestationTime::At(time("2026-08-21T11:00:00Z")),
    )
}

#[test]
fn round_trip_through_json() {
    let setup = setup();
    let attestation = SignedAttestation::sign(&setup.statement, &setup.attestor).unwrap();
    let json = serde_json::to_string(&attestation).unwrap();
    let back: SignedAttestation = serde_json::from_str(&json).unwrap();
    let verified = verify(&setup, &back).unwrap();
    assert_eq!(verified.signer().to_string(), ATTESTOR_ID);
    assert_eq!(verified.statement(), &setup.statement);
    assert_eq!(verified.payload_digest(), attestation.payload_digest());
    // Four results, four subjects, each the SHA-256 of its canonical value.
    let names: Vec<&str> = verified
        .statement()
        .subjects()
        .iter()
        .map(|subject| subject.name.as_str())
        .collect();
    assert_eq!(names, vec!["IMAGE_DIGEST", "commit", "image", "tags"]);
    assert_eq!(
        verified.statement().subjects()[3].digest["sha256"],
        countersign_identity::crypto::Sha256Digest::of(b"latest,v1.4.2").to_hex()
    );
}

#[test]
fn claimed_time_lets_an_expired_attestor_svid_verify_later() {
    let setup = setup();
    let attestation = SignedAttestation::sign(&setup.statement, &setup.attestor).unwrap();
    let bundles = setup.ca.bundles();
    let signers = SignerPolicy::exact(SpiffeId::new(ATTESTOR_ID).unwrap());
    let verifier = AttestationVerifier::new(&bundles, &signers);
    let much_later = AttestationTime::At(time("2026-12-01T00:00:00Z"));
    assert!(matches!(
        verifier.verify(&attestation, much_later),
        Err(AttestationVerifyError::NotValidAtTime(_))
    ));
    assert!(
        verifier
            .verify(&attestation, AttestationTime::ClaimedVerificationTime)
            .is_ok()
    );
}

#[test]
fn tampered_payload_is_rejected() {
    let setup = setup();
    let attestation = SignedAttestation::sign(&setup.statement, &setup.attestor).unwrap();
    let mut payload = attestation.envelope.unverified_payload().to_vec();
    let position = payload.iter().position(|byte| *byte == b'v').unwrap();
    payload[position] = b'V';
    let forged = SignedAttestation {
        envelope: Envelope::from_parts(
            IN_TOTO_PAYLOAD_TYPE,
            payload,
            attestation.envelope.signatures().to_vec(),
        ),
        certificates: attestation.certificates.clone(),
    };
    assert!(matches!(
        verify(&setup, &forged),
        Err(AttestationVerifyError::SignatureInvalid(
            DsseVerifyError::BadSignature
        ))
    ));
}

#[test]
fn signature_by_another_key_is_rejected() {
    let setup = setup();
    let other = setup.ca.issue(&SvidSpec::workload(ATTESTOR_ID));
    let signed_by_other = SignedAttestation::sign(&setup.statement, &other).unwrap();
    // Keep the genuine attestor's certificate, but the other key's signature.
    let genuine = SignedAttestation::sign(&setup.statement, &setup.attestor).unwrap();
    let forged = SignedAttestation {
        envelope: signed_by_other.envelope,
        certificates: genuine.certificates,
    };
    assert!(matches!(
        verify(&setup, &forged),
        Err(AttestationVerifyError::SignatureInvalid(_))
    ));
}

#[test]
fn untrusted_chain_is_rejected() {
    let setup = setup();
    let rogue_ca = TestCa::new("example.org");
    let rogue = rogue_ca.issue(&SvidSpec::workload(ATTESTOR_ID));
    let attestation = SignedAttestation::sign(&setup.statement, &rogue).unwrap();
    assert!(matches!(
        verify(&setup, &attestation),
        Err(AttestationVerifyError::ChainInvalid(_))
    ));
}

#[test]
fn wrong_signer_spiffe_id_is_rejected() {
    let setup = setup();
    let impostor = setup.ca.issue(&SvidSpec::workload(
        "spiffe://example.org/ns/default/taskrun/evil",
    ));
    let attestation = SignedAttestation::sign(&setup.statement, &impostor).unwrap();
    assert!(matches!(
        verify(&setup, &attestation),
        Err(AttestationVerifyError::SignerNotAllowed { .. })
    ));
    // Allowed by a policy listing it.
    let bundles = setup.ca.bundles();
    let signers = SignerPolicy::any_of([
        SpiffeId::new(ATTESTOR_ID).unwrap(),
        SpiffeId::new("spiffe://example.org/ns/default/taskrun/evil").unwrap(),
    ])
    .unwrap();
    assert!(
        AttestationVerifier::new(&bundles, &signers)
            .verify(
                &attestation,
                AttestationTime::At(time("2026-08-21T11:00:00Z"))
            )
            .is_ok()
    );
}

#[test]
fn an_empty_signer_policy_cannot_be_built() {
    assert!(SignerPolicy::any_of(Vec::<SpiffeId>::new()).is_err());
}

#[test]
fn wrong_predicate_type_is_rejected() {
    let setup = setup();
    let statement = Statement::new(
        vec![Subject::sha256(
            "x",
            countersign_identity::crypto::Sha256Digest::of(b"x"),
        )],
        "https://slsa.dev/provenance/v1",
        setup.statement.predicate().clone(),
    )
    .unwrap();
    let payload = serde_json::to_vec(&statement).unwrap();
    let attestation = SignedAttestation {
        envelope: Envelope::sign(IN_TOTO_PAYLOAD_TYPE, payload, &setup.attestor).unwrap(),
        certificates: setup.attestor.chain_pem(),
    };
    assert!(matches!(
        verify(&setup, &attestation),
        Err(AttestationVerifyError::WrongPredicateType { .. })
    ));
}

#[test]
fn wrong_payload_type_and_non_statement_payloads_are_rejected() {
    let setup = setup();
    let payload = serde_json::to_vec(&setup.statement).unwrap();
    let attestation = SignedAttestation {
        envelope: Envelope::sign("text/plain", payload, &setup.attestor).unwrap(),
        certificates: setup.attestor.chain_pem(),
    };
    assert!(matches!(
        verify(&setup, &attestation),
        Err(AttestationVerifyError::WrongPayloadType { .. })
    ));
    let attestation = SignedAttestation {
        envelope: Envelope::sign(IN_TOTO_PAYLOAD_TYPE, b"[]".to_vec(), &setup.attestor).unwrap(),
        certificates: setup.attestor.chain_pem(),
    };
    assert!(matches!(
        verify(&setup, &attestation),
        Err(AttestationVerifyError::NotAStatement(_))
    ));
}

#[test]
fn missing_certificates_are_rejected() {
    let setup = setup();
    let mut attestation = SignedAttestation::sign(&setup.statement, &setup.attestor).unwrap();
    attestation.certificates = String::new();
    assert!(matches!(
        verify(&setup, &attestation),
        Err(AttestationVerifyError::Certificates(_))
    ));
}

#[test]
fn dsse_envelope_verifies_only_with_the_signers_key() {
    let setup = setup();
    let envelope = Envelope::sign("application/x-test", b"body".to_vec(), &setup.attestor).unwrap();
    assert_eq!(
        envelope.verify(setup.attestor.leaf().public_key()).unwrap(),
        b"body"
    );
    let other = setup.ca.issue(&SvidSpec::workload(ATTESTOR_ID));
    assert_eq!(
        envelope.verify(other.leaf().public_key()),
        Err(DsseVerifyError::BadSignature)
    );
    let unsigned = Envelope::from_parts("application/x-test", b"body".to_vec(), vec![]);
    assert_eq!(
        unsigned.verify(setup.attestor.leaf().public_key()),
        Err(DsseVerifyError::NoSignatures)
    );
}

#[test]
fn predicate_json_uses_our_names() {
    let setup = setup();
    let json = serde_json::to_value(&setup.statement).unwrap();
    assert_eq!(json["predicateType"], TASKRUN_RESULTS_PREDICATE_TYPE);
    let predicate = &json["predicate"];
    assert_eq!(predicate["verdict"], "verified");
    assert_eq!(
        predicate["taskrun"]["uid"],
        "6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14"
    );
    assert_eq!(predicate["checks"][0]["check"], "svid_present");
    assert_eq!(predicate["checks"][0]["outcome"], "passed");
    assert!(predicate.get("reasonCode").is_none());
    assert_eq!(predicate["times"]["verified"], "2026-08-21T10:00:01Z");
}
