#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]
//! Batch users against the shipped nats-server config (`infra/nats/single.conf` with a
//! users file written by the real `switchyard-nats batch-user add`): each account
//! publishes and reads only its own subjects, and the JetStream store is encrypted at
//! rest. The permission model is in nats/README.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::{Client, Event, ServerError};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use switchyard_nats::testing::NatsServer;
use tokio::sync::mpsc;

const STORE_KEY: &str = "test-store-key-0123456789abcdef";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// `to` as seen from `from_dir` (nats-server resolves includes relative to the
/// including file's directory and does not take absolute paths).
fn relative(from_dir: &Path, to: &Path) -> String {
    let from = from_dir.canonicalize().unwrap();
    let ups = from.components().count() - 1; // everything below `/`
    let to = to.canonicalize().unwrap();
    format!(
        "{}{}",
        "../".repeat(ups),
        to.strip_prefix("/").unwrap().display()
    )
}

/// Runs the real binary: `switchyard-nats batch-user <args> --users-file <file>`.
fn batch_user(users_file: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard-nats"))
        .arg("batch-user")
        .args(args)
        .arg("--users-file")
        .arg(users_file)
        .output()
        .unwrap()
}

/// Adds a batch user the way an operator does; returns the password it printed.
fn add_user(users_file: &Path, account: &str) -> String {
    let out = batch_user(users_file, &["add", "--account", account]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let password = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(password.len(), 43, "one password line on stdout");
    password
}

/// A client plus the permission errors the server sent it.
struct User {
    client: Client,
    js: jetstream::Context,
    errors: mpsc::UnboundedReceiver<String>,
}

impl User {
    /// Waits for the server's "Permissions Violation for … "<subject>"".
    async fn refused(&mut self, subject: &str) {
        let quoted = format!("\"{subject}\"");
        let wait = async {
            while let Some(e) = self.errors.recv().await {
                if e.contains("Permissions Violation") && e.contains(&quoted) {
                    return;
                }
            }
            panic!("connection closed before the refusal of {subject}");
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| panic!("no permissions violation for {subject}"));
    }
}

struct Fixture {
    server: NatsServer,
    dir: tempfile::TempDir,
    internal_password: String,
    passwords: BTreeMap<&'static str, String>,
    internal: jetstream::Context,
}

/// `include` lines for the shipped single.conf and the users file in `dir`.
fn write_config(dir: &Path) -> PathBuf {
    let single = repo().join("infra/nats/single.conf");
    let conf = dir.join("server.conf");
    std::fs::write(
        &conf,
        format!(
            "include \"{}\"\ninclude \"batch-users.conf\"\n",
            relative(dir, &single)
        ),
    )
    .unwrap();
    conf
}

impl Fixture {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("batch-users.conf");
        let mut passwords = BTreeMap::new();
        for account in ["acme", "globex"] {
            passwords.insert(account, add_user(&users, account));
        }
        let conf = write_config(dir.path());
        let internal_password = "internal-test-password".to_string();
        let server = NatsServer::start_with_config(
            &conf,
            &[
                ("SWITCHYARD_NATS_PASSWORD", internal_password.as_str()),
                ("SWITCHYARD_NATS_STORE_KEY", STORE_KEY),
            ],
        )
        .unwrap();
        let client = server
            .connect_as("switchyard", &internal_password, None)
            .await
            .unwrap();
        let internal = jetstream::new(client);
        let defs = switchyard_nats::Definitions::embedded().unwrap();
        switchyard_nats::apply(&internal, &defs).await.unwrap();
        Self {
            server,
            dir,
            internal_password,
            passwords,
            internal,
        }
    }

    async fn user(&self, account: &'static str) -> User {
        let (tx, errors) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::with_user_and_password(
            account.into(),
            self.passwords[account].clone(),
        )
        .custom_inbox_prefix(format!("_INBOX_{account}"))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(ServerError::Other(e)) = event {
                    let _ = tx.send(e);
                }
            }
        })
        .connect(self.server.url())
        .await
        .unwrap();
        let js = jetstream::new(client.clone());
        User { client, js, errors }
    }

    /// Every subject in `stream` with its message count, read as the internal user.
    async fn subjects(&self, stream: &str) -> BTreeMap<String, usize> {
        let stream = self.internal.get_stream(stream).await.unwrap();
        let info = stream.info_with_subjects(">").await.unwrap();
        info.try_collect::<BTreeMap<_, _>>().await.unwrap()
    }

    async fn publish_results(&self, subjects: &[&str]) {
        for s in subjects {
            self.internal
                .publish(s.to_string(), Bytes::from(format!("payload of {s}")))
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
}

// ------------------------------------------------------------------------ publishing

#[tokio::test]
async fn acme_publishes_its_batch_requests_and_gets_pubacks() {
    let f = Fixture::start().await;
    let acme = f.user("acme").await;
    let publish = || {
        jetstream::message::PublishMessage::build()
            .payload(Bytes::from_static(b"a batch request"))
            .message_id("0197a7a0-0000-7000-8000-000000000001")
    };
    let ack = acme
        .js
        .send_publish("batch.acme.job1", publish())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "BATCH");
    assert!(!ack.duplicate);
    let again = acme
        .js
        .send_publish("batch.acme.job1", publish())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(again.duplicate, "the same Nats-Msg-Id is deduplicated");
    assert_eq!(again.sequence, ack.sequence);
    assert_eq!(
        f.subjects("BATCH").await,
        BTreeMap::from([("batch.acme.job1".to_string(), 1)])
    );
}

