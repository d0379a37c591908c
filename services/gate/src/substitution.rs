//! Tekton's variable substitution into a param value, done the way Tekton Pipelines v1.15.0 does
//! it, and the patterns it leaves for the gate to compare with what was passed.
//!
//! Tekton replaces, in one left-to-right pass, every `$(<target>)` whose target is a key of its
//! replacement maps (`substitution.ApplyReplacements`, a `strings.Replacer`); a value that is
//! exactly one variable naming an array or object takes that whole array or object
//! (`ParamValue.applyOrCorrect`); an array element that is exactly `$(<target>)` or
//! `$(<target>[*])` of an array expands into its elements (`ApplyArrayReplacements`).
//!
//! Here the output is an [`Expected`] value whose strings are [`Pattern`]s: text that came from
//! the template or from a replacement is literal, and a variable that no map names is kept as a
//! [`Piece::Variable`] (a value the gate does not know, such as `$(context.pipelineTask.retries)`),
//! which [`Expected::matches`] lets stand for any text. [`Expected::render`] writes a variable
//! back as it was, which is what Tekton's own pass does, so passes can be chained.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::expression::{is_exact_variable, variable_at};

/// A param value: Tekton's `ParamValue` (a string, an array of strings or an object of strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// `type: string`.
    String(String),
    /// `type: array`.
    Array(Vec<String>),
    /// `type: object`.
    Object(BTreeMap<String, String>),
}

impl ParamValue {
    /// Every string in the value.
    pub fn strings(&self) -> Vec<&str> {
        match self {
            ParamValue::String(text) => vec![text.as_str()],
            ParamValue::Array(elements) => elements.iter().map(String::as_str).collect(),
            ParamValue::Object(object) => object.values().map(String::as_str).collect(),
        }
    }
}

/// What replaces which target (a target is a variable's text without `$(` and `)`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replacements {
    /// Targets replaced by a string.
    pub strings: HashMap<String, String>,
    /// Targets replaced by an array.
    pub arrays: HashMap<String, Vec<String>>,
    /// Targets replaced by an object.
    pub objects: HashMap<String, BTreeMap<String, String>>,
}

/// One piece of a [`Pattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Exactly this text.
    Literal(String),
    /// A variable no replacement named, as written (`$(context.pipelineTask.retries)`): any text.
    Variable(String),
}

/// A string with known and unknown parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pattern {
    pieces: Vec<Piece>,
}

impl Pattern {
    /// A pattern of exactly `text`.
    pub fn literal(text: impl Into<String>) -> Pattern {
        Pattern {
            pieces: vec![Piece::Literal(text.into())],
        }
    }

    /// The pieces.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    fn push_literal(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if let Some(Piece::Literal(last)) = self.pieces.last_mut() {
            last.push_str(text);
        } else {
            self.pieces.push(Piece::Literal(text.to_owned()));
        }
    }

    /// The text, with each unknown variable written as it was.
    pub fn render(&self) -> String {
        self.pieces
            .iter()
            .map(|piece| match piece {
                Piece::Literal(text) | Piece::Variable(text) => text.as_str(),
            })
            .collect()
    }

    /// Whether `text` is this pattern with some text (possibly empty) for each unknown variable;
    /// `None` when deciding took more than `budget` steps.
    pub fn matches(&self, text: &str, budget: &mut u64) -> Option<bool> {
        glob_match(&self.pieces, text.as_bytes(), budget)
    }
}

/// Whether `text` matches `pieces`, a variable matching any run of bytes: the classic
/// wildcard matcher (greedy, backtracking to the last variable), `O(len(pattern) * len(text))`
/// steps at worst, each step charged to `budget`.
fn glob_match(pieces: &[Piece], text: &[u8], budget: &mut u64) -> Option<bool> {
    // Flatten into bytes and wildcards.
    let mut pattern: Vec<Option<u8>> = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Literal(literal) => pattern.extend(literal.bytes().map(Some)),
            Piece::Variable(_) => {
                if pattern.last() != Some(&None) {
                    pattern.push(None);
                }
            }
        }
    }
    let (mut p, mut t) = (0usize, 0usize);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        *budget = budget.checked_sub(1)?;
        match pattern.get(p) {
            Some(Some(byte)) if *byte == text[t] => {
                p += 1;
                t += 1;
            }
            Some(None) => {
                backtrack = Some((p, t));
                p += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    p = star + 1;
                    t = matched + 1;
                    backtrack = Some((star, matched + 1));
                }
                None => return Some(false),
            },
        }
    }
    Some(pattern[p..].iter().all(Option::is_none))
}

