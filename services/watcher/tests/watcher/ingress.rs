//! The CloudEvents ingress with Tekton's own events: every fixture in binary and structured mode,
//! the types it ignores, malformed and oversized bodies, NATS down, and the ingress and the watch
//! seeing the same TaskRun at once.

use countersign_events::LifecycleEvent;
use countersign_events::data::Outcome;
use serde_json::{Value, json};

use crate::support::{
    Harness, Received, assert_unique_ids, cloudevent_fixture, signed_message, transitions,
    v1beta1_event,
};

const INGRESS_REQUESTS: &str = "countersign_watcher_ingress_requests_total";
const IGNORED: &str = "countersign_watcher_ignored_events_total";

/// A TaskRun known only through CloudEvents (not in the API), with its pod in the API.
struct Identity {
    name: String,
    uid: String,
    pod: String,
    pod_uid: String,
}

impl Identity {
    fn new(name: &str, uid: &str) -> Identity {
        Identity {
            name: name.to_owned(),
            uid: uid.to_owned(),
            pod: format!("{name}-pod"),
            pod_uid: String::new(),
        }
    }

    /// Creates the pod in the API, as Tekton does once the TaskRun is picked up.
    async fn create_pod(&mut self, harness: &Harness) {
        self.pod_uid = harness.create_pod(&self.name, &self.uid, &self.pod).await;
    }
}

fn fixture(harness: &Harness, file: &str, identity: &Identity) -> Value {
    cloudevent_fixture(
        file,
        &harness.namespace,
        &identity.name,
        &identity.uid,
        &identity.pod,
    )
}

fn of(events: &[Received], identity: &Identity) -> Vec<String> {
    events
        .iter()
        .filter(|received| received.uid() == identity.uid)
        .map(Received::transition)
        .collect()
}

#[tokio::test]
async fn every_fixture_cloudevent_in_binary_and_structured_mode() {
    let harness = Harness::start("ingress").await;
    let mut watcher = harness.start_watcher().await;
    let mut binary = Identity::new("ce-binary", "00000000-0000-4000-8000-000000000001");
    let mut structured = Identity::new("ce-structured", "00000000-0000-4000-8000-000000000002");
    let mut binary_failed =
        Identity::new("ce-binary-failed", "00000000-0000-4000-8000-000000000003");
    let mut structured_failed = Identity::new(
        "ce-structured-failed",
        "00000000-0000-4000-8000-000000000004",
    );

    // Each event of the lifecycle publishes what it newly implies, and answers only after that.
    // The pod appears between `started` and `running`, as Tekton creates it.
    let lifecycle = [
        ("ce-taskrun-01-queued.json", 1),
        ("ce-taskrun-02-started.json", 0),
        ("ce-taskrun-03-running.json", 1),
        ("ce-taskrun-04-unknown.json", 0),
        ("ce-taskrun-05-successful.json", 3),
    ];
    for (file, published) in lifecycle {
        if file == "ce-taskrun-03-running.json" {
            binary.create_pod(&harness).await;
            structured.create_pod(&harness).await;
        }
        let (status, body) = watcher.post_binary(&fixture(&harness, file, &binary)).await;
        assert_eq!(
            (status, body["published"].as_u64()),
            (200, Some(published)),
            "binary {file}: {body}"
        );
        let (status, body) = watcher
            .post_structured(&fixture(&harness, file, &structured))
            .await;
        assert_eq!(
            (status, body["published"].as_u64()),
            (200, Some(published)),
            "structured {file}: {body}"
        );
    }
    binary_failed.create_pod(&harness).await;
    structured_failed.create_pod(&harness).await;
    // A failed TaskRun seen only at its end still yields its whole lifecycle.
    let (status, body) = watcher
        .post_binary(&fixture(
            &harness,
            "ce-taskrun-06-failed.json",
            &binary_failed,
        ))
        .await;
    assert_eq!(
        (status, body["published"].as_u64()),
        (200, Some(5)),
        "{body}"
    );
    let (status, body) = watcher
        .post_structured(&fixture(
            &harness,
            "ce-taskrun-06-failed.json",
            &structured_failed,
        ))
        .await;
    assert_eq!(
        (status, body["published"].as_u64()),
        (200, Some(5)),
        "{body}"
    );

    // Sending an event again publishes nothing.
    let (status, body) = watcher
        .post_binary(&fixture(&harness, "ce-taskrun-05-successful.json", &binary))
        .await;
    assert_eq!(
        (status, body["published"].as_u64()),
        (200, Some(0)),
        "{body}"
    );

    // PipelineRun and CustomRun events are accepted and ignored, and counted by type.
    for event_type in [
        "dev.tekton.event.pipelinerun.successful.v1",
        "dev.tekton.event.customrun.running.v1",
    ] {
        let mut event = fixture(&harness, "ce-taskrun-01-queued.json", &binary);
        event["type"] = Value::from(event_type);
        event["data"] = json!({ "pipelineRun": { "metadata": { "name": "p" } } });
        let (status, body) = watcher.post_binary(&event).await;
        assert_eq!(status, 202, "{event_type}: {body}");
        assert_eq!(
            watcher.metric(IGNORED, &[("event_type", event_type)]).await,
            1.0
        );
    }

    assert_eq!(
        watcher
            .metric(INGRESS_REQUESTS, &[("outcome", "published")])
            .await,
        13.0
    );
    assert_eq!(
        watcher
            .metric(INGRESS_REQUESTS, &[("outcome", "ignored")])
            .await,
        2.0
    );
    assert!(watcher.terminate().await.success());

    let events = harness.events().await;
    assert_unique_ids(&events);
    for identity in [&binary, &structured, &binary_failed, &structured_failed] {
        assert_eq!(
            of(&events, identity),
            [
                "created".to_owned(),
                format!("scheduled:{}", identity.pod_uid),
                format!("step-completed:{}:clone", identity.pod_uid),
                format!("step-completed:{}:build", identity.pod_uid),
                "finished".to_owned(),
            ],
            "{}",
            identity.name
        );
    }
    let outcome = |identity: &Identity| {
        events
            .iter()
            .filter(|received| received.uid() == identity.uid)
            .find_map(|received| match &received.event.data {
                LifecycleEvent::Finished(finished) => Some(finished.outcome),
                _ => None,
            })
    };
    assert_eq!(outcome(&binary), Some(Outcome::Succeeded));
    assert_eq!(outcome(&structured), Some(Outcome::Succeeded));
    assert_eq!(outcome(&binary_failed), Some(Outcome::Failed));
    assert_eq!(outcome(&structured_failed), Some(Outcome::Failed));
}

