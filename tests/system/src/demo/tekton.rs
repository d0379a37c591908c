//! The demo on a real node, beside Tekton's own controller and entrypointer: what `cargo xtask
//! demo` runs by default, and what `tests/tekton.rs` checks.
//!
//! [`TektonDemo::start`] starts a real node ([`Node`]: containerd, runc, the kubelet as node
//! `worker-1`, kube-scheduler, kube-controller-manager, kube-apiserver), nats-server, SPIRE with
//! the agent's `k8s` workload attestor asking that kubelet who calls, the SPIFFE CSI driver
//! registered with the kubelet (the agent's socket reaches pods the way the shipped manifests
//! do), the four services, and Tekton's controller and events controller with
//! `enforce-nonfalsifiability: spire` and `config-events` pointed at the watcher's ingress.
//!
//! [`TektonDemo::play`] then creates, through the API server, what a user would:
//!
//! 1. a TaskRun of a Task with two steps and four results (string, array, object): Tekton's
//!    controller creates its pod, the kubelet runs it, and Tekton's entrypointer signs the results
//!    with the SVID the agent serves it through the entry our registrar created;
//! 2. a two-task PipelineRun, the second task taking the first's result as a parameter;
//! 3. the same Task again, whose `IMAGE_DIGEST` result an actor allowed only to write
//!    `taskruns/status` changes after the run finished. The watcher is stopped (as in a restart)
//!    from the moment the pod's entry exists until the change is made, so what it sees of the
//!    finished TaskRun is the changed status; the first step waits for a file the demo creates
//!    only once the watcher is down, so this does not race.
//!
//! The runs of 1 and 2 must be verified, the third rejected with `results_mismatch`.
//!
//! [`gate`] adds `countersign-gate`, registered as a validating webhook, and its PipelineRuns.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use countersign_events::data::ReasonCode;
use countersign_events::{AnyEvent, Subjects};
use countersign_test_support::nats::NatsServer;
use countersign_test_support::node::{BUSYBOX_IMAGE, NODE_IP, NODE_NAME, Node, NodeError};
use countersign_test_support::ports::free_port;
use countersign_test_support::process::PeerFailed;
use countersign_test_support::spiffe_csi::{CsiError, DRIVER_NAME, SpiffeCsi};
use countersign_test_support::spire::{KubeletAccess, Spire, SpireOptions};
use countersign_test_support::tekton::{TektonController, TektonError};
use countersign_test_support::wait::{self, WaitError};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use super::bus::{self, Observed, Observer};
use super::configs::{K8S_WORKLOAD_SELECTORS, ServiceKind, Settings};
use super::report::{Origin, Reporter};
use super::scenario::{Attested, attestation_of, workload_entry_id};
use super::services::ServiceProcess;
use super::sink::Sink;
use super::{
    AbortOnDrop, Binaries, PREFIX, StartError, TRUST_DOMAIN, attestor_id, canonical, loopback,
    start_services,
};

pub mod gate;

/// The namespace of the TaskRuns.
pub const NAMESPACE: &str = "demo";
/// The honest TaskRun.
pub const HONEST: &str = "build-push";
/// The PipelineRun.
pub const PIPELINE: &str = "release";
/// The TaskRun whose result is changed after it finished.
pub const TAMPERED: &str = "build-push-tampered";
/// Who changes it: a user allowed to write `taskruns/status` and nothing else.
pub const TAMPERER: &str = "status-writer";
/// The value the tamperer writes over `IMAGE_DIGEST`.
pub const TAMPERED_DIGEST: &str =
    "sha256:0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad";
