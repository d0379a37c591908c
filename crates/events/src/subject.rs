//! NATS subjects, stream names and KV bucket names, built by functions only.
//!
//! Layout (`{p}` is the configurable prefix, default `countersign`):
//!
//! | subject | published by |
//! |---|---|
//! | `{p}.taskrun.{created\|scheduled\|step-completed\|finished\|deleted}.{cluster}.{namespace}.{name}` | watcher |
//! | `{p}.registration.{registered\|released}.{cluster}.{namespace}.{name}` (workload entries) | registrar |
//! | `{p}.registration.{registered\|released}.{cluster}._node.{node}` (node alias entries) | registrar |
//! | `{p}.attestation.{verified\|rejected\|revoked}.{cluster}.{namespace}.{name}` | attestor |
//! | `{p}.export.stored.{cluster}.{namespace}.{name}` | attestor |
//! | `{p}.gate.{allowed\|denied\|warned}.{cluster}.{namespace}.{name}` (admission decisions, TaskRuns and Pods) | gate |
//! | `{p}.deadletter.{consumer}` | every consumer |
//!
//! Every variable token is encoded by [`encode_token`]: `[A-Za-z0-9-]` pass through, `.` becomes
//! `_`, and every other byte of the UTF-8 text becomes `~HH` (upper-case hex). So any Kubernetes
//! name, dots included, yields exactly one valid token, and distinct names yield distinct tokens.
//! An encoded namespace never starts with `_` (that would need a name starting with `.`, which
//! the builders refuse), so `_node` cannot collide with a namespace.

use std::fmt;

use crate::data::TaskRunRef;
use crate::event_type::{EventType, Family};

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "countersign";

/// The namespace-position token of node alias registration subjects.
pub const NODE_TOKEN: &str = "_node";

/// The longest text one subject token may encode, in bytes: the longest Kubernetes name (an
/// RFC 1123 subdomain, 253). A token is at most three times as long once encoded, so a subject
/// of a prefix and three such tokens stays far below nats-server's 4 KiB control line, past
/// which the server closes the connection (and every other publish on it fails meanwhile).
pub const MAX_TOKEN_TEXT_BYTES: usize = 253;

/// Why a subject, stream or bucket name could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// A name that must go into a subject token is empty.
    #[error("the {field} is empty")]
    Empty { field: &'static str },
    /// A name that must go into a subject token is longer than [`MAX_TOKEN_TEXT_BYTES`].
    #[error(
        "the {field} is {length} bytes long; at most {MAX_TOKEN_TEXT_BYTES} fit in a subject token"
    )]
    TooLong { field: &'static str, length: usize },
    /// A namespace starts with `.`, so its token would start with `_` and could be taken for
    /// the `_node` marker.
    #[error("the namespace {namespace:?} starts with '.'")]
    ReservedNamespace { namespace: String },
    /// The prefix is not one token of `[A-Za-z0-9_-]`.
    #[error("invalid subject prefix {prefix:?}: one token of [A-Za-z0-9_-] expected")]
    InvalidPrefix { prefix: String },
    /// A KV bucket name is not of `[A-Za-z0-9_-]`.
    #[error("invalid bucket name {name:?}: [A-Za-z0-9_-] expected")]
    InvalidBucketName { name: String },
    /// A registration entry lacks the field its subject is built from.
    #[error("the registration entry has no {field}")]
    MissingField { field: &'static str },
    /// A token is not the encoding of any text.
    #[error("invalid subject token {token:?}")]
    InvalidToken { token: String },
    /// A subject does not follow Countersign's layout.
    #[error("{subject:?} is not a Countersign subject")]
    Unrecognized { subject: String },
    /// An attestation filter was asked for a type that is not an attestation.
    #[error("{event_type} is not an attestation type")]
    NotAnAttestationType { event_type: EventType },
}

// === token encoding ===

/// Encodes one subject token. `[A-Za-z0-9-]` pass through, `.` becomes `_`, every other byte
/// becomes `~HH`. Errors on empty input and on input longer than [`MAX_TOKEN_TEXT_BYTES`]
/// (`field` names it in the error).
pub fn encode_token(value: &str, field: &'static str) -> Result<String, SubjectError> {
    if value.is_empty() {
        return Err(SubjectError::Empty { field });
    }
    if value.len() > MAX_TOKEN_TEXT_BYTES {
        return Err(SubjectError::TooLong {
            field,
            length: value.len(),
        });
    }
    let mut token = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' => token.push(char::from(byte)),
            b'.' => token.push('_'),
            other => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                token.push('~');
                token.push(char::from(HEX[usize::from(other >> 4)]));
                token.push(char::from(HEX[usize::from(other & 0x0f)]));
            }
        }
    }
    Ok(token)
}