/// A param value with patterns for its strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// A string.
    String(Pattern),
    /// An array.
    Array(Vec<Pattern>),
    /// An object.
    Object(BTreeMap<String, Pattern>),
}

impl Expected {
    /// The value with each unknown variable written as it was.
    pub fn render(&self) -> ParamValue {
        match self {
            Expected::String(pattern) => ParamValue::String(pattern.render()),
            Expected::Array(elements) => {
                ParamValue::Array(elements.iter().map(Pattern::render).collect())
            }
            Expected::Object(object) => ParamValue::Object(
                object
                    .iter()
                    .map(|(key, pattern)| (key.clone(), pattern.render()))
                    .collect(),
            ),
        }
    }

    /// Whether `actual` is this value (same type, same length or keys, each string matching);
    /// `None` when deciding took more than `budget` steps.
    pub fn matches(&self, actual: &ParamValue, budget: &mut u64) -> Option<bool> {
        match (self, actual) {
            (Expected::String(pattern), ParamValue::String(text)) => pattern.matches(text, budget),
            (Expected::Array(patterns), ParamValue::Array(elements)) => {
                if patterns.len() != elements.len() {
                    return Some(false);
                }
                for (pattern, element) in patterns.iter().zip(elements) {
                    if !pattern.matches(element, budget)? {
                        return Some(false);
                    }
                }
                Some(true)
            }
            (Expected::Object(patterns), ParamValue::Object(object)) => {
                if patterns.len() != object.len() {
                    return Some(false);
                }
                for (key, pattern) in patterns {
                    let Some(value) = object.get(key) else {
                        return Some(false);
                    };
                    if !pattern.matches(value, budget)? {
                        return Some(false);
                    }
                }
                Some(true)
            }
            _ => Some(false),
        }
    }
}

/// `ApplyReplacements` of one string: each `$(<target>)` with a string replacement is replaced,
/// any other variable is kept as a [`Piece::Variable`], everything else is literal.
pub fn substitute_string(text: &str, strings: &HashMap<String, String>) -> Pattern {
    let mut pattern = Pattern::default();
    let mut literal_start = 0;
    let mut position = 0;
    while let Some(offset) = text[position..].find("$(") {
        let start = position + offset;
        // A target never holds `)`, so a replaced `$(<target>)` ends at the first `)`.
        if let Some(close) = text[start..].find(')') {
            let end = start + close + 1;
            if let Some(value) = strings.get(&text[start + 2..end - 1]) {
                pattern.push_literal(&text[literal_start..start]);
                pattern.push_literal(value);
                literal_start = end;
                position = end;
                continue;
            }
        }
        if let Some(end) = variable_at(text, start) {
            pattern.push_literal(&text[literal_start..start]);
            pattern
                .pieces
                .push(Piece::Variable(text[start..end].to_owned()));
            literal_start = end;
            position = end;
            continue;
        }
        position = start + 1;
    }
    pattern.push_literal(&text[literal_start..]);
    pattern
}

/// `StripStarVarSubExpression`: `$(x[*])` → `x`, `$(x)` → `x`.
fn strip_star(text: &str) -> &str {
    let inner = text.strip_prefix("$(").unwrap_or(text);
    let inner = inner.strip_suffix(')').unwrap_or(inner);
    inner.strip_suffix("[*]").unwrap_or(inner)
}

/// `ApplyArrayReplacements` of one array element.
fn substitute_element(element: &str, replacements: &Replacements) -> Vec<Pattern> {
    if element.starts_with("$(") && element.ends_with(')') {
        let inner = &element[2..element.len() - 1];
        for candidate in [inner, inner.strip_suffix("[*]").unwrap_or("")] {
            if let Some(array) = replacements.arrays.get(candidate)
                && (candidate == inner || inner.ends_with("[*]"))
            {
                return array.iter().map(Pattern::literal).collect();
            }
        }
    }
    vec![substitute_string(element, &replacements.strings)]
}

