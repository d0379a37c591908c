//! The bus topology, declared in code and applied at start-up: the four streams, the durable
//! consumers of each service, and KV buckets. Everything is created when missing and updated when
//! its configuration differs (streams and buckets that already match are only read), so N
//! replicas of a service start in any order, bind the same durable consumer and split its work.

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::{
    Context, CreateKeyValueError, CreateKeyValueErrorKind, CreateStreamError,
    CreateStreamErrorKind, GetStreamErrorKind,
};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{self, ConsumerError, ConsumerErrorKind, StorageType};

use crate::config::{BusConfig, ConsumerConfig, KvConfig, StreamLimits};
use crate::consume::DurableConsumer;
use crate::event::EventSource;
use crate::event_type::{EventType, Family};
use crate::metrics::EventMetrics;
use crate::publish::Publisher;
use crate::subject::{StreamKind, SubjectError, Subjects};

/// A durable consumer's declaration: its name, stream and filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// The durable name, shared by every replica of the service.
    pub name: String,
    /// The stream it reads.
    pub stream: StreamKind,
    /// The subjects it takes (wildcards allowed; they must not overlap).
    pub filter_subjects: Vec<String>,
    /// What it is for.
    pub description: String,
}

impl ConsumerSpec {
    /// The registrar: `scheduled`, `finished` and `deleted` TaskRun events.
    pub fn registrar(subjects: &Subjects) -> ConsumerSpec {
        ConsumerSpec {
            name: "registrar".into(),
            stream: StreamKind::TaskRuns,
            filter_subjects: [
                EventType::TaskRunScheduled,
                EventType::TaskRunFinished,
                EventType::TaskRunDeleted,
            ]
            .into_iter()
            .map(|event_type| subjects.events_of_type(event_type))
            .collect(),
            description: "registers and releases the SPIRE entries of TaskRun pods".into(),
        }
    }

    /// The attestor: `step-completed` and `finished` TaskRun events.
    pub fn attestor(subjects: &Subjects) -> ConsumerSpec {
        ConsumerSpec {
            name: "attestor".into(),
            stream: StreamKind::TaskRuns,
            filter_subjects: [EventType::StepCompleted, EventType::TaskRunFinished]
                .into_iter()
                .map(|event_type| subjects.events_of_type(event_type))
                .collect(),
            description: "verifies the signed results of finished TaskRuns".into(),
        }
    }

    /// The attestor's backlog lane: the attestor's subjects under its own durable name, for
    /// TaskRuns published long after they finished (each lane acks the other's events
    /// unhandled).
    pub fn attestor_backlog(subjects: &Subjects) -> ConsumerSpec {
        ConsumerSpec {
            name: "attestor-backlog".into(),
            description: "attests TaskRuns published long after they finished, throttled".into(),
            ..ConsumerSpec::attestor(subjects)
        }
    }

    /// The attestor's revocations: bundle-rotated events on the trust stream, to revoke the
    /// stored attestations signed under a CA SPIRE revoked.
    pub fn attestor_revocations(subjects: &Subjects) -> ConsumerSpec {
        ConsumerSpec {
            name: "attestor-revocations".into(),
            stream: StreamKind::Trust,
            filter_subjects: vec![subjects.events_of_type(EventType::TrustBundleRotated)],
            description: "revokes stored attestations signed under a CA SPIRE revoked".into(),
        }
    }

    /// The exporter: every `export.stored` event.
    pub fn exporter(subjects: &Subjects) -> ConsumerSpec {
        ConsumerSpec {
            name: "exporter".into(),
            stream: StreamKind::Attestations,
            filter_subjects: vec![subjects.events_of_type(EventType::ExportStored)],
            description: "attaches exported bundles to images in OCI registries as referrers"
                .into(),
        }
    }

    /// The relay: every attestation event.
    pub fn relay(subjects: &Subjects) -> ConsumerSpec {
        ConsumerSpec {
            name: "relay".into(),
            stream: StreamKind::Attestations,
            filter_subjects: vec![subjects.family_events(Family::Attestation)],
            description: "delivers attestation events to HTTP CloudEvents sinks".into(),
        }
    }
}

/// A KV bucket's declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvSpec {
    /// The bucket's name after the prefix (`[A-Za-z0-9_-]`): `attestations` gives
    /// `{PREFIX}_ATTESTATIONS`.
    pub name: String,
    /// What it holds.
    pub description: String,
    /// Its limits.
    pub config: KvConfig,
}

/// What [`Bus::ensure_stream`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamSetup {
    /// The stream did not exist and was created.
    Created,
    /// The stream existed with another configuration and was updated.
    Updated,
    /// The stream existed as configured.
    Unchanged,
}

