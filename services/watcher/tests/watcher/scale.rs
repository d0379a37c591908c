//! 200 TaskRuns at once, watched cluster-wide (no namespace list) and scoped by a label selector:
//! each gets exactly its `created` and `finished`, with the outcome of its status.

use std::collections::BTreeMap;

use countersign_events::LifecycleEvent;
use countersign_events::data::Outcome;
use countersign_test_support::kube::taskrun_fixture;
use countersign_test_support::unique_name;
use futures::StreamExt as _;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::{Harness, assert_unique_ids, taskrun_status};

const TASKRUNS: usize = 200;

#[tokio::test]
async fn two_hundred_taskruns_at_once_each_yield_created_and_finished_once() {
    let mut harness = Harness::start("scale").await;
    let label = unique_name("scale");
    harness.set("COUNTERSIGN_KUBERNETES__NAMESPACES", "[]");
    harness.set(
        "COUNTERSIGN_KUBERNETES__LABEL_SELECTOR",
        format!("countersign.dev/test={label}"),
    );
    let mut watcher = harness.start_watcher().await;

    // An unlabelled TaskRun in the same namespace is outside the selector.
    harness.create_taskrun("not-selected").await;

    let names: Vec<String> = (0..TASKRUNS)
        .map(|index| format!("run-{index:03}"))
        .collect();
    let api = harness.taskruns();
    futures::stream::iter(&names)
        .map(|name| {
            let api = api.clone();
            let namespace = harness.namespace.clone();
            let label = label.clone();
            async move {
                let mut fixture =
                    taskrun_fixture("taskrun-01-pending.json", &namespace).expect("the fixture");
                fixture.object.metadata.name = Some(name.clone());
                fixture.object.metadata.generate_name = None;
                fixture
                    .object
                    .metadata
                    .labels
                    .get_or_insert_default()
                    .insert("countersign.dev/test".into(), label);
                api.create(&PostParams::default(), &fixture.object)
                    .await
                    .expect("creating a TaskRun");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    futures::stream::iter(names.iter().enumerate())
        .map(|(index, name)| {
            let api = api.clone();
            async move {
                // Even ones succeed, odd ones fail.
                let fixture = if index % 2 == 0 {
                    "taskrun-03-succeeded.json"
                } else {
                    "taskrun-04-failed.json"
                };
                let status = taskrun_status(fixture, &format!("{name}-pod"));
                api.patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": status })),
                )
                .await
                .expect("patching a TaskRun status");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;

    harness.wait_for_events(2 * TASKRUNS).await;
    assert!(watcher.terminate().await.success());
    let events = harness.events().await;
    assert_unique_ids(&events);
    assert_eq!(
        events.len(),
        2 * TASKRUNS,
        "nothing else, and the unselected TaskRun is ignored"
    );

    let mut by_name: BTreeMap<String, Vec<&LifecycleEvent>> = BTreeMap::new();
    for received in &events {
        by_name
            .entry(received.name())
            .or_default()
            .push(&received.event.data);
    }
    assert_eq!(by_name.len(), TASKRUNS);
    for (index, name) in names.iter().enumerate() {
        let lifecycle = &by_name[name];
        let [
            LifecycleEvent::Created(_),
            LifecycleEvent::Finished(finished),
        ] = lifecycle.as_slice()
        else {
            panic!("{name}: expected created then finished, got {lifecycle:?}");
        };
        let expected = if index % 2 == 0 {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        };
        assert_eq!(finished.outcome, expected, "{name}");
        assert_eq!(finished.pod, None, "{name} never had a pod");
    }
}