/// `ParamValue.ApplyReplacements`: the value with `replacements` applied.
pub fn substitute(value: &ParamValue, replacements: &Replacements) -> Expected {
    match value {
        ParamValue::Array(elements) => Expected::Array(
            elements
                .iter()
                .flat_map(|element| substitute_element(element, replacements))
                .collect(),
        ),
        ParamValue::Object(object) => Expected::Object(
            object
                .iter()
                .map(|(key, text)| (key.clone(), substitute_string(text, &replacements.strings)))
                .collect(),
        ),
        ParamValue::String(text) => {
            if is_exact_variable(text) {
                let target = strip_star(text);
                if let Some(object) = replacements.objects.get(target) {
                    return Expected::Object(
                        object
                            .iter()
                            .map(|(key, value)| (key.clone(), Pattern::literal(value)))
                            .collect(),
                    );
                }
                if replacements.arrays.contains_key(target) {
                    return Expected::Array(substitute_element(text, replacements));
                }
            }
            Expected::String(substitute_string(text, &replacements.strings))
        }
    }
}

/// The three spellings Tekton replaces for a named thing under `base` (`tasks.a.results`,
/// `params`): `base.name`, `base["name"]`, `base['name']`, each followed by `suffix`.
pub fn target_spellings(
    base: &str,
    name: &str,
    suffix_dot: &str,
    suffix_bracket: &str,
) -> [String; 3] {
    [
        format!("{base}.{name}{suffix_dot}"),
        format!("{base}[\"{name}\"]{suffix_bracket}"),
        format!("{base}['{name}']{suffix_bracket}"),
    ]
}

impl Replacements {
    /// Adds what Tekton replaces for result `result` of pipeline task `task`
    /// (`ResolvedResultRefs.get*Replacements`): a string result's three spellings; for an array
    /// each `[i]` and the whole array; for an object each key (`.key`, `["name"][key]`,
    /// `['name'][key]`) and the whole object.
    pub fn add_result(&mut self, task: &str, result: &str, value: &ParamValue) {
        let base = format!("tasks.{task}.results");
        self.add_named(&base, result, value, KeySpellings::All);
    }

    /// Adds what Tekton replaces for PipelineRun param `name` (`paramsFromPipelineRun`): as for a
    /// result, but an object's keys only as `params.name.key`.
    pub fn add_param(&mut self, name: &str, value: &ParamValue) {
        self.add_named("params", name, value, KeySpellings::DotOnly);
    }

    fn add_named(&mut self, base: &str, name: &str, value: &ParamValue, keys: KeySpellings) {
        match value {
            ParamValue::String(text) => {
                for target in target_spellings(base, name, "", "") {
                    self.strings.insert(target, text.clone());
                }
            }
            ParamValue::Array(elements) => {
                for (index, element) in elements.iter().enumerate() {
                    let suffix = format!("[{index}]");
                    for target in target_spellings(base, name, &suffix, &suffix) {
                        self.strings.insert(target, element.clone());
                    }
                }
                for target in target_spellings(base, name, "", "") {
                    self.arrays.insert(target, elements.clone());
                }
            }
            ParamValue::Object(object) => {
                for (key, element) in object {
                    let dot = format!(".{key}");
                    let bracket = format!("[{key}]");
                    let spellings = target_spellings(base, name, &dot, &bracket);
                    let count = match keys {
                        KeySpellings::All => spellings.len(),
                        KeySpellings::DotOnly => 1,
                    };
                    for target in spellings.into_iter().take(count) {
                        self.strings.insert(target, element.clone());
                    }
                }
                for target in target_spellings(base, name, "", "") {
                    self.objects.insert(target, object.clone());
                }
            }
        }
    }
}

/// Which spellings of an object's key Tekton replaces.
#[derive(Debug, Clone, Copy)]
enum KeySpellings {
    /// `.key`, `["name"][key]`, `['name'][key]` (results).
    All,
    /// `.key` only (PipelineRun params).
    DotOnly,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const BUDGET: u64 = 1_000_000;

    fn replacements(entries: &[(&str, ParamValue)]) -> Replacements {
        let mut replacements = Replacements::default();
        for (name, value) in entries {
            replacements.add_result("build", name, value);
        }
        replacements
    }

    fn string(text: &str) -> ParamValue {
        ParamValue::String(text.into())
    }

    fn array(elements: &[&str]) -> ParamValue {
        ParamValue::Array(elements.iter().map(|element| element.to_string()).collect())
    }

    fn matches(expected: &Expected, actual: &ParamValue) -> bool {
        expected.matches(actual, &mut BUDGET.clone()).unwrap()
    }

