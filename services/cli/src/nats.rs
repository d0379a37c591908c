//! Reading the deployment's attestations from NATS: `get` (the KV buckets) and `tail` (the
//! attestation stream).

use std::io::Write;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use countersign_events::{AttestationEvent, DecodeLimits, Family, StreamKind, Subjects};
use countersign_runtime::nats::{NatsConfig, connect_once};
use countersign_verdict::attestation::AttestationEventExt as _;
use countersign_verdict::store::{AttestationStore, StoreError, decode_stored};
use futures::StreamExt as _;

use crate::args::{GetArgs, NatsArgs, TailArgs};
use crate::exit::{CliError, Outcome};
use crate::render::{event_line, write_event, write_revocation};

/// The client name the command connects with.
const CLIENT_NAME: &str = "countersign-cli";

pub(crate) async fn jetstream(
    nats: &NatsArgs,
) -> Result<(async_nats::jetstream::Context, Subjects), CliError> {
    let subjects = Subjects::new(&nats.prefix)
        .map_err(|error| CliError::Usage(format!("--prefix {:?}: {error}", nats.prefix)))?;
    let config = NatsConfig {
        credentials_file: nats.nats_creds.clone(),
        ..NatsConfig::for_url(nats.nats_url.clone())
    };
    let client = connect_once(&config, CLIENT_NAME).await?;
    Ok((async_nats::jetstream::new(client), subjects))
}

/// Runs `get`.
pub async fn get(
    nats: &NatsArgs,
    args: &GetArgs,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let (jetstream, subjects) = jetstream(nats).await?;
    let store = AttestationStore::open(&jetstream, &subjects).await?;
    let (uid, what) = match (&args.uid, &args.taskrun) {
        (Some(uid), _) => (uid.clone(), format!("TaskRun uid {uid}")),
        (None, Some(taskrun)) => {
            let (namespace, name) = taskrun
                .split_once('/')
                .filter(|(namespace, name)| !namespace.is_empty() && !name.is_empty())
                .ok_or_else(|| CliError::Usage(format!("{taskrun:?} is not NAMESPACE/NAME")))?;
            let entry = store
                .lookup(namespace, name)
                .await?
                .ok_or_else(|| CliError::NotFound(format!("TaskRun {taskrun}")))?;
            (entry.uid, format!("TaskRun {taskrun}"))
        }
        (None, None) => return Err(CliError::Usage("give NAMESPACE/NAME or --uid".to_owned())),
    };
    let raw = store
        .get_raw(&uid)
        .await?
        .ok_or_else(|| CliError::NotFound(what.clone()))?;
    let event = decode_stored(&raw).map_err(|error| {
        CliError::Store(StoreError::Corrupt {
            bucket: "attestations".to_owned(),
            key: uid.clone(),
            source: Box::new(error),
        })
    })?;
    if let (Some(taskrun), Some(_)) = (&args.taskrun, &args.uid) {
        let stored = event.data.taskrun();
        if format!("{}/{}", stored.namespace, stored.name) != *taskrun {
            return Err(CliError::NotFound(format!("{what} named {taskrun}")));
        }
    }
    // A revoked attestation is refused: the revocation is shown (with `--json`, its event,
    // which holds the attestation) and the exit code is that of a rejection.
    if let Some(revocation) = store.revocation(&uid).await? {
        if args.json {
            let cloudevent = revocation.to_cloudevent().map_err(|error| {
                CliError::Store(StoreError::Encode {
                    bucket: "attestations".to_owned(),
                    source: error,
                })
            })?;
            writeln!(
                out,
                "{}",
                serde_json::to_string(&cloudevent).unwrap_or_default()
            )?;
        } else {
            write_event(out, &event)?;
            write_revocation(out, &revocation)?;
        }
        return Ok(Outcome::Rejected);
    }
    if args.json {
        out.write_all(&raw)?;
        writeln!(out)?;
    } else {
        write_event(out, &event)?;
    }
    Ok(Outcome::Success)
}

/// Runs `tail` until `--count` events were shown or `stop` resolves.
pub async fn tail(
    nats: &NatsArgs,
    args: &TailArgs,
    out: &mut dyn Write,
    status: &mut dyn Write,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Outcome, CliError> {
    let (jetstream, subjects) = jetstream(nats).await?;
    let stream_name = subjects.stream_name(StreamKind::Attestations);
    let stream_error = |source: Box<dyn std::error::Error + Send + Sync>| CliError::Stream {
        stream: stream_name.clone(),
        source,
    };
    let filter = match &args.namespace {
        Some(namespace) => subjects
            .attestations_in_namespace(namespace)
            .map_err(|error| CliError::Usage(format!("--namespace {namespace:?}: {error}")))?,
        None => subjects.family_events(Family::Attestation),
    };
    let stream = jetstream
        .get_stream(&stream_name)
        .await
        .map_err(|error| stream_error(Box::new(error)))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy: if args.from_start {
                DeliverPolicy::All
            } else {
                DeliverPolicy::New
            },
            ..OrderedConfig::default()
        })
        .await
        .map_err(|error| stream_error(Box::new(error)))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|error| stream_error(Box::new(error)))?;
    writeln!(status, "countersign: following {filter} on {stream_name}")?;
    status.flush()?;
    let mut shown = 0u64;
    let mut stop = std::pin::pin!(stop);
    while args.count.is_none_or(|count| shown < count) {
        let message = tokio::select! {
            () = &mut stop => break,
            message = messages.next() => message,
        };
        let message = match message {
            None => break,
            Some(Ok(message)) => message,
            Some(Err(error)) => return Err(stream_error(Box::new(error))),
        };
        let event = match countersign_events::decode::<AttestationEvent>(
            message.headers.as_ref(),
            &message.payload,
            &DecodeLimits::default(),
        ) {
            Ok(event) => event,
            Err(error) => {
                writeln!(
                    status,
                    "countersign: skipping a message on {}: {error}",
                    message.subject
                )?;
                continue;
            }
        };
        if args
            .verdict
            .is_some_and(|verdict| verdict.verdict() != event.data.verdict())
        {
            continue;
        }
        if args.json {
            let cloudevent = event
                .to_cloudevent()
                .map_err(|error| stream_error(Box::new(error)))?;
            writeln!(
                out,
                "{}",
                serde_json::to_string(&cloudevent)
                    .map_err(|error| stream_error(Box::new(error)))?
            )?;
        } else {
            writeln!(out, "{}", event_line(&event))?;
        }
        out.flush()?;
        shown += 1;
    }
    Ok(Outcome::Success)
}
