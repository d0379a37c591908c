//! `run_durable` against a real nats-server: a durable consumer deleted on the server while it
//! runs is bound again and keeps handling events, and shutdown ends the loop; on a JetStream
//! cluster, a consumer whose leader dies keeps consuming within seconds.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use countersign_events::data::{PodRef, TaskRunRef, TaskRunScheduled};
use countersign_events::{
    Bus, BusConfig, ConsumerConfig, ConsumerSpec, Delivery, Event, EventMetrics, EventSource,
    LifecycleEvent, StreamKind, run_durable,
};
use countersign_test_support::nats::{NatsCluster, NatsServer};
use countersign_test_support::wait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(30);

fn scheduled(name: &str) -> TaskRunScheduled {
    TaskRunScheduled {
        taskrun: TaskRunRef {
            cluster: "prod".into(),
            namespace: "team-a".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        },
        taskrun_created_at: Utc
            .with_ymd_and_hms(2026, 8, 20, 10, 0, 0)
            .single()
            .expect("a valid time"),
        pod: PodRef {
            name: format!("{name}-pod"),
            uid: format!("pod-uid-{name}"),
        },
        node_name: "node-1".into(),
        service_account: "default".into(),
        spiffe_id: format!("spiffe://example.org/ns/team-a/taskrun/{name}"),
        timeout_seconds: None,
    }
}

#[tokio::test]
async fn a_consumer_deleted_on_the_server_is_bound_again_and_keeps_consuming() {
    let server = NatsServer::start().await.expect("starting nats-server");
    let bus = Bus::new(
        server.client().await,
        BusConfig::default(),
        EventMetrics::new(),
    )
    .expect("a valid prefix");
    bus.ensure_streams().await.expect("creating the streams");
    let spec = ConsumerSpec::registrar(bus.subjects());
    let config = ConsumerConfig {
        ack_wait: Duration::from_secs(5),
        ..ConsumerConfig::default()
    };
    let consumer = bus
        .ensure_consumer(&spec, &config)
        .await
        .expect("binding the consumer");

    let (handled, mut handled_rx) = mpsc::unbounded_channel::<String>();
    let handler = move |event: Event<LifecycleEvent>, _delivery: Delivery| {
        let handled = handled.clone();
        async move {
            if let LifecycleEvent::Scheduled(scheduled) = event.data {
                let _ = handled.send(scheduled.taskrun.name);
            }
            Ok(())
        }
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let bus = bus.clone();
        let spec = spec.clone();
        let shutdown = shutdown.clone();
        async move { run_durable(&bus, &spec, consumer, handler, shutdown).await }
    });

    let publisher = bus.publisher(EventSource::service("watcher"));
    let source = EventSource::service("watcher");
    publisher
        .publish(&Event::new(
            &source,
            LifecycleEvent::Scheduled(scheduled("before")),
        ))
        .await
        .expect("publishing");
    let first = tokio::time::timeout(TIMEOUT, handled_rx.recv())
        .await
        .expect("handled before the deletion");
    assert_eq!(first.as_deref(), Some("before"));

    // Delete the durable consumer behind the loop's back.
    let stream_name = bus.subjects().stream_name(StreamKind::TaskRuns);
    let stream = bus
        .jetstream()
        .get_stream(&stream_name)
        .await
        .expect("the stream");
    stream
        .delete_consumer(&spec.name)
        .await
        .expect("deleting the consumer");

    // Bound again by the loop: the consumer exists again on the server...
    wait::until_true("the consumer is bound again", TIMEOUT, || {
        let stream = stream.clone();
        let name = spec.name.clone();
        async move { stream.consumer_info(&name).await.is_ok() }
    })
    .await
    .expect("bound again");
    // ...and an event published after the deletion is handled.
    publisher
        .publish(&Event::new(
            &source,
            LifecycleEvent::Scheduled(scheduled("after")),
        ))
        .await
        .expect("publishing");
    let mut names = Vec::new();
    while !names.iter().any(|name: &String| name == "after") {
        let next = tokio::time::timeout(TIMEOUT, handled_rx.recv())
            .await
            .expect("handled after the consumer was bound again")
            .expect("the handler is alive");
        names.push(next);
    }

    shutdown.cancel();
    let outcome = tokio::time::timeout(TIMEOUT, running)
        .await
        .expect("run_durable returns at shutdown")
        .expect("no panic");
    assert!(outcome.is_ok(), "{outcome:?}");
}

