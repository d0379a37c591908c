//! The RBAC of the rendered manifests, created for real in a real kube-apiserver and checked with
//! SubjectAccessReviews: each service's ServiceAccount may do what it needs and is refused what it
//! does not.
//!
//! - watcher: get, list and watch TaskRuns and pods; never write them, never read secrets.
//! - gate: get, list and watch PipelineRuns, TaskRuns and namespaces; never write, never read
//!   pods or secrets.
//! - registrar and relay: nothing at all.
//! - attestor: nothing, until `components/attestor-annotate` is added; then `patch` on TaskRuns
//!   and still nothing else.

use std::time::Duration;

use countersign_system_tests::render::{self, Rendered};
use countersign_test_support::kube::{
    KubeApiserver, create_strict, service_account_groups, service_account_user,
};
use countersign_test_support::wait;
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use kube::Client;
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde_json::Value;

const NAMESPACE: &str = "countersign";

/// How long RBAC may take to see new roles and bindings.
const RBAC_SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// A request: verb, API group, resource, subresource, namespace (`None`: all namespaces).
#[derive(Debug, Clone, Copy)]
struct Request {
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    namespace: Option<&'static str>,
}

const fn request(
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    namespace: Option<&'static str>,
) -> Request {
    Request {
        verb,
        group,
        resource,
        subresource: "",
        namespace,
    }
}

impl Request {
    fn attributes(self) -> ResourceAttributes {
        ResourceAttributes {
            verb: Some(self.verb.to_owned()),
            group: Some(self.group.to_owned()),
            resource: Some(self.resource.to_owned()),
            subresource: (!self.subresource.is_empty()).then(|| self.subresource.to_owned()),
            namespace: self.namespace.map(str::to_owned),
            ..ResourceAttributes::default()
        }
    }
}

const TEKTON: &str = "tekton.dev";

/// What no Countersign service may ever do.
const NEVER: [Request; 12] = [
    request("create", TEKTON, "taskruns", Some("ci")),
    request("update", TEKTON, "taskruns", Some("ci")),
    request("delete", TEKTON, "taskruns", Some("ci")),
    request("patch", "", "pods", Some("ci")),
    request("create", "", "pods", Some("ci")),
    request("delete", "", "pods", Some("ci")),
    request("get", "", "secrets", Some("ci")),
    request("list", "", "secrets", None),
    request("get", "", "secrets", Some(NAMESPACE)),
    request("create", "", "events", Some("ci")),
    request("create", "coordination.k8s.io", "leases", Some(NAMESPACE)),
    request("get", "", "configmaps", Some("tekton-pipelines")),
];

/// The watcher's reads.
const WATCHER_READS: [Request; 7] = [
    request("get", TEKTON, "taskruns", Some("ci")),
    request("list", TEKTON, "taskruns", None),
    request("watch", TEKTON, "taskruns", None),
    request("get", "", "pods", Some("ci")),
    request("list", "", "pods", None),
    request("watch", "", "pods", None),
    request("list", TEKTON, "taskruns", Some("ci")),
];

/// The attestor's annotation.
/// What the gate reads.
const GATE_READS: [Request; 7] = [
    request("get", TEKTON, "pipelineruns", Some("ci")),
    request("list", TEKTON, "pipelineruns", None),
    request("watch", TEKTON, "pipelineruns", None),
    request("list", TEKTON, "taskruns", None),
    request("watch", TEKTON, "taskruns", None),
    request("list", "", "namespaces", None),
    request("watch", "", "namespaces", None),
];

const ANNOTATE: Request = request("patch", TEKTON, "taskruns", Some("ci"));

async fn may(kube: &KubeApiserver, account: &str, request: Request) -> bool {
    kube.subject_access_review(
        &service_account_user(NAMESPACE, account),
        &service_account_groups(NAMESPACE),
        request.attributes(),
    )
    .await
    .unwrap_or_else(|error| panic!("SubjectAccessReview for {account} {request:?}: {error}"))
}

/// Waits until `account` may do `request` (RBAC sees new bindings a moment after they exist).
async fn wait_allowed(kube: &KubeApiserver, account: &str, request: Request) {
    wait::until_true(
        &format!("{account} to be allowed {request:?}"),
        RBAC_SYNC_TIMEOUT,
        || may(kube, account, request),
    )
    .await
    .unwrap_or_else(|error| panic!("{error}"));
}

async fn assert_refused(kube: &KubeApiserver, account: &str, requests: &[Request]) {
    for request in requests {
        assert!(
            !may(kube, account, *request).await,
            "{account} must be refused {request:?}"
        );
    }
}

