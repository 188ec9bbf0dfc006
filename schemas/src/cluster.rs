//! Clusters: the instances serving one open model for one account, and how they scale.
//!
//! Stored in the JetStream KV bucket `clusters` (see `nats/kv/clusters.json`), under two
//! keys per cluster so that no two writers ever race on one value:
//!
//! - `spec.<account-token>.<model-token>`: [`ClusterSpec`], written by the ingress's
//!   cluster API (and by the first request for a model that has no cluster);
//! - `status.<account-token>.<model-token>`: [`ClusterStatus`], written by the autoscaler.
//!
//! Instances beat in the KV bucket `instances` (entries expire after 30 s) under
//! `<account-token>.<model-token>.<instance-id>` with an [`InstanceHeartbeat`].

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::subjects::{ModelIdError, model_token};

/// Idle minutes before a cluster scales to `min`: the default and the bounds.
pub const DEFAULT_TIMEOUT_MINUTES: u32 = 10;
pub const MAX_TIMEOUT_MINUTES: u32 = 24 * 60;
/// Most instances one cluster may have.
pub const MAX_INSTANCES: u32 = 64;
/// `capacity.max` of a cluster created without one (and of the cluster a first request
/// to an open model creates).
pub const DEFAULT_MAX_INSTANCES: u32 = 4;
/// Concurrent requests per instance: the default (one instance per concurrent request)
/// and the most.
pub const DEFAULT_TARGET_CONCURRENCY: u32 = 1;
pub const MAX_TARGET_CONCURRENCY: u32 = 256;
/// Instances pending batch work alone may keep running, by default: one, so a batch
/// job for a cluster at zero starts it (and it scales to zero once the job is done).
pub const DEFAULT_BATCH_INSTANCES: u32 = 1;

fn default_batch_instances() -> u32 {
    DEFAULT_BATCH_INSTANCES
}

/// How many instances a cluster may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Capacity {
    /// Never fewer (0: scale to zero when idle).
    #[serde(default)]
    pub min: u32,
    /// Instances wanted right now: set by the autoscaler from the load; a value given
    /// when the cluster is created or updated starts that many at once (pre-warming),
    /// until the load says otherwise.
    #[serde(default)]
    pub desired: u32,
    /// Never more.
    pub max: u32,
}

/// What the owner asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterSpec {
    pub account: String,
    pub model_id: String,
    pub capacity: Capacity,
    /// Idle minutes (no load, nothing pending) before scaling to `capacity.min`.
    pub timeout_minutes: u32,
    /// What instances run on and are billed as (the catalog's, e.g. `cpu`).
    pub instance_type: String,
    /// Concurrent requests per instance (1: one instance per concurrent request).
    pub target_concurrency: u32,
    /// How many instances pending batch work alone may keep running (at most
    /// `capacity.max`). Instances serve interactive requests first and take batch work
    /// with idle capacity; interactive load scales the cluster as usual, and batch work
    /// adds `min(ceil(batch / target_concurrency), batch_instances)` on its own.
    /// 0: batch work only uses instances that interactive load or `capacity.min` keeps
    /// running — it never starts one nor holds the cluster above zero. Default 1: a
    /// batch job starts a cluster at zero, which scales down `timeout` minutes after
    /// the batch work is done. Specs written before this field existed read as 1.
    #[serde(default = "default_batch_instances")]
    pub batch_instances: u32,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
}

impl ClusterSpec {
    /// The cluster made when nobody said otherwise: min 0 (scale to zero), desired 0,
    /// max [`DEFAULT_MAX_INSTANCES`], [`DEFAULT_TIMEOUT_MINUTES`],
    /// [`DEFAULT_TARGET_CONCURRENCY`], [`DEFAULT_BATCH_INSTANCES`], on `instance_type`
    /// (the catalog's).
    pub fn with_defaults(
        account: &str,
        model_id: &str,
        instance_type: &str,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            account: account.to_string(),
            model_id: model_id.to_string(),
            capacity: Capacity {
                min: 0,
                desired: 0,
                max: DEFAULT_MAX_INSTANCES,
            },
            timeout_minutes: DEFAULT_TIMEOUT_MINUTES,
            instance_type: instance_type.to_string(),
            target_concurrency: DEFAULT_TARGET_CONCURRENCY,
            batch_instances: DEFAULT_BATCH_INSTANCES,
            created: now,
            modified: now,
        }
    }
}

