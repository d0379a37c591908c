//! W3C trace context across the bus, against a real nats-server: the publisher's span context rides
//! in `ce-traceparent` and becomes the parent of the consumer's handler span.
//!
//! Alone in its own test binary: it installs a `tracing` subscriber as the thread's default, and
//! `tracing` caches callsite interest process-wide, so another test registering the same
//! callsites on another thread at the same moment could leave them disabled for this one.

use std::time::Duration;

use countersign_events::data::{TaskRunDeleted, TaskRunRef};
use countersign_events::{
    Bus, BusConfig, ConsumerConfig, ConsumerSpec, Delivery, Event, EventMetrics, EventSource,
    Family, HandlerError, StreamKind, run_consumer, schema,
};
use countersign_test_support::nats::NatsServer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn the_trace_context_of_the_publisher_is_the_parent_of_the_handler_span() {
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use tracing::Instrument as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer().with_tracer(provider.tracer("countersign-events-test")),
    );
    // A current-thread runtime runs every task on this thread, where this subscriber is the default.
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = NatsServer::start().await.expect("starting nats-server");
    let bus = &Bus::new(
        server.client().await,
        BusConfig::default(),
        EventMetrics::new(),
    )
    .expect("a valid prefix");
    bus.ensure_streams().await.expect("creating the streams");
    let publisher = bus.publisher(EventSource::service("watcher"));
    let taskrun = TaskRunRef {
        cluster: "prod".into(),
        namespace: "team-a".into(),
        name: "traced".into(),
        uid: "uid-traced".into(),
    };
    let event = publisher.event(TaskRunDeleted { taskrun, pod: None });
    schema::validate_event(&event).expect("the event matches its schema");
    let span = tracing::info_span!("observe_taskrun");
    let publisher_trace = span.context().span().span_context().trace_id();
    async { publisher.publish(&event).await.expect("publishing") }
        .instrument(span)
        .await;

    let stream = bus
        .jetstream()
        .get_stream("COUNTERSIGN_TASKRUNS")
        .await
        .expect("the stream");
    let stored = stream.get_raw_message(1).await.expect("the stored event");
    let traceparent = stored
        .headers
        .get("ce-traceparent")
        .expect("a traceparent header")
        .to_string();
    assert!(
        traceparent.contains(&publisher_trace.to_string()),
        "{traceparent}"
    );

    let spec = ConsumerSpec {
        name: "traced".into(),
        stream: StreamKind::TaskRuns,
        filter_subjects: vec![bus.subjects().family_events(Family::TaskRun)],
        description: "test".into(),
    };
    let consumer = bus
        .ensure_consumer(&spec, &ConsumerConfig::default())
        .await
        .expect("the consumer");
    let (sender, mut receiver) =
        mpsc::unbounded_channel::<(opentelemetry::trace::TraceId, Option<String>)>();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let consumer = consumer.clone();
        let shutdown = shutdown.clone();
        async move {
            run_consumer(
                &consumer,
                move |event: Event<TaskRunDeleted>, _delivery: Delivery| {
                    let sender = sender.clone();
                    async move {
                        let context = tracing::Span::current().context();
                        let trace_id = context.span().span_context().trace_id();
                        sender
                            .send((trace_id, event.traceparent))
                            .map_err(HandlerError::transient)
                    }
                },
                shutdown,
            )
            .await
        }
    });
    let (handler_trace, received_traceparent) = tokio::time::timeout(TIMEOUT, receiver.recv())
        .await
        .expect("handled in time")
        .expect("the channel is open");
    assert_eq!(handler_trace, publisher_trace);
    assert_eq!(received_traceparent.as_deref(), Some(traceparent.as_str()));
    shutdown.cancel();
    run.await.expect("the consumer task").expect("a clean stop");
}
