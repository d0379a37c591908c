//! `events`: publish and consume N TaskRun events through our binding (typed CloudEvents in binary
//! mode, `Nats-Msg-Id`, PubAck, decode, one ack rule) against raw async-nats JetStream sending the
//! same messages, on the same real nats-server in the same run.
//!
//! The headline ratio compares our binding with raw async-nats publishing the exact messages our
//! binding puts on the wire: the same JSON body and the same headers (the `ce-*` attributes and
//! `Nats-Msg-Id`), the raw side's headers made before its clock starts. Those headers are the event
//! contract (binary content mode, deduplication by id), not a cost of our code: the server spends
//! more on a message with headers and a `Nats-Msg-Id` (it parses them and keeps the id in the
//! duplicate window) and the client parses them on receipt, whoever sends them. So the contract's
//! own cost is reported separately, as raw async-nats with no headers at all (same bodies):
//! `raw+headers / raw` is what the headers cost, `ours / raw` both together.
//!
//! All sides do the same work otherwise: publishes go out with the same window of acks in
//! flight; consumers pull with the same batch and concurrency, parse the JSON into the same struct
//! and double-ack each message (the server confirms the ack, as our consumer requires).
//! Settings: `window` (publishes in flight, default 256), `concurrency` (handlers at once,
//! default 64).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::stream;
use chrono::{TimeZone, Utc};
use countersign_events::data::{
    Outcome, PodRef, ResultType, StepRecord, TaskRunFinished, TaskRunRef, TaskRunResult,
    TerminationEntry,
};
use countersign_events::{
    Bus, BusConfig, ConsumerConfig, ConsumerSpec, Delivery, Event, EventMetrics, EventSource,
    Family, StreamKind, run_consumer,
};
use countersign_test_support::nats::NatsServer;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio_util::sync::CancellationToken;

use super::{Case, CaseFuture};
use crate::Options;
use crate::report::CaseReport;

/// The case.
pub(super) const CASE: Case = Case {
    name: "events",
    summary: "publish + consume N events: our binding vs raw async-nats JetStream",
    run: run_boxed,
};

const TARGET: f64 = 0.9;

fn run_boxed(options: Options) -> CaseFuture {
    Box::pin(run(options))
}

/// One phase (publish or consume) of one side: its wall time, and the CPU time it used in the
/// client (this process) and in nats-server.
#[derive(Debug, Clone, Copy)]
struct Phase {
    wall: Duration,
    client_cpu: Duration,
    server_cpu: Duration,
}

impl Phase {
    /// The better of two measurements of a phase, field by field.
    fn min(self, other: Phase) -> Phase {
        Phase {
            wall: self.wall.min(other.wall),
            client_cpu: self.client_cpu.min(other.client_cpu),
            server_cpu: self.server_cpu.min(other.server_cpu),
        }
    }
}

/// How one side did.
#[derive(Debug, Clone, Copy)]
struct Timing {
    publish: Phase,
    consume: Phase,
}

/// Measures a phase from its start.
struct Meter {
    started: Instant,
    client_cpu: Duration,
    server_cpu: Duration,
}

impl Meter {
    fn start() -> Meter {
        let (client_cpu, server_cpu) = cpu_times();
        Meter {
            started: Instant::now(),
            client_cpu,
            server_cpu,
        }
    }

    fn stop(self) -> Phase {
        let wall = self.started.elapsed();
        let (client_cpu, server_cpu) = cpu_times();
        Phase {
            wall,
            client_cpu: client_cpu.saturating_sub(self.client_cpu),
            server_cpu: server_cpu.saturating_sub(self.server_cpu),
        }
    }
}

/// CPU time (user + system, all threads) of this process and of the processes it started (the
/// nats-server, under its guard shell), from the scheduler's per-thread statistics in `/proc`.
/// Zero where `/proc` cannot be read: the figures are diagnostics, not the headline.
fn cpu_times() -> (Duration, Duration) {
    fn threads_cpu(pid: &str) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }
    let parents: Vec<(String, String)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            Some((pid, ppid.to_owned()))
        })
        .collect();
    let mut descendants = vec![std::process::id().to_string()];
    let mut index = 0;
    while index < descendants.len() {
        let parent = descendants[index].clone();
        descendants.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| pid.clone()),
        );
        index += 1;
    }
    let children: u64 = descendants.iter().skip(1).map(|pid| threads_cpu(pid)).sum();
    (
        Duration::from_nanos(threads_cpu("self")),
        Duration::from_nanos(children),
    )
}

