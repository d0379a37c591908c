//! The short ack wait against a real nats-server, through `run_durable` (the path every service
//! consumes with): a handler that works for several ack waits keeps its message with in-progress
//! acks (no other replica gets it), and the message of a consumer killed in the middle of its
//! handler is redelivered to the next replica within the default ack wait, seconds rather than
//! JetStream's 30 s default.

use std::time::Duration;

use countersign_events::data::{TaskRunDeleted, TaskRunRef};
use countersign_events::{
    Bus, BusConfig, ConsumerConfig, ConsumerSpec, Delivery, Event, EventMetrics, EventSource,
    Family, LifecycleEvent, StreamKind, progress_interval, run_durable,
};
use countersign_test_support::nats::NatsServer;
use countersign_test_support::wait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(30);

fn deleted(name: &str) -> LifecycleEvent {
    LifecycleEvent::Deleted(TaskRunDeleted {
        taskrun: TaskRunRef {
            cluster: "prod".into(),
            namespace: "team-a".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        },
        pod: None,
    })
}

fn spec(bus: &Bus) -> ConsumerSpec {
    ConsumerSpec {
        name: "ack-wait".into(),
        stream: StreamKind::TaskRuns,
        filter_subjects: vec![bus.subjects().family_events(Family::TaskRun)],
        description: "test".into(),
    }
}

/// A bus on its own connection: one replica, one process.
async fn replica(server: &NatsServer) -> Bus {
    let bus = Bus::new(
        server.client().await,
        BusConfig::default(),
        EventMetrics::new(),
    )
    .expect("a valid prefix");
    bus.ensure_streams().await.expect("creating the streams");
    bus
}

/// Runs `run_durable` on `bus` with a handler that reports each delivery's attempt on `seen`
/// and then works for `work` (`None`: for ever, until the task is killed).
fn spawn_replica(
    bus: Bus,
    config: ConsumerConfig,
    seen: mpsc::UnboundedSender<u64>,
    work: Option<Duration>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let spec = spec(&bus);
        let consumer = bus
            .ensure_consumer(&spec, &config)
            .await
            .expect("binding the consumer");
        let handler = move |_event: Event<LifecycleEvent>, delivery: Delivery| {
            let seen = seen.clone();
            async move {
                let _ = seen.send(delivery.attempt);
                match work {
                    // The work itself: the handler is busy this long.
                    Some(work) => tokio::time::sleep(work).await,
                    None => std::future::pending::<()>().await,
                }
                Ok(())
            }
        };
        run_durable(&bus, &spec, consumer, handler, shutdown)
            .await
            .expect("a clean stop");
    })
}

#[test]
fn progress_is_reported_several_times_per_ack_wait() {
    let ack_wait = ConsumerConfig::default().ack_wait;
    assert!(ack_wait <= Duration::from_secs(5), "the default is short");
    assert!(progress_interval(ack_wait) * 2 < ack_wait);
    assert_eq!(
        progress_interval(Duration::from_millis(1)),
        Duration::from_millis(100)
    );
}

#[tokio::test]
async fn a_handler_working_past_the_ack_wait_keeps_its_message_with_progress_acks() {
    let server = NatsServer::start().await.expect("starting nats-server");
    let config = ConsumerConfig {
        ack_wait: Duration::from_secs(1),
        ..ConsumerConfig::default()
    };
    let working_bus = replica(&server).await;
    let (working_seen, mut working_rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let working = spawn_replica(
        working_bus.clone(),
        config.clone(),
        working_seen,
        Some(config.ack_wait * 4),
        shutdown.clone(),
    );
    working_bus
        .publisher(EventSource::service("watcher"))
        .publish(&Event::new(
            &EventSource::service("watcher"),
            deleted("long"),
        ))
        .await
        .expect("publishing");
    let first = tokio::time::timeout(TIMEOUT, working_rx.recv())
        .await
        .expect("delivered in time");
    assert_eq!(first, Some(1));

    // A second replica on the same durable consumer while the first is still working.
    let (idle_seen, mut idle_rx) = mpsc::unbounded_channel();
    let idle = spawn_replica(
        replica(&server).await,
        config.clone(),
        idle_seen,
        Some(Duration::ZERO),
        shutdown.clone(),
    );

    // The work ends (after four ack waits) and the message is acked, delivered once.
    let stream = working_bus
        .jetstream()
        .get_stream(working_bus.subjects().stream_name(StreamKind::TaskRuns))
        .await
        .expect("the stream");
    wait::until_true("the message is acked", TIMEOUT, || {
        let stream = stream.clone();
        async move {
            let info = stream
                .consumer_info("ack-wait")
                .await
                .expect("consumer info");
            info.ack_floor.stream_sequence == 1 && info.num_ack_pending == 0
        }
    })
    .await
    .expect("acked");
    let info = stream
        .consumer_info("ack-wait")
        .await
        .expect("consumer info");
    assert_eq!(info.num_redelivered, 0, "never redelivered");
    assert!(working_rx.try_recv().is_err(), "the worker saw it once");
    assert!(
        idle_rx.try_recv().is_err(),
        "the other replica never got it"
    );

    shutdown.cancel();
    working.await.expect("no panic");
    idle.await.expect("no panic");
}

#[tokio::test]
async fn a_killed_consumers_message_is_redelivered_within_the_default_ack_wait() {
    let server = NatsServer::start().await.expect("starting nats-server");
    let config = ConsumerConfig::default();
    let doomed_bus = replica(&server).await;
    let (doomed_seen, mut doomed_rx) = mpsc::unbounded_channel();
    let doomed = spawn_replica(
        doomed_bus.clone(),
        config.clone(),
        doomed_seen,
        None,
        CancellationToken::new(),
    );
    doomed_bus
        .publisher(EventSource::service("watcher"))
        .publish(&Event::new(
            &EventSource::service("watcher"),
            deleted("killed"),
        ))
        .await
        .expect("publishing");
    let first = tokio::time::timeout(TIMEOUT, doomed_rx.recv())
        .await
        .expect("delivered in time");
    assert_eq!(first, Some(1));

    // The process dies in the middle of the handler: no ack, no nak, its connection gone.
    doomed.abort();
    let _ = doomed.await;
    drop(doomed_bus);
    let killed_at = tokio::time::Instant::now();

    // Its restarted replica gets the message again within the (short) ack wait, not 30 s later.
    let (restarted_seen, mut restarted_rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let restarted = spawn_replica(
        replica(&server).await,
        config.clone(),
        restarted_seen,
        Some(Duration::ZERO),
        shutdown.clone(),
    );
    let attempt = tokio::time::timeout(config.ack_wait * 2, restarted_rx.recv())
        .await
        .expect("redelivered within twice the default ack wait");
    assert_eq!(attempt, Some(2), "a redelivery of the killed one's message");
    assert!(killed_at.elapsed() < Duration::from_secs(30));

    shutdown.cancel();
    restarted.await.expect("no panic");
}
