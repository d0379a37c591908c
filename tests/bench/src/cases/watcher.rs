//! `watcher`: TaskRun status updates through the real `countersign-watcher` binary to JetStream,
//! against raw JetStream publishes of the same events in the same run, and the binary's resident
//! memory with 10,000 TaskRuns (and their pods) known.
//!
//! 1. A private etcd + kube-apiserver and nats-server start; `taskruns` TaskRuns (default 10,000)
//!    are created in one namespace and their status set to the succeeded fixture's (two steps with
//!    their termination messages, four results), as Tekton would leave them. With `pods=1` (the
//!    default) each also gets its pod, as Tekton and the kubelet leave it (completed pods stay
//!    until pruned, and the watcher keeps them in its pod store): the trimmed SPIRE pod fixture,
//!    labelled `tekton.dev/taskRun=<name>` and `tekton.dev/taskRunUID=<uid>`, owned by the
//!    TaskRun, bound to a node, its status (set through the status subresource, as the kubelet
//!    does) `Succeeded` with both step containers terminated with the signed termination messages
//!    of the SPIRE fixtures; the TaskRun's `status.podName` names it.
//! 2. The watcher binary (built in this profile with cargo if needed) starts, lists, and turns the
//!    listed state into every TaskRun's transitions (`created` and `finished`; with pods also
//!    `scheduled` and one `step-completed` per step). It publishes while it lists, so its rate is
//!    taken from the stream: the backlog's events over the time from the first of them stored to
//!    the last (the server's timestamps), in events per second.
//! 3. Its resident memory is read from `/proc/<pid>/status` (`VmRSS`, and the peak `VmHWM`) with
//!    all of them known: the `watcher-rss: <MiB> MiB` line (target under 100 MiB).
//! 4. Live: `live` more TaskRuns (default 500, without pods) are created and then patched to
//!    succeeded while the watcher runs; the rate at which their `finished` events arrive is
//!    reported (the API server bounds it).
//! 5. Raw: the exact messages the watcher stored (subject, headers with `Nats-Msg-Id`, body) are
//!    published again with raw async-nats to a fresh stream, `window` in flight (default 256),
//!    best of `rounds`.
//!
//! With `watch_cache=0` the API server keeps no watch cache (`--watch-cache=false`): lists and
//! watches are served from etcd. At 100,000 TaskRuns and pods its cache alone outgrows this
//! machine class's memory (seen: 11.6 GiB RSS at 62,000 of each), while the watcher's memory,
//! what this case measures, does not depend on it.
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
use countersign_test_support::kube::{
    ApiserverOptions, KubeApiserver, container_status, signed_termination_message, taskrun_fixture,
    taskrun_resource, terminated_state,
};
use countersign_test_support::nats::NatsServer;
use countersign_test_support::{fixtures_dir, ports, wait};
use futures::{StreamExt as _, TryStreamExt as _};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

use super::{Case, CaseFuture};
use crate::Options;
use crate::report::CaseReport;

