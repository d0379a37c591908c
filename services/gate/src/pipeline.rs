//! What the gate reads of a PipelineRun and of the TaskRun being created (`tekton.dev/v1` JSON):
//! the pipeline task's param templates, the PipelineRun's params and context, which TaskRun ran
//! each pipeline task, and the params the new TaskRun is given.
//!
//! The Pipeline spec is `status.pipelineSpec` when Tekton recorded it (the resolved spec it runs,
//! stored before params are applied), else the inline `spec.pipelineSpec`. A TaskRun belongs to
//! a PipelineRun by its controller owner reference (kind `PipelineRun`) and names its pipeline task
//! with the label `tekton.dev/pipelineTask`.

use std::collections::{BTreeMap, BTreeSet};

use countersign_tekton::TaskRun;
use serde::Deserialize;

use crate::substitution::ParamValue;

/// The label naming a TaskRun's pipeline task.
pub const PIPELINE_TASK_LABEL: &str = "tekton.dev/pipelineTask";
/// The label naming a TaskRun's Pipeline.
pub const PIPELINE_LABEL: &str = "tekton.dev/pipeline";

/// A `{name, value}` param.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Param {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: ParamValue,
}

/// A Pipeline's param declaration (only the default matters here).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ParamSpec {
    /// Its name.
    pub name: String,
    /// Its default, if any.
    #[serde(default)]
    pub default: Option<ParamValue>,
}

/// A pipeline task (only what carries values into a TaskRun's params).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PipelineTask {
    /// Its name.
    pub name: String,
    /// Its param templates.
    #[serde(default)]
    pub params: Vec<Param>,
    /// Its matrix, if any (kept raw: the gate refuses results fanned out by a matrix).
    #[serde(default)]
    pub matrix: Option<serde_json::Value>,
}

/// A Pipeline spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PipelineSpec {
    /// Declared params.
    #[serde(default)]
    pub params: Vec<ParamSpec>,
    /// Tasks.
    #[serde(default)]
    pub tasks: Vec<PipelineTask>,
    /// Finally tasks.
    #[serde(default)]
    pub finally: Vec<PipelineTask>,
}

impl PipelineSpec {
    /// The task (or finally task) named `name`.
    pub fn task(&self, name: &str) -> Option<&PipelineTask> {
        self.tasks
            .iter()
            .chain(&self.finally)
            .find(|task| task.name == name)
    }
}

/// The parts of a PipelineRun the gate reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineRunView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// `spec.params`.
    pub params: Vec<Param>,
    /// `status.pipelineSpec`, else `spec.pipelineSpec`; `None` when neither is there yet.
    pub spec: Option<PipelineSpec>,
    /// `status.childReferences` of kind TaskRun: pipeline task → TaskRun name.
    pub children: BTreeMap<String, String>,
    /// The pipeline tasks with more than one TaskRun (fanned out by a matrix): their results are
    /// aggregated across TaskRuns, which [`children`](Self::children) cannot name.
    pub fanned_out: BTreeSet<String>,
}

/// Why a PipelineRun could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the PipelineRun does not have the tekton.dev/v1 shape")]
pub struct PipelineRunShapeError(#[source] serde_json::Error);

#[derive(Deserialize)]
struct RawMetadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default, rename = "ownerReferences")]
    owner_references: Vec<RawOwner>,
}

#[derive(Deserialize)]
struct RawOwner {
    kind: String,
    name: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    controller: Option<bool>,
}

#[derive(Deserialize)]
struct RawPipelineRun {
    metadata: RawMetadata,
    #[serde(default)]
    spec: RawPipelineRunSpec,
    #[serde(default)]
    status: RawPipelineRunStatus,
}

#[derive(Deserialize, Default)]
struct RawPipelineRunSpec {
    #[serde(default)]
    params: Vec<Param>,
    #[serde(default, rename = "pipelineSpec")]
    pipeline_spec: Option<PipelineSpec>,
}

