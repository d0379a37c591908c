//! `registrar`: SPIRE entries created and released per second through the registrar (events in
//! the stream, the service in-process over the admin socket: KV compare-and-set, batching,
//! audit events, acks) vs a direct `BatchCreateEntry` / `BatchDeleteEntry` loop of the same
//! entries (50 per create, 200 per delete, like spire-controller-manager), against the same real
//! spire-server in the same run. Also the time of one reconciliation pass over 10,000 entries.
//!
//! The registrar side: `scheduled` events are published while the registrar is stopped, then the
//! clock runs from its start until every entry's `registered` audit event arrived; the same for
//! `finished` and `released`. Settings: `entries` (per round, default 2000), `concurrency`
//! (handlers at once, default 128), `reconcile_entries` (default 10000).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use countersign_events::data::{Outcome, PodRef, TaskRunFinished, TaskRunRef, TaskRunScheduled};
use countersign_events::{Bus, BusConfig, EventMetrics, EventPayload, EventSource, Publisher};
use countersign_registrar::{RegistrarConfig, RegistrarMetrics, bind_topology, build_registrar};
use countersign_runtime::config::{Environment, parse_config};
use countersign_runtime::{Context, RunOutcome, run_service};
use countersign_spire_api::{Entry, Selector, SpiffeId, SpireServerClient};
use countersign_test_support::nats::NatsServer;
use countersign_test_support::spire::{Spire, SpireOptions};
use futures::StreamExt as _;
use futures::future::try_join_all;

use super::{Case, CaseFuture};
use crate::Options;
use crate::report::CaseReport;

/// The case.
pub(super) const CASE: Case = Case {
    name: "registrar",
    summary: "SPIRE entries/s through the registrar vs a direct batch loop; a 10k reconcile pass",
    run: run_boxed,
};

const TARGET: f64 = 0.9;
const NODE: &str = "bench-node";
const NAMESPACE: &str = "bench";
/// Publishes in flight while filling the stream.
const PUBLISH_WINDOW: usize = 256;
/// How long one side may take before the case fails.
const SIDE_TIMEOUT: Duration = Duration::from_secs(900);

fn run_boxed(options: Options) -> CaseFuture {
    Box::pin(run(options))
}

fn setting(options: &Options, key: &str, default: usize) -> anyhow::Result<usize> {
    options.settings.get(key).map_or(Ok(default), |value| {
        value
            .parse()
            .with_context(|| format!("setting {key}={value} is not a number"))
    })
}

/// A created-then-released timing.
#[derive(Debug, Clone, Copy)]
struct Timing {
    create: Duration,
    release: Duration,
}

impl Timing {
    fn total(self) -> Duration {
        self.create + self.release
    }
}

fn best(current: Option<Timing>, new: Timing) -> Timing {
    match current {
        Some(current) if current.total() <= new.total() => current,
        _ => new,
    }
}

fn pod_uid(name: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
}

fn taskrun(name: &str) -> TaskRunRef {
    TaskRunRef {
        cluster: "bench".to_owned(),
        namespace: NAMESPACE.to_owned(),
        name: name.to_owned(),
        uid: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).to_string(),
    }
}

fn spiffe_id(name: &str) -> String {
    format!("spiffe://example.org/ns/{NAMESPACE}/taskrun/{name}")
}

fn scheduled(name: &str) -> TaskRunScheduled {
    TaskRunScheduled {
        taskrun: taskrun(name),
        taskrun_created_at: chrono::Utc::now(),
        pod: PodRef {
            name: format!("{name}-pod"),
            uid: pod_uid(name),
        },
        node_name: NODE.to_owned(),
        service_account: "default".to_owned(),
        spiffe_id: spiffe_id(name),
        timeout_seconds: Some(3600),
    }
}

fn finished(name: &str) -> TaskRunFinished {
    TaskRunFinished {
        taskrun: taskrun(name),
        taskrun_created_at: chrono::Utc::now(),
        pod: Some(PodRef {
            name: format!("{name}-pod"),
            uid: pod_uid(name),
        }),
        spiffe_id: Some(spiffe_id(name)),
        outcome: Outcome::Succeeded,
        reason: "Succeeded".to_owned(),
        message: String::new(),
        started_at: None,
        completed_at: None,
        results: Vec::new(),
        steps: Vec::new(),
        oversized: None,
        declared_results: Vec::new(),
    }
}

/// The entry the registrar would make for `name`, for the direct side.
fn direct_entry(name: &str) -> anyhow::Result<Entry> {
    let selectors: Vec<Selector> = vec![
        format!("k8s:pod-uid:{}", pod_uid(name)).parse()?,
        format!("k8s:pod-name:{name}-pod").parse()?,
    ];
    let mut entry = Entry::new(
        SpiffeId::new(spiffe_id(name))?,
        SpiffeId::new(format!("spiffe://example.org/tekton-node/{NODE}"))?,
        selectors,
    )
    .with_id(format!("direct.pod.{}", pod_uid(name)));
    entry.hint = Some("countersign-direct".to_owned());
    entry.expires_at = Some(SystemTime::now() + Duration::from_secs(4200));
    Ok(entry)
}

