//! Prometheus metrics: a `prometheus-client` [`Registry`] owned by a [`Metrics`] value that travels
//! in the service context (no global registry), plus the usual `process_*` metrics read from
//! `/proc/self` at each scrape.
//!
//! ```
//! use countersign_runtime::metrics::Metrics;
//! use prometheus_client::metrics::counter::Counter;
//!
//! let metrics = Metrics::new();
//! let registered: Counter = Counter::default();
//! metrics.register("registrar_entries_created", "SPIRE entries created", registered.clone());
//! registered.inc();
//! let text = metrics.encode();
//! assert!(text.contains("countersign_registrar_entries_created_total 1"));
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Metric, Registry, Unit};

/// The prefix of every metric registered through [`Metrics::register`].
pub const METRIC_PREFIX: &str = "countersign";

/// The buckets of the end-to-end latency histograms (`countersign_attestation_latency_seconds`,
/// `countersign_registration_latency_seconds`): 1 ms to 10 minutes, with the 50 ms of the
/// latency goals a bucket bound so `histogram_quantile` is exact there.
pub const END_TO_END_LATENCY_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// The `Content-Type` of the OpenMetrics text format that [`Metrics::encode`] writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A service's metrics registry. Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    /// A registry holding the `process_*` metrics (on Linux; none elsewhere).
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector::new()));
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    /// A registry with nothing in it, not even the `process_*` metrics.
    pub fn empty() -> Metrics {
        Metrics {
            registry: Arc::new(Mutex::new(Registry::default())),
        }
    }

    /// Registers `metric` as `countersign_<name>` (a counter also gets `_total`).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock()
            .register(format!("{METRIC_PREFIX}_{name}"), help, metric);
    }

    /// Registers `metric` as `countersign_<name>_<unit>`.
    pub fn register_with_unit(&self, name: &str, help: &str, unit: Unit, metric: impl Metric) {
        self.lock()
            .register_with_unit(format!("{METRIC_PREFIX}_{name}"), help, unit, metric);
    }

    /// Runs `f` with the registry itself, for anything else (`register_collector`, sub-registries).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.lock())
    }

    /// Every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a `String` cannot fail; an error here could only come from a metric's own
        // encoder, and then the scrape shows what was written before it.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.lock()) {
            tracing::warn!(%error, "encoding metrics failed part way");
        }
        text
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Registering and encoding do not leave the registry half-changed if a metric panics, so a
        // poisoned lock is still good.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The standard `process_*` metrics, read from `/proc/self` at each scrape.
#[derive(Debug)]
struct ProcessCollector {
    /// When the collector was made, standing in for the process start time (both happen at startup).
    start_time_seconds: f64,
}

/// The unit of `utime` and `stime` in `/proc/self/stat`: Linux fixes `USER_HZ` at 100 for every
/// architecture's user-space ABI.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

impl ProcessCollector {
    fn new() -> ProcessCollector {
        let start_time_seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs_f64())
            .unwrap_or(0.0);
        ProcessCollector { start_time_seconds }
    }
}

/// What `/proc/self` says about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    threads: i64,
    virtual_memory_bytes: i64,
    resident_memory_bytes: i64,
    open_fds: i64,
    max_fds: Option<i64>,
}

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let mut stats = ProcessStats::from_stat(&stat)?;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        stats.resident_memory_bytes = resident_bytes_from_status(&status).unwrap_or(0);
        stats.open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|entries| entries.count() as i64)
            .unwrap_or(0);
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        stats.max_fds = max_fds_from_limits(&limits);
        Some(stats)
    }

    /// Reads `/proc/self/stat` (see proc(5)); the fields after the command name start at field 3.
    fn from_stat(stat: &str) -> Option<ProcessStats> {
        let (_, after_command) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = after_command.split_whitespace().collect();
        let field = |number: usize| {
            fields
                .get(number - 3)
                .and_then(|value| value.parse::<u64>().ok())
        };
        let ticks = field(14)? + field(15)?;
        Some(ProcessStats {
            cpu_seconds: ticks as f64 / CLOCK_TICKS_PER_SECOND,
            threads: field(20)? as i64,
            virtual_memory_bytes: field(23)? as i64,
            ..ProcessStats::default()
        })
    }
}

fn resident_bytes_from_status(status: &str) -> Option<i64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kilobytes: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

fn max_fds_from_limits(limits: &str) -> Option<i64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let start = ConstGauge::new(self.start_time_seconds);
        let metric = encoder.encode_descriptor(
            "process_start_time",
            "Start time of the process since the Unix epoch.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        start.encode(metric)?;
        let Some(stats) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?)?;
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size.",
                Some(Unit::Bytes),
                stats.resident_memory_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size.",
                Some(Unit::Bytes),
                stats.virtual_memory_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                stats.open_fds,
            ),
            (
                "process_threads",
                "Number of OS threads.",
                None,
                stats.threads,
            ),
        ];
        for (name, help, unit, value) in gauges {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                MetricType::Gauge,
            )?)?;
        }
        if let Some(max_fds) = stats.max_fds {
            ConstGauge::new(max_fds).encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn registered_metrics_are_prefixed_and_encoded() {
        let metrics = Metrics::empty();
        let handled: Counter = Counter::default();
        metrics.register(
            "attestor_results_verified",
            "Results verified",
            handled.clone(),
        );
        handled.inc_by(3);
        let text = metrics.encode();
        assert!(
            text.contains("countersign_attestor_results_verified_total 3"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_present_on_linux() {
        let text = Metrics::new().encode();
        for name in [
            "process_start_time_seconds",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_threads",
        ] {
            assert!(
                text.lines().any(|line| line.starts_with(name)),
                "{name} missing in {text}"
            );
        }
    }

    #[test]
    fn proc_stat_is_parsed() {
        let stat = "4242 (name with) spaces) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 \
                    12345 104857600 2560 18446744073709551615";
        let stats = ProcessStats::from_stat(stat).expect("a well-formed line");
        assert_eq!(stats.cpu_seconds, 3.0);
        assert_eq!(stats.threads, 7);
        assert_eq!(stats.virtual_memory_bytes, 104_857_600);
    }

    #[test]
    fn status_and_limits_are_parsed() {
        assert_eq!(
            resident_bytes_from_status("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2048 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_fds_from_limits(limits), Some(1024));
    }
}