/// The kubelet's port.
const KUBELET_PORT: u16 = 10250;
/// How long a run, a verdict or a service may take on a busy 2-core machine.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Why the demo on a real node did not start.
#[derive(Debug, thiserror::Error)]
pub enum TektonStartError {
    #[error(transparent)]
    Common(#[from] StartError),
    #[error("the node did not start")]
    Node(#[source] NodeError),
    #[error("the SPIFFE CSI driver did not start")]
    Csi(#[source] CsiError),
    #[error("Tekton did not start")]
    Tekton(#[source] TektonError),
    #[error("preparing namespace {NAMESPACE}: {what}")]
    Namespace {
        what: String,
        #[source]
        source: Option<kube::Error>,
    },
}

/// Why the scenario could not be played to its end.
#[derive(Debug, thiserror::Error)]
pub enum TektonPlayError {
    #[error("{action}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// A wait timed out: what was awaited, and the log tails of what is concerned.
    #[error("{wait}\n{logs}")]
    Wait { wait: WaitError, logs: String },
    #[error("{action}")]
    Files {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("restarting the watcher")]
    Restart(#[source] PeerFailed),
    #[error("TaskRun {name} has no result {result} to change")]
    NothingToTamper { name: String, result: String },
}

/// What happened to one TaskRun.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRunOutcome {
    pub name: String,
    pub uid: String,
    /// The `Succeeded` condition's reason, as Tekton wrote it.
    pub tekton_reason: String,
    pub attested: Attested,
    /// When the watcher saw the pod scheduled (its `scheduled` event).
    pub scheduled_at: Option<DateTime<Utc>>,
    /// When the registrar created the pod's SPIRE entry (its audit event).
    pub entry_created_at: Option<DateTime<Utc>>,
    /// When the agent first served the TaskRun's SVID to a step (its log).
    pub svid_served_at: Option<DateTime<Utc>>,
    /// When the watcher saw it finished (its `finished` event).
    pub finished_at: Option<DateTime<Utc>>,
    /// When the attestor published its verdict.
    pub attested_at: Option<DateTime<Utc>>,
}

/// The outcome of the whole story.
#[derive(Debug, Clone, PartialEq)]
pub struct TektonReport {
    pub tekton_version: String,
    pub taskrun: TaskRunOutcome,
    pub pipeline: Vec<TaskRunOutcome>,
    pub tampered: TaskRunOutcome,
}

impl TektonReport {
    /// Each way the outcome differs from what is expected; empty when all is as it should be.
    pub fn unexpected(&self) -> Vec<String> {
        self.rows()
            .into_iter()
            .filter(|(_, _, _, ok)| !ok)
            .map(|(what, got, expected, _)| format!("{what}: {got}, expected {expected}"))
            .collect()
    }

    /// The result table.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "\n== Result (Tekton Pipelines {} on node {NODE_NAME}) ==\n",
            self.tekton_version
        );
        for (what, got, expected, ok) in self.rows() {
            text.push_str(&format!(
                "  {:<4} {:<44} {} (expected {})\n",
                if ok { "ok" } else { "FAIL" },
                what,
                got,
                expected
            ));
        }
        text
    }

    fn rows(&self) -> Vec<(String, String, String, bool)> {
        let verified = |outcome: &TaskRunOutcome| {
            (
                format!("TaskRun {NAMESPACE}/{}", outcome.name),
                outcome.attested.label(),
                "verified".to_owned(),
                matches!(outcome.attested, Attested::Verified { .. }),
            )
        };
        let mut rows = vec![verified(&self.taskrun)];
        rows.push((
            format!("PipelineRun {NAMESPACE}/{PIPELINE}"),
            format!("{} TaskRuns", self.pipeline.len()),
            "2 TaskRuns".to_owned(),
            self.pipeline.len() == 2,
        ));
        rows.extend(self.pipeline.iter().map(verified));
        rows.push((
            format!("TaskRun {NAMESPACE}/{}", self.tampered.name),
            self.tampered.attested.label(),
            "rejected (results_mismatch)".to_owned(),
            matches!(
                self.tampered.attested,
                Attested::Rejected {
                    reason: ReasonCode::ResultsMismatch,
                    ..
                }
            ),
        ));
        rows
    }
}

/// The running system on a real node. Dropping it stops everything (services first).
#[derive(Debug)]
pub struct TektonDemo {
    // Dropped in declaration order: the services and Tekton before the peers they use, the
    // node (its apiserver, kubelet, containerd and namespace) last.
    services: Vec<ServiceProcess>,
    tekton: TektonController,
    sink: Sink,
    bus_task: AbortOnDrop,
    csi: SpiffeCsi,
    spire: Spire,
    nats: NatsServer,
    node: Node,
    observer: Observer,
    reporter: Reporter,
    binaries: Binaries,
    dir: tempfile::TempDir,
}

impl TektonDemo {
    /// Starts the node, the peers, the services and Tekton, printing what starts.
    ///
    /// It moves the calling thread into the node's network namespace, so it must run on a
    /// current-thread tokio runtime (see [`Node::start`]).
    pub async fn start(
        binaries: Binaries,
        reporter: Reporter,
    ) -> Result<TektonDemo, TektonStartError> {
        reporter.heading("Starting Countersign beside Tekton's own controller, on a real node");
        let dir = countersign_test_support::short_tempdir("cs-tkdemo-");
        let dir_path = canonical(dir.path())?;
        for directory in [
            dir_path.join("config"),
            dir_path.join("logs"),
            dir_path.join("gate"),
        ] {
            std::fs::create_dir_all(&directory).map_err(|source| StartError::Directory {
                path: directory.clone(),
                source,
            })?;
        }
        reporter.line(
            Origin::Demo,
            format!("working directory {} (configs, logs)", dir_path.display()),
        );
        reporter.line(
            Origin::Demo,
            format!(
                "starting node {NODE_NAME}: containerd + runc, the kubelet, kube-scheduler, \
                 kube-controller-manager and kube-apiserver, in a namespace of its own ..."
            ),
        );
        let node = Node::start().await.map_err(TektonStartError::Node)?;
        let peers = countersign_test_support::peers();
        reporter.line(
            Origin::Kube,
            format!(
                "node {NODE_NAME} Ready (kubelet {}, node IP {NODE_IP}; kube-apiserver {})",
                peers.kubelet.version,
                node.kube().url()
            ),
        );

        let nats = NatsServer::start().await.map_err(StartError::Nats)?;
        let client = async_nats::connect(nats.url())
            .await
            .map_err(StartError::Connect)?;
        let subjects = Subjects::new(PREFIX).map_err(StartError::Prefix)?;
        let subscriber = client
            .subscribe(format!("{PREFIX}.>"))
            .await
            .map_err(StartError::Subscribe)?;
        let observer = Observer::new();
        let bus_task = AbortOnDrop(tokio::spawn(bus::follow_bus(
            subscriber,
            subjects,
            observer.clone(),
            reporter.clone(),
        )));
        reporter.line(
            Origin::Demo,
            format!(
                "nats-server ready at {}; every event on {PREFIX}.> is shown",
                nats.url()
            ),
        );
        let sink = Sink::start(observer.clone(), reporter.clone())
            .await
            .map_err(StartError::Sink)?;

        let (certificate_path, private_key_path) = node.kube().admin_cert_and_key_paths();
        let spire = Spire::start(SpireOptions {
            trust_domain: TRUST_DOMAIN.to_owned(),
            node_name: NODE_NAME.to_owned(),
            kubelet: Some(KubeletAccess {
                address: NODE_IP.to_owned(),
                port: KUBELET_PORT,
                certificate_path: certificate_path.to_owned(),
                private_key_path: private_key_path.to_owned(),
            }),
            ..SpireOptions::default()
        })
        .await
        .map_err(StartError::Spire)?;
        reporter.line(
            Origin::Demo,
            format!(
                "SPIRE ready: the agent is node {NODE_NAME}'s ({}), and its k8s workload attestor \
                 asks the kubelet at https://{NODE_IP}:{KUBELET_PORT} which pod calls",
                spire.node_alias_id()
            ),
        );
        let csi = SpiffeCsi::start(&node, &spire.workload_api_dir())
            .await
            .map_err(TektonStartError::Csi)?;
        reporter.line(
            Origin::Kube,
            format!(
                "SPIFFE CSI driver {} registered with the kubelet ({DRIVER_NAME}): pods' \
                 csi.spiffe.io volumes are the agent's socket directory",
                peers.spiffe_csi_driver.version
            ),
        );

        let attestor_path = canonical(&binaries.attestor)?;
        let selectors = [
            format!("unix:uid:{}", nix::unistd::getuid()),
            format!("unix:path:{}", attestor_path.display()),
        ];
        let selector_refs: Vec<&str> = selectors.iter().map(String::as_str).collect();
        spire
            .register_workload(
                &attestor_id(),
                &selector_refs,
                &spire.node_alias_id(),
                false,
            )
            .await
            .map_err(|source| StartError::RegisterAttestor {
                id: attestor_id(),
                source,
            })?;

        let settings = Settings {
            nats_url: nats.url(),
            trust_domain: TRUST_DOMAIN.to_owned(),
            kubeconfig: node.kube().kubeconfig_path().to_owned(),
            server_socket: spire.server_socket_path(),
            agent_endpoint: spire.agent_endpoint(),
            pods_dir: dir_path.join("pods"),
            sink_url: sink.url(),
            ingress: loopback(free_port()),
            otlp_endpoint: None,
            workload_selectors: Some(K8S_WORKLOAD_SELECTORS.map(str::to_owned).to_vec()),
        };
        let services = start_services(&binaries, &settings, &dir_path, &reporter).await?;

        let feature_flags =
            BTreeMap::from([("enforce-nonfalsifiability".to_owned(), "spire".to_owned())]);
        let config = BTreeMap::from([
            (
                "config-spire".to_owned(),
                BTreeMap::from([("spire-trust-domain".to_owned(), TRUST_DOMAIN.to_owned())]),
            ),
            (
                "config-events".to_owned(),
                BTreeMap::from([
                    ("formats".to_owned(), "tektonv1".to_owned()),
                    ("sink".to_owned(), format!("http://{}/", settings.ingress)),
                ]),
            ),
        ]);
        let tekton = TektonController::start(&node, &feature_flags, &config)
            .await
            .map_err(TektonStartError::Tekton)?;
        reporter.line(
            Origin::Kube,
            format!(
                "Tekton Pipelines {} controller and events controller running \
                 (enforce-nonfalsifiability: spire; config-events sink http://{}/, the watcher's ingress)",
                TektonController::version(),
                settings.ingress
            ),
        );

        let demo = TektonDemo {
            services,
            tekton,
            sink,
            bus_task,
            csi,
            spire,
            nats,
            node,
            observer,
            reporter,
            binaries,
            dir,
        };
        demo.prepare_namespace().await?;
        Ok(demo)
    }

    /// Creates the namespace, waits for its `default` ServiceAccount, and lets [`TAMPERER`]
    /// write `taskruns/status` there (and read TaskRuns), nothing else.
    async fn prepare_namespace(&self) -> Result<(), TektonStartError> {
        let failed = |what: &str| {
            let what = what.to_owned();
            move |source| TektonStartError::Namespace {
                what,
                source: Some(source),
            }
        };
        self.node
            .kube()
            .create_namespace(NAMESPACE)
            .await
            .map_err(failed("creating it"))?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.node.client(), NAMESPACE);
        wait::until("ServiceAccount default to exist", RUN_TIMEOUT, || {
            let accounts = accounts.clone();
            async move { accounts.get_opt("default").await.ok().flatten() }
        })
        .await
        .map_err(|error| TektonStartError::Namespace {
            what: error.to_string(),
            source: None,
        })?;
        let role: Role = serde_json::from_value(json!({
            "metadata": { "name": "taskrun-status-writer", "namespace": NAMESPACE },
            "rules": [
                { "apiGroups": ["tekton.dev"], "resources": ["taskruns"], "verbs": ["get", "list"] },
                { "apiGroups": ["tekton.dev"], "resources": ["taskruns/status"], "verbs": ["get", "patch", "update"] },
            ],
        }))
        .map_err(|error| failed("the Role")(kube::Error::SerdeError(error)))?;
        Api::<Role>::namespaced(self.node.client(), NAMESPACE)
            .create(&PostParams::default(), &role)
            .await
            .map_err(failed("creating the Role"))?;
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": { "name": "taskrun-status-writer", "namespace": NAMESPACE },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "taskrun-status-writer" },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TAMPERER }],
        }))
        .map_err(|error| failed("the RoleBinding")(kube::Error::SerdeError(error)))?;
        Api::<RoleBinding>::namespaced(self.node.client(), NAMESPACE)
            .create(&PostParams::default(), &binding)
            .await
            .map_err(failed("creating the RoleBinding"))?;
        Ok(())
    }

    /// The node (its apiserver, kubelet and containerd).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The SPIRE server and agent.
    pub fn spire(&self) -> &Spire {
        &self.spire
    }

    /// Plays the story: the TaskRun, the PipelineRun, the tampered TaskRun; then prints the
    /// result table.
    pub async fn play(&mut self) -> Result<TektonReport, TektonPlayError> {
        self.reporter.heading(format!(
            "TaskRun {NAMESPACE}/{HONEST}: two steps, four results, run by Tekton {}",
            TektonController::version()
        ));
        let taskrun = self.run_taskrun(HONEST, None).await?;

        self.reporter.heading(format!(
            "PipelineRun {NAMESPACE}/{PIPELINE}: task publish takes task build's result"
        ));
        let pipeline = self.run_pipelinerun().await?;

        self.reporter.heading(format!(
            "TaskRun {NAMESPACE}/{TAMPERED}: IMAGE_DIGEST changed by {TAMPERER} after the run finished"
        ));
        let tampered = self.run_tampered().await?;

        let report = TektonReport {
            tekton_version: TektonController::version().to_owned(),
            taskrun,
            pipeline,
            tampered,
        };
        self.reporter.plain(report.summary());
        Ok(report)
    }

    /// Runs the same Task `count` times, one TaskRun after the other, and returns each outcome
    /// (for the benchmark).
    pub async fn run_many(
        &mut self,
        prefix: &str,
        count: usize,
        mut progress: impl FnMut(usize, &TaskRunOutcome),
    ) -> Result<Vec<TaskRunOutcome>, TektonPlayError> {
        let mut outcomes = Vec::with_capacity(count);
        for index in 0..count {
            let outcome = self.run_taskrun(&format!("{prefix}-{index}"), None).await?;
            progress(index, &outcome);
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    fn taskruns(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.node.client(), NAMESPACE, &taskrun_resource())
    }

    /// Creates a TaskRun of the two-step Task (its first step waiting for `gate` to exist, when
    /// given) and returns its UID.
    async fn create_taskrun(
        &self,
        name: &str,
        gate: Option<&Path>,
    ) -> Result<String, TektonPlayError> {
        let object: DynamicObject =
            serde_json::from_value(taskrun_document(name, gate)).map_err(|error| {
                TektonPlayError::Kube {
                    action: format!("building TaskRun {name}"),
                    source: kube::Error::SerdeError(error),
                }
            })?;
        let created = self
            .taskruns()
            .create(&PostParams::default(), &object)
            .await
            .map_err(|source| TektonPlayError::Kube {
                action: format!("creating TaskRun {name}"),
                source,
            })?;
        let uid = created.metadata.uid.unwrap_or_default();
        self.reporter.line(
            Origin::Kube,
            format!(
                "created TaskRun {NAMESPACE}/{name} (uid {uid}); Tekton's controller makes its pod"
            ),
        );
        Ok(uid)
    }

    async fn run_taskrun(
        &self,
        name: &str,
        gate: Option<&Path>,
    ) -> Result<TaskRunOutcome, TektonPlayError> {
        let uid = self.create_taskrun(name, gate).await?;
        let finished = self.wait_finished(name).await?;
        self.show_signing(&finished).await;
        self.await_outcome(name, &uid, &finished).await
    }

    async fn run_pipelinerun(&self) -> Result<Vec<TaskRunOutcome>, TektonPlayError> {
        let pipelineruns: Api<DynamicObject> =
            Api::namespaced_with(self.node.client(), NAMESPACE, &pipelinerun_resource());
        let object: DynamicObject = serde_json::from_value(pipelinerun_document(PIPELINE))
            .map_err(|error| TektonPlayError::Kube {
                action: format!("building PipelineRun {PIPELINE}"),
                source: kube::Error::SerdeError(error),
            })?;
        pipelineruns
            .create(&PostParams::default(), &object)
            .await
            .map_err(|source| TektonPlayError::Kube {
                action: format!("creating PipelineRun {PIPELINE}"),
                source,
            })?;
        self.reporter.line(
            Origin::Kube,
            format!("created PipelineRun {NAMESPACE}/{PIPELINE}; Tekton makes a TaskRun per task"),
        );
        let run = wait::until(
            &format!("PipelineRun {PIPELINE} to finish"),
            RUN_TIMEOUT,
            || {
                let pipelineruns = pipelineruns.clone();
                async move {
                    let run = pipelineruns.get(PIPELINE).await.ok()?;
                    let (status, _) = succeeded(&run.data)?;
                    (status != "Unknown").then_some(run)
                }
            },
        )
        .await
        .map_err(|wait| self.wait_failed(wait, &[]))?;
        let (_, reason) = succeeded(&run.data).unwrap_or_default();
        self.reporter.line(
            Origin::Kube,
            format!("PipelineRun {PIPELINE} finished: {reason}"),
        );
        let children = self
            .taskruns()
            .list(&ListParams::default().labels(&format!("tekton.dev/pipelineRun={PIPELINE}")))
            .await
            .map_err(|source| TektonPlayError::Kube {
                action: format!("listing the TaskRuns of {PIPELINE}"),
                source,
            })?;
        let mut outcomes = Vec::new();
        let mut names: Vec<(String, String)> = children
            .items
            .iter()
            .map(|taskrun| {
                (
                    taskrun.metadata.name.clone().unwrap_or_default(),
                    taskrun.metadata.uid.clone().unwrap_or_default(),
                )
            })
            .collect();
        names.sort();
        for (name, uid) in names {
            let finished = self.wait_finished(&name).await?;
            if name.ends_with("-publish") {
                let published = result_value(&finished, "published").unwrap_or_default();
                self.reporter.line(
                    Origin::Step,
                    format!("{name}: result published = {published} (from task build's digest)"),
                );
            }
            self.show_signing(&finished).await;
            outcomes.push(self.await_outcome(&name, &uid, &finished).await?);
        }
        Ok(outcomes)
    }

    async fn run_tampered(&mut self) -> Result<TaskRunOutcome, TektonPlayError> {
        let gate = self.dir.path().join("gate");
        let uid = self.create_taskrun(TAMPERED, Some(&gate)).await?;
        self.reporter.line(
            Origin::Step,
            format!(
                "its first step waits for {}/open before it runs",
                gate.display()
            ),
        );
        let observer = self.observer.clone();
        observer
            .wait_for(
                &format!("the registrar's entry for the pod of {TAMPERED}"),
                RUN_TIMEOUT,
                |observed| workload_entry_id(observed, &uid, true),
            )
            .await
            .map_err(|wait| {
                self.wait_failed(wait, &[ServiceKind::Watcher, ServiceKind::Registrar])
            })?;
        self.reporter.line(
            Origin::Demo,
            "the pod's entry exists; stopping the watcher (as in a restart) before the run finishes ...",
        );
        let watcher = self.watcher_index();
        self.services[watcher].stop();
        let open = gate.join("open");
        std::fs::write(&open, b"").map_err(|source| TektonPlayError::Files {
            action: format!("creating {}", open.display()),
            source,
        })?;
        let finished = self.wait_finished(TAMPERED).await?;
        self.show_signing(&finished).await;

        self.tamper_result(TAMPERED, "IMAGE_DIGEST", TAMPERED_DIGEST)
            .await?;
        let changed = self.taskrun(TAMPERED).await?;
        self.reporter
            .line(Origin::Demo, "starting the watcher again ...");
        self.restart_watcher().await?;
        self.await_outcome(TAMPERED, &uid, &changed).await
    }

    /// As [`TAMPERER`] (allowed only `taskruns/status`), writes `value` over result `result` in
    /// the status of TaskRun `name`.
    async fn tamper_result(
        &self,
        name: &str,
        result: &str,
        value: &str,
    ) -> Result<(), TektonPlayError> {
        let taskrun = self.taskrun(name).await?;
        let tamperer = self
            .node
            .kube()
            .client_impersonating(TAMPERER, &[])
            .map_err(|error| TektonPlayError::Kube {
                action: "a client for the status writer".to_owned(),
                source: kube::Error::Service(Box::new(error)),
            })?;
        let mut results = taskrun
            .pointer("/status/results")
            .cloned()
            .unwrap_or(Value::Null);
        let entry = results
            .as_array_mut()
            .and_then(|results| results.iter_mut().find(|entry| entry["name"] == result))
            .ok_or_else(|| TektonPlayError::NothingToTamper {
                name: name.to_owned(),
                result: result.to_owned(),
            })?;
        let before = entry["value"].clone();
        entry["value"] = json!(value);
        Api::<DynamicObject>::namespaced_with(tamperer, NAMESPACE, &taskrun_resource())
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "results": results } })),
            )
            .await
            .map_err(|source| TektonPlayError::Kube {
                action: format!("{TAMPERER} patching the status of {name}"),
                source,
            })?;
        self.reporter.line(
            Origin::Kube,
            format!(
                "{TAMPERER} (allowed only taskruns/status) changed status.results {result} \
                 {before} -> {value}"
            ),
        );
        Ok(())
    }

    fn watcher_index(&self) -> usize {
        self.services
            .iter()
            .position(|service| service.kind() == ServiceKind::Watcher)
            .unwrap_or(0)
    }

    async fn restart_watcher(&mut self) -> Result<(), TektonPlayError> {
        let index = self.watcher_index();
        let old = &self.services[index];
        let (config, admin, log) = (
            old.config_path().to_owned(),
            old.admin(),
            old.log_path().to_owned(),
        );
        let watcher = ServiceProcess::spawn(
            ServiceKind::Watcher,
            &self.binaries.watcher,
            &config,
            admin,
            &log,
        )
        .await
        .map_err(TektonPlayError::Restart)?;
        watcher
            .wait_ready()
            .await
            .map_err(TektonPlayError::Restart)?;
        self.services[index] = watcher;
        Ok(())
    }

    async fn taskrun(&self, name: &str) -> Result<Value, TektonPlayError> {
        self.taskruns()
            .get(name)
            .await
            .map(|taskrun| taskrun.data)
            .map_err(|source| TektonPlayError::Kube {
                action: format!("reading TaskRun {name}"),
                source,
            })
    }

    /// Waits until Tekton marks TaskRun `name` finished; returns the TaskRun's JSON.
    async fn wait_finished(&self, name: &str) -> Result<Value, TektonPlayError> {
        let taskruns = self.taskruns();
        let finished = wait::until(
            &format!("Tekton to finish TaskRun {name}"),
            RUN_TIMEOUT,
            || {
                let taskruns = taskruns.clone();
                async move {
                    let taskrun = taskruns.get(name).await.ok()?;
                    let (status, _) = succeeded(&taskrun.data)?;
                    (status != "Unknown").then_some(taskrun.data)
                }
            },
        )
        .await
        .map_err(|wait| self.wait_failed(wait, &[ServiceKind::Watcher, ServiceKind::Registrar]))?;
        let (_, reason) = succeeded(&finished).unwrap_or_default();
        self.reporter.line(
            Origin::Kube,
            format!("Tekton finished TaskRun {name}: {reason}"),
        );
        Ok(finished)
    }

    /// Prints what Tekton's entrypointer wrote in each step's termination message.
    async fn show_signing(&self, taskrun: &Value) {
        let Some(pod_name) = taskrun.pointer("/status/podName").and_then(Value::as_str) else {
            return;
        };
        let pods: Api<Pod> = Api::namespaced(self.node.client(), NAMESPACE);
        let Ok(pod) = pods.get(pod_name).await else {
            return;
        };
        let statuses = pod
            .status
            .and_then(|status| status.container_statuses)
            .unwrap_or_default();
        for status in statuses {
            let Some(message) = status
                .state
                .as_ref()
                .and_then(|state| state.terminated.as_ref())
                .and_then(|terminated| terminated.message.clone())
            else {
                continue;
            };
            let entries: Vec<Value> = serde_json::from_str(&message).unwrap_or_default();
            let value_of = |key: &str| {
                entries
                    .iter()
                    .find(|entry| entry["key"] == key)
                    .and_then(|entry| entry["value"].as_str())
                    .map(str::to_owned)
            };
            let signatures = entries
                .iter()
                .filter_map(|entry| entry["key"].as_str())
                .filter(|key| key.ends_with(".sig"))
                .count();
            match (value_of("SVID"), value_of("RESULT_MANIFEST")) {
                (Some(svid), Some(manifest)) => self.reporter.line(
                    Origin::Step,
                    format!(
                        "{} (Tekton's entrypointer, pod {pod_name}): signed [{manifest}] with its \
                         SVID ({} bytes of PEM) from the agent through the csi.spiffe.io volume, \
                         {signatures} signatures, in its {}-byte termination message",
                        status.name,
                        svid.len(),
                        message.len()
                    ),
                ),
                _ => self.reporter.line(
                    Origin::Step,
                    format!("{}: termination message without a signed set", status.name),
                ),
            }
        }
    }

    /// Waits for the attestor's verdict on TaskRun `uid`, and gathers the times of its way there.
    async fn await_outcome(
        &self,
        name: &str,
        uid: &str,
        taskrun: &Value,
    ) -> Result<TaskRunOutcome, TektonPlayError> {
        let attested = self
            .observer
            .wait_for(
                &format!("the attestation of TaskRun {NAMESPACE}/{name}"),
                RUN_TIMEOUT,
                |observed| attestation_of(observed, uid),
            )
            .await
            .map_err(|wait| {
                self.wait_failed(
                    wait,
                    &[
                        ServiceKind::Watcher,
                        ServiceKind::Registrar,
                        ServiceKind::Attestor,
                    ],
                )
            })?;
        let observed = self.observer.snapshot();
        let spiffe_id = format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/taskrun/{name}");
        let outcome = TaskRunOutcome {
            name: name.to_owned(),
            uid: uid.to_owned(),
            tekton_reason: succeeded(taskrun).unwrap_or_default().1,
            attested,
            scheduled_at: event_time(&observed, uid, |data| {
                matches!(data, AnyEvent::TaskRunScheduled(_))
            }),
            entry_created_at: event_time(&observed, uid, |data| {
                matches!(data, AnyEvent::EntryRegistered(registered)
                    if registered.entry.kind == countersign_events::data::EntryKind::Workload)
            }),
            svid_served_at: svid_first_served(&self.spire.agent_log_path(), &spiffe_id),
            finished_at: event_time(&observed, uid, |data| {
                matches!(data, AnyEvent::TaskRunFinished(_))
            }),
            attested_at: event_time(&observed, uid, |data| {
                matches!(
                    data,
                    AnyEvent::AttestationVerified(_) | AnyEvent::AttestationRejected(_)
                )
            }),
        };
        Ok(outcome)
    }

    fn wait_failed(&self, wait: WaitError, services: &[ServiceKind]) -> TektonPlayError {
        let mut logs = String::new();
        for service in self
            .services
            .iter()
            .filter(|service| services.contains(&service.kind()))
        {
            logs.push_str(&format!(
                "---- {} log tail ({}) ----\n{}\n",
                service.kind().binary_name(),
                service.log_path().display(),
                service.log_tail()
            ));
        }
        logs.push_str(&format!(
            "---- tekton-controller log tail ----\n{}\n---- spire-agent log tail ----\n{}\n\
             ---- spiffe-csi-driver log tail ----\n{}\n---- kubelet log tail ----\n{}\n",
            self.tekton.log_tail(),
            self.spire.agent_log_tail(),
            self.csi.driver_log_tail(),
            self.node.kubelet_log_tail()
        ));
        TektonPlayError::Wait { wait, logs }
    }

    /// Stops everything, services first, and removes every directory.
    pub async fn shutdown(self) {
        let reporter = self.reporter.clone();
        reporter.line(
            Origin::Demo,
            "stopping the services, Tekton, SPIRE, nats-server and the node ...",
        );
        let stopped = tokio::task::spawn_blocking(move || {
            let TektonDemo {
                mut services,
                tekton,
                sink,
                bus_task,
                csi,
                spire,
                nats,
                node,
                dir,
                ..
            } = self;
            for service in services.iter_mut().rev() {
                service.stop();
            }
            drop(services);
            drop(tekton);
            drop(sink);
            drop(bus_task);
            drop(csi);
            drop(spire);
            drop(nats);
            drop(node);
            let _ = dir.close();
        })
        .await;
        if stopped.is_err() {
            reporter.line(Origin::Demo, "stopping did not finish cleanly");
        }
        reporter.line(Origin::Demo, "everything stopped and removed");
    }
}

