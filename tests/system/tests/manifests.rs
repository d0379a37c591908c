//! Every manifest under `k8s/`, rendered by the real kustomize (the base, both overlays, Tekton's
//! side and the example Task), is sent to a real kube-apiserver as a server-side dry run with strict
//! field validation, after the third-party CRDs it uses (Tekton, KEDA, spire-controller-manager,
//! NACK) are installed from the fixtures and its namespaces are created for real. Any rejection
//! fails the test with the object's kind, name and the server's reason.
//!
//! The pods the Deployments would create are dry-run too, in namespace `countersign` whose
//! Pod Security admission level is `restricted`: a container that could run as root, escalate or
//! keep a capability is refused.
//!
//! The Prometheus Operator component (`components/prometheus-operator`) is not applied: its CRDs
//! are not among the fixtures. Its rules are checked against the plain rules file in
//! `observability.rs`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use countersign_system_tests::render::{self, Rendered};
use countersign_test_support::fixtures_dir;
use countersign_test_support::kube::{KubeApiserver, create_strict, create_strict_dry_run};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ApiResource;
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::{Api, Client};
use serde_json::{Value, json};

/// The namespace of objects that name none (the example Task and StepAction).
const DEFAULT_NAMESPACE: &str = "default";

/// The third-party CRDs the manifests use.
fn crd_files() -> Vec<PathBuf> {
    let crds = fixtures_dir().join("crds");
    let mut files = Vec::new();
    for dir in ["tekton", "keda", "spire-controller-manager", "nats"] {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(crds.join(dir))
            .unwrap_or_else(|error| panic!("listing {}: {error}", crds.join(dir).display()))
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "yaml" || extension == "yml")
            })
            .collect();
        entries.sort();
        files.extend(entries);
    }
    files
}

async fn apiserver() -> &'static KubeApiserver {
    let kube = KubeApiserver::shared().await;
    kube.install_crds(&crd_files())
        .await
        .unwrap_or_else(|error| panic!("installing the fixture CRDs: {error:?}"));
    kube
}

/// Creates `name` for real unless it exists.
async fn ensure_namespace(client: &Client, namespace: &Value) -> Result<(), String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let name = render::name(namespace).to_owned();
    if api
        .get_opt(&name)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    let resource = ApiResource::erase::<Namespace>(&());
    match create_strict(client, &resource, None, namespace).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(response)) if response.code == 409 => Ok(()),
        Err(error) => Err(format!("Namespace {name}: {error}")),
    }
}

/// Dry-runs every document of `rendered`; returns one line per rejection.
async fn dry_run(kube: &KubeApiserver, rendered: &Rendered) -> Vec<String> {
    let client = kube.client();
    let mut failures = Vec::new();

    // Namespaces first, for real: the ones the manifests declare, then every one they use.
    let mut used: BTreeSet<String> = BTreeSet::from([DEFAULT_NAMESPACE.to_owned()]);
    for document in &rendered.documents {
        if let Some(namespace) = render::namespace(document) {
            used.insert(namespace.to_owned());
        }
    }
    for namespace in rendered.of_kind("Namespace") {
        used.remove(render::name(namespace));
        if let Err(failure) = ensure_namespace(&client, namespace).await {
            failures.push(failure);
        }
    }
    for name in used {
        let namespace =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        if let Err(failure) = ensure_namespace(&client, &namespace).await {
            failures.push(failure);
        }
    }

    for document in &rendered.documents {
        if render::kind(document) == "Namespace" {
            continue;
        }
        if let Err(failure) = dry_run_one(&client, document).await {
            failures.push(failure);
        }
    }
    failures
}

async fn dry_run_one(client: &Client, document: &Value) -> Result<(), String> {
    let describe = render::describe(document);
    let (group, version) = match render::api_version(document).split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", render::api_version(document)),
    };
    let gvk = GroupVersionKind::gvk(group, version, render::kind(document));
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|error| format!("{describe}: the server does not serve {gvk:?}: {error}"))?;
    let namespace = match capabilities.scope {
        Scope::Namespaced => Some(render::namespace(document).unwrap_or(DEFAULT_NAMESPACE)),
        Scope::Cluster => {
            if let Some(namespace) = render::namespace(document) {
                return Err(format!(
                    "{describe}: a cluster-scoped object must have no namespace (has {namespace})"
                ));
            }
            None
        }
    };
    create_strict_dry_run(client, &resource, namespace, document)
        .await
        .map(|_| ())
        .map_err(|error| format!("{describe}: {error}"))
}

