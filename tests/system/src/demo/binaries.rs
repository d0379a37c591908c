//! The real binaries the demo runs: built with `cargo build --bins` for the services and the CLI, and
//! located from cargo's own JSON messages (so any target directory and profile works).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// The packages whose binaries the demo runs (and `cargo xtask images` packs), in build order of
/// the command line.
pub const PACKAGES: [&str; 8] = [
    "countersign-watcher",
    "countersign-registrar",
    "countersign-attestor",
    "countersign-relay",
    "countersign-gate",
    "countersign-exporter",
    "countersign-signer",
    "countersign-cli",
];

/// The built binaries, by absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub watcher: PathBuf,
    pub registrar: PathBuf,
    pub attestor: PathBuf,
    pub relay: PathBuf,
    pub gate: PathBuf,
    pub exporter: PathBuf,
    pub signer: PathBuf,
    /// The `countersign` command.
    pub countersign: PathBuf,
}

/// Why the binaries could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("running `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the output of `{command}`")]
    Read {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); its messages are above")]
    Failed { command: String, status: ExitStatus },
    #[error("`{command}` built no executable named {binary}")]
    Missing {
        command: String,
        binary: &'static str,
    },
}

/// The `cargo build` arguments (after `cargo`).
pub fn build_args(target_dir: Option<&Path>) -> Vec<String> {
    let mut args = vec!["build".to_owned(), "--bins".to_owned()];
    for package in PACKAGES {
        args.push("-p".to_owned());
        args.push(package.to_owned());
    }
    if let Some(dir) = target_dir {
        args.push("--target-dir".to_owned());
        args.push(dir.display().to_string());
    }
    args
}

impl Binaries {
    /// Builds the binaries with `cargo` (the `$CARGO` of the caller) in the repository at
    /// `repo_root`, cargo's progress and diagnostics going to stderr, and returns where they are.
    /// When everything is up to date this takes a moment and builds nothing.
    pub fn build(
        cargo: &OsStr,
        repo_root: &Path,
        target_dir: Option<&Path>,
    ) -> Result<Binaries, BuildError> {
        Self::build_with(cargo, repo_root, build_args(target_dir))
    }

    /// As [`Binaries::build`], in cargo's `release` profile (what images ship).
    pub fn build_release(
        cargo: &OsStr,
        repo_root: &Path,
        target_dir: Option<&Path>,
    ) -> Result<Binaries, BuildError> {
        let mut args = build_args(target_dir);
        args.push("--release".to_owned());
        Self::build_with(cargo, repo_root, args)
    }

    fn build_with(
        cargo: &OsStr,
        repo_root: &Path,
        args: Vec<String>,
    ) -> Result<Binaries, BuildError> {
        let command_line = format!("cargo {}", args.join(" "));
        let mut command = Command::new(cargo);
        for name in package_variables() {
            command.env_remove(name);
        }
        let mut child = command
            .current_dir(repo_root)
            .args(&args)
            .args(["--message-format", "json-render-diagnostics"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| BuildError::Spawn {
                command: command_line.clone(),
                source,
            })?;
        let mut executables = BTreeMap::new();
        if let Some(stdout) = child.stdout.take() {
            for line in BufReader::new(stdout).lines() {
                let line = line.map_err(|source| BuildError::Read {
                    command: command_line.clone(),
                    source,
                })?;
                if let Some((name, path)) = executable_of(&line) {
                    executables.insert(name, path);
                }
            }
        }
        let status = child.wait().map_err(|source| BuildError::Read {
            command: command_line.clone(),
            source,
        })?;
        if !status.success() {
            return Err(BuildError::Failed {
                command: command_line,
                status,
            });
        }
        let mut take = |binary: &'static str| {
            executables
                .remove(binary)
                .ok_or_else(|| BuildError::Missing {
                    command: command_line.clone(),
                    binary,
                })
        };
        Ok(Binaries {
            watcher: take("countersign-watcher")?,
            registrar: take("countersign-registrar")?,
            attestor: take("countersign-attestor")?,
            relay: take("countersign-relay")?,
            gate: take("countersign-gate")?,
            exporter: take("countersign-exporter")?,
            signer: take("countersign-signer")?,
            countersign: take("countersign")?,
        })
    }
}

/// The variables cargo sets for the package whose binary or test is running (`cargo run`,
/// `cargo test`). A nested build must not inherit them: build scripts (ring's, through `cc`)
/// declare `rerun-if-env-changed` on several (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`...), so
/// inherited values would rebuild them, and everything above them, here and again in the next
/// plain build.
fn package_variables() -> Vec<String> {
    const EXACT: [&str; 9] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| {
            EXACT.contains(&name.as_str())
                || name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_EXE_")
        })
        .collect()
}

/// The binary name and executable path of a `compiler-artifact` message, if it has one.
fn executable_of(line: &str) -> Option<(String, PathBuf)> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let executable = message.get("executable")?.as_str()?;
    let name = message.pointer("/target/name")?.as_str()?;
    Some((name.to_owned(), PathBuf::from(executable)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_read_from_compiler_artifact_messages() {
        let artifact = r#"{"reason":"compiler-artifact","target":{"name":"countersign","kind":["bin"]},"executable":"/t/debug/countersign","fresh":true}"#;
        assert_eq!(
            executable_of(artifact),
            Some((
                "countersign".to_owned(),
                PathBuf::from("/t/debug/countersign")
            ))
        );
        let library =
            r#"{"reason":"compiler-artifact","target":{"name":"serde"},"executable":null}"#;
        assert_eq!(executable_of(library), None);
        assert_eq!(
            executable_of(r#"{"reason":"build-finished","success":true}"#),
            None
        );
        assert_eq!(executable_of("Compiling foo"), None);
    }

    #[test]
    fn every_package_is_built_into_the_given_target_directory() {
        let args = build_args(Some(Path::new("/tmp/target")));
        assert_eq!(&args[..2], ["build", "--bins"]);
        for package in PACKAGES {
            assert!(args.windows(2).any(|pair| pair == ["-p", package]));
        }
        assert!(args.ends_with(&["--target-dir".to_owned(), "/tmp/target".to_owned()]));
    }
}
