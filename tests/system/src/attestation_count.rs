//! How many attestations the attestations stream holds, counted by the server itself: the
//! stream's per-subject message counts (`info_with_subjects`, filtered to the attestation
//! family), so no message is read and a poll costs the same at the thousandth TaskRun as at the
//! first. The stream also keeps the exports and the gate's decisions under their own subject
//! roots; those are not counted. JetStream keeps one message per `Nats-Msg-Id`, so a second
//! attestation of a TaskRun would be a second message. Shared by the load harness and the chaos
//! run.

use async_nats::jetstream::Context;
use countersign_events::{Family, StreamKind, Subjects};
use futures::TryStreamExt as _;

/// Why the attestations could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    #[error("the bus prefix {prefix}")]
    Prefix {
        prefix: String,
        #[source]
        source: countersign_events::SubjectError,
    },
    #[error("looking up the stream {stream}")]
    Stream {
        stream: String,
        #[source]
        source: async_nats::jetstream::context::GetStreamError,
    },
    #[error("reading the per-subject counts of the stream {stream}")]
    Subjects {
        stream: String,
        #[source]
        source: async_nats::jetstream::context::RequestError,
    },
}

/// The number of attestation messages in `{P}_ATTESTATIONS` of bus prefix `prefix`.
pub async fn attestations_in_stream(jetstream: &Context, prefix: &str) -> Result<u64, CountError> {
    let subjects = Subjects::new(prefix).map_err(|source| CountError::Prefix {
        prefix: prefix.to_owned(),
        source,
    })?;
    let stream_name = subjects.stream_name(StreamKind::Attestations);
    let stream = jetstream
        .get_stream(&stream_name)
        .await
        .map_err(|source| CountError::Stream {
            stream: stream_name.clone(),
            source,
        })?;
    let subjects_error = |source| CountError::Subjects {
        stream: stream_name.clone(),
        source,
    };
    let mut per_subject = stream
        .info_with_subjects(subjects.family_events(Family::Attestation))
        .await
        .map_err(subjects_error)?;
    let mut messages = 0_u64;
    while let Some((_, count)) = per_subject.try_next().await.map_err(subjects_error)? {
        messages += count as u64;
    }
    Ok(messages)
}
