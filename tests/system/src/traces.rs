//! Reading traces back from Jaeger's query API (`GET /api/traces/{trace id}`), and showing one as a
//! tree of spans with their durations: what the trace test asserts on and what
//! `cargo xtask demo --traces` prints.
//!
//! A span's parent is its `CHILD_OF` reference; a span whose parent is not in the trace (the
//! watcher's spans hang off the TaskRun's trace root, which no service records) is a root of the
//! tree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use countersign_events::trace::taskrun_trace_id;
use countersign_test_support::jaeger::Jaeger;
use countersign_test_support::process::PeerFailed;
use countersign_test_support::wait::{self, WaitError};
use serde::Deserialize;

use crate::demo::{Origin, Reporter};
use crate::http;

/// The most of a query answer that is read.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// One span, as the query API returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    /// The span id of its `CHILD_OF` reference.
    pub parent: Option<String>,
    /// The span ids of its `FOLLOWS_FROM` references.
    pub follows_from: Vec<String>,
    pub operation: String,
    /// The `service.name` of the process that recorded it.
    pub service: String,
    /// Microseconds since the Unix epoch.
    pub start_us: u64,
    pub duration_us: u64,
    pub tags: BTreeMap<String, serde_json::Value>,
}

impl Span {
    /// A string tag's value.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).and_then(serde_json::Value::as_str)
    }

    /// Whether the span ended with an error status.
    pub fn is_error(&self) -> bool {
        self.tag("otel.status_code") == Some("ERROR")
            || self.tags.get("error") == Some(&serde_json::Value::Bool(true))
    }

    /// The error status's description, if any.
    pub fn error_description(&self) -> Option<&str> {
        self.tag("otel.status_description")
    }

    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.duration_us)
    }
}

/// One trace: its spans in start order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Trace {
    pub spans: Vec<Span>,
}

impl Trace {
    pub fn span(&self, span_id: &str) -> Option<&Span> {
        self.spans.iter().find(|span| span.span_id == span_id)
    }

    /// The span's parent, when it is in the trace.
    pub fn parent_of(&self, span: &Span) -> Option<&Span> {
        span.parent.as_deref().and_then(|id| self.span(id))
    }

    /// The spans of `service` named `operation`.
    pub fn spans_of<'a>(
        &'a self,
        service: &'a str,
        operation: &'a str,
    ) -> impl Iterator<Item = &'a Span> + 'a {
        self.spans
            .iter()
            .filter(move |span| span.service == service && span.operation == operation)
    }

    /// The nearest ancestor of `span` recorded by another service: the span of the process
    /// whose event (or request) started this service's work.
    pub fn upstream_of(&self, span: &Span) -> Option<&Span> {
        let mut current = self.parent_of(span)?;
        while current.service == span.service {
            current = self.parent_of(current)?;
        }
        Some(current)
    }

    /// The trace as a tree: one line per span, indented under its parent, with its service,
    /// operation, duration and error.
    pub fn render_tree(&self) -> String {
        let mut children: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
        let mut roots = Vec::new();
        for span in &self.spans {
            match span.parent.as_deref().filter(|id| self.span(id).is_some()) {
                Some(parent) => children.entry(parent).or_default().push(span),
                None => roots.push(span),
            }
        }
        let mut text = String::new();
        let mut stack: Vec<(&Span, usize)> = roots.into_iter().rev().map(|s| (s, 0)).collect();
        while let Some((span, depth)) = stack.pop() {
            let _ = write!(
                text,
                "{:indent$}{} {}  {}",
                "",
                span.service,
                span.operation,
                format_duration(span.duration()),
                indent = depth * 2
            );
            if let Some(event_type) = span.tag("ce.type") {
                let _ = write!(text, "  [{event_type}]");
            }
            if span.is_error() {
                let _ = write!(
                    text,
                    "  ERROR: {}",
                    span.error_description().unwrap_or("(no description)")
                );
            }
            text.push('\n');
            if let Some(below) = children.get(span.span_id.as_str()) {
                stack.extend(below.iter().rev().map(|child| (*child, depth + 1)));
            }
        }
        text
    }
}

/// `1.234s`, `12.3ms` or `456µs`.
pub fn format_duration(duration: Duration) -> String {
    let micros = duration.as_micros();
    if micros >= 1_000_000 {
        format!("{:.3}s", duration.as_secs_f64())
    } else if micros >= 1_000 {
        format!("{:.1}ms", duration.as_secs_f64() * 1_000.0)
    } else {
        format!("{micros}µs")
    }
}

