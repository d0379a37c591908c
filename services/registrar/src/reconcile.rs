//! Reconciliation: every `[reconcile] interval`, one replica (the holder of a lease in the state
//! bucket) compares SPIRE with the state and repairs the difference.
//!
//! A pass, in this order (the order is what makes it safe next to live handlers):
//! 1. List our entries: `ListEntries` filtered by our hint on the server, paged, then kept only
//!    when their id has our prefix. Entries without the prefix are never touched.
//! 2. Snapshot the state (after the listing: a handler writes a pending record *before* it
//!    creates an entry, so every entry listed has its record in the snapshot).
//! 3. Orphans: workload entries whose pod has no active record, node aliases of nodes with no
//!    record and no active pod, and ids with our prefix of no known form: deleted.
//! 4. Missing: registered pods of active records without their entry (and their node alias):
//!    created again, then the record is read back, and the entry deleted if the TaskRun ended
//!    meanwhile. Records whose pods have all expired become tombstones.
//! 5. Idle node aliases (no active pod on the node for `[node_alias] idle_release`): marked
//!    `releasing` (compare-and-set), the state read again, and the alias deleted only if still
//!    no pod needs it; a handler that meets `releasing` waits (nak) until it is done.
//! 6. Live records older than half the tombstone TTL are rewritten, so the bucket's `max_age`
//!    only ever removes tombstones.
//!
//! Counts go to metrics and to one log line per pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use countersign_events::data::{EntryKind, ReleaseReason};
use countersign_runtime::error_chain;
use countersign_spire_api::{DeleteOutcome, Entry, EntryFilter, ListEntriesError};
use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::entries::OwnedEntryId;
use crate::metrics::{PassOutcome, SpireMethod};
use crate::register::{RegisterError, Registrar};
use crate::state::{
    Cas, LeaseRecord, NodeAliasRegistration, NodeRecord, Snapshot, StateError, TaskRunRecord,
};

/// What one pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Entries of ours listed from SPIRE.
    pub entries_listed: usize,
    /// TaskRun records in the state.
    pub taskrun_records: usize,
    /// Orphans deleted (workload entries, node aliases, unknown ids of ours).
    pub orphans_removed: usize,
    /// Missing entries created again.
    pub missing_created: usize,
    /// Records whose pods all expired, turned into tombstones.
    pub expired: usize,
    /// Idle node aliases released.
    pub node_aliases_released: usize,
    /// Live records rewritten before the bucket's `max_age`.
    pub records_refreshed: usize,
    /// Records that could not be repaired this pass (retried next pass).
    pub failures: usize,
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Listing SPIRE's entries failed.
    #[error("listing SPIRE entries")]
    List(#[from] ListEntriesError),
    /// The state could not be read or written.
    #[error("the registrar state")]
    State(#[from] StateError),
}

impl ReconcileError {
    /// Whether the next pass may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ReconcileError::List(error) => error.is_transient(),
            ReconcileError::State(error) => error.is_transient(),
        }
    }
}

/// Our entries in SPIRE, by form.
#[derive(Debug, Default)]
struct OwnedEntries {
    workloads: HashMap<String, Entry>,
    node_aliases: HashMap<String, Entry>,
    others: Vec<Entry>,
    count: usize,
}

impl Registrar {
    /// Runs one reconciliation pass now (without the lease; the periodic loop takes it).
    pub async fn reconcile_once(&self) -> Result<ReconcileReport, ReconcileError> {
        let started = Instant::now();
        let result = self
            .reconcile_pass()
            .instrument(tracing::info_span!("reconcile_entries"))
            .await;
        let elapsed = started.elapsed();
        match &result {
            Ok(report) => {
                self.inner.metrics.pass(PassOutcome::Completed, elapsed);
                tracing::info!(
                    entries = report.entries_listed,
                    records = report.taskrun_records,
                    orphans_removed = report.orphans_removed,
                    missing_created = report.missing_created,
                    expired = report.expired,
                    node_aliases_released = report.node_aliases_released,
                    refreshed = report.records_refreshed,
                    failures = report.failures,
                    seconds = elapsed.as_secs_f64(),
                    "reconciled"
                );
            }
            Err(error) => {
                self.inner.metrics.pass(PassOutcome::Failed, elapsed);
                tracing::warn!(error = %error_chain(error), "reconciliation pass failed; retrying next interval");
            }
        }
        result
    }

