//! The watcher's Prometheus metrics (`countersign_watcher_*`), registered in the service's own
//! registry. Every label has a small, fixed set of values.

use countersign_events::{EventPayload, EventType, LifecycleEvent};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Where a transition was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The Kubernetes watch (TaskRuns and pods).
    Kubernetes,
    /// Tekton's CloudEvents, received by the ingress.
    CloudEvents,
}

impl Source {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Kubernetes => "kubernetes",
            Source::CloudEvents => "cloudevents",
        }
    }
}

/// Why a transition was not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The state bucket records it as published.
    Recorded,
    /// A later stage (`finished`, `deleted`) is already published.
    Superseded,
    /// The stream dropped it as a duplicate of an event with the same id.
    StreamDuplicate,
}

impl SkipReason {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            SkipReason::Recorded => "recorded",
            SkipReason::Superseded => "superseded",
            SkipReason::StreamDuplicate => "stream_duplicate",
        }
    }
}

/// How the ingress answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngressOutcome {
    /// 200: the transitions were published (or were already).
    Published,
    /// 202: a type the watcher does not handle, or a TaskRun outside its scope.
    Ignored,
    /// 400: malformed input.
    BadRequest,
    /// 413: over the size limit.
    TooLarge,
    /// 415: a content mode the ingress does not take (batch).
    UnsupportedMediaType,
    /// 503: NATS or the Kubernetes API is unavailable; Tekton retries.
    Unavailable,
    /// 500: anything else.
    Failed,
}

impl IngressOutcome {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            IngressOutcome::Published => "published",
            IngressOutcome::Ignored => "ignored",
            IngressOutcome::BadRequest => "bad_request",
            IngressOutcome::TooLarge => "too_large",
            IngressOutcome::UnsupportedMediaType => "unsupported_media_type",
            IngressOutcome::Unavailable => "unavailable",
            IngressOutcome::Failed => "failed",
        }
    }
}

/// The watched resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `tekton.dev/v1` TaskRuns.
    TaskRuns,
    /// `v1` Pods labelled `tekton.dev/taskRun`.
    Pods,
}

impl Resource {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Resource::TaskRuns => "taskruns",
            Resource::Pods => "pods",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransitionLabels {
    transition: &'static str,
    source: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SkipLabels {
    transition: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TypeLabels {
    event_type: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The watcher's metrics. Cloning is cheap and shares the values.
#[derive(Debug, Clone, Default)]
pub struct WatcherMetrics {
    transitions_published: Family<TransitionLabels, Counter>,
    duplicates_skipped: Family<SkipLabels, Counter>,
    ingress_requests: Family<OutcomeLabels, Counter>,
    ignored_events: Family<TypeLabels, Counter>,
    watch_errors: Family<ResourceLabels, Counter>,
    watch_restarts: Family<ResourceLabels, Counter>,
    processing_errors: Family<KindLabels, Counter>,
    malformed_messages: Counter,
    known_taskruns: Gauge,
}

impl WatcherMetrics {
    /// New metrics, not yet registered.
    pub fn new() -> WatcherMetrics {
        WatcherMetrics::default()
    }

    /// Registers them in `registry` under `countersign_watcher_`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("countersign_watcher");
        registry.register(
            "transitions_published",
            "TaskRun lifecycle transitions published, by transition and source",
            self.transitions_published.clone(),
        );
        registry.register(
            "duplicates_skipped",
            "Transitions not published again, by transition and reason",
            self.duplicates_skipped.clone(),
        );
        registry.register(
            "ingress_requests",
            "CloudEvents ingress requests, by outcome",
            self.ingress_requests.clone(),
        );
        registry.register(
            "ignored_events",
            "CloudEvents received and ignored, by Tekton event type",
            self.ignored_events.clone(),
        );
        registry.register(
            "watch_errors",
            "Errors of the Kubernetes watches, by resource (each is retried with backoff)",
            self.watch_errors.clone(),
        );
        registry.register(
            "watch_restarts",
            "Full (re)lists of the Kubernetes watches, by resource (the first list included)",
            self.watch_restarts.clone(),
        );
        registry.register(
            "processing_errors",
            "TaskRuns whose transitions could not be published, by kind (transient ones are retried)",
            self.processing_errors.clone(),
        );
        registry.register(
            "malformed_termination_messages",
            "Step termination messages that could not be parsed",
            self.malformed_messages.clone(),
        );
        registry.register(
            "known_taskruns",
            "TaskRuns recorded as live in the state bucket",
            self.known_taskruns.clone(),
        );
    }

    /// A transition was published (stored by the stream).
    pub fn published(&self, transition: &LifecycleEvent, source: Source) {
        self.transitions_published
            .get_or_create(&TransitionLabels {
                transition: transition_label(transition.event_type()),
                source: source.as_str(),
            })
            .inc();
    }

    /// A transition was not published again.
    pub fn skipped(&self, transition: &LifecycleEvent, reason: SkipReason) {
        self.duplicates_skipped
            .get_or_create(&SkipLabels {
                transition: transition_label(transition.event_type()),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// The ingress answered a request.
    pub fn ingress_request(&self, outcome: IngressOutcome) {
        self.ingress_requests
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The ingress ignored an event of a type it does not handle.
    pub fn ignored_event(&self, event_type: &'static str) {
        self.ignored_events
            .get_or_create(&TypeLabels { event_type })
            .inc();
    }

    /// A watch failed (it is retried with backoff).
    pub fn watch_error(&self, resource: Resource) {
        self.watch_errors
            .get_or_create(&ResourceLabels {
                resource: resource.as_str(),
            })
            .inc();
    }

    /// A watch (re)listed.
    pub fn watch_restart(&self, resource: Resource) {
        self.watch_restarts
            .get_or_create(&ResourceLabels {
                resource: resource.as_str(),
            })
            .inc();
    }

    /// Processing a TaskRun failed.
    pub fn processing_error(&self, kind: &'static str) {
        self.processing_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// A step's termination message did not parse.
    pub fn malformed_message(&self) {
        self.malformed_messages.inc();
    }

    /// How many TaskRuns the state bucket holds as live.
    pub fn set_known_taskruns(&self, count: usize) {
        self.known_taskruns
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// The label of a lifecycle event type (`step_completed`...).
fn transition_label(event_type: EventType) -> &'static str {
    match event_type {
        EventType::TaskRunCreated => "created",
        EventType::TaskRunScheduled => "scheduled",
        EventType::StepCompleted => "step_completed",
        EventType::TaskRunFinished => "finished",
        EventType::TaskRunDeleted => "deleted",
        _ => "other",
    }
}
