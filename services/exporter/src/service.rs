//! The exporter service: connect to NATS, apply the bus topology, bind the exports bucket (the
//! attestor creates it; the exporter waits for it) and the durable consumer `exporter` on
//! `{p}.export.stored.>` (shared by every replica), and attach until shutdown.
//!
//! Readiness: `/readyz` waits for `nats connected`, `streams created`, `exports bucket bound`
//! and `consumer exporter bound`. Until then the exporter keeps trying (with backoff) instead of
//! exiting.
//!
//! Shutdown: the consumer stops pulling, lets the attachments in flight finish (each request is
//! bounded by `[push] timeout`) and settles them; one still running when the grace period ends is
//! abandoned unacknowledged and redelivered after the ack wait. Nothing is lost: pushes are
//! idempotent.

use std::sync::Arc;

use countersign_events::{
    Bus, ConsumerSpec, DurableError, EventMetrics, SetupError, SubjectError, Subjects, run_durable,
};
use countersign_runtime::http_client::{HttpClientError, HttpClientOptions, http_client};
use countersign_runtime::nats::NatsConnectError;
use countersign_runtime::{Context, error_chain};
use countersign_verdict::export_store::ExportStore;
use countersign_verdict::store::StoreError;
use tokio::task::JoinSet;

use crate::attach::Exporter;
use crate::config::ExporterConfig;
use crate::metrics::ExporterMetrics;
use crate::registry::RegistryClient;

/// The service's name: in logs and the NATS client name (`countersign-exporter`).
pub const SERVICE_NAME: &str = "exporter";

/// Why the exporter stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// NATS cannot be connected to, and retrying will not help (the credentials file).
    #[error(transparent)]
    Nats(#[from] NatsConnectError),
    /// A subject or consumer name could not be built.
    #[error("building a name")]
    Name(#[from] SubjectError),
    /// The topology could not be applied and retrying will not help.
    #[error("setting up the bus")]
    Setup(#[from] SetupError),
    /// The exports bucket could not be bound and retrying will not help.
    #[error("binding the exports bucket")]
    Store(#[from] StoreError),
    /// The registry client could not be built (the CA file).
    #[error("building the registry client: {0}")]
    Client(String),
    /// The consumer ended for good.
    #[error("consuming")]
    Consume(#[from] DurableError),
    /// The consumer's task panicked.
    #[error("the consumer's task panicked")]
    Panicked(#[from] tokio::task::JoinError),
}

impl From<HttpClientError> for RunError {
    fn from(error: HttpClientError) -> RunError {
        RunError::Client(error_chain(&error))
    }
}

/// Runs the exporter until the context's shutdown.
pub async fn run(ctx: Context<ExporterConfig>) -> Result<(), RunError> {
    let config = Arc::clone(&ctx.config);
    let subjects = Subjects::new(&config.bus.prefix)?;
    let spec = ConsumerSpec::exporter(&subjects);
    let nats_connected = ctx.readiness.latch("nats connected");
    let streams_latch = ctx.readiness.latch("streams created");
    let bucket_latch = ctx.readiness.latch("exports bucket bound");
    let consumer_latch = ctx.readiness.latch(format!("consumer {} bound", spec.name));
    let event_metrics = EventMetrics::new();
    let exporter_metrics = ExporterMetrics::new();
    ctx.metrics.with_registry(|registry| {
        event_metrics.register(registry);
        exporter_metrics.register(registry);
    });

    // What can be checked without NATS first: a bad CA file stops the exporter at once.
    let roots = config.push.trust_roots().map_err(RunError::Client)?;
    let http = http_client(
        HttpClientOptions::new()
            .roots(roots)
            .timeout(config.push.timeout),
    )?;
    let client = RegistryClient::new(http, config.push.max_index_bytes);

    let Some(nats) = ctx.connect_nats(&config.nats, nats_connected).await? else {
        return Ok(());
    };
    let bus = Bus::new(nats.clone(), config.bus.clone(), event_metrics)?;
    if ctx
        .startup(streams_latch, SetupError::is_transient, || {
            bus.ensure_streams()
        })
        .await?
        .is_none()
    {
        return Ok(());
    }
    // The attestor creates the bucket; until it has, the exporter is not ready and waits.
    let Some(store) = ctx
        .startup(
            bucket_latch,
            |error: &StoreError| {
                error.is_transient()
                    || error.kind() == countersign_verdict::store::StoreErrorKind::MissingBucket
            },
            || ExportStore::open(bus.jetstream(), bus.subjects()),
        )
        .await?
    else {
        return Ok(());
    };
    let consumer_config = config.consumer.clone();
    let Some(consumer) = ctx
        .startup(consumer_latch, SetupError::is_transient, || {
            bus.ensure_consumer(&spec, &consumer_config)
        })
        .await?
    else {
        return Ok(());
    };
    tracing::info!(
        consumer = %spec.name,
        registries = ?config.registries.iter().map(|registry| registry.host.as_str()).collect::<Vec<_>>(),
        "exporter ready"
    );

    let handler = Exporter::new(config, store, client, exporter_metrics);
    let mut tasks = JoinSet::new();
    let token = ctx.shutdown.token();
    tasks.spawn(async move {
        run_durable(&bus, &spec, consumer, handler, token)
            .await
            .map_err(|error| {
                tracing::error!(error = %error_chain(&error), "the exporter's consumer stopped for good");
                RunError::Consume(error)
            })
    });
    ctx.run_until_shutdown(Some(&nats), tasks).await
}
