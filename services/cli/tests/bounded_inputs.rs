//! The CLI's input files are read only up to a limit: a path to something endless (`/dev/zero`)
//! or a file larger than any TaskRun is refused as bad input naming the file, instead of being
//! read until memory runs out.

use std::process::Stdio;

use countersign_cli::exit_code;
use countersign_cli::inputs::{MAX_JSON_BYTES, read_bundle, read_json};

const COUNTERSIGN: &str = env!("CARGO_BIN_EXE_countersign");

#[test]
fn an_endless_json_input_is_bad_input() {
    let error = read_json(std::path::Path::new("/dev/zero"), "a TaskRun").expect_err("endless");
    assert_eq!(error.exit_code(), exit_code::BAD_INPUT);
}

#[test]
fn a_json_input_over_the_limit_is_bad_input_and_one_at_it_is_read() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("big.json");
    let file = std::fs::File::create(&path).expect("creating");
    file.set_len(MAX_JSON_BYTES + 1).expect("sizing (sparse)");
    let error = read_json(&path, "a TaskRun").expect_err("over the limit");
    assert_eq!(error.exit_code(), exit_code::BAD_INPUT);

    // Exactly at the limit: read, then refused only because it is not JSON.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("opening");
    file.set_len(MAX_JSON_BYTES).expect("sizing (sparse)");
    let error = read_json(&path, "a TaskRun").expect_err("zero bytes are not JSON");
    assert_eq!(error.exit_code(), exit_code::BAD_INPUT);
}

#[test]
fn an_endless_bundle_is_bad_input() {
    let error = read_bundle(std::path::Path::new("/dev/zero"), None).expect_err("endless");
    assert_eq!(error.exit_code(), exit_code::BAD_INPUT);
    let missing =
        read_bundle(std::path::Path::new("/nonexistent/bundle.pem"), None).expect_err("missing");
    assert_eq!(missing.exit_code(), exit_code::NO_INPUT);
}

#[test]
fn the_binary_refuses_an_endless_input_naming_it() {
    let output = std::process::Command::new(COUNTERSIGN)
        .args([
            "verify-results",
            "--taskrun",
            "/dev/zero",
            "--bundle",
            "/dev/zero",
        ])
        .env_remove("COUNTERSIGN_TRUST_DOMAIN")
        .stdin(Stdio::null())
        .output()
        .expect("running countersign");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(i32::from(exit_code::BAD_INPUT)),
        "{stderr}{stdout}"
    );
    assert!(
        stderr.contains("/dev/zero") || stdout.contains("/dev/zero"),
        "{stderr}{stdout}"
    );
}
