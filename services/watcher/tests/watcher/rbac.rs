//! The watcher never writes to the cluster: run as a ServiceAccount that may only get, list and
//! watch TaskRuns and pods, it still does all its work (watch, pod lookup for the ingress, the
//! existence check of a TaskRun deleted while it was down).

use countersign_test_support::kube::{service_account_groups, service_account_user};
use countersign_test_support::wait;
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::config::Kubeconfig;

use crate::support::{Harness, TIMEOUT, assert_unique_ids, cloudevent_fixture, transitions};

const ACCOUNT: &str = "countersign-watcher";

/// Creates the ServiceAccount, a Role with exactly get/list/watch on TaskRuns and pods, and the
/// binding; waits until RBAC answers with it.
async fn grant_read_only(harness: &Harness) {
    let kube = harness.kube;
    let namespace = &harness.namespace;
    kube.create_service_account(namespace, ACCOUNT)
        .await
        .expect("creating the ServiceAccount");
    let verbs = vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()];
    let role = Role {
        metadata: ObjectMeta {
            name: Some(ACCOUNT.into()),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec!["tekton.dev".into()]),
                resources: Some(vec!["taskruns".into()]),
                verbs: verbs.clone(),
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".into()]),
                verbs,
                ..PolicyRule::default()
            },
        ]),
    };
    Api::<Role>::namespaced(kube.client(), namespace)
        .create(&PostParams::default(), &role)
        .await
        .expect("creating the Role");
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(ACCOUNT.into()),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: ACCOUNT.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: ACCOUNT.into(),
            namespace: Some(namespace.clone()),
            ..Subject::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(kube.client(), namespace)
        .create(&PostParams::default(), &binding)
        .await
        .expect("creating the RoleBinding");

    let user = service_account_user(namespace, ACCOUNT);
    let groups = service_account_groups(namespace);
    let may = |group: &str, resource: &str, verb: &str| ResourceAttributes {
        namespace: Some(namespace.clone()),
        group: Some(group.into()),
        resource: Some(resource.into()),
        verb: Some(verb.into()),
        ..ResourceAttributes::default()
    };
    wait::until_true("RBAC to grant the Role", TIMEOUT, || async {
        kube.subject_access_review(&user, &groups, may("tekton.dev", "taskruns", "watch"))
            .await
            .unwrap_or(false)
            && kube
                .subject_access_review(&user, &groups, may("", "pods", "get"))
                .await
                .unwrap_or(false)
    })
    .await
    .expect("RBAC grants the Role");
    for (group, resource, verb) in [
        ("tekton.dev", "taskruns", "update"),
        ("tekton.dev", "taskruns", "patch"),
        ("", "pods", "create"),
        ("coordination.k8s.io", "leases", "create"),
    ] {
        assert!(
            !kube
                .subject_access_review(&user, &groups, may(group, resource, verb))
                .await
                .expect("a review"),
            "the account may not {verb} {resource}"
        );
    }
}

/// A kubeconfig that impersonates the ServiceAccount (the admin may impersonate anyone).
fn impersonating_kubeconfig(harness: &Harness, dir: &std::path::Path) -> std::path::PathBuf {
    let mut kubeconfig =
        Kubeconfig::read_from(harness.kube.kubeconfig_path()).expect("the admin kubeconfig");
    for named in &mut kubeconfig.auth_infos {
        if let Some(auth) = named.auth_info.as_mut() {
            auth.impersonate = Some(service_account_user(&harness.namespace, ACCOUNT));
            auth.impersonate_groups = Some(service_account_groups(&harness.namespace));
        }
    }
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        serde_json::to_vec(&kubeconfig).expect("a kubeconfig serializes"),
    )
    .expect("writing the kubeconfig");
    path
}

#[tokio::test]
async fn get_list_watch_on_taskruns_and_pods_is_all_the_watcher_needs() {
    let mut harness = Harness::start("rbac").await;
    grant_read_only(&harness).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = impersonating_kubeconfig(&harness, dir.path());
    harness.set(
        "COUNTERSIGN_KUBERNETES__KUBECONFIG",
        kubeconfig.display().to_string(),
    );

    let mut first = harness.start_watcher().await;
    let name = "least-privilege";
    let pod = format!("{name}-pod");
    let uid = harness.create_taskrun(name).await;
    let pod_uid = harness.create_pod(name, &uid, &pod).await;
    harness
        .set_taskrun_status(name, "taskrun-01-pending.json", &pod)
        .await;
    harness.wait_for_events(2).await;

    // The ingress reads the TaskRun (with a GET) and its pod (from its store or with a GET).
    let event = cloudevent_fixture(
        "ce-taskrun-03-running.json",
        &harness.namespace,
        name,
        &uid,
        &pod,
    );
    let (status, body) = first.post_binary(&event).await;
    assert_eq!(
        (status, body["published"].as_u64()),
        (200, Some(0)),
        "the watch published it already: {body}"
    );
    first.kill().await;

    // Deleted while down: confirmed with a GET after the relist.
    harness.delete_taskrun(name).await;
    let mut second = harness.start_watcher().await;
    harness.wait_for_events(3).await;
    assert!(second.terminate().await.success());

    let events = harness.events().await;
    assert_unique_ids(&events);
    let of = |taskrun: &str| -> Vec<String> {
        transitions(&events)
            .into_iter()
            .filter(|(name, _)| name == taskrun)
            .map(|(_, transition)| transition)
            .collect()
    };
    assert_eq!(
        of(name),
        [
            "created".to_owned(),
            format!("scheduled:{pod_uid}"),
            "deleted".to_owned()
        ]
    );
    assert_eq!(events.len(), 3);
    for log in [first.log(), second.log()] {
        // A refused request shows as kube's error response (`reason: "Forbidden"`, `code: 403`,
        // "... is forbidden: User ... cannot ..."); a bare "403" could be part of a port number.
        let refused = log.to_ascii_lowercase().contains("forbidden") || log.contains("code: 403");
        assert!(!refused, "no request was forbidden:\n{log}");
    }
}