    /// Runs passes every interval while this replica holds the lease, until `shutdown`.
    pub async fn run_reconciler(self, shutdown: CancellationToken) {
        let interval = self.inner.config.reconcile.interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.acquire_lease(interval).await {
                Ok(true) => {
                    // A pass in progress finishes before shutdown is noticed: it only makes
                    // idempotent repairs, and stopping half way would leave a `releasing` record
                    // for the next pass.
                    let _ = self.reconcile_once().await;
                }
                Ok(false) => {
                    self.inner
                        .metrics
                        .pass(PassOutcome::Skipped, Duration::ZERO);
                    tracing::debug!("another replica holds the reconciler lease");
                }
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "reading the reconciler lease failed");
                }
            }
        }
    }

    /// Takes or renews the reconciler lease for three intervals; false when another replica
    /// holds it.
    async fn acquire_lease(&self, interval: Duration) -> Result<bool, StateError> {
        let inner = &self.inner;
        let current = inner.state.lease().await?;
        let now = Utc::now();
        if let Some(lease) = &current.value
            && lease.holder != inner.replica_id
            && lease.until > now
        {
            return Ok(false);
        }
        let until = now + chrono::Duration::from_std(interval * 3).unwrap_or(chrono::Duration::MAX);
        let lease = LeaseRecord {
            holder: inner.replica_id.clone(),
            until,
        };
        Ok(matches!(
            inner.state.write_lease(&lease, current.revision).await?,
            Cas::Written(_)
        ))
    }

    async fn list_owned_entries(&self) -> Result<OwnedEntries, ListEntriesError> {
        let inner = &self.inner;
        let filter = EntryFilter::all().by_hint(inner.planner.hint());
        let mut pages = inner
            .spire
            .entry_pages(&filter, inner.config.reconcile.page_size);
        let mut owned = OwnedEntries::default();
        loop {
            let started = Instant::now();
            let page = pages.next_page().await;
            inner
                .metrics
                .call(SpireMethod::ListEntries, started.elapsed());
            let page = page.inspect_err(|error| {
                let code = match error {
                    ListEntriesError::Call(call) => format!("{:?}", call.code()),
                    ListEntriesError::Malformed(_) => "Malformed".to_owned(),
                };
                inner.metrics.call_error(SpireMethod::ListEntries, code);
            })?;
            let Some(page) = page else {
                return Ok(owned);
            };
            for entry in page {
                match inner.planner.classify(&entry.id) {
                    None => {}
                    Some(OwnedEntryId::Workload { pod_uid }) => {
                        owned.count += 1;
                        owned.workloads.insert(pod_uid, entry);
                    }
                    Some(OwnedEntryId::NodeAlias { node_name }) => {
                        owned.count += 1;
                        owned.node_aliases.insert(node_name, entry);
                    }
                    Some(OwnedEntryId::Other) => {
                        owned.count += 1;
                        owned.others.push(entry);
                    }
                }
            }
        }
    }

    async fn reconcile_pass(&self) -> Result<ReconcileReport, ReconcileError> {
        let inner = &self.inner;
        // 1. SPIRE first, 2. then the state.
        let owned = self.list_owned_entries().await?;
        let snapshot = inner.state.snapshot().await?;
        let now = Utc::now();
        let mut report = ReconcileReport {
            entries_listed: owned.count,
            taskrun_records: snapshot.taskruns.len(),
            ..ReconcileReport::default()
        };
        for key in &snapshot.corrupt {
            tracing::warn!(key = %key, "a state record is not readable by this version; leaving it");
        }
        let index = StateIndex::new(&snapshot);

        // 3. Orphans.
        let mut orphan_deletions = Vec::new();
        for (pod_uid, entry) in &owned.workloads {
            match index.pods.get(pod_uid.as_str()) {
                Some(location) if location.active => {}
                Some(location) => orphan_deletions.push(self.remove_orphan(
                    entry,
                    EntryKind::Workload,
                    Some((location.taskrun_uid, location.pod_index)),
                    &snapshot,
                )),
                None => orphan_deletions.push(self.remove_orphan(
                    entry,
                    EntryKind::Workload,
                    None,
                    &snapshot,
                )),
            }
        }
        for (node, entry) in &owned.node_aliases {
            let recorded = matches!(
                snapshot.nodes.get(node).map(|stored| &stored.value),
                Some(NodeRecord::Registered { .. } | NodeRecord::Releasing { .. })
            );
            if !recorded && !index.active_nodes.contains(node.as_str()) {
                orphan_deletions.push(self.remove_orphan(
                    entry,
                    EntryKind::NodeAlias,
                    None,
                    &snapshot,
                ));
            }
        }
        for entry in &owned.others {
            orphan_deletions.push(self.remove_orphan(entry, EntryKind::Workload, None, &snapshot));
        }
        for result in join_all(orphan_deletions).await {
            match result {
                Ok(true) => report.orphans_removed += 1,
                Ok(false) => {}
                Err(error) => {
                    report.failures += 1;
                    tracing::warn!(error = %error_chain(&error), "deleting an orphan failed");
                }
            }
        }

        // 4. Missing entries, and expired records.
        let mut repairs = Vec::new();
        for (uid, stored) in &snapshot.taskruns {
            let TaskRunRecord::Active { pods, .. } = &stored.value else {
                continue;
            };
            if !pods.is_empty() && pods.iter().all(|pod| pod.expires_at <= now) {
                repairs.push(Repair::Expire(uid.as_str()));
                continue;
            }
            for pod in pods {
                if pod.registered
                    && pod.expires_at > now
                    && !owned.workloads.contains_key(&pod.pod_uid)
                {
                    repairs.push(Repair::Missing(uid.as_str(), pod.pod_uid.as_str()));
                }
            }
        }
        let results = join_all(repairs.iter().map(|repair| async move {
            match repair {
                Repair::Expire(uid) => self.expire_taskrun(uid).await.map(|done| (done, false)),
                Repair::Missing(uid, pod_uid) => self
                    .recreate_pod_entry(uid, pod_uid)
                    .await
                    .map(|done| (false, done)),
            }
        }))
        .await;
        for result in results {
            match result {
                Ok((expired, created)) => {
                    report.expired += usize::from(expired);
                    report.missing_created += usize::from(created);
                }
                Err(error) => {
                    report.failures += 1;
                    tracing::warn!(error = %error_chain(&error), "repairing a TaskRun's entry failed");
                }
            }
        }
        // Node aliases that should exist: registered, with active pods, but not listed.
        for (node, stored) in &snapshot.nodes {
            if let NodeRecord::Registered { alias, .. } = &stored.value
                && index.active_nodes.contains(node.as_str())
                && !owned.node_aliases.contains_key(node)
            {
                match self.put_node_alias(alias).await {
                    Ok(()) => {
                        report.missing_created += 1;
                        inner.metrics.missing_created(EntryKind::NodeAlias);
                    }
                    Err(error) => {
                        report.failures += 1;
                        tracing::warn!(node = %node, error = %error_chain(&error), "re-creating a node alias failed");
                    }
                }
            }
        }

        // 5. Idle node aliases.
        report.node_aliases_released = self
            .release_idle_node_aliases(&snapshot, &index, now)
            .await?;

        // 6. Refresh live records before the bucket's max_age removes them.
        report.records_refreshed = self.refresh_live_records(&snapshot, now).await?;
        Ok(report)
    }

    /// Deletes an orphan; true when it was deleted now.
    async fn remove_orphan(
        &self,
        entry: &Entry,
        kind: EntryKind,
        record: Option<(&str, usize)>,
        snapshot: &Snapshot,
    ) -> Result<bool, RegisterError> {
        let outcome = self.delete_entry(&entry.id).await?;
        if outcome != DeleteOutcome::Deleted {
            return Ok(false);
        }
        let inner = &self.inner;
        inner.metrics.orphan_removed(kind);
        inner.metrics.released(kind, ReleaseReason::Orphan);
        tracing::info!(entry.id = %entry.id, spiffe_id = %entry.spiffe_id, "deleted an orphan entry");
        // Audit it when the state knows whose it was.
        match (kind, record) {
            (EntryKind::Workload, Some((uid, index))) => {
                if let Some(stored) = snapshot.taskruns.get(uid)
                    && let Some(pod) = stored.value.pods().get(index)
                {
                    inner
                        .audit
                        .workload_released(stored.value.taskrun(), pod, ReleaseReason::Orphan)
                        .await?;
                }
            }
            (EntryKind::NodeAlias, _) => {
                if let Some(alias) =
                    snapshot
                        .nodes
                        .values()
                        .find_map(|stored| match &stored.value {
                            NodeRecord::Registered { alias, .. }
                            | NodeRecord::Releasing { alias, .. }
                                if alias.entry_id == entry.id =>
                            {
                                Some(alias)
                            }
                            _ => None,
                        })
                {
                    inner
                        .audit
                        .node_alias_released(alias, ReleaseReason::Orphan)
                        .await?;
                }
            }
            _ => {}
        }
        Ok(true)
    }

    /// Creates a registered pod's missing entry again; true when it was created.
    async fn recreate_pod_entry(&self, uid: &str, pod_uid: &str) -> Result<bool, RegisterError> {
        let inner = &self.inner;
        // Read the record now: the snapshot may be stale.
        let current = inner.state.taskrun(uid).await?;
        let Some(TaskRunRecord::Active { taskrun, pods }) = current.value else {
            return Ok(false);
        };
        let Some(pod) = pods
            .iter()
            .find(|pod| pod.pod_uid == pod_uid && pod.registered)
        else {
            return Ok(false);
        };
        self.ensure_node_alias(&taskrun.cluster, &pod.node_name, pod.expires_at)
            .await?;
        let entry = inner.planner.workload_entry(pod)?;
        let created = self.create_entry(entry, EntryKind::Workload).await?;
        if created {
            inner.metrics.missing_created(EntryKind::Workload);
            tracing::info!(entry.id = %pod.entry_id, "re-created a missing workload entry");
        }
        // The TaskRun may have ended while the entry was re-created: then delete it again.
        let after = inner.state.taskrun(uid).await?;
        if let Some(TaskRunRecord::Tombstone { reason, .. }) = after.value {
            self.release_pod(&taskrun, pod, reason, false).await?;
            return Ok(false);
        }
        Ok(created)
    }

    /// Turns an active record whose pods all expired into a tombstone and deletes its entries
    /// (SPIRE prunes them too); true when done now.
    async fn expire_taskrun(&self, uid: &str) -> Result<bool, RegisterError> {
        let inner = &self.inner;
        let current = inner.state.taskrun(uid).await?;
        let Some(TaskRunRecord::Active { taskrun, pods }) = current.value else {
            return Ok(false);
        };
        let now = Utc::now();
        if !pods.iter().all(|pod| pod.expires_at <= now) {
            return Ok(false);
        }
        let tombstone = TaskRunRecord::Tombstone {
            taskrun: taskrun.clone(),
            pods: pods.clone(),
            reason: ReleaseReason::Orphan,
            ended_at: now,
        };
        if inner
            .state
            .write_taskrun(uid, &tombstone, current.revision)
            .await?
            == Cas::Conflict
        {
            return Ok(false);
        }
        tracing::info!(taskrun.uid = %uid, "every pod's entry of the TaskRun expired; releasing it");
        for pod in &pods {
            self.release_pod(&taskrun, pod, ReleaseReason::Orphan, pod.registered)
                .await?;
        }
        Ok(true)
    }

    /// Releases node aliases no pod has needed for the idle time (see the module docs).
    async fn release_idle_node_aliases(
        &self,
        snapshot: &Snapshot,
        index: &StateIndex<'_>,
        now: DateTime<Utc>,
    ) -> Result<usize, ReconcileError> {
        let inner = &self.inner;
        let idle = chrono::Duration::from_std(inner.config.node_alias.idle_release)
            .unwrap_or(chrono::Duration::MAX);
        let stale = chrono::Duration::from_std(
            (inner.config.reconcile.interval * 2).max(Duration::from_secs(60)),
        )
        .unwrap_or(chrono::Duration::MAX);
        let mut releasing: Vec<(String, u64, NodeAliasRegistration)> = Vec::new();
        for (node, stored) in &snapshot.nodes {
            if index.active_nodes.contains(node.as_str()) {
                continue;
            }
            match &stored.value {
                NodeRecord::Registered { alias, since } => {
                    let last_used = index
                        .last_used
                        .get(node.as_str())
                        .copied()
                        .map_or(*since, |used| used.max(*since));
                    if now - last_used < idle {
                        continue;
                    }
                    let record = NodeRecord::Releasing {
                        alias: alias.clone(),
                        since: now,
                    };
                    if let Cas::Written(revision) = inner
                        .state
                        .write_node(node, &record, stored.revision)
                        .await?
                    {
                        releasing.push((node.clone(), revision, alias.clone()));
                    }
                }
                // Left by a pass that stopped half way.
                NodeRecord::Releasing { alias, since } if now - *since >= stale => {
                    releasing.push((node.clone(), stored.revision, alias.clone()));
                }
                NodeRecord::Releasing { .. } | NodeRecord::Released { .. } => {}
            }
        }
        if releasing.is_empty() {
            return Ok(0);
        }
        // Read the state again: a pod scheduled since the snapshot keeps its alias.
        let again = inner.state.snapshot().await?;
        let active = StateIndex::new(&again).active_nodes;
        let mut released = 0;
        for (node, revision, alias) in releasing {
            if active.contains(node.as_str()) {
                let record = NodeRecord::Registered { alias, since: now };
                inner.state.write_node(&node, &record, revision).await?;
                continue;
            }
            match self.release_node_alias(&alias).await {
                Ok(()) => {
                    let record = NodeRecord::Released {
                        node_name: node.clone(),
                        released_at: Utc::now(),
                    };
                    inner.state.write_node(&node, &record, revision).await?;
                    released += 1;
                }
                Err(error) => {
                    // Stays `releasing`; a later pass finishes it.
                    tracing::warn!(node = %node, error = %error_chain(&error), "releasing a node alias failed");
                }
            }
        }
        Ok(released)
    }

    async fn release_node_alias(&self, alias: &NodeAliasRegistration) -> Result<(), RegisterError> {
        let outcome = self.delete_entry(&alias.entry_id).await?;
        if outcome == DeleteOutcome::Deleted {
            self.inner
                .metrics
                .released(EntryKind::NodeAlias, ReleaseReason::NodeIdle);
        }
        tracing::info!(node = %alias.node_name, entry.id = %alias.entry_id, "released an idle node alias");
        self.inner
            .audit
            .node_alias_released(alias, ReleaseReason::NodeIdle)
            .await?;
        Ok(())
    }

    /// Rewrites live records older than half the tombstone TTL.
    async fn refresh_live_records(
        &self,
        snapshot: &Snapshot,
        now: DateTime<Utc>,
    ) -> Result<usize, ReconcileError> {
        let inner = &self.inner;
        let half_ttl = chrono::Duration::from_std(inner.config.state.tombstone_ttl / 2)
            .unwrap_or(chrono::Duration::MAX);
        let mut refreshed = 0;
        for (uid, stored) in &snapshot.taskruns {
            if matches!(stored.value, TaskRunRecord::Active { .. })
                && now - stored.written_at >= half_ttl
                && inner
                    .state
                    .write_taskrun(uid, &stored.value, stored.revision)
                    .await?
                    != Cas::Conflict
            {
                refreshed += 1;
            }
        }
        for (node, stored) in &snapshot.nodes {
            if matches!(stored.value, NodeRecord::Registered { .. })
                && now - stored.written_at >= half_ttl
                && inner
                    .state
                    .write_node(node, &stored.value, stored.revision)
                    .await?
                    != Cas::Conflict
            {
                refreshed += 1;
            }
        }
        Ok(refreshed)
    }
}