/// Decodes a token made by [`encode_token`]. Only the canonical encoding is accepted (upper-case
/// hex, and `~HH` only for bytes that do not pass through), so decoding is the exact inverse.
pub fn decode_token(token: &str) -> Result<String, SubjectError> {
    let invalid = || SubjectError::InvalidToken {
        token: token.to_owned(),
    };
    if token.is_empty() {
        return Err(invalid());
    }
    let bytes = token.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            byte @ (b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-') => decoded.push(byte),
            b'_' => decoded.push(b'.'),
            b'~' => {
                let high = bytes
                    .get(index + 1)
                    .copied()
                    .and_then(upper_hex_value)
                    .ok_or_else(invalid)?;
                let low = bytes
                    .get(index + 2)
                    .copied()
                    .and_then(upper_hex_value)
                    .ok_or_else(invalid)?;
                let byte = (high << 4) | low;
                if matches!(byte, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.') {
                    return Err(invalid());
                }
                decoded.push(byte);
                index += 2;
            }
            _ => return Err(invalid()),
        }
        index += 1;
    }
    String::from_utf8(decoded).map_err(|_| invalid())
}

fn upper_hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn namespace_token(namespace: &str) -> Result<String, SubjectError> {
    if namespace.starts_with('.') {
        return Err(SubjectError::ReservedNamespace {
            namespace: namespace.to_owned(),
        });
    }
    encode_token(namespace, "namespace")
}

/// Whether `token` is a valid NATS subject token for a literal subject (no wildcards, no
/// whitespace, no dots, not empty).
pub fn is_valid_literal_token(token: &str) -> bool {
    !token.is_empty()
        && token != "*"
        && token != ">"
        && token
            .bytes()
            .all(|byte| byte > b' ' && byte != b'.' && byte != 0x7f && byte.is_ascii())
}

// === the streams ===

/// The five streams of the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    /// `{PREFIX}_TASKRUNS`: `{p}.taskrun.>`.
    TaskRuns,
    /// `{PREFIX}_REGISTRATIONS`: `{p}.registration.>`.
    Registrations,
    /// `{PREFIX}_ATTESTATIONS`: `{p}.attestation.>`, `{p}.export.>` and `{p}.gate.>` (the
    /// verdicts, their exports, and the gate's decisions that enforce them: one audit trail).
    Attestations,
    /// `{PREFIX}_DEADLETTER`: `{p}.deadletter.>`.
    DeadLetter,
    /// `{PREFIX}_TRUST`: `{p}.trust.>`.
    Trust,
}

impl StreamKind {
    /// Every stream, in a stable order.
    pub const ALL: [StreamKind; 5] = [
        StreamKind::TaskRuns,
        StreamKind::Registrations,
        StreamKind::Attestations,
        StreamKind::DeadLetter,
        StreamKind::Trust,
    ];

    /// The stream that holds the events of a family.
    pub const fn of_family(family: Family) -> StreamKind {
        match family {
            Family::TaskRun => StreamKind::TaskRuns,
            Family::Registration => StreamKind::Registrations,
            Family::Attestation | Family::Export | Family::Gate => StreamKind::Attestations,
            Family::Trust => StreamKind::Trust,
        }
    }

