//! Our DSSE envelopes verified by an independent implementation: go-securesystemslib's envelope
//! verifier (the one in-toto-golang, cosign and slsa-verifier use), built from the Go module proxy
//! as the `dsse-verify` peer, given only the signer's public key.

mod interop;

use countersign_identity::dsse::{Envelope, EnvelopeSignature, IN_TOTO_PAYLOAD_TYPE};
use countersign_identity::svid::SigningSvid;
use countersign_peers::Peer;
use interop::*;

struct Files {
    _dir: tempfile::TempDir,
    key: String,
    envelope: String,
}

fn write(svid_for_key: &SigningSvid, envelope: &Envelope) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let path = dir.path().join("envelope.json");
    std::fs::write(&key, public_key_pem(svid_for_key.leaf().der())).unwrap();
    std::fs::write(&path, serde_json::to_vec(envelope).unwrap()).unwrap();
    Files {
        key: key.display().to_string(),
        envelope: path.display().to_string(),
        _dir: dir,
    }
}

fn verify_with_go(files: &Files) -> Verdict {
    run(Peer::DsseVerify, &[&files.key, &files.envelope])
}

fn signed() -> (SigningSvid, Envelope) {
    let svid = NowCa::new().issue(ATTESTOR_ID, &SPIRE_EXTENDED_KEY_USAGES);
    let envelope = Envelope::sign(
        IN_TOTO_PAYLOAD_TYPE,
        br#"{"_type":"https://in-toto.io/Statement/v1"}"#.to_vec(),
        &svid,
    )
    .unwrap();
    (svid, envelope)
}

#[test]
fn our_envelope_has_no_keyid() {
    let (_, envelope) = signed();
    let json = serde_json::to_value(&envelope).unwrap();
    assert_eq!(
        json["signatures"][0]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["sig"]
    );
}

#[test]
fn go_securesystemslib_verifies_our_envelope() {
    let (svid, envelope) = signed();
    let verdict = verify_with_go(&write(&svid, &envelope));
    assert!(verdict.success, "{verdict:?}");
    assert!(
        verdict
            .stdout
            .starts_with("verified: payloadType=application/vnd.in-toto+json"),
        "{verdict:?}"
    );
}

#[test]
fn go_securesystemslib_refuses_a_tampered_payload() {
    let (svid, envelope) = signed();
    let tampered = Envelope::from_parts(
        envelope.payload_type(),
        br#"{"_type":"https://in-toto.io/Statement/v0.1"}"#.to_vec(),
        envelope.signatures().to_vec(),
    );
    let verdict = verify_with_go(&write(&svid, &tampered));
    assert_eq!(verdict.code, Some(1), "{verdict:?}");
    assert_eq!(
        verdict.stderr_line("dsse-verify:"),
        Some("dsse-verify: accepted signatures do not match threshold, Found: 0, Expected 1")
    );
}

#[test]
fn go_securesystemslib_refuses_another_key() {
    let (_, envelope) = signed();
    let stranger = NowCa::new().issue(ATTESTOR_ID, &SPIRE_EXTENDED_KEY_USAGES);
    let verdict = verify_with_go(&write(&stranger, &envelope));
    assert_eq!(verdict.code, Some(1), "{verdict:?}");
    assert_eq!(
        verdict.stderr_line("dsse-verify:"),
        Some("dsse-verify: accepted signatures do not match threshold, Found: 0, Expected 1")
    );
}

/// Why the keyid went: envelopes written before carried the SVID fingerprint as keyid, which
/// go-securesystemslib compares with its own id of the key and then skips the signature. Our own
/// verifier still accepts them, since it never reads the keyid.
#[test]
fn an_old_envelope_with_a_keyid_is_refused_by_go_and_accepted_by_us() {
    let (svid, envelope) = signed();
    let signature = &envelope.signatures()[0];
    let old = Envelope::from_parts(
        envelope.payload_type(),
        envelope.unverified_payload().to_vec(),
        vec![EnvelopeSignature {
            keyid: svid.leaf().fingerprint().to_hex(),
            sig: signature.sig.clone(),
        }],
    );
    let verdict = verify_with_go(&write(&svid, &old));
    assert_eq!(verdict.code, Some(1), "{verdict:?}");
    assert_eq!(
        old.verify(svid.leaf().public_key()).unwrap(),
        envelope.unverified_payload()
    );
}

/// The keyid never chooses or vouches for a key: a keyid naming the signer does not make
/// another key's signature verify.
#[test]
fn our_verifier_ignores_the_keyid() {
    let (svid, envelope) = signed();
    let stranger = NowCa::new().issue(ATTESTOR_ID, &SPIRE_EXTENDED_KEY_USAGES);
    let forged = Envelope::sign(
        IN_TOTO_PAYLOAD_TYPE,
        envelope.unverified_payload().to_vec(),
        &stranger,
    )
    .unwrap();
    let claiming = Envelope::from_parts(
        forged.payload_type(),
        forged.unverified_payload().to_vec(),
        vec![EnvelopeSignature {
            keyid: svid.leaf().fingerprint().to_hex(),
            sig: forged.signatures()[0].sig.clone(),
        }],
    );
    assert!(claiming.verify(svid.leaf().public_key()).is_err());
    assert!(claiming.verify(stranger.leaf().public_key()).is_ok());
}
