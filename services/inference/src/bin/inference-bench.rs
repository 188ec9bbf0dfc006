//! `inference-bench`: the open-model benchmark, in-process through the real engines
//! (`switchyard_inference::load_model`, no NATS), one JSON object on stdout.
//!
//! - `corpus`: the fixed embedding corpus, tokenized exactly as the encoder does, so a
//!   baseline in another language gets identical inputs;
//! - `embed`: sentences/s and latency at fixed batch sizes, and under a closed-loop
//!   concurrent load;
//! - `generate`: tokens/s and time to first token, one stream and N at once.
//!
//! `loadtest/bench_inference.py` runs it next to a Python onnxruntime baseline and
//! tabulates; see loadtest/README.md. Progress goes to stderr, results to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use schemas::catalog::{Catalog, OpenModel};
use schemas::{Message, Role};
use serde_json::{Value, json};
use switchyard_inference::decoder::{Decoder, GenEvent, GenRequest, Sampling};
use switchyard_inference::encoder::{self, Batching, Encoder};
use switchyard_inference::metrics::Metrics;
use switchyard_inference::{Config, Engine, load_model, runtime, start_encoder};

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const SMOLLM: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// Benchmarks the open-model engines in-process (no NATS): embeddings
/// (all-MiniLM-L6-v2) and generation (SmolLM2-135M-Instruct). Prints one JSON object on
/// stdout; progress on stderr. Pin it with `taskset -c CPU` and match `--threads`.
#[derive(Parser, Debug)]
#[command(name = "inference-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Writes the embedding corpus as JSON: `texts` and, per text, `input_ids`,
    /// `attention_mask` and `token_type_ids` (unpadded), tokenized exactly as the
    /// encoder tokenizes (same tokenizer file, truncation at the catalog's
    /// `max_input_tokens`). With `--vectors`, also the encoder's embeddings.
    Corpus(CorpusCmd),
    /// Embedding benchmark: the corpus at fixed batch sizes (requests of B texts, one
    /// at a time, in corpus order), then C closed-loop clients each sending one text at
    /// a time for a fixed duration.
    Embed(EmbedCmd),
    /// Generation benchmark (greedy, fixed prompts): each prompt alone (single stream),
    /// then all at once (concurrent streams). Reports tokens actually generated: a
    /// generation may end at EOS before `--max-tokens`.
    Generate(GenerateCmd),
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// ONNX Runtime shared library (libonnxruntime.so.1.31.x). Default: the
    /// `onnxruntime` wheel's library in
    /// `.tools/venv/lib/python*/site-packages/onnxruntime/capi/`, as the tests find it
    /// (relative: run from the repository root).
    #[arg(long, env = "SWITCHYARD_ORT_LIB")]
    ort_lib: Option<PathBuf>,

    /// Directory the models were built into (`just models`).
    #[arg(long, env = "SWITCHYARD_MODELS_DIR", default_value = ".models")]
    models_dir: PathBuf,

    /// ONNX Runtime intra-op threads, as the worker's `--threads` (0: one per core).
    /// Give the Python baseline the same number, and pin both to as many CPUs.
    #[arg(long, default_value_t = 1)]
    threads: usize,

    /// Encoder model runs at a time, as the worker's `--encoder-runners` (each session
    /// gets `--threads` / runners intra-op threads; 0: the worker's default, two on the
    /// CPU with at least two threads, else one).
    #[arg(long, default_value_t = 0)]
    encoder_runners: u16,

    /// Execution providers to try, in order (as the worker's flag). Only `cpu` runs on
    /// a build without the `gpu` feature.
    #[arg(long, default_value = "cpu", value_delimiter = ',')]
    execution_providers: Vec<String>,

    /// Catalog id of the model. Default: sentence-transformers/all-MiniLM-L6-v2 for
    /// `corpus` and `embed`, HuggingFaceTB/SmolLM2-135M-Instruct for `generate`.
    #[arg(long)]
    model: Option<String>,
}

