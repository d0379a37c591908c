//! Verification outcomes, published by the attestor on `{p}.attestation.<verdict>.…`, one per
//! TaskRun (id `{taskrun uid}:attestation` for both types, so the stream keeps only the first).
//!
//! Both carry a DSSE envelope signed with the attestor's own SVID and the certificate chain of
//! that SVID, so anyone holding the trust bundle can check the statement offline.
//!
//! A third type, `dev.countersign.attestation.revoked.v1` on `{p}.attestation.revoked.…` (id
//! `{taskrun uid}:revoked`), says that a stored attestation no longer verifies: a CA that issued
//! one of its signing chains (the results SVID's or the attestor's) was revoked since. It carries
//! the attestation it revokes, unchanged.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::TaskRunRef;
use super::lifecycle::ce_subject_of;
use crate::event_type::EventType;
use crate::payload::{AttestationEvent, EventData};
use crate::subject::{SubjectError, Subjects};

/// What was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every result was signed by the TaskRun's own SVID, and the signatures check.
    Verified,
    /// The Task declares no results and the TaskRun wrote none: nothing to verify.
    NoResults,
}

/// Why a TaskRun's results were rejected: one code per verification check, in the order the
/// checks run. Machine-readable; the event's `message` says more for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// A step wrote results but no `SVID` entry.
    SvidMissing,
    /// The `SVID` entry is not one parseable PEM X.509 certificate, or not an X509-SVID leaf
    /// (a CA, missing or wrong key usage, an unsupported key type).
    SvidInvalid,
    /// The SVID does not hold exactly one URI SAN that is a valid SPIFFE ID.
    SpiffeIdInvalid,
    /// The SVID's SPIFFE ID is not the TaskRun's (`spiffe://<td>/ns/<namespace>/taskrun/<name>`).
    SpiffeIdMismatch,
    /// No trust bundle is configured for the SVID's trust domain.
    TrustDomainUnknown,
    /// The SVID does not chain to its trust domain's bundle (signature, CA constraints, key usage).
    ChainInvalid,
    /// The SVID was not valid (not yet, or no longer) when the step wrote its results.
    SvidNotValidAtSigning,
    /// The SVID was issued before the TaskRun was created, so it was not issued for this run.
    SvidPredatesTaskrun,
    /// A step wrote signed results but no `RESULT_MANIFEST` entry.
    ManifestMissing,
    /// The manifest lists a result the step did not write.
    ManifestIncomplete,
    /// The step wrote a result the manifest does not list (an extra, unsigned result).
    UnsignedResult,
    /// A `<name>.sig` entry is absent: for a result the manifest lists, or for the manifest
    /// itself (`RESULT_MANIFEST.sig`).
    SignatureMissing,
    /// A signature (of a result or of the manifest) does not verify with the SVID's key.
    SignatureInvalid,
    /// The TaskRun's reported results differ from the values its steps signed.
    ResultsMismatch,
    /// The TaskRun has results but no step signed any (signing is not enabled for it).
    UnsignedResults,
    /// A result set cannot be parsed (not the termination-message JSON, bad base64, truncated).
    MalformedResults,
    /// The TaskRun's `finished` event did not fit the bus's max payload, so the watcher sent
    /// it without its results and steps' result sets (`oversized`): nothing left to verify.
    PayloadTooLarge,
}

impl ReasonCode {
    /// Every code, in check order.
    pub const ALL: [ReasonCode; 17] = [
        ReasonCode::SvidMissing,
        ReasonCode::SvidInvalid,
        ReasonCode::SpiffeIdInvalid,
        ReasonCode::SpiffeIdMismatch,
        ReasonCode::TrustDomainUnknown,
        ReasonCode::ChainInvalid,
        ReasonCode::SvidNotValidAtSigning,
        ReasonCode::SvidPredatesTaskrun,
        ReasonCode::ManifestMissing,
        ReasonCode::ManifestIncomplete,
        ReasonCode::UnsignedResult,
        ReasonCode::SignatureMissing,
        ReasonCode::SignatureInvalid,
        ReasonCode::ResultsMismatch,
        ReasonCode::UnsignedResults,
        ReasonCode::MalformedResults,
        ReasonCode::PayloadTooLarge,
    ];

