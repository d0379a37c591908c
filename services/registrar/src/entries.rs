//! What the registrar registers: the workload entry of a TaskRun pod and the node alias entry of
//! its node, built from a `scheduled` event and the configuration, and checked so that bad input
//! is refused (poison) before anything is written.
//!
//! | | workload entry | node alias entry |
//! |---|---|---|
//! | id | `<prefix>pod.<pod uid>` | `<prefix>node.<node name>` |
//! | SPIFFE ID | `spiffe://<td>/ns/<namespace>/taskrun/<name>` | `spiffe://<td><node alias prefix><node>` |
//! | parent | the node alias | `spiffe://<td>/spire/server` |
//! | selectors | `[entries] workload_selectors` | `[entries] node_alias_selectors` |
//! | expiry | now + timeout + margin | latest workload expiry + headroom |
//! | hint | `[entries] hint` | `[entries] hint` |
//!
//! The SPIFFE ID is computed here from the TaskRun's namespace and name, never taken from the
//! event: an event whose `spiffeId` differs is refused, so nobody who can publish on the bus can
//! have an arbitrary identity registered.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use countersign_events::data::TaskRunScheduled;
use countersign_identity::spiffe_id::{
    NodeAliasPrefix, SpiffeId, TrustDomain, node_alias_spiffe_id, spire_server_spiffe_id,
    taskrun_spiffe_id,
};
use countersign_runtime::config::ConfigError;
use countersign_spire_api::{Entry, Selector};

use crate::config::{RegistrarConfig, is_entry_id_byte, parse_templates};
use crate::state::{NodeAliasRegistration, PodRegistration};
use crate::template::{Placeholder, Scope, Template};

/// SPIRE's limit on entry ids.
pub const MAX_ENTRY_ID_LEN: usize = 255;

/// The id infix of workload entries.
const POD_INFIX: &str = "pod.";

/// The id infix of node alias entries.
const NODE_INFIX: &str = "node.";

/// Why an event cannot be registered, ever: its dead letter carries [`InvalidEvent::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    /// The TaskRun's namespace or name does not make a valid SPIFFE ID.
    #[error("the TaskRun {namespace}/{name} has no valid SPIFFE ID: {reason}")]
    TaskRunName {
        namespace: String,
        name: String,
        reason: String,
    },
    /// The event's SPIFFE ID is not the one the TaskRun's namespace and name give.
    #[error("the event names SPIFFE ID {in_event:?}, but the TaskRun's is {expected:?}")]
    SpiffeIdMismatch { in_event: String, expected: String },
    /// A UID or name cannot be part of an entry id or state key.
    #[error(
        "the {what} {value:?} cannot be part of an entry id ([A-Za-z0-9._-], at most {MAX_ENTRY_ID_LEN} in all)"
    )]
    Identifier { what: &'static str, value: String },
    /// The node name does not make a valid node alias SPIFFE ID.
    #[error("the node {node:?} has no valid node alias SPIFFE ID: {reason}")]
    NodeName { node: String, reason: String },
    /// A rendered selector is not `type:value` with both parts non-empty.
    #[error(
        "the selector template {template:?} rendered {rendered:?}, which is not a valid selector: {reason}"
    )]
    Selector {
        template: String,
        rendered: String,
        reason: String,
    },
    /// The expiry does not fit SPIRE's field.
    #[error("the entry's expiry is out of range")]
    Expiry,
    /// A registration read back from the state does not make an entry (it was not written by
    /// this version, or by hand).
    #[error("the stored registration of entry {entry_id} is unusable: {reason}")]
    StoredRecord { entry_id: String, reason: String },
}

impl InvalidEvent {
    /// The dead-letter code.
    pub fn code(&self) -> &'static str {
        match self {
            InvalidEvent::TaskRunName { .. } => "invalid_taskrun_name",
            InvalidEvent::SpiffeIdMismatch { .. } => "spiffe_id_mismatch",
            InvalidEvent::Identifier { .. } => "invalid_identifier",
            InvalidEvent::NodeName { .. } => "invalid_node_name",
            InvalidEvent::Selector { .. } => "invalid_selector",
            InvalidEvent::Expiry => "invalid_expiry",
            InvalidEvent::StoredRecord { .. } => "invalid_stored_record",
        }
    }
}

/// An entry id of ours, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedEntryId {
    /// `<prefix>pod.<pod uid>`.
    Workload { pod_uid: String },
    /// `<prefix>node.<node name>`.
    NodeAlias { node_name: String },
    /// Our prefix, but neither form (made by hand, or by another version).
    Other,
}

