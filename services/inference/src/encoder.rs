//! Sentence encoders (all-MiniLM-L6-v2): embeddings and zero-shot classification, with
//! dynamic batching.
//!
//! One thread owns the ONNX Runtime session. Requests queue on a channel; the thread
//! takes the first, waits up to `max_delay` for others until `max_batch` sequences are
//! gathered, sorts the sequences by length (so each batch pads little), pads each batch
//! to its own longest sequence, runs it, mean-pools over the attention mask and
//! L2-normalises.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView3};
use ort::session::Session;
use ort::value::Tensor;
use tokenizers::{Tokenizer, TruncationParams};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// Embeddings of some texts, in order, and the tokens they took.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: u64,
}

struct Job {
    texts: Vec<String>,
    queued: Instant,
    reply: oneshot::Sender<Result<Embedded, String>>,
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub max_batch: usize,
    pub max_delay: Duration,
}

/// Handle to the encoder thread; cheap to clone.
#[derive(Clone)]
pub struct Encoder {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

/// Loads a tokenizer for batch use: no built-in padding (we pad each batch to its own
/// longest sequence, never to a fixed length) and truncation at `max_tokens`.
pub fn load_tokenizer(path: &Path, max_tokens: usize) -> Result<Tokenizer, String> {
    if !path.is_file() {
        return Err(format!(
            "tokenizer file {} is missing (build the models with `just models`)",
            path.display()
        ));
    }
    let mut tokenizer = Tokenizer::from_file(path)
        .map_err(|e| format!("cannot load the tokenizer {}: {e}", path.display()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..TruncationParams::default()
        }))
        .map_err(|e| format!("cannot set truncation: {e}"))?;
    Ok(tokenizer)
}

impl Encoder {
    /// Starts the encoder thread, which owns `session` until every handle is dropped.
    pub fn start(
        session: Session,
        tokenizer: Tokenizer,
        batching: Batching,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let mut engine = Engine {
            session,
            tokenizer,
            batching,
            metrics,
        };
        std::thread::Builder::new()
            .name("encoder".into())
            .spawn(move || engine.serve(&rx))
            .map_err(|e| format!("cannot start the encoder thread: {e}"))?;
        Ok(Self { jobs })
    }

    /// Embeds `texts` (L2-normalised, in order), batched with whatever else is queued.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embedded, String> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                texts,
                queued: Instant::now(),
                reply,
            })
            .map_err(|_| "the encoder has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the encoder has stopped".to_string())?
    }
}

struct Engine {
    session: Session,
    tokenizer: Tokenizer,
    batching: Batching,
    metrics: Metrics,
}

impl Engine {
    fn serve(&mut self, rx: &mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut sequences = first.texts.len();
            let mut jobs = vec![first];
            let window_end = Instant::now() + self.batching.max_delay;
            while sequences < self.batching.max_batch {
                let left = window_end.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(job) => {
                        sequences += job.texts.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            for job in &jobs {
                self.metrics
                    .queue_delay
                    .observe(started.duration_since(job.queued).as_secs_f64());
            }
            let texts: Vec<&str> = jobs
                .iter()
                .flat_map(|j| j.texts.iter().map(String::as_str))
                .collect();
            let result = self.encode(&texts);
            let mut at = 0;
            for job in jobs {
                let n = job.texts.len();
                let answer = match &result {
                    Ok((vectors, tokens)) => Ok(Embedded {
                        vectors: vectors[at..at + n].to_vec(),
                        tokens: tokens[at..at + n].iter().sum(),
                    }),
                    Err(e) => Err(e.clone()),
                };
                at += n;
                let _ = job.reply.send(answer);
            }
        }
    }

    /// Vectors and token counts for `texts`, in order.
    fn encode(&mut self, texts: &[&str]) -> Result<(Vec<Vec<f32>>, Vec<u64>), String> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| format!("tokenization failed: {e}"))?;
        let tokens: Vec<u64> = encodings.iter().map(|e| e.len() as u64).collect();
        // Shortest first, so sequences of similar length share a batch.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].len());
        let mut vectors = vec![Vec::new(); encodings.len()];
        for batch in order.chunks(self.batching.max_batch.max(1)) {
            let longest = batch
                .iter()
                .map(|&i| encodings[i].len())
                .max()
                .unwrap_or(0)
                .max(1);
            let mut ids = Array2::<i64>::zeros((batch.len(), longest));
            let mut mask = Array2::<i64>::zeros((batch.len(), longest));
            let mut types = Array2::<i64>::zeros((batch.len(), longest));
            for (row, &i) in batch.iter().enumerate() {
                let e = &encodings[i];
                for (col, ((&id, &m), &t)) in e
                    .get_ids()
                    .iter()
                    .zip(e.get_attention_mask())
                    .zip(e.get_type_ids())
                    .enumerate()
                {
                    ids[[row, col]] = i64::from(id);
                    mask[[row, col]] = i64::from(m);
                    types[[row, col]] = i64::from(t);
                }
            }
            self.metrics.batch_size.observe(batch.len() as f64);
            let pooled = self.run(ids, &mask, types)?;
            for (row, &i) in batch.iter().enumerate() {
                vectors[i] = pooled[row].clone();
            }
        }
        Ok((vectors, tokens))
    }

    fn run(
        &mut self,
        ids: Array2<i64>,
        mask: &Array2<i64>,
        types: Array2<i64>,
    ) -> Result<Vec<Vec<f32>>, String> {
        let err = |e: ort::Error| format!("the model failed: {e}");
        let outputs = self
            .session
            .run(ort::inputs![
                "input_ids" => Tensor::from_array(ids).map_err(err)?,
                "attention_mask" => Tensor::from_array(mask.clone()).map_err(err)?,
                "token_type_ids" => Tensor::from_array(types).map_err(err)?,
            ])
            .map_err(err)?;
        let hidden = outputs
            .get("last_hidden_state")
            .ok_or("the model has no output last_hidden_state")?
            .try_extract_array::<f32>()
            .map_err(err)?;
        let hidden = hidden
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| format!("last_hidden_state is not [batch, seq, dim]: {e}"))?;
        Ok(mean_pool_normalize(hidden, mask))
    }
}

