//! This workspace's own binaries for tests that run them as processes (`countersign-signer`,
//! `countersign`, the services): built, or found up to date, by cargo into the target directory
//! and profile the running test was built in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// `<target>/<profile>`, from the test executable's path `<target>/<profile>/deps/<test>`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("tests run from <target>/<profile>/deps")
        .to_owned()
}

/// `<target>`: the target directory the running test was built in.
pub fn target_dir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("a target directory above the profile")
        .to_owned()
}

/// Binary `binary` of package `package`, built if needed into this test's own target directory
/// and profile (once per test process). Cargo does not hold its lock while tests run, so
/// building here is safe; when the binary is up to date this is a no-op.
pub fn workspace_binary(package: &str, binary: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<BTreeMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(BTreeMap::new()));
    let mut built = built
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = built.get(binary) {
        return path.clone();
    }
    let profile_dir = profile_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(crate::repo_root())
        .args(["build", "--quiet", "--package", package, "--bin", binary])
        .arg("--target-dir")
        .arg(target_dir());
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        command.arg("--release");
    }
    let status = command.status().expect("running cargo build");
    assert!(status.success(), "building {binary} failed ({status})");
    let path = profile_dir.join(binary);
    assert!(path.exists(), "{} was not built", path.display());
    built.insert(binary.to_owned(), path.clone());
    path
}

/// The `countersign-signer` binary.
pub fn signer_binary() -> PathBuf {
    workspace_binary("countersign-signer", "countersign-signer")
}

/// The `countersign` binary.
pub fn cli_binary() -> PathBuf {
    workspace_binary("countersign-cli", "countersign")
}
