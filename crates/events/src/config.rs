//! Configuration of the bus (prefix, stream limits) and of a durable consumer, as serde structs
//! with documented defaults and unknown keys rejected. Durations are humantime strings (`2m`,
//! `14days`). What one value alone can get wrong (a prefix that is no subject token, a
//! concurrency of zero) is refused while deserializing, so every service refuses it at load,
//! naming the key.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::subject::{DEFAULT_PREFIX, Subjects};

/// The bus: which subjects and streams a deployment uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// The subject prefix, one token of `[A-Za-z0-9_-]`. Streams are `{PREFIX}_TASKRUNS` etc.
    /// Default: `countersign`. Checked when deserialized.
    #[serde(deserialize_with = "subject_prefix")]
    pub prefix: String,
    /// The limits of each stream.
    pub streams: StreamsConfig,
}

impl Default for BusConfig {
    fn default() -> BusConfig {
        BusConfig {
            prefix: DEFAULT_PREFIX.to_owned(),
            streams: StreamsConfig::default(),
        }
    }
}

/// The limits of the five streams.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// `{PREFIX}_TASKRUNS`: TaskRun lifecycle events.
    pub taskruns: StreamLimits,
    /// `{PREFIX}_REGISTRATIONS`: registration audit events.
    pub registrations: StreamLimits,
    /// `{PREFIX}_ATTESTATIONS`: attestation events.
    pub attestations: StreamLimits,
    /// `{PREFIX}_DEADLETTER`: dead letters.
    pub deadletter: StreamLimits,
    /// `{PREFIX}_TRUST`: trust bundle events.
    pub trust: StreamLimits,
}

/// The limits of one stream (always file storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamLimits {
    /// How long the stream remembers message ids to drop duplicates. Default: `10m` (longer
    /// than a watcher restart and resync, so a re-observed transition is dropped).
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long messages are kept. Default: `14days`.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The most bytes the stream keeps (oldest dropped first). Default: 1 GiB.
    pub max_bytes: i64,
    /// The number of replicas in a JetStream cluster. Default: 1.
    pub replicas: usize,
}

impl Default for StreamLimits {
    fn default() -> StreamLimits {
        StreamLimits {
            duplicate_window: Duration::from_secs(10 * 60),
            max_age: Duration::from_secs(14 * 24 * 60 * 60),
            max_bytes: 1024 * 1024 * 1024,
            replicas: 1,
        }
    }
}

/// How a service consumes from its durable consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    /// How long the server waits for an ack before redelivering. While a handler runs, the
    /// consumer tells the server it is still working (an in-progress ack) every third of this,
    /// so it can be short: a message whose handler died (the process was killed) is redelivered
    /// to another replica, or to the restarted one, this long after the last progress. Default:
    /// `5s`.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// How many times a message is delivered at most; on the last delivery a transient failure
    /// is dead-lettered as `retries_exhausted`. Default: 20 (also when the key is absent); `None`,
    /// no limit, can be set only in code.
    pub max_deliver: Option<u32>,
    /// The nak delay after the n-th failed delivery (the last entry repeats). Applied by the
    /// consumer with each nak rather than as the server's `backoff`, which would also shorten
    /// the ack wait of a handler that is merely slow. Default: `1s, 5s, 15s, 1m, 5m`.
    #[serde(with = "duration_list")]
    pub nak_backoff: Vec<Duration>,
    /// How many messages are handled at once by one replica, at least 1. Default: 16.
    #[serde(deserialize_with = "at_least_one")]
    pub concurrency: usize,
    /// How many messages may be delivered and unacknowledged across all replicas. Default: 1024.
    pub max_ack_pending: i64,
    /// The largest message body accepted, at least 1; larger ones are dead-lettered. Default: 1 MiB.
    #[serde(deserialize_with = "at_least_one")]
    pub max_payload_bytes: usize,
}

impl Default for ConsumerConfig {
    fn default() -> ConsumerConfig {
        ConsumerConfig {
            ack_wait: Duration::from_secs(5),
            max_deliver: Some(20),
            nak_backoff: [1, 5, 15, 60, 300]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            concurrency: 16,
            max_ack_pending: 1024,
            max_payload_bytes: 1024 * 1024,
        }
    }
}

