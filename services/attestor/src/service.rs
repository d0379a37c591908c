//! The attestor service: [`run`] takes the runtime's [`Context`] and does, in order, each step
//! behind its own readiness latch:
//!
//! 1. connect to NATS (retried until it answers) — latch `nats connected`;
//! 2. create or update the streams, bind the shared durable consumer `attestor` (every replica
//!    binds the same one and they split the work) and the KV buckets — latch
//!    `streams, consumer and buckets bound`;
//! 3. get the attestor's SVID and the trust bundles from the Workload API (retried), and keep
//!    them current in a tracked task — latch `first SVID and trust bundle received`;
//! 4. consume until shutdown (`run_durable`: bound again when the server lost the consumer),
//!    finishing and settling the messages in flight; then drain NATS. Beside the lifecycle
//!    consumers, `attestor-revocations` takes the registrar's bundle-rotated events
//!    ([`crate::revocation`]).

use countersign_events::data::TrustBundleRotated;
use countersign_events::{
    Bus, ConsumerSpec, Delivery, DurableError, Event, EventMetrics, EventSource, LifecycleEvent,
    SetupError, SubjectError, run_durable,
};
use countersign_identity::workload::{EndpointConfigError, SPIFFE_ENDPOINT_SOCKET};
use countersign_runtime::Context;
use countersign_runtime::nats::NatsConnectError;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::annotate::{AnnotateError, Annotator};
use crate::config::AttestorConfig;
use crate::handler::{Attestor, AttestorParts};
use crate::lane::{Lane, Throttle, backlog_spec, lane_of};
use crate::material::{connect_with_retry as connect_workload_api, keep_current, material_channel};
use crate::metrics::AttestorMetrics;
use crate::revocation::Revoker;
use countersign_verdict::export_store::ExportStore;
use countersign_verdict::store::{AttestationStore, StoreError};

use crate::store::StepStore;
use crate::timestamp::{Timestamper, TimestamperSetupError};

/// The service's name: in logs, the CloudEvent source (`/countersign/attestor`), the NATS client.
pub const SERVICE_NAME: &str = "attestor";

