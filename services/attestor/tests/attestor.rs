//! The attestor against the real peers: nats-server with JetStream, spire-server and
//! spire-agent, TaskRun results signed by the real `countersign-signer` as workloads of the
//! agent. Every verdict is checked the way a subscriber would: the KV record, the published
//! event (validated against its JSON Schema), and the DSSE signature against the real bundle.

mod support;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use countersign_events::data::{ReasonCode, TerminationEntry, Verdict};
use countersign_events::schema::validate_event;
use countersign_events::{AttestationEvent, Classify as _, DeadLetter, Event, EventSource};
use countersign_identity::attestation::{AttestationTime, AttestationVerifier, SignerPolicy};
use countersign_identity::intoto::Verdict as PredicateVerdict;
use countersign_identity::spiffe_id::SpiffeId;
use countersign_identity::svid::{SigningSvid, SvidLeaf, TrustBundleSet};
use countersign_runtime::RunOutcome;
use countersign_test_support::nats::NatsServer;
use countersign_test_support::spire::{Spire, SpireOptions};
use countersign_test_support::wait;
use countersign_verdict::Decision;
use countersign_verdict::attestation::AttestationEventExt as _;
use countersign_verdict::attestation::{AttestationFacts, attest_in_context};
use countersign_verdict::store::{AttestationStore, Created};
use futures::StreamExt as _;
use support::*;

/// Checks what every subscriber relies on: the KV record is the published event, the event
/// matches its schema, and its DSSE envelope verifies against the real bundle as the
/// attestor's. Returns the verified attestation.
async fn check_attestation(
    bus: &TestBus,
    spire: &Spire,
    event: &Event<AttestationEvent>,
) -> countersign_identity::attestation::VerifiedAttestation {
    validate_event(event).expect("the event matches its schema");
    let taskrun = event.data.taskrun();
    let published = bus.wait_published(taskrun, 1).await;
    assert_eq!(published.len(), 1, "exactly one attestation event");
    assert_eq!(published[0].id, format!("{}:attestation", taskrun.uid));
    assert_eq!(published[0].data, event.data, "the event is the KV record");
    let mut bundles = TrustBundleSet::new();
    bundles
        .add_pem_detecting_trust_domains(spire.bundle_pem())
        .unwrap();
    let signers = SignerPolicy::exact(SpiffeId::new(ATTESTOR_ID).unwrap());
    let signed = event.data.signed_attestation().unwrap();
    AttestationVerifier::new(&bundles, &signers)
        .verify(&signed, AttestationTime::At(Utc::now()))
        .expect("the attestation verifies against the real bundle")
}

/// The fixture results signed by a pod holding TaskRun `name`'s identity.
async fn signed_for(spire: &Spire, name: &str) -> Vec<TerminationEntry> {
    let pod = Pod::register(spire, &taskrun_id(name)).await;
    pod.sign(&FIXTURE_RESULTS).await
}

fn rejected_reason(event: &Event<AttestationEvent>) -> ReasonCode {
    match &event.data {
        AttestationEvent::Rejected(rejected) => rejected.reason,
        AttestationEvent::Verified(verified) => {
            panic!("expected a rejection, got {:?}", verified.verdict)
        }
        AttestationEvent::Revoked(_) => panic!("expected a rejection, got a revocation"),
    }
}

