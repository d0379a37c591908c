//! `attestor`: TaskRuns attested per second against the crypto bound of one TaskRun, and the
//! latency from a finished event published to its attestation event received, all against a
//! real nats-server and a real SPIRE (server and agent).
//!
//! The attestor runs in-process with its SVID from the real agent's Workload API (this process
//! is registered as `spiffe://example.org/countersign/attestor`). TaskRun results are signed,
//! as the entrypointer would, with X509-SVIDs minted by the real server's CA
//! (`spire-server x509 mint`), one per TaskRun name; each TaskRun has 4 results.
//!
//! - Throughput: `taskruns` finished events are published first; then the attestor starts and
//!   the clock runs from its readiness to the last attestation event received.
//! - The crypto bound, measured in the same run on one core: a TaskRun with 4 results costs 5
//!   P-256 verifications (4 results and the manifest), 1 chain check and 1 DSSE signature.
//!   The headline ratio is attested TaskRuns/s over that bound (higher is better).
//! - Latency: `latency_taskruns` finished events at `rate` per second; for each, the time from
//!   publishing it to receiving its attestation event; p50 and p99 (target p99 < 20 ms).
//!
//! Settings: `taskruns` (default 2000), `rate` (100), `latency_taskruns` (1000), `names` (50),
//! `concurrency` (the consumer's handlers at once, 32).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use countersign_attestor::{AttestorConfig, run};
use countersign_events::data::{
    Outcome, PodRef, ResultType, StepRecord, TaskRunFinished, TaskRunRef, TaskRunResult,
    TerminationEntry,
};
use countersign_events::{Bus, BusConfig, EventMetrics, EventSource, Family, Publisher};
use countersign_identity::svid::{SigningSvid, SvidLeaf, TrustBundleSet};
use countersign_identity::tekton::signed_step_entries;
use countersign_runtime::config::{Environment, parse_config};
use countersign_runtime::{Context, run_service};
use countersign_test_support::nats::NatsServer;
use countersign_test_support::spire::{Spire, SpireOptions};
use futures::{StreamExt as _, TryStreamExt as _};

use super::{Case, CaseFuture};
use crate::Options;
use crate::report::CaseReport;

/// The case.
pub(super) const CASE: Case = Case {
    name: "attestor",
    summary: "TaskRuns attested per second vs the crypto bound; latency at 100 TaskRuns/s",
    run: run_boxed,
};

/// The ratio the attestor should reach: 0.8 of the single-core crypto bound, with NATS, the KV
/// writes and the index on the same 2-core machine (issue 18 raised it from a third, once 0.63
/// was reached: the consume path is what costs the rest).
const TARGET: f64 = 0.8;

/// The latency target.
const P99_TARGET_MS: f64 = 20.0;

const ATTESTOR_ID: &str = "spiffe://example.org/countersign/attestor";

