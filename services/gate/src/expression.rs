//! Tekton's variable expressions, with the grammar of Tekton Pipelines v1.15.0: where a
//! `$(...)` variable is in a text, and which of them read an upstream task's result.
//!
//! A variable is what Tekton's `VariableSubstitutionRegex` finds
//! (`\$\([_a-zA-Z0-9.-]+(\.[_a-zA-Z0-9.-]+)*(\[([0-9]+|\*)\])?\)`, `pkg/apis/pipeline/v1/resultref.go`):
//! `$(`, one or more of `[_a-zA-Z0-9.-]`, an optional `[<digits>]` or `[*]`, then `)`. Matches do
//! not overlap and are found left to right.
//!
//! A variable reads a result when its text, split on `.`, has at least four parts, the first
//! `tasks` and the third `results` (`LooksLikeResultRef`, `pkg/internal/resultref`); then
//! (`parseExpression`):
//!
//! * four parts: `tasks.<task>.results.<result>` (a string result, or the whole value),
//!   `...<result>[*]` (a whole array or object), `...<result>[<i>]` (one element of an array);
//! * five parts: `tasks.<task>.results.<result>.<key>` (one key of an object);
//! * anything else is not a result reference.
//!
//! `finally.<task>.results...` is a reference Tekton only resolves into Pipeline results, never into
//! a TaskRun's params, so it is not one here.

use std::ops::Range;

/// The characters of a variable's name (`[_a-zA-Z0-9.-]`).
fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-')
}

/// One `$(...)` variable found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable<'a> {
    /// Where it is, `$(` to `)` included.
    pub span: Range<usize>,
    /// What is between `$(` and `)`: `tasks.build.results.digest`, `params.x[*]`.
    pub inner: &'a str,
}

/// Every variable of `text`, left to right, as Tekton's `VariableSubstitutionRegex` finds them.
pub fn variables(text: &str) -> Vec<Variable<'_>> {
    let mut found = Vec::new();
    let mut position = 0;
    while let Some(offset) = text[position..].find("$(") {
        let start = position + offset;
        match variable_at(text, start) {
            Some(end) => {
                found.push(Variable {
                    span: start..end,
                    inner: &text[start + 2..end - 1],
                });
                position = end;
            }
            None => position = start + 1,
        }
    }
    found
}

/// The end (after `)`) of the variable starting at `start` (which holds `$(`), if one does.
pub fn variable_at(text: &str, start: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut cursor = start + 2;
    while cursor < bytes.len() && is_name_byte(bytes[cursor]) {
        cursor += 1;
    }
    if cursor == start + 2 {
        return None;
    }
    if bytes.get(cursor) == Some(&b'[') {
        let index_start = cursor + 1;
        let mut index_end = index_start;
        if bytes.get(index_end) == Some(&b'*') {
            index_end += 1;
        } else {
            while index_end < bytes.len() && bytes[index_end].is_ascii_digit() {
                index_end += 1;
            }
        }
        if index_end == index_start || bytes.get(index_end) != Some(&b']') {
            return None;
        }
        cursor = index_end + 1;
    }
    (bytes.get(cursor) == Some(&b')')).then_some(cursor + 1)
}

/// Whether the whole of `text` is one variable (Tekton's `exactVariableSubstitutionRegex`).
pub fn is_exact_variable(text: &str) -> bool {
    text.starts_with("$(") && variable_at(text, 0) == Some(text.len())
}

/// Which part of a result a reference reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Selector {
    /// `tasks.<task>.results.<result>`: a string result, or a whole array or object.
    Whole,
    /// `...<result>[*]`: a whole array or object.
    Star,
    /// `...<result>[<i>]`: one element of an array.
    Index(usize),
    /// `...<result>.<key>`: one key of an object.
    Key(String),
}

/// A variable that reads an upstream task's result.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResultRef {
    /// The pipeline task (`tasks.<task>`).
    pub task: String,
    /// The result's name.
    pub result: String,
    /// What of it.
    pub selector: Selector,
}

/// The result reference a variable's inner text is, if it is one (see the module docs).
pub fn parse_result_ref(inner: &str) -> Option<ResultRef> {
    let parts: Vec<&str> = inner.split('.').collect();
    if parts.len() < 4 || parts[0] != "tasks" || parts[2] != "results" {
        return None;
    }
    let task = parts[1].to_owned();
    match parts.len() {
        4 => {
            let (result, selector) = split_index(parts[3])?;
            Some(ResultRef {
                task,
                result,
                selector,
            })
        }
        5 => Some(ResultRef {
            task,
            result: parts[3].to_owned(),
            selector: Selector::Key(parts[4].to_owned()),
        }),
        _ => None,
    }
}

