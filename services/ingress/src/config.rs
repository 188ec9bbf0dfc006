//! Ingress configuration: flags, each also read from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use schemas::{SealKey, SealKeyArgs};

/// Switchyard's HTTP API: OpenAI-compatible chat completions over NATS JetStream.
#[derive(Clone, Parser)]
#[command(name = "switchyard-ingress", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "INGRESS_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// The dev API key (`Authorization: Bearer <key>`), accepted as account `dev` next
    /// to accounts' keys. Read it from the environment, never from a flag in shell history.
    #[arg(long, env = "SWITCHYARD_DEV_API_KEY", hide_env_values = true)]
    pub dev_api_key: String,

    #[command(flatten)]
    pub seal: SealKeyArgs,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "INGRESS_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long a request may take end to end before the caller gets a 504; also the
    /// deadline after which workers drop it. At most the REQUESTS stream's max age (300 s).
    #[arg(long, env = "INGRESS_REQUEST_TIMEOUT_SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=290))]
    pub request_timeout_secs: u64,

    /// How long to wait for JetStream to acknowledge a published request.
    #[arg(long, env = "INGRESS_PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    pub publish_timeout_ms: u64,

    /// This ingress instance's id in reply subjects; random when unset.
    #[arg(long, env = "INGRESS_ID")]
    pub ingress_id: Option<String>,

    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Accounts' API keys (from Postgres) and per-key rate limits.
#[derive(Clone, clap::Args)]
pub struct AuthArgs {
    /// Postgres holding accounts and API keys (`switchyard-admin`). Unset: only the
    /// dev key is accepted.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// How long a verified key is trusted without asking Postgres again. A revocation
    /// (`switchyard-admin key revoke`) is announced over Postgres `NOTIFY` and drops the
    /// key from every ingress's cache at once; this bounds how long a revoked key may
    /// still work only while that announcement cannot reach the ingress.
    #[arg(long, env = "INGRESS_AUTH_CACHE_TTL_SECS", default_value_t = 30)]
    pub auth_cache_ttl_secs: u64,

    /// Most keys held in that cache.
    #[arg(long, env = "INGRESS_AUTH_CACHE_SIZE", default_value_t = 10_000)]
    pub auth_cache_size: usize,

    /// Requests per second allowed per API key (token bucket); 0 = no limit.
    #[arg(long, env = "INGRESS_RATE_LIMIT_RPS", default_value_t = 0.0)]
    pub rate_limit_rps: f64,

    /// Requests a key may send at once above the steady rate; 0 = the rate (at least 1).
    #[arg(long, env = "INGRESS_RATE_LIMIT_BURST", default_value_t = 0)]
    pub rate_limit_burst: u32,

    /// How often the accounts over their monthly spend limit are reloaded from
    /// Postgres (so also how long a reached limit may take to refuse requests).
    #[arg(long, env = "INGRESS_SPEND_REFRESH_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub spend_refresh_secs: u64,
}

impl AuthArgs {
    /// How often spend limits are reloaded.
    pub fn spend_refresh(&self) -> Duration {
        Duration::from_secs(self.spend_refresh_secs)
    }
}

impl Default for AuthArgs {
    fn default() -> Self {
        Self {
            database_url: None,
            auth_cache_ttl_secs: 30,
            auth_cache_size: 10_000,
            rate_limit_rps: 0.0,
            rate_limit_burst: 0,
            spend_refresh_secs: 5,
        }
    }
}

impl std::fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("AuthArgs")
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field("auth_cache_ttl_secs", &self.auth_cache_ttl_secs)
            .field("auth_cache_size", &self.auth_cache_size)
            .field("rate_limit_rps", &self.rate_limit_rps)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("spend_refresh_secs", &self.spend_refresh_secs)
            .finish()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("bind", &self.bind)
            .field("nats_url", &switchyard_nats::redact_url(&self.nats_url))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("ingress_id", &self.ingress_id)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("SWITCHYARD_DEV_API_KEY must not be empty")]
    EmptyApiKey,
    #[error("seal key: {0}")]
    SealKey(#[from] schemas::SealError),
    #[error("INGRESS_ID must be 1-32 ASCII letters or digits")]
    BadIngressId,
    #[error("INGRESS_RATE_LIMIT_RPS must be a finite number >= 0")]
    BadRateLimit,
}

impl Config {
    /// The seal key, from the environment or the key file.
    pub fn seal_key(&self) -> Result<SealKey, ConfigError> {
        Ok(self.seal.load()?)
    }

    /// The ingress id used in reply subjects.
    pub fn ingress_id(&self) -> Result<String, ConfigError> {
        match &self.ingress_id {
            Some(id)
                if !id.is_empty()
                    && id.len() <= 32
                    && id.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                Ok(id.clone())
            }
            Some(_) => Err(ConfigError::BadIngressId),
            None => Ok(format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dev_api_key.trim().is_empty() {
            return Err(ConfigError::EmptyApiKey);
        }
        self.seal_key()?;
        self.ingress_id()?;
        if !(self.auth.rate_limit_rps.is_finite() && self.auth.rate_limit_rps >= 0.0) {
            return Err(ConfigError::BadRateLimit);
        }
        Ok(())
    }
}
