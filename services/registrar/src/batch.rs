//! [`EntryBatcher`]: coalesces the creates and deletes of concurrent handlers into
//! `BatchCreateEntry` and `BatchDeleteEntry` calls. Each caller awaits the outcome of its own
//! entry (a oneshot per request), so one failed item never fails the others.
//!
//! A batch is sent when it is full (`max_creates`, `max_deletes`) or when its first request has
//! waited `linger`. At most `max_in_flight` calls run at once; while they are all busy, the next
//! batch keeps filling up to its maximum, so batches grow with load. Two requests for the same
//! entry id in one batch are sent once and share the outcome (for creates, the entry with the
//! later expiry is sent).
//!
//! The batcher runs until every [`EntryBatcher`] handle is dropped, then sends what is pending,
//! waits for the calls in flight and returns: handlers still running at shutdown get their answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use countersign_spire_api::{
    CreateEntriesError, CreateOutcome, DeleteEntriesError, DeleteOutcome, Entry, SpireServerClient,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant as TokioInstant;

use crate::config::BatchConfig;
use crate::metrics::{RegistrarMetrics, SpireMethod};

/// Why a batched call gave no outcome for an entry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The `BatchCreateEntry` call failed as a whole.
    #[error("the BatchCreateEntry call failed")]
    Create(#[source] Arc<CreateEntriesError>),
    /// The `BatchDeleteEntry` call failed as a whole.
    #[error("the BatchDeleteEntry call failed")]
    Delete(#[source] Arc<DeleteEntriesError>),
    /// The batcher has stopped (the service is shutting down).
    #[error("the entry batcher has stopped")]
    Stopped,
}

impl BatchError {
    /// Whether trying again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            BatchError::Create(error) => error.is_transient(),
            BatchError::Delete(error) => error.is_transient(),
            BatchError::Stopped => true,
        }
    }
}

type CreateReply = oneshot::Sender<Result<CreateOutcome, BatchError>>;
type DeleteReply = oneshot::Sender<Result<DeleteOutcome, BatchError>>;

enum Request {
    Create {
        entry: Box<Entry>,
        reply: CreateReply,
    },
    Delete {
        id: String,
        reply: DeleteReply,
    },
}

/// A handle to the batcher task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EntryBatcher {
    requests: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Create { entry, .. } => write!(formatter, "Create({})", entry.id),
            Request::Delete { id, .. } => write!(formatter, "Delete({id})"),
        }
    }
}

impl EntryBatcher {
    /// A batcher over `spire`, and the future that runs it (spawn it as a tracked task).
    pub fn new(
        spire: SpireServerClient,
        config: BatchConfig,
        metrics: RegistrarMetrics,
    ) -> (EntryBatcher, impl Future<Output = ()> + Send + 'static) {
        let capacity = config.max_creates.max(config.max_deletes).max(1) * 4;
        let (requests, receiver) = mpsc::channel(capacity);
        let task = BatcherTask {
            spire,
            permits: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            config,
            metrics,
            creates: Pending::default(),
            deletes: Pending::default(),
            in_flight: JoinSet::new(),
        };
        (EntryBatcher { requests }, task.run(receiver))
    }

    /// Creates `entry` in the next `BatchCreateEntry` call and returns its outcome.
    pub async fn create(&self, entry: Entry) -> Result<CreateOutcome, BatchError> {
        let (reply, outcome) = oneshot::channel();
        self.requests
            .send(Request::Create {
                entry: Box::new(entry),
                reply,
            })
            .await
            .map_err(|_| BatchError::Stopped)?;
        outcome.await.map_err(|_| BatchError::Stopped)?
    }

    /// Deletes the entry `id` in the next `BatchDeleteEntry` call and returns its outcome.
    pub async fn delete(&self, id: String) -> Result<DeleteOutcome, BatchError> {
        let (reply, outcome) = oneshot::channel();
        self.requests
            .send(Request::Delete { id, reply })
            .await
            .map_err(|_| BatchError::Stopped)?;
        outcome.await.map_err(|_| BatchError::Stopped)?
    }
}

