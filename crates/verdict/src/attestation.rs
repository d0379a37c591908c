//! Every verdict as a signed attestation: an in-toto Statement v1 with our TaskRun-results
//! predicate, in a DSSE envelope signed with the attestor's own SVID, its chain attached, as the
//! data of a `verified` or `rejected` attestation event.
//!
//! Also the conversions between the verifier's [`SignedAttestation`] (one PEM text of
//! certificates) and the event contract's (a list of PEM certificates), so that anyone holding
//! an event can check it with `countersign_identity::attestation::AttestationVerifier`, and
//! [`AttestationEventExt`], what an event says read in the verifier's terms.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use countersign_events::AttestationEvent;
use countersign_events::data::{
    AttestationRejected, AttestationVerified, DsseEnvelope, DsseSignature, ResultSubject,
    SignedAttestation as EventAttestation, TaskRunRef, Verdict as EventVerdict,
};
use countersign_identity::attestation::{AttestationSignError, SignedAttestation};
use countersign_identity::crypto::Sha256Digest;
use countersign_identity::dsse::{Envelope, EnvelopeSignature};
use countersign_identity::intoto::{
    PredicateTimes, SigningContext, Statement, TaskRunRef as PredicateTaskRun,
    TaskRunResultsPredicate, Verdict, taskrun_statement,
};
use countersign_identity::svid::{SigningSvid, SvidLeaf, TrustBundleSet, der_to_pem, pem_to_ders};

use crate::bundle_history::{authorities_digest, issuing_authority};

use crate::decide::Decision;
use crate::reason::VerifierReasonExt as _;

/// What an attestation says about the TaskRun besides the verdict.
#[derive(Debug, Clone, Copy)]
pub struct AttestationFacts<'a> {
    /// The TaskRun.
    pub taskrun: &'a TaskRunRef,
    /// Its `creationTimestamp`.
    pub created: DateTime<Utc>,
    /// Its `completionTime`, when known.
    pub finished: Option<DateTime<Utc>>,
    /// When the verdict was decided.
    pub decided_at: DateTime<Utc>,
    /// The digest of the trust bundle set current at the decision (used when no step names
    /// the one it was checked against).
    pub current_bundle_digest: &'a str,
}

/// Signs `decision` as an attestation with the attestor's `svid` and returns the event data.
/// The attestation carries no signing context: prefer [`attest_in_context`].
pub fn attest(
    decision: &Decision,
    facts: AttestationFacts<'_>,
    svid: &SigningSvid,
) -> Result<AttestationEvent, AttestationSignError> {
    sign_attestation(decision, facts, None, svid)
}

/// As [`attest`], with the signing context in the predicate: the digest of the bundle that
/// verified the results, the digest of the bundle of `svid`'s own trust domain in
/// `signer_bundles` (the one that verifies the attestor's SVID, a bundle history's record
/// digest) and the signing time (`facts.decided_at`). A verifier holding the trust bundle
/// history then checks the attestation against the bundle recorded for that time.
pub fn attest_in_context(
    decision: &Decision,
    facts: AttestationFacts<'_>,
    signer_bundles: &TrustBundleSet,
    svid: &SigningSvid,
) -> Result<AttestationEvent, AttestationSignError> {
    let signer_bundle_digest = authorities_digest(
        signer_bundles
            .authorities(svid.spiffe_id().trust_domain())
            .unwrap_or_default()
            .iter()
            .map(Vec::as_slice),
    );
    let signer_authority = svid
        .chain()
        .split_first()
        .and_then(|(leaf, intermediates)| {
            let leaf = SvidLeaf::from_der(leaf).ok()?;
            issuing_authority(signer_bundles, &leaf, intermediates, facts.decided_at)
        });
    let signer = SignerContext {
        bundle_digest: signer_bundle_digest.to_hex(),
        authority: signer_authority,
    };
    sign_attestation(decision, facts, Some(signer), svid)
}

/// What the signing context says of the attestor's own SVID.
struct SignerContext {
    bundle_digest: String,
    authority: Option<String>,
}

