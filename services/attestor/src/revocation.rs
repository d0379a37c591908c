//! Re-verification on revocation: the attestor owns the attestation store, so it consumes the
//! registrar's `{p}.trust.bundle-rotated.>` events (durable consumer `attestor-revocations` on
//! `{P}_TRUST`) and, for each CA an event names as revoked (tainted, or removed while still
//! valid), finds the stored attestations one of whose signing chains that CA issued (a scan of
//! the attestations bucket's keys, each attestation read once; the CAs are those its signed
//! signing context names, `countersign_verdict::revocation`).
//!
//! Each such attestation is revoked once: its `attestation.revoked` event is published (id
//! `{uid}:revoked`, so the stream drops a repeat within its duplicate window), then recorded
//! create-if-absent under `{uid}.revoked` beside it. An attestation whose revocation is already
//! recorded is skipped, so a redelivered or replayed bundle event publishes nothing again. The
//! bundle event is acked only after every revocation it causes is recorded; a failure naks it
//! and the next delivery resumes where the records stop.

use chrono::Utc;
use countersign_events::data::{RevocationKind, TrustBundleRotated};
use countersign_events::{
    AttestationEvent, Classify, Delivery, Event, HandlerError, PublishError, Publisher,
};
use countersign_runtime::error_chain;
use countersign_verdict::revocation::{RevokedAuthority, revocation_event, revoked_chains};
use countersign_verdict::store::{AttestationStore, StoreError};

use crate::metrics::AttestorMetrics;

/// Why a bundle event's revocations could not all be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The attestation store failed.
    #[error("the attestation store")]
    Store(#[from] StoreError),
    /// A revocation event was not acknowledged.
    #[error("publishing an attestation.revoked event")]
    Publish(#[from] PublishError),
}

impl RevokeError {
    /// Whether a later delivery may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RevokeError::Store(error) => error.is_transient(),
            RevokeError::Publish(error) => error.is_transient(),
        }
    }
}

impl Classify for RevokeError {
    fn poison_code(&self) -> Option<&'static str> {
        (!self.is_transient()).then_some("revocation_failed")
    }
}

/// Revokes stored attestations (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Revoker {
    store: AttestationStore,
    publisher: Publisher,
    metrics: AttestorMetrics,
}

/// The CAs `event` revokes, with how.
pub fn revoked_authorities(event: &TrustBundleRotated) -> Vec<RevokedAuthority> {
    event
        .revoked_authorities
        .iter()
        .map(|authority| RevokedAuthority {
            trust_domain: event.trust_domain.clone(),
            authority: authority.clone(),
            // Still in the bundle means tainted there; gone means removed.
            how: if event
                .authorities
                .iter()
                .any(|present| &present.sha256 == authority)
            {
                RevocationKind::Tainted
            } else {
                RevocationKind::Removed
            },
            sequence_number: event.sequence_number,
        })
        .collect()
}

impl Revoker {
    /// A revoker over `store`, publishing as the attestor.
    pub fn new(store: AttestationStore, publisher: Publisher, metrics: AttestorMetrics) -> Revoker {
        Revoker {
            store,
            publisher,
            metrics,
        }
    }

    /// Handles one bundle-rotated event.
    #[tracing::instrument(name = "revoke_attestations", skip_all, fields(ce_id = %event.id))]
    pub async fn handle(
        &self,
        event: Event<TrustBundleRotated>,
        _delivery: Delivery,
    ) -> Result<(), HandlerError> {
        let revoked = revoked_authorities(&event.data);
        if revoked.is_empty() {
            return Ok(());
        }
        let revoked_count = self
            .revoke_under(&revoked)
            .await
            .map_err(RevokeError::into_handler_error)?;
        tracing::info!(
            trust_domain = %event.data.trust_domain,
            sequence_number = event.data.sequence_number,
            authorities = revoked.len(),
            revoked = revoked_count,
            "re-evaluated the stored attestations after a CA revocation"
        );
        Ok(())
    }

    /// Revokes every stored attestation a CA of `revoked` issued a signing chain of; returns how
    /// many it revoked now.
    pub async fn revoke_under(&self, revoked: &[RevokedAuthority]) -> Result<usize, RevokeError> {
        let mut count = 0;
        for key in self.store.unrevoked_attestation_keys().await? {
            let attestation = match self.store.get_at(&key).await {
                Ok(Some(attestation)) => attestation,
                Ok(None) => continue,
                Err(error) if error.is_transient() => return Err(error.into()),
                Err(error) => {
                    self.metrics.revocation_unreadable();
                    tracing::warn!(%key, error = %error_chain(&error), "a stored attestation is unreadable; not re-evaluated");
                    continue;
                }
            };
            if self.revoke_one(&attestation, revoked).await? {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Revokes `attestation` if a CA of `revoked` issued one of its chains and it is not revoked
    /// yet; whether it did now.
    async fn revoke_one(
        &self,
        attestation: &Event<AttestationEvent>,
        revoked: &[RevokedAuthority],
    ) -> Result<bool, RevokeError> {
        let uid = &attestation.data.taskrun().uid;
        let (authority, chains) = match revoked_chains(&attestation.data, revoked) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(false),
            Err(error) => {
                self.metrics.revocation_unreadable();
                tracing::warn!(%uid, error = %error_chain(&error), "a stored attestation's signing context is unreadable; not re-evaluated");
                return Ok(false);
            }
        };
        // Another replica may have revoked it since the scan listed the keys.
        if self.store.revocation(uid).await?.is_some() {
            return Ok(false);
        }
        let data = AttestationEvent::Revoked(revocation_event(
            &attestation.data,
            authority,
            chains,
            Utc::now(),
        ));
        let event = self.publisher.event(data);
        self.publisher.publish(&event).await?;
        self.store.record_revocation(uid, &event).await?;
        self.metrics.attestation_revoked();
        tracing::warn!(
            %uid,
            namespace = %attestation.data.taskrun().namespace,
            name = %attestation.data.taskrun().name,
            authority = %authority.authority,
            how = ?authority.how,
            "revoked an attestation: a CA that issued its signing chain was revoked"
        );
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use countersign_events::data::BundleAuthority;

    #[test]
    fn a_revoked_ca_still_in_the_bundle_is_tainted_and_one_gone_is_removed() {
        let event = TrustBundleRotated {
            trust_domain: "example.org".into(),
            sequence_number: 7,
            bundle_digest: "d".into(),
            authorities: vec![BundleAuthority {
                sha256: "aa".into(),
                tainted: true,
            }],
            previous_sequence_number: Some(6),
            revoked_authorities: vec!["aa".into(), "bb".into()],
            first_seen: Utc::now(),
        };
        let revoked = revoked_authorities(&event);
        assert_eq!(revoked.len(), 2);
        assert_eq!(revoked[0].how, RevocationKind::Tainted);
        assert_eq!(revoked[1].how, RevocationKind::Removed);
        assert!(
            revoked
                .iter()
                .all(|authority| authority.sequence_number == 7)
        );
        assert!(
            revoked_authorities(&TrustBundleRotated {
                revoked_authorities: Vec::new(),
                ..event
            })
            .is_empty()
        );
    }
}
