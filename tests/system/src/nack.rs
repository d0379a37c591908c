//! What NACK (nats-io/nack) would create for the `Stream` and `Consumer` objects of a rendered
//! kustomization, so a test can provision a real nats-server exactly as a cluster would.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use serde_json::Value;

use crate::render::{self, Rendered};

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{object}: {message}")]
    Object { object: String, message: String },
}

/// A Go duration as NACK takes it (`336h`, `10m`, `30s`, `1h30m`).
pub fn go_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut number = String::new();
    for character in text.chars() {
        if character.is_ascii_digit() {
            number.push(character);
            continue;
        }
        let value: u64 = number.parse().ok()?;
        number.clear();
        total += Duration::from_secs(match character {
            'h' => value * 3600,
            'm' => value * 60,
            's' => value,
            _ => return None,
        });
    }
    number.is_empty().then_some(total)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn duration_field(spec: &Value, field: &str) -> Duration {
    spec[field]
        .as_str()
        .and_then(go_duration)
        .unwrap_or_default()
}

/// The stream NACK creates for a Stream object's `spec`.
pub fn nack_stream(spec: &Value) -> stream::Config {
    stream::Config {
        name: spec["name"].as_str().unwrap_or_default().to_owned(),
        description: spec["description"].as_str().map(str::to_owned),
        subjects: strings(&spec["subjects"]),
        storage: if spec["storage"] == "file" {
            StorageType::File
        } else {
            StorageType::Memory
        },
        retention: match spec["retention"].as_str() {
            Some("interest") => RetentionPolicy::Interest,
            Some("workqueue") => RetentionPolicy::WorkQueue,
            _ => RetentionPolicy::Limits,
        },
        discard: if spec["discard"] == "new" {
            DiscardPolicy::New
        } else {
            DiscardPolicy::Old
        },
        max_age: duration_field(spec, "maxAge"),
        max_bytes: spec["maxBytes"].as_i64().unwrap_or(-1),
        duplicate_window: duration_field(spec, "duplicateWindow"),
        num_replicas: spec["replicas"]
            .as_u64()
            .and_then(|replicas| usize::try_from(replicas).ok())
            .unwrap_or(1),
        ..Default::default()
    }
}

/// The durable pull consumer NACK creates for a Consumer object's `spec`.
pub fn nack_consumer(spec: &Value) -> pull::Config {
    pull::Config {
        durable_name: spec["durableName"].as_str().map(str::to_owned),
        description: spec["description"].as_str().map(str::to_owned),
        filter_subjects: strings(&spec["filterSubjects"]),
        ack_policy: match spec["ackPolicy"].as_str() {
            Some("explicit") => AckPolicy::Explicit,
            Some("all") => AckPolicy::All,
            _ => AckPolicy::None,
        },
        deliver_policy: DeliverPolicy::All,
        ack_wait: duration_field(spec, "ackWait"),
        max_deliver: spec["maxDeliver"].as_i64().unwrap_or(-1),
        max_ack_pending: spec["maxAckPending"].as_i64().unwrap_or(-1),
        ..Default::default()
    }
}

/// Creates every Stream, then every Consumer, of `rendered` through `client` (NACK's user).
pub async fn provision(
    client: &async_nats::Client,
    rendered: &Rendered,
) -> Result<(), ProvisionError> {
    let jetstream = async_nats::jetstream::new(client.clone());
    let failed = |object: &Value, message: String| ProvisionError::Object {
        object: render::describe(object),
        message,
    };
    for object in rendered.of_kind("Stream") {
        jetstream
            .create_stream(nack_stream(&object["spec"]))
            .await
            .map_err(|error| failed(object, error.to_string()))?;
    }
    for object in rendered.of_kind("Consumer") {
        let spec = &object["spec"];
        let stream = jetstream
            .get_stream(spec["streamName"].as_str().unwrap_or_default())
            .await
            .map_err(|error| failed(object, error.to_string()))?;
        stream
            .create_consumer(nack_consumer(spec))
            .await
            .map_err(|error| failed(object, error.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("336h"), Some(Duration::from_secs(336 * 3600)));
        assert_eq!(go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("10"), None);
        assert_eq!(go_duration("5d"), None);
    }
}
