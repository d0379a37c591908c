//! Smoke tests proving the Kubernetes peer is real: a TaskRun goes through the real kube-apiserver
//! (created, watched, its status subresource patched), RBAC is really enforced, and the TaskRun CRD's
//! schema really validates; a restart keeps etcd's data, the port and the clients.

use std::time::Duration;

use countersign_test_support::kube::{
    KubeApiserver, create_strict, create_strict_dry_run, service_account_groups,
    service_account_user, taskrun_fixture, taskrun_resource,
};
use countersign_test_support::{fixtures_dir, unique_name, wait};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams, ResourceExt};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

/// How long a watch event or an RBAC change may take to show.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

fn taskruns(client: kube::Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client, namespace, &taskrun_resource())
}

/// The `Succeeded` condition's reason, if the object has one.
fn succeeded_reason(taskrun: &DynamicObject) -> Option<String> {
    taskrun
        .data
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find_map(|condition| {
            (condition.get("type")? == "Succeeded")
                .then(|| condition.get("reason")?.as_str().map(str::to_owned))
                .flatten()
        })
}

/// The HTTP status code of an API error, if the error came from the apiserver.
fn api_status(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn a_taskrun_status_patch_arrives_through_a_watch() {
    let kube = KubeApiserver::shared().await;
    let namespace = kube
        .unique_namespace("watch")
        .await
        .expect("creating a namespace");
    let pending = taskrun_fixture("taskrun-01-pending.json", &namespace).expect("pending fixture");
    let running = taskrun_fixture("taskrun-02-running.json", &namespace).expect("running fixture");
    let name = pending
        .object
        .metadata
        .name
        .clone()
        .expect("the fixture has a name");
    let api = taskruns(kube.client(), &namespace);

    let mut events = watcher(
        api.clone(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .applied_objects()
    .boxed();

    let created = api
        .create(&PostParams::default(), &pending.object)
        .await
        .expect("creating the TaskRun");
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        succeeded_reason(&created),
        None,
        "a created TaskRun has no status yet"
    );

    let first = tokio::time::timeout(EVENT_TIMEOUT, events.try_next())
        .await
        .expect("the watch delivers the created TaskRun in time")
        .expect("the watch stream is healthy")
        .expect("the watch stream is open");
    assert_eq!(first.metadata.uid, created.metadata.uid);

    let patched = api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": running.status })),
        )
        .await
        .expect("patching the status subresource");
    assert_eq!(succeeded_reason(&patched).as_deref(), Some("Running"));

    let seen = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let taskrun = events
                .try_next()
                .await
                .expect("the watch stream is healthy")
                .expect("the watch stream is open");
            if succeeded_reason(&taskrun).as_deref() == Some("Running") {
                return taskrun;
            }
        }
    })
    .await
    .expect("the status change arrives through the watch in time");
    assert_eq!(seen.metadata.uid, created.metadata.uid);
    // A status subresource write does not bump the generation.
    assert_eq!(seen.metadata.generation, Some(1));
    assert_eq!(
        seen.data
            .pointer("/status/steps/0/terminated/reason")
            .and_then(Value::as_str),
        Some("Completed")
    );
}

#[tokio::test]
async fn status_written_through_the_main_resource_is_ignored() {
    let kube = KubeApiserver::shared().await;
    let namespace = kube
        .unique_namespace("subresource")
        .await
        .expect("creating a namespace");
    let pending = taskrun_fixture("taskrun-01-pending.json", &namespace).expect("pending fixture");
    let name = pending
        .object
        .metadata
        .name
        .clone()
        .expect("the fixture has a name");
    let api = taskruns(kube.client(), &namespace);
    let mut with_status = pending.object.clone();
    with_status.data["status"] = pending.status.clone();

    let created = api
        .create(&PostParams::default(), &with_status)
        .await
        .expect("creating the TaskRun");
    assert_eq!(
        succeeded_reason(&created),
        None,
        "status is dropped on create"
    );

    let patched = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": pending.status })),
        )
        .await
        .expect("patching the main resource");
    assert_eq!(
        succeeded_reason(&patched),
        None,
        "status is ignored by the main resource"
    );
}