fn sign_attestation(
    decision: &Decision,
    facts: AttestationFacts<'_>,
    signer: Option<SignerContext>,
    svid: &SigningSvid,
) -> Result<AttestationEvent, AttestationSignError> {
    let taskrun = facts.taskrun;
    let (verdict, spiffe_id, svid_fingerprint, trust_bundle_digest, reason_code) = match decision {
        Decision::Verified(verified) => (
            Verdict::Verified,
            Some(verified.signer.spiffe_id.clone()),
            Some(verified.signer.svid_fingerprint.clone()),
            verified.trust_bundle_digest.clone(),
            None,
        ),
        Decision::NoResults => (
            Verdict::NoResults,
            None,
            None,
            facts.current_bundle_digest.to_owned(),
            None,
        ),
        Decision::Rejected(rejected) => (
            Verdict::Rejected,
            rejected.spiffe_id.clone(),
            rejected.svid_fingerprint.clone(),
            rejected
                .trust_bundle_digest
                .clone()
                .unwrap_or_else(|| facts.current_bundle_digest.to_owned()),
            Some(rejected.reason),
        ),
    };
    let results_authority = match decision {
        Decision::Verified(verified) => verified.signer.issuing_authority.clone(),
        Decision::NoResults | Decision::Rejected(_) => None,
    };
    let signing = signer.map(|signer| SigningContext {
        results_bundle_digest: trust_bundle_digest.clone(),
        signer_bundle_digest: signer.bundle_digest,
        signed_at: facts.decided_at,
        results_authority,
        signer_authority: signer.authority,
    });
    let predicate = TaskRunResultsPredicate {
        taskrun: PredicateTaskRun {
            namespace: taskrun.namespace.clone(),
            name: taskrun.name.clone(),
            uid: taskrun.uid.clone(),
        },
        cluster: taskrun.cluster.clone(),
        spiffe_id: spiffe_id.clone(),
        svid_fingerprint: svid_fingerprint.clone(),
        trust_bundle_digest,
        verdict,
        reason_code,
        checks: decision.checks().to_vec(),
        times: PredicateTimes {
            created: facts.created,
            finished: facts.finished,
            verified: facts.decided_at,
        },
        signing,
    };
    let empty = std::collections::BTreeMap::new();
    let results = match decision {
        Decision::Verified(verified) => &verified.results,
        Decision::NoResults | Decision::Rejected(_) => &empty,
    };
    let statement = taskrun_statement(predicate, results);
    let signed = SignedAttestation::sign(&statement, svid)?;
    let attestation = to_event_attestation(&signed, svid);
    Ok(match decision {
        Decision::Verified(verified) => AttestationEvent::Verified(AttestationVerified {
            taskrun: taskrun.clone(),
            verdict: EventVerdict::Verified,
            spiffe_id,
            svid_fingerprint,
            subjects: verified
                .results
                .iter()
                .map(|(name, value)| ResultSubject {
                    name: name.clone(),
                    sha256: value.digest().to_hex(),
                })
                .collect(),
            attestation,
            attested_at: facts.decided_at,
        }),
        Decision::NoResults => AttestationEvent::Verified(AttestationVerified {
            taskrun: taskrun.clone(),
            verdict: EventVerdict::NoResults,
            spiffe_id: None,
            svid_fingerprint: None,
            subjects: Vec::new(),
            attestation,
            attested_at: facts.decided_at,
        }),
        Decision::Rejected(rejected) => AttestationEvent::Rejected(AttestationRejected {
            taskrun: taskrun.clone(),
            reason: rejected.reason.to_event_reason(),
            message: rejected.message.clone(),
            step: rejected.step.clone(),
            spiffe_id,
            attestation,
            attested_at: facts.decided_at,
        }),
    })
}

/// The event contract's form of a signed attestation: the envelope with base64 fields and each
/// certificate of the signer's chain as its own PEM text, leaf first.
pub fn to_event_attestation(signed: &SignedAttestation, svid: &SigningSvid) -> EventAttestation {
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    EventAttestation {
        envelope: DsseEnvelope {
            payload_type: signed.envelope.payload_type().to_owned(),
            payload: encode(signed.envelope.unverified_payload()),
            signatures: signed
                .envelope
                .signatures()
                .iter()
                .map(|signature| DsseSignature {
                    keyid: signature.keyid.clone(),
                    sig: encode(&signature.sig),
                })
                .collect(),
        },
        certificates: svid.chain().iter().map(|der| der_to_pem(der)).collect(),
        rfc3161_timestamps: Vec::new(),
    }
}

/// Why an event's attestation could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum FromEventError {
    /// The payload or a signature is not base64.
    #[error("{field} is not base64")]
    Base64 {
        /// Which field.
        field: &'static str,
        /// Why.
        #[source]
        source: base64::DecodeError,
    },
    /// A certificate is not PEM.
    #[error("certificate {index} is not a PEM certificate")]
    Certificate {
        /// Its position.
        index: usize,
    },
}

