//! The registrar against a real nats-server, spire-server and spire-agent (one of each per test),
//! run in-process on the runtime skeleton: the acceptance tests of issue 5.
//!
//! - `scheduled` gives an entry the real agent serves (to this test process, through `unix:uid`
//!   and `unix:path` selector templates; the join-token agent holds the node alias), and
//!   `finished` removes it.
//! - `finished` before `scheduled` leaves nothing.
//! - Redelivered events and two replicas on one durable consumer leave exactly one entry.
//! - A 20 s spire-server outage loses nothing and leaves nothing stale.
//! - Reconciliation removes orphans with our prefix, re-creates missing entries, and leaves
//!   entries without our prefix alone.
//! - 1,000 TaskRuns, in mixed order, end with zero entries (node alias included).
//! - Invalid input is dead-lettered with its reason; mTLS with the registrar's own SVID works.
//!
//! Every audit event the registrar publishes is checked against its committed schema.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{HINT, Harness, PREFIX, TIMEOUT, pod_uid, taskrun_spiffe_id, workload_entry_id};
use countersign_events::RegistrationEvent;
use countersign_events::data::EntryKind;
use countersign_spire_api::{CreateOutcome, Entry, Selector, SpiffeId};
use countersign_test_support::spire::test_process_selectors;
use countersign_test_support::wait;

fn selectors(texts: &[&str]) -> Vec<Selector> {
    texts
        .iter()
        .map(|text| text.parse().expect("a selector"))
        .collect()
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::new(text).expect("a SPIFFE ID")
}

/// The ids of the audit events of one kind and type.
fn audited(
    events: &[countersign_events::Event<RegistrationEvent>],
    registered: bool,
    kind: EntryKind,
) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match &event.data {
            RegistrationEvent::Registered(data) if registered && data.entry.kind == kind => {
                Some(data.entry.entry_id.clone())
            }
            RegistrationEvent::Released(data) if !registered && data.entry.kind == kind => {
                Some(data.entry.entry_id.clone())
            }
            _ => None,
        })
        .collect()
}

/// Whether the agent serves `spiffe_id` to this process right now.
async fn agent_serves(harness: &Harness, spiffe_id: &str) -> bool {
    let Ok(client) = spiffe::WorkloadApiClient::connect_to(harness.spire.agent_endpoint()).await
    else {
        return true; // cannot tell; keep waiting
    };
    match client.fetch_all_x509_svids().await {
        Ok(svids) => svids
            .iter()
            .any(|svid| svid.spiffe_id().to_string() == spiffe_id),
        // "no identity issued": nothing is served to this process any more.
        Err(_) => false,
    }
}

