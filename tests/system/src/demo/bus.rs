//! What the demo sees happen: every message on `{p}.>` (a plain core-NATS subscription, as any
//! subscriber would make), decoded into typed events and printed as one readable line each, plus
//! what the relay delivered to the demo's sink; all kept in an [`Observer`] that the scenario
//! waits on, under a timeout, instead of sleeping.

use std::sync::Arc;
use std::time::Duration;

use countersign_events::data::{
    EntryKind, GateDenial, Outcome, ReleaseReason, StepRecord, TerminationEntry, Verdict,
};
use countersign_events::deadletter::{CODE, CONSUMER, REASON};
use countersign_events::{AnyEvent, DecodeLimits, Event, ParsedSubject, Subjects};
use countersign_test_support::wait::WaitError;
use futures::StreamExt as _;
use tokio::sync::watch;

use super::report::{Origin, Reporter};

/// A CloudEvent the relay delivered to the demo's sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkDelivery {
    /// `ce-id`.
    pub id: String,
    /// `ce-type`.
    pub event_type: String,
    /// `ce-subject`.
    pub subject: String,
}

/// A dead letter seen on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterSeen {
    pub subject: String,
    pub consumer: String,
    pub reason: String,
    pub code: String,
}

/// Everything seen so far, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub events: Vec<Arc<Event<AnyEvent>>>,
    pub deliveries: Vec<SinkDelivery>,
    pub dead_letters: Vec<DeadLetterSeen>,
}

/// The shared record of what was seen, and the way to wait for something in it.
#[derive(Debug, Clone)]
pub struct Observer {
    sender: Arc<watch::Sender<Observed>>,
}

impl Default for Observer {
    fn default() -> Observer {
        Observer::new()
    }
}

impl Observer {
    pub fn new() -> Observer {
        Observer {
            sender: Arc::new(watch::Sender::new(Observed::default())),
        }
    }

    /// Records an event.
    pub fn record_event(&self, event: Event<AnyEvent>) {
        self.sender
            .send_modify(|observed| observed.events.push(Arc::new(event)));
    }

    /// Records a sink delivery.
    pub fn record_delivery(&self, delivery: SinkDelivery) {
        self.sender
            .send_modify(|observed| observed.deliveries.push(delivery));
    }

    fn record_dead_letter(&self, dead_letter: DeadLetterSeen) {
        self.sender
            .send_modify(|observed| observed.dead_letters.push(dead_letter));
    }

    /// A copy of everything seen so far.
    pub fn snapshot(&self) -> Observed {
        self.sender.borrow().clone()
    }

    /// Waits until `find` finds something in what was seen, or fails after `timeout` naming
    /// `what` was awaited.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut find: impl FnMut(&Observed) -> Option<T>,
    ) -> Result<T, WaitError> {
        let mut receiver = self.sender.subscribe();
        let mut found = None;
        let waited = tokio::time::timeout(
            timeout,
            receiver.wait_for(|observed| {
                found = find(observed);
                found.is_some()
            }),
        )
        .await;
        match (waited, found) {
            (Ok(Ok(_)), Some(value)) => Ok(value),
            _ => Err(WaitError {
                what: what.to_owned(),
                timeout,
            }),
        }
    }
}

/// Follows `subscriber` (a subscription to `{p}.>`) until it ends: records and prints each
/// message.
pub async fn follow_bus(
    mut subscriber: async_nats::Subscriber,
    subjects: Subjects,
    observer: Observer,
    reporter: Reporter,
) {
    let limits = DecodeLimits::default();
    while let Some(message) = subscriber.next().await {
        let subject = message.subject.to_string();
        if let Ok(ParsedSubject::DeadLetter { consumer }) = subjects.parse(&subject) {
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|headers| countersign_events::binding::find_header(headers, name))
                    .map(|value| value.as_str().to_owned())
                    .unwrap_or_default()
            };
            let dead_letter = DeadLetterSeen {
                subject: subject.clone(),
                consumer,
                reason: header(REASON),
                code: header(CODE),
            };
            let consumer_header = header(CONSUMER);
            reporter.line(
                Origin::Bus,
                format!(
                    "DEAD LETTER from {} ({}): reason {}, code {}",
                    if consumer_header.is_empty() {
                        &dead_letter.consumer
                    } else {
                        &consumer_header
                    },
                    dead_letter.subject,
                    dead_letter.reason,
                    dead_letter.code
                ),
            );
            observer.record_dead_letter(dead_letter);
            continue;
        }
        match countersign_events::decode::<AnyEvent>(
            message.headers.as_ref(),
            &message.payload,
            &limits,
        ) {
            Ok(event) => {
                reporter.line(Origin::Bus, describe(&event));
                observer.record_event(event);
            }
            Err(error) => reporter.line(
                Origin::Bus,
                format!("{subject}: not a Countersign event ({error})"),
            ),
        }
    }
}

