//! Typed service configuration: a TOML file overlaid with `COUNTERSIGN_<SECTION>__<KEY>`
//! environment variables, read into a service's own `#[serde(deny_unknown_fields)]` structs.
//!
//! - The file path comes from `--config` or [`CONFIG_PATH_VAR`]; without one, the config is the
//!   defaults plus the environment.
//! - Environment variables come from an [`Environment`], a map built from the process environment
//!   in `main` and from literals in tests, so no test ever changes the process environment.
//!   A variable `COUNTERSIGN_NATS__URL=nats://a:4222` sets key `nats.url`: the prefix is stripped,
//!   `__` separates the levels, and each level is lower-cased (so keys are `snake_case`). Only
//!   variables with at least one `__` are read, so `COUNTERSIGN_CONFIG` and unrelated
//!   `COUNTERSIGN_*` variables of other tools never turn into keys. A value is read as a TOML value
//!   (`8080`, `true`, `["a", "b"]`, `"quoted"`) and otherwise as a plain string
//!   (`nats://a:4222`, `25s`); a string field always gets the text as written.
//!   The environment beats the file.
//! - Every error names the key path (`nats.url`, `admin.listen`), and the variable when the value
//!   came from the environment: see [`ConfigError`].
//! - The sections every service embeds as named fields ([`AdminConfig`], [`TelemetryConfig`],
//!   [`ShutdownConfig`]) are defined here with their defaults, along with [`Secret`].

mod sections;
mod tree;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use self::sections::{
    AdminConfig, LogFilter, LogFormat, Secret, ShutdownConfig, TelemetryConfig,
};
use self::tree::{EnvValue, Node, TreeError};
use crate::bounded_read::{ReadFileError, read_to_string_bounded};
use crate::nats::NatsConfig;

/// The variable that names the config file when `--config` is not given.
pub const CONFIG_PATH_VAR: &str = "COUNTERSIGN_CONFIG";

/// The prefix of every configuration variable.
pub const ENV_PREFIX: &str = "COUNTERSIGN_";

/// What separates levels in a configuration variable's name.
pub const ENV_SEPARATOR: &str = "__";

/// The largest config file read (1 MiB): a config is a few KiB, and a path that names something
/// endless (`/dev/zero`, a FIFO) must not be read until memory runs out.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// What the runtime needs to know of a service's config. A service's config struct embeds the
/// shared sections as named fields (`admin`, `telemetry`, `shutdown`, and `nats` when it talks to
/// NATS) and hands them out with [`shared_sections!`](crate::shared_sections); the loader
/// ([`load_service_config`]) checks the shared sections for every service, then runs the service's
/// own [`ServiceConfig::validate`] and [`ServiceConfig::validate_environment`].
///
/// ```
/// use countersign_runtime::config::{AdminConfig, ConfigError, ServiceConfig, ShutdownConfig, TelemetryConfig};
/// use countersign_runtime::nats::NatsConfig;
///
/// #[derive(Debug, serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct RegistrarConfig {
///     #[serde(default)]
///     admin: AdminConfig,
///     #[serde(default)]
///     telemetry: TelemetryConfig,
///     #[serde(default)]
///     shutdown: ShutdownConfig,
///     #[serde(default)]
///     nats: NatsConfig,
///     // ... the service's own sections.
/// }
///
/// impl ServiceConfig for RegistrarConfig {
///     countersign_runtime::shared_sections!(nats);
///
///     fn validate(&self) -> Result<(), ConfigError> {
///         Ok(()) // what serde cannot check of the service's own sections
///     }
/// }
/// ```
pub trait ServiceConfig: DeserializeOwned + Send + Sync + 'static {
    /// The admin server section (`[admin]`).
    fn admin(&self) -> &AdminConfig;
    /// The logging and tracing section (`[telemetry]`).
    fn telemetry(&self) -> &TelemetryConfig;
    /// The shutdown section (`[shutdown]`).
    fn shutdown(&self) -> &ShutdownConfig;
    /// The NATS connection section (`[nats]`), for a service that has one.
    fn nats(&self) -> Option<&NatsConfig> {
        None
    }

    /// Checks what serde cannot (one field against another, a non-empty list). Runs right after
    /// loading, before anything is bound; return [`ConfigError::invalid`] naming the key.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Checks what the config names outside itself: variables it reads from `env` (the
    /// environment the config was loaded with), files that must be there. Runs after
    /// [`ServiceConfig::validate`], so `--check-config` refuses them too.
    fn validate_environment(&self, env: &Environment) -> Result<(), ConfigError> {
        let _ = env;
        Ok(())
    }
}

