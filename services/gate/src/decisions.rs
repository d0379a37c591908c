//! Decision events: every admission the gate checked (not the skipped ones) is published as
//! `{p}.gate.{allowed|denied|warned}.{cluster}.{namespace}.{name}` on the bus, into the
//! `{PREFIX}_ATTESTATIONS` stream next to the verdicts it enforces.
//!
//! They are an audit trail, never on the answer's path: the webhook hands each one to a bounded
//! queue with a non-blocking `try_send` and answers at once; one task publishes from the queue
//! (awaiting each PubAck). A full queue (the bus slow or away) drops the event, and a publish that
//! fails is not retried: both are counted (`countersign_gate_decision_events_total{outcome}`).

use std::sync::Arc;

use chrono::Utc;
use countersign_events::data::{
    AdmittedKind, GateAllowed, GateDenial, GateDenied, GateModeSnapshot, GateWarned,
};
use countersign_events::{GateDecisionEvent, Publisher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::GateMetrics;
use crate::webhook::Outcome;

/// How many decisions may wait to be published before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 4096;

/// One checked admission, as the webhook saw it.
#[derive(Debug, Clone)]
pub struct CheckedAdmission {
    /// What was checked.
    pub kind: AdmittedKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name (the request's UID when it has none yet).
    pub name: String,
    /// The AdmissionReview request's UID.
    pub request_uid: String,
    /// The namespace's mode.
    pub mode: GateModeSnapshot,
    /// Why it failed the rule (empty when admitted).
    pub denials: Vec<GateDenial>,
}

/// Where the webhook sends its decisions: a bounded queue, or nowhere (no bus).
#[derive(Debug, Clone)]
pub struct DecisionEvents {
    sender: Option<mpsc::Sender<GateDecisionEvent>>,
    cluster: Arc<str>,
    metrics: GateMetrics,
}

impl DecisionEvents {
    /// Decisions go nowhere (tests of the webhook alone).
    pub fn disabled(metrics: GateMetrics) -> DecisionEvents {
        DecisionEvents {
            sender: None,
            cluster: Arc::from(""),
            metrics,
        }
    }

    /// A queue of `capacity` decisions about objects of `cluster`, and its receiving end for
    /// [`publish_decisions`].
    pub fn channel(
        cluster: &str,
        capacity: usize,
        metrics: GateMetrics,
    ) -> (DecisionEvents, mpsc::Receiver<GateDecisionEvent>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (
            DecisionEvents {
                sender: Some(sender),
                cluster: Arc::from(cluster),
                metrics,
            },
            receiver,
        )
    }

    /// Queues the event of one decision without waiting; `Skipped` publishes nothing. A full or
    /// closed queue drops it (counted).
    pub fn record(&self, outcome: Outcome, admission: CheckedAdmission) {
        let Some(sender) = &self.sender else {
            return;
        };
        let CheckedAdmission {
            kind,
            namespace,
            name,
            request_uid,
            mode,
            denials,
        } = admission;
        let cluster = self.cluster.to_string();
        let decided_at = Utc::now();
        let event = match outcome {
            Outcome::Skipped => return,
            Outcome::Admitted => GateDecisionEvent::Allowed(GateAllowed {
                cluster,
                kind,
                namespace,
                name,
                request_uid,
                mode,
                denials,
                decided_at,
            }),
            Outcome::Denied => GateDecisionEvent::Denied(GateDenied {
                cluster,
                kind,
                namespace,
                name,
                request_uid,
                mode,
                denials,
                decided_at,
            }),
            Outcome::Warned => GateDecisionEvent::Warned(GateWarned {
                cluster,
                kind,
                namespace,
                name,
                request_uid,
                mode,
                denials,
                decided_at,
            }),
        };
        if sender.try_send(event).is_err() {
            self.metrics.decision_event("dropped");
        }
    }
}

/// Publishes the queued decisions until `token` is cancelled.
pub async fn publish_decisions(
    mut queue: mpsc::Receiver<GateDecisionEvent>,
    publisher: Publisher,
    metrics: GateMetrics,
    token: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            () = token.cancelled() => break,
            event = queue.recv() => match event {
                Some(event) => event,
                None => break,
            },
        };
        match publisher.publish_data(event).await {
            Ok(_) => metrics.decision_event("published"),
            Err(error) => {
                metrics.decision_event("failed");
                tracing::debug!(%error, "publishing a gate decision");
            }
        }
    }
}
