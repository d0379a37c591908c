//! The real node runs a pod: scheduled by kube-scheduler onto `worker-1` (whose `not-ready` taint
//! kube-controller-manager lifted), started by the kubelet through containerd and runc from an
//! image imported without a registry, and finished with its termination message in the status; and
//! Tekton's real controller and entrypointer run a TaskRun (two steps, four results: string, array,
//! object) and a two-task PipelineRun passing a result downstream on that node.

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

/// The `Succeeded` condition's status and reason, if the object has one.
fn succeeded(object: &kube::api::DynamicObject) -> Option<(String, String)> {
    let conditions = object.data.pointer("/status/conditions")?.as_array()?;
    let condition = conditions
        .iter()
        .find(|condition| condition.get("type").and_then(|t| t.as_str()) == Some("Succeeded"))?;
    let status = condition.get("status")?.as_str()?.to_owned();
    let reason = condition.get("reason")?.as_str()?.to_owned();
    Some((status, reason))
}

#[tokio::test]
async fn tektons_controller_and_entrypointer_run_a_taskrun_and_a_pipelinerun_passing_a_result() {
    use countersign_test_support::kube::taskrun_resource;
    use countersign_test_support::tekton::TektonController;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kube::api::DynamicObject;
    use std::collections::BTreeMap;

    let began = Instant::now();
    let node = match Node::start().await {
        Ok(node) => node,
        Err(error) => panic!("the node did not start: {}", error_lines(&error)),
    };
    let tekton = match TektonController::start(&node, &BTreeMap::new(), &BTreeMap::new()).await {
        Ok(tekton) => tekton,
        Err(error) => panic!("Tekton did not start: {}", error_lines(&error)),
    };
    let namespace = node
        .kube()
        .unique_namespace("tekton")
        .await
        .expect("creating a namespace");
    // kube-controller-manager creates every namespace's `default` ServiceAccount, which Tekton
    // reads for credentials.
    let accounts: Api<ServiceAccount> = Api::namespaced(node.client(), &namespace);
    wait::until("ServiceAccount default to exist", POD_TIMEOUT, || {
        let accounts = accounts.clone();
        async move { accounts.get_opt("default").await.ok().flatten() }
    })
    .await
    .expect("the default ServiceAccount");
    let taskruns: Api<DynamicObject> =
        Api::namespaced_with(node.client(), &namespace, &taskrun_resource());
    let taskrun: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "TaskRun",
        "metadata": { "name": "build-push" },
        "spec": { "taskSpec": {
            "results": [
                { "name": "commit", "type": "string" },
                { "name": "IMAGE_DIGEST", "type": "string" },
                { "name": "image", "type": "object",
                  "properties": { "url": { "type": "string" }, "digest": { "type": "string" } } },
                { "name": "tags", "type": "array" },
            ],
            "steps": [
                { "name": "clone", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                  "script": "#!/bin/sh\nprintf 'abc123' > $(results.commit.path)\n" },
                { "name": "build", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                  "script": "#!/bin/sh\nprintf 'sha256:0f0f' > $(results.IMAGE_DIGEST.path)\nprintf '{\"url\":\"localhost/app\",\"digest\":\"sha256:0f0f\"}' > $(results.image.path)\nprintf '[\"latest\",\"v1\"]' > $(results.tags.path)\n" },
            ],
        }},
    }))
    .expect("a valid TaskRun");
    taskruns
        .create(&PostParams::default(), &taskrun)
        .await
        .expect("creating the TaskRun");
    let finished = wait::until("the TaskRun to finish", POD_TIMEOUT, || {
        let taskruns = taskruns.clone();
        async move {
            let taskrun = taskruns.get("build-push").await.ok()?;
            let (status, _) = succeeded(&taskrun)?;
            (status != "Unknown").then_some(taskrun)
        }
    })
    .await;
    let taskrun = match finished {
        Ok(taskrun) => taskrun,
        Err(error) => panic!(
            "{error}\n---- TaskRun ----\n{:?}\n---- tekton-controller ----\n{}\n---- kubelet ----\n{}",
            taskruns.get("build-push").await.map(|t| t.data),
            tekton.log_tail(),
            node.kubelet_log_tail()
        ),
    };
    eprintln!("TaskRun finished {:?} after start", began.elapsed());
    assert_eq!(
        succeeded(&taskrun),
        Some(("True".to_owned(), "Succeeded".to_owned())),
        "{:#}",
        taskrun.data
    );
    let results: BTreeMap<String, serde_json::Value> = taskrun.data["status"]["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| {
            (
                result["name"].as_str().unwrap_or("").to_owned(),
                result["value"].clone(),
            )
        })
        .collect();
    assert_eq!(results["commit"], json!("abc123"));
    assert_eq!(results["IMAGE_DIGEST"], json!("sha256:0f0f"));
    assert_eq!(
        results["image"],
        json!({ "url": "localhost/app", "digest": "sha256:0f0f" })
    );
    assert_eq!(results["tags"], json!(["latest", "v1"]));

    // A two-task PipelineRun: the second task gets the first's result as a parameter.
    let pipelineruns: Api<DynamicObject> = Api::namespaced_with(
        node.client(),
        &namespace,
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun"),
            "pipelineruns",
        ),
    );
    let pipelinerun: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": { "name": "release" },
        "spec": { "pipelineSpec": { "tasks": [
            { "name": "build", "taskSpec": {
                "results": [{ "name": "digest", "type": "string" }],
                "steps": [{ "name": "build", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                    "script": "#!/bin/sh\nprintf 'sha256:beef' > $(results.digest.path)\n" }],
            }},
            { "name": "publish", "params": [{ "name": "digest", "value": "$(tasks.build.results.digest)" }],
              "taskSpec": {
                "params": [{ "name": "digest", "type": "string" }],
                "results": [{ "name": "published", "type": "string" }],
                "steps": [{ "name": "publish", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                    "script": "#!/bin/sh\nprintf 'published %s' '$(params.digest)' > $(results.published.path)\n" }],
            }},
        ]}},
    }))
    .expect("a valid PipelineRun");
    pipelineruns
        .create(&PostParams::default(), &pipelinerun)
        .await
        .expect("creating the PipelineRun");
    let finished = wait::until("the PipelineRun to finish", POD_TIMEOUT, || {
        let pipelineruns = pipelineruns.clone();
        async move {
            let run = pipelineruns.get("release").await.ok()?;
            let (status, _) = succeeded(&run)?;
            (status != "Unknown").then_some(run)
        }
    })
    .await;
    let run = match finished {
        Ok(run) => run,
        Err(error) => panic!(
            "{error}\n---- PipelineRun ----\n{:?}\n---- tekton-controller ----\n{}",
            pipelineruns.get("release").await.map(|r| r.data),
            tekton.log_tail(),
        ),
    };
    eprintln!("PipelineRun finished {:?} after start", began.elapsed());
    assert_eq!(
        succeeded(&run),
        Some(("True".to_owned(), "Succeeded".to_owned())),
        "{:#}",
        run.data
    );
    let publish = taskruns
        .list(&kube::api::ListParams::default().labels("tekton.dev/pipelineTask=publish"))
        .await
        .expect("listing the publish TaskRun")
        .items;
    assert_eq!(publish.len(), 1);
    assert_eq!(
        publish[0].data["status"]["results"][0]["value"],
        json!("published sha256:beef")
    );
}