/// The accessors of [`ServiceConfig`] for a config struct whose shared sections are the fields
/// `admin`, `telemetry` and `shutdown` (`shared_sections!()`), and `nats` too
/// (`shared_sections!(nats)`). Written inside the `impl ServiceConfig` block.
#[macro_export]
macro_rules! shared_sections {
    () => {
        fn admin(&self) -> &$crate::config::AdminConfig {
            &self.admin
        }
        fn telemetry(&self) -> &$crate::config::TelemetryConfig {
            &self.telemetry
        }
        fn shutdown(&self) -> &$crate::config::ShutdownConfig {
            &self.shutdown
        }
    };
    (nats) => {
        $crate::shared_sections!();
        fn nats(&self) -> ::core::option::Option<&$crate::nats::NatsConfig> {
            ::core::option::Option::Some(&self.nats)
        }
    };
}

/// Environment variables, as a map. `main` takes [`Environment::from_process`]; tests build one
/// from literals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    /// An empty environment.
    pub fn new() -> Environment {
        Environment::default()
    }

    /// The process environment, read once. Variables whose name or value is not UTF-8 are skipped
    /// (no configuration variable can be one).
    pub fn from_process() -> Environment {
        std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect()
    }

    /// Adds or replaces a variable.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Environment {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Every variable, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Environment {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Environment {
        Environment {
            vars: iter
                .into_iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect(),
        }
    }
}

impl From<HashMap<String, String>> for Environment {
    fn from(vars: HashMap<String, String>) -> Environment {
        vars.into_iter().collect()
    }
}

/// Why the configuration could not be loaded. Every variant about a value names its key path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read, or is larger than [`MAX_CONFIG_FILE_BYTES`].
    #[error("reading config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: ReadFileError,
    },
    /// The config file is not valid TOML.
    #[error("config file {} is not valid TOML: {source}", path.display())]
    Syntax {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A `COUNTERSIGN_*__*` variable does not name a key (an empty level, as in `A____B`), or
    /// conflicts with another variable (`A__B` and `A__B__C`).
    #[error("environment variable {var}: {problem}")]
    Variable { var: String, problem: String },
    /// A key that the service does not know (a typo, or a setting of another service).
    #[error("unknown field `{key}`{}{}", expected_list(expected), from_var(var.as_deref()))]
    UnknownKey {
        key: String,
        /// The keys that are allowed at that level.
        expected: Vec<&'static str>,
        /// The variable that set it, if it came from the environment.
        var: Option<String>,
    },
    /// A required key is absent.
    #[error("missing field `{key}`")]
    MissingKey { key: String },
    /// A key whose value is wrong: of the wrong type, out of range, not a valid URL, and so on.
    #[error("{key}: {message}{}", from_var(var.as_deref()))]
    InvalidValue {
        key: String,
        message: String,
        /// The variable that set it, if it came from the environment.
        var: Option<String>,
    },
}

/// What kind of [`ConfigError`] this is, for callers and tests that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    Read,
    Syntax,
    Variable,
    UnknownKey,
    MissingKey,
    InvalidValue,
}

impl ConfigError {
    /// An invalid value at `key`, for [`ServiceConfig::validate`].
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue {
            key: key.into(),
            message: message.into(),
            var: None,
        }
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ConfigErrorKind {
        match self {
            ConfigError::Read { .. } => ConfigErrorKind::Read,
            ConfigError::Syntax { .. } => ConfigErrorKind::Syntax,
            ConfigError::Variable { .. } => ConfigErrorKind::Variable,
            ConfigError::UnknownKey { .. } => ConfigErrorKind::UnknownKey,
            ConfigError::MissingKey { .. } => ConfigErrorKind::MissingKey,
            ConfigError::InvalidValue { .. } => ConfigErrorKind::InvalidValue,
        }
    }

