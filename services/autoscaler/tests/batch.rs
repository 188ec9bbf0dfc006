//! Batch work and autoscaling (the rule in the crate docs), against a real nats-server
//! on tokio's paused clock: the reconciler is ticked by hand and time moves only by
//! `tokio::time::advance`, so the idle timeout is checked to the tick. Instances are
//! stand-in processes (a script that sleeps): what is checked is how many the loop
//! keeps, from what the queues hold.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, kv};
use chrono::Utc;
use clap::Parser;
use futures::StreamExt;
use schemas::cluster::{ClusterSpec, ClusterState, ClusterStatus};
use schemas::subjects::{self, Provider, model_token};
use switchyard_autoscaler::backend::process::ProcessBackend;
use switchyard_autoscaler::{Backend, Config, Pool, Reconciler};
use switchyard_nats::testing::NatsServer;

const ACCOUNT: &str = "dev";
const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
const OTHER: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
/// One idle "minute" of the tests: the default 10-minute timeout is 10 s.
const MINUTE_MS: u64 = 1000;
const TICK: Duration = Duration::from_secs(1);

/// While held, tokio's paused clock does not jump to the next timer when the runtime
/// waits (on nats-server, here): auto-advance is off while a blocking task runs (see
/// `tokio::time::pause`). Time then moves only by `tokio::time::advance`.
struct HeldClock(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

fn hold_clock() -> HeldClock {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    tokio::task::spawn_blocking(move || {
        // Returns when the sender is dropped.
        let _ = rx.recv();
    });
    HeldClock(tx)
}

// Dropped in this order: the reconciler (its instances are killed), the server, then
// the clock.
struct Harness {
    reconciler: Reconciler,
    js: jetstream::Context,
    clusters: kv::Store,
    _bin: tempfile::TempDir,
    _nats: NatsServer,
    _clock: HeldClock,
}

impl Harness {
    /// A reconciler on a fresh nats-server (`apply`ed); `translators_max` 0 leaves the
    /// translator pool unmanaged.
    async fn start(translators_max: u32) -> Self {
        let clock = hold_clock();
        let nats = NatsServer::start().unwrap();
        let client = nats.connect_and_apply().await.unwrap();
        let js = jetstream::new(client);
        let bin = tempfile::tempdir().unwrap();
        let stub = bin.path().join("instance");
        std::fs::write(&stub, "#!/bin/sh\nexec sleep 600\n").unwrap();
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = Config::parse_from([
            "switchyard-autoscaler",
            "--nats-url",
            nats.url(),
            "--idle-minute-ms",
            &MINUTE_MS.to_string(),
            "--translators-max",
            &translators_max.to_string(),
            "--translator-target",
            "1",
        ]);
        let backend = Backend::Process(ProcessBackend::new(stub.clone(), stub, None, Vec::new()));
        let reconciler = Reconciler::new(config, js.clone(), backend).await.unwrap();
        let clusters = js.get_key_value(subjects::CLUSTERS_BUCKET).await.unwrap();
        Self {
            reconciler,
            js,
            clusters,
            _bin: bin,
            _nats: nats,
            _clock: clock,
        }
    }

    async fn put_spec(&self, spec: &ClusterSpec) {
        self.clusters
            .put(
                schemas::cluster::spec_key(&spec.account, &spec.model_id).unwrap(),
                serde_json::to_vec(spec).unwrap().into(),
            )
            .await
            .unwrap();
    }

    /// One reconciliation; it must not fail.
    async fn tick(&mut self) {
        self.reconciler.tick().await.unwrap();
        assert_eq!(
            self.reconciler.metrics.errors.get(),
            0,
            "no pool failed to reconcile"
        );
    }

    /// `TICK` later, one reconciliation; the instances of `model`'s cluster then.
    async fn next(&mut self, model: &str) -> u32 {
        tokio::time::advance(TICK).await;
        self.tick().await;
        self.instances(model)
    }

    fn instances(&self, model: &str) -> u32 {
        self.reconciler.backend.count(&cluster(model))
    }

    async fn status(&self, model: &str) -> ClusterStatus {
        let value = self
            .clusters
            .get(schemas::cluster::status_key(ACCOUNT, model).unwrap())
            .await
            .unwrap()
            .expect("the autoscaler wrote a status");
        serde_json::from_slice(&value).unwrap()
    }

    async fn publish(&self, subject: String, n: usize) {
        for i in 0..n {
            self.js
                .publish(subject.clone(), format!("work {i}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }

    /// `n` requests for `model`'s cluster, as the ingress queues them.
    async fn interactive(&self, model: &str, n: usize) {
        self.publish(subjects::open_request(&token(model), &token(ACCOUNT)), n)
            .await;
    }

    /// `n` pieces of batch work for `model`'s cluster, as the batch router queues them
    /// (making the cluster's batch queue first, as it does).
    async fn batch(&self, model: &str, n: usize) {
        switchyard_nats::ensure_batch_consumer(&self.js, &token(model), &token(ACCOUNT))
            .await
            .unwrap();
        self.publish(subjects::open_batch_work(&token(model), &token(ACCOUNT)), n)
            .await;
    }

    /// Takes `n` messages from a consumer, as an instance does (not acked yet).
    async fn take(&self, stream: &str, consumer: &str, n: usize) -> Vec<jetstream::Message> {
        let consumer: PullConsumer = self
            .js
            .get_consumer_from_stream(consumer, stream)
            .await
            .unwrap();
        let mut batch = consumer
            .fetch()
            .max_messages(n)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        let mut taken = Vec::new();
        while taken.len() < n {
            taken.push(batch.next().await.expect("enough messages").unwrap());
        }
        taken
    }

    /// An instance answers `n` requests of `model`'s cluster (taken and acked).
    async fn serve_interactive(&self, model: &str, n: usize) {
        let name = switchyard_nats::open_model_consumer_name(&token(model), &token(ACCOUNT));
        done(self.take(subjects::REQUESTS_STREAM, &name, n).await).await;
    }

    /// An instance takes `n` pieces of `model`'s batch work.
    async fn take_batch(&self, model: &str, n: usize) -> Vec<jetstream::Message> {
        let name = switchyard_nats::batch_consumer_name(&token(model), &token(ACCOUNT));
        self.take(subjects::BATCHWORK_STREAM, &name, n).await
    }

    /// A gauge of the autoscaler's metrics (the line as rendered), 0 when absent.
    fn metric(&self, series: &str) -> f64 {
        self.reconciler
            .metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series).map(str::trim))
            .map_or(0.0, |v| v.parse().unwrap())
    }
}

/// Acks `messages`, each confirmed by the server.
async fn done(messages: Vec<jetstream::Message>) {
    for m in messages {
        m.double_ack().await.unwrap();
    }
}

fn token(id: &str) -> String {
    model_token(id).unwrap()
}

fn cluster(model: &str) -> Pool {
    Pool::Cluster {
        account: ACCOUNT.into(),
        model: model.into(),
    }
}

/// A cluster with the defaults: min 0, max 4, timeout 10, target 1, batch_instances 1.
fn default_spec(model: &str) -> ClusterSpec {
    ClusterSpec::with_defaults(ACCOUNT, model, "cpu", Utc::now())
}

fn depth(pool: &str, kind: &str) -> String {
    format!("autoscaler_queue_depth{{pool=\"{pool}\",kind=\"{kind}\"}}")
}

#[tokio::test(start_paused = true)]
async fn batch_work_alone_starts_one_instance_and_scales_to_zero_after_the_timeout() {
    let mut h = Harness::start(0).await;
    let spec = default_spec(MODEL);
    assert_eq!(spec.batch_instances, 1, "the default");
    h.put_spec(&spec).await;
    h.tick().await;
    assert_eq!(h.instances(MODEL), 0, "no work, min 0: nothing runs");
    assert_eq!(h.status(MODEL).await.state, ClusterState::Stopped);

    // Three pieces of batch work: one instance (batch_instances 1), not three.
    h.batch(MODEL, 3).await;
    assert_eq!(h.next(MODEL).await, 1);
    let status = h.status(MODEL).await;
    assert_eq!(
        (
            status.load,
            status.batch_load,
            status.desired,
            status.instances
        ),
        (0, 3, 1, 1)
    );
    let pool = format!("{ACCOUNT}/{MODEL}");
    assert_eq!(h.metric(&depth(&pool, "batch")), 3.0);
    assert_eq!(h.metric(&depth(&pool, "interactive")), 0.0);

    // The instance takes the work: in flight, it still counts.
    let taken = h.take_batch(MODEL, 3).await;
    assert_eq!(h.next(MODEL).await, 1);
    assert_eq!(h.status(MODEL).await.batch_load, 3);
    // Done: the queue is empty. The instance stays until the timeout (10 s after the
    // last tick that saw work), then goes.
    done(taken).await;
    for second in 1..10 {
        assert_eq!(h.next(MODEL).await, 1, "kept {second} s after the work");
    }
    assert_eq!(h.status(MODEL).await.batch_load, 0);
    assert_eq!(h.next(MODEL).await, 0, "scaled to zero after the timeout");
    let status = h.status(MODEL).await;
    assert_eq!(
        (status.state, status.instances, status.batch_load),
        (ClusterState::Stopped, 0, 0)
    );
    assert_eq!(h.metric(&depth(&pool, "batch")), 0.0);
}

#[tokio::test(start_paused = true)]
async fn with_batch_instances_zero_batch_work_neither_starts_nor_holds_an_instance() {
    let mut h = Harness::start(0).await;
    h.put_spec(&ClusterSpec {
        batch_instances: 0,
        ..default_spec(MODEL)
    })
    .await;
    h.batch(MODEL, 5).await;
    h.tick().await;
    for _ in 0..15 {
        assert_eq!(h.next(MODEL).await, 0, "batch work alone starts nothing");
    }
    let status = h.status(MODEL).await;
    assert_eq!(
        (status.state, status.instances, status.batch_load),
        (ClusterState::Stopped, 0, 5)
    );

    // An interactive request starts an instance; batch work may ride on it…
    h.interactive(MODEL, 1).await;
    assert_eq!(h.next(MODEL).await, 1);
    h.serve_interactive(MODEL, 1).await;
    // …but does not keep it: 10 s after the request it goes, batch work or not.
    for second in 1..10 {
        assert_eq!(h.next(MODEL).await, 1, "kept {second} s after the request");
    }
    assert_eq!(h.next(MODEL).await, 0);
    let status = h.status(MODEL).await;
    assert_eq!(
        (status.instances, status.load, status.batch_load),
        (0, 0, 5)
    );
}

#[tokio::test(start_paused = true)]
async fn interactive_load_on_top_of_batch_work_scales_as_without_it() {
    let mut h = Harness::start(0).await;
    // The same cluster twice: MODEL gets batch work too, OTHER only interactive.
    h.put_spec(&default_spec(MODEL)).await;
    h.put_spec(&default_spec(OTHER)).await;
    h.batch(MODEL, 5).await;
    h.tick().await;
    assert_eq!((h.instances(MODEL), h.instances(OTHER)), (1, 0));

    // Interactive load: one instance per request, up to max 4, for both alike.
    for (requests, want) in [(3, 3), (3, 4)] {
        h.interactive(MODEL, requests).await;
        h.interactive(OTHER, requests).await;
        h.next(MODEL).await;
        assert_eq!(
            (h.instances(MODEL), h.instances(OTHER)),
            (want, want),
            "after {requests} more requests"
        );
    }
    assert_eq!(h.status(MODEL).await.load, 6);
    assert_eq!(h.status(MODEL).await.batch_load, 5);

    // Requests answered: down at once to one for both (batch work, or kept warm).
    h.serve_interactive(MODEL, 6).await;
    h.serve_interactive(OTHER, 6).await;
    h.next(MODEL).await;
    assert_eq!((h.instances(MODEL), h.instances(OTHER)), (1, 1));
    // At the timeout OTHER goes; pending batch work keeps MODEL's one.
    for second in 2..10 {
        h.next(MODEL).await;
        assert_eq!(
            (h.instances(MODEL), h.instances(OTHER)),
            (1, 1),
            "{second} s after the requests"
        );
    }
    h.next(MODEL).await;
    assert_eq!((h.instances(MODEL), h.instances(OTHER)), (1, 0));
    for _ in 0..5 {
        assert_eq!(h.next(MODEL).await, 1, "batch work pending");
    }

    // The batch work done: MODEL too goes to zero, a timeout later.
    done(h.take_batch(MODEL, 5).await).await;
    for second in 1..10 {
        assert_eq!(h.next(MODEL).await, 1, "kept {second} s after the work");
    }
    assert_eq!(h.next(MODEL).await, 0);
}

#[tokio::test(start_paused = true)]
async fn translators_count_closed_batch_work_and_a_missing_batch_queue_is_no_work() {
    let mut h = Harness::start(2).await;
    let translators = |h: &Harness| h.reconciler.backend.count(&Pool::Translators);
    // A cluster whose batch queue was never made: its interactive load alone counts.
    h.put_spec(&default_spec(MODEL)).await;
    h.interactive(MODEL, 2).await;
    h.tick().await;
    assert_eq!((h.instances(MODEL), translators(&h)), (2, 0));
    let pool = format!("{ACCOUNT}/{MODEL}");
    assert_eq!(h.metric(&depth(&pool, "batch")), 0.0);
    assert_eq!(h.metric(&depth(&pool, "interactive")), 2.0);

    // Closed-model batch work: the translator pool starts (target 1, max 2).
    h.publish(subjects::closed_batch_work(Provider::OpenAi), 1)
        .await;
    h.next(MODEL).await;
    assert_eq!(translators(&h), 1);
    h.publish(subjects::closed_batch_work(Provider::Anthropic), 2)
        .await;
    h.next(MODEL).await;
    assert_eq!(translators(&h), 2);
    assert_eq!(h.metric(&depth("translators", "batch")), 3.0);
    assert_eq!(h.metric(&depth("translators", "interactive")), 0.0);

    // Batch work in flight keeps the pool; done, it is kept until the timeout.
    let taken = h
        .take(
            subjects::BATCHWORK_STREAM,
            subjects::TRANSLATOR_BATCH_CONSUMER,
            3,
        )
        .await;
    h.next(MODEL).await;
    assert_eq!(translators(&h), 2);
    done(taken).await;
    h.next(MODEL).await;
    assert_eq!(translators(&h), 1, "down at once, one kept warm");
    assert_eq!(h.metric(&depth("translators", "batch")), 0.0);

    // No BATCHWORK stream at all: no batch work, and no error.
    h.js.delete_stream(subjects::BATCHWORK_STREAM)
        .await
        .unwrap();
    for _ in 2..10 {
        h.next(MODEL).await;
    }
    assert_eq!(translators(&h), 1);
    h.next(MODEL).await;
    assert_eq!(translators(&h), 0);
    assert_eq!(h.metric(&depth("translators", "batch")), 0.0);
}