/// Why the topology could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A name could not be built.
    #[error("building a name")]
    Name(#[from] SubjectError),
    /// A stream could not be read or created.
    #[error("getting or creating stream {stream}")]
    CreateStream {
        stream: String,
        #[source]
        source: CreateStreamError,
    },
    /// A stream could not be updated to the configuration.
    #[error("updating stream {stream}")]
    UpdateStream {
        stream: String,
        #[source]
        source: CreateStreamError,
    },
    /// The stream exists with memory storage; storage cannot be changed in place.
    #[error("stream {stream} exists with memory storage; it must be file storage (recreate it)")]
    StorageMismatch { stream: String },
    /// A consumer could not be created or updated.
    #[error("creating or updating consumer {consumer} on stream {stream}")]
    Consumer {
        consumer: String,
        stream: String,
        #[source]
        source: ConsumerError,
    },
    /// A KV bucket could not be created or updated.
    #[error("creating or updating KV bucket {bucket}")]
    KeyValue {
        bucket: String,
        #[source]
        source: CreateKeyValueError,
    },
}

impl SetupError {
    /// Whether trying again later may succeed (NATS unreachable, JetStream not ready, a timeout).
    pub fn is_transient(&self) -> bool {
        match self {
            SetupError::Name(_) | SetupError::StorageMismatch { .. } => false,
            SetupError::CreateStream { source, .. } | SetupError::UpdateStream { source, .. } => {
                matches!(
                    source.kind(),
                    CreateStreamErrorKind::JetStreamUnavailable
                        | CreateStreamErrorKind::TimedOut
                        | CreateStreamErrorKind::Response
                )
            }
            SetupError::Consumer { source, .. } => {
                matches!(
                    source.kind(),
                    ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request
                )
            }
            SetupError::KeyValue { source, .. } => {
                matches!(source.kind(), CreateKeyValueErrorKind::TimedOut)
            }
        }
    }
}

/// The bus: a JetStream context, the names, the configuration and the metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Bus {
    jetstream: Context,
    subjects: Subjects,
    config: BusConfig,
    metrics: EventMetrics,
}

