//! Which attestation events a sink gets: the subjects its durable consumer filters on (so the
//! server does the filtering), and the same rule checked again on each event.
//!
//! The server does all the filtering: by kind, by namespace, or by both at once (one subject per
//! kind and namespace, from `Subjects::attestations_of_type_in_namespace`; they never overlap).
//! [`SinkFilter::matches`] checks the same rule again on each event, so a consumer whose filter
//! subjects were not yet updated still delivers nothing it should not (such an event is acked
//! and counted as `filtered`).

use std::collections::BTreeSet;

use countersign_events::{
    AttestationEvent, ConsumerSpec, Event, EventPayload, Family, SubjectError, Subjects,
};

use crate::config::{AttestationKind, FilterConfig};

/// A sink's filter, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkFilter {
    kinds: BTreeSet<AttestationKind>,
    /// `None`: every namespace.
    namespaces: Option<BTreeSet<String>>,
}

impl SinkFilter {
    /// The filter a sink's configuration describes (absent lists mean "all").
    pub fn new(config: &FilterConfig) -> SinkFilter {
        SinkFilter {
            kinds: config
                .kinds
                .as_deref()
                .unwrap_or(&AttestationKind::ALL)
                .iter()
                .copied()
                .collect(),
            namespaces: config
                .namespaces
                .as_ref()
                .map(|namespaces| namespaces.iter().cloned().collect()),
        }
    }

    /// Whether the sink gets `event`.
    pub fn matches(&self, event: &Event<AttestationEvent>) -> bool {
        let (kind, namespace) = match &event.data {
            AttestationEvent::Verified(verified) => {
                (AttestationKind::Verified, &verified.taskrun.namespace)
            }
            AttestationEvent::Rejected(rejected) => {
                (AttestationKind::Rejected, &rejected.taskrun.namespace)
            }
            AttestationEvent::Revoked(revoked) => {
                (AttestationKind::Revoked, &revoked.taskrun.namespace)
            }
        };
        debug_assert_eq!(kind.event_type(), event.data.event_type());
        self.kinds.contains(&kind)
            && self
                .namespaces
                .as_ref()
                .is_none_or(|namespaces| namespaces.contains(namespace))
    }

    /// The filter subjects of the sink's durable consumer: one per kind and namespace when both
    /// are narrowed, by namespace or by kind when only one is, else the whole attestation family.
    /// They never overlap.
    pub fn filter_subjects(&self, subjects: &Subjects) -> Result<Vec<String>, SubjectError> {
        let every_kind = self.kinds.len() == AttestationKind::ALL.len();
        if let Some(namespaces) = &self.namespaces {
            if every_kind {
                return namespaces
                    .iter()
                    .map(|namespace| subjects.attestations_in_namespace(namespace))
                    .collect();
            }
            return namespaces
                .iter()
                .flat_map(|namespace| {
                    self.kinds.iter().map(move |kind| {
                        subjects.attestations_of_type_in_namespace(kind.event_type(), namespace)
                    })
                })
                .collect();
        }
        if every_kind {
            return Ok(vec![subjects.family_events(Family::Attestation)]);
        }
        Ok(self
            .kinds
            .iter()
            .map(|kind| subjects.events_of_type(kind.event_type()))
            .collect())
    }

