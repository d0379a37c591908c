//! Exporter: attaches the Sigstore bundles the attestor stored (`{P}_EXPORTS`) to the images
//! they are about, in their OCI registries, as OCI 1.1 referrers, so that `cosign tree`,
//! `cosign verify-attestation`, `oras discover`, Kyverno and policy-controller find them next to
//! the image.
//!
//! The durable consumer `exporter` takes `{p}.export.stored.>`. For each artifact VSA the event
//! names (an image digest from Tekton's type hints), the exporter reads the VSA's bundle from
//! the KV bucket and pushes, to the image's repository, an image manifest with `subject` = the
//! image and the bundle as its one layer, laid out as cosign v3 writes an attestation in the
//! bundle format. A registry with the Referrers API indexes it; for one without, the exporter
//! also updates the OCI tag-schema index `sha256-<hex>`. The event is acked only once the
//! registry accepted every push. Signing stays in the attestor: the exporter only distributes.
//!
//! Artifact URIs come from TaskRun results, which are outside input: only registries on the
//! configured allow-list are pushed to; an artifact in any other is dead-lettered with its
//! reason (`registry_not_allowed`).
//!
//! - [`config`]: [`ExporterConfig`]: `[nats]`, `[bus]`, `[consumer]`, `[push]` and the
//!   `[[registries]]` allow-list.
//! - [`reference`]: an artifact URI and digest, parsed and checked ([`ImageTarget`]).
//! - [`credentials`]: registry credentials from a Docker config file (`auths`).
//! - [`referrer`]: the referrer manifest and the tag-schema index, as bytes.
//! - [`registry`]: the small OCI distribution client (blobs, manifests, referrers, auth).
//! - [`attach`]: the consumer's handler: one `export.stored` event, every artifact attached.
//! - [`metrics`]: the exporter's metrics, `countersign_exporter_*`.
//! - [`service`]: [`run`]: connect, bind, consume until shutdown.

pub mod attach;
pub mod config;
pub mod credentials;
pub mod metrics;
pub mod reference;
pub mod referrer;
pub mod registry;
pub mod service;

pub use config::ExporterConfig;
pub use reference::ImageTarget;
pub use service::{RunError, SERVICE_NAME, run};
