//! The CloudEvents ingress with Tekton's own events: every fixture in binary and structured mode,
//! the types it ignores, events as hints (a forged `finished`, TaskRuns the API server does not
//! have, identifiers Kubernetes does not allow), malformed and oversized bodies, NATS down, and
//! the ingress and the watch seeing the same TaskRun at once.

use countersign_events::LifecycleEvent;
use countersign_events::data::Outcome;
use serde_json::{Value, json};

use crate::support::{
    Harness, Received, assert_unique_ids, cloudevent_fixture, signed_message, transitions,
    v1beta1_event,
};

const INGRESS_REQUESTS: &str = "countersign_watcher_ingress_requests_total";
const IGNORED: &str = "countersign_watcher_ignored_events_total";

/// A TaskRun in the API, its pod, and what the tests post about it.
struct Identity {
    name: String,
    uid: String,
    pod: String,
    pod_uid: String,
}

impl Identity {
    /// Creates TaskRun `name` in the API (no status yet), as Tekton's webhook admits it.
    async fn create(harness: &Harness, name: &str) -> Identity {
        let uid = harness.create_taskrun(name).await;
        Identity {
            name: name.to_owned(),
            uid,
            pod: format!("{name}-pod"),
            pod_uid: String::new(),
        }
    }

    /// An identity the API does not have.
    fn unknown(name: &str, uid: &str) -> Identity {
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

    /// Moves the TaskRun (and its pod's containers) to the stage Tekton's event `file` reports.
    async fn reach(&mut self, harness: &Harness, file: &str) {
        let clone = signed_message("step-clone");
        let build = signed_message("step-build");
        match file {
            "ce-taskrun-03-running.json" => {
                self.create_pod(harness).await;
                harness
                    .set_pod_containers(&self.pod, &[("step-clone", &clone)])
                    .await;
                harness
                    .set_taskrun_status(&self.name, "taskrun-02-running.json", &self.pod)
                    .await;
            }
            "ce-taskrun-05-successful.json" => {
                harness
                    .set_pod_containers(
                        &self.pod,
                        &[("step-clone", &clone), ("step-build", &build)],
                    )
                    .await;
                harness
                    .set_taskrun_status(&self.name, "taskrun-03-succeeded.json", &self.pod)
                    .await;
            }
            "ce-taskrun-06-failed.json" => {
                self.create_pod(harness).await;
                harness
                    .set_pod_containers(
                        &self.pod,
                        &[("step-clone", &clone), ("step-build", &build)],
                    )
                    .await;
                harness
                    .set_taskrun_status(&self.name, "taskrun-04-failed.json", &self.pod)
                    .await;
            }
            _ => {}
        }
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
    let mut binary = Identity::create(&harness, "ce-binary").await;
    let mut structured = Identity::create(&harness, "ce-structured").await;
    let mut binary_failed = Identity::create(&harness, "ce-binary-failed").await;
    let mut structured_failed = Identity::create(&harness, "ce-structured-failed").await;

    // Each event of the lifecycle arrives once the API shows that stage (as Tekton sends it
    // after its status update) and is answered once what the API implies is published, by the
    // ingress or already by the watch: which of the two publishes a transition is a race.
    let lifecycle = [
        "ce-taskrun-01-queued.json",
        "ce-taskrun-02-started.json",
        "ce-taskrun-03-running.json",
        "ce-taskrun-04-unknown.json",
        "ce-taskrun-05-successful.json",
    ];
    for file in lifecycle {
        binary.reach(&harness, file).await;
        structured.reach(&harness, file).await;
        let (status, body) = watcher.post_binary(&fixture(&harness, file, &binary)).await;
        assert_eq!(status, 200, "binary {file}: {body}");
        let (status, body) = watcher
            .post_structured(&fixture(&harness, file, &structured))
            .await;
        assert_eq!(status, 200, "structured {file}: {body}");
    }
    // A failed TaskRun seen only at its end still yields its whole lifecycle.
    binary_failed
        .reach(&harness, "ce-taskrun-06-failed.json")
        .await;
    structured_failed
        .reach(&harness, "ce-taskrun-06-failed.json")
        .await;
    let (status, body) = watcher
        .post_binary(&fixture(
            &harness,
            "ce-taskrun-06-failed.json",
            &binary_failed,
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = watcher
        .post_structured(&fixture(
            &harness,
            "ce-taskrun-06-failed.json",
            &structured_failed,
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    harness.wait_for_events(20).await;

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

/// The attack of issue 13: an unauthenticated `successful` event about a real TaskRun that is
/// still running, carrying results, steps and a creation time of its own (as a replay of an
/// older same-named TaskRun's would). The event is a hint: nothing of its body is published, no
/// `finished` pre-empts the TaskRun's attestation, and the real `finished` carries what the API
/// server says.
#[tokio::test]
async fn a_forged_finished_event_for_a_running_taskrun_publishes_nothing_of_its_own() {
    let harness = Harness::start("forged").await;
    let watcher = harness.start_watcher().await;
    let mut running = Identity::create(&harness, "forged-running").await;
    running.reach(&harness, "ce-taskrun-03-running.json").await;
    harness.wait_for_taskrun_events(&running.name, 3).await;

    let mut forged = fixture(&harness, "ce-taskrun-05-successful.json", &running);
    let taskrun = &mut forged["data"]["taskRun"];
    taskrun["metadata"]["creationTimestamp"] = Value::from("2020-01-01T00:00:00Z");
    for result in taskrun["status"]["taskResults"]
        .as_array_mut()
        .expect("the fixture has results")
    {
        if result["name"] == "commit" {
            result["value"] = Value::from("forged");
        }
    }
    let (status, body) = watcher.post_binary(&forged).await;
    assert_eq!(
        (status, body["published"].as_u64()),
        (200, Some(0)),
        "what the API implies is published already: {body}"
    );
    let (status, body) = watcher.post_structured(&forged).await;
    assert_eq!(
        (status, body["published"].as_u64()),
        (200, Some(0)),
        "{body}"
    );
    let events = harness.events().await;
    assert_eq!(
        of(&events, &running),
        [
            "created".to_owned(),
            format!("scheduled:{}", running.pod_uid),
            format!("step-completed:{}:clone", running.pod_uid),
        ],
        "no finished before the TaskRun finishes"
    );

    // The TaskRun really finishes: its `finished` is the API server's.
    running
        .reach(&harness, "ce-taskrun-05-successful.json")
        .await;
    let events = harness.wait_for_taskrun_events(&running.name, 5).await;
    let live = harness
        .taskruns()
        .get(&running.name)
        .await
        .expect("reading the TaskRun");
    let finished = events
        .iter()
        .find_map(|received| match &received.event.data {
            LifecycleEvent::Finished(finished) => Some(finished.clone()),
            _ => None,
        })
        .expect("a finished event");
    assert_eq!(
        Some(finished.taskrun_created_at),
        live.metadata.creation_timestamp.map(|time| {
            chrono::DateTime::from_timestamp(time.0.as_second(), 0).expect("a time")
        })
    );
    assert!(
        finished
            .results
            .iter()
            .all(|result| result.value != "forged"),
        "{:?}",
        finished.results
    );
}

#[tokio::test]
async fn events_about_taskruns_the_api_server_does_not_have_publish_nothing() {
    let harness = Harness::start("unknown").await;
    let watcher = harness.start_watcher().await;
    let real = Identity::create(&harness, "real-run").await;
    harness.wait_for_taskrun_events(&real.name, 1).await;

    // No TaskRun of that name, and the real TaskRun's name with another UID (an older,
    // deleted TaskRun of the same name, or a made-up one).
    let missing = Identity::unknown("no-such-run", "00000000-0000-4000-8000-0000000000e1");
    let other_uid = Identity::unknown(&real.name, "00000000-0000-4000-8000-0000000000e2");
    for file in ["ce-taskrun-01-queued.json", "ce-taskrun-05-successful.json"] {
        for identity in [&missing, &other_uid] {
            let (status, body) = watcher
                .post_binary(&fixture(&harness, file, identity))
                .await;
            assert_eq!(
                (status, body["ignored"].as_str()),
                (202, Some("unknown_taskrun")),
                "{file} about {}: {body}",
                identity.uid
            );
        }
    }
    assert_eq!(
        watcher
            .metric(IGNORED, &[("event_type", "unknown_taskrun")])
            .await,
        4.0
    );
    let warned = watcher.log().lines().any(|line| {
        serde_json::from_str::<Value>(line)
            .is_ok_and(|line| line["level"] == "WARN" && line["uid"] == missing.uid.as_str())
    });
    assert!(
        warned,
        "logged at warn:
{}",
        watcher.log()
    );

    let events = harness.events().await;
    assert_eq!(
        transitions(&events),
        [(real.name.clone(), "created".to_owned())]
    );
    assert!(of(&events, &missing).is_empty() && of(&events, &other_uid).is_empty());
}

/// A UID of a few KiB would be a KV key beyond nats-server's 4 KiB control line, which closes
/// the connection (and fails every other TaskRun's events meanwhile). It is refused at the
/// boundary, and the next valid event goes through on the same connection.
#[tokio::test]
async fn a_huge_uid_is_refused_and_valid_events_still_get_through() {
    let harness = Harness::start("huge-uid").await;
    let watcher = harness.start_watcher().await;
    let huge = Identity::unknown("huge-uid", &"a".repeat(5 * 1024));
    let (status, body) = watcher
        .post_binary(&fixture(&harness, "ce-taskrun-01-queued.json", &huge))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_taskrun")),
        "{body}"
    );
    let long_name = Identity::unknown(&"n".repeat(300), "00000000-0000-4000-8000-0000000000f1");
    let (status, body) = watcher
        .post_structured(&fixture(&harness, "ce-taskrun-01-queued.json", &long_name))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_taskrun")),
        "{body}"
    );

    let valid = Identity::create(&harness, "after-huge").await;
    let (status, body) = watcher
        .post_binary(&fixture(&harness, "ce-taskrun-01-queued.json", &valid))
        .await;
    assert_eq!(status, 200, "{body}");
    let events = harness.wait_for_taskrun_events(&valid.name, 1).await;
    assert_eq!(events[0].transition(), "created");
    assert_eq!(
        watcher
            .metric(INGRESS_REQUESTS, &[("outcome", "unavailable")])
            .await,
        0.0,
        "the NATS connection never dropped"
    );
    let refusals = watcher
        .log()
        .lines()
        .filter(|line| {
            serde_json::from_str::<Value>(line)
                .is_ok_and(|line| line["level"] == "WARN" && line["code"] == "invalid_taskrun")
        })
        .count();
    assert_eq!(
        refusals,
        2,
        "each refusal is logged at warn:\n{}",
        watcher.log()
    );
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
    let identity = Identity::unknown("big", "00000000-0000-4000-8000-0000000000b1");
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

    // Under the limit, the same event is taken (and answered as one about a TaskRun the API
    // server does not have).
    let small = fixture(&harness, "ce-taskrun-01-queued.json", &identity);
    let (status, answer) = watcher.post_structured(&small).await;
    assert_eq!(
        (status, answer["ignored"].as_str()),
        (202, Some("unknown_taskrun")),
        "{answer}"
    );
}

#[tokio::test]
async fn nats_down_gets_503_and_the_retry_after_recovery_publishes_once() {
    let mut harness = Harness::start("nats-down").await;
    let watcher = harness.start_watcher().await;
    let identity = Identity::create(&harness, "while-down").await;
    harness.wait_for_taskrun_events(&identity.name, 1).await;
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
