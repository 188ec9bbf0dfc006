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
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Chat => "chat",
            Task::FeatureExtraction => "feature-extraction",
            Task::TextClassification => "text-classification",
        }
    }

    /// Parses a task name as used in the catalog and in `?task=`.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Task::Chat,
            Task::FeatureExtraction,
            Task::TextClassification,
        ]
        .into_iter()
        .find(|t| t.as_str() == name)
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
}

impl CatalogModel {
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
            route_model(&m.id).map_err(|e| CatalogError::BadId(m.id.clone(), e))?;
            if !seen.insert(m.id.as_str()) {
                return Err(CatalogError::Duplicate(m.id.clone()));
            }
        }
        Ok(catalog)
    }

    /// The models of `task`, or all.
    pub fn filtered(&self, task: Option<Task>) -> impl Iterator<Item = &CatalogModel> {
        self.models
            .iter()
            .filter(move |m| task.is_none_or(|t| m.task == t))
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
        assert_eq!(
            catalog.filtered(Some(Task::Chat)).count(),
            catalog.models.len()
        );
        assert_eq!(catalog.filtered(Some(Task::FeatureExtraction)).count(), 0);
    }

    #[test]
    fn bad_catalogs_are_refused() {
        let dup = r#"{"models":[{"id":"openai/x","task":"chat","description":"a"},{"id":"openai/x","task":"chat","description":"b"}]}"#;
        assert!(
            matches!(Catalog::parse(dup), Err(CatalogError::Duplicate(id)) if id == "openai/x")
        );
        let bad = r#"{"models":[{"id":"openai/a b","task":"chat","description":"a"}]}"#;
        assert!(matches!(Catalog::parse(bad), Err(CatalogError::BadId(..))));
        let task = r#"{"models":[{"id":"openai/x","task":"dance","description":"a"}]}"#;
        assert!(matches!(Catalog::parse(task), Err(CatalogError::Parse(_))));
        assert_eq!(
            Task::parse("feature-extraction"),
            Some(Task::FeatureExtraction)
        );
        assert_eq!(Task::parse("nope"), None);
    }
}
