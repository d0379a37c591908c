//! The local replica of the attestations bucket (`{PREFIX}_ATTESTATIONS`, by TaskRun UID), kept
//! current by a KV watch and read from memory: the gate never asks the bus per request.
//!
//! Each stored attestation event becomes a [`VerdictRecord`]: the verdict, the reason, and the
//! signed results, taken from the in-toto Statement inside the DSSE envelope (the bytes the
//! attestor signed, not the unsigned copy beside it). A request whose upstream verdict has not
//! arrived waits for it with [`Replica::wait_for`], up to a bound; every request waiting for the
//! same UID shares one [`tokio::sync::watch`] channel, so a verdict that lands wakes them all at
//! once and no request polls.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use countersign_events::{AttestationEvent, Event};
use countersign_identity::intoto::Verdict;
use countersign_verdict::attestation::{AttestationEventExt, StatementError, envelope_digest};
use serde::Serialize;
use tokio::sync::watch;

/// What the gate keeps of one attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerdictRecord {
    /// The TaskRun's namespace.
    pub namespace: String,
    /// The TaskRun's name.
    pub name: String,
    /// The TaskRun's UID.
    pub uid: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The rejection's reason code, when rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The signed results: name → lower-case hex SHA-256 of the canonical value.
    pub signed_results: BTreeMap<String, String>,
    /// `sha256:<hex>` of the DSSE envelope (the attestor's `countersign.dev/attestation-digest`).
    pub attestation_digest: String,
    /// When the attestor decided.
    pub attested_at: DateTime<Utc>,
}

/// Why a stored attestation was not taken into the replica.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The envelope or its Statement could not be read.
    #[error(transparent)]
    Statement(#[from] StatementError),
    /// The signed statement names another TaskRun than the event.
    #[error("the signed statement names TaskRun UID {signed}, the event {event}")]
    UidMismatch {
        /// In the statement.
        signed: String,
        /// In the event.
        event: String,
    },
}

/// The reason a revoked attestation's record gives: a CA that issued one of its signing chains
/// was revoked, so it is not verified any more (`rejected`, no signed results).
pub const REVOKED_REASON: &str = countersign_verdict::revocation::AUTHORITY_REVOKED;

