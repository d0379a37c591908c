//! The real node runs a pod: scheduled by kube-scheduler onto `worker-1` (whose `not-ready` taint
//! kube-controller-manager lifted), started by the kubelet through containerd and runc from an
//! image imported without a registry, and finished with its termination message in the status.

use std::time::{Duration, Instant};

use countersign_test_support::node::{BUSYBOX_IMAGE, NODE_NAME, Node};
use countersign_test_support::{error_lines, wait};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

/// How long a pod may take from creation to completion on a busy 2-core machine.
const POD_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_pod_runs_to_completion_with_its_termination_message() {
    let began = Instant::now();
    let node = match Node::start().await {
        Ok(node) => node,
        Err(error) => panic!("the node did not start: {}", error_lines(&error)),
    };
    eprintln!("node ready in {:?}", began.elapsed());
    let pods: Api<Pod> = Api::namespaced(node.client(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "hello" },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "hello",
                "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", "printf 'ran on %s' \"$NODE\" > /dev/termination-log"],
                "env": [{ "name": "NODE", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } }],
            }],
        },
    }))
    .expect("a valid pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("creating the pod");
    let finished = wait::until("the pod to finish", POD_TIMEOUT, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("hello").await.ok()?;
            let phase = pod.status.as_ref()?.phase.clone()?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(pod)
        }
    })
    .await;
    let pod = match finished {
        Ok(pod) => pod,
        Err(error) => panic!("{error}\n---- kubelet ----\n{}", node.kubelet_log_tail()),
    };
    eprintln!("pod finished {:?} after start", began.elapsed());
    let status = pod.status.expect("a finished pod has a status");
    assert_eq!(status.phase.as_deref(), Some("Succeeded"), "{status:?}");
    let terminated = status.container_statuses.unwrap_or_default()[0]
        .state
        .as_ref()
        .and_then(|state| state.terminated.clone())
        .expect("the container terminated");
    assert_eq!(terminated.exit_code, 0);
    assert_eq!(
        terminated.message.as_deref(),
        Some(format!("ran on {NODE_NAME}").as_str())
    );
}