/// Creates the ServiceAccounts, Roles and bindings of `rendered` for real (the namespace first).
async fn create_rbac(kube: &KubeApiserver, rendered: &Rendered) {
    let client = kube.client();
    for document in rendered.of_kind("Namespace") {
        create(&client, document).await;
    }
    for document in &rendered.documents {
        if matches!(
            render::kind(document),
            "ServiceAccount" | "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding"
        ) {
            create(&client, document).await;
        }
    }
}

async fn create(client: &Client, document: &Value) {
    let (group, version) = match render::api_version(document).split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", render::api_version(document)),
    };
    let gvk = GroupVersionKind::gvk(group, version, render::kind(document));
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|error| panic!("discovering {gvk:?}: {error}"));
    let namespace = match capabilities.scope {
        Scope::Namespaced => Some(render::namespace(document).unwrap_or("default")),
        Scope::Cluster => None,
    };
    match create_strict(client, &resource, namespace, document).await {
        Ok(_) => {}
        Err(kube::Error::Api(response)) if response.code == 409 => {}
        Err(error) => panic!("creating {}: {error}", render::describe(document)),
    }
}

fn render_with_annotation() -> Rendered {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // kustomize takes only relative paths to other kustomizations.
    let up = "../".repeat(dir.path().components().count() - 1);
    let k8s = countersign_system_tests::k8s_dir();
    let k8s = format!("{up}{}", k8s.display().to_string().trim_start_matches('/'));
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - {k8s}/base\ncomponents:\n  - {k8s}/components/attestor-annotate\n"
        ),
    )
    .expect("writing the kustomization");
    Rendered {
        name: "base + attestor-annotate".to_owned(),
        documents: render::render_dir(dir.path()).unwrap_or_else(|error| panic!("{error}")),
    }
}

/// One test, in order: the base's RBAC first, then the annotation component on top of it (the
/// apiserver is shared by this test binary, and the component widens the attestor's rights).
#[tokio::test]
async fn each_service_account_may_do_what_it_needs_and_nothing_else() {
    let kube = KubeApiserver::shared().await;
    let base = render::render("base").unwrap_or_else(|error| panic!("{error}"));
    create_rbac(kube, &base).await;

    // The watcher reads TaskRuns and pods, cluster-wide.
    for request in WATCHER_READS {
        wait_allowed(kube, "countersign-watcher", request).await;
    }
    assert_refused(kube, "countersign-watcher", &NEVER).await;
    assert_refused(kube, "countersign-watcher", &[ANNOTATE]).await;
    assert_refused(
        kube,
        "countersign-watcher",
        &[Request {
            subresource: "status",
            ..request("patch", TEKTON, "taskruns", Some("ci"))
        }],
    )
    .await;

    // The gate reads PipelineRuns, TaskRuns and namespaces, cluster-wide, and nothing else.
    for request in GATE_READS {
        wait_allowed(kube, "countersign-gate", request).await;
    }
    assert_refused(kube, "countersign-gate", &NEVER).await;
    assert_refused(kube, "countersign-gate", &[ANNOTATE]).await;
    assert_refused(
        kube,
        "countersign-gate",
        &[
            request("get", "", "pods", Some("ci")),
            request("create", TEKTON, "pipelineruns", Some("ci")),
            request("patch", "", "namespaces", None),
        ],
    )
    .await;
    assert_refused(kube, "countersign-watcher", &GATE_READS[..3]).await;

    // The registrar, the relay and (without the component) the attestor: nothing.
    for account in [
        "countersign-registrar",
        "countersign-relay",
        "countersign-attestor",
    ] {
        assert_refused(kube, account, &WATCHER_READS).await;
        assert_refused(kube, account, &GATE_READS).await;
        assert_refused(kube, account, &NEVER).await;
        assert_refused(kube, account, &[ANNOTATE]).await;
    }

    // With the annotation component, the attestor may patch TaskRuns, and only that.
    let annotated = render_with_annotation();
    create_rbac(kube, &annotated).await;
    wait_allowed(kube, "countersign-attestor", ANNOTATE).await;
    wait_allowed(
        kube,
        "countersign-attestor",
        request("patch", TEKTON, "taskruns", Some("another-namespace")),
    )
    .await;
    assert_refused(kube, "countersign-attestor", &WATCHER_READS).await;
    assert_refused(kube, "countersign-attestor", &NEVER).await;
    assert_refused(
        kube,
        "countersign-attestor",
        &[Request {
            subresource: "status",
            ..ANNOTATE
        }],
    )
    .await;
    // The component gives nothing to anyone else.
    for account in ["countersign-registrar", "countersign-relay"] {
        assert_refused(kube, account, &[ANNOTATE]).await;
    }
}
