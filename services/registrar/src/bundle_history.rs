//! The trust bundle history: the registrar owns the SPIRE server connection, so it watches the
//! X.509 trust bundle the server publishes (`Bundle/GetBundle`, polled every
//! `[bundle_history] poll_interval`) and records every distinct one, append-only, in the
//! `{PREFIX}_TRUST_BUNDLES` bucket (a key per trust domain and sequence number, written
//! create-if-absent, never updated or deleted; the record format is
//! `countersign_verdict::bundle_history`, which `countersign verify` and
//! `countersign bundles export` read). A new record is announced on
//! `{p}.trust.bundle-rotated.{trust domain}`, after it is durable, with the CAs the new bundle
//! revokes (tainted, or removed while still valid).
//!
//! A different CA set under an already-recorded sequence number is refused: the record stays
//! as it was, the refusal is logged at error and counted, and nothing is published (SPIRE must
//! raise the sequence number whenever the bundle changes, so this means a second server or a
//! restored datastore disagrees with the history).
//!
//! Publishing is at least once: a record found already stored but not yet announced by this
//! process (a crash between the write and the PubAck, or a restart) is announced again under
//! the same id, which the stream drops within its duplicate window.

use std::time::Duration;

use chrono::Utc;
use countersign_events::data::{BundleAuthority, TrustBundleRotated};
use countersign_events::kv::{Bucket, Created, Key, KvError, SnapshotValue};
use countersign_events::{KvConfig, KvSpec, PublishError, Publisher};
use countersign_runtime::config::ConfigError;
use countersign_runtime::error_chain;
use countersign_spire_api::{GetBundleError, SpireServerClient};
use countersign_verdict::bundle_history::{
    BUCKET, BundleHistory, BundleRecord, HistoryError, RecordError,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// `[bundle_history]`: recording the trust bundles SPIRE publishes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundleHistoryConfig {
    /// Whether the registrar records the bundle history. Default `true`.
    pub enabled: bool,
    /// How often the server's bundle is read. Default `10s` (SPIRE prepares a CA long before
    /// it activates it, so a bundle is recorded before anything is signed under its new CA).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The most bytes the bucket holds. Default 256 MiB (a few kB a bundle).
    pub max_bytes: i64,
    /// The bucket's replicas. Default 1.
    pub replicas: usize,
}

impl Default for BundleHistoryConfig {
    fn default() -> BundleHistoryConfig {
        BundleHistoryConfig {
            enabled: true,
            poll_interval: Duration::from_secs(10),
            max_bytes: 256 * 1024 * 1024,
            replicas: 1,
        }
    }
}

impl BundleHistoryConfig {
    /// Refuses a zero poll interval.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.poll_interval.is_zero() {
            return Err(ConfigError::invalid(
                "bundle_history.poll_interval",
                "must be more than zero",
            ));
        }
        Ok(())
    }
}

/// The history bucket's declaration: values kept forever, every revision kept (a key is
/// written once; history is what would show a tampering write).
pub fn history_bucket(config: &BundleHistoryConfig) -> KvSpec {
    KvSpec {
        name: BUCKET.to_owned(),
        description: "Countersign: every trust bundle the SPIRE server published, by sequence \
                      number (append-only)"
            .to_owned(),
        config: KvConfig {
            history: 64,
            max_age: Duration::ZERO,
            max_bytes: config.max_bytes,
            replicas: config.replicas,
            limit_markers: None,
        },
    }
}

/// What one look at the server's bundle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A bundle not seen before was recorded and announced.
    New(BundleRecord),
    /// The bundle is already recorded (and announced).
    Unchanged {
        /// Its sequence number.
        sequence_number: u64,
    },
    /// The history holds a different CA set under this sequence number: refused.
    Conflict {
        /// The sequence number.
        sequence_number: u64,
    },
}

/// Why a bundle could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordBundleError {
    /// The server did not answer.
    #[error("reading the SPIRE server's bundle")]
    Spire(#[from] GetBundleError),
    /// The bundle cannot be recorded (no X.509 authority).
    #[error("the bundle cannot be recorded")]
    Record(#[from] RecordError),
    /// The bucket failed.
    #[error("the bundle history bucket")]
    Kv(#[from] KvError),
    /// The stored history does not read back.
    #[error("the stored bundle history")]
    History(#[from] HistoryError),
    /// The announcement was not acknowledged.
    #[error("publishing the bundle-rotated event")]
    Publish(#[from] PublishError),
}

impl RecordBundleError {
    /// Whether the next poll may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RecordBundleError::Spire(error) => error.is_transient(),
            RecordBundleError::Kv(error) => error.is_transient(),
            RecordBundleError::Publish(error) => error.is_transient(),
            RecordBundleError::Record(_) | RecordBundleError::History(_) => false,
        }
    }
}

/// The bundle history's metrics.
#[derive(Debug, Clone, Default)]
pub struct BundleHistoryMetrics {
    recorded: Counter,
    conflicts: Counter,
    errors: Counter,
}

impl BundleHistoryMetrics {
    /// Counters at zero.
    pub fn new() -> BundleHistoryMetrics {
        BundleHistoryMetrics::default()
    }

    /// Registers the counters.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "countersign_registrar_bundles_recorded",
            "Trust bundles recorded in the bundle history",
            self.recorded.clone(),
        );
        registry.register(
            "countersign_registrar_bundle_conflicts",
            "Bundles refused: a different CA set under an already-recorded sequence number",
            self.conflicts.clone(),
        );
        registry.register(
            "countersign_registrar_bundle_history_errors",
            "Polls of the trust bundle that failed",
            self.errors.clone(),
        );
    }
}

