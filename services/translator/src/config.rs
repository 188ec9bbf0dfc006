//! Translator configuration: flags, each also read from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use schemas::{SealKey, SealKeyArgs};

/// Closed-model worker: pulls `req.closed.<provider>` from JetStream, calls the
/// provider with the caller's key, and streams the answer back.
#[derive(Clone, Parser)]
#[command(name = "switchyard-translator", version, about)]
pub struct Config {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    #[command(flatten)]
    pub seal: SealKeyArgs,

    /// OpenAI API base URL; the translator POSTs `{base}/chat/completions`.
    #[arg(
        long,
        env = "SWITCHYARD_OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub openai_base_url: String,

    /// Anthropic API base URL; the translator POSTs `{base}/v1/messages`.
    #[arg(
        long,
        env = "SWITCHYARD_ANTHROPIC_BASE_URL",
        default_value = "https://api.anthropic.com"
    )]
    pub anthropic_base_url: String,

    /// Gemini API base URL; the translator POSTs
    /// `{base}/v1beta/models/{model}:generateContent` (or `:streamGenerateContent?alt=sse`).
    #[arg(
        long,
        env = "SWITCHYARD_GEMINI_BASE_URL",
        default_value = "https://generativelanguage.googleapis.com"
    )]
    pub gemini_base_url: String,

    /// Address of the health and metrics endpoint (`/healthz`, `/metrics`).
    #[arg(long, env = "TRANSLATOR_BIND", default_value = "127.0.0.1:8081")]
    pub bind: SocketAddr,

    /// Requests handled at once by this process.
    #[arg(long, env = "TRANSLATOR_CONCURRENCY", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Attempts per provider call, the first included; retries happen only before the
    /// first byte reached the caller, for connect errors, timeouts, 429 and 5xx.
    #[arg(long, env = "TRANSLATOR_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=10))]
    pub max_attempts: u32,

    /// Seconds to wait for a provider to accept a connection.
    #[arg(long, env = "TRANSLATOR_CONNECT_TIMEOUT_SECS", default_value_t = 10)]
    pub connect_timeout_secs: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("nats_url", &switchyard_nats::redact_url(&self.nats_url))
            .field("openai_base_url", &self.openai_base_url)
            .field("anthropic_base_url", &self.anthropic_base_url)
            .field("gemini_base_url", &self.gemini_base_url)
            .field("bind", &self.bind)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("seal key: {0}")]
    SealKey(#[from] schemas::SealError),
    #[error("provider base URL {0:?} must start with http:// or https://")]
    BaseUrl(String),
}

impl Config {
    /// The seal key, from the environment or the key file.
    pub fn seal_key(&self) -> Result<SealKey, ConfigError> {
        Ok(self.seal.load()?)
    }

    /// The retry policy for provider calls.
    pub fn retry_policy(&self) -> crate::retry::RetryPolicy {
        crate::retry::RetryPolicy {
            max_attempts: self.max_attempts,
            ..crate::retry::RetryPolicy::default()
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.seal_key()?;
        for url in [
            &self.openai_base_url,
            &self.anthropic_base_url,
            &self.gemini_base_url,
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::BaseUrl(url.clone()));
            }
        }
        Ok(())
    }
}