#[tokio::test]
async fn scheduled_gives_an_entry_the_real_agent_serves_and_finished_removes_it() {
    let harness = Harness::start("node-serve").await;
    let mut config = harness.config();
    // Templates that match this test process, as the demo matches the signer's per-pod path.
    config.entries.workload_selectors = test_process_selectors();
    let registrar = harness.start_registrar(config).await;

    let name = "build-serve";
    let before = chrono::Utc::now();
    let sequence = harness.publish(harness.scheduled(name)).await;
    harness.wait_consumed(sequence).await;

    // The workload entry: our id, the TaskRun's SPIFFE ID, the node alias as parent, our hint,
    // the templates' selectors, and an expiry of timeout (600 s) + margin (10 min).
    let entries = harness.entries_of(name).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(entry.id, workload_entry_id(name));
    assert_eq!(entry.parent_id.to_string(), harness.spire.node_alias_id());
    assert_eq!(entry.hint.as_deref(), Some(HINT));
    let expected: BTreeSet<String> = test_process_selectors().into_iter().collect();
    let actual: BTreeSet<String> = entry.selectors.iter().map(ToString::to_string).collect();
    assert_eq!(actual, expected);
    let expires_at: chrono::DateTime<chrono::Utc> = entry.expires_at.expect("an expiry").into();
    let lifetime = expires_at - before;
    assert!(
        lifetime >= chrono::Duration::seconds(1190) && lifetime <= chrono::Duration::seconds(1260),
        "expiry {lifetime:?} after the event, expected about 600 s + 10 min"
    );
    // The node alias entry, Tekton's shape.
    let ids = harness.our_entry_ids().await;
    let alias_id = format!("{PREFIX}node.node-serve");
    assert!(ids.contains(&alias_id), "{ids:?}");

    // The real agent serves this process an SVID with the TaskRun's SPIFFE ID.
    let svid = harness
        .spire
        .wait_for_svid(&taskrun_spiffe_id(name), TIMEOUT)
        .await
        .expect("the agent serves the TaskRun's SVID");
    assert_eq!(svid.spiffe_id().to_string(), taskrun_spiffe_id(name));

    // finished removes the workload entry, and the agent stops serving it.
    let sequence = harness.publish(harness.finished(name)).await;
    harness.wait_consumed(sequence).await;
    assert!(harness.entries_of(name).await.is_empty());
    wait::until_true(
        "the agent to stop serving the TaskRun's SVID",
        TIMEOUT,
        || async { !agent_serves(&harness, &taskrun_spiffe_id(name)).await },
    )
    .await
    .expect("the agent stops serving the SVID");

    // The audit trail: registered then released, for the workload; registered for the alias.
    let events = harness.audit_events().await;
    assert_eq!(
        audited(&events, true, EntryKind::Workload),
        [workload_entry_id(name)]
    );
    assert_eq!(
        audited(&events, false, EntryKind::Workload),
        [workload_entry_id(name)]
    );
    assert_eq!(audited(&events, true, EntryKind::NodeAlias), [alias_id]);
    assert!(harness.dead_letters().await.is_empty());
    assert_eq!(
        registrar.metric("countersign_registrar_entries_registered_total{kind=\"workload\"}"),
        1.0
    );
    assert_eq!(
        registrar.metric(
            "countersign_registrar_entries_released_total{kind=\"workload\",reason=\"finished\"}"
        ),
        1.0
    );
    // Scheduled → entry created, observed once, by the call that created the entry.
    assert_eq!(
        registrar.metric("countersign_registration_latency_seconds_count"),
        1.0
    );
    assert_eq!(
        registrar.metric("countersign_registration_latency_seconds_bucket{le=\"+Inf\"}"),
        1.0
    );
    registrar.stop_drained().await;
}

#[tokio::test]
async fn finished_before_scheduled_leaves_nothing() {
    let harness = Harness::start("node-order").await;
    let registrar = harness.start_registrar(harness.config()).await;

    let name = "build-late-schedule";
    let sequence = harness.publish(harness.finished(name)).await;
    harness.wait_consumed(sequence).await;
    let sequence = harness.publish(harness.scheduled(name)).await;
    harness.wait_consumed(sequence).await;

    assert!(harness.entries_of(name).await.is_empty());
    assert!(
        !harness
            .our_entry_ids()
            .await
            .contains(&workload_entry_id(name)),
        "no workload entry"
    );
    let events = harness.audit_events().await;
    assert!(audited(&events, true, EntryKind::Workload).is_empty());
    assert!(harness.dead_letters().await.is_empty());
    assert_eq!(
        registrar.metric("countersign_registrar_entries_registered_total{kind=\"workload\"}"),
        0.0
    );

    // A redelivered `scheduled` much later changes nothing either.
    let sequence = harness.publish_again(harness.scheduled(name)).await;
    harness.wait_consumed(sequence).await;
    assert!(harness.entries_of(name).await.is_empty());
    registrar.stop_drained().await;
}

