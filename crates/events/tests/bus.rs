//! The bus against a real nats-server (one per test): round trips of every event type,
//! deduplication, redelivery, dead letters for poison and malformed input, shutdown in the middle
//! of a handler, stream and consumer updates at start-up and work split between replicas (trace
//! propagation is in `tests/trace.rs`). Every event a test publishes is validated against its
//! committed schema first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use countersign_events::data::*;
use countersign_events::{
    AnyEvent, AttestationEvent, Bus, BusConfig, ConsumeOutcome, ConsumerConfig, ConsumerSpec,
    Delivery, DurableConsumer, Event, EventMetrics, EventPayload, EventSource, EventType, Family,
    HandlerError, LifecycleEvent, RegistrationEvent, StreamKind, StreamSetup, run_consumer, schema,
};
use countersign_test_support::bus::{message_count, publish_checked, wait_dead_letters};
use countersign_test_support::nats::{NatsOptions, NatsServer};
use countersign_test_support::wait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(30);

// === fixtures ===

fn taskrun(name: &str) -> TaskRunRef {
    TaskRunRef {
        cluster: "prod.eu".into(),
        namespace: "team-a".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
    }
}

fn time(seconds: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 8, 20, 10, 0, seconds)
        .single()
        .expect("a valid time")
}

fn pod(name: &str) -> PodRef {
    PodRef {
        name: format!("{name}-pod"),
        uid: format!("pod-uid-{name}"),
    }
}

fn spiffe_id(name: &str) -> String {
    format!("spiffe://example.org/ns/team-a/taskrun/{name}")
}

fn step(name: &str) -> StepRecord {
    StepRecord {
        name: name.into(),
        container: format!("step-{name}"),
        exit_code: 0,
        started_at: Some(time(1)),
        finished_at: Some(time(9)),
        results: vec![
            TerminationEntry {
                key: "commit".into(),
                value: "abc123".into(),
                r#type: 1,
            },
            TerminationEntry {
                key: "SVID".into(),
                value: "-----BEGIN CERTIFICATE-----\nMIIB\n".into(),
                r#type: 1,
            },
            TerminationEntry {
                key: "commit.sig".into(),
                value: "MEUCIQ==".into(),
                r#type: 1,
            },
            TerminationEntry {
                key: "RESULT_MANIFEST".into(),
                value: "commit".into(),
                r#type: 1,
            },
            TerminationEntry {
                key: "StartedAt".into(),
                value: "2026-08-20T10:00:01.000Z".into(),
                r#type: 3,
            },
        ],
    }
}

