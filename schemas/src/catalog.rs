//! The model catalog: what `GET /v1/models` and `GET /v1/catalog` list.
//!
//! One file, `schemas/catalog/models.json`, compiled in. Closed models are listed for
//! discovery only: any `<provider>/<model>` id is forwarded to its provider whether or
//! not it is listed here, since providers add models faster than we release. Open
//! models (served by our own workers) join this file with their own fields.

use serde::{Deserialize, Serialize};

use crate::subjects::{ModelRoute, route_model};

/// What a model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Chat / text generation.
    Chat,
    /// Embeddings.
    FeatureExtraction,
    /// Zero-shot or fine-tuned text classification.
    TextClassification,
    /// Scores caller-given labels for a text, with no label-specific training.
    ZeroShotClassification,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Chat => "chat",
            Task::FeatureExtraction => "feature-extraction",
            Task::TextClassification => "text-classification",
            Task::ZeroShotClassification => "zero-shot-classification",
        }
    }

    /// Parses a task name as used in the catalog and in `?task=`.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Task::Chat,
            Task::FeatureExtraction,
            Task::TextClassification,
            Task::ZeroShotClassification,
        ]
        .into_iter()
        .find(|t| t.as_str() == name)
    }
}

/// The catalog task a request asks for: chat unless it carries another task.
pub fn task_of(task: Option<&crate::task::TaskInput>) -> Task {
    use crate::task::TaskInput;
    match task {
        None => Task::Chat,
        Some(TaskInput::FeatureExtraction { .. }) => Task::FeatureExtraction,
        Some(TaskInput::ZeroShotClassification { .. }) => Task::ZeroShotClassification,
    }
}

/// One catalog entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogModel {
    /// The model id callers use, e.g. `anthropic/claude-sonnet-4-5`.
    pub id: String,
    pub task: Task,
    pub description: String,
    /// Tokens of context the model takes, when known.
    #[serde(default)]
    pub context_window: Option<u64>,
    /// Tasks the model serves besides `task`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_tasks: Vec<Task>,
    /// How our own workers run it: set for open models, absent for closed ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<OpenModel>,
}

/// How an open model runs on our inference workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenModel {
    pub engine: Engine,
    /// Its directory under the models directory (`SWITCHYARD_MODELS_DIR`).
    pub dir: String,
    /// The ONNX graph, in `dir`.
    pub model_file: String,
    /// The `tokenizers` JSON, in `dir`.
    pub tokenizer_file: String,
    /// Generation settings (special tokens, chat template), in `dir`; decoders only.
    #[serde(default)]
    pub generation_file: Option<String>,
    /// What an instance runs on, and is billed as (`cpu`, `gpu-a100-40gb`, …).
    pub instance_type: String,
    /// Most sequences run in one batch.
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch.
    pub max_delay_ms: u64,
    /// Inputs are truncated to this many tokens.
    pub max_input_tokens: usize,
    /// Defaults for parameters the request leaves out.
    #[serde(default)]
    pub defaults: OpenDefaults,
    /// Where the weights come from (a package) and their licence.
    pub source: String,
}

/// The kind of graph an open model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// A sentence encoder: embeddings, and zero-shot classification by similarity.
    Encoder,
    /// A decoder-only language model with a KV cache: chat and text generation.
    Decoder,
}

/// Default generation parameters of an open model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenDefaults {
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<u32>,
}

impl CatalogModel {
    /// Whether the model serves `task`.
    pub fn serves(&self, task: Task) -> bool {
        self.task == task || self.other_tasks.contains(&task)
    }

    /// `openai`, `anthropic`, `google` for closed models; `switchyard` for our own.
    pub fn owner(&self) -> &'static str {
        match route_model(&self.id) {
            Ok(ModelRoute::Closed { provider, .. }) => provider.as_str(),
            _ => "switchyard",
        }
    }
}

/// The whole catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub models: Vec<CatalogModel>,
}

/// The catalog file is not valid.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog is not valid JSON: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("catalog lists {0:?}, which is not a valid model id: {1}")]
    BadId(String, crate::subjects::ModelIdError),
    #[error("catalog lists {0:?} twice")]
    Duplicate(String),
    #[error("catalog entry {0:?}: {1}")]
    Open(String, &'static str),
}