#[tokio::test]
async fn redelivery_and_two_replicas_leave_exactly_one_entry() {
    let harness = Harness::start("node-replicas").await;
    let first = harness.start_registrar(harness.config()).await;
    let second = harness.start_registrar(harness.config()).await;

    let names: Vec<String> = (0..25).map(|index| format!("build-dup-{index}")).collect();
    let mut last = 0;
    for name in &names {
        last = harness.publish(harness.scheduled(name)).await;
        // The same event again, twice, as redeliveries past the duplicate window.
        harness.publish_again(harness.scheduled(name)).await;
        last = last.max(harness.publish_again(harness.scheduled(name)).await);
    }
    harness.wait_consumed(last).await;

    for name in &names {
        let entries = harness.entries_of(name).await;
        assert_eq!(entries.len(), 1, "{name}: {entries:?}");
        assert_eq!(entries[0].id, workload_entry_id(name));
    }
    let ids = harness.our_entry_ids().await;
    let aliases: Vec<&String> = ids
        .iter()
        .filter(|id| id.starts_with(&format!("{PREFIX}node.")))
        .collect();
    assert_eq!(aliases.len(), 1, "exactly one node alias: {aliases:?}");
    assert_eq!(ids.len(), names.len() + 1);
    // Both replicas took part.
    let handled = |registrar: &common::RunningRegistrar| {
        registrar
            .metric("countersign_events_consumed_total{consumer=\"registrar\",outcome=\"ack\"}")
    };
    assert!(
        handled(&first) > 0.0 && handled(&second) > 0.0,
        "both replicas consumed"
    );

    // finished, also redelivered, releases everything.
    for name in &names {
        last = harness.publish(harness.finished(name)).await;
        last = last.max(harness.publish_again(harness.finished(name)).await);
    }
    harness.wait_consumed(last).await;
    for name in &names {
        assert!(harness.entries_of(name).await.is_empty(), "{name}");
    }
    assert!(harness.dead_letters().await.is_empty());
    harness.audit_events().await;
    first.stop_drained().await;
    second.stop_drained().await;
}

#[tokio::test]
async fn a_spire_server_outage_of_20s_loses_nothing_and_leaves_nothing_stale() {
    const OUTAGE: Duration = Duration::from_secs(20);
    let mut harness = Harness::start("node-outage").await;
    let registrar = harness.start_registrar(harness.config()).await;

    // Before the outage: ten TaskRuns registered.
    let before: Vec<String> = (0..10)
        .map(|index| format!("build-before-{index}"))
        .collect();
    let mut last = 0;
    for name in &before {
        last = harness.publish(harness.scheduled(name)).await;
    }
    harness.wait_consumed(last).await;
    assert_eq!(harness.our_entries().await.len(), before.len() + 1);

    // The outage: half of them finish, ten more are scheduled.
    harness.spire.stop_server();
    let stopped = Instant::now();
    let during: Vec<String> = (0..10)
        .map(|index| format!("build-during-{index}"))
        .collect();
    for name in &before[..5] {
        harness.publish(harness.finished(name)).await;
    }
    for name in &during {
        last = harness.publish(harness.scheduled(name)).await;
    }
    // The outage lasts 20 s, with the registrar failing and retrying (never acking) meanwhile.
    wait::until_true(
        "a 20 s outage with the registrar retrying",
        OUTAGE * 2,
        || async {
            stopped.elapsed() >= OUTAGE
                && registrar.metric(
                    "countersign_events_consumed_total{consumer=\"registrar\",outcome=\"nak\"}",
                ) > 0.0
        },
    )
    .await
    .expect("the registrar naks while SPIRE is down");
    assert_eq!(
        registrar.metric(
            "countersign_events_consumed_total{consumer=\"registrar\",outcome=\"dead_letter\"}"
        ),
        0.0
    );
    harness
        .spire
        .start_server()
        .await
        .expect("the server starts again");

    // Nothing lost, nothing stale: exactly the unfinished TaskRuns' entries and the alias.
    harness.wait_consumed(last).await;
    let mut expected: BTreeSet<String> = before[5..]
        .iter()
        .chain(&during)
        .map(|name| workload_entry_id(name))
        .collect();
    expected.insert(format!("{PREFIX}node.node-outage"));
    assert_eq!(harness.our_entry_ids().await, expected);
    for name in &before[..5] {
        assert!(harness.entries_of(name).await.is_empty(), "{name} is stale");
    }
    assert!(harness.dead_letters().await.is_empty());

    // And they are released normally afterwards.
    for name in before[5..].iter().chain(&during) {
        last = harness.publish(harness.finished(name)).await;
    }
    harness.wait_consumed(last).await;
    assert_eq!(
        harness.our_entry_ids().await,
        BTreeSet::from([format!("{PREFIX}node.node-outage")])
    );
    harness.audit_events().await;
    registrar.stop_drained().await;
}