fn setting(options: &Options, key: &str, default: usize) -> anyhow::Result<usize> {
    options.settings.get(key).map_or(Ok(default), |value| {
        value
            .parse()
            .with_context(|| format!("setting {key}={value} is not a number"))
    })
}

/// A realistic finished-TaskRun payload (about 1.5 KiB of JSON).
fn payload(index: usize) -> TaskRunFinished {
    let time = |seconds| {
        Utc.with_ymd_and_hms(2026, 8, 20, 10, 0, seconds)
            .single()
            .unwrap_or_default()
    };
    let name = format!("build-{index}");
    let results = vec![
        TerminationEntry {
            key: "commit".into(),
            value: format!("{index:040x}"),
            r#type: 1,
        },
        TerminationEntry {
            key: "SVID".into(),
            value: "-----BEGIN CERTIFICATE-----\n".repeat(8),
            r#type: 1,
        },
        TerminationEntry {
            key: "commit.sig".into(),
            value: "MEUCIQ".repeat(16),
            r#type: 1,
        },
        TerminationEntry {
            key: "RESULT_MANIFEST".into(),
            value: "commit".into(),
            r#type: 1,
        },
        TerminationEntry {
            key: "RESULT_MANIFEST.sig".into(),
            value: "MEUCIQ".repeat(16),
            r#type: 1,
        },
    ];
    TaskRunFinished {
        taskrun: TaskRunRef {
            cluster: "bench".into(),
            namespace: "team-a".into(),
            name: name.clone(),
            uid: format!("00000000-0000-0000-0000-{index:012}"),
        },
        taskrun_created_at: time(0),
        pod: Some(PodRef {
            name: format!("{name}-pod"),
            uid: format!("pod-{index}"),
        }),
        spiffe_id: Some(format!("spiffe://example.org/ns/team-a/taskrun/{name}")),
        outcome: Outcome::Succeeded,
        reason: "Succeeded".into(),
        message: "All Steps have completed executing".into(),
        started_at: Some(time(1)),
        completed_at: Some(time(9)),
        results: vec![TaskRunResult {
            name: "commit".into(),
            r#type: ResultType::String,
            value: format!("{index:040x}").into(),
        }],
        steps: vec![StepRecord {
            name: "build".into(),
            container: "step-build".into(),
            exit_code: 0,
            started_at: Some(time(1)),
            finished_at: Some(time(9)),
            results,
        }],
        oversized: None,
        declared_results: vec!["commit".into()],
    }
}