fn attestation() -> SignedAttestation {
    SignedAttestation {
        envelope: DsseEnvelope {
            payload_type: "application/vnd.in-toto+json".into(),
            payload: "eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEifQ==".into(),
            signatures: vec![DsseSignature {
                keyid: "spiffe://example.org/attestor".into(),
                sig: "MEQCIA==".into(),
            }],
        },
        certificates: vec!["-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into()],
        rfc3161_timestamps: Vec::new(),
    }
}

fn entry(kind: EntryKind, name: &str) -> RegistrationEntry {
    RegistrationEntry {
        entry_id: format!("countersign-{name}"),
        spiffe_id: spiffe_id(name),
        parent_id: "spiffe://example.org/tekton-node/node-1".into(),
        selectors: vec![
            format!("k8s:pod-uid:pod-uid-{name}"),
            format!("k8s:pod-name:{name}-pod"),
        ],
        kind,
        cluster: "prod.eu".into(),
        taskrun: (kind == EntryKind::Workload).then(|| taskrun(name)),
        node_name: Some("node-1.example".into()),
        expires_at: Some(time(59)),
    }
}

/// One event of every type.
fn samples() -> Vec<AnyEvent> {
    let name = "build.v1";
    vec![
        AnyEvent::TaskRunCreated(TaskRunCreated {
            taskrun: taskrun(name),
            created_at: time(0),
            service_account: Some("default".into()),
            timeout_seconds: Some(3600),
            task_name: Some("build".into()),
        }),
        AnyEvent::TaskRunScheduled(TaskRunScheduled {
            taskrun: taskrun(name),
            taskrun_created_at: time(0),
            pod: pod(name),
            node_name: "node-1.example".into(),
            service_account: "default".into(),
            spiffe_id: spiffe_id(name),
            timeout_seconds: None,
        }),
        AnyEvent::StepCompleted(StepCompleted {
            taskrun: taskrun(name),
            taskrun_created_at: time(0),
            pod: pod(name),
            spiffe_id: spiffe_id(name),
            step: step("compile"),
        }),
        AnyEvent::TaskRunFinished(TaskRunFinished {
            taskrun: taskrun(name),
            taskrun_created_at: time(0),
            pod: Some(pod(name)),
            spiffe_id: Some(spiffe_id(name)),
            outcome: Outcome::Succeeded,
            reason: "Succeeded".into(),
            message: "All Steps have completed executing".into(),
            started_at: Some(time(1)),
            completed_at: Some(time(10)),
            results: vec![
                TaskRunResult {
                    name: "commit".into(),
                    r#type: ResultType::String,
                    value: "abc123".into(),
                },
                TaskRunResult {
                    name: "images".into(),
                    r#type: ResultType::Array,
                    value: serde_json::json!(["a", "b"]),
                },
            ],
            steps: vec![step("compile")],
            oversized: None,
            declared_results: vec!["commit".into(), "images".into()],
        }),
        AnyEvent::TaskRunDeleted(TaskRunDeleted {
            taskrun: taskrun(name),
            pod: Some(pod(name)),
        }),
        AnyEvent::EntryRegistered(EntryRegistered {
            entry: entry(EntryKind::Workload, name),
        }),
        AnyEvent::EntryReleased(EntryReleased {
            entry: entry(EntryKind::NodeAlias, "node"),
            release_reason: ReleaseReason::NodeIdle,
        }),
        AnyEvent::AttestationVerified(AttestationVerified {
            taskrun: taskrun(name),
            verdict: Verdict::Verified,
            spiffe_id: Some(spiffe_id(name)),
            svid_fingerprint: Some("ab".repeat(32)),
            subjects: vec![ResultSubject {
                name: "commit".into(),
                sha256: "cd".repeat(32),
            }],
            attestation: attestation(),
            attested_at: time(30),
        }),
        AnyEvent::AttestationRejected(AttestationRejected {
            taskrun: taskrun("other"),
            reason: ReasonCode::SignatureInvalid,
            message: "commit.sig does not verify".into(),
            step: Some("compile".into()),
            spiffe_id: Some(spiffe_id("other")),
            attestation: attestation(),
            attested_at: time(31),
        }),
        AnyEvent::AttestationRevoked(AttestationRevoked {
            taskrun: taskrun(name),
            trust_domain: "example.org".into(),
            authority: "ef".repeat(32),
            how: RevocationKind::Removed,
            sequence_number: 7,
            chains: vec![SigningChain::Signer],
            attestation: attestation(),
            attested_at: time(30),
            revoked_at: time(40),
        }),
        AnyEvent::ExportStored(ExportStored {
            taskrun: taskrun(name),
            verdict: ExportedVerdict::Verified,
            bundle_key: "uid-1.attestation".into(),
            vsas: vec![ExportedVsa {
                key: "uid-1.vsa.1".into(),
                artifact: Some(ExportedArtifact {
                    uri: "registry.example.org/app".into(),
                    digest: format!("sha256:{}", "ab".repeat(32)),
                }),
                resource_uri: "registry.example.org/app".into(),
                verification_result: VsaResult::Passed,
            }],
            attested_at: time(30),
        }),
        AnyEvent::TrustBundleRotated(TrustBundleRotated {
            trust_domain: "example.org".into(),
            sequence_number: 3,
            bundle_digest: "ef".repeat(32),
            authorities: vec![BundleAuthority {
                sha256: "01".repeat(32),
                tainted: false,
            }],
            previous_sequence_number: Some(2),
            revoked_authorities: Vec::new(),
            first_seen: time(32),
        }),
        AnyEvent::GateAllowed(GateAllowed {
            cluster: "prod".into(),
            kind: AdmittedKind::TaskRun,
            namespace: "ci".into(),
            name: "release-deploy".into(),
            request_uid: "review-1".into(),
            mode: GateModeSnapshot::Enforce,
            denials: Vec::new(),
            decided_at: time(32),
        }),
        AnyEvent::GateDenied(GateDenied {
            cluster: "prod".into(),
            kind: AdmittedKind::TaskRun,
            namespace: "ci".into(),
            name: "release-deploy".into(),
            request_uid: "review-2".into(),
            mode: GateModeSnapshot::Enforce,
            denials: vec![GateDenial {
                code: "value_differs".into(),
                message: "param image differs from the signed value".into(),
                upstream_taskrun: Some("release-build".into()),
                result: Some("IMAGE_DIGEST".into()),
            }],
            decided_at: time(33),
        }),
        AnyEvent::GateWarned(GateWarned {
            cluster: "prod".into(),
            kind: AdmittedKind::Pod,
            namespace: "ci".into(),
            name: "app".into(),
            request_uid: "review-3".into(),
            mode: GateModeSnapshot::Warn,
            denials: vec![GateDenial {
                code: "image_not_verified".into(),
                message: "no verified TaskRun produced the image".into(),
                upstream_taskrun: None,
                result: None,
            }],
            decided_at: time(34),
        }),
    ]
}

/// The types the family consumers (lifecycle, registration, attestation) take: all but the gate's.
/// The types the per-family consumers below take: exports, trust bundles and gate decisions
/// share streams with them but have no family enum of their own here.
fn consumed_types() -> impl Iterator<Item = EventType> {
    EventType::ALL.into_iter().filter(|event_type| {
        matches!(
            event_type.family(),
            Family::TaskRun | Family::Registration | Family::Attestation
        )
    })
}

fn deleted(name: &str) -> TaskRunDeleted {
    TaskRunDeleted {
        taskrun: taskrun(name),
        pod: None,
    }
}

// === helpers ===

struct Setup {
    server: NatsServer,
    bus: Bus,
    metrics: EventMetrics,
}

async fn setup() -> Setup {
    setup_with(BusConfig::default()).await
}

async fn setup_with(config: BusConfig) -> Setup {
    let server = NatsServer::start().await.expect("starting nats-server");
    let metrics = EventMetrics::new();
    let bus = Bus::new(server.client().await, config, metrics.clone()).expect("a valid prefix");
    bus.ensure_streams().await.expect("creating the streams");
    Setup {
        server,
        bus,
        metrics,
    }
}

/// A consumer config for tests: short waits, few deliveries.
fn quick_config() -> ConsumerConfig {
    ConsumerConfig {
        ack_wait: Duration::from_secs(2),
        max_deliver: Some(3),
        nak_backoff: vec![Duration::from_millis(50), Duration::from_millis(100)],
        concurrency: 4,
        ..ConsumerConfig::default()
    }
}

fn spec(bus: &Bus, name: &str, stream: StreamKind, family: Family) -> ConsumerSpec {
    ConsumerSpec {
        name: name.into(),
        stream,
        filter_subjects: vec![bus.subjects().family_events(family)],
        description: "test".into(),
    }
}

/// Waits until the consumer has nothing pending or unacknowledged.
async fn settled(consumer: &DurableConsumer) {
    let inner = consumer.inner().clone();
    wait::until_true("the consumer to settle everything", TIMEOUT, || {
        let mut inner = inner.clone();
        async move {
            let info = inner.info().await.expect("consumer info");
            info.num_pending == 0 && info.num_ack_pending == 0
        }
    })
    .await
    .expect("the consumer settles");
}

async fn recv<T>(receiver: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(TIMEOUT, receiver.recv())
        .await
        .expect("a message in time")
        .expect("the channel is open")
}

// === tests ===

#[tokio::test]
async fn every_event_type_round_trips_through_the_stream() {
    let setup = setup().await;
    let bus = &setup.bus;
    let publisher = bus.publisher(EventSource::service("test"));
    let mut sent = BTreeMap::new();
    for data in samples() {
        let event = Event::observed_at(publisher.source(), time(45), data);
        let published = publish_checked(&publisher, &event).await;
        assert!(!published.duplicate);
        sent.insert(event.id.clone(), event);
    }
    assert_eq!(sent.len(), EventType::ALL.len());

    let (sender, mut receiver) = mpsc::unbounded_channel::<Event<AnyEvent>>();
    let shutdown = CancellationToken::new();
    let mut runs = Vec::new();
    for (kind, family) in [
        (StreamKind::TaskRuns, Family::TaskRun),
        (StreamKind::Registrations, Family::Registration),
        (StreamKind::Attestations, Family::Attestation),
        (StreamKind::Attestations, Family::Export),
        (StreamKind::Trust, Family::Trust),
        (StreamKind::Attestations, Family::Gate),
    ] {
        let consumer = bus
            .ensure_consumer(
                &spec(bus, &format!("all-{family}"), kind, family),
                &quick_config(),
            )
            .await
            .expect("the consumer");
        let sender = sender.clone();
        let shutdown = shutdown.clone();
        runs.push(tokio::spawn(async move {
            run_consumer(
                &consumer,
                move |event: Event<AnyEvent>, _delivery: Delivery| {
                    let sender = sender.clone();
                    async move {
                        sender.send(event).map_err(HandlerError::transient)?;
                        Ok(())
                    }
                },
                shutdown,
            )
            .await
        }));
    }
    let mut received = BTreeMap::new();
    for _ in 0..sent.len() {
        let event = recv(&mut receiver).await;
        received.insert(event.id.clone(), event);
    }
    assert_eq!(received, sent);
    for (id, event) in &received {
        assert_eq!(event.event_type, event.data.event_type(), "{id}");
        assert_eq!(event.source, "/countersign/test");
    }
    shutdown.cancel();
    for run in runs {
        run.await
            .expect("the consumer task")
            .expect("the consumer stops cleanly");
    }
    assert_eq!(message_count(bus, StreamKind::DeadLetter).await, 0);

    // The family enums decode their own types.
    let lifecycle = bus
        .ensure_consumer(
            &spec(bus, "lifecycle", StreamKind::TaskRuns, Family::TaskRun),
            &quick_config(),
        )
        .await
        .expect("the consumer");
    let registrations = bus
        .ensure_consumer(
            &spec(
                bus,
                "registrations",
                StreamKind::Registrations,
                Family::Registration,
            ),
            &quick_config(),
        )
        .await
        .expect("the consumer");
    let attestations = bus
        .ensure_consumer(
            &spec(
                bus,
                "attestations",
                StreamKind::Attestations,
                Family::Attestation,
            ),
            &quick_config(),
        )
        .await
        .expect("the consumer");
    let (types_sender, mut types) = mpsc::unbounded_channel::<EventType>();
    let shutdown = CancellationToken::new();
    let (first, second, third) = (types_sender.clone(), types_sender.clone(), types_sender);
    let consuming = async {
        tokio::join!(
            run_consumer(
                &lifecycle,
                move |event: Event<LifecycleEvent>, _: Delivery| {
                    let first = first.clone();
                    async move {
                        first
                            .send(event.data.event_type())
                            .map_err(HandlerError::transient)
                    }
                },
                shutdown.clone(),
            ),
            run_consumer(
                &registrations,
                move |event: Event<RegistrationEvent>, _: Delivery| {
                    let second = second.clone();
                    async move {
                        second
                            .send(event.data.event_type())
                            .map_err(HandlerError::transient)
                    }
                },
                shutdown.clone(),
            ),
            run_consumer(
                &attestations,
                move |event: Event<AttestationEvent>, _: Delivery| {
                    let third = third.clone();
                    async move {
                        third
                            .send(event.data.event_type())
                            .map_err(HandlerError::transient)
                    }
                },
                shutdown.clone(),
            ),
        )
    };
    let collecting = async {
        let mut seen = BTreeSet::new();
        for _ in 0..consumed_types().count() {
            seen.insert(recv(&mut types).await);
        }
        shutdown.cancel();
        seen
    };
    let (results, seen) = tokio::join!(consuming, collecting);
    results.0.expect("lifecycle consumer");
    results.1.expect("registration consumer");
    results.2.expect("attestation consumer");
    assert_eq!(seen, consumed_types().collect());
    assert_eq!(message_count(bus, StreamKind::DeadLetter).await, 0);
}

#[tokio::test]
async fn a_second_publish_of_the_same_event_is_dropped_as_a_duplicate() {
    let setup = setup().await;
    let bus = &setup.bus;
    let publisher = bus.publisher(EventSource::service("watcher"));
    let event = publisher.event(deleted("dup"));
    let first = publish_checked(&publisher, &event).await;
    // The same transition observed again later: same id, new time.
    let again = Event {
        time: Utc::now(),
        ..event.clone()
    };
    let second = publish_checked(&publisher, &again).await;
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(second.sequence, first.sequence);
    assert_eq!(message_count(bus, StreamKind::TaskRuns).await, 1);
    let other = publish_checked(&publisher, &publisher.event(deleted("other"))).await;
    assert!(!other.duplicate);
    assert_eq!(message_count(bus, StreamKind::TaskRuns).await, 2);
}

#[tokio::test]
async fn a_transient_failure_is_nakked_and_redelivered() {
    let setup = setup().await;
    let bus = &setup.bus;
    let publisher = bus.publisher(EventSource::service("watcher"));
    publish_checked(&publisher, &publisher.event(deleted("retry"))).await;
    let consumer = bus
        .ensure_consumer(
            &spec(bus, "flaky", StreamKind::TaskRuns, Family::TaskRun),
            &quick_config(),
        )
        .await
        .expect("the consumer");
    let (attempts_sender, mut attempts) = mpsc::unbounded_channel::<u64>();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let consumer = consumer.clone();
        let shutdown = shutdown.clone();
        async move {
            run_consumer(
                &consumer,
                move |_event: Event<TaskRunDeleted>, delivery: Delivery| {
                    let attempts_sender = attempts_sender.clone();
                    async move {
                        let _ = attempts_sender.send(delivery.attempt);
                        if delivery.attempt == 1 {
                            Err(HandlerError::transient("spire unavailable"))
                        } else {
                            Ok(())
                        }
                    }
                },
                shutdown,
            )
            .await
        }
    });
    assert_eq!(recv(&mut attempts).await, 1);
    assert_eq!(recv(&mut attempts).await, 2);
    settled(&consumer).await;
    shutdown.cancel();
    run.await.expect("the consumer task").expect("a clean stop");
    assert_eq!(
        setup.metrics.consumed_count("flaky", ConsumeOutcome::Nak),
        1
    );
    assert_eq!(
        setup.metrics.consumed_count("flaky", ConsumeOutcome::Ack),
        1
    );
    assert_eq!(message_count(bus, StreamKind::DeadLetter).await, 0);
}

