//! The story the demo plays, and what it expects:
//!
//! 1. TaskRun `build-push-run-x7k2p` (the fixture's): two steps, `clone` writes `commit`, `build`
//!    writes `IMAGE_DIGEST`, `image` and `tags`; after each step the real `countersign-signer`,
//!    run from the pod's own copy as that pod's workload of the agent, signs the results (it
//!    waits until the registrar's entry for the pod reaches the agent), and its output becomes
//!    the step's termination message. Expected: **verified**; the registrar registered and then
//!    released the pod's entry; the relay delivered the attestation; the attestor annotated the
//!    TaskRun.
//! 2. `countersign get --json` of its attestation into a file, SPIRE's trust bundle into
//!    another, and `countersign verify --require-verified` on them. Expected: exit status 0.
//! 3. TaskRun `build-push-run-t4mp3`: the same, except that `IMAGE_DIGEST` is changed in the
//!    `build` step's termination message after the signer signed it. Expected: **rejected**
//!    with `signature_invalid`.
//!
//! Every wait has a timeout and says what it awaited; a wait that times out ends the scenario
//! with the log tails of the services concerned ([`ScenarioError`]). A verdict other than the
//! expected one does not: it is reported by [`ScenarioReport::unexpected`].

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use countersign_events::AnyEvent;
use countersign_events::data::{EntryKind, ReasonCode, Verdict};
use countersign_test_support::wait::{self, WaitError};

use super::bus::Observed;
use super::cluster::{
    ClusterError, CreatedTaskRun, INTERNAL_ENTRY_TYPE, MessageEntry, Phase, RESULT_ENTRY_TYPE,
    StepSpec, StepState, TASKRUN_FIXTURE, Terminated, pod_status, taskrun_message, taskrun_status,
};
use super::configs::ServiceKind;
use super::report::Origin;
use super::services::inherited_overrides;
use super::{Demo, NAMESPACE, TRUST_DOMAIN};

/// How long any one thing is awaited.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(90);

/// How long the signer itself waits for the pod's SVID.
const SIGNER_TIMEOUT: &str = "60s";

/// How long a `countersign` or `spire-server` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The annotation the attestor puts on a TaskRun.
pub const VERDICT_ANNOTATION: &str = "countersign.dev/verdict";

/// What each step of the fixture's Task writes (the fixture's own values).
pub const STEP_RESULTS: [(&str, &[(&str, &str)]); 2] = [
    (
        "clone",
        &[("commit", "9f3e2c1a7b4d5e6f8091a2b3c4d5e6f708192a3b")],
    ),
    (
        "build",
        &[
            (
                "IMAGE_DIGEST",
                "sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c",
            ),
            (
                "image",
                r#"{"url":"registry.example.com/team/app","digest":"sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c"}"#,
            ),
            ("tags", r#"["latest","v1.4.2"]"#),
        ],
    ),
];

/// A result changed after it was signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tamper {
    /// The step whose termination message is changed.
    pub step: &'static str,
    /// The result changed.
    pub result: &'static str,
    /// Its new value.
    pub value: &'static str,
}

/// One TaskRun of the story.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRunPlan {
    pub name: &'static str,
    /// What happens to it, for the heading.
    pub title: &'static str,
    pub tamper: Option<Tamper>,
}

/// The honest TaskRun.
pub const HONEST: TaskRunPlan = TaskRunPlan {
    name: "build-push-run-x7k2p",
    title: "its results signed by its own pod",
    tamper: None,
};

/// The TaskRun whose result is changed after signing.
pub const TAMPERED: TaskRunPlan = TaskRunPlan {
    name: "build-push-run-t4mp3",
    title: "IMAGE_DIGEST changed after the pod signed it",
    tamper: Some(Tamper {
        step: "build",
        result: "IMAGE_DIGEST",
        value: "sha256:0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad",
    }),
};

