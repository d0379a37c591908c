//! Signed attestations: a DSSE envelope around a TaskRun-results Statement, with the signer's
//! certificate chain attached, and their offline verification.
//!
//! JSON: `{"envelope": <DSSE envelope>, "certificates": "<PEM chain, leaf first>"}`. Anyone who
//! holds the trust bundle can check one offline with [`AttestationVerifier::verify`], which reads
//! top to bottom:
//!
//! 1. the certificates parse; the leaf is an X509-SVID (one SPIFFE ID, leaf profile);
//! 2. the signer's SPIFFE ID is allowed by the [`SignerPolicy`] (which cannot be empty);
//! 3. the leaf chains to the bundle of its trust domain (intermediates from the attachment);
//! 4. the DSSE signature verifies with the leaf's key;
//! 5. the payload is an in-toto Statement v1 with our predicate type and a well-formed
//!    predicate;
//! 6. the leaf was valid at the verification time the caller chose ([`AttestationTime`]).
//!
//! Attestor SVIDs live about an hour, so an attestation checked later than that must be checked
//! at the time it claims to have been made ([`AttestationTime::ClaimedVerificationTime`], the
//! predicate's `times.verified`). That claim is authenticated by the signature, but whoever held
//! the key could have backdated it; without a timestamp authority this is the usual trade-off.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::{Sha256Digest, SigningFailed};
use crate::dsse::{DsseVerifyError, Envelope, IN_TOTO_PAYLOAD_TYPE};
use crate::intoto::{
    STATEMENT_TYPE, Statement, TASKRUN_RESULTS_PREDICATE_TYPE, TaskRunResultsPredicate,
};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::{
    BundleError, ChainError, SigningSvid, SvidError, SvidLeaf, TrustBundleSet, ValidityError,
    pem_to_ders,
};

/// A DSSE-signed Statement and the signer's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedAttestation {
    /// The envelope.
    pub envelope: Envelope,
    /// PEM certificates, leaf first.
    pub certificates: String,
}

/// Why an attestation could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum AttestationSignError {
    /// The statement did not serialise.
    #[error("statement does not serialise")]
    Serialize(#[source] serde_json::Error),
    /// The key failed.
    #[error(transparent)]
    Signing(#[from] SigningFailed),
}

impl SignedAttestation {
    /// Serialises `statement`, signs it in a DSSE envelope with `svid` and attaches its chain.
    pub fn sign(
        statement: &Statement<TaskRunResultsPredicate>,
        svid: &SigningSvid,
    ) -> Result<Self, AttestationSignError> {
        let payload = serde_json::to_vec(statement).map_err(AttestationSignError::Serialize)?;
        Ok(Self {
            envelope: Envelope::sign(IN_TOTO_PAYLOAD_TYPE, payload, svid)?,
            certificates: svid.chain_pem(),
        })
    }

    /// SHA-256 of the (signed) payload: a stable identifier of the attestation's content.
    pub fn payload_digest(&self) -> Sha256Digest {
        Sha256Digest::of(self.envelope.unverified_payload())
    }
}

// === SignerPolicy ===

/// Which SPIFFE IDs may sign attestations. Never empty: there is no "any signer" policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerPolicy {
    allowed: Vec<SpiffeId>,
}

/// A policy with no allowed signer was asked for.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("a signer policy must allow at least one SPIFFE ID")]
pub struct EmptySignerPolicy;

impl SignerPolicy {
    /// Exactly this signer.
    pub fn exact(id: SpiffeId) -> Self {
        Self { allowed: vec![id] }
    }

    /// Any of these signers; refuses an empty list.
    pub fn any_of(ids: impl IntoIterator<Item = SpiffeId>) -> Result<Self, EmptySignerPolicy> {
        let allowed: Vec<SpiffeId> = ids.into_iter().collect();
        if allowed.is_empty() {
            return Err(EmptySignerPolicy);
        }
        Ok(Self { allowed })
    }

    /// Whether `id` may sign.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        self.allowed.contains(id)
    }

    /// The allowed IDs.
    pub fn allowed(&self) -> &[SpiffeId] {
        &self.allowed
    }
}

/// The time at which the signer's SVID must have been valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestationTime {
    /// A time the caller supplies (e.g. now, or when the event was received).
    At(DateTime<Utc>),
    /// The predicate's `times.verified`, as signed by the attestor.
    ClaimedVerificationTime,
}

// === AttestationVerifier ===

