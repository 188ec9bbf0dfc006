//! Inference worker configuration: flags, each also read from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use schemas::SealKeyArgs;

/// Open-model worker: one process is one instance of one model. It pulls the model's
/// requests (`req.open.<model-token>`) from JetStream, runs them with ONNX Runtime and
/// streams the answer back.
#[derive(Clone, Debug, Parser)]
#[command(name = "switchyard-inference", version, about)]
pub struct Config {
    /// The model this instance serves: an open-model id from the catalog
    /// (`GET /v1/catalog`), e.g. `sentence-transformers/all-MiniLM-L6-v2`.
    #[arg(long, env = "INFERENCE_MODEL")]
    pub model: String,

    /// The account whose cluster this instance belongs to: instances are single-tenant
    /// and pull only that account's requests (`req.open.<model>.<account>`).
    #[arg(long, env = "INFERENCE_ACCOUNT")]
    pub account: String,

    /// This instance's id (in heartbeats and usage events); generated when absent.
    #[arg(long, env = "INFERENCE_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    #[command(flatten)]
    pub seal: SealKeyArgs,

    /// Directory the models were built into (`infra/models/setup.py`).
    #[arg(long, env = "SWITCHYARD_MODELS_DIR", default_value = ".models")]
    pub models_dir: PathBuf,

    /// The ONNX Runtime shared library, e.g. the `onnxruntime` wheel's
    /// `onnxruntime/capi/libonnxruntime.so.1.31.1`.
    #[arg(long, env = "SWITCHYARD_ORT_LIB")]
    pub ort_lib: PathBuf,

    /// Execution providers to try, in order; the first that registers runs the model,
    /// and which one did is logged and exported (`inference_execution_provider`).
    /// `tensorrt` and `cuda` need a build with the `gpu` feature and onnxruntime-gpu.
    #[arg(
        long,
        env = "INFERENCE_EXECUTION_PROVIDERS",
        default_value = "tensorrt,cuda,cpu",
        value_delimiter = ','
    )]
    pub execution_providers: Vec<String>,

    /// Where TensorRT keeps its engine and timing caches between starts.
    #[arg(
        long,
        env = "INFERENCE_TRT_CACHE_DIR",
        default_value = ".cache/tensorrt"
    )]
    pub trt_cache_dir: PathBuf,

    /// Threads ONNX Runtime uses inside one operator (0: one per core).
    #[arg(long, env = "INFERENCE_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Encoder models (embeddings, zero-shot): model runs at the same time, each on a
    /// session of its own with its share of `--threads` (at least one each); the runs
    /// of one batch go side by side. A lone run with every runner idle goes to one more
    /// session with all the threads, so a single request is not slowed down. More
    /// sentences per second under concurrent load and for batched requests
    /// (loadtest/RESULTS.md), for runners + 1 copies of the model in memory. 0: two on
    /// the CPU provider with at least two threads, else one. Generation models ignore it.
    #[arg(long, env = "INFERENCE_ENCODER_RUNNERS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=64))]
    pub encoder_runners: u16,

    /// Requests taken from the stream at once (0: twice the model's `max_batch`).
    #[arg(long, env = "INFERENCE_CONCURRENCY", default_value_t = 0)]
    pub concurrency: usize,

    /// How often the instance reports its instance-seconds (and beats), in ms.
    #[arg(long, env = "INFERENCE_USAGE_PERIOD_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub usage_period_ms: u64,

    /// Address of the health and metrics endpoint (`/healthz`, `/metrics`); port 0
    /// picks a free one (several instances run on one host).
    #[arg(long, env = "INFERENCE_BIND", default_value = "127.0.0.1:0")]
    pub bind: SocketAddr,
}

impl Config {
    /// [`Config::usage_period_ms`] as a duration.
    pub fn usage_period(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.usage_period_ms)
    }
}
