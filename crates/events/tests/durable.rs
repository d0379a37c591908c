//! `run_durable` against a real nats-server: a durable consumer deleted on the server while it
//! runs is bound again and keeps handling events, and shutdown ends the loop.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use countersign_events::data::{PodRef, TaskRunRef, TaskRunScheduled};
use countersign_events::{
    Bus, BusConfig, ConsumerConfig, ConsumerSpec, Delivery, Event, EventMetrics, EventSource,
    LifecycleEvent, StreamKind, run_durable,
};
use countersign_test_support::nats::NatsServer;
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
