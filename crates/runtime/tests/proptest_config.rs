//! Property tests of config loading: whatever the file and the environment hold, loading returns
//! a config or an error (never a panic), and an error about a value names a key.

use std::collections::BTreeMap;

use countersign_runtime::config::{
    AdminConfig, ConfigError, ConfigErrorKind, Environment, ServiceConfig, ShutdownConfig,
    TelemetryConfig, parse_config, validate_service_config,
};
use countersign_runtime::nats::{NatsConfig, parse_server_list};
use proptest::prelude::*;
use serde::Deserialize;

/// A service config with every shared section and a few typed keys of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Read only through `Debug`.
struct Config {
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    shutdown: ShutdownConfig,
    #[serde(default)]
    nats: NatsConfig,
    #[serde(default)]
    own: Own,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Read only through `Debug`.
struct Own {
    #[serde(default)]
    count: u32,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    table: BTreeMap<String, String>,
}

impl ServiceConfig for Config {
    countersign_runtime::shared_sections!(nats);
}

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

/// Keys that exist, keys that do not, and variables that are not configuration.
fn variable_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "COUNTERSIGN_NATS__URL",
            "COUNTERSIGN_NATS__USER",
            "COUNTERSIGN_NATS__PASSWORD",
            "COUNTERSIGN_ADMIN__LISTEN",
            "COUNTERSIGN_SHUTDOWN__GRACE_PERIOD",
            "COUNTERSIGN_TELEMETRY__LOG_FILTER",
            "COUNTERSIGN_OWN__COUNT",
            "COUNTERSIGN_OWN__NAMES",
            "COUNTERSIGN_OWN__TABLE__A",
            "COUNTERSIGN_OWN",
            "COUNTERSIGN____",
            "COUNTERSIGN_CONFIG",
        ])
        .prop_map(str::to_owned),
        "COUNTERSIGN_[A-Z_]{0,20}",
    ]
}

fn toml_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,120}",
        (
            prop::sample::select(vec!["nats", "admin", "own", "shutdown", "telemetry", "x"]),
            prop::sample::select(vec![
                "url",
                "listen",
                "count",
                "names",
                "grace_period",
                "log_filter",
                "y"
            ]),
            prop_oneof![
                "\"[ -~]{0,30}\"",
                "-?[0-9]{1,12}",
                Just("[\"a\", 1]".to_owned()),
                Just("true".to_owned()),
                Just("{ a = \"b\" }".to_owned()),
            ],
        )
            .prop_map(|(section, key, value)| format!("[{section}]\n{key} = {value}\n")),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn loading_never_panics_and_value_errors_name_a_key(
        text in toml_text(),
        variables in prop::collection::vec((variable_name(), "\\PC{0,30}"), 0..5),
    ) {
        let env: Environment = variables.into_iter().collect();
        let loaded: Result<Config, ConfigError> = parse_config(&text, &env)
            .and_then(|config: Config| validate_service_config(&config, &env).map(|()| config));
        if let Err(error) = loaded {
            match error.kind() {
                ConfigErrorKind::InvalidValue
                | ConfigErrorKind::UnknownKey
                | ConfigErrorKind::MissingKey => {
                    prop_assert!(error.key().is_some_and(|key| !key.is_empty()), "{error:?}");
                }
                _ => {}
            }
        }
    }

    #[test]
    fn nats_server_lists_parse_or_fail_without_panicking(text in "\\PC{0,80}") {
        if let Ok(servers) = parse_server_list(&text) {
            prop_assert!(!servers.is_empty());
            prop_assert!(servers.iter().all(|server| !server.host().is_empty()));
        }
    }

    #[test]
    fn a_list_of_server_urls_parses_to_each_of_them(
        hosts in prop::collection::vec(("[a-z][a-z0-9-]{0,15}", 1u16..), 1..4),
    ) {
        let text = hosts
            .iter()
            .map(|(host, port)| format!("nats://{host}:{port}"))
            .collect::<Vec<_>>()
            .join(", ");
        let servers = parse_server_list(&text).expect("valid URLs");
        prop_assert_eq!(servers.len(), hosts.len());
        for (server, (host, port)) in servers.iter().zip(&hosts) {
            prop_assert_eq!(server.host(), host.as_str());
            prop_assert_eq!(server.port(), *port);
        }
    }
}
