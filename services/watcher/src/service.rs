//! The service: what `run` does, in order.
//!
//! 1. Take the readiness latches (`nats connected`, `streams and state bound`,
//!    `reflectors synced`) and register the metrics.
//! 2. Build the Kubernetes client (a kubeconfig file, or inferred: in-cluster first).
//! 3. Connect to NATS (retrying until connected or shut down), then create or update the TaskRun
//!    stream and the state bucket and load the published transitions (retrying transient
//!    failures).
//! 4. Start the watches and the workers, and the CloudEvents ingress.
//! 5. On shutdown: the watches stop, each worker finishes the TaskRun in hand, the ingress
//!    finishes its open requests; then NATS is flushed and drained.

use std::sync::Arc;

use countersign_events::{
    Bus, EventMetrics, EventSource, KvConfig, KvSpec, SetupError, StreamKind,
};
use countersign_runtime::Context;
use countersign_runtime::nats::NatsConnectError;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::WatcherConfig;
use crate::derive::DeriveSettings;
use crate::emit::Emitter;
use crate::ingress::Ingress;
use crate::kubernetes::KubernetesSource;
use crate::metrics::WatcherMetrics;
use crate::state::{StateError, TransitionLog};

/// The service's name: in logs, the CloudEvent `source` (`/countersign/watcher`).
pub const SERVICE_NAME: &str = "watcher";

