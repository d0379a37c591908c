//! The real `countersign-signer` binary, run as a workload of a real spire-agent: it gets the
//! pod's SVID once its entry exists, signs the fixture results exactly as Tekton's entrypointer
//! does, and every failure exits with its own code.

use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::Utc;
use countersign_identity::spiffe_id::TrustDomain;
use countersign_identity::svid::TrustBundleSet;
use countersign_identity::tekton::{
    KEY_RESULT_MANIFEST, KEY_SVID, ResultsPolicy, ResultsVerifier, TerminationMessage, canonical,
};
use countersign_signer::exit_code;
use countersign_test_support::spire::{Spire, SpireOptions, test_process_selectors};

const SIGNER: &str = env!("CARGO_BIN_EXE_countersign-signer");
const TASKRUN_ID: &str = "spiffe://example.org/ns/default/taskrun/build-push-run-x7k2p";
const DECLARED: [&str; 4] = ["commit", "IMAGE_DIGEST", "image", "tags"];

fn fixture_results() -> serde_json::Value {
    let path =
        countersign_test_support::fixtures_dir().join("tekton/spire/generated/signed-results.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Writes the fixture's result files into a fresh directory.
fn results_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixture_results();
    for name in DECLARED {
        let value = fixture["resultFiles"][name].as_str().unwrap();
        std::fs::write(dir.path().join(name), value).unwrap();
    }
    dir
}

/// Registers `spiffe_id` for the signer binary (this user, its executable path) on the agent.
async fn register_signer(spire: &Spire, spiffe_id: &str) {
    // The first selector the harness gives a test process is its uid, which the signer shares.
    let uid = test_process_selectors().remove(0);
    let path = format!(
        "unix:path:{}",
        Path::new(SIGNER).canonicalize().unwrap().display()
    );
    spire
        .register_workload(spiffe_id, &[&uid, &path], &spire.node_alias_id(), false)
        .await
        .unwrap();
}

async fn run_signer(args: &[&str]) -> Output {
    tokio::process::Command::new(SIGNER)
        .args(args)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

#[tokio::test]
async fn the_signer_gets_a_real_svid_and_signs_the_fixture_results_as_tekton_does() {
    let spire = Spire::start(SpireOptions::default()).await.unwrap();
    let created = Utc::now() - chrono::TimeDelta::seconds(1);
    let dir = results_dir();
    // Registered just before the signer starts: it retries "no identity" until the entry
    // reaches the agent.
    register_signer(&spire, TASKRUN_ID).await;
    let output = run_signer(&[
        "--results-dir",
        dir.path().to_str().unwrap(),
        "--results",
        &DECLARED.join(","),
        "--socket",
        &spire.agent_endpoint(),
        "--timeout",
        "90s",
        "--print-termination-message",
    ])
    .await;
    assert_eq!(
        code(&output),
        0,
        "stderr: {}\nagent: {}",
        String::from_utf8_lossy(&output.stderr),
        spire.agent_log_tail()
    );

    // The files the entrypointer would write, beside the results.
    assert_eq!(read(dir.path(), KEY_RESULT_MANIFEST), DECLARED.join(","));
    for name in DECLARED {
        assert!(
            dir.path().join(format!("{name}.sig")).exists(),
            "{name}.sig"
        );
    }
    assert!(dir.path().join("RESULT_MANIFEST.sig").exists());
    let svid_pem = read(dir.path(), KEY_SVID);
    assert!(svid_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));

    // The printed termination message: the results, then SVID, the signatures, the manifest.
    let stdout = String::from_utf8(output.stdout).unwrap();
    let message = TerminationMessage::parse(stdout.trim()).unwrap();
    let keys: Vec<&str> = message
        .entries()
        .iter()
        .map(|entry| entry.key.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "commit",
            "IMAGE_DIGEST",
            "image",
            "tags",
            "SVID",
            "commit.sig",
            "IMAGE_DIGEST.sig",
            "image.sig",
            "tags.sig",
            "RESULT_MANIFEST",
            "RESULT_MANIFEST.sig"
        ]
    );
    let entries = message.task_run_results();
    assert_eq!(entries[KEY_SVID], svid_pem);

    // It verifies against the real trust bundle as this TaskRun's results.
    let mut bundles = TrustBundleSet::new();
    bundles
        .add_pem_detecting_trust_domains(spire.bundle_pem())
        .unwrap();
    let policy = ResultsPolicy::for_taskrun(
        &TrustDomain::new("example.org").unwrap(),
        "default",
        "build-push-run-x7k2p",
        created,
    )
    .unwrap();
    let verified = ResultsVerifier::new(&bundles, &policy)
        .verify_step(&entries, Utc::now())
        .unwrap();
    assert_eq!(verified.spiffe_id().to_string(), TASKRUN_ID);
    let fixture = fixture_results();
    for name in DECLARED {
        assert_eq!(
            verified.results()[name].canonical,
            fixture["canonicalSignedValues"][name].as_str().unwrap()
        );
        assert_eq!(
            canonical(&verified.results()[name].raw),
            verified.results()[name].canonical
        );
    }
}

#[tokio::test]
async fn each_failure_exits_with_its_own_code() {
    let spire = Spire::start(SpireOptions {
        node_name: "node-exit-codes".into(),
        ..SpireOptions::default()
    })
    .await
    .unwrap();
    let dir = results_dir();
    let dir_arg = dir.path().to_str().unwrap().to_owned();

    // No entry for the signer on this agent: it waits, then gives up.
    let output = run_signer(&[
        "--results-dir",
        &dir_arg,
        "--socket",
        &spire.agent_endpoint(),
        "--timeout",
        "2s",
    ])
    .await;
    assert_eq!(code(&output), i32::from(exit_code::TIMED_OUT));
    assert!(
        !dir.path().join(KEY_SVID).exists(),
        "nothing is written on failure"
    );

    // No socket at all.
    let missing: PathBuf = dir.path().join("absent.sock");
    let output = run_signer(&[
        "--results-dir",
        &dir_arg,
        "--socket",
        &format!("unix://{}", missing.display()),
    ])
    .await;
    assert_eq!(code(&output), i32::from(exit_code::NO_SOCKET));

    // An unreadable results directory.
    let output = run_signer(&[
        "--results-dir",
        "/nonexistent/tekton/results",
        "--socket",
        &spire.agent_endpoint(),
    ])
    .await;
    assert_eq!(code(&output), i32::from(exit_code::RESULTS_UNREADABLE));

    // A result named like signing material.
    let output = run_signer(&[
        "--results-dir",
        &dir_arg,
        "--results",
        "commit,SVID",
        "--socket",
        &spire.agent_endpoint(),
    ])
    .await;
    assert_eq!(code(&output), i32::from(exit_code::BAD_RESULTS));

    // Usage errors, and help documents the exit codes.
    let output = run_signer(&["--bogus"]).await;
    assert_eq!(code(&output), i32::from(exit_code::USAGE));
    let output = run_signer(&["--help"]).await;
    assert_eq!(code(&output), 0);
    assert!(String::from_utf8_lossy(&output.stdout).contains("Exit codes:"));
}