/// The attestor's verdict on a TaskRun, as its attestation event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attested {
    /// Verified: the results, by name, and the SPIFFE ID that signed them.
    Verified {
        results: Vec<String>,
        signed_by: Option<String>,
    },
    /// Nothing to verify.
    NoResults,
    /// Rejected, with the reason code, the failing step and the message.
    Rejected {
        reason: ReasonCode,
        step: Option<String>,
        message: String,
    },
}

impl Attested {
    /// `verified`, `no_results` or `rejected (<reason>)`.
    pub fn label(&self) -> String {
        match self {
            Attested::Verified { .. } => "verified".to_owned(),
            Attested::NoResults => "no_results".to_owned(),
            Attested::Rejected { reason, step, .. } => match step {
                Some(step) => format!("rejected ({}, step {step})", reason.as_str()),
                None => format!("rejected ({})", reason.as_str()),
            },
        }
    }
}

/// What happened to one TaskRun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRunReport {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub attested: Attested,
    /// The id of the SPIRE entry the registrar registered for its pod (and released).
    pub workload_entry: String,
    /// The attestor's `countersign.dev/verdict` annotation on the TaskRun.
    pub annotation: String,
}

/// One `countersign` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliReport {
    /// The command line, as a user would type it.
    pub command: String,
    /// The exit status (`None` when killed by a signal).
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// The outcome of the whole story.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioReport {
    pub honest: TaskRunReport,
    pub tampered: TaskRunReport,
    /// `countersign verify --require-verified` on the honest TaskRun's attestation.
    pub verify: CliReport,
}

impl ScenarioReport {
    /// Each way the outcome differs from what the demo expects; empty when all is as it should
    /// be.
    pub fn unexpected(&self) -> Vec<String> {
        self.rows()
            .into_iter()
            .filter(|row| !row.ok)
            .map(|row| format!("{}: {}, expected {}", row.what, row.got, row.expected))
            .collect()
    }

    /// The result table.
    pub fn summary(&self) -> String {
        let mut text = String::from("\n== Result ==\n");
        for row in self.rows() {
            text.push_str(&format!(
                "  {:<4} {:<52} {} (expected {})\n",
                if row.ok { "ok" } else { "FAIL" },
                row.what,
                row.got,
                row.expected
            ));
        }
        text
    }

    fn rows(&self) -> Vec<Row> {
        let honest_ok = matches!(self.honest.attested, Attested::Verified { .. })
            && self.honest.annotation == "verified";
        let tampered_ok = matches!(
            self.tampered.attested,
            Attested::Rejected {
                reason: ReasonCode::SignatureInvalid,
                ..
            }
        ) && self.tampered.annotation == "rejected";
        vec![
            Row {
                what: format!("TaskRun {}/{}", self.honest.namespace, self.honest.name),
                got: format!(
                    "{} (annotation {})",
                    self.honest.attested.label(),
                    self.honest.annotation
                ),
                expected: "verified".to_owned(),
                ok: honest_ok,
            },
            Row {
                what: format!("TaskRun {}/{}", self.tampered.namespace, self.tampered.name),
                got: format!(
                    "{} (annotation {})",
                    self.tampered.attested.label(),
                    self.tampered.annotation
                ),
                expected: "rejected with signature_invalid".to_owned(),
                ok: tampered_ok,
            },
            Row {
                what: format!("countersign verify on {}", self.honest.name),
                got: match self.verify.exit_code {
                    Some(code) => format!("exit status {code}"),
                    None => "killed by a signal".to_owned(),
                },
                expected: "exit status 0".to_owned(),
                ok: self.verify.exit_code == Some(0),
            },
        ]
    }
}

struct Row {
    what: String,
    got: String,
    expected: String,
    ok: bool,
}

/// Why the scenario could not be played to its end.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{action}")]
    Files {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("step {step}: the signer failed: {detail}\n{logs}")]
    Signer {
        step: String,
        detail: String,
        logs: String,
    },
    #[error("step {step} wrote no {result} to tamper with")]
    NothingToTamper { step: String, result: String },
    /// A wait timed out: what was awaited, and the log tails of the services concerned.
    #[error("{wait}\n{logs}")]
    Wait { wait: WaitError, logs: String },
    #[error("running `{command}`")]
    Command {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
}