#[tokio::test]
async fn a_transient_failure_with_its_own_delay_is_not_redelivered_before_it() {
    let setup = setup().await;
    let bus = &setup.bus;
    let publisher = bus.publisher(EventSource::service("watcher"));
    publish_checked(&publisher, &publisher.event(deleted("later"))).await;
    // The computed backoff after the first attempt is 50 ms; the handler asks for 1 s.
    let config = ConsumerConfig {
        nak_backoff: vec![Duration::from_millis(50), Duration::from_secs(5)],
        ..quick_config()
    };
    let asked = Duration::from_secs(1);
    let consumer = bus
        .ensure_consumer(
            &spec(bus, "patient", StreamKind::TaskRuns, Family::TaskRun),
            &config,
        )
        .await
        .expect("the consumer");
    let (attempts_sender, mut attempts) = mpsc::unbounded_channel::<(u64, Instant)>();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let consumer = consumer.clone();
        let shutdown = shutdown.clone();
        async move {
            run_consumer(
                &consumer,
                move |_event: Event<TaskRunDeleted>, delivery: Delivery| {
                    let attempts_sender = attempts_sender.clone();
                    async move {
                        let _ = attempts_sender.send((delivery.attempt, Instant::now()));
                        if delivery.attempt == 1 {
                            Err(HandlerError::transient_after(
                                asked,
                                "429 Too Many Requests",
                            ))
                        } else {
                            Ok(())
                        }
                    }
                },
                shutdown,
            )
            .await
        }
    });
    let (first, first_at) = recv(&mut attempts).await;
    let (second, second_at) = recv(&mut attempts).await;
    assert_eq!((first, second), (1, 2));
    assert!(
        second_at.duration_since(first_at) >= asked,
        "redelivered after {:?}, before the {asked:?} the handler asked for",
        second_at.duration_since(first_at)
    );
    settled(&consumer).await;
    shutdown.cancel();
    run.await.expect("the consumer task").expect("a clean stop");
    assert_eq!(
        setup.metrics.consumed_count("patient", ConsumeOutcome::Nak),
        1
    );
    assert_eq!(message_count(bus, StreamKind::DeadLetter).await, 0);
}

