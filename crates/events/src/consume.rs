//! Consuming: [`run_consumer`] pulls from a durable consumer with bounded concurrency, decodes
//! each message once into an [`Event<T>`], calls the [`Handler`], and settles the message by the
//! one rule in [`disposition`]:
//!
//! | what happened | disposition |
//! |---|---|
//! | the handler succeeded | ack, waiting for the server to confirm it (double ack) |
//! | a transient failure | nak with a delay that grows with the delivery count |
//! | a transient failure with its own delay ([`HandlerError::transient_after`]) | nak with that delay, at most the longest backoff |
//! | a transient failure on the last allowed delivery | dead letter `retries_exhausted` |
//! | the handler rejected the event (poison) | dead letter `rejected` |
//! | the message does not decode | dead letter with the decode error's kind |
//!
//! A dead letter is published and acknowledged by its stream *before* the message is terminated,
//! so nothing is dropped silently. The server is given one delivery more than
//! [`ConsumerConfig::max_deliver`]: that extra delivery only happens when the last real attempt
//! never settled (its handler hung or the process died), and it is dead-lettered at once.
//!
//! Shutdown: when the token is cancelled the loop stops pulling, lets the handlers in flight
//! finish and settles them, then returns. If the future is dropped instead, the messages in
//! flight stay unacknowledged and are redelivered after `ack_wait`: nothing is lost either way.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::{MessagesError, MessagesErrorKind};
use async_nats::jetstream::context::Context;
use countersign_error_report::error_chain;
use futures::StreamExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::binding::{DecodeError, DecodeLimits, decode};
use crate::config::ConsumerConfig;
use crate::deadletter::{DeadLetterNote, DeadLetterReason, Origin, publish_dead_letter};
use crate::event::Event;
use crate::metrics::{ConsumeOutcome, ConsumerMetrics, EventMetrics};
use crate::payload::EventPayload;
use crate::subject::Subjects;
use crate::topology::{Bus, ConsumerSpec, SetupError};
use crate::trace::{set_error_status, set_remote_parent};

/// A boxed error, the source of a [`HandlerError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Trying again later may succeed (SPIRE or NATS unavailable, a timeout).
    #[error("transient failure")]
    Transient(#[source] BoxError),
    /// A transient failure after which the handler knows when to try again (an HTTP
    /// `Retry-After`, say): the message is nakked with `delay` (at most the retry policy's
    /// longest backoff) instead of the computed backoff.
    #[error("transient failure; retry after {delay:?}")]
    TransientAfter {
        /// How long to wait before the next delivery.
        delay: Duration,
        #[source]
        source: BoxError,
    },
    /// The event can never be handled; it is dead-lettered with `code`.
    #[error("the event can never be handled ({code})")]
    Poison {
        /// A machine-readable code for the dead letter (snake_case).
        code: String,
        #[source]
        source: BoxError,
    },
}

impl HandlerError {
    /// A transient failure.
    pub fn transient(error: impl Into<BoxError>) -> HandlerError {
        HandlerError::Transient(error.into())
    }

    /// A transient failure to retry after `delay` rather than after the computed backoff
    /// (bounded by the policy's longest backoff, [`RetryPolicy::max_backoff`]). On the last
    /// allowed delivery it is dead-lettered like any transient failure.
    pub fn transient_after(delay: Duration, error: impl Into<BoxError>) -> HandlerError {
        HandlerError::TransientAfter {
            delay,
            source: error.into(),
        }
    }

    /// The delay the handler asked for, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HandlerError::TransientAfter { delay, .. } => Some(*delay),
            HandlerError::Transient(_) | HandlerError::Poison { .. } => None,
        }
    }

    /// A permanent failure, dead-lettered with `code`.
    pub fn poison(code: impl Into<String>, error: impl Into<BoxError>) -> HandlerError {
        HandlerError::Poison {
            code: code.into(),
            source: error.into(),
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HandlerError::Transient(_) | HandlerError::TransientAfter { .. }
        )
    }
}