/// The time of the first event about TaskRun `uid` that `matches`.
fn event_time(
    observed: &Observed,
    uid: &str,
    matches: impl Fn(&AnyEvent) -> bool,
) -> Option<DateTime<Utc>> {
    observed
        .events
        .iter()
        .filter(|event| matches(&event.data))
        .find(|event| event_taskrun_uid(&event.data).as_deref() == Some(uid))
        .map(|event| event.time)
}

/// The UID of the TaskRun an event is about, if it is about one.
fn event_taskrun_uid(data: &AnyEvent) -> Option<String> {
    let uid = match data {
        AnyEvent::TaskRunScheduled(data) => &data.taskrun.uid,
        AnyEvent::TaskRunFinished(data) => &data.taskrun.uid,
        AnyEvent::AttestationVerified(data) => &data.taskrun.uid,
        AnyEvent::AttestationRejected(data) => &data.taskrun.uid,
        AnyEvent::EntryRegistered(data) => &data.entry.taskrun.as_ref()?.uid,
        _ => return None,
    };
    Some(uid.clone())
}

/// When the agent first served `spiffe_id` to a workload: its first `Fetched X.509 SVID` log
/// line for that ID (the agent logs with nanosecond timestamps on a real node).
pub fn svid_first_served(agent_log: &Path, spiffe_id: &str) -> Option<DateTime<Utc>> {
    let text = std::fs::read_to_string(agent_log).ok()?;
    let quoted = format!("spiffe_id=\"{spiffe_id}\"");
    let bare = format!("spiffe_id={spiffe_id} ");
    text.lines()
        .filter(|line| line.contains("msg=\"Fetched X.509 SVID\""))
        .filter(|line| {
            line.contains(&quoted)
                || line.contains(&bare)
                || line.ends_with(&bare[..bare.len() - 1])
        })
        .find_map(|line| {
            let time = line.strip_prefix("time=\"")?.split('"').next()?;
            DateTime::parse_from_rfc3339(time)
                .ok()
                .map(|time| time.with_timezone(&Utc))
        })
}

