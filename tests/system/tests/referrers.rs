//! The exporter end to end, as a user meets its output: real NATS, the real SPIRE (with our
//! CredentialComposer, so the attestor's SVID carries code signing), the attestor and the
//! exporter in-process, real OCI registries (CNCF Distribution v3.1.2, which has no Referrers
//! API: the tag-schema fallback, one open and one behind htpasswd; and go-containerregistry's
//! registry, which serves the OCI 1.1 Referrers API), and unmodified `oras` and `cosign` reading
//! what the exporter attached:
//!
//! * `oras discover` lists the VSA bundle as a referrer of the image: through the tag schema on
//!   Distribution, through the Referrers API (and with no fallback tag written) on the other;
//! * `cosign tree` shows it as a `https://slsa.dev/verification_summary/v1` referrer;
//! * `cosign verify-attestation` verifies it, offline, with the SPIRE bundle as its trust root and
//!   the attestor's SPIFFE ID as the certificate identity;
//! * sigstore policy-controller's own verification (`policy-tester`) admits the image under the
//!   README's `ClusterImagePolicy` and `TrustRoot` (the VSAs carry a timestamp from sigstore's
//!   real timestamp authority, which policy-controller requires where there is no transparency
//!   log), and denies an image without a VSA and a policy naming another identity;
//! * an image in a registry that is not on the allow-list is dead-lettered, with its reason;
//! * a registry that is down is retried, and the bundle lands once it is back.
//!
//! The TaskRuns are signed by the real `countersign-signer` as workloads of the agent and
//! reported to the attestor as the watcher would (`countersign_test_support::taskrun`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use chrono::{TimeDelta, Utc};
use countersign_attestor::AttestorConfig;
use countersign_events::data::TaskRunRef;
use countersign_exporter::ExporterConfig;
use countersign_identity::sigstore_bundle::{
    SIGSTORE_BUNDLE_V03_MEDIA_TYPE as BUNDLE_MEDIA_TYPE, trusted_root_json_with_timestamp_authority,
};
use countersign_identity::spiffe_id::TrustDomain;
use countersign_identity::svid::TrustBundleSet;
use countersign_identity::timestamp::TimestampAuthorityChain;
use countersign_identity::vsa::VSA_PREDICATE_TYPE;
use countersign_runtime::Context;
use countersign_runtime::config::{Environment, ServiceConfig as _, parse_config};
use countersign_test_support::bus::{TIMEOUT, TestBus};
use countersign_test_support::nats::NatsServer;
use countersign_test_support::registry::{Registry, RegistryKind, RegistryOptions};
use countersign_test_support::service::RunningService;
use countersign_test_support::spire::{Spire, SpireOptions};
use countersign_test_support::taskrun::{
    ATTESTOR_ID, AttestorBus as _, Pod, attestor_config_text, finished, merged, step, taskrun,
    taskrun_id,
};
use countersign_test_support::timestamp_authority::TimestampAuthority;
use countersign_test_support::{peers, wait};

/// What a program printed and how it exited.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `program` (in `dir` when given) and waits for it.
fn run(program: &Path, args: &[&str], envs: &[(&str, &Path)], dir: Option<&Path>) -> Run {
    let shown = format!("{} {}", program.display(), args.join(" "));
    match dir {
        Some(dir) => eprintln!("$ (cd {}) {shown}", dir.display()),
        None => eprintln!("$ {shown}"),
    }
    let mut command = std::process::Command::new(program);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command
        .args(args)
        .env("HOME", std::env::temp_dir())
        .envs(envs.iter().map(|(key, value)| (*key, *value)))
        .output()
        .unwrap();
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!("{run:?}");
    run
}

/// A registry the test pushes to and reads from with `oras` (and `cosign`), with its Docker
/// config file.
struct TestRegistry {
    registry: Registry,
    /// `DOCKER_CONFIG` for cosign; `config.json` inside for oras and the exporter.
    config_dir: tempfile::TempDir,
}

impl TestRegistry {
    async fn start(kind: RegistryKind, htpasswd: Option<(&str, &str)>) -> TestRegistry {
        let registry = Registry::start(RegistryOptions {
            kind,
            htpasswd: htpasswd.map(|(user, password)| (user.to_owned(), password.to_owned())),
        })
        .await
        .expect("the registry starts");
        let config_dir = tempfile::tempdir().unwrap();
        registry.docker_config(config_dir.path());
        TestRegistry {
            registry,
            config_dir,
        }
    }