#[derive(Deserialize, Default)]
struct RawPipelineRunStatus {
    #[serde(default, rename = "pipelineSpec")]
    pipeline_spec: Option<PipelineSpec>,
    #[serde(default, rename = "childReferences")]
    child_references: Vec<RawChildReference>,
}

#[derive(Deserialize)]
struct RawChildReference {
    #[serde(default)]
    kind: String,
    name: String,
    #[serde(rename = "pipelineTaskName")]
    pipeline_task_name: String,
}

impl PipelineRunView {
    /// Reads a PipelineRun's JSON.
    pub fn from_json(value: &serde_json::Value) -> Result<PipelineRunView, PipelineRunShapeError> {
        let raw = RawPipelineRun::deserialize(value).map_err(PipelineRunShapeError)?;
        let mut children = BTreeMap::new();
        let mut fanned_out = BTreeSet::new();
        for child in raw
            .status
            .child_references
            .into_iter()
            .filter(|child| child.kind.is_empty() || child.kind == "TaskRun")
        {
            if children
                .insert(child.pipeline_task_name.clone(), child.name)
                .is_some()
            {
                fanned_out.insert(child.pipeline_task_name);
            }
        }
        Ok(PipelineRunView {
            namespace: raw.metadata.namespace,
            name: raw.metadata.name,
            uid: raw.metadata.uid,
            params: raw.spec.params,
            spec: raw.status.pipeline_spec.or(raw.spec.pipeline_spec),
            children,
            fanned_out,
        })
    }
}

/// The TaskRun being created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRunAdmission {
    /// Namespace.
    pub namespace: String,
    /// Name (may be empty with `generateName`; Tekton always names them).
    pub name: String,
    /// The PipelineRun that controls it, if any: (name, uid).
    pub pipeline_run: Option<(String, String)>,
    /// Its pipeline task (`tekton.dev/pipelineTask`).
    pub pipeline_task: Option<String>,
    /// Its Pipeline's name (`tekton.dev/pipeline`), for `$(context.pipeline.name)`.
    pub pipeline_name: Option<String>,
    /// `spec.params`.
    pub params: Vec<Param>,
}