/// The case.
pub(super) const CASE: Case = Case {
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
/// The step containers of the pod fixture, in order.
const STEP_CONTAINERS: [&str; 2] = ["step-clone", "step-build"];
/// The node the pods are bound to.
const NODE: &str = "bench-worker";
/// The TaskRun label Tekton puts on a TaskRun's pod (the watcher selects pods by it).
const TASKRUN_LABEL: &str = "tekton.dev/taskRun";
/// The TaskRun UID label Tekton puts on a TaskRun's pod (the watcher ties a pod to a TaskRun by it
/// or by the owner reference).
const TASKRUN_UID_LABEL: &str = "tekton.dev/taskRunUID";
/// How many TaskRuns (with their pods) are created at once.
const CREATE_CONCURRENCY: usize = 32;
/// From how many TaskRuns [`create_taskruns`] reports its progress (every tenth).
const PROGRESS_FROM: usize = 10_000;

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
    let concurrency = setting(&options, "concurrency", 64)?.max(1);
    let pods = setting(&options, "pods", 1)? != 0;

    let binary = build_watcher().context("building countersign-watcher")?;
    eprintln!("watcher: starting kube-apiserver and nats-server");
    let watch_cache = setting(&options, "watch_cache", 1)? != 0;
    let kube = KubeApiserver::start_with(ApiserverOptions {
        extra_args: vec![format!("--watch-cache={watch_cache}")],
        ..ApiserverOptions::default()
    })
    .await
    .context("starting kube-apiserver")?;
    let nats = NatsServer::start().await.context("starting nats-server")?;
    let namespace = kube
        .unique_namespace("bench")
        .await
        .context("creating the namespace")?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(kube.client(), &namespace, &taskrun_resource());
    let pod_api: Api<DynamicObject> =
        Api::namespaced_with(kube.client(), &namespace, &pod_resource());
    // The succeeded fixture's status; its `podName` is set per TaskRun by [`status_naming`].
    let status = taskrun_fixture("taskrun-03-succeeded.json", &namespace)?.status;
    let pod = if pods {
        Some(SucceededPod::from_fixtures()?)
    } else {
        None
    };

    let with_pods = if pods { " with their pods" } else { "" };
    eprintln!("watcher: creating {taskruns} finished TaskRuns{with_pods}");
    let started = Instant::now();
    create_taskruns(
        &api,
        &namespace,
        "run",
        taskruns,
        Some(Finish {
            status: &status,
            pod: pod.as_ref().map(|pod| (&pod_api, pod)),
        }),
    )
    .await?;
    eprintln!("watcher: created in {:?}", started.elapsed());

    // Phase 1: the backlog, through the watcher.
    // created and finished; with the pod also scheduled and one step-completed per step.
    let per_taskrun = if pods { 3 + STEP_CONTAINERS.len() } else { 2 };
    let backlog_events = (per_taskrun * taskruns) as u64;
    // The live phase adds `live` TaskRuns, each created and finished.
    let all_events = backlog_events + 2 * live as u64;
    let admin_port = ports::free_port();
    let ingress_port = ports::free_port();
    let spawned_at = Instant::now();
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
        .env(
            "COUNTERSIGN_BUS__STREAMS__TASKRUNS__MAX_BYTES",
            stream_max_bytes(all_events).to_string(),
        )
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
    let ready_after = spawned_at.elapsed();
    let jetstream = nats.jetstream().await;
    let stream_name = Subjects::new(PREFIX)?.stream_name(StreamKind::TaskRuns);
    wait_for_messages(&jetstream, &stream_name, backlog_events).await?;
    let stored_after = spawned_at.elapsed();
    let rss = memory_mib(pid, "VmRSS")?;
    let peak = memory_mib(pid, "VmHWM")?;
    // The watcher publishes while it lists (before it reports ready), so its rate is taken from
    // the stream itself: from the first backlog event stored to the last, by the server's clock.
    let backlog = stored_span(&jetstream, &stream_name, backlog_events).await?;
    eprintln!(
        "watcher: ready after {ready_after:?}; backlog of {backlog_events} events stored over {backlog:?} (all stored {stored_after:?} after start); RSS {rss:.1} MiB, peak {peak:.1} MiB"
    );

    // Phase 2: live updates.
    let mut live_rate = 0.0;
    if live > 0 {
        create_taskruns(&api, &namespace, "live", live, None).await?;
        wait_for_messages(&jetstream, &stream_name, backlog_events + live as u64).await?;
        let patched_at = Instant::now();
        futures::stream::iter(0..live)
            .map(|index| {
                let api = api.clone();
                let name = format!("live-{index:05}");
                let status = status_naming(&status, &name);
                async move {
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": status })),
                    )
                    .await
                    .map(|_| ())
                }
            })
            .buffer_unordered(CREATE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .context("patching the live TaskRuns")?;
        let patches = patched_at.elapsed();
        wait_for_messages(&jetstream, &stream_name, all_events).await?;
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
            if pods {
                format!(
                    "{taskruns} TaskRuns with the succeeded fixture's status, each with its pod \
                     (pods included: bound to a node, Succeeded, both step containers terminated \
                     with their signed termination messages), listed by a fresh watcher \
                     ({concurrency} workers): {backlog_events} events (created + scheduled + \
                     {} step-completed + finished)",
                    STEP_CONTAINERS.len()
                )
            } else {
                format!(
                    "{taskruns} TaskRuns with the succeeded fixture's status and no pods (pods=0), \
                     listed by a fresh watcher ({concurrency} workers): {backlog_events} events \
                     (created + finished)"
                )
            },
            "watcher rate: backlog events / time from the first backlog event stored to the last \
             (the stream's timestamps; the watcher publishes while it lists); each transition is \
             published after the previous one's PubAck and recorded in the KV bucket"
                .to_owned(),
            format!(
                "raw: the same stored messages (subject, headers with Nats-Msg-Id, body) republished \
                 with async-nats, {window} in flight, best of {} rounds",
                options.rounds
            ),
            format!(
                "RSS target: under {RSS_TARGET_MIB} MiB with {taskruns} TaskRuns{with_pods} known \
                 (VmRSS once the backlog is published)"
            ),
            format!("live: {live} more TaskRuns without pods, created then patched to succeeded"),
            "ratio = watcher events/s / raw events/s (higher is better)".to_owned(),
        ],
    };
    report.metric("watcher rate", watcher_rate, "events/s");
    report.metric("raw rate", raw_rate, "events/s");
    report.metric("watcher-rss", rss, "MiB");
    report.metric("watcher peak RSS (VmHWM)", peak, "MiB");
    report.metric("TaskRuns known", taskruns as f64, "TaskRuns");
    report.metric(
        "pods known",
        if pods { taskruns as f64 } else { 0.0 },
        "pods",
    );
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