    /// The key path the error is about (`nats.url`), when it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::MissingKey { key }
            | ConfigError::InvalidValue { key, .. } => Some(key),
            ConfigError::Read { .. }
            | ConfigError::Syntax { .. }
            | ConfigError::Variable { .. } => None,
        }
    }

    /// The environment variable the offending value came from, when it came from one.
    pub fn var(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { var, .. } | ConfigError::InvalidValue { var, .. } => {
                var.as_deref()
            }
            ConfigError::Variable { var, .. } => Some(var),
            ConfigError::Read { .. }
            | ConfigError::Syntax { .. }
            | ConfigError::MissingKey { .. } => None,
        }
    }
}

fn expected_list(expected: &[&str]) -> String {
    if expected.is_empty() {
        String::new()
    } else {
        format!(", expected one of: {}", expected.join(", "))
    }
}

fn from_var(var: Option<&str>) -> String {
    var.map(|var| format!(" (set by {var})"))
        .unwrap_or_default()
}

/// The config file path: `--config` if given, else [`CONFIG_PATH_VAR`] if set and not empty.
pub fn config_path(cli_path: Option<&Path>, env: &Environment) -> Option<PathBuf> {
    cli_path.map(Path::to_owned).or_else(|| {
        env.get(CONFIG_PATH_VAR)
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
    })
}

/// Loads a config: reads the file at `path` (if any), overlays `env`, and reads the result into `C`.
pub fn load_config<C: DeserializeOwned>(
    path: Option<&Path>,
    env: &Environment,
) -> Result<C, ConfigError> {
    let file = match path {
        None => toml::Table::new(),
        Some(path) => {
            let text = read_to_string_bounded(path, MAX_CONFIG_FILE_BYTES).map_err(|source| {
                ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }
            })?;
            toml::from_str(&text).map_err(|source| ConfigError::Syntax {
                path: path.to_owned(),
                source,
            })?
        }
    };
    read_config(file, env)
}

/// Loads a service config like [`load_config`], then checks it with [`validate_service_config`].
pub fn load_service_config<C: ServiceConfig>(
    path: Option<&Path>,
    env: &Environment,
) -> Result<C, ConfigError> {
    let config: C = load_config(path, env)?;
    validate_service_config(&config, env)?;
    Ok(config)
}

/// Checks a loaded service config as [`load_service_config`] does: the shared sections (the same
/// for every service: `[nats]`), then [`ServiceConfig::validate`], then
/// [`ServiceConfig::validate_environment`] with `env`.
pub fn validate_service_config<C: ServiceConfig>(
    config: &C,
    env: &Environment,
) -> Result<(), ConfigError> {
    if let Some(nats) = config.nats() {
        nats.validate("nats")?;
    }
    config.validate()?;
    config.validate_environment(env)
}

/// Reads a config from TOML text (as if it were the file) overlaid with `env`. For tests and for
/// configs embedded in another document.
pub fn parse_config<C: DeserializeOwned>(
    toml_text: &str,
    env: &Environment,
) -> Result<C, ConfigError> {
    let file = toml::from_str(toml_text).map_err(|source| ConfigError::Syntax {
        path: PathBuf::from("<inline>"),
        source,
    })?;
    read_config(file, env)
}

fn read_config<C: DeserializeOwned>(
    file: toml::Table,
    env: &Environment,
) -> Result<C, ConfigError> {
    let mut tree = Node::from_toml_table(file);
    overlay_environment(&mut tree, env)?;
    serde_path_to_error::deserialize(tree.clone()).map_err(|error| describe_error(&tree, error))
}

/// Writes every `COUNTERSIGN_<A>__<B>...` variable of `env` into `tree`.
fn overlay_environment(tree: &mut Node, env: &Environment) -> Result<(), ConfigError> {
    for (var, value) in env.iter() {
        let Some(name) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !name.contains(ENV_SEPARATOR) {
            continue;
        }
        let keys: Vec<String> = name
            .split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        if keys.iter().any(String::is_empty) {
            return Err(ConfigError::Variable {
                var: var.to_owned(),
                problem: "empty key level (`__` at the start or end, or `____`)".to_owned(),
            });
        }
        insert_env_value(tree, &keys, EnvValue::new(var.to_owned(), value.to_owned()))?;
    }
    Ok(())
}