/// A batch being filled: items in arrival order, their waiters, and when it must go.
struct Pending<T, R> {
    items: Vec<T>,
    waiters: Vec<Vec<R>>,
    index_by_id: HashMap<String, usize>,
    /// When the first request will have waited `linger` (the timer is armed).
    due_at: Option<TokioInstant>,
    /// The first request has waited `linger`; the batch waits for a free call slot.
    due: bool,
}

impl<T, R> Default for Pending<T, R> {
    fn default() -> Self {
        Pending {
            items: Vec::new(),
            waiters: Vec::new(),
            index_by_id: HashMap::new(),
            due_at: None,
            due: false,
        }
    }
}

impl<T, R> Pending<T, R> {
    fn len(&self) -> usize {
        self.items.len()
    }

    /// Adds an item, or joins the waiter to an item with the same id (`merge` decides which
    /// item is kept).
    fn push(
        &mut self,
        id: String,
        item: T,
        reply: R,
        due_at: TokioInstant,
        merge: impl FnOnce(&mut T, T),
    ) {
        if let Some(&index) = self.index_by_id.get(&id) {
            merge(&mut self.items[index], item);
            self.waiters[index].push(reply);
            return;
        }
        self.index_by_id.insert(id, self.items.len());
        self.items.push(item);
        self.waiters.push(vec![reply]);
        if !self.due {
            self.due_at.get_or_insert(due_at);
        }
    }

    fn take(&mut self) -> (Vec<T>, Vec<Vec<R>>) {
        self.index_by_id.clear();
        self.due_at = None;
        self.due = false;
        (
            std::mem::take(&mut self.items),
            std::mem::take(&mut self.waiters),
        )
    }
}

struct BatcherTask {
    spire: SpireServerClient,
    config: BatchConfig,
    metrics: RegistrarMetrics,
    permits: Arc<Semaphore>,
    creates: Pending<Entry, CreateReply>,
    deletes: Pending<String, DeleteReply>,
    in_flight: JoinSet<()>,
}

/// Which batch to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Create,
    Delete,
}

async fn sleep_until_due(due_at: Option<TokioInstant>) {
    match due_at {
        Some(due_at) => tokio::time::sleep_until(due_at).await,
        None => std::future::pending().await,
    }
}

impl BatcherTask {
    async fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
        loop {
            tokio::select! {
                request = receiver.recv() => match request {
                    Some(request) => self.accept(request).await,
                    None => break,
                },
                () = sleep_until_due(self.creates.due_at) => self.send_if_possible(Operation::Create),
                () = sleep_until_due(self.deletes.due_at) => self.send_if_possible(Operation::Delete),
                Some(_) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    // A call finished: batches that came due while every call was busy go now.
                    if self.creates.due {
                        self.send_if_possible(Operation::Create);
                    }
                    if self.deletes.due {
                        self.send_if_possible(Operation::Delete);
                    }
                }
            }
        }
        // Every handle is gone: send what is left and wait for the calls in flight.
        for operation in [Operation::Create, Operation::Delete] {
            if let Ok(permit) = self.permits.clone().acquire_owned().await {
                self.send(operation, permit);
            }
        }
        while self.in_flight.join_next().await.is_some() {}
    }

    async fn accept(&mut self, request: Request) {
        let due_at = TokioInstant::now() + self.config.linger;
        let operation = match request {
            Request::Create { entry, reply } => {
                let id = entry.id.clone();
                self.creates.push(id, *entry, reply, due_at, |kept, new| {
                    if new.expires_at > kept.expires_at {
                        *kept = new;
                    }
                });
                (self.creates.len() >= self.config.max_creates).then_some(Operation::Create)
            }
            Request::Delete { id, reply } => {
                self.deletes.push(id.clone(), id, reply, due_at, |_, _| {});
                (self.deletes.len() >= self.config.max_deletes).then_some(Operation::Delete)
            }
        };
        if let Some(operation) = operation {
            // The batch is full: wait for a free call slot (requests queue meanwhile).
            if let Ok(permit) = self.permits.clone().acquire_owned().await {
                self.send(operation, permit);
            }
        }
    }

    /// The batch's linger elapsed: send it if a call slot is free; otherwise it goes when a
    /// call finishes (and keeps filling meanwhile).
    fn send_if_possible(&mut self, operation: Operation) {
        let pending_due = match operation {
            Operation::Create => {
                self.creates.due_at = None;
                &mut self.creates.due
            }
            Operation::Delete => {
                self.deletes.due_at = None;
                &mut self.deletes.due
            }
        };
        *pending_due = true;
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            self.send(operation, permit);
        }
    }

    fn send(&mut self, operation: Operation, permit: OwnedSemaphorePermit) {
        match operation {
            Operation::Create => {
                let (entries, waiters) = self.creates.take();
                if entries.is_empty() {
                    return;
                }
                let spire = self.spire.clone();
                let metrics = self.metrics.clone();
                self.in_flight
                    .spawn(send_creates(spire, metrics, entries, waiters, permit));
            }
            Operation::Delete => {
                let (ids, waiters) = self.deletes.take();
                if ids.is_empty() {
                    return;
                }
                let spire = self.spire.clone();
                let metrics = self.metrics.clone();
                self.in_flight
                    .spawn(send_deletes(spire, metrics, ids, waiters, permit));
            }
        }
    }
}

