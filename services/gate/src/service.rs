//! The gate service: load the serving certificate, bind the webhook (HTTPS) and the verdict API
//! (HTTP), start the Kubernetes watches (PipelineRuns, TaskRuns, namespaces) and the attestation
//! replica (a KV watch of `{PREFIX}_ATTESTATIONS`), and serve until shutdown.
//!
//! Readiness: `/readyz` waits for `kubernetes caches synced` (every watch listed once),
//! `nats connected` and `attestations replicated` (the KV watch caught up with the bucket, which
//! the attestor creates; the gate waits for it). The webhook answers from the first moment, and
//! answers `deny` for what it cannot know yet (fail closed); the Service only routes to a ready
//! replica.
//!
//! Shutdown: both servers stop accepting, finish the requests in flight, and return.

use std::sync::Arc;

use countersign_events::{Bus, EventMetrics, EventSource, SubjectError, Subjects};
use countersign_runtime::nats::NatsConnectError;
use countersign_runtime::{Context, error_chain};
use countersign_verdict::store::{
    ATTESTATIONS_BUCKET, attestation_key, decode_stored, revocation_key,
};
use futures::StreamExt as _;
use kube::Api;
use kube::api::DynamicObject;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cache, namespace_resource, pipelinerun_resource, taskrun_resource};
use crate::config::GateConfig;
use crate::decisions::{DecisionEvents, publish_decisions};
use crate::metrics::GateMetrics;
use crate::replica::{Replica, VerdictRecord};
use crate::tls::{LoadCertificateError, ReloadingCertificate, serve_https};
use crate::webhook::Gate;

/// The service's name: in logs and the NATS client name (`countersign-gate`).
pub const SERVICE_NAME: &str = "gate";