impl VerdictRecord {
    /// The record of an attestation event. A revocation (`attestation.revoked`, stored beside
    /// the attestation under `{uid}.revoked`) gives a `rejected` record with reason
    /// [`REVOKED_REASON`] and no signed results.
    pub fn from_event(event: &Event<AttestationEvent>) -> Result<VerdictRecord, RecordError> {
        let data = &event.data;
        let statement = data.statement()?;
        let predicate = statement.predicate();
        let taskrun = data.taskrun();
        if predicate.taskrun.uid != taskrun.uid {
            return Err(RecordError::UidMismatch {
                signed: predicate.taskrun.uid.clone(),
                event: taskrun.uid.clone(),
            });
        }
        if data.revocation().is_some() {
            return Ok(VerdictRecord {
                namespace: predicate.taskrun.namespace.clone(),
                name: predicate.taskrun.name.clone(),
                uid: predicate.taskrun.uid.clone(),
                verdict: Verdict::Rejected,
                reason: Some(REVOKED_REASON.to_owned()),
                signed_results: BTreeMap::new(),
                attestation_digest: format!(
                    "sha256:{}",
                    envelope_digest(&data.attestation().envelope).to_hex()
                ),
                attested_at: data.attested_at(),
            });
        }
        // Only a verified statement's subjects are results; otherwise the one subject names the
        // TaskRun itself.
        let signed_results = if predicate.verdict == Verdict::Verified {
            statement
                .subjects()
                .iter()
                .filter_map(|subject| {
                    subject
                        .digest
                        .get("sha256")
                        .map(|digest| (subject.name.clone(), digest.clone()))
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Ok(VerdictRecord {
            namespace: predicate.taskrun.namespace.clone(),
            name: predicate.taskrun.name.clone(),
            uid: predicate.taskrun.uid.clone(),
            verdict: predicate.verdict,
            reason: predicate
                .reason_code
                .map(|reason| reason.as_str().to_owned()),
            signed_results,
            attestation_digest: format!(
                "sha256:{}",
                envelope_digest(&data.attestation().envelope).to_hex()
            ),
            attested_at: data.attested_at(),
        })
    }
}

#[derive(Debug, Default)]
struct Records {
    by_uid: HashMap<String, Arc<VerdictRecord>>,
    /// Attestations-bucket key → UID, for a KV delete (which names the key only).
    by_key: HashMap<String, String>,
    /// `(namespace, name)` → the UID attested latest.
    by_name: HashMap<(String, String), String>,
    /// UIDs requests are waiting for.
    waiting: HashMap<String, watch::Sender<Option<Arc<VerdictRecord>>>>,
}

/// The in-memory replica. Cheap to clone; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Replica {
    records: Arc<Mutex<Records>>,
}

impl Replica {
    /// An empty replica.
    pub fn new() -> Replica {
        Replica::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        // A panic while holding the lock leaves plain maps behind, still usable.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `record` in and wakes whoever waits for its UID. A revoked attestation's record is
    /// never replaced by the attestation's own (a watch that replays the bucket).
    pub fn insert(&self, record: VerdictRecord) {
        let record = Arc::new(record);
        let mut records = self.lock();
        if records
            .by_uid
            .get(&record.uid)
            .is_some_and(|known| known.reason.as_deref() == Some(REVOKED_REASON))
            && record.reason.as_deref() != Some(REVOKED_REASON)
        {
            return;
        }
        let name = (record.namespace.clone(), record.name.clone());
        let newer = match records
            .by_name
            .get(&name)
            .and_then(|uid| records.by_uid.get(uid))
        {
            Some(known) => known.attested_at <= record.attested_at,
            None => true,
        };
        if newer {
            records.by_name.insert(name, record.uid.clone());
        }
        if let Ok(key) = countersign_verdict::store::attestation_key(&record.uid) {
            records
                .by_key
                .insert(key.as_str().to_owned(), record.uid.clone());
        }
        records
            .by_uid
            .insert(record.uid.clone(), Arc::clone(&record));
        if let Some(waiting) = records.waiting.remove(&record.uid) {
            let _ = waiting.send(Some(record));
        }
    }

    /// Forgets the attestation of `uid` (a KV delete).
    pub fn remove(&self, uid: &str) {
        let mut records = self.lock();
        if let Some(record) = records.by_uid.remove(uid) {
            if let Ok(key) = countersign_verdict::store::attestation_key(uid) {
                records.by_key.remove(key.as_str());
            }
            let name = (record.namespace.clone(), record.name.clone());
            if records.by_name.get(&name).map(String::as_str) == Some(uid) {
                records.by_name.remove(&name);
            }
        }
    }

    /// The attestation of TaskRun `uid`, if the replica has it.
    pub fn get(&self, uid: &str) -> Option<Arc<VerdictRecord>> {
        self.lock().by_uid.get(uid).cloned()
    }

    /// The latest attestation of TaskRun `namespace/name`.
    pub fn get_by_name(&self, namespace: &str, name: &str) -> Option<Arc<VerdictRecord>> {
        let records = self.lock();
        let uid = records
            .by_name
            .get(&(namespace.to_owned(), name.to_owned()))?;
        records.by_uid.get(uid).cloned()
    }

    /// The UID whose attestations-bucket key is `key` (for a KV delete).
    pub fn uid_for_key(&self, key: &str) -> Option<String> {
        self.lock().by_key.get(key).cloned()
    }

    /// How many attestations the replica holds.
    pub fn len(&self) -> usize {
        self.lock().by_uid.len()
    }

    /// Whether the replica is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The attestation of `uid`, waiting up to `bound` for it to arrive. Every caller waiting
    /// for the same UID shares one channel.
    pub async fn wait_for(&self, uid: &str, bound: Duration) -> Option<Arc<VerdictRecord>> {
        let mut receiver = {
            let mut records = self.lock();
            if let Some(record) = records.by_uid.get(uid) {
                return Some(Arc::clone(record));
            }
            records
                .waiting
                .entry(uid.to_owned())
                .or_insert_with(|| watch::channel(None).0)
                .subscribe()
        };
        let record = match tokio::time::timeout(bound, receiver.wait_for(Option::is_some)).await {
            Ok(Ok(record)) => record.clone(),
            _ => None,
        };
        if record.is_none() {
            // Nobody else waiting: drop the channel so the map does not grow with lost causes.
            let mut records = self.lock();
            if records
                .waiting
                .get(uid)
                .is_some_and(|sender| sender.receiver_count() <= 1)
            {
                records.waiting.remove(uid);
            }
        }
        record.or_else(|| self.get(uid))
    }

    /// How many UIDs requests are waiting for now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: &str, name: &str, at: i64) -> VerdictRecord {
        VerdictRecord {
            namespace: "ci".into(),
            name: name.into(),
            uid: uid.into(),
            verdict: Verdict::Verified,
            reason: None,
            signed_results: BTreeMap::new(),
            attestation_digest: "sha256:00".into(),
            attested_at: DateTime::from_timestamp(at, 0).unwrap(),
        }
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_verdict_when_it_lands() {
        let replica = Replica::new();
        let waiter = {
            let replica = replica.clone();
            tokio::spawn(async move { replica.wait_for("u1", Duration::from_secs(30)).await })
        };
        countersign_wait(|| replica.waiting() == 1).await;
        replica.insert(record("u1", "build", 1));
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(got.uid, "u1");
        assert_eq!(replica.waiting(), 0);
    }

    #[tokio::test]
    async fn concurrent_requests_for_one_verdict_share_one_wait() {
        let replica = Replica::new();
        let mut waiters = Vec::new();
        for _ in 0..8 {
            let replica = replica.clone();
            waiters.push(tokio::spawn(async move {
                replica.wait_for("u1", Duration::from_secs(30)).await
            }));
        }
        countersign_wait(|| {
            replica
                .lock()
                .waiting
                .get("u1")
                .is_some_and(|sender| sender.receiver_count() == 8)
        })
        .await;
        assert_eq!(replica.waiting(), 1);
        replica.insert(record("u1", "build", 1));
        for waiter in waiters {
            assert!(waiter.await.unwrap().is_some());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_verdict_that_never_arrives_gives_none_after_the_bound() {
        let replica = Replica::new();
        assert!(
            replica
                .wait_for("u1", Duration::from_secs(2))
                .await
                .is_none()
        );
        assert_eq!(replica.waiting(), 0);
    }

    #[test]
    fn a_revoked_attestation_is_not_verified_and_stays_revoked() {
        let replica = Replica::new();
        replica.insert(record("u1", "build", 1));
        let mut revoked = record("u1", "build", 1);
        revoked.verdict = Verdict::Rejected;
        revoked.reason = Some(REVOKED_REASON.to_owned());
        revoked.signed_results = BTreeMap::new();
        replica.insert(revoked.clone());
        assert_eq!(replica.get("u1").unwrap().verdict, Verdict::Rejected);
        // A replayed watch delivers the attestation again: the revocation stands.
        replica.insert(record("u1", "build", 1));
        let kept = replica.get("u1").unwrap();
        assert_eq!(kept.verdict, Verdict::Rejected);
        assert_eq!(kept.reason.as_deref(), Some(REVOKED_REASON));
        assert_eq!(
            replica
                .get_by_name("ci", "build")
                .unwrap()
                .reason
                .as_deref(),
            Some(REVOKED_REASON)
        );
    }

    #[test]
    fn the_name_index_names_the_latest_attestation() {
        let replica = Replica::new();
        replica.insert(record("new", "build", 10));
        replica.insert(record("old", "build", 5));
        assert_eq!(replica.get_by_name("ci", "build").unwrap().uid, "new");
        replica.remove("new");
        assert!(replica.get_by_name("ci", "build").is_none());
        assert!(replica.get("old").is_some());
    }

    /// Yields until `condition` holds (the spawned waiters run on this runtime).
    async fn countersign_wait(condition: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !condition() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
    }
}
