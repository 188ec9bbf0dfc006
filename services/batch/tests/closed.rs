//! Batch jobs for closed models, end to end: a real nats-server with the definitions
//! applied, the batch router, the translator and the mock provider. The Rust and
//! Python example publishers run as processes, exactly as a user runs them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use futures::StreamExt;
use schemas::{
    BatchRequest, BatchResult, ChatRequest, ErrorKind, Message, Params, Role, SealKey,
    SealedRequest, TaskInput,
};
use switchyard_batch::job::{self, Results};
use switchyard_loadtest::mock::openai::MockConfig;
use switchyard_nats::testing::NatsServer;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const KEY: &str = "sk-mock-batch";
const ACCOUNT: &str = "acme";

struct Stack {
    nats: NatsServer,
    js: jetstream::Context,
    client: async_nats::Client,
    seal: SealKey,
    seal_text: String,
    shutdown: CancellationToken,
    mock_root: String,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// NATS, the mock provider and the router; the translator too unless `translator` is
/// `None` (its concurrency otherwise).
async fn start(mock: MockConfig, translator: Option<u32>) -> Stack {
    start_with(mock, translator, None).await
}

/// [`start`] with the router reading spend limits from `database_url`.
async fn start_with(
    mock: MockConfig,
    translator: Option<u32>,
    database_url: Option<String>,
) -> Stack {
    let nats = NatsServer::start().unwrap();
    let client = nats.connect_and_apply().await.unwrap();
    let shutdown = CancellationToken::new();
    let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock_root = format!("http://{}", mock_listener.local_addr().unwrap());
    let stop = shutdown.clone();
    tokio::spawn(switchyard_loadtest::mock::openai::serve(
        mock_listener,
        MockConfig {
            api_key: Some(KEY.into()),
            ..mock
        },
        async move { stop.cancelled().await },
    ));
    let seal_text = SealKey::generate_base64();
    let stack = Stack {
        js: jetstream::new(client.clone()),
        client,
        seal: SealKey::from_base64("default", &seal_text).unwrap(),
        seal_text,
        nats,
        shutdown,
        mock_root,
    };
    let router = switchyard_batch::Config {
        nats_url: stack.nats.url().to_string(),
        seal: schemas::SealKeyArgs::inline(stack.seal_text.clone()),
        bind: "127.0.0.1:0".parse().unwrap(),
        concurrency: 64,
        database_url,
        spend_refresh_secs: 5,
    };
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(switchyard_batch::serve(
        health,
        router,
        stack.shutdown.clone(),
    ));
    if let Some(concurrency) = translator {
        stack.start_translator(concurrency).await;
    }
    stack
}

impl Stack {
    async fn start_translator(&self, concurrency: u32) {
        let config = switchyard_translator::Config {
            nats_url: self.nats.url().to_string(),
            seal: schemas::SealKeyArgs::inline(self.seal_text.clone()),
            openai_base_url: format!("{}/v1", self.mock_root),
            anthropic_base_url: self.mock_root.clone(),
            gemini_base_url: self.mock_root.clone(),
            bind: "127.0.0.1:0".parse().unwrap(),
            concurrency,
            max_attempts: 1,
            connect_timeout_secs: 2,
        };
        let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        tokio::spawn(switchyard_translator::serve(
            health,
            config,
            self.shutdown.clone(),
        ));
    }

    /// Messages stored in `stream` under `filter`.
    async fn count(&self, stream: &str, filter: &str) -> u64 {
        let s = self.js.get_stream(stream).await.unwrap();
        let info = s.info_with_subjects(filter).await.unwrap();
        let mut total = 0;
        let mut subjects = info;
        while let Some(Ok((_, n))) = subjects.next().await {
            total += n as u64;
        }
        total
    }