/// `status` naming `<taskrun>-pod` as the TaskRun's pod.
fn status_naming(status: &Value, taskrun: &str) -> Value {
    let mut status = status.clone();
    status["podName"] = Value::from(pod_name(taskrun));
    status
}

/// The name of TaskRun `taskrun`'s pod.
fn pod_name(taskrun: &str) -> String {
    format!("{taskrun}-pod")
}

/// `v1` `Pod`, for an `Api<DynamicObject>`.
fn pod_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Pod"), "pods")
}

/// A TaskRun's pod as Tekton creates it and the kubelet leaves it once the TaskRun succeeded.
struct SucceededPod {
    /// The trimmed SPIRE pod fixture without the server's fields; name, labels and owner are
    /// set per TaskRun.
    object: Value,
    /// The `status` the kubelet reports: `Succeeded`, every container terminated.
    status: Value,
}

impl SucceededPod {
    fn from_fixtures() -> anyhow::Result<SucceededPod> {
        let path = fixtures_dir().join("tekton/pod/taskrun-pod-spire-trimmed.json");
        let mut object: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("reading {}", path.display()))?;
        object
            .as_object_mut()
            .context("the pod fixture is an object")?
            .remove("status");
        let metadata = object["metadata"]
            .as_object_mut()
            .context("the pod fixture has metadata")?;
        metadata.remove("uid");
        metadata.remove("namespace");
        object["spec"]["nodeName"] = Value::from(NODE);
        // The trimmed fixture leaves out the images of the init containers; the API requires one.
        for container in object["spec"]["initContainers"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if container.get("image").is_none() {
                container["image"] =
                    Value::from("ghcr.io/tektoncd/pipeline/cmd/entrypoint:v1.15.0");
            }
        }

        let image_of = |containers: &Value, name: &str| {
            containers
                .as_array()
                .into_iter()
                .flatten()
                .find(|container| container["name"] == name)
                .and_then(|container| container["image"].as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let spec = &object["spec"];
        let init_statuses: Vec<Value> = spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|container| {
                let name = container["name"].as_str()?;
                let image = container["image"].as_str().unwrap_or_default();
                Some(container_status(name, image, terminated_state(name, None)))
            })
            .collect();
        let mut statuses = Vec::new();
        for container in STEP_CONTAINERS {
            let message = signed_termination_message(container)?;
            statuses.push(container_status(
                container,
                &image_of(&spec["containers"], container),
                terminated_state(container, Some(&message)),
            ));
        }
        let status = json!({
            "phase": "Succeeded",
            "conditions": [
                { "type": "Initialized", "status": "True", "reason": "PodCompleted" },
                { "type": "Ready", "status": "False", "reason": "PodCompleted" },
                { "type": "ContainersReady", "status": "False", "reason": "PodCompleted" },
                { "type": "PodScheduled", "status": "True" },
            ],
            "hostIP": "10.0.0.10",
            "podIP": "10.244.1.17",
            "startTime": "2026-08-20T10:00:01Z",
            "qosClass": "BestEffort",
            "initContainerStatuses": init_statuses,
            "containerStatuses": statuses,
        });
        Ok(SucceededPod { object, status })
    }