    /// The code as it appears in JSON (`svid_missing`...).
    pub const fn as_str(self) -> &'static str {
        match self {
            ReasonCode::SvidMissing => "svid_missing",
            ReasonCode::SvidInvalid => "svid_invalid",
            ReasonCode::SpiffeIdInvalid => "spiffe_id_invalid",
            ReasonCode::SpiffeIdMismatch => "spiffe_id_mismatch",
            ReasonCode::TrustDomainUnknown => "trust_domain_unknown",
            ReasonCode::ChainInvalid => "chain_invalid",
            ReasonCode::SvidNotValidAtSigning => "svid_not_valid_at_signing",
            ReasonCode::SvidPredatesTaskrun => "svid_predates_taskrun",
            ReasonCode::ManifestMissing => "manifest_missing",
            ReasonCode::ManifestIncomplete => "manifest_incomplete",
            ReasonCode::UnsignedResult => "unsigned_result",
            ReasonCode::SignatureMissing => "signature_missing",
            ReasonCode::SignatureInvalid => "signature_invalid",
            ReasonCode::ResultsMismatch => "results_mismatch",
            ReasonCode::UnsignedResults => "unsigned_results",
            ReasonCode::MalformedResults => "malformed_results",
            ReasonCode::PayloadTooLarge => "payload_too_large",
        }
    }
}

/// One in-toto subject of the attestation: a result, by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResultSubject {
    /// The result's name.
    pub name: String,
    /// Lower-case hex SHA-256 of the signed bytes of the result's value.
    pub sha256: String,
}

/// A DSSE signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DsseSignature {
    /// The key id (the attestor SVID's SPIFFE ID); may be empty.
    pub keyid: String,
    /// The signature over the DSSE pre-authentication encoding, base64 (standard alphabet).
    pub sig: String,
}

/// A DSSE envelope (field names as the DSSE specification spells them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DsseEnvelope {
    /// The payload's media type (`application/vnd.in-toto+json`).
    pub payload_type: String,
    /// The payload (an in-toto Statement), base64 (standard alphabet).
    pub payload: String,
    /// The signatures.
    pub signatures: Vec<DsseSignature>,
}

/// A signed statement and what is needed to check it offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedAttestation {
    /// The DSSE envelope.
    pub envelope: DsseEnvelope,
    /// The attestor SVID's certificate chain as PEM, leaf first.
    pub certificates: Vec<String>,
    /// RFC 3161 timestamps (DER `TimeStampResp`: status and token, base64; what a Sigstore
    /// bundle's `signedTimestamp` holds) over the envelope's signature bytes, from the timestamp authority the attestor is configured with; absent when none is.
    /// Unauthenticated until verified with that authority's chain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rfc3161_timestamps: Vec<String>,
}

/// `dev.countersign.attestation.verified.v1`: a TaskRun's results were verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "dev.countersign.attestation.verified.v1")]
pub struct AttestationVerified {
    /// The TaskRun.
    pub taskrun: TaskRunRef,
    /// What was verified.
    pub verdict: Verdict,
    /// The SPIFFE ID that signed the results; absent for `no_results`.
    pub spiffe_id: Option<String>,
    /// Lower-case hex SHA-256 of the signing SVID's leaf certificate DER; absent for `no_results`.
    pub svid_fingerprint: Option<String>,
    /// The verified results, by digest.
    pub subjects: Vec<ResultSubject>,
    /// The attestor's signed in-toto statement.
    pub attestation: SignedAttestation,
    /// When the attestor decided.
    pub attested_at: DateTime<Utc>,
}

/// `dev.countersign.attestation.rejected.v1`: a TaskRun's results failed verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "dev.countersign.attestation.rejected.v1")]
pub struct AttestationRejected {
    /// The TaskRun.
    pub taskrun: TaskRunRef,
    /// The first check that failed.
    pub reason: ReasonCode,
    /// What failed, for people.
    pub message: String,
    /// The step whose result set failed, when one did.
    pub step: Option<String>,
    /// The SPIFFE ID found in the SVID, when one was parsed.
    pub spiffe_id: Option<String>,
    /// The attestor's signed in-toto statement of the rejection.
    pub attestation: SignedAttestation,
    /// When the attestor decided.
    pub attested_at: DateTime<Utc>,
}

impl EventData for AttestationVerified {
    const TYPE: EventType = EventType::AttestationVerified;

    fn event_id(&self) -> String {
        format!("{}:attestation", self.taskrun.uid)
    }

    fn ce_subject(&self) -> String {
        ce_subject_of(&self.taskrun)
    }

    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
        subjects.for_taskrun(Self::TYPE, &self.taskrun)
    }
}

impl EventData for AttestationRejected {
    const TYPE: EventType = EventType::AttestationRejected;

    fn event_id(&self) -> String {
        format!("{}:attestation", self.taskrun.uid)
    }

    fn ce_subject(&self) -> String {
        ce_subject_of(&self.taskrun)
    }

    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
        subjects.for_taskrun(Self::TYPE, &self.taskrun)
    }
}

