//! The gate against a real kube-apiserver and nats-server: the webhook is registered with a
//! ValidatingWebhookConfiguration pointing at the gate's loopback HTTPS address (`caBundle` from
//! a CA this test makes, `failurePolicy: Fail`, `timeoutSeconds: 3`), and TaskRuns are created the
//! way Tekton's controller creates them: owned by a PipelineRun whose recorded Pipeline spec passes
//! an upstream task's result into a param.
//!
//! - the signed value of a verified upstream is admitted;
//! - a rejected upstream, a value that differs from the signed one, and a verdict that never
//!   arrives are each denied with their own message;
//! - in a namespace labelled `warn`, a forged value is admitted with an admission warning;
//! - with the gate down, the API server denies (fail closed);
//! - the verdict API answers what the webhook knows;
//! - every checked decision is an event on the bus (`{p}.gate.{allowed|denied|warned}.…`), stored
//!   in the attestations stream;
//! - Pods: in a namespace labelled `countersign.dev/images: deny-rejected`, an image whose digest a
//!   rejected TaskRun produced is denied; with `require-verified`, also an image no verified
//!   TaskRun produced and an image not pinned by digest; without the label, Pods are not checked.

mod gate_support;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use countersign_events::{
    Bus, BusConfig, EventMetrics, EventType, KvConfig, ParsedSubject, StreamKind,
};
use countersign_gate::decide::signed_digest;
use countersign_gate::substitution::ParamValue;
use countersign_identity::tekton::ReasonCode;
use countersign_runtime::http_client::{HttpClientOptions, http_client};
use countersign_test_support::kube::{KubeApiserver, taskrun_resource};
use countersign_test_support::nats::NatsServer;
use countersign_test_support::{fixtures_dir, unique_name, wait};
use countersign_verdict::store::AttestationStore;
use futures::StreamExt as _;
use gate_support::{RunningGate, WebhookTls, attestation_event};
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);
const DIGEST: &str = "sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";
const FORGED: &str = "sha256:0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad";
const MODE_LABEL: &str = "countersign.dev/gate";
const IMAGES_LABEL: &str = "countersign.dev/images";

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

/// One scenario's world: a namespace, a PipelineRun whose `deploy` task reads `build`'s
/// `IMAGE_DIGEST`, and the upstream TaskRun with that result in its status.
struct Pipeline {
    namespace: String,
    pipeline_run: String,
    pipeline_run_uid: String,
    upstream: String,
    upstream_uid: String,
}

async fn create_namespace(kube: &KubeApiserver, test_label: &str, mode: &str) -> String {
    create_namespace_with(kube, test_label, mode, None).await
}

/// A namespace in gate mode `mode`, with the Pod policy `images` (label `countersign.dev/images`)
/// when given.
async fn create_namespace_with(
    kube: &KubeApiserver,
    test_label: &str,
    mode: &str,
    images: Option<&str>,
) -> String {
    let name = unique_name("gate");
    let mut labels = json!({MODE_LABEL: mode, "countersign-test": test_label});
    if let Some(policy) = images {
        labels[IMAGES_LABEL] = json!(policy);
    }
    let api: Api<DynamicObject> = Api::all_with(
        kube.client(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("", "v1", "Namespace"),
            "namespaces",
        ),
    );
    let namespace: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels}
    }))
    .unwrap();
    api.create(&PostParams::default(), &namespace)
        .await
        .expect("creating a namespace");
    name
}

