//! Tekton Pipelines' real controller on a real [`Node`]: its CRDs and ConfigMaps as released (read
//! from the pinned module's `config/` directory in the Go module cache), its entrypoint and nop
//! images built from the pinned binaries, and the controller and the events controller (which sends
//! Tekton's CloudEvents to `config-events`' sink) run as processes with the flags and environment
//! of their release Deployments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use crate::images::{ImageEntry, ImageSpec};
use crate::node::{BUSYBOX_IMAGE, Node, NodeError};
use crate::process::{PeerProcess, SpawnError};
use crate::{peers, ports};

/// The namespace Tekton's controller and ConfigMaps live in.
pub const TEKTON_NAMESPACE: &str = "tekton-pipelines";
/// The entrypoint image (`/ko-app/entrypoint`, as ko lays it out).
pub const ENTRYPOINT_IMAGE: &str = "localhost/countersign/tekton-entrypoint:1";
/// The nop image (`/ko-app/nop`).
pub const NOP_IMAGE: &str = "localhost/countersign/tekton-nop:1";

/// Why Tekton could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TektonError {
    #[error("`go mod download` of Tekton Pipelines failed: {output}")]
    ModuleSource { output: String },
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("installing Tekton's CRDs")]
    Crds(#[source] crate::kube::CrdError),
    #[error("applying {what}")]
    Apply {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("importing Tekton's images")]
    Images(#[source] NodeError),
    #[error("starting Tekton's controller")]
    Spawn(#[source] SpawnError),
}

/// A running Tekton controller and events controller.
#[derive(Debug)]
pub struct TektonController {
    process: PeerProcess,
    events: PeerProcess,
}

impl TektonController {
    /// Installs Tekton's CRDs and ConfigMaps on `node`, with `feature_flags` and `config` (ConfigMap
    /// name → data entries) merged over the released defaults, imports its images and starts the
    /// controller.
    pub async fn start(
        node: &Node,
        feature_flags: &BTreeMap<String, String>,
        config: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<TektonController, TektonError> {
        let source = module_dir().await?;
        let crds: Vec<PathBuf> = yaml_files(&source.join("config/300-crds"))?;
        node.kube()
            .install_crds(&crds)
            .await
            .map_err(TektonError::Crds)?;
        let client = node.client();
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": TEKTON_NAMESPACE }
        }))
        .map_err(|error| TektonError::Apply {
            what: "namespace".into(),
            source: kube::Error::SerdeError(error),
        })?;
        let _ = namespaces.create(&PostParams::default(), &namespace).await;
        let configmaps = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("", "v1", "ConfigMap"),
            "configmaps",
        );
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), TEKTON_NAMESPACE, &configmaps);
        let mut overrides = config.clone();
        overrides
            .entry("feature-flags".to_owned())
            .or_default()
            .extend(feature_flags.clone());
        for path in yaml_files(&source.join("config"))? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !(name.starts_with("config-") && name.ends_with(".yaml")) {
                continue;
            }
            for mut document in read_documents(&path)? {
                if document.get("kind").and_then(Value::as_str) != Some("ConfigMap") {
                    continue;
                }
                let Some(map_name) = document
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                else {
                    continue;
                };
                if let Some(data) = overrides.get(&map_name) {
                    let entries = document.as_object_mut().map(|object| {
                        object
                            .entry("data")
                            .or_insert(Value::Object(Default::default()))
                    });
                    if let Some(Value::Object(entries)) = entries {
                        for (key, value) in data {
                            entries.insert(key.clone(), Value::String(value.clone()));
                        }
                    }
                }
                api.patch(
                    &map_name,
                    &PatchParams::apply("countersign-test-support").force(),
                    &Patch::Apply(&document),
                )
                .await
                .map_err(|source| TektonError::Apply {
                    what: format!("ConfigMap {map_name}"),
                    source,
                })?;
            }
        }

        let entrypoint = ImageSpec::new(
            ENTRYPOINT_IMAGE,
            vec![
                ImageEntry::Directory {
                    path: "ko-app".into(),
                    mode: 0o755,
                },
                ImageEntry::File {
                    path: "ko-app/entrypoint".into(),
                    source: peers().tekton_entrypoint.path.clone(),
                    mode: 0o755,
                },
            ],
            &["/ko-app/entrypoint"],
        );
        let nop = ImageSpec::new(
            NOP_IMAGE,
            vec![
                ImageEntry::Directory {
                    path: "ko-app".into(),
                    mode: 0o755,
                },
                ImageEntry::File {
                    path: "ko-app/nop".into(),
                    source: peers().tekton_nop.path.clone(),
                    mode: 0o755,
                },
            ],
            &["/ko-app/nop"],
        );
        for image in [&entrypoint, &nop] {
            node.import_image(image)
                .await
                .map_err(TektonError::Images)?;
        }

        let kubeconfig = node.kube().kubeconfig_path().display().to_string();
        let unused = "localhost/countersign/unused:1";
        let args: Vec<String> = [
            "-kubeconfig",
            &kubeconfig,
            "-entrypoint-image",
            ENTRYPOINT_IMAGE,
            "-nop-image",
            NOP_IMAGE,
            "-shell-image",
            BUSYBOX_IMAGE,
            "-shell-image-win",
            unused,
            "-sidecarlogresults-image",
            unused,
            "-workingdirinit-image",
            unused,
            "-disable-ha",
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
        let envs: Vec<(String, String)> = [
            ("SYSTEM_NAMESPACE", TEKTON_NAMESPACE.to_owned()),
            ("METRICS_DOMAIN", "tekton.dev/pipeline".to_owned()),
            ("KUBERNETES_MIN_VERSION", "v1.28.0".to_owned()),
            ("CONFIG_DEFAULTS_NAME", "config-defaults".to_owned()),
            ("CONFIG_LOGGING_NAME", "config-logging".to_owned()),
            (
                "CONFIG_OBSERVABILITY_NAME",
                "config-observability".to_owned(),
            ),
            ("CONFIG_FEATURE_FLAGS_NAME", "feature-flags".to_owned()),
            (
                "CONFIG_LEADERELECTION_NAME",
                "config-leader-election-controller".to_owned(),
            ),
            ("CONFIG_SPIRE", "config-spire".to_owned()),
            ("PROBES_PORT", ports::free_port().to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        let process = PeerProcess::spawn(
            "tekton-controller",
            &peers().tekton_controller.path,
            &args,
            &envs,
            &node.dir().join("tekton-controller.log"),
        )
        .await
        .map_err(TektonError::Spawn)?;

        let events_envs: Vec<(String, String)> = [
            ("SYSTEM_NAMESPACE", TEKTON_NAMESPACE.to_owned()),
            ("KUBERNETES_MIN_VERSION", "v1.28.0".to_owned()),
            ("CONFIG_DEFAULTS_NAME", "config-defaults".to_owned()),
            ("CONFIG_LOGGING_NAME", "config-logging".to_owned()),
            (
                "CONFIG_OBSERVABILITY_NAME",
                "config-observability".to_owned(),
            ),
            (
                "CONFIG_LEADERELECTION_NAME",
                "config-leader-election-events".to_owned(),
            ),
            ("PROBES_PORT", ports::free_port().to_string()),
            ("PROFILING_PORT", ports::free_port().to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        let events = PeerProcess::spawn(
            "tekton-events",
            &peers().tekton_events.path,
            &["-kubeconfig".to_owned(), kubeconfig.clone()],
            &events_envs,
            &node.dir().join("tekton-events.log"),
        )
        .await
        .map_err(TektonError::Spawn)?;
        Ok(TektonController { process, events })
    }

    /// The release this controller was built from (`v1.15.0`).
    pub fn version() -> &'static str {
        &peers().tekton_controller.version
    }

    /// The events controller's log tail, for a failing test.
    pub fn events_log_tail(&self) -> String {
        self.events.log_tail()
    }

    /// The controller's log tail, for a failing test.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Whether the controller still runs.
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }
}

/// The pinned Tekton Pipelines module's source directory in the Go module cache (downloaded if the
/// cache lost it).
async fn module_dir() -> Result<PathBuf, TektonError> {
    let output = tokio::process::Command::new("go")
        .current_dir(countersign_peers::modules_dir().join("tekton"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly")
        .args(["mod", "download", "-json", "github.com/tektoncd/pipeline"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|error| TektonError::ModuleSource {
            output: error.to_string(),
        })?;
    let parsed: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    match parsed.get("Dir").and_then(Value::as_str) {
        Some(dir) if output.status.success() => Ok(PathBuf::from(dir)),
        _ => Err(TektonError::ModuleSource {
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        }),
    }
}

/// The `*.yaml` files of `dir`, sorted.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, TektonError> {
    let entries = std::fs::read_dir(dir).map_err(|source| TektonError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

fn read_documents(path: &Path) -> Result<Vec<Value>, TektonError> {
    let text = std::fs::read_to_string(path).map_err(|source| TektonError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_saphyr::from_multiple(&text).map_err(|source| TektonError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}
