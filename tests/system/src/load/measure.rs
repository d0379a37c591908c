//! What a load run measures: latencies as they are observed (finish → attestation received,
//! scheduled → entry registered), how many times each TaskRun was attested and delivered, and
//! each process's CPU time and memory read from `/proc`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// How many samples.
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// The percentiles of `samples` (nearest rank).
    pub fn of(samples: &[Duration]) -> Percentiles {
        let mut sorted: Vec<f64> = samples
            .iter()
            .map(|sample| sample.as_secs_f64() * 1000.0)
            .collect();
        sorted.sort_by(f64::total_cmp);
        let rank = |fraction: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
            sorted[index - 1]
        };
        Percentiles {
            count: sorted.len(),
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

/// One TaskRun as the load generator and the bus saw it.
#[derive(Debug, Clone, Default)]
struct Tracked {
    lane: Lane,
    scheduled: Option<Instant>,
    registered: Option<Instant>,
    finished: Option<Instant>,
    attested: Option<Instant>,
    attestations: u32,
    deliveries: u32,
}

/// Which kind of TaskRun: one finishing now, or one of an old backlog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Lane {
    #[default]
    Live,
    Backlog,
}

/// Everything observed, shared by the generator and the bus followers. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    inner: Arc<Mutex<TrackerState>>,
}

#[derive(Debug, Default)]
struct TrackerState {
    by_uid: HashMap<String, Tracked>,
    /// Pod UID → TaskRun UID.
    pods: HashMap<String, String>,
    /// `registered` events that arrived before the generator recorded their pod.
    early: HashMap<String, Instant>,
}

/// A summary of what was tracked.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Live TaskRuns whose finish was sent.
    pub finished: usize,
    /// Live TaskRuns with an attestation received.
    pub attested: usize,
    /// Backlog TaskRuns published, and attested.
    pub backlog_finished: usize,
    pub backlog_attested: usize,
    pub backlog_last_attested: Option<Instant>,
    /// TaskRuns (either lane) whose attestation arrived more than once on the bus.
    pub attested_twice: usize,
    /// TaskRuns (either lane) the sink got at least once.
    pub delivered: usize,
    /// finish → attestation received, per lane.
    pub attestation: Percentiles,
    pub backlog_attestation: Percentiles,
    /// scheduled → registered event received.
    pub registration: Percentiles,
    /// The last finish sent and the last attestation received.
    pub last_finished: Option<Instant>,
    pub last_attested: Option<Instant>,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut TrackerState) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The TaskRun `uid` (pod `pod_uid`) was scheduled now.
    pub fn scheduled(&self, uid: &str, pod_uid: &str, lane: Lane) {
        let now = Instant::now();
        self.with(|state| {
            state.pods.insert(pod_uid.to_owned(), uid.to_owned());
            let early = state.early.remove(pod_uid);
            let tracked = state.by_uid.entry(uid.to_owned()).or_default();
            tracked.lane = lane;
            tracked.scheduled = Some(now);
            // Through the API server the entry can be registered before the call that created
            // the pod returns here: then it took no longer than that call.
            if let Some(registered) = early {
                tracked.registered = Some(registered.max(now));
            }
        });
    }

    /// The TaskRun `uid` finished at `at`.
    pub fn finished(&self, uid: &str, lane: Lane, at: Instant) {
        self.with(|state| {
            let tracked = state.by_uid.entry(uid.to_owned()).or_default();
            tracked.lane = lane;
            tracked.finished = Some(at);
        });
    }

    /// A `registered` event for pod `pod_uid` arrived now.
    pub fn registered(&self, pod_uid: &str) {
        let now = Instant::now();
        self.with(|state| match state.pods.get(pod_uid).cloned() {
            Some(uid) => {
                let tracked = state.by_uid.entry(uid).or_default();
                tracked.registered.get_or_insert(now);
            }
            None => {
                state.early.entry(pod_uid.to_owned()).or_insert(now);
            }
        });
    }

    /// An attestation event for `uid` arrived now.
    pub fn attested(&self, uid: &str) {
        let now = Instant::now();
        self.with(|state| {
            let tracked = state.by_uid.entry(uid.to_owned()).or_default();
            tracked.attested.get_or_insert(now);
            tracked.attestations += 1;
        });
    }

    /// The relay delivered `uid`'s attestation to the sink.
    pub fn delivered(&self, uid: &str) {
        self.with(|state| {
            state.by_uid.entry(uid.to_owned()).or_default().deliveries += 1;
        });
    }

    /// Whether `uid` has its attestation.
    pub fn is_attested(&self, uid: &str) -> bool {
        self.with(|state| state.by_uid.get(uid).is_some_and(|t| t.attested.is_some()))
    }

    /// How many TaskRuns of `lane` finished and are attested.
    pub fn attested_count(&self, lane: Lane) -> (usize, usize) {
        self.with(|state| {
            let of_lane = state
                .by_uid
                .values()
                .filter(|t| t.lane == lane && t.finished.is_some());
            let (mut finished, mut attested) = (0, 0);
            for tracked in of_lane {
                finished += 1;
                attested += usize::from(tracked.attested.is_some());
            }
            (finished, attested)
        })
    }

    /// The summary of the TaskRuns whose finish was sent at or after `since`.
    pub fn tally(&self, since: Instant) -> Tally {
        self.with(|state| {
            let mut tally = Tally::default();
            let (mut live, mut backlog, mut registration) = (Vec::new(), Vec::new(), Vec::new());
            for tracked in state.by_uid.values() {
                let Some(finished) = tracked.finished.filter(|at| *at >= since) else {
                    continue;
                };
                if tracked.lane == Lane::Backlog {
                    tally.backlog_finished += 1;
                    if let Some(attested) = tracked.attested {
                        tally.backlog_attested += 1;
                        backlog.push(attested.saturating_duration_since(finished));
                        tally.backlog_last_attested =
                            tally.backlog_last_attested.max(Some(attested));
                    }
                    tally.attested_twice += usize::from(tracked.attestations > 1);
                    tally.delivered += usize::from(tracked.deliveries > 0);
                    continue;
                }
                tally.finished += 1;
                tally.last_finished = tally.last_finished.max(Some(finished));
                if let (Some(scheduled), Some(registered)) = (tracked.scheduled, tracked.registered)
                {
                    registration.push(registered.saturating_duration_since(scheduled));
                }
                if let Some(attested) = tracked.attested {
                    tally.attested += 1;
                    tally.last_attested = tally.last_attested.max(Some(attested));
                    live.push(attested.saturating_duration_since(finished));
                }
                tally.attested_twice += usize::from(tracked.attestations > 1);
                tally.delivered += usize::from(tracked.deliveries > 0);
            }
            tally.attestation = Percentiles::of(&live);
            tally.backlog_attestation = Percentiles::of(&backlog);
            tally.registration = Percentiles::of(&registration);
            tally
        })
    }
}

