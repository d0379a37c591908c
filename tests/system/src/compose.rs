//! `compose/compose.yaml` started for real: a podman of its own (storage, run root, networks and
//! volumes in one temporary directory, `runc` as the OCI runtime, lower default rlimits, nothing
//! global changed) serving the Docker API on a Unix socket, Docker Compose v5 (built from the Go
//! module proxy, a peer) driving it, and a health-check runner.
//!
//! Why these pieces, as tried on the project's machines (cgroup v1 in hybrid mode, no systemd,
//! no `CAP_SYS_RESOURCE`):
//!
//! - `crun` refuses the hybrid cgroup layout, so the runtime is Debian's `runc`;
//! - podman's default rlimits for rootful containers (`nofile` and `nproc` at their hard limits)
//!   fail in `runc` with `error setting rlimit type 6: operation not permitted`, so
//!   `default_ulimits` lowers them;
//! - podman-compose 1.6 ignores `depends_on: condition: service_healthy`; Docker Compose honours
//!   it against `podman system service`, but podman runs health checks from systemd timers, and
//!   there is no systemd: [`HealthChecks`] runs `podman healthcheck run` for every running
//!   container of the project once a second instead, which is what the timers would do.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use countersign_test_support::images::{ContainerCli, EngineError};
use countersign_test_support::short_tempdir;

/// How long the engine's socket may take to answer.
const ENGINE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the health checks run (the Compose file's `interval` is 2 s).
const HEALTH_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// Why no container can run here: the test prints this and skips.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("`{program}` is not installed ({hint})")]
    Missing {
        program: &'static str,
        hint: &'static str,
    },
    #[error("podman cannot run a container here: {0}")]
    CannotRun(String),
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineStartError {
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting `podman system service`")]
    Spawn(#[source] std::io::Error),
    #[error("`podman system service` did not answer on {} within {timeout:?}; its log:\n{log}", socket.display())]
    NotAnswering {
        socket: PathBuf,
        timeout: Duration,
        log: String,
    },
}

/// Whether this machine has what [`PodmanEngine`] needs, installing Debian's podman first where
/// that is possible (root with `apt-get`, as the node tests do for containerd).
pub fn check_available() -> Result<(), Unavailable> {
    match countersign_peers::runtime::ensure_podman(&mut |line| eprintln!("compose: {line}")) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Unavailable::Missing {
            program: "podman",
            hint: "Debian: apt-get install podman runc busybox-static, as root",
        }),
        Err(error) => Err(Unavailable::CannotRun(
            countersign_test_support::error_lines(&error),
        )),
    }
}

/// A podman with its own storage and configuration, serving the Docker API on a socket.
#[derive(Debug)]
pub struct PodmanEngine {
    dir: tempfile::TempDir,
    service: Child,
    cli: ContainerCli,
    socket: PathBuf,
}

