//! Sentence encoders (all-MiniLM-L6-v2): embeddings and zero-shot classification, with
//! dynamic batching.
//!
//! Requests queue on one channel. Each *runner* thread owns an ONNX Runtime session
//! (one runner by default; `--encoder-runners` starts more, each with its share of the
//! instance's threads). A runner with nothing to run, when no other is doing so,
//! gathers: it takes the first request and whatever else is queued, waits up to
//! `max_delay` for others until `max_batch` sequences are gathered (only while requests
//! have been coming together: see [`WAIT_FOR_COMPANY`]), sorts the sequences by length
//! and splits them into model runs of similar lengths ([`plan_runs`]: padding a short
//! sentence to a long one's length costs more than a run of its own). Runners take the
//! planned runs in order — with several runners, the runs of one batch go side by
//! side — pad each to its own longest sequence, run it, mean-pool over the attention
//! mask and L2-normalise. Each request is answered as soon as its last sequence is
//! done (short ones first). A runner gathers again only when no planned run is left,
//! so what arrives meanwhile waits to be batched.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, mpsc};
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

/// The encoder waits up to `max_delay` for more requests only while at least this
/// share of recent batches had company (a moving average over about the last ten);
/// otherwise a request runs at once, and requests that arrive during a run are batched
/// anyway. A single sequential caller stops paying the delay after about ten requests.
const WAIT_FOR_COMPANY: f64 = 0.1;

/// Handle to the encoder's runner threads; cheap to clone.
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
    /// Starts one runner thread per session; they own the sessions until every handle
    /// is dropped. The sessions are alike (the same model), each with its share of
    /// the threads. `wide`, with several runners: the same model with every thread,
    /// which runs a batch of one run alone when all runners are idle.
    pub fn start(
        sessions: Vec<Session>,
        wide: Option<Session>,
        tokenizer: Tokenizer,
        batching: Batching,
        metrics: Metrics,
    ) -> Result<Self, String> {
        if sessions.is_empty() {
            return Err("the encoder needs at least one session".into());
        }
        let (jobs, rx) = mpsc::channel::<Job>();
        let shared = Arc::new(Shared {
            wide: wide.map(Mutex::new),
            queue: Mutex::new(Queue { rx, company: 1.0 }),
            work: Mutex::new(Work::default()),
            changed: Condvar::new(),
            tokenizer,
            batching,
            metrics,
        });
        for (i, session) in sessions.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("encoder-{i}"))
                .spawn(move || shared.serve(session))
                .map_err(|e| format!("cannot start the encoder thread: {e}"))?;
        }
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

/// The request queue, read by one runner at a time (the one gathering).
struct Queue {
    rx: mpsc::Receiver<Job>,
    /// How often recent batches had more than one request (moving average). Waiting
    /// `max_delay` for others pays only when requests come together; a lone caller
    /// would pay it on every request for nothing.
    company: f64,
}

