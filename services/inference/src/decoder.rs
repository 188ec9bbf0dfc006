//! Decoder-only language models (SmolLM2): chat with a KV cache, streamed token by
//! token.
//!
//! One thread owns the ONNX Runtime session and runs every generation of this
//! instance. Each turn it prefills at most one new prompt (alone), then advances every
//! running generation by one token in a single batched run (up to `max_batch`
//! together; see [`Group`]): on a CPU a decode step is bound by reading the weights,
//! so four streams in one run cost little more than one. A generation stops at an end-of-sequence token,
//! a stop sequence, `max_tokens`, or when its caller goes away (the event receiver is
//! dropped, e.g. on cancellation).

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use ndarray::Array2;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use schemas::{FinishReason, Message, Role};
use serde::Deserialize;
use tokenizers::Tokenizer;
use tokio::sync::mpsc as tokio_mpsc;

use crate::metrics::Metrics;

/// `generation.json`, written by the model's converter.
#[derive(Debug, Clone, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The model's own chat template (Jinja), applied to the messages.
    pub chat_template: String,
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
}

impl GenerationConfig {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read {} ({e}); build the models with `just models`",
                path.display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| format!("{} is not valid: {e}", path.display()))
    }
}

/// Sampling settings of one generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass (1 = off).
    pub top_p: f32,
    /// Keep the `top_k` likeliest tokens (0 = off).
    pub top_k: usize,
    pub seed: Option<u64>,
}

/// One generation to run.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: u32,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    /// Added to these tokens' logits before every sampling step (OpenAI's
    /// `logit_bias`: −100 all but bans a token, +100 all but forces it).
    pub logit_bias: Vec<(u32, f32)>,
}

/// What a generation reports, in order: text pieces, then `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    Text(String),
    Done {
        finish: FinishReason,
        input_tokens: u64,
        output_tokens: u64,
    },
    Failed(String),
}

struct Job {
    request: GenRequest,
    events: tokio_mpsc::UnboundedSender<GenEvent>,
    queued: Instant,
}

/// Handle to the decoder thread; cheap to clone.
#[derive(Clone)]
pub struct Decoder {
    jobs: mpsc::Sender<Job>,
    tokenizer: Arc<Tokenizer>,
    config: Arc<GenerationConfig>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// Starts the decoder thread; up to `max_batch` generations decode together.
    pub fn start(
        session: Session,
        tokenizer: Tokenizer,
        config: GenerationConfig,
        max_batch: usize,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let tokenizer = Arc::new(tokenizer);
        let config = Arc::new(config);
        let names = (0..config.num_layers)
            .map(|i| {
                [
                    format!("past_key_values.{i}.key"),
                    format!("past_key_values.{i}.value"),
                    format!("present.{i}.key"),
                    format!("present.{i}.value"),
                ]
            })
            .collect();
        let (jobs, rx) = mpsc::channel::<Job>();
        let mut engine = Engine {
            session,
            tokenizer: tokenizer.clone(),
            config: config.clone(),
            metrics,
            names,
            max_batch: max_batch.max(1),
        };
        std::thread::Builder::new()
            .name("decoder".into())
            .spawn(move || engine.serve(&rx))
            .map_err(|e| format!("cannot start the decoder thread: {e}"))?;
        Ok(Self {
            jobs,
            tokenizer,
            config,
        })
    }

    /// The model's context length in tokens.
    pub fn context_length(&self) -> usize {
        self.config.context_length
    }

    /// How many tokens the model's vocabulary has (token ids are below it).
    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// The prompt tokens of a conversation, through the model's chat template.
    pub fn prompt(&self, messages: &[Message]) -> Result<Vec<u32>, String> {
        let text = render_chat(&self.config.chat_template, messages)?;
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| format!("tokenization failed: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Starts a generation; its events arrive on the returned receiver. Dropping the
    /// receiver stops it.
    pub fn generate(&self, request: GenRequest) -> tokio_mpsc::UnboundedReceiver<GenEvent> {
        let (events, rx) = tokio_mpsc::unbounded_channel();
        let job = Job {
            request,
            events,
            queued: Instant::now(),
        };
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            let _ = job
                .events
                .send(GenEvent::Failed("the decoder has stopped".into()));
        }
        rx
    }
}

/// Renders `messages` with the model's Jinja chat template, ending with the
/// assistant's turn.
pub fn render_chat(template: &str, messages: &[Message]) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    let tmpl = env
        .template_from_str(template)
        .map_err(|e| format!("the model's chat template does not parse: {e}"))?;
    let messages: Vec<_> = messages
        .iter()
        .map(|m| {
            let role = match m.role {
                Role::System | Role::Developer => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            minijinja::context! { role => role, content => m.joined_text() }
        })
        .collect();
    tmpl.render(minijinja::context! { messages => messages, add_generation_prompt => true })
        .map_err(|e| format!("the chat template failed: {e}"))
}

/// Picks the next token from `logits`.
/// `logits` with each `(token, bias)` added (ids outside the vocabulary are skipped;
/// the worker refuses them before a generation starts).
pub fn biased<'a>(logits: &'a mut [f32], bias: &[(u32, f32)]) -> &'a [f32] {
    for &(token, b) in bias {
        if let Some(l) = logits.get_mut(token as usize) {
            *l += b;
        }
    }
    logits
}

