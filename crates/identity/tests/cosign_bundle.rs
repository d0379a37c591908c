//! Our attestations as Sigstore bundles v0.3, verified by the real `cosign`
//! (`verify-blob-attestation`, offline: a trusted root holding the SPIFFE trust domain's CA, the
//! signer's SPIFFE ID as `--certificate-identity`, no transparency log, no SCT).
//!
//! sigstore-go (inside cosign) requires the code-signing extended key usage of a signing
//! certificate; SPIRE's X509-SVIDs carry only server and client auth. So the accepted case uses
//! an SVID-shaped certificate with code signing added, and the real SPIRE SVID is shown refused
//! for exactly that reason (while our own verifier accepts the same bundle).
//!
//! With an RFC 3161 timestamp from the real timestamp authority in the bundle and that authority
//! in the trusted root (`timestampAuthorities`), cosign checks it with `--use-signed-timestamps`.

mod interop;

use std::time::Duration;

use chrono::Utc;
use countersign_identity::attestation::{
    AttestationTime, AttestationVerifier, AttestationVerifyError, SignedAttestation, SignerPolicy,
};
use countersign_identity::crypto::Sha256Digest;
use countersign_identity::dsse::Envelope;
use countersign_identity::intoto::{
    PredicateTimes, Statement, Subject, TASKRUN_RESULTS_PREDICATE_TYPE, TaskRunRef,
    TaskRunResultsPredicate, Verdict as TaskRunVerdict,
};
use countersign_identity::sigstore_bundle::{
    SigstoreBundle, trusted_root_json, trusted_root_json_with_timestamp_authority,
};
use countersign_identity::spiffe_id::{SpiffeId, TrustDomain};
use countersign_identity::svid::{SigningSvid, TrustBundleSet};
use countersign_identity::timestamp::{TimestampAuthorityChain, TimestampRequest, verify_response};
use countersign_peers::Peer;
use countersign_test_support::spire::{Spire, SpireOptions};
use countersign_test_support::timestamp_authority::TimestampAuthority;
use interop::*;

/// The result the statement names, and the blob cosign checks it against.
const RESULT_VALUE: &[u8] =
    b"sha256:586789aa031fafc7d78a5393cdc772e0b55107ea54bb8bcf3f2cdac6c6da51ee";

fn statement(bundles: &TrustBundleSet) -> Statement<TaskRunResultsPredicate> {
    let now = Utc::now();
    let predicate = TaskRunResultsPredicate {
        taskrun: TaskRunRef {
            namespace: "default".into(),
            name: "build-push-run-x7k2p".into(),
            uid: "6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14".into(),
        },
        cluster: "test".into(),
        spiffe_id: Some(TASKRUN_ID.into()),
        svid_fingerprint: None,
        trust_bundle_digest: bundles.digest().to_hex(),
        verdict: TaskRunVerdict::Verified,
        reason_code: None,
        checks: Vec::new(),
        times: PredicateTimes {
            created: now,
            finished: Some(now),
            verified: now,
        },
        signing: None,
    };
    Statement::new(
        vec![Subject::sha256(
            "IMAGE_DIGEST",
            Sha256Digest::of(RESULT_VALUE),
        )],
        TASKRUN_RESULTS_PREDICATE_TYPE,
        predicate,
    )
    .unwrap()
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new(bundles: &TrustBundleSet, bundle: &SigstoreBundle) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = trusted_root_json(bundles, &TrustDomain::new(TRUST_DOMAIN).unwrap()).unwrap();
        std::fs::write(dir.path().join("trusted_root.json"), root).unwrap();
        std::fs::write(
            dir.path().join("attestation.sigstore.json"),
            bundle.to_json(),
        )
        .unwrap();
        std::fs::write(dir.path().join("blob"), RESULT_VALUE).unwrap();
        Self { dir }
    }

    /// A case whose trusted root also names the timestamp authority of `chain`.
    fn with_timestamp_authority(
        bundles: &TrustBundleSet,
        bundle: &SigstoreBundle,
        chain: &TimestampAuthorityChain,
    ) -> Self {
        let case = Self::new(bundles, bundle);
        let root = trusted_root_json_with_timestamp_authority(
            bundles,
            &TrustDomain::new(TRUST_DOMAIN).unwrap(),
            chain,
        )
        .unwrap();
        std::fs::write(case.dir.path().join("trusted_root.json"), root).unwrap();
        case
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `cosign verify-blob-attestation`, as a user would run it.
    fn cosign(&self, identity: &str) -> Verdict {
        self.cosign_with(identity, &[])
    }

    fn cosign_with(&self, identity: &str, extra: &[&str]) -> Verdict {
        let (bundle, root, blob) = (
            self.path("attestation.sigstore.json"),
            self.path("trusted_root.json"),
            self.path("blob"),
        );
        let mut args = vec![
            "verify-blob-attestation",
            "--bundle",
            &bundle,
            "--trusted-root",
            &root,
            "--certificate-identity",
            identity,
            "--certificate-oidc-issuer-regexp",
            ".*",
            "--insecure-ignore-tlog",
            "--insecure-ignore-sct",
            "--type",
            TASKRUN_RESULTS_PREDICATE_TYPE,
        ];
        args.extend_from_slice(extra);
        args.push(&blob);
        run(Peer::Cosign, &args)
    }
}

