//! Property tests of what the watcher reads from the API server and from CloudEvent bodies: the
//! TaskRun and Pod JSON shapes, and the derivation that turns them into transitions. Whatever the
//! JSON holds, parsing and deriving return a value or an error, never a panic.

use countersign_identity::spiffe_id::TrustDomain;
use countersign_tekton::{TaskRun, TaskRunPod};
use countersign_watcher::derive::{DeriveSettings, derive_transitions, outcome_of};
use countersign_watcher::store::Settle as _;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// The keys the TaskRun and Pod shapes read, and a few they do not.
const KEYS: &[&str] = &[
    "metadata",
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "labels",
    "ownerReferences",
    "managedFields",
    "spec",
    "status",
    "conditions",
    "type",
    "reason",
    "steps",
    "container",
    "terminated",
    "message",
    "results",
    "value",
    "taskSpec",
    "podName",
    "startTime",
    "completionTime",
    "containerStatuses",
    "containers",
    "state",
    "exitCode",
    "finishedAt",
    "tekton.dev/taskRun",
    "tekton.dev/taskRunUID",
    "kind",
    "apiVersion",
    "timeout",
    "other",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::String),
        Just(json!("2026-01-01T00:00:00Z")),
        Just(json!("Succeeded")),
        Just(json!("True")),
        Just(json!("step-build")),
        Just(json!(r#"[{"key":"digest","value":"sha256:ab","type":1}]"#)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|entries| {
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(key, value)| (key.to_owned(), value))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

fn settings() -> DeriveSettings {
    DeriveSettings {
        cluster: "prod".to_owned(),
        trust_domain: TrustDomain::new("example.org").expect("a valid trust domain"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn taskrun_and_pod_json_parse_and_derive_without_panicking(
        taskrun in json_value(),
        pod in json_value(),
    ) {
        let taskrun: Option<TaskRun> = serde_json::from_value(taskrun).ok();
        let pod: Option<TaskRunPod> = serde_json::from_value(pod).ok();
        if let Some(taskrun) = &taskrun {
            let _ = taskrun.pod_name();
            let _ = taskrun.uid();
            let _ = taskrun.is_settled();
            let _ = taskrun.settled();
            let _ = outcome_of(taskrun);
            let _ = derive_transitions(&settings(), taskrun, pod.as_ref());
            let _ = derive_transitions(&settings(), taskrun, None);
        }
    }

    #[test]
    fn any_bytes_parse_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = serde_json::from_slice::<TaskRun>(&bytes);
        let _ = serde_json::from_slice::<TaskRunPod>(&bytes);
    }
}
