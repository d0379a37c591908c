//! `watcher`: TaskRun status updates through the real `countersign-watcher` binary to JetStream,
//! against raw JetStream publishes of the same events in the same run, and the binary's resident
//! memory with 10,000 TaskRuns known.
//!
//! 1. A private etcd + kube-apiserver and nats-server start; `taskruns` TaskRuns (default 10,000)
//!    are created in one namespace and their status set to the succeeded fixture's (two steps with
//!    their termination messages, four results), as Tekton would leave them.
//! 2. The watcher binary (built in this profile with cargo if needed) starts. From the moment it is
//!    ready (every watch listed) until the stream holds every TaskRun's `created` and `finished`,
//!    it turns the listed status into events: that is the watcher's rate, in events per second.
//! 3. Its resident memory is read from `/proc/<pid>/status` (`VmRSS`, and the peak `VmHWM`) with
//!    all of them known: the `watcher-rss: <MiB> MiB` line (target under 100 MiB).
//! 4. Live: `live` more TaskRuns (default 500) are created and then patched to succeeded while the
//!    watcher runs; the rate at which their `finished` events arrive is reported (the API server
//!    bounds it).
//! 5. Raw: the exact messages the watcher stored (subject, headers with `Nats-Msg-Id`, body) are
//!    published again with raw async-nats to a fresh stream, `window` in flight (default 256),
//!    best of `rounds`.
//!
//! Headline: `watcher: ratio <watcher events/s ÷ raw events/s>`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::stream;
use countersign_events::{StreamKind, Subjects};
use countersign_runtime::http_client::{HttpClientOptions, http_client};
use countersign_test_support::kube::{KubeApiserver, taskrun_fixture, taskrun_resource};
use countersign_test_support::nats::NatsServer;
use countersign_test_support::{fixtures_dir, ports, wait};
use futures::{StreamExt as _, TryStreamExt as _};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::{Case, CaseFuture};
use crate::Options;
use crate::report::CaseReport;

/// The case.
pub const CASE: Case = Case {
    name: "watcher",
    summary: "status updates through the watcher binary to JetStream vs raw JetStream; RSS with 10k TaskRuns",
    run: run_boxed,
};

/// The ratio the watcher should reach: it lists, derives, publishes each transition after the
/// previous one's PubAck and records it in the KV bucket (two round trips per TaskRun update).
const TARGET: f64 = 0.25;
/// The resident memory the watcher should stay under with 10,000 TaskRuns known.
const RSS_TARGET_MIB: f64 = 100.0;
/// How long a phase may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(900);
/// The bus prefix of the watcher's events.
const PREFIX: &str = "benchw";

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