const RESULTS: [(&str, &str); 4] = [
    ("commit", "9f3e2c1a7b4d5e6f8091a2b3c4d5e6f708192a3b"),
    (
        "IMAGE_DIGEST",
        "sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c",
    ),
    (
        "image",
        r#"{"url":"registry.example.com/team/app","digest":"sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c"}"#,
    ),
    ("tags", r#"["latest","v1.4.2"]"#),
];

fn run_boxed(options: Options) -> CaseFuture {
    Box::pin(run_case(options))
}

fn setting(options: &Options, key: &str, default: usize) -> anyhow::Result<usize> {
    options.settings.get(key).map_or(Ok(default), |value| {
        value
            .parse()
            .with_context(|| format!("setting {key}={value} is not a number"))
    })
}

/// A TaskRun name's signed step: its SVID (minted by the real server) and the entries.
struct Signed {
    name: String,
    created_at: DateTime<Utc>,
    entries: Vec<TerminationEntry>,
}

/// Mints an X509-SVID for `spiffe_id` with the real server's CA.
async fn mint(spire: &Spire, spiffe_id: &str) -> anyhow::Result<SigningSvid> {
    let dir = tempfile::tempdir()?;
    let output = tokio::process::Command::new(&countersign_test_support::peers().spire_server.path)
        .args(["x509", "mint", "-spiffeID", spiffe_id, "-ttl", "1h"])
        .arg("-socketPath")
        .arg(spire.server_socket_path())
        .arg("-write")
        .arg(dir.path())
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "spire-server x509 mint: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let svid = std::fs::read_to_string(dir.path().join("svid.pem"))?;
    let key = std::fs::read_to_string(dir.path().join("key.pem"))?;
    Ok(SigningSvid::from_pem(&svid, &key)?)
}

fn event_entries(
    entries: Vec<countersign_identity::tekton::TerminationEntry>,
) -> Vec<TerminationEntry> {
    entries
        .into_iter()
        .map(|entry| TerminationEntry {
            key: entry.key,
            value: entry.value,
            r#type: 1,
        })
        .collect()
}

fn merged() -> Vec<TaskRunResult> {
    RESULTS
        .iter()
        .map(|(name, raw)| {
            let (r#type, value) = match *name {
                "image" => (
                    ResultType::Object,
                    serde_json::from_str(raw).unwrap_or_default(),
                ),
                "tags" => (
                    ResultType::Array,
                    serde_json::from_str(raw).unwrap_or_default(),
                ),
                _ => (
                    ResultType::String,
                    serde_json::Value::String((*raw).to_owned()),
                ),
            };
            TaskRunResult {
                name: (*name).to_owned(),
                r#type,
                value,
            }
        })
        .collect()
}

fn finished(signed: &Signed, uid: String) -> TaskRunFinished {
    let now = Utc::now();
    let taskrun = TaskRunRef {
        cluster: "bench".into(),
        namespace: "bench".into(),
        name: signed.name.clone(),
        uid,
    };
    TaskRunFinished {
        pod: Some(PodRef {
            name: format!("{}-pod", taskrun.name),
            uid: format!("pod-{}", taskrun.uid),
        }),
        spiffe_id: Some(format!(
            "spiffe://example.org/ns/bench/taskrun/{}",
            taskrun.name
        )),
        taskrun,
        taskrun_created_at: signed.created_at,
        outcome: Outcome::Succeeded,
        reason: "Succeeded".into(),
        message: "All Steps have completed executing".into(),
        started_at: Some(signed.created_at),
        completed_at: Some(now),
        results: merged(),
        steps: vec![StepRecord {
            name: "build".into(),
            container: "step-build".into(),
            exit_code: 0,
            started_at: Some(signed.created_at),
            finished_at: Some(now),
            results: signed.entries.clone(),
        }],
        oversized: None,
        declared_results: RESULTS.iter().map(|(name, _)| (*name).to_owned()).collect(),
    }
}

/// How many of an operation run per second on this thread, measured for about `budget`.
fn per_second(budget: Duration, mut operation: impl FnMut()) -> f64 {
    // Warm up, then measure in batches until the budget is spent.
    for _ in 0..50 {
        operation();
    }
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < budget {
        for _ in 0..50 {
            operation();
        }
        count += 50;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// The raw crypto rates: P-256 verifications, chain checks and DSSE-sized signatures per second.
fn crypto_rates(svid: &SigningSvid, bundles: &TrustBundleSet) -> anyhow::Result<(f64, f64, f64)> {
    let message = b"sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";
    let signature = svid.sign(message)?;
    let public_key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        svid.leaf().public_key().key_bytes().to_vec(),
    );
    public_key
        .verify(message, &signature)
        .map_err(|_| anyhow::anyhow!("the raw P-256 verification failed"))?;
    let verifications = per_second(Duration::from_secs(1), || {
        let _ = std::hint::black_box(public_key.verify(message, &signature));
    });
    let leaf = SvidLeaf::from_der(&svid.chain()[0])?;
    let at = Utc::now();
    bundles.verify_chain(&leaf, &[], at)?;
    let chains = per_second(Duration::from_secs(1), || {
        let _ = std::hint::black_box(bundles.verify_chain(&leaf, &[], at));
    });
    let payload = vec![b'x'; 1500];
    let signatures = per_second(Duration::from_secs(1), || {
        let _ = std::hint::black_box(svid.sign(&payload));
    });
    Ok((verifications, chains, signatures))
}

/// Attestation events received: TaskRun UID → when.
type Received = Arc<Mutex<HashMap<String, Instant>>>;

async fn receive_attestations(
    client: async_nats::Client,
    subject: String,
) -> anyhow::Result<Received> {
    let received: Received = Arc::new(Mutex::new(HashMap::new()));
    let mut subscription = client.subscribe(subject).await?;
    client.flush().await?;
    let sink = received.clone();
    tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            let now = Instant::now();
            let id = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|value| value.as_str().trim_end_matches(":attestation").to_owned());
            if let Some(uid) = id {
                sink.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(uid, now);
            }
        }
    });
    Ok(received)
}

