//! The real `countersign` binary on offline inputs: the released-Tekton fixture with and
//! without the replay check, its v1beta1 form, tampered results, attestations signed with the
//! fixture PKI, and the exit code of every kind of failure.

use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{DateTime, Utc};
use countersign_cli::exit_code;
use countersign_events::data::TaskRunRef;
use countersign_identity::svid::SigningSvid;
use countersign_verdict::attestation::{AttestationEventExt as _, AttestationFacts, attest};
use countersign_verdict::decide::Decision;

const COUNTERSIGN: &str = env!("CARGO_BIN_EXE_countersign");
const SIGNER_ID: &str = "spiffe://example.org/tekton/controller";

fn generated(name: &str) -> PathBuf {
    countersign_test_support::fixtures_dir()
        .join("tekton/spire/generated")
        .join(name)
}

fn released_fixture() -> serde_json::Value {
    let text = std::fs::read_to_string(generated("taskrun-succeeded-spire-v1.15.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn countersign(args: &[&str]) -> Output {
    std::process::Command::new(COUNTERSIGN)
        .args(args)
        .env_remove("COUNTERSIGN_TRUST_DOMAIN")
        .env_remove("COUNTERSIGN_ATTESTOR_ID")
        .output()
        .unwrap()
}

fn code(output: &Output) -> u8 {
    u8::try_from(output.status.code().unwrap_or(-1)).unwrap_or(u8::MAX)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    path
}

fn verify_results(taskrun: &Path, extra: &[&str]) -> Output {
    let bundle = generated("trust-bundle.pem");
    let mut args = vec![
        "verify-results",
        "--taskrun",
        taskrun.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    countersign(&args)
}

#[test]
fn the_released_fixture_is_a_replay_unless_the_check_is_skipped() {
    let taskrun = generated("taskrun-succeeded-spire-v1.15.json");

    // Its test SVID (notBefore 2026-01-01) predates the TaskRun (2026-08-20).
    let output = verify_results(&taskrun, &["--json"]);
    assert_eq!(code(&output), exit_code::REJECTED, "{}", stdout(&output));
    let verdict: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(verdict["verdict"], "rejected");
    assert_eq!(verdict["reasonCode"], "svid_predates_taskrun");
    assert_eq!(verdict["replayCheck"], "checked");

    let output = verify_results(&taskrun, &["--skip-replay-check", "--json"]);
    assert_eq!(code(&output), exit_code::OK, "{}", stdout(&output));
    let verdict: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(verdict["verdict"], "verified");
    assert_eq!(verdict["replayCheck"], "skipped");
    let skipped: Vec<&str> = verdict["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|check| check["outcome"] == "skipped")
        .map(|check| check["check"].as_str().unwrap())
        .collect();
    assert_eq!(skipped, ["issued_after_taskrun_created"]);
    assert_eq!(verdict["results"].as_object().unwrap().len(), 4);

    // The readable form says the check was skipped.
    let output = verify_results(
        &taskrun,
        &["--skip-replay-check", "--trust-domain", "example.org"],
    );
    assert_eq!(code(&output), exit_code::OK);
    assert!(stdout(&output).contains("verdict:  verified"));
    assert!(stdout(&output).contains("skipped (--skip-replay-check)"));
}

#[test]
fn the_v1beta1_form_of_tektons_cloudevents_is_read_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut taskrun = released_fixture();
    let status = taskrun["status"].as_object_mut().unwrap();
    let results = status.remove("results").unwrap();
    status.insert("taskResults".into(), results);
    taskrun.as_object_mut().unwrap().remove("apiVersion");
    let path = write_json(
        dir.path(),
        "ce.json",
        &serde_json::json!({"taskRun": taskrun}),
    );
    let output = verify_results(&path, &["--skip-replay-check", "--json"]);
    assert_eq!(code(&output), exit_code::OK, "{}", stdout(&output));
}

#[test]
fn tampered_results_are_rejected_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let tamper = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut taskrun = released_fixture();
        edit(&mut taskrun);
        write_json(dir.path(), "tampered.json", &taskrun)
    };

    // A value changed in a step's signed set.
    let path = tamper(&|taskrun| {
        let message = taskrun["status"]["steps"][1]["terminated"]["message"]
            .as_str()
            .unwrap()
            .replace("latest", "hacked");
        taskrun["status"]["steps"][1]["terminated"]["message"] = message.into();
    });
    let output = verify_results(&path, &["--skip-replay-check", "--json"]);
    assert_eq!(code(&output), exit_code::REJECTED);
    let verdict: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(verdict["reasonCode"], "signature_invalid");
    assert_eq!(verdict["step"], "build");

    // A value changed in status.results only.
    let path = tamper(&|taskrun| {
        for result in taskrun["status"]["results"].as_array_mut().unwrap() {
            if result["name"] == "commit" {
                result["value"] = "0000".into();
            }
        }
    });
    let output = verify_results(&path, &["--skip-replay-check", "--json"]);
    assert_eq!(code(&output), exit_code::REJECTED);
    let verdict: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(verdict["reasonCode"], "results_mismatch");

    // Checked as a TaskRun of another trust domain: the SVID is not that TaskRun's identity.
    let output = verify_results(
        &generated("taskrun-succeeded-spire-v1.15.json"),
        &[
            "--skip-replay-check",
            "--trust-domain",
            "other.org",
            "--json",
        ],
    );
    assert_eq!(code(&output), exit_code::REJECTED);
    let verdict: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(verdict["reasonCode"], "spiffe_id_mismatch");
}

/// An attestation of a `no_results` verdict signed with the fixture PKI (the controller SVID
/// stands in for an attestor), made at `decided_at`.
fn fixture_attestation(decided_at: DateTime<Utc>) -> countersign_events::AttestationEvent {
    let svid = SigningSvid::from_pem(
        &std::fs::read_to_string(generated("controller-svid.pem")).unwrap(),
        &std::fs::read_to_string(generated("controller-svid.TEST-ONLY.key.pem")).unwrap(),
    )
    .unwrap();
    let taskrun = TaskRunRef {
        cluster: "test".into(),
        namespace: "default".into(),
        name: "quiet".into(),
        uid: "uid-quiet".into(),
    };
    attest(
        &Decision::NoResults,
        AttestationFacts {
            taskrun: &taskrun,
            created: decided_at,
            finished: Some(decided_at),
            decided_at,
            current_bundle_digest: "digest",
        },
        &svid,
    )
    .unwrap()
}

#[test]
fn attestations_are_verified_offline_against_the_bundle_and_the_attestor_id() {
    let dir = tempfile::tempdir().unwrap();
    let decided_at = DateTime::parse_from_rfc3339("2026-08-21T10:00:00Z")
        .unwrap()
        .to_utc();
    let event = fixture_attestation(decided_at);
    let data = match &event {
        countersign_events::AttestationEvent::Verified(verified) => {
            serde_json::to_value(verified).unwrap()
        }
        countersign_events::AttestationEvent::Rejected(rejected) => {
            serde_json::to_value(rejected).unwrap()
        }
        countersign_events::AttestationEvent::Revoked(revoked) => {
            serde_json::to_value(revoked).unwrap()
        }
    };
    let event_file = write_json(dir.path(), "event.json", &data);
    let bare = event.signed_attestation().unwrap();
    let bare_file = write_json(
        dir.path(),
        "bare.json",
        &serde_json::to_value(&bare).unwrap(),
    );
    let bundle = generated("trust-bundle.pem");
    let verify = |file: &Path, extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--attestation",
            file.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        countersign(&args)
    };

    // Valid, as event data and as a bare SignedAttestation.
    for file in [&event_file, &bare_file] {
        let output = verify(file, &["--attestor-id", SIGNER_ID]);
        assert_eq!(code(&output), exit_code::OK, "{}", stdout(&output));
        assert!(stdout(&output).contains("verdict:      no_results"));
    }
    let output = verify(&event_file, &["--attestor-id", SIGNER_ID, "--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["valid"], true);
    assert_eq!(summary["signer"], SIGNER_ID);
    assert_eq!(summary["taskrun"]["uid"], "uid-quiet");
    // With --require-verified, a no_results verdict is a failure.
    let output = verify(
        &event_file,
        &["--attestor-id", SIGNER_ID, "--require-verified"],
    );
    assert_eq!(code(&output), exit_code::REJECTED);

    // Signed by someone else than the attestor the caller trusts.
    let output = verify(&event_file, &["--trust-domain", "example.org", "--json"]);
    assert_eq!(code(&output), exit_code::REJECTED);
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["error"], "signer_not_allowed");

    // Checked long after the signer's SVID expired (it is valid 2026-01-01 to 2046-01-01).
    let output = verify(
        &event_file,
        &[
            "--attestor-id",
            SIGNER_ID,
            "--at",
            "2047-01-01T00:00:00Z",
            "--json",
        ],
    );
    assert_eq!(code(&output), exit_code::REJECTED);
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["error"], "not_valid_at_time");

    // The payload changed after signing.
    let mut forged = data.clone();
    forged["attestation"]["envelope"]["payload"] = base64_of(b"{\"_type\":\"x\"}").into();
    let forged_file = write_json(dir.path(), "forged.json", &forged);
    let output = verify(&forged_file, &["--attestor-id", SIGNER_ID, "--json"]);
    assert_eq!(code(&output), exit_code::REJECTED);
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["error"], "signature_invalid");

    // The event's unsigned fields were changed: the signature holds but they lie.
    let mut lying = data.clone();
    lying["taskrun"]["name"] = "someone-else".into();
    let lying_file = write_json(dir.path(), "lying.json", &lying);
    let output = verify(&lying_file, &["--attestor-id", SIGNER_ID, "--json"]);
    assert_eq!(code(&output), exit_code::REJECTED);
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["error"], "event_mismatch");

    // Without a policy there is nothing to trust: a usage error, never an accept.
    let output = verify(&event_file, &[]);
    assert_eq!(code(&output), exit_code::USAGE);
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn every_failure_has_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = generated("trust-bundle.pem");

    let output = verify_results(Path::new("/nonexistent/taskrun.json"), &[]);
    assert_eq!(code(&output), exit_code::NO_INPUT);

    let not_json = dir.path().join("not.json");
    std::fs::write(&not_json, "not json").unwrap();
    assert_eq!(code(&verify_results(&not_json, &[])), exit_code::BAD_INPUT);
    let not_taskrun = write_json(dir.path(), "x.json", &serde_json::json!({"kind": "Pod"}));
    assert_eq!(
        code(&verify_results(&not_taskrun, &[])),
        exit_code::BAD_INPUT
    );

    let taskrun = generated("taskrun-succeeded-spire-v1.15.json");
    let output = countersign(&[
        "verify-results",
        "--taskrun",
        taskrun.to_str().unwrap(),
        "--bundle",
        not_json.to_str().unwrap(),
    ]);
    assert_eq!(code(&output), exit_code::BAD_INPUT);

    let output = countersign(&[
        "verify",
        "--attestation",
        not_taskrun.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
        "--trust-domain",
        "example.org",
    ]);
    assert_eq!(code(&output), exit_code::BAD_INPUT);

    assert_eq!(code(&countersign(&["verify-results"])), exit_code::USAGE);
    assert_eq!(code(&countersign(&["bogus"])), exit_code::USAGE);
    assert_eq!(
        code(&countersign(&[
            "get",
            "no-slash",
            "--nats-url",
            "nats://127.0.0.1:1"
        ])),
        exit_code::UNAVAILABLE
    );
    let help = countersign(&["--help"]);
    assert_eq!(code(&help), exit_code::OK);
    assert!(stdout(&help).contains("Exit codes:"));
}
