//! End to end through the real binaries and peers: the `countersign-signer` binary signs as a
//! workload of the real spire-agent, the attestor (in-process) verifies and publishes, and the
//! real `countersign` binary (built by [`cli_binary`], not linked: no service depends on another)
//! reads (`get`, `tail --json`) and checks (`verify`) what it made.

mod support;

use std::path::Path;
use std::process::{Output, Stdio};

use chrono::{TimeDelta, Utc};
use countersign_test_support::nats::NatsServer;
use countersign_test_support::spire::SpireOptions;
use support::*;
use tokio::io::AsyncBufReadExt as _;

/// The `countersign` command's documented exit codes (`countersign --help`,
/// `countersign_cli::exit_code`): its contract, so written out here.
mod exit_code {
    pub(super) const OK: u8 = 0;
    pub(super) const REJECTED: u8 = 1;
    pub(super) const NOT_FOUND: u8 = 3;
    pub(super) const UNAVAILABLE: u8 = 69;
}

async fn countersign(nats_url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(cli_binary())
        .args(args)
        .args(["--nats-url", nats_url])
        .env_remove("COUNTERSIGN_TRUST_DOMAIN")
        .env_remove("COUNTERSIGN_ATTESTOR_ID")
        .env_remove("COUNTERSIGN_PREFIX")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn code(output: &Output) -> u8 {
    u8::try_from(output.status.code().unwrap_or(-1)).unwrap_or(u8::MAX)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn a_signed_taskrun_is_attested_and_countersign_gets_and_verifies_it() {
    let nats = NatsServer::start().await.unwrap();
    let spire = spire_with_attestor(SpireOptions::default()).await;
    let bus = TestBus::connect(&nats, "watcher").await;
    let attestor = start_attestor(attestor_config(&nats.url(), &spire.agent_endpoint(), "")).await;
    attestor.wait_ready().await;

    let taskrun = taskrun("release-build");
    let pod = Pod::register(&spire, &taskrun_id(&taskrun.name)).await;
    let entries = pod.sign(&FIXTURE_RESULTS).await;
    bus.finished(finished(
        &taskrun,
        Utc::now() - TimeDelta::seconds(2),
        Some(taskrun_id(&taskrun.name)),
        vec![step("build", entries.clone(), Utc::now())],
        merged(&entries),
        &["commit", "IMAGE_DIGEST", "image", "tags"],
    ))
    .await;
    bus.attestation(&taskrun.uid).await;

    // `get` by name, readable and as the stored CloudEvent.
    let output = countersign(&nats.url(), &["get", "default/release-build"]).await;
    assert_eq!(code(&output), exit_code::OK, "{}", text(&output.stderr));
    let shown = text(&output.stdout);
    assert!(shown.contains("verdict:     verified"), "{shown}");
    assert!(shown.contains(&taskrun.uid));
    let output = countersign(&nats.url(), &["get", "default/release-build", "--json"]).await;
    assert_eq!(code(&output), exit_code::OK);
    let cloudevent: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        cloudevent["type"],
        "dev.countersign.attestation.verified.v1"
    );
    assert_eq!(cloudevent["id"], format!("{}:attestation", taskrun.uid));
    let output = countersign(&nats.url(), &["get", "--uid", &taskrun.uid, "--json"]).await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap(),
        cloudevent
    );

    // `verify`, offline, with the real bundle: the whole event, and its data alone.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, spire.bundle_pem()).unwrap();
    let event_file = dir.path().join("event.json");
    std::fs::write(&event_file, &output.stdout).unwrap();
    let data_file = dir.path().join("data.json");
    std::fs::write(&data_file, serde_json::to_vec(&cloudevent["data"]).unwrap()).unwrap();
    let url = nats.url();
    let verify = |file: &Path, extra: Vec<String>| {
        let url = url.clone();
        let mut args = vec![
            "verify".to_owned(),
            "--attestation".to_owned(),
            file.display().to_string(),
            "--bundle".to_owned(),
            bundle.display().to_string(),
        ];
        args.extend(extra);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            countersign(&url, &args).await
        }
    };
    for file in [&event_file, &data_file] {
        let output = verify(
            file,
            vec![
                "--trust-domain".into(),
                "example.org".into(),
                "--require-verified".into(),
            ],
        )
        .await;
        assert_eq!(
            code(&output),
            exit_code::OK,
            "{}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        let shown = text(&output.stdout);
        assert!(
            shown.contains(&format!("signed by {ATTESTOR_ID}")),
            "{shown}"
        );
        assert!(shown.contains("verdict:      verified"), "{shown}");
    }
    // Another attestor identity is not accepted.
    let output = verify(
        &event_file,
        vec![
            "--attestor-id".into(),
            "spiffe://example.org/someone/else".into(),
        ],
    )
    .await;
    assert_eq!(code(&output), exit_code::REJECTED);

    // Not found, and NATS unreachable, have their own codes.
    let output = countersign(&nats.url(), &["get", "default/never-ran"]).await;
    assert_eq!(code(&output), exit_code::NOT_FOUND);
    let output = countersign("nats://127.0.0.1:1", &["get", "default/release-build"]).await;
    assert_eq!(code(&output), exit_code::UNAVAILABLE);
}

