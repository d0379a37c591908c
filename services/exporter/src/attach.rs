//! The handler of the `exporter` consumer: one `export.stored` event, every artifact VSA it
//! names attached to its image, and the typed outcome the consumer loop of
//! `countersign-events` settles by its one rule.
//!
//! | what happened | handler returns | the consumer loop then |
//! |---|---|---|
//! | every artifact attached (or none to attach) | `Ok` | acks |
//! | the KV bucket or a registry unavailable, the index contended | `Transient` | naks with backoff; on the last delivery dead-letters `retries_exhausted` |
//! | an artifact's registry is not on the allow-list | `Poison` `registry_not_allowed` (after attaching the allowed ones) | dead-letters `rejected` |
//! | an artifact URI or digest that is not a reference | `Poison` `artifact_reference_invalid` | dead-letters `rejected` |
//! | a bundle the manifest names is not stored | `Poison` `bundle_missing` | dead-letters `rejected` |
//! | the image is not in the registry, credentials refused, another 4xx, a bad answer | `Poison` with the [`RegistryErrorKind::code`] | dead-letters `rejected` |
//!
//! Only artifact VSAs are attached: their statement's subject is the image digest, which is
//! what `cosign verify-attestation` checks against the image. (The results attestation and the
//! TaskRun's own VSA are about the TaskRun; they stay in `{P}_EXPORTS`, and the artifact VSA
//! names the results attestation in `inputAttestations`.) Attaching is idempotent: a retried
//! event pushes the same bytes, and the tag-schema index lists each referrer once.

use std::sync::Arc;
use std::time::Instant;

use countersign_events::data::{ExportStored, ExportedVsa};
use countersign_events::{Classify, Delivery, Event, Handler, HandlerError};
use countersign_identity::vsa::VSA_PREDICATE_TYPE;
use countersign_runtime::error_chain;
use countersign_verdict::export_store::ExportStore;
use countersign_verdict::store::StoreError;

use crate::config::ExporterConfig;
use crate::credentials::{DockerConfig, DockerConfigError, DockerConfigFile};
use crate::metrics::{AttachOutcome, ExporterMetrics};
use crate::reference::{ImageTarget, ReferenceError};
use crate::registry::{Indexed, RegistryClient, RegistryError, RegistryErrorKind, Repository};