    fn docker_config(&self) -> PathBuf {
        self.config_dir.path().join("config.json")
    }

    fn oras(&self, args: &[&str]) -> Run {
        self.oras_in(None, args)
    }

    /// `oras` with this registry's credentials, in `dir` when given.
    fn oras_in(&self, dir: Option<&Path>, args: &[&str]) -> Run {
        let config = self.docker_config().display().to_string();
        let mut all = args.to_vec();
        all.extend(["--plain-http", "--registry-config", &config]);
        run(&peers().oras.path, &all, &[], dir)
    }

    fn cosign(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.push("--allow-http-registry");
        run(
            &peers().cosign.path,
            &all,
            &[("DOCKER_CONFIG", self.config_dir.path())],
            None,
        )
    }

    /// Pushes a one-layer image as `repository:tag` with `oras push`; its digest.
    fn push_image(&self, repository: &str, tag: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.txt"), format!("{repository}:{tag}\n")).unwrap();
        let reference = format!("{}/{repository}:{tag}", self.registry.host());
        let pushed = self.oras_in(
            Some(dir.path()),
            &["push", &reference, "app.txt:text/plain"],
        );
        assert_eq!(pushed.code, Some(0), "{pushed:?}");
        let resolved = self.oras(&["resolve", &reference]);
        assert_eq!(resolved.code, Some(0), "{resolved:?}");
        resolved.stdout.trim().to_owned()
    }

    /// The referrers `oras discover` lists for `image` (`host/repo@digest`), asking the registry
    /// the way `spec` says (`v1.1-referrers-api` or `v1.1-referrers-tag`).
    fn discover(&self, image: &str, spec: &str) -> Vec<serde_json::Value> {
        let discovered = self.oras(&[
            "discover",
            image,
            "--format",
            "json",
            "--distribution-spec",
            spec,
        ]);
        if discovered.code != Some(0) {
            return Vec::new();
        }
        let json: serde_json::Value = serde_json::from_str(&discovered.stdout).unwrap_or_default();
        json["referrers"]
            .as_array()
            .or_else(|| json["manifests"].as_array())
            .cloned()
            .unwrap_or_default()
    }

    /// The manifests of the Sigstore bundle referrers of `image` that `oras discover` finds the
    /// way `spec` says. Each referrer's manifest is fetched: a registry's referrers list may carry
    /// no annotations and give the config's media type as the artifact type
    /// (go-containerregistry's does), and the manifest is what cosign reads.
    fn bundle_referrers(&self, image: &str, spec: &str) -> Vec<serde_json::Value> {
        let repository = image
            .split_once('@')
            .map_or(image, |(repository, _)| repository);
        self.discover(image, spec)
            .iter()
            .filter_map(|referrer| {
                let digest = referrer["digest"].as_str()?;
                let fetched = self.oras(&["manifest", "fetch", &format!("{repository}@{digest}")]);
                if fetched.code != Some(0) {
                    return None;
                }
                let manifest: serde_json::Value = serde_json::from_str(&fetched.stdout).ok()?;
                (manifest["artifactType"] == BUNDLE_MEDIA_TYPE).then_some(manifest)
            })
            .collect()
    }

    /// Waits until `oras discover` (asking as `spec` says) finds a Sigstore bundle referrer of
    /// `image`; the bundle referrers' manifests.
    async fn wait_for_bundle(&self, image: &str, spec: &str) -> Vec<serde_json::Value> {
        wait::until(
            &format!("a bundle referrer of {image} ({spec})"),
            TIMEOUT,
            || async {
                // `oras` is a blocking child process: not on the runtime's worker.
                let referrers = tokio::task::block_in_place(|| self.bundle_referrers(image, spec));
                (!referrers.is_empty()).then_some(referrers)
            },
        )
        .await
        .expect("the exporter attaches the bundle")
    }

    /// The repository's tags (`oras repo tags`).
    fn tags(&self, repository: &str) -> Vec<String> {
        let listed = self.oras(&["repo", "tags", repository]);
        assert_eq!(listed.code, Some(0), "{listed:?}");
        listed.stdout.lines().map(str::to_owned).collect()
    }
}

/// The exporter's count of bundles a registry's Referrers API indexes.
const REFERRERS_API_ATTACHED: &str =
    "countersign_exporter_attachments_total{outcome=\"attached_referrers_api\"}";