fn files_error(action: String) -> impl FnOnce(std::io::Error) -> ScenarioError {
    move |source| ScenarioError::Files { action, source }
}

/// Now, as Kubernetes writes times (RFC 3339, seconds).
fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Now, as Tekton's entrypoint writes `StartedAt`.
fn now_millis() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// What the signer printed.
struct Signed {
    entries: Vec<MessageEntry>,
    summary: String,
}

impl Demo {
    /// Plays the story: the honest TaskRun, `countersign verify` on its attestation, the
    /// tampered TaskRun; then prints the result table.
    pub async fn play(&self) -> Result<ScenarioReport, ScenarioError> {
        let honest = self.play_taskrun(&HONEST, 1).await?;
        let verify = self.verify_with_cli(&honest).await?;
        let tampered = self.play_taskrun(&TAMPERED, 2).await?;
        self.show_with_cli(&tampered).await?;
        let report = ScenarioReport {
            honest,
            tampered,
            verify,
        };
        self.reporter.plain(report.summary());
        Ok(report)
    }

    async fn play_taskrun(
        &self,
        plan: &TaskRunPlan,
        number: usize,
    ) -> Result<TaskRunReport, ScenarioError> {
        let reporter = &self.reporter;
        reporter.heading(format!(
            "TaskRun {number} of 2: {NAMESPACE}/{}, {}",
            plan.name, plan.title
        ));
        let taskrun = self.cluster.create_taskrun(plan.name).await?;
        reporter.line(
            Origin::Kube,
            format!(
                "created TaskRun {}/{} (uid {}) from fixtures/tekton/taskrun/{TASKRUN_FIXTURE}",
                taskrun.namespace, taskrun.name, taskrun.uid
            ),
        );
        let start_time = now();
        let pod = self.cluster.create_pod(&taskrun).await?;
        reporter.line(
            Origin::Kube,
            format!(
                "created Pod {} (uid {}) bound to node {}, labelled tekton.dev/taskRun={} and \
                 tekton.dev/taskRunUID={}, as Tekton's controller does",
                pod.name,
                pod.uid,
                self.cluster.node(),
                taskrun.name,
                taskrun.uid
            ),
        );
        let mut steps: Vec<(StepSpec, StepState)> = taskrun
            .steps
            .iter()
            .map(|spec| (spec.clone(), StepState::Waiting))
            .collect();
        self.update_statuses(
            &taskrun,
            &pod.name,
            &start_time,
            Phase::Pending,
            "Pending",
            &steps,
        )
        .await?;
        reporter.line(Origin::Kube, "TaskRun Pending: the pod is initializing");

        // The pod's own copy of the signer: the only process the agent matches to its entry.
        let pod_dir = self.settings.pods_dir.join(&pod.uid);
        let results_dir = pod_dir.join("results");
        tokio::fs::create_dir_all(&results_dir)
            .await
            .map_err(files_error(format!("creating {}", results_dir.display())))?;
        let signer = pod_dir.join("countersign-signer");
        tokio::fs::copy(&self.binaries.signer, &signer)
            .await
            .map_err(files_error(format!(
                "copying {} to {}",
                self.binaries.signer.display(),
                signer.display()
            )))?;
        reporter.line(
            Origin::Step,
            format!(
                "the pod's signer is {}: the path the registrar's selector template names",
                signer.display()
            ),
        );

        let running_at = now();
        for (_, state) in &mut steps {
            *state = StepState::Running {
                started_at: running_at.clone(),
            };
        }
        self.update_statuses(
            &taskrun,
            &pod.name,
            &start_time,
            Phase::Running,
            "Running",
            &steps,
        )
        .await?;
        reporter.line(
            Origin::Kube,
            "Pod Running (as the kubelet reports it), TaskRun Running (as Tekton does)",
        );

        let declared: Vec<&str> = taskrun
            .declared
            .iter()
            .map(|result| result.name.as_str())
            .collect();
        let declared = declared.join(",");
        for index in 0..steps.len() {
            let spec = steps[index].0.clone();
            let step_started = now();
            let started_at_entry = now_millis();
            let writes = STEP_RESULTS
                .iter()
                .find(|(step, _)| *step == spec.name)
                .map(|(_, writes)| *writes)
                .unwrap_or_default();
            for (name, value) in writes {
                let path = results_dir.join(name);
                tokio::fs::write(&path, value)
                    .await
                    .map_err(files_error(format!("writing {}", path.display())))?;
            }
            let names: Vec<&str> = writes.iter().map(|(name, _)| *name).collect();
            reporter.line(
                Origin::Step,
                format!(
                    "{}: wrote [{}] to {}",
                    spec.name,
                    names.join(", "),
                    results_dir.display()
                ),
            );
            reporter.line(
                Origin::Step,
                format!(
                    "{}: countersign-signer --results {declared} signs them as the pod's workload\n\
                     (it waits until the registrar's entry for this pod reaches the agent) ...",
                    spec.name
                ),
            );
            let began = Instant::now();
            let signed = self
                .run_signer(&signer, &results_dir, &declared, &spec.name)
                .await?;
            reporter.line(
                Origin::Step,
                format!(
                    "{}: {} ({:.1}s)",
                    spec.name,
                    signed.summary,
                    began.elapsed().as_secs_f64()
                ),
            );
            let mut entries = signed.entries;
            if let Some(tamper) = plan.tamper.filter(|tamper| tamper.step == spec.name) {
                let entry = entries
                    .iter_mut()
                    .find(|entry| {
                        entry.key == tamper.result && entry.entry_type == RESULT_ENTRY_TYPE
                    })
                    .ok_or_else(|| ScenarioError::NothingToTamper {
                        step: spec.name.clone(),
                        result: tamper.result.to_owned(),
                    })?;
                reporter.line(
                    Origin::Step,
                    format!(
                        "{}: TAMPERING after signing: {} {} -> {}",
                        spec.name, tamper.result, entry.value, tamper.value
                    ),
                );
                entry.value = tamper.value.to_owned();
            }
            entries.push(MessageEntry {
                key: "StartedAt".to_owned(),
                value: started_at_entry,
                entry_type: INTERNAL_ENTRY_TYPE,
            });
            // Plain strings and integers always serialize.
            let pod_message = serde_json::to_string(&entries).unwrap_or_default();
            let message_bytes = pod_message.len();
            steps[index].1 = StepState::Terminated(Terminated {
                started_at: step_started,
                finished_at: now(),
                container_id: format!("containerd://{}-{}", pod.uid, spec.container),
                taskrun_message: taskrun_message(&entries),
                pod_message,
            });
            self.update_statuses(
                &taskrun,
                &pod.name,
                &start_time,
                Phase::Running,
                "Running",
                &steps,
            )
            .await?;
            reporter.line(
                Origin::Kube,
                format!(
                    "{} terminated: its termination message ({message_bytes} bytes) carries the \
                     signed set, in the Pod's status and the TaskRun's status.steps",
                    spec.container
                ),
            );
        }

        self.update_statuses(
            &taskrun,
            &pod.name,
            &start_time,
            Phase::Succeeded,
            "Succeeded",
            &steps,
        )
        .await?;
        reporter.line(
            Origin::Kube,
            "Pod Succeeded; TaskRun Succeeded, its status.results merged from the steps' messages",
        );

        self.await_outcome(&taskrun, &pod.uid).await
    }