async fn create_pipeline(kube: &KubeApiserver, namespace: &str, upstream_digest: &str) -> Pipeline {
    let client = kube.client();
    let pipeline_runs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &pipelinerun_resource());
    let taskruns: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &taskrun_resource());
    let pipeline_run = unique_name("release");
    let spec = json!({
        "params": [{"name": "registry", "type": "string"}],
        "tasks": [
            {"name": "build", "taskRef": {"name": "build"}},
            {"name": "deploy", "taskRef": {"name": "deploy"}, "params": [
                {"name": "image", "value": "$(params.registry)/app@$(tasks.build.results.IMAGE_DIGEST)"}
            ]}
        ]
    });
    let created = pipeline_runs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
                "metadata": {"name": pipeline_run},
                "spec": {"pipelineRef": {"name": "release"}, "params": [{"name": "registry", "value": "r.example"}]}
            }))
            .unwrap(),
        )
        .await
        .expect("creating the PipelineRun");
    let pipeline_run_uid = created.metadata.uid.clone().unwrap();
    let upstream = format!("{pipeline_run}-build");
    let created_upstream = taskruns
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                "metadata": {"name": upstream, "labels": {"tekton.dev/pipelineTask": "build"}},
                "spec": {"taskRef": {"name": "build"}}
            }))
            .unwrap(),
        )
        .await
        .expect("creating the upstream TaskRun");
    let upstream_uid = created_upstream.metadata.uid.clone().unwrap();
    taskruns
        .patch_status(
            &upstream,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "podName": "",
                "results": [
                    {"name": "IMAGE_URL", "type": "string", "value": "r.example/app"},
                    {"name": "IMAGE_DIGEST", "type": "string", "value": upstream_digest}
                ]
            }})),
        )
        .await
        .expect("writing the upstream's results");
    pipeline_runs
        .patch_status(
            &pipeline_run,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "pipelineSpec": spec,
                "childReferences": [{"apiVersion": "tekton.dev/v1", "kind": "TaskRun", "name": upstream, "pipelineTaskName": "build"}]
            }})),
        )
        .await
        .expect("recording the Pipeline spec");
    Pipeline {
        namespace: namespace.to_owned(),
        pipeline_run,
        pipeline_run_uid,
        upstream,
        upstream_uid,
    }
}

/// The downstream TaskRun Tekton would create, passing `image`.
fn downstream(pipeline: &Pipeline, image: &str) -> Value {
    json!({
        "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
        "metadata": {
            "name": unique_name("deploy"),
            "labels": {"tekton.dev/pipelineTask": "deploy", "tekton.dev/pipelineRun": pipeline.pipeline_run},
            "ownerReferences": [{
                "apiVersion": "tekton.dev/v1", "kind": "PipelineRun", "name": pipeline.pipeline_run,
                "uid": pipeline.pipeline_run_uid, "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {"taskRef": {"name": "deploy"}, "params": [{"name": "image", "value": image}]}
    })
}

/// What the API server answered a create.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    warnings: Vec<String>,
}

async fn create_taskrun(
    kube: &KubeApiserver,
    namespace: &str,
    taskrun: &Value,
    dry_run: bool,
) -> Answer {
    create(
        kube,
        &format!("/apis/tekton.dev/v1/namespaces/{namespace}/taskruns"),
        taskrun,
        dry_run,
    )
    .await
}

/// POSTs `object` to the collection at `path`, as a client would.
async fn create(kube: &KubeApiserver, path: &str, object: &Value, dry_run: bool) -> Answer {
    let uri = format!("{path}{}", if dry_run { "?dryRun=All" } else { "" });
    let request = http::Request::post(uri)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(object).unwrap())
        .unwrap();
    let response = kube
        .client()
        .send(request.map(kube::client::Body::from))
        .await
        .expect("a response");
    let status = response.status().as_u16();
    let warnings = response
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|value| value.to_str().ok().map(str::to_owned))
        .collect();
    let body = response
        .into_body()
        .collect_bytes()
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    Answer {
        status,
        body,
        warnings,
    }
}

/// What a webhook configuration sends to the gate: TaskRuns or Pods.
#[derive(Debug, Clone, Copy)]
enum Reviewed {
    TaskRuns,
    Pods,
}

