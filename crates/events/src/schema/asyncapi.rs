//! The AsyncAPI 3.0 document of the bus (`schemas/asyncapi.yaml`): every subject as a channel with
//! its parameters, its message (CloudEvents binary-mode headers, payload by reference to the
//! type's JSON Schema), and which service publishes and which consumes it.
//!
//! Built from the same functions and enums as the code ([`EventType`], [`Subjects`],
//! [`ConsumerSpec`]), with the default prefix. Emitted as YAML with sorted keys.

use serde_json::{Map, Value, json};

use crate::event_type::{EventType, Family};
use crate::subject::{NODE_TOKEN, Subjects};
use crate::topology::ConsumerSpec;

const TOKEN_RULE: &str = "Encoded subject token: [A-Za-z0-9-] pass through, '.' becomes '_', \
                          every other byte of the UTF-8 text becomes '~HH' (upper-case hex).";

/// A channel of the document.
struct Channel {
    id: String,
    address: String,
    parameters: &'static [&'static str],
    message: String,
    description: String,
}

/// The message id of an event type (`taskrunCreated`, `registrationReleased`...).
fn message_id(event_type: EventType) -> String {
    let mut id = event_type.family().as_str().to_owned();
    for word in event_type.transition().split('-') {
        let mut characters = word.chars();
        if let Some(first) = characters.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(characters);
        }
    }
    id
}

fn channels(subjects: &Subjects) -> Vec<Channel> {
    let prefix = subjects.prefix();
    let mut channels = Vec::new();
    for event_type in EventType::ALL {
        let family = event_type.family().as_str();
        let transition = event_type.transition();
        let message = message_id(event_type);
        if event_type.family() == Family::Trust {
            channels.push(Channel {
                id: message.clone(),
                address: format!("{prefix}.{family}.{transition}.{{trust_domain}}"),
                parameters: &["trust_domain"],
                message,
                description: format!("{event_type} events, one subject per trust domain."),
            });
        } else if event_type.family() == Family::Registration {
            channels.push(Channel {
                id: format!("{message}Workload"),
                address: format!(
                    "{prefix}.{family}.{transition}.{{cluster}}.{{namespace}}.{{name}}"
                ),
                parameters: &["cluster", "namespace", "name"],
                message: message.clone(),
                description: format!("{event_type} events of TaskRun workload entries."),
            });
            channels.push(Channel {
                id: format!("{message}Node"),
                address: format!(
                    "{prefix}.{family}.{transition}.{{cluster}}.{NODE_TOKEN}.{{node}}"
                ),
                parameters: &["cluster", "node"],
                message,
                description: format!("{event_type} events of node alias entries."),
            });
        } else {
            channels.push(Channel {
                id: message.clone(),
                address: format!(
                    "{prefix}.{family}.{transition}.{{cluster}}.{{namespace}}.{{name}}"
                ),
                parameters: &["cluster", "namespace", "name"],
                message,
                description: if event_type.family() == Family::Gate {
                    format!(
                        "{event_type} events, one subject per TaskRun or Pod the gate checked \
                         (its namespace and name)."
                    )
                } else {
                    format!("{event_type} events, one subject per TaskRun.")
                },
            });
        }
    }
    channels.push(Channel {
        id: "deadletter".into(),
        address: format!("{prefix}.deadletter.{{consumer}}"),
        parameters: &["consumer"],
        message: "deadLetter".into(),
        description: "Messages a consumer could never handle: the original headers and body, plus \
                      Countersign-Deadletter-* and Countersign-Original-* headers saying why and where from."
            .into(),
    });
    channels
}

fn parameter(name: &str) -> Value {
    let description = match name {
        "cluster" => "The cluster's name.",
        "namespace" => "The TaskRun's namespace (never starts with '_').",
        "name" => "The TaskRun's name.",
        "node" => "The node's name.",
        "consumer" => "The durable consumer's name.",
        "trust_domain" => "The SPIFFE trust domain.",
        _ => "",
    };
    json!({ "description": format!("{description} {TOKEN_RULE}") })
}