/// The direct loop: sequential `BatchCreateEntry` calls of 50, then `BatchDeleteEntry` of 200.
async fn run_direct(admin: &SpireServerClient, names: &[String]) -> anyhow::Result<Timing> {
    let entries = names
        .iter()
        .map(|name| direct_entry(name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    for chunk in entries.chunks(50) {
        let outcomes = admin.batch_create_entries(chunk).await?;
        anyhow::ensure!(
            outcomes
                .iter()
                .all(|outcome| matches!(outcome, countersign_spire_api::CreateOutcome::Created(_))),
            "a direct create failed: {outcomes:?}"
        );
    }
    let create = started.elapsed();
    let ids: Vec<String> = entries.into_iter().map(|entry| entry.id).collect();
    let started = Instant::now();
    for chunk in ids.chunks(200) {
        admin.batch_delete_entries(chunk).await?;
    }
    Ok(Timing {
        create,
        release: started.elapsed(),
    })
}

/// Publishes events with a window of acknowledgements in flight.
async fn publish_all<T: EventPayload + Clone>(
    publisher: &Publisher,
    events: Vec<T>,
) -> anyhow::Result<()> {
    for chunk in events.chunks(PUBLISH_WINDOW) {
        try_join_all(
            chunk
                .iter()
                .cloned()
                .map(|data| publisher.publish_data(data)),
        )
        .await?;
    }
    Ok(())
}

/// A registrar running in-process.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<RunOutcome>,
}

fn start_registrar(config: RegistrarConfig) -> anyhow::Result<Running> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_service(
        Context::new("registrar", config),
        listener,
        Duration::from_secs(30),
        async {
            let _ = stopped.await;
        },
        countersign_registrar::run,
    ));
    Ok(Running { stop, task })
}

async fn stop_registrar(running: Running) -> anyhow::Result<()> {
    let _ = running.stop.send(());
    match running.task.await? {
        RunOutcome::Drained { .. } => Ok(()),
        other => anyhow::bail!("the registrar did not drain: {other:?}"),
    }
}