#[tokio::test]
async fn signed_results_are_verified_step_by_step_and_attested_once() {
    let nats = NatsServer::start().await.unwrap();
    let spire = spire_with_attestor(SpireOptions::default()).await;
    let bus = TestBus::connect(&nats, "watcher").await;
    let attestor = start_attestor(attestor_config(&nats.url(), &spire.agent_endpoint(), "")).await;
    attestor.wait_ready().await;

    let taskrun = taskrun("build-push-run-x7k2p");
    let created = Utc::now() - TimeDelta::seconds(2);
    let pod = Pod::register(&spire, &taskrun_id(&taskrun.name)).await;
    // Step 1 writes commit; step 2 all four (each step signs what is present when it ends).
    let clone = pod.sign(&FIXTURE_RESULTS[..1]).await;
    let build = pod.sign(&FIXTURE_RESULTS).await;
    let now = Utc::now();
    let steps = vec![
        step("clone", clone.clone(), now - TimeDelta::seconds(1)),
        step("build", build.clone(), now),
    ];
    let finished = finished(
        &taskrun,
        created,
        Some(taskrun_id(&taskrun.name)),
        steps.clone(),
        merged(&[clone, build].concat()),
        &["commit", "IMAGE_DIGEST", "image", "tags"],
    );

    // Each step as it completes, then the TaskRun.
    for record in &steps {
        bus.step_completed(step_completed(&finished, record)).await;
    }
    wait::until_true("both step verdicts", TIMEOUT, || async {
        attestor.metric(
            "countersign_attestor_step_verdicts_total{verdict=\"verified\",reason=\"none\"}",
        ) == 2.0
    })
    .await
    .unwrap();
    bus.finished(finished.clone()).await;

    let event = bus.attestation(&taskrun.uid).await;
    let AttestationEvent::Verified(verified) = &event.data else {
        panic!("expected verified, got {:?}", event.data);
    };
    assert_eq!(verified.verdict, Verdict::Verified);
    assert_eq!(
        verified.spiffe_id.as_deref(),
        Some(taskrun_id(&taskrun.name).as_str())
    );
    let names: Vec<&str> = verified
        .subjects
        .iter()
        .map(|subject| subject.name.as_str())
        .collect();
    assert_eq!(names, ["IMAGE_DIGEST", "commit", "image", "tags"]);
    let checked = check_attestation(&bus, &spire, &event).await;
    assert_eq!(checked.predicate().verdict, PredicateVerdict::Verified);
    assert_eq!(checked.predicate().taskrun.uid, taskrun.uid);
    assert_eq!(checked.signer().to_string(), ATTESTOR_ID);
    let svid = SvidLeaf::from_pem(&svid_of(&finished.steps[1].results)).unwrap();
    assert_eq!(
        checked.predicate().svid_fingerprint.as_deref(),
        Some(svid.fingerprint().to_hex().as_str())
    );

    // The name index points at it; the metrics count it.
    let store = bus.store().await;
    let indexed = store
        .lookup("default", &taskrun.name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(indexed.uid, taskrun.uid);
    assert_eq!(
        attestor
            .metric("countersign_attestor_verdicts_total{verdict=\"verified\",reason=\"none\"}"),
        1.0
    );
    assert_eq!(
        attestor.metric("countersign_attestor_verification_duration_seconds_count"),
        1.0
    );
    assert!(
        attestor
            .metrics()
            .contains("countersign_attestation_latency_seconds_count 1")
    );

    // Publishing the same finished event again changes nothing.
    let mut again = finished.clone();
    again.message = "observed twice".into();
    bus.publisher
        .publish(&Event::new(bus.publisher.source(), again))
        .await
        .unwrap();
    assert_eq!(bus.published(&taskrun).await.len(), 1);
    assert!(
        attestor
            .metrics()
            .contains("countersign_attestation_latency_seconds_count 1"),
        "a redelivery is not a second attestation"
    );
    assert!(matches!(attestor.stop().await, RunOutcome::Drained { .. }));
}

/// One case: a TaskRun name, what is published, the expected reason.
struct Case {
    name: &'static str,
    expected: ReasonCode,
}

#[tokio::test]
async fn each_check_rejects_with_its_own_reason() {
    let nats = NatsServer::start().await.unwrap();
    let spire = spire_with_attestor(SpireOptions::default()).await;
    let bus = TestBus::connect(&nats, "watcher").await;
    let attestor = start_attestor(attestor_config(&nats.url(), &spire.agent_endpoint(), "")).await;
    attestor.wait_ready().await;

    let created = Utc::now() - TimeDelta::seconds(2);
    let declared = ["commit", "IMAGE_DIGEST", "image", "tags"];
    let mut expectations = Vec::new();
    let mut publish = |name: &'static str, expected: ReasonCode, event| {
        expectations.push((Case { name, expected }, event));
    };
    let build = |taskrun: &countersign_events::data::TaskRunRef,
                 entries: Vec<TerminationEntry>,
                 created: chrono::DateTime<Utc>,
                 finished_at: chrono::DateTime<Utc>| {
        let merged_results = merged(&entries);
        finished(
            taskrun,
            created,
            Some(taskrun_id(&taskrun.name)),
            vec![step("build", entries, finished_at)],
            merged_results,
            &declared,
        )
    };
    let edit = |mut entries: Vec<TerminationEntry>, key: &str, value: &str| {
        for entry in &mut entries {
            if entry.key == key {
                entry.value = value.to_owned();
            }
        }
        entries
    };
    let without = |entries: Vec<TerminationEntry>, keys: &[&str]| -> Vec<TerminationEntry> {
        entries
            .into_iter()
            .filter(|entry| !keys.contains(&entry.key.as_str()))
            .collect()
    };

    // A value changed after signing, in the step's signed set.
    let taskrun_a = taskrun("tampered-value");
    let entries = signed_for(&spire, &taskrun_a.name).await;
    let tampered = edit(
        entries,
        "commit",
        "0000000000000000000000000000000000000000",
    );
    publish(
        "tampered-value",
        ReasonCode::SignatureInvalid,
        build(&taskrun_a, tampered, created, Utc::now()),
    );

    // A value changed in the TaskRun's status.results only: the steps' signed sets are intact.
    let taskrun_b = taskrun("tampered-status");
    let entries = signed_for(&spire, &taskrun_b.name).await;
    let mut event = build(&taskrun_b, entries, created, Utc::now());
    for result in &mut event.results {
        if result.name == "commit" {
            result.value = "0000000000000000000000000000000000000000".into();
        }
    }
    publish("tampered-status", ReasonCode::ResultsMismatch, event);

    // A signature changed.
    let taskrun_c = taskrun("tampered-signature");
    let entries = signed_for(&spire, &taskrun_c.name).await;
    let other_signature = entries
        .iter()
        .find(|entry| entry.key == "tags.sig")
        .map(|entry| entry.value.clone())
        .unwrap();
    let tampered = edit(entries, "commit.sig", &other_signature);
    publish(
        "tampered-signature",
        ReasonCode::SignatureInvalid,
        build(&taskrun_c, tampered, created, Utc::now()),
    );

    // No manifest.
    let taskrun_d = taskrun("missing-manifest");
    let entries = signed_for(&spire, &taskrun_d.name).await;
    publish(
        "missing-manifest",
        ReasonCode::ManifestMissing,
        build(
            &taskrun_d,
            without(entries, &["RESULT_MANIFEST"]),
            created,
            Utc::now(),
        ),
    );

    // The manifest lists a result that is not there.
    let taskrun_e = taskrun("incomplete-manifest");
    let entries = signed_for(&spire, &taskrun_e.name).await;
    publish(
        "incomplete-manifest",
        ReasonCode::ManifestIncomplete,
        build(
            &taskrun_e,
            without(entries, &["tags", "tags.sig"]),
            created,
            Utc::now(),
        ),
    );

    // A result the manifest does not cover.
    let taskrun_f = taskrun("extra-result");
    let mut entries = signed_for(&spire, &taskrun_f.name).await;
    entries.push(TerminationEntry {
        key: "injected".into(),
        value: "evil".into(),
        r#type: 1,
    });
    publish(
        "extra-result",
        ReasonCode::UnsignedResult,
        build(&taskrun_f, entries, created, Utc::now()),
    );

    // Another TaskRun's SVID signed these results.
    let taskrun_g = taskrun("victim");
    let entries = signed_for(&spire, "impostor").await;
    publish(
        "victim",
        ReasonCode::SpiffeIdMismatch,
        build(&taskrun_g, entries, created, Utc::now()),
    );

    // The step finished after the SVID expired.
    let taskrun_h = taskrun("expired-svid");
    let entries = signed_for(&spire, &taskrun_h.name).await;
    let not_after = SvidLeaf::from_pem(&svid_of(&entries)).unwrap().not_after();
    publish(
        "expired-svid",
        ReasonCode::SvidNotValidAtSigning,
        build(
            &taskrun_h,
            entries,
            created,
            not_after + TimeDelta::minutes(5),
        ),
    );

    // Results of an earlier TaskRun of the same name, replayed for one created after its SVID.
    let taskrun_i = taskrun("replayed");
    let entries = signed_for(&spire, &taskrun_i.name).await;
    let not_before = SvidLeaf::from_pem(&svid_of(&entries)).unwrap().not_before();
    let later = not_before + TimeDelta::minutes(2);
    publish(
        "replayed",
        ReasonCode::SvidPredatesTaskrun,
        build(&taskrun_i, entries, later, later + TimeDelta::seconds(5)),
    );

    // No SVID entry at all.
    let taskrun_j = taskrun("missing-svid");
    let entries = signed_for(&spire, &taskrun_j.name).await;
    publish(
        "missing-svid",
        ReasonCode::SvidMissing,
        build(&taskrun_j, without(entries, &["SVID"]), created, Utc::now()),
    );

    // Results, and no signing material at all (signing not enabled).
    let taskrun_k = taskrun("unsigned");
    let entries: Vec<TerminationEntry> = FIXTURE_RESULTS
        .iter()
        .map(|(key, value)| TerminationEntry {
            key: (*key).into(),
            value: (*value).into(),
            r#type: 1,
        })
        .collect();
    publish(
        "unsigned",
        ReasonCode::UnsignedResults,
        build(&taskrun_k, entries, created, Utc::now()),
    );

    // A finished event the watcher trimmed to fit the bus (results over the max payload): its
    // steps signed, but the attestor never got the results, so nothing can be verified.
    let taskrun_l = taskrun("oversized");
    let entries = signed_for(&spire, &taskrun_l.name).await;
    publish(
        "oversized",
        ReasonCode::PayloadTooLarge,
        build(&taskrun_l, entries, created, Utc::now()).trimmed(2_000_000, 1024 * 1024),
    );

    let mut published = Vec::new();
    for (case, event) in expectations {
        let uid = event.taskrun.uid.clone();
        bus.finished(event).await;
        published.push((case, uid));
    }
    for (case, uid) in published {
        let event = bus.attestation(&uid).await;
        assert_eq!(rejected_reason(&event), case.expected, "case {}", case.name);
        let checked = check_attestation(&bus, &spire, &event).await;
        assert_eq!(
            checked.predicate().verdict,
            PredicateVerdict::Rejected,
            "case {}",
            case.name
        );
        assert_eq!(
            checked
                .predicate()
                .reason_code
                .map(|reason| reason.as_str()),
            Some(case.expected.as_str()),
            "case {}",
            case.name
        );
        let AttestationEvent::Rejected(rejected) = &event.data else {
            unreachable!()
        };
        if case.expected != ReasonCode::UnsignedResults
            && case.expected != ReasonCode::ResultsMismatch
            && case.expected != ReasonCode::PayloadTooLarge
        {
            assert_eq!(
                rejected.step.as_deref(),
                Some("build"),
                "case {}",
                case.name
            );
        }
    }
    assert_eq!(
        attestor.metric(
            "countersign_attestor_verdicts_total{verdict=\"rejected\",reason=\"signature_invalid\"}"
        ),
        2.0
    );

    // A Task that declares no results and a TaskRun that wrote none: its own verdict.
    let quiet = taskrun("no-results");
    bus.finished(finished(
        &quiet,
        created,
        Some(taskrun_id(&quiet.name)),
        vec![step("build", Vec::new(), Utc::now())],
        Vec::new(),
        &[],
    ))
    .await;
    let event = bus.attestation(&quiet.uid).await;
    let AttestationEvent::Verified(verified) = &event.data else {
        panic!("expected no_results, got {:?}", event.data);
    };
    assert_eq!(verified.verdict, Verdict::NoResults);
    let checked = check_attestation(&bus, &spire, &event).await;
    assert_eq!(checked.predicate().verdict, PredicateVerdict::NoResults);
    assert_eq!(
        checked.statement().subjects()[0].name,
        "taskrun/default/no-results"
    );
}