/// The trace store of `cargo xtask demo --traces`: a real Jaeger the services export to, and the
/// first TaskRun's trace read back from it and shown as a tree.
#[derive(Debug)]
pub struct TraceStore {
    jaeger: Jaeger,
}

/// How long the demo waits for a TaskRun's trace to be complete in the store (the services export
/// their spans every 5 s).
pub const SHOW_TIMEOUT: Duration = Duration::from_secs(60);

impl TraceStore {
    /// Starts Jaeger (OTLP/gRPC in, query API out, both on loopback).
    pub async fn start(reporter: &Reporter) -> Result<TraceStore, PeerFailed> {
        reporter.line(Origin::Demo, "starting Jaeger as the trace store ...");
        let jaeger = Jaeger::start().await?;
        reporter.line(
            Origin::Demo,
            format!(
                "Jaeger ready: OTLP at {}, query API at http://{}/api/traces (log {})",
                jaeger.otlp_endpoint(),
                jaeger.query_address(),
                jaeger.log_path().display()
            ),
        );
        Ok(TraceStore { jaeger })
    }

    /// What every service's `telemetry.otlp_endpoint` is set to.
    pub fn otlp_endpoint(&self) -> String {
        self.jaeger.otlp_endpoint()
    }

    /// Waits until the trace of the TaskRun `uid` has reached the relay, then prints it as a
    /// tree of spans with their durations.
    pub async fn show_taskrun(
        &self,
        reporter: &Reporter,
        taskrun: &str,
        uid: &str,
    ) -> Result<(), TraceWaitError> {
        let trace_id = taskrun_trace_id(uid).to_string();
        let address = self.jaeger.query_address();
        reporter.line(
            Origin::Demo,
            format!("reading the trace of {taskrun} ({trace_id}) back from Jaeger ..."),
        );
        let trace = wait_for_trace(&address, &trace_id, SHOW_TIMEOUT, |trace| {
            trace.spans_of("relay", "handle_event").next().is_some()
        })
        .await?;
        reporter.heading(format!(
            "The trace of {taskrun}: {} spans (GET http://{address}/api/traces/{trace_id})",
            trace.spans.len()
        ));
        reporter.plain(trace.render_tree());
        Ok(())
    }
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("the query API at {address} did not answer")]
    Unreachable { address: String },
    #[error("the query API answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the query API's answer is larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    #[error("the query API's answer is not a trace")]
    Malformed(#[source] serde_json::Error),
}

/// The trace `trace_id` (32 hex digits) from the query API at `address`, `None` while the store
/// has none of its spans.
pub async fn fetch_trace(address: &str, trace_id: &str) -> Result<Option<Trace>, QueryError> {
    let answer = http::get(address, &format!("/api/traces/{trace_id}"))
        .await
        .ok_or_else(|| QueryError::Unreachable {
            address: address.to_owned(),
        })?;
    if answer.status == 404 {
        return Ok(None);
    }
    if answer.status != 200 {
        return Err(QueryError::Status {
            status: answer.status,
            body: answer.body,
        });
    }
    if answer.body.len() > MAX_ANSWER_BYTES {
        return Err(QueryError::TooLarge);
    }
    parse_traces(&answer.body).map(|traces| traces.into_iter().next())
}

/// Polls the store until the trace `trace_id` satisfies `complete` (its spans arrive in batches,
/// from several processes), or fails after `timeout` with what was there last.
pub async fn wait_for_trace(
    address: &str,
    trace_id: &str,
    timeout: Duration,
    complete: impl Fn(&Trace) -> bool,
) -> Result<Trace, TraceWaitError> {
    let last = std::sync::Mutex::new(None::<Trace>);
    let found = wait::until(
        &format!("trace {trace_id} in the store"),
        timeout,
        || async {
            let trace = fetch_trace(address, trace_id).await.ok().flatten()?;
            if complete(&trace) {
                Some(trace)
            } else {
                *last.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(trace);
                None
            }
        },
    )
    .await;
    found.map_err(|source| TraceWaitError {
        source,
        last: last
            .into_inner()
            .unwrap_or_else(|poison| poison.into_inner())
            .map(|trace| trace.render_tree()),
    })
}