fn ce_headers(event_type: Option<EventType>) -> Value {
    let mut properties = Map::new();
    let header = |description: &str| json!({ "type": "string", "description": description });
    properties.insert(
        "ce-specversion".into(),
        json!({ "type": "string", "const": "1.0" }),
    );
    properties.insert(
        "ce-id".into(),
        header("Deterministic id (TaskRun UID or entry id and transition)."),
    );
    properties.insert(
        "ce-source".into(),
        header("URI-reference of the publisher: /countersign/<service>."),
    );
    match event_type {
        Some(event_type) => {
            properties.insert(
                "ce-type".into(),
                json!({ "type": "string", "const": event_type.as_str() }),
            );
            properties.insert(
                "ce-dataschema".into(),
                json!({ "type": "string", "const": event_type.dataschema() }),
            );
        }
        None => {
            properties.insert("ce-type".into(), header("The original event's type."));
            properties.insert(
                "ce-dataschema".into(),
                header("The original event's data schema."),
            );
        }
    }
    properties.insert(
        "ce-subject".into(),
        header("<namespace>/<name> of the TaskRun, _node/<node>, or _trust/<trust domain>."),
    );
    properties.insert(
        "ce-time".into(),
        header("RFC 3339 time the transition was observed."),
    );
    properties.insert(
        "ce-traceparent".into(),
        header("W3C traceparent (distributed-tracing extension)."),
    );
    properties.insert("ce-tracestate".into(), header("W3C tracestate."));
    properties.insert(
        "content-type".into(),
        json!({ "type": "string", "const": "application/json" }),
    );
    properties.insert(
        "Nats-Msg-Id".into(),
        header("Equal to ce-id: the stream drops duplicates."),
    );
    json!({
        "type": "object",
        "description": "CloudEvents 1.0 binary content mode: attribute values are percent-encoded \
                        (space, '\"', '%' and bytes outside printable ASCII).",
        "properties": properties,
        "required": ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time"]
    })
}

fn messages() -> Map<String, Value> {
    let mut messages = Map::new();
    for event_type in EventType::ALL {
        messages.insert(
            message_id(event_type),
            json!({
                "name": event_type.as_str(),
                "title": event_type.as_str(),
                "contentType": "application/json",
                "headers": ce_headers(Some(event_type)),
                "payload": { "$ref": format!("./{}", event_type.schema_file_name()) }
            }),
        );
    }
    let mut deadletter_headers = ce_headers(None);
    if let Some(properties) = deadletter_headers["properties"].as_object_mut() {
        for (name, description) in [
            (
                crate::deadletter::REASON,
                "Why: a decode error kind, rejected, or retries_exhausted.",
            ),
            (
                crate::deadletter::DETAIL,
                "What went wrong, for people (percent-encoded).",
            ),
            (
                crate::deadletter::CODE,
                "The handler's own code for a rejection.",
            ),
            (crate::deadletter::CONSUMER, "The consumer that gave up."),
            (
                crate::deadletter::ORIGINAL_STREAM,
                "The stream the message came from.",
            ),
            (
                crate::deadletter::ORIGINAL_SEQUENCE,
                "Its sequence in that stream.",
            ),
            (
                crate::deadletter::ORIGINAL_SUBJECT,
                "The subject it was published on.",
            ),
            (crate::deadletter::ORIGINAL_MSG_ID, "Its Nats-Msg-Id."),
            (
                crate::deadletter::DELIVERIES,
                "How many times it was delivered.",
            ),
            (
                crate::deadletter::BODY_DROPPED,
                "true when the body was too large to carry.",
            ),
        ] {
            properties.insert(
                name.into(),
                json!({ "type": "string", "description": description }),
            );
        }
        properties.insert(
            "Nats-Msg-Id".into(),
            json!({ "type": "string", "description": "<consumer>:<stream>:<sequence>" }),
        );
        if let Some(object) = deadletter_headers.as_object_mut() {
            object.insert("required".into(), json!([crate::deadletter::REASON]));
        }
    }
    messages.insert(
        "deadLetter".into(),
        json!({
            "name": "deadletter",
            "title": "Dead letter",
            "summary": "The original message, unchanged, with headers naming the reason and the origin.",
            "headers": deadletter_headers,
            "payload": {}
        }),
    );
    messages
}