/// The exporter's count of bundles it indexed in a tag-schema index.
const TAG_SCHEMA_ATTACHED: &str =
    "countersign_exporter_attachments_total{outcome=\"attached_tag_schema\"}";

/// Waits until the exporter has counted `tag_schema` bundles indexed by itself and
/// `referrers_api` by a registry's Referrers API (its metric follows the push by a moment).
async fn wait_for_attachments(
    exporter: &RunningService<ExporterConfig>,
    tag_schema: f64,
    referrers_api: f64,
) {
    wait::until_true(
        &format!("{tag_schema} tag-schema and {referrers_api} Referrers API attachments"),
        TIMEOUT,
        || async {
            exporter.metric(TAG_SCHEMA_ATTACHED) == tag_schema
                && exporter.metric(REFERRERS_API_ATTACHED) == referrers_api
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", exporter.metrics()));
}

/// How `oras discover` asks a registry without the Referrers API: the tag schema.
const TAG_SCHEMA: &str = "v1.1-referrers-tag";
/// How `oras discover` asks a registry with the Referrers API.
const REFERRERS_API: &str = "v1.1-referrers-api";

/// Runs a signed TaskRun whose results name `image_url` and `image_digest` through the attestor.
async fn attest(
    spire: &Spire,
    bus: &TestBus,
    name: &str,
    image_url: &str,
    image_digest: &str,
) -> TaskRunRef {
    let taskrun = taskrun(name);
    let pod = Pod::register(spire, &taskrun_id(&taskrun.name)).await;
    let entries = pod
        .sign(&[("IMAGE_URL", image_url), ("IMAGE_DIGEST", image_digest)])
        .await;
    let reported = merged(&entries);
    bus.finished(finished(
        &taskrun,
        Utc::now() - TimeDelta::seconds(2),
        Some(taskrun_id(&taskrun.name)),
        vec![step("build", entries, Utc::now())],
        reported,
        &["IMAGE_URL", "IMAGE_DIGEST"],
    ))
    .await;
    taskrun
}

/// The attestor's configuration: this NATS, this agent, this timestamp authority, quick retries.
fn attestor_config(
    nats_url: &str,
    agent_endpoint: &str,
    authority: &TimestampAuthority,
) -> AttestorConfig {
    let timestamp = format!(
        "[timestamp]\nurl = \"{}\"\ncertificate_chain = \"{}\"\ntimeout = \"5s\"\n",
        authority.timestamp_url(),
        authority.chain_path().display()
    );
    let text = attestor_config_text(nats_url, agent_endpoint, &timestamp);
    let config: AttestorConfig =
        parse_config(&text, &Environment::new()).expect("a valid attestor config");
    config.validate().expect("a valid attestor config");
    config
}

fn exporter_config(
    nats_url: &str,
    registries: &[&TestRegistry],
    docker_config: &Path,
) -> ExporterConfig {
    let mut text = format!(
        "[nats]\nurl = \"{nats_url}\"\n\
         [consumer]\nack_wait = \"5s\"\nnak_backoff = [\"300ms\"]\nmax_deliver = 1000\n\
         [shutdown]\ngrace_period = \"10s\"\n\
         [push]\ndocker_config = \"{}\"\ntimeout = \"5s\"\n",
        docker_config.display()
    );
    for registry in registries {
        text.push_str(&format!(
            "[[registries]]\nhost = \"{}\"\nplain_http = true\n",
            registry.registry.host()
        ));
    }
    let config: ExporterConfig =
        parse_config(&text, &Environment::new()).expect("a valid exporter config");
    config.validate().expect("a valid exporter config");
    config
}

/// The Docker config with every registry's credentials (what a `dockerconfigjson` Secret holds).
fn merged_docker_config(dir: &Path, registries: &[&TestRegistry]) -> PathBuf {
    let mut auths = serde_json::Map::new();
    for registry in registries {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(registry.docker_config()).unwrap()).unwrap();
        if let Some(entries) = json["auths"].as_object() {
            auths.extend(entries.clone());
        }
    }
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&serde_json::json!({ "auths": auths })).unwrap(),
    )
    .unwrap();
    path
}

/// sigstore policy-controller's verification of one image (`policy-tester`), with the README's
/// `ClusterImagePolicy` (for the images of one registry) and `TrustRoot` (SPIRE's CA and the
/// timestamp authority).
struct PolicyTester {
    dir: PathBuf,
    host: String,
}