/// One readable line for an event: its family and transition, then what matters about it.
pub fn describe(event: &Event<AnyEvent>) -> String {
    let label = format!(
        "{}.{}",
        event.event_type.family().as_str(),
        event.event_type.transition()
    );
    let detail = match &event.data {
        AnyEvent::TaskRunCreated(data) => format!(
            "{}/{} (uid {})",
            data.taskrun.namespace, data.taskrun.name, data.taskrun.uid
        ),
        AnyEvent::TaskRunScheduled(data) => format!(
            "{}/{}: pod {} on node {}, identity {}",
            data.taskrun.namespace,
            data.taskrun.name,
            data.pod.name,
            data.node_name,
            data.spiffe_id
        ),
        AnyEvent::StepCompleted(data) => format!(
            "{}/{}: step {} {}",
            data.taskrun.namespace,
            data.taskrun.name,
            data.step.name,
            describe_step(&data.step)
        ),
        AnyEvent::TaskRunFinished(data) => {
            let signing = data
                .results
                .iter()
                .filter(|result| is_signing_key(&result.name))
                .count();
            format!(
                "{}/{}: {}; status.results: {} result(s) and {signing} signing entries; {} step(s)",
                data.taskrun.namespace,
                data.taskrun.name,
                outcome_label(data.outcome),
                data.results.len() - signing,
                data.steps.len()
            )
        }
        AnyEvent::TaskRunDeleted(data) => {
            format!("{}/{}", data.taskrun.namespace, data.taskrun.name)
        }
        AnyEvent::EntryRegistered(data) => format!(
            "{} entry {}: {} (parent {}; selectors {})",
            kind_label(data.entry.kind),
            data.entry.entry_id,
            data.entry.spiffe_id,
            data.entry.parent_id,
            data.entry.selectors.join(", ")
        ),
        AnyEvent::EntryReleased(data) => format!(
            "{} entry {}: {} ({})",
            kind_label(data.entry.kind),
            data.entry.entry_id,
            data.entry.spiffe_id,
            release_label(data.release_reason)
        ),
        AnyEvent::AttestationVerified(data) => {
            let names: Vec<&str> = data
                .subjects
                .iter()
                .map(|subject| subject.name.as_str())
                .collect();
            match data.verdict {
                Verdict::Verified => format!(
                    "{}/{}: VERIFIED [{}], signed by {}",
                    data.taskrun.namespace,
                    data.taskrun.name,
                    names.join(", "),
                    data.spiffe_id.as_deref().unwrap_or("?")
                ),
                Verdict::NoResults => format!(
                    "{}/{}: no results to verify",
                    data.taskrun.namespace, data.taskrun.name
                ),
            }
        }
        AnyEvent::AttestationRejected(data) => format!(
            "{}/{}: REJECTED, reason {}{}: {}",
            data.taskrun.namespace,
            data.taskrun.name,
            data.reason.as_str(),
            data.step
                .as_deref()
                .map(|step| format!(" (step {step})"))
                .unwrap_or_default(),
            data.message
        ),
        AnyEvent::ExportStored(data) => format!(
            "{}/{}: Sigstore bundle {} and {} VSA(s)",
            data.taskrun.namespace,
            data.taskrun.name,
            data.bundle_key,
            data.vsas.len()
        ),
        AnyEvent::GateAllowed(data) => format!(
            "{}/{} ({:?}) admitted",
            data.namespace, data.name, data.kind
        ),
        AnyEvent::GateDenied(data) => gate_denials(&data.namespace, &data.name, &data.denials),
        AnyEvent::GateWarned(data) => gate_denials(&data.namespace, &data.name, &data.denials),
        AnyEvent::TrustBundleRotated(data) => format!(
            "{} bundle {} ({} CA(s), {} revoked)",
            data.trust_domain,
            data.sequence_number,
            data.authorities.len(),
            data.revoked_authorities.len()
        ),
        AnyEvent::AttestationRevoked(data) => format!(
            "{}/{}: REVOKED, CA {} of {} revoked in bundle {}",
            data.taskrun.namespace,
            data.taskrun.name,
            data.authority,
            data.trust_domain,
            data.sequence_number
        ),
    };
    format!("{label:<24} {detail}")
}

