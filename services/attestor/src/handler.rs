//! What the attestor does with each event of its durable consumer.
//!
//! * `step-completed`: unless the TaskRun already has an attestation or the step a verdict,
//!   check the step's signed set with the trust bundle current now and record the verdict in
//!   the step-verdicts bucket (first writer wins).
//! * `finished`: unless the TaskRun already has an attestation, take each step's recorded
//!   verdict (checking now any step not recorded, or recorded over other entries), decide the
//!   TaskRun's verdict (`countersign_verdict::decide`), sign it (`countersign_verdict::attestation`) and store it with
//!   create-if-absent (a loser uses the stored one). Then point the name index at it, publish it
//!   as `{uid}:attestation` (deduplicated by JetStream; when it was already stored, only if the
//!   stream does not hold it yet) and, when enabled, annotate the TaskRun.
//!
//! Failures map onto the one ack rule: no SVID or bundle yet, NATS or KV unavailable, a failed
//! patch, no verified timestamp from a configured timestamp authority are transient (nak,
//! retried); an event that contradicts itself (a SPIFFE ID that is not
//! its TaskRun's) or an unreadable stored record is poison (dead letter).

use std::sync::Arc;
use std::time::Instant;

use chrono::{TimeDelta, Utc};
use countersign_events::binding::percent_encode_value;
use countersign_events::data::{Oversized, StepCompleted, TaskRunFinished, TaskRunRef};
use countersign_events::{
    AttestationEvent, Classify, Delivery, Event, EventPayload, HandlerError, LifecycleEvent,
    PublishError, Publisher, StreamKind, Subjects,
};
use countersign_identity::attestation::AttestationSignError;
use countersign_identity::spiffe_id::{
    SpiffeId, TrustDomain, parse_taskrun_spiffe_id, taskrun_spiffe_id,
};
use countersign_identity::tekton::{Freshness, ReasonCode, ResultsPolicy, ResultsVerifier};
use countersign_runtime::error_chain;
use tracing::Instrument as _;

use crate::annotate::{AnnotateError, Annotator};
use crate::latency::latest_finish;
use countersign_verdict::attestation::{
    AttestationEventExt as _, AttestationFacts, attest_in_context, envelope_digest,
};
use countersign_verdict::decide::{Decision, RejectedDecision, decide, merged_results};
use countersign_verdict::export::{ExportError, build_export};
use countersign_verdict::export_store::{ExportStore, ManifestCreated};
use countersign_verdict::steps::{
    StepInput, StepVerdict, entries_digest, task_run_entries, verify_step,
};
use countersign_verdict::store::{
    ATTESTATIONS_BUCKET, AttestationStore, Created, INDEX_BUCKET, IndexEntry, IndexUpdate,
    StoreError,
};

use crate::material::{Material, MaterialError, MaterialWatch};
use crate::metrics::AttestorMetrics;
use crate::store::{STEP_VERDICTS_BUCKET, StepRecorded, StepStore};
use crate::timestamp::{TimestampFailure, Timestamper};