#[derive(Args, Debug, Clone)]
struct CorpusOpts {
    /// Texts in the corpus. They are built deterministically from a fixed list of
    /// sentences: about half one sentence (a query), the rest two to ten joined (a
    /// passage), so lengths vary from a few tokens to the 256-token truncation.
    #[arg(long, default_value_t = 256)]
    sentences: usize,
}

#[derive(Args, Debug)]
struct CorpusCmd {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    corpus: CorpusOpts,
    /// Also load the model and include `vectors`: the encoder's embedding of every text
    /// (one request holding the whole corpus), for a parity check.
    #[arg(long)]
    vectors: bool,
}

#[derive(Args, Debug)]
struct EmbedCmd {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    corpus: CorpusOpts,

    /// Fixed batch sizes: for each B, the corpus is sent as consecutive requests of B
    /// texts (corpus order), one request at a time; latency is per request.
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    batches: Vec<usize>,

    /// Passes over the corpus per batch size (after one unmeasured warm-up request).
    #[arg(long, default_value_t = 2)]
    passes: usize,

    /// Concurrency levels: for each C, C clients run a closed loop (send one text, wait
    /// for its vector, send the next), client c sending texts c, c+C, c+2C, … of the
    /// corpus, wrapping around.
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    clients: Vec<usize>,

    /// Measured seconds per concurrency level.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// Seconds of load before the measured window of each concurrency level (sent,
    /// not recorded).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,

    /// Skip the fixed-batch part.
    #[arg(long)]
    no_fixed: bool,

    /// Skip the concurrent part.
    #[arg(long)]
    no_concurrent: bool,

    /// Override the catalog's `max_batch` (most sequences per model run). Default: the
    /// catalog's value, as the worker runs.
    #[arg(long)]
    max_batch: Option<usize>,

    /// Override the catalog's `max_delay_ms` (longest a request waits for others to
    /// join its batch). Default: the catalog's value.
    #[arg(long)]
    max_delay_ms: Option<u64>,
}

#[derive(Args, Debug)]
struct GenerateCmd {
    #[command(flatten)]
    common: Common,

    /// Most tokens per generation (greedy; a generation may end earlier at EOS).
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,

    /// Concurrent streams, and how many of the built-in prompts are used (at most 4;
    /// each prompt asks for a long answer). Single stream runs each of them alone.
    #[arg(long, default_value_t = 4)]
    streams: usize,

    /// Skip the concurrent part.
    #[arg(long)]
    no_concurrent: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let out = runtime.block_on(async {
        match cli.command {
            Command::Corpus(cmd) => corpus_cmd(cmd).await,
            Command::Embed(cmd) => embed_cmd(cmd).await,
            Command::Generate(cmd) => generate_cmd(cmd).await,
        }
    })?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &out)?;
    writeln!(stdout)?;
    Ok(())
}

fn progress(msg: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "inference-bench: {msg}");
}

// ---------------------------------------------------------------------------------
// Setup

/// The `onnxruntime` wheel's library in .tools/venv, as tests/common finds it.
fn ort_lib(common: &Common) -> Result<PathBuf> {
    if let Some(p) = &common.ort_lib {
        return Ok(p.clone());
    }
    let lib = PathBuf::from(".tools/venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|py| py.path().join("site-packages/onnxruntime/capi"))
        .flat_map(|capi| std::fs::read_dir(capi).ok().into_iter().flatten().flatten())
        .map(|f| f.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so."))
        })
        .ok_or_else(|| {
            anyhow!(
                "no ONNX Runtime library: pass --ort-lib or SWITCHYARD_ORT_LIB (looked in {}; run from the repository root)",
                lib.display()
            )
        })
}