#[tokio::test]
async fn poison_is_dead_lettered_exactly_once_with_its_reason_then_terminated() {
    let setup = setup().await;
    let bus = &setup.bus;
    let publisher = bus.publisher(EventSource::service("watcher"));
    let event = publisher.event(deleted("poison"));
    publish_checked(&publisher, &event).await;
    let consumer = bus
        .ensure_consumer(
            &spec(bus, "strict", StreamKind::TaskRuns, Family::TaskRun),
            &quick_config(),
        )
        .await
        .expect("the consumer");
    let calls = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let consumer = consumer.clone();
        let shutdown = shutdown.clone();
        let calls = calls.clone();
        async move {
            run_consumer(
                &consumer,
                move |_event: Event<TaskRunDeleted>, _delivery: Delivery| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        Err(HandlerError::poison(
                            "entry_conflict",
                            "the entry belongs to someone else",
                        ))
                    }
                },
                shutdown,
            )
            .await
        }
    });
    let letters = wait_dead_letters(bus, 1).await;
    settled(&consumer).await;
    shutdown.cancel();
    run.await.expect("the consumer task").expect("a clean stop");

    assert_eq!(message_count(bus, StreamKind::DeadLetter).await, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let letter = &letters[0];
    assert_eq!(letter.reason, "rejected");
    assert_eq!(letter.code.as_deref(), Some("entry_conflict"));
    assert_eq!(letter.consumer, "strict");
    assert_eq!(
        letter.original_stream,
        bus.subjects().stream_name(StreamKind::TaskRuns)
    );
    assert_eq!(letter.original_sequence, 1);
    assert_eq!(
        letter.original_subject,
        bus.subjects()
            .for_taskrun(EventType::TaskRunDeleted, &taskrun("poison"))
            .expect("a subject")
    );
    assert_eq!(letter.original_msg_id.as_deref(), Some(event.id.as_str()));
    assert_eq!(letter.deliveries, 1);
    assert_eq!(letter.header("ce-id"), Some(event.id.as_str()));
    assert_eq!(
        letter.header("ce-type"),
        Some(EventType::TaskRunDeleted.as_str())
    );
    let body: TaskRunDeleted = serde_json::from_slice(&letter.body).expect("the original body");
    assert_eq!(body, event.data);
    let mut inner = consumer.inner().clone();
    let info = inner.info().await.expect("consumer info");
    assert_eq!(info.ack_floor.stream_sequence, 1);
    assert_eq!(info.num_redelivered, 0);
}

