//! The gate beside real Tekton (`tests/gate_tekton.rs`): the running [`TektonDemo`] plus the
//! `countersign-gate` process, registered with the node's kube-apiserver as a
//! ValidatingWebhookConfiguration for TaskRun CREATE (its `caBundle` from a CA the test makes,
//! `failurePolicy: Fail`, `timeoutSeconds: 3`), with namespace [`NAMESPACE`] labelled `enforce`.
//!
//! Two PipelineRuns are then run by Tekton's own controller, each passing task `build`'s result
//! `digest` to task `publish` as a param:
//!
//! - [`TektonDemo::run_gated_honest`]: the gate admits `publish`, and the PipelineRun succeeds;
//! - [`TektonDemo::run_gated_forged`]: `publish` also runs after a task `hold` whose step waits
//!   for `<hold>/open`. Once `build` has finished and its verdict is published, an actor allowed
//!   only `taskruns/status` changes `build`'s `digest` in its status, and only then is `open`
//!   created: `publish` cannot be created before the change, whatever the timing. The gate
//!   denies it (Tekton records a `TaskRunsCreationFailed` event with the denial, and retries,
//!   denied again each time), and publishes `{p}.gate.denied`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use countersign_events::AnyEvent;
use countersign_events::data::GateDenial;
use countersign_test_support::ports::free_port;
use countersign_test_support::process::{PeerFailed, PeerProcess};
use countersign_test_support::wait;
use countersign_test_support::webhook::WebhookTls;
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use super::super::configs::{CLUSTER_NAME, ServiceKind};
use super::super::report::Origin;
use super::super::services::{READY_TIMEOUT, inherited_overrides, scrubbed};
use super::super::{PREFIX, loopback};
use super::{
    NAMESPACE, RUN_TIMEOUT, TektonDemo, TektonPlayError, pipelinerun_document,
    pipelinerun_resource, result_value, succeeded,
};
use crate::http;

/// The namespace label that selects the gate's mode (the gate's default `policy.mode_label`).
pub const MODE_LABEL: &str = "countersign.dev/gate";
/// The honest PipelineRun.
pub const GATED_HONEST: &str = "gated-honest";
/// The PipelineRun whose `build` result is changed before `publish` is created.
pub const GATED_FORGED: &str = "gated-forged";
/// The value written over `build`'s `digest`.
pub const FORGED_DIGEST: &str = "sha256:0bad";
/// The value `build` writes (and signs).
pub const BUILT_DIGEST: &str = "sha256:beef";
/// The upstream task, the result `publish` reads, and the downstream task.
pub const UPSTREAM_TASK: &str = "build";
pub const UPSTREAM_RESULT: &str = "digest";
pub const DOWNSTREAM_TASK: &str = "publish";
/// What Tekton's controller records when a TaskRun cannot be created.
pub const CREATION_FAILED_REASON: &str = "TaskRunsCreationFailed";

/// How long the gate may take to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Why the gate did not start beside the demo.
#[derive(Debug, thiserror::Error)]
pub enum GateStartError {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the gate did not start")]
    Process(#[source] PeerFailed),
    #[error("{action}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
}

/// The gate as a process, with its TLS and its webhook registration.
#[derive(Debug)]
pub struct GateProcess {
    process: PeerProcess,
    admin: SocketAddr,
    webhook: SocketAddr,
    tls: WebhookTls,
}

impl GateProcess {
    /// The last few KiB of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Stops it (SIGTERM, its drain, SIGKILL after a grace period).
    pub fn stop(&mut self) {
        self.process.stop(STOP_GRACE);
    }