/// Records the server's trust bundles (see the module docs).
#[derive(Debug, Clone)]
pub struct BundleRecorder {
    spire: SpireServerClient,
    bucket: Bucket<BundleRecord>,
    publisher: Publisher,
    metrics: BundleHistoryMetrics,
    /// The last sequence number this process announced (or saw refused).
    announced: Option<u64>,
}

impl BundleRecorder {
    /// A recorder reading `spire`, writing `bucket` (bound with [`history_bucket`]) and
    /// announcing through `publisher`.
    pub fn new(
        spire: SpireServerClient,
        bucket: Bucket<BundleRecord>,
        publisher: Publisher,
        metrics: BundleHistoryMetrics,
    ) -> BundleRecorder {
        BundleRecorder {
            spire,
            bucket,
            publisher,
            metrics,
            announced: None,
        }
    }

    /// Reads the server's bundle once and records it if it is new.
    #[tracing::instrument(name = "record_trust_bundle", skip_all)]
    pub async fn record_current(&mut self) -> Result<Recorded, RecordBundleError> {
        let bundle = self.spire.get_bundle().await?;
        let record = BundleRecord::new(
            &bundle.trust_domain,
            bundle.sequence_number,
            bundle
                .x509_authorities
                .into_iter()
                .map(|authority| (authority.der, authority.tainted)),
            Utc::now(),
        )?;
        let key = record.key()?;
        let sequence_number = record.sequence_number;
        match self.bucket.create(&key, &record).await? {
            Created::Stored(_) => {
                self.metrics.recorded.inc();
                self.announce(&record).await?;
                tracing::info!(
                    trust_domain = %record.trust_domain,
                    sequence_number,
                    digest = %record.digest,
                    authorities = record.authorities.len(),
                    "recorded a new trust bundle"
                );
                Ok(Recorded::New(record))
            }
            Created::AlreadyExisted(existing) if !same_bundle(&existing, &record) => {
                if self.announced != Some(sequence_number) {
                    self.metrics.conflicts.inc();
                    tracing::error!(
                        trust_domain = %record.trust_domain,
                        sequence_number,
                        recorded_digest = %existing.digest,
                        served_digest = %record.digest,
                        "the SPIRE server serves a different CA set under an already-recorded \
                         sequence number; refused, the history keeps the recorded one"
                    );
                    self.announced = Some(sequence_number);
                }
                Ok(Recorded::Conflict { sequence_number })
            }
            Created::AlreadyExisted(existing) => {
                if self.announced != Some(sequence_number) {
                    self.announce(&existing).await?;
                }
                Ok(Recorded::Unchanged { sequence_number })
            }
        }
    }

    /// Publishes the bundle-rotated event of `record`, with what it revokes.
    async fn announce(&mut self, record: &BundleRecord) -> Result<(), RecordBundleError> {
        let history = self.domain_history(&record.trust_domain).await?;
        let previous_sequence_number = history
            .records()
            .map(|recorded| recorded.sequence_number)
            .filter(|sequence| *sequence < record.sequence_number)
            .max();
        let revoked_authorities = history
            .newly_revoked(record)
            .into_iter()
            .map(|(authority, how)| {
                tracing::warn!(
                    trust_domain = %record.trust_domain,
                    sequence_number = record.sequence_number,
                    %authority,
                    ?how,
                    "a CA was revoked: attestations signed under it no longer verify"
                );
                authority
            })
            .collect();
        self.publisher
            .publish_data(TrustBundleRotated {
                trust_domain: record.trust_domain.clone(),
                sequence_number: record.sequence_number,
                bundle_digest: record.digest.clone(),
                authorities: record
                    .authorities
                    .iter()
                    .map(|authority| BundleAuthority {
                        sha256: authority.sha256.clone(),
                        tainted: authority.tainted,
                    })
                    .collect(),
                previous_sequence_number,
                revoked_authorities,
                first_seen: record.first_seen,
            })
            .await?;
        self.announced = Some(record.sequence_number);
        Ok(())
    }

    /// Every record of `trust_domain` in the bucket.
    async fn domain_history(&self, trust_domain: &str) -> Result<BundleHistory, RecordBundleError> {
        let prefix = Key::raw("bundle")?.with_token(trust_domain, "trust_domain")?;
        let records = self
            .bucket
            .snapshot(Some(&prefix))
            .await?
            .into_iter()
            .filter_map(|entry| match entry.value {
                SnapshotValue::Value(record) => Some(record),
                SnapshotValue::Deleted | SnapshotValue::Corrupt(_) => None,
            });
        Ok(BundleHistory::new(records)?)
    }

    /// Polls until `token` is cancelled. Failures are logged and retried at the next poll.
    pub async fn run(mut self, interval: Duration, token: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(error) = self.record_current().await {
                self.metrics.errors.inc();
                if error.is_transient() {
                    tracing::warn!(error = %error_chain(&error), "recording the trust bundle failed; retrying at the next poll");
                } else {
                    tracing::error!(error = %error_chain(&error), "recording the trust bundle failed");
                }
            }
        }
    }
}

/// Whether two records of one sequence number hold the same bundle: the same CAs with the same
/// taint flags.
fn same_bundle(recorded: &BundleRecord, served: &BundleRecord) -> bool {
    let flags = |record: &BundleRecord| {
        record
            .authorities
            .iter()
            .map(|authority| (authority.der.clone(), authority.tainted))
            .collect::<std::collections::BTreeSet<_>>()
    };
    recorded.same_authorities(served) && flags(recorded) == flags(served)
}
