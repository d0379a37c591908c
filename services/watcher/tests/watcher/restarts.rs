//! Crashes, restarts and replicas: the real binary is killed with SIGKILL in the middle of a
//! TaskRun's lifecycle and started again; a TaskRun is deleted while no watcher runs; two
//! replicas watch the same TaskRuns at once. Nothing may be stored twice, nothing may be missing,
//! and a deletion must not depend on seeing the watch's `Delete` event.

use crate::support::{Harness, assert_unique_ids, signed_message, transitions};

const PUBLISHED: &str = "countersign_watcher_transitions_published_total";
const SKIPPED: &str = "countersign_watcher_duplicates_skipped_total";
const BUS_PUBLISHED: &str = "countersign_events_published_total";

#[tokio::test]
async fn killed_and_restarted_mid_lifecycle_publishes_nothing_twice_and_misses_nothing() {
    let harness = Harness::start("restart").await;
    let name = "build-push-run-restart";
    let pod = format!("{name}-pod");

    let mut first = harness.start_watcher().await;
    let uid = harness.create_taskrun(name).await;
    let pod_uid = harness.create_pod(name, &uid, &pod).await;
    let clone_message = signed_message("step-clone");
    harness
        .set_pod_containers(&pod, &[("step-clone", &clone_message)])
        .await;
    harness
        .set_taskrun_status(name, "taskrun-02-running.json", &pod)
        .await;
    harness.wait_for_events(3).await;
    // Killed once the state holds what the stream holds (killing between a PubAck and the record
    // is covered by the stream's duplicate window; the metrics below assume the record).
    harness.wait_for_record(&uid, 3).await;
    first.kill().await;

    // While no watcher runs, the second step ends and the TaskRun succeeds.
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

    let mut second = harness.start_watcher().await;
    harness.wait_for_events(5).await;
    // The three transitions published before the crash are skipped from the state bucket, not
    // published again.
    second.wait_for_metric(PUBLISHED, &[], 2.0).await;
    second
        .wait_for_metric(SKIPPED, &[("reason", "recorded")], 3.0)
        .await;
    assert_eq!(second.metric(PUBLISHED, &[]).await, 2.0);
    assert!(second.terminate().await.success());

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
        ]
    );

    // A third start, long after as far as the state is concerned: the relist finds the TaskRun
    // finished in the state, so it is kept settled (its identity alone, nothing but `deleted` can
    // follow); it re-derives `created` only, and publishes nothing (not even into the stream's
    // duplicate window).
    let mut third = harness.start_watcher().await;
    third
        .wait_for_metric(SKIPPED, &[("reason", "recorded")], 1.0)
        .await;
    assert_eq!(third.metric(PUBLISHED, &[]).await, 0.0);
    assert_eq!(
        third.metric(BUS_PUBLISHED, &[]).await,
        0.0,
        "no publish attempted"
    );
    third.kill().await;
    assert_eq!(harness.events().await.len(), 5);
}

#[tokio::test]
async fn a_taskrun_deleted_while_the_watcher_is_down_gets_its_deleted_event() {
    let harness = Harness::start("deleted-down").await;
    let kept = "kept-run";
    let gone = "gone-run";

    let mut first = harness.start_watcher().await;
    let kept_uid = harness.create_taskrun(kept).await;
    let gone_uid = harness.create_taskrun(gone).await;
    harness.wait_for_events(2).await;
    harness.wait_for_record(&kept_uid, 1).await;
    harness.wait_for_record(&gone_uid, 1).await;
    first.kill().await;

    harness.delete_taskrun(gone).await;

    let mut second = harness.start_watcher().await;
    let deleted = harness.wait_for_taskrun_events(gone, 2).await;
    assert_eq!(
        deleted
            .iter()
            .map(|received| received.transition())
            .collect::<Vec<_>>(),
        ["created", "deleted"]
    );
    assert_eq!(deleted[1].uid(), gone_uid);
    // The TaskRun still there was re-derived and skipped (its `created` is recorded).
    second
        .wait_for_metric(SKIPPED, &[("reason", "recorded")], 1.0)
        .await;
    assert!(second.terminate().await.success());

    let events = harness.events().await;
    assert_unique_ids(&events);
    let kept_events: Vec<String> = events
        .iter()
        .filter(|received| received.uid() == kept_uid)
        .map(|received| received.transition())
        .collect();
    assert_eq!(
        kept_events,
        ["created"],
        "the TaskRun still there is not deleted"
    );
    assert_eq!(events.len(), 3);
}

#[tokio::test]
async fn two_replicas_at_once_store_each_transition_once() {
    let harness = Harness::start("replicas").await;
    let name = "build-push-run-replicas";
    let pod = format!("{name}-pod");
    let mut first = harness.start_watcher().await;
    let mut second = harness.start_watcher().await;

    let uid = harness.create_taskrun(name).await;
    let pod_uid = harness.create_pod(name, &uid, &pod).await;
    let clone_message = signed_message("step-clone");
    harness
        .set_pod_containers(&pod, &[("step-clone", &clone_message)])
        .await;
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
    harness.wait_for_events(5).await;
    harness.delete_taskrun(name).await;
    harness.wait_for_events(6).await;
    assert!(first.terminate().await.success());
    assert!(second.terminate().await.success());

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