async fn run(options: Options) -> anyhow::Result<CaseReport> {
    let taskruns = setting(&options, "taskruns", 10_000)?.max(1);
    let live = setting(&options, "live", 500)?;
    let window = setting(&options, "window", 256)?.max(1);
    let concurrency = setting(&options, "concurrency", 32)?.max(1);

    let binary = build_watcher().context("building countersign-watcher")?;
    eprintln!("watcher: starting kube-apiserver and nats-server");
    let kube = KubeApiserver::start()
        .await
        .context("starting kube-apiserver")?;
    let nats = NatsServer::start().await.context("starting nats-server")?;
    let namespace = kube
        .unique_namespace("bench")
        .await
        .context("creating the namespace")?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(kube.client(), &namespace, &taskrun_resource());
    let status = succeeded_status()?;

    eprintln!("watcher: creating {taskruns} finished TaskRuns");
    let started = Instant::now();
    create_taskruns(&api, &namespace, "run", taskruns, Some(&status)).await?;
    eprintln!("watcher: created in {:?}", started.elapsed());

    // Phase 1: the backlog, through the watcher.
    let admin_port = ports::free_port();
    let ingress_port = ports::free_port();
    let mut child = tokio::process::Command::new(&binary)
        .env_clear()
        .env("COUNTERSIGN_NATS__URL", nats.url())
        .env("COUNTERSIGN_KUBERNETES__KUBECONFIG", kube.kubeconfig_path())
        .env(
            "COUNTERSIGN_KUBERNETES__NAMESPACES",
            format!("[\"{namespace}\"]"),
        )
        .env(
            "COUNTERSIGN_KUBERNETES__CONCURRENCY",
            concurrency.to_string(),
        )
        .env("COUNTERSIGN_BUS__PREFIX", PREFIX)
        .env("COUNTERSIGN_CLUSTER__NAME", "bench")
        .env(
            "COUNTERSIGN_ADMIN__LISTEN",
            format!("127.0.0.1:{admin_port}"),
        )
        .env(
            "COUNTERSIGN_INGRESS__LISTEN",
            format!("127.0.0.1:{ingress_port}"),
        )
        .env("COUNTERSIGN_TELEMETRY__LOG_FILTER", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id().context("the watcher's pid")?;
    let http = http_client(HttpClientOptions::new().timeout(Duration::from_secs(5)))?;
    let ready_url = format!("http://127.0.0.1:{admin_port}/readyz");
    wait::until_true("the watcher to be ready", PHASE_TIMEOUT, || {
        let request = http.get(&ready_url).send();
        async move { request.await.is_ok_and(|response| response.status() == 200) }
    })
    .await?;
    let ready_at = Instant::now();
    let jetstream = nats.jetstream().await;
    let stream_name = Subjects::new(PREFIX)?.stream_name(StreamKind::TaskRuns);
    let backlog_events = 2 * taskruns as u64;
    wait_for_messages(&jetstream, &stream_name, backlog_events).await?;
    let backlog = ready_at.elapsed();
    let rss = memory_mib(pid, "VmRSS")?;
    let peak = memory_mib(pid, "VmHWM")?;
    eprintln!("watcher: backlog of {backlog_events} events in {backlog:?}; RSS {rss:.1} MiB");

    // Phase 2: live updates.
    let mut live_rate = 0.0;
    if live > 0 {
        create_taskruns(&api, &namespace, "live", live, None).await?;
        wait_for_messages(&jetstream, &stream_name, backlog_events + live as u64).await?;
        let patched_at = Instant::now();
        futures::stream::iter(0..live)
            .map(|index| {
                let api = api.clone();
                let status = status.clone();
                async move {
                    api.patch_status(
                        &format!("live-{index:05}"),
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": status })),
                    )
                    .await
                    .map(|_| ())
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await
            .context("patching the live TaskRuns")?;
        let patches = patched_at.elapsed();
        wait_for_messages(&jetstream, &stream_name, backlog_events + 2 * live as u64).await?;
        let live_elapsed = patched_at.elapsed();
        live_rate = live as f64 / live_elapsed.as_secs_f64().max(f64::EPSILON);
        eprintln!(
            "watcher: {live} live updates patched in {patches:?}, published by {live_elapsed:?}"
        );
    }
    // The measurement is over: stop the watcher.
    child.kill().await.context("stopping the watcher")?;

    // Phase 3: the same events, raw.
    let messages = read_messages(&jetstream, &stream_name).await?;
    let mut raw_best: Option<Duration> = None;
    for round in 0..options.rounds {
        let elapsed = publish_raw(&jetstream, &messages, round, window).await?;
        eprintln!(
            "watcher: raw round {round}: {} events in {elapsed:?}",
            messages.len()
        );
        raw_best = Some(raw_best.map_or(elapsed, |best| best.min(elapsed)));
    }
    let raw = raw_best.context("no raw round ran")?;

    let rate =
        |count: u64, elapsed: Duration| count as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
    let watcher_rate = rate(backlog_events, backlog);
    let raw_rate = rate(messages.len() as u64, raw);
    println!("watcher-rss: {rss:.1} MiB");
    let mut report = CaseReport {
        case: CASE.name.to_owned(),
        ratio: watcher_rate / raw_rate.max(f64::EPSILON),
        target: TARGET,
        metrics: Vec::new(),
        notes: vec![
            format!(
                "{taskruns} TaskRuns with the succeeded fixture's status, listed by a fresh watcher \
                 ({concurrency} workers): {backlog_events} events (created + finished)"
            ),
            "watcher rate: from ready (every watch listed) to every event stored; each transition is \
             published after the previous one's PubAck and recorded in the KV bucket"
                .to_owned(),
            format!(
                "raw: the same stored messages (subject, headers with Nats-Msg-Id, body) republished \
                 with async-nats, {window} in flight, best of {} rounds",
                options.rounds
            ),
            format!("RSS target: under {RSS_TARGET_MIB} MiB with {taskruns} TaskRuns known"),
            "ratio = watcher events/s / raw events/s (higher is better)".to_owned(),
        ],
    };
    report.metric("watcher rate", watcher_rate, "events/s");
    report.metric("raw rate", raw_rate, "events/s");
    report.metric("watcher-rss", rss, "MiB");
    report.metric("watcher peak RSS (VmHWM)", peak, "MiB");
    report.metric("TaskRuns known", taskruns as f64, "TaskRuns");
    if live > 0 {
        report.metric(
            "live status updates (API-server bound)",
            live_rate,
            "updates/s",
        );
    }
    Ok(report)
}

/// Builds the watcher binary in this binary's profile and returns its path (next to this one).
fn build_watcher() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("the bench's own path")?;
    let dir = exe.parent().context("the bench's directory")?;
    let release = dir.file_name().is_some_and(|name| name == "release");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .context("tests/bench sits two levels below the repository root")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command.current_dir(root).args([
        "build",
        "--quiet",
        "--package",
        "countersign-watcher",
        "--bin",
        "countersign-watcher",
    ]);
    if release {
        command.arg("--release");
    }
    let status = command.status().context("running cargo build")?;
    anyhow::ensure!(status.success(), "cargo build failed ({status})");
    let binary = dir.join("countersign-watcher");
    anyhow::ensure!(binary.exists(), "{} was not built", binary.display());
    Ok(binary)
}

/// The succeeded fixture's status, naming a pod that does not exist.
fn succeeded_status() -> anyhow::Result<Value> {
    let path = fixtures_dir().join("tekton/taskrun/taskrun-03-succeeded.json");
    let mut taskrun: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut status = taskrun["status"].take();
    status["podName"] = Value::from("bench-pod");
    Ok(status)
}

/// Creates `count` TaskRuns `<prefix>-NNNNN`, and sets their status when given.
async fn create_taskruns(
    api: &Api<DynamicObject>,
    namespace: &str,
    prefix: &str,
    count: usize,
    status: Option<&Value>,
) -> anyhow::Result<()> {
    let fixture = taskrun_fixture("taskrun-01-pending.json", namespace)?;
    futures::stream::iter(0..count)
        .map(|index| {
            let api = api.clone();
            let mut object = fixture.object.clone();
            let name = format!("{prefix}-{index:05}");
            object.metadata.name = Some(name.clone());
            object.metadata.generate_name = None;
            async move {
                api.create(&PostParams::default(), &object).await?;
                if let Some(status) = status {
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": status })),
                    )
                    .await?;
                }
                Ok::<(), kube::Error>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .context("creating TaskRuns")?;
    Ok(())
}

/// Waits until the stream holds at least `count` messages.
async fn wait_for_messages(
    jetstream: &async_nats::jetstream::Context,
    stream_name: &str,
    count: u64,
) -> anyhow::Result<()> {
    wait::until_true(
        &format!("{count} messages in {stream_name}"),
        PHASE_TIMEOUT,
        || async {
            match jetstream.get_stream(stream_name).await {
                Ok(mut stream) => stream
                    .info()
                    .await
                    .is_ok_and(|info| info.state.messages >= count),
                Err(_) => false,
            }
        },
    )
    .await?;
    Ok(())
}

/// `VmRSS` or `VmHWM` of process `pid`, in MiB.
fn memory_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kib / 1024.0)
}

/// A stored message, to publish again.
struct Stored {
    subject: String,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
}

/// Every message of the stream, in order.
async fn read_messages(
    jetstream: &async_nats::jetstream::Context,
    stream_name: &str,
) -> anyhow::Result<Vec<Stored>> {
    let stream = jetstream.get_stream(stream_name).await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig::default())
        .await?;
    let count = consumer.cached_info().num_pending;
    let messages = consumer.messages().await?;
    messages
        .take(usize::try_from(count)?)
        .map(|message| {
            let message = message.map_err(|error| anyhow::anyhow!(error))?;
            Ok(Stored {
                subject: message.subject.to_string(),
                headers: message.headers.clone().unwrap_or_default(),
                payload: message.payload.clone(),
            })
        })
        .try_collect()
        .await
}

/// Publishes `messages` to a fresh stream (subjects moved under `raw<round>`), `window` in
/// flight, each acknowledged; returns how long it took.
async fn publish_raw(
    jetstream: &async_nats::jetstream::Context,
    messages: &[Stored],
    round: usize,
    window: usize,
) -> anyhow::Result<Duration> {
    let root = format!("raw{round}");
    jetstream
        .create_stream(stream::Config {
            name: format!("RAW{round}"),
            subjects: vec![format!("{root}.>")],
            storage: stream::StorageType::File,
            max_bytes: 1024 * 1024 * 1024,
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    futures::stream::iter(messages)
        .map(|message| {
            let subject = format!(
                "{root}.{}",
                message
                    .subject
                    .strip_prefix(&format!("{PREFIX}."))
                    .unwrap_or(&message.subject)
            );
            async move {
                jetstream
                    .publish_with_headers(subject, message.headers.clone(), message.payload.clone())
                    .await?
                    .await?;
                Ok::<(), anyhow::Error>(())
            }
        })
        .buffer_unordered(window)
        .try_collect::<()>()
        .await?;
    Ok(started.elapsed())
}