/// On a JetStream cluster a pull request is taken by the consumer's leader. One sent while the
/// consumer has none (its leader just died, the election is under way) is answered "no
/// responders", and the client then waits for it to expire: with its defaults (a 30 s expiry, a
/// 15 s heartbeat) the consumer sat idle for half a minute (seen in the chaos run as a pod waiting
/// a minute for its SVID). The loop asks again instead, so an event published once a new leader
/// is elected is handled within seconds.
#[tokio::test]
async fn on_a_cluster_a_consumer_whose_leader_dies_keeps_consuming_within_seconds() {
    let mut cluster = NatsCluster::start(3).await.expect("starting the cluster");
    let mut config = BusConfig::default();
    config.streams.taskruns.replicas = 3;
    let setup = Bus::new(
        cluster.client().await.expect("connecting"),
        config.clone(),
        EventMetrics::new(),
    )
    .expect("a valid prefix");
    setup.ensure_streams().await.expect("creating the streams");
    let spec = ConsumerSpec::registrar(setup.subjects());
    let consumer_config = ConsumerConfig {
        ack_wait: Duration::from_secs(5),
        ..ConsumerConfig::default()
    };
    setup
        .ensure_consumer(&spec, &consumer_config)
        .await
        .expect("creating the consumer");
    let stream = setup
        .jetstream()
        .get_stream(setup.subjects().stream_name(StreamKind::TaskRuns))
        .await
        .expect("the stream");
    // The node that leads the consumer, and a client on another one (a client on the dying node
    // would reconnect, and the client asks again after a reconnection anyway).
    let leader = wait::until("the consumer has a leader", TIMEOUT, || {
        let stream = stream.clone();
        let name = spec.name.clone();
        async move {
            let info = stream.consumer_info(&name).await.ok()?;
            info.cluster?.leader
        }
    })
    .await
    .expect("a leader");
    let leader_index: usize = leader
        .strip_prefix('n')
        .and_then(|index| index.parse().ok())
        .expect("nodes are named n<index>");
    let other = (leader_index + 1) % cluster.size();
    let bus = Bus::new(
        async_nats::connect(cluster.url(other))
            .await
            .expect("connecting to a follower"),
        config,
        EventMetrics::new(),
    )
    .expect("a valid prefix");
    let consumer = bus
        .ensure_consumer(&spec, &consumer_config)
        .await
        .expect("binding the consumer");
    // The leader dies; the loop's first pull goes out during the election.
    cluster.kill(leader_index);

    let (handled, mut handled_rx) = mpsc::unbounded_channel::<String>();
    let handler = move |event: Event<LifecycleEvent>, _delivery: Delivery| {
        let handled = handled.clone();
        async move {
            if let LifecycleEvent::Scheduled(scheduled) = event.data {
                let _ = handled.send(scheduled.taskrun.name);
            }
            Ok(())
        }
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let bus = bus.clone();
        let spec = spec.clone();
        let shutdown = shutdown.clone();
        async move { run_durable(&bus, &spec, consumer, handler, shutdown).await }
    });
    let source = EventSource::service("watcher");
    let publisher = bus.publisher(source.clone());
    // Published once the cluster takes writes again (the stream may have lost its leader too).
    wait::until_true("the stream takes writes again", TIMEOUT, || {
        let publisher = publisher.clone();
        let source = source.clone();
        async move {
            publisher
                .publish(&Event::new(
                    &source,
                    LifecycleEvent::Scheduled(scheduled("after")),
                ))
                .await
                .is_ok()
        }
    })
    .await
    .expect("the stream takes writes again");
    // Within seconds, not after the client's 30 s expiry of the lost request.
    let after = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(name) = handled_rx.recv().await {
            if name == "after" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        after,
        Ok(true),
        "the event published after the consumer's leader died was not handled within 15 s"
    );

    shutdown.cancel();
    let outcome = tokio::time::timeout(TIMEOUT, running)
        .await
        .expect("run_durable returns at shutdown")
        .expect("no panic");
    assert!(outcome.is_ok(), "{outcome:?}");
}
