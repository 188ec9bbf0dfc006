//! Switchyard's autoscaler: makes the instances of every cluster follow its queues.
//!
//! - [`decide`]: the scaling rule, a pure function (property-tested).
//! - [`backend`]: where instances run — local processes or Kubernetes Deployments.
//! - [`Reconciler`]: about once a second, for every cluster spec in KV `clusters`:
//!   interactive load = `num_pending + num_ack_pending` of its consumer
//!   `open__<model>__<account>` (REQUESTS), batch load = the same of
//!   `batch__<model>__<account>` (BATCHWORK; 0 while that consumer does not exist);
//!   desired from [`decide`]; start or stop (drain) instances; write the cluster's
//!   status. Instances that died unasked are billed from their heartbeat up to their
//!   death (a process exit) or their last heartbeat (silent past
//!   [`Config::heartbeat_deadline`], or the heartbeat expired), and replaced on the
//!   next tick if the load still needs them. Clusters
//!   whose spec was deleted are scaled to zero. Optionally the translator pool follows
//!   the closed-model queues (`translator` on REQUESTS, `translator-batch` on
//!   BATCHWORK).
//! - [`metrics`]: instances and desired per pool, queue depth per pool and kind
//!   (`interactive`, `batch`), decisions, cold starts.
//! - [`Progress`]: the watchdog — `/healthz` is 503 once no tick finished for
//!   `AUTOSCALER_STALL_AFTER_MS`, so a liveness probe restarts a stuck reconciler.
//!
//! # Batch work and autoscaling
//!
//! Workers serve interactive requests first and take batch work only with idle
//! capacity, so a batch job never slows interactive traffic down. Whether pending batch
//! work also makes the autoscaler start or keep instances is the cluster's
//! `batch_instances` setting (default 1, at most `capacity.max`):
//!
//! ```text
//! desired = clamp(max(ceil(interactive_load / target_concurrency),
//!                     min(ceil(batch_load / target_concurrency), batch_instances)),
//!                 min, max)
//! ```
//!
//! (`interactive_load` and `batch_load` are the pending plus in-flight requests of the
//! cluster's two queues.) Interactive load scales a cluster exactly as it does without
//! batch work; batch work alone keeps at most `batch_instances` instances running.
//!
//! - `batch_instances = 0`: batch work only rides on instances that interactive load
//!   or `capacity.min` keeps running. It never starts an instance, never holds the
//!   cluster above zero, and does not count as activity for the idle timeout; with
//!   `min = 0` and no interactive traffic it waits in its queue (BATCHWORK keeps it up
//!   to a week) until something starts an instance.
//! - `batch_instances ≥ 1`: a cluster at zero starts for a batch job; pending batch
//!   work counts as activity, so the cluster goes down to `capacity.min` `timeout`
//!   minutes after both queues are empty.
//!
//! Instances kept for batch work are billed like any other (instance-seconds). The
//! translator pool counts closed-model batch work (`translator-batch`) the same way as
//! interactive work — `max(ceil(interactive / target), ceil(batch / target))` within
//! its configured min and max — so it never drops below one translator while either
//! queue has work.

pub mod backend;
pub mod config;
pub mod decide;
pub mod metrics;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use async_nats::jetstream::consumer::{Info as ConsumerInfo, PullConsumer, pull};
use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{self, ErrorCode, kv};
use chrono::Utc;
use futures::StreamExt;
use schemas::cluster::{
    ClusterSpec, ClusterState, ClusterStatus, InstanceHeartbeat, heartbeat_key, status_key,
};
use schemas::subjects::{self, model_token};
use schemas::{InstanceState, UsageBody, UsageEvent};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use backend::{Backend, Pool};
pub use config::{BackendKind, Config};
use metrics::{DirectionLabels, Metrics, PoolLabels, QueueLabels};

/// Why the autoscaler could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Connect(switchyard_nats::ConnectError),
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Bind(#[from] switchyard_telemetry::BindError),
}

