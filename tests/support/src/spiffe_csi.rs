//! The SPIFFE CSI driver on a real [`Node`], as the shipped manifests deploy it: pods get the SPIRE
//! agent's socket directory through an inline `csi.spiffe.io` volume (what Tekton adds to every
//! TaskRun pod with `enforce-nonfalsifiability: spire`).
//!
//! - `spiffe-csi-driver` (v0.2.6, built from the Go module proxy) runs in the node's mount
//!   namespace, so the bind mounts it makes into the kubelet's pod volume directories are the ones
//!   containerd and runc see;
//! - `kubelet-plugin-registrar` (our own program, see `tests/peers/spiffe-csi/main.go`) serves the
//!   kubelet's plugin-registration protocol on a socket in `<kubelet root>/plugins_registry`, in
//!   the role of the Kubernetes CSI project's node-driver-registrar, which the Go module proxy
//!   does not serve here; the kubelet then talks CSI to the driver itself;
//! - a `CSIDriver` object (`attachRequired: false`, `podInfoOnMount: true`, ephemeral volumes
//!   only) tells the kubelet inline volumes of that driver are allowed.
//!
//! [`SpiffeCsi::start`] returns once the kubelet has registered the driver: node `worker-1`'s
//! `CSINode` object lists `csi.spiffe.io`.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::storage::v1::{CSIDriver, CSINode};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::node::{NODE_NAME, Node, NodeError};
use crate::process::{PeerFailed, PeerProcess};
use crate::{peers, wait};

/// The driver's name, as Tekton's pods ask for it.
pub const DRIVER_NAME: &str = "csi.spiffe.io";

/// How long the kubelet may take to register the driver.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped process gets before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Why the driver could not be started or registered.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    #[error("starting {0}")]
    Start(&'static str, #[source] NodeError),
    #[error("creating the CSIDriver object {DRIVER_NAME}")]
    CsiDriver(#[source] kube::Error),
    #[error("the kubelet did not register {DRIVER_NAME}")]
    NotRegistered(#[source] PeerFailed),
}

/// The running driver and its registration. Dropping it stops both.
#[derive(Debug)]
pub struct SpiffeCsi {
    registrar: PeerProcess,
    driver: PeerProcess,
}

impl SpiffeCsi {
    /// Starts the driver serving `workload_api_dir` (the directory holding only the agent's
    /// socket), registers it with the node's kubelet and creates its `CSIDriver` object.
    pub async fn start(node: &Node, workload_api_dir: &Path) -> Result<SpiffeCsi, CsiError> {
        let plugin_dir = node.dir().join("csi");
        std::fs::create_dir_all(&plugin_dir).map_err(|source| {
            CsiError::Start(
                "spiffe-csi-driver",
                NodeError::Write {
                    path: plugin_dir.clone(),
                    source,
                },
            )
        })?;
        let csi_socket = plugin_dir.join("csi.sock");
        let driver = node
            .spawn_inside(
                "spiffe-csi-driver",
                &peers().spiffe_csi_driver.path,
                &[
                    format!("-node-id={NODE_NAME}"),
                    format!("-csi-socket-path={}", csi_socket.display()),
                    format!("-workload-api-socket-dir={}", workload_api_dir.display()),
                    format!("-plugin-name={DRIVER_NAME}"),
                ],
                &[],
            )
            .await
            .map_err(|error| CsiError::Start("spiffe-csi-driver", error))?;

        let csi_drivers: Api<CSIDriver> = Api::all(node.client());
        let object: CSIDriver = serde_json::from_value(json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSIDriver",
            "metadata": { "name": DRIVER_NAME },
            "spec": {
                "attachRequired": false,
                "podInfoOnMount": true,
                "fsGroupPolicy": "None",
                "volumeLifecycleModes": ["Ephemeral"],
            },
        }))
        .map_err(|error| CsiError::CsiDriver(kube::Error::SerdeError(error)))?;
        match csi_drivers.create(&PostParams::default(), &object).await {
            Ok(_) => {}
            Err(kube::Error::Api(response)) if response.code == 409 => {}
            Err(error) => return Err(CsiError::CsiDriver(error)),
        }

        let registration_socket = node
            .kubelet_root_dir()
            .join("plugins_registry")
            .join(format!("{DRIVER_NAME}-reg.sock"));
        let registrar = node
            .spawn_inside(
                "kubelet-plugin-registrar",
                &peers().kubelet_plugin_registrar.path,
                &[
                    format!("-driver-name={DRIVER_NAME}"),
                    format!("-csi-endpoint={}", csi_socket.display()),
                    format!("-registration-socket={}", registration_socket.display()),
                ],
                &[],
            )
            .await
            .map_err(|error| CsiError::Start("kubelet-plugin-registrar", error))?;
        let csi = SpiffeCsi { registrar, driver };

        let nodes: Api<CSINode> = Api::all(node.client());
        let outcome = wait::until(
            "the kubelet to register csi.spiffe.io",
            REGISTER_TIMEOUT,
            || {
                let nodes = nodes.clone();
                let running = csi.driver.is_running() && csi.registrar.is_running();
                async move {
                    if !running {
                        return Some(false);
                    }
                    let registered =
                        nodes
                            .get_opt(NODE_NAME)
                            .await
                            .ok()
                            .flatten()
                            .is_some_and(|csi_node| {
                                csi_node
                                    .spec
                                    .drivers
                                    .iter()
                                    .any(|driver| driver.name == DRIVER_NAME)
                            });
                    registered.then_some(true)
                }
            },
        )
        .await;
        match outcome {
            Ok(true) => Ok(csi),
            Ok(false) => Err(CsiError::NotRegistered(PeerFailed::new(
                if csi.driver.is_running() {
                    &csi.registrar
                } else {
                    &csi.driver
                },
                "exited before the kubelet registered the driver",
            ))),
            Err(error) => Err(CsiError::NotRegistered(PeerFailed::from_wait(
                &csi.registrar,
                error,
            ))),
        }
    }

    /// The driver's log tail, for a failing test.
    pub fn driver_log_tail(&self) -> String {
        self.driver.log_tail()
    }
}

impl Drop for SpiffeCsi {
    fn drop(&mut self) {
        self.registrar.stop(STOP_GRACE);
        self.driver.stop(STOP_GRACE);
    }
}
