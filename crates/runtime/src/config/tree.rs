//! The merged configuration tree (file values overlaid with environment values) and the serde
//! `Deserializer` that reads a service's typed config out of it.
//!
//! Why a tree of our own rather than one `toml::Value`: a value that came from the environment keeps
//! its raw text next to its TOML reading, so `COUNTERSIGN_NATS__PASSWORD=123456` still fills a
//! `String` field (as `"123456"`, not as a type error) and `COUNTERSIGN_X__VERSION=1.10` stays
//! `"1.10"`, while a `u16` or `bool` field gets the parsed number or boolean. And because the errors
//! are our own type, an unknown or missing field is reported with its name as data, which the loader
//! joins with the path from `serde_path_to_error` to name the full key.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::value::{MapAccessDeserializer, MapDeserializer};
use serde::de::{self, Deserializer, IntoDeserializer, Visitor};

/// One node of the merged configuration.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// A table; its entries may come from the file, the environment, or both.
    Table(BTreeMap<String, Node>),
    /// A non-table value from the config file (arrays are kept whole).
    File(toml::Value),
    /// A value from an environment variable.
    Env(EnvValue),
}

/// A value from an environment variable: its raw text, how TOML reads it, and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct EnvValue {
    pub(crate) var: String,
    pub(crate) raw: String,
    pub(crate) parsed: toml::Value,
}

impl EnvValue {
    /// Reads `raw` as a TOML value (`8080`, `true`, `"quoted"`, `["a", "b"]`), or as a plain
    /// string when it is not one (`nats://localhost:4222`, `25s`).
    pub(crate) fn new(var: String, raw: String) -> EnvValue {
        let parsed = parse_toml_value(&raw).unwrap_or_else(|| toml::Value::String(raw.clone()));
        EnvValue { var, raw, parsed }
    }

    /// The text a string-typed field gets: a quoted TOML string without its quotes, else the raw text.
    fn as_text(&self) -> String {
        match &self.parsed {
            toml::Value::String(text) => text.clone(),
            _ => self.raw.clone(),
        }
    }
}

fn parse_toml_value(raw: &str) -> Option<toml::Value> {
    if raw.contains(['\n', '\r']) {
        return None;
    }
    let mut table: toml::Table = toml::from_str(&format!("value = {raw}")).ok()?;
    if table.len() != 1 {
        return None;
    }
    table.remove("value")
}

impl Node {
    /// Converts a parsed TOML file into a tree.
    pub(crate) fn from_toml_table(table: toml::Table) -> Node {
        Node::Table(
            table
                .into_iter()
                .map(|(key, value)| {
                    let node = match value {
                        toml::Value::Table(inner) => Node::from_toml_table(inner),
                        other => Node::File(other),
                    };
                    (key, node)
                })
                .collect(),
        )
    }

    /// The node at `path` (keys from the root), if there is one.
    pub(crate) fn get(&self, path: &[&str]) -> Option<&Node> {
        let Some((first, rest)) = path.split_first() else {
            return Some(self);
        };
        match self {
            Node::Table(entries) => entries.get(*first)?.get(rest),
            Node::File(_) | Node::Env(_) => None,
        }
    }

    /// The environment variable that set this node, or that set any value inside it.
    pub(crate) fn env_var(&self) -> Option<&str> {
        match self {
            Node::Env(value) => Some(&value.var),
            Node::File(_) => None,
            Node::Table(entries) => entries.values().find_map(Node::env_var),
        }
    }
}

/// Why reading the typed config out of the tree failed (the path is tracked outside).
#[derive(Debug)]
pub(crate) enum TreeError {
    UnknownField {
        field: String,
        expected: &'static [&'static str],
    },
    MissingField {
        field: &'static str,
    },
    Invalid(String),
}

impl TreeError {
    fn from_toml(error: toml::de::Error) -> TreeError {
        TreeError::Invalid(error.message().to_owned())
    }
}

impl fmt::Display for TreeError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TreeError::UnknownField { field, .. } => write!(formatter, "unknown field `{field}`"),
            TreeError::MissingField { field } => write!(formatter, "missing field `{field}`"),
            TreeError::Invalid(message) => formatter.write_str(message),
        }
    }
}

impl std::error::Error for TreeError {}

impl de::Error for TreeError {
    fn custom<T: fmt::Display>(message: T) -> TreeError {
        TreeError::Invalid(message.to_string())
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> TreeError {
        TreeError::UnknownField {
            field: field.to_owned(),
            expected,
        }
    }

    fn missing_field(field: &'static str) -> TreeError {
        TreeError::MissingField { field }
    }
}

// === impl Deserializer for Node ===

impl Node {
    fn visit_table<'de, V: Visitor<'de>>(
        entries: BTreeMap<String, Node>,
        visitor: V,
    ) -> Result<V::Value, TreeError> {
        visitor.visit_map(MapDeserializer::new(entries.into_iter()))
    }
}

impl<'de> IntoDeserializer<'de, TreeError> for Node {
    type Deserializer = Node;

    fn into_deserializer(self) -> Node {
        self
    }
}

impl<'de> Deserializer<'de> for Node {
    type Error = TreeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        match self {
            Node::Table(entries) => Node::visit_table(entries, visitor),
            Node::File(value) => value.deserialize_any(visitor).map_err(TreeError::from_toml),
            Node::Env(value) => value
                .parsed
                .deserialize_any(visitor)
                .map_err(TreeError::from_toml),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        match self {
            Node::Env(value) => visitor.visit_string(value.as_text()),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        // TOML has no null: a value that is present is `Some`.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TreeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TreeError> {
        match self {
            // `{ variant = { ... } }`: a one-entry table names the variant.
            Node::Table(entries) => visitor.visit_enum(MapAccessDeserializer::new(
                MapDeserializer::new(entries.into_iter()),
            )),
            Node::File(value) => value
                .deserialize_enum(name, variants, visitor)
                .map_err(TreeError::from_toml),
            Node::Env(value) => visitor.visit_enum(value.as_text().into_deserializer()),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit unit_struct
        seq tuple tuple_struct map struct identifier ignored_any
    }
}