/// A handler's error that knows its own fate: the dead-letter code when every delivery would
/// fail the same way (poison), `None` when a later one may succeed. [`Classify::into_handler_error`]
/// is the one rule that turns it into a [`HandlerError`].
pub trait Classify: std::error::Error + Send + Sync + Sized + 'static {
    /// The dead-letter code of a poison error; `None` for a transient one.
    fn poison_code(&self) -> Option<&'static str>;

    /// The consumer's outcome for this error.
    fn into_handler_error(self) -> HandlerError {
        match self.poison_code() {
            Some(code) => HandlerError::poison(code, self),
            None => HandlerError::transient(self),
        }
    }
}

/// Where and how often a message was delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream the message is in.
    pub stream: String,
    /// Its sequence in the stream.
    pub stream_sequence: u64,
    /// The subject it was published on.
    pub subject: String,
    /// Which delivery this is, from 1.
    pub attempt: u64,
}

/// Handles the events of one durable consumer. Handlers must be idempotent: a message is
/// delivered at least once.
pub trait Handler<T>: Send + Sync + 'static {
    /// Handles one event. Return only once its effects are durable: the message is acked after.
    fn handle(
        &self,
        event: Event<T>,
        delivery: Delivery,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<T, F, Fut> Handler<T> for F
where
    F: Fn(Event<T>, Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(
        &self,
        event: Event<T>,
        delivery: Delivery,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(event, delivery)
    }
}

// === the one rule ===

/// What to do with a message once it has been processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Acknowledge it (and wait for the server to confirm).
    Ack,
    /// Negatively acknowledge it; the server redelivers it after the delay.
    Nak(Duration),
    /// Publish a dead letter, wait for its acknowledgement, then terminate the message.
    DeadLetter(DeadLetterNote),
}

/// What processing a message gave.
#[derive(Debug, Clone, Copy)]
pub enum Processed<'a> {
    /// The message decoded and the handler returned.
    Handled(&'a Result<(), HandlerError>),
    /// The message did not decode.
    Undecodable(&'a DecodeError),
    /// The message was delivered more times than allowed without being settled.
    DeliveriesExceeded,
}

/// Retry rules, from [`ConsumerConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The most deliveries that are handled; `None` for no limit.
    pub max_deliver: Option<u32>,
    /// The nak delay after the n-th failed delivery; the last entry repeats.
    pub nak_backoff: Vec<Duration>,
}

impl RetryPolicy {
    /// The policy of a consumer configuration.
    pub fn of(config: &ConsumerConfig) -> RetryPolicy {
        RetryPolicy {
            max_deliver: config.max_deliver,
            nak_backoff: config.nak_backoff.clone(),
        }
    }

    /// The nak delay after delivery `attempt` (from 1) failed.
    pub fn nak_delay(&self, attempt: u64) -> Duration {
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        self.nak_backoff
            .get(index)
            .or_else(|| self.nak_backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }

    /// The longest nak delay of the policy: the most a handler's own delay
    /// ([`HandlerError::transient_after`]) is honoured.
    pub fn max_backoff(&self) -> Duration {
        self.nak_backoff
            .iter()
            .max()
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }

    /// Whether delivery `attempt` is the last one that is handled.
    pub fn is_last(&self, attempt: u64) -> bool {
        self.max_deliver
            .is_some_and(|max| attempt >= u64::from(max))
    }

    /// Whether delivery `attempt` is past the last one (the previous one never settled).
    pub fn is_exceeded(&self, attempt: u64) -> bool {
        self.max_deliver.is_some_and(|max| attempt > u64::from(max))
    }
}

/// The one function that maps an outcome to ack, nak with delay, or dead letter.
pub fn disposition(processed: Processed<'_>, attempt: u64, retry: &RetryPolicy) -> Disposition {
    match processed {
        Processed::Handled(Ok(())) => Disposition::Ack,
        Processed::Handled(Err(
            error @ (HandlerError::Transient(_) | HandlerError::TransientAfter { .. }),
        )) => {
            if retry.is_last(attempt) {
                Disposition::DeadLetter(DeadLetterNote {
                    reason: DeadLetterReason::RetriesExhausted,
                    detail: error_chain(error),
                    code: None,
                })
            } else {
                Disposition::Nak(match error.retry_after() {
                    Some(delay) => delay.min(retry.max_backoff()),
                    None => retry.nak_delay(attempt),
                })
            }
        }
        Processed::Handled(Err(error @ HandlerError::Poison { code, .. })) => {
            Disposition::DeadLetter(DeadLetterNote {
                reason: DeadLetterReason::Rejected,
                detail: error_chain(error),
                code: Some(code.clone()),
            })
        }
        Processed::Undecodable(error) => Disposition::DeadLetter(DeadLetterNote {
            reason: DeadLetterReason::Decode(error.kind()),
            detail: error_chain(error),
            code: None,
        }),
        Processed::DeliveriesExceeded => Disposition::DeadLetter(DeadLetterNote {
            reason: DeadLetterReason::RetriesExhausted,
            detail: format!("delivered {attempt} times without being settled"),
            code: None,
        }),
    }
}

// === the durable consumer ===

/// A durable pull consumer bound at start-up (see [`Bus::ensure_consumer`](crate::Bus::ensure_consumer)),
/// with what [`run_consumer`] needs to settle its messages.
#[derive(Debug, Clone)]
pub struct DurableConsumer {
    pub(crate) name: String,
    pub(crate) stream: String,
    pub(crate) consumer: PullConsumer,
    pub(crate) config: ConsumerConfig,
    pub(crate) jetstream: Context,
    pub(crate) subjects: Subjects,
    pub(crate) metrics: EventMetrics,
}

impl DurableConsumer {
    /// The consumer's durable name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stream it reads.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Its configuration.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// The async-nats consumer, for inspection.
    pub fn inner(&self) -> &PullConsumer {
        &self.consumer
    }
}

/// Why [`run_consumer`] stopped before it was cancelled.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// Pulling could not start.
    #[error("starting to pull from consumer {consumer}")]
    Pull {
        consumer: String,
        #[source]
        source: async_nats::jetstream::consumer::StreamError,
    },
    /// The server ended the pull for good (the consumer was deleted or is misconfigured).
    #[error("pulling from consumer {consumer}")]
    Messages {
        consumer: String,
        #[source]
        source: MessagesError,
    },
}

