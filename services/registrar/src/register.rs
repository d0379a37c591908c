//! [`Registrar`]: registers the entries of a `scheduled` TaskRun pod and releases them when the
//! TaskRun is `finished` or `deleted`, in any order, across replicas and redeliveries.
//!
//! `scheduled` (span `register_taskrun`):
//! 1. Plan the pod's entry (checks the event: bad input is poison).
//! 2. Create the TaskRun's record as `active` with the pod pending (compare-and-set), unless a
//!    tombstone exists: then the TaskRun already ended, and nothing is registered.
//! 3. Ensure the node alias (a KV read when it is registered with enough lifetime; otherwise
//!    create or extend it and record it).
//! 4. Create the workload entry (batched; an existing similar entry is success).
//! 5. Publish `registered`, then mark the pod registered (compare-and-set). If the record became a
//!    tombstone meanwhile, delete the entry just created instead.
//!
//! `finished` / `deleted` (span `release_taskrun`): turn the record into a tombstone (from any
//! state, or create one), then delete every pod's workload entry by its deterministic id
//! (`NOT_FOUND` is success) and publish `released`.
//!
//! Errors map to the consumer's one ack rule through [`RegisterError::into_handler_error`]: SPIRE
//! or NATS unavailable is transient (nak with backoff, never acked); invalid input is poison
//! (dead letter with a code).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use countersign_events::data::{
    EntryKind, PodRef, ReleaseReason, TaskRunDeleted, TaskRunFinished, TaskRunRef, TaskRunScheduled,
};
use countersign_events::{
    Classify, Delivery, Event, Handler, HandlerError, LifecycleEvent, PublishError,
};
use countersign_runtime::error_chain;
use countersign_spire_api::{
    CreateOutcome, DeleteOutcome, Entry, ItemStatus, SpireServerClient, UpdateEntriesError,
    UpdateOutcome,
};
use futures::future::join_all;
use tracing::Instrument as _;

use crate::audit::Audit;
use crate::batch::{BatchError, EntryBatcher};
use crate::config::RegistrarConfig;
use crate::entries::{EntryPlanner, InvalidEvent, check_key_part};
use crate::metrics::{RegistrarMetrics, SpireMethod};
use crate::state::{
    Cas, Change, MAX_CAS_ATTEMPTS, NodeAliasRegistration, NodeRecord, PodRegistration, StateError,
    StateStore, TaskRunRecord,
};

/// What step 1 of a registration found.
enum Pending {
    /// The TaskRun already ended: register nothing.
    Ended,
    /// The pod is already registered.
    Registered,
    /// The pod to register (pending in the record).
    Pod(PodRegistration),
}

