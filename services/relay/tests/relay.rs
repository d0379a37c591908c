//! The relay against a real nats-server (one per test) and a real HTTP receiver (axum on
//! `127.0.0.1`): binary-mode delivery, retries (503, Retry-After, a timeout, connection refused), dead
//! letters (retries exhausted, a permanent 400), filters, independent sinks, replicas sharing a
//! sink, and shutdown with a delivery in flight. The relay runs as the service it is in
//! production (`run_service` with its admin server), only in-process.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use countersign_events::binding::percent_decode_value;
use countersign_events::{EventPayload, EventType};
use countersign_runtime::RunOutcome;
use countersign_runtime::config::Environment;
use countersign_runtime::health::ReadinessStatus;
use countersign_runtime::http_client::{HttpClientOptions, http_client};
use countersign_test_support::wait;
use tokio::sync::Notify;

use support::{
    Bench, Receiver, Reply, TIMEOUT, deliveries, quick_sink, rejected, start_relay,
    start_relay_with_env, unused_address, verified,
};

fn ids(requests: &[support::Received]) -> BTreeSet<String> {
    requests.iter().map(support::Received::ce_id).collect()
}

#[tokio::test]
async fn delivers_in_binary_mode_with_every_attribute_and_configured_headers() {
    let bench = Bench::start().await;
    let receiver = Receiver::start().await;
    let secrets = tempfile::tempdir().expect("a temporary directory");
    let token = secrets.path().join("token");
    std::fs::write(&token, "s3cr3t-token\n").expect("writing the token");
    let sinks = format!(
        "{}[sinks.headers]\nAuthorization = {{ from_file = \"{}\", prefix = \"Bearer \" }}\n\
         X-Api-Key = {{ from_env = \"RELAY_TEST_KEY\" }}\nX-Team = \"builds\"\n",
        quick_sink("listener", &receiver.url("/events"), 5),
        token.display()
    );
    let env = Environment::new().with("RELAY_TEST_KEY", "key-123");
    let relay = start_relay_with_env(&bench.nats, &sinks, env).await;

    let mut event = verified("team-a", "build-1");
    event.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    event.tracestate = Some("congo=t61rcWkgMzE, rojo=00f067aa0ba902b7".into());
    let published = bench.publish(&event).await;

    let requests = receiver.wait_for(1).await;
    bench.settled("listener", published.sequence).await;
    let request = &receiver.requests()[0];
    assert_eq!(receiver.requests().len(), 1, "delivered once: {requests:?}");
    assert_eq!(request.method, axum::http::Method::POST);
    assert_eq!(request.path, "/events");

    let header = |name: &str| request.header(name).unwrap_or_default().to_owned();
    assert_eq!(header("ce-specversion"), "1.0");
    assert_eq!(header("ce-id"), event.id);
    assert_eq!(header("ce-id"), "uid-team-a-build-1:attestation");
    assert_eq!(header("ce-source"), "/countersign/attestor");
    assert_eq!(header("ce-type"), EventType::AttestationVerified.as_str());
    assert_eq!(header("ce-subject"), "team-a/build-1");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(&header("ce-time")).expect("RFC 3339"),
        event.time,
        "the time the attestor observed, not the time of delivery"
    );
    assert_eq!(
        header("ce-dataschema"),
        EventType::AttestationVerified.dataschema()
    );
    assert_eq!(
        header("ce-traceparent"),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(
        header("ce-tracestate"),
        "congo=t61rcWkgMzE,%20rojo=00f067aa0ba902b7",
        "the space is percent-encoded as the binding requires"
    );
    assert_eq!(
        percent_decode_value(&header("ce-tracestate")).as_deref(),
        event.tracestate.as_deref()
    );
    assert_eq!(header("content-type"), "application/json");
    let ce_headers: BTreeSet<&str> = request
        .headers
        .keys()
        .map(|name| name.as_str())
        .filter(|name| name.starts_with("ce-"))
        .collect();
    assert_eq!(
        ce_headers,
        BTreeSet::from([
            "ce-specversion",
            "ce-id",
            "ce-source",
            "ce-type",
            "ce-subject",
            "ce-time",
            "ce-dataschema",
            "ce-traceparent",
            "ce-tracestate",
        ])
    );
    let body: serde_json::Value = serde_json::from_slice(&request.body).expect("a JSON body");
    let data: serde_json::Value =
        serde_json::from_slice(&event.data.to_json().expect("the data")).expect("JSON");
    assert_eq!(body, data, "the body is the event's data");

    assert_eq!(header("authorization"), "Bearer s3cr3t-token");
    assert_eq!(header("x-api-key"), "key-123");
    assert_eq!(header("x-team"), "builds");

    assert_eq!(relay.metric(&deliveries("listener", "delivered")), 1.0);
    assert_eq!(
        relay.metric("countersign_relay_delivery_duration_seconds_count{sink=\"listener\"}"),
        1.0
    );
    assert_eq!(bench.dead_letter_count().await, 0);

    let admin = http_client(HttpClientOptions::new().timeout(Duration::from_secs(5)))
        .expect("an HTTP client");
    let ready = admin
        .get(format!("http://{}/readyz", relay.admin))
        .send()
        .await
        .expect("/readyz answers");
    assert!(ready.status().is_success());
    let scraped = admin
        .get(format!("http://{}/metrics", relay.admin))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("the metrics");
    assert_eq!(
        countersign_test_support::metrics::value(&scraped, &deliveries("listener", "delivered")),
        1.0
    );
    assert!(matches!(relay.stop().await, RunOutcome::Drained { .. }));
}