#[tokio::test]
async fn a_transient_failure_on_the_last_delivery_is_dead_lettered_as_retries_exhausted() {
    let setup = setup().await;
    let bus = &setup.bus;
    let publisher = bus.publisher(EventSource::service("watcher"));
    publish_checked(&publisher, &publisher.event(deleted("hopeless"))).await;
    let config = ConsumerConfig {
        max_deliver: Some(2),
        ..quick_config()
    };
    let consumer = bus
        .ensure_consumer(
            &spec(bus, "hopeless", StreamKind::TaskRuns, Family::TaskRun),
            &config,
        )
        .await
        .expect("the consumer");
    let attempts = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let consumer = consumer.clone();
        let shutdown = shutdown.clone();
        let attempts = attempts.clone();
        async move {
            run_consumer(
                &consumer,
                move |_event: Event<LifecycleEvent>, _delivery: Delivery| {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    async move { Err(HandlerError::transient("still down")) }
                },
                shutdown,
            )
            .await
        }
    });
    let letters = wait_dead_letters(bus, 1).await;
    settled(&consumer).await;
    shutdown.cancel();
    run.await.expect("the consumer task").expect("a clean stop");
    assert_eq!(letters[0].reason, "retries_exhausted");
    assert_eq!(letters[0].deliveries, 2);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(message_count(bus, StreamKind::DeadLetter).await, 1);
}

/// A message published by hand on a TaskRun subject.
async fn publish_raw(bus: &Bus, name: &str, headers: HeaderMap, body: impl Into<Bytes>) -> u64 {
    let subject = bus
        .subjects()
        .for_taskrun(EventType::TaskRunDeleted, &taskrun(name))
        .expect("a subject");
    let ack = bus
        .jetstream()
        .publish_with_headers(subject, headers, body.into())
        .await
        .expect("sending");
    ack.await.expect("stored").sequence
}

fn binary_headers(event: &Event<TaskRunDeleted>) -> (HeaderMap, Bytes) {
    countersign_events::encode(event).expect("encoding")
}

fn with_header(headers: &HeaderMap, name: &str, value: Option<&str>) -> HeaderMap {
    let mut edited = HeaderMap::new();
    for (key, values) in headers.iter() {
        if !AsRef::<str>::as_ref(key).eq_ignore_ascii_case(name) {
            for value in values {
                edited.append(key.clone(), value.clone());
            }
        }
    }
    if let Some(value) = value {
        edited.insert(name, value);
    }
    edited
}

