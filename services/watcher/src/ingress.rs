//! The HTTP ingress for Tekton's own CloudEvents (its `config-events` sink).
//!
//! Tekton POSTs `dev.tekton.event.taskrun.{queued,started,running,unknown,successful,failed}.v1`
//! events, in binary mode (`ce-*` headers, the body is the data) or structured mode
//! (`application/cloudevents+json`), whose data is `{"taskRun": <TaskRun converted to v1beta1>}`.
//!
//! **An event is a hint, never a source of truth.** Nothing authenticates it, so of its TaskRun
//! only the namespace, name and UID are read, and refused with 400 unless they are what Kubernetes
//! allows ([`crate::identifiers`]: a UID of a few KiB would otherwise become a KV key longer than
//! nats-server's control line). The ingress then reads the TaskRun from the API server (the
//! watcher's store when its copy is current, else a GET), finds its pod (the store, else a GET),
//! derives the transitions with the same function as the watch and publishes them through the
//! same [`Emitter`], so the ids are the watch's ids and a cluster that sends both produces each
//! transition once. Results, steps, times and conditions in the event body are never used: a
//! forged `successful` event for a running TaskRun publishes no `finished`. An event about a
//! TaskRun the API server does not have (no such name, or another UID) publishes nothing and is
//! answered 202, so Tekton does not retry it for ever; it is counted
//! (`countersign_watcher_ignored_events_total{event_type="unknown_taskrun"}`) and logged at warn.
//!
//! Answers, as JSON (`{"error": "<code>", "message": "..."}` for failures). Every refusal is
//! logged at warn, rate-limited per code ([`crate::refusals`]).
//!
//! | status | when |
//! |---|---|
//! | 200 | the transitions the API server's TaskRun implies are published (every PubAck received) or were already |
//! | 202 | a type the watcher does not handle (PipelineRun, CustomRun...), a TaskRun outside the configured namespaces or label selector, or one the API server does not have; counted in `countersign_watcher_ignored_events_total` |
//! | 400 | not a CloudEvent, no or malformed data, a TaskRun without a namespace, name or UID, or with one Kubernetes does not allow |
//! | 405 | not a POST |
//! | 413 | a body over `[ingress] max_body_bytes` |
//! | 415 | a batch of CloudEvents |
//! | 503 | NATS or the Kubernetes API unavailable: Tekton's sender retries 503 |
//! | 500 | anything else |

use std::sync::Arc;
use std::time::Instant;

use async_nats::connection::State as ConnectionState;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloudevents::AttributesReader as _;
use cloudevents::event::Data;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use countersign_runtime::error_chain;

use crate::derive::{DeriveSettings, derive_transitions};
use crate::emit::{Emitted, Emitter};
use crate::identifiers::check_taskrun_identifiers;
use crate::kubernetes::{KubernetesSource, LiveTaskRun};
use crate::metrics::{IngressOutcome, Source, WatcherMetrics};
use crate::refusals::RefusalLimiter;
use crate::state::Known;
use countersign_tekton::TaskRun;

/// The content type of a batch of CloudEvents (not accepted).
const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// The TaskRun event types Tekton sends (its `pkg/reconciler/events/cloudevent`).
pub const TASKRUN_EVENT_TYPES: [&str; 6] = [
    "dev.tekton.event.taskrun.queued.v1",
    "dev.tekton.event.taskrun.started.v1",
    "dev.tekton.event.taskrun.running.v1",
    "dev.tekton.event.taskrun.unknown.v1",
    "dev.tekton.event.taskrun.successful.v1",
    "dev.tekton.event.taskrun.failed.v1",
];

/// The other event types Tekton sends; ignored (and counted by type).
pub const IGNORED_EVENT_TYPES: [&str; 10] = [
    "dev.tekton.event.pipelinerun.queued.v1",
    "dev.tekton.event.pipelinerun.started.v1",
    "dev.tekton.event.pipelinerun.running.v1",
    "dev.tekton.event.pipelinerun.unknown.v1",
    "dev.tekton.event.pipelinerun.successful.v1",
    "dev.tekton.event.pipelinerun.failed.v1",
    "dev.tekton.event.customrun.started.v1",
    "dev.tekton.event.customrun.running.v1",
    "dev.tekton.event.customrun.successful.v1",
    "dev.tekton.event.customrun.failed.v1",
];