#[tokio::test]
async fn a_503_is_retried_and_the_event_is_acked_once_after_the_2xx() {
    let bench = Bench::start().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(503).body("warming up")]);
    let relay = start_relay(&bench.nats, &quick_sink("broker", &receiver.url("/"), 5)).await;

    let event = verified("team-a", "build-2");
    let published = bench.publish(&event).await;
    receiver.wait_for(2).await;
    bench.settled("broker", published.sequence).await;

    let requests = receiver.requests();
    assert_eq!(
        requests.len(),
        2,
        "the failed attempt and the retry, nothing more"
    );
    assert!(requests.iter().all(|request| request.ce_id() == event.id));
    assert_eq!(relay.metric(&deliveries("broker", "retry")), 1.0);
    assert_eq!(relay.metric(&deliveries("broker", "delivered")), 1.0);
    assert_eq!(
        relay
            .metric("countersign_events_consumed_total{consumer=\"relay-broker\",outcome=\"ack\"}"),
        1.0,
        "exactly one ack"
    );
    let mut consumer = bench.consumer("broker").await;
    let info = consumer.info().await.expect("consumer info");
    assert_eq!(info.ack_floor.stream_sequence, published.sequence);
    assert_eq!(info.num_ack_pending, 0, "nothing left to redeliver");
    assert_eq!(bench.dead_letter_count().await, 0);
}

#[tokio::test]
async fn a_retry_after_from_the_sink_is_honoured() {
    let bench = Bench::start().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(429).retry_after("1")]);
    // The backoff alone would retry after 50 ms; `max_backoff` caps how long a Retry-After is
    // honoured, so it is above the sink's second here.
    let sink = format!(
        "[[sinks]]\nname = \"broker\"\nurl = \"{}\"\n[sinks.retry]\ninitial_backoff = \"50ms\"\n\
         max_backoff = \"5s\"\n",
        receiver.url("/")
    );
    let relay = start_relay(&bench.nats, &sink).await;

    let published = bench.publish(&verified("team-a", "build-3")).await;
    let requests = receiver.wait_for(2).await;
    bench.settled("broker", published.sequence).await;
    let gap = requests[1].at.duration_since(requests[0].at);
    assert!(
        gap >= Duration::from_secs(1),
        "the retry came {gap:?} after the 429, before its Retry-After of 1s"
    );
    assert_eq!(relay.metric(&deliveries("broker", "delivered")), 1.0);
}

#[tokio::test]
async fn a_sink_that_does_not_answer_in_time_is_retried() {
    let bench = Bench::start().await;
    let receiver = Receiver::start().await;
    // The first request is never answered; the relay gives up on it after the sink's timeout.
    let never = Arc::new(Notify::new());
    receiver.script([Reply::status(202).held_until(never)]);
    let sink = format!(
        "[[sinks]]\nname = \"slow\"\nurl = \"{}\"\ntimeout = \"300ms\"\n[sinks.retry]\n\
         initial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\n",
        receiver.url("/")
    );
    let relay = start_relay(&bench.nats, &sink).await;

    let event = verified("team-a", "hung");
    let published = bench.publish(&event).await;
    receiver.wait_for(2).await;
    bench.settled("slow", published.sequence).await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2, "the timed-out attempt and the retry");
    assert!(requests.iter().all(|request| request.ce_id() == event.id));
    assert_eq!(relay.metric(&deliveries("slow", "retry")), 1.0);
    assert_eq!(relay.metric(&deliveries("slow", "delivered")), 1.0);
    assert_eq!(bench.dead_letter_count().await, 0);
}

