//! W3C trace context in the CloudEvents distributed-tracing extension (`traceparent`,
//! `tracestate`), so a TaskRun is one trace across the watcher, the registrar and the attestor.
//!
//! On publish, the current `tracing` span's OpenTelemetry context is injected; on consume, the
//! event's context is extracted and made the parent of the handler's span. Both go through
//! `tracing-opentelemetry`, so they do nothing when no OpenTelemetry layer is installed.
//!
//! The watcher publishes a TaskRun's events from separate observations (one per watch event),
//! so it parents each publication on [`set_taskrun_parent`]: a context derived from the
//! TaskRun's UID ([`taskrun_trace_id`]), the same for every event of that TaskRun, even across
//! watcher restarts. Its span id names no real span (the trace's root is outside any service).

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The W3C trace context of the current span: `(traceparent, tracestate)`, both `None` when the
/// span has no valid OpenTelemetry context.
pub fn current_trace_context() -> (Option<String>, Option<String>) {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return (None, None);
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    let traceparent = carrier.remove(TRACEPARENT);
    let tracestate = carrier.remove(TRACESTATE).filter(|state| !state.is_empty());
    (traceparent, tracestate)
}

/// The OpenTelemetry context an event's trace attributes describe (empty when they are absent
/// or invalid).
pub fn remote_context(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> opentelemetry::Context {
    let mut carrier: HashMap<String, String> = HashMap::new();
    if let Some(traceparent) = traceparent {
        carrier.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
    }
    if let Some(tracestate) = tracestate {
        carrier.insert(TRACESTATE.to_owned(), tracestate.to_owned());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes the event's trace context the parent of `span`, when it has a valid one.
pub fn set_remote_parent(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    if traceparent.is_none() {
        // No context to link (and nothing to parse): the common case without tracing.
        return;
    }
    let context = remote_context(traceparent, tracestate);
    if context.span().span_context().is_valid() {
        // Fails only when the span is disabled or has no OpenTelemetry layer: nothing to link then.
        let _ = span.set_parent(context);
    }
}

/// Ends `span` with an error status carrying `description` (what a trace store shows as the
/// span's error).
pub fn set_error_status(span: &tracing::Span, description: String) {
    span.set_status(opentelemetry::trace::Status::error(description));
}

/// The trace id of every event of the TaskRun with this UID: the first 16 bytes of
/// SHA-256(`countersign.taskrun/<uid>`).
pub fn taskrun_trace_id(uid: &str) -> TraceId {
    let (trace, _) = taskrun_ids(uid);
    trace
}

fn taskrun_ids(uid: &str) -> (TraceId, SpanId) {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("countersign.taskrun/{uid}").as_bytes(),
    );
    let bytes = digest.as_ref();
    let mut trace = [0u8; 16];
    trace.copy_from_slice(&bytes[..16]);
    let mut span = [0u8; 8];
    span.copy_from_slice(&bytes[16..24]);
    (TraceId::from_bytes(trace), SpanId::from_bytes(span))
}

/// The remote context the watcher's spans for one TaskRun are children of (see the module doc).
pub fn taskrun_context(uid: &str) -> opentelemetry::Context {
    let (trace, span) = taskrun_ids(uid);
    let span_context = SpanContext::new(
        trace,
        span,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    opentelemetry::Context::new().with_remote_span_context(span_context)
}

/// Makes `span` part of the TaskRun's trace. Call before the span is first entered.
pub fn set_taskrun_parent(span: &tracing::Span, uid: &str) {
    // Fails only when the span is disabled, already started, or has no OpenTelemetry layer.
    let _ = span.set_parent(taskrun_context(uid));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taskruns_events_share_one_trace_and_other_taskruns_do_not() {
        let first = taskrun_context("0f6b0c1e-5b7e-4e1c-9d0a-6a3b2f1e0c9d");
        let again = taskrun_context("0f6b0c1e-5b7e-4e1c-9d0a-6a3b2f1e0c9d");
        let other = taskrun_context("7d2c4a90-1e33-4f0b-8c55-2b9e1d7f6a01");
        let first = first.span().span_context().clone();
        assert!(first.is_valid() && first.is_remote() && first.is_sampled());
        assert_eq!(first, again.span().span_context().clone());
        assert_ne!(first.trace_id(), other.span().span_context().trace_id());
        assert_eq!(
            first.trace_id(),
            taskrun_trace_id("0f6b0c1e-5b7e-4e1c-9d0a-6a3b2f1e0c9d")
        );
    }

    #[test]
    fn a_valid_traceparent_is_extracted_and_garbage_is_not() {
        let context = remote_context(
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            None,
        );
        let span = context.span();
        assert!(span.span_context().is_valid());
        assert!(span.span_context().is_remote());
        assert_eq!(
            span.span_context().trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(
            !remote_context(Some("garbage"), None)
                .span()
                .span_context()
                .is_valid()
        );
        assert!(!remote_context(None, None).span().span_context().is_valid());
    }

    #[test]
    fn no_context_without_an_opentelemetry_layer() {
        assert_eq!(current_trace_context(), (None, None));
    }
}
