//! The Compose file validates against the Compose specification's JSON Schema (Draft 7, from the
//! fixtures), and has what a laptop deployment needs: NATS with its set-up, SPIRE server and
//! agent, every service built from its own multi-stage Dockerfile to a non-root image, and no
//! file it mounts missing from the repository.
//!
//! And it runs, for real ([`compose_runs_a_taskrun_to_a_verified_and_a_rejected_attestation`]):
//! the images `cargo xtask images` builds, loaded into a podman of the test's own, started by
//! Docker Compose v5 (a peer built from the Go module proxy) with
//! `countersign_system_tests::compose`. The test skips, saying why, only where podman or runc is
//! not installed or cannot run a container.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use countersign_events::data::{
    Outcome, PodRef, ResultType, StepRecord, TaskRunFinished, TaskRunRef, TaskRunResult,
    TerminationEntry,
};
use countersign_events::{Bus, BusConfig, EventMetrics, EventSource};
use countersign_identity::svid::SigningSvid;
use countersign_identity::tekton::signed_step_entries;
use countersign_system_tests::compose::{
    self, ComposeProject, HealthChecks, PodmanEngine, leftovers,
};
use countersign_system_tests::demo::Binaries;
use countersign_system_tests::images::{self, BUSYBOX, Programs};
use countersign_system_tests::nats_auth::{Operator, Permissions, shipped_users};
use countersign_system_tests::{compose_dir, http};
use countersign_test_support::images::ContainerCli;
use countersign_test_support::ports::free_port;
use countersign_test_support::{error_lines, fixtures_dir, peers, repo_root, wait};
use serde_json::Value;

fn compose() -> Value {
    let text = std::fs::read_to_string(compose_dir().join("compose.yaml")).expect("compose.yaml");
    serde_saphyr::from_str(&text).expect("compose.yaml is YAML")
}

#[test]
fn compose_file_validates_against_the_compose_spec() {
    let schema_text = std::fs::read_to_string(fixtures_dir().join("schemas/compose-spec.json"))
        .expect("the compose-spec schema");
    let schema: Value = serde_json::from_str(&schema_text).expect("the schema is JSON");
    // The schema's `$schema` URI is not one validators recognise; it is Draft 7.
    let validator = jsonschema::draft7::new(&schema).expect("a Draft 7 validator");
    let document = compose();
    let errors: Vec<String> = validator
        .iter_errors(&document)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "compose.yaml is not valid:\n{}",
        errors.join("\n")
    );
}

#[test]
fn compose_runs_nats_spire_and_every_service() {
    let document = compose();
    let services = document["services"].as_object().expect("services");
    for name in [
        "nats",
        "nats-setup",
        "nats-streams",
        "spire-server",
        "spire-agent",
        "watcher",
        "registrar",
        "attestor",
        "relay",
    ] {
        assert!(services.contains_key(name), "compose.yaml runs {name}");
    }
    for name in ["watcher", "registrar", "attestor", "relay"] {
        let service = &services[name];
        let dockerfile = service["build"]["dockerfile"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} is built"));
        assert_eq!(
            service["build"]["context"], "..",
            "{name} builds from the workspace"
        );
        let text = std::fs::read_to_string(repo_root().join(dockerfile))
            .unwrap_or_else(|error| panic!("{dockerfile}: {error}"));
        assert!(
            text.matches("\nFROM ").count() + usize::from(text.starts_with("FROM ")) >= 2,
            "{dockerfile} is multi-stage"
        );
        assert!(text.contains("USER 65532"), "{dockerfile} runs as non-root");
        assert!(
            text.contains("distroless"),
            "{dockerfile} ends on a small image"
        );
        let user = service["user"].as_str().unwrap_or("");
        assert!(
            !user.is_empty() && !user.starts_with("0"),
            "{name} runs as non-root"
        );
        assert_eq!(service["read_only"], true, "{name} has a read-only root");
        assert!(
            service["environment"]["COUNTERSIGN_NATS__CREDENTIALS_FILE"]
                .as_str()
                .is_some_and(|path| path.ends_with(&format!("/{name}.creds"))),
            "{name} connects with its own NATS credentials"
        );
    }
    // Every Dockerfile, one per deployable (the signer's image runs in TaskRun pods).
    for name in countersign_system_tests::images::SERVICES {
        assert!(
            compose_dir()
                .join(format!("docker/{name}.Dockerfile"))
                .is_file(),
            "a Dockerfile for {name}"
        );
    }
    // Every file a service mounts from the repository exists.
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let Some(source) = volume.as_str().and_then(|spec| spec.split(':').next()) else {
                continue;
            };
            if source.starts_with('.') {
                assert!(
                    compose_dir().join(source).exists(),
                    "{name} mounts {source}, which does not exist"
                );
            }
        }
    }
}