/// Why the gate stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The serving certificate could not be loaded.
    #[error("loading the webhook's serving certificate")]
    Certificate(#[from] LoadCertificateError),
    /// The TLS configuration could not be built.
    #[error("configuring TLS")]
    Tls(#[source] rustls::Error),
    /// A listener could not be bound.
    #[error("binding {what} on {address}")]
    Bind {
        /// Which server.
        what: &'static str,
        /// Where.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Kubernetes client could not be made.
    #[error("configuring the Kubernetes client")]
    Kubernetes(#[source] kube::Error),
    /// The kubeconfig could not be read.
    #[error("reading the kubeconfig")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    /// The in-cluster or default configuration could not be inferred.
    #[error("finding the Kubernetes configuration")]
    Infer(#[source] kube::config::InferConfigError),
    /// NATS cannot be connected to, and retrying will not help.
    #[error(transparent)]
    Nats(#[from] NatsConnectError),
    /// The bucket name could not be built.
    #[error("building a name")]
    Name(#[from] SubjectError),
    /// The verdict API server failed.
    #[error("serving the verdict API")]
    Api(#[source] std::io::Error),
    /// A task panicked.
    #[error("a task panicked")]
    Panicked(#[from] tokio::task::JoinError),
}

/// Why the attestations bucket could not be opened or watched (retried while transient).
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The bucket is not there (yet).
    #[error("opening KV bucket {bucket}")]
    Open {
        /// The bucket.
        bucket: String,
        /// Why.
        #[source]
        source: async_nats::jetstream::context::KeyValueError,
    },
    /// Its status could not be read.
    #[error("reading the status of KV bucket {bucket}")]
    Status {
        /// The bucket.
        bucket: String,
        /// Why.
        #[source]
        source: async_nats::jetstream::kv::StatusError,
    },
    /// The watch could not start.
    #[error("watching KV bucket {bucket}")]
    Watch {
        /// The bucket.
        bucket: String,
        /// Why.
        #[source]
        source: async_nats::jetstream::kv::WatchError,
    },
}

impl ReplicaError {
    /// Every failure here is the bucket not existing yet or NATS being away: retried.
    pub fn is_transient(&self) -> bool {
        true
    }
}

async fn kube_client(config: &GateConfig) -> Result<kube::Client, RunError> {
    let kube_config = match &config.kubernetes.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(RunError::Kubeconfig)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(RunError::Kubeconfig)?
        }
        None => kube::Config::infer().await.map_err(RunError::Infer)?,
    };
    kube::Client::try_from(kube_config).map_err(RunError::Kubernetes)
}

async fn bind(what: &'static str, address: std::net::SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| RunError::Bind {
            what,
            address,
            source,
        })
}

/// Runs the gate until the context's shutdown.
pub async fn run(ctx: Context<GateConfig>) -> Result<(), RunError> {
    let config = ctx.config.clone();
    let caches_latch = ctx.readiness.latch("kubernetes caches synced");
    let nats_latch = ctx.readiness.latch("nats connected");
    let replica_latch = ctx.readiness.latch("attestations replicated");
    let metrics = GateMetrics::new();
    let bus_metrics = EventMetrics::new();
    ctx.metrics.with_registry(|registry| {
        bus_metrics.register(registry);
        metrics.register(registry);
    });
    let (decisions, decision_queue) = DecisionEvents::channel(
        &config.cluster.name,
        crate::decisions::QUEUE_CAPACITY,
        metrics.clone(),
    );

    let certificate =
        ReloadingCertificate::load(&config.webhook.cert_file, &config.webhook.key_file)?;
    let tls_config = Arc::new(certificate.server_config().map_err(RunError::Tls)?);
    let webhook_listener = bind("the webhook", config.webhook.listen).await?;
    let api_listener = bind("the verdict API", config.api.listen).await?;
    let bucket = Subjects::new(&config.bus.prefix)?.kv_bucket_name(ATTESTATIONS_BUCKET)?;
    let client = kube_client(&config).await?;

    let gate = Arc::new(Gate {
        replica: Replica::new(),
        pipeline_runs: Cache::new(),
        taskruns: Cache::new(),
        namespaces: Cache::new(),
        verdict_wait: config.policy.verdict_wait,
        mode_label: Arc::from(config.policy.mode_label.as_str()),
        default_mode: config.policy.default_mode,
        metrics: metrics.clone(),
        decisions,
    });

    let mut tasks: JoinSet<Result<(), RunError>> = JoinSet::new();
    let token = ctx.shutdown.token();
    {
        let token = token.clone();
        let router = crate::webhook::router(Arc::clone(&gate), config.webhook.max_body_bytes);
        tasks.spawn(async move {
            serve_https(webhook_listener, router, tls_config, token).await;
            Ok(())
        });
    }
    {
        let reload = Arc::clone(&certificate).watch(config.webhook.reload_interval, token.clone());
        tasks.spawn(async move {
            reload.await;
            Ok(())
        });
    }
    {
        let token = token.clone();
        let router = crate::api::router(Arc::clone(&gate));
        tasks.spawn(async move {
            countersign_runtime::http_server::serve_http(
                api_listener,
                router,
                countersign_runtime::http_server::HttpServerLimits::DEFAULT,
                token.cancelled_owned(),
            )
            .await
            .map_err(RunError::Api)
        });
    }
    let pipeline_runs = Api::<DynamicObject>::all_with(client.clone(), &pipelinerun_resource());
    let taskruns = Api::<DynamicObject>::all_with(client.clone(), &taskrun_resource());
    let namespaces = Api::<DynamicObject>::all_with(client, &namespace_resource());
    tasks.spawn(run_cache(
        gate.pipeline_runs.clone(),
        pipeline_runs,
        "PipelineRun",
        token.clone(),
    ));
    tasks.spawn(run_cache(
        gate.taskruns.clone(),
        taskruns,
        "TaskRun",
        token.clone(),
    ));
    tasks.spawn(run_cache(
        gate.namespaces.clone(),
        namespaces,
        "Namespace",
        token.clone(),
    ));
    {
        let gate = Arc::clone(&gate);
        let token = token.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = async {
                    gate.pipeline_runs.wait_synced().await;
                    gate.taskruns.wait_synced().await;
                    gate.namespaces.wait_synced().await;
                } => caches_latch.release(),
            }
            Ok(())
        });
    }

    let Some(nats) = ctx.connect_nats(&config.nats, nats_latch).await? else {
        return ctx.run_until_shutdown(None, tasks).await;
    };
    let jetstream = async_nats::jetstream::new(nats.clone());
    {
        let bus = Bus::new(nats.clone(), config.bus.clone(), bus_metrics)?;
        let publisher = bus.publisher(EventSource::service(SERVICE_NAME));
        let (metrics, token) = (metrics.clone(), token.clone());
        tasks.spawn(async move {
            publish_decisions(decision_queue, publisher, metrics, token).await;
            Ok(())
        });
    }
    {
        let ctx = ctx.clone();
        let gate = Arc::clone(&gate);
        tasks.spawn(async move {
            replicate(
                &ctx,
                &jetstream,
                &bucket,
                &gate.replica,
                &gate.metrics,
                replica_latch,
            )
            .await;
            Ok(())
        });
    }
    tracing::info!(webhook = %config.webhook.listen, api = %config.api.listen, "gate serving");
    ctx.run_until_shutdown(Some(&nats), tasks).await
}

