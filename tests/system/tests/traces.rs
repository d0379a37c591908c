//! One TaskRun is one trace, seen in a real trace store: a real Jaeger v2 takes the services' OTLP
//! spans; the services run as in the demo (each its own process, its config's
//! `telemetry.otlp_endpoint` pointing at Jaeger); the demo's honest TaskRun is played; then the
//! trace is read back from Jaeger's query API. Its spans must cover watcher → registrar and
//! watcher → attestor → relay, each consumer's span a child (`CHILD_OF`, as the consumer sets
//! the event's context as its parent) of the span that published its event. A malformed event
//! published with a traceparent must show up in that trace as a consumer span with an error
//! status that says it was dead-lettered.

use std::path::Path;
use std::time::Duration;

use async_nats::HeaderMap;
use countersign_events::data::TaskRunRef;
use countersign_events::trace::taskrun_trace_id;
use countersign_events::{EventType, Subjects};
use countersign_system_tests::demo::configs::CLUSTER_NAME;
use countersign_system_tests::demo::{Binaries, Demo, PREFIX, Reporter, error_lines};
use countersign_system_tests::traces::{Trace, wait_for_trace};
use countersign_test_support::jaeger::Jaeger;

/// How long the spans of a trace may take to reach the store (the services export in batches,
/// every 5 s by default).
const TRACE_TIMEOUT: Duration = Duration::from_secs(60);

