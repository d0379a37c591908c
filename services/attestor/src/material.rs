//! The attestor's identity material: its own SVID (to sign attestations) and the trust bundles
//! (to verify results), from the Workload API through `countersign_identity`'s
//! [`WorkloadSource`], rebuilt on every update the source reports, so rotated SVIDs and bundles
//! (SPIRE's CA rotation, federation changes) are used as soon as the agent sends them.
//!
//! Handlers read the current [`Material`] from a [`MaterialWatch`]; none yet, or an expired SVID,
//! is a transient failure (the message is retried later).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use countersign_identity::svid::{SigningSvid, TrustBundleSet};
use countersign_identity::workload::{WorkloadEndpoint, WorkloadError, WorkloadSource};
use countersign_runtime::{Context, error_chain};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::AttestorMetrics;

/// The SVID that signs attestations and the bundles results are checked against, taken together.
#[derive(Debug)]
pub struct Material {
    /// The attestor's SVID.
    pub svid: SigningSvid,
    /// The trust bundles (own trust domain and federated ones).
    pub bundles: TrustBundleSet,
    /// SHA-256 (hex) of `bundles`.
    pub bundle_digest: String,
}

impl Material {
    /// Material from an SVID and bundles.
    pub fn new(svid: SigningSvid, bundles: TrustBundleSet) -> Material {
        let bundle_digest = bundles.digest().to_hex();
        Material {
            svid,
            bundles,
            bundle_digest,
        }
    }

    /// The source's current material.
    pub fn from_source(source: &WorkloadSource) -> Result<Material, WorkloadError> {
        Ok(Material::new(source.signing_svid()?, source.bundles()?))
    }
}

/// Why there is no usable material.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    /// The Workload API has not delivered an SVID and bundle yet, or withdrew them.
    #[error("no SVID and trust bundle from the Workload API yet")]
    NotYet,
    /// The attestor's SVID expired and the agent has not sent a new one.
    #[error("the attestor's SVID expired at {not_after}")]
    Expired {
        /// When it expired.
        not_after: chrono::DateTime<Utc>,
    },
}

/// Reads the current material. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MaterialWatch {
    receiver: watch::Receiver<Option<Arc<Material>>>,
}

/// Writes the current material.
#[derive(Debug)]
pub struct MaterialSender {
    sender: watch::Sender<Option<Arc<Material>>>,
}

/// A channel of material, empty at first.
pub fn material_channel() -> (MaterialSender, MaterialWatch) {
    let (sender, receiver) = watch::channel(None);
    (MaterialSender { sender }, MaterialWatch { receiver })
}

impl MaterialSender {
    /// Replaces the current material (`None`: none usable).
    pub fn publish(&self, material: Option<Material>) {
        self.sender.send_replace(material.map(Arc::new));
    }
}

impl MaterialWatch {
    /// The current material, if usable now.
    pub fn current(&self) -> Result<Arc<Material>, MaterialError> {
        let material = self
            .receiver
            .borrow()
            .clone()
            .ok_or(MaterialError::NotYet)?;
        let not_after = material.svid.leaf().not_after();
        if not_after <= Utc::now() {
            return Err(MaterialError::Expired { not_after });
        }
        Ok(material)
    }

    /// Waits until material is present (or the sender is gone).
    pub async fn wait_first(&mut self) -> bool {
        self.receiver.wait_for(Option::is_some).await.is_ok()
    }
}

/// Connects to the Workload API, retrying (each attempt waits up to `attempt_timeout` for the
/// first SVID) until it succeeds or shutdown begins (`None`).
pub async fn connect_with_retry<C>(
    ctx: &Context<C>,
    endpoint: &WorkloadEndpoint,
    attempt_timeout: Duration,
) -> Option<WorkloadSource> {
    let what = format!(
        "getting the first SVID from the Workload API at {}",
        endpoint.as_str()
    );
    // Every failure is retried (the agent may come up at any time), so this is never `Err`.
    ctx.startup_step(
        &what,
        |_: &WorkloadError| true,
        || WorkloadSource::connect(endpoint, attempt_timeout),
    )
    .await
    .ok()
    .flatten()
}

/// Publishes the source's material now and after every update until `token` is cancelled or
/// the source closes; then shuts the source down.
pub async fn keep_current(
    source: WorkloadSource,
    sender: MaterialSender,
    metrics: AttestorMetrics,
    token: CancellationToken,
) {
    let mut updates = source.updates();
    refresh(&source, &sender, &metrics);
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            changed = updates.changed() => match changed {
                Ok(sequence) => {
                    tracing::info!(sequence, "the Workload API sent new material");
                    refresh(&source, &sender, &metrics);
                }
                Err(error) => {
                    tracing::error!(%error, "the Workload API source closed");
                    sender.publish(None);
                    break;
                }
            },
        }
    }
    source.shutdown().await;
}

fn refresh(source: &WorkloadSource, sender: &MaterialSender, metrics: &AttestorMetrics) {
    match Material::from_source(source) {
        Ok(material) => {
            let authorities = material
                .bundles
                .trust_domains()
                .filter_map(|trust_domain| material.bundles.authorities(trust_domain))
                .map(<[Vec<u8>]>::len)
                .sum();
            metrics.material_updated(authorities, material.svid.leaf().not_after().timestamp());
            tracing::debug!(
                spiffe_id = %material.svid.spiffe_id(),
                not_after = %material.svid.leaf().not_after(),
                bundle_digest = %material.bundle_digest,
                "using the attestor's SVID and trust bundles"
            );
            sender.publish(Some(material));
        }
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "the Workload API material is unusable");
            sender.publish(None);
        }
    }
}
