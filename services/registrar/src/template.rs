//! Selector templates: any text with `{placeholder}`s, such as `k8s:pod-uid:{pod_uid}` or
//! `unix:path:/pods/{pod_uid}/countersign-signer`. `{{` and `}}` stand for literal braces.
//!
//! Templates are parsed once at start-up, where an unknown placeholder (or a pod placeholder in a
//! node alias template, which is shared by every pod of its node) is a configuration error, so
//! rendering never fails on a placeholder.

use std::fmt;

/// A value a template can refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placeholder {
    /// `{trust_domain}`: the configured trust domain.
    TrustDomain,
    /// `{cluster}`: the TaskRun's cluster, as the watcher names it.
    Cluster,
    /// `{namespace}`: the TaskRun's namespace.
    Namespace,
    /// `{taskrun_name}`: the TaskRun's name.
    TaskRunName,
    /// `{taskrun_uid}`: the TaskRun's UID.
    TaskRunUid,
    /// `{pod_uid}`: the pod's UID.
    PodUid,
    /// `{pod_name}`: the pod's name.
    PodName,
    /// `{service_account}`: the pod's service account.
    ServiceAccount,
    /// `{node_name}`: the node the pod runs on.
    NodeName,
    /// `{agent_namespace}`: the namespace of the SPIRE agents (`[entries] agent_namespace`).
    AgentNamespace,
}

impl Placeholder {
    /// Every placeholder.
    pub const ALL: [Placeholder; 10] = [
        Placeholder::TrustDomain,
        Placeholder::Cluster,
        Placeholder::Namespace,
        Placeholder::TaskRunName,
        Placeholder::TaskRunUid,
        Placeholder::PodUid,
        Placeholder::PodName,
        Placeholder::ServiceAccount,
        Placeholder::NodeName,
        Placeholder::AgentNamespace,
    ];

    /// The name written between braces.
    pub const fn name(self) -> &'static str {
        match self {
            Placeholder::TrustDomain => "trust_domain",
            Placeholder::Cluster => "cluster",
            Placeholder::Namespace => "namespace",
            Placeholder::TaskRunName => "taskrun_name",
            Placeholder::TaskRunUid => "taskrun_uid",
            Placeholder::PodUid => "pod_uid",
            Placeholder::PodName => "pod_name",
            Placeholder::ServiceAccount => "service_account",
            Placeholder::NodeName => "node_name",
            Placeholder::AgentNamespace => "agent_namespace",
        }
    }

    /// Whether the value is the same for every pod of a node (so a node alias may use it).
    pub const fn is_node_scoped(self) -> bool {
        matches!(
            self,
            Placeholder::TrustDomain
                | Placeholder::Cluster
                | Placeholder::NodeName
                | Placeholder::AgentNamespace
        )
    }

    fn from_name(name: &str) -> Option<Placeholder> {
        Placeholder::ALL
            .into_iter()
            .find(|placeholder| placeholder.name() == name)
    }
}