    #[test]
    fn a_string_result_replaces_every_spelling_in_one_pass() {
        let map = replacements(&[("digest", string("sha256:aa"))]);
        let expected = substitute(
            &string(
                r#"$(tasks.build.results.digest) $(tasks.build.results["digest"]) $(tasks.build.results['digest'])"#,
            ),
            &map,
        );
        assert_eq!(expected.render(), string("sha256:aa sha256:aa sha256:aa"));
        // A value holding a variable is not substituted again.
        let map = replacements(&[("digest", string("$(tasks.build.results.digest)"))]);
        let expected = substitute(&string("x$(tasks.build.results.digest)"), &map);
        assert_eq!(expected.render(), string("x$(tasks.build.results.digest)"));
        assert!(matches(
            &expected,
            &string("x$(tasks.build.results.digest)")
        ));
    }

    #[test]
    fn a_whole_array_reference_takes_the_array() {
        let map = replacements(&[("tags", array(&["a", "b"]))]);
        for template in [
            "$(tasks.build.results.tags[*])",
            "$(tasks.build.results.tags)",
        ] {
            assert_eq!(
                substitute(&string(template), &map).render(),
                array(&["a", "b"])
            );
        }
        let expected = substitute(
            &array(&[
                "first",
                "$(tasks.build.results.tags[*])",
                "$(tasks.build.results.tags[1])",
            ]),
            &map,
        );
        assert_eq!(expected.render(), array(&["first", "a", "b", "b"]));
    }

    #[test]
    fn object_keys_and_whole_objects_are_replaced() {
        let object = ParamValue::Object(BTreeMap::from([
            ("url".to_owned(), "r/x".to_owned()),
            ("digest".to_owned(), "sha256:bb".to_owned()),
        ]));
        let map = replacements(&[("image", object.clone())]);
        assert_eq!(
            substitute(&string("$(tasks.build.results.image[*])"), &map).render(),
            object
        );
        assert_eq!(
            substitute(
                &string("$(tasks.build.results.image.url)@$(tasks.build.results.image.digest)"),
                &map
            )
            .render(),
            string("r/x@sha256:bb")
        );
    }

    #[test]
    fn unknown_variables_match_any_text_and_known_text_must_be_exact() {
        let map = replacements(&[("digest", string("sha256:aa"))]);
        let expected = substitute(
            &string("$(context.pipelineTask.retries)-$(tasks.build.results.digest)"),
            &map,
        );
        assert!(matches(&expected, &string("3-sha256:aa")));
        assert!(matches(&expected, &string("-sha256:aa")));
        assert!(!matches(&expected, &string("3-sha256:ab")));
        assert!(!matches(&expected, &string("3-sha256:aa ")));
    }

    #[test]
    fn types_lengths_and_keys_must_agree() {
        let map = replacements(&[("tags", array(&["a", "b"]))]);
        let expected = substitute(&string("$(tasks.build.results.tags[*])"), &map);
        assert!(matches(&expected, &array(&["a", "b"])));
        assert!(!matches(&expected, &array(&["a", "b", "c"])));
        assert!(!matches(&expected, &array(&["a"])));
        assert!(!matches(&expected, &string("a,b")));
    }

    #[test]
    fn the_budget_bounds_the_work() {
        let pattern = Pattern {
            pieces: vec![
                Piece::Variable("$(a)".into()),
                Piece::Literal("a".repeat(50)),
                Piece::Variable("$(b)".into()),
                Piece::Literal("b".into()),
            ],
        };
        let text = "a".repeat(5000);
        assert_eq!(pattern.matches(&text, &mut 100), None);
        let mut unbounded = u64::MAX;
        assert_eq!(pattern.matches(&text, &mut unbounded), Some(false));
    }

    proptest! {
        #[test]
        fn a_template_filled_with_the_signed_value_matches_and_a_changed_value_does_not(
            prefix in "[^$]{0,12}",
            suffix in "[^$]{0,12}",
            value in "[ -~]{1,40}",
            other in "[ -~]{1,40}",
        ) {
            let map = replacements(&[("x", string(&value))]);
            let expected = substitute(&string(&format!("{prefix}$(tasks.build.results.x){suffix}")), &map);
            let passed = format!("{prefix}{value}{suffix}");
            prop_assert!(matches(&expected, &string(&passed)));
            let changed = format!("{prefix}{other}{suffix}");
            prop_assert_eq!(matches(&expected, &string(&changed)), other == value);
        }

        #[test]
        fn matching_any_text_against_any_template_terminates(
            template in "[a$()x.]{0,30}",
            text in "[a$()x.]{0,30}",
        ) {
            let expected = substitute(&string(&template), &Replacements::default());
            let _ = expected.matches(&string(&text), &mut BUDGET.clone());
            // With no replacement, the template itself always matches.
            prop_assert_eq!(expected.matches(&string(&template), &mut BUDGET.clone()), Some(true));
        }
    }
}