#[tokio::test]
async fn malformed_input_is_dead_lettered_with_its_own_reason_and_other_modes_are_accepted() {
    let setup = setup().await;
    let bus = &setup.bus;
    let source = EventSource::service("watcher");
    let good = Event::new(&source, deleted("good"));
    schema::validate_event(&good).expect("the event matches its schema");
    let (headers, body) = binary_headers(&good);

    let mut expected: BTreeMap<u64, &str> = BTreeMap::new();
    expected.insert(
        publish_raw(bus, "a", HeaderMap::new(), body.clone()).await,
        "missing_attribute",
    );
    expected.insert(
        publish_raw(
            bus,
            "b",
            with_header(&headers, "ce-subject", Some("team-a%2")),
            body.clone(),
        )
        .await,
        "invalid_percent_encoding",
    );
    expected.insert(
        publish_raw(bus, "c", headers.clone(), "not json at all").await,
        "not_json",
    );
    expected.insert(
        publish_raw(
            bus,
            "d",
            with_header(&headers, "ce-type", Some("com.example.unknown.v1")),
            body.clone(),
        )
        .await,
        "unknown_type",
    );
    expected.insert(
        publish_raw(bus, "e", headers.clone(), vec![b' '; 4096]).await,
        "payload_too_large",
    );
    expected.insert(
        publish_raw(
            bus,
            "f",
            with_header(&headers, "ce-specversion", Some("0.3")),
            body.clone(),
        )
        .await,
        "unsupported_specversion",
    );
    expected.insert(
        publish_raw(
            bus,
            "g",
            with_header(&headers, "ce-time", Some("not a time")),
            body.clone(),
        )
        .await,
        "invalid_attribute",
    );
    expected.insert(
        publish_raw(bus, "h", headers.clone(), r#"{"taskrun": 5}"#).await,
        "data_mismatch",
    );

    // Structured mode, and a Go SDK style publisher's capitalised `Content-Type`.
    let structured = Event::new(&source, deleted("structured"));
    schema::validate_event(&structured).expect("the event matches its schema");
    let mut structured_headers = HeaderMap::new();
    structured_headers.insert("Content-Type", "application/cloudevents+json");
    let structured_body =
        serde_json::to_vec(&structured.to_cloudevent().expect("a CloudEvent")).expect("JSON");
    publish_raw(bus, "structured", structured_headers, structured_body).await;
    let plain = Event::new(&source, deleted("plain"));
    schema::validate_event(&plain).expect("the event matches its schema");
    let (plain_headers, plain_body) = binary_headers(&plain);
    let plain_headers = with_header(&plain_headers, "content-type", None);
    let plain_headers = with_header(
        &plain_headers,
        "Content-Type",
        Some("application/json; charset=utf-8"),
    );
    publish_raw(bus, "plain", plain_headers, plain_body).await;

    let config = ConsumerConfig {
        max_payload_bytes: 2048,
        ..quick_config()
    };
    let consumer = bus
        .ensure_consumer(
            &spec(bus, "picky", StreamKind::TaskRuns, Family::TaskRun),
            &config,
        )
        .await
        .expect("the consumer");
    let (sender, mut receiver) = mpsc::unbounded_channel::<Event<TaskRunDeleted>>();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let consumer = consumer.clone();
        let shutdown = shutdown.clone();
        async move {
            run_consumer(
                &consumer,
                move |event: Event<TaskRunDeleted>, _delivery: Delivery| {
                    let sender = sender.clone();
                    async move { sender.send(event).map_err(HandlerError::transient) }
                },
                shutdown,
            )
            .await
        }
    });
    let mut accepted = vec![recv(&mut receiver).await, recv(&mut receiver).await];
    accepted.sort_by(|left, right| left.id.cmp(&right.id));
    assert_eq!(accepted, vec![plain, structured]);

    let letters = wait_dead_letters(bus, expected.len() as u64).await;
    settled(&consumer).await;
    shutdown.cancel();
    run.await
        .expect("the consumer task")
        .expect("the consumer never crashed");
    let reasons: BTreeMap<u64, &str> = letters
        .iter()
        .map(|letter| (letter.original_sequence, letter.reason.as_str()))
        .collect();
    assert_eq!(reasons, expected);
    for letter in &letters {
        assert_eq!(letter.consumer, "picky");
        assert!(!letter.detail.is_empty());
    }
    assert_eq!(
        message_count(bus, StreamKind::DeadLetter).await,
        expected.len() as u64
    );
}

#[tokio::test]
async fn cancelling_in_the_middle_of_a_handler_finishes_and_acks_it() {
    let setup = setup().await;
    let bus = &setup.bus;
    let publisher = bus.publisher(EventSource::service("watcher"));
    publish_checked(&publisher, &publisher.event(deleted("slow"))).await;
    let consumer = bus
        .ensure_consumer(
            &spec(bus, "graceful", StreamKind::TaskRuns, Family::TaskRun),
            &quick_config(),
        )
        .await
        .expect("the consumer");
    let (started_sender, mut started) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let effects = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let consumer = consumer.clone();
        let shutdown = shutdown.clone();
        let release = release.clone();
        let effects = effects.clone();
        async move {
            run_consumer(
                &consumer,
                move |_event: Event<TaskRunDeleted>, _delivery: Delivery| {
                    let started_sender = started_sender.clone();
                    let release = release.clone();
                    let effects = effects.clone();
                    async move {
                        let _ = started_sender.send(());
                        release.notified().await;
                        effects.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                },
                shutdown,
            )
            .await
        }
    });
    recv(&mut started).await;
    shutdown.cancel();
    assert!(
        !run.is_finished(),
        "the loop waits for the handler in flight"
    );
    release.notify_one();
    tokio::time::timeout(TIMEOUT, run)
        .await
        .expect("the loop returns once the handler is done")
        .expect("the consumer task")
        .expect("a clean stop");
    assert_eq!(effects.load(Ordering::SeqCst), 1);
    let mut inner = consumer.inner().clone();
    let info = inner.info().await.expect("consumer info");
    assert_eq!(info.ack_floor.stream_sequence, 1, "acked after its effect");
    assert_eq!(info.num_ack_pending, 0);
}