impl Queue {
    /// The next batch of requests: the first to come, whatever else is queued, and —
    /// while requests have been coming together — what arrives within `max_delay`,
    /// up to `max_batch` sequences. None once every handle is dropped.
    fn gather(&mut self, batching: Batching) -> Option<Vec<Job>> {
        let first = self.rx.recv().ok()?;
        let mut sequences = first.texts.len();
        let mut jobs = vec![first];
        // What is queued already (it arrived while the last batch ran) joins at once.
        while sequences < batching.max_batch {
            match self.rx.try_recv() {
                Ok(job) => {
                    sequences += job.texts.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        if self.company >= WAIT_FOR_COMPANY {
            let window_end = Instant::now() + batching.max_delay;
            while sequences < batching.max_batch {
                let left = window_end.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(left) {
                    Ok(job) => {
                        sequences += job.texts.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        let together = if jobs.len() > 1 { 1.0 } else { 0.0 };
        self.company = 0.8 * self.company + 0.2 * together;
        Some(jobs)
    }
}

/// Model runs planned and not yet taken, and who is gathering the next batch.
#[derive(Default)]
struct Work {
    runs: VecDeque<Run>,
    /// Runs being executed by runners (not counting one on the wide session).
    running: usize,
    gathering: bool,
    closed: bool,
}

/// One model run: some sequences of a gathered batch, padded to their longest.
struct Run {
    batch: Arc<Batch>,
    /// Indices into `batch.encodings`.
    rows: Vec<usize>,
}

/// A gathered batch: its requests, their tokenized texts, and what is still missing.
struct Batch {
    encodings: Vec<tokenizers::Encoding>,
    /// Per text: its request.
    owner: Vec<usize>,
    /// Per request: where its texts start.
    first: Vec<usize>,
    answers: Mutex<Answers>,
}

struct Answers {
    /// Per request: texts not yet embedded.
    left: Vec<usize>,
    /// Per request: its reply, until sent.
    jobs: Vec<Option<Job>>,
    vectors: Vec<Vec<f32>>,
}

impl Batch {
    /// Records the vectors of `rows` and answers every request now complete.
    fn done(&self, rows: &[usize], pooled: Vec<Vec<f32>>) {
        let Ok(mut answers) = self.answers.lock() else {
            return;
        };
        let answers = &mut *answers;
        for (&i, v) in rows.iter().zip(pooled) {
            answers.vectors[i] = v;
            let j = self.owner[i];
            answers.left[j] -= 1;
            if answers.left[j] == 0 {
                self.reply(answers, j);
            }
        }
    }

    /// Answers request `j` with its vectors (all of them are in).
    fn reply(&self, answers: &mut Answers, j: usize) {
        if let Some(job) = answers.jobs[j].take() {
            let range = self.first[j]..self.first[j] + job.texts.len();
            let tokens = self.encodings[range.clone()]
                .iter()
                .map(|e| e.len() as u64)
                .sum();
            let vectors = answers.vectors[range]
                .iter_mut()
                .map(std::mem::take)
                .collect();
            let _ = job.reply.send(Ok(Embedded { vectors, tokens }));
        }
    }

    /// Fails every request not answered yet.
    fn fail(&self, e: &str) {
        if let Ok(mut answers) = self.answers.lock() {
            for job in answers.jobs.iter_mut().filter_map(Option::take) {
                let _ = job.reply.send(Err(e.to_string()));
            }
        }
    }
}

/// What the runner threads share.
struct Shared {
    /// With several runners: a session with every thread, for a run that would
    /// otherwise leave all but one runner idle (a lone request at low load).
    wide: Option<Mutex<Session>>,
    queue: Mutex<Queue>,
    work: Mutex<Work>,
    changed: Condvar,
    tokenizer: Tokenizer,
    batching: Batching,
    metrics: Metrics,
}

/// What a runner does next.
enum Next {
    Run(Run),
    Gather,
    Stop,
}

impl Shared {
    /// A runner: takes planned runs while there are any; when there are none and no
    /// other runner is gathering, gathers the next batch and plans its runs (which
    /// idle runners then take alongside it).
    fn serve(&self, mut session: Session) {
        loop {
            match self.next() {
                Next::Run(run) => {
                    self.execute(&mut session, run);
                    if let Ok(mut work) = self.work.lock() {
                        work.running -= 1;
                    }
                }
                Next::Gather => {
                    let jobs = self
                        .queue
                        .lock()
                        .ok()
                        .and_then(|mut q| q.gather(self.batching));
                    let mut runs = jobs.map(|jobs| self.plan(jobs));
                    // A lone run while every runner is idle: all the threads serve it
                    // (the wide session), and nobody else starts until it is done.
                    if let (Some(wide), Some([_])) = (&self.wide, runs.as_deref())
                        && self.work.lock().is_ok_and(|work| work.running == 0)
                        && let Some(run) = runs.as_mut().and_then(Vec::pop)
                        && let Ok(mut wide) = wide.lock()
                    {
                        self.execute(&mut wide, run);
                    }
                    let Ok(mut work) = self.work.lock() else {
                        return;
                    };
                    work.gathering = false;
                    match runs {
                        Some(runs) => work.runs.extend(runs),
                        None => work.closed = true,
                    }
                    self.changed.notify_all();
                }
                Next::Stop => return,
            }
        }
    }

    fn next(&self) -> Next {
        let Ok(mut work) = self.work.lock() else {
            return Next::Stop;
        };
        loop {
            if let Some(run) = work.runs.pop_front() {
                work.running += 1;
                return Next::Run(run);
            }
            if work.closed {
                return Next::Stop;
            }
            if !work.gathering {
                work.gathering = true;
                return Next::Gather;
            }
            work = match self.changed.wait(work) {
                Ok(work) => work,
                Err(_) => return Next::Stop,
            };
        }
    }

    /// Tokenizes the texts of `jobs`, answers what needs no model run, and splits the
    /// rest into model runs: sorted by length (shortest first), grouped by
    /// [`plan_runs`], each to be padded to its own longest text.
    fn plan(&self, jobs: Vec<Job>) -> Vec<Run> {
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
        let encodings = match self.tokenizer.encode_batch(texts, true) {
            Ok(e) => e,
            Err(e) => {
                let e = format!("tokenization failed: {e}");
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
                return Vec::new();
            }
        };
        let mut owner = Vec::with_capacity(encodings.len());
        let mut left = Vec::with_capacity(jobs.len());
        let mut first = Vec::with_capacity(jobs.len());
        for (j, job) in jobs.iter().enumerate() {
            first.push(owner.len());
            left.push(job.texts.len());
            owner.extend(std::iter::repeat_n(j, job.texts.len()));
        }
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].len());
        let lengths: Vec<usize> = order.iter().map(|&i| encodings[i].len()).collect();
        let batch = Arc::new(Batch {
            answers: Mutex::new(Answers {
                vectors: vec![Vec::new(); encodings.len()],
                jobs: jobs.into_iter().map(Some).collect(),
                left,
            }),
            encodings,
            owner,
            first,
        });
        // A request without texts is answered at once.
        if let Ok(mut answers) = batch.answers.lock() {
            let empty: Vec<usize> = (0..answers.left.len())
                .filter(|&j| answers.left[j] == 0)
                .collect();
            for j in empty {
                batch.reply(&mut answers, j);
            }
        }
        plan_runs(&lengths, self.batching.max_batch)
            .into_iter()
            .map(|range| Run {
                batch: Arc::clone(&batch),
                rows: order[range].to_vec(),
            })
            .collect()
    }

    fn execute(&self, session: &mut Session, run: Run) {
        let longest = run
            .rows
            .iter()
            .map(|&i| run.batch.encodings[i].len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = Array2::<i64>::zeros((run.rows.len(), longest));
        let mut mask = Array2::<i64>::zeros((run.rows.len(), longest));
        let mut types = Array2::<i64>::zeros((run.rows.len(), longest));
        for (row, &i) in run.rows.iter().enumerate() {
            let e = &run.batch.encodings[i];
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
        self.metrics.batch_size.observe(run.rows.len() as f64);
        match model_run(session, ids, &mask, types) {
            Ok(pooled) => run.batch.done(&run.rows, pooled),
            Err(e) => run.batch.fail(&e),
        }
    }
}

/// Runs the encoder over one padded batch: pooled, normalised vectors per row.
fn model_run(
    session: &mut Session,
    ids: Array2<i64>,
    mask: &Array2<i64>,
    types: Array2<i64>,
) -> Result<Vec<Vec<f32>>, String> {
    let err = |e: ort::Error| format!("the model failed: {e}");
    let outputs = session
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

/// Estimated cost of one model run over `rows` sequences padded to `len` tokens, in
/// units of one token's work. Measured for this encoder on ONNX Runtime's CPU provider
/// (1 thread, loadtest/RESULTS.md "open models"): a run costs about 16 tokens' worth on
/// its own; work per token grows with the sequence length (attention) and with the
/// batch's size in tokens (activations fall out of the cache), so one batch of 32 mixed
/// lengths padded to the longest can cost more than the 32 sequences run one by one.
fn run_cost(rows: usize, len: usize) -> f64 {
    const RUN_OVERHEAD: f64 = 16.0;
    const ATTENTION_LEN: f64 = 1024.0;
    const CACHE_TOKENS: f64 = 8192.0;
    let tokens = (rows * len) as f64;
    RUN_OVERHEAD + tokens * (1.0 + len as f64 / ATTENTION_LEN) * (1.0 + tokens / CACHE_TOKENS)
}

/// Splits sequences sorted by length (`lengths`, ascending) into consecutive model
/// runs of at most `max_batch`, each padded to its own longest, minimising the summed
/// [`run_cost`] (dynamic programming; O(n · max_batch)). Similar lengths share a run;
/// a long sequence among short ones runs apart instead of padding them all.
pub fn plan_runs(lengths: &[usize], max_batch: usize) -> Vec<std::ops::Range<usize>> {
    let n = lengths.len();
    let max_batch = max_batch.max(1);
    // best[j]: cheapest plan for the first j sequences; start[j]: where its last run starts.
    let mut best = vec![f64::INFINITY; n + 1];
    let mut start = vec![0; n + 1];
    best[0] = 0.0;
    for j in 1..=n {
        let len = lengths[j - 1].max(1);
        for i in j.saturating_sub(max_batch)..j {
            let cost = best[i] + run_cost(j - i, len);
            if cost < best[j] {
                best[j] = cost;
                start[j] = i;
            }
        }
    }
    let mut runs = Vec::new();
    let mut j = n;
    while j > 0 {
        runs.push(start[j]..j);
        j = start[j];
    }
    runs.reverse();
    runs
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
    fn runs_cover_everything_in_order_within_max_batch() {
        let lengths: Vec<usize> = (0..100).map(|i| 3 + (i * 37) % 250).collect();
        let mut lengths = lengths;
        lengths.sort_unstable();
        for max_batch in [1, 4, 32] {
            let runs = plan_runs(&lengths, max_batch);
            let mut next = 0;
            for r in &runs {
                assert_eq!(r.start, next);
                assert!(!r.is_empty() && r.len() <= max_batch);
                next = r.end;
            }
            assert_eq!(next, lengths.len());
        }
        assert!(plan_runs(&[], 32).is_empty());
    }

    #[test]
    fn similar_lengths_share_a_run_and_a_long_one_runs_apart() {
        // Short ones together: one run is cheaper than paying the overhead 8 times.
        assert_eq!(plan_runs(&[8; 8], 32), vec![0..8]);
        // A 200-token passage does not pad seven 10-token queries to its length.
        let runs = plan_runs(&[10, 10, 11, 11, 12, 12, 12, 200], 32);
        assert_eq!(runs, vec![0..7, 7..8]);
        // Long sequences are cheaper one by one than padded into one big batch.
        assert_eq!(plan_runs(&[250; 8], 32).len(), 8);
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
