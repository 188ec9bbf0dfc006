//! Autoscaler configuration: flags, each also read from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Where instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Local `switchyard-inference` / `switchyard-translator` processes.
    Process,
    /// One Deployment per cluster, scaled through the Kubernetes API (in a pod).
    Kubernetes,
}

/// Reconciles cluster specs (KV `clusters`) with running instances about once a second:
/// one instance per `target_concurrency` requests in a cluster's queue (batch work alone
/// up to `batch_instances`), within [min, max], down to `min` after `timeout` idle
/// minutes; replaces instances that die.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchyard-autoscaler", version, about)]
pub struct Config {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Where instances run.
    #[arg(
        long,
        env = "AUTOSCALER_BACKEND",
        value_enum,
        default_value = "process"
    )]
    pub backend: BackendKind,

    /// Milliseconds between reconciliations.
    #[arg(long, env = "AUTOSCALER_TICK_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub tick_ms: u64,

    /// How long the reconciliation loop may go without finishing a tick before
    /// `/healthz` answers 503, in ms: a liveness probe on it restarts a reconciler that
    /// hangs (a tick that fails still finishes). Generous: stopping an instance waits
    /// for its drain (up to 35 s) inside a tick.
    #[arg(long, env = "AUTOSCALER_STALL_AFTER_MS", default_value_t = 120_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub stall_after_ms: u64,

    /// Length of one "minute" of a cluster's idle timeout, in ms. 60000 in production;
    /// tests and demos shrink it so scale-to-zero happens in seconds.
    #[arg(long, env = "AUTOSCALER_IDLE_MINUTE_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub idle_minute_ms: u64,

    /// How long past three missed heartbeats an instance is given before it counts as
    /// lost (billed to its last heartbeat, marked failed, killed if it is a local
    /// process, replaced if the load needs it), in ms. Generous: an instance writes its
    /// heartbeat after its period's PubAck, which waits for an fsync, and a busy host
    /// can hold that up for seconds; a live instance taken for lost is killed.
    #[arg(long, env = "AUTOSCALER_HEARTBEAT_GRACE_MS", default_value_t = 20_000)]
    pub heartbeat_grace_ms: u64,

    /// The inference worker binary (process backend); default: next to this one.
    #[arg(long, env = "AUTOSCALER_INFERENCE_BIN")]
    pub inference_bin: Option<PathBuf>,

    /// The translator binary (process backend); default: next to this one.
    #[arg(long, env = "AUTOSCALER_TRANSLATOR_BIN")]
    pub translator_bin: Option<PathBuf>,

    /// Directory for the instances' logs (process backend); inherited stderr if unset.
    #[arg(long, env = "AUTOSCALER_LOG_DIR")]
    pub log_dir: Option<PathBuf>,

    /// Translators the loop may add from the closed-model queues, interactive and batch
    /// (0: translators are not managed here).
    #[arg(long, env = "AUTOSCALER_TRANSLATORS_MAX", default_value_t = 0)]
    pub translators_max: u32,

    /// Translators always running (when managed).
    #[arg(long, env = "AUTOSCALER_TRANSLATORS_MIN", default_value_t = 0)]
    pub translators_min: u32,

    /// Queued closed-model requests (interactive or batch) per translator before
    /// another starts.
    #[arg(long, env = "AUTOSCALER_TRANSLATOR_TARGET", default_value_t = 256)]
    pub translator_target: u32,

    /// Kubernetes namespace (kubernetes backend; default: the pod's).
    #[arg(long, env = "AUTOSCALER_K8S_NAMESPACE")]
    pub k8s_namespace: Option<String>,

    /// Container image of the inference workers (kubernetes backend).
    #[arg(
        long,
        env = "AUTOSCALER_K8S_IMAGE",
        default_value = "switchyard/inference:latest"
    )]
    pub k8s_image: String,

    /// Address of the health and metrics endpoint (`/healthz`, `/metrics`).
    #[arg(long, env = "AUTOSCALER_BIND", default_value = "127.0.0.1:8082")]
    pub bind: SocketAddr,
}

impl Config {
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// How long an instance that reports every `period` may go without a new
    /// heartbeat: three periods and the grace.
    pub fn heartbeat_deadline(&self, period: Duration) -> Duration {
        period.saturating_mul(3) + Duration::from_millis(self.heartbeat_grace_ms)
    }

    /// A cluster's idle timeout of `minutes`.
    pub fn idle_timeout(&self, minutes: u32) -> Duration {
        Duration::from_millis(self.idle_minute_ms.saturating_mul(u64::from(minutes)))
    }

    /// `name` next to the running executable.
    pub fn sibling(name: &str) -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join(name)))
            .unwrap_or_else(|| PathBuf::from(name))
    }
}
