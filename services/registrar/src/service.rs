//! The service: [`run`] connects, binds the topology, builds the [`Registrar`] and runs its
//! tasks until shutdown, taking one readiness latch per dependency:
//!
//! | latch | released when |
//! |---|---|
//! | `nats connected` | the NATS connection is up |
//! | `streams, consumer and state bucket bound` | the streams, the durable `registrar` consumer and the `{PREFIX}_REGISTRAR` bucket exist |
//! | `spire server connected` | the SPIRE client was built (the admin socket, or TCP with the first SVID) |
//! | `spire server reachable` | the SPIRE server answered an admin call (`CountEntries` by our hint) |
//! | `bundle history bound` | the `{PREFIX}_TRUST_BUNDLES` bucket exists (when `[bundle_history] enabled`) |
//!
//! Tasks: the entry batcher, the consumer loop (`run_durable`: a shared durable consumer, N
//! replicas split the work, bound again when the server lost it, and a failure binding cannot fix
//! stops the service), the reconciler (one replica at a time, by lease), the SPIRE probe and the
//! trust bundle recorder ([`crate::bundle_history`]).
//! [`run`] returns at shutdown, after its tasks, once NATS is drained. On shutdown the
//! consumer stops pulling and finishes the events in flight (their batched calls still go out),
//! the reconciler finishes its pass, and the batcher ends when nothing can use it any more.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use countersign_events::{
    Bus, ConsumerSpec, DurableConsumer, DurableError, EventMetrics, EventSource, KvConfig, KvSpec,
    SetupError, SubjectError, run_durable,
};
use countersign_identity::workload::SPIFFE_ENDPOINT_SOCKET;
use countersign_runtime::config::ConfigError;
use countersign_runtime::nats::NatsConnectError;
use countersign_runtime::retry::Backoff;
use countersign_runtime::{Context, error_chain};
use countersign_spire_api::{EntryFilter, SpireServerClient};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::bundle_history::{BundleHistoryMetrics, BundleRecorder, history_bucket};
use crate::config::{RegistrarConfig, StateConfig};
use crate::connect::{ConnectSpireError, connect_spire};
use crate::entries::EntryPlanner;
use crate::metrics::RegistrarMetrics;
use crate::register::Registrar;
use crate::state::{BUCKET, StateStore};