#[tokio::test]
async fn reconciliation_removes_our_orphans_recreates_missing_entries_and_leaves_others_alone() {
    let harness = Harness::start("node-reconcile").await;
    let mut config = harness.config();
    config.reconcile.interval = Duration::from_millis(500);
    let registrar = harness.start_registrar(config).await;

    let name = "build-kept";
    let sequence = harness.publish(harness.scheduled(name)).await;
    harness.wait_consumed(sequence).await;
    assert_eq!(harness.entries_of(name).await.len(), 1);

    // Made by hand: two orphans with our prefix (and hint), one entry with our hint but not our
    // prefix, one with neither.
    let parent = id(&harness.spire.node_alias_id());
    let by_hand = |entry_id: &str, spiffe_id: &str, hint: Option<&str>| {
        let mut entry = Entry::new(
            id(spiffe_id),
            parent.clone(),
            selectors(&["k8s:pod-uid:by-hand"]),
        )
        .with_id(entry_id);
        entry.hint = hint.map(str::to_owned);
        entry
    };
    let orphan_pod = format!("{PREFIX}pod.{}", pod_uid("never-scheduled"));
    let orphan_other = format!("{PREFIX}made-by-hand");
    let foreign_with_hint = "scm.0b1c2d3e-foreign".to_owned();
    let foreign = "another-registrar-entry".to_owned();
    let outcomes = harness
        .admin
        .batch_create_entries(&[
            by_hand(
                &orphan_pod,
                "spiffe://example.org/ns/team-a/taskrun/ghost",
                Some(HINT),
            ),
            by_hand(
                &orphan_other,
                "spiffe://example.org/by-hand/one",
                Some(HINT),
            ),
            by_hand(
                &foreign_with_hint,
                "spiffe://example.org/by-hand/two",
                Some(HINT),
            ),
            by_hand(&foreign, "spiffe://example.org/by-hand/three", None),
        ])
        .await
        .expect("created by hand");
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, CreateOutcome::Created(_))),
        "{outcomes:?}"
    );
    // And the registered TaskRun's entry deleted by hand: it must come back.
    harness
        .admin
        .batch_delete_entries(&[workload_entry_id(name)])
        .await
        .expect("deleted by hand");

    wait::until_true("reconciliation to repair SPIRE", TIMEOUT, || async {
        let ids = harness.our_entry_ids().await;
        !ids.contains(&orphan_pod)
            && !ids.contains(&orphan_other)
            && ids.contains(&workload_entry_id(name))
    })
    .await
    .expect("orphans removed and the missing entry re-created");

    let all: BTreeSet<String> = harness
        .admin
        .list_entries(&countersign_spire_api::EntryFilter::all(), 100)
        .await
        .expect("ListEntries")
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    assert!(
        all.contains(&foreign_with_hint),
        "an entry without our prefix is left alone"
    );
    assert!(
        all.contains(&foreign),
        "an entry without our prefix or hint is left alone"
    );
    assert_eq!(
        registrar
            .metric("countersign_registrar_reconcile_orphans_removed_total{kind=\"workload\"}"),
        2.0
    );
    assert!(
        registrar
            .metric("countersign_registrar_reconcile_missing_created_total{kind=\"workload\"}")
            >= 1.0
    );
    assert!(registrar.metric("countersign_registrar_reconcile_duration_seconds_count") >= 1.0);
    harness.audit_events().await;
    registrar.stop_drained().await;
}