/// The `Succeeded` condition's status and reason, if the object has one.
fn succeeded(object: &Value) -> Option<(String, String)> {
    let conditions = object.pointer("/status/conditions")?.as_array()?;
    let condition = conditions
        .iter()
        .find(|condition| condition.get("type").and_then(Value::as_str) == Some("Succeeded"))?;
    Some((
        condition.get("status")?.as_str()?.to_owned(),
        condition
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    ))
}

/// A TaskRun result's value, as a string.
fn result_value(taskrun: &Value, name: &str) -> Option<String> {
    taskrun
        .pointer("/status/results")?
        .as_array()?
        .iter()
        .find(|result| result["name"] == name)
        .map(|result| match &result["value"] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
}

/// Tekton's TaskRun resource.
pub fn taskrun_resource() -> ApiResource {
    countersign_test_support::kube::taskrun_resource()
}

/// Tekton's PipelineRun resource.
pub fn pipelinerun_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun"),
        "pipelineruns",
    )
}

/// The Task: step `clone` writes `commit`, step `build` writes `IMAGE_DIGEST`, `image` (an
/// object) and `tags` (an array). With `gate`, `clone` first waits for `<gate>/open`.
pub fn task_spec(gate: Option<&Path>) -> Value {
    let wait = if gate.is_some() {
        "while [ ! -e /gate/open ]; do sleep 1; done\n"
    } else {
        ""
    };
    let mut clone = json!({
        "name": "clone", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
        "script": format!("#!/bin/sh\n{wait}printf 'abc123' > $(results.commit.path)\n"),
    });
    let mut spec = json!({
        "results": [
            { "name": "commit", "type": "string" },
            { "name": "IMAGE_DIGEST", "type": "string" },
            { "name": "image", "type": "object",
              "properties": { "url": { "type": "string" }, "digest": { "type": "string" } } },
            { "name": "tags", "type": "array" },
        ],
        "steps": [],
    });
    if let Some(gate) = gate {
        clone["volumeMounts"] = json!([{ "name": "gate", "mountPath": "/gate" }]);
        spec["volumes"] = json!([{
            "name": "gate",
            "hostPath": { "path": gate.display().to_string(), "type": "Directory" },
        }]);
    }
    let build = json!({
        "name": "build", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
        "script": "#!/bin/sh\nprintf 'sha256:0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f' > $(results.IMAGE_DIGEST.path)\nprintf '{\"url\":\"registry.example/app\",\"digest\":\"sha256:0f0f\"}' > $(results.image.path)\nprintf '[\"latest\",\"v1\"]' > $(results.tags.path)\n",
    });
    spec["steps"] = json!([clone, build]);
    spec
}

