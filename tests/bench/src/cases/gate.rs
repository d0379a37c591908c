//! `gate`: the admission webhook's latency answered from its replica, and what registering it
//! costs TaskRun creates through the real kube-apiserver, against a no-op webhook in the same run.
//!
//! 1. A private etcd + kube-apiserver (the PipelineRun CRD installed) and nats-server start; the
//!    gate runs in-process (`countersign_gate::run`) with a serving certificate from a CA the bench
//!    makes. Two namespaces get the same pipeline: a PipelineRun whose recorded spec passes
//!    `build`'s `IMAGE_DIGEST` into `deploy`'s `image` param, its upstream TaskRun with that result,
//!    and (stored in the attestations bucket) a verified attestation signing it.
//! 2. Latency: `requests` AdmissionReviews (default 5,000) of the downstream TaskRun, each checked
//!    in full and admitted, are POSTed to the gate's webhook over HTTPS at `rate` per second
//!    (default 1,000), one request per tick whatever the answers; each is timed from send to
//!    answer. `gate: p99 <ms>` (target under 5 ms).
//! 3. Round trips: a ValidatingWebhookConfiguration sends one namespace's TaskRun creates to the
//!    gate, another sends the other namespace's to a no-op webhook (an always-allow HTTPS endpoint
//!    served by the bench, on the same TLS server code). `taskruns` creates (default 500) with
//!    `concurrency` in flight (default 32) go to each namespace in turn, `rounds` times (default
//!    3); the best rate of each is kept.
//!
//! Headline: `gate: ratio <creates/s through the gate ÷ creates/s through the no-op webhook>`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Json;
use axum::extract::State;
use axum::routing::post;
use base64::Engine as _;
use chrono::Utc;
use countersign_events::data::{
    AttestationVerified, ResultSubject, TaskRunRef, Verdict as EventVerdict,
};
use countersign_events::{
    AttestationEvent, Bus, BusConfig, Event, EventMetrics, EventSource, KvConfig,
};
use countersign_gate::GateConfig;
use countersign_gate::decide::signed_digest;
use countersign_gate::substitution::ParamValue;
use countersign_gate::tls::{ReloadingCertificate, serve_https};
use countersign_identity::attestation::SignedAttestation;
use countersign_identity::intoto::{
    PredicateTimes, Statement, Subject, TASKRUN_RESULTS_PREDICATE_TYPE,
    TaskRunRef as PredicateTaskRun, TaskRunResultsPredicate, Verdict,
};
use countersign_identity::svid::SigningSvid;
use countersign_runtime::config::{Environment, ServiceConfig as _, parse_config};
use countersign_runtime::http_client::{HttpClientOptions, TrustRoots, http_client};
use countersign_runtime::{Context, run_service};
use countersign_test_support::kube::{KubeApiserver, taskrun_resource};
use countersign_test_support::nats::NatsServer;
use countersign_test_support::webhook::WebhookTls;
use countersign_test_support::{fixtures_dir, ports, wait};
use countersign_verdict::attestation::to_event_attestation;
use countersign_verdict::store::AttestationStore;
use futures::StreamExt as _;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Case, CaseFuture};
use crate::Options;
use crate::report::CaseReport;

/// The case.
pub(super) const CASE: Case = Case {
    name: "gate",
    summary: "gate admission latency p50/p99 at 1,000 req/s from its replica; TaskRun creates/s with the gate vs a no-op webhook",
    run: run_boxed,
};

/// The ratio of TaskRun creates per second with the gate over those with a no-op webhook.
const TARGET: f64 = 0.8;
/// The admission latency the gate should stay under at the 99th percentile.
const P99_TARGET_MS: f64 = 5.0;
/// The bus prefix.
const PREFIX: &str = "benchg";
/// The value the upstream signed and the downstream passes.
const DIGEST: &str = "sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";
/// The namespace label the webhook configurations select on.
const SELECTOR_LABEL: &str = "countersign-bench";
/// How long a phase may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

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

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn pipelinerun_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun"),
        "pipelineruns",
    )
}