/// A repair of step 4.
#[derive(Debug)]
enum Repair<'a> {
    Expire(&'a str),
    Missing(&'a str, &'a str),
}

/// Where a pod is in the snapshot.
#[derive(Debug, Clone, Copy)]
struct PodLocation<'a> {
    taskrun_uid: &'a str,
    pod_index: usize,
    active: bool,
}

/// The snapshot, indexed by pod and by node.
#[derive(Debug)]
struct StateIndex<'a> {
    pods: HashMap<&'a str, PodLocation<'a>>,
    /// Nodes with a pod of an active TaskRun.
    active_nodes: BTreeSet<&'a str>,
    /// When a pod last needed each node (a TaskRun's end, or a pod's scheduling).
    last_used: BTreeMap<&'a str, DateTime<Utc>>,
}

impl<'a> StateIndex<'a> {
    fn new(snapshot: &'a Snapshot) -> StateIndex<'a> {
        let mut index = StateIndex {
            pods: HashMap::new(),
            active_nodes: BTreeSet::new(),
            last_used: BTreeMap::new(),
        };
        for (uid, stored) in &snapshot.taskruns {
            let (active, ended_at) = match &stored.value {
                TaskRunRecord::Active { .. } => (true, None),
                TaskRunRecord::Tombstone { ended_at, .. } => (false, Some(*ended_at)),
            };
            for (pod_index, pod) in stored.value.pods().iter().enumerate() {
                index.pods.insert(
                    pod.pod_uid.as_str(),
                    PodLocation {
                        taskrun_uid: uid.as_str(),
                        pod_index,
                        active,
                    },
                );
                if active {
                    index.active_nodes.insert(pod.node_name.as_str());
                }
                let used = ended_at.unwrap_or(pod.scheduled_at);
                index
                    .last_used
                    .entry(pod.node_name.as_str())
                    .and_modify(|last| *last = (*last).max(used))
                    .or_insert(used);
            }
        }
        index
    }
}