fn config(common: &Common, default_model: &str) -> Result<Config> {
    use clap::Parser as _;
    let model = common
        .model
        .clone()
        .unwrap_or_else(|| default_model.to_string());
    let ort_lib = ort_lib(common)?;
    let threads = common.threads.to_string();
    let providers = common.execution_providers.join(",");
    // Parsed like the worker's flags (as the tests do), so the defaults are the
    // worker's. Loading a model needs neither NATS nor the seal key nor an account:
    // those flags only satisfy the parser (the key file is never read).
    let args: Vec<std::ffi::OsString> = vec![
        "switchyard-inference".into(),
        "--model".into(),
        model.into(),
        "--account".into(),
        "bench".into(),
        "--seal-key-file".into(),
        "/dev/null".into(),
        "--ort-lib".into(),
        ort_lib.into_os_string(),
        "--models-dir".into(),
        common.models_dir.clone().into_os_string(),
        "--execution-providers".into(),
        providers.into(),
        "--threads".into(),
        threads.into(),
        "--encoder-runners".into(),
        common.encoder_runners.to_string().into(),
    ];
    Config::try_parse_from(args).map_err(|e| anyhow!("building the worker configuration: {e}"))
}

fn open_model(id: &str) -> Result<OpenModel> {
    let catalog = Catalog::embedded().map_err(|e| anyhow!("{e}"))?;
    catalog
        .get(id)
        .and_then(|m| m.open.clone())
        .ok_or_else(|| anyhow!("'{id}' is not an open model of the catalog"))
}

/// Path and size of the model file, so a result says what it measured.
fn model_file(config: &Config, open: &OpenModel) -> Value {
    let path = config.models_dir.join(&open.dir).join(&open.model_file);
    let bytes = std::fs::metadata(&path).map(|m| m.len()).ok();
    json!({"path": path.display().to_string(), "bytes": bytes})
}

fn session_json(config: &Config, provider: &str) -> Value {
    json!({
        "model": config.model,
        "threads": config.threads,
        "encoder_runners": config.encoder_runners,
        "execution_provider": provider,
        "ort_lib": config.ort_lib.display().to_string(),
    })
}

// ---------------------------------------------------------------------------------
// The corpus

/// Queries and sentences of varied length; the corpus joins them deterministically.
const SENTENCES: &[&str] = &[
    "cheap flights to Lisbon in May",
    "How do I reset my password?",
    "The quarterly report shows revenue grew by twelve percent while operating costs stayed flat.",
    "best budget mechanical keyboard",
    "A man is playing a guitar on the street corner while a small crowd gathers to listen.",
    "Symptoms of vitamin D deficiency include fatigue, bone pain, muscle weakness and changes in mood, and they are easy to mistake for other conditions.",
    "refund policy",
    "Our API returns a 429 status code when a client exceeds its rate limit; clients should wait for the number of seconds in the retry-after header before trying again.",
    "What is the capital of Australia?",
    "The committee postponed the vote until next Thursday.",
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen as a by-product, and it takes place mainly in the chloroplasts of leaf cells.",
    "python list comprehension with condition",
    "She finished the marathon in just under four hours despite the heat.",
    "To replace the filter, switch off the unit, open the front panel, slide out the old cartridge and push the new one in until it clicks.",
    "weather tomorrow",
    "In 1969, two astronauts walked on the Moon while a third orbited above in the command module, waiting to bring them home.",
    "Is it safe to give dogs grapes?",
    "The new library branch will open on the first of March, with longer evening hours, a children's reading room, meeting spaces that local groups can book for free, and a small cafe run by volunteers.",
    "translate good morning to Japanese",
    "Interest rates were left unchanged for the third consecutive meeting.",
    "The defendant's lawyer argued that the evidence had been obtained without a valid warrant and should therefore be excluded from the trial.",
    "how long to boil an egg",
    "Mount Everest, at 8,849 metres, is the highest mountain above sea level.",
    "Customers who bought this item also bought a carrying case, a screen protector and a spare charging cable.",
    "Ünicode, émojis and accents: naïve café résumé.",
    "The river flooded the lower town twice in the last decade, so the council is building a new embankment along the eastern bank and raising the road that leads to the bridge.",
    "kubernetes pod stuck in CrashLoopBackOff",
    "Please confirm your appointment by replying YES to this message.",
    "The museum's collection includes more than two million objects, from ancient pottery and textiles to modern paintings, sculptures and photographs, of which only a small fraction is on display at any time.",
    "Error 0x80070005: access is denied.",
    "Shares of the chip maker rose sharply after it raised its full-year forecast.",
    "A gentle introduction to linear algebra covers vectors, matrices, linear maps, determinants, eigenvalues and eigenvectors, with worked examples and exercises at the end of every chapter.",
];