#[tokio::test]
async fn a_consumer_killed_in_the_middle_of_a_handler_loses_nothing() {
    let setup = setup().await;
    let bus = &setup.bus;
    let publisher = bus.publisher(EventSource::service("watcher"));
    let event = publisher.event(deleted("crash"));
    publish_checked(&publisher, &event).await;
    let config = ConsumerConfig {
        ack_wait: Duration::from_secs(1),
        ..quick_config()
    };
    let spec = spec(bus, "crashy", StreamKind::TaskRuns, Family::TaskRun);
    let consumer = bus
        .ensure_consumer(&spec, &config)
        .await
        .expect("the consumer");
    let (started_sender, mut started) = mpsc::unbounded_channel::<u64>();
    let doomed = tokio::spawn({
        let consumer = consumer.clone();
        async move {
            run_consumer(
                &consumer,
                move |_event: Event<TaskRunDeleted>, delivery: Delivery| {
                    let started_sender = started_sender.clone();
                    async move {
                        let _ = started_sender.send(delivery.attempt);
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                },
                CancellationToken::new(),
            )
            .await
        }
    });
    assert_eq!(recv(&mut started).await, 1);
    // The process dies: the handler never returns and nothing is acked.
    doomed.abort();
    let _ = doomed.await;

    // A new replica (its own connection) gets the message again.
    let replica_bus = Bus::new(
        setup.server.client().await,
        BusConfig::default(),
        EventMetrics::new(),
    )
    .expect("a valid prefix");
    let replica = replica_bus
        .ensure_consumer(&spec, &config)
        .await
        .expect("the consumer");
    let (sender, mut receiver) = mpsc::unbounded_channel::<(Event<TaskRunDeleted>, u64)>();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            run_consumer(
                &replica,
                move |event: Event<TaskRunDeleted>, delivery: Delivery| {
                    let sender = sender.clone();
                    async move {
                        sender
                            .send((event, delivery.attempt))
                            .map_err(HandlerError::transient)
                    }
                },
                shutdown,
            )
            .await
        }
    });
    let (redelivered, attempt) = recv(&mut receiver).await;
    assert_eq!(redelivered.id, event.id);
    assert!(attempt >= 2, "a redelivery, not a new message");
    settled(&consumer).await;
    shutdown.cancel();
    run.await.expect("the consumer task").expect("a clean stop");
}

#[tokio::test]
async fn streams_and_consumers_are_created_then_updated_at_start_up() {
    let server = NatsServer::start().await.expect("starting nats-server");
    let mut config = BusConfig::default();
    let bus = Bus::new(server.client().await, config.clone(), EventMetrics::new())
        .expect("a valid prefix");
    for kind in StreamKind::ALL {
        assert_eq!(
            bus.ensure_stream(kind).await.expect("creating"),
            StreamSetup::Created
        );
        assert_eq!(
            bus.ensure_stream(kind).await.expect("checking"),
            StreamSetup::Unchanged
        );
    }

    // A new deployment with other limits updates the stream in place.
    config.streams.taskruns.max_age = Duration::from_secs(3600);
    config.streams.taskruns.duplicate_window = Duration::from_secs(60);
    config.streams.taskruns.max_bytes = 64 * 1024 * 1024;
    let updated_bus =
        Bus::new(server.client().await, config, EventMetrics::new()).expect("a valid prefix");
    assert_eq!(
        updated_bus
            .ensure_stream(StreamKind::TaskRuns)
            .await
            .expect("updating"),
        StreamSetup::Updated
    );
    assert_eq!(
        updated_bus
            .ensure_stream(StreamKind::Attestations)
            .await
            .expect("checking"),
        StreamSetup::Unchanged
    );
    let mut stream = bus
        .jetstream()
        .get_stream("COUNTERSIGN_TASKRUNS")
        .await
        .expect("the stream");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.config.max_age, Duration::from_secs(3600));
    assert_eq!(info.config.duplicate_window, Duration::from_secs(60));
    assert_eq!(info.config.max_bytes, 64 * 1024 * 1024);
    assert_eq!(
        info.config.subjects,
        vec!["countersign.taskrun.>".to_owned()]
    );

    // Consumers: the service's declaration, then an update of its settings.
    let registrar = ConsumerSpec::registrar(bus.subjects());
    let consumer = bus
        .ensure_consumer(&registrar, &ConsumerConfig::default())
        .await
        .expect("creating");
    let mut inner = consumer.inner().clone();
    let info = inner.info().await.expect("consumer info");
    assert_eq!(info.config.durable_name.as_deref(), Some("registrar"));
    assert_eq!(
        info.config.filter_subjects,
        vec![
            "countersign.taskrun.scheduled.>".to_owned(),
            "countersign.taskrun.finished.>".to_owned(),
            "countersign.taskrun.deleted.>".to_owned(),
        ]
    );
    assert_eq!(info.config.max_deliver, 21);
    let changed = ConsumerConfig {
        ack_wait: Duration::from_secs(90),
        max_deliver: None,
        ..ConsumerConfig::default()
    };
    let consumer = bus
        .ensure_consumer(&registrar, &changed)
        .await
        .expect("updating");
    let mut inner = consumer.inner().clone();
    let info = inner.info().await.expect("consumer info");
    assert_eq!(info.config.ack_wait, Duration::from_secs(90));
    assert_eq!(info.config.max_deliver, -1);

    // KV buckets are created, then bound again.
    let spec = countersign_events::KvSpec {
        name: "attestations".into(),
        description: "attestation records".into(),
        config: countersign_events::KvConfig::default(),
    };
    let store = bus.ensure_kv(&spec).await.expect("creating the bucket");
    store.put("uid-1", "record".into()).await.expect("a put");
    let again = bus.ensure_kv(&spec).await.expect("binding the bucket");
    assert_eq!(
        again.get("uid-1").await.expect("a get").as_deref(),
        Some(&b"record"[..])
    );
}