/// Mean over the positions the mask keeps, then scaled to unit length.
pub fn mean_pool_normalize(hidden: ArrayView3<'_, f32>, mask: &Array2<i64>) -> Vec<Vec<f32>> {
    let (batch, seq, dim) = hidden.dim();
    let mut out = Vec::with_capacity(batch);
    for b in 0..batch {
        let mut sum = vec![0f32; dim];
        let mut count = 0f32;
        for s in 0..seq {
            if mask[[b, s]] == 0 {
                continue;
            }
            count += 1.0;
            for (acc, v) in sum.iter_mut().zip(
                hidden
                    .index_axis(ndarray::Axis(0), b)
                    .index_axis(ndarray::Axis(0), s),
            ) {
                *acc += v;
            }
        }
        let count = count.max(1e-9);
        for v in &mut sum {
            *v /= count;
        }
        let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        for v in &mut sum {
            *v /= norm;
        }
        out.push(sum);
    }
    out
}

/// How zero-shot labels are turned into a text to embed, as in NLI-style zero-shot
/// pipelines.
pub const HYPOTHESIS_TEMPLATE: &str = "This example is about {}.";

/// Softmax temperature over cosine similarities for single-label zero-shot scores.
pub const ZERO_SHOT_TEMPERATURE: f32 = 0.05;

/// Scores `labels` for `text` from their embeddings: cosine similarity between the
/// text and each label's hypothesis. Single-label: softmax of the similarities at
/// [`ZERO_SHOT_TEMPERATURE`] (sums to 1). Multi-label: each similarity clamped to
/// [0, 1]. Returns labels and scores sorted best first.
pub fn zero_shot_scores(
    text: &[f32],
    label_vectors: &[Vec<f32>],
    labels: &[String],
    multi_label: bool,
) -> (Vec<String>, Vec<f32>) {
    let sims: Vec<f32> = label_vectors
        .iter()
        .map(|v| v.iter().zip(text).map(|(a, b)| a * b).sum())
        .collect();
    let scores: Vec<f32> = if multi_label {
        sims.iter().map(|s| s.clamp(0.0, 1.0)).collect()
    } else {
        let max = sims.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = sims
            .iter()
            .map(|s| ((s - max) / ZERO_SHOT_TEMPERATURE).exp())
            .collect();
        let total: f32 = exps.iter().sum();
        exps.iter().map(|e| e / total).collect()
    };
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    (
        order.iter().map(|&i| labels[i].clone()).collect(),
        order.iter().map(|&i| scores[i]).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_ignores_padding_and_normalises() {
        // batch 1, seq 3 (last is padding), dim 2
        let hidden =
            ndarray::Array3::from_shape_vec((1, 3, 2), vec![1.0, 0.0, 3.0, 4.0, 100.0, 100.0])
                .unwrap();
        let mask = Array2::from_shape_vec((1, 3), vec![1, 1, 0]).unwrap();
        let v = mean_pool_normalize(hidden.view(), &mask);
        // mean = (2, 2) → unit = (0.7071, 0.7071)
        assert!((v[0][0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert!((v[0][1] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }

    #[test]
    fn zero_shot_ranks_by_similarity() {
        let text = vec![1.0, 0.0];
        let labels = vec!["far".to_string(), "near".to_string()];
        let vectors = vec![vec![0.0, 1.0], vec![0.9, 0.1]];
        let (ranked, scores) = zero_shot_scores(&text, &vectors, &labels, false);
        assert_eq!(ranked, ["near", "far"]);
        assert!((scores.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(scores[0] > 0.99);
        let (_, multi) = zero_shot_scores(&text, &vectors, &labels, true);
        assert_eq!(multi, vec![0.9, 0.0]);
    }
}