/// What the reconciler remembers about a pool between ticks.
#[derive(Debug)]
struct Memory {
    idle_since: Instant,
    spec_modified: Option<chrono::DateTime<Utc>>,
    /// When the pool's first instance was started from zero, and how many messages the
    /// queue had delivered then: a delivery since means an instance is pulling.
    cold_start: Option<(Instant, u64)>,
}

/// What one tick saw of a pool's queues.
#[derive(Debug)]
struct Observed {
    load: decide::Load,
    /// Pull requests waiting (an instance is pulling).
    waiting: usize,
    /// Messages delivered so far (both queues).
    delivered: u64,
    /// Interactive requests answered.
    inferences: u64,
    last_inference_at: Option<chrono::DateTime<Utc>>,
}

/// The durable consumer on BATCHWORK holding `pool`'s batch work.
fn batch_consumer(pool: &Pool) -> Result<String, String> {
    match pool {
        Pool::Cluster { account, model } => Ok(switchyard_nats::batch_consumer_name(
            &model_token(model).map_err(|e| e.to_string())?,
            &model_token(account).map_err(|e| e.to_string())?,
        )),
        Pool::Translators => Ok(subjects::TRANSLATOR_BATCH_CONSUMER.to_string()),
    }
}

/// A durable consumer's info, from one consumer-info call; `None` when the stream or
/// the consumer does not exist: the batch router makes a cluster's batch queue when it
/// first routes work to it, so a missing one holds nothing.
async fn batch_info(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Result<Option<ConsumerInfo>, String> {
    match js
        .get_consumer_from_stream::<pull::Config, _, _>(consumer, stream)
        .await
    {
        Ok(c) => Ok(Some(c.cached_info().clone())),
        Err(e) => match e.kind() {
            ConsumerErrorKind::JetStream(j)
                if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND
                    || j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(format!("batch queue {stream}/{consumer}: {e}")),
        },
    }
}

/// The reconcile loop's state.
#[derive(Debug)]
pub struct Reconciler {
    config: Config,
    js: jetstream::Context,
    clusters: kv::Store,
    instances: kv::Store,
    pub backend: Backend,
    pub metrics: Metrics,
    memory: BTreeMap<Pool, Memory>,
    consumers: BTreeMap<Pool, PullConsumer>,
    /// Ready instances per (account, model), read from the heartbeats once a tick.
    ready: BTreeMap<(String, String), u32>,
    /// Every heartbeat seen, by key, and when it last changed (this clock).
    beats: BTreeMap<String, Seen>,
    /// A pass could not read from NATS since the heartbeats were last read.
    blind: bool,
    /// This client's connection count when the heartbeats were last read.
    connects: u64,
}

/// A heartbeat as last read, and when it last moved.
#[derive(Debug)]
struct Seen {
    beat: InstanceHeartbeat,
    changed: Instant,
}

impl Seen {
    /// Unchanged for longer than its instance's heartbeat deadline.
    fn silent(&self, config: &Config, now: Instant) -> bool {
        let period = Duration::from_millis(self.beat.period_ms.unwrap_or(10_000));
        now.duration_since(self.changed) > config.heartbeat_deadline(period)
    }
}

impl Reconciler {
    pub async fn new(
        config: Config,
        js: jetstream::Context,
        backend: Backend,
    ) -> Result<Self, Error> {
        let bucket = |name: &'static str| {
            let js = js.clone();
            async move {
                js.get_key_value(name).await.map_err(|e| {
                    Error::Setup(format!(
                        "KV bucket {name} not found ({e}); run `switchyard-nats apply` first"
                    ))
                })
            }
        };
        Ok(Self {
            clusters: bucket(subjects::CLUSTERS_BUCKET).await?,
            instances: bucket(subjects::INSTANCES_BUCKET).await?,
            config,
            js,
            backend,
            metrics: Metrics::default(),
            memory: BTreeMap::new(),
            consumers: BTreeMap::new(),
            ready: BTreeMap::new(),
            beats: BTreeMap::new(),
            blind: false,
            connects: 0,
        })
    }

    /// Every cluster spec in KV, by pool.
    async fn specs(&self) -> Result<BTreeMap<Pool, ClusterSpec>, String> {
        let mut keys = self.clusters.keys().await.map_err(|e| e.to_string())?;
        let mut specs = BTreeMap::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if !key.starts_with("spec.") {
                continue;
            }
            let Some(value) = self.clusters.get(&key).await.map_err(|e| e.to_string())? else {
                continue;
            };
            match serde_json::from_slice::<ClusterSpec>(&value) {
                Ok(spec) => {
                    specs.insert(
                        Pool::Cluster {
                            account: spec.account.clone(),
                            model: spec.model_id.clone(),
                        },
                        spec,
                    );
                }
                Err(e) => tracing::warn!(key, error = %e, "unreadable cluster spec; skipped"),
            }
        }
        Ok(specs)
    }

    /// The queue (consumer) of `pool`, made on first use.
    async fn queue(&mut self, pool: &Pool) -> Result<&mut PullConsumer, String> {
        if !self.consumers.contains_key(pool) {
            let consumer = match pool {
                Pool::Cluster { account, model } => {
                    let m = model_token(model).map_err(|e| e.to_string())?;
                    let a = model_token(account).map_err(|e| e.to_string())?;
                    switchyard_nats::ensure_open_model_consumer(&self.js, &m, &a)
                        .await
                        .map_err(|e| e.to_string())?
                }
                Pool::Translators => self
                    .js
                    .get_stream(subjects::REQUESTS_STREAM)
                    .await
                    .map_err(|e| e.to_string())?
                    .get_consumer(subjects::TRANSLATOR_CONSUMER)
                    .await
                    .map_err(|e| e.to_string())?,
            };
            self.consumers.insert(pool.clone(), consumer);
        }
        self.consumers
            .get_mut(pool)
            .ok_or_else(|| "consumer vanished".to_string())
    }

    /// One reconciliation of every pool.
    pub async fn tick(&mut self) -> Result<(), String> {
        for exited in self.backend.reap() {
            if exited.unexpected {
                self.metrics.crashes.inc();
                tracing::warn!(pool = %exited.pool, instance = %exited.instance_id, status = %exited.status, "instance died; it will be replaced if the load needs it");
                if let Pool::Cluster { account, model } = &exited.pool
                    && let Some(beat) = self.heartbeat(account, model, &exited.instance_id).await
                {
                    self.redeliver(&beat).await;
                    self.bill_tail(&beat, exited.at_ms).await;
                }
            }
        }
        if let Err(e) = self.backend.refresh().await {
            self.metrics.errors.inc();
            tracing::warn!(error = %e, "cannot read the instances back; using the last view");
        }
        let specs = match self.specs().await {
            Ok(specs) => specs,
            Err(e) => {
                self.blind = true;
                return Err(e);
            }
        };
        for lost in self.read_heartbeats().await {
            self.metrics.crashes.inc();
            tracing::warn!(instance = %lost.instance_id, model = %lost.model, "instance stopped heartbeating; billed to its last heartbeat, replaced if the load needs it");
            self.bill_tail(&lost, lost.beat_ms).await;
            self.backend.lost(
                &Pool::Cluster {
                    account: lost.account.clone(),
                    model: lost.model.clone(),
                },
                &lost.instance_id,
            );
        }
        for (pool, spec) in &specs {
            let policy = decide::Policy {
                min: spec.capacity.min,
                max: spec.capacity.max,
                target_concurrency: spec.target_concurrency,
                timeout: self.config.idle_timeout(spec.timeout_minutes),
                prewarm: spec.capacity.desired,
                batch_instances: spec.batch_instances,
            };
            if let Err(e) = self.reconcile(pool, &policy, Some(spec)).await {
                self.metrics.errors.inc();
                tracing::warn!(pool = %pool, error = %e, "reconciling failed");
            }
        }
        if self.config.translators_max > 0 {
            let policy = decide::Policy {
                min: self.config.translators_min,
                max: self.config.translators_max,
                target_concurrency: self.config.translator_target,
                timeout: self
                    .config
                    .idle_timeout(schemas::cluster::DEFAULT_TIMEOUT_MINUTES),
                prewarm: 0,
                // Closed-model batch work counts like interactive work, up to the max.
                batch_instances: self.config.translators_max,
            };
            if let Err(e) = self.reconcile(&Pool::Translators, &policy, None).await {
                self.metrics.errors.inc();
                tracing::warn!(error = %e, "reconciling the translators failed");
            }
        }
        // Clusters whose spec is gone: scale to zero, forget.
        let known: BTreeSet<&Pool> = specs.keys().collect();
        for pool in self.backend.pools() {
            if matches!(pool, Pool::Cluster { .. }) && !known.contains(&pool) {
                tracing::info!(pool = %pool, "cluster deleted; stopping its instances");
                self.backend.scale(&pool, 0).await?;
                if let Pool::Cluster { account, model } = &pool
                    && let Ok(key) = status_key(account, model)
                {
                    let _ = self.clusters.delete(key).await;
                }
            }
        }
        self.memory
            .retain(|p, _| known.contains(p) || *p == Pool::Translators);
        Ok(())
    }

    /// What the pool's queues hold now: its interactive queue (one consumer-info call
    /// on the cached consumer) and its batch queue (one consumer-info call; none yet
    /// means no batch work), read concurrently.
    async fn observe(&mut self, pool: &Pool) -> Result<Observed, String> {
        let js = self.js.clone();
        let batch_consumer = batch_consumer(pool)?;
        let interactive = async {
            let info = self
                .queue(pool)
                .await?
                .info()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(info.clone())
        };
        let (interactive, batch) = tokio::join!(
            interactive,
            batch_info(&js, subjects::BATCHWORK_STREAM, &batch_consumer)
        );
        let (interactive, batch) = (interactive?, batch?);
        let backlog = |i: &ConsumerInfo| i.num_pending + i.num_ack_pending as u64;
        Ok(Observed {
            load: decide::Load {
                interactive: backlog(&interactive),
                batch: batch.as_ref().map_or(0, backlog),
            },
            waiting: interactive.num_waiting + batch.as_ref().map_or(0, |b| b.num_waiting),
            delivered: interactive.delivered.consumer_sequence
                + batch.as_ref().map_or(0, |b| b.delivered.consumer_sequence),
            inferences: interactive.ack_floor.consumer_sequence,
            last_inference_at: interactive.ack_floor.last_active.and_then(|t| {
                chrono::DateTime::<Utc>::from_timestamp(t.unix_timestamp(), t.nanosecond())
            }),
        })
    }

    async fn reconcile(
        &mut self,
        pool: &Pool,
        policy: &decide::Policy,
        spec: Option<&ClusterSpec>,
    ) -> Result<(), String> {
        let Observed {
            load,
            waiting,
            delivered,
            inferences,
            last_inference_at,
        } = self.observe(pool).await?;
        let now = Instant::now();
        let memory = self.memory.entry(pool.clone()).or_insert(Memory {
            idle_since: now,
            spec_modified: spec.map(|s| s.modified),
            cold_start: None,
        });
        if policy.busy(load) {
            memory.idle_since = now;
        }
        // A changed spec (e.g. a new pre-warm count) restarts the idle clock.
        if let Some(s) = spec
            && memory.spec_modified != Some(s.modified)
        {
            memory.spec_modified = Some(s.modified);
            memory.idle_since = now;
        }
        let current = self.backend.count(pool);
        let want = decide::desired(policy, load, current, now.duration_since(memory.idle_since));
        if let Some((started, delivered_then)) = memory.cold_start
            && (waiting > 0 || delivered > delivered_then || current == 0)
        {
            if current > 0 {
                let took = started.elapsed();
                self.metrics.cold_start.observe(took.as_secs_f64());
                tracing::info!(pool = %pool, ms = took.as_millis() as u64, "cold start done: the first instance is pulling");
            }
            memory.cold_start = None;
        }
        if want != current {
            if current == 0 && want > 0 {
                memory.cold_start = Some((now, delivered));
            }
            tracing::info!(pool = %pool, load = load.interactive, batch_load = load.batch, current, want, "scaling");
            self.backend.scale(pool, want).await?;
            self.metrics
                .decisions
                .get_or_create(&DirectionLabels {
                    direction: if want > current { "up" } else { "down" }.into(),
                })
                .inc();
        }
        let labels = PoolLabels {
            pool: pool.to_string(),
        };
        self.metrics
            .instances
            .get_or_create(&labels)
            .set(i64::from(self.backend.count(pool)));
        self.metrics
            .desired
            .get_or_create(&labels)
            .set(i64::from(want));
        for (kind, depth) in [("interactive", load.interactive), ("batch", load.batch)] {
            self.metrics
                .queue_depth
                .get_or_create(&QueueLabels {
                    pool: labels.pool.clone(),
                    kind: kind.into(),
                })
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        if let Pool::Cluster { account, model } = pool {
            let state = if want == 0 {
                ClusterState::Stopped
            } else if want != current || waiting == 0 {
                ClusterState::Scaling
            } else if load == decide::Load::default() {
                ClusterState::Idle
            } else {
                ClusterState::Running
            };
            let ready = self.backend.ready(pool).unwrap_or_else(|| {
                self.ready
                    .get(&(account.clone(), model.clone()))
                    .copied()
                    .unwrap_or(0)
            });
            self.metrics
                .ready
                .get_or_create(&labels)
                .set(i64::from(ready));
            let status = ClusterStatus {
                state,
                instances: want,
                ready,
                desired: want,
                load: load.interactive,
                batch_load: load.batch,
                inferences,
                last_inference_at,
                updated: Utc::now(),
            };
            let key = status_key(account, model).map_err(|e| e.to_string())?;
            let value = serde_json::to_vec(&status).map_err(|e| e.to_string())?;
            self.clusters
                .put(key, value.into())
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// One pass over KV `instances`: the ready instances per (account, model), and the
    /// instances lost since the last pass: silent for longer than
    /// [`Config::heartbeat_deadline`] of their period, their heartbeat unchanged or
    /// expired (the bucket's max age; a stopping instance deletes its own), counted
    /// only over time this autoscaler could read NATS.
    async fn read_heartbeats(&mut self) -> Vec<InstanceHeartbeat> {
        let Ok(mut keys) = self.instances.keys().await else {
            self.blind = true;
            return Vec::new();
        };
        let now = Instant::now();
        // Silence is judged only over time this autoscaler could watch. After it could
        // not reach NATS (a failed read, or a reconnect since the last pass) nobody
        // may have been able to write heartbeats either: every instance gets a full
        // deadline again from now, to reconnect and beat.
        let connects = self
            .js
            .client()
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed);
        if std::mem::take(&mut self.blind) || connects != self.connects {
            if !self.beats.is_empty() {
                tracing::info!(
                    instances = self.beats.len(),
                    "NATS was out of reach: heartbeat deadlines start again"
                );
            }
            for seen in self.beats.values_mut() {
                seen.changed = now;
            }
        }
        self.connects = connects;
        let mut ready = BTreeMap::new();
        let mut present = BTreeSet::new();
        let mut lost = Vec::new();
        while let Some(key) = keys.next().await {
            let Ok(key) = key else {
                // A partial listing: what was not listed is not taken for gone.
                self.blind = true;
                return Vec::new();
            };
            let Ok(Some(v)) = self.instances.get(&key).await else {
                continue;
            };
            let Ok(beat) = serde_json::from_slice::<InstanceHeartbeat>(&v) else {
                continue;
            };
            present.insert(key.clone());
            let silent = match self.beats.get_mut(&key) {
                Some(seen) if seen.beat.beat_ms == beat.beat_ms => seen.silent(&self.config, now),
                Some(seen) => {
                    seen.beat = beat.clone();
                    seen.changed = now;
                    false
                }
                None => {
                    self.beats.insert(
                        key,
                        Seen {
                            beat: beat.clone(),
                            changed: now,
                        },
                    );
                    false
                }
            };
            if silent {
                // Lost: not serving, whatever its heartbeat last said.
                lost.push(beat);
            } else if beat.state == InstanceState::Ready {
                *ready.entry((beat.account, beat.model)).or_insert(0) += 1;
            }
        }
        self.ready = ready;
        // Gone since the last pass: deleted (stopped cleanly, or billed here already)
        // or expired. An expired one is silent, and lost once its deadline has passed
        // (an entry also expires while NATS is down, and the instance may yet beat).
        let gone: Vec<String> = self
            .beats
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            match self.instances.entry(key.as_str()).await {
                Ok(None) => {
                    if self
                        .beats
                        .get(&key)
                        .is_some_and(|seen| seen.silent(&self.config, now))
                        && let Some(seen) = self.beats.remove(&key)
                    {
                        lost.push(seen.beat);
                    }
                }
                Ok(Some(_)) => {
                    self.beats.remove(&key);
                }
                // Unreadable: judged on a later pass.
                Err(_) => {}
            }
        }
        for beat in &lost {
            if let Ok(key) = heartbeat_key(&beat.account, &beat.model, &beat.instance_id) {
                self.beats.remove(&key);
            }
        }
        lost
    }

    /// An instance's heartbeat, if it has one.
    async fn heartbeat(
        &self,
        account: &str,
        model: &str,
        instance_id: &str,
    ) -> Option<InstanceHeartbeat> {
        let key = heartbeat_key(account, model, instance_id).ok()?;
        match self.instances.get(&key).await {
            Ok(Some(v)) => serde_json::from_slice(&v).ok(),
            _ => {
                tracing::warn!(
                    instance = instance_id,
                    "no heartbeat: the dead instance's last seconds cannot be billed"
                );
                None
            }
        }
    }

    /// NAKs the deliveries a dead instance listed in its last heartbeat, so JetStream
    /// redelivers them now rather than after the ack wait. Only for an exit just
    /// reaped: nats-server does not check which delivery a NAK names, so a late one
    /// could start a second run of a message already redelivered
    /// (`switchyard_nats::inflight`). A delivery that finished meanwhile is no longer
    /// pending, and its NAK is ignored.
    async fn redeliver(&self, beat: &InstanceHeartbeat) {
        let client = self.js.client();
        let acks: Vec<&String> = beat
            .in_flight_acks
            .iter()
            .filter(|ack| ack.starts_with(switchyard_nats::inflight::ACK_PREFIX))
            .collect();
        for ack in &acks {
            if let Err(e) = client.publish((*ack).clone(), "-NAK".into()).await {
                tracing::warn!(error = %e, "cannot NAK a dead instance's delivery; it comes back after the ack wait");
            }
        }
        if !acks.is_empty() {
            tracing::info!(instance = %beat.instance_id, deliveries = acks.len(), "a dead instance's deliveries redelivered now");
        }
    }

    /// An instance died without reporting its last period: bill it from its heartbeat's
    /// `billed_until_ms` to `at_ms`, under the ids the instance would have used, record
    /// it as failed, and delete its heartbeat (so it is billed once). A period it had
    /// published without a PubAck (`unconfirmed_until_ms`) may be stored already: it
    /// is published again exactly as the instance made it, and the tail starts at its
    /// end.
    async fn bill_tail(&self, beat: &InstanceHeartbeat, at_ms: i64) {
        let (account, model, instance_id) = (&beat.account, &beat.model, &beat.instance_id);
        let period = |start, end| {
            UsageEvent::instance_period(
                account,
                model,
                &beat.instance_type,
                instance_id,
                start,
                end,
            )
        };
        let mut events = Vec::new();
        let mut start = beat.billed_until_ms;
        if let Some(end) = beat.unconfirmed_until_ms.filter(|&end| end > start) {
            events.push(period(start, end));
            start = end;
        }
        if at_ms > start {
            events.push(period(start, at_ms));
        }
        events.push(UsageEvent {
            schema_version: schemas::SCHEMA_VERSION,
            event_id: UsageEvent::lifecycle_id(instance_id, InstanceState::Failed),
            account: account.to_string(),
            emitted_at: Utc::now(),
            body: UsageBody::Lifecycle {
                cluster: model.to_string(),
                model: model.to_string(),
                instance_type: beat.instance_type.clone(),
                instance_id: instance_id.to_string(),
                state: InstanceState::Failed,
                at_ms,
            },
        });
        for event in events {
            let (Ok(subject), Ok(payload)) = (event.subject(), schemas::encode(&event)) else {
                continue;
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(schemas::headers::MSG_ID, event.event_id.as_str());
            let stored = match self
                .js
                .publish_with_headers(subject, headers, payload.into())
                .await
            {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if !stored {
                tracing::warn!(event = %event.event_id, "usage of a dead instance not stored");
            }
        }
        if let Ok(key) = heartbeat_key(account, model, instance_id) {
            let _ = self.instances.delete(&key).await;
        }
    }
}

/// Builds the configured backend.
pub fn backend(config: &Config) -> Result<Backend, Error> {
    Ok(match config.backend {
        BackendKind::Process => Backend::Process(backend::process::ProcessBackend::new(
            config
                .inference_bin
                .clone()
                .unwrap_or_else(|| Config::sibling("switchyard-inference")),
            config
                .translator_bin
                .clone()
                .unwrap_or_else(|| Config::sibling("switchyard-translator")),
            config.log_dir.clone(),
            Vec::new(),
        )),
        BackendKind::Kubernetes => Backend::Kubernetes(
            backend::kubernetes::KubernetesBackend::in_cluster(
                config.k8s_namespace.clone(),
                config.k8s_image.clone(),
            )
            .map_err(Error::Setup)?,
        ),
    })
}

/// When the reconciliation loop last finished a tick (or started): the watchdog behind
/// `/healthz`.
#[derive(Clone, Debug)]
pub struct Progress(Arc<std::sync::Mutex<std::time::Instant>>);

impl Default for Progress {
    fn default() -> Self {
        Self(Arc::new(std::sync::Mutex::new(std::time::Instant::now())))
    }
}

impl Progress {
    /// A tick finished, well or not.
    pub fn beat(&self) {
        if let Ok(mut last) = self.0.lock() {
            *last = std::time::Instant::now();
        }
    }

    /// Whether no tick finished for longer than `after`.
    pub fn stalled(&self, after: Duration) -> bool {
        self.stalled_at(std::time::Instant::now(), after)
    }

    /// [`Self::stalled`], seen at `now`.
    pub fn stalled_at(&self, now: std::time::Instant, after: Duration) -> bool {
        self.0
            .lock()
            .map_or(true, |last| now.saturating_duration_since(*last) > after)
    }
}

/// Connects, serves `/healthz` and `/metrics`, and reconciles every `tick` until
/// `shutdown`; then stops the instances it started (process backend).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let listener = switchyard_telemetry::bind(config.bind).await?;
    let mut backend = backend(&config)?;
    if let Backend::Kubernetes(k8s) = &mut backend {
        // What an earlier autoscaler started is this one's to scale (or stop).
        let adopted = k8s.adopt().await.map_err(Error::Setup)?;
        tracing::info!(adopted, "inference Deployments taken over");
    }
    serve(listener, config, backend, shutdown).await
}

/// Like [`run`] with the listener and backend given (tests).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    backend: Backend,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let client = switchyard_nats::connect(&config.nats_url, "switchyard-autoscaler")
        .await
        .map_err(Error::Connect)?;
    let js = jetstream::new(client);
    let tick = config.tick();
    let progress = Progress::default();
    let stall_after = Duration::from_millis(config.stall_after_ms);
    let mut reconciler = Reconciler::new(config, js, backend).await?;
    let metrics = reconciler.metrics.clone();
    let watched = progress.clone();
    let app = switchyard_telemetry::health_router(
        move || !watched.stalled(stall_after),
        move || metrics.render(),
    );
    let http = switchyard_telemetry::serve_health(listener, app, shutdown.clone());
    let reconciling = async {
        let mut every = tokio::time::interval(tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = shutdown.cancelled() => break,
            }
            if let Err(e) = reconciler.tick().await {
                reconciler.metrics.errors.inc();
                tracing::warn!(error = %e, "reconciliation failed");
            }
            progress.beat();
        }
        tracing::info!("autoscaler stopping; draining the instances it started");
        reconciler.backend.shutdown().await;
    };
    tracing::info!(tick_ms = tick.as_millis() as u64, "autoscaler reconciling");
    tokio::join!(http, reconciling);
    Ok(())
}
