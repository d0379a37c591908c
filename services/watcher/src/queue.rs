//! A work queue of keys, level-triggered like a controller's: a key queued many times before a
//! worker takes it is processed once; a key queued while it is being processed is processed again
//! afterwards; one key is never processed by two workers at once. Failed keys come back after a
//! backoff that grows per key.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The first retry delay.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// The longest retry delay. Most failures are not the key's own but the bus's (a JetStream
/// cluster electing a leader takes seconds), and every key waiting on one is late by up to this
/// much after the bus is back: short, as a retry costs one request.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The queue. Cheap to clone; clones share it.
#[derive(Debug)]
pub struct WorkQueue<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        WorkQueue {
            shared: Arc::clone(&self.shared),
        }
    }
}

#[derive(Debug)]
struct Shared<K> {
    state: Mutex<State<K>>,
    ready: Notify,
    /// Notified whenever a worker takes a key.
    taken: Notify,
}

#[derive(Debug)]
struct State<K> {
    queue: VecDeque<K>,
    queued: HashSet<K>,
    active: HashSet<K>,
    /// Keys queued while active: queued again when done.
    again: HashSet<K>,
    /// Consecutive failures per key.
    failures: HashMap<K, u32>,
}

impl<K> Default for State<K> {
    fn default() -> Self {
        State {
            queue: VecDeque::new(),
            queued: HashSet::new(),
            active: HashSet::new(),
            again: HashSet::new(),
            failures: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> Default for WorkQueue<K> {
    fn default() -> Self {
        WorkQueue::new()
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    /// An empty queue.
    pub fn new() -> WorkQueue<K> {
        WorkQueue {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                ready: Notify::new(),
                taken: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // Every critical section leaves the state consistent, so a poisoned lock is still usable.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `key` (once, however often it is called before a worker takes it).
    pub fn add(&self, key: K) {
        let mut state = self.lock();
        if state.active.contains(&key) {
            state.again.insert(key);
            return;
        }
        if state.queued.insert(key.clone()) {
            state.queue.push_back(key);
            drop(state);
            self.shared.ready.notify_one();
        }
    }

    /// The next key to process, or `None` once `token` is cancelled.
    pub async fn next(&self, token: &CancellationToken) -> Option<K> {
        loop {
            let notified = self.shared.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if let Some(key) = state.queue.pop_front() {
                    state.queued.remove(&key);
                    state.active.insert(key.clone());
                    let more = !state.queue.is_empty();
                    drop(state);
                    self.shared.taken.notify_waiters();
                    if more {
                        // Wake another worker for the rest.
                        self.shared.ready.notify_one();
                    }
                    return Some(key);
                }
            }
            tokio::select! {
                () = token.cancelled() => return None,
                () = &mut notified => {}
            }
        }
    }

    /// Waits until fewer than `limit` keys wait for a worker (or `token` is cancelled): lets a
    /// producer go no faster than the workers.
    pub async fn wait_below(&self, limit: usize, token: &CancellationToken) {
        loop {
            let taken = self.shared.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            if self.lock().queue.len() < limit {
                return;
            }
            tokio::select! {
                () = token.cancelled() => return,
                () = &mut taken => {}
            }
        }
    }

    /// Marks `key` processed successfully.
    pub fn done(&self, key: &K) {
        let again = {
            let mut state = self.lock();
            state.failures.remove(key);
            state.active.remove(key);
            state.again.remove(key)
        };
        if again {
            self.add(key.clone());
        }
    }

    /// Marks `key` failed: it is queued again after a backoff (unless `token` is cancelled
    /// first). Returns the delay.
    pub fn retry_later(&self, key: &K, token: &CancellationToken) -> Duration {
        let delay = {
            let mut state = self.lock();
            state.active.remove(key);
            state.again.remove(key);
            let failures = state.failures.entry(key.clone()).or_insert(0);
            *failures = failures.saturating_add(1);
            retry_delay(*failures)
        };
        let queue = self.clone();
        let key = key.clone();
        let token = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = tokio::time::sleep(delay) => queue.add(key),
            }
        });
        delay
    }

    /// How many keys wait to be processed.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether no key waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The delay before the `failures`-th retry: doubling from 200 ms, at most 5 s.
fn retry_delay(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    RETRY_BASE.saturating_mul(factor).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_queued_twice_is_processed_once() {
        let queue = WorkQueue::new();
        let token = CancellationToken::new();
        queue.add("a");
        queue.add("a");
        queue.add("b");
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.next(&token).await, Some("a"));
        assert_eq!(queue.next(&token).await, Some("b"));
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn a_key_queued_while_active_comes_back_after_done() {
        let queue = WorkQueue::new();
        let token = CancellationToken::new();
        queue.add("a");
        let key = queue.next(&token).await.unwrap();
        queue.add("a");
        assert!(
            queue.is_empty(),
            "not handed to a second worker while active"
        );
        queue.done(&key);
        assert_eq!(queue.next(&token).await, Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_keys_come_back_after_a_growing_backoff() {
        let queue = WorkQueue::new();
        let token = CancellationToken::new();
        queue.add("a");
        let key = queue.next(&token).await.unwrap();
        assert_eq!(queue.retry_later(&key, &token), Duration::from_millis(200));
        assert_eq!(queue.next(&token).await, Some("a"));
        assert_eq!(queue.retry_later(&key, &token), Duration::from_millis(400));
        assert_eq!(queue.next(&token).await, Some("a"));
        queue.done(&key);
        queue.add("a");
        let key = queue.next(&token).await.unwrap();
        assert_eq!(
            queue.retry_later(&key, &token),
            Duration::from_millis(200),
            "success resets the backoff"
        );
    }

    #[tokio::test]
    async fn next_returns_none_once_cancelled() {
        let queue: WorkQueue<&str> = WorkQueue::new();
        let token = CancellationToken::new();
        token.cancel();
        assert_eq!(queue.next(&token).await, None);
    }

    #[tokio::test]
    async fn a_producer_waits_until_the_workers_take_keys() {
        use futures::FutureExt as _;
        let queue = WorkQueue::new();
        let token = CancellationToken::new();
        queue.add("a");
        queue.add("b");
        assert!(
            queue.wait_below(3, &token).now_or_never().is_some(),
            "below the limit: no wait"
        );
        let waiting = queue.wait_below(2, &token);
        tokio::pin!(waiting);
        assert!(
            waiting.as_mut().now_or_never().is_none(),
            "at the limit: waits"
        );
        assert_eq!(queue.next(&token).await, Some("a"));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a worker taking a key releases the producer");

        let stuck = queue.wait_below(1, &token);
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), stuck)
            .await
            .expect("cancelling releases the producer");
    }

    #[test]
    fn retry_delays_are_capped() {
        assert_eq!(retry_delay(1), Duration::from_millis(200));
        assert_eq!(retry_delay(3), Duration::from_millis(800));
        assert_eq!(retry_delay(100), RETRY_MAX);
    }
}