async fn register_webhook(
    kube: &KubeApiserver,
    test_label: &str,
    port: u16,
    ca_pem: &str,
    reviewed: Reviewed,
) -> String {
    let (webhook_name, path, rule) = match reviewed {
        Reviewed::TaskRuns => (
            "taskruns.gate.countersign.dev",
            "/validate/taskruns",
            json!({"apiGroups": ["tekton.dev"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["taskruns"]}),
        ),
        Reviewed::Pods => (
            "pods.gate.countersign.dev",
            "/validate/pods",
            json!({"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}),
        ),
    };
    let name = unique_name("countersign-gate");
    let api: Api<DynamicObject> = Api::all_with(kube.client(), &webhook_resource());
    let configuration: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": webhook_name,
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}{path}"),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem)
            },
            "rules": [rule],
            "namespaceSelector": {"matchLabels": {"countersign-test": test_label}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 3
        }]
    }))
    .unwrap();
    api.create(&PostParams::default(), &configuration)
        .await
        .expect("registering the webhook");
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_admits_only_signed_values_and_fails_closed() {
    let kube = KubeApiserver::shared().await;
    kube.install_crds(&[fixtures_dir().join("crds/tekton/300-pipelinerun.yaml")])
        .await
        .expect("installing the PipelineRun CRD");
    let nats = NatsServer::start().await.expect("starting nats-server");
    let prefix = unique_name("gate").replace('-', "_");
    let bus = Bus::new(
        nats.client().await,
        BusConfig {
            prefix: prefix.clone(),
            ..BusConfig::default()
        },
        EventMetrics::new(),
    )
    .unwrap();
    let store = AttestationStore::ensure(&bus, &KvConfig::default(), &KvConfig::default())
        .await
        .expect("creating the attestation buckets");
    bus.ensure_streams().await.expect("creating the streams");
    let mut decisions = nats
        .client()
        .await
        .subscribe(format!("{prefix}.gate.>"))
        .await
        .expect("subscribing to the gate's decisions");

    let tls = WebhookTls::new();
    let mut gate = RunningGate::start(
        &nats.url(),
        &prefix,
        kube.kubeconfig_path(),
        &tls,
        "[policy]\nverdict_wait = \"1s\"\n",
    )
    .await;
    let test_label = unique_name("t");
    let enforced = create_namespace(kube, &test_label, "enforce").await;
    let warned = create_namespace(kube, &test_label, "warn").await;
    let webhook = register_webhook(
        kube,
        &test_label,
        gate.webhook_port,
        &tls.ca_pem,
        Reviewed::TaskRuns,
    )
    .await;

    // The upstreams: verified with the value passed; rejected; verified but the value passed differs;
    // never attested.
    let verified = create_pipeline(kube, &enforced, DIGEST).await;
    let rejected = create_pipeline(kube, &enforced, DIGEST).await;
    let silent = create_pipeline(kube, &enforced, DIGEST).await;
    let warn = create_pipeline(kube, &warned, DIGEST).await;
    let signed = BTreeMap::from([(
        "IMAGE_DIGEST".to_owned(),
        signed_digest(&ParamValue::String(DIGEST.into())),
    )]);
    for (pipeline, verdict) in [
        (&verified, None),
        (&rejected, Some(ReasonCode::SignatureInvalid)),
        (&warn, None),
    ] {
        store
            .create(
                &pipeline.upstream_uid,
                &attestation_event(
                    &pipeline.namespace,
                    &pipeline.upstream,
                    &pipeline.upstream_uid,
                    &signed,
                    verdict,
                ),
            )
            .await
            .expect("storing an attestation");
    }

    // The webhook takes effect when the API server's informer sees its configuration: until the
    // rejected upstream's downstream is denied.
    let probe = downstream(&rejected, &format!("r.example/app@{DIGEST}"));
    let denied = wait::until("the webhook is called", TIMEOUT, || async {
        let answer = create_taskrun(kube, &enforced, &probe, true).await;
        (answer.status == 403).then_some(answer)
    })
    .await
    .expect("the API server calls the gate");
    assert!(denied.body.contains("upstream_rejected"), "{}", denied.body);
    assert!(denied.body.contains(&rejected.upstream), "{}", denied.body);
    assert!(denied.body.contains("signature_invalid"), "{}", denied.body);

    // The signed value is admitted.
    let admitted = create_taskrun(
        kube,
        &enforced,
        &downstream(&verified, &format!("r.example/app@{DIGEST}")),
        false,
    )
    .await;
    assert_eq!(admitted.status, 201, "{}", admitted.body);
    assert!(admitted.warnings.is_empty(), "{:?}", admitted.warnings);

    // Another value is denied, naming the param, the upstream and the result.
    let differs = create_taskrun(
        kube,
        &enforced,
        &downstream(&verified, &format!("r.example/app@{FORGED}")),
        false,
    )
    .await;
    assert_eq!(differs.status, 403, "{}", differs.body);
    assert!(differs.body.contains("value_differs"), "{}", differs.body);
    assert!(
        differs.body.contains(&verified.upstream),
        "{}",
        differs.body
    );
    assert!(differs.body.contains("IMAGE_DIGEST"), "{}", differs.body);

    // A verdict that never arrives: denied after the wait.
    let missing = create_taskrun(
        kube,
        &enforced,
        &downstream(&silent, &format!("r.example/app@{DIGEST}")),
        false,
    )
    .await;
    assert_eq!(missing.status, 403, "{}", missing.body);
    assert!(missing.body.contains("verdict_missing"), "{}", missing.body);
    assert!(missing.body.contains(&silent.upstream), "{}", missing.body);

    // warn: admitted, with the denial as a warning.
    let warned_answer = create_taskrun(
        kube,
        &warned,
        &downstream(&warn, &format!("r.example/app@{FORGED}")),
        false,
    )
    .await;
    assert_eq!(warned_answer.status, 201, "{}", warned_answer.body);
    assert!(
        warned_answer
            .warnings
            .iter()
            .any(|warning| warning.contains("value_differs")),
        "{:?}",
        warned_answer.warnings
    );

    // Each checked decision is on the bus: its type in the subject, its denials in the data.
    let mut seen: Vec<(EventType, String, Value)> = Vec::new();
    let wanted = |seen: &[(EventType, String, Value)]| {
        [
            (
                EventType::GateDenied,
                enforced.as_str(),
                "upstream_rejected",
            ),
            (EventType::GateDenied, enforced.as_str(), "value_differs"),
            (EventType::GateDenied, enforced.as_str(), "verdict_missing"),
            (EventType::GateWarned, warned.as_str(), "value_differs"),
        ]
        .iter()
        .all(|(event_type, namespace, code)| {
            seen.iter().any(|(seen_type, seen_namespace, data)| {
                seen_type == event_type
                    && seen_namespace == namespace
                    && data["denials"][0]["code"] == *code
            })
        }) && seen.iter().any(|(event_type, namespace, data)| {
            *event_type == EventType::GateAllowed
                && namespace == &enforced
                && data["denials"].as_array().is_some_and(Vec::is_empty)
        })
    };
    let mut last_subject = String::new();
    tokio::time::timeout(TIMEOUT, async {
        while !wanted(&seen) {
            let message = decisions.next().await.expect("the subscription stays open");
            let Ok(ParsedSubject::TaskRun {
                event_type,
                namespace,
                ..
            }) = bus.subjects().parse(&message.subject)
            else {
                panic!("not a gate decision subject: {}", message.subject);
            };
            let data: Value = serde_json::from_slice(&message.payload).expect("JSON data");
            last_subject = message.subject.to_string();
            seen.push((event_type, namespace, data));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the decision events arrive: {seen:?}"));
    // A denial names its upstream TaskRun as `{namespace}/{name}`, as the event's contract says.
    let upstreams: Vec<(&str, &str)> = seen
        .iter()
        .flat_map(|(_, namespace, data)| {
            data["denials"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|denial| denial["upstreamTaskrun"].as_str())
                .map(move |upstream| (namespace.as_str(), upstream))
        })
        .collect();
    assert!(!upstreams.is_empty(), "{seen:?}");
    for (namespace, upstream) in upstreams {
        assert!(
            upstream.starts_with(&format!("{namespace}/")),
            "{upstream} in namespace {namespace}"
        );
    }
    let stored = bus
        .jetstream()
        .get_stream(bus.subjects().stream_name(StreamKind::Attestations))
        .await
        .expect("the attestations stream")
        .get_last_raw_message_by_subject(&last_subject)
        .await
        .expect("the decision is stored in the attestations stream");
    assert_eq!(stored.subject.as_str(), last_subject);

    // The verdict API answers from the same memory.
    let api = http_client(HttpClientOptions::new().timeout(Duration::from_secs(5))).unwrap();
    let verdict: Value = api
        .get(format!(
            "http://127.0.0.1:{}/v1/verdicts/{}/{}",
            gate.api_port, rejected.namespace, rejected.upstream
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verdict["verdict"], "rejected");
    assert_eq!(verdict["reason"], "signature_invalid");
    let producers: Value = api
        .get(format!(
            "http://127.0.0.1:{}/v1/digests/{DIGEST}",
            gate.api_port
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        producers["verified"], false,
        "a rejected TaskRun also names it: {producers}"
    );
    let unknown = api
        .get(format!(
            "http://127.0.0.1:{}/v1/verdicts/{}/nope",
            gate.api_port, enforced
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // The gate down: the API server cannot call it and denies (failurePolicy: Fail).
    gate.stop().await;
    let down = create_taskrun(
        kube,
        &enforced,
        &downstream(&verified, &format!("r.example/app@{DIGEST}")),
        false,
    )
    .await;
    assert_eq!(down.status, 500, "{}", down.body);
    assert!(
        down.body.contains("failed calling webhook"),
        "{}",
        down.body
    );

    let api: Api<DynamicObject> = Api::all_with(kube.client(), &webhook_resource());
    let _ = api.delete(&webhook, &Default::default()).await;
}

/// A Pod running `images`, as a Deployment's ReplicaSet would create it.
fn pod(images: &[&str]) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(index, image)| json!({"name": format!("c{index}"), "image": image}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": unique_name("app")},
        "spec": {"containers": containers}
    })
}

async fn create_pod(kube: &KubeApiserver, namespace: &str, images: &[&str]) -> Answer {
    create(
        kube,
        &format!("/api/v1/namespaces/{namespace}/pods"),
        &pod(images),
        true,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_keeps_images_of_rejected_or_unverified_taskruns_out_of_pods() {
    let kube = KubeApiserver::shared().await;
    kube.install_crds(&[fixtures_dir().join("crds/tekton/300-pipelinerun.yaml")])
        .await
        .expect("installing the PipelineRun CRD");
    let nats = NatsServer::start().await.expect("starting nats-server");
    let prefix = unique_name("gate").replace('-', "_");
    let bus = Bus::new(
        nats.client().await,
        BusConfig {
            prefix: prefix.clone(),
            ..BusConfig::default()
        },
        EventMetrics::new(),
    )
    .unwrap();
    let store = AttestationStore::ensure(&bus, &KvConfig::default(), &KvConfig::default())
        .await
        .expect("creating the attestation buckets");
    bus.ensure_streams().await.expect("creating the streams");
    let tls = WebhookTls::new();
    let gate = RunningGate::start(&nats.url(), &prefix, kube.kubeconfig_path(), &tls, "").await;
    let test_label = unique_name("t");
    // The unlabelled namespace first: the gate's namespace watch sees namespaces in the order they
    // were created, so once it denies in `deny_rejected` it knows `unchecked` too.
    let unchecked = create_namespace(kube, &test_label, "enforce").await;
    let deny_rejected =
        create_namespace_with(kube, &test_label, "enforce", Some("deny-rejected")).await;
    let require_verified =
        create_namespace_with(kube, &test_label, "enforce", Some("require-verified")).await;
    let webhook = register_webhook(
        kube,
        &test_label,
        gate.webhook_port,
        &tls.ca_pem,
        Reviewed::Pods,
    )
    .await;

    // Two builds, each with IMAGE_URL and IMAGE_DIGEST in its status: one verified, one rejected.
    let verified = create_pipeline(kube, &deny_rejected, DIGEST).await;
    let rejected = create_pipeline(kube, &deny_rejected, FORGED).await;
    for (pipeline, digest, verdict) in [
        (&verified, DIGEST, None),
        (&rejected, FORGED, Some(ReasonCode::SignatureInvalid)),
    ] {
        let signed = BTreeMap::from([(
            "IMAGE_DIGEST".to_owned(),
            signed_digest(&ParamValue::String(digest.into())),
        )]);
        store
            .create(
                &pipeline.upstream_uid,
                &attestation_event(
                    &pipeline.namespace,
                    &pipeline.upstream,
                    &pipeline.upstream_uid,
                    &signed,
                    verdict,
                ),
            )
            .await
            .expect("storing an attestation");
    }
    let from_rejected = format!("r.example/app@{FORGED}");
    let from_verified = format!("r.example/app@{DIGEST}");
    let unknown =
        "r.example/other@sha256:1111111111111111111111111111111111111111111111111111111111111111";

    // The webhook takes effect when the API server's informer sees its configuration, and the
    // rejected build's verdict when the gate's replica has it: until then a Pod may be admitted.
    let denied = wait::until(
        "the Pod webhook denies the rejected build's image",
        TIMEOUT,
        || async {
            let answer = create_pod(kube, &deny_rejected, &[from_rejected.as_str()]).await;
            (answer.status == 403).then_some(answer)
        },
    )
    .await
    .expect("the API server calls the gate for Pods");
    assert!(
        denied.body.contains("image_from_rejected_taskrun"),
        "{}",
        denied.body
    );
    assert!(denied.body.contains(&rejected.upstream), "{}", denied.body);

    // deny-rejected: the verified build's image runs, so does an image no TaskRun produced; a Pod
    // with the rejected image in any of its containers does not.
    for images in [vec![from_verified.as_str()], vec![unknown]] {
        let answer = create_pod(kube, &deny_rejected, &images).await;
        assert_eq!(answer.status, 201, "{images:?}: {}", answer.body);
    }
    let answer = create_pod(
        kube,
        &deny_rejected,
        &[from_verified.as_str(), from_rejected.as_str()],
    )
    .await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(
        answer.body.contains("image_from_rejected_taskrun"),
        "{}",
        answer.body
    );

    // require-verified (once the gate has seen the namespace's label): an unknown digest, an
    // image by tag and the rejected build's image are each denied with their own reason; the
    // verified build's image runs.
    wait::until(
        "the gate sees the require-verified namespace",
        TIMEOUT,
        || async {
            let answer = create_pod(kube, &require_verified, &[unknown]).await;
            (answer.status == 403).then_some(())
        },
    )
    .await
    .expect("an image no TaskRun produced is denied under require-verified");
    for (image, code) in [
        (unknown, "image_not_verified"),
        ("r.example/app:latest", "image_not_pinned"),
        (from_rejected.as_str(), "image_from_rejected_taskrun"),
    ] {
        let answer = create_pod(kube, &require_verified, &[image]).await;
        assert_eq!(answer.status, 403, "{image}: {}", answer.body);
        assert!(answer.body.contains(code), "{image}: {}", answer.body);
    }
    // The gate's replica learns each verdict and each TaskRun's results from its own watches.
    wait::until(
        "the verified build's image is admitted",
        TIMEOUT,
        || async {
            let answer = create_pod(kube, &require_verified, &[from_verified.as_str()]).await;
            (answer.status == 201).then_some(())
        },
    )
    .await
    .expect("the verified build's image runs under require-verified");

    // No image policy label: Pods are not checked.
    let answer = create_pod(kube, &unchecked, &[from_rejected.as_str()]).await;
    assert_eq!(answer.status, 201, "{}", answer.body);

    let api: Api<DynamicObject> = Api::all_with(kube.client(), &webhook_resource());
    let _ = api.delete(&webhook, &Default::default()).await;
}
