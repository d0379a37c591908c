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

use crate::attestation::{AttestationEventExt as _, StatementError};

/// The reason code of an attestation refused or rejected because a CA that issued one of its
/// signing chains was revoked: the gate's `rejected` record of a revoked attestation, and
/// `countersign verify`'s refusal of one (from an `attestation.revoked` event or the bundle
/// history).
pub const AUTHORITY_REVOKED: &str = "authority_revoked";

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

/// The first CA of `revoked` that issued a signing chain of `attestation`, with the chains it
/// issued, by the CAs its signed signing context names; `None` when it names none of them (or
/// is itself a revocation). The payload is read once, not verified: the attestation comes from
/// the store the attestor wrote.
pub fn revoked_chains<'a>(
    attestation: &AttestationEvent,
    revoked: &'a [RevokedAuthority],
) -> Result<Option<(&'a RevokedAuthority, Vec<SigningChain>)>, StatementError> {
    if attestation.revocation().is_some() {
        return Ok(None);
    }
    let statement = attestation.statement()?;
    let Some(signing) = &statement.predicate().signing else {
        return Ok(None);
    };
    Ok(revoked.iter().find_map(|authority| {
        let issued =
            |named: &Option<String>| named.as_deref() == Some(authority.authority.as_str());
        let chains: Vec<SigningChain> = [
            (&signing.results_authority, SigningChain::Results),
            (&signing.signer_authority, SigningChain::Signer),
        ]
        .into_iter()
        .filter(|(named, _)| issued(named))
        .map(|(_, chain)| chain)
        .collect();
        (!chains.is_empty()).then_some((authority, chains))
    }))
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
