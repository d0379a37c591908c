//! The demo's progress output: one line per thing that happens, stamped with the time since the
//! demo began and the part of the system it comes from, written to stdout (`cargo xtask demo`)
//! or captured for a test, which shows it only when it fails.

use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Where a line comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The demo itself: what is starting, what is awaited.
    Demo,
    /// What the demo does to the API server as Tekton and the kubelet would.
    Kube,
    /// A step of a TaskRun pod (its results, the signer).
    Step,
    /// An event seen on the bus.
    Bus,
    /// What the relay delivered to the demo's CloudEvents sink.
    Sink,
    /// The `countersign` command.
    Cli,
}

impl Origin {
    fn label(self) -> &'static str {
        match self {
            Origin::Demo => "demo",
            Origin::Kube => "kube",
            Origin::Step => "step",
            Origin::Bus => "bus",
            Origin::Sink => "sink",
            Origin::Cli => "cli",
        }
    }
}

/// Writes the demo's progress. Cheap to clone; lines from concurrent tasks never interleave.
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<ReporterInner>,
}

struct ReporterInner {
    started: Instant,
    out: Mutex<Box<dyn Write + Send>>,
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter")
            .field("elapsed", &self.elapsed())
            .finish_non_exhaustive()
    }
}

/// The text a [`Reporter::capture`] reporter wrote.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        let bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The width of the stamp and origin columns, for continuation lines.
const INDENT: &str = "                ";

impl Reporter {
    /// A reporter writing to stdout, its clock starting now.
    pub fn stdout() -> Reporter {
        Reporter::to_writer(Box::new(std::io::stdout()))
    }

    /// A reporter writing into memory, and the handle to read it back.
    pub fn capture() -> (Reporter, Captured) {
        let captured = Captured::default();
        (Reporter::to_writer(Box::new(captured.clone())), captured)
    }

    fn to_writer(out: Box<dyn Write + Send>) -> Reporter {
        Reporter {
            inner: Arc::new(ReporterInner {
                started: Instant::now(),
                out: Mutex::new(out),
            }),
        }
    }

    /// The time since the reporter was made.
    pub fn elapsed(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// One stamped line (more lines are indented under it).
    pub fn line(&self, origin: Origin, text: impl fmt::Display) {
        let text = text.to_string();
        let mut lines = text.lines();
        let first = lines.next().unwrap_or_default();
        let mut out = format!(
            "[{:>6.1}s] {:<5} {first}\n",
            self.elapsed().as_secs_f64(),
            origin.label()
        );
        for line in lines {
            out.push_str(INDENT);
            out.push_str(line);
            out.push('\n');
        }
        self.write(&out);
    }

    /// A section heading, set off by a blank line.
    pub fn heading(&self, text: impl fmt::Display) {
        self.write(&format!("\n== {text} ==\n"));
    }

    /// A block of another program's output (or of a file), each line indented and marked.
    pub fn block(&self, text: &str) {
        let mut out = String::new();
        for line in text.trim_end().lines() {
            out.push_str(INDENT);
            out.push_str("| ");
            out.push_str(line);
            out.push('\n');
        }
        self.write(&out);
    }

    /// Text as is (a summary, instructions).
    pub fn plain(&self, text: impl fmt::Display) {
        let mut text = text.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        self.write(&text);
    }

    fn write(&self, text: &str) {
        let mut out = self
            .inner
            .out
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Progress output that cannot be written (a closed pipe) is not worth failing the demo.
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped_and_continuations_indented() {
        let (reporter, captured) = Reporter::capture();
        reporter.line(Origin::Bus, "first\nsecond");
        reporter.block("a\nb\n");
        let text = captured.text();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("[   0.0s] bus   first"), "{text}");
        assert_eq!(lines[1], format!("{INDENT}second"));
        assert_eq!(lines[2], format!("{INDENT}| a"));
        assert_eq!(lines[3], format!("{INDENT}| b"));
    }
}