impl ConsumeError {
    /// Whether restarting (which declares the consumer again) may help.
    pub fn is_transient(&self) -> bool {
        match self {
            ConsumeError::Pull { .. } => true,
            ConsumeError::Messages { source, .. } => {
                source.kind() == MessagesErrorKind::ConsumerDeleted
            }
        }
    }
}

/// What the tasks share.
struct Shared {
    name: String,
    jetstream: Context,
    subjects: Subjects,
    metrics: ConsumerMetrics,
    retry: RetryPolicy,
    limits: DecodeLimits,
    progress_every: Duration,
}

const ERROR_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// At most this long between pulls while they fail: a consumer's leader is elected within a
/// few seconds, and a pull a second costs the server nothing.
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long one pull request waits on the server. On a JetStream cluster a pull request lives on
/// the consumer's leader: when the leader moves (a node lost, an election), the request is gone
/// and nothing more arrives until the client gives it up, which with the client's defaults (30 s
/// expiry, 15 s heartbeat) stalled a consumer for half a minute per lost request. Short requests
/// and heartbeats bound that stall to about two heartbeats.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// The server's idle heartbeat on a pull request; two missed mean the request was lost, and a
/// new one is sent (see [`PULL_EXPIRES`]).
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// Runs `handler` on the events of `consumer` until `shutdown` is cancelled (then returns
/// `Ok` once the handlers in flight are settled) or the server ends the pull for good.
pub async fn run_consumer<T, H>(
    consumer: &DurableConsumer,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), ConsumeError>