#[tokio::test]
async fn a_kv_bucket_that_already_matches_is_not_updated() {
    // The service's user may not update streams: binding an unchanged bucket must not try.
    let server = NatsServer::start_with(NatsOptions {
        extra_config: r#"
authorization {
  users = [
    { user: admin, password: admin }
    { user: service, password: service, permissions: { publish: { deny: ["$JS.API.STREAM.UPDATE.>"] } } }
  ]
}
"#
        .into(),
        probe_credentials: Some(("admin".into(), "admin".into())),
    })
    .await
    .expect("starting nats-server");
    let connect = |user: &'static str| {
        let url = server.url();
        async move {
            async_nats::ConnectOptions::with_user_and_password(user.into(), user.into())
                .connect(url)
                .await
                .expect("connecting")
        }
    };
    let admin = Bus::new(
        connect("admin").await,
        BusConfig::default(),
        EventMetrics::new(),
    )
    .expect("a valid prefix");
    let service = Bus::new(
        connect("service").await,
        BusConfig::default(),
        EventMetrics::new(),
    )
    .expect("a valid prefix");
    let spec = countersign_events::KvSpec {
        name: "records".into(),
        description: "records".into(),
        config: countersign_events::KvConfig {
            max_age: Duration::from_secs(3600),
            ..countersign_events::KvConfig::default()
        },
    };
    let created = admin.ensure_kv(&spec).await.expect("creating the bucket");
    created.put("key", "value".into()).await.expect("a put");

    let bound = service
        .ensure_kv(&spec)
        .await
        .expect("binding the unchanged bucket needs no update");
    assert_eq!(
        bound.get("key").await.expect("a get").as_deref(),
        Some(&b"value"[..])
    );

    // A bucket that differs is updated.
    let changed = countersign_events::KvSpec {
        config: countersign_events::KvConfig {
            history: 5,
            ..spec.config.clone()
        },
        ..spec.clone()
    };
    let updated = admin
        .ensure_kv(&changed)
        .await
        .expect("updating the bucket");
    let mut stream = updated.stream.clone();
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.config.max_messages_per_subject, 5);
    assert_eq!(info.config.max_age, Duration::from_secs(3600));
    service
        .ensure_kv(&changed)
        .await
        .expect("binding the updated bucket needs no update either");
}

#[tokio::test]
async fn two_replicas_on_one_durable_consumer_split_the_work() {
    let setup = setup().await;
    let publisher = setup.bus.publisher(EventSource::service("watcher"));
    let total = 40;
    for index in 0..total {
        publish_checked(
            &publisher,
            &publisher.event(deleted(&format!("run-{index}"))),
        )
        .await;
    }
    let config = ConsumerConfig {
        concurrency: 1,
        ..quick_config()
    };
    let spec = spec(&setup.bus, "shared", StreamKind::TaskRuns, Family::TaskRun);
    let entered = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let (sender, mut receiver) = mpsc::unbounded_channel::<(usize, String)>();
    let shutdown = CancellationToken::new();
    let mut runs = Vec::new();
    for replica in 0..2 {
        // Each replica has its own connection, as separate pods would.
        let bus = Bus::new(
            setup.server.client().await,
            BusConfig::default(),
            EventMetrics::new(),
        )
        .expect("a valid prefix");
        let consumer = bus
            .ensure_consumer(&spec, &config)
            .await
            .expect("the consumer");
        let entered = entered.clone();
        let sender = sender.clone();
        let shutdown = shutdown.clone();
        runs.push(tokio::spawn(async move {
            run_consumer(
                &consumer,
                move |event: Event<TaskRunDeleted>, _delivery: Delivery| {
                    let entered = entered.clone();
                    let sender = sender.clone();
                    async move {
                        entered[replica].fetch_add(1, Ordering::SeqCst);
                        // Hold the first message until the other replica has one too: the
                        // consumer must hand the rest to the replica that is free.
                        wait::until_true("both replicas to get work", TIMEOUT, || {
                            let entered = entered.clone();
                            async move { entered.iter().all(|count| count.load(Ordering::SeqCst) > 0) }
                        })
                        .await
                        .map_err(HandlerError::transient)?;
                        sender.send((replica, event.id)).map_err(HandlerError::transient)
                    }
                },
                shutdown,
            )
            .await
        }));
    }
    let mut handled: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_replica = [0usize; 2];
    while handled.len() < total {
        let (replica, id) = recv(&mut receiver).await;
        per_replica[replica] += 1;
        handled.insert(id, replica);
    }
    shutdown.cancel();
    for run in runs {
        run.await.expect("the consumer task").expect("a clean stop");
    }
    assert_eq!(handled.len(), total);
    assert!(
        per_replica.iter().all(|count| *count > 0),
        "both replicas handled messages: {per_replica:?}"
    );
    assert_eq!(message_count(&setup.bus, StreamKind::DeadLetter).await, 0);
}