/// A process's CPU time and memory at one moment, from `/proc/<pid>/stat` and `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// User + system CPU seconds so far.
    pub cpu_seconds: f64,
    /// Resident memory now, bytes.
    pub rss_bytes: u64,
    /// Peak resident memory, bytes.
    pub peak_rss_bytes: u64,
}

/// The kernel's clock ticks per second for `/proc/<pid>/stat` (Linux reports 100 on every
/// architecture we run on).
const CLOCK_TICKS: f64 = 100.0;

impl ProcSample {
    /// Reads `pid`'s sample; `None` once it has exited.
    pub fn read(pid: u32) -> Option<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(ProcSample::parse(&stat, &status))
    }

    /// A sample from the texts of `/proc/<pid>/stat` and `/proc/<pid>/status`.
    pub fn parse(stat: &str, status: &str) -> ProcSample {
        // Fields after the command (which may hold spaces) start at field 3 (state); utime and
        // stime are fields 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |index: usize| -> f64 {
            fields
                .get(index)
                .and_then(|value| value.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let kib = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        ProcSample {
            cpu_seconds: (ticks(11) + ticks(12)) / CLOCK_TICKS,
            rss_bytes: kib("VmRSS:"),
            peak_rss_bytes: kib("VmHWM:"),
        }
    }
}

/// The pids of processes whose command line mentions `needle` (a peer's own directory).
pub fn pids_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let percentiles = Percentiles::of(&samples);
        assert_eq!(percentiles.count, 100);
        assert_eq!(percentiles.p50_ms, 50.0);
        assert_eq!(percentiles.p99_ms, 99.0);
        assert_eq!(percentiles.max_ms, 100.0);
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
    }

    #[test]
    fn a_proc_sample_reads_cpu_ticks_and_memory() {
        let stat =
            "1234 (countersign (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0";
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        let sample = ProcSample::parse(stat, status);
        assert_eq!(sample.cpu_seconds, 3.0);
        assert_eq!(sample.rss_bytes, 1024 * 1024);
        assert_eq!(sample.peak_rss_bytes, 2048 * 1024);
    }

    #[test]
    fn latencies_are_counted_per_lane_and_a_second_attestation_is_seen() {
        let tracker = Tracker::new();
        let start = Instant::now();
        tracker.scheduled("a", "pod-a", Lane::Live);
        tracker.registered("pod-a");
        tracker.finished("a", Lane::Live, Instant::now());
        tracker.attested("a");
        tracker.attested("a");
        tracker.finished("b", Lane::Backlog, Instant::now());
        let tally = tracker.tally(start);
        assert_eq!(tally.finished, 1);
        assert_eq!(tally.backlog_finished, 1);
        assert_eq!(tally.attested, 1);
        assert_eq!(tally.attested_twice, 1);
        assert_eq!(tally.attestation.count, 1);
        assert_eq!(tally.registration.count, 1);
        assert_eq!(tracker.attested_count(Lane::Backlog), (1, 0));
    }
}