/// Why an event could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The event contradicts itself (poison).
    #[error("malformed event: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// No usable SVID or bundle (transient).
    #[error(transparent)]
    Material(#[from] MaterialError),
    /// A bucket operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The attestation could not be signed (transient).
    #[error("signing the attestation")]
    Sign(#[from] AttestationSignError),
    /// The attestation event could not be published.
    #[error("publishing the attestation")]
    Publish(#[from] PublishError),
    /// The attestation stream could not be read.
    #[error("reading the attestation stream")]
    Stream(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The TaskRun could not be annotated (transient).
    #[error(transparent)]
    Annotate(#[from] AnnotateError),
    /// The attestation could not be exported as a Sigstore bundle and VSAs.
    #[error("exporting the attestation")]
    Export(#[from] ExportError),
    /// No verified timestamp from the configured timestamp authority (transient).
    #[error("timestamping the attestation")]
    Timestamp(#[from] TimestampFailure),
}

impl AttestError {
    fn malformed(reason: impl Into<String>) -> AttestError {
        AttestError::Malformed {
            reason: reason.into(),
        }
    }
}

impl Classify for AttestError {
    fn poison_code(&self) -> Option<&'static str> {
        match self {
            AttestError::Malformed { .. } => Some("malformed_event"),
            AttestError::Store(error) if !error.is_transient() => Some("unusable_record"),
            AttestError::Publish(error) if !error.is_transient() => Some("unpublishable"),
            AttestError::Annotate(AnnotateError::Forbidden { .. }) => Some("annotation_forbidden"),
            AttestError::Annotate(error) if !error.is_transient() => Some("annotator_unusable"),
            AttestError::Export(error) if !error.is_transient() => Some("unexportable"),
            _ => None,
        }
    }
}

/// What the attestor is made of.
#[derive(Debug)]
pub struct AttestorParts {
    /// Publishes attestation events (source `/countersign/attestor`).
    pub publisher: Publisher,
    /// The subject names (to find a published attestation).
    pub subjects: Subjects,
    /// The JetStream context.
    pub jetstream: async_nats::jetstream::Context,
    /// Attestations and the name index.
    pub attestations: AttestationStore,
    /// The attestations as Sigstore bundles and VSAs.
    pub exports: ExportStore,
    /// Step verdicts.
    pub steps: StepStore,
    /// The current SVID and bundles.
    pub material: MaterialWatch,
    /// The trust domain of TaskRun identities when an event names none.
    pub trust_domain: TrustDomain,
    /// The clock-skew allowance of the validity checks.
    pub clock_skew: std::time::Duration,
    /// The TaskRun annotator, when enabled.
    pub annotator: Option<Annotator>,
    /// The timestamp authority's client, when `[timestamp]` names one.
    pub timestamper: Option<Timestamper>,
    /// Metrics.
    pub metrics: AttestorMetrics,
}

/// The attestor's handler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Attestor {
    inner: Arc<AttestorParts>,
}

impl Attestor {
    /// An attestor from its parts.
    pub fn new(parts: AttestorParts) -> Attestor {
        Attestor {
            inner: Arc::new(parts),
        }
    }

    /// Handles one lifecycle event (the consumer only delivers `step-completed` and `finished`;
    /// anything else is acknowledged and ignored).
    pub async fn handle(
        &self,
        event: Event<LifecycleEvent>,
        _delivery: Delivery,
    ) -> Result<(), HandlerError> {
        let result = match event.data {
            LifecycleEvent::StepCompleted(step) => {
                let span = tracing::info_span!(
                    "verify_step",
                    taskrun = %format_args!("{}/{}", step.taskrun.namespace, step.taskrun.name),
                    uid = %step.taskrun.uid,
                    step = %step.step.name,
                );
                self.on_step_completed(step).instrument(span).await
            }
            LifecycleEvent::Finished(finished) => {
                let span = tracing::info_span!(
                    "attest_taskrun",
                    taskrun = %format_args!("{}/{}", finished.taskrun.namespace, finished.taskrun.name),
                    uid = %finished.taskrun.uid,
                );
                self.on_finished(finished, event.time)
                    .instrument(span)
                    .await
            }
            other => {
                tracing::debug!(event_type = %other.event_type(), "not an attestor event; ignored");
                Ok(())
            }
        };
        result.map_err(AttestError::into_handler_error)
    }

    /// The TaskRun's expected SPIFFE ID: the one the event names (which must be this TaskRun's,
    /// in any trust domain), else the TaskRun's ID in the configured trust domain.
    fn expected_id(
        &self,
        taskrun: &TaskRunRef,
        named: Option<&str>,
    ) -> Result<SpiffeId, AttestError> {
        match named {
            Some(text) => {
                let id = SpiffeId::new(text).map_err(|error| {
                    AttestError::malformed(format!("spiffeId {text:?} is not a SPIFFE ID: {error}"))
                })?;
                match parse_taskrun_spiffe_id(&id) {
                    Some((namespace, name))
                        if namespace == taskrun.namespace && name == taskrun.name =>
                    {
                        Ok(id)
                    }
                    _ => Err(AttestError::malformed(format!(
                        "spiffeId {text} is not the identity of TaskRun {}/{}",
                        taskrun.namespace, taskrun.name
                    ))),
                }
            }
            None => taskrun_spiffe_id(&self.inner.trust_domain, &taskrun.namespace, &taskrun.name)
                .map_err(|error| AttestError::malformed(error_chain(&error))),
        }
    }

    fn policy(
        &self,
        taskrun: &TaskRunRef,
        named: Option<&str>,
        created_at: chrono::DateTime<Utc>,
    ) -> Result<ResultsPolicy, AttestError> {
        let skew = TimeDelta::from_std(self.inner.clock_skew).unwrap_or(TimeDelta::seconds(5));
        Ok(ResultsPolicy::new(
            self.expected_id(taskrun, named)?,
            Freshness::IssuedAfterTaskRunCreated(created_at),
        )
        .with_clock_skew(skew))
    }

    async fn on_step_completed(&self, step: StepCompleted) -> Result<(), AttestError> {
        let parts = &*self.inner;
        let policy = self.policy(
            &step.taskrun,
            Some(step.spiffe_id.as_str()),
            step.taskrun_created_at,
        )?;
        let uid = step.taskrun.uid.as_str();
        if parts.attestations.get(uid).await?.is_some() {
            tracing::debug!("the TaskRun is already attested");
            return Ok(());
        }
        if parts
            .steps
            .get(uid, &step.pod.uid, &step.step.name)
            .await?
            .is_some()
        {
            tracing::debug!("the step already has a verdict");
            return Ok(());
        }
        let material = parts.material.current()?;
        let entries = task_run_entries(&step.step.results);
        let verdict = verify_step(
            &ResultsVerifier::new(&material.bundles, &policy),
            StepInput {
                name: &step.step.name,
                entries: &entries,
                finished_at: step.step.finished_at,
            },
            Utc::now(),
        );
        match parts.steps.record(uid, &step.pod.uid, &verdict).await? {
            StepRecorded::Stored => {
                parts.metrics.step_verdict(
                    verdict.verdict().as_str(),
                    verdict.reason().map(|reason| reason.as_str()),
                );
                tracing::info!(
                    verdict = verdict.verdict().as_str(),
                    reason = verdict.reason().map(|reason| reason.as_str()),
                    "step verdict recorded"
                );
            }
            StepRecorded::AlreadyRecorded(_) => {
                parts.metrics.kv_conflicts(STEP_VERDICTS_BUCKET, 1);
            }
        }
        Ok(())
    }

    async fn on_finished(
        &self,
        finished: TaskRunFinished,
        observed_at: chrono::DateTime<Utc>,
    ) -> Result<(), AttestError> {
        let started = Instant::now();
        let parts = &*self.inner;
        let policy = self.policy(
            &finished.taskrun,
            finished.spiffe_id.as_deref(),
            finished.taskrun_created_at,
        )?;
        let uid = finished.taskrun.uid.as_str();
        let (event, fresh) = match parts.attestations.get(uid).await? {
            Some(existing) => (existing, false),
            None => {
                let material = parts.material.current()?;
                let decided_at = Utc::now();
                let decision = self
                    .taskrun_decision(&finished, &policy, &material, decided_at)
                    .await?;
                let mut data = attest_in_context(
                    &decision,
                    AttestationFacts {
                        taskrun: &finished.taskrun,
                        created: finished.taskrun_created_at,
                        finished: finished.completed_at,
                        decided_at,
                        current_bundle_digest: &material.bundle_digest,
                    },
                    &material.bundles,
                    &material.svid,
                )?;
                // Before it is stored: an attestation is never kept or published without the
                // timestamp a configured TSA owes it.
                if let Some(timestamper) = &parts.timestamper {
                    timestamper.stamp(&mut data).await?;
                }
                let event = Event::observed_at(parts.publisher.source(), decided_at, data);
                match parts.attestations.create(uid, &event).await? {
                    Created::Stored => {
                        parts.metrics.verdict(
                            decision.verdict().as_str(),
                            decision.reason().map(|reason| reason.as_str()),
                        );
                        log_decision(&decision);
                        (event, true)
                    }
                    Created::AlreadyExisted(existing) => {
                        parts.metrics.kv_conflicts(ATTESTATIONS_BUCKET, 1);
                        tracing::debug!("another replica attested first; using its attestation");
                        (*existing, false)
                    }
                }
            }
        };

        let update = parts
            .attestations
            .record_latest(
                &finished.taskrun.namespace,
                &finished.taskrun.name,
                &IndexEntry {
                    uid: uid.to_owned(),
                    cluster: finished.taskrun.cluster.clone(),
                    created_at: finished.taskrun_created_at,
                },
            )
            .await?;
        let (IndexUpdate::Updated { conflicts } | IndexUpdate::Kept { conflicts }) = update;
        parts.metrics.kv_conflicts(INDEX_BUCKET, conflicts);

        self.publish_once(&event, fresh).await?;
        if let (true, Some(completed_at)) = (fresh, finished.completed_at) {
            parts
                .metrics
                .attestation_published(latest_finish(completed_at, observed_at), Utc::now());
        }
        // Received → published, as documented: the exports and the annotation come after.
        parts.metrics.verification_took(started.elapsed());
        self.export(&event, &finished).await?;

        if let Some(annotator) = &parts.annotator {
            let digest = envelope_digest(&event.data.attestation().envelope);
            annotator
                .annotate(
                    &finished.taskrun.namespace,
                    &finished.taskrun.name,
                    uid,
                    event.data.verdict().as_str(),
                    &digest.to_hex(),
                )
                .await?;
        }
        Ok(())
    }

    /// Each step's verdict (recorded, or checked now), then the TaskRun's.
    async fn taskrun_decision(
        &self,
        finished: &TaskRunFinished,
        policy: &ResultsPolicy,
        material: &Material,
        decided_at: chrono::DateTime<Utc>,
    ) -> Result<Decision, AttestError> {
        if let Some(oversized) = &finished.oversized {
            return Ok(Decision::Rejected(payload_too_large(oversized)));
        }
        let merged = match merged_results(&finished.results) {
            Ok(merged) => merged,
            Err(rejected) => return Ok(Decision::Rejected(*rejected)),
        };
        let verifier = ResultsVerifier::new(&material.bundles, policy);
        let mut verdicts: Vec<StepVerdict> = Vec::with_capacity(finished.steps.len());
        for step in &finished.steps {
            let entries = task_run_entries(&step.results);
            let recorded = match (&finished.pod, entries.is_empty()) {
                (Some(pod), false) => {
                    self.inner
                        .steps
                        .get(&finished.taskrun.uid, &pod.uid, &step.name)
                        .await?
                }
                _ => None,
            };
            let verdict = match recorded {
                Some(recorded) if recorded.entries_digest == entries_digest(&entries) => recorded,
                _ => verify_step(
                    &verifier,
                    StepInput {
                        name: &step.name,
                        entries: &entries,
                        finished_at: step.finished_at,
                    },
                    decided_at,
                ),
            };
            verdicts.push(verdict);
        }
        Ok(decide(
            &verdicts,
            &merged,
            &finished.declared_results,
            policy.freshness(),
        ))
    }

    /// Publishes the attestation: at once when we just stored it (JetStream drops a duplicate
    /// id), otherwise only when the stream does not hold it yet.
    async fn publish_once(
        &self,
        event: &Event<AttestationEvent>,
        fresh: bool,
    ) -> Result<(), AttestError> {
        let parts = &*self.inner;
        if !fresh && self.already_published(event).await? {
            tracing::debug!("the attestation is already published");
            return Ok(());
        }
        let published = parts.publisher.publish(event).await?;
        tracing::debug!(
            stream_sequence = published.sequence,
            duplicate = published.duplicate,
            "attestation published"
        );
        Ok(())
    }

    /// Stores the attestation's Sigstore bundle and VSAs (unless stored already) and announces
    /// them on `{p}.export.stored.…` (deduplicated by its id `{uid}:export`).
    async fn export(
        &self,
        attestation: &Event<AttestationEvent>,
        finished: &TaskRunFinished,
    ) -> Result<(), AttestError> {
        let parts = &*self.inner;
        let uid = finished.taskrun.uid.as_str();
        let event = match parts.exports.manifest(uid).await? {
            Some(existing) => existing,
            None => {
                let material = parts.material.current()?;
                let built = build_export(attestation, &finished.results, &material.svid)?;
                for refused in &built.artifacts.refused {
                    tracing::info!(
                        result = %refused.result,
                        reason = %refused.reason,
                        "artifact type hint refused; no VSA for it"
                    );
                }
                let (results_key, results_bundle) = built.results_bundle;
                parts
                    .exports
                    .put_bundle(&results_key, results_bundle.to_json())
                    .await?;
                for (key, mut bundle) in built.vsa_bundles {
                    // Before it is stored, as the attestation's own: a VSA is never kept
                    // without the timestamp a configured TSA owes it.
                    if let Some(timestamper) = &parts.timestamper {
                        let token = timestamper.token(bundle.signature_bytes()).await?;
                        bundle = bundle
                            .with_timestamps(vec![token])
                            .map_err(ExportError::from)?;
                    }
                    parts.exports.put_bundle(&key, bundle.to_json()).await?;
                }
                let event = Event::observed_at(
                    parts.publisher.source(),
                    attestation.data.attested_at(),
                    built.event,
                );
                match parts.exports.create_manifest(uid, &event).await? {
                    ManifestCreated::Stored => {
                        tracing::debug!(vsas = event.data.vsas.len(), "attestation exported");
                        event
                    }
                    ManifestCreated::AlreadyExisted(existing) => *existing,
                }
            }
        };
        parts.publisher.publish(&event).await?;
        Ok(())
    }

    async fn already_published(
        &self,
        event: &Event<AttestationEvent>,
    ) -> Result<bool, AttestError> {
        let parts = &*self.inner;
        let subject = event
            .data
            .nats_subject(&parts.subjects)
            .map_err(|error| AttestError::Stream(Box::new(error)))?;
        let stream = parts
            .jetstream
            .get_stream_no_info(parts.subjects.stream_name(StreamKind::Attestations))
            .await
            .map_err(|error| AttestError::Stream(Box::new(error)))?;
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => {
                let id = percent_encode_value(&event.id);
                Ok(message
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .is_some_and(|value| value.as_str() == id))
            }
            Err(error)
                if error.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(false)
            }
            Err(error) => Err(AttestError::Stream(Box::new(error))),
        }
    }
}

/// The verdict on a `finished` event the watcher trimmed to fit the bus: its results never
/// reached us, so nothing can be verified and the TaskRun is rejected (fail closed).
fn payload_too_large(oversized: &Oversized) -> RejectedDecision {
    RejectedDecision {
        reason: ReasonCode::PayloadTooLarge,
        message: format!(
            "the finished event ({} bytes) is over the bus's max payload ({} bytes); its results were not carried",
            oversized.bytes, oversized.limit
        ),
        step: None,
        spiffe_id: None,
        svid_fingerprint: None,
        trust_bundle_digest: None,
        checks: Vec::new(),
    }
}

fn log_decision(decision: &Decision) {
    match decision {
        Decision::Rejected(rejected) => tracing::info!(
            verdict = decision.verdict().as_str(),
            reason = rejected.reason.as_str(),
            step = rejected.step.as_deref(),
            message = %rejected.message,
            "TaskRun attested"
        ),
        Decision::Verified(verified) => tracing::info!(
            verdict = decision.verdict().as_str(),
            results = verified.results.len(),
            spiffe_id = %verified.signer.spiffe_id,
            "TaskRun attested"
        ),
        Decision::NoResults => {
            tracing::info!(verdict = decision.verdict().as_str(), "TaskRun attested")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_events_are_poison_and_missing_material_is_transient() {
        assert!(
            !AttestError::malformed("x")
                .into_handler_error()
                .is_transient()
        );
        assert!(
            AttestError::Material(MaterialError::NotYet)
                .into_handler_error()
                .is_transient()
        );
        assert_eq!(
            AttestError::malformed("x").poison_code(),
            Some("malformed_event")
        );
    }
}