/// A gate decision that denied (or, in `warn`, would have denied): the object and the codes.
fn gate_denials(namespace: &str, name: &str, denials: &[GateDenial]) -> String {
    let codes: Vec<&str> = denials.iter().map(|denial| denial.code.as_str()).collect();
    format!("{namespace}/{name}: {}", codes.join(", "))
}

/// Whether a termination-message key is signing material rather than a result.
pub fn is_signing_key(key: &str) -> bool {
    key == "SVID" || key == "RESULT_MANIFEST" || key.ends_with(".sig")
}

fn describe_step(step: &StepRecord) -> String {
    let results: Vec<&str> = step
        .results
        .iter()
        .filter(|entry| entry.r#type == 1 && !is_signing_key(&entry.key))
        .map(|entry| entry.key.as_str())
        .collect();
    let signed = step
        .results
        .iter()
        .any(|entry: &TerminationEntry| entry.key == "SVID" && entry.r#type == 1);
    format!(
        "terminated (exit {}): results [{}], {}",
        step.exit_code,
        results.join(", "),
        if signed { "signed" } else { "not signed" }
    )
}

fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::Cancelled => "cancelled",
        Outcome::TimedOut => "timed out",
    }
}

fn kind_label(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Workload => "workload",
        EntryKind::NodeAlias => "node alias",
    }
}

fn release_label(reason: ReleaseReason) -> &'static str {
    match reason {
        ReleaseReason::Finished => "the TaskRun finished",
        ReleaseReason::Deleted => "the TaskRun was deleted",
        ReleaseReason::Orphan => "orphan",
        ReleaseReason::NodeIdle => "no pod on the node any more",
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use countersign_events::EventSource;
    use countersign_events::data::{PodRef, StepCompleted, TaskRunRef};

    use super::*;

    fn taskrun() -> TaskRunRef {
        TaskRunRef {
            cluster: "demo".into(),
            namespace: "default".into(),
            name: "build".into(),
            uid: "u-1".into(),
        }
    }

    fn entry(key: &str) -> TerminationEntry {
        TerminationEntry {
            key: key.into(),
            value: "v".into(),
            r#type: 1,
        }
    }

    #[test]
    fn a_step_line_names_its_results_and_whether_they_were_signed() {
        let step = StepRecord {
            name: "clone".into(),
            container: "step-clone".into(),
            exit_code: 0,
            started_at: None,
            finished_at: None,
            results: vec![
                entry("commit"),
                entry("SVID"),
                entry("commit.sig"),
                entry("RESULT_MANIFEST"),
                entry("RESULT_MANIFEST.sig"),
            ],
        };
        let event = Event::new(
            &EventSource::service("watcher"),
            AnyEvent::StepCompleted(StepCompleted {
                taskrun: taskrun(),
                taskrun_created_at: Utc::now(),
                pod: PodRef {
                    name: "build-pod".into(),
                    uid: "p-1".into(),
                },
                spiffe_id: "spiffe://example.org/ns/default/taskrun/build".into(),
                step,
            }),
        );
        let line = describe(&event);
        assert!(
            line.starts_with("taskrun.step-completed   default/build"),
            "{line}"
        );
        assert!(line.ends_with("results [commit], signed"), "{line}");
    }

    #[tokio::test]
    async fn waiting_ends_when_the_record_has_what_is_awaited_and_times_out_otherwise() {
        let observer = Observer::new();
        let waiting = {
            let observer = observer.clone();
            tokio::spawn(async move {
                observer
                    .wait_for("a delivery", Duration::from_secs(30), |observed| {
                        observed.deliveries.first().map(|d| d.id.clone())
                    })
                    .await
            })
        };
        observer.record_delivery(SinkDelivery {
            id: "u-1:attestation".into(),
            event_type: "t".into(),
            subject: "s".into(),
        });
        assert_eq!(waiting.await.unwrap().unwrap(), "u-1:attestation");

        let error = observer
            .wait_for("nothing", Duration::from_millis(50), |observed| {
                observed.dead_letters.first().cloned()
            })
            .await
            .unwrap_err();
        assert_eq!(error.what, "nothing");
    }
}