async fn run(options: Options) -> anyhow::Result<CaseReport> {
    let count = options.events;
    let window = setting(&options, "window", 256)?.max(1);
    let concurrency = setting(&options, "concurrency", 64)?.max(1);
    let server = NatsServer::start().await.context("starting nats-server")?;
    let payloads: Vec<TaskRunFinished> = (0..count).map(payload).collect();
    let payload_bytes = serde_json::to_vec(&payloads[0])?.len();

    let mut raw_best: Option<Timing> = None;
    let mut headed_best: Option<Timing> = None;
    let mut ours_best: Option<Timing> = None;
    for round in 0..options.rounds {
        let raw = run_raw(
            &server,
            &payloads,
            &format!("RAW{round}"),
            window,
            concurrency,
            None,
        )
        .await
        .context("the raw side")?;
        let ours = run_ours(&server, &payloads, round, window, concurrency)
            .await
            .context("our binding")?;
        let headers = our_headers(&payloads)?;
        let headed = run_raw(
            &server,
            &payloads,
            &format!("HEADED{round}"),
            window,
            concurrency,
            Some(headers),
        )
        .await
        .context("the raw side with our headers")?;
        for (side, timing) in [("raw", raw), ("ours", ours), ("raw+headers", headed)] {
            eprintln!(
                "events: round {round}: {side:<11} publish {:>9.1?} (CPU client {:>9.1?}, server {:>9.1?}); \
                 consume {:>9.1?} (CPU client {:>9.1?}, server {:>9.1?})",
                timing.publish.wall,
                timing.publish.client_cpu,
                timing.publish.server_cpu,
                timing.consume.wall,
                timing.consume.client_cpu,
                timing.consume.server_cpu,
            );
        }
        raw_best = Some(best(raw_best, raw));
        headed_best = Some(best(headed_best, headed));
        ours_best = Some(best(ours_best, ours));
    }
    let (Some(raw), Some(headed), Some(ours)) = (raw_best, headed_best, ours_best) else {
        anyhow::bail!("no round ran");
    };

    let rate = |phase: Phase| count as f64 / phase.wall.as_secs_f64().max(f64::EPSILON);
    let total = |timing: Timing| {
        (timing.publish.wall + timing.consume.wall)
            .as_secs_f64()
            .max(f64::EPSILON)
    };
    let mut report = CaseReport {
        case: CASE.name.to_owned(),
        ratio: total(headed) / total(ours),
        target: TARGET,
        metrics: Vec::new(),
        notes: vec![
            format!(
                "{count} events of {payload_bytes} bytes of JSON, best of {} rounds",
                options.rounds
            ),
            format!(
                "publish window {window}; consumer batch and concurrency {concurrency}; double ack on both sides"
            ),
            "ratio = time of raw async-nats sending the same messages (same body, same headers, \
             made beforehand) / our time, for publish + consume (higher is better)"
                .to_owned(),
            "the contract's own cost (headers and deduplication, whoever sends them) is \
             `raw+headers / raw`; against raw with no headers at all our binding is `ours / raw`"
                .to_owned(),
        ],
    };
    // The headline's parts: ours against raw sending the same messages.
    for (phase_name, phase_of) in [
        (
            "publish",
            (|timing: Timing| timing.publish) as fn(Timing) -> Phase,
        ),
        ("consume", |timing: Timing| timing.consume),
    ] {
        report.metric(
            &format!("raw+headers {phase_name} rate"),
            rate(phase_of(headed)),
            "events/s",
        );
        report.metric(
            &format!("ours {phase_name} rate"),
            rate(phase_of(ours)),
            "events/s",
        );
        report.metric(
            &format!("{phase_name} ratio"),
            rate(phase_of(ours)) / rate(phase_of(headed)),
            "ours/raw+headers",
        );
    }
    // The contract's own cost, and ours against raw with no headers.
    report.metric(
        "raw (no headers) publish rate",
        rate(raw.publish),
        "events/s",
    );
    report.metric(
        "raw (no headers) consume rate",
        rate(raw.consume),
        "events/s",
    );
    report.metric(
        "raw+headers / raw (what the contract's headers cost, whoever sends them)",
        total(raw) / total(headed),
        "ratio",
    );
    report.metric(
        "ours / raw (headers and our code together)",
        total(raw) / total(ours),
        "ratio",
    );
    let per_event = |cpu: Duration| cpu.as_secs_f64() * 1e6 / count.max(1) as f64;
    for (side, timing) in [("raw", raw), ("raw+headers", headed), ("ours", ours)] {
        for (phase_name, phase) in [("publish", timing.publish), ("consume", timing.consume)] {
            report.metric(
                &format!("{side} {phase_name}: client CPU per event"),
                per_event(phase.client_cpu),
                "µs",
            );
            report.metric(
                &format!("{side} {phase_name}: nats-server CPU per event"),
                per_event(phase.server_cpu),
                "µs",
            );
        }
    }
    report.metric("raw end-to-end rate", count as f64 / total(raw), "events/s");
    report.metric(
        "ours end-to-end rate",
        count as f64 / total(ours),
        "events/s",
    );
    Ok(report)
}

/// The headers our binding sends for each payload (CloudEvent attributes and `Nats-Msg-Id`).
fn our_headers(payloads: &[TaskRunFinished]) -> anyhow::Result<Vec<async_nats::HeaderMap>> {
    let source = EventSource::service("bench");
    payloads
        .iter()
        .map(|data| {
            let event = Event::new(&source, data.clone());
            let (mut headers, _) = countersign_events::encode(&event)?;
            headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id.as_str());
            Ok(headers)
        })
        .collect()
}

fn best(current: Option<Timing>, candidate: Timing) -> Timing {
    match current {
        None => candidate,
        Some(current) => Timing {
            publish: current.publish.min(candidate.publish),
            consume: current.consume.min(candidate.consume),
        },
    }
}

