//! The attestor service: [`run`] takes the runtime's [`Context`] and does, in order, each step
//! behind its own readiness latch:
//!
//! 1. connect to NATS (retried until it answers) — latch `nats connected`;
//! 2. create or update the streams, bind the shared durable consumer `attestor` (every replica
//!    binds the same one and they split the work) and the KV buckets — latch
//!    `streams, consumer and buckets bound`;
//! 3. get the attestor's SVID and the trust bundles from the Workload API (retried), and keep
//!    them current in a tracked task — latch `first SVID and trust bundle received`;
//! 4. consume until shutdown, finishing and settling the messages in flight.

use std::time::Duration;

use countersign_events::{
    Bus, ConsumeError, ConsumerSpec, Delivery, Event, EventMetrics, EventSource, LifecycleEvent,
    SetupError, SubjectError, run_consumer,
};
use countersign_identity::workload::EndpointConfigError;
use countersign_runtime::Context;
use tokio_util::sync::CancellationToken;

use crate::annotate::{AnnotateError, Annotator};
use crate::config::AttestorConfig;
use crate::handler::{Attestor, AttestorParts};
use crate::material::{connect_with_retry as connect_workload_api, keep_current, material_channel};
use crate::metrics::AttestorMetrics;
use crate::nats::{ConnectError, connect};
use crate::store::{AttestationStore, StepStore, StoreError};

/// The service's name: in logs, the CloudEvent source (`/countersign/attestor`), the NATS client.
pub const SERVICE_NAME: &str = "attestor";