/// The verifier's form of an event's attestation (to check it with
/// `countersign_identity::attestation::AttestationVerifier`).
pub fn from_event_attestation(
    attestation: &EventAttestation,
) -> Result<SignedAttestation, FromEventError> {
    let payload =
        decode_base64(&attestation.envelope.payload).map_err(|source| FromEventError::Base64 {
            field: "envelope.payload",
            source,
        })?;
    let signatures = attestation
        .envelope
        .signatures
        .iter()
        .map(|signature| {
            decode_base64(&signature.sig)
                .map(|sig| EnvelopeSignature {
                    keyid: signature.keyid.clone(),
                    sig,
                })
                .map_err(|source| FromEventError::Base64 {
                    field: "envelope.signatures[].sig",
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut certificates = String::new();
    for (index, pem) in attestation.certificates.iter().enumerate() {
        match pem_to_ders(pem) {
            Ok(ders) if !ders.is_empty() => {
                for der in ders {
                    certificates.push_str(&der_to_pem(&der));
                }
            }
            _ => return Err(FromEventError::Certificate { index }),
        }
    }
    Ok(SignedAttestation {
        envelope: Envelope::from_parts(
            attestation.envelope.payload_type.clone(),
            payload,
            signatures,
        ),
        certificates,
    })
}

/// The RFC 3161 timestamps (DER `TimeStampResp`) an event's attestation carries, unverified
/// (see `countersign_identity::timestamp::verify_stored_response`).
pub fn event_timestamps(attestation: &EventAttestation) -> Result<Vec<Vec<u8>>, FromEventError> {
    attestation
        .rfc3161_timestamps
        .iter()
        .map(|token| {
            decode_base64(token).map_err(|source| FromEventError::Base64 {
                field: "rfc3161Timestamps[]",
                source,
            })
        })
        .collect()
}

/// The bytes a timestamp of an event's attestation covers: its envelope's first signature
/// (what a Sigstore bundle's timestamp covers). `None` when the envelope has no signature.
pub fn timestamped_bytes(
    attestation: &EventAttestation,
) -> Result<Option<Vec<u8>>, FromEventError> {
    attestation
        .envelope
        .signatures
        .first()
        .map(|signature| {
            decode_base64(&signature.sig).map_err(|source| FromEventError::Base64 {
                field: "envelope.signatures[].sig",
                source,
            })
        })
        .transpose()
}

/// Standard base64, the URL-safe alphabet accepted too (as the DSSE specification asks).
fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
}

/// SHA-256 of the envelope as the event carries it (its JSON, fields in the contract's order:
/// `payloadType`, `payload`, `signatures`): the `countersign.dev/attestation-digest` annotation.
pub fn envelope_digest(envelope: &DsseEnvelope) -> Sha256Digest {
    // A struct of strings always serializes.
    Sha256Digest::of(&serde_json::to_vec(envelope).unwrap_or_default())
}

/// What an attestation event says, in the verifier's terms (an extension of the events crate's
/// [`AttestationEvent`], which cannot name `countersign_identity`'s types; the plain readers,
/// `taskrun()`, `attestation()`, `attested_at()`, are its own methods).
pub trait AttestationEventExt {
    /// The verdict: `verified` and `no_results` are both `verified` events; a revocation is
    /// `rejected` (its attestation no longer verifies).
    fn verdict(&self) -> Verdict;

    /// The attestation in the verifier's form (see [`from_event_attestation`]).
    fn signed_attestation(&self) -> Result<SignedAttestation, FromEventError>;

    /// The in-toto Statement the envelope carries, read, not verified: for readers of the
    /// attestor's own store (the gate's replica, a revocation scan), where the attestor wrote it.
    fn statement(&self) -> Result<Statement<TaskRunResultsPredicate>, StatementError>;
}

/// Why the Statement of an attestation event could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    /// The envelope cannot be read.
    #[error("the attestation envelope cannot be read")]
    Envelope(#[from] FromEventError),
    /// The payload is not our Statement.
    #[error("the attestation payload is not a TaskRun-results statement")]
    Statement(#[from] serde_json::Error),
}

impl AttestationEventExt for AttestationEvent {
    fn verdict(&self) -> Verdict {
        match self {
            AttestationEvent::Verified(verified) => match verified.verdict {
                EventVerdict::Verified => Verdict::Verified,
                EventVerdict::NoResults => Verdict::NoResults,
            },
            // A revoked attestation no longer verifies, whatever it said.
            AttestationEvent::Rejected(_) | AttestationEvent::Revoked(_) => Verdict::Rejected,
        }
    }

    fn signed_attestation(&self) -> Result<SignedAttestation, FromEventError> {
        from_event_attestation(self.attestation())
    }

    fn statement(&self) -> Result<Statement<TaskRunResultsPredicate>, StatementError> {
        let signed = self.signed_attestation()?;
        Ok(serde_json::from_slice(
            signed.envelope.unverified_payload(),
        )?)
    }
}