#[tokio::test]
async fn the_taskrun_schema_rejects_unknown_fields_under_strict_validation() {
    let kube = KubeApiserver::shared().await;
    let namespace = kube
        .unique_namespace("schema")
        .await
        .expect("creating a namespace");
    let pending = taskrun_fixture("taskrun-01-pending.json", &namespace).expect("pending fixture");
    let api = taskruns(kube.client(), &namespace);

    let mut invalid = pending.object.clone();
    invalid.metadata.name = Some(unique_name("invalid"));
    invalid.data["spec"]["notAField"] = json!("surprise");

    let error = create_strict(
        &kube.client(),
        &taskrun_resource(),
        Some(&namespace),
        &invalid,
    )
    .await
    .expect_err("an unknown field is rejected under fieldValidation=Strict");
    assert_eq!(
        api_status(&error),
        Some(400),
        "a strict decoding error is a Bad Request: {error:?}"
    );
    let error = create_strict_dry_run(
        &kube.client(),
        &taskrun_resource(),
        Some(&namespace),
        &invalid,
    )
    .await
    .expect_err("a dry run refuses it the same way");
    assert_eq!(
        api_status(&error),
        Some(400),
        "a strict decoding error is a Bad Request: {error:?}"
    );

    // The valid fixture passes strict validation; a dry run stores nothing.
    let mut valid = pending.object.clone();
    valid.metadata.name = Some(unique_name("valid"));
    create_strict_dry_run(
        &kube.client(),
        &taskrun_resource(),
        Some(&namespace),
        &valid,
    )
    .await
    .expect("the fixture passes strict validation");
    let stored = api
        .get_opt(valid.metadata.name.as_deref().expect("named"))
        .await
        .expect("reading");
    assert!(stored.is_none(), "a dry run stores nothing");
    create_strict(
        &kube.client(),
        &taskrun_resource(),
        Some(&namespace),
        &valid,
    )
    .await
    .expect("the fixture is created under strict validation");

    // The same object through a plain create is accepted, with the unknown field pruned: the schema
    // is structural.
    let pruned = api
        .create(&PostParams::default(), &invalid)
        .await
        .expect("creating without strict validation");
    assert_eq!(pruned.data.pointer("/spec/notAField"), None);
    assert_eq!(
        pruned
            .data
            .pointer("/spec/params/0/name")
            .and_then(Value::as_str),
        Some("revision")
    );

    // A known field of the wrong type is invalid whatever the validation directive.
    let mut wrong_type = pending.object.clone();
    wrong_type.metadata.name = Some(unique_name("wrong-type"));
    wrong_type.data["spec"]["timeout"] = json!(3600);
    let error = api
        .create(&PostParams::default(), &wrong_type)
        .await
        .expect_err("a number where the schema wants a string is rejected");
    assert_eq!(
        api_status(&error),
        Some(422),
        "a schema violation is Invalid: {error:?}"
    );
}

