//! TaskRuns driven through the real API server the way Tekton and the kubelet would: create the
//! TaskRun, create its pod bound to a node, patch the pod's container statuses and the TaskRun's
//! status step by step from the fixtures, delete it. The bus must carry exactly the lifecycle.

use countersign_events::LifecycleEvent;
use countersign_events::data::{Outcome, ResultType};
use countersign_identity::tekton::TerminationMessage;
use countersign_identity::tekton::termination::compress;

use crate::support::{
    CLUSTER, Harness, NODE, Received, assert_unique_ids, signed_message, transitions,
};

/// The entries of a raw termination message as `(key, value, type)`.
fn entries(raw: &str) -> Vec<(String, String, u8)> {
    TerminationMessage::parse(raw)
        .expect("a termination message")
        .entries()
        .iter()
        .map(|entry| {
            (
                entry.key.clone(),
                entry.value.clone(),
                u8::try_from(entry.result_type.as_i64()).expect("a small type"),
            )
        })
        .collect()
}

fn step_entries(received: &Received) -> Vec<(String, String, u8)> {
    let LifecycleEvent::StepCompleted(step) = &received.event.data else {
        panic!(
            "expected step-completed, got {:?}",
            received.event.event_type
        );
    };
    step.step
        .results
        .iter()
        .map(|entry| (entry.key.clone(), entry.value.clone(), entry.r#type))
        .collect()
}

#[tokio::test]
async fn a_taskrun_driven_through_the_api_yields_exactly_its_lifecycle() {
    let harness = Harness::start("lifecycle").await;
    let mut watcher = harness.start_watcher().await;
    let name = "build-push-run-x7k2p";
    let pod = format!("{name}-pod");

    let uid = harness.create_taskrun(name).await;
    harness.wait_for_events(1).await;
    let pod_uid = harness.create_pod(name, &uid, &pod).await;
    harness.wait_for_events(2).await;
    harness
        .set_taskrun_status(name, "taskrun-01-pending.json", &pod)
        .await;

    // The first step ends: its container's message is exactly what the entrypointer wrote.
    let clone_message = signed_message("step-clone");
    harness
        .set_pod_containers(&pod, &[("step-clone", &clone_message)])
        .await;
    harness.wait_for_events(3).await;
    harness
        .set_taskrun_status(name, "taskrun-02-running.json", &pod)
        .await;

    // The second step writes a `tknz:`-compressed message.
    let build_raw = signed_message("step-build");
    let build_message = compress(build_raw.as_bytes());
    harness
        .set_pod_containers(
            &pod,
            &[
                ("step-clone", &clone_message),
                ("step-build", &build_message),
            ],
        )
        .await;
    harness.wait_for_events(4).await;
    harness
        .set_taskrun_status(name, "taskrun-03-succeeded.json", &pod)
        .await;
    harness.wait_for_events(5).await;
    harness.delete_taskrun(name).await;
    harness.wait_for_events(6).await;

    // A graceful stop finishes whatever is in flight; then the bus is final.
    let status = watcher.terminate().await;
    assert!(status.success(), "drained and exited 0: {status:?}");
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

    let LifecycleEvent::Created(created) = &events[0].event.data else {
        panic!("created first");
    };
    assert_eq!(created.taskrun.cluster, CLUSTER);
    assert_eq!(created.taskrun.namespace, harness.namespace);
    assert_eq!(created.taskrun.uid, uid);
    assert_eq!(created.timeout_seconds, Some(3600));
    assert_eq!(created.task_name.as_deref(), Some("build-push"));

    let LifecycleEvent::Scheduled(scheduled) = &events[1].event.data else {
        panic!("scheduled second");
    };
    assert_eq!(scheduled.node_name, NODE);
    assert_eq!(scheduled.pod.name, pod);
    assert_eq!(scheduled.pod.uid, pod_uid);
    assert_eq!(
        scheduled.spiffe_id,
        format!(
            "spiffe://example.org/ns/{}/taskrun/{name}",
            harness.namespace
        )
    );

    assert_eq!(step_entries(&events[2]), entries(&clone_message));
    assert_eq!(
        step_entries(&events[3]),
        entries(&build_raw),
        "the tknz: message is carried decompressed, entry for entry"
    );

    let LifecycleEvent::Finished(finished) = &events[4].event.data else {
        panic!("finished fifth");
    };
    assert_eq!(finished.outcome, Outcome::Succeeded);
    assert_eq!(finished.reason, "Succeeded");
    assert_eq!(
        finished.pod.as_ref().map(|pod| pod.uid.as_str()),
        Some(pod_uid.as_str())
    );
    assert_eq!(finished.results.len(), 4);
    assert_eq!(finished.results[3].r#type, ResultType::Array);
    assert_eq!(
        finished.declared_results,
        ["commit", "IMAGE_DIGEST", "image", "tags"]
    );
    assert_eq!(finished.steps.len(), 2);
    assert_eq!(
        finished.steps[1].results.len(),
        entries(&build_raw).len(),
        "the finished event carries each step's own signed set"
    );

    let LifecycleEvent::Deleted(deleted) = &events[5].event.data else {
        panic!("deleted last");
    };
    assert_eq!(
        deleted.pod.as_ref().map(|pod| pod.uid.as_str()),
        Some(pod_uid.as_str())
    );
}

#[tokio::test]
async fn names_with_dots_become_valid_subjects_and_spiffe_ids() {
    let harness = Harness::start("dots").await;
    let mut watcher = harness.start_watcher().await;
    let name = "release.v1.2-build";
    let pod = format!("{name}-pod");
    let uid = harness.create_taskrun(name).await;
    let pod_uid = harness.create_pod(name, &uid, &pod).await;
    harness
        .set_pod_containers(&pod, &[("step-clone", &signed_message("step-clone"))])
        .await;
    harness
        .set_taskrun_status(name, "taskrun-02-running.json", &pod)
        .await;
    harness.wait_for_events(3).await;
    assert!(watcher.terminate().await.success());

    let events = harness.events().await;
    assert_eq!(
        transitions(&events),
        [
            (name.to_owned(), "created".to_owned()),
            (name.to_owned(), format!("scheduled:{pod_uid}")),
            (name.to_owned(), format!("step-completed:{pod_uid}:clone")),
        ]
    );
    for received in &events {
        // Dots become `_` inside a token (the cluster name has one too), so every subject has
        // exactly the layout's six tokens; `Harness::events` parsed each back to the names.
        assert_eq!(
            received.subject.split('.').count(),
            6,
            "{}",
            received.subject
        );
        assert!(
            received.subject.ends_with(".release_v1_2-build"),
            "{}",
            received.subject
        );
        assert!(
            received.subject.contains(".test_cluster."),
            "{}",
            received.subject
        );
    }
    let LifecycleEvent::Scheduled(scheduled) = &events[1].event.data else {
        panic!("scheduled second");
    };
    assert_eq!(
        scheduled.spiffe_id,
        format!(
            "spiffe://example.org/ns/{}/taskrun/{name}",
            harness.namespace
        )
    );
}

#[tokio::test]
async fn a_finished_event_over_the_max_payload_goes_out_trimmed_and_marked_oversized() {
    let harness = Harness::start("oversized").await;
    let mut watcher = harness.start_watcher().await;
    let name = "huge-results-run";
    let pod = format!("{name}-pod");

    let uid = harness.create_taskrun(name).await;
    harness.create_pod(name, &uid, &pod).await;
    harness.wait_for_taskrun_events(name, 2).await;
    // The succeeded status with one result of 1.1 MiB: the event in full is over nats-server's
    // 1 MiB max payload (the object stays under etcd's 1.5 MiB request limit).
    let mut status = crate::support::taskrun_status("taskrun-03-succeeded.json", &pod);
    let huge = "x".repeat(1_100_000);
    status["results"]
        .as_array_mut()
        .expect("the fixture has results")
        .push(serde_json::json!({ "name": "huge", "type": "string", "value": huge }));
    harness
        .taskruns()
        .patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .expect("patching the TaskRun status");
    harness.wait_for_taskrun_events(name, 3).await;

    let status = watcher.terminate().await;
    assert!(status.success(), "drained and exited 0: {status:?}");
    let events: Vec<_> = harness
        .events()
        .await
        .into_iter()
        .filter(|received| received.name() == name)
        .collect();
    assert!(events.len() >= 3, "{events:?}");
    let finished: Vec<_> = events
        .iter()
        .filter_map(|received| match &received.event.data {
            LifecycleEvent::Finished(finished) => Some(finished),
            _ => None,
        })
        .collect();
    assert_eq!(finished.len(), 1, "exactly one finished event");
    let finished = finished[0];
    let oversized = finished.oversized.expect("marked oversized");
    assert!(oversized.bytes > oversized.limit, "{oversized:?}");
    assert_eq!(oversized.limit, 1024 * 1024);
    assert!(finished.results.is_empty());
    assert!(finished.steps.iter().all(|step| step.results.is_empty()));
    assert_eq!(finished.outcome, Outcome::Succeeded);
}
