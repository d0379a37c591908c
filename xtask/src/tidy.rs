//! `cargo xtask tidy`: conventions of the workspace checked from its metadata, run by
//! `cargo xtask test` before the tests (and as a unit test of xtask).
//!
//! - **No service depends on another.** The services share nothing but the bus
//!   (ARCHITECTURE.md): a crate under `services/` may not depend on another crate under
//!   `services/`, in any dependency kind, dev-dependencies included (tests share code through
//!   `crates/` and `tests/support`, and run another service's binary, not its library). Crates
//!   outside `services/` (`tests/system`, `tests/bench`) may depend on services.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::Value;

/// One service depending on another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceDependency {
    /// The service that depends.
    pub service: String,
    /// The service it depends on.
    pub depends_on: String,
    /// `normal`, `dev` or `build`.
    pub kind: String,
}

impl std::fmt::Display for ServiceDependency {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{} depends on {} ({} dependency): services share nothing but the bus; move what \
             they share into crates/ (or tests/support for tests)",
            self.service, self.depends_on, self.kind
        )
    }
}

/// The service-on-service dependencies in `cargo metadata --format-version 1 --no-deps` output
/// of the workspace rooted at `root`, sorted.
pub(crate) fn service_dependencies(metadata: &Value, root: &Path) -> Vec<ServiceDependency> {
    let services_dir = root.join("services");
    let packages = metadata["packages"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let services: Vec<&str> = packages
        .iter()
        .filter(|package| {
            package["manifest_path"]
                .as_str()
                .is_some_and(|manifest| Path::new(manifest).starts_with(&services_dir))
        })
        .filter_map(|package| package["name"].as_str())
        .collect();
    let mut found = Vec::new();
    for package in packages {
        let Some(name) = package["name"].as_str() else {
            continue;
        };
        if !services.contains(&name) {
            continue;
        }
        let dependencies = package["dependencies"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        for dependency in dependencies {
            let Some(depends_on) = dependency["name"].as_str() else {
                continue;
            };
            if depends_on != name && services.contains(&depends_on) {
                found.push(ServiceDependency {
                    service: name.to_owned(),
                    depends_on: depends_on.to_owned(),
                    kind: dependency["kind"].as_str().unwrap_or("normal").to_owned(),
                });
            }
        }
    }
    found.sort_by(|left, right| {
        (&left.service, &left.depends_on, &left.kind).cmp(&(
            &right.service,
            &right.depends_on,
            &right.kind,
        ))
    });
    found.dedup();
    found
}

/// Reads the workspace's metadata and returns what is untidy, one message each.
pub(crate) fn check() -> anyhow::Result<Vec<String>> {
    let root = crate::cargo::repo_root()?;
    let output = crate::cargo::command(&["metadata", "--format-version", "1", "--no-deps"])?
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        anyhow::bail!(
            "cargo metadata failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).context("reading cargo metadata's JSON")?;
    Ok(service_dependencies(&metadata, &root)
        .iter()
        .map(ToString::to_string)
        .collect())
}

pub(crate) fn run() -> anyhow::Result<ExitCode> {
    let problems = check()?;
    if problems.is_empty() {
        eprintln!("tidy: ok");
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &problems {
        eprintln!("tidy: {problem}");
    }
    Ok(ExitCode::FAILURE)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn package(name: &str, dir: &str, dependencies: Value) -> Value {
        json!({
            "name": name,
            "manifest_path": format!("/repo/{dir}/Cargo.toml"),
            "dependencies": dependencies,
        })
    }

    fn dependency(name: &str, kind: Option<&str>) -> Value {
        json!({ "name": name, "kind": kind, "path": "/repo/somewhere" })
    }

    #[test]
    fn a_service_depending_on_another_in_any_kind_is_reported() {
        let metadata = json!({ "packages": [
            package("countersign-cli", "services/cli", json!([
                dependency("countersign-verdict", None),
                dependency("countersign-attestor", None),
                dependency("countersign-relay", Some("dev")),
                dependency("countersign-watcher", Some("build")),
            ])),
            package("countersign-attestor", "services/attestor", json!([])),
            package("countersign-relay", "services/relay", json!([])),
            package("countersign-watcher", "services/watcher", json!([])),
            package("countersign-verdict", "crates/verdict", json!([])),
        ]});
        let found = service_dependencies(&metadata, Path::new("/repo"));
        let pairs: Vec<(&str, &str, &str)> = found
            .iter()
            .map(|found| {
                (
                    found.service.as_str(),
                    found.depends_on.as_str(),
                    found.kind.as_str(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("countersign-cli", "countersign-attestor", "normal"),
                ("countersign-cli", "countersign-relay", "dev"),
                ("countersign-cli", "countersign-watcher", "build"),
            ]
        );
    }

    #[test]
    fn crates_and_tests_may_depend_on_services() {
        let metadata = json!({ "packages": [
            package("countersign-system-tests", "tests/system", json!([
                dependency("countersign-attestor", Some("dev")),
            ])),
            package("countersign-bench", "tests/bench", json!([
                dependency("countersign-attestor", None),
            ])),
            package("countersign-attestor", "services/attestor", json!([
                dependency("countersign-verdict", None),
                dependency("countersign-test-support", Some("dev")),
            ])),
            package("countersign-verdict", "crates/verdict", json!([])),
            package("countersign-test-support", "tests/support", json!([])),
        ]});
        assert_eq!(service_dependencies(&metadata, Path::new("/repo")), vec![]);
    }

    /// The check itself, on this workspace: `cargo test -p xtask` fails when it is untidy.
    #[test]
    fn the_workspace_is_tidy() {
        assert_eq!(check().unwrap(), Vec::<String>::new());
    }
}
