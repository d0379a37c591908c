//! The whole system under load (`cargo xtask bench system`, and short in `tests/load.rs`):
//! every service as its own process against the real peers ([`system`]), TaskRuns played at a
//! configured rate for a configured time ([`drive`]: straight onto the bus, or through the real
//! kube-apiserver with their pods), and what came out ([`measure`]): TaskRuns attested per
//! second, finish → attestation received and pod scheduled → entry registered (p50/p99/max),
//! each TaskRun's attestations on the bus and deliveries by the relay, and each process's CPU and
//! memory from `/proc`, naming the busiest (the ceiling when it is at a full core).
//!
//! [`run_window`] is one rate for one duration; [`ramp`] raises the rate until a window is no
//! longer sustained: a window is sustained when every TaskRun it finished is attested and the
//! last attestation came within [`DRAIN_ALLOWANCE`] of the last finish.

pub mod drive;
pub mod measure;
pub mod system;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

pub use drive::{ApiDriver, BusDriver, SignedName, signed_names};
pub use measure::{Lane, Percentiles, ProcSample, Tally, Tracker};
pub use system::{LoadSystem, binaries_in};

/// How long after the last finish its attestation may come for the window to count as
/// sustained (a rate the system keeps up with drains at once).
pub const DRAIN_ALLOWANCE: Duration = Duration::from_secs(2);

/// How long a window waits for the last attestations before it reports what is missing.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the TaskRuns come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Lifecycle events published straight onto the bus (no API server, no watcher).
    Bus,
    /// TaskRuns and pods through the real kube-apiserver, seen by the watcher.
    ApiServer,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bus => "bus",
            Mode::ApiServer => "api-server",
        }
    }
}

/// Why a load run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("starting {what}")]
    Start {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}")]
    Drive {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("spire-server x509 mint -spiffeID {spiffe_id}: {stderr}")]
    Mint { spiffe_id: String, stderr: String },
    #[error("API-server mode without an API server")]
    NoApiServer,
    #[error("a service stopped during the run: {0}")]
    ServiceExited(String),
}

