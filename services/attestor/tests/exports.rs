//! The attestor's exports checked by the standard tools, as a user runs them: the real SPIRE
//! (whose server runs our CredentialComposer plugin, `tests/peers/spire-code-signing`, so the
//! attestor's SVID, and only it, carries code signing), the attestor in-process, the real
//! `countersign` binary (`export`, `verify`), the real `cosign` (`verify-blob-attestation`,
//! offline: the trusted root `countersign export` makes from the SPIRE bundle, the attestor's
//! SPIFFE ID, no transparency log) and the real `slsa-verifier` (`verify-vsa`).

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use chrono::{TimeDelta, Utc};
use countersign_events::Event;
use countersign_events::data::{ExportStored, ExportedVerdict, TaskRunRef, VsaResult};
use countersign_identity::attestation::SignedAttestation;
use countersign_identity::dsse::{Envelope, IN_TOTO_PAYLOAD_TYPE};
use countersign_identity::intoto::TASKRUN_RESULTS_PREDICATE_TYPE;
use countersign_identity::sigstore_bundle::SigstoreBundle;
use countersign_identity::svid::SigningSvid;
use countersign_identity::vsa::VSA_PREDICATE_TYPE;
use countersign_test_support::nats::NatsServer;
use countersign_test_support::spire::{Spire, SpireOptions};
use countersign_test_support::{peers, wait};
use countersign_verdict::export::{RESULTS_VERIFIED_LEVEL, taskrun_resource_uri};
use countersign_verdict::export_store::ExportStore;
use support::*;

const IMAGE: &str = "registry.example.org/team/app";
const IMAGE_HEX: &str = "5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";
const COMMIT: &str = "9f3e2c1a7b4d5e6f8091a2b3c4d5e6f708192a3b";

fn results() -> Vec<(&'static str, String)> {
    vec![
        ("commit", COMMIT.to_owned()),
        ("IMAGE_URL", IMAGE.to_owned()),
        ("IMAGE_DIGEST", format!("sha256:{IMAGE_HEX}")),
    ]
}

/// What a verifier printed and how it exited.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        let run = Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        eprintln!("{run:?}");
        run
    }

    /// The first stderr line starting with `prefix`.
    fn stderr_line(&self, prefix: &str) -> Option<&str> {
        self.stderr.lines().find(|line| line.starts_with(prefix))
    }
}

fn run_peer(path: &Path, args: &[&str]) -> Run {
    eprintln!("$ {} {}", path.display(), args.join(" "));
    Run::from(
        std::process::Command::new(path)
            .args(args)
            .env("HOME", std::env::temp_dir())
            .output()
            .unwrap(),
    )
}

/// `cosign verify-blob-attestation` of a bundle, as the README says to run it.
fn cosign(dir: &Path, bundle: &str, predicate_type: &str, subject: &[&str]) -> Run {
    let bundle = dir.join(bundle).display().to_string();
    let root = dir.join("trusted_root.json").display().to_string();
    let mut args = vec![
        "verify-blob-attestation",
        "--bundle",
        &bundle,
        "--trusted-root",
        &root,
        "--certificate-identity",
        ATTESTOR_ID,
        "--certificate-oidc-issuer-regexp",
        ".*",
        "--insecure-ignore-tlog",
        "--insecure-ignore-sct",
        "--type",
        predicate_type,
    ];
    args.extend_from_slice(subject);
    run_peer(&peers().cosign.path, &args)
}

/// `slsa-verifier verify-vsa` of a bundle's envelope, with the signer's public key.
fn slsa_verifier(dir: &Path, bundle: &str, subject_digest: &str, resource_uri: &str) -> Run {
    let bundle = SigstoreBundle::from_json(&std::fs::read(dir.join(bundle)).unwrap()).unwrap();
    let envelope = dir.join(format!("{subject_digest}.intoto.json"));
    std::fs::write(&envelope, serde_json::to_vec(bundle.envelope()).unwrap()).unwrap();
    let key = dir.join("signer.pub.pem");
    std::fs::write(&key, public_key_pem(bundle.leaf_der())).unwrap();
    let subject = format!("sha256:{subject_digest}");
    run_peer(
        &peers().slsa_verifier.path,
        &[
            "verify-vsa",
            "--subject-digest",
            &subject,
            "--attestation-path",
            &envelope.display().to_string(),
            "--verifier-id",
            ATTESTOR_ID,
            "--resource-uri",
            resource_uri,
            "--verified-level",
            RESULTS_VERIFIED_LEVEL,
            "--public-key-path",
            &key.display().to_string(),
        ],
    )
}