/// Why one artifact could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The artifact's registry is not on the allow-list.
    #[error("the registry {host} of {artifact} is not on the exporter's allow-list")]
    NotAllowed { host: String, artifact: String },
    /// The artifact's URI or digest is not an image reference.
    #[error("the artifact {uri:?} is not an image reference")]
    Reference {
        uri: String,
        #[source]
        source: ReferenceError,
    },
    /// The exports bucket could not be read.
    #[error("reading the exports bucket")]
    Store(#[from] StoreError),
    /// The manifest names a bundle that is not stored.
    #[error("the bundle {key} the export names is not stored")]
    BundleMissing { key: String },
    /// The Docker config file could not be read.
    #[error("reading the registry credentials")]
    Credentials(#[from] DockerConfigError),
    /// The registry failed.
    #[error("attaching to {target}")]
    Registry {
        target: String,
        #[source]
        source: RegistryError,
    },
}

impl AttachError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            AttachError::Store(error) => error.is_transient(),
            // A Secret being rotated: the next delivery reads the file again.
            AttachError::Credentials(_) => true,
            AttachError::Registry { source, .. } => source.is_transient(),
            AttachError::NotAllowed { .. }
            | AttachError::Reference { .. }
            | AttachError::BundleMissing { .. } => false,
        }
    }

    /// The dead-letter code of a permanent failure.
    pub fn code(&self) -> &'static str {
        match self {
            AttachError::NotAllowed { .. } => "registry_not_allowed",
            AttachError::Reference { .. } => "artifact_reference_invalid",
            AttachError::Store(_) => "exports_unreadable",
            AttachError::BundleMissing { .. } => "bundle_missing",
            AttachError::Credentials(_) => "credentials_unreadable",
            AttachError::Registry { source, .. } => source.kind().code(),
        }
    }

    /// The registry failure's kind, if it is one.
    pub fn registry_kind(&self) -> Option<RegistryErrorKind> {
        match self {
            AttachError::Registry { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

impl Classify for AttachError {
    fn poison_code(&self) -> Option<&'static str> {
        (!self.is_transient()).then(|| self.code())
    }
}

/// The exporter's handler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Exporter {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: Arc<ExporterConfig>,
    store: ExportStore,
    client: RegistryClient,
    /// The Docker config file `push.docker_config` names, if any.
    credentials: Option<DockerConfigFile>,
    metrics: ExporterMetrics,
}

impl Exporter {
    /// A handler pushing with `client` to the registries `config` allows, reading bundles from
    /// `store`.
    pub fn new(
        config: Arc<ExporterConfig>,
        store: ExportStore,
        client: RegistryClient,
        metrics: ExporterMetrics,
    ) -> Exporter {
        Exporter {
            shared: Arc::new(Shared {
                credentials: config.push.docker_config.clone().map(DockerConfigFile::new),
                config,
                store,
                client,
                metrics,
            }),
        }
    }

    /// Attaches every artifact VSA of one export (see the module docs).
    #[tracing::instrument(name = "attach_export", skip_all, fields(ce.id = %event.id, attempt = delivery.attempt))]
    pub async fn attach_export(
        &self,
        event: Event<ExportStored>,
        delivery: Delivery,
    ) -> Result<(), AttachError> {
        let export = &event.data;
        // Sorted before any push: the allowed artifacts are attached, then a refused one (if any)
        // dead-letters the event, so the dead letter says why and nothing is retried for it.
        let mut allowed = Vec::new();
        let mut refused = None;
        for vsa in &export.vsas {
            let Some(artifact) = &vsa.artifact else {
                continue;
            };
            let target = ImageTarget::parse(&artifact.uri, &artifact.digest).map_err(|source| {
                self.shared.metrics.record(AttachOutcome::FailedPermanent);
                AttachError::Reference {
                    uri: artifact.uri.chars().take(256).collect(),
                    source,
                }
            })?;
            if let Some(registry) = self.shared.config.registry(&target.host) {
                allowed.push((vsa, target, registry.plain_http));
            } else {
                self.shared.metrics.record(AttachOutcome::NotAllowed);
                tracing::warn!(artifact = %target, "the artifact's registry is not on the allow-list; not pushed");
                if refused.is_none() {
                    refused = Some(AttachError::NotAllowed {
                        host: target.host.clone(),
                        artifact: target.to_string(),
                    });
                }
            }
        }
        if !allowed.is_empty() {
            let credentials = match &self.shared.credentials {
                Some(file) => file.current().await?,
                None => Arc::default(),
            };
            for (vsa, target, plain_http) in allowed {
                let started = Instant::now();
                match self
                    .attach_one(vsa, &target, plain_http, &credentials, export)
                    .await
                {
                    Ok(indexed) => {
                        self.shared.metrics.observe_duration(started.elapsed());
                        self.shared.metrics.record(match indexed {
                            Indexed::ReferrersApi => AttachOutcome::AttachedReferrersApi,
                            Indexed::TagSchema { .. } => AttachOutcome::AttachedTagSchema,
                        });
                    }
                    Err(error) => {
                        self.shared.metrics.record(if error.is_transient() {
                            AttachOutcome::FailedTransient
                        } else {
                            AttachOutcome::FailedPermanent
                        });
                        return Err(error);
                    }
                }
            }
        }
        match refused {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Attaches the bundle of `vsa` to `target` (over plain HTTP when its allow-list entry says so).
    async fn attach_one(
        &self,
        vsa: &ExportedVsa,
        target: &ImageTarget,
        plain_http: bool,
        credentials: &DockerConfig,
        export: &ExportStored,
    ) -> Result<Indexed, AttachError> {
        let bundle = self.shared.store.bundle(&vsa.key).await?.ok_or_else(|| {
            AttachError::BundleMissing {
                key: vsa.key.clone(),
            }
        })?;
        let registry_error = |source| AttachError::Registry {
            target: target.to_string(),
            source,
        };
        let repository = Repository::of(target, plain_http, credentials.credentials(&target.host))
            .map_err(registry_error)?;
        let (indexed, referrer) = self
            .shared
            .client
            .attach(
                &repository,
                &target.digest,
                &bundle,
                VSA_PREDICATE_TYPE,
                export.attested_at,
            )
            .await
            .map_err(registry_error)?;
        tracing::info!(artifact = %target, referrer = %referrer.digest, ?indexed, "bundle attached");
        Ok(indexed)
    }
}

impl Handler<ExportStored> for Exporter {
    async fn handle(
        &self,
        event: Event<ExportStored>,
        delivery: Delivery,
    ) -> Result<(), HandlerError> {
        self.attach_export(event, delivery).await.map_err(|error| {
            if error.is_transient() {
                tracing::warn!(error = %error_chain(&error), "attaching failed; will retry");
            }
            error.into_handler_error()
        })
    }
}
