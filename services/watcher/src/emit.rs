//! Publishing derived transitions exactly once as far as subscribers can tell: skip what the
//! [`TransitionLog`] records, publish the rest in lifecycle order (each waits for its PubAck, with
//! the deterministic event id as `Nats-Msg-Id`), then record them. A TaskRun seen for the first
//! time is recorded (namespace, name, pod; nothing published yet) before its first event goes
//! out, so a crash between a PubAck and the record cannot make the watcher forget a TaskRun whose
//! events subscribers have seen.
//!
//! Both sources (the Kubernetes watch and the CloudEvents ingress) go through one [`Emitter`],
//! which serializes the work on each TaskRun (a lock per UID), so the two never interleave the
//! transitions of one TaskRun. Once `finished` is published, earlier-stage transitions that were
//! never observed before it (a pod seen only late) are not published after it: the bus carries a
//! TaskRun's transitions in lifecycle order. After `deleted`, nothing is published for the UID.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use countersign_events::data::TaskRunRef;
use countersign_events::trace::set_taskrun_parent;
use countersign_events::{EventPayload, LifecycleEvent, PublishError, Published, Publisher};
use tokio::sync::OwnedMutexGuard;
use tracing::Instrument;

use crate::derive::{Derived, deleted_transition};
use crate::metrics::{SkipReason, Source, WatcherMetrics};
use crate::state::{FINISHED, Known, StateError, TaskRunRecord, TransitionLog};

/// What one call published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Emitted {
    /// Transitions the stream stored.
    pub published: usize,
    /// Transitions not published again (recorded, superseded, or dropped by the stream as
    /// duplicates).
    pub skipped: usize,
    /// Whether nothing but `deleted` can be published for the TaskRun any more (`finished` is
    /// recorded, or the TaskRun is deleted): what is stored of it can be settled.
    pub settled: bool,
}

/// Why transitions could not be published or recorded.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// A transition could not be published.
    #[error("publishing {event_id}")]
    Publish {
        /// The event's id.
        event_id: String,
        #[source]
        source: PublishError,
    },
    /// The published transitions could not be recorded.
    #[error("recording published transitions")]
    State(#[from] StateError),
}

impl EmitError {
    /// Whether the input itself is refused (a TaskRun UID that cannot be a state key).
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, EmitError::State(StateError::InvalidUid { .. }))
    }

    /// Whether trying again later may succeed (NATS unavailable, a timeout, a write race).
    pub fn is_transient(&self) -> bool {
        match self {
            EmitError::Publish { source, .. } => source.is_transient(),
            EmitError::State(error) => error.is_transient(),
        }
    }
}

/// The id a transition is recorded under: its event id without the `<uid>:` prefix.
pub fn transition_key(transition: &LifecycleEvent, uid: &str) -> String {
    let id = transition.event_id();
    id.strip_prefix(uid)
        .and_then(|rest| rest.strip_prefix(':'))
        .map_or(id.clone(), str::to_owned)
}

/// Publishes and records transitions.
#[derive(Debug)]
pub struct Emitter {
    publisher: Publisher,
    log: Arc<TransitionLog>,
    locks: KeyedLocks,
    metrics: WatcherMetrics,
    cluster: String,
}

impl Emitter {
    /// An emitter publishing with `publisher` and recording in `log`.
    pub fn new(
        publisher: Publisher,
        log: Arc<TransitionLog>,
        metrics: WatcherMetrics,
        cluster: &str,
    ) -> Emitter {
        Emitter {
            publisher,
            log,
            locks: KeyedLocks::default(),
            metrics,
            cluster: cluster.to_owned(),
        }
    }

    /// The log of what was published.
    pub fn log(&self) -> &Arc<TransitionLog> {
        &self.log
    }