/// The NATS client name and CloudEvent source name of the service.
pub const SERVICE_NAME: &str = "registrar";

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// NATS could not be reached for good (bad credentials file).
    #[error(transparent)]
    Nats(#[from] NatsConnectError),
    /// The bus prefix is invalid.
    #[error("the bus prefix")]
    Subject(#[from] SubjectError),
    /// The topology could not be applied for good.
    #[error("binding the streams, consumer and state bucket")]
    Setup(#[from] SetupError),
    /// The SPIRE server cannot be reached for good (bad address, bad Workload API socket).
    #[error("connecting to the SPIRE server")]
    Spire(#[from] ConnectSpireError),
    /// The configuration is invalid (checked at load time already).
    #[error("the configuration")]
    Config(#[from] ConfigError),
    /// The consumer stopped for good.
    #[error("consuming the registrar's events")]
    Consume(#[from] DurableError),
    /// A task panicked.
    #[error("a registrar task panicked")]
    Panicked(#[from] tokio::task::JoinError),
}

/// The state bucket's declaration: `max_age` is the tombstone TTL.
pub fn state_bucket(config: &StateConfig) -> KvSpec {
    KvSpec {
        name: BUCKET.to_owned(),
        description: "Countersign registrar: TaskRun and node alias registration state".to_owned(),
        config: KvConfig {
            history: 1,
            max_age: config.tombstone_ttl,
            max_bytes: config.max_bytes,
            replicas: config.replicas,
            ..KvConfig::default()
        },
    }
}

/// Creates or updates the streams, the durable consumer and the state bucket.
pub async fn bind_topology(
    bus: &Bus,
    config: &RegistrarConfig,
) -> Result<(DurableConsumer, kv::Store), SetupError> {
    bus.ensure_streams().await?;
    let consumer = bus
        .ensure_consumer(&ConsumerSpec::registrar(bus.subjects()), &config.consumer)
        .await?;
    let state = bus.ensure_kv(&state_bucket(&config.state)).await?;
    Ok((consumer, state))
}

/// Builds a registrar over an already-bound bus and SPIRE client: what [`run`] does after
/// connecting, for tests and benchmarks that hold the pieces themselves. Spawn the returned
/// future (the entry batcher).
pub fn build_registrar(
    config: Arc<RegistrarConfig>,
    bus: &Bus,
    state: kv::Store,
    spire: SpireServerClient,
    metrics: RegistrarMetrics,
    x509_source: Option<spiffe::X509Source>,
) -> Result<(Registrar, impl Future<Output = ()> + Send + 'static), ConfigError> {
    let planner = EntryPlanner::from_config(&config)?;
    let state = StateStore::new(state, metrics.clone());
    let audit = Audit::new(bus.publisher(EventSource::service(SERVICE_NAME)));
    Ok(Registrar::new(
        config,
        planner,
        state,
        spire,
        audit,
        metrics,
        x509_source,
    ))
}

/// The registrar service (see the module docs). Returns at shutdown, once its tasks finished
/// and NATS was drained.
pub async fn run(ctx: Context<RegistrarConfig>) -> Result<(), StartError> {
    let config = ctx.config.clone();
    let spiffe_endpoint_socket = ctx.env.get(SPIFFE_ENDPOINT_SOCKET).map(str::to_owned);
    let nats_latch = ctx.readiness.latch("nats connected");
    let topology_latch = ctx
        .readiness
        .latch("streams, consumer and state bucket bound");
    let spire_connected = ctx.readiness.latch("spire server connected");
    let spire_latch = ctx.readiness.latch("spire server reachable");
    let history_latch = config
        .bundle_history
        .enabled
        .then(|| ctx.readiness.latch("bundle history bound"));
    let history_metrics = BundleHistoryMetrics::new();
    let metrics = RegistrarMetrics::new();
    let event_metrics = EventMetrics::new();
    ctx.metrics.with_registry(|registry| {
        metrics.register(registry);
        event_metrics.register(registry);
        history_metrics.register(registry);
    });

    let Some(client) = ctx.connect_nats(&config.nats, nats_latch).await? else {
        return Ok(());
    };
    let bus = Bus::new(client.clone(), config.bus.clone(), event_metrics)?;
    let Some((consumer, state)) = ctx
        .startup(topology_latch, SetupError::is_transient, || {
            bind_topology(&bus, &config)
        })
        .await?
    else {
        return Ok(());
    };
    let Some((spire, x509_source)) = ctx
        .startup(spire_connected, ConnectSpireError::is_transient, || {
            connect_spire(&config.spire, spiffe_endpoint_socket.as_deref())
        })
        .await?
    else {
        return Ok(());
    };

    let recorder = match history_latch {
        Some(latch) => {
            let spec = history_bucket(&config.bundle_history);
            let Some(store) = ctx
                .startup(latch, SetupError::is_transient, || bus.ensure_kv(&spec))
                .await?
            else {
                return Ok(());
            };
            Some(BundleRecorder::new(
                spire.clone(),
                countersign_events::kv::Bucket::new(store),
                bus.publisher(EventSource::service(SERVICE_NAME)),
                history_metrics,
            ))
        }
        None => None,
    };

    let (registrar, batcher) = build_registrar(
        config.clone(),
        &bus,
        state,
        spire.clone(),
        metrics,
        x509_source,
    )?;
    let mut tasks = JoinSet::new();
    // Ends once nothing can use it any more: after the consumer and the reconciler.
    tasks.spawn(ctx.shutdown.track(async move {
        batcher.await;
        Ok(())
    }));
    let hint = config.entries.hint.clone();
    let token = ctx.shutdown.token();
    tasks.spawn(async move {
        if probe_spire(&spire, &hint, &token).await {
            spire_latch.release();
        }
        Ok(())
    });
    if let Some(recorder) = recorder {
        let interval = config.bundle_history.poll_interval;
        let token = ctx.shutdown.token();
        tasks.spawn(async move {
            recorder.run(interval, token).await;
            Ok(())
        });
    }
    let spec = ConsumerSpec::registrar(bus.subjects());
    let consuming = registrar.clone();
    let token = ctx.shutdown.token();
    tasks.spawn(async move {
        run_durable(&bus, &spec, consumer, consuming, token).await?;
        Ok(())
    });
    if config.reconcile.enabled {
        let reconciling = registrar.clone();
        let token = ctx.shutdown.token();
        tasks.spawn(async move {
            reconciling.run_reconciler(token).await;
            Ok(())
        });
    }
    drop(registrar);
    tracing::info!(
        prefix = %config.entries.id_prefix,
        hint = %config.entries.hint,
        trust_domain = %config.spire.trust_domain(),
        "registrar started"
    );
    ctx.run_until_shutdown(Some(&client), tasks).await
}

/// Calls the SPIRE server until it answers an admin call; false when cancelled first.
async fn probe_spire(spire: &SpireServerClient, hint: &str, token: &CancellationToken) -> bool {
    let filter = EntryFilter::all().by_hint(hint);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let answer = tokio::select! {
            () = token.cancelled() => return false,
            answer = spire.count_entries(&filter) => answer,
        };
        match answer {
            Ok(count) => {
                tracing::info!(entries = count, "the SPIRE server answers");
                return true;
            }
            Err(error) if error.is_transient() => {
                tracing::warn!(error = %error_chain(&error), "the SPIRE server is not reachable yet");
            }
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "the SPIRE server refuses the registrar; it must be an admin (admin_ids or an admin entry) or use the admin socket");
            }
        }
        if !backoff.wait(token).await {
            return false;
        }
    }
}