/// Builds the entries from events and records, and names them.
#[derive(Debug, Clone)]
pub struct EntryPlanner {
    trust_domain: TrustDomain,
    node_alias_prefix: NodeAliasPrefix,
    id_prefix: String,
    hint: String,
    agent_namespace: String,
    workload_selectors: Vec<Template>,
    node_alias_selectors: Vec<Template>,
    x509_svid_ttl: Option<Duration>,
    default_timeout: Duration,
    margin: Duration,
    node_alias_headroom: Duration,
}

impl EntryPlanner {
    /// The planner of a (validated) configuration.
    pub fn from_config(config: &RegistrarConfig) -> Result<EntryPlanner, ConfigError> {
        Ok(EntryPlanner {
            trust_domain: config.spire.trust_domain().into_trust_domain(),
            node_alias_prefix: config
                .spire
                .node_alias_prefix()
                .map_err(|error| ConfigError::invalid(error.key, error.message))?,
            id_prefix: config.entries.id_prefix.clone(),
            hint: config.entries.hint.clone(),
            agent_namespace: config.entries.agent_namespace.clone(),
            workload_selectors: parse_templates(
                "entries.workload_selectors",
                &config.entries.workload_selectors,
                Scope::Workload,
            )?,
            node_alias_selectors: parse_templates(
                "entries.node_alias_selectors",
                &config.entries.node_alias_selectors,
                Scope::Node,
            )?,
            x509_svid_ttl: config.entries.x509_svid_ttl,
            default_timeout: config.expiry.default_timeout,
            margin: config.expiry.margin,
            node_alias_headroom: config.node_alias.expiry_headroom,
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The id prefix.
    pub fn id_prefix(&self) -> &str {
        &self.id_prefix
    }

    /// The hint every entry carries.
    pub fn hint(&self) -> &str {
        &self.hint
    }

    /// `<prefix>pod.<pod uid>`.
    pub fn workload_entry_id(&self, pod_uid: &str) -> Result<String, InvalidEvent> {
        self.entry_id(POD_INFIX, "pod UID", pod_uid)
    }

    /// `<prefix>node.<node name>`.
    pub fn node_alias_entry_id(&self, node_name: &str) -> Result<String, InvalidEvent> {
        self.entry_id(NODE_INFIX, "node name", node_name)
    }

    fn entry_id(
        &self,
        infix: &str,
        what: &'static str,
        value: &str,
    ) -> Result<String, InvalidEvent> {
        let id = format!("{}{infix}{value}", self.id_prefix);
        let valid = !value.is_empty()
            && !value.starts_with('.')
            && !value.ends_with('.')
            && id.len() <= MAX_ENTRY_ID_LEN
            && value.bytes().all(is_entry_id_byte);
        if valid {
            Ok(id)
        } else {
            Err(InvalidEvent::Identifier {
                what,
                value: value.to_owned(),
            })
        }
    }

    /// Whether an entry id is ours, and what it is.
    pub fn classify(&self, entry_id: &str) -> Option<OwnedEntryId> {
        let rest = entry_id.strip_prefix(&self.id_prefix)?;
        Some(if let Some(pod_uid) = rest.strip_prefix(POD_INFIX) {
            OwnedEntryId::Workload {
                pod_uid: pod_uid.to_owned(),
            }
        } else if let Some(node_name) = rest.strip_prefix(NODE_INFIX) {
            OwnedEntryId::NodeAlias {
                node_name: node_name.to_owned(),
            }
        } else {
            OwnedEntryId::Other
        })
    }

    /// When a workload entry registered at `now` expires: now + the TaskRun's timeout (the
    /// default when it has none, or `0`) + the margin.
    pub fn workload_expiry(
        &self,
        timeout_seconds: Option<u64>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let timeout = match timeout_seconds {
            Some(seconds) if seconds > 0 => Duration::from_secs(seconds),
            _ => self.default_timeout,
        };
        let lifetime = chrono::Duration::from_std(timeout.checked_add(self.margin)?).ok()?;
        now.checked_add_signed(lifetime)
    }

    /// When a node alias that must outlive a workload entry expiring at `needed` should expire.
    pub fn node_alias_expiry(&self, needed: DateTime<Utc>) -> Option<DateTime<Utc>> {
        needed.checked_add_signed(chrono::Duration::from_std(self.node_alias_headroom).ok()?)
    }

    /// The pod's registration, as the state records it: everything needed to create (and
    /// re-create) its workload entry. Checks the event.
    pub fn plan_pod(
        &self,
        scheduled: &TaskRunScheduled,
        now: DateTime<Utc>,
    ) -> Result<PodRegistration, InvalidEvent> {
        let taskrun = &scheduled.taskrun;
        let spiffe_id = taskrun_spiffe_id(&self.trust_domain, &taskrun.namespace, &taskrun.name)
            .map_err(|error| InvalidEvent::TaskRunName {
                namespace: taskrun.namespace.clone(),
                name: taskrun.name.clone(),
                reason: error.to_string(),
            })?;
        if scheduled.spiffe_id != spiffe_id.to_string() {
            return Err(InvalidEvent::SpiffeIdMismatch {
                in_event: scheduled.spiffe_id.clone(),
                expected: spiffe_id.to_string(),
            });
        }
        check_key_part("TaskRun UID", &taskrun.uid)?;
        let entry_id = self.workload_entry_id(&scheduled.pod.uid)?;
        self.node_alias_entry_id(&scheduled.node_name)?;
        let parent_id = self.node_alias_id(&scheduled.node_name)?;
        let value = |placeholder: Placeholder| -> Option<&str> {
            Some(match placeholder {
                Placeholder::TrustDomain => self.trust_domain.as_str(),
                Placeholder::Cluster => &taskrun.cluster,
                Placeholder::Namespace => &taskrun.namespace,
                Placeholder::TaskRunName => &taskrun.name,
                Placeholder::TaskRunUid => &taskrun.uid,
                Placeholder::PodUid => &scheduled.pod.uid,
                Placeholder::PodName => &scheduled.pod.name,
                Placeholder::ServiceAccount => &scheduled.service_account,
                Placeholder::NodeName => &scheduled.node_name,
                Placeholder::AgentNamespace => &self.agent_namespace,
            })
        };
        let selectors = render_selectors(&self.workload_selectors, value)?;
        let expires_at = self
            .workload_expiry(scheduled.timeout_seconds, now)
            .ok_or(InvalidEvent::Expiry)?;
        Ok(PodRegistration {
            pod_uid: scheduled.pod.uid.clone(),
            pod_name: scheduled.pod.name.clone(),
            node_name: scheduled.node_name.clone(),
            entry_id,
            spiffe_id: spiffe_id.to_string(),
            parent_id: parent_id.to_string(),
            selectors: selectors.iter().map(ToString::to_string).collect(),
            expires_at,
            scheduled_at: now,
            registered: false,
        })
    }

    /// The node alias a workload entry expiring at `needed` requires.
    pub fn plan_node_alias(
        &self,
        cluster: &str,
        node_name: &str,
        needed: DateTime<Utc>,
    ) -> Result<NodeAliasRegistration, InvalidEvent> {
        let entry_id = self.node_alias_entry_id(node_name)?;
        let spiffe_id = self.node_alias_id(node_name)?;
        let value = |placeholder: Placeholder| -> Option<&str> {
            match placeholder {
                Placeholder::TrustDomain => Some(self.trust_domain.as_str()),
                Placeholder::Cluster => Some(cluster),
                Placeholder::NodeName => Some(node_name),
                Placeholder::AgentNamespace => Some(&self.agent_namespace),
                // Refused in node templates at start-up.
                _ => None,
            }
        };
        let selectors = render_selectors(&self.node_alias_selectors, value)?;
        let expires_at = self.node_alias_expiry(needed).ok_or(InvalidEvent::Expiry)?;
        Ok(NodeAliasRegistration {
            node_name: node_name.to_owned(),
            cluster: cluster.to_owned(),
            entry_id,
            spiffe_id: spiffe_id.to_string(),
            parent_id: spire_server_spiffe_id(&self.trust_domain).to_string(),
            selectors: selectors.iter().map(ToString::to_string).collect(),
            expires_at,
        })
    }

    fn node_alias_id(&self, node_name: &str) -> Result<SpiffeId, InvalidEvent> {
        node_alias_spiffe_id(&self.trust_domain, &self.node_alias_prefix, node_name).map_err(
            |error| InvalidEvent::NodeName {
                node: node_name.to_owned(),
                reason: error.to_string(),
            },
        )
    }

    /// The SPIRE entry of a pod's registration.
    pub fn workload_entry(&self, pod: &PodRegistration) -> Result<Entry, InvalidEvent> {
        let mut entry = self.entry(
            &pod.entry_id,
            &pod.spiffe_id,
            &pod.parent_id,
            &pod.selectors,
            pod.expires_at,
        )?;
        entry.x509_svid_ttl = self.x509_svid_ttl;
        Ok(entry)
    }

    /// The SPIRE entry of a node alias registration.
    pub fn node_alias_entry(&self, alias: &NodeAliasRegistration) -> Result<Entry, InvalidEvent> {
        self.entry(
            &alias.entry_id,
            &alias.spiffe_id,
            &alias.parent_id,
            &alias.selectors,
            alias.expires_at,
        )
    }

    fn entry(
        &self,
        id: &str,
        spiffe_id: &str,
        parent_id: &str,
        selectors: &[String],
        expires_at: DateTime<Utc>,
    ) -> Result<Entry, InvalidEvent> {
        let unusable = |reason: String| InvalidEvent::StoredRecord {
            entry_id: id.to_owned(),
            reason,
        };
        let parse_id = |text: &str| {
            SpiffeId::new(text).map_err(|error| unusable(format!("{text:?}: {error}")))
        };
        let selectors = selectors
            .iter()
            .map(|text| {
                text.parse::<Selector>()
                    .map_err(|error| unusable(format!("{text:?}: {error}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut entry =
            Entry::new(parse_id(spiffe_id)?, parse_id(parent_id)?, selectors).with_id(id);
        entry.hint = Some(self.hint.clone());
        entry.expires_at = Some(SystemTime::from(expires_at));
        Ok(entry)
    }
}

/// Renders selector templates and parses each result as a selector.
fn render_selectors<'a>(
    templates: &[Template],
    value: impl Fn(Placeholder) -> Option<&'a str> + Copy,
) -> Result<Vec<Selector>, InvalidEvent> {
    let mut selectors: Vec<Selector> = Vec::with_capacity(templates.len());
    for template in templates {
        if let Some(empty) = template
            .placeholders()
            .find(|placeholder| value(*placeholder).is_none_or(str::is_empty))
        {
            return Err(InvalidEvent::Selector {
                template: template.to_string(),
                rendered: template.render(value),
                reason: format!("{{{}}} is empty", empty.name()),
            });
        }
        let rendered = template.render(value);
        let selector = rendered
            .parse::<Selector>()
            .map_err(|error| InvalidEvent::Selector {
                template: template.to_string(),
                rendered: rendered.clone(),
                reason: error.to_string(),
            })?;
        if !selectors.contains(&selector) {
            selectors.push(selector);
        }
    }
    Ok(selectors)
}

/// Checks a value that becomes part of a KV key.
pub(crate) fn check_key_part(what: &'static str, value: &str) -> Result<(), InvalidEvent> {
    let valid = !value.is_empty()
        && value.len() <= MAX_ENTRY_ID_LEN
        && !value.starts_with('.')
        && !value.ends_with('.')
        && value.bytes().all(is_entry_id_byte);
    if valid {
        Ok(())
    } else {
        Err(InvalidEvent::Identifier {
            what,
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use countersign_events::data::{PodRef, TaskRunRef};
    use countersign_runtime::config::{Environment, parse_config};

    use super::*;

    fn planner(toml: &str) -> EntryPlanner {
        let config: RegistrarConfig = parse_config(toml, &Environment::new()).unwrap();
        EntryPlanner::from_config(&config).unwrap()
    }

    fn scheduled() -> TaskRunScheduled {
        TaskRunScheduled {
            taskrun: TaskRunRef {
                cluster: "prod".into(),
                namespace: "default".into(),
                name: "build-x7k2p".into(),
                uid: "0b1c2d3e-aaaa-bbbb-cccc-000000000001".into(),
            },
            taskrun_created_at: now(),
            pod: PodRef {
                name: "build-x7k2p-pod".into(),
                uid: "7c9e6679-7425-40de-944b-e07fc1f90ae7".into(),
            },
            node_name: "kind-worker".into(),
            service_account: "default".into(),
            spiffe_id: "spiffe://example.org/ns/default/taskrun/build-x7k2p".into(),
            timeout_seconds: Some(1800),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 8, 20, 10, 0, 0).unwrap()
    }

    #[test]
    fn the_default_plan_is_tektons() {
        let planner = planner("");
        let pod = planner.plan_pod(&scheduled(), now()).unwrap();
        assert_eq!(
            pod.entry_id,
            "countersign.pod.7c9e6679-7425-40de-944b-e07fc1f90ae7"
        );
        assert_eq!(
            pod.spiffe_id,
            "spiffe://example.org/ns/default/taskrun/build-x7k2p"
        );
        assert_eq!(
            pod.parent_id,
            "spiffe://example.org/tekton-node/kind-worker"
        );
        assert_eq!(
            pod.selectors,
            [
                "k8s:pod-uid:7c9e6679-7425-40de-944b-e07fc1f90ae7",
                "k8s:pod-name:build-x7k2p-pod"
            ]
        );
        // 30 min timeout + 10 min margin.
        assert_eq!(pod.expires_at, now() + chrono::Duration::minutes(40));

        let alias = planner
            .plan_node_alias("prod", "kind-worker", pod.expires_at)
            .unwrap();
        assert_eq!(alias.entry_id, "countersign.node.kind-worker");
        assert_eq!(alias.spiffe_id, pod.parent_id);
        assert_eq!(alias.parent_id, "spiffe://example.org/spire/server");
        assert_eq!(
            alias.selectors,
            [
                "k8s_psat:agent_ns:spire",
                "k8s_psat:agent_node_name:kind-worker"
            ]
        );
        // The alias outlives the workload by the headroom (1 h).
        assert_eq!(
            alias.expires_at,
            pod.expires_at + chrono::Duration::hours(1)
        );

        let entry = planner.workload_entry(&pod).unwrap();
        assert_eq!(entry.id, pod.entry_id);
        assert_eq!(entry.hint.as_deref(), Some("countersign"));
        assert_eq!(entry.selectors.len(), 2);
        assert_eq!(entry.expires_at, Some(SystemTime::from(pod.expires_at)));
    }

    #[test]
    fn a_missing_or_zero_timeout_uses_the_default() {
        let planner = planner("[expiry]\ndefault_timeout = \"2h\"\nmargin = \"5m\"\n");
        let expected = now() + chrono::Duration::minutes(125);
        assert_eq!(planner.workload_expiry(None, now()), Some(expected));
        assert_eq!(planner.workload_expiry(Some(0), now()), Some(expected));
        assert_eq!(
            planner.workload_expiry(Some(60), now()),
            Some(now() + chrono::Duration::minutes(6))
        );
    }

    #[test]
    fn templates_render_the_events_values() {
        let planner = planner(
            "[entries]\nworkload_selectors = [\"unix:uid:1000\", \"unix:path:/pods/{pod_uid}/countersign-signer\", \"k8s:sa:{service_account}\"]\n\
             node_alias_selectors = [\"k8s_psat:cluster:{cluster}\", \"k8s_psat:agent_node_name:{node_name}\"]\n",
        );
        let pod = planner.plan_pod(&scheduled(), now()).unwrap();
        assert_eq!(
            pod.selectors,
            [
                "unix:uid:1000",
                "unix:path:/pods/7c9e6679-7425-40de-944b-e07fc1f90ae7/countersign-signer",
                "k8s:sa:default"
            ]
        );
        let alias = planner
            .plan_node_alias("prod", "kind-worker", pod.expires_at)
            .unwrap();
        assert_eq!(
            alias.selectors,
            [
                "k8s_psat:cluster:prod",
                "k8s_psat:agent_node_name:kind-worker"
            ]
        );
    }

    #[test]
    fn bad_events_are_refused_with_their_own_code() {
        let planner = planner("");
        let mut event = scheduled();
        event.spiffe_id = "spiffe://example.org/countersign/attestor".into();
        assert_eq!(
            planner.plan_pod(&event, now()).unwrap_err().code(),
            "spiffe_id_mismatch"
        );

        let mut event = scheduled();
        event.taskrun.name = "a/b".into();
        assert_eq!(
            planner.plan_pod(&event, now()).unwrap_err().code(),
            "invalid_taskrun_name"
        );

        let mut event = scheduled();
        event.pod.uid = "not a uid".into();
        assert_eq!(
            planner.plan_pod(&event, now()).unwrap_err().code(),
            "invalid_identifier"
        );

        let mut event = scheduled();
        event.node_name = "node?1".into();
        assert_eq!(
            planner.plan_pod(&event, now()).unwrap_err().code(),
            "invalid_identifier"
        );

        let planner =
            self::planner("[entries]\nworkload_selectors = [\"k8s:sa:{service_account}\"]\n");
        let mut event = scheduled();
        event.service_account = String::new();
        assert_eq!(
            planner.plan_pod(&event, now()).unwrap_err().code(),
            "invalid_selector"
        );
    }

    #[test]
    fn ids_are_classified_by_prefix_and_form() {
        let planner = planner("");
        assert_eq!(
            planner.classify("countersign.pod.abc"),
            Some(OwnedEntryId::Workload {
                pod_uid: "abc".into()
            })
        );
        assert_eq!(
            planner.classify("countersign.node.kind-worker"),
            Some(OwnedEntryId::NodeAlias {
                node_name: "kind-worker".into()
            })
        );
        assert_eq!(
            planner.classify("countersign.by-hand"),
            Some(OwnedEntryId::Other)
        );
        assert_eq!(planner.classify("scm.0b1c2d3e"), None);
        assert_eq!(planner.classify("0b1c2d3e-aaaa"), None);
    }
}
