//! The relay service: connect to NATS, apply the bus topology, bind one durable consumer per
//! sink (`relay-<sink>`, shared by every replica), and run each sink's consumer until shutdown.
//!
//! Readiness: `/readyz` waits for `nats connected`, `streams created` (created or found) and
//! `consumer relay-<sink> bound` of every sink. Until then, and while NATS is unreachable at
//! start-up, the relay keeps trying (with backoff) instead of exiting.
//!
//! Shutdown: every sink's consumer stops pulling, lets the deliveries in flight finish (each is
//! bounded by its sink's `timeout`) and settles them; a delivery still running when the grace
//! period ends is abandoned unacknowledged and redelivered after the ack wait. Nothing is lost.
//!
//! Each sink's consumer runs in `run_durable`: bound again (with backoff) when the server lost
//! it. A sink whose consumer ends for good (deleted on the server and not recreatable, a
//! configuration the server refuses) stops the whole relay with an error, after the other sinks
//! have settled what they had in flight.

use countersign_events::{
    Bus, DurableError, EventMetrics, RetryPolicy, SetupError, SubjectError, Subjects, run_durable,
};
use countersign_runtime::nats::NatsConnectError;
use countersign_runtime::{Context, error_chain};
use tokio::task::JoinSet;

use crate::config::{RelayConfig, SinkConfig};
use crate::filter::SinkFilter;
use crate::forward::SinkHandler;
use crate::metrics::RelayMetrics;
use crate::sink::{Sink, SinkError};

/// The service's name: in logs and the NATS client name (`countersign-relay`).
pub const SERVICE_NAME: &str = "relay";

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
        source: DurableError,
    },
    /// A sink's task panicked.
    #[error("a sink's task panicked")]
    Panicked(#[from] tokio::task::JoinError),
}

/// Runs the relay until the context's shutdown, reading `from_env` headers from the context's
/// environment. Returns at shutdown, after every sink settled what it had in flight and NATS was
/// drained.
pub async fn run(ctx: Context<RelayConfig>) -> Result<(), RunError> {
    let config = ctx.config.clone();
    let bus_subjects = Subjects::new(&config.bus.prefix)?;
    let mut planned = Vec::with_capacity(config.sinks.len());
    for sink_config in &config.sinks {
        let filter = SinkFilter::new(&sink_config.filter);
        let spec = filter.consumer_spec(&bus_subjects, &sink_config.name)?;
        planned.push((sink_config, filter, spec));
    }
    let nats_connected = ctx.readiness.latch("nats connected");
    let streams_latch = ctx.readiness.latch("streams created");
    let consumer_latches: Vec<_> = planned
        .iter()
        .map(|(_, _, spec)| ctx.readiness.latch(format!("consumer {} bound", spec.name)))
        .collect();
    let event_metrics = EventMetrics::new();
    let relay_metrics = RelayMetrics::new();
    ctx.metrics.with_registry(|registry| {
        event_metrics.register(registry);
        relay_metrics.register(registry);
    });

    // Everything that can be checked without NATS first: a bad CA file or a missing header
    // secret stops the relay at once.
    let mut sinks = Vec::with_capacity(planned.len());
    for (sink_config, _, _) in &planned {
        sinks.push(Sink::new(sink_config, &ctx.env).await?);
    }

    let Some(client) = ctx.connect_nats(&config.nats, nats_connected).await? else {
        return Ok(());
    };
    let bus = Bus::new(client.clone(), config.bus.clone(), event_metrics)?;
    if ctx
        .startup(streams_latch, SetupError::is_transient, || {
            bus.ensure_streams()
        })
        .await?
        .is_none()
    {
        return Ok(());
    }

    // Bind every consumer before any runs, so a consumer the server refuses stops the relay
    // before a single delivery.
    let mut bound = Vec::with_capacity(planned.len());
    for ((sink_config, filter, spec), latch) in planned.into_iter().zip(consumer_latches) {
        let consumer_config = sink_config.consumer_config();
        let Some(consumer) = ctx
            .startup(latch, SetupError::is_transient, || {
                bus.ensure_consumer(&spec, &consumer_config)
            })
            .await?
        else {
            return Ok(());
        };
        tracing::info!(sink = %sink_config.name, consumer = %spec.name, url = %redacted_url(sink_config), "sink ready");
        bound.push((sink_config, filter, spec, consumer_config, consumer));
    }

    // When one sink fails for good, the shutdown starts and the others stop too.
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
        let bus = bus.clone();
        let token = ctx.shutdown.token();
        let sink_name = sink_config.name.clone();
        tasks.spawn(async move {
            run_durable(&bus, &spec, consumer, handler, token)
                .await
                .map_err(|source| {
                    tracing::error!(sink = %sink_name, error = %error_chain(&source), "a sink stopped for good; stopping the relay");
                    RunError::Consume {
                        sink: sink_name,
                        source,
                    }
                })
        });
    }
    ctx.run_until_shutdown(Some(&client), tasks).await
}

/// The sink's URL without credentials or query, for logs.
fn redacted_url(sink: &SinkConfig) -> String {
    let mut url = sink.url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.to_string()
}