    /// The webhook's HTTPS address.
    pub fn webhook(&self) -> SocketAddr {
        self.webhook
    }
}

/// How a gated PipelineRun ended.
#[derive(Debug, Clone, PartialEq)]
pub struct GatedOutcome {
    /// The PipelineRun's `Succeeded` reason when it finished (`None` while it is still running,
    /// as a denied one is: Tekton retries the creation).
    pub pipeline_reason: Option<String>,
    /// Whether the `publish` TaskRun exists.
    pub downstream_created: bool,
    /// `publish`'s `published` result, when it ran.
    pub published: Option<String>,
    /// The gate's decision events about `publish`: allowed (`None`) or denied (its denials).
    pub decisions: Vec<Option<Vec<GateDenial>>>,
    /// The message of Tekton's `TaskRunsCreationFailed` event, when the creation was denied.
    pub creation_failed: Option<String>,
}

/// The gate's config file.
pub fn gate_config_text(
    nats_url: &str,
    kubeconfig: &Path,
    tls: &WebhookTls,
    admin: SocketAddr,
    webhook: SocketAddr,
    api: SocketAddr,
) -> String {
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    format!(
        "# countersign-gate beside real Tekton: only what differs from the defaults.\n\n\
         [admin]\nlisten = {admin}\n\n[shutdown]\ngrace_period = \"5s\"\n\n\
         [nats]\nurl = {nats}\n\n[bus]\nprefix = {prefix}\n\n[cluster]\nname = {cluster}\n\n\
         [webhook]\nlisten = {webhook}\ncert_file = {cert}\nkey_file = {key}\n\n\
         [api]\nlisten = {api}\n\n[kubernetes]\nkubeconfig = {kubeconfig}\n",
        admin = quote(&admin.to_string()),
        nats = quote(nats_url),
        prefix = quote(PREFIX),
        cluster = quote(CLUSTER_NAME),
        webhook = quote(&webhook.to_string()),
        cert = quote(&tls.cert_file.display().to_string()),
        key = quote(&tls.key_file.display().to_string()),
        api = quote(&api.to_string()),
        kubeconfig = quote(&kubeconfig.display().to_string()),
    )
}

/// The ValidatingWebhookConfiguration for TaskRun CREATE in namespaces labelled `enforce` or
/// `warn`, calling the gate at `webhook` with `ca_pem` as its `caBundle`.
pub fn webhook_configuration(name: &str, webhook: SocketAddr, ca_pem: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": { "name": name },
        "webhooks": [{
            "name": "taskruns.gate.countersign.dev",
            "clientConfig": {
                "url": format!("https://{webhook}/validate/taskruns"),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
            },
            "rules": [{
                "apiGroups": ["tekton.dev"], "apiVersions": ["v1"], "operations": ["CREATE"],
                "resources": ["taskruns"], "scope": "Namespaced",
            }],
            "namespaceSelector": { "matchExpressions": [
                { "key": MODE_LABEL, "operator": "In", "values": ["enforce", "warn"] },
            ]},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 3,
            "matchPolicy": "Equivalent",
        }],
    })
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

/// A two-task PipelineRun as [`pipelinerun_document`]; with `hold`, `publish` also runs after a
/// third task `hold` whose step waits for `<hold>/open` (a hostPath directory on the node).
pub fn gated_pipelinerun_document(name: &str, hold: Option<&Path>) -> Value {
    let mut document = pipelinerun_document(name);
    let Some(hold) = hold else {
        return document;
    };
    if let Some(tasks) = document
        .pointer_mut("/spec/pipelineSpec/tasks")
        .and_then(Value::as_array_mut)
    {
        for task in tasks.iter_mut() {
            if task["name"] == DOWNSTREAM_TASK {
                task["runAfter"] = json!(["hold"]);
            }
        }
        tasks.push(json!({
            "name": "hold",
            "taskSpec": {
                "volumes": [{
                    "name": "hold",
                    "hostPath": { "path": hold.display().to_string(), "type": "Directory" },
                }],
                "steps": [{
                    "name": "hold",
                    "image": countersign_test_support::node::BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "volumeMounts": [{ "name": "hold", "mountPath": "/hold" }],
                    "script": "#!/bin/sh\nwhile [ ! -e /hold/open ]; do sleep 1; done\n",
                }],
            },
        }));
    }
    document
}

/// The gate's decision events about TaskRun `namespace/name`: allowed (`None`) or denied.
fn decisions_about(
    events: &[std::sync::Arc<countersign_events::Event<AnyEvent>>],
    namespace: &str,
    name: &str,
) -> Vec<Option<Vec<GateDenial>>> {
    events
        .iter()
        .filter_map(|event| match &event.data {
            AnyEvent::GateAllowed(allowed)
                if allowed.namespace == namespace && allowed.name == name =>
            {
                Some(None)
            }
            AnyEvent::GateDenied(denied)
                if denied.namespace == namespace && denied.name == name =>
            {
                Some(Some(denied.denials.clone()))
            }
            _ => None,
        })
        .collect()
}