impl PodmanEngine {
    /// Writes the configuration into a new temporary directory and starts
    /// `podman system service`, answering once `podman version` through the socket does.
    pub fn start() -> Result<PodmanEngine, EngineStartError> {
        let dir = short_tempdir("cs-podman-");
        let root = dir.path();
        let conf = root.join("containers.conf");
        let storage = root.join("storage.conf");
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).map_err(|source| EngineStartError::Write {
                path: path.to_owned(),
                source,
            })
        };
        for sub in ["root", "run", "tmp", "networks", "volumes"] {
            std::fs::create_dir_all(root.join(sub)).map_err(|source| EngineStartError::Write {
                path: root.join(sub),
                source,
            })?;
        }
        let r = root.display();
        write(
            &conf,
            format!(
                "[containers]\n\
                 # runc cannot raise nofile/nproc to the hard limits without CAP_SYS_RESOURCE.\n\
                 default_ulimits = [\"nofile=16384:16384\", \"nproc=8192:8192\"]\n\
                 [engine]\n\
                 runtime = \"runc\"\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 events_logfile_path = \"{r}/events.log\"\n\
                 tmp_dir = \"{r}/tmp\"\n\
                 volume_path = \"{r}/volumes\"\n\
                 [network]\n\
                 network_config_dir = \"{r}/networks\"\n"
            ),
        )?;
        write(
            &storage,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{r}/root\"\nrunroot = \"{r}/run\"\n"
            ),
        )?;
        let cli = ContainerCli {
            program: PathBuf::from("podman"),
            global_args: Vec::new(),
            env: vec![
                ("CONTAINERS_CONF".into(), conf.display().to_string()),
                (
                    "CONTAINERS_STORAGE_CONF".into(),
                    storage.display().to_string(),
                ),
            ],
        };
        let socket = root.join("podman.sock");
        let log = root.join("service.log");
        let log_file = std::fs::File::create(&log).map_err(|source| EngineStartError::Write {
            path: log.clone(),
            source,
        })?;
        let log_err = log_file
            .try_clone()
            .map_err(|source| EngineStartError::Write {
                path: log.clone(),
                source,
            })?;
        let service = cli
            .command()
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(EngineStartError::Spawn)?;
        let engine = PodmanEngine {
            dir,
            service,
            cli,
            socket,
        };
        let deadline = Instant::now() + ENGINE_START_TIMEOUT;
        loop {
            let answered = engine.socket.exists()
                && engine
                    .cli
                    .command()
                    .arg("--remote")
                    .arg("--url")
                    .arg(engine.docker_host())
                    .arg("version")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success());
            if answered {
                return Ok(engine);
            }
            if Instant::now() > deadline {
                return Err(EngineStartError::NotAnswering {
                    socket: engine.socket.clone(),
                    timeout: ENGINE_START_TIMEOUT,
                    log: std::fs::read_to_string(&log).unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The podman command line with this engine's configuration.
    pub fn cli(&self) -> &ContainerCli {
        &self.cli
    }

    /// `unix://…`: the Docker API, for `DOCKER_HOST`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The engine's own directory (storage, configuration, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Checks that podman can run a container here (`runc`, cgroups, rlimits), with `image`
    /// (which must have `/bin/true`).
    pub fn can_run(&self, image: &str) -> Result<(), Unavailable> {
        self.cli
            .run(&[
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                "/bin/true",
                image,
            ])
            .map(|_| ())
            .map_err(|error| Unavailable::CannotRun(countersign_test_support::error_lines(&error)))
    }
}

impl Drop for PodmanEngine {
    fn drop(&mut self) {
        // Whatever the test left (it removes its project itself), then the service.
        let _ = self.cli.run(&["system", "reset", "--force"]);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.service.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.service.wait();
    }
}

/// Runs `podman healthcheck run` for every running container of a Compose project, once a
/// second, until dropped: what podman's systemd timers do where there is systemd.
#[derive(Debug)]
pub struct HealthChecks {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthChecks {
    /// Starts running the checks of project `project`.
    pub fn start(cli: &ContainerCli, project: &str) -> HealthChecks {
        let stop = Arc::new(AtomicBool::new(false));
        let cli = cli.clone();
        let filter = format!("label=com.docker.compose.project={project}");
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let names = cli
                    .run(&["ps", "--filter", &filter, "--format", "{{.Names}}"])
                    .unwrap_or_default();
                for name in names.lines().map(str::trim).filter(|name| !name.is_empty()) {
                    // A container without a health check answers with an error: nothing to do.
                    let _ = cli.run(&["healthcheck", "run", name]);
                }
                std::thread::sleep(HEALTH_CHECK_PERIOD);
            }
        });
        HealthChecks {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `docker compose` (the standalone binary) for one project of `compose/compose.yaml`, against
/// an engine's socket.
#[derive(Debug, Clone)]
pub struct ComposeProject {
    pub binary: PathBuf,
    pub file: PathBuf,
    pub name: String,
    /// `DOCKER_HOST`, `DOCKER_CONFIG`, the port variables of the Compose file, ...
    pub env: Vec<(String, String)>,
}

/// What one Compose command did.
#[derive(Debug, Clone)]
pub struct ComposeRun {
    pub command: String,
    pub success: bool,
    pub output: String,
}

impl ComposeProject {
    /// Runs `docker compose -p <name> -f <file> <args>`, its output captured.
    pub fn run(&self, args: &[&str]) -> std::io::Result<ComposeRun> {
        let output = Command::new(&self.binary)
            .arg("--project-name")
            .arg(&self.name)
            .arg("--file")
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .output()?;
        Ok(ComposeRun {
            command: format!("docker compose -p {} {}", self.name, args.join(" ")),
            success: output.status.success(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }

    /// The label every object of this project carries.
    pub fn label_filter(&self) -> String {
        format!("label=com.docker.compose.project={}", self.name)
    }

    /// A container's name, as Compose names it (`<project>-<service>-1`).
    pub fn container(&self, service: &str) -> String {
        format!("{}-{service}-1", self.name)
    }

    /// A volume's name, as Compose names it (`<project>_<volume>`).
    pub fn volume(&self, volume: &str) -> String {
        format!("{}_{volume}", self.name)
    }
}

/// What of a project is still in the engine: containers, volumes and networks, one per line.
pub fn leftovers(cli: &ContainerCli, project: &ComposeProject) -> Result<Vec<String>, EngineError> {
    let filter = project.label_filter();
    let mut found = Vec::new();
    for (kind, args) in [
        (
            "container",
            vec!["ps", "--all", "--filter", &filter, "--format", "{{.Names}}"],
        ),
        (
            "volume",
            vec!["volume", "ls", "--filter", &filter, "--format", "{{.Name}}"],
        ),
        (
            "network",
            vec![
                "network",
                "ls",
                "--filter",
                &filter,
                "--format",
                "{{.Name}}",
            ],
        ),
    ] {
        for line in cli.run(&args)?.lines().map(str::trim) {
            if !line.is_empty() {
                found.push(format!("{kind} {line}"));
            }
        }
    }
    Ok(found)
}