/// Why the attestor stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The Workload API address is invalid.
    #[error("the Workload API address")]
    Endpoint(#[from] EndpointConfigError),
    /// The trust domain is invalid (validated at load time; kept for callers that skip it).
    #[error("spire.trust_domain: {0}")]
    TrustDomain(String),
    /// The annotator could not be set up.
    #[error("setting up the TaskRun annotator")]
    Annotator(#[from] AnnotateError),
    /// NATS refused us for good (credentials).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The subject prefix is invalid.
    #[error("the subject prefix")]
    Prefix(#[from] SubjectError),
    /// The streams or the consumer could not be set up for good.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A bucket could not be set up for good.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The consumer stopped for good.
    #[error(transparent)]
    Consume(#[from] ConsumeError),
}

/// How long to wait between attempts at a start-up step.
const SETUP_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Runs the attestor until shutdown. `spiffe_endpoint_socket` is the `SPIFFE_ENDPOINT_SOCKET`
/// variable, read by `main` (used when `[spire] socket_path` is not set).
pub async fn run(
    ctx: Context<AttestorConfig>,
    spiffe_endpoint_socket: Option<String>,
) -> Result<(), RunError> {
    let config = ctx.config.clone();
    let nats_latch = ctx.readiness.latch("nats connected");
    let topology_latch = ctx.readiness.latch("streams, consumer and buckets bound");
    let material_latch = ctx.readiness.latch("first SVID and trust bundle received");

    let bus_metrics = EventMetrics::new();
    let metrics = AttestorMetrics::new();
    ctx.metrics.with_registry(|registry| {
        bus_metrics.register(registry);
        metrics.register(registry);
    });
    let endpoint = config.spire.endpoint(spiffe_endpoint_socket.as_deref())?;
    let trust_domain = config.spire.trust_domain().map_err(RunError::TrustDomain)?;
    let annotator = if config.annotate.enabled {
        Some(Annotator::from_config(config.annotate.kubeconfig.as_deref()).await?)
    } else {
        None
    };
    let token = ctx.shutdown.token();

    // 1. NATS.
    let client_name = format!("countersign-{SERVICE_NAME}");
    let Some(client) = retry(
        "connecting to NATS",
        &token,
        || connect(&config.nats, &client_name),
        ConnectError::is_transient,
    )
    .await?
    else {
        return Ok(());
    };
    nats_latch.release();
    tracing::info!(url = %config.nats.url, "connected to NATS");

    // 2. Streams, the consumer, the buckets.
    let bus = Bus::new(client.clone(), config.bus.clone(), bus_metrics)?;
    let Some(()) = retry(
        "creating the streams",
        &token,
        || bus.ensure_streams(),
        SetupError::is_transient,
    )
    .await?
    else {
        return Ok(());
    };
    let spec = ConsumerSpec::attestor(bus.subjects());
    let Some(consumer) = retry(
        "binding the attestor consumer",
        &token,
        || bus.ensure_consumer(&spec, &config.consumer),
        SetupError::is_transient,
    )
    .await?
    else {
        return Ok(());
    };
    let Some(attestations) = retry(
        "creating the attestation buckets",
        &token,
        || AttestationStore::ensure(&bus, &config.store),
        StoreError::is_transient,
    )
    .await?
    else {
        return Ok(());
    };
    let Some(steps) = retry(
        "creating the step verdicts bucket",
        &token,
        || StepStore::ensure(&bus, &config.store),
        StoreError::is_transient,
    )
    .await?
    else {
        return Ok(());
    };
    topology_latch.release();

    // 3. The attestor's SVID and the trust bundles, kept current.
    let (sender, mut material) = material_channel();
    let Some(source) =
        connect_workload_api(&endpoint, config.spire.first_svid_timeout, &token).await
    else {
        return Ok(());
    };
    let material_metrics = metrics.clone();
    ctx.shutdown
        .spawn(move |token| keep_current(source, sender, material_metrics, token));
    tokio::select! {
        () = token.cancelled() => return Ok(()),
        _ = material.wait_first() => {}
    }
    material_latch.release();
    tracing::info!(
        endpoint = endpoint.as_str(),
        "received the attestor's SVID and trust bundles"
    );

    // 4. Consume.
    let attestor = Attestor::new(AttestorParts {
        publisher: bus.publisher(EventSource::service(SERVICE_NAME)),
        subjects: bus.subjects().clone(),
        jetstream: bus.jetstream().clone(),
        attestations,
        steps,
        material,
        trust_domain,
        clock_skew: config.spire.clock_skew,
        annotator,
        metrics,
    });
    let mut consumer = consumer;
    let mut backoff = Duration::from_millis(200);
    loop {
        let handler = {
            let attestor = attestor.clone();
            move |event: Event<LifecycleEvent>, delivery: Delivery| {
                let attestor = attestor.clone();
                async move { attestor.handle(event, delivery).await }
            }
        };
        match run_consumer(&consumer, handler, token.clone()).await {
            Ok(()) => break,
            Err(error) if error.is_transient() => {
                tracing::warn!(error = %crate::steps::error_chain(&error), "the consumer stopped; binding it again");
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(SETUP_BACKOFF_MAX);
                let Some(bound) = retry(
                    "binding the attestor consumer",
                    &token,
                    || bus.ensure_consumer(&spec, &config.consumer),
                    SetupError::is_transient,
                )
                .await?
                else {
                    break;
                };
                consumer = bound;
            }
            Err(error) => return Err(error.into()),
        }
    }
    if let Err(error) = client.drain().await {
        tracing::debug!(%error, "draining the NATS connection");
    }
    Ok(())
}

/// Runs `attempt` until it succeeds, fails for good (`is_transient` false), or `token` is
/// cancelled (`Ok(None)`), backing off between attempts.
async fn retry<T, E, F, Fut>(
    what: &str,
    token: &CancellationToken,
    mut attempt: F,
    is_transient: fn(&E) -> bool,
) -> Result<Option<T>, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = tokio::select! {
            () = token.cancelled() => return Ok(None),
            result = attempt() => result,
        };
        match result {
            Ok(value) => return Ok(Some(value)),
            Err(error) if is_transient(&error) => {
                tracing::warn!(error = %crate::steps::error_chain(&error), "{what} failed; retrying");
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            () = token.cancelled() => return Ok(None),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(SETUP_BACKOFF_MAX);
    }
}