/// Where a template is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A workload entry: every placeholder.
    Workload,
    /// A node alias entry: only placeholders that are the same for every pod of a node.
    Node,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{name}` names no placeholder.
    #[error("unknown placeholder {{{name}}}; known: {known}")]
    UnknownPlaceholder { name: String, known: String },
    /// A `{` without its `}`.
    #[error("unclosed '{{' at byte {at}")]
    Unclosed { at: usize },
    /// A `}` that closes nothing (write `}}` for a literal one).
    #[error("unmatched '}}' at byte {at} (write '}}}}' for a literal brace)")]
    Unmatched { at: usize },
    /// A placeholder that differs between the pods of one node, in a node alias template.
    #[error(
        "{{{name}}} differs between the pods of a node, so a node alias template cannot use it"
    )]
    NotNodeScoped { name: &'static str },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Value(Placeholder),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses a template.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, character)) = chars.next() {
            match character {
                '{' if chars.peek().is_some_and(|(_, next)| *next == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|(_, next)| *next == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[at + 1..];
                    let end = rest.find('}').ok_or(TemplateError::Unclosed { at })?;
                    let name = &rest[..end];
                    let placeholder = Placeholder::from_name(name).ok_or_else(|| {
                        TemplateError::UnknownPlaceholder {
                            name: name.to_owned(),
                            known: Placeholder::ALL
                                .iter()
                                .map(|placeholder| format!("{{{}}}", placeholder.name()))
                                .collect::<Vec<_>>()
                                .join(", "),
                        }
                    })?;
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Value(placeholder));
                    // Skip the name and the closing brace.
                    for _ in 0..=name.chars().count() {
                        chars.next();
                    }
                }
                '}' => return Err(TemplateError::Unmatched { at }),
                other => literal.push(other),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    /// The placeholders the template uses.
    pub fn placeholders(&self) -> impl Iterator<Item = Placeholder> + '_ {
        self.parts.iter().filter_map(|part| match part {
            Part::Value(placeholder) => Some(*placeholder),
            Part::Literal(_) => None,
        })
    }

    /// Checks that every placeholder is allowed where the template is used.
    pub fn check_scope(&self, scope: Scope) -> Result<(), TemplateError> {
        if scope == Scope::Node
            && let Some(placeholder) = self
                .placeholders()
                .find(|placeholder| !placeholder.is_node_scoped())
        {
            return Err(TemplateError::NotNodeScoped {
                name: placeholder.name(),
            });
        }
        Ok(())
    }

    /// Renders the template; `value` gives each placeholder's value (a placeholder it has no
    /// value for renders empty, which the scope check at start-up rules out).
    pub fn render<'a>(&self, value: impl Fn(Placeholder) -> Option<&'a str>) -> String {
        let mut text = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(literal) => text.push_str(literal),
                Part::Value(placeholder) => text.push_str(value(*placeholder).unwrap_or_default()),
            }
        }
        text
    }
}

impl fmt::Display for Template {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(literal) => {
                    formatter.write_str(&literal.replace('{', "{{").replace('}', "}}"))?
                }
                Part::Value(placeholder) => write!(formatter, "{{{}}}", placeholder.name())?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(placeholder: Placeholder) -> Option<&'static str> {
        match placeholder {
            Placeholder::PodUid => Some("7c9e6679-7425-40de-944b-e07fc1f90ae7"),
            Placeholder::PodName => Some("build-pod"),
            Placeholder::NodeName => Some("kind-worker"),
            Placeholder::AgentNamespace => Some("spire"),
            _ => None,
        }
    }

    #[test]
    fn placeholders_are_replaced_and_literals_kept() {
        let template = Template::parse("k8s:pod-uid:{pod_uid}").unwrap();
        assert_eq!(
            template.render(values),
            "k8s:pod-uid:7c9e6679-7425-40de-944b-e07fc1f90ae7"
        );
        let template = Template::parse("unix:path:/pods/{pod_uid}/countersign-signer").unwrap();
        assert_eq!(
            template.render(values),
            "unix:path:/pods/7c9e6679-7425-40de-944b-e07fc1f90ae7/countersign-signer"
        );
        let template = Template::parse("unix:uid:1000").unwrap();
        assert_eq!(template.placeholders().count(), 0);
        assert_eq!(template.render(values), "unix:uid:1000");
    }

    #[test]
    fn doubled_braces_are_literal_braces() {
        let template = Template::parse("x:{{{node_name}}}").unwrap();
        assert_eq!(template.render(values), "x:{kind-worker}");
        assert_eq!(template.to_string(), "x:{{{node_name}}}");
    }

    #[test]
    fn malformed_templates_are_refused_with_their_reason() {
        assert!(matches!(
            Template::parse("k8s:pod-uid:{pod_id}"),
            Err(TemplateError::UnknownPlaceholder { name, .. }) if name == "pod_id"
        ));
        assert!(matches!(
            Template::parse("k8s:pod-uid:{pod_uid"),
            Err(TemplateError::Unclosed { at: 12 })
        ));
        assert!(matches!(
            Template::parse("k8s:pod-uid:pod_uid}"),
            Err(TemplateError::Unmatched { .. })
        ));
    }

    #[test]
    fn node_templates_may_use_node_placeholders_only() {
        let node = Template::parse("k8s_psat:agent_node_name:{node_name}").unwrap();
        assert!(node.check_scope(Scope::Node).is_ok());
        let pod = Template::parse("k8s:pod-name:{pod_name}").unwrap();
        assert!(pod.check_scope(Scope::Workload).is_ok());
        assert_eq!(
            pod.check_scope(Scope::Node),
            Err(TemplateError::NotNodeScoped { name: "pod_name" })
        );
    }
}