/// A trace did not become complete in time.
#[derive(Debug, thiserror::Error)]
#[error("{source}; last seen:\n{}", last.as_deref().unwrap_or("(no span of it)"))]
pub struct TraceWaitError {
    #[source]
    pub source: WaitError,
    /// The tree of what the store had last.
    pub last: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Answer {
    data: Option<Vec<RawTrace>>,
}

#[derive(Debug, Deserialize)]
struct RawTrace {
    spans: Vec<RawSpan>,
    processes: BTreeMap<String, RawProcess>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpan {
    #[serde(rename = "traceID")]
    trace_id: String,
    #[serde(rename = "spanID")]
    span_id: String,
    operation_name: String,
    #[serde(default)]
    references: Vec<RawReference>,
    start_time: u64,
    duration: u64,
    #[serde(default)]
    tags: Vec<RawTag>,
    #[serde(rename = "processID")]
    process_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawReference {
    ref_type: String,
    #[serde(rename = "spanID")]
    span_id: String,
}

#[derive(Debug, Deserialize)]
struct RawTag {
    key: String,
    value: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProcess {
    service_name: String,
}

/// The traces of a `/api/traces...` answer.
fn parse_traces(body: &str) -> Result<Vec<Trace>, QueryError> {
    let answer: Answer = serde_json::from_str(body).map_err(QueryError::Malformed)?;
    Ok(answer
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|raw| {
            let mut spans: Vec<Span> = raw
                .spans
                .into_iter()
                .map(|span| {
                    let reference = |kind: &str| {
                        span.references
                            .iter()
                            .filter(|r| r.ref_type == kind)
                            .map(|r| r.span_id.clone())
                            .collect::<Vec<_>>()
                    };
                    Span {
                        parent: reference("CHILD_OF").into_iter().next(),
                        follows_from: reference("FOLLOWS_FROM"),
                        service: raw
                            .processes
                            .get(&span.process_id)
                            .map(|process| process.service_name.clone())
                            .unwrap_or_default(),
                        tags: span
                            .tags
                            .into_iter()
                            .map(|tag| (tag.key, tag.value))
                            .collect(),
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        operation: span.operation_name,
                        start_us: span.start_time,
                        duration_us: span.duration,
                    }
                })
                .collect();
            spans.sort_by_key(|span| span.start_us);
            Trace { spans }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"{"data":[{"traceID":"t1","spans":[
        {"traceID":"t1","spanID":"b","operationName":"handle_event","references":[{"refType":"CHILD_OF","traceID":"t1","spanID":"a"}],
         "startTime":20,"duration":1500,"tags":[{"key":"ce.type","type":"string","value":"dev.countersign.taskrun.scheduled"}],"processID":"p2"},
        {"traceID":"t1","spanID":"a","operationName":"publish_transitions","references":[{"refType":"CHILD_OF","traceID":"t1","spanID":"root"}],
         "startTime":10,"duration":2500000,"tags":[],"processID":"p1"},
        {"traceID":"t1","spanID":"c","operationName":"handle_event","references":[{"refType":"CHILD_OF","traceID":"t1","spanID":"a"}],
         "startTime":30,"duration":700,"tags":[{"key":"otel.status_code","type":"string","value":"ERROR"},
         {"key":"otel.status_description","type":"string","value":"dead-lettered (rejected): bad"}],"processID":"p2"}],
        "processes":{"p1":{"serviceName":"watcher","tags":[]},"p2":{"serviceName":"registrar","tags":[]}}}],
        "total":0,"limit":0,"offset":0,"errors":null}"#;

    #[test]
    fn a_query_answer_becomes_a_tree_of_spans() {
        let trace = parse_traces(ANSWER).unwrap().remove(0);
        assert_eq!(trace.spans.len(), 3);
        let registrar = trace.span("b").unwrap();
        assert_eq!(registrar.service, "registrar");
        assert_eq!(trace.upstream_of(registrar).unwrap().span_id, "a");
        assert!(trace.span("c").unwrap().is_error());
        assert!(!registrar.is_error());
        assert_eq!(
            trace.render_tree(),
            "watcher publish_transitions  2.500s\n  \
             registrar handle_event  1.5ms  [dev.countersign.taskrun.scheduled]\n  \
             registrar handle_event  700µs  ERROR: dead-lettered (rejected): bad\n"
        );
    }

    #[test]
    fn a_trace_the_store_does_not_have_is_no_trace() {
        assert!(
            parse_traces(r#"{"data":null,"errors":[{"code":404,"msg":"trace not found"}]}"#)
                .unwrap()
                .is_empty()
        );
    }
}