#[tokio::test]
async fn acme_cannot_publish_anywhere_else() {
    let f = Fixture::start().await;
    let mut acme = f.user("acme").await;
    let forbidden = [
        "batch.globex.job1",
        "batch.acme", // not under batch.acme.>
        "req.closed.openai",
        "req.open.x.acme",
        "breq.open.x.acme",
        "breq.closed.openai",
        "usage.tokens.acme",
        "res.acme.job1.forged",
        "dlq.BATCH.batch-router",
        "cancel.0197a7a0-0000-7000-8000-000000000001",
        "reply.ingress-1.0197a7a0-0000-7000-8000-000000000001",
        "$KV.clusters.acme",
        "$JS.ACK.RESULTS.c.1.1.1.1.0",
        "$JS.API.STREAM.PURGE.BATCH",
        "$JS.API.STREAM.DELETE.RESULTS",
        "$JS.API.CONSUMER.DELETE.BATCH.batch-router",
    ];
    for subject in forbidden {
        // The PubAck never comes: the server drops the message and says why.
        let _no_ack = acme
            .js
            .publish(subject, Bytes::from_static(b"intruder"))
            .await
            .unwrap();
        acme.refused(subject).await;
    }
    // A permitted publish after them: its PubAck means the server processed them all.
    acme.js
        .publish("batch.acme.ok", Bytes::from_static(b"ok"))
        .await
        .unwrap()
        .await
        .unwrap();
    let streams = [
        "BATCH",
        "BATCHWORK",
        "REQUESTS",
        "RESULTS",
        "USAGE",
        "USAGE_TOKENS",
        "DEADLETTER",
    ];
    for stream in streams {
        let subjects = f.subjects(stream).await;
        let want = if stream == "BATCH" {
            BTreeMap::from([("batch.acme.ok".to_string(), 1)])
        } else {
            BTreeMap::new()
        };
        assert_eq!(subjects, want, "stream {stream}");
    }
    let kv = f.internal.get_key_value("clusters").await.unwrap();
    assert!(kv.get("acme").await.unwrap().is_none());
    // Nothing was deleted or purged either.
    let names: Vec<String> = f.internal.stream_names().try_collect().await.unwrap();
    for stream in streams {
        assert!(names.iter().any(|n| n == stream), "{stream} still exists");
    }
    f.internal
        .get_consumer_from_stream::<consumer::Config, _, _>("batch-router", "BATCH")
        .await
        .expect("the batch router's consumer still exists");
}

// ------------------------------------------------------------------------ reading