/// Why the attestor stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The Workload API address is invalid.
    #[error("the Workload API address")]
    Endpoint(#[from] EndpointConfigError),
    /// The annotator could not be set up.
    #[error("setting up the TaskRun annotator")]
    Annotator(#[from] AnnotateError),
    /// The timestamp authority's client could not be set up (its chain file).
    #[error("setting up the timestamp authority client")]
    Timestamper(#[from] TimestamperSetupError),
    /// NATS cannot be connected to, and retrying will not help (the credentials file).
    #[error(transparent)]
    Connect(#[from] NatsConnectError),
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
    Consume(#[from] DurableError),
    /// A task panicked.
    #[error("an attestor task panicked")]
    Panicked(#[from] tokio::task::JoinError),
}

/// Runs the attestor until shutdown, then drains NATS. The `SPIFFE_ENDPOINT_SOCKET` variable of
/// the context's environment is used when `[spire] socket_path` is not set.
pub async fn run(ctx: Context<AttestorConfig>) -> Result<(), RunError> {
    let config = ctx.config.clone();
    let spiffe_endpoint_socket = ctx.env.get(SPIFFE_ENDPOINT_SOCKET);
    let nats_latch = ctx.readiness.latch("nats connected");
    let topology_latch = ctx.readiness.latch("streams, consumer and buckets bound");
    let material_latch = ctx.readiness.latch("first SVID and trust bundle received");

    let bus_metrics = EventMetrics::new();
    let metrics = AttestorMetrics::new();
    ctx.metrics.with_registry(|registry| {
        bus_metrics.register(registry);
        metrics.register(registry);
    });
    let endpoint = config.spire.endpoint(spiffe_endpoint_socket)?;
    let trust_domain = config.spire.trust_domain().into_trust_domain();
    let annotator = if config.annotate.enabled {
        Some(Annotator::from_config(config.annotate.kubeconfig.as_deref()).await?)
    } else {
        None
    };
    let timestamper = Timestamper::from_config(&config.timestamp, metrics.clone())?;
    let token = ctx.shutdown.token();

    // 1. NATS.
    let Some(client) = ctx.connect_nats(&config.nats, nats_latch).await? else {
        return Ok(());
    };

    // 2. Streams, the consumer, the buckets.
    let bus = Bus::new(client.clone(), config.bus.clone(), bus_metrics)?;
    let Some(()) = ctx
        .startup_step("creating the streams", SetupError::is_transient, || {
            bus.ensure_streams()
        })
        .await?
    else {
        return Ok(());
    };
    let spec = ConsumerSpec::attestor(bus.subjects());
    let Some(consumer) = ctx
        .startup_step(
            "binding the attestor consumer",
            SetupError::is_transient,
            || bus.ensure_consumer(&spec, &config.consumer),
        )
        .await?
    else {
        return Ok(());
    };
    let revocations = ConsumerSpec::attestor_revocations(bus.subjects());
    let Some(revocations_consumer) = ctx
        .startup_step(
            "binding the attestor's revocations consumer",
            SetupError::is_transient,
            || bus.ensure_consumer(&revocations, &config.consumer),
        )
        .await?
    else {
        return Ok(());
    };
    let backlog = if config.backlog.enabled {
        let backlog_spec = backlog_spec(bus.subjects());
        let backlog_config = config.backlog.consumer(&config.consumer);
        let Some(backlog_consumer) = ctx
            .startup_step(
                "binding the attestor's backlog consumer",
                SetupError::is_transient,
                || bus.ensure_consumer(&backlog_spec, &backlog_config),
            )
            .await?
        else {
            return Ok(());
        };
        Some((backlog_spec, backlog_consumer))
    } else {
        None
    };
    let Some(attestations) = ctx
        .startup_step(
            "creating the attestation buckets",
            StoreError::is_transient,
            || AttestationStore::ensure(&bus, &config.store.attestations, &config.store.index),
        )
        .await?
    else {
        return Ok(());
    };
    let Some(exports) = ctx
        .startup_step(
            "creating the exports bucket",
            StoreError::is_transient,
            || ExportStore::ensure(&bus, &config.store.exports),
        )
        .await?
    else {
        return Ok(());
    };
    let Some(steps) = ctx
        .startup_step(
            "creating the step verdicts bucket",
            StoreError::is_transient,
            || StepStore::ensure(&bus, &config.store.step_verdicts),
        )
        .await?
    else {
        return Ok(());
    };
    topology_latch.release();

    // 3. The attestor's SVID and the trust bundles, kept current.
    let (sender, mut material) = material_channel();
    let Some(source) = connect_workload_api(&ctx, &endpoint, config.spire.svid_timeout).await
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
    let revoker = Revoker::new(
        attestations.clone(),
        bus.publisher(EventSource::service(SERVICE_NAME)),
        metrics.clone(),
    );
    let attestor = Attestor::new(AttestorParts {
        publisher: bus.publisher(EventSource::service(SERVICE_NAME)),
        subjects: bus.subjects().clone(),
        jetstream: bus.jetstream().clone(),
        attestations,
        exports,
        steps,
        material,
        trust_domain,
        clock_skew: config.spire.clock_skew,
        annotator,
        timestamper,
        metrics,
    });
    let mut tasks = JoinSet::new();
    let revocations_handler = move |event: Event<TrustBundleRotated>, delivery: Delivery| {
        let revoker = revoker.clone();
        async move { revoker.handle(event, delivery).await }
    };
    let (revocations_bus, revocations_token) = (bus.clone(), token.clone());
    tasks.spawn(async move {
        run_durable(
            &revocations_bus,
            &revocations,
            revocations_consumer,
            revocations_handler,
            revocations_token,
        )
        .await?;
        Ok(())
    });
    let after = config.backlog.after;
    match backlog {
        None => {
            let handler = move |event: Event<LifecycleEvent>, delivery: Delivery| {
                let attestor = attestor.clone();
                async move { attestor.handle(event, delivery).await }
            };
            tasks.spawn(async move {
                run_durable(&bus, &spec, consumer, handler, token).await?;
                Ok(())
            });
        }
        Some((backlog_spec, backlog_consumer)) => {
            let live = attestor.clone();
            let live_handler = move |event: Event<LifecycleEvent>, delivery: Delivery| {
                let attestor = live.clone();
                async move {
                    if lane_of(&event, after) != Lane::Live {
                        return Ok(());
                    }
                    attestor.handle(event, delivery).await
                }
            };
            let throttle = Arc::new(Throttle::per_second(config.backlog.rate));
            let backlog_handler = move |event: Event<LifecycleEvent>, delivery: Delivery| {
                let (attestor, throttle) = (attestor.clone(), throttle.clone());
                async move {
                    // The backlog lane takes its own `finished` events only: each checks
                    // every step itself.
                    let own = lane_of(&event, after) == Lane::Backlog
                        && matches!(event.data, LifecycleEvent::Finished(_));
                    if !own {
                        return Ok(());
                    }
                    if let Some(throttle) = throttle.as_ref() {
                        throttle.wait().await;
                    }
                    attestor.handle(event, delivery).await
                }
            };
            let (live_bus, live_token) = (bus.clone(), token.clone());
            tasks.spawn(async move {
                run_durable(&live_bus, &spec, consumer, live_handler, live_token).await?;
                Ok(())
            });
            tasks.spawn(async move {
                run_durable(
                    &bus,
                    &backlog_spec,
                    backlog_consumer,
                    backlog_handler,
                    token,
                )
                .await?;
                Ok(())
            });
        }
    }
    ctx.run_until_shutdown(Some(&client), tasks).await
}