where
    T: EventPayload,
    H: Handler<T>,
{
    let concurrency = consumer.config.concurrency.max(1);
    let shared = Arc::new(Shared {
        name: consumer.name.clone(),
        jetstream: consumer.jetstream.clone(),
        subjects: consumer.subjects.clone(),
        metrics: consumer.metrics.for_consumer(&consumer.name),
        retry: RetryPolicy::of(&consumer.config),
        limits: DecodeLimits {
            max_payload_bytes: consumer.config.max_payload_bytes,
        },
        progress_every: progress_interval(consumer.config.ack_wait),
    });
    let handler = Arc::new(handler);
    let semaphore = Arc::new(Semaphore::new(concurrency));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let pull = || async {
        consumer
            .consumer
            .stream()
            .max_messages_per_batch(concurrency)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|source| ConsumeError::Pull {
                consumer: consumer.name.clone(),
                source,
            })
    };
    let mut messages = pull().await?;
    let mut error_backoff = ERROR_BACKOFF_MIN;
    let mut failure = None;
    tracing::debug!(consumer = %consumer.name, concurrency, "consuming");
    // One waiter on the token for the whole loop, rather than one registered and removed (under
    // the token's lock) at every select.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);

    loop {
        while let Some(joined) = tasks.try_join_next() {
            report_join(&shared.name, joined);
        }
        let permit = tokio::select! {
            biased;
            () = &mut cancelled => break,
            permit = semaphore.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let next = tokio::select! {
            biased;
            () = &mut cancelled => break,
            next = messages.next() => next,
        };
        match next {
            Some(Ok(message)) => {
                error_backoff = ERROR_BACKOFF_MIN;
                tasks.spawn(process(shared.clone(), handler.clone(), message, permit));
            }
            Some(Err(error)) => match error.kind() {
                MessagesErrorKind::ConsumerDeleted
                | MessagesErrorKind::PushBasedConsumer
                | MessagesErrorKind::RequestLimitExceeded => {
                    failure = Some(ConsumeError::Messages {
                        consumer: shared.name.clone(),
                        source: error,
                    });
                    break;
                }
                // Anything else is worth another pull after a pause. When the request itself is
                // gone (its consumer had no leader to take it, during an election, or lost it when
                // the leader moved: missed heartbeats), the client would wait for it to expire, so
                // a new one is sent.
                kind => {
                    let lost = matches!(
                        kind,
                        MessagesErrorKind::NoResponders | MessagesErrorKind::MissingHeartbeat
                    );
                    tracing::warn!(consumer = %shared.name, %error, lost, retry_in = ?error_backoff, "pulling messages failed; retrying");
                    tokio::select! {
                        () = &mut cancelled => break,
                        () = tokio::time::sleep(error_backoff) => {}
                    }
                    error_backoff = (error_backoff * 2).min(ERROR_BACKOFF_MAX);
                    if lost {
                        messages = match pull().await {
                            Ok(messages) => messages,
                            Err(error) => {
                                failure = Some(error);
                                break;
                            }
                        };
                    }
                }
            },
            None => {
                tracing::warn!(consumer = %shared.name, "the pull ended; pulling again");
                messages = match pull().await {
                    Ok(messages) => messages,
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                };
            }
        }
    }

    // Stop pulling: what the client buffered but did not start is redelivered after ack_wait.
    drop(messages);
    while let Some(joined) = tasks.join_next().await {
        report_join(&shared.name, joined);
    }
    tracing::debug!(consumer = %shared.name, "stopped consuming");
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Why [`run_durable`] stopped before it was cancelled.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// Binding the consumer again failed for good (a configuration the server refuses).
    #[error("binding consumer {consumer} again")]
    Bind {
        consumer: String,
        #[source]
        source: SetupError,
    },
    /// Consuming failed for good: binding again would only fail the same way.
    #[error(transparent)]
    Consume(#[from] ConsumeError),
}

impl DurableError {
    /// Whether restarting the service may help (never: the loop already retried what it could).
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// The first pause before binding a consumer again after it ended.
const REBIND_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// The longest pause between two bindings.
const REBIND_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Runs `handler` on durable consumer `consumer` (bound at start-up from `spec`) until `shutdown`
/// is cancelled, then returns `Ok` once the messages in flight are settled (the one ack rule,
/// [`disposition`]).
///
/// When the consumer ends for a reason binding it again may fix (deleted on the server, a pull
/// that could not start), it is bound again from `spec` and its configuration after a pause that
/// doubles from 200 ms to 10 s; binding retries transient failures the same way. A failure that
/// binding again cannot fix ends the loop with a [`DurableError`] at once, instead of binding
/// and failing again in a busy loop.
pub async fn run_durable<T, H>(
    bus: &Bus,
    spec: &ConsumerSpec,
    consumer: DurableConsumer,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), DurableError>
where
    T: EventPayload,
    H: Handler<T> + Clone,
{
    let config = consumer.config.clone();
    let config = &config;
    let mut consumer = Some(consumer);
    durable_loop(
        &spec.name,
        &shutdown,
        || {
            let bound = consumer.take();
            async move {
                match bound {
                    Some(bound) => Ok(bound),
                    None => bus.ensure_consumer(spec, config).await,
                }
            }
        },
        |bound: DurableConsumer| {
            let handler = handler.clone();
            let shutdown = shutdown.clone();
            async move { run_consumer(&bound, handler, shutdown).await }
        },
        SetupError::is_transient,
        ConsumeError::is_transient,
    )
    .await
}

/// The loop of [`run_durable`], over its two steps: `bind` (the first call returns the consumer
/// bound at start-up) and `consume`.
async fn durable_loop<C, B, BindFut, Run, RunFut>(
    name: &str,
    shutdown: &CancellationToken,
    mut bind: B,
    mut consume: Run,
    bind_is_transient: impl Fn(&SetupError) -> bool,
    consume_is_transient: impl Fn(&ConsumeError) -> bool,
) -> Result<(), DurableError>
where
    B: FnMut() -> BindFut,
    BindFut: Future<Output = Result<C, SetupError>>,
    Run: FnMut(C) -> RunFut,
    RunFut: Future<Output = Result<(), ConsumeError>>,
{
    let mut pause = REBIND_BACKOFF_MIN;
    let wait = |delay: Duration| async move {
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    };
    loop {
        let bound = loop {
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                attempt = bind() => attempt,
            };
            match attempt {
                Ok(bound) => break bound,
                Err(error) if bind_is_transient(&error) => {
                    tracing::warn!(consumer = name, error = %error_chain(&error), retry_in = ?pause, "binding the consumer failed; retrying");
                }
                Err(source) => {
                    return Err(DurableError::Bind {
                        consumer: name.to_owned(),
                        source,
                    });
                }
            }
            if !wait(pause).await {
                return Ok(());
            }
            pause = (pause * 2).min(REBIND_BACKOFF_MAX);
        };
        let started = tokio::time::Instant::now();
        match consume(bound).await {
            Ok(()) => return Ok(()),
            Err(error) if consume_is_transient(&error) => {
                // A consumer that ran a while before it ended starts the pauses again.
                if started.elapsed() >= REBIND_BACKOFF_MAX {
                    pause = REBIND_BACKOFF_MIN;
                }
                tracing::warn!(consumer = name, error = %error_chain(&error), retry_in = ?pause, "the consumer ended; binding it again");
            }
            Err(error) => return Err(DurableError::Consume(error)),
        }
        if !wait(pause).await {
            return Ok(());
        }
        pause = (pause * 2).min(REBIND_BACKOFF_MAX);
    }
}

fn report_join(consumer: &str, joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!(consumer, %error, "an event handler panicked; its message will be redelivered");
    }
}