/// Why a TaskRun could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the TaskRun does not have the tekton.dev/v1 shape")]
pub struct TaskRunShapeError(#[source] serde_json::Error);

#[derive(Deserialize)]
struct RawTaskRun {
    metadata: RawMetadata,
    #[serde(default)]
    spec: RawTaskRunSpec,
}

#[derive(Deserialize, Default)]
struct RawTaskRunSpec {
    #[serde(default)]
    params: Vec<Param>,
}

impl TaskRunAdmission {
    /// Reads a TaskRun's JSON (an admission request's `object`).
    pub fn from_json(value: &serde_json::Value) -> Result<TaskRunAdmission, TaskRunShapeError> {
        let raw = RawTaskRun::deserialize(value).map_err(TaskRunShapeError)?;
        let pipeline_run = raw
            .metadata
            .owner_references
            .iter()
            .find(|owner| owner.kind == "PipelineRun" && owner.controller == Some(true))
            .map(|owner| (owner.name.clone(), owner.uid.clone()));
        Ok(TaskRunAdmission {
            namespace: raw.metadata.namespace,
            name: raw.metadata.name,
            pipeline_run,
            pipeline_task: raw.metadata.labels.get(PIPELINE_TASK_LABEL).cloned(),
            pipeline_name: raw.metadata.labels.get(PIPELINE_LABEL).cloned(),
            params: raw.spec.params,
        })
    }
}

/// A TaskRun's results as its status has them (`status.results[]`, `{name, type, value}`), by
/// name; a result without a name or with a value of another shape is left out.
pub fn status_results(taskrun: &TaskRun) -> BTreeMap<String, ParamValue> {
    taskrun
        .status
        .iter()
        .flat_map(|status| &status.results)
        .filter(|result| !result.name.is_empty())
        .filter_map(|result| {
            let value = ParamValue::deserialize(&result.value).ok()?;
            Some((result.name.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_resolved_spec_in_the_status_wins_over_the_inline_one() {
        let pipeline_run = json!({
            "metadata": {"name": "pr", "namespace": "ci", "uid": "u1"},
            "spec": {
                "params": [{"name": "tag", "value": "v1"}],
                "pipelineSpec": {"tasks": [{"name": "inline"}]}
            },
            "status": {
                "pipelineSpec": {"tasks": [{"name": "resolved", "params": [
                    {"name": "digest", "value": "$(tasks.build.results.IMAGE_DIGEST)"}
                ]}]},
                "childReferences": [
                    {"apiVersion": "tekton.dev/v1", "kind": "TaskRun", "name": "pr-build", "pipelineTaskName": "build"},
                    {"apiVersion": "tekton.dev/v1beta1", "kind": "CustomRun", "name": "pr-wait", "pipelineTaskName": "wait"}
                ]
            }
        });
        let view = PipelineRunView::from_json(&pipeline_run).unwrap();
        let spec = view.spec.unwrap();
        assert!(spec.task("resolved").is_some());
        assert!(spec.task("inline").is_none());
        assert_eq!(
            view.children,
            BTreeMap::from([("build".into(), "pr-build".into())])
        );
        assert_eq!(view.params[0].value, ParamValue::String("v1".into()));
    }

    #[test]
    fn the_inline_spec_is_used_until_tekton_records_one() {
        let pipeline_run = json!({
            "metadata": {"name": "pr", "namespace": "ci", "uid": "u1"},
            "spec": {"pipelineSpec": {"tasks": [{"name": "inline"}], "finally": [{"name": "notify"}]}}
        });
        let spec = PipelineRunView::from_json(&pipeline_run)
            .unwrap()
            .spec
            .unwrap();
        assert!(spec.task("inline").is_some());
        assert!(spec.task("notify").is_some());
    }

    #[test]
    fn a_taskrun_names_its_controller_pipelinerun_and_pipeline_task() {
        let taskrun = json!({
            "metadata": {
                "name": "pr-deploy", "namespace": "ci",
                "labels": {"tekton.dev/pipelineTask": "deploy", "tekton.dev/pipeline": "release"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "x"},
                    {"apiVersion": "tekton.dev/v1", "kind": "PipelineRun", "name": "pr", "uid": "u1", "controller": true}
                ]
            },
            "spec": {"params": [
                {"name": "digest", "value": "sha256:aa"},
                {"name": "tags", "value": ["a", "b"]},
                {"name": "image", "value": {"url": "r/x"}}
            ]}
        });
        let admission = TaskRunAdmission::from_json(&taskrun).unwrap();
        assert_eq!(admission.pipeline_run, Some(("pr".into(), "u1".into())));
        assert_eq!(admission.pipeline_task.as_deref(), Some("deploy"));
        assert_eq!(admission.pipeline_name.as_deref(), Some("release"));
        assert_eq!(admission.params.len(), 3);
    }

    #[test]
    fn a_param_that_is_not_a_string_array_or_object_of_strings_is_refused() {
        let taskrun =
            json!({"metadata": {"name": "t"}, "spec": {"params": [{"name": "x", "value": 3}]}});
        assert!(TaskRunAdmission::from_json(&taskrun).is_err());
    }

    #[test]
    fn status_results_are_read_by_name() {
        let taskrun = json!({"status": {"results": [
            {"name": "IMAGE_DIGEST", "type": "string", "value": "sha256:aa"},
            {"name": "tags", "type": "array", "value": ["a"]},
            {"name": "broken"}
        ]}});
        let taskrun: TaskRun = serde_json::from_value(taskrun).expect("a TaskRun");
        let results = status_results(&taskrun);
        assert_eq!(results.len(), 2);
        assert_eq!(results["tags"], ParamValue::Array(vec!["a".into()]));
    }
}
