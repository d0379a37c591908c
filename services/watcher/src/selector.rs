//! Kubernetes label selectors as text (`app=build,tier!=test,env in (prod,stage),!legacy`),
//! parsed into kube's [`Selector`] so one value both scopes the watches and decides whether a
//! TaskRun received by the CloudEvents ingress is in scope.
//!
//! The grammar is the API server's: requirements separated by commas, each `key`, `!key`,
//! `key=value`, `key==value`, `key!=value`, `key in (v1,v2)` or `key notin (v1,v2)`.

use std::collections::BTreeSet;

use kube::core::{Expression, Selector};

/// Why a label selector did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector requirement {requirement:?}: {problem}")]
pub struct SelectorError {
    /// The requirement that did not parse.
    pub requirement: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// Parses a label selector; the empty text selects everything.
pub fn parse_selector(text: &str) -> Result<Selector, SelectorError> {
    split_requirements(text)
        .into_iter()
        .map(|requirement| parse_requirement(&requirement))
        .collect()
}

/// Splits at the commas that are not inside parentheses.
fn split_requirements(text: &str) -> Vec<String> {
    let mut requirements = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    for character in text.chars() {
        match character {
            '(' => {
                depth += 1;
                current.push(character);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                current.push(character);
            }
            ',' if depth == 0 => requirements.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    requirements.push(current);
    requirements
        .into_iter()
        .map(|requirement| requirement.trim().to_owned())
        .filter(|requirement| !requirement.is_empty())
        .collect()
}

fn parse_requirement(requirement: &str) -> Result<Expression, SelectorError> {
    let error = |problem| SelectorError {
        requirement: requirement.to_owned(),
        problem,
    };
    if let Some(key) = requirement.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(
            label_key(key.trim()).ok_or_else(|| error("`!` must be followed by a label key"))?,
        ));
    }
    if let Some((key, value)) = requirement.split_once("!=") {
        return Ok(Expression::NotEqual(
            label_key(key.trim()).ok_or_else(|| error("invalid label key"))?,
            label_value(value.trim()).ok_or_else(|| error("invalid label value"))?,
        ));
    }
    if let Some((key, value)) = requirement
        .split_once("==")
        .or_else(|| requirement.split_once('='))
    {
        return Ok(Expression::Equal(
            label_key(key.trim()).ok_or_else(|| error("invalid label key"))?,
            label_value(value.trim()).ok_or_else(|| error("invalid label value"))?,
        ));
    }
    let mut words = requirement.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    let rest = words.next().map(str::trim_start);
    let Some(rest) = rest else {
        return Ok(Expression::Exists(
            label_key(key).ok_or_else(|| error("invalid label key"))?,
        ));
    };
    let key = label_key(key).ok_or_else(|| error("invalid label key"))?;
    let (operator, values) = if let Some(values) = rest.strip_prefix("notin") {
        ("notin", values)
    } else if let Some(values) = rest.strip_prefix("in") {
        ("in", values)
    } else {
        return Err(error("expected `in` or `notin`"));
    };
    let values = values
        .trim()
        .strip_prefix('(')
        .and_then(|values| values.strip_suffix(')'))
        .ok_or_else(|| error("values must be in parentheses"))?;
    let values: BTreeSet<String> = values
        .split(',')
        .map(|value| label_value(value.trim()).ok_or_else(|| error("invalid label value")))
        .collect::<Result<_, _>>()?;
    Ok(match operator {
        "in" => Expression::In(key, values),
        _ => Expression::NotIn(key, values),
    })
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters of
/// `[A-Za-z0-9._-]`, starting and ending alphanumeric.
fn label_key(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let valid = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|label| {
                !label.is_empty()
                    && label.bytes().all(|byte| {
                        byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-'
                    })
            });
        if !valid {
            return None;
        }
    }
    (!name.is_empty() && is_label_text(name)).then(|| key.to_owned())
}

/// A label value: empty, or at most 63 characters of `[A-Za-z0-9._-]`, starting and ending
/// alphanumeric.
fn label_value(value: &str) -> Option<String> {
    (value.is_empty() || is_label_text(value)).then(|| value.to_owned())
}

fn is_label_text(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::core::SelectorExt as _;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let selector = parse_selector(
            "app=build, tier!=test,env in (prod, stage),!legacy,team,zone notin (x)",
        )
        .unwrap();
        assert_eq!(
            selector.to_string(),
            "app=build,tier!=test,env in (prod,stage),!legacy,team,zone notin (x)"
        );
        assert!(selector.matches(&labels(
            &[("app", "build"), ("env", "prod"), ("team", "a"),]
        )));
        assert!(!selector.matches(&labels(&[("app", "build"), ("env", "dev"), ("team", "a")])));
        assert!(!selector.matches(&labels(&[
            ("app", "build"),
            ("env", "prod"),
            ("team", "a"),
            ("legacy", "")
        ])));
        assert_eq!(
            parse_selector("tekton.dev/pipeline==release")
                .unwrap()
                .to_string(),
            "tekton.dev/pipeline=release"
        );
    }

    #[test]
    fn the_empty_selector_selects_everything() {
        let selector = parse_selector("  ").unwrap();
        assert!(selector.selects_all());
        assert!(selector.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn refuses_what_the_api_server_refuses() {
        for bad in [
            "app=bu ild",
            "=x",
            "a in x",
            "a in (b",
            "a between (b)",
            "!",
            "-a=b",
            "Bad.Prefix/a=b",
        ] {
            assert!(parse_selector(bad).is_err(), "{bad:?}");
        }
    }
}