#[tokio::test]
async fn tail_json_follows_attestations_as_they_are_published() {
    let nats = NatsServer::start().await.unwrap();
    let spire = spire_with_attestor(SpireOptions::default()).await;
    let bus = TestBus::connect(&nats, "watcher").await;
    let attestor = start_attestor(attestor_config(&nats.url(), &spire.agent_endpoint(), "")).await;
    attestor.wait_ready().await;

    // A live tail, waiting for the next two attestations.
    let mut tail = tokio::process::Command::new(cli_binary())
        .args(["tail", "--json", "--count", "2", "--nats-url", &nats.url()])
        .env_remove("COUNTERSIGN_PREFIX")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut status = tokio::io::BufReader::new(tail.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(TIMEOUT, status.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default();
    assert!(first.contains("following"), "{first}");

    let good = taskrun("tail-good");
    let pod = Pod::register(&spire, &taskrun_id(&good.name)).await;
    let entries = pod.sign(&FIXTURE_RESULTS).await;
    let created = Utc::now() - TimeDelta::seconds(2);
    bus.finished(finished(
        &good,
        created,
        Some(taskrun_id(&good.name)),
        vec![step("build", entries.clone(), Utc::now())],
        merged(&entries),
        &[],
    ))
    .await;
    bus.attestation(&good.uid).await;
    let bad = taskrun("tail-bad");
    let unsigned: Vec<_> = entries
        .iter()
        .filter(|entry| !countersign_identity::tekton::is_signing_key(&entry.key))
        .cloned()
        .collect();
    bus.finished(finished(
        &bad,
        created,
        Some(taskrun_id(&bad.name)),
        vec![step("build", unsigned.clone(), Utc::now())],
        merged(&unsigned),
        &[],
    ))
    .await;

    let output = tokio::time::timeout(TIMEOUT, tail.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code(&output), exit_code::OK);
    let lines: Vec<serde_json::Value> = text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["type"], "dev.countersign.attestation.verified.v1");
    assert_eq!(lines[0]["data"]["taskrun"]["uid"], good.uid);
    assert_eq!(lines[1]["type"], "dev.countersign.attestation.rejected.v1");
    assert_eq!(lines[1]["data"]["reason"], "unsigned_results");

    // From the start, rejected ones only, readable.
    let output = countersign(
        &nats.url(),
        &[
            "tail",
            "--from-start",
            "--verdict",
            "rejected",
            "--count",
            "1",
        ],
    )
    .await;
    assert_eq!(code(&output), exit_code::OK);
    let shown = text(&output.stdout);
    assert!(
        shown.contains("rejected") && shown.contains("default/tail-bad"),
        "{shown}"
    );
    assert!(shown.contains("reason=unsigned_results"), "{shown}");
    assert_eq!(shown.lines().count(), 1);
}