/// A TaskRun of [`task_spec`].
pub fn taskrun_document(name: &str, gate: Option<&Path>) -> Value {
    json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "TaskRun",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": { "taskSpec": task_spec(gate) },
    })
}

/// A two-task PipelineRun: `build` writes a digest, `publish` takes it as a parameter.
pub fn pipelinerun_document(name: &str) -> Value {
    json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": { "pipelineSpec": { "tasks": [
            { "name": "build", "taskSpec": {
                "results": [{ "name": "digest", "type": "string" }],
                "steps": [{ "name": "build", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                    "script": "#!/bin/sh\nprintf 'sha256:beef' > $(results.digest.path)\n" }],
            }},
            { "name": "publish", "params": [{ "name": "digest", "value": "$(tasks.build.results.digest)" }],
              "taskSpec": {
                "params": [{ "name": "digest", "type": "string" }],
                "results": [{ "name": "published", "type": "string" }],
                "steps": [{ "name": "publish", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                    "script": "#!/bin/sh\nprintf 'published %s' '$(params.digest)' > $(results.published.path)\n" }],
            }},
        ]}},
    })
}

/// Durations between two optional instants, in milliseconds.
pub fn millis_between(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Option<f64> {
    let (from, to) = (from?, to?);
    Some((to - from).num_microseconds()? as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_svid_served_for_an_id_is_read_from_the_agents_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        std::fs::write(
            &log,
            "time=\"2026-12-07T01:00:00.100000000Z\" level=debug msg=\"Fetched X.509 SVID\" count=1 method=FetchX509SVID spiffe_id=\"spiffe://example.org/countersign/attestor\" ttl=3599\n\
             time=\"2026-12-07T01:00:01.250000000Z\" level=debug msg=\"Fetched X.509 SVID\" count=1 method=FetchX509SVID spiffe_id=\"spiffe://example.org/ns/demo/taskrun/a\" ttl=3599\n\
             time=\"2026-12-07T01:00:02.000000000Z\" level=debug msg=\"Fetched X.509 SVID\" count=1 method=FetchX509SVID spiffe_id=\"spiffe://example.org/ns/demo/taskrun/a\" ttl=3598\n",
        )
        .unwrap();
        let served = svid_first_served(&log, "spiffe://example.org/ns/demo/taskrun/a").unwrap();
        assert_eq!(served.to_rfc3339(), "2026-12-07T01:00:01.250+00:00");
        assert_eq!(
            svid_first_served(&log, "spiffe://example.org/ns/demo/taskrun/b"),
            None
        );
    }

    #[test]
    fn the_gated_task_mounts_the_gate_in_its_first_step_only() {
        let spec = task_spec(Some(Path::new("/tmp/gate")));
        assert_eq!(spec["volumes"][0]["hostPath"]["path"], "/tmp/gate");
        assert!(
            spec["steps"][0]["script"]
                .as_str()
                .unwrap()
                .contains("/gate/open")
        );
        assert!(spec["steps"][1].get("volumeMounts").is_none());
        assert!(task_spec(None).get("volumes").is_none());
    }
}
