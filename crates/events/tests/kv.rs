//! The typed KV layer (`countersign_events::kv`) against a real nats-server (one per test):
//! get, create-if-absent (first writer wins), update at a revision, `modify` under concurrent
//! writers and its bound, snapshots with markers and unreadable values, typed views, purge
//! markers, and opening a bucket that does not exist.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use countersign_events::kv::{
    Bucket, Cas, Change, Created, Key, KvError, Modified, SnapshotValue, Versioned,
};
use countersign_events::{Bus, BusConfig, EventMetrics, KvConfig, KvSpec};
use countersign_test_support::nats::NatsServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    owner: String,
    count: u32,
}

fn record(owner: &str, count: u32) -> Record {
    Record {
        owner: owner.into(),
        count,
    }
}

struct Setup {
    _server: NatsServer,
    bus: Bus,
    store: async_nats::jetstream::kv::Store,
}

async fn setup(config: KvConfig) -> Setup {
    let server = NatsServer::start().await.expect("starting nats-server");
    let bus = Bus::new(
        server.client().await,
        BusConfig::default(),
        EventMetrics::new(),
    )
    .expect("a valid prefix");
    let store = bus
        .ensure_kv(&KvSpec {
            name: "records".into(),
            description: "kv layer test".into(),
            config,
        })
        .await
        .expect("creating the bucket");
    Setup {
        _server: server,
        bus,
        store,
    }
}