/// Why an attestation was rejected.
#[derive(Debug, thiserror::Error)]
pub enum AttestationVerifyError {
    /// The attached certificates do not parse, or there are none.
    #[error("attached certificates do not parse")]
    Certificates(#[source] BundleError),
    /// The leaf is not an X509-SVID.
    #[error("signer certificate is not an X509-SVID")]
    SignerSvidInvalid(#[source] SvidError),
    /// The signer is not allowed by the policy.
    #[error("signer {found} is not allowed")]
    SignerNotAllowed {
        /// The signer's SPIFFE ID.
        found: SpiffeId,
    },
    /// No bundle for the signer's trust domain.
    #[error("no trust bundle for trust domain {trust_domain}")]
    TrustDomainUnknown {
        /// The signer's trust domain.
        trust_domain: TrustDomain,
    },
    /// The leaf does not chain to the bundle.
    #[error("signer certificate does not chain to the trust bundle")]
    ChainInvalid(#[source] ChainError),
    /// The DSSE signature does not verify.
    #[error("envelope signature invalid")]
    SignatureInvalid(#[source] DsseVerifyError),
    /// The payload type is not in-toto's.
    #[error("payload type {found:?} is not {IN_TOTO_PAYLOAD_TYPE}")]
    WrongPayloadType {
        /// What the envelope says.
        found: String,
    },
    /// The payload is not an in-toto Statement v1.
    #[error("payload is not an in-toto Statement v1")]
    NotAStatement(#[source] Option<serde_json::Error>),
    /// The predicate type is not ours.
    #[error("predicate type {found:?} is not {TASKRUN_RESULTS_PREDICATE_TYPE}")]
    WrongPredicateType {
        /// What the statement says.
        found: String,
    },
    /// The predicate does not match our schema.
    #[error("predicate is malformed")]
    PredicateInvalid(#[source] serde_json::Error),
    /// The signer's SVID was not valid at the verification time.
    #[error("signer certificate not valid at the verification time")]
    NotValidAtTime(#[source] ValidityError),
}

/// An attestation that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedAttestation {
    statement: Statement<TaskRunResultsPredicate>,
    signer: SpiffeId,
    signer_fingerprint: Sha256Digest,
    payload_digest: Sha256Digest,
}

impl VerifiedAttestation {
    /// The statement.
    pub fn statement(&self) -> &Statement<TaskRunResultsPredicate> {
        &self.statement
    }

    /// The predicate.
    pub fn predicate(&self) -> &TaskRunResultsPredicate {
        self.statement.predicate()
    }

    /// Who signed.
    pub fn signer(&self) -> &SpiffeId {
        &self.signer
    }

    /// SHA-256 of the signer's leaf.
    pub fn signer_fingerprint(&self) -> Sha256Digest {
        self.signer_fingerprint
    }

    /// SHA-256 of the payload.
    pub fn payload_digest(&self) -> Sha256Digest {
        self.payload_digest
    }
}

/// Verifies [`SignedAttestation`]s against trust bundles and a signer policy.
#[derive(Debug, Clone, Copy)]
pub struct AttestationVerifier<'a> {
    bundles: &'a TrustBundleSet,
    signers: &'a SignerPolicy,
}

impl<'a> AttestationVerifier<'a> {
    /// A verifier trusting `bundles` and accepting only `signers`.
    pub fn new(bundles: &'a TrustBundleSet, signers: &'a SignerPolicy) -> Self {
        Self { bundles, signers }
    }

    /// Runs the checks of the module docs in order.
    pub fn verify(
        &self,
        attestation: &SignedAttestation,
        time: AttestationTime,
    ) -> Result<VerifiedAttestation, AttestationVerifyError> {
        // 1. Certificates and the signer's SVID.
        let mut certificates = pem_to_ders(&attestation.certificates)
            .map_err(AttestationVerifyError::Certificates)?
            .into_iter();
        let leaf_der = certificates
            .next()
            .ok_or(AttestationVerifyError::Certificates(BundleError::Empty))?;
        let intermediates: Vec<Vec<u8>> = certificates.collect();
        let leaf =
            SvidLeaf::from_der(&leaf_der).map_err(AttestationVerifyError::SignerSvidInvalid)?;
        leaf.check_profile()
            .map_err(AttestationVerifyError::SignerSvidInvalid)?;

        // 2. The signer is allowed.
        if !self.signers.allows(leaf.spiffe_id()) {
            return Err(AttestationVerifyError::SignerNotAllowed {
                found: leaf.spiffe_id().clone(),
            });
        }

        // 3. The chain (at a time inside the leaf's validity; step 6 checks the time itself).
        let trust_domain = leaf.spiffe_id().trust_domain();
        if self.bundles.authorities(trust_domain).is_none() {
            return Err(AttestationVerifyError::TrustDomainUnknown {
                trust_domain: trust_domain.clone(),
            });
        }
        let chain_time = match time {
            AttestationTime::At(at) => at,
            AttestationTime::ClaimedVerificationTime => leaf.not_before(),
        }
        .clamp(leaf.not_before(), leaf.not_after());
        self.bundles
            .verify_chain(&leaf, &intermediates, chain_time)
            .map_err(AttestationVerifyError::ChainInvalid)?;

        // 4. The envelope signature.
        let payload = attestation
            .envelope
            .verify(leaf.public_key())
            .map_err(AttestationVerifyError::SignatureInvalid)?;

        // 5. An in-toto Statement v1 with our predicate.
        if attestation.envelope.payload_type() != IN_TOTO_PAYLOAD_TYPE {
            return Err(AttestationVerifyError::WrongPayloadType {
                found: attestation.envelope.payload_type().to_owned(),
            });
        }
        let generic: Statement<serde_json::Value> = serde_json::from_slice(payload)
            .map_err(|error| AttestationVerifyError::NotAStatement(Some(error)))?;
        if generic.statement_type() != STATEMENT_TYPE || generic.subjects().is_empty() {
            return Err(AttestationVerifyError::NotAStatement(None));
        }
        if generic.predicate_type() != TASKRUN_RESULTS_PREDICATE_TYPE {
            return Err(AttestationVerifyError::WrongPredicateType {
                found: generic.predicate_type().to_owned(),
            });
        }
        let statement: Statement<TaskRunResultsPredicate> =
            serde_json::from_slice(payload).map_err(AttestationVerifyError::PredicateInvalid)?;

        // 6. The signer's SVID was valid at the verification time.
        let at = match time {
            AttestationTime::At(at) => at,
            AttestationTime::ClaimedVerificationTime => statement.predicate().times.verified,
        };
        leaf.check_valid_at(at, chrono::TimeDelta::zero())
            .map_err(AttestationVerifyError::NotValidAtTime)?;

        Ok(VerifiedAttestation {
            signer: leaf.spiffe_id().clone(),
            signer_fingerprint: leaf.fingerprint(),
            payload_digest: Sha256Digest::of(payload),
            statement,
        })
    }
}
