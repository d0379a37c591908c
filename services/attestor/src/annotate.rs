//! The optional TaskRun annotation (off by default), so `kubectl` users see the verdict:
//! `countersign.dev/verdict` (`verified`, `rejected` or `no_results`) and
//! `countersign.dev/attestation-digest` (`sha256:<hex>` of the attestation's DSSE envelope, see
//! `countersign_verdict::attestation::envelope_digest`), written with a JSON merge patch on
//! `metadata.annotations`. Needs `patch` on `taskruns.tekton.dev`.
//!
//! The patch carries the TaskRun's UID: the API server refuses it when the TaskRun of that name
//! is another one (deleted and re-created), and a TaskRun that is gone is not an error.

use std::path::Path;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};

/// The verdict annotation.
pub const VERDICT_ANNOTATION: &str = "countersign.dev/verdict";
/// The attestation digest annotation.
pub const DIGEST_ANNOTATION: &str = "countersign.dev/attestation-digest";

/// The field manager of the patch.
const FIELD_MANAGER: &str = "countersign-attestor";

/// Why the annotator could not be set up or a patch failed.
#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    /// The kubeconfig could not be read.
    #[error("reading the kubeconfig")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    /// No in-cluster or default configuration.
    #[error("finding the Kubernetes configuration")]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built.
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
    /// The API server refused the attestor (it needs `patch` on `taskruns.tekton.dev`).
    #[error(
        "not allowed to patch TaskRun {namespace}/{name} (the attestor needs `patch` on taskruns.tekton.dev)"
    )]
    Forbidden {
        /// The namespace.
        namespace: String,
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The patch failed.
    #[error("patching TaskRun {namespace}/{name}")]
    Patch {
        /// The namespace.
        namespace: String,
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// What a patch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Annotated {
    /// The TaskRun carries the annotations.
    Patched,
    /// The TaskRun is gone, or the name now belongs to another TaskRun.
    Skipped,
}

/// Patches TaskRun annotations.
#[derive(Clone)]
pub struct Annotator {
    client: kube::Client,
}

impl std::fmt::Debug for Annotator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Annotator").finish_non_exhaustive()
    }
}

fn taskrun_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tekton.dev", "v1", "TaskRun"),
        "taskruns",
    )
}

impl Annotator {
    /// An annotator with `client`.
    pub fn new(client: kube::Client) -> Annotator {
        Annotator { client }
    }

    /// An annotator from a kubeconfig file, or else the in-cluster / default configuration.
    pub async fn from_config(kubeconfig: Option<&Path>) -> Result<Annotator, AnnotateError> {
        let config = match kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(AnnotateError::Kubeconfig)?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(AnnotateError::Kubeconfig)?
            }
            None => kube::Config::infer().await.map_err(AnnotateError::Infer)?,
        };
        Ok(Annotator::new(
            kube::Client::try_from(config).map_err(AnnotateError::Client)?,
        ))
    }

    /// Writes the verdict and digest onto TaskRun `namespace/name` whose UID is `uid`.
    pub async fn annotate(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        verdict: &str,
        digest_hex: &str,
    ) -> Result<Annotated, AnnotateError> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &taskrun_resource());
        let patch = serde_json::json!({
            "metadata": {
                "uid": uid,
                "annotations": {
                    VERDICT_ANNOTATION: verdict,
                    DIGEST_ANNOTATION: format!("sha256:{digest_hex}"),
                }
            }
        });
        match api
            .patch(
                name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(Annotated::Patched),
            // Gone (404), or the name belongs to another TaskRun now (the UID in the patch does
            // not match: 409 or 422).
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409 | 422) => {
                tracing::info!(
                    namespace,
                    name,
                    code = status.code,
                    "not annotating: the TaskRun is gone or was re-created"
                );
                Ok(Annotated::Skipped)
            }
            Err(source) if matches!(&source, kube::Error::Api(status) if matches!(status.code, 401 | 403)) => {
                Err(AnnotateError::Forbidden {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    source,
                })
            }
            Err(source) => Err(AnnotateError::Patch {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            }),
        }
    }
}

impl AnnotateError {
    /// Whether trying again may help (setup errors and a missing permission do not heal).
    pub fn is_transient(&self) -> bool {
        matches!(self, AnnotateError::Patch { .. })
    }
}