    /// The declaration of the sink's durable consumer: `relay-<sink>` on the attestation stream.
    pub fn consumer_spec(
        &self,
        subjects: &Subjects,
        sink_name: &str,
    ) -> Result<ConsumerSpec, SubjectError> {
        let relay = ConsumerSpec::relay(subjects);
        Ok(ConsumerSpec {
            name: format!("{}-{sink_name}", relay.name),
            stream: relay.stream,
            filter_subjects: self.filter_subjects(subjects)?,
            description: format!("delivers attestation events to the HTTP sink {sink_name}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use countersign_events::EventSource;
    use countersign_events::data::{
        AttestationRejected, AttestationRevoked, AttestationVerified, DsseEnvelope, ReasonCode,
        RevocationKind, SignedAttestation, SigningChain, TaskRunRef, Verdict,
    };

    use super::*;

    fn taskrun(namespace: &str) -> TaskRunRef {
        TaskRunRef {
            cluster: "prod".into(),
            namespace: namespace.into(),
            name: "build-1".into(),
            uid: format!("uid-{namespace}"),
        }
    }

    fn signed() -> SignedAttestation {
        SignedAttestation {
            envelope: DsseEnvelope {
                payload_type: "application/vnd.in-toto+json".into(),
                payload: "e30=".into(),
                signatures: Vec::new(),
            },
            certificates: Vec::new(),
            rfc3161_timestamps: Vec::new(),
        }
    }

    fn verified(namespace: &str) -> Event<AttestationEvent> {
        Event::new(
            &EventSource::service("attestor"),
            AttestationEvent::Verified(AttestationVerified {
                taskrun: taskrun(namespace),
                verdict: Verdict::NoResults,
                spiffe_id: None,
                svid_fingerprint: None,
                subjects: Vec::new(),
                attestation: signed(),
                attested_at: chrono::Utc::now(),
            }),
        )
    }

    fn rejected(namespace: &str) -> Event<AttestationEvent> {
        Event::new(
            &EventSource::service("attestor"),
            AttestationEvent::Rejected(AttestationRejected {
                taskrun: taskrun(namespace),
                reason: ReasonCode::SignatureInvalid,
                message: "bad signature".into(),
                step: None,
                spiffe_id: None,
                attestation: signed(),
                attested_at: chrono::Utc::now(),
            }),
        )
    }

    fn revoked(namespace: &str) -> Event<AttestationEvent> {
        Event::new(
            &EventSource::service("attestor"),
            AttestationEvent::Revoked(AttestationRevoked {
                taskrun: taskrun(namespace),
                trust_domain: "example.org".into(),
                authority: "ab".repeat(32),
                how: RevocationKind::Tainted,
                sequence_number: 4,
                chains: vec![SigningChain::Signer],
                attestation: signed(),
                attested_at: chrono::Utc::now(),
                revoked_at: chrono::Utc::now(),
            }),
        )
    }

    fn filter(kinds: Option<Vec<AttestationKind>>, namespaces: Option<&[&str]>) -> SinkFilter {
        SinkFilter::new(&FilterConfig {
            kinds,
            namespaces: namespaces.map(|list| list.iter().map(|n| (*n).to_owned()).collect()),
        })
    }

    #[test]
    fn the_default_takes_everything_on_one_subject() {
        let everything = filter(None, None);
        for event in [verified("a"), rejected("b"), revoked("c")] {
            assert!(everything.matches(&event));
        }
        let subjects = Subjects::default();
        assert_eq!(
            everything.filter_subjects(&subjects).unwrap(),
            vec![subjects.family_events(Family::Attestation)]
        );
        let spec = everything.consumer_spec(&subjects, "broker").unwrap();
        assert_eq!(spec.name, "relay-broker");
        assert_eq!(spec.stream, ConsumerSpec::relay(&subjects).stream);
    }

    #[test]
    fn kinds_filter_on_the_server_and_here() {
        let subjects = Subjects::default();
        let verified_only = filter(Some(vec![AttestationKind::Verified]), None);
        assert!(verified_only.matches(&verified("a")));
        assert!(!verified_only.matches(&rejected("a")));
        assert!(!verified_only.matches(&revoked("a")));
        let revoked_only = filter(Some(vec![AttestationKind::Revoked]), Some(&["a"]));
        assert!(revoked_only.matches(&revoked("a")));
        assert!(!revoked_only.matches(&rejected("a")));
        assert_eq!(
            revoked_only.filter_subjects(&subjects).unwrap(),
            vec![
                subjects
                    .attestations_of_type_in_namespace(
                        countersign_events::EventType::AttestationRevoked,
                        "a"
                    )
                    .unwrap()
            ]
        );
        assert_eq!(
            verified_only.filter_subjects(&subjects).unwrap(),
            vec![subjects.events_of_type(countersign_events::EventType::AttestationVerified)]
        );
    }

    #[test]
    fn kinds_and_namespaces_together_filter_on_the_server() {
        use countersign_events::EventType::AttestationRejected as Rejected;
        let subjects = Subjects::default();
        let combined = filter(Some(vec![AttestationKind::Rejected]), Some(&["a", "b"]));
        assert!(combined.matches(&rejected("a")));
        assert!(combined.matches(&rejected("b")));
        assert!(!combined.matches(&verified("a")), "wrong kind");
        assert!(!combined.matches(&rejected("c")), "wrong namespace");
        assert_eq!(
            combined.filter_subjects(&subjects).unwrap(),
            vec![
                subjects
                    .attestations_of_type_in_namespace(Rejected, "a")
                    .unwrap(),
                subjects
                    .attestations_of_type_in_namespace(Rejected, "b")
                    .unwrap(),
            ]
        );
    }

    #[test]
    fn namespaces_alone_filter_by_namespace() {
        let subjects = Subjects::default();
        let in_a = filter(None, Some(&["a"]));
        assert!(in_a.matches(&verified("a")));
        assert!(in_a.matches(&rejected("a")));
        assert!(!in_a.matches(&verified("b")));
        assert_eq!(
            in_a.filter_subjects(&subjects).unwrap(),
            vec![subjects.attestations_in_namespace("a").unwrap()]
        );
    }
}