/// Raw async-nats JetStream: JSON bodies, no headers (or, to measure what the headers cost on
/// the wire and in the server, the headers our binding would send, made beforehand).
async fn run_raw(
    server: &NatsServer,
    payloads: &[TaskRunFinished],
    name: &str,
    window: usize,
    concurrency: usize,
    headers: Option<Vec<async_nats::HeaderMap>>,
) -> anyhow::Result<Timing> {
    let jetstream = server.jetstream().await;
    let root = name.to_ascii_lowercase();
    let stream = jetstream
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{root}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;

    let mut headers = headers.map(Vec::into_iter);
    let meter = Meter::start();
    futures::stream::iter(payloads.iter().enumerate())
        .map(|(index, data)| {
            let jetstream = jetstream.clone();
            let subject = format!("{root}.taskrun.finished.bench.team-a.build-{index}");
            let headers = headers.as_mut().and_then(Iterator::next);
            async move {
                let body = serde_json::to_vec(data)?;
                match headers {
                    None => jetstream.publish(subject, body.into()).await?.await?,
                    Some(headers) => {
                        jetstream
                            .publish_with_headers(subject, headers, body.into())
                            .await?
                            .await?
                    }
                };
                Ok::<(), anyhow::Error>(())
            }
        })
        .buffer_unordered(window)
        .try_collect::<()>()
        .await?;
    let publish = meter.stop();

    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1024,
            ..Default::default()
        })
        .await?;
    let meter = Meter::start();
    let messages = consumer
        .stream()
        .max_messages_per_batch(concurrency)
        .messages()
        .await?;
    messages
        .take(payloads.len())
        .map_err(anyhow::Error::from)
        .try_for_each_concurrent(concurrency, |message| async move {
            let _data: TaskRunFinished = serde_json::from_slice(&message.payload)?;
            message
                .double_ack()
                .await
                .map_err(|error| anyhow::anyhow!(error))?;
            Ok(())
        })
        .await?;
    let consume = meter.stop();
    Ok(Timing { publish, consume })
}

/// Our binding: `Publisher::publish` and `run_consumer`.
async fn run_ours(
    server: &NatsServer,
    payloads: &[TaskRunFinished],
    round: usize,
    window: usize,
    concurrency: usize,
) -> anyhow::Result<Timing> {
    // Small limits: the server reserves max_bytes for every stream of every round.
    let mut config = BusConfig {
        prefix: format!("bench{round}"),
        ..BusConfig::default()
    };
    for limits in [
        &mut config.streams.taskruns,
        &mut config.streams.registrations,
        &mut config.streams.attestations,
        &mut config.streams.deadletter,
    ] {
        limits.max_bytes = 256 * 1024 * 1024;
    }
    let bus = Bus::new(server.client().await, config, EventMetrics::new())?;
    bus.ensure_streams().await?;
    let publisher = bus.publisher(EventSource::service("bench"));
    let owned: Vec<TaskRunFinished> = payloads.to_vec();

    let meter = Meter::start();
    futures::stream::iter(owned)
        .map(|data| {
            let publisher = publisher.clone();
            async move { publisher.publish_data(data).await }
        })
        .buffer_unordered(window)
        .try_collect::<Vec<_>>()
        .await?;
    let publish = meter.stop();

    let spec = ConsumerSpec {
        name: "bench".into(),
        stream: StreamKind::TaskRuns,
        filter_subjects: vec![bus.subjects().family_events(Family::TaskRun)],
        description: "bench".into(),
    };
    let consumer_config = ConsumerConfig {
        concurrency,
        max_ack_pending: 1024,
        ..ConsumerConfig::default()
    };
    let consumer = bus.ensure_consumer(&spec, &consumer_config).await?;
    let handled = Arc::new(AtomicUsize::new(0));
    let done = CancellationToken::new();
    let total = payloads.len();
    let meter = Meter::start();
    run_consumer(
        &consumer,
        {
            let handled = handled.clone();
            let done = done.clone();
            move |_event: Event<TaskRunFinished>, _delivery: Delivery| {
                if handled.fetch_add(1, Ordering::SeqCst) + 1 >= total {
                    done.cancel();
                }
                async { Ok(()) }
            }
        },
        done.clone(),
    )
    .await?;
    let consume = meter.stop();
    anyhow::ensure!(
        handled.load(Ordering::SeqCst) == total,
        "every event was handled once"
    );
    Ok(Timing { publish, consume })
}