pub fn sample(logits: &[f32], s: &Sampling, rng: &mut StdRng) -> u32 {
    // The first largest logit, NaN never winning (all NaN: token 0). A running max per lane
    // of 16 (which the compiler vectorizes; a single running max it cannot, as reordering a
    // float max is not exact for it), then the first chunk holding that max: 4–16 µs over
    // SmolLM2's 49,152 logits, against 70 µs for max_by with total_cmp.
    let argmax = || {
        const W: usize = 16;
        let mut lanes = [f32::NEG_INFINITY; W];
        let chunks = logits.chunks_exact(W);
        let rest = chunks.remainder();
        for c in chunks {
            for (m, &v) in lanes.iter_mut().zip(c) {
                *m = if v > *m { v } else { *m };
            }
        }
        let max = lanes
            .iter()
            .chain(rest)
            .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        logits
            .chunks(W)
            .enumerate()
            .find(|(_, c)| c.iter().fold(false, |hit, &v| hit | (v == max)))
            .and_then(|(i, c)| c.iter().position(|&v| v == max).map(|j| (i * W + j) as u32))
            .unwrap_or(0)
    };
    if s.temperature <= 0.0 || s.top_k == 1 {
        return argmax();
    }
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / s.temperature))
        .collect();
    if s.top_k > 0 && s.top_k < candidates.len() {
        candidates.select_nth_unstable_by(s.top_k - 1, |a, b| b.1.total_cmp(&a.1));
        candidates.truncate(s.top_k);
    }
    candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    let max = candidates.first().map_or(0.0, |c| c.1);
    let mut probs: Vec<f32> = candidates.iter().map(|c| (c.1 - max).exp()).collect();
    let total: f32 = probs.iter().sum();
    for p in &mut probs {
        *p /= total;
    }
    if s.top_p < 1.0 {
        let mut mass = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            mass += p;
            if mass >= s.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        let kept: f32 = probs.iter().sum();
        for p in &mut probs {
            *p /= kept;
        }
    }
    let mut r: f32 = rng.random();
    for (i, p) in probs.iter().enumerate() {
        if r < *p {
            return candidates[i].0;
        }
        r -= p;
    }
    candidates[probs.len().saturating_sub(1)].0
}

struct Running {
    request: GenRequest,
    events: tokio_mpsc::UnboundedSender<GenEvent>,
    rng: StdRng,
    /// The next token to feed (after the prompt).
    next: u32,
    /// Tokens in the KV cache.
    position: usize,
    generated: Vec<u32>,
    /// Bytes of the decoded text already sent.
    sent: usize,
    started: Instant,
}

enum Step {
    Continue,
    Finished,
}

/// The generations decoding together: one model run advances them all by a token.
///
/// Their KV caches are one batch `[members, kv_heads, len, head_dim]` per layer, each
/// member's entries right-aligned (left padding, masked out); each step appends one
/// position for everyone, so the cache a run returns is the next run's input as is.
/// Only a change of members (a join after prefill, a finish) copies the caches, once.
#[derive(Default)]
struct Group {
    members: Vec<Running>,
    /// Per layer: key, value.
    past: Vec<DynValue>,
    len: usize,
}

/// A KV cache entry source when (re)building a group.
enum Source<'a> {
    /// A fresh prefill: `[1, heads, position, dim]` per layer.
    Solo(&'a [DynValue]),
    /// Row `row` of the current group.
    Row(usize),
}

struct Engine {
    session: Session,
    tokenizer: Arc<Tokenizer>,
    config: Arc<GenerationConfig>,
    metrics: Metrics,
    /// Per layer: past key, past value, present key, present value input/output names.
    names: Vec<[String; 4]>,
    max_batch: usize,
}

type Inputs<'v> = Vec<(Cow<'v, str>, SessionInputValue<'v>)>;