fn count(received: &Received) -> usize {
    received
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .len()
}

async fn wait_for(received: &Received, total: usize, timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if count(received) >= total {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {total} attestations within {timeout:?}",
            count(received)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

async fn run_case(options: Options) -> anyhow::Result<CaseReport> {
    let taskruns = setting(&options, "taskruns", 2000)?.max(1);
    let rate = setting(&options, "rate", 100)?.max(1);
    let latency_taskruns = setting(&options, "latency_taskruns", 1000)?.max(1);
    let names = setting(&options, "names", 50)?.max(1);
    let concurrency = setting(&options, "concurrency", 32)?.max(1);

    let nats = NatsServer::start().await.context("starting nats-server")?;
    let spire = Spire::start(SpireOptions::default())
        .await
        .context("starting SPIRE")?;
    spire
        .register_test_process(ATTESTOR_ID, false)
        .await
        .context("registering the attestor")?;
    let mut bundles = TrustBundleSet::new();
    bundles.add_pem_detecting_trust_domains(spire.bundle_pem())?;

    eprintln!("attestor: minting {names} TaskRun SVIDs with the real SPIRE server");
    let mut signed = Vec::with_capacity(names);
    let mut crypto_svid = None;
    for index in 0..names {
        let name = format!("build-{index}");
        let svid = mint(
            &spire,
            &format!("spiffe://example.org/ns/bench/taskrun/{name}"),
        )
        .await?;
        let results: Vec<(String, String)> = RESULTS
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        signed.push(Signed {
            name,
            created_at: svid.leaf().not_before(),
            entries: event_entries(signed_step_entries(&results, &svid)?),
        });
        crypto_svid.get_or_insert(svid);
    }
    let crypto_svid = crypto_svid.context("at least one SVID")?;

    // The raw crypto, in this run, on this machine.
    let (verifications, chains, signatures) = crypto_rates(&crypto_svid, &bundles)?;
    let crypto_seconds = 5.0 / verifications + 1.0 / chains + 1.0 / signatures;
    let bound = 1.0 / crypto_seconds;

    let bus = Bus::new(
        nats.client().await,
        BusConfig::default(),
        EventMetrics::new(),
    )?;
    bus.ensure_streams().await?;
    let watcher: Publisher = bus.publisher(EventSource::service("watcher"));
    let received = receive_attestations(
        nats.client().await,
        bus.subjects().family_events(Family::Attestation),
    )
    .await?;

    // Throughput: the backlog first, then the attestor.
    eprintln!("attestor: publishing {taskruns} finished TaskRuns");
    let backlog: Vec<TaskRunFinished> = (0..taskruns)
        .map(|index| {
            finished(
                &signed[index % signed.len()],
                format!("throughput-{index:08}"),
            )
        })
        .collect();
    futures::stream::iter(backlog)
        .map(|data| {
            let watcher = watcher.clone();
            async move { watcher.publish_data(data).await }
        })
        .buffer_unordered(256)
        .try_collect::<Vec<_>>()
        .await?;

    let config: AttestorConfig = parse_config(
        &format!(
            "[nats]\nurl = \"{}\"\n[spire]\nsocket_path = \"{}\"\n\
             [consumer]\nconcurrency = {concurrency}\nmax_ack_pending = 4096\n",
            nats.url(),
            spire.agent_endpoint()
        ),
        &Environment::new(),
    )?;
    let ctx = Context::new("attestor", config);
    let readiness = ctx.readiness.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let attestor = tokio::spawn(run_service(
        ctx,
        listener,
        Duration::from_secs(10),
        async {
            let _ = stopped.await;
        },
        run,
    ));
    tokio::time::timeout(Duration::from_secs(120), readiness.wait_ready())
        .await
        .context("the attestor did not become ready")?;
    let started = Instant::now();
    let finished_at = wait_for(&received, taskruns, Duration::from_secs(600)).await?;
    let attested_per_second = taskruns as f64 / (finished_at - started).as_secs_f64();

    // Latency at a steady rate.
    eprintln!("attestor: {latency_taskruns} TaskRuns at {rate}/s for the latency");
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight = tokio::task::JoinSet::new();
    for index in 0..latency_taskruns {
        ticker.tick().await;
        let uid = format!("latency-{index:08}");
        let data = finished(&signed[index % signed.len()], uid.clone());
        let watcher = watcher.clone();
        let sent = sent.clone();
        in_flight.spawn(async move {
            sent.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(uid, Instant::now());
            watcher.publish_data(data).await
        });
    }
    while let Some(joined) = in_flight.join_next().await {
        joined??;
    }
    wait_for(
        &received,
        taskruns + latency_taskruns,
        Duration::from_secs(120),
    )
    .await?;
    let _ = stop.send(());
    let _ = attestor.await;

    let mut latencies: Vec<f64> = {
        let sent = sent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let received = received
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sent.iter()
            .filter_map(|(uid, at)| {
                received
                    .get(uid)
                    .map(|done| done.saturating_duration_since(*at).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    latencies.sort_by(f64::total_cmp);
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    println!("attestor-latency: p50 {p50:.2} ms p99 {p99:.2} ms");

    let mut report = CaseReport {
        case: CASE.name.to_owned(),
        ratio: attested_per_second / bound,
        target: TARGET,
        metrics: Vec::new(),
        notes: vec![
            format!(
                "{taskruns} TaskRuns of 4 results each, one step, signed with {} SVIDs minted by the real SPIRE server",
                signed.len()
            ),
            format!("consumer concurrency {concurrency}; nats-server, SPIRE and the attestor on one machine"),
            "crypto bound of one TaskRun = 5 P-256 verifications + 1 chain check + 1 DSSE signature, measured on one core in this run".to_owned(),
            "ratio = attested TaskRuns/s / crypto bound TaskRuns/s (higher is better)".to_owned(),
            format!(
                "latency: {latency_taskruns} TaskRuns at {rate}/s, finished event published -> attestation event received; target p99 < {P99_TARGET_MS} ms ({})",
                if p99 < P99_TARGET_MS { "met" } else { "NOT met" }
            ),
        ],
    };
    report.metric("attested TaskRuns", attested_per_second, "TaskRuns/s");
    report.metric("raw P-256 verifications", verifications, "verifications/s");
    report.metric("raw chain checks", chains, "checks/s");
    report.metric("raw P-256 signatures", signatures, "signatures/s");
    report.metric("crypto bound (one core)", bound, "TaskRuns/s");
    report.metric("latency p50", p50, "ms");
    report.metric("latency p99", p99, "ms");
    report.metric("latency samples", latencies.len() as f64, "TaskRuns");
    Ok(report)
}