/// A malformed request and the error it must get.
struct Malformed {
    what: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    code: &'static str,
    named: &'static str,
}

#[tokio::test]
async fn malformed_bodies_get_400_with_a_json_error_naming_the_problem() {
    let harness = Harness::start("malformed").await;
    let watcher = harness.start_watcher().await;
    let binary_headers = |event_type: &'static str| {
        vec![
            ("content-type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/apis///namespaces/x//y"),
            ("ce-type", event_type),
        ]
    };
    const TASKRUN_TYPE: &str = "dev.tekton.event.taskrun.running.v1";

    let cases = vec![
        Malformed {
            what: "no CloudEvent attributes at all",
            headers: vec![("content-type", "application/json")],
            body: b"{}".to_vec(),
            code: "invalid_cloudevent",
            named: "CloudEvent",
        },
        Malformed {
            what: "structured mode that is not JSON",
            headers: vec![("content-type", "application/cloudevents+json")],
            body: b"{not json".to_vec(),
            code: "invalid_cloudevent",
            named: "json",
        },
        Malformed {
            what: "binary mode without ce-id",
            headers: vec![
                ("content-type", "application/json"),
                ("ce-specversion", "1.0"),
                ("ce-source", "/x"),
                ("ce-type", TASKRUN_TYPE),
            ],
            body: b"{}".to_vec(),
            code: "invalid_cloudevent",
            named: "attribute id",
        },
        Malformed {
            what: "data that is not JSON",
            headers: binary_headers(TASKRUN_TYPE),
            body: b"hello".to_vec(),
            code: "invalid_data",
            named: "data",
        },
        Malformed {
            what: "data without a taskRun",
            headers: binary_headers(TASKRUN_TYPE),
            body: br#"{"pipelineRun": {}}"#.to_vec(),
            code: "invalid_data",
            named: "taskRun",
        },
        Malformed {
            what: "a taskRun field of the wrong type",
            headers: binary_headers(TASKRUN_TYPE),
            body: br#"{"taskRun": {"metadata": {"name": 5}, "spec": {}}}"#.to_vec(),
            code: "invalid_data",
            named: "data.taskRun.metadata.name",
        },
        Malformed {
            what: "a taskRun without a UID",
            headers: binary_headers(TASKRUN_TYPE),
            body: json!({ "taskRun": {
                "metadata": { "name": "x", "namespace": harness.namespace, "creationTimestamp": "2026-08-20T10:00:00Z" },
                "spec": {}
            }})
            .to_string()
            .into_bytes(),
            code: "invalid_taskrun",
            named: "metadata.uid",
        },
        Malformed {
            what: "a UID that cannot be recorded",
            headers: binary_headers(TASKRUN_TYPE),
            body: json!({ "taskRun": {
                "metadata": { "name": "x", "namespace": harness.namespace, "uid": "a.b>", "creationTimestamp": "2026-08-20T10:00:00Z" },
                "spec": {}
            }})
            .to_string()
            .into_bytes(),
            code: "invalid_taskrun",
            named: "UID",
        },
    ];
    let count = cases.len();
    for Malformed {
        what,
        headers,
        body,
        code,
        named,
    } in cases
    {
        let (status, answer) = watcher.post_raw(&headers, body).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["error"], code, "{what}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(
            message.to_lowercase().contains(&named.to_lowercase()),
            "{what}: the message names {named:?}: {answer}"
        );
    }
    assert_eq!(
        watcher
            .metric(INGRESS_REQUESTS, &[("outcome", "bad_request")])
            .await,
        count as f64
    );

    // A batch is not taken, and only POST is.
    let (status, answer) = watcher
        .post_raw(
            &[("content-type", "application/cloudevents-batch+json")],
            b"[]".to_vec(),
        )
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (415, Some("batch_not_supported"))
    );
    let response = watcher
        .http()
        .get(watcher.ingress_url())
        .send()
        .await
        .expect("a GET");
    assert_eq!(response.status().as_u16(), 405);
    assert!(harness.events().await.is_empty(), "nothing was published");
}