/// Decodes, handles and settles one message.
async fn process<T, H>(
    shared: Arc<Shared>,
    handler: Arc<H>,
    message: async_nats::jetstream::Message,
    _permit: OwnedSemaphorePermit,
) where
    T: EventPayload,
    H: Handler<T>,
{
    let delivery = match message.info() {
        Ok(info) => Delivery {
            stream: info.stream.to_owned(),
            stream_sequence: info.stream_sequence,
            subject: message.subject.to_string(),
            attempt: u64::try_from(info.delivered).unwrap_or(1).max(1),
        },
        Err(error) => {
            // A message from a pull consumer always has a JetStream reply subject.
            tracing::error!(consumer = %shared.name, %error, "a message without JetStream metadata; leaving it");
            shared.metrics.consumed(ConsumeOutcome::Abandoned);
            return;
        }
    };

    let disposition = if shared.retry.is_exceeded(delivery.attempt) {
        disposition(
            Processed::DeliveriesExceeded,
            delivery.attempt,
            &shared.retry,
        )
    } else {
        match decode::<T>(message.headers.as_ref(), &message.payload, &shared.limits) {
            Err(error) => {
                // Its trace context is read from the headers alone, so that the trace it came
                // with shows where it ended.
                let span = tracing::info_span!(
                    "handle_event",
                    consumer = %shared.name,
                    attempt = delivery.attempt,
                );
                let header = |name: &str| {
                    message
                        .headers
                        .as_ref()
                        .and_then(|headers| headers.get(name))
                        .map(|value| value.as_str().to_owned())
                };
                set_remote_parent(
                    &span,
                    header(CE_TRACEPARENT).as_deref(),
                    header(CE_TRACESTATE).as_deref(),
                );
                let _entered = span.enter();
                tracing::warn!(
                    consumer = %shared.name,
                    stream_sequence = delivery.stream_sequence,
                    subject = %delivery.subject,
                    reason = error.kind().as_str(),
                    error = %error_chain(&error),
                    "undecodable message"
                );
                let disposition = disposition(
                    Processed::Undecodable(&error),
                    delivery.attempt,
                    &shared.retry,
                );
                mark_dead_lettered(&span, &disposition);
                disposition
            }
            Ok(event) => {
                let span = tracing::info_span!(
                    "handle_event",
                    consumer = %shared.name,
                    ce.id = %event.id,
                    ce.r#type = %event.event_type,
                    attempt = delivery.attempt,
                );
                set_remote_parent(
                    &span,
                    event.traceparent.as_deref(),
                    event.tracestate.as_deref(),
                );
                let started = Instant::now();
                let handled = handler
                    .handle(event, delivery.clone())
                    .instrument(span.clone());
                let result = with_progress(handled, &message, shared.progress_every).await;
                shared.metrics.handled_in(started.elapsed());
                if let Err(error) = &result {
                    let _entered = span.enter();
                    tracing::warn!(
                        consumer = %shared.name,
                        transient = error.is_transient(),
                        error = %error_chain(error),
                        "event handler failed"
                    );
                }
                let disposition =
                    disposition(Processed::Handled(&result), delivery.attempt, &shared.retry);
                mark_dead_lettered(&span, &disposition);
                disposition
            }
        }
    };
    settle(&shared, &message, &delivery, disposition).await;
}

