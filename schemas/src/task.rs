//! Open-model tasks other than chat, and their results.
//!
//! A chat request needs nothing from here: [`crate::SealedRequest::task`] is absent and
//! the worker generates from `request.messages`. Embeddings and zero-shot
//! classification set `task`; their result comes back in [`crate::ReplyChunk::output`],
//! whole, in one chunk.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a non-chat request asks the model to do.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "task", rename_all = "kebab-case")]
pub enum TaskInput {
    /// One embedding per input text, in order.
    FeatureExtraction { inputs: Vec<String> },
    /// Scores each candidate label for `text`.
    ZeroShotClassification {
        text: String,
        candidate_labels: Vec<String>,
        /// Score labels independently (each in [0, 1]) instead of as one distribution
        /// that sums to 1.
        #[serde(default)]
        multi_label: bool,
    },
}

impl TaskInput {
    /// The task's name as the catalog spells it.
    pub fn name(&self) -> &'static str {
        match self {
            TaskInput::FeatureExtraction { .. } => "feature-extraction",
            TaskInput::ZeroShotClassification { .. } => "zero-shot-classification",
        }
    }
}

impl std::fmt::Debug for TaskInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Inputs are prompts: never in a log, even by accident.
        match self {
            TaskInput::FeatureExtraction { inputs } => f
                .debug_struct("FeatureExtraction")
                .field("inputs", &inputs.len())
                .finish(),
            TaskInput::ZeroShotClassification {
                candidate_labels,
                multi_label,
                ..
            } => f
                .debug_struct("ZeroShotClassification")
                .field("candidate_labels", &candidate_labels.len())
                .field("multi_label", multi_label)
                .finish(),
        }
    }
}

/// The result of a [`TaskInput`].
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "task", rename_all = "kebab-case")]
pub enum TaskOutput {
    /// One vector per input, in input order (L2-normalised for sentence embedders).
    FeatureExtraction { embeddings: Vec<Vec<f32>> },
    /// Labels sorted by score, highest first; `scores[i]` belongs to `labels[i]`.
    ZeroShotClassification {
        labels: Vec<String>,
        scores: Vec<f32>,
    },
}

impl std::fmt::Debug for TaskOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Outputs are never logged either.
        match self {
            TaskOutput::FeatureExtraction { embeddings } => f
                .debug_struct("FeatureExtraction")
                .field("embeddings", &embeddings.len())
                .finish(),
            TaskOutput::ZeroShotClassification { labels, .. } => f
                .debug_struct("ZeroShotClassification")
                .field("labels", &labels.len())
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_round_trip_with_their_kebab_names() {
        let input = TaskInput::ZeroShotClassification {
            text: "the match ended 2-1".into(),
            candidate_labels: vec!["sport".into(), "cooking".into()],
            multi_label: false,
        };
        let bytes = crate::encode(&input).unwrap();
        assert_eq!(crate::decode::<TaskInput>(&bytes).unwrap(), input);
        let json = serde_json::to_value(&input).unwrap();
        assert_eq!(json["task"], "zero-shot-classification");
        assert_eq!(input.name(), "zero-shot-classification");
        let output = TaskOutput::FeatureExtraction {
            embeddings: vec![vec![0.5, -0.25]],
        };
        let back: TaskOutput = crate::decode(&crate::encode(&output).unwrap()).unwrap();
        assert_eq!(back, output);
        assert!(!format!("{input:?}").contains("match"));
    }
}