fn public_key_pem(certificate_der: &[u8]) -> String {
    let (_, certificate) = x509_parser::parse_x509_certificate(certificate_der).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(certificate.public_key().raw);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

async fn countersign(nats_url: &str, args: &[&str]) -> Run {
    Run::from(
        tokio::process::Command::new(cli_binary())
            .args(args)
            .args(["--nats-url", nats_url])
            .env_remove("COUNTERSIGN_TRUST_DOMAIN")
            .env_remove("COUNTERSIGN_ATTESTOR_ID")
            .env_remove("COUNTERSIGN_PREFIX")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap(),
    )
}

/// SPIRE with our composer giving the attestor's SVID (only) code signing.
async fn spire_with_code_signing() -> Spire {
    spire_with_attestor(SpireOptions {
        code_signing_ids: vec![ATTESTOR_ID.to_owned()],
        ..SpireOptions::default()
    })
    .await
}

/// Waits for TaskRun `uid`'s export manifest.
async fn manifest(bus: &TestBus, uid: &str) -> Event<ExportStored> {
    wait::until(&format!("the export of {uid}"), TIMEOUT, || async {
        let store = ExportStore::open(bus.bus.jetstream(), bus.bus.subjects())
            .await
            .ok()?;
        store.manifest(uid).await.ok().flatten()
    })
    .await
    .expect("an export manifest")
}

/// Runs a signed TaskRun (or, with `tamper`, one whose reported results differ from what its
/// step signed) through the attestor.
async fn attest(spire: &Spire, bus: &TestBus, name: &str, tamper: bool) -> TaskRunRef {
    let taskrun = taskrun(name);
    let pod = Pod::register(spire, &taskrun_id(&taskrun.name)).await;
    let results = results();
    let pairs: Vec<(&str, &str)> = results
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let entries = pod.sign(&pairs).await;
    let mut reported = merged(&entries);
    if tamper {
        for result in &mut reported {
            if result.name == "commit" {
                result.value = serde_json::Value::String("0".repeat(40));
            }
        }
    }
    bus.finished(finished(
        &taskrun,
        Utc::now() - TimeDelta::seconds(2),
        Some(taskrun_id(&taskrun.name)),
        vec![step("build", entries, Utc::now())],
        reported,
        &["commit", "IMAGE_URL", "IMAGE_DIGEST"],
    ))
    .await;
    taskrun
}

fn write_trust_bundle(dir: &Path, spire: &Spire) -> String {
    let path = dir.join("bundle.pem");
    std::fs::write(&path, spire.bundle_pem()).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn cosign_and_slsa_verifier_accept_what_the_running_attestor_exports_and_refuse_the_rest() {
    let nats = NatsServer::start().await.unwrap();
    let spire = spire_with_code_signing().await;
    let bus = TestBus::connect(&nats, "watcher").await;
    let attestor = start_attestor(attestor_config(&nats.url(), &spire.agent_endpoint(), "")).await;
    attestor.wait_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let trust_bundle = write_trust_bundle(dir.path(), &spire);

    // A verified TaskRun: its bundle, its VSA and one VSA for the image its results name.
    let verified = attest(&spire, &bus, "release-build", false).await;
    let export = manifest(&bus, &verified.uid).await;
    assert_eq!(export.data.verdict, ExportedVerdict::Verified);
    assert_eq!(export.data.vsas.len(), 2, "{:?}", export.data.vsas);
    assert_eq!(export.data.vsas[0].artifact, None);
    assert_eq!(
        export.data.vsas[0].resource_uri,
        taskrun_resource_uri(&verified)
    );
    let image = export.data.vsas[1].artifact.as_ref().expect("the image");
    assert_eq!(
        (image.uri.as_str(), image.digest.as_str()),
        (IMAGE, format!("sha256:{IMAGE_HEX}").as_str())
    );
    assert!(
        export
            .data
            .vsas
            .iter()
            .all(|vsa| vsa.verification_result == VsaResult::Passed)
    );

    let out = dir.path().join("verified");
    let out_text = out.display().to_string();
    let exported = countersign(
        &nats.url(),
        &[
            "export",
            "default/release-build",
            "--output",
            &out_text,
            "--trust-bundle",
            &trust_bundle,
            "--trust-domain",
            "example.org",
        ],
    )
    .await;
    assert_eq!(exported.code, Some(0), "{exported:?}");
    for file in [
        "attestation.sigstore.json",
        "vsa-0.sigstore.json",
        "vsa-1.sigstore.json",
        "export.json",
        "trusted_root.json",
    ] {
        assert!(out.join(file).is_file(), "{file}: {exported:?}");
    }

    // cosign accepts the results attestation for a result's value, and the image's VSA for its
    // digest.
    std::fs::write(out.join("commit"), COMMIT).unwrap();
    let commit = out.join("commit").display().to_string();
    let accepted = cosign(
        &out,
        "attestation.sigstore.json",
        TASKRUN_RESULTS_PREDICATE_TYPE,
        &[&commit],
    );
    assert_eq!(accepted.code, Some(0), "{accepted:?}");
    assert!(accepted.stderr.contains("Verified OK"), "{accepted:?}");
    let accepted = cosign(
        &out,
        "vsa-1.sigstore.json",
        VSA_PREDICATE_TYPE,
        &["--digest", IMAGE_HEX, "--digestAlg", "sha256"],
    );
    assert_eq!(accepted.code, Some(0), "{accepted:?}");
    // slsa-verifier accepts the image's PASSED VSA.
    let accepted = slsa_verifier(&out, "vsa-1.sigstore.json", IMAGE_HEX, IMAGE);
    assert_eq!(accepted.code, Some(0), "{accepted:?}");
    // `countersign verify` reads the bundle form too.
    let attestation = out.join("attestation.sigstore.json").display().to_string();
    let checked = countersign(
        &nats.url(),
        &[
            "verify",
            "--attestation",
            &attestation,
            "--bundle",
            &trust_bundle,
            "--trust-domain",
            "example.org",
            "--require-verified",
        ],
    )
    .await;
    assert_eq!(checked.code, Some(0), "{checked:?}");
    assert!(
        checked.stdout.contains("verdict:      verified"),
        "{checked:?}"
    );

    // A tampered bundle: cosign refuses its signature.
    let bundle = SigstoreBundle::from_json(&std::fs::read(&attestation).unwrap()).unwrap();
    let payload = String::from_utf8(bundle.envelope().unverified_payload().to_vec())
        .unwrap()
        .replace(r#""verdict":"verified""#, r#""verdict":"rejected""#);
    let tampered = SigstoreBundle::new(
        Envelope::from_parts(
            bundle.envelope().payload_type(),
            payload.into_bytes(),
            bundle.envelope().signatures().to_vec(),
        ),
        vec![bundle.leaf_der().to_vec()],
    )
    .unwrap();
    std::fs::write(out.join("tampered.sigstore.json"), tampered.to_json()).unwrap();
    let refused = cosign(
        &out,
        "tampered.sigstore.json",
        TASKRUN_RESULTS_PREDICATE_TYPE,
        &[&commit],
    );
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert_eq!(
        refused.stderr_line("Error:"),
        Some(
            "Error: failed to verify signature: could not verify envelope: accepted signatures do not match threshold, Found: 0, Expected 1"
        ),
        "{refused:?}"
    );

    // A rejected TaskRun: only its own VSA, FAILED, which slsa-verifier refuses.
    let rejected = attest(&spire, &bus, "tampered-build", true).await;
    let export = manifest(&bus, &rejected.uid).await;
    assert_eq!(export.data.verdict, ExportedVerdict::Rejected);
    assert_eq!(export.data.vsas.len(), 1, "{:?}", export.data.vsas);
    assert_eq!(export.data.vsas[0].verification_result, VsaResult::Failed);
    let out_rejected = dir.path().join("rejected");
    let exported = countersign(
        &nats.url(),
        &[
            "export",
            "--uid",
            &rejected.uid,
            "--output",
            &out_rejected.display().to_string(),
        ],
    )
    .await;
    assert_eq!(exported.code, Some(0), "{exported:?}");
    let uid_digest = countersign_identity::crypto::Sha256Digest::of(rejected.uid.as_bytes());
    let refused = slsa_verifier(
        &out_rejected,
        "vsa-0.sigstore.json",
        &uid_digest.to_hex(),
        &taskrun_resource_uri(&rejected),
    );
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert_eq!(
        refused.stderr_line("Verifying VSA:"),
        Some(
            "Verifying VSA: FAILED: verificationResult is not PASSED: verification result is not Passed: FAILED"
        ),
        "{refused:?}"
    );

    // A bundle of the same statement signed by a TaskRun's SVID (no code signing: the composer
    // gives it to the attestor only): cosign refuses its certificate. The attestor is stopped
    // first, so this process's second identity cannot be taken for the attestor's.
    attestor.stop().await;
    let taskrun_spiffe_id = taskrun_id("impostor");
    spire
        .register_test_process(&taskrun_spiffe_id, false)
        .await
        .unwrap();
    let impostor = spire
        .wait_for_svid(&taskrun_spiffe_id, Duration::from_secs(60))
        .await
        .unwrap();
    let impostor = SigningSvid::from_x509_svid(&impostor).unwrap();
    let signed = SignedAttestation {
        envelope: Envelope::sign(
            IN_TOTO_PAYLOAD_TYPE,
            bundle.envelope().unverified_payload().to_vec(),
            &impostor,
        )
        .unwrap(),
        certificates: impostor.chain_pem(),
    };
    let by_taskrun = SigstoreBundle::from_attestation(&signed).unwrap();
    std::fs::write(out.join("by-taskrun.sigstore.json"), by_taskrun.to_json()).unwrap();
    let refused = cosign(
        &out,
        "by-taskrun.sigstore.json",
        TASKRUN_RESULTS_PREDICATE_TYPE,
        &[&commit],
    );
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert_eq!(
        refused.stderr_line("Error:"),
        Some("Error: failed to verify leaf certificate: leaf certificate verification failed"),
        "{refused:?}"
    );
    // And `countersign verify` refuses its signer.
    let by_taskrun_path = out.join("by-taskrun.sigstore.json").display().to_string();
    let checked = countersign(
        &nats.url(),
        &[
            "verify",
            "--attestation",
            &by_taskrun_path,
            "--bundle",
            &trust_bundle,
            "--trust-domain",
            "example.org",
            "--json",
        ],
    )
    .await;
    assert_eq!(checked.code, Some(1), "{checked:?}");
    let document: serde_json::Value = serde_json::from_str(&checked.stdout).unwrap();
    assert_eq!(document["error"], "signer_not_allowed", "{checked:?}");
}

/// The composer adds code signing to the attestor's SVID only, and keeps server and client auth
/// (which SPIRE requires of every X509-SVID).
#[tokio::test]
async fn the_code_signing_composer_marks_the_attestor_svid_only() {
    let spire = spire_with_code_signing().await;
    let other = taskrun_id("someone-else");
    spire.register_test_process(&other, false).await.unwrap();
    for (id, code_signing) in [(ATTESTOR_ID, true), (other.as_str(), false)] {
        let svid = spire
            .wait_for_svid(id, Duration::from_secs(60))
            .await
            .unwrap();
        let svid = SigningSvid::from_x509_svid(&svid).unwrap();
        let (_, certificate) = x509_parser::parse_x509_certificate(svid.leaf().der()).unwrap();
        let usage = certificate.extended_key_usage().unwrap().unwrap().value;
        assert!(usage.server_auth && usage.client_auth, "{id}");
        assert_eq!(usage.code_signing, code_signing, "{id}");
    }
}