/// The metric label of every other type.
const OTHER_EVENT_TYPE: &str = "other";
/// The metric label of TaskRuns outside the configured scope.
const OUT_OF_SCOPE: &str = "out_of_scope";
/// The metric label of events about TaskRuns the API server does not have.
const UNKNOWN_TASKRUN: &str = "unknown_taskrun";

/// What the ingress needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ingress {
    inner: Arc<IngressInner>,
}

#[derive(Debug)]
struct IngressInner {
    emitter: Arc<Emitter>,
    kubernetes: Arc<KubernetesSource>,
    settings: Arc<DeriveSettings>,
    nats: async_nats::Client,
    metrics: WatcherMetrics,
    refusals: RefusalLimiter,
}

/// The data of a Tekton run event.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TektonRunData {
    task_run: TaskRun,
}

/// A failure, as the response says it.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code,
            message: message.into(),
        }
    }

    fn outcome(&self) -> IngressOutcome {
        match self.status {
            StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => IngressOutcome::BadRequest,
            StatusCode::PAYLOAD_TOO_LARGE => IngressOutcome::TooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => IngressOutcome::UnsupportedMediaType,
            StatusCode::SERVICE_UNAVAILABLE => IngressOutcome::Unavailable,
            _ => IngressOutcome::Failed,
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(json!({ "error": self.code, "message": self.message })),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl Ingress {
    /// The ingress over the watcher's emitter and Kubernetes source.
    pub fn new(
        emitter: Arc<Emitter>,
        kubernetes: Arc<KubernetesSource>,
        settings: Arc<DeriveSettings>,
        nats: async_nats::Client,
        metrics: WatcherMetrics,
    ) -> Ingress {
        Ingress {
            inner: Arc::new(IngressInner {
                emitter,
                kubernetes,
                settings,
                nats,
                metrics,
                refusals: RefusalLimiter::default(),
            }),
        }
    }

    /// The router: every path takes POSTed CloudEvents, bodies limited to `max_body_bytes`.
    pub fn router(self, max_body_bytes: usize) -> Router {
        Router::new()
            .fallback(receive)
            .layer(DefaultBodyLimit::max(max_body_bytes))
            .with_state(self)
    }

    /// Serves the router on `listener` until `token` is cancelled, then finishes the requests
    /// in flight (each waits for its PubAcks) and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        max_body_bytes: usize,
        token: CancellationToken,
    ) -> std::io::Result<()> {
        countersign_runtime::http_server::serve_http(
            listener,
            self.router(max_body_bytes),
            countersign_runtime::http_server::HttpServerLimits::DEFAULT,
            async move { token.cancelled().await },
        )
        .await
    }

    async fn handle(
        &self,
        method: &Method,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Response, Failure> {
        if method != Method::POST {
            return Err(Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "CloudEvents are POSTed",
            ));
        }
        let body = body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Failure::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the body is larger than the ingress accepts",
                )
            } else {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    rejection.body_text(),
                )
            }
        })?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if content_type.starts_with(BATCH_CONTENT_TYPE) {
            return Err(Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "batch_not_supported",
                "send one CloudEvent per request (binary or structured mode)",
            ));
        }
        let event =
            cloudevents::binding::http::to_event(headers, body.to_vec()).map_err(|error| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_cloudevent",
                    format!("not a valid CloudEvent (binary or structured mode): {error}"),
                )
            })?;
        let event_type = event.ty();
        let span = tracing::Span::current();
        span.record("ce_type", event_type);
        span.record("ce_id", event.id());
        if !TASKRUN_EVENT_TYPES.contains(&event_type) {
            let label = IGNORED_EVENT_TYPES
                .iter()
                .find(|known| **known == event_type)
                .copied()
                .unwrap_or(OTHER_EVENT_TYPE);
            self.inner.metrics.ignored_event(label);
            return Ok(ignored(label));
        }
        // The event is a hint: of its TaskRun only the identifiers are read, checked against
        // what Kubernetes allows, and everything published is derived from what the API server
        // says (see the module docs).
        let hint = read_taskrun(event.data())?;
        let (namespace, name, uid) = hinted_identifiers(&hint)?;
        drop(hint);
        if !self.inner.kubernetes.watches_namespace(&namespace) {
            self.inner.metrics.ignored_event(OUT_OF_SCOPE);
            return Ok(ignored(OUT_OF_SCOPE));
        }
        if self.inner.nats.connection_state() != ConnectionState::Connected {
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "nats_unavailable",
                "not connected to NATS; try again",
            ));
        }
        if matches!(self.inner.emitter.log().get(&uid), Some(Known::Deleted)) {
            // Deleted and recorded so: nothing can be published for it any more.
            return Ok(published(Emitted::default()));
        }
        let live = self
            .inner
            .kubernetes
            .live_taskrun(&namespace, &name, &uid)
            .await
            .map_err(|error| {
                Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "kubernetes_unavailable",
                    format!("reading the TaskRun: {}", error_chain(&error)),
                )
            })?;
        let taskrun = match live {
            LiveTaskRun::Live(taskrun) => taskrun,
            LiveTaskRun::OutOfScope => {
                self.inner.metrics.ignored_event(OUT_OF_SCOPE);
                return Ok(ignored(OUT_OF_SCOPE));
            }
            LiveTaskRun::Unknown => {
                // 2xx: Tekton would retry anything else for ever, and there is nothing to retry.
                self.inner.metrics.ignored_event(UNKNOWN_TASKRUN);
                if let Some(suppressed) = self.inner.refusals.admit(UNKNOWN_TASKRUN, Instant::now())
                {
                    tracing::warn!(
                        namespace = %namespace,
                        name = %name,
                        uid = %uid,
                        suppressed,
                        "ignored a CloudEvent about a TaskRun the API server does not have"
                    );
                }
                return Ok(ignored(UNKNOWN_TASKRUN));
            }
        };
        let pod = self
            .inner
            .kubernetes
            .lookup_pod(&taskrun)
            .await
            .map_err(|error| {
                Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "kubernetes_unavailable",
                    format!("reading the TaskRun's pod: {}", error_chain(&error)),
                )
            })?;
        let derived = derive_transitions(&self.inner.settings, &taskrun, pod.as_deref()).map_err(
            |error| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_taskrun",
                    error_chain(&error),
                )
            },
        )?;
        for step in &derived.malformed_steps {
            self.inner.metrics.malformed_message();
            tracing::warn!(step = %step, "a step's termination message does not parse; its result set is empty");
        }
        let emitted = self
            .inner
            .emitter
            .emit(Source::CloudEvents, &derived)
            .await
            .map_err(|error| {
                if error.is_invalid_input() {
                    Failure::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_taskrun",
                        format!("the TaskRun cannot be recorded: {}", error_chain(&error)),
                    )
                } else if error.is_transient() {
                    Failure::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "nats_unavailable",
                        format!("publishing: {}", error_chain(&error)),
                    )
                } else {
                    tracing::error!(error = %error_chain(&error), "publishing a TaskRun's transitions failed");
                    Failure::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "publish_failed",
                        error_chain(&error),
                    )
                }
            })?;
        Ok(published(emitted))
    }
}

