//! Batch jobs for an open model, end to end: 1,000 embedding requests published
//! straight to NATS go through the batch router to a MiniLM instance, which serves
//! them from its cluster's batch queue in dynamically formed batches; every row gets
//! exactly one result, the same vector an interactive request gets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use schemas::{BatchRequest, ChatRequest, Params, SealKey, SealedRequest, TaskInput, TaskOutput};
use switchyard_batch::job::{self, Results};
use switchyard_nats::testing::NatsServer;
use tokio_util::sync::CancellationToken;

const ACCOUNT: &str = "acme";
const JOB: &str = "embed-1000";
const N: u64 = 1000;

fn text(row: u64) -> String {
    format!("sentence number {row} of the batch job")
}

fn embed(row: u64) -> BatchRequest {
    BatchRequest {
        schema_version: 1,
        request_id: job::request_id(ACCOUNT, JOB, row),
        account: ACCOUNT.into(),
        deadline: Utc::now() + chrono::Duration::minutes(10),
        created_at: None,
        request: ChatRequest {
            model: common::MINILM.into(),
            messages: vec![],
            params: Params::default(),
            tools: vec![],
            tool_choice: None,
            stream: false,
            fallback_models: vec![],
            response_format: None,
        },
        task: Some(TaskInput::FeatureExtraction {
            inputs: vec![text(row)],
        }),
        provider_key: None,
        provider_keys: BTreeMap::new(),
    }
}

fn vector(output: Option<&TaskOutput>) -> Vec<f32> {
    match output {
        Some(TaskOutput::FeatureExtraction { embeddings }) => {
            assert_eq!(embeddings.len(), 1);
            embeddings[0].clone()
        }
        other => panic!("not embeddings: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_embeddings_come_back_once_each_in_dynamic_batches() {
    let nats = NatsServer::start().unwrap();
    let client = nats.connect_and_apply().await.unwrap();
    let js = jetstream::new(client.clone());
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let seal_text = SealKey::generate_base64();
    let seal = SealKey::from_base64("default", &seal_text).unwrap();

    let router = switchyard_batch::Config {
        nats_url: nats.url().to_string(),
        seal: schemas::SealKeyArgs::inline(seal_text.clone()),
        bind: "127.0.0.1:0".parse().unwrap(),
        concurrency: 64,
        database_url: None,
        spend_refresh_secs: 5,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(switchyard_batch::serve(listener, router, shutdown.clone()));

    // Published before any instance runs: the work waits on the cluster's batch queue.
    let published = job::publish(&js, ACCOUNT, JOB, (0..N).map(embed))
        .await
        .unwrap();
    assert_eq!((published.stored, published.duplicates), (N, 0));

    let mut config = common::config(common::MINILM);
    config.nats_url = nats.url().to_string();
    config.account = ACCOUNT.into();
    config.seal = schemas::SealKeyArgs::inline(seal_text.clone());
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_url = format!("http://{}/metrics", health.local_addr().unwrap());
    tokio::spawn(switchyard_inference::serve(
        health,
        config,
        shutdown.clone(),
    ));

    let mut results = Results::open(&js, ACCOUNT, JOB).await.unwrap();
    let mut got = HashMap::new();
    while (got.len() as u64) < N {
        let r = results
            .next(Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("stalled at {} results", got.len()));
        assert!(r.error.is_none(), "{:?}", r.error);
        got.insert(r.request_id, r);
    }
    // Exactly one result per row, none left queued.
    let mut stream = js.get_stream("RESULTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, N);
    // A result is published before its work message is acked (and the ack is not
    // confirmed), so the last few acks may still be on their way: wait for them.
    let mut work = js.get_stream("BATCHWORK").await.unwrap();
    let acked_by = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut left = work.info().await.unwrap().state.messages;
    while left > 0 && tokio::time::Instant::now() < acked_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = work.info().await.unwrap().state.messages;
    }
    assert_eq!(left, 0, "work messages never acked");
    for row in 0..N {
        let r = &got[&job::request_id(ACCOUNT, JOB, row)];
        let v = vector(r.output.as_ref());
        assert_eq!(v.len(), 384);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "row {row}: norm {norm}");
        assert_eq!(r.provider.as_deref(), Some("switchyard"));
    }
    // The same text asked interactively gets the same vector.
    let (_, mut reply) = switchyard_worker::testing::publish_request(
        &client,
        &seal,
        ACCOUNT,
        &SealedRequest {
            request: embed(7).request,
            provider_key: None,
            provider_keys: Default::default(),
            task: Some(TaskInput::FeatureExtraction {
                inputs: vec![text(7)],
            }),
        },
        chrono::Duration::seconds(30),
    )
    .await
    .unwrap();
    let chunk = switchyard_worker::testing::next_chunk(&mut reply, Duration::from_secs(30))
        .await
        .unwrap();
    let interactive = vector(chunk.output.as_ref());
    let batch = vector(got[&job::request_id(ACCOUNT, JOB, 7)].output.as_ref());
    for (a, b) in interactive.iter().zip(&batch) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    // Batch work came in batches: the model ran fewer times than there were rows.
    let text = reqwest_get(&metrics_url).await;
    let runs = metric(&text, "inference_batch_size_count");
    let sequences = metric(&text, "inference_batch_size_sum");
    assert!(sequences >= N as f64, "{sequences} sequences");
    assert!(
        runs < sequences / 2.0,
        "{runs} model runs for {sequences} sequences: no dynamic batching"
    );
}

async fn reqwest_get(url: &str) -> String {
    // A plain HTTP/1.0 GET: no client crate needed for one request.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