/// A key-value bucket a service keeps state in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    /// How many values per key are kept. Default: 1.
    pub history: i64,
    /// How long values are kept; zero keeps them forever. Default: zero.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The most bytes the bucket holds; -1 for no limit. Default: 256 MiB.
    pub max_bytes: i64,
    /// The number of replicas. Default: 1.
    pub replicas: usize,
    /// Enables per-key TTLs (nats-server 2.11+): values and purge markers written with a TTL
    /// expire on their own, and markers the server leaves when `max_age` removes a value live
    /// this long. Unset (the default): no per-key TTLs.
    #[serde(with = "humantime_serde")]
    pub limit_markers: Option<Duration>,
}

impl Default for KvConfig {
    fn default() -> KvConfig {
        KvConfig {
            history: 1,
            max_age: Duration::ZERO,
            max_bytes: 256 * 1024 * 1024,
            replicas: 1,
            limit_markers: None,
        }
    }
}

/// A subject prefix, checked as [`Subjects::new`] checks it.
fn subject_prefix<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let prefix = String::deserialize(deserializer)?;
    Subjects::new(&prefix).map_err(serde::de::Error::custom)?;
    Ok(prefix)
}

/// A count that zero would make meaningless (no handler runs, no body fits).
fn at_least_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let count = usize::deserialize(deserializer)?;
    if count == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(count)
}

/// A list of humantime durations.
mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        durations: &[Duration],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            durations
                .iter()
                .map(|duration| humantime::format_duration(*duration).to_string()),
        )
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| humantime::parse_duration(text).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_to_missing_keys_and_unknown_keys_are_rejected() {
        let config: BusConfig = serde_json::from_str(
            r#"{"streams": {"taskruns": {"max_age": "1day", "replicas": 3}}}"#,
        )
        .unwrap();
        assert_eq!(config.prefix, "countersign");
        assert_eq!(config.streams.taskruns.max_age, Duration::from_secs(86_400));
        assert_eq!(config.streams.taskruns.replicas, 3);
        assert_eq!(
            config.streams.taskruns.duplicate_window,
            Duration::from_secs(600)
        );
        assert_eq!(config.streams.deadletter, StreamLimits::default());
        assert!(serde_json::from_str::<BusConfig>(r#"{"prefx": "x"}"#).is_err());
        assert!(serde_json::from_str::<StreamLimits>(r#"{"max_age": 5}"#).is_err());

        let consumer: ConsumerConfig = serde_json::from_str(
            r#"{"ack_wait": "2s", "nak_backoff": ["100ms", "1s"], "max_deliver": null}"#,
        )
        .unwrap();
        assert_eq!(consumer.ack_wait, Duration::from_secs(2));
        assert_eq!(
            consumer.nak_backoff,
            vec![Duration::from_millis(100), Duration::from_secs(1)]
        );
        assert_eq!(consumer.max_deliver, None);
        assert_eq!(consumer.concurrency, 16);
        assert!(serde_json::from_str::<ConsumerConfig>(r#"{"ackwait": "5s"}"#).is_err());
    }

    #[test]
    fn values_that_cannot_work_are_refused_when_deserialized() {
        assert!(serde_json::from_str::<BusConfig>(r#"{"prefix": "a.b"}"#).is_err());
        assert!(serde_json::from_str::<BusConfig>(r#"{"prefix": ""}"#).is_err());
        assert!(serde_json::from_str::<BusConfig>(r#"{"prefix": "team_a-1"}"#).is_ok());
        assert!(serde_json::from_str::<ConsumerConfig>(r#"{"concurrency": 0}"#).is_err());
        assert!(serde_json::from_str::<ConsumerConfig>(r#"{"max_payload_bytes": 0}"#).is_err());
        assert!(serde_json::from_str::<ConsumerConfig>(r#"{"concurrency": 1}"#).is_ok());
    }
}