impl Engine {
    fn serve(&mut self, rx: &mpsc::Receiver<Job>) {
        let mut waiting: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
        let mut group = Group::default();
        loop {
            if group.members.is_empty() && waiting.is_empty() {
                match rx.recv() {
                    Ok(job) => waiting.push_back(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                waiting.push_back(job);
            }
            // One prefill per turn, so running streams are not held up by a queue of
            // new prompts; it joins the group if room is left.
            if group.members.len() < self.max_batch
                && let Some(job) = waiting.pop_front()
            {
                self.prefill(job, &mut group);
            }
            if !group.members.is_empty() {
                self.decode_step(&mut group);
            }
        }
    }

    fn admit(&self, job: Job) -> Running {
        self.metrics
            .queue_delay
            .observe(job.queued.elapsed().as_secs_f64());
        let seed = job
            .request
            .sampling
            .seed
            .unwrap_or_else(|| rand::rng().random());
        Running {
            request: job.request,
            events: job.events,
            rng: StdRng::seed_from_u64(seed),
            next: 0,
            position: 0,
            generated: Vec::new(),
            sent: 0,
            started: Instant::now(),
        }
    }

    /// Runs `job`'s prompt alone, takes its first token, and adds it to the group.
    fn prefill(&mut self, job: Job, group: &mut Group) {
        let mut r = self.admit(job);
        if r.events.is_closed() {
            return;
        }
        let prompt: Vec<i64> = r.request.prompt.iter().map(|&t| i64::from(t)).collect();
        let n = prompt.len();
        let result = self.run(&[prompt], &[vec![1; n]], &[(0..n as i64).collect()], None);
        let (mut logits, past) = match result {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "prefill failed");
                let _ = r.events.send(GenEvent::Failed(e));
                return;
            }
        };
        r.position = n;
        let token = sample(
            biased(&mut logits[0], &r.request.logit_bias),
            &r.request.sampling,
            &mut r.rng,
        );
        self.metrics
            .time_to_first_token
            .observe(r.started.elapsed().as_secs_f64());
        if let Step::Finished = self.accept(&mut r, token) {
            return;
        }
        let mut sources: Vec<Source<'_>> = (0..group.members.len()).map(Source::Row).collect();
        sources.push(Source::Solo(&past));
        let mut members = std::mem::take(&mut group.members);
        members.push(r);
        self.regroup(group, members, &sources);
    }