#[tokio::test]
async fn acme_reads_exactly_its_own_results() {
    let f = Fixture::start().await;
    f.publish_results(&[
        "res.acme.job1.r0",
        "res.globex.job1.r0",
        "res.acme.job1.r1",
        "res.acme.job2.r0",
        "res.acme.job1.r2",
        "res.globex.job1.r1",
    ])
    .await;
    let acme = f.user("acme").await;

    // An ordered push consumer, named (the name puts the filter into the API subject,
    // where the permission checks it), delivering into acme's own inbox.
    let consumer = acme
        .js
        .create_consumer_on_stream(
            consumer::push::OrderedConfig {
                name: Some(format!("acme-job1-{}", std::process::id())),
                deliver_subject: acme.client.new_inbox(),
                filter_subject: "res.acme.job1.>".into(),
                ..Default::default()
            },
            "RESULTS",
        )
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut got = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("a result")
            .unwrap()
            .unwrap();
        got.push((m.subject.to_string(), m.payload.clone()));
        if m.info().unwrap().pending == 0 {
            break; // the server says nothing more matches the filter
        }
    }
    let want: Vec<(String, Bytes)> = ["res.acme.job1.r0", "res.acme.job1.r1", "res.acme.job1.r2"]
        .iter()
        .map(|s| (s.to_string(), Bytes::from(format!("payload of {s}"))))
        .collect();
    assert_eq!(got, want);

    // One result by subject: direct get.
    let results = acme.js.get_stream_no_info("RESULTS").await.unwrap();
    let one = results
        .direct_get_last_for_subject("res.acme.job1.r1")
        .await
        .unwrap();
    assert_eq!(one.payload, Bytes::from("payload of res.acme.job1.r1"));
}