/// What the autoscaler last saw and did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterStatus {
    pub state: ClusterState,
    /// Instances running (ready or starting).
    pub instances: u32,
    /// Instances ready: model loaded, pulling requests (from their heartbeats).
    #[serde(default)]
    pub ready: u32,
    /// Instances the autoscaler wants.
    pub desired: u32,
    /// Interactive requests pending plus in flight (the cluster's REQUESTS queue).
    pub load: u64,
    /// Batch work pending plus in flight (the cluster's BATCHWORK queue; 0 when it
    /// has none).
    #[serde(default)]
    pub batch_load: u64,
    /// Requests answered.
    pub inferences: u64,
    #[serde(default)]
    pub last_inference_at: Option<DateTime<Utc>>,
    pub updated: DateTime<Utc>,
}

/// Where a cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    /// Created; no instance asked for yet.
    Creating,
    /// Instances running, as many as wanted.
    Running,
    /// Running, no load; scales to `min` after the timeout.
    Idle,
    /// Starting or stopping instances.
    Scaling,
    /// No instances (scaled to zero).
    Stopped,
    /// Instances keep failing to start.
    Failed,
    #[serde(other)]
    Other,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Creating => "creating",
            ClusterState::Running => "running",
            ClusterState::Idle => "idle",
            ClusterState::Scaling => "scaling",
            ClusterState::Stopped => "stopped",
            ClusterState::Failed => "failed",
            ClusterState::Other => "other",
        }
    }
}

/// A running instance's heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InstanceHeartbeat {
    pub instance_id: String,
    pub account: String,
    pub model: String,
    pub instance_type: String,
    pub state: crate::usage::InstanceState,
    pub started_ms: i64,
    /// Usage has been reported up to here (end of the last `InstancePeriod`).
    pub billed_until_ms: i64,
    pub beat_ms: i64,
    /// The execution provider the model runs on.
    #[serde(default)]
    pub execution_provider: Option<String>,
    /// The process id, on its host.
    #[serde(default)]
    pub pid: Option<u32>,
    /// How often the instance beats (and reports a period), in ms: an instance silent
    /// for three of these (and the autoscaler's grace) is taken for lost.
    #[serde(default)]
    pub period_ms: Option<u64>,
    /// The end of the period the instance published from `billed_until_ms` but has no
    /// PubAck for: it may be stored (the client sends what it buffered once it
    /// reconnects), so a tail billed for this instance goes from here on, and that
    /// period itself is published again exactly as the instance made it.
    #[serde(default)]
    pub unconfirmed_until_ms: Option<i64>,
    /// The JetStream ack subjects (`$JS.ACK.…`) of the deliveries the instance was
    /// running when it wrote this heartbeat: if it dies, the autoscaler NAKs them so
    /// they are redelivered at once rather than after the ack wait.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight_acks: Vec<String>,
}

/// `<account-token>.<model-token>`: a cluster's name in KV keys.
pub fn cluster_key(account: &str, model_id: &str) -> Result<String, ModelIdError> {
    Ok(format!(
        "{}.{}",
        model_token(account)?,
        model_token(model_id)?
    ))
}

/// The KV key of a cluster's spec.
pub fn spec_key(account: &str, model_id: &str) -> Result<String, ModelIdError> {
    Ok(format!("spec.{}", cluster_key(account, model_id)?))
}

/// The KV key of a cluster's status.
pub fn status_key(account: &str, model_id: &str) -> Result<String, ModelIdError> {
    Ok(format!("status.{}", cluster_key(account, model_id)?))
}

/// The KV key of an instance's heartbeat.
pub fn heartbeat_key(
    account: &str,
    model_id: &str,
    instance_id: &str,
) -> Result<String, ModelIdError> {
    Ok(format!(
        "{}.{}",
        cluster_key(account, model_id)?,
        model_token(instance_id)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_separate_for_spec_and_status_and_injective() {
        let m = "HuggingFaceTB/SmolLM2-135M-Instruct";
        assert_eq!(
            spec_key("acme", m).unwrap(),
            "spec.acme.HuggingFaceTB_2FSmolLM2-135M-Instruct"
        );
        assert_eq!(
            status_key("acme", m).unwrap(),
            "status.acme.HuggingFaceTB_2FSmolLM2-135M-Instruct"
        );
        assert_ne!(
            cluster_key("a.b", "c").unwrap(),
            cluster_key("a", "b.c").unwrap()
        );
        assert!(cluster_key("a b", m).is_err());
    }

    #[test]
    fn a_spec_from_before_batch_instances_reads_as_the_default() {
        let spec = ClusterSpec::with_defaults("acme", "m", "cpu", Utc::now());
        let mut value = serde_json::to_value(&spec).unwrap();
        value.as_object_mut().unwrap().remove("batch_instances");
        let old: ClusterSpec = serde_json::from_value(value).unwrap();
        assert_eq!(old.batch_instances, DEFAULT_BATCH_INSTANCES);
        assert_eq!(old, spec);
    }
}