#[tokio::test]
async fn a_thousand_taskruns_end_with_zero_entries() {
    const COUNT: usize = 1000;
    let harness = Harness::start("node-thousand").await;
    let mut config = harness.config();
    config.consumer.concurrency = 64;
    config.node_alias.idle_release = Duration::from_secs(1);
    config.reconcile.interval = Duration::from_millis(500);
    let registrar = harness.start_registrar(config).await;

    // A mixed order: every seventh TaskRun's `finished` comes before its `scheduled`; the
    // others finish 30 TaskRuns later, while later ones are being scheduled.
    const LAG: usize = 30;
    let names: Vec<String> = (0..COUNT)
        .map(|index| format!("build-{index:04}"))
        .collect();
    let finishes_first = |index: usize| index.is_multiple_of(7);
    let mut last = 0;
    for (index, name) in names.iter().enumerate() {
        if finishes_first(index) {
            harness.publish(harness.finished(name)).await;
        }
        last = harness.publish(harness.scheduled(name)).await;
        if index >= LAG && !finishes_first(index - LAG) {
            last = harness.publish(harness.finished(&names[index - LAG])).await;
        }
    }
    for (index, name) in names.iter().enumerate().skip(COUNT - LAG) {
        if !finishes_first(index) {
            last = harness.publish(harness.finished(name)).await;
        }
    }
    harness.wait_consumed(last).await;

    // Zero entries: every workload entry released, and then the idle node alias too.
    wait::until_true("zero entries of ours", TIMEOUT, || async {
        harness.our_entries().await.is_empty()
    })
    .await
    .expect("every entry released");
    assert!(harness.dead_letters().await.is_empty());

    // Every workload entry registered was released, and the audit trail says so.
    let events = harness.audit_events().await;
    let registered: BTreeSet<String> = audited(&events, true, EntryKind::Workload)
        .into_iter()
        .collect();
    let released: BTreeSet<String> = audited(&events, false, EntryKind::Workload)
        .into_iter()
        .collect();
    assert!(
        registered.is_subset(&released),
        "every registration is released"
    );
    assert!(
        registered.len() >= COUNT * 6 / 7 - 10,
        "{} registered",
        registered.len()
    );
    assert_eq!(
        audited(&events, false, EntryKind::NodeAlias),
        [format!("{PREFIX}node.node-thousand")]
    );
    assert!(
        registrar.metric("countersign_registrar_batch_size_count{operation=\"BatchCreateEntry\"}")
            < registered.len() as f64,
        "creates were batched"
    );
    registrar.stop_drained().await;
}

#[tokio::test]
async fn invalid_input_is_dead_lettered_with_its_reason_and_registers_nothing() {
    let harness = Harness::start("node-poison").await;
    let mut config = harness.config();
    config.entries.workload_selectors = vec![
        "k8s:pod-uid:{pod_uid}".to_owned(),
        "k8s:sa:{service_account}".to_owned(),
    ];
    let registrar = harness.start_registrar(config).await;

    // A SPIFFE ID the TaskRun cannot have (someone asking for another identity).
    let mut forged = harness.scheduled("build-forged");
    forged.spiffe_id = "spiffe://example.org/countersign/attestor".to_owned();
    harness.publish(forged).await;
    // An empty service account renders an invalid selector.
    let mut no_account = harness.scheduled("build-no-account");
    no_account.service_account = String::new();
    let last = harness.publish(no_account).await;
    harness.wait_consumed(last).await;

    let letters = harness.dead_letters().await;
    let codes: BTreeSet<Option<String>> =
        letters.iter().map(|letter| letter.code.clone()).collect();
    assert_eq!(
        codes,
        BTreeSet::from([
            Some("spiffe_id_mismatch".to_owned()),
            Some("invalid_selector".to_owned())
        ])
    );
    assert!(letters.iter().all(|letter| letter.reason == "rejected"));
    assert!(harness.our_entries().await.is_empty());
    assert!(harness.entries_of("build-forged").await.is_empty());
    registrar.stop_drained().await;
}

#[tokio::test]
async fn over_tcp_with_mtls_the_registrar_uses_its_own_svid() {
    let harness = Harness::start("node-mtls").await;
    let admin_id = "spiffe://example.org/countersign/registrar";
    harness
        .spire
        .register_test_process(admin_id, true)
        .await
        .expect("the registrar's admin entry");
    harness
        .spire
        .wait_for_svid(admin_id, TIMEOUT)
        .await
        .expect("the agent serves the registrar's SVID");
    let mut config = harness.config();
    config.spire.server_socket_path = None;
    config.spire.server_addr = harness.spire.server_address();
    config.spire.socket_path = Some(harness.spire.agent_endpoint());
    config.spire.svid_timeout = TIMEOUT;
    let registrar = harness.start_registrar(config).await;

    let name = "build-mtls";
    let sequence = harness.publish(harness.scheduled(name)).await;
    harness.wait_consumed(sequence).await;
    let entries = harness.entries_of(name).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, workload_entry_id(name));
    registrar.stop_drained().await;
}
