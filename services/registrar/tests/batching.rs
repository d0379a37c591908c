//! The entry batcher against a real spire-server: concurrent creates and deletes share one batch
//! call each, and every caller gets the outcome of its own entry (created, a similar entry that
//! already exists, an id taken by a different entry, an invalid entry; deleted, not found); a
//! server outage fails every waiter transiently.

use std::time::Duration;

use countersign_registrar::config::BatchConfig;
use countersign_registrar::{EntryBatcher, RegistrarMetrics};
use countersign_spire_api::{
    CreateOutcome, DeleteOutcome, Entry, Selector, SpiffeId, SpireServerClient,
};
use countersign_test_support::spire::{Spire, SpireOptions};
use futures::future::join_all;
use prometheus_client::registry::Registry;

fn entry(id: &str, spiffe_id: &str, selector: &str) -> Entry {
    let parent = SpiffeId::new("spiffe://example.org/tekton-node/node-batch").expect("valid");
    let selector: Selector = selector.parse().expect("a selector");
    let mut entry = Entry::new(
        SpiffeId::new(spiffe_id).expect("valid"),
        parent,
        vec![selector],
    )
    .with_id(id);
    entry.hint = Some("countersign".to_owned());
    entry
}

fn series(registry: &Registry, name: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encoded");
    countersign_test_support::metrics::value(&text, name)
}

#[tokio::test]
async fn concurrent_requests_share_one_call_and_each_gets_its_own_outcome() {
    let mut spire = Spire::start(SpireOptions {
        node_name: "node-batch".to_owned(),
        ..SpireOptions::default()
    })
    .await
    .expect("SPIRE starts");
    let client = SpireServerClient::connect_unix(spire.server_socket_path())
        .await
        .expect("the admin socket");
    // An id taken by an entry with another SPIFFE ID.
    client
        .batch_create_entries(&[entry(
            "countersign.pod.taken",
            "spiffe://example.org/someone/else",
            "k8s:pod-uid:taken",
        )])
        .await
        .expect("created");

    let metrics = RegistrarMetrics::new();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let config = BatchConfig {
        max_creates: 50,
        max_deletes: 200,
        linger: Duration::from_millis(200),
        max_in_flight: 1,
    };
    let (batcher, task) = EntryBatcher::new(client.clone(), config, metrics);
    let running = tokio::spawn(task);

    let mut requests: Vec<Entry> = (0..20)
        .map(|index| {
            entry(
                &format!("countersign.pod.p{index}"),
                &format!("spiffe://example.org/ns/team-a/taskrun/t{index}"),
                &format!("k8s:pod-uid:p{index}"),
            )
        })
        .collect();
    // The same entry twice: sent once, both callers get the outcome.
    requests.push(requests[0].clone());
    // Under the reserved /spire path: invalid.
    requests.push(entry(
        "countersign.pod.reserved",
        "spiffe://example.org/spire/not-allowed",
        "k8s:pod-uid:reserved",
    ));
    // A taken id with another key: a collision.
    requests.push(entry(
        "countersign.pod.taken",
        "spiffe://example.org/ns/team-a/taskrun/collides",
        "k8s:pod-uid:collides",
    ));
    let outcomes = join_all(requests.iter().cloned().map(|entry| batcher.create(entry))).await;
    for (index, outcome) in outcomes.iter().take(21).enumerate() {
        match outcome {
            Ok(CreateOutcome::Created(created)) => assert_eq!(created.id, requests[index].id),
            other => panic!("request {index}: expected Created, got {other:?}"),
        }
    }
    assert!(
        matches!(outcomes[21], Ok(CreateOutcome::Invalid(_))),
        "{:?}",
        outcomes[21]
    );
    assert!(
        matches!(outcomes[22], Ok(CreateOutcome::IdCollision(_))),
        "{:?}",
        outcomes[22]
    );
    assert_eq!(
        series(
            &registry,
            "countersign_registrar_batch_size_count{operation=\"BatchCreateEntry\"}"
        ),
        1.0,
        "one call"
    );
    assert_eq!(
        series(
            &registry,
            "countersign_registrar_batch_size_sum{operation=\"BatchCreateEntry\"}"
        ),
        22.0,
        "22 distinct entries"
    );

    // Again: each finds its similar entry.
    let again = join_all(
        requests[..20]
            .iter()
            .cloned()
            .map(|entry| batcher.create(entry)),
    )
    .await;
    assert!(
        again
            .iter()
            .all(|outcome| matches!(outcome, Ok(CreateOutcome::AlreadyExists(_))))
    );

    // Deletes: found ones and a missing one, in one call.
    let mut ids: Vec<String> = requests[..20]
        .iter()
        .map(|entry| entry.id.clone())
        .collect();
    ids.push("countersign.pod.never-created".to_owned());
    let deleted = join_all(ids.iter().cloned().map(|id| batcher.delete(id))).await;
    for outcome in &deleted[..20] {
        assert!(matches!(outcome, Ok(DeleteOutcome::Deleted)), "{outcome:?}");
    }
    assert!(matches!(deleted[20], Ok(DeleteOutcome::NotFound)));
    assert_eq!(
        series(
            &registry,
            "countersign_registrar_batch_size_count{operation=\"BatchDeleteEntry\"}"
        ),
        1.0
    );

    // An outage fails every waiter of the call, transiently.
    spire.stop_server();
    let failed = join_all((0..3).map(|index| {
        batcher.create(entry(
            &format!("countersign.pod.down{index}"),
            &format!("spiffe://example.org/ns/team-a/taskrun/down{index}"),
            "k8s:pod-uid:down",
        ))
    }))
    .await;
    for outcome in failed {
        let error = outcome.expect_err("the server is down");
        assert!(error.is_transient(), "{error:?}");
    }

    // The batcher ends once its handles are gone.
    drop(batcher);
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the batcher stops")
        .expect("without panicking");
}