impl PolicyTester {
    fn new(dir: &Path, spire: &Spire, authority: &TimestampAuthority, host: &str) -> PolicyTester {
        let dir = dir.join(format!("policy-{}", host.replace([':', '.'], "-")));
        std::fs::create_dir_all(&dir).unwrap();
        let base64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
        let trust_root = format!(
            "apiVersion: policy.sigstore.dev/v1alpha1
kind: TrustRoot
metadata:
  name: countersign-spire
spec:
  sigstoreKeys:
    certificateAuthorities:
      - subject:
          organization: SPIFFE
          commonName: \"\"
        uri: spiffe://{trust_domain}
        certChain: {ca}
    timestampAuthorities:
      - subject:
          organization: sigstore
          commonName: timestamp-authority
        uri: {tsa_url}
        certChain: {tsa}
",
            trust_domain = spire.trust_domain(),
            ca = base64(spire.bundle_pem()),
            tsa_url = authority.timestamp_url(),
            tsa = base64(authority.chain_pem()),
        );
        std::fs::write(dir.join("trust-root.yaml"), trust_root).unwrap();
        PolicyTester {
            dir,
            host: host.to_owned(),
        }
    }

    /// Runs `policy-tester` on `image` with the policy requiring a `PASSED` VSA signed by
    /// `identity` (the README's `ClusterImagePolicy`, for this registry's images).
    fn test(&self, registry: &TestRegistry, image: &str, identity: &str) -> Run {
        self.run(registry, image, identity, true)
    }

    /// As [`PolicyTester::test`]; without `rfc3161timestamp` in the policy when `timestamped` is
    /// false.
    fn run(&self, registry: &TestRegistry, image: &str, identity: &str, timestamped: bool) -> Run {
        let rfc3161 = if timestamped {
            "      rfc3161timestamp:\n        trustRootRef: countersign-spire\n"
        } else {
            ""
        };
        let policy = format!(
            "apiVersion: policy.sigstore.dev/v1beta1
kind: ClusterImagePolicy
metadata:
  name: require-countersign-vsa
spec:
  images:
    - glob: \"{host}/**\"
  authorities:
    - name: countersign-attestor
      signatureFormat: bundle
      keyless:
        trustRootRef: countersign-spire
        insecureIgnoreSCT: true
        identities:
          - issuerRegExp: \".*\"
            subject: {identity}
{rfc3161}      attestations:
        - name: vsa-passed
          predicateType: {VSA_PREDICATE_TYPE}
          policy:
            type: cue
            data: |
              predicateType: \"{VSA_PREDICATE_TYPE}\"
              predicate: verificationResult: \"PASSED\"
              predicate: verifier: id: \"{ATTESTOR_ID}\"
",
            host = self.host,
        );
        let policy_file = self.dir.join("policy.yaml");
        std::fs::write(&policy_file, policy).unwrap();
        let policy_file = policy_file.display().to_string();
        let trust_root = self.dir.join("trust-root.yaml").display().to_string();
        run(
            &peers().policy_tester.path,
            &[
                "--policy",
                &policy_file,
                "--trustroot",
                &trust_root,
                "--image",
                image,
            ],
            &[("DOCKER_CONFIG", registry.config_dir.path())],
            None,
        )
    }
}

