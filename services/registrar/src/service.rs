//! The service: [`run`] connects, binds the topology, builds the [`Registrar`] and spawns its
//! tasks on the runtime's tracked shutdown, taking one readiness latch per dependency:
//!
//! | latch | released when |
//! |---|---|
//! | `nats connected` | the NATS connection is up |
//! | `streams, consumer and state bucket bound` | the streams, the durable `registrar` consumer and the `{PREFIX}_REGISTRAR` bucket exist |
//! | `spire server reachable` | the SPIRE server answered an admin call (`CountEntries` by our hint) |
//!
//! Tasks: the entry batcher, the consumer loop (shared durable consumer: N replicas split the
//! work), the reconciler (one replica at a time, by lease) and the SPIRE probe. On shutdown the
//! consumer stops pulling and finishes the events in flight (their batched calls still go out),
//! the reconciler finishes its pass, and the batcher ends when nothing can use it any more.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use countersign_events::{
    Bus, ConsumerSpec, DurableConsumer, EventMetrics, EventSource, KvConfig, KvSpec, SetupError,
    SubjectError, run_consumer,
};
use countersign_runtime::config::ConfigError;
use countersign_runtime::nats::{NatsConnectError, connect};
use countersign_runtime::retry::{Backoff, retry_transient};
use countersign_runtime::{Context, error_chain};
use countersign_spire_api::{EntryFilter, SpireServerClient};
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::config::{RegistrarConfig, StateConfig};
use crate::connect::{ConnectSpireError, connect_spire};
use crate::entries::EntryPlanner;
use crate::metrics::RegistrarMetrics;
use crate::register::Registrar;
use crate::state::{BUCKET, StateStore};

/// The NATS client name and CloudEvent source name of the service.
pub const SERVICE_NAME: &str = "registrar";

/// The pause between attempts at a start-up step (NATS topology, SPIRE): 100 ms doubling to 5 s.
const STARTUP_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

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
    let client = async_nats::jetstream::Context::client(bus.jetstream());
    let state = StateStore::new(state, client, metrics.clone());
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

/// The registrar service (see the module docs). Returns once its tasks are spawned; they run
/// until the context's shutdown.
pub async fn run(ctx: Context<RegistrarConfig>) -> Result<(), StartError> {
    let config = ctx.config.clone();
    let token = ctx.shutdown.token();
    let metrics = RegistrarMetrics::new();
    let event_metrics = EventMetrics::new();
    ctx.metrics.with_registry(|registry| {
        metrics.register(registry);
        event_metrics.register(registry);
    });

    let nats_latch = ctx.readiness.latch("nats connected");
    let client_name = format!("countersign-{SERVICE_NAME}");
    let Some(client) = connect(&config.nats, &client_name, &token).await? else {
        return Ok(());
    };
    nats_latch.release();

    let topology_latch = ctx
        .readiness
        .latch("streams, consumer and state bucket bound");
    let bus = Bus::new(client, config.bus.clone(), event_metrics)?;
    let Some((consumer, state)) = retry_transient(
        "binding the streams, consumer and state bucket",
        &token,
        STARTUP_BACKOFF,
        SetupError::is_transient,
        || bind_topology(&bus, &config),
    )
    .await?
    else {
        return Ok(());
    };
    topology_latch.release();

    let spire_latch = ctx.readiness.latch("spire server reachable");
    let Some((spire, x509_source)) = retry_transient(
        "connecting to the SPIRE server",
        &token,
        STARTUP_BACKOFF,
        ConnectSpireError::is_transient,
        || connect_spire(&config.spire),
    )
    .await?
    else {
        return Ok(());
    };

    let (registrar, batcher) = build_registrar(
        config.clone(),
        &bus,
        state,
        spire.clone(),
        metrics,
        x509_source,
    )?;
    ctx.shutdown.spawn(|_token| batcher);

    let hint = config.entries.hint.clone();
    ctx.shutdown.spawn(move |token| async move {
        if probe_spire(&spire, &hint, &token).await {
            spire_latch.release();
        }
    });

    let consuming = registrar.clone();
    let shutdown = ctx.shutdown.clone();
    ctx.shutdown.spawn(move |token| async move {
        if let Err(error) = consume(consuming, bus, consumer, &config, token).await {
            tracing::error!(error = %error_chain(&error), "the registrar consumer stopped for good; shutting down");
            shutdown.cancel();
        }
    });

    if ctx.config.reconcile.enabled {
        let reconciling = registrar.clone();
        ctx.shutdown
            .spawn(move |token| reconciling.run_reconciler(token));
    }
    tracing::info!(
        prefix = %ctx.config.entries.id_prefix,
        hint = %ctx.config.entries.hint,
        trust_domain = %ctx.config.spire.trust_domain,
        "registrar started"
    );
    Ok(())
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

/// Runs the consumer until `token` is cancelled, binding it again after a transient failure.
async fn consume(
    registrar: Registrar,
    bus: Bus,
    mut consumer: DurableConsumer,
    config: &RegistrarConfig,
    token: CancellationToken,
) -> Result<(), SetupError> {
    loop {
        match run_consumer(&consumer, registrar.clone(), token.clone()).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "the registrar consumer stopped; binding it again");
            }
        }
        let spec = ConsumerSpec::registrar(bus.subjects());
        match retry_transient(
            "binding the registrar consumer again",
            &token,
            STARTUP_BACKOFF,
            SetupError::is_transient,
            || bus.ensure_consumer(&spec, &config.consumer),
        )
        .await?
        {
            Some(rebound) => consumer = rebound,
            None => return Ok(()),
        }
    }
}