    /// Publishes the transitions of `derived` that are not yet published, in order, and records
    /// them. A failure in the middle still records what was published before it.
    /// Every publication of one TaskRun is in that TaskRun's trace ([`set_taskrun_parent`]).
    pub async fn emit(&self, source: Source, derived: &Derived) -> Result<Emitted, EmitError> {
        let span = tracing::info_span!(
            "publish_transitions",
            taskrun = %derived.taskrun.name,
            namespace = %derived.taskrun.namespace,
            uid = %derived.taskrun.uid,
            source = source.as_str(),
        );
        set_taskrun_parent(&span, &derived.taskrun.uid);
        self.publish_transitions(source, derived)
            .instrument(span)
            .await
    }

    async fn publish_transitions(
        &self,
        source: Source,
        derived: &Derived,
    ) -> Result<Emitted, EmitError> {
        let uid = derived.taskrun.uid.as_str();
        // A UID that cannot be recorded is refused before anything is published.
        self.log.check_uid(uid)?;
        let _guard = self.locks.lock(uid).await;
        let seed = TaskRunRecord {
            namespace: derived.taskrun.namespace.clone(),
            name: derived.taskrun.name.clone(),
            pod: derived.pod.clone(),
            published: BTreeSet::new(),
        };
        let mut known = self.log.get(uid);
        if known.is_none() {
            // Write ahead: the TaskRun is recorded before its first event can be seen, so a crash
            // right after that event still leaves a record, and a deletion while the watcher is
            // down still gets its `deleted` event.
            known = Some(self.log.record(uid, &seed, &[]).await?);
            self.metrics.set_known_taskruns(self.log.live_count());
        }
        let published: BTreeSet<String> = match &known {
            Some(Known::Deleted) => {
                for transition in &derived.transitions {
                    self.metrics.skipped(transition, SkipReason::Superseded);
                }
                return Ok(Emitted {
                    published: 0,
                    skipped: derived.transitions.len(),
                    settled: true,
                });
            }
            Some(Known::Live(record)) => record.published.clone(),
            None => BTreeSet::new(),
        };
        let mut finished = published.contains(FINISHED);
        let mut emitted = Emitted::default();
        let mut newly_published = Vec::new();
        let mut failure = None;
        for transition in &derived.transitions {
            let key = transition_key(transition, uid);
            if published.contains(&key) {
                self.metrics.skipped(transition, SkipReason::Recorded);
                emitted.skipped += 1;
                continue;
            }
            if finished && !matches!(transition, LifecycleEvent::Deleted(_)) {
                self.metrics.skipped(transition, SkipReason::Superseded);
                emitted.skipped += 1;
                continue;
            }
            match self.publish_transition(transition).await {
                Ok(stored) => {
                    if stored.duplicate {
                        self.metrics
                            .skipped(transition, SkipReason::StreamDuplicate);
                        emitted.skipped += 1;
                    } else {
                        self.metrics.published(transition, source);
                        emitted.published += 1;
                    }
                    finished |= matches!(transition, LifecycleEvent::Finished(_));
                    newly_published.push(key);
                }
                Err(error) => {
                    failure = Some(EmitError::Publish {
                        event_id: transition.event_id(),
                        source: error,
                    });
                    break;
                }
            }
        }
        let pod_changed = match &known {
            Some(Known::Live(record)) => derived.pod.is_some() && record.pod != derived.pod,
            _ => false,
        };
        if !newly_published.is_empty() || (pod_changed && failure.is_none()) {
            self.log.record(uid, &seed, &newly_published).await?;
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(Emitted {
                settled: finished,
                ..emitted
            }),
        }
    }

    /// Publishes one transition. A `finished` event over the bus's max payload goes out
    /// trimmed instead (no merged results, no step result sets, marked `oversized`), under the
    /// same id, so the TaskRun still gets an attestation (the attestor rejects it with
    /// `payload_too_large`).
    async fn publish_transition(
        &self,
        transition: &LifecycleEvent,
    ) -> Result<Published, PublishError> {
        let error = match self
            .publisher
            .publish(&self.publisher.event(transition.clone()))
            .await
        {
            Ok(stored) => return Ok(stored),
            Err(error) => error,
        };
        let LifecycleEvent::Finished(finished) = transition else {
            return Err(error);
        };
        if !error.exceeds_max_payload() {
            return Err(error);
        }
        let bytes = serde_json::to_vec(finished).map_or(u64::MAX, |body| body.len() as u64);
        let limit = self.publisher.max_payload() as u64;
        tracing::warn!(
            bytes,
            limit,
            "the finished event is over the bus's max payload; publishing it without results"
        );
        let trimmed = LifecycleEvent::Finished(finished.trimmed(bytes, limit));
        self.publisher.publish(&self.publisher.event(trimmed)).await
    }

