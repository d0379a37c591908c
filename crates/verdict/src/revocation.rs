//! What a CA revocation does to stored attestations: which of an attestation's signing chains a
//! revoked CA issued ([`revoked_chains`], read from the signing context the attestation signs,
//! `predicate.signing.resultsAuthority` and `signerAuthority`), and the
//! `attestation.revoked` event that says so ([`revocation_event`]).
//!
//! The attestor runs this for every stored attestation when the registrar announces a bundle
//! that revokes a CA (`{p}.trust.bundle-rotated` with `revokedAuthorities`); the event and the
//! `{uid}.revoked` key beside the attestation ([`crate::store`]) are what readers check.
//! An attestation made before the signing context named its CAs names none, so no revocation
//! reaches it here (`countersign verify --bundle-history` still refuses it, from the history).

use chrono::{DateTime, Utc};
use countersign_events::AttestationEvent;
use countersign_events::data::{AttestationRevoked, RevocationKind, SigningChain};
use countersign_identity::intoto::{Statement, TaskRunResultsPredicate};

use crate::attestation::AttestationEventExt as _;

/// One CA a recorded bundle revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedAuthority {
    /// Its trust domain.
    pub trust_domain: String,
    /// SHA-256 (hex) of its DER.
    pub authority: String,
    /// How it was revoked.
    pub how: RevocationKind,
    /// The bundle that shows it.
    pub sequence_number: u64,
}

/// Why an attestation's signing context could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SigningContextError {
    /// The envelope cannot be read.
    #[error("the attestation envelope cannot be read")]
    Envelope(#[source] crate::attestation::FromEventError),
    /// The payload is not our Statement.
    #[error("the attestation payload is not a TaskRun-results statement")]
    Statement(#[source] serde_json::Error),
}

/// The signing chains of `attestation` that `authority` (SHA-256 hex of a CA's DER) issued, by
/// the CAs its signed signing context names; empty when it names neither (or is itself a
/// revocation). The payload is read, not verified: the attestation comes from the store the
/// attestor wrote.
pub fn revoked_chains(
    attestation: &AttestationEvent,
    authority: &str,
) -> Result<Vec<SigningChain>, SigningContextError> {
    if attestation.revocation().is_some() {
        return Ok(Vec::new());
    }
    let signed = attestation
        .signed_attestation()
        .map_err(SigningContextError::Envelope)?;
    let statement: Statement<TaskRunResultsPredicate> =
        serde_json::from_slice(signed.envelope.unverified_payload())
            .map_err(SigningContextError::Statement)?;
    let Some(signing) = &statement.predicate().signing else {
        return Ok(Vec::new());
    };
    let mut chains = Vec::new();
    if signing.results_authority.as_deref() == Some(authority) {
        chains.push(SigningChain::Results);
    }
    if signing.signer_authority.as_deref() == Some(authority) {
        chains.push(SigningChain::Signer);
    }
    Ok(chains)
}

/// The `attestation.revoked` event of `attestation`, revoked by `revoked` through `chains`.
pub fn revocation_event(
    attestation: &AttestationEvent,
    revoked: &RevokedAuthority,
    chains: Vec<SigningChain>,
    revoked_at: DateTime<Utc>,
) -> AttestationRevoked {
    AttestationRevoked {
        taskrun: attestation.taskrun().clone(),
        trust_domain: revoked.trust_domain.clone(),
        authority: revoked.authority.clone(),
        how: revoked.how,
        sequence_number: revoked.sequence_number,
        chains,
        attestation: attestation.attestation().clone(),
        attested_at: attestation.attested_at(),
        revoked_at,
    }
}