impl LoadError {
    fn start(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> LoadError {
        LoadError::Start {
            what,
            source: source.into(),
        }
    }

    fn drive(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> LoadError {
        LoadError::Drive {
            what,
            source: source.into(),
        }
    }
}

/// What plays the TaskRuns.
#[derive(Debug, Clone)]
pub enum Driver {
    Bus(BusDriver),
    Api(ApiDriver),
}

/// One process's use of the machine during a window.
#[derive(Debug, Clone)]
pub struct ProcessUsage {
    pub name: String,
    /// CPU time over wall time, in percent of one core.
    pub cpu_percent: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

/// One window at one rate.
#[derive(Debug, Clone)]
pub struct WindowReport {
    pub label: String,
    pub offered_per_second: f64,
    pub duration: Duration,
    /// TaskRuns the driver could not start (API-server mode: every pooled name in flight).
    pub not_started: usize,
    pub tally: Tally,
    /// TaskRuns attested per second, from the window's start to its last attestation.
    pub attested_per_second: f64,
    /// From the last finish sent to the last attestation received.
    pub drain: Duration,
    pub processes: Vec<ProcessUsage>,
}

impl WindowReport {
    /// Every TaskRun attested, exactly once on the bus, and drained at once.
    pub fn sustained(&self) -> bool {
        self.tally.finished > 0
            && self.tally.attested == self.tally.finished
            && self.drain <= DRAIN_ALLOWANCE
            && self.not_started == 0
    }

    /// The busiest process, and whether it was at a full core (the ceiling).
    pub fn busiest(&self) -> Option<(&ProcessUsage, bool)> {
        self.processes
            .iter()
            .max_by(|a, b| a.cpu_percent.total_cmp(&b.cpu_percent))
            .map(|usage| (usage, usage.cpu_percent >= 85.0))
    }

    /// The window as text lines.
    pub fn describe(&self) -> String {
        let tally = &self.tally;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "{}: offered {:.0}/s for {:.0}s: {} finished, {} attested ({} twice on the bus, {} delivered by the relay, {} not started), {:.1} attested/s, drained {:.0} ms after the last finish{}",
            self.label,
            self.offered_per_second,
            self.duration.as_secs_f64(),
            tally.finished,
            tally.attested,
            tally.attested_twice,
            tally.delivered,
            self.not_started,
            self.attested_per_second,
            self.drain.as_secs_f64() * 1000.0,
            if self.sustained() {
                ", sustained"
            } else {
                ", NOT sustained"
            },
        );
        for (what, percentiles) in [
            ("finish->attestation", tally.attestation),
            ("backlog finish->attestation", tally.backlog_attestation),
            ("scheduled->entry registered", tally.registration),
        ] {
            if percentiles.count > 0 {
                let _ = writeln!(
                    text,
                    "  {what:<30} p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms  ({} samples)",
                    percentiles.p50_ms, percentiles.p99_ms, percentiles.max_ms, percentiles.count
                );
            }
        }
        for usage in &self.processes {
            let _ = writeln!(
                text,
                "  {:<32} cpu {:>6.1}% of a core  rss {:>7.1} MiB  peak {:>7.1} MiB",
                usage.name, usage.cpu_percent, usage.rss_mib, usage.peak_rss_mib
            );
        }
        if let Some((usage, saturated)) = self.busiest() {
            let _ = writeln!(
                text,
                "  ceiling: {} at {:.0}% of a core{}",
                usage.name,
                usage.cpu_percent,
                if saturated {
                    " (saturated)"
                } else {
                    " (no process at a full core)"
                }
            );
        }
        text
    }
}

/// Plays TaskRuns at `rate` per second for `duration`, then waits for their attestations.
pub async fn run_window(
    system: &LoadSystem,
    driver: &Driver,
    label: &str,
    rate: f64,
    duration: Duration,
) -> Result<WindowReport, LoadError> {
    let before = system.sample();
    let started = Instant::now();
    let run = format!("{label}-{}", uuid_fragment());
    let mut tasks: JoinSet<Result<bool, LoadError>> = JoinSet::new();
    let mut sent = 0usize;
    let mut not_started = 0usize;
    loop {
        let elapsed = started.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = (rate * elapsed.as_secs_f64()).floor() as usize;
        while sent < due {
            let index = sent;
            sent += 1;
            let (driver, run) = (driver.clone(), run.clone());
            tasks.spawn(async move {
                match driver {
                    Driver::Bus(bus) => bus.play(&run, index, Lane::Live).await.map(|()| true),
                    Driver::Api(api) => api.play().await,
                }
            });
        }
        while let Some(done) = tasks.try_join_next() {
            not_started += finished_task(done)?;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let send_end = Instant::now();
    let window = send_end - started;
    // Bus-mode tasks end once the finish is published; API-mode ones once pruned.
    while let Some(done) = tasks.join_next().await {
        not_started += finished_task(done)?;
    }
    let tracker = system.tracker();
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let tally = tracker.tally(started);
        if tally.attested >= tally.finished || Instant::now() >= deadline {
            break;
        }
        let exited = system.exited();
        if !exited.is_empty() {
            return Err(LoadError::ServiceExited(exited.join("\n")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = system.sample();
    let tally = tracker.tally(started);
    let last_attested = tally.last_attested.unwrap_or(started);
    let elapsed = last_attested.saturating_duration_since(started).max(window);
    let wall = started.elapsed().as_secs_f64();
    let processes = after
        .iter()
        .map(|(watched, sample)| {
            let cpu_before = before
                .iter()
                .find(|(earlier, _)| earlier.pid == watched.pid)
                .map_or(0.0, |(_, earlier)| earlier.cpu_seconds);
            ProcessUsage {
                name: watched.name.clone(),
                cpu_percent: (sample.cpu_seconds - cpu_before) / wall * 100.0,
                rss_mib: sample.rss_bytes as f64 / 1048576.0,
                peak_rss_mib: sample.peak_rss_bytes as f64 / 1048576.0,
            }
        })
        .collect();
    Ok(WindowReport {
        label: label.to_owned(),
        offered_per_second: rate,
        duration: window,
        not_started,
        attested_per_second: tally.attested as f64 / elapsed.as_secs_f64(),
        drain: match (tally.last_attested, tally.last_finished) {
            (Some(attested), Some(finished)) => attested.saturating_duration_since(finished),
            _ => DRAIN_TIMEOUT,
        },
        tally,
        processes,
    })
}

fn finished_task(
    done: Result<Result<bool, LoadError>, tokio::task::JoinError>,
) -> Result<usize, LoadError> {
    match done {
        Ok(Ok(started)) => Ok(usize::from(!started)),
        Ok(Err(error)) => Err(error),
        Err(error) => Err(LoadError::drive("a TaskRun's task", error)),
    }
}

/// Raises the rate from `from` by half each step (`step` long each) until a window is not
/// sustained or `max` is passed; returns every window, the sustained ones first.
pub async fn ramp(
    system: &LoadSystem,
    driver: &Driver,
    from: f64,
    max: f64,
    step: Duration,
) -> Result<Vec<WindowReport>, LoadError> {
    let mut windows = Vec::new();
    let mut rate = from;
    while rate <= max {
        let window = run_window(system, driver, &format!("ramp-{rate:.0}"), rate, step).await?;
        let sustained = window.sustained();
        windows.push(window);
        if !sustained {
            break;
        }
        rate *= 1.5;
    }
    Ok(windows)
}

/// The highest sustained rate of a ramp: the best attested/s among its sustained windows.
pub fn sustained_max(windows: &[WindowReport]) -> Option<&WindowReport> {
    windows
        .iter()
        .filter(|window| window.sustained())
        .max_by(|a, b| a.attested_per_second.total_cmp(&b.attested_per_second))
}

/// A short random token, so runs in one system never share a TaskRun UID.
fn uuid_fragment() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    format!("{nanos:08x}")
}

/// A backlog drained while live TaskRuns keep coming.
#[derive(Debug, Clone)]
pub struct BacklogReport {
    /// The live window played meanwhile.
    pub live: WindowReport,
    /// Backlog TaskRuns published and attested.
    pub backlog: usize,
    pub backlog_attested: usize,
    /// From the first backlog TaskRun published to the last attested.
    pub drained_in: Duration,
}

/// Publishes `backlog` TaskRuns that finished long ago (bus mode) as fast as the bus takes
/// them, as a watcher relisting after a restart would, and meanwhile plays live TaskRuns at
/// `rate` for `duration`; then waits up to `drain_timeout` for the backlog to drain.
pub async fn run_with_backlog(
    system: &LoadSystem,
    driver: &BusDriver,
    backlog: usize,
    rate: f64,
    duration: Duration,
    drain_timeout: Duration,
) -> Result<BacklogReport, LoadError> {
    use futures::StreamExt as _;

    // The backlog's TaskRuns finished when their names were minted; they must be older than
    // the attestor's `[backlog] after` to count as backlog.
    tokio::time::sleep(system::BACKLOG_AFTER + Duration::from_secs(2)).await;
    let started = Instant::now();
    let run = format!("backlog-{}", uuid_fragment());
    let publishing = {
        let driver = driver.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..backlog)
                .map(|index| {
                    let (driver, run) = (driver.clone(), run.clone());
                    async move { driver.play(&run, index, Lane::Backlog).await }
                })
                .buffer_unordered(256)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<()>, LoadError>>()
        })
    };
    let live = run_window(
        system,
        &Driver::Bus(driver.clone()),
        "live-during-backlog",
        rate,
        duration,
    )
    .await?;
    publishing
        .await
        .map_err(|error| LoadError::drive("publishing the backlog", error))??;
    let tracker = system.tracker();
    let deadline = Instant::now() + drain_timeout;
    loop {
        let tally = tracker.tally(started);
        if tally.backlog_attested >= backlog || Instant::now() >= deadline {
            return Ok(BacklogReport {
                live,
                backlog: tally.backlog_finished,
                backlog_attested: tally.backlog_attested,
                drained_in: tally.backlog_last_attested.map_or(Duration::ZERO, |last| {
                    last.saturating_duration_since(started)
                }),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