fn insert_env_value(tree: &mut Node, keys: &[String], value: EnvValue) -> Result<(), ConfigError> {
    let conflict = |other: &str, var: &str| ConfigError::Variable {
        var: var.to_owned(),
        problem: format!("conflicts with {other}, which sets the same key or one above it"),
    };
    let mut node = tree;
    let Some((last, parents)) = keys.split_last() else {
        return Ok(());
    };
    for key in parents {
        let Node::Table(entries) = node else {
            // Unreachable: every level below is made a table before we descend into it.
            return Ok(());
        };
        let child = entries
            .entry(key.clone())
            .or_insert_with(|| Node::Table(BTreeMap::new()));
        match child {
            Node::Table(_) => {}
            Node::Env(existing) => return Err(conflict(&existing.var, &value.var)),
            // The environment beats the file: a file value here is replaced by a table.
            Node::File(_) => *child = Node::Table(BTreeMap::new()),
        }
        node = child;
    }
    let Node::Table(entries) = node else {
        return Ok(());
    };
    if let Some(other) = entries.get(last).and_then(Node::env_var) {
        return Err(conflict(other, &value.var));
    }
    entries.insert(last.clone(), Node::Env(value));
    Ok(())
}

fn describe_error(tree: &Node, error: serde_path_to_error::Error<TreeError>) -> ConfigError {
    let keys: Vec<String> = error
        .path()
        .iter()
        .map(|segment| match segment {
            serde_path_to_error::Segment::Map { key } => key.clone(),
            other => other.to_string(),
        })
        .collect();
    let var_at = |keys: &[String]| {
        let path: Vec<&str> = keys.iter().map(String::as_str).collect();
        tree.get(&path).and_then(Node::env_var).map(str::to_owned)
    };
    let joined = keys.join(".");
    match error.into_inner() {
        // The path of an unknown field already ends with the field itself.
        TreeError::UnknownField { field: _, expected } => ConfigError::UnknownKey {
            var: var_at(&keys),
            key: joined,
            expected: expected.to_vec(),
        },
        // The path of a missing field is that of the table it is missing from.
        TreeError::MissingField { field } => ConfigError::MissingKey {
            key: if joined.is_empty() {
                field.to_owned()
            } else {
                format!("{joined}.{field}")
            },
        },
        TreeError::Invalid(message) => ConfigError::InvalidValue {
            var: var_at(&keys),
            key: if joined.is_empty() {
                "(root)".to_owned()
            } else {
                joined
            },
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TestConfig {
        #[serde(default)]
        admin: AdminConfig,
        #[serde(default)]
        telemetry: TelemetryConfig,
        #[serde(default)]
        shutdown: ShutdownConfig,
        #[serde(default)]
        nats: NatsSection,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NatsSection {
        #[serde(default = "default_url")]
        url: url::Url,
        #[serde(default)]
        password: Option<Secret<String>>,
        #[serde(default)]
        max_ack_pending: u32,
        #[serde(default)]
        tls: TlsSection,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TlsSection {
        #[serde(default)]
        required: bool,
    }

    fn default_url() -> url::Url {
        url::Url::parse("nats://localhost:4222").expect("a valid literal URL")
    }

    impl Default for NatsSection {
        fn default() -> Self {
            NatsSection {
                url: default_url(),
                password: None,
                max_ack_pending: 0,
                tls: TlsSection::default(),
            }
        }
    }

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<TestConfig, ConfigError> {
        parse_config(text, &env.iter().copied().collect())
    }

    #[test]
    fn defaults_are_applied_to_an_empty_config() {
        let config = parse("", &[]).expect("an empty config is valid");
        assert_eq!(
            config.admin.listen,
            "0.0.0.0:9090".parse::<SocketAddr>().expect("literal")
        );
        assert_eq!(config.telemetry.log_format, LogFormat::Text);
        assert_eq!(config.telemetry.log_filter.as_str(), "info");
        assert_eq!(config.telemetry.otlp_endpoint, None);
        assert_eq!(config.telemetry.service_name, None);
        assert_eq!(config.shutdown.grace_period, Duration::from_secs(25));
        assert_eq!(config.nats.max_ack_pending, 0);
    }

    #[test]
    fn file_values_are_read() {
        let config = parse(
            r#"
            [admin]
            listen = "127.0.0.1:9999"
            [telemetry]
            log_format = "json"
            log_filter = "countersign=debug,info"
            otlp_endpoint = "http://collector:4317"
            service_name = "registrar-a"
            [shutdown]
            grace_period = "1m 5s"
            "#,
            &[],
        )
        .expect("a valid config");
        assert_eq!(config.admin.listen.port(), 9999);
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
        assert_eq!(
            config.telemetry.log_filter.as_str(),
            "countersign=debug,info"
        );
        assert_eq!(
            config
                .telemetry
                .otlp_endpoint
                .as_ref()
                .map(url::Url::as_str),
            Some("http://collector:4317/")
        );
        assert_eq!(
            config.telemetry.service_name.as_deref(),
            Some("registrar-a")
        );
        assert_eq!(config.shutdown.grace_period, Duration::from_secs(65));
    }

    #[test]
    fn unknown_key_in_a_section_is_rejected_naming_the_full_key() {
        let error = parse("[nats]\nurll = \"nats://x:4222\"\n", &[]).expect_err("a typo must fail");
        assert_eq!(error.kind(), ConfigErrorKind::UnknownKey);
        assert_eq!(error.key(), Some("nats.urll"));
        assert!(
            matches!(&error, ConfigError::UnknownKey { expected, .. } if expected.contains(&"url"))
        );
    }

    #[test]
    fn unknown_section_is_rejected() {
        let error = parse("[natz]\nurl = \"nats://x:4222\"\n", &[]).expect_err("unknown section");
        assert_eq!(error.kind(), ConfigErrorKind::UnknownKey);
        assert_eq!(error.key(), Some("natz"));
    }

    #[test]
    fn unknown_key_from_the_environment_names_the_variable() {
        let error = parse("", &[("COUNTERSIGN_NATS__URLL", "nats://x:4222")])
            .expect_err("a typo must fail");
        assert_eq!(error.kind(), ConfigErrorKind::UnknownKey);
        assert_eq!(error.key(), Some("nats.urll"));
        assert_eq!(error.var(), Some("COUNTERSIGN_NATS__URLL"));
    }

    #[test]
    fn nested_unknown_key_is_named_in_full() {
        let error = parse("[nats.tls]\nrequird = true\n", &[]).expect_err("a typo must fail");
        assert_eq!(error.key(), Some("nats.tls.requird"));
    }

    #[test]
    fn environment_beats_the_file() {
        let config = parse(
            "[nats]\nurl = \"nats://file:4222\"\nmax_ack_pending = 5\n",
            &[
                ("COUNTERSIGN_NATS__URL", "nats://env:4222"),
                ("COUNTERSIGN_NATS__MAX_ACK_PENDING", "7"),
            ],
        )
        .expect("valid");
        assert_eq!(config.nats.url.host_str(), Some("env"));
        assert_eq!(config.nats.max_ack_pending, 7);
    }

    #[test]
    fn environment_sets_nested_keys_and_typed_scalars() {
        let config = parse(
            "",
            &[
                ("COUNTERSIGN_NATS__TLS__REQUIRED", "true"),
                ("COUNTERSIGN_SHUTDOWN__GRACE_PERIOD", "3s"),
                ("COUNTERSIGN_TELEMETRY__LOG_FORMAT", "json"),
                ("COUNTERSIGN_ADMIN__LISTEN", "127.0.0.1:0"),
            ],
        )
        .expect("valid");
        assert!(config.nats.tls.required);
        assert_eq!(config.shutdown.grace_period, Duration::from_secs(3));
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
        assert_eq!(config.admin.listen.port(), 0);
    }

    #[test]
    fn string_fields_get_the_text_as_written() {
        let numeric = parse("", &[("COUNTERSIGN_NATS__PASSWORD", "0123456")]).expect("valid");
        assert_eq!(
            numeric.nats.password.as_ref().map(|p| p.expose().as_str()),
            Some("0123456")
        );
        let integer = parse("", &[("COUNTERSIGN_NATS__PASSWORD", "123456")]).expect("valid");
        assert_eq!(
            integer.nats.password.as_ref().map(|p| p.expose().as_str()),
            Some("123456")
        );
        let quoted = parse("", &[("COUNTERSIGN_NATS__PASSWORD", "\"a b\"")]).expect("valid");
        assert_eq!(
            quoted.nats.password.as_ref().map(|p| p.expose().as_str()),
            Some("a b")
        );
    }

    #[test]
    fn unrelated_variables_are_ignored() {
        let config = parse(
            "",
            &[
                ("COUNTERSIGN_CONFIG", "/etc/countersign.toml"),
                ("COUNTERSIGN_PEERS_CACHE", "/tmp/peers"),
                ("HOME", "/root"),
                ("NATS__URL", "nope"),
            ],
        );
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let error = parse("[nats]\nurl = \"not a url\"\n", &[]).expect_err("invalid URL");
        assert_eq!(error.kind(), ConfigErrorKind::InvalidValue);
        assert_eq!(error.key(), Some("nats.url"));
        assert_eq!(error.var(), None);

        let error =
            parse("", &[("COUNTERSIGN_ADMIN__LISTEN", "localhost")]).expect_err("not an address");
        assert_eq!(error.kind(), ConfigErrorKind::InvalidValue);
        assert_eq!(error.key(), Some("admin.listen"));
        assert_eq!(error.var(), Some("COUNTERSIGN_ADMIN__LISTEN"));

        let error =
            parse("", &[("COUNTERSIGN_NATS__MAX_ACK_PENDING", "-1")]).expect_err("negative u32");
        assert_eq!(error.key(), Some("nats.max_ack_pending"));

        let error =
            parse("[shutdown]\ngrace_period = \"soon\"\n", &[]).expect_err("not a duration");
        assert_eq!(error.key(), Some("shutdown.grace_period"));

        let error = parse("[telemetry]\nlog_format = \"xml\"\n", &[]).expect_err("unknown format");
        assert_eq!(error.key(), Some("telemetry.log_format"));

        let error = parse("[telemetry]\nlog_filter = \"info,[[\"\n", &[]).expect_err("bad filter");
        assert_eq!(error.key(), Some("telemetry.log_filter"));
    }

    #[test]
    fn missing_required_key_is_named() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)] // Read only through `Debug`.
        struct Required {
            nats: RequiredNats,
        }
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)] // Read only through `Debug`.
        struct RequiredNats {
            url: String,
        }
        let error =
            parse_config::<Required>("[nats]\n", &Environment::new()).expect_err("missing url");
        assert_eq!(error.kind(), ConfigErrorKind::MissingKey);
        assert_eq!(error.key(), Some("nats.url"));
    }

    #[test]
    fn malformed_variable_names_are_rejected() {
        let error = parse("", &[("COUNTERSIGN_NATS____URL", "x")]).expect_err("empty level");
        assert_eq!(error.kind(), ConfigErrorKind::Variable);
        assert_eq!(error.var(), Some("COUNTERSIGN_NATS____URL"));

        let error = parse(
            "",
            &[
                ("COUNTERSIGN_NATS__TLS", "x"),
                ("COUNTERSIGN_NATS__TLS__REQUIRED", "true"),
            ],
        )
        .expect_err("conflicting variables");
        assert_eq!(error.kind(), ConfigErrorKind::Variable);
    }

    #[test]
    fn file_errors_have_their_own_kinds() {
        let missing = load_config::<TestConfig>(
            Some(Path::new("/nonexistent/countersign.toml")),
            &Environment::new(),
        )
        .expect_err("no such file");
        assert_eq!(missing.kind(), ConfigErrorKind::Read);

        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[nats\n").expect("writing the file");
        let syntax =
            load_config::<TestConfig>(Some(&path), &Environment::new()).expect_err("bad TOML");
        assert_eq!(syntax.kind(), ConfigErrorKind::Syntax);
    }

    #[test]
    fn config_path_prefers_the_command_line() {
        let env = Environment::new().with(CONFIG_PATH_VAR, "/from/env.toml");
        assert_eq!(
            config_path(Some(Path::new("/from/cli.toml")), &env),
            Some(PathBuf::from("/from/cli.toml"))
        );
        assert_eq!(
            config_path(None, &env),
            Some(PathBuf::from("/from/env.toml"))
        );
        assert_eq!(config_path(None, &Environment::new()), None);
        assert_eq!(
            config_path(None, &Environment::new().with(CONFIG_PATH_VAR, "")),
            None
        );
    }
}