impl TektonDemo {
    /// Starts `countersign-gate` (the binary at `program`) beside the services, registers it as
    /// a validating webhook for TaskRun CREATE, and labels [`NAMESPACE`] `enforce`.
    pub async fn start_gate(&self, program: &Path) -> Result<GateProcess, GateStartError> {
        let tls = WebhookTls::new();
        let (admin, webhook, api) = (
            loopback(free_port()),
            loopback(free_port()),
            loopback(free_port()),
        );
        let dir = self.dir.path();
        let config = dir.join("config").join("countersign-gate.toml");
        let text = gate_config_text(
            &self.nats.url(),
            self.node.kube().kubeconfig_path(),
            &tls,
            admin,
            webhook,
            api,
        );
        std::fs::write(&config, text).map_err(|source| GateStartError::Write {
            path: config.clone(),
            source,
        })?;
        let log = dir.join("logs").join("countersign-gate.log");
        let args = vec!["--config".to_owned(), config.display().to_string()];
        let (program, args) = scrubbed(program, &args, &inherited_overrides());
        let process = PeerProcess::spawn("countersign-gate", &program, &args, &[], &log)
            .await
            .map_err(|error| {
                GateStartError::Process(PeerFailed {
                    name: "countersign-gate".to_owned(),
                    message: error.to_string(),
                    log_tail: countersign_test_support::process::log_tail(&log),
                })
            })?;
        let gate = GateProcess {
            process,
            admin,
            webhook,
            tls,
        };
        // Ready: its Kubernetes caches synced, NATS connected, the attestations replicated.
        let address = gate.admin.to_string();
        let ready = wait::until(
            "countersign-gate to answer /readyz with 200",
            READY_TIMEOUT,
            || {
                let address = address.clone();
                let running = gate.process.is_running();
                async move {
                    if !running {
                        return Some(false);
                    }
                    let answer = http::get(&address, "/readyz").await?;
                    (answer.status == 200).then_some(true)
                }
            },
        )
        .await
        .map_err(|error| GateStartError::Process(PeerFailed::from_wait(&gate.process, error)))?;
        if !ready {
            return Err(GateStartError::Process(PeerFailed::new(
                &gate.process,
                format!(
                    "countersign-gate exited during start-up (config {})",
                    config.display()
                ),
            )));
        }
        self.reporter.line(
            Origin::Demo,
            format!(
                "countersign-gate ready (webhook https://{webhook}, admin http://{admin}, config {})",
                config.display()
            ),
        );

        let configuration = webhook_configuration(
            &countersign_test_support::unique_name("countersign-gate"),
            webhook,
            &gate.tls.ca_pem,
        );
        let configuration: DynamicObject =
            serde_json::from_value(configuration).map_err(|error| GateStartError::Kube {
                action: "building the ValidatingWebhookConfiguration".to_owned(),
                source: kube::Error::SerdeError(error),
            })?;
        Api::<DynamicObject>::all_with(self.node.client(), &webhook_resource())
            .create(&PostParams::default(), &configuration)
            .await
            .map_err(|source| GateStartError::Kube {
                action: "registering the gate's ValidatingWebhookConfiguration".to_owned(),
                source,
            })?;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.node.client());
        namespaces
            .patch(
                NAMESPACE,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": { MODE_LABEL: "enforce" } } })),
            )
            .await
            .map_err(|source| GateStartError::Kube {
                action: format!("labelling namespace {NAMESPACE} {MODE_LABEL}=enforce"),
                source,
            })?;
        self.reporter.line(
            Origin::Kube,
            format!(
                "ValidatingWebhookConfiguration registered (TaskRun CREATE, failurePolicy Fail, \
                 timeoutSeconds 3, caBundle from the test's CA); namespace {NAMESPACE} labelled \
                 {MODE_LABEL}=enforce"
            ),
        );
        Ok(gate)
    }

    fn pipelineruns(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.node.client(), NAMESPACE, &pipelinerun_resource())
    }

    async fn create_pipelinerun(&self, document: Value) -> Result<String, TektonPlayError> {
        let name = document["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let object: DynamicObject =
            serde_json::from_value(document).map_err(|error| TektonPlayError::Kube {
                action: format!("building PipelineRun {name}"),
                source: kube::Error::SerdeError(error),
            })?;
        self.pipelineruns()
            .create(&PostParams::default(), &object)
            .await
            .map_err(|source| TektonPlayError::Kube {
                action: format!("creating PipelineRun {name}"),
                source,
            })?;
        self.reporter.line(
            Origin::Kube,
            format!("created PipelineRun {NAMESPACE}/{name}; Tekton makes a TaskRun per task"),
        );
        Ok(name)
    }

    /// The honest PipelineRun: waits until it finishes, and reports what the gate decided.
    pub async fn run_gated_honest(&self) -> Result<GatedOutcome, TektonPlayError> {
        let name = self
            .create_pipelinerun(gated_pipelinerun_document(GATED_HONEST, None))
            .await?;
        let pipelineruns = self.pipelineruns();
        let run = wait::until(
            &format!("PipelineRun {name} to finish"),
            RUN_TIMEOUT,
            || {
                let pipelineruns = pipelineruns.clone();
                let name = name.clone();
                async move {
                    let run = pipelineruns.get(&name).await.ok()?;
                    let (status, _) = succeeded(&run.data)?;
                    (status != "Unknown").then_some(run)
                }
            },
        )
        .await
        .map_err(|wait| self.wait_failed(wait, &[ServiceKind::Attestor]))?;
        let reason = succeeded(&run.data).map(|(_, reason)| reason);
        self.reporter.line(
            Origin::Kube,
            format!(
                "PipelineRun {name} finished: {}",
                reason.as_deref().unwrap_or("")
            ),
        );
        let downstream = format!("{name}-{DOWNSTREAM_TASK}");
        let published = self
            .taskruns()
            .get_opt(&downstream)
            .await
            .map_err(|source| TektonPlayError::Kube {
                action: format!("reading TaskRun {downstream}"),
                source,
            })?;
        // The allowed decision is queued off the answer path: wait for it on the bus.
        let decisions = self
            .observer
            .wait_for(
                &format!("the gate's decision on TaskRun {NAMESPACE}/{downstream}"),
                RUN_TIMEOUT,
                |observed| {
                    let decisions = decisions_about(&observed.events, NAMESPACE, &downstream);
                    decisions.iter().any(Option::is_none).then_some(decisions)
                },
            )
            .await
            .map_err(|wait| self.wait_failed(wait, &[]))?;
        Ok(GatedOutcome {
            pipeline_reason: reason,
            downstream_created: published.is_some(),
            published: published.and_then(|taskrun| result_value(&taskrun.data, "published")),
            decisions,
            creation_failed: None,
        })
    }

    /// The forged PipelineRun: `build` finishes and is attested, its `digest` is changed in its
    /// status, `hold` is released, and the gate's denial of `publish` is awaited on the bus and
    /// in Tekton's events.
    pub async fn run_gated_forged(&self) -> Result<GatedOutcome, TektonPlayError> {
        let hold = self.dir.path().join("hold");
        std::fs::create_dir_all(&hold).map_err(|source| TektonPlayError::Files {
            action: format!("creating {}", hold.display()),
            source,
        })?;
        let name = self
            .create_pipelinerun(gated_pipelinerun_document(GATED_FORGED, Some(&hold)))
            .await?;
        let upstream = format!("{name}-{UPSTREAM_TASK}");
        let downstream = format!("{name}-{DOWNSTREAM_TASK}");
        self.reporter.line(
            Origin::Step,
            format!(
                "task hold waits for {}/open; task publish runs after it and after build",
                hold.display()
            ),
        );
        let finished = self.wait_finished(&upstream).await?;
        let uid = self
            .taskruns()
            .get(&upstream)
            .await
            .map_err(|source| TektonPlayError::Kube {
                action: format!("reading TaskRun {upstream}"),
                source,
            })?
            .metadata
            .uid
            .unwrap_or_default();
        let attested = self.await_outcome(&upstream, &uid, &finished).await?;
        self.reporter.line(
            Origin::Demo,
            format!(
                "TaskRun {upstream} is {}; changing its result before publish can be created",
                attested.attested.label()
            ),
        );
        self.tamper_result(&upstream, UPSTREAM_RESULT, FORGED_DIGEST)
            .await?;
        let open = hold.join("open");
        std::fs::write(&open, b"").map_err(|source| TektonPlayError::Files {
            action: format!("creating {}", open.display()),
            source,
        })?;
        self.reporter.line(
            Origin::Demo,
            format!(
                "created {}: task hold ends, and Tekton creates publish",
                open.display()
            ),
        );

        let decisions = self
            .observer
            .wait_for(
                &format!("the gate to deny TaskRun {NAMESPACE}/{downstream}"),
                RUN_TIMEOUT,
                |observed| {
                    let decisions = decisions_about(&observed.events, NAMESPACE, &downstream);
                    decisions.iter().any(Option::is_some).then_some(decisions)
                },
            )
            .await
            .map_err(|wait| self.wait_failed(wait, &[]))?;
        let events: Api<KubeEvent> = Api::namespaced(self.node.client(), NAMESPACE);
        let selector = format!("involvedObject.name={name}");
        let creation_failed = wait::until(
            &format!("Tekton's {CREATION_FAILED_REASON} event on PipelineRun {name}"),
            RUN_TIMEOUT,
            || {
                let events = events.clone();
                let selector = selector.clone();
                async move {
                    let list = events
                        .list(&ListParams::default().fields(&selector))
                        .await
                        .ok()?;
                    list.items
                        .into_iter()
                        .filter(|event| event.reason.as_deref() == Some(CREATION_FAILED_REASON))
                        .find_map(|event| event.message)
                }
            },
        )
        .await
        .map_err(|wait| self.wait_failed(wait, &[]))?;
        self.reporter.line(
            Origin::Kube,
            format!("Tekton: {CREATION_FAILED_REASON}: {creation_failed}"),
        );
        let run = self
            .pipelineruns()
            .get(&name)
            .await
            .map_err(|source| TektonPlayError::Kube {
                action: format!("reading PipelineRun {name}"),
                source,
            })?;
        let created = self
            .taskruns()
            .get_opt(&downstream)
            .await
            .map_err(|source| TektonPlayError::Kube {
                action: format!("reading TaskRun {downstream}"),
                source,
            })?;
        Ok(GatedOutcome {
            pipeline_reason: succeeded(&run.data)
                .filter(|(status, _)| status != "Unknown")
                .map(|(_, reason)| reason),
            downstream_created: created.is_some(),
            published: None,
            decisions,
            creation_failed: Some(creation_failed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_held_pipeline_runs_publish_after_hold_and_build() {
        let document = gated_pipelinerun_document("p", Some(Path::new("/tmp/hold")));
        let tasks = document["spec"]["pipelineSpec"]["tasks"]
            .as_array()
            .unwrap();
        let names: Vec<&str> = tasks
            .iter()
            .filter_map(|task| task["name"].as_str())
            .collect();
        assert_eq!(names, ["build", "publish", "hold"]);
        assert_eq!(tasks[1]["runAfter"], json!(["hold"]));
        assert_eq!(
            tasks[1]["params"][0]["value"],
            format!("$(tasks.{UPSTREAM_TASK}.results.{UPSTREAM_RESULT})")
        );
        assert_eq!(
            tasks[2]["taskSpec"]["volumes"][0]["hostPath"]["path"],
            "/tmp/hold"
        );
        assert_eq!(
            gated_pipelinerun_document("p", None),
            pipelinerun_document("p")
        );
    }

    #[test]
    fn the_webhook_fails_closed_within_three_seconds() {
        let configuration = webhook_configuration(
            "g",
            "127.0.0.1:8443".parse().unwrap(),
            "-----BEGIN CERTIFICATE-----\n",
        );
        let webhook = &configuration["webhooks"][0];
        assert_eq!(webhook["failurePolicy"], "Fail");
        assert_eq!(webhook["timeoutSeconds"], 3);
        assert_eq!(
            webhook["clientConfig"]["url"],
            "https://127.0.0.1:8443/validate/taskruns"
        );
    }
}