#[tokio::test]
async fn svids_of_another_ca_and_another_trust_domain_are_rejected() {
    let nats = NatsServer::start().await.unwrap();
    let (ours, other_ca, other_domain) = tokio::join!(
        spire_with_attestor(SpireOptions::default()),
        // Same trust domain, its own CA: a server the attestor does not trust.
        Spire::start(SpireOptions {
            node_name: "node-rogue".into(),
            ..SpireOptions::default()
        }),
        // Another trust domain, whose bundle the attestor does not have.
        Spire::start(SpireOptions {
            trust_domain: "other.org".into(),
            node_name: "node-other".into(),
            ..SpireOptions::default()
        }),
    );
    let other_ca = other_ca.unwrap();
    let other_domain = other_domain.unwrap();
    let bus = TestBus::connect(&nats, "watcher").await;
    let attestor = start_attestor(attestor_config(&nats.url(), &ours.agent_endpoint(), "")).await;
    attestor.wait_ready().await;
    let created = Utc::now() - TimeDelta::seconds(2);

    let rogue = taskrun("rogue-ca");
    let pod = Pod::register(&other_ca, &taskrun_id(&rogue.name)).await;
    let entries = pod.sign(&FIXTURE_RESULTS).await;
    bus.finished(finished(
        &rogue,
        created,
        Some(taskrun_id(&rogue.name)),
        vec![step("build", entries.clone(), Utc::now())],
        merged(&entries),
        &[],
    ))
    .await;

    let foreign = taskrun("foreign");
    let foreign_id = format!("spiffe://other.org/ns/default/taskrun/{}", foreign.name);
    let pod = Pod::register(&other_domain, &foreign_id).await;
    let entries = pod.sign(&FIXTURE_RESULTS).await;
    bus.finished(finished(
        &foreign,
        created,
        Some(foreign_id.clone()),
        vec![step("build", entries.clone(), Utc::now())],
        merged(&entries),
        &[],
    ))
    .await;

    let event = bus.attestation(&rogue.uid).await;
    assert_eq!(rejected_reason(&event), ReasonCode::ChainInvalid);
    check_attestation(&bus, &ours, &event).await;
    let event = bus.attestation(&foreign.uid).await;
    assert_eq!(rejected_reason(&event), ReasonCode::TrustDomainUnknown);
    let AttestationEvent::Rejected(rejected) = &event.data else {
        unreachable!()
    };
    assert_eq!(rejected.spiffe_id.as_deref(), Some(foreign_id.as_str()));
    check_attestation(&bus, &ours, &event).await;
}