/// `n` texts, the same on every run.
fn corpus(n: usize) -> Vec<String> {
    let mut state: u64 = 0x0051_571c_4a2d_u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    (0..n)
        .map(|_| {
            let parts = match next() % 100 {
                0..=49 => 1,
                50..=74 => 2,
                75..=89 => 3 + next() % 2,
                _ => 6 + next() % 5,
            };
            let start = next();
            (0..parts)
                .map(|k| SENTENCES[(start + k * 7) % SENTENCES.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn quantile(sorted: &[usize], q: f64) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn length_stats(mut lengths: Vec<usize>) -> Value {
    lengths.sort_unstable();
    json!({
        "texts": lengths.len(),
        "tokens": lengths.iter().sum::<usize>(),
        "min": lengths.first().copied().unwrap_or(0),
        "p50": quantile(&lengths, 0.5),
        "p90": quantile(&lengths, 0.9),
        "max": lengths.last().copied().unwrap_or(0),
    })
}

async fn corpus_cmd(cmd: CorpusCmd) -> Result<Value> {
    let config = config(&cmd.common, MINILM)?;
    let open = open_model(&config.model)?;
    let texts = corpus(cmd.corpus.sentences);
    // The encoder's own tokenizer setup (encoder::load_tokenizer), as load_model does.
    let tokenizer = encoder::load_tokenizer(
        &config.models_dir.join(&open.dir).join(&open.tokenizer_file),
        open.max_input_tokens.max(1),
    )
    .map_err(|e| anyhow!(e))?;
    let encodings = tokenizer
        .encode_batch(texts.clone(), true)
        .map_err(|e| anyhow!("tokenization failed: {e}"))?;
    let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
    let mask: Vec<&[u32]> = encodings.iter().map(|e| e.get_attention_mask()).collect();
    let types: Vec<&[u32]> = encodings.iter().map(|e| e.get_type_ids()).collect();
    let mut out = json!({
        "mode": "corpus",
        "model": config.model,
        "model_file": model_file(&config, &open),
        "lengths": length_stats(encodings.iter().map(|e| e.len()).collect()),
        "texts": texts,
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": types,
    });
    if cmd.vectors {
        let (encoder, _, _) = load_encoder(&config, &open, None, None)?;
        let embedded = encoder.embed(texts).await.map_err(|e| anyhow!(e))?;
        out["vectors"] = json!(embedded.vectors);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Embeddings

/// The encoder as the worker runs it (`load_model`), or with the batching limits
/// overridden (then built from the same parts `load_model` uses).
fn load_encoder(
    config: &Config,
    open: &OpenModel,
    max_batch: Option<usize>,
    max_delay_ms: Option<u64>,
) -> Result<(Encoder, Metrics, Value)> {
    let metrics = Metrics::default();
    if max_batch.is_none() && max_delay_ms.is_none() {
        let model = load_model(config, &metrics)?;
        let Engine::Encoder(encoder) = model.engine else {
            bail!("{} is not an encoder", config.model);
        };
        let mut session = session_json(config, model.provider);
        session["max_batch"] = json!(open.max_batch);
        session["max_delay_ms"] = json!(open.max_delay_ms);
        return Ok((encoder, metrics, session));
    }
    let batching = Batching {
        max_batch: max_batch.unwrap_or(open.max_batch).max(1),
        max_delay: Duration::from_millis(max_delay_ms.unwrap_or(open.max_delay_ms)),
    };
    let env = runtime::init(&config.ort_lib)?;
    let tokenizer = encoder::load_tokenizer(
        &config.models_dir.join(&open.dir).join(&open.tokenizer_file),
        open.max_input_tokens.max(1),
    )
    .map_err(|e| anyhow!(e))?;
    let (encoder, provider) = start_encoder(&env, config, open, tokenizer, batching, &metrics)?;
    let mut session = session_json(config, provider);
    session["max_batch"] = json!(batching.max_batch);
    session["max_delay_ms"] = json!(batching.max_delay.as_millis() as u64);
    Ok((encoder, metrics, session))
}

/// Microseconds, 1 µs to 1 h, 3 significant digits.
fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).context("histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

fn ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

fn latency_json(h: &Histogram<u64>) -> Value {
    json!({
        "p50_ms": ms(h, 0.50),
        "p90_ms": ms(h, 0.90),
        "p99_ms": ms(h, 0.99),
        "max_ms": (!h.is_empty()).then(|| h.max() as f64 / 1000.0),
        "mean_ms": (!h.is_empty()).then(|| h.mean() / 1000.0),
    })
}

/// Model runs and sequences so far, from the encoder's `batch_size` histogram.
fn runs_so_far(metrics: &Metrics) -> (f64, f64) {
    let text = metrics.render();
    let value = |name| switchyard_telemetry::sample_value(&text, name).unwrap_or(0.0);
    (
        value("inference_batch_size_count"),
        value("inference_batch_size_sum"),
    )
}

fn batching_json(metrics: &Metrics, before: (f64, f64)) -> Value {
    let (runs, sequences) = runs_so_far(metrics);
    let (runs, sequences) = (runs - before.0, sequences - before.1);
    json!({
        "model_runs": runs,
        "mean_sequences_per_run": (runs > 0.0).then(|| sequences / runs),
    })
}

async fn fixed_batch(
    encoder: &Encoder,
    metrics: &Metrics,
    texts: &[String],
    batch: usize,
    passes: usize,
) -> Result<Value> {
    let batch = batch.max(1);
    encoder
        .embed(texts.iter().take(batch).cloned().collect())
        .await
        .map_err(|e| anyhow!(e))?;
    let mut latency = histogram()?;
    let (mut requests, mut sentences, mut tokens) = (0u64, 0u64, 0u64);
    let before = runs_so_far(metrics);
    let started = Instant::now();
    for _ in 0..passes.max(1) {
        for chunk in texts.chunks(batch) {
            let request = chunk.to_vec();
            let sent = Instant::now();
            let out = encoder.embed(request).await.map_err(|e| anyhow!(e))?;
            record(&mut latency, sent.elapsed());
            requests += 1;
            sentences += chunk.len() as u64;
            tokens += out.tokens;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(json!({
        "batch": batch,
        "requests": requests,
        "sentences": sentences,
        "tokens": tokens,
        "seconds": seconds,
        "sentences_per_s": sentences as f64 / seconds,
        "latency": latency_json(&latency),
        "batching": batching_json(metrics, before),
    }))
}

async fn concurrent_load(
    encoder: &Encoder,
    metrics: &Metrics,
    texts: &[String],
    clients: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Value> {
    let clients = clients.max(1);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let client = |c: usize| {
        let encoder = encoder.clone();
        async move {
            let mut latency = histogram()?;
            let mut done = 0u64;
            let mut k = c;
            while Instant::now() < end {
                let text = texts[k % texts.len()].clone();
                k += clients;
                let sent = Instant::now();
                encoder.embed(vec![text]).await.map_err(|e| anyhow!(e))?;
                let finished = Instant::now();
                // Completions inside the window count, whenever they were sent.
                if finished >= measure_from && finished <= end {
                    record(&mut latency, finished - sent);
                    done += 1;
                }
            }
            Ok::<_, anyhow::Error>((latency, done))
        }
    };
    let before_at = tokio::time::sleep_until(measure_from.into());
    let load = futures::future::join_all((0..clients).map(client));
    // Snapshot the batching counters when the window opens.
    let (results, before) = {
        tokio::pin!(load);
        tokio::pin!(before_at);
        let mut before = None;
        loop {
            tokio::select! {
                results = &mut load => break (results, before.unwrap_or((0.0, 0.0))),
                () = &mut before_at, if before.is_none() => before = Some(runs_so_far(metrics)),
            }
        }
    };
    let mut latency = histogram()?;
    let mut done = 0u64;
    for r in results {
        let (h, n) = r?;
        latency.add(&h).context("merging histograms")?;
        done += n;
    }
    let seconds = duration.as_secs_f64();
    Ok(json!({
        "clients": clients,
        "seconds": seconds,
        "requests": done,
        "sentences_per_s": done as f64 / seconds,
        "latency": latency_json(&latency),
        "batching": batching_json(metrics, before),
    }))
}

async fn embed_cmd(cmd: EmbedCmd) -> Result<Value> {
    let config = config(&cmd.common, MINILM)?;
    let open = open_model(&config.model)?;
    let texts = corpus(cmd.corpus.sentences);
    if texts.is_empty() {
        bail!("--sentences must be at least 1");
    }
    let (encoder, metrics, session) =
        load_encoder(&config, &open, cmd.max_batch, cmd.max_delay_ms)?;
    let mut fixed = Vec::new();
    if !cmd.no_fixed {
        for &batch in &cmd.batches {
            progress(format_args!("embed: batch {batch}, {} passes", cmd.passes));
            fixed.push(fixed_batch(&encoder, &metrics, &texts, batch, cmd.passes).await?);
        }
    }
    let mut concurrent = Vec::new();
    if !cmd.no_concurrent {
        for &clients in &cmd.clients {
            progress(format_args!(
                "embed: {clients} clients, {}s + {}s warm-up",
                cmd.duration, cmd.warmup
            ));
            concurrent.push(
                concurrent_load(
                    &encoder,
                    &metrics,
                    &texts,
                    clients,
                    Duration::from_secs_f64(cmd.warmup),
                    Duration::from_secs_f64(cmd.duration),
                )
                .await?,
            );
        }
    }
    Ok(json!({
        "mode": "embed",
        "session": session,
        "model_file": model_file(&config, &open),
        "corpus": {"sentences": texts.len()},
        "fixed": fixed,
        "concurrent": concurrent,
    }))
}

// ---------------------------------------------------------------------------------
// Generation

/// Prompts that make SmolLM2 write at length.
const PROMPTS: &[&str] = &[
    "Write a detailed, step-by-step guide to baking sourdough bread at home, from feeding the starter to cooling the loaf.",
    "Explain in detail how a modern CPU executes instructions: fetching, decoding, pipelining, caches and branch prediction.",
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Describe the history of the printing press and how it changed Europe, in several paragraphs.",
];

const GREEDY: Sampling = Sampling {
    temperature: 0.0,
    top_p: 1.0,
    top_k: 0,
    seed: Some(0),
};

struct Stream {
    prompt_tokens: u64,
    output_tokens: u64,
    finish: String,
    ttft: Duration,
    total: Duration,
}

impl Stream {
    fn json(&self) -> Value {
        let decode = self.total.saturating_sub(self.ttft).as_secs_f64();
        json!({
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "finish": self.finish,
            "ttft_ms": self.ttft.as_secs_f64() * 1000.0,
            "seconds": self.total.as_secs_f64(),
            // Tokens after the first, over the time after the first: the decode rate
            // (llama.cpp's "tg").
            "decode_tokens_per_s": (self.output_tokens > 1 && decode > 0.0)
                .then(|| (self.output_tokens - 1) as f64 / decode),
            "tokens_per_s": self.output_tokens as f64 / self.total.as_secs_f64(),
        })
    }
}

async fn stream(decoder: &Decoder, prompt: Vec<u32>, max_tokens: u32) -> Result<Stream> {
    let started = Instant::now();
    let mut events = decoder.generate(GenRequest {
        prompt,
        max_tokens,
        sampling: GREEDY,
        stop: vec![],
        logit_bias: vec![],
    });
    let mut ttft = None;
    while let Some(event) = events.recv().await {
        match event {
            GenEvent::Text(_) => {
                ttft.get_or_insert_with(|| started.elapsed());
            }
            GenEvent::Done {
                finish,
                input_tokens,
                output_tokens,
            } => {
                let total = started.elapsed();
                return Ok(Stream {
                    prompt_tokens: input_tokens,
                    output_tokens,
                    finish: format!("{finish:?}").to_lowercase(),
                    ttft: ttft.unwrap_or(total),
                    total,
                });
            }
            GenEvent::Failed(e) => bail!("generation failed: {e}"),
        }
    }
    bail!("the generation ended without Done")
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

async fn generate_cmd(cmd: GenerateCmd) -> Result<Value> {
    let config = config(&cmd.common, SMOLLM)?;
    let open = open_model(&config.model)?;
    let load_started = Instant::now();
    let model = load_model(&config, &Metrics::default())?;
    let load_seconds = load_started.elapsed().as_secs_f64();
    let Engine::Decoder(decoder) = model.engine else {
        bail!("{} is not a decoder", config.model);
    };
    let streams = cmd.streams.clamp(1, PROMPTS.len());
    let prompts = PROMPTS[..streams]
        .iter()
        .map(|p| decoder.prompt(&[Message::text(Role::User, *p)]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!(e))?;
    progress("generate: warm-up");
    stream(&decoder, prompts[0].clone(), 8).await?;

    let mut single = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        progress(format_args!("generate: single stream, prompt {i}"));
        single.push(stream(&decoder, prompt.clone(), cmd.max_tokens).await?);
    }
    let single_summary = json!({
        "decode_tokens_per_s": median(single.iter().map(|s| {
            let d = s.total.saturating_sub(s.ttft).as_secs_f64();
            if s.output_tokens > 1 && d > 0.0 { (s.output_tokens - 1) as f64 / d } else { f64::NAN }
        }).collect()),
        "tokens_per_s": median(single.iter().map(|s| s.output_tokens as f64 / s.total.as_secs_f64()).collect()),
        "ttft_ms": median(single.iter().map(|s| s.ttft.as_secs_f64() * 1000.0).collect()),
        "output_tokens": single.iter().map(|s| s.output_tokens).sum::<u64>(),
    });

    let concurrent = if cmd.no_concurrent {
        Value::Null
    } else {
        progress(format_args!("generate: {streams} concurrent streams"));
        let started = Instant::now();
        let results = futures::future::join_all(
            prompts
                .iter()
                .map(|p| stream(&decoder, p.clone(), cmd.max_tokens)),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
        let wall = started.elapsed().as_secs_f64();
        let total: u64 = results.iter().map(|s| s.output_tokens).sum();
        json!({
            "streams": streams,
            "seconds": wall,
            "output_tokens": total,
            "aggregate_tokens_per_s": total as f64 / wall,
            "ttft_ms": median(results.iter().map(|s| s.ttft.as_secs_f64() * 1000.0).collect()),
            "ttft_max_ms": results.iter().map(|s| s.ttft.as_secs_f64() * 1000.0).fold(0.0, f64::max),
            "per_stream": results.iter().map(Stream::json).collect::<Vec<_>>(),
        })
    };
    Ok(json!({
        "mode": "generate",
        "session": session_json(&config, model.provider),
        "model_file": model_file(&config, &open),
        "load_seconds": load_seconds,
        "max_tokens": cmd.max_tokens,
        "sampling": "greedy",
        "prompts": PROMPTS[..streams],
        "prompt_ids": prompts,
        "eos_token_ids": decoder_eos(&config, &open)?,
        "single": {"summary": single_summary, "runs": single.iter().map(Stream::json).collect::<Vec<_>>()},
        "concurrent": concurrent,
    }))
}

/// The EOS ids from generation.json, for a reference that stops where the decoder does.
fn decoder_eos(config: &Config, open: &OpenModel) -> Result<Vec<u32>> {
    let file = open
        .generation_file
        .as_ref()
        .ok_or_else(|| anyhow!("{} has no generation_file", config.model))?;
    let generation = switchyard_inference::decoder::GenerationConfig::load(
        &config.models_dir.join(&open.dir).join(file),
    )
    .map_err(|e| anyhow!(e))?;
    Ok(generation.eos_token_ids)
}