#[tokio::test]
async fn ordered_consumers_get_through_flow_control() {
    // Push consumers stall after a few MB unless the client answers flow-control
    // requests ($JS.FC.RESULTS.>): 300 results of 20 kB.
    let f = Fixture::start().await;
    let body = Bytes::from(vec![b'x'; 20_000]);
    for i in 0..300 {
        f.internal
            .publish(format!("res.acme.big.r{i:03}"), body.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let acme = f.user("acme").await;
    let consumer = acme
        .js
        .create_consumer_on_stream(
            consumer::push::OrderedConfig {
                name: Some("acme-big".into()),
                deliver_subject: acme.client.new_inbox(),
                filter_subject: "res.acme.big.>".into(),
                ..Default::default()
            },
            "RESULTS",
        )
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    for i in 0..300 {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {i} results"))
            .unwrap()
            .unwrap();
        assert_eq!(m.subject.as_str(), format!("res.acme.big.r{i:03}"));
    }
}

#[tokio::test]
async fn acme_cannot_read_globex_results() {
    let f = Fixture::start().await;
    f.publish_results(&["res.globex.job1.r0", "res.acme.job1.r0"])
        .await;
    let mut acme = f.user("acme").await;
    let (js, client) = (acme.js.clone(), acme.client.clone());
    let push = |name: &str, filter: &str| consumer::push::OrderedConfig {
        name: Some(name.into()),
        deliver_subject: client.new_inbox(),
        filter_subject: filter.into(),
        ..Default::default()
    };

    // Consumers on anything but res.acme.>: refused by the create subject.
    for (name, filter) in [
        ("g1", "res.globex.>"),
        ("g2", "res.globex.job1.>"),
        ("g3", "res.*.job1.>"),
        ("g4", "res.>"),
        ("g5", ">"),
    ] {
        let create = js.create_consumer_on_stream(push(name, filter), "RESULTS");
        let api = format!("$JS.API.CONSUMER.CREATE.RESULTS.{name}.{filter}");
        tokio::select! {
            r = create => panic!("consumer on {filter} answered: {:?}", r.map(|c| c.cached_info().config.filter_subject.clone())),
            () = acme.refused(&api) => {}
        }
    }
    // Without a name the filter is only in the body: refused too.
    let mut unnamed = push("x", "res.acme.>");
    unnamed.name = None;
    tokio::select! {
        r = js.create_consumer_on_stream(unnamed, "RESULTS") => panic!("unnamed consumer answered: {}", r.is_ok()),
        () = acme.refused("$JS.API.CONSUMER.CREATE.RESULTS") => {}
    }

    // The subject says res.acme.>, the body asks for more: the server refuses.
    for (code, config) in [
        (
            10131,
            serde_json::json!({"name": "m1", "filter_subject": "res.globex.>", "deliver_subject": acme.client.new_inbox()}),
        ),
        (
            10137,
            serde_json::json!({"name": "m2", "filter_subjects": ["res.acme.>", "res.globex.>"], "deliver_subject": acme.client.new_inbox()}),
        ),
        (
            10131,
            serde_json::json!({"name": "m3", "deliver_subject": acme.client.new_inbox()}),
        ),
    ] {
        let name = config["name"].as_str().unwrap().to_string();
        let reply = acme
            .client
            .request(
                format!("$JS.API.CONSUMER.CREATE.RESULTS.{name}.res.acme.>"),
                serde_json::to_vec(
                    &serde_json::json!({"stream_name": "RESULTS", "config": config}),
                )
                .unwrap()
                .into(),
            )
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(answer["error"]["err_code"], code, "{answer}");
    }

    // Direct get: globex's subject is refused; by sequence (no subject) too.
    let results = acme.js.get_stream_no_info("RESULTS").await.unwrap();
    tokio::select! {
        r = results.direct_get_last_for_subject("res.globex.job1.r0") => panic!("direct get answered: {:?}", r.map(|m| m.payload)),
        () = acme.refused("$JS.API.DIRECT.GET.RESULTS.res.globex.job1.r0") => {}
    }
    tokio::select! {
        r = results.direct_get(1) => panic!("direct get by sequence answered: {:?}", r.map(|m| m.payload)),
        () = acme.refused("$JS.API.DIRECT.GET.RESULTS") => {}
    }
    // Acme's own subject with a body asking for another message: the server answers
    // 408 and nothing else (the subject form takes an empty body only).
    let globex_seq = 1; // published first
    let reply = acme
        .client
        .request(
            "$JS.API.DIRECT.GET.RESULTS.res.acme.job1.r0",
            serde_json::to_vec(&serde_json::json!({"seq": globex_seq}))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, Some(async_nats::StatusCode::TIMEOUT));
    assert!(reply.payload.is_empty());

    // No pull consumers, consumer or stream info, listing, or message get.
    for subject in [
        "$JS.API.CONSUMER.MSG.NEXT.RESULTS.anyone",
        "$JS.API.CONSUMER.INFO.RESULTS.anyone",
        "$JS.API.CONSUMER.LIST.RESULTS",
        "$JS.API.CONSUMER.NAMES.RESULTS",
        "$JS.API.STREAM.INFO.RESULTS",
        "$JS.API.STREAM.MSG.GET.RESULTS",
        "$JS.API.STREAM.NAMES",
        "$JS.API.INFO",
    ] {
        tokio::select! {
            r = client.request(subject, Bytes::new()) => panic!("{subject} answered: {:?}", r.map(|m| m.payload)),
            () = acme.refused(subject) => {}
        }
    }

    // Subscriptions outside its inbox: refused, so another account's push consumer
    // deliveries (to _INBOX_globex…) and core subjects never reach acme.
    for subject in ["res.>", "_INBOX_globex.>", "_INBOX.>", "batch.acme.>", ">"] {
        let _sub = acme.client.subscribe(subject).await.unwrap();
        acme.refused(subject).await;
    }
}

#[tokio::test]
async fn taking_over_another_accounts_consumer_name_yields_only_own_results() {
    // Consumer names are shared by every account on RESULTS, and the create subject
    // cannot restrict the name. Taking over the name of globex's idle consumer changes
    // its filter to acme's: acme gets its own results, never globex's (with ack none,
    // as batch users cannot ack, nothing of globex's is pending for redelivery).
    let f = Fixture::start().await;
    f.publish_results(&[
        "res.globex.job1.r0",
        "res.globex.job1.r1",
        "res.acme.job1.r0",
    ])
    .await;
    let globex = f.user("globex").await;
    let config = |deliver: String, filter: &str| consumer::push::Config {
        durable_name: Some("job1".into()),
        name: Some("job1".into()),
        deliver_subject: deliver,
        filter_subject: filter.into(),
        ack_policy: consumer::AckPolicy::None,
        ..Default::default()
    };
    let c = globex
        .js
        .create_consumer_on_stream(
            config(globex.client.new_inbox(), "res.globex.job1.>"),
            "RESULTS",
        )
        .await
        .unwrap();
    let mut messages = c.messages().await.unwrap();
    for _ in 0..2 {
        messages.next().await.unwrap().unwrap();
    }
    drop(messages);
    globex.client.flush().await.unwrap(); // the unsubscribe reached the server

    let acme = f.user("acme").await;
    let c = acme
        .js
        .create_consumer_on_stream(
            config(acme.client.new_inbox(), "res.acme.job1.>"),
            "RESULTS",
        )
        .await
        .unwrap();
    assert_eq!(c.cached_info().config.filter_subject, "res.acme.job1.>");
    let mut messages = c.messages().await.unwrap();
    f.publish_results(&["res.globex.job1.late", "res.acme.job1.late"])
        .await;
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("res.acme.job1.late") {
        let m = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("acme's late result")
            .unwrap()
            .unwrap();
        got.push(m.subject.to_string());
    }
    assert!(
        got.iter().all(|s| s.starts_with("res.acme.")),
        "acme got another account's results: {got:?}"
    );
}

#[tokio::test]
async fn kv_buckets_are_out_of_reach() {
    let f = Fixture::start().await;
    let mut acme = f.user("acme").await;
    let (js, client) = (acme.js.clone(), acme.client.clone());
    tokio::select! {
        r = js.get_key_value("clusters") => panic!("KV answered: {}", r.is_ok()),
        () = acme.refused("$JS.API.STREAM.INFO.KV_clusters") => {}
    }
    tokio::select! {
        r = client.request("$JS.API.DIRECT.GET.KV_instances.$KV.instances.x", Bytes::new()) => panic!("KV get answered: {:?}", r.map(|m| m.payload)),
        () = acme.refused("$JS.API.DIRECT.GET.KV_instances.$KV.instances.x") => {}
    }
    let _sub = acme.client.subscribe("$KV.clusters.>").await.unwrap();
    acme.refused("$KV.clusters.>").await;
}

// ------------------------------------------------------------------------ logging in

#[tokio::test]
async fn only_known_users_with_their_own_password_log_in() {
    let f = Fixture::start().await;
    let refused = |r: Result<Client, async_nats::ConnectError>| match r {
        Err(e) => assert_eq!(
            e.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation,
            "{e}"
        ),
        Ok(_) => panic!("logged in"),
    };
    refused(f.server.connect().await);
    refused(
        f.server
            .connect_as("acme", &f.passwords["globex"], None)
            .await,
    );
    refused(f.server.connect_as("switchyard", "guess", None).await);
    // async-nats 0.51 ignores credentials in the URL: services need them in
    // ConnectOptions (nats/README.md).
    let port = f.server.url().rsplit(':').next().unwrap();
    let with_creds = format!("nats://switchyard:{}@127.0.0.1:{port}", f.internal_password);
    refused(async_nats::connect(with_creds.as_str()).await);
    f.server
        .connect_as("switchyard", &f.internal_password, None)
        .await
        .unwrap();
}

#[tokio::test]
async fn apply_logs_in_with_url_credentials_and_never_logs_them() {
    let f = Fixture::start().await;
    let port = f.server.url().rsplit(':').next().unwrap();
    let run = |password: &str| {
        Command::new(env!("CARGO_BIN_EXE_switchyard-nats"))
            .args(["apply", "--dir"])
            .arg(repo().join("nats"))
            .env(
                "NATS_URL",
                format!("nats://switchyard:{password}@127.0.0.1:{port}"),
            )
            .env("RUST_LOG", "debug")
            .output()
            .unwrap()
    };
    let ok = run(&f.internal_password);
    let said =
        String::from_utf8_lossy(&ok.stderr).to_string() + &String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{said}");
    assert!(said.contains("NATS definitions applied"), "{said}");
    assert!(
        !said.contains(&f.internal_password),
        "password in the debug log"
    );

    let wrong = "wrong-password-in-the-url";
    let refused = run(wrong);
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success());
    assert!(said.contains("nats://switchyard:***@127.0.0.1"), "{said}");
    assert!(!said.contains(wrong), "password in the error: {said}");
}

#[tokio::test]
async fn added_rotated_and_removed_users_take_effect_on_reload() {
    let f = Fixture::start().await;
    let users = f.dir.path().join("batch-users.conf");
    let login = |password: String| {
        let url = f.server.url().to_string();
        async move {
            async_nats::ConnectOptions::with_user_and_password("initech".into(), password)
                .connect(url)
                .await
        }
    };
    let reload = || {
        let status = Command::new(switchyard_nats::testing::server_binary())
            .args(["--signal", &format!("reload={}", f.server.pid())])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // Reloading is asynchronous: wait (bounded) for the change to show.
    async fn until<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check().await {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let first = add_user(&users, "initech");
    assert!(login(first.clone()).await.is_err(), "not before the reload");
    reload();
    until("initech logs in after the reload", || async {
        login(first.clone()).await.is_ok()
    })
    .await;

    // Adding again is refused and changes nothing; --rotate replaces the password.
    let out = batch_user(&users, &["add", "--account", "initech"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no password printed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rotate"));
    let out = batch_user(&users, &["add", "--account", "initech", "--rotate"]);
    assert!(out.status.success());
    let second = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_ne!(first, second);
    reload();
    until("the old password stops working", || async {
        login(first.clone()).await.is_err()
    })
    .await;
    login(second.clone()).await.unwrap();

    let listed = batch_user(&users, &["list"]);
    assert_eq!(
        String::from_utf8(listed.stdout).unwrap(),
        "acme\nglobex\ninitech\n"
    );
    let out = batch_user(&users, &["remove", "--account", "initech"]);
    assert!(out.status.success());
    reload();
    until("initech is gone", || async {
        login(second.clone()).await.is_err()
    })
    .await;
    // The others are untouched.
    f.user("acme").await;
}

// ------------------------------------------------------------------------ at rest

fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    let mut files = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files += 1;
                let data = std::fs::read(&path).unwrap();
                if data.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path);
                }
            }
        }
    }
    assert!(files > 0, "no files under {}", root.display());
    hits
}

