//! The kustomizations under `k8s/`, rendered by the real kustomize (`kustomize build`) into JSON
//! documents, and lookups in them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::k8s_dir;

/// Why a kustomization could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("running {program} build {}", dir.display())]
    Spawn {
        program: PathBuf,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kustomize build {} failed:\n{stderr}", dir.display())]
    Failed { dir: PathBuf, stderr: String },
    #[error("kustomize build {} wrote YAML that does not parse", dir.display())]
    Parse {
        dir: PathBuf,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
}

/// Every document of a rendered kustomization, in kustomize's order.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The kustomization, relative to `k8s/`.
    pub name: String,
    pub documents: Vec<Value>,
}

/// Renders `k8s/<relative>` with the real kustomize.
pub fn render(relative: &str) -> Result<Rendered, RenderError> {
    render_dir(&k8s_dir().join(relative)).map(|documents| Rendered {
        name: relative.to_owned(),
        documents,
    })
}

/// Renders the kustomization in `dir` with the real kustomize.
pub fn render_dir(dir: &Path) -> Result<Vec<Value>, RenderError> {
    let program = countersign_test_support::peers().kustomize.path.clone();
    let output = Command::new(&program)
        .arg("build")
        .arg(dir)
        .output()
        .map_err(|source| RenderError::Spawn {
            program: program.clone(),
            dir: dir.to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(RenderError::Failed {
            dir: dir.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|source| RenderError::Parse {
            dir: dir.to_owned(),
            source: Box::new(source),
        })?;
    Ok(documents
        .into_iter()
        .filter(|document| !document.is_null())
        .collect())
}

impl Rendered {
    /// The documents of one kind.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.documents
            .iter()
            .filter(move |document| self::kind(document) == kind)
    }

    /// The document of a kind with a name.
    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.documents
            .iter()
            .find(|document| self::kind(document) == kind && self::name(document) == name)
    }

    /// The ConfigMap whose name is `name` or `name-<hash>` (a generated one).
    pub fn config_map(&self, name: &str) -> Option<&Value> {
        self.documents.iter().find(|document| {
            let actual = self::name(document);
            if self::kind(document) != "ConfigMap" {
                return false;
            }
            actual == name
                || actual
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| {
                        hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_alphanumeric())
                    })
        })
    }
}

/// `kind` of a document (empty if absent).
pub fn kind(document: &Value) -> &str {
    document.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// `apiVersion` of a document (empty if absent).
pub fn api_version(document: &Value) -> &str {
    document
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.name` of a document (empty if absent).
pub fn name(document: &Value) -> &str {
    document
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.namespace` of a document, if it has one.
pub fn namespace(document: &Value) -> Option<&str> {
    document
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
}

/// `Kind/name` (and `namespace/` before it when there is one), for messages.
pub fn describe(document: &Value) -> String {
    match namespace(document) {
        Some(namespace) => format!("{} {namespace}/{}", kind(document), name(document)),
        None => format!("{} {}", kind(document), name(document)),
    }
}