/// The trace attributes as NATS headers (the CloudEvents binary mode's `ce-` prefix).
const CE_TRACEPARENT: &str = "ce-traceparent";
const CE_TRACESTATE: &str = "ce-tracestate";

/// A dead-lettered event's span ends with an error status: the reason and its detail.
fn mark_dead_lettered(span: &tracing::Span, disposition: &Disposition) {
    if let Disposition::DeadLetter(note) = disposition {
        set_error_status(
            span,
            format!("dead-lettered ({}): {}", note.reason.as_str(), note.detail),
        );
    }
}

/// How often a running handler's message gets an in-progress ack: every third of the ack wait,
/// so one progress ack lost or late still leaves the server another before it redelivers; at
/// least every 100 ms.
pub fn progress_interval(ack_wait: Duration) -> Duration {
    (ack_wait / 3).max(Duration::from_millis(100))
}

/// Runs the handler, telling the server every `every` that the message is still being worked on.
async fn with_progress<F>(
    handled: F,
    message: &async_nats::jetstream::Message,
    every: Duration,
) -> F::Output
where
    F: Future,
{
    // A timer on the stack, armed only if the handler is still running at its first poll.
    let ticker = tokio::time::sleep(every);
    tokio::pin!(handled, ticker);
    loop {
        tokio::select! {
            // Handler first: one that finishes at once never arms the timer.
            biased;
            output = &mut handled => return output,
            () = &mut ticker => {
                ticker.as_mut().reset(tokio::time::Instant::now() + every);
                if let Err(error) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(%error, "sending an in-progress ack failed");
                }
            }
        }
    }
}

