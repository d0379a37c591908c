//! The services as processes: each real binary started with `--config <its file>` under the
//! test-support process guard (log file, stopped with the demo), and awaited until its `/readyz`
//! answers 200, or reported with its log tail when it exits or times out.
//!
//! Configuration variables in the demo's own environment (`COUNTERSIGN_*`, and
//! `SPIFFE_ENDPOINT_SOCKET`, which the attestor and the signer read) would override the files, so
//! they are removed from every process the demo starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use countersign_test_support::process::{PeerFailed, PeerProcess};
use countersign_test_support::wait;

use super::configs::ServiceKind;
use crate::http;

/// How long a service may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a stopping service gets before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The variables of the demo's environment that its processes must not see.
pub fn inherited_overrides() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with("COUNTERSIGN_") || name == "SPIFFE_ENDPOINT_SOCKET")
        .collect()
}

/// `program args` as a command line that runs without `remove` in its environment: through
/// `env -u NAME...` (which execs the program in the same process, so its pid and
/// `/proc/<pid>/exe` are the program's own) when there is anything to remove.
pub fn scrubbed(program: &Path, args: &[String], remove: &[String]) -> (PathBuf, Vec<String>) {
    if remove.is_empty() {
        return (program.to_owned(), args.to_vec());
    }
    let mut env_args = Vec::new();
    for name in remove {
        env_args.push("-u".to_owned());
        env_args.push(name.clone());
    }
    env_args.push(program.display().to_string());
    env_args.extend(args.iter().cloned());
    (PathBuf::from("env"), env_args)
}

/// A running service.
#[derive(Debug)]
pub struct ServiceProcess {
    kind: ServiceKind,
    process: PeerProcess,
    admin: SocketAddr,
    config: PathBuf,
}

impl ServiceProcess {
    /// Starts `program --config <config>`, logging to `log`.
    pub async fn spawn(
        kind: ServiceKind,
        program: &Path,
        config: &Path,
        admin: SocketAddr,
        log: &Path,
    ) -> Result<ServiceProcess, PeerFailed> {
        let args = vec!["--config".to_owned(), config.display().to_string()];
        let (program, args) = scrubbed(program, &args, &inherited_overrides());
        let process = PeerProcess::spawn(kind.binary_name(), &program, &args, &[], log)
            .await
            .map_err(|error| PeerFailed {
                name: kind.binary_name().to_owned(),
                message: error.to_string(),
                log_tail: countersign_test_support::process::log_tail(log),
            })?;
        Ok(ServiceProcess {
            kind,
            process,
            admin,
            config: config.to_owned(),
        })
    }

    /// Waits until `/readyz` answers 200; fails at once if the process exits.
    pub async fn wait_ready(&self) -> Result<(), PeerFailed> {
        let address = self.admin.to_string();
        let ready = wait::until(
            &format!("{} to answer /readyz with 200", self.kind.binary_name()),
            READY_TIMEOUT,
            || {
                let address = address.clone();
                let running = self.process.is_running();
                async move {
                    if !running {
                        return Some(false);
                    }
                    let answer = http::get(&address, "/readyz").await?;
                    (answer.status == 200).then_some(true)
                }
            },
        )
        .await
        .map_err(|error| PeerFailed::from_wait(&self.process, error))?;
        if ready {
            Ok(())
        } else {
            Err(PeerFailed::new(
                &self.process,
                format!(
                    "{} exited during start-up (config {})",
                    self.kind.binary_name(),
                    self.config.display()
                ),
            ))
        }
    }

    pub fn kind(&self) -> ServiceKind {
        self.kind
    }

    /// The admin address (`/livez`, `/readyz`, `/metrics`).
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The last few KiB of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Stops it (SIGTERM, its drain, SIGKILL after a grace period).
    pub fn stop(&mut self) {
        self.process.stop(STOP_GRACE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_remove_runs_the_program_itself() {
        let (program, args) = scrubbed(Path::new("/bin/x"), &["--config".into()], &[]);
        assert_eq!(program, Path::new("/bin/x"));
        assert_eq!(args, ["--config"]);
    }

    #[tokio::test]
    async fn a_service_that_exits_during_start_up_is_reported_with_its_log_tail() {
        let dir = countersign_test_support::short_tempdir("cs-demo-test-");
        let program = dir.path().join("fails");
        std::fs::write(
            &program,
            "#!/bin/sh\necho \"invalid configuration: unknown field nats.urls\" >&2\nexit 64\n",
        )
        .unwrap();
        let mut permissions = std::fs::metadata(&program).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(&program, permissions).unwrap();
        let admin: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let service = ServiceProcess::spawn(
            ServiceKind::Relay,
            &program,
            &dir.path().join("relay.toml"),
            admin,
            &dir.path().join("relay.log"),
        )
        .await
        .expect("the process starts");
        let failure = service.wait_ready().await.expect_err("it exits");
        assert_eq!(failure.name, "countersign-relay");
        assert!(
            failure.message.contains("exited during start-up"),
            "{failure}"
        );
        assert!(
            failure.log_tail.contains("unknown field nats.urls"),
            "{failure}"
        );
    }

    #[test]
    fn overrides_are_removed_through_env() {
        let (program, args) = scrubbed(
            Path::new("/bin/x"),
            &["--config".into(), "c.toml".into()],
            &["COUNTERSIGN_NATS__URL".into()],
        );
        assert_eq!(program, Path::new("env"));
        assert_eq!(
            args,
            [
                "-u",
                "COUNTERSIGN_NATS__URL",
                "/bin/x",
                "--config",
                "c.toml"
            ]
        );
    }
}