    /// Patches the pod's status, then the TaskRun's, as the kubelet and then Tekton would.
    async fn update_statuses(
        &self,
        taskrun: &CreatedTaskRun,
        pod_name: &str,
        start_time: &str,
        phase: Phase,
        pod_phase: &str,
        steps: &[(StepSpec, StepState)],
    ) -> Result<(), ClusterError> {
        self.cluster
            .patch_pod_status(pod_name, pod_status(pod_phase, start_time, steps))
            .await?;
        self.cluster
            .patch_taskrun_status(
                &taskrun.name,
                taskrun_status(taskrun, pod_name, start_time, phase, steps, &now()),
            )
            .await
    }

    /// Runs the pod's signer over `results_dir` and returns what it printed.
    async fn run_signer(
        &self,
        signer: &Path,
        results_dir: &Path,
        declared: &str,
        step: &str,
    ) -> Result<Signed, ScenarioError> {
        let endpoint = self.settings.agent_endpoint.clone();
        let args: Vec<String> = vec![
            "--results-dir".into(),
            results_dir.display().to_string(),
            "--results".into(),
            declared.to_owned(),
            "--socket".into(),
            endpoint,
            "--timeout".into(),
            SIGNER_TIMEOUT.into(),
            "--print-termination-message".into(),
            "--no-write".into(),
        ];
        let signer_failed = |detail: String| ScenarioError::Signer {
            step: step.to_owned(),
            detail,
            logs: self.logs_of(&[ServiceKind::Watcher, ServiceKind::Registrar], true),
        };
        // A freshly copied executable can be "busy" for a moment while another thread's child
        // still holds the copy's descriptor between fork and exec; only that is retried.
        let run = wait::until(
            "the pod's copy of the signer to be executable",
            Duration::from_secs(10),
            || {
                let mut command = tokio::process::Command::new(signer);
                command.args(&args).stdin(Stdio::null()).kill_on_drop(true);
                for name in inherited_overrides() {
                    command.env_remove(name);
                }
                async move {
                    match tokio::time::timeout(WAIT_TIMEOUT, command.output()).await {
                        Ok(Err(error)) if error.raw_os_error() == Some(nix::libc::ETXTBSY) => None,
                        other => Some(other),
                    }
                }
            },
        )
        .await
        .map_err(|error| signer_failed(error.to_string()))?;
        let output = match run {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => return Err(signer_failed(format!("it did not start: {error}"))),
            Err(_) => {
                return Err(signer_failed(format!("no answer within {WAIT_TIMEOUT:?}")));
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if !output.status.success() {
            return Err(signer_failed(format!("{}: {stderr}", output.status)));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let entries: Vec<MessageEntry> = serde_json::from_str(stdout.trim()).map_err(|error| {
            signer_failed(format!("its output is not a termination message: {error}"))
        })?;
        let summary = stderr
            .lines()
            .find_map(|line| line.strip_prefix("countersign-signer: "))
            .unwrap_or("signed")
            .to_owned();
        Ok(Signed { entries, summary })
    }

    /// Waits for everything the system does once the TaskRun finished: the verdict, the
    /// pod's entry registered and released, the delivery to the sink, the annotation.
    async fn await_outcome(
        &self,
        taskrun: &CreatedTaskRun,
        pod_uid: &str,
    ) -> Result<TaskRunReport, ScenarioError> {
        let uid = taskrun.uid.as_str();
        let reporter = &self.reporter;
        reporter.line(
            Origin::Demo,
            "awaiting the attestor's verdict, the registrar's release of the pod's entry, the \
             relay's delivery and the TaskRun's annotation ...",
        );
        let attested = self
            .observer
            .wait_for(
                &format!(
                    "the attestation of TaskRun {}/{}",
                    taskrun.namespace, taskrun.name
                ),
                WAIT_TIMEOUT,
                |observed| attestation_of(observed, uid),
            )
            .await
            .map_err(|source| {
                self.wait_failed(source, &[ServiceKind::Watcher, ServiceKind::Attestor])
            })?;
        let workload_entry = self
            .observer
            .wait_for(
                &format!("the registrar's entry for pod {pod_uid}"),
                WAIT_TIMEOUT,
                |observed| workload_entry_id(observed, uid, true),
            )
            .await
            .map_err(|source| {
                self.wait_failed(source, &[ServiceKind::Watcher, ServiceKind::Registrar])
            })?;
        self.observer
            .wait_for(
                &format!("the registrar to release entry {workload_entry}"),
                WAIT_TIMEOUT,
                |observed| workload_entry_id(observed, uid, false),
            )
            .await
            .map_err(|source| {
                self.wait_failed(source, &[ServiceKind::Watcher, ServiceKind::Registrar])
            })?;
        let delivery_id = format!("{uid}:attestation");
        self.observer
            .wait_for(
                &format!("the relay to deliver {delivery_id} to the sink"),
                WAIT_TIMEOUT,
                |observed| {
                    observed
                        .deliveries
                        .iter()
                        .find(|delivery| delivery.id == delivery_id)
                        .cloned()
                },
            )
            .await
            .map_err(|source| self.wait_failed(source, &[ServiceKind::Relay]))?;
        let annotation = wait::until(
            &format!(
                "the attestor to annotate TaskRun {}/{} with {VERDICT_ANNOTATION}",
                taskrun.namespace, taskrun.name
            ),
            WAIT_TIMEOUT,
            || async {
                self.cluster
                    .taskrun_annotation(&taskrun.name, VERDICT_ANNOTATION)
                    .await
                    .ok()
                    .flatten()
            },
        )
        .await
        .map_err(|source| self.wait_failed(source, &[ServiceKind::Attestor]))?;
        reporter.line(
            Origin::Kube,
            format!(
                "TaskRun {}/{} is annotated {VERDICT_ANNOTATION}={annotation} by the attestor",
                taskrun.namespace, taskrun.name
            ),
        );
        Ok(TaskRunReport {
            namespace: taskrun.namespace.clone(),
            name: taskrun.name.clone(),
            uid: uid.to_owned(),
            attested,
            workload_entry,
            annotation,
        })
    }

    /// `countersign get --json` of the TaskRun's attestation into a file, SPIRE's bundle into
    /// another, and `countersign verify --require-verified` on them.
    async fn verify_with_cli(&self, taskrun: &TaskRunReport) -> Result<CliReport, ScenarioError> {
        let reporter = &self.reporter;
        reporter.heading(format!(
            "countersign verify: the stored attestation of {}, checked offline",
            taskrun.name
        ));
        reporter.line(
            Origin::Cli,
            format!("countersign is {}", self.binaries.countersign.display()),
        );
        let nats = self.nats.url();
        let target = format!("{}/{}", taskrun.namespace, taskrun.name);
        let attestation = self
            .dir()
            .join("attestations")
            .join(format!("{}.json", taskrun.name));
        let get = self
            .countersign(&["get", &target, "--json", "--nats-url", &nats])
            .await?;
        if get.exit_code != Some(0) {
            return Err(ScenarioError::CommandFailed {
                command: get.command,
                status: format!("{:?}", get.exit_code),
                stderr: get.stderr,
            });
        }
        tokio::fs::write(&attestation, &get.stdout)
            .await
            .map_err(files_error(format!("writing {}", attestation.display())))?;
        reporter.line(
            Origin::Cli,
            format!(
                "$ {} > {}\nthe stored attestation event, {} bytes",
                get.command,
                attestation.display(),
                get.stdout.len()
            ),
        );

        let bundle = self.dir().join("trust-bundle.pem");
        let socket = self.spire.server_socket_path();
        let server = &countersign_test_support::peers().spire_server.path;
        let socket_text = socket.display().to_string();
        let bundle_args = [
            "bundle",
            "show",
            "-socketPath",
            socket_text.as_str(),
            "-format",
            "pem",
        ];
        let bundle_run = run_command(server, &bundle_args, "spire-server").await?;
        if bundle_run.exit_code != Some(0) {
            return Err(ScenarioError::CommandFailed {
                command: bundle_run.command,
                status: format!("{:?}", bundle_run.exit_code),
                stderr: bundle_run.stderr,
            });
        }
        tokio::fs::write(&bundle, &bundle_run.stdout)
            .await
            .map_err(files_error(format!("writing {}", bundle.display())))?;
        reporter.line(
            Origin::Cli,
            format!(
                "$ {} > {}\nSPIRE's trust bundle, {} CA certificate(s)",
                bundle_run.command,
                bundle.display(),
                bundle_run.stdout.matches("BEGIN CERTIFICATE").count()
            ),
        );

        let attestation_text = attestation.display().to_string();
        let bundle_text = bundle.display().to_string();
        let verify = self
            .countersign(&[
                "verify",
                "--attestation",
                &attestation_text,
                "--bundle",
                &bundle_text,
                "--trust-domain",
                TRUST_DOMAIN,
                "--require-verified",
            ])
            .await?;
        reporter.line(Origin::Cli, format!("$ {}", verify.command));
        reporter.block(&verify.stdout);
        if !verify.stderr.trim().is_empty() {
            reporter.block(&verify.stderr);
        }
        reporter.line(
            Origin::Cli,
            match verify.exit_code {
                Some(0) => "exit status 0: signed by the attestor's SVID, which chains to SPIRE's \
                            bundle, and the verdict is verified"
                    .to_owned(),
                Some(code) => format!("exit status {code}: NOT accepted"),
                None => "killed by a signal".to_owned(),
            },
        );
        Ok(verify)
    }

    /// `countersign get` of the TaskRun's attestation, readable.
    async fn show_with_cli(&self, taskrun: &TaskRunReport) -> Result<(), ScenarioError> {
        self.reporter.heading(format!(
            "countersign get: the stored attestation of {}",
            taskrun.name
        ));
        let nats = self.nats.url();
        let target = format!("{}/{}", taskrun.namespace, taskrun.name);
        let get = self
            .countersign(&["get", &target, "--nats-url", &nats])
            .await?;
        self.reporter
            .line(Origin::Cli, format!("$ {}", get.command));
        self.reporter.block(&get.stdout);
        if !get.stderr.trim().is_empty() {
            self.reporter.block(&get.stderr);
        }
        Ok(())
    }

    /// Runs the `countersign` binary, the demo's environment overrides removed.
    async fn countersign(&self, args: &[&str]) -> Result<CliReport, ScenarioError> {
        run_command(&self.binaries.countersign, args, "countersign").await
    }

    fn wait_failed(&self, wait: WaitError, services: &[ServiceKind]) -> ScenarioError {
        ScenarioError::Wait {
            wait,
            logs: self.logs_of(services, false),
        }
    }

    /// The log tails of `services` (and of the spire-agent when `agent`), for an error message.
    fn logs_of(&self, services: &[ServiceKind], agent: bool) -> String {
        let mut text = String::new();
        for service in self
            .services
            .iter()
            .filter(|service| services.contains(&service.kind()))
        {
            text.push_str(&format!(
                "---- {} log tail ({}){} ----\n{}\n",
                service.kind().binary_name(),
                service.log_path().display(),
                if service.is_running() { "" } else { ", EXITED" },
                service.log_tail()
            ));
        }
        if agent {
            text.push_str(&format!(
                "---- spire-agent log tail ({}) ----\n{}\n",
                self.spire.agent_log_path().display(),
                self.spire.agent_log_tail()
            ));
        }
        text
    }
}

/// Runs `program args` (shown as `shown_as args`) without the demo's environment overrides.
async fn run_command(
    program: &Path,
    args: &[&str],
    shown_as: &str,
) -> Result<CliReport, ScenarioError> {
    let command_line = format!("{shown_as} {}", args.join(" "));
    let mut command = tokio::process::Command::new(program);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for name in inherited_overrides() {
        command.env_remove(name);
    }
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .map_err(|_| ScenarioError::Command {
            command: command_line.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {COMMAND_TIMEOUT:?}"),
            ),
        })?
        .map_err(|source| ScenarioError::Command {
            command: command_line.clone(),
            source,
        })?;
    Ok(CliReport {
        command: command_line,
        exit_code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// The verdict of TaskRun `uid`, once its attestation event was seen.
pub(crate) fn attestation_of(observed: &Observed, uid: &str) -> Option<Attested> {
    observed.events.iter().find_map(|event| match &event.data {
        AnyEvent::AttestationVerified(data) if data.taskrun.uid == uid => {
            Some(match data.verdict {
                Verdict::Verified => Attested::Verified {
                    results: data
                        .subjects
                        .iter()
                        .map(|subject| subject.name.clone())
                        .collect(),
                    signed_by: data.spiffe_id.clone(),
                },
                Verdict::NoResults => Attested::NoResults,
            })
        }
        AnyEvent::AttestationRejected(data) if data.taskrun.uid == uid => {
            Some(Attested::Rejected {
                reason: data.reason,
                step: data.step.clone(),
                message: data.message.clone(),
            })
        }
        _ => None,
    })
}

/// The id of the workload entry registered (or, with `registered` false, released) for
/// TaskRun `uid`, once its audit event was seen.
pub(crate) fn workload_entry_id(
    observed: &Observed,
    uid: &str,
    registered: bool,
) -> Option<String> {
    observed.events.iter().find_map(|event| {
        let entry = match (&event.data, registered) {
            (AnyEvent::EntryRegistered(data), true) => &data.entry,
            (AnyEvent::EntryReleased(data), false) => &data.entry,
            _ => return None,
        };
        (entry.kind == EntryKind::Workload
            && entry
                .taskrun
                .as_ref()
                .is_some_and(|taskrun| taskrun.uid == uid))
        .then(|| entry.entry_id.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(honest: Attested, tampered: Attested, exit_code: Option<i32>) -> ScenarioReport {
        let taskrun = |name: &str, attested: Attested, annotation: &str| TaskRunReport {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            attested,
            workload_entry: "countersign.pod.x".into(),
            annotation: annotation.into(),
        };
        ScenarioReport {
            honest: taskrun("a", honest, "verified"),
            tampered: taskrun("b", tampered, "rejected"),
            verify: CliReport {
                command: "countersign verify".into(),
                exit_code,
                stdout: String::new(),
                stderr: String::new(),
            },
        }
    }

    fn verified() -> Attested {
        Attested::Verified {
            results: vec!["commit".into()],
            signed_by: None,
        }
    }

    fn rejected(reason: ReasonCode) -> Attested {
        Attested::Rejected {
            reason,
            step: Some("build".into()),
            message: "m".into(),
        }
    }

    #[test]
    fn the_expected_outcome_has_nothing_unexpected() {
        let report = report(verified(), rejected(ReasonCode::SignatureInvalid), Some(0));
        assert!(report.unexpected().is_empty(), "{:?}", report.unexpected());
        assert!(!report.summary().contains("FAIL"));
    }

    #[test]
    fn another_reason_a_rejected_honest_run_or_a_failed_verify_are_each_unexpected() {
        let wrong_reason = report(verified(), rejected(ReasonCode::ResultsMismatch), Some(0));
        assert_eq!(wrong_reason.unexpected().len(), 1);
        let honest_rejected = report(
            rejected(ReasonCode::SignatureInvalid),
            rejected(ReasonCode::SignatureInvalid),
            Some(0),
        );
        assert_eq!(honest_rejected.unexpected().len(), 1);
        let tampered_verified = report(verified(), verified(), Some(0));
        assert_eq!(tampered_verified.unexpected().len(), 1);
        let verify_failed = report(verified(), rejected(ReasonCode::SignatureInvalid), Some(1));
        assert_eq!(verify_failed.unexpected().len(), 1);
        assert!(verify_failed.summary().contains("FAIL"));
    }

    #[test]
    fn the_tampered_plan_changes_a_result_the_build_step_writes() {
        let tamper = TAMPERED.tamper.expect("a tamper");
        let (_, writes) = STEP_RESULTS
            .iter()
            .find(|(step, _)| *step == tamper.step)
            .expect("the step writes results");
        let (_, original) = writes
            .iter()
            .find(|(name, _)| *name == tamper.result)
            .expect("the step writes the result");
        assert_ne!(*original, tamper.value);
        assert!(HONEST.tamper.is_none());
    }
}