    const fn suffix(self) -> &'static str {
        match self {
            StreamKind::TaskRuns => "TASKRUNS",
            StreamKind::Registrations => "REGISTRATIONS",
            StreamKind::Attestations => "ATTESTATIONS",
            StreamKind::DeadLetter => "DEADLETTER",
            StreamKind::Trust => "TRUST",
        }
    }

    const fn root(self) -> &'static str {
        match self {
            StreamKind::TaskRuns => "taskrun",
            StreamKind::Registrations => "registration",
            StreamKind::Attestations => "attestation",
            StreamKind::DeadLetter => "deadletter",
            StreamKind::Trust => "trust",
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

// === subjects ===

/// Builds every subject, stream name and bucket name from the configured prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Subjects {
        Subjects {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

/// Which registration subject an entry goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationAction {
    /// `registered`
    Registered,
    /// `released`
    Released,
}

impl RegistrationAction {
    fn event_type(self) -> EventType {
        match self {
            RegistrationAction::Registered => EventType::EntryRegistered,
            RegistrationAction::Released => EventType::EntryReleased,
        }
    }
}

/// A subject taken apart by [`Subjects::parse`], its tokens decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedSubject {
    /// A TaskRun lifecycle, workload registration or attestation subject.
    TaskRun {
        event_type: EventType,
        cluster: String,
        namespace: String,
        name: String,
    },
    /// A node alias registration subject.
    Node {
        event_type: EventType,
        cluster: String,
        node: String,
    },
    /// A dead-letter subject.
    DeadLetter { consumer: String },
    /// A trust bundle subject.
    Trust {
        event_type: EventType,
        trust_domain: String,
    },
}