/// Which signing chain of an attestation a revoked CA issued.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SigningChain {
    /// The TaskRun's SVID, which signed the results.
    Results,
    /// The attestor's own SVID, which signed the attestation.
    Signer,
}

/// How SPIRE revoked a CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevocationKind {
    /// A bundle marks it tainted (`spire-server localauthority x509 taint`).
    Tainted,
    /// It left the bundle while still valid (`spire-server localauthority x509 revoke`).
    Removed,
}

/// `dev.countersign.attestation.revoked.v1`: a stored attestation no longer verifies, because a
/// CA that issued one of its signing chains was revoked after it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "dev.countersign.attestation.revoked.v1")]
pub struct AttestationRevoked {
    /// The TaskRun.
    pub taskrun: TaskRunRef,
    /// The revoked CA's trust domain.
    pub trust_domain: String,
    /// SHA-256 (hex) of the revoked CA certificate's DER.
    pub authority: String,
    /// How it was revoked.
    pub how: RevocationKind,
    /// The sequence number of the trust bundle that showed the revocation.
    pub sequence_number: u64,
    /// The attestation's signing chains that CA issued (one or both).
    pub chains: Vec<SigningChain>,
    /// The attestation revoked, as it was published.
    pub attestation: SignedAttestation,
    /// When the attestor decided the verdict now revoked.
    pub attested_at: DateTime<Utc>,
    /// When the revocation was found.
    pub revoked_at: DateTime<Utc>,
}

impl EventData for AttestationRevoked {
    const TYPE: EventType = EventType::AttestationRevoked;

    fn event_id(&self) -> String {
        format!("{}:revoked", self.taskrun.uid)
    }

    fn ce_subject(&self) -> String {
        ce_subject_of(&self.taskrun)
    }

    fn nats_subject(&self, subjects: &Subjects) -> Result<String, SubjectError> {
        subjects.for_taskrun(Self::TYPE, &self.taskrun)
    }
}

// === reading either type ===

impl AttestationEvent {
    /// The TaskRun it is about.
    pub fn taskrun(&self) -> &TaskRunRef {
        match self {
            AttestationEvent::Verified(verified) => &verified.taskrun,
            AttestationEvent::Rejected(rejected) => &rejected.taskrun,
            AttestationEvent::Revoked(revoked) => &revoked.taskrun,
        }
    }

    /// The signed attestation it carries.
    pub fn attestation(&self) -> &SignedAttestation {
        match self {
            AttestationEvent::Verified(verified) => &verified.attestation,
            AttestationEvent::Rejected(rejected) => &rejected.attestation,
            AttestationEvent::Revoked(revoked) => &revoked.attestation,
        }
    }

    /// The signed attestation, to add what comes after signing (a timestamp).
    pub fn attestation_mut(&mut self) -> &mut SignedAttestation {
        match self {
            AttestationEvent::Verified(verified) => &mut verified.attestation,
            AttestationEvent::Rejected(rejected) => &mut rejected.attestation,
            AttestationEvent::Revoked(revoked) => &mut revoked.attestation,
        }
    }

    /// When the attestor decided (for a revocation, the verdict it revokes).
    pub fn attested_at(&self) -> DateTime<Utc> {
        match self {
            AttestationEvent::Verified(verified) => verified.attested_at,
            AttestationEvent::Rejected(rejected) => rejected.attested_at,
            AttestationEvent::Revoked(revoked) => revoked.attested_at,
        }
    }

    /// Why it was rejected, when it was (a revocation is [`AttestationEvent::revocation`]).
    pub fn reason(&self) -> Option<ReasonCode> {
        match self {
            AttestationEvent::Verified(_) | AttestationEvent::Revoked(_) => None,
            AttestationEvent::Rejected(rejected) => Some(rejected.reason),
        }
    }

    /// The revocation, when this is one.
    pub fn revocation(&self) -> Option<&AttestationRevoked> {
        match self {
            AttestationEvent::Revoked(revoked) => Some(revoked),
            AttestationEvent::Verified(_) | AttestationEvent::Rejected(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_serialize_as_their_names() {
        for code in ReasonCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::from(code.as_str())
            );
        }
    }

    #[test]
    fn dsse_field_names_are_the_specs() {
        let envelope = DsseEnvelope {
            payload_type: "application/vnd.in-toto+json".into(),
            payload: "e30=".into(),
            signatures: vec![DsseSignature {
                keyid: "k".into(),
                sig: "c2ln".into(),
            }],
        };
        let json = serde_json::to_value(&envelope).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "payloadType": "application/vnd.in-toto+json",
                "payload": "e30=",
                "signatures": [{"keyid": "k", "sig": "c2ln"}]
            })
        );
    }
}