fn webhook_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
        ),
        "validatingwebhookconfigurations",
    )
}

/// A verified attestation of `namespace/name` signing `IMAGE_DIGEST` = [`DIGEST`], as the
/// attestor signs it (the fixture controller SVID).
fn verified_attestation(
    namespace: &str,
    name: &str,
    uid: &str,
) -> anyhow::Result<Event<AttestationEvent>> {
    let dir = fixtures_dir().join("tekton/spire/generated");
    let svid = SigningSvid::from_pem(
        &std::fs::read_to_string(dir.join("controller-svid.pem"))?,
        &std::fs::read_to_string(dir.join("controller-svid.TEST-ONLY.key.pem"))?,
    )?;
    let digest = signed_digest(&ParamValue::String(DIGEST.into()));
    let now = Utc::now();
    let predicate = TaskRunResultsPredicate {
        taskrun: PredicateTaskRun {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
        },
        cluster: "bench".to_owned(),
        spiffe_id: None,
        svid_fingerprint: None,
        trust_bundle_digest: "0".repeat(64),
        verdict: Verdict::Verified,
        reason_code: None,
        checks: Vec::new(),
        times: PredicateTimes {
            created: now,
            finished: Some(now),
            verified: now,
        },
        signing: None,
    };
    let subjects = vec![Subject {
        name: "IMAGE_DIGEST".to_owned(),
        digest: BTreeMap::from([("sha256".to_owned(), digest.clone())]),
    }];
    let statement = Statement::new(subjects, TASKRUN_RESULTS_PREDICATE_TYPE, predicate)?;
    let signed = SignedAttestation::sign(&statement, &svid)?;
    let data = AttestationEvent::Verified(AttestationVerified {
        taskrun: TaskRunRef {
            cluster: "bench".to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
        },
        verdict: EventVerdict::Verified,
        spiffe_id: None,
        svid_fingerprint: None,
        subjects: vec![ResultSubject {
            name: "IMAGE_DIGEST".to_owned(),
            sha256: digest,
        }],
        attestation: to_event_attestation(&signed, &svid),
        attested_at: now,
    });
    Ok(Event::new(&EventSource::service("attestor"), data))
}

/// One namespace's pipeline: what the downstream TaskRun refers to.
struct Pipeline {
    namespace: String,
    pipeline_run: String,
    pipeline_run_uid: String,
}

impl Pipeline {
    /// The downstream TaskRun Tekton would create, passing the signed value.
    fn downstream(&self, name: &str) -> Value {
        json!({
            "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {"tekton.dev/pipelineTask": "deploy", "tekton.dev/pipelineRun": self.pipeline_run},
                "ownerReferences": [{
                    "apiVersion": "tekton.dev/v1", "kind": "PipelineRun", "name": self.pipeline_run,
                    "uid": self.pipeline_run_uid, "controller": true, "blockOwnerDeletion": true
                }]
            },
            "spec": {"taskRef": {"name": "deploy"}, "params": [{"name": "image", "value": format!("r.example/app@{DIGEST}")}]}
        })
    }
}