#[tokio::test]
async fn batch_requests_and_results_are_encrypted_at_rest() {
    let marker = format!("secret-prompt-{}", std::process::id());
    let f = Fixture::start().await;
    let acme = f.user("acme").await;
    acme.js
        .publish("batch.acme.j", Bytes::from(marker.clone()))
        .await
        .unwrap()
        .await
        .unwrap();
    f.publish_results(&["res.acme.j.r0"]).await;
    f.internal
        .publish("res.acme.j.r1", Bytes::from(marker.clone()))
        .await
        .unwrap()
        .await
        .unwrap();
    // sync_interval: always: the PubAck came after the write reached the disk.
    let hits = files_containing(&f.server.store_dir(), marker.as_bytes());
    assert!(hits.is_empty(), "plaintext at rest in {hits:?}");

    // Control: the same shipped config without the cipher keeps the marker readable
    // on disk, so the search above could have found it.
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(repo().join("infra/nats/single.conf")).unwrap();
    let plain: String = shipped
        .lines()
        .filter(|l| !l.trim_start().starts_with("cipher:") && !l.trim_start().starts_with("key:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(plain, shipped, "single.conf sets a cipher");
    let conf = dir.path().join("plain.conf");
    std::fs::write(&conf, plain).unwrap();
    let server = NatsServer::start_with_config(&conf, &[]).unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    let defs = switchyard_nats::Definitions::embedded().unwrap();
    switchyard_nats::apply(&js, &defs).await.unwrap();
    js.publish("batch.acme.j", Bytes::from(marker.clone()))
        .await
        .unwrap()
        .await
        .unwrap();
    let hits = files_containing(&server.store_dir(), marker.as_bytes());
    assert!(
        !hits.is_empty(),
        "the control server did not write the marker"
    );
}

#[tokio::test]
async fn the_shipped_config_refuses_to_start_without_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    add_user(&dir.path().join("batch-users.conf"), "acme");
    let conf = write_config(dir.path());
    let err =
        NatsServer::start_with_config(&conf, &[("SWITCHYARD_NATS_PASSWORD", "p")]).unwrap_err();
    assert!(err.contains("SWITCHYARD_NATS_STORE_KEY"), "{err}");
    let err = NatsServer::start_with_config(&conf, &[("SWITCHYARD_NATS_STORE_KEY", STORE_KEY)])
        .unwrap_err();
    assert!(err.contains("SWITCHYARD_NATS_PASSWORD"), "{err}");
}