#[tokio::test]
async fn retries_exhausted_are_dead_lettered_with_the_reason() {
    let bench = Bench::start().await;
    let receiver = Receiver::start().await;
    receiver.answer_by_default(Reply::status(503).body("down for maintenance"));
    let relay = start_relay(&bench.nats, &quick_sink("broker", &receiver.url("/"), 3)).await;

    let event = rejected("team-a", "build-4");
    let published = bench.publish(&event).await;
    let letters = bench.dead_letters(1).await;
    bench.settled("broker", published.sequence).await;

    let letter = &letters[0];
    assert_eq!(letter.reason, "retries_exhausted");
    assert_eq!(letter.consumer, "relay-broker");
    assert_eq!(letter.deliveries, 3);
    assert_eq!(letter.original_sequence, published.sequence);
    assert_eq!(letter.header("ce-id"), Some(event.id.as_str()));
    assert!(letter.detail.contains("503"), "{}", letter.detail);
    assert!(
        letter.detail.contains("down for maintenance"),
        "{}",
        letter.detail
    );
    assert_eq!(
        receiver.requests().len(),
        3,
        "exactly max_attempts deliveries"
    );
    assert_eq!(relay.metric(&deliveries("broker", "retry")), 2.0);
    assert_eq!(relay.metric(&deliveries("broker", "exhausted")), 1.0);
    assert_eq!(
        relay.metric(
            "countersign_relay_dead_letters_total{sink=\"broker\",reason=\"retries_exhausted\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_permanent_400_is_dead_lettered_at_once_with_the_status_and_body() {
    let bench = Bench::start().await;
    let receiver = Receiver::start().await;
    receiver.answer_by_default(Reply::status(400).body("{\"error\":\"unknown event type\"}"));
    let relay = start_relay(&bench.nats, &quick_sink("broker", &receiver.url("/"), 10)).await;

    let event = verified("team-a", "build-5");
    let published = bench.publish(&event).await;
    let letters = bench.dead_letters(1).await;
    bench.settled("broker", published.sequence).await;

    let letter = &letters[0];
    assert_eq!(letter.reason, "rejected");
    assert_eq!(letter.code.as_deref(), Some("http_400"));
    assert_eq!(letter.deliveries, 1);
    assert!(letter.detail.contains("400"), "{}", letter.detail);
    assert!(
        letter.detail.contains("unknown event type"),
        "the body excerpt: {}",
        letter.detail
    );
    assert_eq!(letter.header("ce-id"), Some(event.id.as_str()));
    assert_eq!(
        receiver.requests().len(),
        1,
        "a permanent answer is not retried"
    );
    assert_eq!(relay.metric(&deliveries("broker", "rejected")), 1.0);
    assert_eq!(
        relay.metric("countersign_relay_dead_letters_total{sink=\"broker\",reason=\"rejected\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_everything_once_it_is_back() {
    let bench = Bench::start().await;
    let address = unused_address();
    let relay = start_relay(
        &bench.nats,
        &quick_sink("listener", &format!("http://{address}/hook"), 1000),
    )
    .await;

    let mut expected = BTreeSet::new();
    let mut last = 0;
    for name in ["run-1", "run-2", "run-3"] {
        let event = verified("team-a", name);
        expected.insert(event.id.clone());
        last = bench.publish(&event).await.sequence;
    }
    wait::until_true("refused attempts", TIMEOUT, || async {
        relay.metric(&deliveries("listener", "retry")) >= 6.0
    })
    .await
    .expect("the relay keeps retrying while the receiver is down");
    assert_eq!(relay.metric(&deliveries("listener", "delivered")), 0.0);

    let receiver = Receiver::start_on(address).await;
    receiver.wait_for(3).await;
    bench.settled("listener", last).await;
    let requests = receiver.requests();
    assert_eq!(ids(&requests), expected, "nothing lost");
    assert_eq!(requests.len(), 3, "each delivered once");
    assert_eq!(bench.dead_letter_count().await, 0);
}

#[tokio::test]
async fn filters_decide_which_sink_gets_which_event() {
    let bench = Bench::start().await;
    let receiver = Receiver::start().await;
    let sinks = format!(
        "{}[sinks.filter]\nkinds = [\"verified\"]\n{}[sinks.filter]\nnamespaces = [\"team-b\"]\n\
         {}[sinks.filter]\nkinds = [\"rejected\"]\nnamespaces = [\"team-a\"]\n",
        quick_sink("verified-only", &receiver.url("/verified-only"), 5),
        quick_sink("team-b", &receiver.url("/team-b"), 5),
        quick_sink("team-a-rejections", &receiver.url("/team-a-rejections"), 5),
    );
    let relay = start_relay(&bench.nats, &sinks).await;

    let verified_a = verified("team-a", "v");
    let rejected_a = rejected("team-a", "r");
    let verified_b = verified("team-b", "v");
    let rejected_b = rejected("team-b", "r");
    let mut sequences = Vec::new();
    for event in [&verified_a, &rejected_a, &verified_b, &rejected_b] {
        sequences.push(bench.publish(event).await.sequence);
    }
    receiver.wait_for(5).await;
    // Each consumer's ack floor stops at the last message its filter subjects take.
    bench.settled("verified-only", sequences[2]).await;
    bench.settled("team-b", sequences[3]).await;
    bench.settled("team-a-rejections", sequences[1]).await;

    let set = |events: &[&countersign_events::Event<countersign_events::AttestationEvent>]| {
        events
            .iter()
            .map(|event| event.id.clone())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        ids(&receiver.requests_to("/verified-only")),
        set(&[&verified_a, &verified_b]),
        "a rejected event is not delivered to a verified-only sink"
    );
    assert_eq!(
        ids(&receiver.requests_to("/team-b")),
        set(&[&verified_b, &rejected_b])
    );
    assert_eq!(
        ids(&receiver.requests_to("/team-a-rejections")),
        set(&[&rejected_a])
    );
    assert_eq!(receiver.requests().len(), 5);
    assert_eq!(
        relay.metric(&deliveries("team-a-rejections", "filtered")),
        0.0,
        "kind and namespace are filtered on the server: the verified event of team-a never \
         reached that consumer"
    );
    assert_eq!(relay.metric(&deliveries("verified-only", "filtered")), 0.0);
}

#[tokio::test]
async fn a_failing_sink_does_not_hold_up_another() {
    let bench = Bench::start().await;
    let healthy = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.answer_by_default(Reply::status(503));
    let sinks = format!(
        "{}{}",
        quick_sink("healthy", &healthy.url("/"), 1000),
        quick_sink("failing", &failing.url("/"), 1000)
    );
    let relay = start_relay(&bench.nats, &sinks).await;

    let mut expected = BTreeSet::new();
    let mut last = 0;
    for index in 0..5 {
        let event = verified("team-a", &format!("run-{index}"));
        expected.insert(event.id.clone());
        last = bench.publish(&event).await.sequence;
    }
    healthy.wait_for(5).await;
    bench.settled("healthy", last).await;
    assert_eq!(ids(&healthy.requests()), expected);
    assert_eq!(relay.metric(&deliveries("failing", "delivered")), 0.0);
    assert!(relay.metric(&deliveries("failing", "retry")) >= 1.0);

    failing.answer_by_default(Reply::status(202));
    bench.settled("failing", last).await;
    let recovered: BTreeSet<String> = failing
        .requests()
        .iter()
        .map(support::Received::ce_id)
        .collect();
    assert_eq!(
        recovered, expected,
        "the failing sink gets everything once it recovers"
    );
    assert_eq!(relay.metric(&deliveries("failing", "delivered")), 5.0);
    assert_eq!(
        healthy.requests().len(),
        5,
        "the healthy sink got each event once"
    );
}

#[tokio::test]
async fn replicas_share_a_sink_and_deliver_each_event_once() {
    let bench = Bench::start().await;
    let receiver = Receiver::start().await;
    let sinks = quick_sink("broker", &receiver.url("/"), 5);
    let first = start_relay(&bench.nats, &sinks).await;
    let second = start_relay(&bench.nats, &sinks).await;

    let mut expected = BTreeSet::new();
    let mut last = 0;
    for index in 0..10 {
        let event = rejected("team-c", &format!("run-{index}"));
        expected.insert(event.id.clone());
        last = bench.publish(&event).await.sequence;
    }
    receiver.wait_for(10).await;
    bench.settled("broker", last).await;
    assert_eq!(ids(&receiver.requests()), expected);
    assert_eq!(receiver.requests().len(), 10, "no event delivered twice");
    let delivered = first.metric(&deliveries("broker", "delivered"))
        + second.metric(&deliveries("broker", "delivered"));
    assert_eq!(delivered, 10.0);
}

#[tokio::test]
async fn shutdown_lets_the_delivery_in_flight_finish_and_acks_it() {
    let bench = Bench::start().await;
    let receiver = Receiver::start().await;
    let release = Arc::new(Notify::new());
    receiver.script([Reply::status(202).held_until(release.clone())]);
    let mut relay = start_relay(&bench.nats, &quick_sink("broker", &receiver.url("/"), 5)).await;

    let published = bench.publish(&verified("team-a", "slow")).await;
    receiver.wait_for(1).await;
    relay.request_stop();
    let draining = relay.context.readiness.clone();
    wait::until_true("the relay to start draining", TIMEOUT, || {
        let draining = draining.clone();
        async move { draining.status() == ReadinessStatus::Draining }
    })
    .await
    .expect("shutdown starts");
    assert!(
        !relay.is_finished(),
        "the relay waits for the delivery in flight"
    );
    release.notify_one();
    let outcome = relay.stop().await;
    assert!(matches!(outcome, RunOutcome::Drained { .. }), "{outcome:?}");

    let mut consumer = bench.consumer("broker").await;
    let info = consumer.info().await.expect("consumer info");
    assert_eq!(
        info.ack_floor.stream_sequence, published.sequence,
        "acked after the sink answered"
    );
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(receiver.requests().len(), 1);
}