/// The consumer span of `service` that handled an event of `event_type`.
fn handled<'a>(
    trace: &'a Trace,
    service: &str,
    event_type: &str,
) -> Option<&'a countersign_system_tests::traces::Span> {
    trace.spans.iter().find(|span| {
        span.service == service
            && span.operation == "handle_event"
            && span.tag("ce.type") == Some(event_type)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_taskrun_is_one_trace_across_the_services_and_a_dead_letter_carries_its_error() {
    let jaeger = Jaeger::start()
        .await
        .unwrap_or_else(|error| panic!("jaeger did not start: {error}"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = countersign_test_support::repo_root();
    let target = countersign_test_support::workspace::target_dir();
    let binaries = tokio::task::spawn_blocking(move || {
        Binaries::build(&cargo, Path::new(&root), Some(&target))
    })
    .await
    .expect("the build task")
    .unwrap_or_else(|error| panic!("building the binaries: {}", error_lines(&error)));

    let (reporter, captured) = Reporter::capture();
    let demo =
        match Demo::start_exporting_to(binaries, reporter, Some(jaeger.otlp_endpoint())).await {
            Ok(demo) => demo,
            Err(error) => panic!(
                "the system did not start: {}\n---- demo output ----\n{}",
                error_lines(&error),
                captured.text()
            ),
        };
    let played = demo.play().await;
    let report = match played {
        Ok(report) => report,
        Err(error) => {
            demo.shutdown().await;
            panic!(
                "the scenario did not finish: {}\n---- demo output ----\n{}",
                error_lines(&error),
                captured.text()
            )
        }
    };

    // A malformed event on the registrar's subject, in a trace of our own.
    let client = async_nats::connect(demo.nats_url())
        .await
        .expect("connecting to nats-server");
    let jetstream = async_nats::jetstream::new(client);
    let subjects = Subjects::new(PREFIX).expect("the bus prefix");
    let dead_trace = "5c1e7a0b9d2f4e6a8b3c1d0e2f4a6b8c";
    let dead_parent = "a1b2c3d4e5f60718";
    let subject = subjects
        .for_taskrun(
            EventType::TaskRunScheduled,
            &TaskRunRef {
                cluster: CLUSTER_NAME.to_owned(),
                namespace: "default".to_owned(),
                name: "malformed".to_owned(),
                uid: "00000000-0000-0000-0000-00000000dead".to_owned(),
            },
        )
        .expect("a subject");
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", "malformed-1");
    headers.insert("ce-source", "/test/traces");
    headers.insert("ce-type", EventType::TaskRunScheduled.as_str());
    headers.insert("content-type", "application/json");
    headers.insert(
        "ce-traceparent",
        format!("00-{dead_trace}-{dead_parent}-01").as_str(),
    );
    jetstream
        .publish_with_headers(subject, headers, "{ not json".into())
        .await
        .expect("publishing the malformed event")
        .await
        .expect("its PubAck");

    let honest_trace = taskrun_trace_id(&report.honest.uid).to_string();
    let trace = wait_for_trace(
        &jaeger.query_address(),
        &honest_trace,
        TRACE_TIMEOUT,
        |trace| {
            trace.spans_of("relay", "handle_event").next().is_some()
                && trace.spans_of("registrar", "handle_event").next().is_some()
                && trace.spans_of("attestor", "handle_event").next().is_some()
        },
    )
    .await;
    let dead = wait_for_trace(
        &jaeger.query_address(),
        dead_trace,
        TRACE_TIMEOUT,
        |trace| trace.spans.iter().any(|span| span.is_error()),
    )
    .await;
    demo.shutdown().await;
    let output = captured.text();
    let trace = trace.unwrap_or_else(|error| {
        panic!("the honest TaskRun's trace: {error}\n---- demo output ----\n{output}")
    });
    let tree = trace.render_tree();

    // One trace: every span the query returned is in it, and the services' spans are all there.
    assert!(
        trace.spans.iter().all(|span| span.trace_id == honest_trace),
        "{tree}"
    );
    for service in ["watcher", "registrar", "attestor", "relay"] {
        assert!(
            trace.spans.iter().any(|span| span.service == service),
            "no span of {service} in\n{tree}"
        );
    }
    // watcher → registrar: the registrar's handling of `scheduled` is a child of the watcher's
    // publication.
    let registered = handled(&trace, "registrar", EventType::TaskRunScheduled.as_str())
        .unwrap_or_else(|| panic!("no registrar span for taskrun.scheduled in\n{tree}"));
    let publisher = trace
        .parent_of(registered)
        .unwrap_or_else(|| panic!("the registrar's span has no parent in the trace\n{tree}"));
    assert_eq!(publisher.service, "watcher", "{tree}");
    assert_eq!(publisher.operation, "publish_transitions", "{tree}");
    assert!(registered.follows_from.is_empty(), "{tree}");
    // watcher → attestor → relay.
    // The live lane's span, the one that attested: the backlog lane's consumer sees the same
    // event and acks it unhandled, in a span of its own.
    let attested = trace
        .spans
        .iter()
        .find(|span| {
            span.service == "attestor"
                && span.operation == "handle_event"
                && span.tag("ce.type") == Some(EventType::TaskRunFinished.as_str())
                && trace.spans.iter().any(|child| {
                    child.operation == "attest_taskrun"
                        && trace
                            .parent_of(child)
                            .is_some_and(|parent| parent.span_id == span.span_id)
                })
        })
        .unwrap_or_else(|| panic!("no attestor span attesting taskrun.finished in\n{tree}"));
    let publisher = trace
        .parent_of(attested)
        .unwrap_or_else(|| panic!("the attestor's span has no parent in the trace\n{tree}"));
    assert_eq!(publisher.service, "watcher", "{tree}");
    let relayed = handled(&trace, "relay", EventType::AttestationVerified.as_str())
        .unwrap_or_else(|| panic!("no relay span for attestation.verified in\n{tree}"));
    let upstream = trace
        .upstream_of(relayed)
        .unwrap_or_else(|| panic!("the relay's span has no upstream in the trace\n{tree}"));
    assert_eq!(upstream.service, "attestor", "{tree}");
    assert_eq!(
        trace.parent_of(relayed).map(|span| span.service.as_str()),
        Some("attestor"),
        "{tree}"
    );
    let mut ancestor = trace.parent_of(relayed);
    while let Some(span) = ancestor.filter(|span| span.span_id != attested.span_id) {
        ancestor = trace.parent_of(span);
    }
    assert!(
        ancestor.is_some(),
        "the relay's span does not descend from the attestor's handling of taskrun.finished\n{tree}"
    );
    // The tampered TaskRun is a trace of its own: none of its verdicts is in this one.
    assert!(
        handled(&trace, "relay", EventType::AttestationRejected.as_str()).is_none(),
        "{tree}"
    );

    // The dead-lettered event: a consumer span in our trace, child of our traceparent, in error.
    let dead = dead.unwrap_or_else(|error| {
        panic!("the malformed event's trace: {error}\n---- demo output ----\n{output}")
    });
    let dead_tree = dead.render_tree();
    let failed: Vec<_> = dead.spans.iter().filter(|span| span.is_error()).collect();
    assert!(
        failed.iter().any(|span| span.service == "registrar"),
        "{dead_tree}"
    );
    for span in failed {
        assert_eq!(span.operation, "handle_event", "{dead_tree}");
        assert_eq!(span.parent.as_deref(), Some(dead_parent), "{dead_tree}");
        let description = span.error_description().unwrap_or_default();
        assert!(description.starts_with("dead-lettered ("), "{dead_tree}");
    }
}