fn signed_bundle(svid: &SigningSvid, bundles: &TrustBundleSet) -> SigstoreBundle {
    let attestation = SignedAttestation::sign(&statement(bundles), svid).unwrap();
    SigstoreBundle::from_attestation(&attestation).unwrap()
}

fn assert_refused(verdict: &Verdict, error_line: &str) {
    assert_eq!(verdict.code, Some(1), "{verdict:?}");
    assert_eq!(
        verdict.stderr_line("Error:"),
        Some(error_line),
        "{verdict:?}"
    );
}

#[test]
fn cosign_accepts_our_bundle() {
    let ca = NowCa::new();
    let bundles = ca.bundles();
    let attestor = ca.issue(ATTESTOR_ID, &CODE_SIGNING_EXTENDED_KEY_USAGES);
    let case = Case::new(&bundles, &signed_bundle(&attestor, &bundles));
    let verdict = case.cosign(ATTESTOR_ID);
    assert!(verdict.success, "{verdict:?}");
    assert!(verdict.stderr.contains("Verified OK"), "{verdict:?}");
}

/// The bundle with a signed timestamp from the real timestamp authority over its signature, and
/// that authority in the trusted root: cosign checks the timestamp (`--use-signed-timestamps`)
/// and accepts; with another authority in the trusted root, or without a timestamp, it refuses.
#[tokio::test]
async fn cosign_accepts_our_bundle_with_a_signed_timestamp() {
    let (authority, other) = tokio::join!(TimestampAuthority::start(), TimestampAuthority::start());
    let (authority, other) = (authority.unwrap(), other.unwrap());
    let chain = TimestampAuthorityChain::from_pem(authority.chain_pem()).unwrap();
    let other_chain = TimestampAuthorityChain::from_pem(other.chain_pem()).unwrap();
    let ca = NowCa::new();
    let bundles = ca.bundles();
    let attestor = ca.issue(ATTESTOR_ID, &CODE_SIGNING_EXTENDED_KEY_USAGES);
    let bundle = signed_bundle(&attestor, &bundles);
    let request = TimestampRequest::new(bundle.signature_bytes()).unwrap();
    let (status, response) = authority.post_request(request.der()).await.unwrap();
    assert_eq!(status, 200);
    let token = verify_response(&response, &request, &chain)
        .unwrap()
        .into_response_der();
    let stamped = bundle.clone().with_timestamps(vec![token]).unwrap();

    let verdict = Case::with_timestamp_authority(&bundles, &stamped, &chain)
        .cosign_with(ATTESTOR_ID, &["--use-signed-timestamps"]);
    assert!(verdict.success, "{verdict:?}");
    assert!(verdict.stderr.contains("Verified OK"), "{verdict:?}");

    let verdict = Case::with_timestamp_authority(&bundles, &stamped, &other_chain)
        .cosign_with(ATTESTOR_ID, &["--use-signed-timestamps"]);
    assert_refused(
        &verdict,
        "Error: failed to verify timestamps: threshold not met for verified signed timestamps: 0 < 1; error: unable to verify signed timestamps: certificate embedded in the TSR does not match the provided TSA certificate",
    );

    let verdict = Case::with_timestamp_authority(&bundles, &bundle, &chain)
        .cosign_with(ATTESTOR_ID, &["--use-signed-timestamps"]);
    // (cosign's own message, `%!w(<nil>)` and all.)
    assert_refused(
        &verdict,
        "Error: failed to verify timestamps: threshold not met for verified signed timestamps: 0 < 1; error: %!w(<nil>)",
    );
}