#[tokio::test]
async fn redelivery_and_two_replicas_give_one_attestation() {
    let nats = NatsServer::start().await.unwrap();
    let spire = spire_with_attestor(SpireOptions::default()).await;
    let bus = TestBus::connect(&nats, "watcher").await;
    let taskrun = taskrun("contended");
    let created = Utc::now() - TimeDelta::seconds(2);
    let pod = Pod::register(&spire, &taskrun_id(&taskrun.name)).await;
    let entries = pod.sign(&FIXTURE_RESULTS).await;
    let event = finished(
        &taskrun,
        created,
        Some(taskrun_id(&taskrun.name)),
        vec![step("build", entries.clone(), Utc::now())],
        merged(&entries),
        &[],
    );

    // The first replica to see the event dies before settling it: the server redelivers it
    // after the ack wait. Here the "replica" is a bare pull on the shared durable consumer.
    let config = attestor_config(&nats.url(), &spire.agent_endpoint(), "");
    let consumer = bus
        .bus
        .ensure_consumer(
            &countersign_events::ConsumerSpec::attestor(bus.bus.subjects()),
            &config.consumer,
        )
        .await
        .unwrap();
    bus.finished(event.clone()).await;
    let mut batch = consumer
        .inner()
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .unwrap();
    let taken = batch.next().await.unwrap().unwrap();
    assert_eq!(taken.info().unwrap().delivered, 1);
    drop(batch);

    // The same transition observed again past the duplicate window: a second message with
    // the same content (published without a message id, so JetStream keeps both).
    let (headers, body) =
        countersign_events::encode(&Event::new(bus.publisher.source(), event.clone())).unwrap();
    let subject = bus
        .bus
        .subjects()
        .for_taskrun(countersign_events::EventType::TaskRunFinished, &taskrun)
        .unwrap();
    for _ in 0..3 {
        bus.bus
            .jetstream()
            .publish_with_headers(subject.clone(), headers.clone(), body.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // Two replicas on the same durable consumer.
    let first = start_attestor(config.clone()).await;
    let second = start_attestor(config).await;
    first.wait_ready().await;
    second.wait_ready().await;

    let stored = bus.attestation(&taskrun.uid).await;
    // Every copy is handled (the redelivered one after the ack wait), and all converge.
    let handled = |attestor: &RunningAttestor| {
        attestor.metric("countersign_events_consumed_total{consumer=\"attestor\",outcome=\"ack\"}")
            as u64
    };
    wait::until_true("every copy acknowledged", TIMEOUT, || async {
        handled(&first) + handled(&second) >= 4
    })
    .await
    .unwrap();
    let published = bus.published(&taskrun).await;
    assert_eq!(published.len(), 1, "one attestation event");
    assert_eq!(published[0].data, stored.data);
    check_attestation(&bus, &spire, &stored).await;
    let verdicts = |attestor: &RunningAttestor| {
        countersign_test_support::metrics::sum(
            &attestor.metrics(),
            "countersign_attestor_verdicts_total",
            &[],
        ) as u64
    };
    assert_eq!(
        verdicts(&first) + verdicts(&second),
        1,
        "one verdict stored"
    );
    first.stop().await;
    second.stop().await;
}

/// An attestor killed between a verdict's KV write and its publish leaves the attestation
/// stored and never published. The `finished` event is then delivered again (to it restarted,
/// or to another replica), which publishes the stored attestation as it is: no second
/// decision, no second signature, one event in the stream.
#[tokio::test]
async fn an_attestation_stored_but_never_published_is_published_on_redelivery() {
    let nats = NatsServer::start().await.unwrap();
    let spire = spire_with_attestor(SpireOptions::default()).await;
    let bus = TestBus::connect(&nats, "watcher").await;
    let attestor = start_attestor(attestor_config(&nats.url(), &spire.agent_endpoint(), "")).await;
    attestor.wait_ready().await;

    // What the killed attestor left: its attestation of a TaskRun without results, decided a
    // while ago and signed with an attestor SVID, in the bucket; nothing in the stream.
    let taskrun = taskrun("killed-before-publish");
    let created = Utc::now() - TimeDelta::seconds(30);
    let decided_at = Utc::now() - TimeDelta::seconds(10);
    let minted = spire.mint_x509(ATTESTOR_ID).await.unwrap();
    let svid = SigningSvid::new(minted.chain, &minted.private_key).unwrap();
    let mut bundles = TrustBundleSet::new();
    bundles
        .add_pem_detecting_trust_domains(spire.bundle_pem())
        .unwrap();
    let data = attest_in_context(
        &Decision::NoResults,
        AttestationFacts {
            taskrun: &taskrun,
            created,
            finished: Some(created),
            decided_at,
            current_bundle_digest: &bundles.digest().to_hex(),
        },
        &bundles,
        &svid,
    )
    .unwrap();
    let stored = Event::observed_at(&EventSource::service("attestor"), decided_at, data);
    assert!(matches!(
        bus.store()
            .await
            .create(&taskrun.uid, &stored)
            .await
            .unwrap(),
        Created::Stored
    ));
    assert!(bus.published(&taskrun).await.is_empty());

    bus.finished(finished(
        &taskrun,
        created,
        None,
        vec![step("build", Vec::new(), created)],
        Vec::new(),
        &[],
    ))
    .await;
    let published = bus.wait_published(&taskrun, 1).await;
    assert_eq!(published.len(), 1, "one attestation event");
    assert_eq!(
        published[0].id, stored.id,
        "the stored event, not a new one"
    );
    assert_eq!(
        published[0].data, stored.data,
        "the stored attestation, as signed"
    );
    check_attestation(&bus, &spire, &stored).await;
    wait::until_true("the finished event acknowledged", TIMEOUT, || async {
        attestor.metric("countersign_events_consumed_total{consumer=\"attestor\",outcome=\"ack\"}")
            >= 1.0
    })
    .await
    .unwrap();
    assert_eq!(
        countersign_test_support::metrics::sum(
            &attestor.metrics(),
            "countersign_attestor_verdicts_total",
            &[],
        ),
        0.0,
        "no second decision"
    );
    // Nor a second attestation signed and refused by the bucket.
    assert_eq!(
        attestor.metric("countersign_attestor_kv_conflicts_total{bucket=\"attestations\"}"),
        0.0,
        "no second attestation written"
    );
    attestor.stop().await;
}

#[tokio::test]
async fn the_released_tekton_shape_is_verified_through_the_attestor() {
    let nats = NatsServer::start().await.unwrap();
    let spire = spire_with_attestor(SpireOptions::default()).await;
    let bus = TestBus::connect(&nats, "watcher").await;
    let attestor = start_attestor(attestor_config(&nats.url(), &spire.agent_endpoint(), "")).await;
    attestor.wait_ready().await;

    let pod = Pod::register(&spire, &taskrun_id("build-push-run-x7k2p")).await;
    let uid = countersign_test_support::unique_name("uid");
    let taskrun = resigned_released_fixture(&pod, &uid).await;
    // The shape is kept: signing keys are ordinary string results, and in the step messages.
    let result_names: Vec<&str> = taskrun["status"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| result["name"].as_str().unwrap())
        .collect();
    assert!(result_names.contains(&"SVID") && result_names.contains(&"RESULT_MANIFEST.sig"));
    let finished = finished_from_taskrun(&taskrun, "test");
    bus.finished(finished.clone()).await;

    let event = bus.attestation(&uid).await;
    let AttestationEvent::Verified(verified) = &event.data else {
        panic!("expected verified, got {:?}", event.data);
    };
    assert_eq!(verified.verdict, Verdict::Verified);
    assert_eq!(verified.subjects.len(), 4);
    check_attestation(&bus, &spire, &event).await;
}

#[tokio::test]
async fn readiness_waits_for_the_svid_and_malformed_events_are_dead_lettered() {
    let nats = NatsServer::start().await.unwrap();
    // No entry for the attestor yet.
    let spire = Spire::start(SpireOptions::default()).await.unwrap();
    let bus = TestBus::connect(&nats, "watcher").await;
    let attestor = start_attestor(attestor_config(&nats.url(), &spire.agent_endpoint(), "")).await;
    wait::until_true("NATS and the topology", TIMEOUT, || async {
        matches!(
            attestor.context.readiness.status(),
            countersign_runtime::health::ReadinessStatus::Pending(ref pending)
                if pending == &["first SVID and trust bundle received".to_owned()]
        )
    })
    .await
    .unwrap();
    register_attestor(&spire).await;
    attestor.wait_ready().await;

    // A finished event whose SPIFFE ID is another TaskRun's contradicts itself: poison.
    let victim = taskrun("victim");
    let mut subscriber = bus
        .bus
        .jetstream()
        .client()
        .subscribe(bus.bus.subjects().deadletter("attestor").unwrap())
        .await
        .unwrap();
    bus.finished(finished(
        &victim,
        Utc::now(),
        Some(taskrun_id("someone-else")),
        Vec::new(),
        Vec::new(),
        &[],
    ))
    .await;
    let message = tokio::time::timeout(TIMEOUT, subscriber.next())
        .await
        .unwrap()
        .unwrap();
    let letter =
        DeadLetter::from_parts(message.headers.as_ref().unwrap(), message.payload).unwrap();
    assert_eq!(letter.reason, "rejected");
    assert_eq!(letter.code.as_deref(), Some("malformed_event"));
    // And no attestation was made for it.
    let store = AttestationStore::open(bus.bus.jetstream(), bus.bus.subjects())
        .await
        .unwrap();
    assert!(store.get(&victim.uid).await.unwrap().is_none());
}

#[tokio::test]
async fn the_optional_annotation_marks_the_taskrun_and_never_a_recreated_one() {
    use countersign_attestor::annotate::{DIGEST_ANNOTATION, VERDICT_ANNOTATION};
    use countersign_test_support::kube::{
        KubeApiserver, create_strict, taskrun_fixture, taskrun_resource,
    };
    use countersign_verdict::attestation::envelope_digest;
    use kube::api::{Api, DynamicObject};

    let kube = KubeApiserver::shared().await;
    let namespace = kube.unique_namespace("attestor").await.unwrap();
    let fixture = taskrun_fixture("taskrun-03-succeeded.json", &namespace).unwrap();
    let created = create_strict(
        &kube.client(),
        &taskrun_resource(),
        Some(&namespace),
        &fixture.object,
    )
    .await
    .unwrap();
    let name = created.metadata.name.clone().unwrap();
    let uid = created.metadata.uid.clone().unwrap();

    let nats = NatsServer::start().await.unwrap();
    let spire = spire_with_attestor(SpireOptions::default()).await;
    let bus = TestBus::connect(&nats, "watcher").await;
    let extra = format!(
        "[annotate]\nenabled = true\nkubeconfig = \"{}\"\n",
        kube.kubeconfig_path().display()
    );
    let attestor = start_attestor(attestor_config(
        &nats.url(),
        &spire.agent_endpoint(),
        &extra,
    ))
    .await;
    attestor.wait_ready().await;

    // The TaskRun declares and wrote nothing: `no_results`, annotated with the envelope digest.
    let reference = countersign_events::data::TaskRunRef {
        cluster: "test".into(),
        namespace: namespace.clone(),
        name: name.clone(),
        uid: uid.clone(),
    };
    bus.finished(finished(
        &reference,
        Utc::now(),
        None,
        Vec::new(),
        Vec::new(),
        &[],
    ))
    .await;
    let event = bus.attestation(&uid).await;
    let digest = envelope_digest(&event.data.attestation().envelope);
    let api: Api<DynamicObject> =
        Api::namespaced_with(kube.client(), &namespace, &taskrun_resource());
    let annotations = wait::until("the verdict annotation", TIMEOUT, || async {
        let taskrun = api.get(&name).await.ok()?;
        let annotations = taskrun.metadata.annotations?;
        annotations
            .contains_key(VERDICT_ANNOTATION)
            .then_some(annotations)
    })
    .await
    .unwrap();
    assert_eq!(annotations[VERDICT_ANNOTATION], "no_results");
    assert_eq!(
        annotations[DIGEST_ANNOTATION],
        format!("sha256:{}", digest.to_hex())
    );

    // An attestation of another TaskRun of the same name (another UID) leaves it alone.
    let other = countersign_events::data::TaskRunRef {
        uid: countersign_test_support::unique_name("uid"),
        ..reference
    };
    let unsigned = [typed_result("commit", "abc")];
    bus.finished(finished(
        &other,
        Utc::now(),
        None,
        Vec::new(),
        unsigned.to_vec(),
        &["commit"],
    ))
    .await;
    let event = bus.attestation(&other.uid).await;
    assert_eq!(rejected_reason(&event), ReasonCode::UnsignedResults);
    wait::until_true("both finished events handled", TIMEOUT, || async {
        attestor.metric("countersign_attestor_verification_duration_seconds_count") == 2.0
    })
    .await
    .unwrap();
    let taskrun = api.get(&name).await.unwrap();
    let annotations = taskrun.metadata.annotations.unwrap();
    assert_eq!(annotations[VERDICT_ANNOTATION], "no_results");

    // Without `patch` on taskruns the annotator fails for good, not transiently.
    let powerless = kube
        .client_impersonating("system:serviceaccount:nowhere:attestor", &[])
        .unwrap();
    let error = countersign_attestor::annotate::Annotator::new(powerless)
        .annotate(&namespace, &name, &uid, "verified", "00")
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        countersign_attestor::annotate::AnnotateError::Forbidden { .. }
    ));
    assert!(!error.is_transient());
    assert_eq!(
        countersign_attestor::AttestError::Annotate(error).poison_code(),
        Some("annotation_forbidden")
    );
}