/// The pod each Deployment's template would make, dry-run in the Deployment's namespace (Pod
/// Security admission judges pods, not Deployments).
async fn dry_run_pods(kube: &KubeApiserver, rendered: &Rendered) -> Vec<String> {
    let client = kube.client();
    let resource = ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&());
    let mut failures = Vec::new();
    for deployment in rendered.of_kind("Deployment") {
        let template = &deployment["spec"]["template"];
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": format!("{}-dry-run", render::name(deployment)),
                "labels": template["metadata"]["labels"],
            },
            "spec": template["spec"],
        });
        let namespace = render::namespace(deployment).unwrap_or(DEFAULT_NAMESPACE);
        if let Err(error) = create_strict_dry_run(&client, &resource, Some(namespace), &pod).await {
            failures.push(format!(
                "the pod of {}: {error}",
                render::describe(deployment)
            ));
        }
    }
    failures
}

async fn check(relative: &str) -> Rendered {
    let rendered = render::render(relative).unwrap_or_else(|error| panic!("{error}"));
    assert!(
        !rendered.documents.is_empty(),
        "{relative} renders no objects"
    );
    let kube = apiserver().await;
    let mut failures = dry_run(kube, &rendered).await;
    failures.extend(dry_run_pods(kube, &rendered).await);
    assert!(
        failures.is_empty(),
        "the apiserver refused objects of {relative}:\n{}",
        failures.join("\n")
    );
    rendered
}

#[tokio::test]
async fn base_is_accepted() {
    let rendered = check("base").await;
    assert_eq!(rendered.of_kind("Deployment").count(), 6);
    let webhook = rendered
        .find("ValidatingWebhookConfiguration", "countersign-gate")
        .expect("the gate's webhook configuration");
    assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Fail");
    assert!(
        webhook["webhooks"][0]["timeoutSeconds"]
            .as_i64()
            .is_some_and(|seconds| seconds <= 3)
    );
    // No placeholder CA: one the API server cannot use would deny every TaskRun (fail closed).
    // cert-manager (components/gate-cert-manager) or an overlay provides it.
    for hook in webhook["webhooks"].as_array().expect("webhooks") {
        assert!(
            hook["clientConfig"].get("caBundle").is_none(),
            "{}",
            hook["name"]
        );
    }
}

#[tokio::test]
async fn dev_overlay_is_accepted() {
    let rendered = check("overlays/dev").await;
    for deployment in rendered.of_kind("Deployment") {
        assert_eq!(
            deployment["spec"]["replicas"],
            1,
            "{}",
            render::describe(deployment)
        );
    }
    assert_eq!(rendered.of_kind("Stream").count(), 5);
    assert!(rendered.of_kind("ScaledObject").next().is_none());
}

#[tokio::test]
async fn production_overlay_is_accepted() {
    let rendered = check("overlays/production").await;
    let scaled: BTreeSet<&str> = rendered
        .of_kind("ScaledObject")
        .map(|object| {
            object["spec"]["scaleTargetRef"]["name"]
                .as_str()
                .unwrap_or("")
        })
        .collect();
    assert_eq!(
        scaled,
        BTreeSet::from([
            "countersign-attestor",
            "countersign-registrar",
            "countersign-relay"
        ]),
        "KEDA scales the consumers, never the watcher"
    );
    for stream in rendered.of_kind("Stream") {
        assert_eq!(
            stream["spec"]["replicas"],
            3,
            "{}",
            render::describe(stream)
        );
    }
}

#[tokio::test]
async fn tekton_configuration_is_accepted() {
    let rendered = check("tekton").await;
    let flags = rendered
        .find("ConfigMap", "feature-flags")
        .expect("feature-flags");
    assert_eq!(flags["data"]["enforce-nonfalsifiability"], "spire");
    let events = rendered
        .find("ConfigMap", "config-events")
        .expect("config-events");
    assert_eq!(
        events["data"]["sink"],
        "http://countersign-watcher.countersign.svc.cluster.local:8080"
    );
}