#[test]
fn cosign_refuses_a_tampered_payload() {
    let ca = NowCa::new();
    let bundles = ca.bundles();
    let attestor = ca.issue(ATTESTOR_ID, &CODE_SIGNING_EXTENDED_KEY_USAGES);
    let bundle = signed_bundle(&attestor, &bundles);
    let payload = String::from_utf8(bundle.envelope().unverified_payload().to_vec())
        .unwrap()
        .replace(r#""verdict":"verified""#, r#""verdict":"rejected""#);
    let tampered = SigstoreBundle::new(
        Envelope::from_parts(
            bundle.envelope().payload_type(),
            payload.into_bytes(),
            bundle.envelope().signatures().to_vec(),
        ),
        vec![bundle.leaf_der().to_vec()],
    )
    .unwrap();
    let verdict = Case::new(&bundles, &tampered).cosign(ATTESTOR_ID);
    assert_refused(
        &verdict,
        "Error: failed to verify signature: could not verify envelope: accepted signatures do not match threshold, Found: 0, Expected 1",
    );
}

#[test]
fn cosign_refuses_a_bundle_signed_by_a_taskrun_svid() {
    let ca = NowCa::new();
    let bundles = ca.bundles();
    let taskrun = ca.issue(TASKRUN_ID, &CODE_SIGNING_EXTENDED_KEY_USAGES);
    let verdict = Case::new(&bundles, &signed_bundle(&taskrun, &bundles)).cosign(ATTESTOR_ID);
    assert_refused(
        &verdict,
        "Error: failed to verify certificate identity: no matching CertificateIdentity found, last error: expected SAN value \"spiffe://example.org/countersign/attestor\", got \"spiffe://example.org/ns/default/taskrun/build-push-run-x7k2p\"",
    );
}

#[test]
fn cosign_refuses_a_bundle_from_another_ca() {
    let ca = NowCa::new();
    let stranger = NowCa::new().issue(ATTESTOR_ID, &CODE_SIGNING_EXTENDED_KEY_USAGES);
    let bundles = ca.bundles();
    let verdict = Case::new(&bundles, &signed_bundle(&stranger, &bundles)).cosign(ATTESTOR_ID);
    assert_refused(
        &verdict,
        "Error: failed to verify leaf certificate: leaf certificate verification failed",
    );
}

/// An SVID under an intermediate CA (SPIRE under an upstream authority): the bundle carries
/// the chain, which cosign takes with `--allow-certificate-chain` and refuses without it.
#[test]
fn cosign_accepts_a_chain_bundle_when_allowed() {
    let root = NowCa::new();
    let bundles = root.bundles();
    let attestor = root
        .intermediate()
        .issue(ATTESTOR_ID, &CODE_SIGNING_EXTENDED_KEY_USAGES);
    let bundle = signed_bundle(&attestor, &bundles);
    assert_eq!(bundle.intermediates_der().len(), 1);
    let parsed = SigstoreBundle::from_json(&bundle.to_json()).unwrap();
    let policy = SignerPolicy::exact(SpiffeId::new(ATTESTOR_ID).unwrap());
    AttestationVerifier::new(&bundles, &policy)
        .verify(&parsed.to_attestation(), AttestationTime::At(Utc::now()))
        .unwrap();
    let case = Case::new(&bundles, &bundle);
    let allowed = case.cosign_with(ATTESTOR_ID, &["--allow-certificate-chain"]);
    assert!(allowed.success, "{allowed:?}");
    assert!(allowed.stderr.contains("Verified OK"), "{allowed:?}");
    // Without the flag cosign does not read a v0.3 bundle with a chain as a bundle at all, and
    // says so in terms of its older format.
    let refused = case.cosign(ATTESTOR_ID);
    assert_refused(
        &refused,
        "Error: --trusted-root only supported with --new-bundle-format",
    );
}

/// A real SPIRE attestor SVID: our bundle and trusted root are right (our verifier accepts the
/// bundle against the same SPIRE bundle), and cosign refuses the leaf for its extended key
/// usage, as it refuses any certificate without code signing.
#[tokio::test]
async fn a_spire_svid_bundle_is_refused_by_cosign_for_its_key_usage() {
    let spire = Spire::start(SpireOptions::default()).await.unwrap();
    assert_eq!(spire.trust_domain(), TRUST_DOMAIN);
    spire
        .register_test_process(ATTESTOR_ID, false)
        .await
        .unwrap();
    spire
        .register_test_process(TASKRUN_ID, false)
        .await
        .unwrap();
    let attestor = spire
        .wait_for_svid(ATTESTOR_ID, Duration::from_secs(60))
        .await
        .unwrap();
    let taskrun = spire
        .wait_for_svid(TASKRUN_ID, Duration::from_secs(60))
        .await
        .unwrap();
    let attestor = SigningSvid::from_x509_svid(&attestor).unwrap();
    let taskrun = SigningSvid::from_x509_svid(&taskrun).unwrap();
    let mut bundles = TrustBundleSet::new();
    bundles
        .add_pem(TrustDomain::new(TRUST_DOMAIN).unwrap(), spire.bundle_pem())
        .unwrap();

    let bundle = signed_bundle(&attestor, &bundles);
    assert!(bundle.intermediates_der().is_empty());
    let parsed = SigstoreBundle::from_json(&bundle.to_json()).unwrap();
    let policy = SignerPolicy::exact(SpiffeId::new(ATTESTOR_ID).unwrap());
    let verifier = AttestationVerifier::new(&bundles, &policy);
    let verified = verifier
        .verify(&parsed.to_attestation(), AttestationTime::At(Utc::now()))
        .unwrap();
    assert_eq!(verified.signer().to_string(), ATTESTOR_ID);

    let by_taskrun = signed_bundle(&taskrun, &bundles);
    assert!(matches!(
        verifier.verify(
            &by_taskrun.to_attestation(),
            AttestationTime::At(Utc::now())
        ),
        Err(AttestationVerifyError::SignerNotAllowed { .. })
    ));

    let verdict = Case::new(&bundles, &bundle).cosign(ATTESTOR_ID);
    assert_refused(
        &verdict,
        "Error: failed to verify leaf certificate: leaf certificate verification failed",
    );
    assert!(has_no_code_signing(bundle.leaf_der()));
}

fn has_no_code_signing(leaf_der: &[u8]) -> bool {
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf_der).unwrap();
    let usage = certificate.extended_key_usage().unwrap().unwrap().value;
    usage.server_auth && usage.client_auth && !usage.code_signing
}