/// Why handling an event failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The event can never be registered.
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    /// The state could not be read or written.
    #[error("the registrar state")]
    State(#[from] StateError),
    /// A batched SPIRE call failed as a whole.
    #[error("calling the SPIRE server")]
    Spire(#[from] BatchError),
    /// Updating an entry failed as a whole.
    #[error("updating an entry")]
    Update(#[from] UpdateEntriesError),
    /// SPIRE refused the entry for good: its id is taken by a different entry, or it is invalid.
    #[error("SPIRE refused entry {entry_id}: {status}")]
    EntryRefused {
        entry_id: String,
        reason: RefusalReason,
        status: ItemStatus,
    },
    /// SPIRE failed on the entry (a datastore error): worth another try.
    #[error("SPIRE failed on entry {entry_id}: {status}")]
    EntryFailed {
        entry_id: String,
        status: ItemStatus,
    },
    /// The node's alias is being released by a reconciler; the pod waits until it is done.
    #[error("the node alias of {node} is being released")]
    NodeAliasReleasing { node: String },
    /// An audit event could not be published.
    #[error("publishing an audit event")]
    Audit(#[from] PublishError),
    /// Other writers kept changing the same record.
    #[error("{key} kept changing under {MAX_CAS_ATTEMPTS} compare-and-set attempts")]
    Contention { key: String },
}

/// Why SPIRE refused an entry for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The id is taken by an entry with another SPIFFE ID, parent or selectors.
    IdCollision,
    /// The entry is invalid.
    Invalid,
}

/// Whether a [`RegisterError`] may go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retrying later may succeed: nak with backoff.
    Transient,
    /// It will fail the same way forever: dead-letter with a code.
    Poison,
}

impl RegisterError {
    /// Whether the error may go away.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegisterError::Invalid(_) | RegisterError::EntryRefused { .. } => ErrorKind::Poison,
            RegisterError::State(error) if !error.is_transient() => ErrorKind::Poison,
            RegisterError::Audit(error) if !error.is_transient() => ErrorKind::Poison,
            // A call refused as a whole (PERMISSION_DENIED: the registrar is not an admin) is
            // not the event's fault: retry while an operator fixes the deployment.
            RegisterError::State(_)
            | RegisterError::Spire(_)
            | RegisterError::Update(_)
            | RegisterError::EntryFailed { .. }
            | RegisterError::NodeAliasReleasing { .. }
            | RegisterError::Audit(_)
            | RegisterError::Contention { .. } => ErrorKind::Transient,
        }
    }

    /// The dead-letter code of a poison error.
    pub fn code(&self) -> &'static str {
        match self {
            RegisterError::Invalid(invalid) => invalid.code(),
            RegisterError::EntryRefused {
                reason: RefusalReason::IdCollision,
                ..
            } => "entry_id_collision",
            RegisterError::EntryRefused {
                reason: RefusalReason::Invalid,
                ..
            } => "entry_invalid",
            RegisterError::State(_) => "state_unusable",
            RegisterError::Audit(_) => "audit_unpublishable",
            RegisterError::Spire(_)
            | RegisterError::Update(_)
            | RegisterError::EntryFailed { .. }
            | RegisterError::NodeAliasReleasing { .. }
            | RegisterError::Contention { .. } => "transient",
        }
    }

    /// Whether an operator must act (the call itself is refused, not just unavailable).
    fn needs_operator(&self) -> bool {
        match self {
            RegisterError::Spire(error) => !error.is_transient(),
            RegisterError::Update(error) => !error.is_transient(),
            _ => false,
        }
    }
}

impl Classify for RegisterError {
    fn poison_code(&self) -> Option<&'static str> {
        (self.kind() == ErrorKind::Poison).then(|| self.code())
    }
}

/// The registrar: planner, state, batcher, SPIRE client, audit and metrics. Cheap to clone;
/// clones share everything. Handles lifecycle events as a [`Handler`] and reconciles
/// (`reconcile` module).
#[derive(Debug, Clone)]
pub struct Registrar {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: Arc<RegistrarConfig>,
    pub(crate) planner: EntryPlanner,
    pub(crate) state: StateStore,
    pub(crate) batcher: EntryBatcher,
    pub(crate) spire: SpireServerClient,
    pub(crate) audit: Audit,
    pub(crate) metrics: RegistrarMetrics,
    /// This replica's id (for the reconciler lease).
    pub(crate) replica_id: String,
    /// Kept alive while the registrar runs: it rotates the SVID of the mTLS connection.
    pub(crate) _x509_source: Option<spiffe::X509Source>,
}

impl Registrar {
    /// A registrar over connected parts. The batcher's future is returned for the caller to
    /// spawn (as a tracked task); it ends once every clone of the registrar is dropped.
    pub fn new(
        config: Arc<RegistrarConfig>,
        planner: EntryPlanner,
        state: StateStore,
        spire: SpireServerClient,
        audit: Audit,
        metrics: RegistrarMetrics,
        x509_source: Option<spiffe::X509Source>,
    ) -> (Registrar, impl Future<Output = ()> + Send + 'static) {
        let (batcher, batcher_task) =
            EntryBatcher::new(spire.clone(), config.batch.clone(), metrics.clone());
        let registrar = Registrar {
            inner: Arc::new(Inner {
                config,
                planner,
                state,
                batcher,
                spire,
                audit,
                metrics,
                replica_id: uuid::Uuid::new_v4().to_string(),
                _x509_source: x509_source,
            }),
        };
        (registrar, batcher_task)
    }

    /// The metrics.
    pub fn metrics(&self) -> &RegistrarMetrics {
        &self.inner.metrics
    }

    /// The entry planner (ids, prefix, hint).
    pub fn planner(&self) -> &EntryPlanner {
        &self.inner.planner
    }