async fn run_cache<T: crate::cluster::CacheEntry>(
    cache: Cache<T>,
    api: Api<DynamicObject>,
    kind: &'static str,
    token: CancellationToken,
) -> Result<(), RunError> {
    cache.run(api, kind, token).await;
    Ok(())
}

/// Keeps `replica` equal to the bucket until shutdown: opens the bucket (waiting for the
/// attestor to create it), watches every key with its history, releases `latch` once caught up,
/// and watches again after the watch ends.
async fn replicate(
    ctx: &Context<GateConfig>,
    jetstream: &async_nats::jetstream::Context,
    bucket: &str,
    replica: &Replica,
    metrics: &GateMetrics,
    latch: countersign_runtime::health::Latch,
) {
    let mut latch = Some(latch);
    let token = ctx.shutdown.token();
    loop {
        let opened = ctx
            .startup(
                ctx.readiness.latch("attestations bucket open"),
                ReplicaError::is_transient,
                || async {
                    let store = jetstream.get_key_value(bucket).await.map_err(|source| {
                        ReplicaError::Open {
                            bucket: bucket.to_owned(),
                            source,
                        }
                    })?;
                    let status = store
                        .status()
                        .await
                        .map_err(|source| ReplicaError::Status {
                            bucket: bucket.to_owned(),
                            source,
                        })?;
                    let watch = store.watch_with_history(">").await.map_err(|source| {
                        ReplicaError::Watch {
                            bucket: bucket.to_owned(),
                            source,
                        }
                    })?;
                    Ok::<_, ReplicaError>((status.values() == 0, watch))
                },
            )
            .await;
        let (empty, mut watch) = match opened {
            Ok(Some(opened)) => opened,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "the attestations bucket cannot be watched");
                return;
            }
        };
        if empty && let Some(latch) = latch.take() {
            latch.release();
        }
        loop {
            let entry = tokio::select! {
                () = token.cancelled() => return,
                entry = watch.next() => entry,
            };
            let entry = match entry {
                None => break,
                Some(Err(error)) => {
                    tracing::warn!(error = %error_chain(&error), "the attestations watch failed; watching again");
                    break;
                }
                Some(Ok(entry)) => entry,
            };
            apply_entry(replica, &entry);
            metrics
                .replica_size
                .set(i64::try_from(replica.len()).unwrap_or(i64::MAX));
            if (entry.delta == 0 || entry.seen_current)
                && let Some(latch) = latch.take()
            {
                latch.release();
            }
        }
    }
}

fn apply_entry(replica: &Replica, entry: &async_nats::jetstream::kv::Entry) {
    use async_nats::jetstream::kv::Operation;
    match entry.operation {
        Operation::Put => match decode_stored(&entry.value) {
            Ok(event) => match VerdictRecord::from_event(&event) {
                Ok(record) => {
                    // An attestation under `{uid}`, its revocation under `{uid}.revoked`.
                    let own_key = if event.data.revocation().is_some() {
                        revocation_key(&record.uid)
                    } else {
                        attestation_key(&record.uid)
                    };
                    if own_key.is_ok_and(|key| key.as_str() == entry.key.as_str()) {
                        replica.insert(record);
                    } else {
                        tracing::warn!(key = %entry.key, uid = %record.uid, "an attestation stored under another TaskRun's key is ignored");
                    }
                }
                Err(error) => {
                    tracing::warn!(key = %entry.key, error = %error_chain(&error), "an unreadable attestation is ignored");
                }
            },
            Err(error) => {
                tracing::warn!(key = %entry.key, error = %error_chain(&error), "an unreadable attestation is ignored");
            }
        },
        Operation::Delete | Operation::Purge => {
            // Keys are encoded UIDs; the replica is keyed by the UID the statement names, so
            // find it by key.
            if let Some(uid) = replica.uid_for_key(&entry.key) {
                replica.remove(&uid);
            }
        }
    }
}