    /// Publishes the `deleted` event of TaskRun `uid`, if the log knows it as live, and marks
    /// it deleted.
    pub async fn emit_deleted(&self, source: Source, uid: &str) -> Result<Emitted, EmitError> {
        let span = tracing::info_span!("publish_deleted", uid = %uid, source = source.as_str());
        set_taskrun_parent(&span, uid);
        self.publish_deleted(source, uid).instrument(span).await
    }

    async fn publish_deleted(&self, source: Source, uid: &str) -> Result<Emitted, EmitError> {
        let _guard = self.locks.lock(uid).await;
        let record = match self.log.get(uid) {
            Some(Known::Live(record)) => record,
            Some(Known::Deleted) | None => return Ok(Emitted::default()),
        };
        let transition = deleted_transition(
            TaskRunRef {
                cluster: self.cluster.clone(),
                namespace: record.namespace.clone(),
                name: record.name.clone(),
                uid: uid.to_owned(),
            },
            record.pod.clone(),
        );
        let mut emitted = Emitted::default();
        match self
            .publisher
            .publish(&self.publisher.event(transition.clone()))
            .await
        {
            Ok(stored) if stored.duplicate => {
                self.metrics
                    .skipped(&transition, SkipReason::StreamDuplicate);
                emitted.skipped += 1;
            }
            Ok(_) => {
                self.metrics.published(&transition, source);
                emitted.published += 1;
            }
            Err(error) => {
                return Err(EmitError::Publish {
                    event_id: transition.event_id(),
                    source: error,
                });
            }
        }
        self.log.record_deleted(uid).await?;
        self.metrics.set_known_taskruns(self.log.live_count());
        Ok(emitted)
    }
}

/// One async lock per key, created on demand and dropped when nobody holds or waits for it.
#[derive(Debug, Default)]
struct KeyedLocks {
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Holds the lock of one key.
struct KeyGuard {
    key: String,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    async fn lock(&self, key: &str) -> KeyGuard {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(locks.entry(key.to_owned()).or_default())
        };
        let guard = lock.lock_owned().await;
        KeyGuard {
            key: key.to_owned(),
            locks: Arc::clone(&self.locks),
            guard: Some(guard),
        }
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        // Release first, then drop the entry if only the map still holds it (clones are only
        // made under the map's lock, so the count cannot grow meanwhile).
        self.guard = None;
        if locks
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use countersign_events::data::TaskRunCreated;
    use futures::FutureExt as _;

    use super::*;

    #[test]
    fn transition_keys_drop_the_uid() {
        let created = LifecycleEvent::Created(TaskRunCreated {
            taskrun: TaskRunRef {
                cluster: "c".into(),
                namespace: "n".into(),
                name: "x".into(),
                uid: "u-1".into(),
            },
            created_at: chrono::Utc::now(),
            service_account: None,
            timeout_seconds: None,
            task_name: None,
        });
        assert_eq!(transition_key(&created, "u-1"), "created");
    }

    #[tokio::test]
    async fn keyed_locks_serialize_one_key_and_clean_up() {
        let locks = KeyedLocks::default();
        let first = locks.lock("a").await;
        let other = locks.lock("b").await;
        assert!(
            locks.lock("a").now_or_never().is_none(),
            "a second holder of the same key waits"
        );
        drop(first);
        let again = locks.lock("a").await;
        drop(again);
        drop(other);
        assert!(locks.locks.lock().unwrap().is_empty());
    }
}