/// Runs the registrar until `count` distinct audit events arrive on `subject`; returns how
/// long from its start.
async fn run_until_audited(
    client: &async_nats::Client,
    config: &RegistrarConfig,
    subject: String,
    count: usize,
) -> anyhow::Result<Duration> {
    let mut audit = client.subscribe(subject).await?;
    client.flush().await?;
    let started = Instant::now();
    let running = start_registrar(config.clone())?;
    let mut seen = HashSet::with_capacity(count);
    let waited = tokio::time::timeout(SIDE_TIMEOUT, async {
        while seen.len() < count {
            match audit.next().await {
                Some(message) => {
                    seen.insert(message.subject.to_string());
                }
                None => break,
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    stop_registrar(running).await?;
    waited.context("the registrar did not finish in time")?;
    anyhow::ensure!(
        seen.len() >= count,
        "only {} of {count} audit events",
        seen.len()
    );
    Ok(elapsed)
}

async fn run_registrar_round(
    client: &async_nats::Client,
    publisher: &Publisher,
    config: &RegistrarConfig,
    names: &[String],
) -> anyhow::Result<Timing> {
    let count = names.len();
    publish_all(
        publisher,
        names.iter().map(|name| scheduled(name)).collect(),
    )
    .await?;
    let create = run_until_audited(
        client,
        config,
        format!("countersign.registration.registered.*.{NAMESPACE}.*"),
        count,
    )
    .await
    .context("registering")?;
    publish_all(publisher, names.iter().map(|name| finished(name)).collect()).await?;
    let release = run_until_audited(
        client,
        config,
        format!("countersign.registration.released.*.{NAMESPACE}.*"),
        count,
    )
    .await
    .context("releasing")?;
    Ok(Timing { create, release })
}

fn registrar_config(
    nats: &NatsServer,
    spire: &Spire,
    concurrency: usize,
) -> anyhow::Result<RegistrarConfig> {
    let quote = |text: &str| serde_json::to_string(text);
    let toml = format!(
        "[nats]\nurl = {}\n[spire]\nserver_socket_path = {}\n\
         [consumer]\nconcurrency = {concurrency}\nmax_ack_pending = 10000\nmax_deliver = 1000\nnak_backoff = [\"100ms\", \"500ms\"]\n\
         [reconcile]\nenabled = false\n",
        quote(&nats.url())?,
        quote(&spire.server_socket_path().display().to_string())?,
    );
    Ok(parse_config(&toml, &Environment::new())?)
}

async fn run(options: Options) -> anyhow::Result<CaseReport> {
    let count = setting(&options, "entries", 2000)?.max(1);
    let concurrency = setting(&options, "concurrency", 128)?.max(1);
    let reconcile_entries = setting(&options, "reconcile_entries", 10_000)?;
    let (nats, spire) = tokio::join!(
        NatsServer::start(),
        Spire::start(SpireOptions {
            node_name: NODE.to_owned(),
            ..SpireOptions::default()
        })
    );
    let nats = nats.context("starting nats-server")?;
    let spire = spire.context("starting SPIRE")?;
    let admin = SpireServerClient::connect_unix(spire.server_socket_path()).await?;
    let client = nats.client().await;
    let bus = Bus::new(client.clone(), BusConfig::default(), EventMetrics::new())?;
    bus.ensure_streams().await?;
    let publisher = bus.publisher(EventSource::service("bench"));
    let config = registrar_config(&nats, &spire, concurrency)?;

    let mut direct_best = None;
    let mut registrar_best = None;
    for round in 0..options.rounds {
        let names: Vec<String> = (0..count)
            .map(|index| format!("r{round}-{index:05}"))
            .collect();
        let direct = run_direct(&admin, &names)
            .await
            .context("the direct loop")?;
        let ours = run_registrar_round(&client, &publisher, &config, &names)
            .await
            .context("the registrar")?;
        eprintln!(
            "registrar: round {round}: direct create {:?} delete {:?}; registrar create {:?} release {:?}",
            direct.create, direct.release, ours.create, ours.release
        );
        direct_best = Some(best(direct_best, direct));
        registrar_best = Some(best(registrar_best, ours));
    }
    let (Some(direct), Some(ours)) = (direct_best, registrar_best) else {
        anyhow::bail!("no round ran");
    };
    let rate = |duration: Duration| count as f64 / duration.as_secs_f64().max(f64::EPSILON);

    // One reconciliation pass over `reconcile_entries` entries (and their state records).
    let mut reconcile_seconds = None;
    let mut reconcile_notes = Vec::new();
    if reconcile_entries > 0 {
        let names: Vec<String> = (0..reconcile_entries)
            .map(|index| format!("rec-{index:05}"))
            .collect();
        publish_all(
            &publisher,
            names.iter().map(|name| scheduled(name)).collect(),
        )
        .await?;
        let seeding = run_until_audited(
            &client,
            &config,
            "countersign.registration.registered.*.bench.*".to_owned(),
            reconcile_entries,
        )
        .await
        .context("registering the entries to reconcile")?;
        eprintln!("registrar: {reconcile_entries} entries registered in {seeding:?}");
        let config = Arc::new(config.clone());
        let (_consumer, state) = bind_topology(&bus, &config).await?;
        let (registrar, batcher) = build_registrar(
            config,
            &bus,
            state,
            admin.clone(),
            RegistrarMetrics::new(),
            None,
        )?;
        let batcher = tokio::spawn(batcher);
        let started = Instant::now();
        let report = registrar.reconcile_once().await?;
        let elapsed = started.elapsed();
        drop(registrar);
        batcher.await?;
        anyhow::ensure!(
            report.entries_listed > reconcile_entries,
            "the pass listed {} entries",
            report.entries_listed
        );
        println!("registrar-reconcile-10k: {:.3} s", elapsed.as_secs_f64());
        reconcile_seconds = Some(elapsed.as_secs_f64());
        reconcile_notes.push(format!(
            "reconcile pass: {} entries listed, {} records, {} orphans, {} missing (expect 0 and 0)",
            report.entries_listed, report.taskrun_records, report.orphans_removed, report.missing_created
        ));
    }

    let mut report = CaseReport {
        case: CASE.name.to_owned(),
        ratio: direct.total().as_secs_f64() / ours.total().as_secs_f64().max(f64::EPSILON),
        target: TARGET,
        metrics: Vec::new(),
        notes: vec![
            format!("{count} entries per round, best of {} rounds", options.rounds),
            format!(
                "registrar: consumer concurrency {concurrency}, batches of up to 50 creates / 200 deletes, 5 ms linger, 2 calls in flight; \
                 each TaskRun: KV compare-and-set ×2 (×1 to release), a node alias check, an audit event, an ack"
            ),
            "direct: sequential BatchCreateEntry of 50, then BatchDeleteEntry of 200, same entry shape".to_owned(),
            "ratio = direct time / registrar time for create + release (higher is better)".to_owned(),
        ],
    };
    report.notes.extend(reconcile_notes);
    report.metric("direct create", rate(direct.create), "entries/s");
    report.metric("direct release", rate(direct.release), "entries/s");
    report.metric("registrar create", rate(ours.create), "entries/s");
    report.metric("registrar release", rate(ours.release), "entries/s");
    report.metric(
        "registrar create+release",
        2.0 * count as f64 / ours.total().as_secs_f64().max(f64::EPSILON),
        "entries/s",
    );
    report.metric(
        "direct create+release",
        2.0 * count as f64 / direct.total().as_secs_f64().max(f64::EPSILON),
        "entries/s",
    );
    if let Some(seconds) = reconcile_seconds {
        report.metric("reconcile pass (10k entries)", seconds, "s");
    }
    Ok(report)
}