#[tokio::test]
async fn rbac_refuses_a_service_account_until_a_role_grants_it() {
    let kube = KubeApiserver::shared().await;
    let namespace = kube
        .unique_namespace("rbac")
        .await
        .expect("creating a namespace");
    let elsewhere = kube
        .unique_namespace("rbac-other")
        .await
        .expect("creating a second namespace");
    let account = "taskrun-reader";
    kube.create_service_account(&namespace, account)
        .await
        .expect("creating the ServiceAccount");
    let user = service_account_user(&namespace, account);
    let groups = service_account_groups(&namespace);
    let list_taskruns = |namespace: &str| ResourceAttributes {
        namespace: Some(namespace.to_owned()),
        verb: Some("list".to_owned()),
        group: Some("tekton.dev".to_owned()),
        resource: Some("taskruns".to_owned()),
        ..ResourceAttributes::default()
    };

    let allowed = kube
        .subject_access_review(&user, &groups, list_taskruns(&namespace))
        .await
        .expect("reviewing access");
    assert!(!allowed, "a fresh ServiceAccount may not list TaskRuns");
    let as_account = kube
        .client_as_service_account(&namespace, account)
        .await
        .expect("a client with the ServiceAccount's token");
    let error = taskruns(as_account.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .expect_err("listing is refused");
    assert_eq!(
        api_status(&error),
        Some(403),
        "refused as Forbidden: {error:?}"
    );

    let admin = kube.client();
    let role = Role {
        metadata: ObjectMeta {
            name: Some("read-taskruns".into()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["tekton.dev".into()]),
            resources: Some(vec!["taskruns".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..PolicyRule::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &namespace)
        .create(&PostParams::default(), &role)
        .await
        .expect("creating the Role");
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("read-taskruns".into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "read-taskruns".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: account.into(),
            namespace: Some(namespace.clone()),
            ..Subject::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin, &namespace)
        .create(&PostParams::default(), &binding)
        .await
        .expect("creating the RoleBinding");

    // RBAC reads bindings through informers: wait for the grant to show.
    wait::until_true("the RoleBinding to take effect", EVENT_TIMEOUT, || {
        let attributes = list_taskruns(&namespace);
        let (user, groups) = (user.clone(), groups.clone());
        async move {
            kube.subject_access_review(&user, &groups, attributes)
                .await
                .unwrap_or(false)
        }
    })
    .await
    .expect("the ServiceAccount is allowed once bound");
    let listed = taskruns(as_account.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .expect("listing as the ServiceAccount once bound");
    assert!(listed.items.is_empty());

    // The grant is namespaced.
    let allowed_elsewhere = kube
        .subject_access_review(&user, &groups, list_taskruns(&elsewhere))
        .await
        .expect("reviewing access");
    assert!(!allowed_elsewhere);
    let error = taskruns(as_account, &elsewhere)
        .list(&ListParams::default())
        .await
        .expect_err("listing in another namespace is refused");
    assert_eq!(
        api_status(&error),
        Some(403),
        "refused as Forbidden: {error:?}"
    );
}

#[tokio::test]
async fn impersonation_is_authorized_as_the_impersonated_user() {
    let kube = KubeApiserver::shared().await;
    let namespace = kube
        .unique_namespace("impersonate")
        .await
        .expect("creating a namespace");
    let user = service_account_user(&namespace, "nobody");
    let as_nobody = kube
        .client_impersonating(&user, &service_account_groups(&namespace))
        .expect("an impersonating client");
    let error = taskruns(as_nobody, &namespace)
        .list(&ListParams::default())
        .await
        .expect_err("an unbound user may not list TaskRuns");
    assert_eq!(
        api_status(&error),
        Some(403),
        "refused as Forbidden: {error:?}"
    );
}

#[tokio::test]
async fn multi_document_crd_files_install_and_are_served() {
    let kube = KubeApiserver::shared().await;
    let names = kube
        .install_crds(&[fixtures_dir().join("crds/nats/crds.yml")])
        .await
        .expect("installing the NATS CRDs");
    assert_eq!(names.len(), 6, "crds.yml holds six CRDs: {names:?}");
    assert!(names.iter().any(|name| name == "streams.jetstream.nats.io"));

    // Installing again is idempotent.
    let again = kube
        .install_crds(&[fixtures_dir().join("crds/nats/crds.yml")])
        .await
        .expect("installing the NATS CRDs again");
    assert_eq!(again, names);

    let resources = kube
        .client()
        .list_api_group_resources("jetstream.nats.io/v1beta2")
        .await
        .expect("discovery of jetstream.nats.io/v1beta2");
    assert!(
        resources
            .resources
            .iter()
            .any(|resource| resource.name == "streams")
    );
}

#[tokio::test]
async fn a_private_apiserver_runs_beside_the_shared_one() {
    let shared = KubeApiserver::shared().await;
    let private = KubeApiserver::start()
        .await
        .expect("starting a private apiserver");
    assert_ne!(private.port(), shared.port());
    assert_ne!(private.kubeconfig_path(), shared.kubeconfig_path());

    let namespace = private
        .unique_namespace("private")
        .await
        .expect("creating a namespace");
    let in_shared = Api::<Namespace>::all(shared.client())
        .get_opt(&namespace)
        .await
        .expect("reading");
    assert!(in_shared.is_none(), "the two apiservers share no storage");

    // The TaskRun CRD is installed in the private one too.
    let pending = taskrun_fixture("taskrun-01-pending.json", &namespace).expect("pending fixture");
    taskruns(private.client(), &namespace)
        .create(&PostParams::default(), &pending.object)
        .await
        .expect("creating a TaskRun in the private apiserver");

    let (apiserver_pid, etcd_pid) = private.pids();
    let apiserver_pid = apiserver_pid.expect("the apiserver runs");
    let etcd_pid = etcd_pid.expect("etcd runs");
    let dirs = [
        private
            .kubeconfig_path()
            .parent()
            .expect("in a directory")
            .to_owned(),
        private
            .etcd_log_path()
            .parent()
            .expect("in a directory")
            .to_owned(),
    ];
    eprintln!("private apiserver started in {:?}", private.started_in());
    drop(private);
    assert!(
        !process_exists(apiserver_pid),
        "kube-apiserver stops on drop"
    );
    assert!(!process_exists(etcd_pid), "etcd stops on drop");
    for dir in dirs {
        assert!(!dir.exists(), "{} is removed on drop", dir.display());
    }
}

#[tokio::test]
async fn a_restart_keeps_etcds_data_the_port_and_the_clients() {
    let mut private = KubeApiserver::start()
        .await
        .expect("starting a private apiserver");
    let port = private.port();
    let client = private.client();
    let namespace = private
        .unique_namespace("restart")
        .await
        .expect("creating a namespace");
    let pending = taskrun_fixture("taskrun-01-pending.json", &namespace).expect("pending fixture");
    let created = taskruns(client.clone(), &namespace)
        .create(&PostParams::default(), &pending.object)
        .await
        .expect("creating a TaskRun before the restart");
    let (apiserver_before, etcd_before) = private.pids();
    let dirs = [
        private
            .kubeconfig_path()
            .parent()
            .expect("in a directory")
            .to_owned(),
        private
            .etcd_log_path()
            .parent()
            .expect("in a directory")
            .to_owned(),
    ];

    let took = private.restart().await.expect("the restart");
    eprintln!("kube-apiserver and etcd back in {took:?}");
    let (apiserver_after, etcd_after) = private.pids();
    assert!(apiserver_after.is_some() && apiserver_after != apiserver_before);
    assert!(etcd_after.is_some() && etcd_after != etcd_before);
    // Killed: gone, or a zombie until the guard that started it reaps it.
    assert!(!process_runs(apiserver_before.expect("it ran")));
    assert!(!process_runs(etcd_before.expect("it ran")));
    assert_eq!(private.port(), port, "the same port");

    // The client made before the restart (same URL, CA and certificate) reads what etcd kept,
    // with the same uid, and writes again.
    let read = taskruns(client.clone(), &namespace)
        .get(&created.name_any())
        .await
        .expect("the TaskRun survived the restart");
    assert_eq!(read.metadata.uid, created.metadata.uid);
    let mut second = pending.object.clone();
    second.metadata.name = Some(unique_name("after-restart"));
    taskruns(client, &namespace)
        .create(&PostParams::default(), &second)
        .await
        .expect("creating a TaskRun after the restart");

    drop(private);
    for dir in dirs {
        assert!(!dir.exists(), "{} is removed on drop", dir.display());
    }
}

/// Where [`shared_apiserver_in_a_child_process`] writes what its parent checks, when it runs as
/// the child of [`the_shared_apiserver_stops_when_its_test_process_exits`].
const CHILD_REPORT: &str = "COUNTERSIGN_KUBE_CHILD_REPORT";

#[tokio::test]
async fn shared_apiserver_in_a_child_process() {
    let first = KubeApiserver::shared().await;
    let second = KubeApiserver::shared().await;
    assert!(
        std::ptr::eq(first, second),
        "one shared apiserver per test process"
    );
    let (apiserver_pid, etcd_pid) = first.pids();
    assert!(apiserver_pid.is_some_and(process_exists) && etcd_pid.is_some_and(process_exists));
    if let Some(report) = std::env::var_os(CHILD_REPORT) {
        let report_text = json!({
            "pids": [apiserver_pid, etcd_pid],
            "dirs": [
                first.kubeconfig_path().parent().expect("in a directory"),
                first.etcd_log_path().parent().expect("in a directory"),
            ],
        });
        std::fs::write(report, report_text.to_string()).expect("writing the report");
    }
}

#[tokio::test]
async fn the_shared_apiserver_stops_when_its_test_process_exits() {
    let report_dir = countersign_test_support::short_tempdir("cs-kube-child-");
    let report_path = report_dir.path().join("report.json");
    let status = tokio::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "shared_apiserver_in_a_child_process",
            "--test-threads=1",
        ])
        .env(CHILD_REPORT, &report_path)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("running this test binary as a child");
    assert!(status.success(), "the child test passes");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("the child's report"))
            .expect("a JSON report");
    let pids: Vec<u32> = serde_json::from_value(report["pids"].clone()).expect("two pids");
    let dirs: Vec<std::path::PathBuf> =
        serde_json::from_value(report["dirs"].clone()).expect("two directories");
    assert_eq!((pids.len(), dirs.len()), (2, 2));

    // The guards stop kube-apiserver and etcd (kube-apiserver hangs in its shutdown once etcd is
    // gone, so it takes a SIGKILL after 10 s) and remove the directories.
    wait::until_true(
        "the child's peers to stop and their directories to go",
        Duration::from_secs(60),
        || {
            let gone = pids.iter().all(|pid| !process_exists(*pid))
                && dirs.iter().all(|dir| !dir.exists());
            async move { gone }
        },
    )
    .await
    .expect("nothing of the shared apiserver outlives its test process");
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn process_runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
