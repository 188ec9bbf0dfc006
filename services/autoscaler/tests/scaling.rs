//! The autoscaler against a real nats-server with real inference worker processes
//! (the MiniLM and SmolLM2 models on CPU).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chrono::Utc;
use clap::Parser;
use futures::StreamExt;
use schemas::cluster::{Capacity, ClusterSpec, ClusterState, ClusterStatus, InstanceHeartbeat};
use schemas::subjects;
use schemas::{
    ChatRequest, InstanceState, Message, Params, ReplyChunk, Role, SealKey, SealedRequest,
    TaskInput, UsageBody, UsageEvent,
};
use switchyard_autoscaler::backend::process::ProcessBackend;
use switchyard_autoscaler::{Backend, Config};
use switchyard_nats::testing::NatsServer;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const SMOLLM: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A workspace binary next to this test's (`just test` builds them all first).
fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace --bins` (just test does)",
        bin.display()
    );
    bin
}

fn ort_lib() -> PathBuf {
    if let Some(p) = std::env::var_os("SWITCHYARD_ORT_LIB") {
        return PathBuf::from(p);
    }
    let lib = repo().join(".tools/venv/lib");
    for py in std::fs::read_dir(&lib).unwrap().flatten() {
        let capi = py.path().join("site-packages/onnxruntime/capi");
        if let Ok(dir) = std::fs::read_dir(&capi) {
            for f in dir.flatten() {
                if f.file_name()
                    .to_string_lossy()
                    .starts_with("libonnxruntime.so.")
                {
                    return f.path();
                }
            }
        }
    }
    panic!("no ONNX Runtime library under {}", lib.display());
}

struct Harness {
    nats: NatsServer,
    js: jetstream::Context,
    client: async_nats::Client,
    clusters: kv::Store,
    seal: SealKey,
    shutdown: CancellationToken,
    metrics_url: String,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(idle_minute_ms: u64) -> Harness {
    start_with(idle_minute_ms, 300, &[]).await
}

/// [`start`] with instances that report (and heartbeat) every `usage_period_ms`, and
/// more autoscaler flags.
async fn start_with(idle_minute_ms: u64, usage_period_ms: u64, flags: &[&str]) -> Harness {
    let nats = NatsServer::start().unwrap();
    let client = nats.connect_and_apply().await.unwrap();
    let js = jetstream::new(client.clone());
    let seal_text = SealKey::generate_base64();
    let seal = SealKey::from_base64("default", &seal_text).unwrap();
    let clusters = js.get_key_value(subjects::CLUSTERS_BUCKET).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let idle_minute_ms = idle_minute_ms.to_string();
    let mut args = vec![
        "switchyard-autoscaler",
        "--nats-url",
        nats.url(),
        "--tick-ms",
        "200",
        "--idle-minute-ms",
        &idle_minute_ms,
    ];
    args.extend_from_slice(flags);
    let config = Config::parse_from(args);
    let env = vec![
        ("NATS_URL".into(), nats.url().to_string()),
        ("SWITCHYARD_SEAL_KEY".into(), seal_text),
        ("SWITCHYARD_ORT_LIB".into(), ort_lib().display().to_string()),
        (
            "SWITCHYARD_MODELS_DIR".into(),
            std::env::var("SWITCHYARD_MODELS_DIR")
                .unwrap_or_else(|_| repo().join(".models").display().to_string()),
        ),
        ("INFERENCE_EXECUTION_PROVIDERS".into(), "cpu".into()),
        ("INFERENCE_THREADS".into(), "1".into()),
        (
            "INFERENCE_USAGE_PERIOD_MS".into(),
            usage_period_ms.to_string(),
        ),
        ("NO_COLOR".into(), "1".into()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    let backend = Backend::Process(ProcessBackend::new(
        sibling_bin("switchyard-inference"),
        sibling_bin("switchyard-translator"),
        None,
        env,
    ));
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        switchyard_autoscaler::serve(listener, config, backend, token)
            .await
            .unwrap();
    });
    Harness {
        nats,
        js,
        client,
        clusters,
        seal,
        shutdown,
        metrics_url,
    }
}

impl Harness {
    async fn put_spec(&self, model: &str, min: u32, max: u32, desired: u32) {
        let now = Utc::now();
        let spec = ClusterSpec {
            account: "dev".into(),
            model_id: model.into(),
            capacity: Capacity { min, desired, max },
            timeout_minutes: 1,
            instance_type: "cpu".into(),
            target_concurrency: 1,
            batch_instances: 1,
            created: now,
            modified: now,
        };
        self.clusters
            .put(
                schemas::cluster::spec_key("dev", model).unwrap(),
                serde_json::to_vec(&spec).unwrap().into(),
            )
            .await
            .unwrap();
    }

    /// The cluster's status; an error while the server is away.
    async fn status(&self, model: &str) -> Result<Option<ClusterStatus>, String> {
        Ok(self
            .clusters
            .get(schemas::cluster::status_key("dev", model).unwrap())
            .await
            .map_err(|e| e.to_string())?
            .map(|v| serde_json::from_slice(&v).unwrap()))
    }

    /// Polls the cluster's status until `pred` holds (bounded; read errors, as while
    /// the server restarts, count as not yet); returns the status that held.
    async fn wait_status(
        &self,
        model: &str,
        what: &str,
        pred: impl Fn(&ClusterStatus) -> bool,
    ) -> ClusterStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status(model).await;
            if let Ok(Some(s)) = &status
                && pred(s)
            {
                return s.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what} (last read: {status:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every instance's heartbeat; an error while the server is away.
    async fn heartbeats(&self) -> Result<Vec<InstanceHeartbeat>, String> {
        let beats = self
            .js
            .get_key_value(subjects::INSTANCES_BUCKET)
            .await
            .map_err(|e| e.to_string())?;
        let mut keys = beats.keys().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if let Some(v) = beats.get(&key).await.map_err(|e| e.to_string())? {
                out.push(serde_json::from_slice(&v).unwrap());
            }
        }
        Ok(out)
    }

    /// Polls the autoscaler's metric `name` until it is at least `min` (bounded).
    async fn wait_metric(&self, name: &str, min: f64, within: Duration, what: &str) {
        let deadline = tokio::time::Instant::now() + within;
        while metric(&self.metrics().await, name) < min {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> String {
        reqwest::get(&self.metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Publishes like the ingress does; returns the reply subscription.
    async fn publish(&self, model: &str, sealed: SealedRequest) -> (Uuid, async_nats::Subscriber) {
        assert_eq!(sealed.request.model, model);
        switchyard_worker::testing::publish_request(
            &self.client,
            &self.seal,
            "dev",
            &sealed,
            chrono::Duration::seconds(120),
        )
        .await
        .unwrap()
    }

    async fn usage_events(&self) -> Vec<UsageEvent> {
        switchyard_nats::testing::stream_contents(&self.js, subjects::USAGE_STREAM)
            .await
            .unwrap()
            .iter()
            .map(|(_, payload)| schemas::decode(payload).unwrap())
            .collect()
    }
}

fn request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![],
        params: Params::default(),
        tools: vec![],
        tool_choice: None,
        stream: false,
        fallback_models: vec![],
        response_format: None,
    }
}

fn embed(text: &str) -> SealedRequest {
    SealedRequest {
        request: request(MINILM),
        provider_key: None,
        provider_keys: Default::default(),
        task: Some(TaskInput::FeatureExtraction {
            inputs: vec![text.into()],
        }),
    }
}

/// The reply chunks up to the last.
async fn reply(sub: &mut async_nats::Subscriber) -> Vec<ReplyChunk> {
    let mut chunks = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(90), sub.next())
            .await
            .expect("a reply within 90 s")
            .unwrap();
        let chunk: ReplyChunk = schemas::decode(&msg.payload).unwrap();
        let last = chunk.last;
        chunks.push(chunk);
        if last {
            return chunks;
        }
    }
}

/// The `[start, end)` instance periods billed for `instance`, in order; asserts that
/// they join up (no gap, no overlap).
fn billed_periods(events: &[UsageEvent], instance: &str) -> Vec<(i64, i64)> {
    let mut periods: Vec<(i64, i64)> = events
        .iter()
        .filter_map(|e| match &e.body {
            UsageBody::InstancePeriod {
                instance_id,
                start_ms,
                end_ms,
                ..
            } if instance_id == instance => Some((*start_ms, *end_ms)),
            _ => None,
        })
        .collect();
    periods.sort();
    // One period per id is stored (its id is its start); a message read twice is
    // the same period.
    periods.dedup();
    assert!(!periods.is_empty(), "no periods billed for {instance}");
    for pair in periods.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "no gap, no overlap: {periods:?}");
    }
    periods
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_burst_scales_up_to_max_from_zero_then_back_to_zero() {
    // Idle "minutes" of 1.5 s: the cluster's 1-minute timeout passes within the test.
    let h = start(1500).await;
    h.put_spec(MINILM, 0, 2, 0).await;
    let first = h
        .wait_status(MINILM, "the cluster at rest", |s| {
            s.state == ClusterState::Stopped
        })
        .await;
    assert_eq!(first.instances, 0, "min 0 and no load: nothing runs");

    // Four requests at once, one instance per request wanted, at most two.
    let mut subs = Vec::new();
    for i in 0..4 {
        subs.push(h.publish(MINILM, embed(&format!("sentence {i}"))).await);
    }
    let mut most = 0;
    let mut answered = 0;
    for (_, sub) in &mut subs {
        let chunks = reply(sub).await;
        let last = chunks.last().unwrap();
        assert!(last.error.is_none(), "{:?}", last.error);
        assert!(last.output.is_some());
        answered += 1;
        if let Some(s) = h.status(MINILM).await.unwrap() {
            most = most.max(s.instances);
        }
    }
    assert_eq!(answered, 4);
    // The loop records the cold start on the tick after the first instance pulled.
    h.wait_metric(
        "autoscaler_cold_start_seconds_count",
        1.0,
        Duration::from_secs(10),
        "the cold start was never recorded",
    )
    .await;
    let m = h.metrics().await;
    let peak = metric(
        &m,
        "autoscaler_desired_instances{pool=\"dev/sentence-transformers/all-MiniLM-L6-v2\"}",
    );
    assert!(most <= 2 && peak <= 2.0, "never above max");
    assert!(metric(&m, "autoscaler_scale_decisions_total{direction=\"up\"}") >= 1.0);

    // Load gone: after the idle timeout, drained to zero (never below min = 0).
    let rest = h
        .wait_status(MINILM, "scale to zero", |s| {
            s.state == ClusterState::Stopped && s.load == 0
        })
        .await;
    assert_eq!(rest.instances, 0);
    assert!(rest.inferences >= 4, "{rest:?}");
    // Every instance's life is on record: started … stopped. The status counts an
    // instance out when it is told to stop; its `stopped` event comes once it has
    // drained and exited, so wait for those (a killed instance never sends one).
    let lifecycle = |events: &[UsageEvent], want: InstanceState| {
        events
            .iter()
            .filter(|e| matches!(&e.body, UsageBody::Lifecycle { state, .. } if *state == want))
            .count()
    };
    let drained_by = tokio::time::Instant::now() + Duration::from_secs(30);
    let (started, stopped) = loop {
        let events = h.usage_events().await;
        let counts = (
            lifecycle(&events, InstanceState::Started),
            lifecycle(&events, InstanceState::Stopped),
        );
        if counts.1 >= counts.0 || tokio::time::Instant::now() >= drained_by {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(started, 2, "load 4, target 1, max 2: two instances");
    assert_eq!(stopped, started, "each instance stopped cleanly");
}

#[tokio::test]
async fn a_cluster_with_min_one_is_warm_before_the_first_request() {
    let h = start(60_000).await;
    h.put_spec(MINILM, 1, 2, 0).await;
    let warm = h
        .wait_status(MINILM, "a warm instance", |s| s.state == ClusterState::Idle)
        .await;
    assert_eq!(warm.instances, 1);
    let cold_starts = metric(&h.metrics().await, "autoscaler_cold_start_seconds_count");
    let (_, mut sub) = h.publish(MINILM, embed("no waiting")).await;
    let chunks = reply(&mut sub).await;
    assert!(chunks.last().unwrap().output.is_some());
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, "autoscaler_cold_start_seconds_count"),
        cold_starts,
        "the request found a running instance: no new cold start"
    );
    assert_eq!(
        metric(&m, "autoscaler_scale_decisions_total{direction=\"up\"}"),
        1.0
    );
    // min 1: it stays, idle.
    assert_eq!(h.status(MINILM).await.unwrap().unwrap().instances, 1);
}

#[tokio::test]
async fn a_killed_instance_is_replaced_its_request_answered_and_its_usage_billed() {
    // A usage period (and periodic heartbeat) longer than the test: the heartbeat that
    // lists the delivery is the one an instance writes when its deliveries change.
    let h = start_with(60_000, 60_000, &[]).await;
    h.put_spec(SMOLLM, 1, 1, 0).await;
    h.wait_status(SMOLLM, "a warm instance", |s| s.state == ClusterState::Idle)
        .await;
    // The server announces every NAK of the cluster's queue.
    let consumer = switchyard_nats::open_model_consumer_name(
        &subjects::model_token(SMOLLM).unwrap(),
        &subjects::model_token("dev").unwrap(),
    );
    let mut naks = h
        .client
        .subscribe(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.{}.{consumer}",
            subjects::REQUESTS_STREAM
        ))
        .await
        .unwrap();
    let (_, mut sub) = h
        .publish(
            SMOLLM,
            SealedRequest {
                request: ChatRequest {
                    messages: vec![Message::text(
                        Role::User,
                        "Write a long story about a lighthouse.",
                    )],
                    params: Params {
                        max_tokens: Some(60),
                        temperature: Some(0.0),
                        ..Params::default()
                    },
                    ..request(SMOLLM)
                },
                provider_key: None,
                provider_keys: Default::default(),
                task: None,
            },
        )
        .await;
    // The first chunk: the instance is generating. Kill it (-9: no drain, no goodbye)
    // once its heartbeat lists the delivery.
    let first = switchyard_worker::testing::next_chunk(&mut sub, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(first.seq, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let beat = loop {
        let beats = h.heartbeats().await.unwrap();
        assert_eq!(beats.len(), 1, "{beats:?}");
        if !beats[0].in_flight_acks.is_empty() {
            break beats[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the heartbeat never listed the delivery"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(beat.in_flight_acks.len(), 1, "{beat:?}");
    assert!(beat.in_flight_acks[0].starts_with("$JS.ACK.REQUESTS."));
    let status = std::process::Command::new("kill")
        .args(["-KILL", &beat.pid.unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The autoscaler NAKs the dead instance's delivery (the server says so), so
    // JetStream redelivers it to the replacement at once rather than after the 30 s
    // ack wait; the replacement answers from the start (seq 0 again) to the end.
    let nak = tokio::time::timeout(Duration::from_secs(30), naks.next())
        .await
        .expect("the dead instance's delivery was never NAKed")
        .unwrap();
    let nak: serde_json::Value = serde_json::from_slice(&nak.payload).unwrap();
    assert_eq!(nak["type"], "io.nats.jetstream.advisory.v1.nak", "{nak}");
    assert_eq!(nak["deliveries"], 1, "{nak}");
    let mut restarted = false;
    let mut last = None;
    while last.is_none() {
        let msg = tokio::time::timeout(Duration::from_secs(90), sub.next())
            .await
            .expect("the request is answered after the crash")
            .unwrap();
        let chunk: ReplyChunk = schemas::decode(&msg.payload).unwrap();
        if chunk.seq == 0 {
            restarted = true;
        }
        if chunk.last && restarted {
            last = Some(chunk);
        }
    }
    let last = last.unwrap();
    assert!(last.error.is_none(), "{:?}", last.error);
    assert!(last.usage.unwrap().output_tokens > 0);
    let m = h.metrics().await;
    assert_eq!(metric(&m, "autoscaler_crashes_total"), 1.0);
    // The dead instance's seconds are billed up to its death, and it is marked failed.
    let events = h.usage_events().await;
    let dead = beat.instance_id.clone();
    assert!(
        events
            .iter()
            .any(|e| e.event_id == UsageEvent::lifecycle_id(&dead, InstanceState::Failed))
    );
    let periods = billed_periods(&events, &dead);
    assert_eq!(periods[0].0, beat.started_ms, "billed from its start");
    assert!(
        periods.last().unwrap().1 >= beat.beat_ms,
        "billed up to its death"
    );
}

#[tokio::test]
async fn a_hung_instance_is_billed_to_its_last_heartbeat_killed_and_replaced() {
    let h = start(60_000).await;
    h.put_spec(MINILM, 1, 1, 0).await;
    h.wait_status(MINILM, "a warm instance", |s| s.ready == 1)
        .await;
    // The metric is set in the same reconciliation that wrote the status.
    assert_eq!(
        metric(&h.metrics().await, "autoscaler_ready_instances"),
        1.0
    );
    let beats =
        h.js.get_key_value(subjects::INSTANCES_BUCKET)
            .await
            .unwrap();
    let mut keys = beats.keys().await.unwrap();
    let key = keys.next().await.unwrap().unwrap();
    let beat: InstanceHeartbeat =
        serde_json::from_slice(&beats.get(&key).await.unwrap().unwrap()).unwrap();
    assert_eq!(beat.period_ms, Some(300));
    let pid = beat.pid.unwrap();
    // Hung (or cut off, as a pod on a lost node is): alive, but silent. Nothing exits,
    // so only the heartbeat tells.
    let hung_at = Utc::now().timestamp_millis();
    let status = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let dead = beat.instance_id.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = h.usage_events().await;
        if events
            .iter()
            .any(|e| e.event_id == UsageEvent::lifecycle_id(&dead, InstanceState::Failed))
        {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent instance was never declared lost"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let periods = billed_periods(&events, &dead);
    assert_eq!(periods[0].0, beat.started_ms, "billed from its start");
    let end = periods.last().unwrap().1;
    assert!(
        end >= beat.beat_ms && end <= hung_at,
        "billed to its last heartbeat, not to when it was noticed: {end} vs beat {} and hang {hung_at}",
        beat.beat_ms
    );
    assert_eq!(metric(&h.metrics().await, "autoscaler_crashes_total"), 1.0);

    // Killed (a stopped process still dies of SIGKILL), and a fresh instance serves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hung process was not killed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.wait_status(MINILM, "a replacement", |s| s.ready == 1)
        .await;
    let (_, mut sub) = h.publish(MINILM, embed("still served")).await;
    let chunks = reply(&mut sub).await;
    assert!(chunks.last().unwrap().error.is_none());
    // The lost instance is not taken for lost again (its heartbeat went with it), and
    // its replacement is not either. (The stream would drop a second `failed` event
    // with the same id anyway; the reading helper may hand one message out twice
    // under load, so the counter is the check.)
    assert_eq!(metric(&h.metrics().await, "autoscaler_crashes_total"), 1.0);
}

#[tokio::test]
async fn instances_outlive_a_nats_server_outage_longer_than_their_heartbeat_deadline() {
    // Heartbeats every 1.5 s; an instance silent for three periods and 0.5 s (5 s) is lost.
    let mut h = start_with(60_000, 1_500, &["--heartbeat-grace-ms", "500"]).await;
    h.put_spec(MINILM, 1, 1, 0).await;
    h.wait_status(MINILM, "a warm instance", |s| s.ready == 1)
        .await;
    let beats = h.heartbeats().await.unwrap();
    assert_eq!(beats.len(), 1, "{beats:?}");
    let beat = beats[0].clone();
    assert_eq!(beat.period_ms, Some(1_500));
    let pid = beat.pid.unwrap();

    // nats-server is gone for longer than the deadline (the sleep is the outage, not a
    // wait for anything): the instance cannot write heartbeats, the autoscaler cannot
    // read them.
    h.nats.kill();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let back_ms = Utc::now().timestamp_millis();
    h.nats.start_again().unwrap();

    // The instance beats again, and the autoscaler reconciles after that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let fresh = loop {
        if let Ok(beats) = h.heartbeats().await
            && let Some(fresh) = beats
                .into_iter()
                .find(|b| b.instance_id == beat.instance_id && b.beat_ms > back_ms)
        {
            break fresh;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the instance never wrote a heartbeat after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    h.wait_status(MINILM, "a reconciliation after the fresh heartbeat", |s| {
        s.updated.timestamp_millis() > fresh.beat_ms
    })
    .await;

    // Not taken for lost: not killed, not marked failed, not replaced.
    assert_eq!(metric(&h.metrics().await, "autoscaler_crashes_total"), 0.0);
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the live instance was killed"
    );
    let status = h.status(MINILM).await.unwrap().unwrap();
    assert_eq!((status.instances, status.ready), (1, 1), "{status:?}");
    let (_, mut sub) = h.publish(MINILM, embed("served after the outage")).await;
    let chunks = reply(&mut sub).await;
    let last = chunks.last().unwrap();
    assert!(last.error.is_none(), "{:?}", last.error);
    // By the same instance: it is still the only one, and once answered the request
    // is no longer listed as running.
    let answered_ms = Utc::now().timestamp_millis();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let beats = h.heartbeats().await.unwrap();
        let ids: Vec<&str> = beats.iter().map(|b| b.instance_id.as_str()).collect();
        assert_eq!(ids, vec![beat.instance_id.as_str()]);
        if beats[0].beat_ms > answered_ms {
            break beats[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat after the answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(after.in_flight_acks.is_empty(), "{after:?}");

    // The outage is billed: the instance ran through it, and its periods join up
    // across it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = h.usage_events().await;
        assert!(
            !events.iter().any(|e| e.event_id
                == UsageEvent::lifecycle_id(&beat.instance_id, InstanceState::Failed)),
            "the instance was marked failed"
        );
        let periods = billed_periods(&events, &beat.instance_id);
        if periods.last().unwrap().1 > back_ms {
            assert_eq!(periods[0].0, beat.started_ms, "billed from its start");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outage was never billed: {periods:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Plays an instance that beats every second while `on` is true (the test switches it).
fn fake_instance(
    h: &Harness,
    instance_id: &str,
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let js = h.js.clone();
    let started_ms = Utc::now().timestamp_millis();
    let beat = InstanceHeartbeat {
        instance_id: instance_id.into(),
        account: "dev".into(),
        model: MINILM.into(),
        instance_type: "cpu".into(),
        state: InstanceState::Ready,
        started_ms,
        billed_until_ms: started_ms,
        beat_ms: started_ms,
        execution_provider: Some("CPUExecutionProvider".into()),
        pid: None,
        period_ms: Some(1_000),
        unconfirmed_until_ms: None,
        in_flight_acks: Vec::new(),
    };
    let key = schemas::cluster::heartbeat_key("dev", MINILM, instance_id).unwrap();
    tokio::spawn(async move {
        let kv = js.get_key_value(subjects::INSTANCES_BUCKET).await.unwrap();
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            if on.load(std::sync::atomic::Ordering::SeqCst) {
                let beat = InstanceHeartbeat {
                    beat_ms: Utc::now().timestamp_millis(),
                    ..beat.clone()
                };
                // While the server is away the put fails; the instance keeps trying.
                let _ = kv
                    .put(&key, serde_json::to_vec(&beat).unwrap().into())
                    .await;
            }
        }
    })
}

#[tokio::test]
async fn an_instance_that_reconnects_after_the_autoscaler_is_not_taken_for_lost() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    // The fake instance beats every second: silent for 3 s + 0.5 s, it is lost.
    let mut h = start_with(60_000, 300, &["--heartbeat-grace-ms", "500"]).await;
    // Heartbeat entries expire after 3 s here (30 s as shipped), so they also expire
    // during the outage.
    let mut bucket = h.js.get_stream("KV_instances").await.unwrap();
    let mut config = bucket.info().await.unwrap().config.clone();
    config.max_age = Duration::from_secs(3);
    config.duplicate_window = Duration::from_secs(1);
    h.js.update_stream(&config).await.unwrap();
    // A cluster that starts nothing by itself, so its status shows each pass.
    h.put_spec(MINILM, 0, 1, 0).await;
    let on = Arc::new(AtomicBool::new(true));
    let instance = "fake-instance-1";
    let beating = fake_instance(&h, instance, on.clone());
    h.wait_status(MINILM, "the instance counted ready", |s| s.ready == 1)
        .await;

    // nats-server away for 5 s, past the deadline and the entry's age.
    on.store(false, Ordering::SeqCst);
    h.nats.kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let back = Utc::now();
    h.nats.start_again().unwrap();
    // The autoscaler is back first and reconciles before the instance beats again.
    h.wait_status(MINILM, "a pass after the restart", |s| s.updated > back)
        .await;
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, "autoscaler_crashes_total"),
        0.0,
        "taken for lost at the first look after the outage"
    );
    on.store(true, Ordering::SeqCst);
    let since = Utc::now();
    h.wait_status(MINILM, "the instance ready again", |s| {
        s.updated > since && s.ready == 1
    })
    .await;
    assert_eq!(metric(&h.metrics().await, "autoscaler_crashes_total"), 0.0);
    assert!(
        !h.usage_events()
            .await
            .iter()
            .any(|e| e.event_id == UsageEvent::lifecycle_id(instance, InstanceState::Failed))
    );

    // Silent for real now (NATS up): still found lost, after its deadline.
    on.store(false, Ordering::SeqCst);
    h.wait_metric(
        "autoscaler_crashes_total",
        1.0,
        Duration::from_secs(30),
        "a silent instance was never taken for lost",
    )
    .await;
    assert!(
        h.usage_events()
            .await
            .iter()
            .any(|e| e.event_id == UsageEvent::lifecycle_id(instance, InstanceState::Failed))
    );
    beating.abort();
}

#[tokio::test]
async fn a_dead_instance_s_unconfirmed_period_is_not_a_gap_in_its_bill() {
    // An instance that beats every second, silent for 3 s + 0.5 s, is lost.
    let h = start_with(60_000, 300, &["--heartbeat-grace-ms", "500"]).await;
    let instance = "fake-instance-2";
    let start_ms = Utc::now().timestamp_millis() - 10_000;
    let (billed_until, unconfirmed_until) = (start_ms + 5_000, start_ms + 6_000);
    // Its last heartbeat: billed to `billed_until`, and the period after it published
    // without a PubAck — which did land, as a client's buffered publish does once it
    // reconnects.
    let landed = UsageEvent::instance_period(
        "dev",
        MINILM,
        "cpu",
        instance,
        billed_until,
        unconfirmed_until,
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(schemas::headers::MSG_ID, landed.event_id.as_str());
    h.js.publish_with_headers(
        landed.subject().unwrap(),
        headers,
        schemas::encode(&landed).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let beat = InstanceHeartbeat {
        instance_id: instance.into(),
        account: "dev".into(),
        model: MINILM.into(),
        instance_type: "cpu".into(),
        state: InstanceState::Ready,
        started_ms: start_ms,
        billed_until_ms: billed_until,
        beat_ms: unconfirmed_until + 100,
        execution_provider: Some("CPUExecutionProvider".into()),
        pid: None,
        period_ms: Some(1_000),
        unconfirmed_until_ms: Some(unconfirmed_until),
        in_flight_acks: Vec::new(),
    };
    let kv =
        h.js.get_key_value(subjects::INSTANCES_BUCKET)
            .await
            .unwrap();
    kv.put(
        schemas::cluster::heartbeat_key("dev", MINILM, instance).unwrap(),
        serde_json::to_vec(&beat).unwrap().into(),
    )
    .await
    .unwrap();

    h.wait_metric(
        "autoscaler_crashes_total",
        1.0,
        Duration::from_secs(30),
        "the silent instance was never taken for lost",
    )
    .await;
    // Billed from its mark through the landed period to its last heartbeat, no gap.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = h.usage_events().await;
        let periods = billed_periods(&events, instance);
        if periods.last().unwrap().1 >= beat.beat_ms {
            assert_eq!(periods[0], (billed_until, unconfirmed_until), "{periods:?}");
            assert_eq!(periods.last().unwrap().1, beat.beat_ms, "{periods:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tail after the unconfirmed period was never billed: {periods:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