/// One operation: a service sending or receiving on channels.
fn operation(service: &str, action: &str, channel: &Channel) -> (String, Value) {
    let verb = if action == "send" {
        "publishes"
    } else {
        "consumes"
    };
    let mut id = service.to_owned();
    id.push_str(if action == "send" {
        "Publishes"
    } else {
        "Consumes"
    });
    let mut characters = channel.id.chars();
    if let Some(first) = characters.next() {
        id.push(first.to_ascii_uppercase());
        id.extend(characters);
    }
    (
        id,
        json!({
            "action": action,
            "summary": format!("{service} {verb} {}", channel.address),
            "channel": { "$ref": format!("#/channels/{}", channel.id) },
            "messages": [{ "$ref": format!("#/channels/{}/messages/{}", channel.id, channel.message) }],
            "tags": [{ "name": service }],
            "x-service": service
        }),
    )
}

/// The document as a JSON value.
pub fn document() -> Value {
    let subjects = Subjects::default();
    let channels = channels(&subjects);
    let mut channel_map = Map::new();
    for channel in &channels {
        let parameters: Map<String, Value> = channel
            .parameters
            .iter()
            .map(|name| ((*name).to_owned(), parameter(name)))
            .collect();
        channel_map.insert(
            channel.id.clone(),
            json!({
                "address": channel.address,
                "description": channel.description,
                "parameters": parameters,
                "messages": {
                    channel.message.clone(): { "$ref": format!("#/components/messages/{}", channel.message) }
                }
            }),
        );
    }

    // Every durable consumer with the service that binds it (the attestor binds three).
    let consumers = [
        ("registrar", ConsumerSpec::registrar(&subjects)),
        ("attestor", ConsumerSpec::attestor(&subjects)),
        ("attestor", ConsumerSpec::attestor_backlog(&subjects)),
        ("attestor", ConsumerSpec::attestor_revocations(&subjects)),
        ("relay", ConsumerSpec::relay(&subjects)),
        ("exporter", ConsumerSpec::exporter(&subjects)),
    ];
    let mut consuming_services: Vec<&str> = consumers.iter().map(|(service, _)| *service).collect();
    consuming_services.dedup();
    let consumed_by = |event_type: EventType| -> Vec<String> {
        let mut services: Vec<String> = Vec::new();
        for (service, spec) in &consumers {
            let takes = spec.filter_subjects.iter().any(|filter| {
                filter == &subjects.events_of_type(event_type)
                    || filter == &subjects.family_events(event_type.family())
            });
            if takes && !services.iter().any(|known| known == service) {
                services.push((*service).to_owned());
            }
        }
        if event_type.family() == Family::Attestation {
            services.push("countersign-cli".into());
        }
        services
    };

    let mut operations = Map::new();
    for channel in &channels {
        if channel.id == "deadletter" {
            for service in &consuming_services {
                let (id, value) = operation(service, "send", channel);
                operations.insert(id, value);
            }
            continue;
        }
        let Some(event_type) = EventType::ALL
            .into_iter()
            .find(|event_type| message_id(*event_type) == channel.message)
        else {
            continue;
        };
        let publisher = match event_type.family() {
            Family::TaskRun => "watcher",
            Family::Registration => "registrar",
            Family::Attestation | Family::Export => "attestor",
            Family::Trust => "registrar",
            Family::Gate => "gate",
        };
        let (id, value) = operation(publisher, "send", channel);
        operations.insert(id, value);
        for service in consumed_by(event_type) {
            let (id, value) = operation(&service, "receive", channel);
            operations.insert(id, value);
        }
    }

    let streams: Vec<Value> = crate::subject::StreamKind::ALL
        .into_iter()
        .map(|kind| json!({ "name": subjects.stream_name(kind), "subjects": subjects.stream_subjects(kind) }))
        .collect();
    let durable_consumers: Vec<Value> = consumers
        .iter()
        .map(|(_, spec)| spec)
        .map(|spec| {
            json!({
                "name": spec.name,
                "stream": subjects.stream_name(spec.stream),
                "filterSubjects": spec.filter_subjects,
            })
        })
        .collect();

    super::canonical(json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Countersign event bus",
            "version": "1.0.0",
            "description": "CloudEvents 1.0 on NATS JetStream (binary content mode) between the Countersign \
                            services, and for any subscriber. Subjects start with a configurable prefix \
                            (default 'countersign'); every variable token is encoded so any Kubernetes name \
                            gives one valid, unambiguous token. Event ids are deterministic and sent as \
                            Nats-Msg-Id, so a stream drops duplicates within its window.",
            "license": { "name": "Apache-2.0" },
            "x-streams": streams,
            "x-consumers": durable_consumers
        },
        "defaultContentType": "application/json",
        "channels": channel_map,
        "operations": operations,
        "components": { "messages": messages() }
    }))
}