    /// Handles one lifecycle event; other types than `scheduled`, `finished` and `deleted` are
    /// ignored.
    pub async fn handle_event(&self, event: &LifecycleEvent) -> Result<(), RegisterError> {
        match event {
            LifecycleEvent::Scheduled(scheduled) => self.register_taskrun(scheduled).await,
            LifecycleEvent::Finished(TaskRunFinished { taskrun, pod, .. }) => {
                self.release_taskrun(taskrun, pod.as_ref(), ReleaseReason::Finished)
                    .await
            }
            LifecycleEvent::Deleted(TaskRunDeleted { taskrun, pod }) => {
                self.release_taskrun(taskrun, pod.as_ref(), ReleaseReason::Deleted)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Registers the entries of a scheduled TaskRun pod (see the module docs).
    pub async fn register_taskrun(
        &self,
        scheduled: &TaskRunScheduled,
    ) -> Result<(), RegisterError> {
        self.register_taskrun_in_span(scheduled, None).await
    }

    /// [`Registrar::register_taskrun`] of a pod scheduled at `scheduled_at` (the event's time),
    /// recording `countersign_registration_latency_seconds` when this call creates the entry.
    pub async fn register_taskrun_scheduled_at(
        &self,
        scheduled: &TaskRunScheduled,
        scheduled_at: DateTime<Utc>,
    ) -> Result<(), RegisterError> {
        self.register_taskrun_in_span(scheduled, Some(scheduled_at))
            .await
    }

    async fn register_taskrun_in_span(
        &self,
        scheduled: &TaskRunScheduled,
        scheduled_at: Option<DateTime<Utc>>,
    ) -> Result<(), RegisterError> {
        let span = tracing::info_span!(
            "register_taskrun",
            taskrun.namespace = %scheduled.taskrun.namespace,
            taskrun.name = %scheduled.taskrun.name,
            taskrun.uid = %scheduled.taskrun.uid,
            pod.uid = %scheduled.pod.uid,
            node = %scheduled.node_name,
        );
        self.register_taskrun_inner(scheduled, scheduled_at)
            .instrument(span)
            .await
    }

    async fn register_taskrun_inner(
        &self,
        scheduled: &TaskRunScheduled,
        scheduled_at: Option<DateTime<Utc>>,
    ) -> Result<(), RegisterError> {
        let inner = &self.inner;
        let uid = scheduled.taskrun.uid.as_str();
        let planned = inner.planner.plan_pod(scheduled, Utc::now())?;

        // 1. The record: pending, unless the TaskRun already ended or the pod is done.
        let pending = inner
            .state
            .modify_taskrun(uid, |current| match current.value {
                Some(TaskRunRecord::Tombstone { .. }) => Change::Keep(Pending::Ended),
                Some(TaskRunRecord::Active { taskrun, mut pods }) => {
                    match pods.iter().find(|pod| pod.pod_uid == planned.pod_uid) {
                        Some(pod) if pod.registered => Change::Keep(Pending::Registered),
                        // Pending: finish what an earlier attempt (or replica) started, with the
                        // same plan.
                        Some(pod) => Change::Keep(Pending::Pod(pod.clone())),
                        None => {
                            pods.push(planned.clone());
                            Change::Write(
                                TaskRunRecord::Active { taskrun, pods },
                                Pending::Pod(planned.clone()),
                            )
                        }
                    }
                }
                None => Change::Write(
                    TaskRunRecord::Active {
                        taskrun: scheduled.taskrun.clone(),
                        pods: vec![planned.clone()],
                    },
                    Pending::Pod(planned.clone()),
                ),
            })
            .await?;
        let pod = match pending {
            Pending::Ended => {
                tracing::debug!("the TaskRun already ended; registering nothing");
                return Ok(());
            }
            Pending::Registered => {
                tracing::debug!("the pod is already registered");
                return Ok(());
            }
            Pending::Pod(pod) => pod,
        };

        // 2. The node alias, then 3. the workload entry.
        self.ensure_node_alias(&scheduled.taskrun.cluster, &pod.node_name, pod.expires_at)
            .await?;
        let entry = inner.planner.workload_entry(&pod)?;
        let created = self.create_entry(entry, EntryKind::Workload).await?;
        if let Some(scheduled_at) = scheduled_at {
            inner.metrics.entry_created_for(scheduled_at, Utc::now());
        }
        tracing::debug!(entry.id = %pod.entry_id, created, "workload entry registered");

        // 4. Audit, then 5. mark the pod registered unless the TaskRun ended meanwhile.
        inner
            .audit
            .workload_registered(&scheduled.taskrun, &pod)
            .await?;
        let ended = inner
            .state
            .modify_taskrun(uid, |current| {
                let (taskrun, mut pods) = match current.value {
                    Some(TaskRunRecord::Active { taskrun, pods }) => (taskrun, pods),
                    Some(TaskRunRecord::Tombstone { reason, .. }) => {
                        return Change::Keep(Some(reason));
                    }
                    // The record vanished (purged by hand): write it back, registered.
                    None => (scheduled.taskrun.clone(), Vec::new()),
                };
                for existing in pods.iter_mut().filter(|p| p.pod_uid == pod.pod_uid) {
                    existing.registered = true;
                }
                if !pods.iter().any(|p| p.pod_uid == pod.pod_uid) {
                    let mut registered = pod.clone();
                    registered.registered = true;
                    pods.push(registered);
                }
                Change::Write(TaskRunRecord::Active { taskrun, pods }, None)
            })
            .await?;
        if let Some(reason) = ended {
            tracing::info!("the TaskRun ended while its pod was registered; releasing");
            self.release_pod(&scheduled.taskrun, &pod, reason, true)
                .await?;
        }
        Ok(())
    }

    /// Releases every entry of a TaskRun that finished or was deleted (see the module docs).
    pub async fn release_taskrun(
        &self,
        taskrun: &TaskRunRef,
        pod_hint: Option<&PodRef>,
        reason: ReleaseReason,
    ) -> Result<(), RegisterError> {
        let span = tracing::info_span!(
            "release_taskrun",
            taskrun.namespace = %taskrun.namespace,
            taskrun.name = %taskrun.name,
            taskrun.uid = %taskrun.uid,
            reason = ?reason,
        );
        self.release_taskrun_inner(taskrun, pod_hint, reason)
            .instrument(span)
            .await
    }

    async fn release_taskrun_inner(
        &self,
        taskrun: &TaskRunRef,
        pod_hint: Option<&PodRef>,
        reason: ReleaseReason,
    ) -> Result<(), RegisterError> {
        let inner = &self.inner;
        let uid = taskrun.uid.as_str();
        check_key_part("TaskRun UID", uid)?;
        let now = Utc::now();

        // 1. The tombstone, from any state.
        let (pods, ended_by_us, ended_reason, ended_at) = inner
            .state
            .modify_taskrun(uid, |current| match current.value {
                Some(TaskRunRecord::Tombstone {
                    pods,
                    reason: ended_reason,
                    ended_at,
                    ..
                }) => Change::Keep((pods, false, ended_reason, ended_at)),
                Some(TaskRunRecord::Active { taskrun, pods }) => Change::Write(
                    TaskRunRecord::Tombstone {
                        taskrun,
                        pods: pods.clone(),
                        reason,
                        ended_at: now,
                    },
                    (pods, true, reason, now),
                ),
                None => Change::Write(
                    TaskRunRecord::Tombstone {
                        taskrun: taskrun.clone(),
                        pods: Vec::new(),
                        reason,
                        ended_at: now,
                    },
                    (Vec::new(), true, reason, now),
                ),
            })
            .await?;

        // 2. Delete every pod's entry. A repeat within the stream's duplicate window publishes
        // `released` again (dropped as a duplicate), so a crash between the delete and the
        // publish loses nothing.
        let republish = ended_by_us || self.within_duplicate_window(ended_at);
        let releases = pods
            .iter()
            .map(|pod| self.release_pod(taskrun, pod, ended_reason, republish && pod.registered));
        for result in join_all(releases).await {
            result?;
        }
        // The event may name a pod the state never saw (its `scheduled` is still on the way, or
        // the state was lost): delete its entry by id too.
        if let Some(hint) = pod_hint
            && !pods.iter().any(|pod| pod.pod_uid == hint.uid)
            && let Ok(entry_id) = inner.planner.workload_entry_id(&hint.uid)
            && let DeleteOutcome::Deleted = self.delete_entry(&entry_id).await?
        {
            inner.metrics.released(EntryKind::Workload, ended_reason);
            tracing::info!(entry.id = %entry_id, "deleted a workload entry the state did not know");
        }
        Ok(())
    }

    fn within_duplicate_window(&self, ended_at: DateTime<Utc>) -> bool {
        let window = self.inner.config.bus.streams.registrations.duplicate_window;
        chrono::Duration::from_std(window).is_ok_and(|window| Utc::now() - ended_at < window)
    }

    /// Deletes a pod's workload entry; publishes `released` when it was deleted now, or when
    /// `publish_anyway` (the pod was registered, and this release is the first or may repeat a
    /// crashed one).
    pub(crate) async fn release_pod(
        &self,
        taskrun: &TaskRunRef,
        pod: &PodRegistration,
        reason: ReleaseReason,
        publish_anyway: bool,
    ) -> Result<(), RegisterError> {
        let outcome = self.delete_entry(&pod.entry_id).await?;
        let deleted = outcome == DeleteOutcome::Deleted;
        if deleted {
            self.inner.metrics.released(EntryKind::Workload, reason);
        }
        if deleted || publish_anyway {
            self.inner
                .audit
                .workload_released(taskrun, pod, reason)
                .await?;
        }
        Ok(())
    }

    /// Makes sure the node alias of `node` exists and lives until at least `needed`.
    pub(crate) async fn ensure_node_alias(
        &self,
        cluster: &str,
        node: &str,
        needed: DateTime<Utc>,
    ) -> Result<(), RegisterError> {
        let inner = &self.inner;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = inner.state.node(node).await?;
            let previous = match current.value {
                Some(NodeRecord::Registered { alias, .. }) if alias.expires_at >= needed => {
                    return Ok(());
                }
                Some(NodeRecord::Releasing { .. }) => {
                    return Err(RegisterError::NodeAliasReleasing {
                        node: node.to_owned(),
                    });
                }
                Some(NodeRecord::Registered { alias, .. }) => Some(alias),
                Some(NodeRecord::Released { .. }) | None => None,
            };
            let mut alias = inner.planner.plan_node_alias(cluster, node, needed)?;
            if let Some(previous) = previous {
                alias.cluster = previous.cluster;
            }
            self.put_node_alias(&alias).await?;
            inner.audit.node_alias_registered(&alias).await?;
            let record = NodeRecord::Registered {
                alias,
                since: Utc::now(),
            };
            match inner
                .state
                .write_node(node, &record, current.revision)
                .await?
            {
                Cas::Written(_) => return Ok(()),
                Cas::Conflict => continue,
            }
        }
        Err(contention(node))
    }

    /// Creates the node alias entry, or brings ours up to date (a longer expiry, or selectors
    /// changed by configuration). A similar entry under another id is left alone: the alias
    /// exists.
    pub(crate) async fn put_node_alias(
        &self,
        alias: &NodeAliasRegistration,
    ) -> Result<(), RegisterError> {
        let entry = self.inner.planner.node_alias_entry(alias)?;
        match self.inner.batcher.create(entry.clone()).await? {
            CreateOutcome::Created(_) => {
                self.inner.metrics.registered(EntryKind::NodeAlias);
                Ok(())
            }
            CreateOutcome::AlreadyExists(existing) => {
                if existing.id == entry.id && existing.expires_at < entry.expires_at {
                    self.update_entry(entry).await?;
                }
                Ok(())
            }
            // Our id with another key: our own alias from an earlier configuration.
            CreateOutcome::IdCollision(_) => self.update_entry(entry).await,
            CreateOutcome::Invalid(status) => Err(RegisterError::EntryRefused {
                entry_id: entry.id,
                reason: RefusalReason::Invalid,
                status,
            }),
            CreateOutcome::Failed(status) => Err(RegisterError::EntryFailed {
                entry_id: entry.id,
                status,
            }),
        }
    }

    async fn update_entry(&self, entry: Entry) -> Result<(), RegisterError> {
        let started = std::time::Instant::now();
        let result = self
            .inner
            .spire
            .batch_update_entries(std::slice::from_ref(&entry))
            .await;
        self.inner
            .metrics
            .call(SpireMethod::BatchUpdateEntry, started.elapsed());
        let outcomes = result.inspect_err(|error| {
            let code = match error {
                UpdateEntriesError::Call(call) => format!("{:?}", call.code()),
                _ => "Other".to_owned(),
            };
            self.inner
                .metrics
                .call_error(SpireMethod::BatchUpdateEntry, code);
        })?;
        match outcomes.into_iter().next() {
            Some(UpdateOutcome::Updated(_)) => Ok(()),
            Some(UpdateOutcome::Invalid(status)) => Err(RegisterError::EntryRefused {
                entry_id: entry.id,
                reason: RefusalReason::Invalid,
                status,
            }),
            // Deleted between the create and the update: the next attempt creates it.
            Some(UpdateOutcome::NotFound(status) | UpdateOutcome::Failed(status)) => {
                Err(RegisterError::EntryFailed {
                    entry_id: entry.id,
                    status,
                })
            }
            None => Err(RegisterError::EntryFailed {
                entry_id: entry.id,
                status: ItemStatus {
                    code: countersign_spire_api::Code::Unknown,
                    message: "no result".to_owned(),
                },
            }),
        }
    }

    /// Creates an entry through the batcher; returns whether it was created now (false: a
    /// similar entry was already there).
    pub(crate) async fn create_entry(
        &self,
        entry: Entry,
        kind: EntryKind,
    ) -> Result<bool, RegisterError> {
        match self.inner.batcher.create(entry.clone()).await? {
            CreateOutcome::Created(_) => {
                self.inner.metrics.registered(kind);
                Ok(true)
            }
            CreateOutcome::AlreadyExists(_) => Ok(false),
            CreateOutcome::IdCollision(status) => Err(RegisterError::EntryRefused {
                entry_id: entry.id,
                reason: RefusalReason::IdCollision,
                status,
            }),
            CreateOutcome::Invalid(status) => Err(RegisterError::EntryRefused {
                entry_id: entry.id,
                reason: RefusalReason::Invalid,
                status,
            }),
            CreateOutcome::Failed(status) => Err(RegisterError::EntryFailed {
                entry_id: entry.id,
                status,
            }),
        }
    }

    /// Deletes an entry through the batcher; `NOT_FOUND` is success.
    pub(crate) async fn delete_entry(
        &self,
        entry_id: &str,
    ) -> Result<DeleteOutcome, RegisterError> {
        match self.inner.batcher.delete(entry_id.to_owned()).await? {
            DeleteOutcome::Failed(status) => Err(RegisterError::EntryFailed {
                entry_id: entry_id.to_owned(),
                status,
            }),
            outcome => Ok(outcome),
        }
    }
}

fn contention(key: &str) -> RegisterError {
    RegisterError::Contention {
        key: key.to_owned(),
    }
}

impl Handler<LifecycleEvent> for Registrar {
    fn handle(
        &self,
        event: Event<LifecycleEvent>,
        _delivery: Delivery,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let registrar = self.clone();
        async move {
            let handled = match &event.data {
                LifecycleEvent::Scheduled(scheduled) => {
                    registrar
                        .register_taskrun_scheduled_at(scheduled, event.time)
                        .await
                }
                other => registrar.handle_event(other).await,
            };
            handled.map_err(|error| {
                if error.needs_operator() {
                    tracing::error!(error = %error_chain(&error), "the SPIRE server refused the registrar's call; check that the registrar is an admin");
                }
                error.into_handler_error()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use countersign_spire_api::Code;

    use super::*;

    #[test]
    fn invalid_input_is_poison_with_its_code_and_unavailability_is_transient() {
        let invalid = RegisterError::Invalid(InvalidEvent::SpiffeIdMismatch {
            in_event: "a".into(),
            expected: "b".into(),
        });
        assert_eq!(invalid.kind(), ErrorKind::Poison);
        match invalid.into_handler_error() {
            HandlerError::Poison { code, .. } => assert_eq!(code, "spiffe_id_mismatch"),
            other => panic!("expected poison, got {other:?}"),
        }

        let collision = RegisterError::EntryRefused {
            entry_id: "countersign.pod.x".into(),
            reason: RefusalReason::IdCollision,
            status: ItemStatus {
                code: Code::AlreadyExists,
                message: "conflict".into(),
            },
        };
        assert_eq!(collision.kind(), ErrorKind::Poison);
        assert_eq!(collision.code(), "entry_id_collision");

        for transient in [
            RegisterError::Spire(BatchError::Stopped),
            RegisterError::EntryFailed {
                entry_id: "x".into(),
                status: ItemStatus {
                    code: Code::Internal,
                    message: "datastore".into(),
                },
            },
            RegisterError::NodeAliasReleasing { node: "n".into() },
            RegisterError::Contention { key: "k".into() },
        ] {
            assert_eq!(transient.kind(), ErrorKind::Transient, "{transient:?}");
            assert!(transient.into_handler_error().is_transient());
        }
    }
}