/// Applies a disposition to a message.
async fn settle(
    shared: &Shared,
    message: &async_nats::jetstream::Message,
    delivery: &Delivery,
    disposition: Disposition,
) {
    let consumer = shared.name.as_str();
    match disposition {
        Disposition::Ack => match message.double_ack().await {
            Ok(()) => shared.metrics.consumed(ConsumeOutcome::Ack),
            Err(error) => {
                tracing::warn!(consumer, %error, "the ack was not confirmed; the message may be redelivered");
                shared.metrics.consumed(ConsumeOutcome::Abandoned);
            }
        },
        Disposition::Nak(delay) => match message.ack_with(AckKind::Nak(Some(delay))).await {
            Ok(()) => shared.metrics.consumed(ConsumeOutcome::Nak),
            Err(error) => {
                tracing::warn!(consumer, %error, "the nak was not sent; the message is redelivered after ack_wait");
                shared.metrics.consumed(ConsumeOutcome::Abandoned);
            }
        },
        Disposition::DeadLetter(note) => {
            let origin = Origin {
                consumer,
                stream: &delivery.stream,
                sequence: delivery.stream_sequence,
                subject: &delivery.subject,
                deliveries: delivery.attempt,
            };
            let published = publish_dead_letter(
                &shared.jetstream,
                &shared.subjects,
                &origin,
                message.headers.as_ref(),
                &message.payload,
                &note,
            )
            .await;
            match published {
                Ok(()) => {
                    tracing::warn!(
                        consumer,
                        stream_sequence = delivery.stream_sequence,
                        reason = note.reason.as_str(),
                        "dead-lettered"
                    );
                    shared.metrics.dead_lettered(note.reason.as_str());
                    shared.metrics.consumed(ConsumeOutcome::DeadLetter);
                    if let Err(error) = message.double_ack_with(AckKind::Term).await {
                        // Redelivered, then dead-lettered again under the same id: stored once.
                        tracing::warn!(consumer, %error, "terminating a dead-lettered message was not confirmed");
                    }
                }
                Err(error) => {
                    tracing::error!(
                        consumer,
                        error = %error_chain(&error),
                        "publishing a dead letter failed; the message will be retried"
                    );
                    let delay = shared.retry.nak_delay(delivery.attempt);
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                    shared.metrics.consumed(ConsumeOutcome::Abandoned);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::DecodeErrorKind;

    fn policy(max_deliver: Option<u32>) -> RetryPolicy {
        RetryPolicy {
            max_deliver,
            nak_backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
            ],
        }
    }

    #[test]
    fn success_acks() {
        assert_eq!(
            disposition(Processed::Handled(&Ok(())), 1, &policy(Some(3))),
            Disposition::Ack
        );
    }

    #[test]
    fn transient_naks_with_a_growing_delay_until_the_last_delivery() {
        let failed = Err(HandlerError::transient("spire unavailable"));
        let retry = policy(Some(5));
        let delays: Vec<Disposition> = (1..=4)
            .map(|attempt| disposition(Processed::Handled(&failed), attempt, &retry))
            .collect();
        assert_eq!(
            delays,
            vec![
                Disposition::Nak(Duration::from_secs(1)),
                Disposition::Nak(Duration::from_secs(5)),
                Disposition::Nak(Duration::from_secs(30)),
                Disposition::Nak(Duration::from_secs(30)),
            ]
        );
        match disposition(Processed::Handled(&failed), 5, &retry) {
            Disposition::DeadLetter(note) => {
                assert_eq!(note.reason, DeadLetterReason::RetriesExhausted)
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
        assert_eq!(
            disposition(Processed::Handled(&failed), 1000, &policy(None)),
            Disposition::Nak(Duration::from_secs(30))
        );
    }

    #[test]
    fn a_handler_delay_replaces_the_backoff_up_to_the_longest_one() {
        let retry = policy(Some(5));
        let after = |delay| {
            Err(HandlerError::transient_after(
                delay,
                "429 Too Many Requests",
            ))
        };
        assert_eq!(
            disposition(
                Processed::Handled(&after(Duration::from_secs(12))),
                1,
                &retry
            ),
            Disposition::Nak(Duration::from_secs(12))
        );
        assert_eq!(
            disposition(
                Processed::Handled(&after(Duration::from_millis(200))),
                3,
                &retry
            ),
            Disposition::Nak(Duration::from_millis(200)),
            "shorter than the computed backoff is honoured too"
        );
        assert_eq!(
            disposition(
                Processed::Handled(&after(Duration::from_secs(3600))),
                2,
                &retry
            ),
            Disposition::Nak(Duration::from_secs(30)),
            "bounded by the longest backoff"
        );
        match disposition(
            Processed::Handled(&after(Duration::from_secs(1))),
            5,
            &retry,
        ) {
            Disposition::DeadLetter(note) => {
                assert_eq!(note.reason, DeadLetterReason::RetriesExhausted)
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
        assert!(after(Duration::from_secs(1)).unwrap_err().is_transient());
        assert_eq!(
            after(Duration::from_secs(7)).unwrap_err().retry_after(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(HandlerError::transient("x").retry_after(), None);
    }

    #[test]
    fn poison_and_undecodable_are_dead_lettered_with_their_reason() {
        let poison = Err(HandlerError::poison(
            "entry_conflict",
            "the entry belongs to someone else",
        ));
        match disposition(Processed::Handled(&poison), 1, &policy(Some(3))) {
            Disposition::DeadLetter(note) => {
                assert_eq!(note.reason, DeadLetterReason::Rejected);
                assert_eq!(note.code.as_deref(), Some("entry_conflict"));
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
        let undecodable = DecodeError::MissingData;
        match disposition(Processed::Undecodable(&undecodable), 1, &policy(Some(3))) {
            Disposition::DeadLetter(note) => {
                assert_eq!(
                    note.reason,
                    DeadLetterReason::Decode(DecodeErrorKind::MissingData)
                );
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
        match disposition(Processed::DeliveriesExceeded, 4, &policy(Some(3))) {
            Disposition::DeadLetter(note) => {
                assert_eq!(note.reason, DeadLetterReason::RetriesExhausted)
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    fn pull_failed() -> ConsumeError {
        ConsumeError::Pull {
            consumer: "registrar".into(),
            source: async_nats::jetstream::consumer::StreamError::new(
                async_nats::jetstream::consumer::StreamErrorKind::Other,
            ),
        }
    }

    fn refused() -> SetupError {
        SetupError::Name(crate::subject::SubjectError::Empty { field: "consumer" })
    }

    /// The registrar's old loop bound the consumer again after every failure, a permanent one
    /// included, without a pause: a consumer that fails for good made it spin. The loop ends at
    /// once with the typed error instead.
    #[tokio::test(start_paused = true)]
    async fn a_permanent_consume_failure_ends_the_loop_without_binding_again() {
        let binds = std::cell::Cell::new(0);
        let runs = std::cell::Cell::new(0);
        let started = tokio::time::Instant::now();
        let outcome = durable_loop(
            "registrar",
            &CancellationToken::new(),
            || {
                binds.set(binds.get() + 1);
                async { Ok::<_, SetupError>(()) }
            },
            |()| {
                runs.set(runs.get() + 1);
                async { Err(pull_failed()) }
            },
            SetupError::is_transient,
            |_| false,
        )
        .await;
        assert!(matches!(
            outcome,
            Err(DurableError::Consume(ConsumeError::Pull { .. }))
        ));
        assert_eq!((binds.get(), runs.get()), (1, 1));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_consume_failure_binds_again_after_a_growing_pause() {
        let binds = std::cell::Cell::new(0);
        let runs = std::cell::Cell::new(0);
        let started = tokio::time::Instant::now();
        let outcome = durable_loop(
            "registrar",
            &CancellationToken::new(),
            || {
                binds.set(binds.get() + 1);
                async { Ok::<_, SetupError>(()) }
            },
            |()| {
                runs.set(runs.get() + 1);
                let run = runs.get();
                async move { if run < 3 { Err(pull_failed()) } else { Ok(()) } }
            },
            SetupError::is_transient,
            |_| true,
        )
        .await;
        assert!(outcome.is_ok());
        assert_eq!((binds.get(), runs.get()), (3, 3));
        assert_eq!(started.elapsed(), Duration::from_millis(200 + 400));
    }

    #[tokio::test(start_paused = true)]
    async fn binding_refused_for_good_is_a_typed_error_and_shutdown_ends_the_wait() {
        let outcome = durable_loop(
            "relay-a",
            &CancellationToken::new(),
            || async { Err::<(), _>(refused()) },
            |()| async { Ok(()) },
            SetupError::is_transient,
            ConsumeError::is_transient,
        )
        .await;
        assert!(matches!(outcome, Err(DurableError::Bind { .. })));

        let shutdown = CancellationToken::new();
        let binds = std::cell::Cell::new(0);
        let waiting = durable_loop(
            "relay-a",
            &shutdown,
            || {
                binds.set(binds.get() + 1);
                async { Err::<(), _>(refused()) }
            },
            |()| async { Ok(()) },
            |_| true,
            ConsumeError::is_transient,
        );
        shutdown.cancel();
        assert!(waiting.await.is_ok());
        assert!(binds.get() <= 1);
    }

    #[test]
    fn retry_policy_limits() {
        let retry = policy(Some(3));
        assert!(!retry.is_last(2));
        assert!(retry.is_last(3));
        assert!(!retry.is_exceeded(3));
        assert!(retry.is_exceeded(4));
        let unlimited = policy(None);
        assert!(!unlimited.is_last(u64::MAX));
        let empty = RetryPolicy {
            max_deliver: None,
            nak_backoff: Vec::new(),
        };
        assert_eq!(empty.nak_delay(1), Duration::from_secs(1));
    }
}
