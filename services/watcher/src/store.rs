//! What the watches last saw of each TaskRun and pod, by namespace and name.
//!
//! kube's reflector store is not used, for two things the watcher needs that it does not do:
//!
//! - **Lists applied in place.** kube's store collects a (re)list aside and swaps it in when the
//!   list completes, so nothing listed can be processed before every object has arrived, and
//!   every object is held in full until then. Here a listed object replaces its entry at once;
//!   when the list completes, the entries it did not return are removed
//!   ([`ObjectStore::end_list`]). Every entry is always some version the API returned, which is
//!   all level-triggered processing needs, and the workers can process TaskRuns while their pods
//!   are being listed.
//! - **Settling.** Once a TaskRun's `finished` is published nothing but `deleted` is published
//!   for it, so its results and termination messages are no longer needed. The worker replaces
//!   the stored objects with settled copies ([`ObjectStore::replace_if_current`]), and only if
//!   the entry is still the version it read, so a newer version is never lost.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// An object's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

#[derive(Debug)]
struct Inner<K> {
    objects: HashMap<ObjectKey, Arc<K>>,
    /// While a (re)list runs: the keys it returned so far.
    listing: Option<HashSet<ObjectKey>>,
}

/// The objects of one kind in one scope.
#[derive(Debug)]
pub struct ObjectStore<K> {
    inner: Mutex<Inner<K>>,
}

impl<K> Default for ObjectStore<K> {
    fn default() -> Self {
        ObjectStore {
            inner: Mutex::new(Inner {
                objects: HashMap::new(),
                listing: None,
            }),
        }
    }
}

impl<K> ObjectStore<K> {
    fn lock(&self) -> MutexGuard<'_, Inner<K>> {
        // Every critical section leaves the map consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The object under `key`.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.lock().objects.get(key).cloned()
    }

    /// A (re)list starts: from now until [`end_list`](Self::end_list) the listed keys are noted.
    pub fn begin_list(&self) {
        self.lock().listing = Some(HashSet::new());
    }

    /// Stores `object` (listed, added or modified) under `key`.
    pub fn apply(&self, key: ObjectKey, object: Arc<K>) {
        let mut inner = self.lock();
        if let Some(listing) = inner.listing.as_mut() {
            listing.insert(key.clone());
        }
        inner.objects.insert(key, object);
    }

    /// Removes the object under `key` (deleted).
    pub fn remove(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.lock().objects.remove(key)
    }

    /// The (re)list is complete: removes and returns the objects it did not return.
    pub fn end_list(&self) -> Vec<(ObjectKey, Arc<K>)> {
        let mut inner = self.lock();
        let Some(listed) = inner.listing.take() else {
            return Vec::new();
        };
        let vanished: Vec<ObjectKey> = inner
            .objects
            .keys()
            .filter(|key| !listed.contains(*key))
            .cloned()
            .collect();
        vanished
            .into_iter()
            .filter_map(|key| {
                let object = inner.objects.remove(&key)?;
                Some((key, object))
            })
            .collect()
    }

    /// Replaces the object under `key` with `replacement` if it is still `current` (the same
    /// allocation); returns whether it did.
    pub fn replace_if_current(&self, key: &ObjectKey, current: &Arc<K>, replacement: K) -> bool {
        let mut inner = self.lock();
        match inner.objects.get_mut(key) {
            Some(stored) if Arc::ptr_eq(stored, current) => {
                *stored = Arc::new(replacement);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count<K>(store: &ObjectStore<K>) -> usize {
        store.lock().objects.len()
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("ns", name)
    }

    #[test]
    fn a_relist_applies_in_place_and_removes_what_it_did_not_return() {
        let store = ObjectStore::default();
        store.apply(key("a"), Arc::new(1));
        store.apply(key("b"), Arc::new(2));

        store.begin_list();
        store.apply(key("a"), Arc::new(10));
        assert_eq!(
            store.get(&key("a")).as_deref(),
            Some(&10),
            "a listed object is visible at once"
        );
        assert_eq!(
            store.get(&key("b")).as_deref(),
            Some(&2),
            "an object not listed yet stays until the list completes"
        );
        store.apply(key("c"), Arc::new(3));
        let vanished = store.end_list();
        assert_eq!(vanished.len(), 1);
        assert_eq!(vanished[0].0, key("b"));
        assert_eq!(*vanished[0].1, 2);
        assert_eq!(count(&store), 2);
        assert!(store.get(&key("b")).is_none());

        assert!(
            store.end_list().is_empty(),
            "outside a list nothing is removed"
        );
        store.apply(key("d"), Arc::new(4));
        assert_eq!(count(&store), 3);
    }

    #[test]
    fn only_the_version_read_is_replaced() {
        let store = ObjectStore::default();
        let read = Arc::new(1);
        store.apply(key("a"), Arc::clone(&read));
        assert!(store.replace_if_current(&key("a"), &read, 2));
        assert_eq!(store.get(&key("a")).as_deref(), Some(&2));

        // A newer version arrived after the read: it stays.
        let newer = Arc::new(3);
        store.apply(key("a"), Arc::clone(&newer));
        assert!(!store.replace_if_current(&key("a"), &read, 4));
        assert_eq!(store.get(&key("a")).as_deref(), Some(&3));

        // Deleted meanwhile: nothing comes back.
        store.remove(&key("a"));
        assert!(!store.replace_if_current(&key("a"), &newer, 5));
        assert_eq!(count(&store), 0);
    }
}
