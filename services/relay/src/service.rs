//! The relay service: connect to NATS, apply the bus topology, bind one durable consumer per
//! sink (`relay-<sink>`, shared by every replica), and run each sink's consumer until shutdown.
//!
//! Readiness: `/readyz` waits for `nats connected` (the streams were created or found) and for
//! `consumer relay-<sink> bound` of every sink. Until then, and while NATS is unreachable at
//! start-up, the relay keeps trying (with backoff) instead of exiting.
//!
//! Shutdown: every sink's consumer stops pulling, lets the deliveries in flight finish (each is
//! bounded by its sink's `timeout`) and settles them; a delivery still running when the grace
//! period ends is abandoned unacknowledged and redelivered after the ack wait. Nothing is lost.
//!
//! A sink whose consumer ends for good (deleted on the server and not recreatable, a
//! configuration the server refuses) stops the whole relay with an error, after the other sinks
//! have settled what they had in flight.

use countersign_events::{
    Bus, ConsumeError, ConsumerConfig, ConsumerSpec, DurableConsumer, EventMetrics, RetryPolicy,
    SetupError, SubjectError, Subjects, run_consumer,
};
use countersign_runtime::config::Environment;
use countersign_runtime::nats::{NatsConnectError, connect};
use countersign_runtime::retry::{Backoff, retry_transient};
use countersign_runtime::{Context, error_chain};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{RelayConfig, SinkConfig};
use crate::filter::SinkFilter;
use crate::forward::SinkHandler;
use crate::metrics::RelayMetrics;
use crate::sink::{Sink, SinkError};