async fn send_creates(
    spire: SpireServerClient,
    metrics: RegistrarMetrics,
    entries: Vec<Entry>,
    waiters: Vec<Vec<CreateReply>>,
    _permit: OwnedSemaphorePermit,
) {
    metrics.batch(SpireMethod::BatchCreateEntry, entries.len());
    let started = Instant::now();
    let result = spire.batch_create_entries(&entries).await;
    metrics.call(SpireMethod::BatchCreateEntry, started.elapsed());
    match result {
        Ok(outcomes) => {
            for (outcome, waiters) in outcomes.into_iter().zip(waiters) {
                match &outcome {
                    CreateOutcome::Created(_) | CreateOutcome::AlreadyExists(_) => {}
                    CreateOutcome::IdCollision(status)
                    | CreateOutcome::Invalid(status)
                    | CreateOutcome::Failed(status) => {
                        metrics.call_error(
                            SpireMethod::BatchCreateEntry,
                            format!("{:?}", status.code),
                        );
                    }
                }
                for waiter in waiters {
                    let _ = waiter.send(Ok(outcome.clone()));
                }
            }
        }
        Err(error) => {
            metrics.call_error(SpireMethod::BatchCreateEntry, create_error_code(&error));
            let error = BatchError::Create(Arc::new(error));
            for waiter in waiters.into_iter().flatten() {
                let _ = waiter.send(Err(error.clone()));
            }
        }
    }
}

async fn send_deletes(
    spire: SpireServerClient,
    metrics: RegistrarMetrics,
    ids: Vec<String>,
    waiters: Vec<Vec<DeleteReply>>,
    _permit: OwnedSemaphorePermit,
) {
    metrics.batch(SpireMethod::BatchDeleteEntry, ids.len());
    let started = Instant::now();
    let result = spire.batch_delete_entries(&ids).await;
    metrics.call(SpireMethod::BatchDeleteEntry, started.elapsed());
    match result {
        Ok(outcomes) => {
            for (outcome, waiters) in outcomes.into_iter().zip(waiters) {
                if let DeleteOutcome::Failed(status) = &outcome {
                    metrics.call_error(SpireMethod::BatchDeleteEntry, format!("{:?}", status.code));
                }
                for waiter in waiters {
                    let _ = waiter.send(Ok(outcome.clone()));
                }
            }
        }
        Err(error) => {
            let code = match &error {
                DeleteEntriesError::Call(call) => format!("{:?}", call.code()),
                DeleteEntriesError::ResultCount { .. } => "ResultCount".to_owned(),
            };
            metrics.call_error(SpireMethod::BatchDeleteEntry, code);
            let error = BatchError::Delete(Arc::new(error));
            for waiter in waiters.into_iter().flatten() {
                let _ = waiter.send(Err(error.clone()));
            }
        }
    }
}

fn create_error_code(error: &CreateEntriesError) -> String {
    match error {
        CreateEntriesError::Call(call) => format!("{:?}", call.code()),
        CreateEntriesError::InvalidEntry { .. } => "InvalidEntry".to_owned(),
        CreateEntriesError::ResultCount { .. } => "ResultCount".to_owned(),
        CreateEntriesError::Malformed(_) => "Malformed".to_owned(),
    }
}