#[tokio::test]
async fn get_create_and_update_at_a_revision() {
    let setup = setup(KvConfig::default()).await;
    let bucket: Bucket<Record> = Bucket::new(setup.store.clone());
    let key = Key::tokens([("team.a", "namespace"), ("build", "name")]).unwrap();
    assert_eq!(key.as_str(), "team_a.build");

    assert_eq!(
        bucket.get(&key).await.unwrap(),
        Versioned {
            value: None,
            revision: 0
        }
    );
    let Created::Stored(first) = bucket.create(&key, &record("a", 1)).await.unwrap() else {
        panic!("the first create stores");
    };
    // The loser of a create gets the winner's value, not its own.
    assert_eq!(
        bucket.create(&key, &record("b", 9)).await.unwrap(),
        Created::AlreadyExisted(record("a", 1))
    );
    assert_eq!(
        bucket.get(&key).await.unwrap(),
        Versioned {
            value: Some(record("a", 1)),
            revision: first
        }
    );
    // The bytes are plain JSON of the value.
    let raw = bucket.get_raw(&key).await.unwrap().expect("stored");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&raw).unwrap(),
        serde_json::json!({"owner": "a", "count": 1})
    );

    let Cas::Written(second) = bucket.update(&key, &record("a", 2), first).await.unwrap() else {
        panic!("the update at the current revision is written");
    };
    assert!(second > first);
    assert_eq!(
        bucket.update(&key, &record("z", 0), first).await.unwrap(),
        Cas::Conflict,
        "a stale revision is a conflict, not an error"
    );
    assert_eq!(
        bucket.update(&key, &record("z", 0), 0).await.unwrap(),
        Cas::Conflict,
        "revision 0 only creates"
    );
    assert_eq!(bucket.get(&key).await.unwrap().value, Some(record("a", 2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modify_merges_concurrent_writers_and_is_bounded() {
    let setup = setup(KvConfig::default()).await;
    let bucket: Bucket<Record> = Bucket::new(setup.store.clone()).with_modify_attempts(64);
    let key = Key::raw("counter").unwrap();
    let writers = 8;
    let increments = 5;
    let conflicts = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let bucket = bucket.clone();
        let key = key.clone();
        let conflicts = Arc::clone(&conflicts);
        tasks.spawn(async move {
            for _ in 0..increments {
                let modified = bucket
                    .modify(&key, |current| {
                        let count = current.value.map_or(0, |value| value.count);
                        Change::Write(record(&format!("w{writer}"), count + 1), count + 1)
                    })
                    .await
                    .expect("modify succeeds within its attempts");
                assert!(modified.written.is_some());
                conflicts.fetch_add(modified.conflicts, Ordering::SeqCst);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a writer");
    }
    // No increment is lost, however the writers interleaved.
    assert_eq!(
        bucket
            .get(&key)
            .await
            .unwrap()
            .value
            .map(|value| value.count),
        Some(writers * increments)
    );

    // Keep writes nothing.
    let before = bucket.get(&key).await.unwrap().revision;
    let kept = bucket
        .modify(&key, |_| Change::<Record, &str>::Keep("unchanged"))
        .await
        .unwrap();
    assert_eq!(
        kept,
        Modified {
            outcome: "unchanged",
            written: None,
            conflicts: 0
        }
    );
    assert_eq!(bucket.get(&key).await.unwrap().revision, before);

    // A writer that always loses (another writer changes the key between its read and its
    // write) gives up after the bound, with a transient error.
    let losing: Bucket<Record> = Bucket::new(setup.store.clone()).with_modify_attempts(3);
    let rounds = AtomicUsize::new(0);
    let raw = setup.store.clone();
    let error = losing
        .modify(&key, |current| {
            rounds.fetch_add(1, Ordering::SeqCst);
            let count = current.value.map_or(0, |value| value.count);
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(raw.put(key.as_str(), "{\"owner\":\"other\",\"count\":0}".into()))
            })
            .expect("the interfering put");
            Change::Write(record("loser", count), ())
        })
        .await
        .expect_err("always conflicting");
    assert!(matches!(error, KvError::Contention { attempts: 3, .. }));
    assert!(error.is_transient());
    assert_eq!(rounds.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn snapshots_read_the_last_value_of_every_key_with_markers_and_corrupt_values() {
    let setup = setup(KvConfig {
        limit_markers: Some(Duration::from_secs(3600)),
        ..KvConfig::default()
    })
    .await;
    let bucket: Bucket<Record> = Bucket::new(setup.store.clone());
    let prefix = Key::raw("prod.eu").unwrap();
    for uid in ["u1", "u2", "u3"] {
        let key = prefix.with_raw(uid).unwrap();
        bucket.create(&key, &record(uid, 1)).await.unwrap();
    }
    let u1 = prefix.with_raw("u1").unwrap();
    let revision = bucket.get(&u1).await.unwrap().revision;
    bucket
        .update(&u1, &record("u1", 2), revision)
        .await
        .unwrap();
    bucket
        .purge_with_ttl(&prefix.with_raw("u2").unwrap(), Duration::from_secs(600))
        .await
        .unwrap();
    setup
        .store
        .put(prefix.with_raw("u4").unwrap().as_str(), "not json".into())
        .await
        .unwrap();
    // Another prefix: not in the snapshot of `prod.eu`.
    bucket
        .create(&Key::raw("staging.u9").unwrap(), &record("u9", 1))
        .await
        .unwrap();

    let snapshot = bucket.snapshot(Some(&prefix)).await.unwrap();
    let by_key: BTreeMap<_, _> = snapshot
        .iter()
        .map(|entry| (entry.key.as_str(), &entry.value))
        .collect();
    assert_eq!(
        by_key.keys().copied().collect::<Vec<_>>(),
        ["prod.eu.u1", "prod.eu.u2", "prod.eu.u3", "prod.eu.u4"]
    );
    assert!(matches!(by_key["prod.eu.u1"], SnapshotValue::Value(value) if value.count == 2));
    assert!(matches!(by_key["prod.eu.u2"], SnapshotValue::Deleted));
    assert!(matches!(by_key["prod.eu.u3"], SnapshotValue::Value(_)));
    assert!(matches!(by_key["prod.eu.u4"], SnapshotValue::Corrupt(_)));

    assert_eq!(bucket.snapshot(None).await.unwrap().len(), 5);
    let empty = bucket
        .snapshot(Some(&Key::raw("nothing").unwrap()))
        .await
        .unwrap();
    assert!(empty.is_empty());

    // A purged key reads as no value at a revision; an unreadable one is a typed, permanent
    // error that carries its revision.
    let purged = bucket.get(&prefix.with_raw("u2").unwrap()).await.unwrap();
    assert!(purged.value.is_none() && purged.revision > 0);
    match bucket.get(&prefix.with_raw("u4").unwrap()).await {
        Err(error @ KvError::Corrupt { revision, .. }) => {
            assert!(revision > 0);
            assert!(!error.is_transient());
        }
        other => panic!("expected a corrupt value, got {other:?}"),
    }
    // The same bucket read as another type: one bucket, several record kinds.
    let counts: Bucket<serde_json::Value> = bucket.typed();
    assert_eq!(
        counts.get(&u1).await.unwrap().value,
        Some(serde_json::json!({"owner": "u1", "count": 2}))
    );
}

#[tokio::test]
async fn opening_a_bucket_that_does_not_exist_is_a_permanent_error() {
    let setup = setup(KvConfig::default()).await;
    let name = setup
        .bus
        .subjects()
        .kv_bucket_name("records")
        .expect("a bucket name");
    let opened: Bucket<Record> = Bucket::open(setup.bus.jetstream(), &name)
        .await
        .expect("the bucket exists");
    assert_eq!(opened.name(), name);
    let missing = Bucket::<Record>::open(setup.bus.jetstream(), "COUNTERSIGN_NOTHING")
        .await
        .expect_err("no such bucket");
    assert!(missing.is_missing_bucket());
    assert!(!missing.is_transient());
}
