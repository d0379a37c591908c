//! A peer process owned by a test: started under a guard, logged to a file, stopped on drop.
//!
//! Every peer runs under a small `sh` guard whose stdin is a pipe held by the test process. When the
//! test process ends for any reason (a panic, an abort, SIGKILL), the pipe closes, the guard's `read`
//! returns and it stops the peer. So no peer outlives the tests that started it, and nothing here
//! needs `unsafe` (no `pre_exec`/`PR_SET_PDEATHSIG`).

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::wait::{self, WaitError};

/// The guard: start the peer in the background, record its pid, stop it when stdin closes
/// (SIGTERM, then SIGKILL if it has not exited 10 s later: kube-apiserver never finishes its
/// shutdown once its etcd is gone), then remove `COUNTERSIGN_GUARD_CLEANUP` if set (for peers
/// shared by a whole test process, whose handles live in statics and are never dropped).
const GUARD: &str = r#"
"$@" &
peer=$!
echo "$peer" > "$COUNTERSIGN_GUARD_PIDFILE"
trap 'kill -TERM "$peer" 2>/dev/null' TERM
read -r _ignored || true
kill -TERM "$peer" 2>/dev/null
( sleep 10; kill -KILL "$peer" 2>/dev/null ) &
escalation=$!
wait "$peer"
kill "$escalation" 2>/dev/null
if [ -n "${COUNTERSIGN_GUARD_CLEANUP:-}" ]; then rm -rf "$COUNTERSIGN_GUARD_CLEANUP"; fi
"#;

/// How many bytes of a log a failure shows.
const LOG_TAIL_BYTES: u64 = 6 * 1024;

/// A running peer.
#[derive(Debug)]
pub struct PeerProcess {
    name: String,
    guard: Option<Child>,
    guard_stdin: Option<ChildStdin>,
    pid: Option<Pid>,
    log: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("starting {name}: {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} did not report its pid\n{log_tail}")]
    NoPid { name: String, log_tail: String },
}

impl PeerProcess {
    /// Starts `program args…` with stdout and stderr appended to `log`.
    pub async fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        log: &Path,
    ) -> Result<PeerProcess, SpawnError> {
        let io_error = |source| SpawnError::Io {
            name: name.to_owned(),
            source,
        };
        let pidfile = log.with_extension("pid");
        let _ = fs::remove_file(&pidfile);
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_error)?;
        let log_file_err = log_file.try_clone().map_err(io_error)?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(GUARD)
            .arg(format!("{name}-guard"))
            .arg(program)
            .args(args)
            .env("COUNTERSIGN_GUARD_PIDFILE", &pidfile)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(log_file)
            .stderr(log_file_err);
        let mut guard = command.spawn().map_err(io_error)?;
        let guard_stdin = guard.stdin.take();
        let mut process = PeerProcess {
            name: name.to_owned(),
            guard: Some(guard),
            guard_stdin,
            pid: None,
            log: log.to_owned(),
        };
        let pid = wait::until(&format!("{name} to start"), Duration::from_secs(10), || {
            let pidfile = pidfile.clone();
            async move {
                fs::read_to_string(&pidfile)
                    .ok()
                    .and_then(|text| text.trim().parse::<i32>().ok())
            }
        })
        .await
        .map_err(|_| SpawnError::NoPid {
            name: name.to_owned(),
            log_tail: process.log_tail(),
        })?;
        process.pid = Some(Pid::from_raw(pid));
        Ok(process)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The peer's own pid (not the guard's).
    pub fn pid(&self) -> Option<u32> {
        self.pid.map(|pid| pid.as_raw() as u32)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether the peer process is still alive: it exists and is not a zombie whose every thread
    /// has exited (see [`PeerProcess::peer_is_dead`]).
    pub fn is_running(&self) -> bool {
        !self.peer_is_dead()
    }

    /// Whether the peer has exited and released everything it held. The guard reaps it only when
    /// the test lets go of it, so a killed peer stays a zombie meanwhile. A zombie *leader* is not
    /// enough: after a SIGKILL of a multi-threaded process (every Go peer), the leader can be a
    /// zombie while other threads still run their exit, and its sockets close only when the last
    /// of them drops the shared file table. A peer restarted on the same ports then fails with
    /// "address already in use" (seen in `cargo xtask chaos`: etcd on its peer port). So it is
    /// dead when it is gone, or when the leader is a zombie and it is the only task left.
    fn peer_is_dead(&self) -> bool {
        let Some(pid) = self.pid() else { return true };
        let Some(state) = process_state(pid) else {
            return true;
        };
        let tasks_left = fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| tasks.count())
            .unwrap_or(0);
        state == 'Z' && tasks_left <= 1
    }

    /// Sends a signal to the peer itself.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid {
            let _ = signal::kill(pid, signal);
        }
    }

    /// The last few KiB of the peer's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Stops the peer (SIGTERM, then SIGKILL after `grace`) and waits for it and its guard.
    pub fn stop(&mut self, grace: Duration) {
        self.guard_stdin.take();
        if let Some(pid) = self.pid {
            let _ = signal::kill(pid, Signal::SIGTERM);
        }
        if let Some(mut guard) = self.guard.take() {
            let deadline = std::time::Instant::now() + grace;
            loop {
                match guard.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if std::time::Instant::now() >= deadline => {
                        if let Some(pid) = self.pid {
                            let _ = signal::kill(pid, Signal::SIGKILL);
                        }
                        let _ = guard.kill();
                        let _ = guard.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.pid = None;
    }

    /// Kills the peer at once, as a crash would.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        self.stop(Duration::from_secs(5));
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} log tail ({}) ----\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        self.stop(Duration::from_secs(5));
    }
}

/// The state letter of process `pid`'s main thread in `/proc/<pid>/stat` (`R`, `S`, `Z`, …);
/// `None` when there is no such process.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next()?.chars().next()
}

/// The last few KiB of a log file.
pub fn log_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = length.saturating_sub(LOG_TAIL_BYTES);
    let _ = file.seek(SeekFrom::Start(start));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0 {
        // Start at a line boundary.
        match text.split_once('\n') {
            Some((_, rest)) => format!("…\n{rest}"),
            None => text,
        }
    } else {
        text
    }
}

/// An error that carries the log tail of the peer that failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}\n---- {name} log tail ----\n{log_tail}")]
pub struct PeerFailed {
    pub name: String,
    pub message: String,
    pub log_tail: String,
}

impl PeerFailed {
    pub fn new(process: &PeerProcess, message: impl std::fmt::Display) -> PeerFailed {
        PeerFailed {
            name: process.name.clone(),
            message: message.to_string(),
            log_tail: process.log_tail(),
        }
    }

    pub fn from_wait(process: &PeerProcess, error: WaitError) -> PeerFailed {
        PeerFailed::new(process, error)
    }
}