#[tokio::test]
async fn an_oversized_body_gets_413() {
    let mut harness = Harness::start("oversized").await;
    harness.set("COUNTERSIGN_INGRESS__MAX_BODY_BYTES", "65536");
    let watcher = harness.start_watcher().await;
    let identity = Identity::new("big", "00000000-0000-4000-8000-0000000000b1");
    let mut event = fixture(&harness, "ce-taskrun-01-queued.json", &identity);
    event["data"]["taskRun"]["metadata"]["annotations"] =
        json!({ "padding": "x".repeat(100 * 1024) });
    let (status, answer) = watcher.post_structured(&event).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "payload_too_large");
    let (status, answer) = watcher.post_binary(&event).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    assert_eq!(
        watcher
            .metric(INGRESS_REQUESTS, &[("outcome", "too_large")])
            .await,
        2.0
    );

    // Under the limit, the same event is taken.
    let small = fixture(&harness, "ce-taskrun-01-queued.json", &identity);
    let (status, answer) = watcher.post_structured(&small).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn nats_down_gets_503_and_the_retry_after_recovery_publishes_once() {
    let mut harness = Harness::start("nats-down").await;
    let watcher = harness.start_watcher().await;
    let identity = Identity::new("while-down", "00000000-0000-4000-8000-0000000000d1");
    let event = fixture(&harness, "ce-taskrun-01-queued.json", &identity);

    harness.nats.stop();
    let (status, answer) = watcher.post_binary(&event).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "nats_unavailable");

    harness
        .nats
        .restart()
        .await
        .expect("restarting nats-server");
    // Tekton retries; once the watcher has reconnected the event is taken.
    let taken = countersign_test_support::wait::until(
        "the ingress to take the event again",
        crate::support::TIMEOUT,
        || async {
            let (status, _) = watcher.post_binary(&event).await;
            (status == 200).then_some(())
        },
    )
    .await;
    taken.unwrap_or_else(|error| panic!("{error}; log:\n{}", watcher.log()));
    let events = harness.events().await;
    assert_eq!(
        transitions(&events),
        [(identity.name.clone(), "created".to_owned())]
    );
}

#[tokio::test]
async fn both_sources_at_once_give_one_event_per_transition() {
    let harness = Harness::start("both").await;
    let mut watcher = harness.start_watcher().await;
    let name = "build-push-run-both";
    let pod = format!("{name}-pod");

    // After each step of the lifecycle in the API, Tekton's event about it arrives too.
    let post_current = |event_type: &'static str| {
        let harness = &harness;
        let watcher = &watcher;
        async move {
            let taskrun = harness
                .taskruns()
                .get(name)
                .await
                .expect("reading the TaskRun");
            let (status, body) = watcher
                .post_binary(&v1beta1_event(&taskrun, event_type))
                .await;
            assert_eq!(status, 200, "{event_type}: {body}");
        }
    };
    let uid = harness.create_taskrun(name).await;
    post_current("dev.tekton.event.taskrun.queued.v1").await;
    let pod_uid = harness.create_pod(name, &uid, &pod).await;
    harness
        .set_taskrun_status(name, "taskrun-01-pending.json", &pod)
        .await;
    post_current("dev.tekton.event.taskrun.unknown.v1").await;
    let clone_message = signed_message("step-clone");
    harness
        .set_pod_containers(&pod, &[("step-clone", &clone_message)])
        .await;
    harness
        .set_taskrun_status(name, "taskrun-02-running.json", &pod)
        .await;
    post_current("dev.tekton.event.taskrun.running.v1").await;
    harness
        .set_pod_containers(
            &pod,
            &[
                ("step-clone", &clone_message),
                ("step-build", &signed_message("step-build")),
            ],
        )
        .await;
    harness
        .set_taskrun_status(name, "taskrun-03-succeeded.json", &pod)
        .await;
    post_current("dev.tekton.event.taskrun.successful.v1").await;
    harness.wait_for_events(5).await;
    harness.delete_taskrun(name).await;
    harness.wait_for_events(6).await;
    assert!(watcher.terminate().await.success());

    let events = harness.events().await;
    assert_unique_ids(&events);
    assert_eq!(
        transitions(&events),
        [
            (name.to_owned(), "created".to_owned()),
            (name.to_owned(), format!("scheduled:{pod_uid}")),
            (name.to_owned(), format!("step-completed:{pod_uid}:clone")),
            (name.to_owned(), format!("step-completed:{pod_uid}:build")),
            (name.to_owned(), "finished".to_owned()),
            (name.to_owned(), "deleted".to_owned()),
        ]
    );
}