/// `name[*]`, `name[3]` or `name`. An index too large for a `usize` refers to no element: `None`.
fn split_index(part: &str) -> Option<(String, Selector)> {
    let Some(open) = part.find('[') else {
        return Some((part.to_owned(), Selector::Whole));
    };
    let name = part[..open].to_owned();
    let index = part[open + 1..].strip_suffix(']')?;
    if index == "*" {
        return Some((name, Selector::Star));
    }
    index
        .parse::<usize>()
        .ok()
        .map(|index| (name, Selector::Index(index)))
}

/// Every result reference in `text`, left to right.
pub fn result_refs(text: &str) -> Vec<ResultRef> {
    variables(text)
        .into_iter()
        .filter_map(|variable| parse_result_ref(variable.inner))
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn refs(text: &str) -> Vec<ResultRef> {
        result_refs(text)
    }

    fn reference(task: &str, result: &str, selector: Selector) -> ResultRef {
        ResultRef {
            task: task.into(),
            result: result.into(),
            selector,
        }
    }

    #[test]
    fn a_whole_string_result_is_a_reference() {
        assert_eq!(
            refs("$(tasks.build.results.IMAGE_DIGEST)"),
            vec![reference("build", "IMAGE_DIGEST", Selector::Whole)]
        );
    }

    #[test]
    fn star_index_and_key_forms_are_parsed() {
        assert_eq!(
            refs("$(tasks.a.results.tags[*])"),
            vec![reference("a", "tags", Selector::Star)]
        );
        assert_eq!(
            refs("$(tasks.a.results.tags[12])"),
            vec![reference("a", "tags", Selector::Index(12))]
        );
        assert_eq!(
            refs("$(tasks.a.results.meta.url)"),
            vec![reference("a", "meta", Selector::Key("url".into()))]
        );
    }

    #[test]
    fn several_references_in_one_string_are_found_in_order() {
        assert_eq!(
            refs("img=$(tasks.a.results.url)@$(tasks.b.results.digest) tag=$(params.tag)"),
            vec![
                reference("a", "url", Selector::Whole),
                reference("b", "digest", Selector::Whole)
            ]
        );
    }

    #[test]
    fn other_variables_and_malformed_text_are_not_references() {
        assert!(refs("$(params.x) $(context.pipelineRun.name)").is_empty());
        assert!(refs("$(tasks.a.results)").is_empty());
        assert!(refs("$(tasks.a.status)").is_empty());
        assert!(refs("$(finally.a.results.x)").is_empty());
        assert!(refs("$(tasks.a.results.x.y.z)").is_empty());
        assert!(refs("$(tasks.a.results.x").is_empty());
        assert!(refs("$(tasks.a.results.x[])").is_empty());
        assert!(refs("$(tasks.a.results.x[1a])").is_empty());
        assert!(refs("$(tasks.a.results[\"x\"])").is_empty());
        assert!(refs("$tasks.a.results.x)").is_empty());
    }

    #[test]
    fn variables_do_not_overlap_and_restart_after_a_failed_match() {
        let found = variables("$($(params.a)$(x[*]))");
        let inners: Vec<&str> = found.iter().map(|variable| variable.inner).collect();
        assert_eq!(inners, vec!["params.a", "x[*]"]);
    }

    #[test]
    fn an_exact_variable_is_the_whole_text() {
        assert!(is_exact_variable("$(tasks.a.results.x[*])"));
        assert!(!is_exact_variable(" $(tasks.a.results.x)"));
        assert!(!is_exact_variable("$(tasks.a.results.x)-"));
    }

    proptest! {
        #[test]
        fn scanning_any_text_never_panics_and_spans_are_variables(text in "\\PC{0,80}") {
            for variable in variables(&text) {
                prop_assert!(text[variable.span.clone()].starts_with("$("));
                prop_assert!(text[variable.span.clone()].ends_with(')'));
                prop_assert!(is_exact_variable(&text[variable.span.clone()]));
            }
            let _ = result_refs(&text);
        }

        #[test]
        fn a_reference_written_out_parses_back(
            task in "[a-z][a-z0-9-]{0,20}",
            result in "[A-Za-z][A-Za-z0-9_-]{0,20}",
            index in proptest::option::of(0usize..1000),
            prefix in "[^$]{0,10}",
        ) {
            let (text, selector) = match index {
                Some(index) => (format!("{prefix}$(tasks.{task}.results.{result}[{index}])"), Selector::Index(index)),
                None => (format!("{prefix}$(tasks.{task}.results.{result})"), Selector::Whole),
            };
            prop_assert_eq!(refs(&text), vec![ResultRef { task, result, selector }]);
        }
    }
}