#[tokio::test]
async fn example_task_is_accepted() {
    let rendered = check("tekton/example").await;
    let task = rendered
        .find("Task", "countersign-example-build")
        .expect("the example Task");
    let results: BTreeSet<&str> = task["spec"]["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|result| result["name"].as_str())
        .collect();
    for signing in [
        "SVID",
        "RESULT_MANIFEST",
        "RESULT_MANIFEST.sig",
        "commit.sig",
        "image-digest.sig",
    ] {
        assert!(
            results.contains(signing),
            "the example Task must declare {signing}"
        );
    }
}

/// The attestor's annotation component, added to the base, is accepted too.
#[tokio::test]
async fn attestor_annotate_component_is_accepted() {
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
    let documents = render::render_dir(dir.path()).unwrap_or_else(|error| panic!("{error}"));
    let rendered = Rendered {
        name: "base + attestor-annotate".to_owned(),
        documents,
    };
    let kube = apiserver().await;
    let mut failures = dry_run(kube, &rendered).await;
    failures.extend(dry_run_pods(kube, &rendered).await);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let attestor = rendered
        .find("Deployment", "countersign-attestor")
        .expect("the attestor");
    let env = &attestor["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .into_iter()
            .flatten()
            .any(|var| var["name"] == "COUNTERSIGN_ANNOTATE__ENABLED" && var["value"] == "true")
    );
}

/// Every image a Deployment of the base runs is one `cargo xtask images` builds, under the same
/// name, and has a Dockerfile: a service added to the manifests but not to the image builder would
/// deploy an image nobody can make.
#[test]
fn every_deployed_image_is_built_by_the_image_builder() {
    let rendered = render::render("base").unwrap_or_else(|error| panic!("{error}"));
    let built: BTreeSet<String> = countersign_system_tests::images::SERVICES
        .into_iter()
        .map(countersign_system_tests::images::service_image_name)
        .collect();
    let mut deployed = 0;
    for deployment in rendered.of_kind("Deployment") {
        let name = render::name(deployment);
        for container in deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let image = container["image"].as_str().unwrap_or_default();
            assert!(
                built.contains(image),
                "{name} runs {image}, which `cargo xtask images` does not build ({built:?})"
            );
            deployed += 1;
        }
    }
    assert!(
        deployed >= 5,
        "the base deploys every service ({deployed} containers)"
    );
    for service in countersign_system_tests::images::SERVICES {
        let dockerfile = countersign_test_support::repo_root()
            .join(countersign_system_tests::images::dockerfile(service));
        assert!(dockerfile.is_file(), "a Dockerfile for {service}");
    }
}

/// What every Deployment of the base must have: probes on /livez and /readyz at the admin port,
/// requests and limits, a locked-down container, a Service exposing the admin port, a
/// PodDisruptionBudget; the SPIFFE CSI volume exactly for the services that use the Workload API;
/// a Kubernetes API token only for the watcher and the gate.
#[test]
fn deployments_have_probes_resources_services_and_budgets() {
    let rendered = render::render("base").unwrap_or_else(|error| panic!("{error}"));
    for deployment in rendered.of_kind("Deployment") {
        let name = render::name(deployment);
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"], "/livez",
            "{name}"
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{name}"
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["port"], "admin",
            "{name}"
        );
        for field in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    container["resources"][field][resource].is_string(),
                    "{name}: resources.{field}.{resource}"
                );
            }
        }
        assert_eq!(
            container["securityContext"]["readOnlyRootFilesystem"], true,
            "{name}"
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");

        let service = rendered
            .find("Service", name)
            .expect("a Service per Deployment");
        assert!(
            service["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|port| port["name"] == "admin" && port["port"] == 9090),
            "{name}: the Service exposes the admin port"
        );
        assert!(
            rendered.find("PodDisruptionBudget", name).is_some(),
            "{name}: a PodDisruptionBudget"
        );

        let csi = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|volume| volume["csi"]["driver"] == "csi.spiffe.io");
        let uses_workload_api = matches!(name, "countersign-registrar" | "countersign-attestor");
        assert_eq!(csi, uses_workload_api, "{name}: the SPIFFE CSI volume");
        let token = pod["automountServiceAccountToken"] == true;
        assert_eq!(
            token,
            matches!(name, "countersign-watcher" | "countersign-gate"),
            "{name}: API token"
        );
    }
    let watcher = rendered
        .find("Service", "countersign-watcher")
        .expect("the watcher's Service");
    assert!(
        watcher["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|port| port["name"] == "http" && port["port"] == 8080),
        "the watcher's ingress port"
    );
}

/// Only the watcher and the gate have RBAC in the base, and only to read.
#[test]
fn only_the_watcher_and_the_gate_are_bound_to_a_role_in_the_base() {
    let rendered = render::render("base").unwrap_or_else(|error| panic!("{error}"));
    let subjects: BTreeSet<String> = rendered
        .documents
        .iter()
        .filter(|document| matches!(render::kind(document), "RoleBinding" | "ClusterRoleBinding"))
        .flat_map(|binding| {
            binding["subjects"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|subject| subject["name"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    assert_eq!(
        subjects,
        BTreeSet::from([
            "countersign-gate".to_owned(),
            "countersign-watcher".to_owned()
        ])
    );
}