/// The TaskRuns' namespace.
const NAMESPACE: &str = "compose";

/// How long the stack may take to come up (image layers are local; SPIRE and NATS start in
/// seconds), and any one later wait.
const UP_TIMEOUT: Duration = Duration::from_secs(240);
const WAIT_TIMEOUT: Duration = Duration::from_secs(90);

/// The results the TaskRun's step writes.
const RESULTS: [(&str, &str); 2] = [
    ("commit", "9f3e2c1a7b4d5e6f8091a2b3c4d5e6f708192a3b"),
    (
        "IMAGE_DIGEST",
        "sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c",
    ),
];

/// The images, the engine and the Compose project, for one run.
struct Stack {
    engine: PodmanEngine,
    project: ComposeProject,
    binaries: Binaries,
    nats_port: u16,
    admin_ports: Vec<(&'static str, u16)>,
    /// `<user>.creds` for the test's own clients.
    credentials: tempfile::TempDir,
}

/// `docker compose … <args>`, failing with its output.
fn compose_ok(project: &ComposeProject, args: &[&str]) -> String {
    let run = project
        .run(args)
        .unwrap_or_else(|error| panic!("running docker compose: {error}"));
    assert!(run.success, "`{}` failed:\n{}", run.command, run.output);
    run.output
}

/// The logs of the project's containers, for a failure message.
fn logs(project: &ComposeProject) -> String {
    project
        .run(&["logs", "--no-color", "--tail", "150"])
        .map(|run| run.output)
        .unwrap_or_default()
}

/// The `nats-auth` volume, made as Compose would make it, holding operator-mode credentials
/// minted from the shipped permission files: the `nats-setup` step then finds `resolver.conf` and
/// has nothing to do (it would run `nsc`, which the Go module proxy does not serve).
fn provision_nats_auth(stack_cli: &ContainerCli, project: &ComposeProject, credentials: &Path) {
    let volume = project.volume("nats-auth");
    stack_cli
        .run(&[
            "volume",
            "create",
            "--label",
            &format!("com.docker.compose.project={}", project.name),
            "--label",
            "com.docker.compose.volume=nats-auth",
            &volume,
        ])
        .unwrap_or_else(|error| panic!("{}", error_lines(&error)));
    let mountpoint = stack_cli
        .run(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume])
        .unwrap_or_else(|error| panic!("{}", error_lines(&error)));
    let mountpoint = PathBuf::from(mountpoint.trim());
    let operator = Operator::generate().expect("an operator");
    std::fs::write(mountpoint.join("resolver.conf"), operator.server_config())
        .expect("resolver.conf");
    for user in shipped_users().expect("the shipped permission files") {
        let permissions = Permissions::shipped(&user).expect("a permission file");
        let creds = operator
            .user_credentials(&user, &permissions)
            .expect("a user's credentials");
        for dir in [mountpoint.as_path(), credentials] {
            let path = dir.join(format!("{user}.creds"));
            std::fs::write(&path, &creds).expect("a .creds file");
            // The services read them as their own non-root users, as nsc's files (umask 022).
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
    }
}

/// Builds and loads the images, then starts the stack (all but the watcher, whose part the test
/// plays) and waits for the services' readiness.
async fn start() -> Result<Stack, String> {
    if let Err(reason) = compose::check_available() {
        return Err(reason.to_string());
    }
    let engine = PodmanEngine::start().unwrap_or_else(|error| panic!("{}", error_lines(&error)));
    let root = repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = countersign_test_support::workspace::target_dir();
    let binaries = tokio::task::spawn_blocking(move || {
        Binaries::build(&cargo, &root, Some(&target))
            .unwrap_or_else(|error| panic!("{}", error_lines(&error)))
    })
    .await
    .expect("the build");
    let peers = peers();
    let programs = Programs {
        services: vec![
            ("watcher", binaries.watcher.clone()),
            ("registrar", binaries.registrar.clone()),
            ("attestor", binaries.attestor.clone()),
            ("relay", binaries.relay.clone()),
            ("signer", binaries.signer.clone()),
        ],
        nats_server: (
            peers.nats_server.version.clone(),
            peers.nats_server.path.clone(),
        ),
        nats_cli: peers.nats_cli.path.clone(),
        spire_server: (
            peers.spire_server.version.clone(),
            peers.spire_server.path.clone(),
        ),
        spire_agent: (
            peers.spire_agent.version.clone(),
            peers.spire_agent.path.clone(),
        ),
        busybox: BUSYBOX.into(),
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let started = Instant::now();
    let root = repo_root();
    let names = images::build_all(&programs, engine.cli(), &root, work.path(), &mut |_| {})
        .unwrap_or_else(|error| panic!("{}", error_lines(&error)));
    eprintln!(
        "compose: {} images built and loaded in {:.1}s",
        names.len(),
        started.elapsed().as_secs_f64()
    );
    // The skip condition proper: podman may be installed and still unable to run anything.
    let nats_image = names
        .iter()
        .find(|name| name.starts_with("docker.io/library/nats:"))
        .expect("a NATS image");
    if let Err(reason) = engine.can_run(nats_image) {
        return Err(reason.to_string());
    }
    // Every image the Compose file names is one of those just built: the test runs exactly them.
    let document = compose_document();
    for (service, definition) in document["services"].as_object().expect("services") {
        let image = definition["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{service} names its image"));
        assert!(
            names.iter().any(|name| name == image),
            "{service}'s image {image} is one `cargo xtask images` builds ({names:?})"
        );
    }
    // The services' images are their Dockerfiles' last stage: distroless's non-root user and
    // working directory, the binary as the entrypoint.
    for (service, _) in &programs.services {
        let config = engine
            .cli()
            .run(&[
                "image",
                "inspect",
                "--format",
                "{{.Config.User}} {{.Config.WorkingDir}} {{.Config.Entrypoint}}",
                &images::service_image_name(service),
            ])
            .unwrap_or_else(|error| panic!("{}", error_lines(&error)));
        assert_eq!(
            config.trim(),
            format!("65532:65532 /home/nonroot [/usr/local/bin/countersign-{service}]"),
            "the image of {service}"
        );
    }

    let nats_port = free_port();
    let admin_ports = vec![
        ("registrar", free_port()),
        ("attestor", free_port()),
        ("relay", free_port()),
    ];
    let docker_config = engine.dir().join("docker-config");
    let kubeconfig = engine.dir().join("kubeconfig");
    std::fs::write(&kubeconfig, "").expect("an empty kubeconfig");
    let mut env = vec![
        ("DOCKER_HOST".to_owned(), engine.docker_host()),
        (
            "DOCKER_CONFIG".to_owned(),
            docker_config.display().to_string(),
        ),
        ("KUBECONFIG".to_owned(), kubeconfig.display().to_string()),
        ("COUNTERSIGN_NATS_PORT".to_owned(), nats_port.to_string()),
        // podman 4.3 refuses `host-gateway`; the relay's deliveries are not checked here.
        (
            "COUNTERSIGN_HOST_GATEWAY".to_owned(),
            "127.0.0.1".to_owned(),
        ),
        (
            "COUNTERSIGN_NATS_MONITOR_PORT".to_owned(),
            free_port().to_string(),
        ),
        (
            "COUNTERSIGN_WATCHER_PORT".to_owned(),
            free_port().to_string(),
        ),
        (
            "COUNTERSIGN_WATCHER_ADMIN_PORT".to_owned(),
            free_port().to_string(),
        ),
    ];
    for (service, port) in &admin_ports {
        env.push((
            format!("COUNTERSIGN_{}_ADMIN_PORT", service.to_uppercase()),
            port.to_string(),
        ));
    }
    let project = ComposeProject {
        binary: peers.docker_compose.path.clone(),
        file: compose_dir().join("compose.yaml"),
        name: format!("cs-compose-{}", std::process::id()),
        env,
    };
    let credentials = tempfile::tempdir().expect("a temporary directory");
    provision_nats_auth(engine.cli(), &project, credentials.path());
    Ok(Stack {
        engine,
        project,
        binaries,
        nats_port,
        admin_ports,
        credentials,
    })
}

fn compose_document() -> Value {
    compose()
}

/// An X509-SVID for `spiffe_id`, minted by the stack's own SPIRE server.
fn mint(stack: &Stack, spiffe_id: &str, name: &str) -> SigningSvid {
    let server = stack.project.container("spire-server");
    let out = format!("/tmp/mint-{name}");
    stack
        .engine
        .cli()
        .run(&["exec", &server, "mkdir", "-p", &out])
        .unwrap_or_else(|error| panic!("{}", error_lines(&error)));
    stack
        .engine
        .cli()
        .run(&[
            "exec",
            &server,
            "/opt/spire/bin/spire-server",
            "x509",
            "mint",
            "-spiffeID",
            spiffe_id,
            "-ttl",
            "1h",
            "-socketPath",
            "/run/spire/server/api.sock",
            "-write",
            &out,
        ])
        .unwrap_or_else(|error| panic!("{}", error_lines(&error)));
    let read = |file: &str| {
        stack
            .engine
            .cli()
            .run(&["exec", &server, "cat", &format!("{out}/{file}")])
            .unwrap_or_else(|error| panic!("{}", error_lines(&error)))
    };
    SigningSvid::from_pem(&read("svid.pem"), &read("key.pem")).expect("the minted SVID")
}

/// The finished event the watcher would publish for TaskRun `name`, its step's results signed
/// with `svid`; with `tamper`, a result changed after signing.
fn finished(
    name: &str,
    created_at: DateTime<Utc>,
    svid: &SigningSvid,
    tamper: bool,
) -> TaskRunFinished {
    let results: Vec<(String, String)> = RESULTS
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    let mut entries: Vec<TerminationEntry> = signed_step_entries(&results, svid)
        .expect("signing")
        .into_iter()
        .map(|entry| TerminationEntry {
            key: entry.key,
            value: entry.value,
            r#type: 1,
        })
        .collect();
    if tamper {
        let digest = entries
            .iter_mut()
            .find(|entry| entry.key == "IMAGE_DIGEST")
            .expect("IMAGE_DIGEST");
        digest.value = format!("sha256:{}", "0".repeat(64));
    }
    let now = Utc::now();
    let taskrun = TaskRunRef {
        cluster: "compose".into(),
        namespace: NAMESPACE.into(),
        name: name.to_owned(),
        uid: format!("uid-{name}"),
    };
    TaskRunFinished {
        pod: Some(PodRef {
            name: format!("{name}-pod"),
            uid: format!("pod-uid-{name}"),
        }),
        spiffe_id: Some(format!(
            "spiffe://example.org/ns/{NAMESPACE}/taskrun/{name}"
        )),
        taskrun,
        taskrun_created_at: created_at,
        outcome: Outcome::Succeeded,
        reason: "Succeeded".into(),
        message: "All Steps have completed executing".into(),
        started_at: Some(created_at),
        completed_at: Some(now),
        results: RESULTS
            .iter()
            .map(|(name, value)| TaskRunResult {
                name: (*name).to_owned(),
                r#type: ResultType::String,
                value: Value::String((*value).to_owned()),
            })
            .collect(),
        steps: vec![StepRecord {
            name: "build".into(),
            container: "step-build".into(),
            exit_code: 0,
            started_at: Some(created_at),
            finished_at: Some(now),
            results: entries,
        }],
        oversized: None,
        declared_results: RESULTS.iter().map(|(name, _)| (*name).to_owned()).collect(),
    }
}

/// `countersign get NAMESPACE/NAME --json` through the published NATS port, as the `reader`
/// user, once it finds the attestation.
async fn get_attestation(stack: &Stack, name: &str) -> Value {
    let countersign = stack.binaries.countersign.clone();
    let url = format!("nats://127.0.0.1:{}", stack.nats_port);
    let creds = stack.credentials.path().join("reader.creds");
    let target = format!("{NAMESPACE}/{name}");
    wait::until(
        &format!("`countersign get {target}` to find its attestation"),
        WAIT_TIMEOUT,
        || {
            let (countersign, url, creds, target) = (
                countersign.clone(),
                url.clone(),
                creds.clone(),
                target.clone(),
            );
            async move {
                let output = tokio::process::Command::new(&countersign)
                    .args(["get", &target, "--json", "--nats-url", &url, "--nats-creds"])
                    .arg(&creds)
                    .output()
                    .await
                    .ok()?;
                if !output.status.success() {
                    return None;
                }
                serde_json::from_slice::<Value>(&output.stdout).ok()
            }
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", logs(&stack.project)))
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_runs_a_taskrun_to_a_verified_and_a_rejected_attestation() {
    let stack = match start().await {
        Ok(stack) => stack,
        Err(reason) => {
            eprintln!(
                "SKIPPED compose_runs_a_taskrun_to_a_verified_and_a_rejected_attestation: {reason}"
            );
            return;
        }
    };
    let project = &stack.project;
    let health = HealthChecks::start(stack.engine.cli(), &project.name);

    // Up: everything the services need, and every service but the watcher (it watches a
    // Kubernetes cluster; the test publishes its events, with its credentials).
    let started = Instant::now();
    let up = project
        .run(&[
            "up",
            "--detach",
            "--no-build",
            "--pull",
            "never",
            "--wait",
            "--wait-timeout",
            &UP_TIMEOUT.as_secs().to_string(),
            "registrar",
            "attestor",
            "relay",
        ])
        .expect("running docker compose up");
    assert!(
        up.success,
        "`{}` failed:\n{}\n{}",
        up.command,
        up.output,
        logs(project)
    );
    eprintln!("compose: up in {:.1}s", started.elapsed().as_secs_f64());
    let health_of = |service: &str| {
        stack
            .engine
            .cli()
            .run(&[
                "inspect",
                "--format",
                "{{.State.Health.Status}}",
                &project.container(service),
            ])
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    assert_eq!(health_of("nats"), "healthy");
    assert_eq!(health_of("spire-server"), "healthy");
    for (service, port) in &stack.admin_ports {
        let address = format!("127.0.0.1:{port}");
        wait::until_true(&format!("{service} /readyz"), WAIT_TIMEOUT, || {
            let address = address.clone();
            async move {
                http::get(&address, "/readyz")
                    .await
                    .is_some_and(|answer| answer.status == 200)
            }
        })
        .await
        .unwrap_or_else(|error| panic!("{error}\n{}", logs(project)));
    }

    // The watcher's part: finished events, published with the watcher's credentials through the
    // published NATS port.
    let client = async_nats::ConnectOptions::with_credentials_file(
        stack.credentials.path().join("watcher.creds"),
    )
    .await
    .expect("the watcher's credentials")
    .connect(format!("127.0.0.1:{}", stack.nats_port))
    .await
    .expect("connecting to the published NATS port");
    let bus = Bus::new(client, BusConfig::default(), EventMetrics::new()).expect("the bus");
    let watcher = bus.publisher(EventSource::service("watcher"));
    let created_at = Utc::now() - chrono::TimeDelta::seconds(5);
    for (name, tamper) in [("honest-build", false), ("tampered-build", true)] {
        let spiffe_id = format!("spiffe://example.org/ns/{NAMESPACE}/taskrun/{name}");
        let svid = mint(&stack, &spiffe_id, name);
        watcher
            .publish_data(finished(name, created_at, &svid, tamper))
            .await
            .unwrap_or_else(|error| panic!("publishing {name}: {}", error_lines(&error)));
    }

    let honest = get_attestation(&stack, "honest-build").await;
    assert_eq!(
        honest["type"], "dev.countersign.attestation.verified.v1",
        "{honest:#}"
    );
    assert_eq!(honest["data"]["verdict"], "verified", "{honest:#}");
    let tampered = get_attestation(&stack, "tampered-build").await;
    assert_eq!(
        tampered["type"], "dev.countersign.attestation.rejected.v1",
        "{tampered:#}"
    );
    assert_eq!(
        tampered["data"]["reason"], "signature_invalid",
        "{tampered:#}"
    );

    // Down, volumes too: nothing of the project is left in the engine.
    drop(health);
    compose_ok(project, &["down", "--volumes", "--timeout", "10"]);
    let left = leftovers(stack.engine.cli(), project)
        .unwrap_or_else(|error| panic!("{}", error_lines(&error)));
    assert!(left.is_empty(), "left behind by `down -v`: {left:?}");
}
