//! Reads a Prometheus / OpenMetrics text exposition (what `/metrics` serves and
//! `Context::metrics.encode()` returns): its samples, one series' value, or the sum over the
//! series of a family whose labels include some pairs. A series that is absent reads as 0, as a
//! counter nothing has incremented yet.

/// One sample line: `name{labels} value [timestamp] [# exemplar]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The series as written: the name and its `{...}` labels, if any.
    pub series: &'a str,
    /// The metric name (`_total`, `_bucket`, `_count` included).
    pub name: &'a str,
    /// The label pairs, values unescaped, in written order.
    pub labels: Vec<(&'a str, String)>,
    /// The sample's value.
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(label, _)| *label == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Every sample line of `text` that parses, in order (comments and blank lines skipped).
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(parse_sample)
}

/// The value of `series`, written exactly as in the exposition (`name` or
/// `name{label="value",...}`), or 0 when it is absent.
pub fn value(text: &str, series: &str) -> f64 {
    samples(text)
        .find(|sample| sample.series == series)
        .map_or(0.0, |sample| sample.value)
}

/// The sum of the samples of metric `name` (exact name, `_total` included) whose labels include
/// every pair of `labels`; 0 when there is none.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .filter(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(label, value)| sample.label(label) == Some(*value))
        })
        .map(|sample| sample.value)
        .sum()
}

fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let (labels, series_end) = if line[name_end..].starts_with('{') {
        let (labels, length) = parse_labels(&line[name_end + 1..])?;
        (labels, name_end + 1 + length)
    } else {
        (Vec::new(), name_end)
    };
    let value = line[series_end..].split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        series: &line[..series_end],
        name,
        labels,
        value,
    })
}

/// The pairs of `text` up to and including its closing `}`, and how many bytes that took.
fn parse_labels(text: &str) -> Option<(Vec<(&str, String)>, usize)> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, text.len() - after.len()));
        }
        let (label, after_label) = rest.split_once('=')?;
        let mut chars = after_label.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (index, '"') => break index,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, other) => value.push(other),
            }
        };
        labels.push((label.trim(), value));
        // Past the value and its closing quote.
        rest = &after_label[1 + end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP countersign_relay_deliveries Deliveries.
# TYPE countersign_relay_deliveries counter
countersign_relay_deliveries_total{sink=\"a\",outcome=\"delivered\"} 3
countersign_relay_deliveries_total{sink=\"b\",outcome=\"delivered\"} 2
countersign_relay_deliveries_total{sink=\"a\",outcome=\"retry\"} 1 # {trace_id=\"x\"} 1.0
countersign_registrar_reconcile_duration_seconds_count 4
countersign_odd_total{detail=\"a \\\"quoted\\\", spaced } value\"} 7
# EOF
";

    #[test]
    fn a_series_reads_its_value_and_an_absent_one_reads_zero() {
        assert_eq!(
            value(
                TEXT,
                "countersign_relay_deliveries_total{sink=\"a\",outcome=\"delivered\"}"
            ),
            3.0
        );
        assert_eq!(
            value(
                TEXT,
                "countersign_registrar_reconcile_duration_seconds_count"
            ),
            4.0
        );
        assert_eq!(
            value(
                TEXT,
                "countersign_relay_deliveries_total{sink=\"a\",outcome=\"retry\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                TEXT,
                "countersign_relay_deliveries_total{sink=\"c\",outcome=\"delivered\"}"
            ),
            0.0
        );
    }

    #[test]
    fn a_sum_takes_every_series_whose_labels_include_the_pairs() {
        let name = "countersign_relay_deliveries_total";
        assert_eq!(sum(TEXT, name, &[("outcome", "delivered")]), 5.0);
        assert_eq!(sum(TEXT, name, &[("sink", "a")]), 4.0);
        assert_eq!(sum(TEXT, name, &[]), 6.0);
        assert_eq!(sum(TEXT, name, &[("sink", "z")]), 0.0);
        assert_eq!(sum(TEXT, "countersign_relay_deliveries", &[]), 0.0);
    }

    #[test]
    fn quoted_label_values_may_hold_quotes_commas_spaces_and_braces() {
        let odd = samples(TEXT)
            .find(|sample| sample.name == "countersign_odd_total")
            .expect("the sample");
        assert_eq!(odd.label("detail"), Some("a \"quoted\", spaced } value"));
        assert_eq!(odd.value, 7.0);
        assert_eq!(samples(TEXT).count(), 5);
    }
}