/// Why the watcher stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WatcherError {
    /// The configuration is inconsistent (`validate` passed, so this is a bug or a race).
    #[error("invalid configuration")]
    Config(#[from] countersign_runtime::config::ConfigError),
    /// The Kubernetes client could not be built.
    #[error("building the Kubernetes client")]
    Kubernetes(#[source] kube::Error),
    /// The kubeconfig could not be read.
    #[error("reading the kubeconfig")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    /// NATS cannot be connected to, and retrying will not help (the credentials file).
    #[error(transparent)]
    Nats(#[from] NatsConnectError),
    /// The bus could not be set up for good (not a transient failure).
    #[error("setting up the streams and the state bucket")]
    Setup(#[source] SetupError),
    /// The published transitions could not be loaded for good.
    #[error("loading the published transitions")]
    State(#[source] StateError),
    /// The bus prefix is invalid.
    #[error("building the bus")]
    Bus(#[source] countersign_events::SubjectError),
    /// The ingress address could not be bound.
    #[error("binding the ingress on {address}")]
    BindIngress {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The ingress stopped serving.
    #[error("serving the ingress")]
    ServeIngress(#[source] std::io::Error),
    /// A task panicked.
    #[error("a watcher task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs the watcher: binds the ingress from the configuration, then [`run_on`].
pub async fn run(ctx: Context<WatcherConfig>) -> Result<(), WatcherError> {
    let listener = if ctx.config.ingress.enabled {
        let address = ctx.config.ingress.listen;
        Some(
            TcpListener::bind(address)
                .await
                .map_err(|source| WatcherError::BindIngress { address, source })?,
        )
    } else {
        None
    };
    run_on(ctx, listener).await
}

/// Runs the watcher with the ingress on `ingress` (none: no ingress) until the context's shutdown.
pub async fn run_on(
    ctx: Context<WatcherConfig>,
    ingress: Option<TcpListener>,
) -> Result<(), WatcherError> {
    let config = Arc::clone(&ctx.config);
    let token = ctx.shutdown.token();
    let nats_latch = ctx.readiness.latch("nats connected");
    let setup_latch = ctx.readiness.latch("streams and state bound");
    let synced_latch = ctx.readiness.latch("reflectors synced");

    let metrics = WatcherMetrics::new();
    let event_metrics = EventMetrics::new();
    ctx.metrics.with_registry(|registry| {
        metrics.register(registry);
        event_metrics.register(registry);
    });

    let settings = Arc::new(DeriveSettings {
        cluster: config.cluster.name.clone(),
        trust_domain: config.trust_domain(),
    });
    let selector = config.kubernetes.selector()?;
    let kube_client = kube_client(&config).await?;

    let Some(nats) = ctx.connect_nats(&config.nats, nats_latch).await? else {
        return Ok(());
    };

    let bus =
        Bus::new(nats.clone(), config.bus.clone(), event_metrics).map_err(WatcherError::Bus)?;
    let kv_spec = KvSpec {
        name: config.state.bucket.clone(),
        description: "TaskRun transitions published by the Countersign watcher".into(),
        config: KvConfig {
            limit_markers: Some(config.state.deleted_retention),
            ..config.state.kv.clone()
        },
    };
    let (bus_ref, kv_spec_ref) = (&bus, &kv_spec);
    let Some(kv) = ctx
        .startup_step(
            "streams and state bucket",
            SetupError::is_transient,
            move || async move {
                // The watcher publishes to the TaskRun stream only; the other streams are their
                // publishers' business.
                bus_ref.ensure_stream(StreamKind::TaskRuns).await?;
                bus_ref.ensure_kv(kv_spec_ref).await
            },
        )
        .await
        .map_err(WatcherError::Setup)?
    else {
        return Ok(());
    };
    let log = Arc::new(TransitionLog::new(
        kv,
        &config.cluster.name,
        config.state.deleted_retention,
    ));
    let Some(live) = ctx
        .startup_step(
            "loading the published transitions",
            StateError::is_transient,
            || log.load(),
        )
        .await
        .map_err(WatcherError::State)?
    else {
        return Ok(());
    };
    metrics.set_known_taskruns(live);
    setup_latch.release();
    tracing::info!(live, "loaded the published transitions");

    let emitter = Arc::new(Emitter::new(
        bus.publisher(EventSource::service(SERVICE_NAME)),
        Arc::clone(&log),
        metrics.clone(),
        &config.cluster.name,
    ));
    let kubernetes = KubernetesSource::new(
        kube_client,
        &config.kubernetes.namespaces,
        selector,
        config.kubernetes.concurrency,
        Arc::clone(&emitter),
        Arc::clone(&settings),
        metrics.clone(),
    );

    let mut tasks: JoinSet<Result<(), WatcherError>> = JoinSet::new();
    for task in kubernetes.tasks(&token, synced_latch) {
        tasks.spawn(async move {
            task.await;
            Ok(())
        });
    }
    if let Some(listener) = ingress {
        let address = listener.local_addr().map_err(WatcherError::ServeIngress)?;
        let ingress = Ingress::new(
            Arc::clone(&emitter),
            Arc::clone(&kubernetes),
            Arc::clone(&settings),
            nats.clone(),
            metrics.clone(),
        );
        tracing::info!(address = %address, "serving the CloudEvents ingress");
        let max_body_bytes = config.ingress.max_body_bytes;
        let ingress_token = token.clone();
        tasks.spawn(async move {
            ingress
                .serve(listener, max_body_bytes, ingress_token)
                .await
                .map_err(WatcherError::ServeIngress)
        });
    }

    // Run until shutdown; a task that fails (or panics) shuts the service down. Tasks that end
    // early without failing (the readiness latch's) are fine. NATS is drained last.
    ctx.run_until_shutdown(Some(&nats), tasks).await
}

/// The Kubernetes client: from `[kubernetes] kubeconfig` when set, else inferred.
async fn kube_client(config: &WatcherConfig) -> Result<kube::Client, WatcherError> {
    let client_config = match &config.kubernetes.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(WatcherError::Kubeconfig)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(WatcherError::Kubeconfig)?
        }
        None => kube::Config::infer()
            .await
            .map_err(|error| WatcherError::Kubernetes(kube::Error::InferConfig(error)))?,
    };
    kube::Client::try_from(client_config).map_err(WatcherError::Kubernetes)
}
