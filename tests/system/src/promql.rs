//! Metric names on both sides: those a PromQL expression refers to (dashboards, alert rules) and
//! those a Prometheus/OpenMetrics text exposition exports (a service's `/metrics`).
//!
//! The expression side is a tokenizer, not a PromQL parser: it takes every identifier that starts
//! with `countersign_`, which is how every Countersign metric is named (labels, functions and
//! keywords never start with it). Names of other exporters (`up`, `kube_*`) are ignored by design.

use std::collections::BTreeSet;

/// The prefix of every Countersign metric.
pub const PREFIX: &str = "countersign_";

/// The Countersign metric names `expression` refers to, without label matchers or ranges.
pub fn metric_names(expression: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expression.as_bytes();
    let mut index = 0;
    let mut in_string: Option<u8> = None;
    while index < bytes.len() {
        let byte = bytes[index];
        if let Some(quote) = in_string {
            if byte == b'\\' {
                index += 2;
                continue;
            }
            if byte == quote {
                in_string = None;
            }
            index += 1;
            continue;
        }
        if byte == b'"' || byte == b'\'' || byte == b'`' {
            in_string = Some(byte);
            index += 1;
            continue;
        }
        if byte.is_ascii_alphabetic() || byte == b'_' || byte == b':' {
            let start = index;
            while index < bytes.len()
                && (bytes[index].is_ascii_alphanumeric()
                    || bytes[index] == b'_'
                    || bytes[index] == b':')
            {
                index += 1;
            }
            let word = &expression[start..index];
            if word.starts_with(PREFIX) {
                names.insert(word.to_owned());
            }
            continue;
        }
        index += 1;
    }
    names
}

/// The names a text exposition exports: every sample's name (`x_total`, `x_bucket`, `x_count`,
/// `x_sum` as they appear) and every `# TYPE` family name, so a family that has no sample yet
/// (a labelled counter nothing has incremented) still counts as exported, together with the
/// sample names its type implies.
pub fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(family), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            names.insert(family.to_owned());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" | "gaugehistogram" => &["_bucket", "_count", "_sum", "_created"],
                "summary" => &["_count", "_sum", "_created"],
                "info" => &["_info"],
                _ => &[],
            };
            for suffix in suffixes {
                if !family.ends_with(suffix) {
                    names.insert(format!("{family}{suffix}"));
                }
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        names.insert(line[..end].to_owned());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_expressions() {
        let names = metric_names(
            r#"sum by (reason) (rate(countersign_attestor_verdicts_total{verdict="rejected",x="countersign_not_me"}[5m]))
               / on() histogram_quantile(0.99, sum(rate(countersign_events_handler_duration_seconds_bucket[5m])) by (le)) > up"#,
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            [
                "countersign_attestor_verdicts_total",
                "countersign_events_handler_duration_seconds_bucket"
            ]
        );
    }

    #[test]
    fn names_in_an_exposition() {
        let names = exported_names(
            "# HELP countersign_events_published Events.\n# TYPE countersign_events_published counter\n\
             # TYPE countersign_x_seconds histogram\ncountersign_x_seconds_bucket{le=\"1\"} 0\n\
             countersign_up 1\n# EOF\n",
        );
        for name in [
            "countersign_events_published",
            "countersign_events_published_total",
            "countersign_x_seconds_bucket",
            "countersign_x_seconds_count",
            "countersign_up",
        ] {
            assert!(names.contains(name), "{name}");
        }
    }
}
