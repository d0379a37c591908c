//! The Compose file validates against the Compose specification's JSON Schema (Draft 7, from the
//! fixtures), and has what a laptop deployment needs: NATS with its set-up, SPIRE server and
//! agent, every service built from its own multi-stage Dockerfile to a non-root image, and no
//! file it mounts missing from the repository.

use countersign_system_tests::compose_dir;
use countersign_test_support::{fixtures_dir, repo_root};
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
    for name in ["watcher", "registrar", "attestor", "relay", "signer"] {
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