async fn create_pipeline(
    kube: &KubeApiserver,
    store: &AttestationStore,
    selector: &str,
) -> anyhow::Result<Pipeline> {
    let client = kube.client();
    let namespace = format!("bench-gate-{selector}-{}", std::process::id());
    let namespaces: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("", "v1", "Namespace"),
            "namespaces",
        ),
    );
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": namespace, "labels": {"countersign.dev/gate": "enforce", SELECTOR_LABEL: selector}}
            }))?,
        )
        .await
        .context("creating a namespace")?;
    let pipeline_runs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace, &pipelinerun_resource());
    let taskruns: Api<DynamicObject> =
        Api::namespaced_with(client, &namespace, &taskrun_resource());
    let pipeline_run = "release".to_owned();
    let created = pipeline_runs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
                "metadata": {"name": pipeline_run},
                "spec": {"pipelineRef": {"name": "release"}}
            }))?,
        )
        .await
        .context("creating the PipelineRun")?;
    let pipeline_run_uid = created
        .metadata
        .uid
        .clone()
        .context("the PipelineRun's UID")?;
    let upstream = "release-build";
    let upstream_uid = taskruns
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                "metadata": {"name": upstream, "labels": {"tekton.dev/pipelineTask": "build"}},
                "spec": {"taskRef": {"name": "build"}}
            }))?,
        )
        .await
        .context("creating the upstream TaskRun")?
        .metadata
        .uid
        .context("the upstream's UID")?;
    taskruns
        .patch_status(
            upstream,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"podName": "", "results": [
                {"name": "IMAGE_DIGEST", "type": "string", "value": DIGEST}
            ]}})),
        )
        .await
        .context("writing the upstream's results")?;
    pipeline_runs
        .patch_status(
            &pipeline_run,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "pipelineSpec": {"tasks": [
                    {"name": "build", "taskRef": {"name": "build"}},
                    {"name": "deploy", "taskRef": {"name": "deploy"}, "params": [
                        {"name": "image", "value": "r.example/app@$(tasks.build.results.IMAGE_DIGEST)"}
                    ]}
                ]},
                "childReferences": [{"apiVersion": "tekton.dev/v1", "kind": "TaskRun", "name": upstream, "pipelineTaskName": "build"}]
            }})),
        )
        .await
        .context("recording the Pipeline spec")?;
    store
        .create(
            &upstream_uid,
            &verified_attestation(&namespace, upstream, &upstream_uid)?,
        )
        .await
        .context("storing the upstream's attestation")?;
    Ok(Pipeline {
        namespace,
        pipeline_run,
        pipeline_run_uid,
    })
}

async fn register_webhook(
    kube: &KubeApiserver,
    selector: &str,
    url: &str,
    ca_pem: &str,
) -> anyhow::Result<()> {
    let api: Api<DynamicObject> = Api::all_with(kube.client(), &webhook_resource());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": format!("bench-{selector}")},
            "webhooks": [{
                "name": format!("{selector}.bench.countersign.dev"),
                "clientConfig": {"url": url, "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem)},
                "rules": [{"apiGroups": ["tekton.dev"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["taskruns"]}],
                "namespaceSelector": {"matchLabels": {SELECTOR_LABEL: selector}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 3
            }]
        }))?,
    )
    .await
    .with_context(|| format!("registering the {selector} webhook"))?;
    Ok(())
}

/// The no-op webhook: admits every review, counting them.
async fn noop_review(
    State(count): State<Arc<AtomicU64>>,
    Json(review): Json<Value>,
) -> Json<Value> {
    count.fetch_add(1, Ordering::Relaxed);
    let uid = review["request"]["uid"].clone();
    Json(json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": true}
    }))
}

