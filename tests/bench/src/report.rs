//! Bench reports: a headline ratio and named measurements per case, written as markdown and JSON.

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Metric {
    /// What was measured.
    pub name: String,
    /// Its value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
}

/// What a case reports.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CaseReport {
    /// The case's name.
    pub case: String,
    /// Ours / baseline (higher is better).
    pub ratio: f64,
    /// The target the ratio should reach.
    pub target: f64,
    /// The measurements behind the ratio.
    pub metrics: Vec<Metric>,
    /// How the case was run.
    pub notes: Vec<String>,
}

impl CaseReport {
    /// `<case>: ratio <number>`
    pub(crate) fn headline(&self) -> String {
        format!("{}: ratio {:.3}", self.case, self.ratio)
    }

    /// A value with the precision its size deserves (ratios get three decimals).
    pub(crate) fn format_value(value: f64) -> String {
        if value.abs() < 10.0 {
            format!("{value:.3}")
        } else {
            format!("{value:.1}")
        }
    }

    /// Adds a measurement.
    pub(crate) fn metric(&mut self, name: &str, value: f64, unit: &str) {
        self.metrics.push(Metric {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
        });
    }

    fn markdown(&self) -> String {
        let verdict = if self.ratio >= self.target {
            "meets"
        } else {
            "BELOW"
        };
        let mut text = format!(
            "## {}\n\n**{}** ({verdict} the target {:.2})\n\n| measurement | value | unit |\n|---|---:|---|\n",
            self.case,
            self.headline(),
            self.target
        );
        for metric in &self.metrics {
            let value = CaseReport::format_value(metric.value);
            text.push_str(&format!(
                "| {} | {value} | {} |\n",
                metric.name, metric.unit
            ));
        }
        if !self.notes.is_empty() {
            text.push('\n');
            for note in &self.notes {
                text.push_str(&format!("- {note}\n"));
            }
        }
        text
    }
}

/// Writes `report.md`, `report.json` and `<case>.md`/`<case>.json` under `dir`.
pub(crate) fn write(dir: &Path, reports: &[CaseReport]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let when = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut markdown = format!("# Countersign benchmarks\n\nRun at {when}.\n\n");
    for report in reports {
        markdown.push_str(&report.markdown());
        markdown.push('\n');
        let write = |name: String, content: String| {
            let path = dir.join(name);
            std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))
        };
        write(format!("{}.md", report.case), report.markdown())?;
        write(
            format!("{}.json", report.case),
            serde_json::to_string_pretty(report)?,
        )?;
    }
    std::fs::write(dir.join("report.md"), markdown).context("writing report.md")?;
    let json = serde_json::json!({ "run_at": when, "cases": reports });
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )
    .context("writing report.json")?;
    Ok(())
}