/// The answer once the transitions are published.
fn published(emitted: Emitted) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({ "published": emitted.published, "skipped": emitted.skipped })),
    )
        .into_response()
}

/// The namespace, name and UID of the TaskRun an event is about, refused (400) when missing or
/// not what Kubernetes allows.
fn hinted_identifiers(hint: &TaskRun) -> Result<(String, String, String), Failure> {
    let field = |value: Option<&String>, field: &'static str| {
        value
            .filter(|value| !value.is_empty())
            .cloned()
            .ok_or_else(|| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_taskrun",
                    format!("the TaskRun has no {field}"),
                )
            })
    };
    let namespace = field(hint.metadata.namespace.as_ref(), "metadata.namespace")?;
    let name = field(hint.metadata.name.as_ref(), "metadata.name")?;
    let uid = field(hint.metadata.uid.as_ref(), "metadata.uid")?;
    check_taskrun_identifiers(&namespace, &name, &uid).map_err(|error| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_taskrun",
            error.to_string(),
        )
    })?;
    Ok((namespace, name, uid))
}

fn ignored(reason: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "ignored": reason })),
    )
        .into_response()
}

/// Reads `{"taskRun": ...}` from the event's data.
fn read_taskrun(data: Option<&Data>) -> Result<TaskRun, Failure> {
    let bad = |code, message: String| Failure::new(StatusCode::BAD_REQUEST, code, message);
    let parsed: Result<TektonRunData, serde_path_to_error::Error<serde_json::Error>> = match data {
        None => return Err(bad("missing_data", "the event has no data".into())),
        Some(Data::Json(value)) => serde_path_to_error::deserialize(value),
        Some(Data::Binary(bytes)) => {
            let mut deserializer = serde_json::Deserializer::from_slice(bytes);
            serde_path_to_error::deserialize(&mut deserializer)
        }
        Some(Data::String(text)) => {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut deserializer)
        }
    };
    parsed.map(|data| data.task_run).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = if path == "." {
            format!("data: {inner}")
        } else {
            format!("data.{path}: {inner}")
        };
        bad("invalid_data", message)
    })
}

