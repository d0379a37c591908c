//! W3C trace context in the CloudEvents distributed-tracing extension (`traceparent`,
//! `tracestate`), so a TaskRun is one trace across the watcher, the registrar and the attestor.
//!
//! On publish, the current `tracing` span's OpenTelemetry context is injected; on consume, the
//! event's context is extracted and made the parent of the handler's span. Both go through
//! `tracing-opentelemetry`, so they do nothing when no OpenTelemetry layer is installed.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
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

#[cfg(test)]
mod tests {
    use super::*;

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