/// The document as YAML.
pub fn render() -> String {
    let document = document();
    let yaml = serde_saphyr::to_string(&document)
        .unwrap_or_else(|error| unreachable!("a JSON value always serializes to YAML: {error}"));
    format!("# Generated by `cargo xtask schemas` from crates/events; do not edit.\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_channel_a_publisher_and_the_right_consumers() {
        let document = document();
        let operations = document["operations"].as_object().unwrap();
        let has = |id: &str| operations.contains_key(id);
        assert!(has("watcherPublishesTaskrunCreated"));
        assert!(has("registrarConsumesTaskrunScheduled"));
        assert!(has("registrarConsumesTaskrunFinished"));
        assert!(has("registrarConsumesTaskrunDeleted"));
        assert!(!has("registrarConsumesTaskrunCreated"));
        assert!(has("attestorConsumesTaskrunStepCompleted"));
        assert!(has("attestorConsumesTaskrunFinished"));
        assert!(has("registrarPublishesRegistrationRegisteredNode"));
        assert!(has("registrarPublishesRegistrationReleasedWorkload"));
        assert!(has("attestorPublishesAttestationVerified"));
        assert!(has("relayConsumesAttestationRejected"));
        assert!(has("countersign-cliConsumesAttestationVerified"));
        assert!(has("attestorPublishesDeadletter"));
        assert!(has("attestorConsumesTrustBundleRotated"));
        assert!(has("exporterConsumesExportStored"));
        assert!(has("exporterPublishesDeadletter"));
        let durable: Vec<&str> = document["info"]["x-consumers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|consumer| consumer["name"].as_str())
            .collect();
        assert_eq!(
            durable,
            [
                "registrar",
                "attestor",
                "attestor-backlog",
                "attestor-revocations",
                "relay",
                "exporter"
            ],
            "every durable consumer, the backlog lane included"
        );
        assert_eq!(
            document["channels"]["taskrunStepCompleted"]["address"],
            "countersign.taskrun.step-completed.{cluster}.{namespace}.{name}"
        );
        assert_eq!(
            document["components"]["messages"]["taskrunCreated"]["payload"]["$ref"],
            "./dev.countersign.taskrun.created.v1.json"
        );
        for (_, operation) in operations {
            let channel = operation["channel"]["$ref"]
                .as_str()
                .unwrap()
                .trim_start_matches("#/channels/");
            assert!(document["channels"].get(channel).is_some(), "{channel}");
        }
    }

    #[test]
    fn the_yaml_parses_back_to_the_document() {
        let yaml = render();
        let parsed: Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(parsed, document());
    }
}