    /// The pod object of TaskRun `taskrun` (UID `uid`).
    fn object(&self, taskrun: &str, uid: &str) -> anyhow::Result<DynamicObject> {
        let mut object = self.object.clone();
        object["metadata"]["name"] = Value::from(pod_name(taskrun));
        let labels = &mut object["metadata"]["labels"];
        labels[TASKRUN_LABEL] = Value::from(taskrun);
        labels[TASKRUN_UID_LABEL] = Value::from(uid);
        object["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "tekton.dev/v1",
            "kind": "TaskRun",
            "name": taskrun,
            "uid": uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }]);
        Ok(serde_json::from_value(object)?)
    }
}

/// How [`create_taskruns`] finishes each TaskRun.
#[derive(Clone, Copy)]
struct Finish<'a> {
    /// The TaskRun status to set (naming the pod).
    status: &'a Value,
    /// The pods API and the pod to create with its status, when pods are wanted.
    pod: Option<(&'a Api<DynamicObject>, &'a SucceededPod)>,
}

/// Creates `count` TaskRuns `<prefix>-NNNNN`, `CREATE_CONCURRENCY` at a time, and when `finished`
/// is given, finishes each as Tekton and the kubelet would: its pod created (when given) and its
/// status set through the status subresource, then the TaskRun's status set, naming the pod.
async fn create_taskruns(
    api: &Api<DynamicObject>,
    namespace: &str,
    prefix: &str,
    count: usize,
    finished: Option<Finish<'_>>,
) -> anyhow::Result<()> {
    let fixture = taskrun_fixture("taskrun-01-pending.json", namespace)?;
    let started = Instant::now();
    let mut created = 0;
    futures::stream::iter(0..count)
        .map(|index| {
            let mut object = fixture.object.clone();
            let name = format!("{prefix}-{index:05}");
            object.metadata.name = Some(name.clone());
            object.metadata.generate_name = None;
            async move {
                let created = api
                    .create(&PostParams::default(), &object)
                    .await
                    .with_context(|| format!("creating TaskRun {name}"))?;
                let Some(Finish { status, pod }) = finished else {
                    return Ok(());
                };
                if let Some((pods, pod)) = pod {
                    let uid = created
                        .metadata
                        .uid
                        .with_context(|| format!("TaskRun {name} has no UID"))?;
                    let pod_name = pod_name(&name);
                    pods.create(&PostParams::default(), &pod.object(&name, &uid)?)
                        .await
                        .with_context(|| format!("creating pod {pod_name}"))?;
                    pods.patch_status(
                        &pod_name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": pod.status })),
                    )
                    .await
                    .with_context(|| format!("setting the status of pod {pod_name}"))?;
                }
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": status_naming(status, &name) })),
                )
                .await
                .with_context(|| format!("setting the status of TaskRun {name}"))?;
                Ok::<(), anyhow::Error>(())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_for_each(|()| {
            created += 1;
            if count >= PROGRESS_FROM && created % (count / 10) == 0 {
                eprintln!(
                    "watcher: {created} of {count} TaskRuns created ({:.0} s)",
                    started.elapsed().as_secs_f64()
                );
            }
            futures::future::ready(Ok(()))
        })
        .await
        .context("creating TaskRuns")?;
    Ok(())
}

/// The TaskRuns stream's size limit for a run of `events`: its default (1 GiB, oldest dropped
/// first) holds about 425,000 of these events (seen at 100,000 TaskRuns with pods: the stream
/// stopped at 425,020 of 500,000, and the wait for all of them could never end), so larger runs
/// get room for every event at 4 KiB each.
fn stream_max_bytes(events: u64) -> u64 {
    const DEFAULT: u64 = 1024 * 1024 * 1024;
    const PER_EVENT: u64 = 4 * 1024;
    DEFAULT.max(events * PER_EVENT)
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

/// The time between the first stored message of the stream and message number `count`, by the
/// server's timestamps.
async fn stored_span(
    jetstream: &async_nats::jetstream::Context,
    stream_name: &str,
    count: u64,
) -> anyhow::Result<Duration> {
    let stream = jetstream.get_stream(stream_name).await?;
    let first_sequence = stream.cached_info().state.first_sequence;
    let first = stream.get_raw_message(first_sequence).await?;
    let last = stream
        .get_raw_message(first_sequence + count.saturating_sub(1))
        .await?;
    let span = last.time - first.time;
    Ok(Duration::from_nanos(
        u64::try_from(span.whole_nanoseconds()).unwrap_or(0),
    ))
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