#[tracing::instrument(name = "receive_tekton_event", skip_all, fields(ce_type, ce_id))]
async fn receive(
    State(ingress): State<Ingress>,
    method: Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match ingress.handle(&method, &headers, body).await {
        Ok(response) => {
            let outcome = if response.status() == StatusCode::ACCEPTED {
                IngressOutcome::Ignored
            } else {
                IngressOutcome::Published
            };
            ingress.inner.metrics.ingress_request(outcome);
            response
        }
        Err(failure) => {
            ingress.inner.metrics.ingress_request(failure.outcome());
            if let Some(suppressed) = ingress.inner.refusals.admit(failure.code, Instant::now()) {
                tracing::warn!(
                    status = %failure.status,
                    code = failure.code,
                    message = %failure.message,
                    suppressed,
                    "refused a request"
                );
            }
            failure.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_name_the_path() {
        let data = Data::Json(json!({"taskRun": {"metadata": {"name": 5}, "spec": {}}}));
        let failure = read_taskrun(Some(&data)).unwrap_err();
        assert_eq!(failure.status, StatusCode::BAD_REQUEST);
        assert_eq!(failure.code, "invalid_data");
        assert!(
            failure.message.starts_with("data.taskRun.metadata.name"),
            "{}",
            failure.message
        );

        let failure = read_taskrun(Some(&Data::Json(json!({"pipelineRun": {}})))).unwrap_err();
        assert_eq!(failure.code, "invalid_data");
        assert!(failure.message.contains("taskRun"), "{}", failure.message);

        let failure = read_taskrun(Some(&Data::Binary(b"{not json".to_vec()))).unwrap_err();
        assert_eq!(failure.code, "invalid_data");
        assert_eq!(read_taskrun(None).unwrap_err().code, "missing_data");
    }

    #[test]
    fn only_identifiers_kubernetes_allows_are_taken_from_an_event() {
        let hint = |namespace: &str, name: &str, uid: &str| {
            let data = Data::Json(json!({"taskRun": {
                "metadata": {"namespace": namespace, "name": name, "uid": uid},
                "spec": {},
            }}));
            hinted_identifiers(&read_taskrun(Some(&data)).unwrap())
        };
        assert_eq!(
            hint("ci", "build.v1", "6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14").unwrap(),
            (
                "ci".to_owned(),
                "build.v1".to_owned(),
                "6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14".to_owned()
            )
        );
        for (namespace, name, uid) in [
            ("", "run", "u"),
            ("ci", "", "u"),
            ("ci", "run", ""),
            ("CI", "run", "u"),
            ("ci", "run/../x", "u"),
            ("ci", "run", "a.b>"),
            ("ci", "run", &"a".repeat(5 * 1024)),
        ] {
            let failure = hint(namespace, name, uid).unwrap_err();
            assert_eq!(
                (failure.status, failure.code),
                (StatusCode::BAD_REQUEST, "invalid_taskrun"),
                "{namespace:?} {name:?} {} bytes of UID",
                uid.len()
            );
        }
    }

    #[test]
    fn every_fixture_payload_reads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tekton/cloudevents");
        let mut read = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let event: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap())
                    .unwrap();
            assert!(TASKRUN_EVENT_TYPES.contains(&event["type"].as_str().unwrap()));
            read_taskrun(Some(&Data::Json(event["data"].clone()))).unwrap();
            read += 1;
        }
        assert_eq!(read, 6);
    }
}