impl Subjects {
    /// Subjects under `prefix`, which must be one token of `[A-Za-z0-9_-]`.
    pub fn new(prefix: &str) -> Result<Subjects, SubjectError> {
        let valid = !prefix.is_empty()
            && prefix
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
        if !valid {
            return Err(SubjectError::InvalidPrefix {
                prefix: prefix.to_owned(),
            });
        }
        Ok(Subjects {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The name of a stream: `{PREFIX}_{KIND}` (prefix upper-cased).
    pub fn stream_name(&self, kind: StreamKind) -> String {
        format!("{}_{}", self.prefix.to_ascii_uppercase(), kind.suffix())
    }

    /// The subjects a stream captures: `{p}.{root}.>` of each family it holds (the attestations
    /// stream also holds `{p}.export.>` and `{p}.gate.>`, the gate's decisions).
    pub fn stream_subjects(&self, kind: StreamKind) -> Vec<String> {
        let mut subjects = vec![format!("{}.{}.>", self.prefix, kind.root())];
        if kind == StreamKind::Attestations {
            subjects.push(self.family_events(Family::Export));
            subjects.push(self.family_events(Family::Gate));
        }
        subjects
    }

    /// The subject of a gate decision about an object: `{p}.gate.{decision}.{cluster}.{namespace}.{name}`.
    pub fn for_gate_decision(
        &self,
        event_type: EventType,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> Result<String, SubjectError> {
        Ok(format!(
            "{}.{}.{}.{}.{}.{}",
            self.prefix,
            event_type.family().as_str(),
            event_type.transition(),
            encode_token(cluster, "cluster")?,
            namespace_token(namespace)?,
            encode_token(name, "name")?,
        ))
    }

    /// The name of a KV bucket: `{PREFIX}_{NAME}` (both upper-cased). `name` is `[A-Za-z0-9_-]`.
    pub fn kv_bucket_name(&self, name: &str) -> Result<String, SubjectError> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
        if !valid {
            return Err(SubjectError::InvalidBucketName {
                name: name.to_owned(),
            });
        }
        Ok(format!(
            "{}_{}",
            self.prefix.to_ascii_uppercase(),
            name.to_ascii_uppercase()
        ))
    }

    /// The subject of an event about a TaskRun: `{p}.{family}.{transition}.{cluster}.{namespace}.{name}`.
    /// Used for lifecycle events, workload registration events and attestations.
    pub fn for_taskrun(
        &self,
        event_type: EventType,
        taskrun: &TaskRunRef,
    ) -> Result<String, SubjectError> {
        Ok(format!(
            "{}.{}.{}.{}.{}.{}",
            self.prefix,
            event_type.family().as_str(),
            event_type.transition(),
            encode_token(&taskrun.cluster, "cluster")?,
            namespace_token(&taskrun.namespace)?,
            encode_token(&taskrun.name, "name")?,
        ))
    }

    /// The subject of a node alias registration event: `{p}.registration.{action}.{cluster}._node.{node}`.
    pub fn for_node(
        &self,
        action: RegistrationAction,
        cluster: &str,
        node: &str,
    ) -> Result<String, SubjectError> {
        Ok(format!(
            "{}.registration.{}.{}.{NODE_TOKEN}.{}",
            self.prefix,
            action.event_type().transition(),
            encode_token(cluster, "cluster")?,
            encode_token(node, "node name")?,
        ))
    }

    /// The dead-letter subject of a consumer: `{p}.deadletter.{consumer}`.
    pub fn deadletter(&self, consumer: &str) -> Result<String, SubjectError> {
        Ok(format!(
            "{}.deadletter.{}",
            self.prefix,
            encode_token(consumer, "consumer name")?
        ))
    }

    // --- filters (with wildcards) ---

    /// Every event of a family: `{p}.{family}.>`.
    pub fn family_events(&self, family: Family) -> String {
        format!("{}.{}.>", self.prefix, family.as_str())
    }

    /// Every event of one type, any cluster and name: `{p}.{family}.{transition}.>`.
    pub fn events_of_type(&self, event_type: EventType) -> String {
        format!(
            "{}.{}.{}.>",
            self.prefix,
            event_type.family().as_str(),
            event_type.transition()
        )
    }

    /// Every TaskRun lifecycle event in a namespace, any cluster: `{p}.taskrun.*.*.{namespace}.*`.
    pub fn taskrun_events_in_namespace(&self, namespace: &str) -> Result<String, SubjectError> {
        Ok(format!(
            "{}.taskrun.*.*.{}.*",
            self.prefix,
            namespace_token(namespace)?
        ))
    }

    /// Every attestation (verified or rejected) in a namespace, any cluster: `{p}.attestation.*.*.{namespace}.*`.
    pub fn attestations_in_namespace(&self, namespace: &str) -> Result<String, SubjectError> {
        Ok(format!(
            "{}.attestation.*.*.{}.*",
            self.prefix,
            namespace_token(namespace)?
        ))
    }

    /// Every event of one type about TaskRuns in a namespace, any cluster and name:
    /// `{p}.{family}.{transition}.*.{namespace}.*`. Disjoint from the same filter for another
    /// type or namespace, so one consumer can take several (a kind and a namespace at once).
    pub fn events_of_type_in_namespace(
        &self,
        event_type: EventType,
        namespace: &str,
    ) -> Result<String, SubjectError> {
        Ok(format!(
            "{}.{}.{}.*.{}.*",
            self.prefix,
            event_type.family().as_str(),
            event_type.transition(),
            namespace_token(namespace)?
        ))
    }

    /// Every attestation of one verdict (`verified` or `rejected`) in a namespace, any cluster:
    /// `{p}.attestation.{verdict}.*.{namespace}.*`. See [`Subjects::events_of_type_in_namespace`].
    pub fn attestations_of_type_in_namespace(
        &self,
        verdict_type: EventType,
        namespace: &str,
    ) -> Result<String, SubjectError> {
        if verdict_type.family() != Family::Attestation {
            return Err(SubjectError::NotAnAttestationType {
                event_type: verdict_type,
            });
        }
        self.events_of_type_in_namespace(verdict_type, namespace)
    }

    /// Every event of a family about one TaskRun: `{p}.{family}.*.{cluster}.{namespace}.{name}`.
    pub fn family_events_for_taskrun(
        &self,
        family: Family,
        taskrun: &TaskRunRef,
    ) -> Result<String, SubjectError> {
        Ok(format!(
            "{}.{}.*.{}.{}.{}",
            self.prefix,
            family.as_str(),
            encode_token(&taskrun.cluster, "cluster")?,
            namespace_token(&taskrun.namespace)?,
            encode_token(&taskrun.name, "name")?,
        ))
    }

    /// Every node alias registration event: `{p}.registration.*.*._node.*`.
    pub fn node_registrations(&self) -> String {
        format!("{}.registration.*.*.{NODE_TOKEN}.*", self.prefix)
    }

    /// Every dead letter: `{p}.deadletter.>`.
    pub fn all_deadletters(&self) -> String {
        format!("{}.deadletter.>", self.prefix)
    }

    /// The subject of a trust bundle event: `{p}.trust.{transition}.{trust domain}`.
    pub fn for_trust_domain(
        &self,
        event_type: EventType,
        trust_domain: &str,
    ) -> Result<String, SubjectError> {
        Ok(format!(
            "{}.{}.{}.{}",
            self.prefix,
            Family::Trust.as_str(),
            event_type.transition(),
            encode_token(trust_domain, "trust_domain")?
        ))
    }

    /// Takes a concrete subject apart, decoding its tokens.
    pub fn parse(&self, subject: &str) -> Result<ParsedSubject, SubjectError> {
        let unrecognized = || SubjectError::Unrecognized {
            subject: subject.to_owned(),
        };
        let rest = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .ok_or_else(unrecognized)?;
        let tokens: Vec<&str> = rest.split('.').collect();
        match tokens.as_slice() {
            ["deadletter", consumer] => Ok(ParsedSubject::DeadLetter {
                consumer: decode_token(consumer)?,
            }),
            ["trust", transition, trust_domain] => Ok(ParsedSubject::Trust {
                event_type: EventType::from_transition(Family::Trust, transition)
                    .ok_or_else(unrecognized)?,
                trust_domain: decode_token(trust_domain)?,
            }),
            [family, transition, cluster, namespace, name] => {
                let family = Family::ALL
                    .into_iter()
                    .filter(|candidate| *candidate != Family::Trust)
                    .find(|candidate| candidate.as_str() == *family)
                    .ok_or_else(unrecognized)?;
                let event_type =
                    EventType::from_transition(family, transition).ok_or_else(unrecognized)?;
                let cluster = decode_token(cluster)?;
                if *namespace == NODE_TOKEN {
                    if family != Family::Registration {
                        return Err(unrecognized());
                    }
                    return Ok(ParsedSubject::Node {
                        event_type,
                        cluster,
                        node: decode_token(name)?,
                    });
                }
                if namespace.starts_with('_') {
                    return Err(unrecognized());
                }
                Ok(ParsedSubject::TaskRun {
                    event_type,
                    cluster,
                    namespace: decode_token(namespace)?,
                    name: decode_token(name)?,
                })
            }
            _ => Err(unrecognized()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taskrun(cluster: &str, namespace: &str, name: &str) -> TaskRunRef {
        TaskRunRef {
            cluster: cluster.into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: "0d3a6c9e-1111-2222-3333-444455556666".into(),
        }
    }

    /// Every string of length 0..=3 over an alphabet with the interesting characters
    /// (pass-through, `.`, `_`, `~`, `%`, space, NATS wildcards, multi-byte UTF-8).
    fn exhaustive_inputs() -> Vec<String> {
        let alphabet = [
            'a',
            'Z',
            '0',
            '-',
            '.',
            '_',
            '~',
            '*',
            '>',
            ' ',
            '%',
            'é',
            '\u{1F600}',
            '\u{0}',
        ];
        let mut inputs = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..3 {
            let mut next = Vec::new();
            for prefix in &frontier {
                for character in alphabet {
                    let mut text = prefix.clone();
                    text.push(character);
                    next.push(text);
                }
            }
            inputs.extend(next.iter().cloned());
            frontier = next;
        }
        inputs
    }

    #[test]
    fn encoding_is_injective_valid_and_inverted_by_decoding_exhaustively() {
        let mut tokens = std::collections::HashMap::new();
        for input in exhaustive_inputs() {
            match encode_token(&input, "name") {
                Err(SubjectError::Empty { .. }) => assert!(input.is_empty()),
                Err(other) => panic!("unexpected error {other:?}"),
                Ok(token) => {
                    assert!(
                        is_valid_literal_token(&token),
                        "{input:?} gave invalid token {token:?}"
                    );
                    assert_eq!(decode_token(&token).as_deref(), Ok(input.as_str()));
                    if let Some(previous) = tokens.insert(token.clone(), input.clone()) {
                        panic!("{previous:?} and {input:?} both encode to {token:?}");
                    }
                }
            }
        }
        assert!(tokens.len() > 2000);
    }

    #[test]
    fn encoding_of_every_single_byte_and_kubernetes_names() {
        for code_point in 1u32..0x300 {
            let Some(character) = char::from_u32(code_point) else {
                continue;
            };
            let text = character.to_string();
            let token = encode_token(&text, "name").expect("non-empty");
            assert!(is_valid_literal_token(&token));
            assert_eq!(decode_token(&token).expect("canonical"), text);
        }
        assert_eq!(
            encode_token("build-and-push", "name").unwrap(),
            "build-and-push"
        );
        assert_eq!(
            encode_token("my.dotted.name", "name").unwrap(),
            "my_dotted_name"
        );
        assert_eq!(encode_token("a_b", "name").unwrap(), "a~5Fb");
        assert_eq!(encode_token("a b", "name").unwrap(), "a~20b");
        assert_eq!(encode_token("é", "name").unwrap(), "~C3~A9");
    }

    #[test]
    fn non_canonical_tokens_are_rejected() {
        for token in [
            "", "a~41", "~2E", "~c3~a9", "a~2", "a~", "a.b", "a*b", "~ZZ", "~FF",
        ] {
            assert!(decode_token(token).is_err(), "{token:?} should not decode");
        }
    }

    #[test]
    fn subjects_follow_the_layout() {
        let subjects = Subjects::default();
        let run = taskrun("prod", "team-a", "build.v1");
        assert_eq!(
            subjects
                .for_taskrun(EventType::TaskRunCreated, &run)
                .unwrap(),
            "countersign.taskrun.created.prod.team-a.build_v1"
        );
        assert_eq!(
            subjects
                .for_taskrun(EventType::StepCompleted, &run)
                .unwrap(),
            "countersign.taskrun.step-completed.prod.team-a.build_v1"
        );
        assert_eq!(
            subjects
                .for_taskrun(EventType::AttestationRejected, &run)
                .unwrap(),
            "countersign.attestation.rejected.prod.team-a.build_v1"
        );
        assert_eq!(
            subjects
                .for_node(RegistrationAction::Released, "prod", "node-1.example")
                .unwrap(),
            "countersign.registration.released.prod._node.node-1_example"
        );
        assert_eq!(
            subjects.deadletter("registrar").unwrap(),
            "countersign.deadletter.registrar"
        );
        assert_eq!(
            subjects.stream_name(StreamKind::TaskRuns),
            "COUNTERSIGN_TASKRUNS"
        );
        assert_eq!(
            subjects.stream_subjects(StreamKind::DeadLetter),
            vec!["countersign.deadletter.>"]
        );
        assert_eq!(
            subjects.kv_bucket_name("attestations").unwrap(),
            "COUNTERSIGN_ATTESTATIONS"
        );
        assert!(subjects.kv_bucket_name("a.b").is_err());
    }

    /// Whether a NATS filter (with `*` and `>`) matches a concrete subject.
    fn filter_matches(filter: &str, subject: &str) -> bool {
        let mut subject_tokens = subject.split('.');
        for token in filter.split('.') {
            match (token, subject_tokens.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (literal, Some(other)) if literal == other => {}
                _ => return false,
            }
        }
        subject_tokens.next().is_none()
    }

    #[test]
    fn one_type_in_one_namespace() {
        let subjects = Subjects::new("cs-test").unwrap();
        let verified_in_ci = subjects
            .attestations_of_type_in_namespace(EventType::AttestationVerified, "ci")
            .unwrap();
        assert_eq!(verified_in_ci, "cs-test.attestation.verified.*.ci.*");
        assert_eq!(
            subjects
                .events_of_type_in_namespace(EventType::TaskRunFinished, "ci")
                .unwrap(),
            "cs-test.taskrun.finished.*.ci.*"
        );
        let subject = |event_type, namespace: &str, name: &str| {
            subjects
                .for_taskrun(event_type, &taskrun("prod.eu", namespace, name))
                .unwrap()
        };
        assert!(filter_matches(
            &verified_in_ci,
            &subject(EventType::AttestationVerified, "ci", "build.1")
        ));
        for other in [
            subject(EventType::AttestationRejected, "ci", "build.1"),
            subject(EventType::AttestationVerified, "cd", "build.1"),
            subject(EventType::TaskRunFinished, "ci", "build.1"),
        ] {
            assert!(!filter_matches(&verified_in_ci, &other), "{other}");
        }
        assert!(matches!(
            subjects.attestations_of_type_in_namespace(EventType::TaskRunFinished, "ci"),
            Err(SubjectError::NotAnAttestationType { .. })
        ));
        assert!(
            subjects
                .attestations_of_type_in_namespace(EventType::AttestationVerified, "")
                .is_err()
        );
    }

    #[test]
    fn filters_use_wildcards() {
        let subjects = Subjects::new("cs-test").unwrap();
        assert_eq!(
            subjects.taskrun_events_in_namespace("ci").unwrap(),
            "cs-test.taskrun.*.*.ci.*"
        );
        assert_eq!(
            subjects.attestations_in_namespace("ci").unwrap(),
            "cs-test.attestation.*.*.ci.*"
        );
        assert_eq!(
            subjects.events_of_type(EventType::TaskRunFinished),
            "cs-test.taskrun.finished.>"
        );
        assert_eq!(
            subjects.family_events(Family::Registration),
            "cs-test.registration.>"
        );
        assert_eq!(
            subjects.node_registrations(),
            "cs-test.registration.*.*._node.*"
        );
        assert_eq!(
            subjects
                .family_events_for_taskrun(Family::TaskRun, &taskrun("c", "ns", "n"))
                .unwrap(),
            "cs-test.taskrun.*.c.ns.n"
        );
    }

    #[test]
    fn bad_names_are_errors() {
        let subjects = Subjects::default();
        assert!(matches!(
            subjects.for_taskrun(EventType::TaskRunCreated, &taskrun("c", "", "n")),
            Err(SubjectError::Empty { field: "namespace" })
        ));
        assert!(matches!(
            subjects.for_taskrun(EventType::TaskRunCreated, &taskrun("c", ".node", "n")),
            Err(SubjectError::ReservedNamespace { .. })
        ));
        let longest = "a".repeat(MAX_TOKEN_TEXT_BYTES);
        assert!(
            subjects
                .for_taskrun(EventType::TaskRunCreated, &taskrun("c", "ns", &longest))
                .is_ok()
        );
        let too_long = "a".repeat(MAX_TOKEN_TEXT_BYTES + 1);
        assert!(matches!(
            subjects.for_taskrun(EventType::TaskRunCreated, &taskrun("c", "ns", &too_long)),
            Err(SubjectError::TooLong { field: "name", .. })
        ));
        assert!(matches!(
            encode_token(&"~".repeat(4096), "uid"),
            Err(SubjectError::TooLong { field: "uid", .. })
        ));
        for prefix in ["", "a.b", "a*", "a b", "a>"] {
            assert!(matches!(
                Subjects::new(prefix),
                Err(SubjectError::InvalidPrefix { .. })
            ));
        }
    }

    #[test]
    fn parse_inverts_the_builders() {
        let subjects = Subjects::default();
        let run = taskrun("prod cluster", "team-a", "build.v1_é");
        for event_type in EventType::ALL
            .into_iter()
            .filter(|event_type| event_type.family() != Family::Trust)
        {
            let subject = subjects.for_taskrun(event_type, &run).unwrap();
            assert_eq!(
                subjects.parse(&subject).unwrap(),
                ParsedSubject::TaskRun {
                    event_type,
                    cluster: run.cluster.clone(),
                    namespace: run.namespace.clone(),
                    name: run.name.clone(),
                }
            );
        }
        let node = subjects
            .for_node(RegistrationAction::Registered, "prod", "n.1")
            .unwrap();
        assert_eq!(
            subjects.parse(&node).unwrap(),
            ParsedSubject::Node {
                event_type: EventType::EntryRegistered,
                cluster: "prod".into(),
                node: "n.1".into()
            }
        );
        let trust = subjects
            .for_trust_domain(EventType::TrustBundleRotated, "example.org")
            .unwrap();
        assert_eq!(trust, "countersign.trust.bundle-rotated.example_org");
        assert_eq!(
            subjects.parse(&trust).unwrap(),
            ParsedSubject::Trust {
                event_type: EventType::TrustBundleRotated,
                trust_domain: "example.org".into()
            }
        );
        assert_eq!(
            subjects.parse("countersign.deadletter.attestor").unwrap(),
            ParsedSubject::DeadLetter {
                consumer: "attestor".into()
            }
        );
        for bad in [
            "other.taskrun.created.c.n.x",
            "countersign.taskrun.exploded.c.n.x",
            "countersign.taskrun.created.c._node.x",
            "countersign.taskrun.created.c.n",
            "countersign.taskrun.created.c.n.x~",
        ] {
            assert!(subjects.parse(bad).is_err(), "{bad} should not parse");
        }
    }
}