/// Why the relay stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A sink could not be set up (its CA file, its headers).
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// NATS cannot be connected to, and retrying will not help (the credentials file).
    #[error(transparent)]
    Nats(#[from] NatsConnectError),
    /// A subject or consumer name could not be built.
    #[error("building a name")]
    Name(#[from] SubjectError),
    /// The topology could not be applied and retrying will not help.
    #[error("setting up the bus")]
    Setup(#[from] SetupError),
    /// A sink's consumer ended for good.
    #[error("consuming for sink {sink}")]
    Consume {
        sink: String,
        #[source]
        source: ConsumeError,
    },
    /// A sink's task panicked.
    #[error("a sink's task panicked")]
    Panicked(#[source] tokio::task::JoinError),
}

/// The relay's `run`, for `run_main`: [`run_with_environment`] with the process environment
/// (read once, for headers configured `from_env`).
pub async fn run(ctx: Context<RelayConfig>) -> Result<(), RunError> {
    run_with_environment(ctx, Environment::from_process()).await
}

/// Runs the relay until the context's shutdown, reading `from_env` headers from `env`.
pub async fn run_with_environment(
    ctx: Context<RelayConfig>,
    env: Environment,
) -> Result<(), RunError> {
    let config = ctx.config.clone();
    let token = ctx.shutdown.token();
    let bus_subjects = Subjects::new(&config.bus.prefix)?;
    let mut planned = Vec::with_capacity(config.sinks.len());
    for sink_config in &config.sinks {
        let filter = SinkFilter::new(&sink_config.filter);
        let spec = filter.consumer_spec(&bus_subjects, &sink_config.name)?;
        planned.push((sink_config, filter, spec));
    }
    let nats_connected = ctx.readiness.latch("nats connected");
    let consumer_latches: Vec<_> = planned
        .iter()
        .map(|(_, _, spec)| ctx.readiness.latch(format!("consumer {} bound", spec.name)))
        .collect();
    let event_metrics = EventMetrics::new();
    ctx.metrics
        .with_registry(|registry| event_metrics.register(registry));
    let relay_metrics = RelayMetrics::register(&ctx.metrics);

    // Everything that can be checked without NATS first: a bad CA file or a missing header
    // secret stops the relay at once.
    let mut sinks = Vec::with_capacity(planned.len());
    for (sink_config, _, _) in &planned {
        sinks.push(Sink::new(sink_config, &env).await?);
    }

    let client_name = format!("countersign-{}", ctx.service_name);
    let Some(client) = connect(&config.nats, &client_name, &token).await? else {
        return Ok(());
    };
    let bus = Bus::new(client, config.bus.clone(), event_metrics)?;
    if retry_setup("creating the streams", &token, || bus.ensure_streams())
        .await?
        .is_none()
    {
        return Ok(());
    }
    nats_connected.release();

    // Bind every consumer before any runs, so a consumer the server refuses stops the relay
    // before a single delivery.
    let mut bound = Vec::with_capacity(planned.len());
    for ((sink_config, filter, spec), latch) in planned.into_iter().zip(consumer_latches) {
        let consumer_config = sink_config.consumer_config();
        let Some(consumer) = bind_consumer(&bus, &spec, &consumer_config, &token).await? else {
            return Ok(());
        };
        latch.release();
        tracing::info!(sink = %sink_config.name, consumer = %spec.name, url = %redacted_url(sink_config), "sink ready");
        bound.push((sink_config, filter, spec, consumer_config, consumer));
    }

    // One token for every sink: when one fails for good, the others stop too.
    let sinks_token = token.child_token();
    let mut tasks = JoinSet::new();
    for ((sink_config, filter, spec, consumer_config, consumer), sink) in
        bound.into_iter().zip(sinks)
    {
        let handler = SinkHandler::new(
            sink,
            filter,
            RetryPolicy::of(&consumer_config),
            relay_metrics.for_sink(&sink_config.name),
        );
        tasks.spawn(run_sink(
            bus.clone(),
            spec,
            consumer_config,
            consumer,
            handler,
            sinks_token.clone(),
            sink_config.name.clone(),
        ));
    }

    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let error = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(error)) => error,
            Err(join_error) => RunError::Panicked(join_error),
        };
        tracing::error!(error = %error_chain(&error), "a sink stopped for good; stopping the relay");
        sinks_token.cancel();
        failure.get_or_insert(error);
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// The sink's URL without credentials or query, for logs.
fn redacted_url(sink: &SinkConfig) -> String {
    let mut url = sink.url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.to_string()
}

/// Runs a setup step until it succeeds, retrying transient failures with backoff. `Ok(None)` when
/// shutdown came first.
async fn retry_setup<T, F, Fut>(
    what: &str,
    token: &CancellationToken,
    step: F,
) -> Result<Option<T>, SetupError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SetupError>>,
{
    retry_transient(
        what,
        token,
        Backoff::startup(),
        SetupError::is_transient,
        step,
    )
    .await
}

async fn bind_consumer(
    bus: &Bus,
    spec: &ConsumerSpec,
    config: &ConsumerConfig,
    token: &CancellationToken,
) -> Result<Option<DurableConsumer>, SetupError> {
    retry_setup("binding a sink's consumer", token, || {
        bus.ensure_consumer(spec, config)
    })
    .await
}

/// Runs one sink's consumer until `token` is cancelled, binding it again when the server lost it.
async fn run_sink(
    bus: Bus,
    spec: ConsumerSpec,
    config: ConsumerConfig,
    mut consumer: DurableConsumer,
    handler: SinkHandler,
    token: CancellationToken,
    sink: String,
) -> Result<(), RunError> {
    let mut backoff = Backoff::startup();
    loop {
        let error = match run_consumer(&consumer, handler.clone(), token.clone()).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if !error.is_transient() {
            return Err(RunError::Consume {
                sink,
                source: error,
            });
        }
        tracing::warn!(sink = %sink, error = %error_chain(&error), "the consumer ended; binding it again");
        if !backoff.wait(&token).await {
            return Ok(());
        }
        consumer = match bind_consumer(&bus, &spec, &config, &token).await? {
            Some(consumer) => consumer,
            None => return Ok(()),
        };
    }
}