impl Bus {
    /// The bus over a connected client. Fails when the configured prefix is invalid.
    pub fn new(
        client: async_nats::Client,
        config: BusConfig,
        metrics: EventMetrics,
    ) -> Result<Bus, SubjectError> {
        let subjects = Subjects::new(&config.prefix)?;
        Ok(Bus {
            jetstream: async_nats::jetstream::new(client),
            subjects,
            config,
            metrics,
        })
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &Context {
        &self.jetstream
    }

    /// The subject and stream names.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The configuration.
    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &EventMetrics {
        &self.metrics
    }

    /// A publisher of events from `source`.
    pub fn publisher(&self, source: EventSource) -> Publisher {
        Publisher::new(
            self.jetstream.clone(),
            self.subjects.clone(),
            source,
            self.metrics.clone(),
        )
    }

    fn limits(&self, kind: StreamKind) -> StreamLimits {
        match kind {
            StreamKind::TaskRuns => self.config.streams.taskruns,
            StreamKind::Registrations => self.config.streams.registrations,
            StreamKind::Attestations => self.config.streams.attestations,
            StreamKind::DeadLetter => self.config.streams.deadletter,
            StreamKind::Trust => self.config.streams.trust,
        }
    }

    /// The configuration a stream should have.
    pub fn stream_config(&self, kind: StreamKind) -> stream::Config {
        let limits = self.limits(kind);
        stream::Config {
            name: self.subjects.stream_name(kind),
            description: Some(format!(
                "Countersign {} events",
                kind.to_string().to_ascii_lowercase()
            )),
            subjects: self.subjects.stream_subjects(kind),
            storage: StorageType::File,
            max_age: limits.max_age,
            max_bytes: limits.max_bytes,
            duplicate_window: limits.duplicate_window,
            num_replicas: limits.replicas,
            ..Default::default()
        }
    }

    /// Creates every stream that is missing and updates every one that differs.
    pub async fn ensure_streams(&self) -> Result<(), SetupError> {
        for kind in StreamKind::ALL {
            self.ensure_stream(kind).await?;
        }
        Ok(())
    }

    /// Creates a stream if it is missing, or updates it if its configuration differs.
    pub async fn ensure_stream(&self, kind: StreamKind) -> Result<StreamSetup, SetupError> {
        let wanted = self.stream_config(kind);
        let name = wanted.name.clone();
        let existing = match self.jetstream.get_stream(&name).await {
            Ok(stream) => stream.cached_info().config.clone(),
            Err(error) if is_stream_not_found(&error) => {
                // Another replica may create it at the same moment: get-or-create settles the race.
                self.jetstream
                    .get_or_create_stream(wanted)
                    .await
                    .map_err(|source| SetupError::CreateStream {
                        stream: name,
                        source,
                    })?;
                return Ok(StreamSetup::Created);
            }
            Err(error) => {
                return Err(SetupError::CreateStream {
                    stream: name,
                    source: CreateStreamError::with_source(CreateStreamErrorKind::Response, error),
                });
            }
        };
        if existing.storage != StorageType::File {
            return Err(SetupError::StorageMismatch { stream: name });
        }
        let differs = existing.subjects != wanted.subjects
            || existing.max_age != wanted.max_age
            || existing.max_bytes != wanted.max_bytes
            || existing.duplicate_window != wanted.duplicate_window
            || existing.num_replicas.max(1) != wanted.num_replicas.max(1)
            || existing.description != wanted.description;
        if !differs {
            return Ok(StreamSetup::Unchanged);
        }
        let mut updated = existing;
        updated.subjects = wanted.subjects;
        updated.max_age = wanted.max_age;
        updated.max_bytes = wanted.max_bytes;
        updated.duplicate_window = wanted.duplicate_window;
        updated.num_replicas = wanted.num_replicas;
        updated.description = wanted.description;
        self.jetstream
            .update_stream(updated)
            .await
            .map_err(|source| SetupError::UpdateStream {
                stream: name,
                source,
            })?;
        Ok(StreamSetup::Updated)
    }

    /// Creates or updates a durable pull consumer and binds it. Every replica calling this with
    /// the same spec binds the same consumer and shares its messages.
    pub async fn ensure_consumer(
        &self,
        spec: &ConsumerSpec,
        config: &ConsumerConfig,
    ) -> Result<DurableConsumer, SetupError> {
        let stream_name = self.subjects.stream_name(spec.stream);
        let consumer_error = |source| SetupError::Consumer {
            consumer: spec.name.clone(),
            stream: stream_name.clone(),
            source,
        };
        let stream = self
            .jetstream
            .get_stream(&stream_name)
            .await
            .map_err(|source| {
                consumer_error(ConsumerError::with_source(
                    ConsumerErrorKind::Request,
                    source,
                ))
            })?;
        let consumer_config = pull::Config {
            durable_name: Some(spec.name.clone()),
            description: Some(spec.description.clone()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            // One delivery more than is handled, so a last attempt that never settled is
            // dead-lettered rather than dropped by the server (see `consume`).
            max_deliver: config.max_deliver.map_or(-1, |max| i64::from(max) + 1),
            filter_subjects: spec.filter_subjects.clone(),
            max_ack_pending: config.max_ack_pending,
            ..Default::default()
        };
        let consumer = stream
            .create_consumer(consumer_config)
            .await
            .map_err(consumer_error)?;
        Ok(DurableConsumer {
            name: spec.name.clone(),
            stream: stream_name,
            consumer,
            config: config.clone(),
            jetstream: self.jetstream.clone(),
            subjects: self.subjects.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Creates a KV bucket (file storage) if it is missing, or updates it if its configuration
    /// differs, and binds it. A bucket that is already as declared is only read: an unchanged
    /// restart sends no update, so a deployment can deny services the update permission on
    /// their buckets' streams.
    pub async fn ensure_kv(&self, spec: &KvSpec) -> Result<kv::Store, SetupError> {
        let bucket = self.subjects.kv_bucket_name(&spec.name)?;
        let config = kv::Config {
            bucket: bucket.clone(),
            description: spec.description.clone(),
            history: spec.config.history,
            max_age: spec.config.max_age,
            max_bytes: spec.config.max_bytes,
            storage: StorageType::File,
            num_replicas: spec.config.replicas,
            limit_markers: spec.config.limit_markers,
            ..Default::default()
        };
        let key_value_error = |source| SetupError::KeyValue {
            bucket: bucket.clone(),
            source,
        };
        match self.jetstream.get_stream(format!("KV_{bucket}")).await {
            Ok(stream) if kv_matches(&stream.cached_info().config, &config) => {
                return self
                    .jetstream
                    .get_key_value(&bucket)
                    .await
                    .map_err(|error| {
                        key_value_error(CreateKeyValueError::with_source(
                            CreateKeyValueErrorKind::JetStream,
                            error,
                        ))
                    });
            }
            // Missing (create it) or different (update it).
            Ok(_) => {}
            Err(error) if is_stream_not_found(&error) => {}
            Err(error) => {
                // A request that failed (NATS unreachable, a timeout) may succeed later.
                let kind = match error.kind() {
                    GetStreamErrorKind::Request => CreateKeyValueErrorKind::TimedOut,
                    _ => CreateKeyValueErrorKind::JetStream,
                };
                return Err(key_value_error(CreateKeyValueError::with_source(
                    kind, error,
                )));
            }
        }
        self.jetstream
            .create_or_update_key_value(config)
            .await
            .map_err(key_value_error)
    }
}

/// Whether a bucket's stream already has what `config` declares (with the defaults the client
/// and the server fill in: a history or replica count of 0 means 1).
fn kv_matches(existing: &stream::Config, config: &kv::Config) -> bool {
    existing.storage == config.storage
        && existing.max_messages_per_subject == config.history.max(1)
        && existing.max_age == config.max_age
        && existing.max_bytes == config.max_bytes
        && existing.num_replicas.max(1) == config.num_replicas.max(1)
        && existing.description.as_deref().unwrap_or_default() == config.description
        && existing.subject_delete_marker_ttl == config.limit_markers
        && existing.allow_message_ttl == config.limit_markers.is_some()
}

fn is_stream_not_found(error: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        async_nats::jetstream::context::GetStreamErrorKind::JetStream(inner)
            if inner.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}