/// `cosign verify-attestation` of `image`, as the README says to run it.
fn verify_attestation(registry: &TestRegistry, trusted_root: &Path, image: &str) -> Run {
    let root = trusted_root.display().to_string();
    registry.cosign(&[
        "verify-attestation",
        "--trusted-root",
        &root,
        "--certificate-identity",
        ATTESTOR_ID,
        "--certificate-oidc-issuer-regexp",
        ".*",
        "--insecure-ignore-tlog",
        "--insecure-ignore-sct",
        "--type",
        VSA_PREDICATE_TYPE,
        image,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosign_and_oras_find_and_verify_the_bundles_the_exporter_attaches() {
    let nats = NatsServer::start().await.unwrap();
    let spire = Spire::start(SpireOptions {
        code_signing_ids: vec![ATTESTOR_ID.to_owned()],
        ..SpireOptions::default()
    })
    .await
    .expect("SPIRE starts");
    spire
        .register_test_process(ATTESTOR_ID, false)
        .await
        .expect("registering the attestor");
    let bus = TestBus::connect(&nats, "watcher").await;
    let authority = TimestampAuthority::start()
        .await
        .expect("the timestamp authority starts");
    let attestor = RunningService::start(
        Context::new(
            "attestor",
            attestor_config(&nats.url(), &spire.agent_endpoint(), &authority),
        ),
        Duration::from_secs(10),
        countersign_attestor::run,
    )
    .await;
    attestor.wait_ready().await;

    let open = TestRegistry::start(RegistryKind::Distribution, None).await;
    let mut locked = TestRegistry::start(
        RegistryKind::Distribution,
        Some(("ci-robot", "correct horse battery")),
    )
    .await;
    let indexing = TestRegistry::start(RegistryKind::ReferrersApi, None).await;
    let dir = tempfile::tempdir().unwrap();
    let registries = [&open, &locked, &indexing];
    let docker_config = merged_docker_config(dir.path(), &registries);
    let exporter = RunningService::start(
        Context::new(
            "exporter",
            exporter_config(&nats.url(), &registries, &docker_config),
        ),
        Duration::from_secs(10),
        countersign_exporter::run,
    )
    .await;
    exporter.wait_ready().await;

    let mut trust = TrustBundleSet::new();
    let trust_domain = TrustDomain::new(spire.trust_domain()).unwrap();
    trust
        .add_pem(trust_domain.clone(), spire.bundle_pem())
        .unwrap();
    let trusted_root = dir.path().join("trusted_root.json");
    std::fs::write(
        &trusted_root,
        trusted_root_json_with_timestamp_authority(
            &trust,
            &trust_domain,
            &TimestampAuthorityChain::from_pem(authority.chain_pem()).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();

    // An open registry: the image's VSA is attached, and found and verified by the tools.
    let digest = open.push_image("team/app", "v1");
    let image_url = format!("{}/team/app", open.registry.host());
    let image = format!("{image_url}@{digest}");
    attest(&spire, &bus, "open-build", &image_url, &digest).await;
    let referrers = open.wait_for_bundle(&image, TAG_SCHEMA).await;
    assert_eq!(referrers.len(), 1, "{referrers:?}");
    wait_for_attachments(&exporter, 1.0, 0.0).await;
    assert_eq!(
        referrers[0]["annotations"]["dev.sigstore.bundle.predicateType"], VSA_PREDICATE_TYPE,
        "{referrers:?}"
    );
    let tree = open.cosign(&["tree", &image]);
    assert_eq!(tree.code, Some(0), "{tree:?}");
    assert!(
        tree.stdout
            .contains(&format!("{VSA_PREDICATE_TYPE} artifacts via OCI referrer")),
        "{tree:?}"
    );
    let verified = verify_attestation(&open, &trusted_root, &image);
    assert_eq!(verified.code, Some(0), "{verified:?}");
    assert!(verified.stderr.contains("Verification for"), "{verified:?}");
    // Another identity than the attestor's is refused by cosign.
    let root = trusted_root.display().to_string();
    let wrong_identity = open.cosign(&[
        "verify-attestation",
        "--trusted-root",
        &root,
        "--certificate-identity",
        "spiffe://example.org/someone-else",
        "--certificate-oidc-issuer-regexp",
        ".*",
        "--insecure-ignore-tlog",
        "--insecure-ignore-sct",
        "--type",
        VSA_PREDICATE_TYPE,
        &image,
    ]);
    assert_ne!(wrong_identity.code, Some(0), "{wrong_identity:?}");

    // policy-controller's own verification admits the image under the README's policy, and
    // denies an image without a VSA, and the image under a policy naming another identity.
    let policy = PolicyTester::new(dir.path(), &spire, &authority, &open.registry.host());
    let admitted = policy.test(&open, &image, ATTESTOR_ID);
    assert_eq!(admitted.code, Some(0), "{admitted:?}");
    let unattested = open.push_image("team/app", "unattested");
    let denied = policy.test(&open, &format!("{image_url}@{unattested}"), ATTESTOR_ID);
    assert_eq!(denied.code, Some(1), "{denied:?}");
    assert!(
        denied.stdout.contains("no valid bundles exist"),
        "{denied:?}"
    );
    let denied = policy.test(&open, &image, "spiffe://example.org/someone-else");
    assert_eq!(denied.code, Some(1), "{denied:?}");
    assert!(denied.stdout.contains("someone-else"), "{denied:?}");
    // Without `rfc3161timestamp`, policy-controller asks for a transparency-log entry, which
    // SPIRE workloads do not make: the README says to name the timestamp authority.
    let denied = policy.run(&open, &image, ATTESTOR_ID, false);
    assert_eq!(denied.code, Some(1), "{denied:?}");
    assert!(
        denied
            .stdout
            .contains("not enough verified log entries from transparency log"),
        "{denied:?}"
    );

    // A registry with the Referrers API: the exporter leaves the indexing to it and writes no
    // fallback tag; `oras` finds the bundle through the API, and cosign verifies it.
    let indexed_digest = indexing.push_image("team/indexed", "v1");
    let indexed_url = format!("{}/team/indexed", indexing.registry.host());
    let indexed_image = format!("{indexed_url}@{indexed_digest}");
    attest(&spire, &bus, "indexed-build", &indexed_url, &indexed_digest).await;
    let referrers = indexing
        .wait_for_bundle(&indexed_image, REFERRERS_API)
        .await;
    assert_eq!(referrers.len(), 1, "{referrers:?}");
    assert_eq!(
        referrers[0]["annotations"]["dev.sigstore.bundle.predicateType"], VSA_PREDICATE_TYPE,
        "{referrers:?}"
    );
    wait_for_attachments(&exporter, 1.0, 1.0).await;
    let tags = indexing.tags(&indexed_url);
    assert_eq!(
        tags,
        ["v1"],
        "no tag-schema index next to the Referrers API"
    );
    let tree = indexing.cosign(&["tree", &indexed_image]);
    assert_eq!(tree.code, Some(0), "{tree:?}");
    assert!(tree.stdout.contains("via OCI referrer"), "{tree:?}");
    let verified = verify_attestation(&indexing, &trusted_root, &indexed_image);
    assert_eq!(verified.code, Some(0), "{verified:?}");
    assert!(verified.stderr.contains("Verification for"), "{verified:?}");
    let policy = PolicyTester::new(dir.path(), &spire, &authority, &indexing.registry.host());
    let admitted = policy.test(&indexing, &indexed_image, ATTESTOR_ID);
    assert_eq!(admitted.code, Some(0), "{admitted:?}");

    // A registry behind htpasswd: the exporter pushes with the Docker config's credentials, and
    // the tools read with theirs.
    let locked_digest = locked.push_image("team/locked", "v1");
    let locked_url = format!("{}/team/locked", locked.registry.host());
    let locked_image = format!("{locked_url}@{locked_digest}");
    attest(&spire, &bus, "locked-build", &locked_url, &locked_digest).await;
    locked.wait_for_bundle(&locked_image, TAG_SCHEMA).await;
    let verified = verify_attestation(&locked, &trusted_root, &locked_image);
    assert_eq!(verified.code, Some(0), "{verified:?}");

    // A registry that is not on the allow-list: nothing is pushed, the event is dead-lettered
    // with its reason.
    let elsewhere = attest(
        &spire,
        &bus,
        "elsewhere-build",
        "registry.not-allowed.example/team/app",
        &digest,
    )
    .await;
    let dead_letters = bus.wait_dead_letters(1).await;
    let dead_letter = dead_letters
        .iter()
        .find(|letter| letter.consumer == "exporter")
        .expect("the exporter's dead letter");
    assert_eq!(dead_letter.reason, "rejected", "{dead_letter:?}");
    assert_eq!(dead_letter.code.as_deref(), Some("registry_not_allowed"));
    assert!(
        dead_letter.original_subject.contains(&elsewhere.name),
        "{dead_letter:?}"
    );

    // A registry that is down: retried, and the bundle lands once it is back.
    let later_digest = locked.push_image("team/locked", "v2");
    let later_image = format!("{locked_url}@{later_digest}");
    locked.registry.stop();
    let transient = "countersign_exporter_attachments_total{outcome=\"failed_transient\"}";
    let failures_before = exporter.metric(transient);
    attest(&spire, &bus, "outage-build", &locked_url, &later_digest).await;
    wait::until_true(
        "the exporter to fail on the stopped registry",
        TIMEOUT,
        || async { exporter.metric(transient) > failures_before },
    )
    .await
    .expect("a transient failure while the registry is down");
    locked.registry.start_again().await.unwrap();
    locked.wait_for_bundle(&later_image, TAG_SCHEMA).await;
    let verified = verify_attestation(&locked, &trusted_root, &later_image);
    assert_eq!(verified.code, Some(0), "{verified:?}");
    assert_eq!(
        bus.dead_letters()
            .await
            .iter()
            .filter(|letter| letter.consumer == "exporter")
            .count(),
        1,
        "only the refused host was dead-lettered"
    );
}