    async fn messages_in(&self, stream: &str) -> u64 {
        self.js
            .get_stream(stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages
    }

    /// Publishes one raw message to `subject`, with `msg_id` as `Nats-Msg-Id` when given.
    async fn publish_raw(&self, subject: &str, payload: Vec<u8>, msg_id: Option<&str>) {
        let mut m = jetstream::message::PublishMessage::build().payload(payload.into());
        if let Some(id) = msg_id {
            m = m.message_id(id);
        }
        self.js
            .send_publish(subject.to_string(), m)
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Waits for the result of `id` in `job` (up to `wait`).
    async fn result(&self, job: &str, id: Uuid, wait: Duration) -> BatchResult {
        let mut results = Results::open(&self.js, ACCOUNT, job).await.unwrap();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match results.next(left).await.unwrap() {
                Some(r) if r.request_id == id => return r,
                Some(_) => {}
                None => panic!("no result for {id} within {wait:?}"),
            }
        }
    }
}

fn chat(model: &str, text: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![Message::text(Role::User, text)],
        params: Params::default(),
        tools: vec![],
        tool_choice: None,
        stream: false,
        fallback_models: vec![],
        response_format: None,
    }
}

fn batch_request(account: &str, request: ChatRequest) -> BatchRequest {
    BatchRequest {
        schema_version: 1,
        request_id: Uuid::now_v7(),
        account: account.into(),
        deadline: Utc::now() + chrono::Duration::minutes(10),
        created_at: None,
        request,
        task: None,
        provider_key: Some(KEY.into()),
        provider_keys: BTreeMap::new(),
    }
}

fn target_dir() -> PathBuf {
    // <target>/debug/deps/closed-<hash>
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs an example publisher to completion and returns its JSON summary.
async fn run_example(
    program: PathBuf,
    pre_args: &[&str],
    nats_url: &str,
    job: &str,
    count: u64,
) -> serde_json::Value {
    assert!(
        program.exists(),
        "{} is missing (cargo test and cargo nextest build the examples; the Python one needs infra/install-tools.sh)",
        program.display()
    );
    let out = tokio::process::Command::new(&program)
        .args(pre_args)
        .args([
            "--account",
            ACCOUNT,
            "--job",
            job,
            "--count",
            &count.to_string(),
            "--idle-timeout-secs",
            "60",
        ])
        .env("NATS_URL", nats_url)
        .env("BATCH_PROVIDER_KEY", KEY)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed: {stderr}",
        program.display()
    );
    assert!(
        !stderr.contains(KEY),
        "the provider key was printed: {stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "summary is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Both examples: N results for N rows, all answered by the mock; a re-run publishes
/// nothing and still reports all N.
async fn example_round_trip(program: PathBuf, pre_args: &[&str], job: &str) {
    const N: u64 = 1000;
    let stack = start(MockConfig::default(), Some(64)).await;
    let url = stack.nats.url().to_string();
    let first = run_example(program.clone(), pre_args, &url, job, N).await;
    assert_eq!(first["published"], N, "{first}");
    assert_eq!(first["duplicates"], 0, "{first}");
    assert_eq!(first["already_answered"], 0, "{first}");
    assert_eq!(first["results"], N, "{first}");
    assert_eq!(first["ok"], N, "{first}");
    // Exactly one stored result per row; nothing left queued anywhere.
    assert_eq!(
        stack
            .count("RESULTS", &format!("res.{ACCOUNT}.{job}.>"))
            .await,
        N
    );
    assert_eq!(stack.messages_in("BATCH").await, 0);
    assert_eq!(stack.messages_in("BATCHWORK").await, 0);
    // A row's answer is the mock's echo of that row's prompt, served by OpenAI.
    let id = job::request_id(ACCOUNT, job, 7);
    let r = stack.result(job, id, Duration::from_secs(5)).await;
    assert_eq!(
        r.message.as_ref().unwrap().joined_text(),
        "echo: row 7: reply with one word"
    );
    assert_eq!(r.provider.as_deref(), Some("openai"));
    assert_eq!(r.account, ACCOUNT);
    assert_eq!(r.job, job);
    assert!(r.usage.unwrap().output_tokens > 0);

    let again = run_example(program, pre_args, &url, job, N).await;
    assert_eq!(again["published"], 0, "{again}");
    assert_eq!(again["already_answered"], N, "{again}");
    assert_eq!(again["results"], N, "{again}");
    assert_eq!(
        stack
            .count("RESULTS", &format!("res.{ACCOUNT}.{job}.>"))
            .await,
        N
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_example_collects_one_result_per_row_and_a_rerun_publishes_nothing() {
    example_round_trip(target_dir().join("examples/batch"), &[], "rust-job").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_collects_one_result_per_row_and_a_rerun_publishes_nothing() {
    let script = repo().join("services/batch/examples/batch.py");
    example_round_trip(
        repo().join(".tools/venv/bin/python"),
        &[script.to_str().unwrap()],
        "python-job",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republishing_within_the_window_and_after_the_result_runs_nothing_twice() {
    let stack = start(MockConfig::default(), Some(8)).await;
    let req = batch_request(ACCOUNT, chat("openai/gpt-4o-mini", "once only"));
    let id = req.request_id;
    let first = job::publish(&stack.js, ACCOUNT, "dup", vec![req.clone()])
        .await
        .unwrap();
    assert_eq!((first.stored, first.duplicates), (1, 0));
    let r = stack.result("dup", id, Duration::from_secs(10)).await;
    assert!(r.error.is_none(), "{:?}", r.error);
    // Within the duplicate window: the stream drops it.
    let second = job::publish(&stack.js, ACCOUNT, "dup", vec![req.clone()])
        .await
        .unwrap();
    assert_eq!((second.stored, second.duplicates), (0, 1));
    // After the window the stream stores it again; the router must then see that the
    // result exists and not run it. Shrink the window so the server forgets the id.
    let mut config = stack
        .js
        .get_stream("BATCH")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.duplicate_window = Duration::from_millis(100);
    stack.js.update_stream(&config).await.unwrap();
    // The server forgets ids on its own timer, which nothing signals: ask until it
    // stores the publish (bounded).
    let forgotten = async {
        loop {
            let ack = job::publish(&stack.js, ACCOUNT, "dup", vec![req.clone()])
                .await
                .unwrap();
            if ack.stored == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), forgotten)
        .await
        .unwrap();
    // The router acks it without running it: BATCH drains, nothing reaches BATCHWORK,
    // and RESULTS still holds exactly one result for the id.
    let drained = async {
        while stack.messages_in("BATCH").await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .unwrap();
    assert_eq!(stack.count("RESULTS", "res.acme.dup.>").await, 1);
    assert_eq!(stack.messages_in("BATCHWORK").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_result_with_the_reason_and_the_router_keeps_going() {
    let stack = start(MockConfig::default(), Some(8)).await;
    let job = "bad";
    let subject = format!("batch.{ACCOUNT}.{job}");
    let mut expect: Vec<(Uuid, ErrorKind, &str)> = Vec::new();

    // Not MessagePack at all, but addressable by its Nats-Msg-Id.
    let garbage = Uuid::now_v7();
    stack
        .publish_raw(
            &subject,
            b"\xc1 not msgpack".to_vec(),
            Some(&garbage.to_string()),
        )
        .await;
    expect.push((garbage, ErrorKind::InvalidRequest, "not a BatchRequest"));

    // A schema version from the future.
    let mut future = batch_request(ACCOUNT, chat("openai/gpt-4o-mini", "x"));
    future.schema_version = 99;
    expect.push((
        future.request_id,
        ErrorKind::InvalidRequest,
        "schema_version 99",
    ));
    // Another account's request on acme's subject.
    let foreign = batch_request("globex", chat("openai/gpt-4o-mini", "x"));
    expect.push((
        foreign.request_id,
        ErrorKind::PermissionDenied,
        "may not publish",
    ));
    // An open model that is not in the catalog.
    let unknown = batch_request(ACCOUNT, chat("nobody/no-such-model", "x"));
    expect.push((
        unknown.request_id,
        ErrorKind::NotFound,
        "not in the catalog",
    ));
    // Embeddings from a closed model.
    let mut task = batch_request(ACCOUNT, chat("openai/gpt-4o-mini", "x"));
    task.task = Some(TaskInput::FeatureExtraction {
        inputs: vec!["x".into()],
    });
    expect.push((task.request_id, ErrorKind::InvalidRequest, "chat only"));
    // The job deadline has passed.
    let mut late = batch_request(ACCOUNT, chat("openai/gpt-4o-mini", "x"));
    late.deadline = Utc::now() - chrono::Duration::seconds(1);
    expect.push((late.request_id, ErrorKind::Timeout, "deadline"));
    // No provider key: the translator answers.
    let mut keyless = batch_request(ACCOUNT, chat("openai/gpt-4o-mini", "x"));
    keyless.provider_key = None;
    expect.push((
        keyless.request_id,
        ErrorKind::Authentication,
        "provider key",
    ));
    // A provider error that trying again would not fix (429 and 5xx are tried again
    // later instead; see below).
    let failing = batch_request(ACCOUNT, chat("openai/mock-error-400", "x"));
    expect.push((failing.request_id, ErrorKind::InvalidRequest, ""));
    for r in [future, foreign, unknown, task, late, keyless, failing] {
        let id = r.request_id.to_string();
        stack
            .publish_raw(&subject, schemas::encode(&r).unwrap(), Some(&id))
            .await;
    }
    // A good request without Nats-Msg-Id.
    let unmarked = batch_request(ACCOUNT, chat("openai/gpt-4o-mini", "x"));
    stack
        .publish_raw(&subject, schemas::encode(&unmarked).unwrap(), None)
        .await;
    expect.push((
        unmarked.request_id,
        ErrorKind::InvalidRequest,
        "Nats-Msg-Id",
    ));
    // Unaddressable: garbage without a UUID id goes to the dead-letter stream.
    stack
        .publish_raw(&subject, b"garbage".to_vec(), Some("row-1"))
        .await;
    // And the router still serves a good one afterwards.
    let good = batch_request(ACCOUNT, chat("openai/gpt-4o-mini", "still working"));
    job::publish(&stack.js, ACCOUNT, job, vec![good.clone()])
        .await
        .unwrap();

    let mut results = Results::open(&stack.js, ACCOUNT, job).await.unwrap();
    let mut got = std::collections::HashMap::new();
    while got.len() < expect.len() + 1 {
        let r = results
            .next(Duration::from_secs(20))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("only {} results: {got:?}", got.len()));
        got.insert(r.request_id, r);
    }
    for (id, kind, words) in &expect {
        let e = got[id]
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{id}: no error"));
        assert_eq!(e.kind, *kind, "{id}: {}", e.message);
        assert!(e.message.contains(words), "{kind:?}: {}", e.message);
        assert!(got[id].message.is_none());
    }
    assert_eq!(
        got[&good.request_id]
            .message
            .as_ref()
            .unwrap()
            .joined_text(),
        "echo: still working"
    );
    // The unaddressable one is dead-lettered with its reason and without its body.
    let dlq = stack.js.get_stream("DEADLETTER").await.unwrap();
    let entry = dlq
        .get_last_raw_message_by_subject("dlq.BATCH.batch-router")
        .await
        .unwrap();
    let reason = entry
        .headers
        .get(schemas::headers::DEAD_LETTER_REASON)
        .unwrap();
    assert!(
        reason.as_str().contains("no UUID Nats-Msg-Id"),
        "{reason:?}"
    );
    assert!(entry.payload.is_empty());
    assert_eq!(stack.messages_in("BATCH").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_requests_are_served_before_queued_batch_work() {
    // One slot, 40 ms per provider call: 30 batch requests take over a second.
    let stack = start(
        MockConfig {
            latency: Duration::from_millis(40),
            ..MockConfig::default()
        },
        Some(1),
    )
    .await;
    const N: usize = 30;
    let requests: Vec<_> = (0..N)
        .map(|i| batch_request(ACCOUNT, chat("openai/gpt-4o-mini", &format!("batch {i}"))))
        .collect();
    job::publish(&stack.js, ACCOUNT, "prio", requests)
        .await
        .unwrap();
    // Once the translator is busy with batch work, an interactive request arrives.
    let mut results = Results::open(&stack.js, ACCOUNT, "prio").await.unwrap();
    results
        .next(Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let (_, mut reply) = switchyard_worker::testing::publish_request(
        &stack.client,
        &stack.seal,
        ACCOUNT,
        &SealedRequest {
            request: chat("openai/gpt-4o-mini", "interactive"),
            provider_key: Some(KEY.into()),
            provider_keys: Default::default(),
            task: None,
        },
        chrono::Duration::seconds(30),
    )
    .await
    .unwrap();
    let chunk = switchyard_worker::testing::next_chunk(&mut reply, Duration::from_secs(10))
        .await
        .unwrap();
    let done_when_answered = stack.count("RESULTS", "res.acme.prio.>").await;
    assert!(chunk.error.is_none(), "{:?}", chunk.error);
    assert_eq!(
        chunk.delta.unwrap().content.as_deref(),
        Some("echo: interactive")
    );
    // It waited for at most the batch request in progress (plus one fetched with it),
    // not for the queue.
    assert!(
        done_when_answered <= 4,
        "{done_when_answered} batch results were stored before the interactive answer"
    );
    // The batch work still completes.
    let mut seen = 1;
    while seen < N {
        results
            .next(Duration::from_secs(20))
            .await
            .unwrap()
            .unwrap();
        seen += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_worker_keeps_dying_gets_an_error_result() {
    // No translator yet: the request waits on BATCHWORK.
    let stack = start(MockConfig::default(), None).await;
    let req = batch_request(ACCOUNT, chat("openai/gpt-4o-mini", "doomed"));
    job::publish(&stack.js, ACCOUNT, "crash", vec![req.clone()])
        .await
        .unwrap();
    // Five workers take it and die without acking (a nak is a faster ack-wait expiry).
    let consumer: jetstream::consumer::PullConsumer = stack
        .js
        .get_stream("BATCHWORK")
        .await
        .unwrap()
        .get_consumer("translator-batch")
        .await
        .unwrap();
    for attempt in 1..=switchyard_worker::MAX_BATCH_ATTEMPTS {
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .unwrap();
        let m = batch.next().await.unwrap().unwrap();
        assert_eq!(m.info().unwrap().delivered, attempt);
        m.ack_with(jetstream::AckKind::Nak(None)).await.unwrap();
    }
    stack.start_translator(4).await;
    let r = stack
        .result("crash", req.request_id, Duration::from_secs(10))
        .await;
    let e = r.error.unwrap();
    assert_eq!(e.kind, ErrorKind::Internal);
    assert!(e.message.contains("attempted 5 times"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_batch_request_is_tried_again_later_not_failed() {
    // The flaky model answers 429 (Retry-After: 1 s) to every other call, and the
    // translator makes one attempt per delivery: the row comes back after the delay.
    let stack = start(MockConfig::default(), Some(4)).await;
    let req = batch_request(ACCOUNT, chat("openai/mock-flaky-429", "patience"));
    job::publish(&stack.js, ACCOUNT, "flaky", vec![req.clone()])
        .await
        .unwrap();
    let r = stack
        .result("flaky", req.request_id, Duration::from_secs(20))
        .await;
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.message.unwrap().joined_text(), "echo: patience");
    assert_eq!(stack.count("RESULTS", "res.acme.flaky.>").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_over_its_spend_limit_gets_no_open_model_batch_work() {
    use sea_orm::{ActiveValue::Set, EntityTrait};
    use std::str::FromStr;
    use switchyard_store::billing::{self, Decimal};
    let db = switchyard_store::testing::TestDb::new().await.unwrap();
    switchyard_store::keys::create_account(&db.db, ACCOUNT, None)
        .await
        .unwrap();
    billing::set_spend_limit(&db.db, ACCOUNT, Some(Decimal::from_str("10").unwrap()))
        .await
        .unwrap();
    switchyard_store::entities::account_monthly_spend::Entity::insert(
        switchyard_store::entities::account_monthly_spend::ActiveModel {
            account_id: Set(ACCOUNT.into()),
            month: Set(billing::current_month()),
            cost: Set(Decimal::from_str("10.5").unwrap()),
            updated_at: Set(Utc::now()),
        },
    )
    .exec(&db.db)
    .await
    .unwrap();
    let stack = start_with(MockConfig::default(), Some(4), Some(db.url.clone())).await;
    let mut open = batch_request(ACCOUNT, chat("sentence-transformers/all-MiniLM-L6-v2", ""));
    open.request.messages.clear();
    open.task = Some(TaskInput::FeatureExtraction {
        inputs: vec!["charged".into()],
    });
    let closed = batch_request(ACCOUNT, chat("openai/gpt-4o-mini", "free"));
    job::publish(
        &stack.js,
        ACCOUNT,
        "spend",
        vec![open.clone(), closed.clone()],
    )
    .await
    .unwrap();
    let r = stack
        .result("spend", open.request_id, Duration::from_secs(10))
        .await;
    let e = r.error.unwrap();
    assert_eq!(e.kind, ErrorKind::PaymentRequired);
    assert!(e.message.contains("spend limit reached"), "{}", e.message);
    // Closed models are not charged: that row is answered.
    let r = stack
        .result("spend", closed.request_id, Duration::from_secs(10))
        .await;
    assert_eq!(r.message.unwrap().joined_text(), "echo: free");
    // Nothing was queued for an instance.
    assert_eq!(stack.count("BATCHWORK", "breq.open.>").await, 0);
}