    /// One token for every member of the group.
    fn decode_step(&mut self, group: &mut Group) {
        let b = group.members.len();
        let ids: Vec<Vec<i64>> = group
            .members
            .iter()
            .map(|r| vec![i64::from(r.next)])
            .collect();
        let masks: Vec<Vec<i64>> = group
            .members
            .iter()
            .map(|r| {
                let mut m = vec![0; group.len - r.position];
                m.resize(group.len + 1, 1);
                m
            })
            .collect();
        let positions: Vec<Vec<i64>> = group
            .members
            .iter()
            .map(|r| vec![r.position as i64])
            .collect();
        let past = std::mem::take(&mut group.past);
        let result = self.run(&ids, &masks, &positions, Some(&past));
        let (mut logits, present) = match result {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, batch = b, "decode step failed");
                for r in group.members.drain(..) {
                    let _ = r.events.send(GenEvent::Failed(e.clone()));
                }
                *group = Group::default();
                return;
            }
        };
        self.metrics.batch_size.observe(b as f64);
        group.past = present;
        group.len += 1;
        let mut keep = Vec::with_capacity(b);
        for (row, r) in group.members.iter_mut().enumerate() {
            r.position += 1;
            let token = sample(
                biased(&mut logits[row], &r.request.logit_bias),
                &r.request.sampling,
                &mut r.rng,
            );
            if let Step::Continue = self.accept(r, token) {
                keep.push(row);
            }
        }
        if keep.len() < b {
            let members = std::mem::take(&mut group.members);
            let kept: Vec<Running> = members
                .into_iter()
                .enumerate()
                .filter(|(i, _)| keep.contains(i))
                .map(|(_, r)| r)
                .collect();
            let sources: Vec<Source<'_>> = keep.iter().map(|&i| Source::Row(i)).collect();
            self.regroup(group, kept, &sources);
        }
    }

    /// Rebuilds `group` with `members`, taking each one's cache from `sources` (same
    /// order): right-aligned in a batch as long as the longest.
    fn regroup(&self, group: &mut Group, members: Vec<Running>, sources: &[Source<'_>]) {
        if members.is_empty() {
            *group = Group::default();
            return;
        }
        let len = members.iter().map(|r| r.position).max().unwrap_or(0);
        let (heads, dim) = (self.config.num_kv_heads, self.config.head_dim);
        let mut past = Vec::with_capacity(self.names.len() * 2);
        for layer in 0..self.names.len() * 2 {
            let mut batch = ndarray::Array4::<f32>::zeros((members.len(), heads, len, dim));
            for (row, (r, source)) in members.iter().zip(sources).enumerate() {
                let (value, from_row, offset) = match source {
                    Source::Solo(values) => (&values[layer], 0, 0),
                    Source::Row(i) => (&group.past[layer], *i, group.len - r.position),
                };
                let Ok(view) = value.try_extract_array::<f32>() else {
                    continue;
                };
                let Ok(view) = view.into_dimensionality::<ndarray::Ix4>() else {
                    continue;
                };
                let src = view
                    .index_axis(ndarray::Axis(0), from_row)
                    .slice_axis(
                        ndarray::Axis(1),
                        ndarray::Slice::from(offset..offset + r.position),
                    )
                    .to_owned();
                batch
                    .index_axis_mut(ndarray::Axis(0), row)
                    .slice_axis_mut(
                        ndarray::Axis(1),
                        ndarray::Slice::from(len - r.position..len),
                    )
                    .assign(&src);
            }
            match Tensor::from_array(batch) {
                Ok(t) => past.push(t.into_dyn()),
                Err(e) => {
                    for r in members {
                        let _ = r
                            .events
                            .send(GenEvent::Failed(format!("cannot build the KV cache: {e}")));
                    }
                    *group = Group::default();
                    return;
                }
            }
        }
        *group = Group { members, past, len };
    }

    /// Handles a sampled token: end of sequence, stop sequence, limits, streaming.
    fn accept(&self, r: &mut Running, token: u32) -> Step {
        if self.config.eos_token_ids.contains(&token) {
            return self.finish(r, FinishReason::Stop);
        }
        r.generated.push(token);
        r.next = token;
        self.metrics.tokens.inc();
        if !r.request.stop.is_empty()
            && let Ok(text) = self.tokenizer.decode(&r.generated, true)
            && let Some(at) = r
                .request
                .stop
                .iter()
                .filter_map(|s| {
                    text[r.sent.min(text.len())..]
                        .find(s.as_str())
                        .map(|i| i + r.sent)
                })
                .min()
        {
            if at > r.sent {
                let _ = r.events.send(GenEvent::Text(text[r.sent..at].to_string()));
            }
            r.sent = text.len();
            let _ = r.events.send(GenEvent::Done {
                finish: FinishReason::Stop,
                input_tokens: r.request.prompt.len() as u64,
                output_tokens: r.generated.len() as u64,
            });
            return Step::Finished;
        }
        if r.generated.len() >= r.request.max_tokens as usize
            || r.position + 1 >= self.config.context_length
        {
            return self.finish(r, FinishReason::Length);
        }
        // A caller that went away (cancelled) stops its generation here.
        if !self.flush_text(r, false) || r.events.is_closed() {
            return Step::Finished;
        }
        Step::Continue
    }

    fn finish(&self, r: &mut Running, finish: FinishReason) -> Step {
        self.flush_text(r, true);
        let _ = r.events.send(GenEvent::Done {
            finish,
            input_tokens: r.request.prompt.len() as u64,
            output_tokens: r.generated.len() as u64,
        });
        Step::Finished
    }

    /// Sends the decoded text not yet sent. Unless `all`, holds back an incomplete
    /// UTF-8 sequence and what could still become a stop sequence.
    fn flush_text(&self, r: &mut Running, all: bool) -> bool {
        let Ok(text) = self.tokenizer.decode(&r.generated, true) else {
            return false;
        };
        let mut end = text.len();
        if !all {
            let hold = r
                .request
                .stop
                .iter()
                .map(|s| s.len())
                .max()
                .unwrap_or(1)
                .saturating_sub(1);
            end = end.saturating_sub(hold);
            while end > r.sent && !text.is_char_boundary(end) {
                end -= 1;
            }
            if text[..end].ends_with('\u{FFFD}') {
                end -= '\u{FFFD}'.len_utf8();
            }
        }
        if end > r.sent {
            let piece = text[r.sent..end].to_string();
            r.sent = end;
            return r.events.send(GenEvent::Text(piece)).is_ok();
        }
        true
    }

    /// One model run over a batch: `ids`, `masks`, `positions` per row, and the batch's
    /// KV cache (`None`: empty). Returns each row's last logits and the new cache.
    fn run(
        &mut self,
        ids: &[Vec<i64>],
        masks: &[Vec<i64>],
        positions: &[Vec<i64>],
        past: Option<&[DynValue]>,
    ) -> Result<(Vec<Vec<f32>>, Vec<DynValue>), String> {
        let err = |e: ort::Error| format!("the model failed: {e}");
        let b = ids.len();
        let n = ids.first().map_or(0, Vec::len);
        let table = |rows: &[Vec<i64>]| {
            let width = rows.first().map_or(0, Vec::len);
            Array2::from_shape_vec((rows.len(), width), rows.concat()).map_err(|e| e.to_string())
        };
        let mut inputs: Inputs<'_> = vec![
            (
                "input_ids".into(),
                Tensor::from_array(table(ids)?).map_err(err)?.into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array(table(masks)?).map_err(err)?.into(),
            ),
            (
                "position_ids".into(),
                Tensor::from_array(table(positions)?).map_err(err)?.into(),
            ),
        ];
        let (heads, dim) = (self.config.num_kv_heads, self.config.head_dim);
        match past {
            None => {
                for names in &self.names {
                    for name in &names[..2] {
                        let empty =
                            Tensor::<f32>::from_array(([b, heads, 0, dim], Vec::<f32>::new()))
                                .map_err(err)?;
                        inputs.push((name.as_str().into(), empty.into()));
                    }
                }
            }
            Some(past) => {
                for (names, pair) in self.names.iter().zip(past.chunks(2)) {
                    inputs.push((names[0].as_str().into(), (&pair[0]).into()));
                    inputs.push((names[1].as_str().into(), (&pair[1]).into()));
                }
            }
        }
        let mut outputs = self.session.run(inputs).map_err(err)?;
        let logits = {
            let (shape, data) = outputs
                .get("logits")
                .ok_or("the model has no output logits")?
                .try_extract_tensor::<f32>()
                .map_err(err)?;
            let vocab = self.config.vocab_size;
            if **shape != [b as i64, n as i64, vocab as i64] {
                return Err(format!("logits have shape {shape:?}"));
            }
            // each row's last position: one contiguous slice of the [b, n, vocab] tensor
            (0..b)
                .map(|row| data[(row * n + n - 1) * vocab..][..vocab].to_vec())
                .collect()
        };
        let mut present = Vec::with_capacity(self.names.len() * 2);
        for names in &self.names {
            for name in &names[2..] {
                present.push(
                    outputs
                        .remove(name.as_str())
                        .ok_or_else(|| format!("the model has no output {name}"))?,
                );
            }
        }
        Ok((logits, present))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_logit() {
        let s = Sampling {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: Some(1),
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(sample(&[0.1, 3.0, -2.0, 2.9], &s, &mut rng), 1);
        // ties: the first; NaN never wins; all negative
        assert_eq!(sample(&[1.0, 5.0, 5.0, 2.0], &s, &mut rng), 1);
        assert_eq!(
            sample(&[f32::NAN, -3.0, f32::NAN, -1.5, -9.0], &s, &mut rng),
            3
        );
        let mut big = vec![-1e9f32; 49_152];
        big[40_000] = -2.5;
        assert_eq!(sample(&big, &s, &mut rng), 40_000);
        // the max in the tail that is not a whole lane chunk, and in the first chunk
        let mut odd: Vec<f32> = (0..37).map(|i| i as f32 * 0.01).collect();
        odd[36] = 7.0;
        assert_eq!(sample(&odd, &s, &mut rng), 36);
        odd[3] = 7.0;
        assert_eq!(sample(&odd, &s, &mut rng), 3);
        assert_eq!(sample(&[f32::NAN; 20], &s, &mut rng), 0);
    }

    #[test]
    fn top_k_and_top_p_bound_the_choice() {
        let logits = [5.0, 4.9, 0.0, -1.0, -3.0];
        let mut rng = StdRng::seed_from_u64(7);
        let k2 = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 2,
            seed: None,
        };
        let p = Sampling {
            temperature: 1.0,
            top_p: 0.5,
            top_k: 0,
            seed: None,
        };
        let mut seen_k = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen_k.insert(sample(&logits, &k2, &mut rng));
            assert_eq!(
                sample(&logits, &p, &mut rng),
                0,
                "top_p 0.5 keeps only the first"
            );
        }
        assert_eq!(seen_k.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn same_seed_same_choices() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.95,
            top_k: 20,
            seed: Some(3),
        };
        let run = || {
            let mut rng = StdRng::seed_from_u64(3);
            (0..20)
                .map(|_| sample(&logits, &s, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn the_chat_template_is_applied() {
        let template = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nDefault<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let text = render_chat(template, &[Message::text(Role::User, "Hi")]).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nDefault<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let bad = render_chat("{{ raise_exception('no') }}", &[]).unwrap_err();
        assert!(bad.contains("no"), "{bad}");
    }
}