impl Catalog {
    /// The catalog compiled into this build, checked.
    pub fn embedded() -> Result<Self, CatalogError> {
        Self::parse(include_str!("../catalog/models.json"))
    }

    /// Parses and checks a catalog: every id routes, none twice.
    pub fn parse(text: &str) -> Result<Self, CatalogError> {
        let catalog: Catalog = serde_json::from_str(text)?;
        let mut seen = std::collections::HashSet::new();
        for m in &catalog.models {
            let route = route_model(&m.id).map_err(|e| CatalogError::BadId(m.id.clone(), e))?;
            let closed = matches!(route, ModelRoute::Closed { .. });
            match (&m.open, closed) {
                (Some(_), true) => {
                    return Err(CatalogError::Open(
                        m.id.clone(),
                        "a closed-model id cannot have an `open` section",
                    ));
                }
                (None, false) => {
                    return Err(CatalogError::Open(
                        m.id.clone(),
                        "an open model needs an `open` section",
                    ));
                }
                (Some(open), false) => {
                    if open.engine == Engine::Decoder && open.generation_file.is_none() {
                        return Err(CatalogError::Open(
                            m.id.clone(),
                            "a decoder needs a `generation_file`",
                        ));
                    }
                    if open.max_batch == 0 || open.max_input_tokens == 0 {
                        return Err(CatalogError::Open(
                            m.id.clone(),
                            "max_batch and max_input_tokens must be at least 1",
                        ));
                    }
                }
                (None, true) => {}
            }
            if !seen.insert(m.id.as_str()) {
                return Err(CatalogError::Duplicate(m.id.clone()));
            }
        }
        Ok(catalog)
    }

    /// The models serving `task`, or all.
    pub fn filtered(&self, task: Option<Task>) -> impl Iterator<Item = &CatalogModel> {
        self.models
            .iter()
            .filter(move |m| task.is_none_or(|t| m.serves(t)))
    }

    /// The entry for `id`.
    pub fn get(&self, id: &str) -> Option<&CatalogModel> {
        self.models.iter().find(|m| m.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalog_is_valid_and_covers_every_provider() {
        let catalog = Catalog::embedded().unwrap();
        for owner in ["openai", "anthropic", "google"] {
            assert!(catalog.models.iter().any(|m| m.owner() == owner), "{owner}");
        }
        let closed = catalog.models.iter().filter(|m| m.open.is_none()).count();
        assert!(closed >= 3);
        assert!(
            catalog
                .models
                .iter()
                .filter(|m| m.open.is_none())
                .all(|m| m.task == Task::Chat)
        );
        let embedders: Vec<_> = catalog
            .filtered(Some(Task::FeatureExtraction))
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(embedders, ["sentence-transformers/all-MiniLM-L6-v2"]);
        let minilm = catalog
            .get("sentence-transformers/all-MiniLM-L6-v2")
            .unwrap();
        assert!(minilm.serves(Task::ZeroShotClassification));
        assert!(!minilm.serves(Task::Chat));
        assert_eq!(minilm.owner(), "switchyard");
        let smol = catalog.get("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
        assert_eq!(smol.open.as_ref().unwrap().engine, Engine::Decoder);
    }

    #[test]
    fn bad_catalogs_are_refused() {
        let dup = r#"{"models":[{"id":"openai/x","task":"chat","description":"a"},{"id":"openai/x","task":"chat","description":"b"}]}"#;
        assert!(
            matches!(Catalog::parse(dup), Err(CatalogError::Duplicate(id)) if id == "openai/x")
        );
        let bad = r#"{"models":[{"id":"openai/a b","task":"chat","description":"a"}]}"#;
        assert!(matches!(Catalog::parse(bad), Err(CatalogError::BadId(..))));
        let open_without = r#"{"models":[{"id":"org/m","task":"chat","description":"a"}]}"#;
        assert!(matches!(
            Catalog::parse(open_without),
            Err(CatalogError::Open(..))
        ));
        let task = r#"{"models":[{"id":"openai/x","task":"dance","description":"a"}]}"#;
        assert!(matches!(Catalog::parse(task), Err(CatalogError::Parse(_))));
        assert_eq!(
            Task::parse("feature-extraction"),
            Some(Task::FeatureExtraction)
        );
        assert_eq!(Task::parse("nope"), None);
    }
}