#[tokio::test]
async fn a_rotated_trust_bundle_is_used_without_a_restart() {
    let nats = NatsServer::start().await.unwrap();
    // A one-minute CA: SPIRE prepares the next CA (added to the bundle) at half its life and
    // activates it at five sixths, as it does with real lifetimes.
    let spire = spire_with_attestor(SpireOptions {
        node_name: "node-rotate".into(),
        ca_ttl: Some(Duration::from_secs(60)),
        default_x509_svid_ttl: Some(Duration::from_secs(10)),
        ..SpireOptions::default()
    })
    .await;
    let bus = TestBus::connect(&nats, "watcher").await;
    let attestor = start_attestor(attestor_config(&nats.url(), &spire.agent_endpoint(), "")).await;
    attestor.wait_ready().await;
    let mut original = TrustBundleSet::new();
    original
        .add_pem_detecting_trust_domains(spire.bundle_pem())
        .unwrap();

    // The agent sends the bundle with the next CA; the running attestor takes it.
    wait::until_true("the rotated bundle in the attestor", TIMEOUT, || async {
        attestor.metric("countersign_attestor_trust_bundle_authorities") == 2.0
    })
    .await
    .unwrap();

    // Once the next CA is active, a step's SVID is signed by it: the bundle the attestor
    // started with would not trust it.
    let taskrun = taskrun("after-rotation");
    let pod = Pod::register(&spire, &taskrun_id(&taskrun.name)).await;
    let entries = wait::until("an SVID from the next CA", TIMEOUT, || async {
        let entries = pod.sign(&FIXTURE_RESULTS).await;
        let leaf = SvidLeaf::from_pem(&svid_of(&entries)).ok()?;
        original
            .verify_chain(&leaf, &[], Utc::now())
            .is_err()
            .then_some(entries)
    })
    .await
    .unwrap();
    bus.finished(finished(
        &taskrun,
        Utc::now() - TimeDelta::seconds(30),
        Some(taskrun_id(&taskrun.name)),
        vec![step("build", entries.clone(), Utc::now())],
        merged(&entries),
        &[],
    ))
    .await;
    let event = bus.attestation(&taskrun.uid).await;
    assert!(
        matches!(&event.data, AttestationEvent::Verified(verified) if verified.verdict == Verdict::Verified),
        "{:?}",
        event.data
    );
}