/// Creates `count` downstream TaskRuns in `pipeline`'s namespace, `concurrency` at a time; their
/// rate per second.
async fn create_taskruns(
    kube: &KubeApiserver,
    pipeline: &Pipeline,
    round: usize,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(kube.client(), &pipeline.namespace, &taskrun_resource());
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..count)
        .map(|index| {
            let api = api.clone();
            let object = pipeline.downstream(&format!("deploy-{round}-{index}"));
            async move {
                let object: DynamicObject = serde_json::from_value(object)?;
                api.create(&PostParams::default(), &object)
                    .await
                    .context("creating a downstream TaskRun")?;
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let took = started.elapsed();
    for result in results {
        result?;
    }
    Ok(count as f64 / took.as_secs_f64())
}

async fn run(options: Options) -> anyhow::Result<CaseReport> {
    let requests = setting(&options, "requests", 5000)?.max(1);
    let rate = setting(&options, "rate", 1000)?.max(1);
    let taskruns = setting(&options, "taskruns", 500)?.max(1);
    let concurrency = setting(&options, "concurrency", 32)?.max(1);
    let rounds = setting(&options, "rounds", 3)?.max(1);

    eprintln!("gate: starting kube-apiserver and nats-server");
    let kube = KubeApiserver::start()
        .await
        .context("starting kube-apiserver")?;
    kube.install_crds(&[fixtures_dir().join("crds/tekton/300-pipelinerun.yaml")])
        .await
        .context("installing the PipelineRun CRD")?;
    let nats = NatsServer::start().await.context("starting nats-server")?;
    let bus = Bus::new(
        nats.client().await,
        BusConfig {
            prefix: PREFIX.to_owned(),
            ..BusConfig::default()
        },
        EventMetrics::new(),
    )?;
    bus.ensure_streams().await.context("creating the streams")?;
    let store = AttestationStore::ensure(&bus, &KvConfig::default(), &KvConfig::default())
        .await
        .context("creating the attestation buckets")?;
    let gated = create_pipeline(&kube, &store, "gate").await?;
    let baseline = create_pipeline(&kube, &store, "noop").await?;

    // The gate, in-process.
    let tls = WebhookTls::new();
    let webhook_port = ports::free_port();
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[nats]\nurl = \"{}\"\n[bus]\nprefix = \"{PREFIX}\"\n\
         [webhook]\nlisten = \"127.0.0.1:{webhook_port}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         [api]\nlisten = \"127.0.0.1:{}\"\n[kubernetes]\nkubeconfig = \"{}\"\n",
        nats.url(),
        tls.cert_file.display(),
        tls.key_file.display(),
        ports::free_port(),
        kube.kubeconfig_path().display(),
    );
    let config: GateConfig = parse_config(&text, &Environment::new())?;
    config.validate()?;
    let grace_period = config.shutdown.grace_period;
    let context = Context::new("gate", config);
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stop = CancellationToken::new();
    let gate = tokio::spawn(run_service(
        context.clone(),
        admin,
        grace_period,
        stop.clone().cancelled_owned(),
        countersign_gate::run,
    ));
    tokio::time::timeout(PHASE_TIMEOUT, context.readiness.wait_ready())
        .await
        .context("the gate did not become ready")?;

    // The no-op webhook, on the same TLS server code.
    let noop_count = Arc::new(AtomicU64::new(0));
    let noop_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let noop_port = noop_listener.local_addr()?.port();
    let noop_tls =
        Arc::new(ReloadingCertificate::load(&tls.cert_file, &tls.key_file)?.server_config()?);
    let noop = tokio::spawn(serve_https(
        noop_listener,
        axum::Router::new()
            .route("/validate", post(noop_review))
            .with_state(Arc::clone(&noop_count)),
        noop_tls,
        stop.clone(),
    ));

    // 1. Latency, straight to the gate's webhook.
    let client = http_client(
        HttpClientOptions::new()
            .roots(TrustRoots::Only(TrustRoots::certificates_from_pem(
                tls.ca_pem.as_bytes(),
            )?))
            .timeout(Duration::from_secs(5)),
    )?;
    let url = format!("https://127.0.0.1:{webhook_port}/validate/taskruns");
    let review = |index: usize| -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": format!("bench-{index}"), "namespace": gated.namespace, "operation": "CREATE",
                "object": gated.downstream(&format!("latency-{index}"))
            }
        }))
        .unwrap_or_default()
    };
    // Readiness can be read before the gate has registered its latches: wait for the answer.
    wait::until(
        "the gate admits the downstream TaskRun",
        PHASE_TIMEOUT,
        || {
            let request = client
                .post(&url)
                .header("content-type", "application/json")
                .body(review(0));
            async move {
                let answer: Value = request.send().await.ok()?.json().await.ok()?;
                (answer["response"]["allowed"] == true).then_some(())
            }
        },
    )
    .await
    .context("the gate never admits the downstream TaskRun")?;
    eprintln!("gate: {requests} admission reviews at {rate}/s");
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight = tokio::task::JoinSet::new();
    let sent_started = Instant::now();
    for index in 0..requests {
        ticker.tick().await;
        let client = client.clone();
        let url = url.clone();
        let body = review(index + 1);
        in_flight.spawn(async move {
            let started = Instant::now();
            let answer: Value = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?
                .json()
                .await?;
            let took = started.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(
                answer["response"]["allowed"] == true,
                "not admitted: {answer}"
            );
            Ok::<f64, anyhow::Error>(took)
        });
    }
    let mut latencies = Vec::with_capacity(requests);
    while let Some(joined) = in_flight.join_next().await {
        latencies.push(joined??);
    }
    let achieved_rate = requests as f64 / sent_started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    println!("gate: p99 {p99:.2} ms");
    eprintln!("gate: p50 {p50:.2} ms, p99 {p99:.2} ms at {achieved_rate:.0} reviews/s");

    // 2. Round trips through the API server: the gate vs the no-op webhook.
    register_webhook(&kube, "gate", &url, &tls.ca_pem).await?;
    register_webhook(
        &kube,
        "noop",
        &format!("https://127.0.0.1:{noop_port}/validate"),
        &tls.ca_pem,
    )
    .await?;
    let probes: Api<DynamicObject> =
        Api::namespaced_with(kube.client(), &baseline.namespace, &taskrun_resource());
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let probe: DynamicObject = serde_json::from_value(baseline.downstream("probe"))?;
    wait::until(
        "the API server calls the no-op webhook",
        PHASE_TIMEOUT,
        || async {
            let _ = probes.create(&dry_run, &probe).await;
            (noop_count.load(Ordering::Relaxed) > 0).then_some(())
        },
    )
    .await
    .context("the no-op webhook is never called")?;
    let gate_probes: Api<DynamicObject> =
        Api::namespaced_with(kube.client(), &gated.namespace, &taskrun_resource());
    let mut forged = gated.downstream("probe");
    forged["spec"]["params"][0]["value"] = json!("r.example/app@sha256:0bad");
    let forged: DynamicObject = serde_json::from_value(forged)?;
    wait::until("the API server calls the gate", PHASE_TIMEOUT, || async {
        gate_probes
            .create(&dry_run, &forged)
            .await
            .is_err()
            .then_some(())
    })
    .await
    .context("the gate is never called")?;

    let (mut best_gate, mut best_noop) = (0.0_f64, 0.0_f64);
    for round in 0..rounds {
        let noop_rate = create_taskruns(&kube, &baseline, round, taskruns, concurrency).await?;
        let gate_rate = create_taskruns(&kube, &gated, round, taskruns, concurrency).await?;
        eprintln!(
            "gate: round {round}: {gate_rate:.0} creates/s through the gate, {noop_rate:.0} through the no-op webhook"
        );
        best_gate = best_gate.max(gate_rate);
        best_noop = best_noop.max(noop_rate);
    }
    let ratio = best_gate / best_noop.max(f64::EPSILON);

    stop.cancel();
    let _ = gate.await;
    let _ = noop.await;

    let mut report = CaseReport {
        case: CASE.name.to_owned(),
        ratio,
        target: TARGET,
        metrics: Vec::new(),
        notes: vec![
            format!(
                "latency: {requests} AdmissionReviews of a downstream TaskRun (one upstream result checked, admitted) at {rate}/s straight to the gate's HTTPS webhook; target p99 < {P99_TARGET_MS} ms ({})",
                if p99 < P99_TARGET_MS {
                    "met"
                } else {
                    "NOT met"
                }
            ),
            format!(
                "round trips: {taskruns} TaskRun creates, {concurrency} in flight, through the real kube-apiserver, per namespace, best of {rounds}; one namespace's webhook is the gate, the other's a no-op always-allow HTTPS webhook served by the bench"
            ),
            "ratio = creates/s with the gate / creates/s with the no-op webhook (higher is better)"
                .to_owned(),
            "etcd, kube-apiserver, nats-server, the gate and the bench on one machine".to_owned(),
        ],
    };
    report.metric("admission latency p50", p50, "ms");
    report.metric("admission latency p99", p99, "ms");
    report.metric("admission reviews sent", achieved_rate, "reviews/s");
    report.metric("TaskRun creates through the gate", best_gate, "creates/s");
    report.metric(
        "TaskRun creates through the no-op webhook",
        best_noop,
        "creates/s",
    );
    Ok(report)
}
