//! The cluster API and cold starts, against a real nats-server (the `clusters` KV
//! bucket as `switchyard-nats apply` makes it): CRUD, every validation error with its
//! `param`, accounts kept apart (the dev key and a Postgres account's key), a first
//! request creating its model's cluster, and the bounded cold-start wait — a 503 with
//! `Retry-After` when no instance answers in time, the request in JetStream carrying
//! `start_by`, and success when the stand-in worker answers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use chrono::Utc;
use futures::StreamExt;
use reqwest::Method;
use schemas::cluster::{self, ClusterSpec, ClusterState, ClusterStatus};
use schemas::{ReplyChunk, RequestEnvelope, TaskOutput, Usage, subjects};
use serde_json::{Value, json};
use switchyard_ingress::config::AuthArgs;
use switchyard_store::keys;
use switchyard_store::testing::TestDb;

mod common;

use common::{API_KEY, Harness, Options};

const EMBEDDER: &str = "sentence-transformers/all-MiniLM-L6-v2";
const CHATTER: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
const DEV: &str = "Bearer sy-test-key";

async fn start() -> Harness {
    common::start(Options::default()).await
}

impl Harness {
    /// A cluster API call; `body` None sends no body.
    async fn call(
        &self,
        auth: &str,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", auth);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
        )
    }

    async fn kv(&self) -> kv::Store {
        self.js.get_key_value("clusters").await.unwrap()
    }

    /// The spec as stored in KV.
    async fn stored_spec(&self, account: &str, model: &str) -> Option<ClusterSpec> {
        self.kv()
            .await
            .get(cluster::spec_key(account, model).unwrap())
            .await
            .unwrap()
            .map(|v| serde_json::from_slice(&v).unwrap())
    }

    /// Writes a cluster's status, as the autoscaler does.
    async fn put_status(&self, account: &str, model: &str, status: &ClusterStatus) {
        self.kv()
            .await
            .put(
                cluster::status_key(account, model).unwrap(),
                serde_json::to_vec(status).unwrap().into(),
            )
            .await
            .unwrap();
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn embeddings(&self, input: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v1/embeddings", self.base))
            .bearer_auth(API_KEY)
            .json(&json!({"model": EMBEDDER, "input": input}))
    }

    /// Answers an embeddings request as the inference worker does.
    async fn answer_embedding(&self, envelope: &RequestEnvelope) {
        let mut chunk = ReplyChunk::new(envelope.request_id, 0);
        chunk.output = Some(TaskOutput::FeatureExtraction {
            embeddings: vec![vec![0.5, -0.5]],
        });
        chunk.usage = Some(Usage {
            input_tokens: 3,
            output_tokens: 0,
            cached_input_tokens: None,
        });
        chunk.provider = Some("switchyard".into());
        chunk.model = Some(envelope.model.clone());
        chunk.last = true;
        self.reply(envelope, &chunk).await;
    }
}

fn running(instances: u32) -> ClusterStatus {
    ClusterStatus {
        state: if instances == 0 {
            ClusterState::Stopped
        } else {
            ClusterState::Running
        },
        instances,
        ready: instances,
        desired: instances,
        load: 0,
        batch_load: 0,
        inferences: 7,
        last_inference_at: Some(Utc::now()),
        updated: Utc::now(),
    }
}

/// The value of a metric line (labels as rendered), 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .map_or(0.0, |v| v.parse().unwrap())
}

fn path(model: &str) -> String {
    format!("/v1/clusters/{model}")
}

#[tokio::test]
async fn create_read_update_list_delete() {
    let h = start().await;
    let (status, body) = h.call(DEV, Method::GET, "/v1/clusters", None).await;
    assert_eq!((status, body), (200, json!({"object": "list", "data": []})));

    // PUT with no body: the defaults.
    let (status, created) = h.call(DEV, Method::PUT, &path(CHATTER), None).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["object"], "cluster");
    assert_eq!(created["model_id"], CHATTER);
    assert_eq!(
        created["capacity"],
        json!({"min": 0, "desired": 0, "max": 4})
    );
    assert_eq!(created["timeout"], 10);
    assert_eq!(created["instance_type"], "cpu");
    assert_eq!(created["target_concurrency"], 1);
    assert_eq!(created["batch_instances"], 1);
    assert_eq!(created["status"], "creating");
    assert_eq!(created["instances"], 0);
    assert_eq!(created["inferences"], 0);
    assert_eq!(created["last_inference_at"], Value::Null);
    assert_eq!(created["created"], created["modified"]);
    let spec = h.stored_spec("dev", CHATTER).await.unwrap();
    assert_eq!(spec.account, "dev");
    assert_eq!(spec.model_id, CHATTER);
    assert_eq!(spec.timeout_minutes, 10);
    assert_eq!(
        serde_json::to_value(spec.created).unwrap(),
        created["created"]
    );

    // The same PUT again changes nothing, not even `modified`.
    let (status, again) = h.call(DEV, Method::PUT, &path(CHATTER), Some("{}")).await;
    assert_eq!((status, &again), (200, &created));

    // PUT replaces: fields left out go back to their defaults.
    let (status, replaced) = h
        .call(
            DEV,
            Method::PUT,
            &path(CHATTER),
            Some(r#"{"model_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "capacity": {"max": 8}, "timeout": 30, "instance_type": "cpu"}"#),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(
        replaced["capacity"],
        json!({"min": 0, "desired": 0, "max": 8})
    );
    assert_eq!(replaced["timeout"], 30);
    assert_eq!(replaced["created"], created["created"]);
    assert_ne!(replaced["modified"], created["modified"]);
    let (_, reset) = h
        .call(DEV, Method::PUT, &path(CHATTER), Some(r#"{"timeout": 30}"#))
        .await;
    assert_eq!(reset["capacity"]["max"], 4);

    // POST: the model in the body; 409 when the account has that cluster.
    let post = r#"{"model_id": "sentence-transformers/all-MiniLM-L6-v2", "capacity": {"min": 1, "max": 2}, "target_concurrency": 8}"#;
    let (status, embedder) = h.call(DEV, Method::POST, "/v1/clusters", Some(post)).await;
    assert_eq!(status, 201, "{embedder}");
    assert_eq!(
        embedder["capacity"],
        json!({"min": 1, "desired": 1, "max": 2})
    );
    assert_eq!(embedder["target_concurrency"], 8);
    let (status, body) = h.call(DEV, Method::POST, "/v1/clusters", Some(post)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "cluster_exists");
    assert_eq!(body["error"]["param"], "model_id");

    // GET; PATCH changes only what it names.
    let (status, got) = h.call(DEV, Method::GET, &path(EMBEDDER), None).await;
    assert_eq!((status, &got), (200, &embedder));
    let (status, patched) = h
        .call(
            DEV,
            Method::PATCH,
            &path(EMBEDDER),
            Some(r#"{"timeout": 5}"#),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["timeout"], 5);
    assert_eq!(patched["capacity"], embedder["capacity"]);
    assert_eq!(patched["target_concurrency"], 8);
    let (_, patched) = h
        .call(
            DEV,
            Method::PATCH,
            &path(EMBEDDER),
            Some(r#"{"capacity": {"desired": 2}}"#),
        )
        .await;
    assert_eq!(
        patched["capacity"],
        json!({"min": 1, "desired": 2, "max": 2})
    );
    assert_eq!(patched["timeout"], 5);
    let stored = h.stored_spec("dev", EMBEDDER).await.unwrap();
    assert_eq!(
        (stored.capacity.desired, stored.timeout_minutes),
        (2, 5),
        "{stored:?}"
    );

    // What the autoscaler reports shows up.
    let status_written = running(2);
    h.put_status("dev", EMBEDDER, &status_written).await;
    let (_, got) = h.call(DEV, Method::GET, &path(EMBEDDER), None).await;
    assert_eq!(got["status"], "running");
    assert_eq!(got["instances"], 2);
    assert_eq!(got["inferences"], 7);
    assert_eq!(
        got["last_inference_at"],
        serde_json::to_value(status_written.last_inference_at).unwrap()
    );

    // The list: the account's clusters, by model id.
    let (status, list) = h.call(DEV, Method::GET, "/v1/clusters", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["model_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [CHATTER, EMBEDDER]);
    assert_eq!(list["data"][1], got);

    // DELETE: gone from KV, GET and the list; a second DELETE is a 404.
    let (status, body) = h.call(DEV, Method::DELETE, &path(EMBEDDER), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"object": "cluster", "model_id": EMBEDDER, "deleted": true})
    );
    assert!(h.stored_spec("dev", EMBEDDER).await.is_none());
    let (status, body) = h.call(DEV, Method::GET, &path(EMBEDDER), None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "cluster_not_found");
    assert_eq!(body["error"]["param"], "model_id");
    assert_eq!(
        h.call(DEV, Method::DELETE, &path(EMBEDDER), None).await.0,
        404
    );
    let (_, list) = h.call(DEV, Method::GET, "/v1/clusters", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // Created again after a delete: POST works, and the old status is not shown.
    let (status, again) = h.call(DEV, Method::POST, "/v1/clusters", Some(post)).await;
    assert_eq!(status, 201, "{again}");
    let (_, got) = h.call(DEV, Method::GET, &path(EMBEDDER), None).await;
    assert_eq!(got["status"], "creating");
    assert_eq!(got["instances"], 0);

    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"ingress_cluster_api_requests_total{route="create",status="409"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"ingress_cluster_api_requests_total{route="put",status="201"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"ingress_cluster_api_requests_total{route="delete",status="404"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn batch_instances_is_set_kept_and_shown_with_the_batch_load() {
    let h = start().await;
    // POST: given; GET returns it; KV holds it.
    let (status, created) = h
        .call(
            DEV,
            Method::POST,
            "/v1/clusters",
            Some(r#"{"model_id": "sentence-transformers/all-MiniLM-L6-v2", "capacity": {"max": 3}, "batch_instances": 0}"#),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["batch_instances"], 0);
    assert_eq!(created["batch_load"], 0);
    let (_, got) = h.call(DEV, Method::GET, &path(EMBEDDER), None).await;
    assert_eq!(got["batch_instances"], 0);
    assert_eq!(
        h.stored_spec("dev", EMBEDDER)
            .await
            .unwrap()
            .batch_instances,
        0
    );

    // PATCH changes it alone; the same PATCH again changes nothing.
    let (status, patched) = h
        .call(
            DEV,
            Method::PATCH,
            &path(EMBEDDER),
            Some(r#"{"batch_instances": 3}"#),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["batch_instances"], 3);
    assert_eq!(patched["capacity"], created["capacity"]);
    assert_ne!(patched["modified"], created["modified"]);
    let (_, again) = h
        .call(
            DEV,
            Method::PATCH,
            &path(EMBEDDER),
            Some(r#"{"batch_instances": 3}"#),
        )
        .await;
    assert_eq!(again, patched);
    // Above the max: refused, naming the field; nothing changed.
    let (status, refused) = h
        .call(
            DEV,
            Method::PATCH,
            &path(EMBEDDER),
            Some(r#"{"batch_instances": 4}"#),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["param"], "batch_instances");
    assert_eq!(
        h.stored_spec("dev", EMBEDDER)
            .await
            .unwrap()
            .batch_instances,
        3
    );
    // Lowering the max moves it along (as it does desired).
    let (_, lowered) = h
        .call(
            DEV,
            Method::PATCH,
            &path(EMBEDDER),
            Some(r#"{"capacity": {"max": 2}}"#),
        )
        .await;
    assert_eq!(lowered["batch_instances"], 2);
    // PUT replaces: left out, it is the default again.
    let (status, put) = h
        .call(
            DEV,
            Method::PUT,
            &path(EMBEDDER),
            Some(r#"{"capacity": {"max": 2}}"#),
        )
        .await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["batch_instances"], 1);

    // The autoscaler's batch load shows up beside the interactive load.
    h.put_status(
        "dev",
        EMBEDDER,
        &ClusterStatus {
            load: 2,
            batch_load: 40,
            ..running(1)
        },
    )
    .await;
    let (_, got) = h.call(DEV, Method::GET, &path(EMBEDDER), None).await;
    assert_eq!(
        (got["load"].as_u64(), got["batch_load"].as_u64()),
        (Some(2), Some(40))
    );
    let (_, list) = h.call(DEV, Method::GET, "/v1/clusters", None).await;
    assert_eq!(list["data"][0], got);
}

/// A request and what it must be answered: (method, path, body, status, param, part
/// of the message).
type Case = (
    Method,
    String,
    Option<&'static str>,
    u16,
    &'static str,
    &'static str,
);

#[tokio::test]
async fn validation_errors_name_the_field() {
    let h = start().await;
    let cases: &[Case] = &[
        // (method, path, body, status, param, part of the message)
        (
            Method::PUT,
            path("openai/gpt-4o-mini"),
            None,
            400,
            "model_id",
            "clusters are for open models",
        ),
        (
            Method::PUT,
            path("acme/no-such-model"),
            None,
            404,
            "model_id",
            "does not exist",
        ),
        (
            Method::PUT,
            path("bad%20model"),
            None,
            400,
            "model_id",
            "not allowed",
        ),
        (
            Method::GET,
            path("bad%20model"),
            None,
            400,
            "model_id",
            "not allowed",
        ),
        (
            Method::POST,
            "/v1/clusters".into(),
            Some("{}"),
            400,
            "model_id",
            "required",
        ),
        (
            Method::POST,
            "/v1/clusters".into(),
            Some(r#"{"model_id": "anthropic/claude-sonnet-4-5"}"#),
            400,
            "model_id",
            "closed model",
        ),
        (
            Method::POST,
            "/v1/clusters".into(),
            Some(r#"{"model_id": 5}"#),
            400,
            "model_id",
            "must be a string",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"model_id": "sentence-transformers/all-MiniLM-L6-v2"}"#),
            400,
            "model_id",
            "cannot change",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"capacity": {"max": 0}}"#),
            400,
            "capacity.max",
            "from 1 to 64",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"capacity": {"max": 65}}"#),
            400,
            "capacity.max",
            "from 1 to 64",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"capacity": {"min": 3, "max": 2}}"#),
            400,
            "capacity.min",
            "must not be greater than capacity.max",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"capacity": {"min": 1, "desired": 0, "max": 2}}"#),
            400,
            "capacity.desired",
            "from 1 to 2",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"capacity": {"desired": 5}}"#),
            400,
            "capacity.desired",
            "from 0 to 4",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"capacity": {"max": -1}}"#),
            400,
            "capacity.max",
            "whole number",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"capacity": {"max": 2.5}}"#),
            400,
            "capacity.max",
            "whole number",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"capacity": {"maximum": 2}}"#),
            400,
            "capacity.maximum",
            "unknown field",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"capacity": 2}"#),
            400,
            "capacity",
            "must be an object",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"timeout": 0}"#),
            400,
            "timeout",
            "from 1 to 1440",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"timeout": 1441}"#),
            400,
            "timeout",
            "from 1 to 1440",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"timeout": "10"}"#),
            400,
            "timeout",
            "whole number",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"target_concurrency": 0}"#),
            400,
            "target_concurrency",
            "from 1 to 256",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"target_concurrency": 257}"#),
            400,
            "target_concurrency",
            "from 1 to 256",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"batch_instances": 5}"#),
            400,
            "batch_instances",
            "from 0 to 4",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"capacity": {"max": 2}, "batch_instances": 3}"#),
            400,
            "batch_instances",
            "from 0 to 2",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"batch_instances": -1}"#),
            400,
            "batch_instances",
            "whole number",
        ),
        (
            Method::POST,
            "/v1/clusters".into(),
            Some(r#"{"model_id": "sentence-transformers/all-MiniLM-L6-v2", "batch_instances": 9}"#),
            400,
            "batch_instances",
            "at most capacity.max",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"instance_type": "gpu-a100-40gb"}"#),
            400,
            "instance_type",
            "runs on 'cpu' here",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"replicas": 2}"#),
            400,
            "replicas",
            "unknown field",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"status": "running"}"#),
            400,
            "status",
            "read-only",
        ),
        (
            Method::PUT,
            path(CHATTER),
            Some(r#"{"instances": 3}"#),
            400,
            "instances",
            "read-only",
        ),
        (
            Method::PATCH,
            path(CHATTER),
            Some(r#"{"timeout": 5}"#),
            404,
            "model_id",
            "no cluster",
        ),
        (
            Method::DELETE,
            path(CHATTER),
            None,
            404,
            "model_id",
            "no cluster",
        ),
        (
            Method::GET,
            path(CHATTER),
            None,
            404,
            "model_id",
            "no cluster",
        ),
    ];
    for (method, p, body, status, param, message) in cases {
        let (got, answer) = h.call(DEV, method.clone(), p, *body).await;
        let case = format!("{method} {p} {body:?}: {answer}");
        assert_eq!(got, *status, "{case}");
        assert_eq!(answer["error"]["param"], *param, "{case}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(message),
            "{case}"
        );
    }
    // Bodies that are not a JSON object name no field.
    for body in ["[1, 2]", "{\"timeout\": ", "null"] {
        let (status, answer) = h.call(DEV, Method::PUT, &path(CHATTER), Some(body)).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error");
    }
    // None of it created anything.
    let (_, list) = h.call(DEV, Method::GET, "/v1/clusters", None).await;
    assert_eq!(list["data"], json!([]));

    // Checked against what exists: a PATCH whose min passes the current max.
    assert_eq!(
        h.call(
            DEV,
            Method::PUT,
            &path(CHATTER),
            Some(r#"{"capacity": {"max": 3}}"#)
        )
        .await
        .0,
        201
    );
    let (status, answer) = h
        .call(
            DEV,
            Method::PATCH,
            &path(CHATTER),
            Some(r#"{"capacity": {"min": 4}}"#),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "capacity.min");
    // Lowering max moves desired along rather than refusing.
    h.call(
        DEV,
        Method::PATCH,
        &path(CHATTER),
        Some(r#"{"capacity": {"desired": 3}}"#),
    )
    .await;
    let (status, answer) = h
        .call(
            DEV,
            Method::PATCH,
            &path(CHATTER),
            Some(r#"{"capacity": {"max": 1}}"#),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["capacity"],
        json!({"min": 0, "desired": 1, "max": 1})
    );
    // No key, no clusters.
    assert_eq!(
        h.call("Bearer wrong", Method::GET, "/v1/clusters", None)
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn accounts_see_only_their_own_clusters() {
    let db = TestDb::new().await.unwrap();
    keys::create_account(&db.db, "acme", None).await.unwrap();
    let (key, _) = keys::create_key(&db.db, "acme", None).await.unwrap();
    let acme = format!("Bearer {}", key.expose());
    let h = common::start(Options {
        auth: AuthArgs {
            database_url: Some(db.url.clone()),
            ..AuthArgs::default()
        },
        ..Options::default()
    })
    .await;

    let (status, mine) = h
        .call(
            &acme,
            Method::PUT,
            &path(CHATTER),
            Some(r#"{"capacity": {"max": 2}}"#),
        )
        .await;
    assert_eq!(status, 201, "{mine}");
    assert!(h.stored_spec("acme", CHATTER).await.is_some());

    // The dev account sees none of it and can change none of it.
    assert_eq!(h.call(DEV, Method::GET, &path(CHATTER), None).await.0, 404);
    assert_eq!(
        h.call(DEV, Method::GET, "/v1/clusters", None).await.1["data"],
        json!([])
    );
    assert_eq!(
        h.call(
            DEV,
            Method::PATCH,
            &path(CHATTER),
            Some(r#"{"timeout": 3}"#)
        )
        .await
        .0,
        404
    );
    assert_eq!(
        h.call(DEV, Method::DELETE, &path(CHATTER), None).await.0,
        404
    );
    // Its POST and PUT make its own cluster of that model.
    let (status, theirs) = h
        .call(
            DEV,
            Method::POST,
            "/v1/clusters",
            Some(r#"{"model_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "capacity": {"max": 3}}"#),
        )
        .await;
    assert_eq!(status, 201, "{theirs}");
    assert_eq!(h.stored_spec("dev", CHATTER).await.unwrap().capacity.max, 3);
    // The autoscaler's status for one account is not the other's.
    h.put_status("dev", CHATTER, &running(1)).await;

    let (status, got) = h.call(&acme, Method::GET, &path(CHATTER), None).await;
    assert_eq!((status, &got), (200, &mine));
    assert_eq!(got["status"], "creating");
    let (_, list) = h.call(&acme, Method::GET, "/v1/clusters", None).await;
    assert_eq!(list["data"], json!([mine]));
    let (_, list) = h.call(DEV, Method::GET, "/v1/clusters", None).await;
    assert_eq!(list["data"][0]["capacity"]["max"], 3);
    assert_eq!(list["data"][0]["status"], "running");
    assert_eq!(
        h.call(&acme, Method::DELETE, &path(CHATTER), None).await.0,
        200
    );
    assert_eq!(h.stored_spec("dev", CHATTER).await.unwrap().capacity.max, 3);
}

#[tokio::test]
async fn a_first_request_creates_the_cluster_with_the_defaults() {
    let h = start().await;
    assert!(h.stored_spec("dev", EMBEDDER).await.is_none());
    let call = tokio::spawn(h.embeddings("hello").send());
    // By the time the request is in the stream, its cluster exists.
    let (message, envelope, _) = h.take_open_request().await;
    assert_eq!(
        message.subject.as_str(),
        subjects::open_request_for(EMBEDDER, "dev").unwrap()
    );
    let spec = h.stored_spec("dev", EMBEDDER).await.unwrap();
    assert_eq!(spec.account, "dev");
    assert_eq!(spec.model_id, EMBEDDER);
    assert_eq!(
        (spec.capacity.min, spec.capacity.desired, spec.capacity.max),
        (0, 0, 4)
    );
    assert_eq!(spec.timeout_minutes, 10);
    assert_eq!(spec.target_concurrency, 1);
    assert_eq!(spec.instance_type, "cpu");
    h.answer_embedding(&envelope).await;
    message.ack().await.unwrap();
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
    let (status, got) = h.call(DEV, Method::GET, &path(EMBEDDER), None).await;
    assert_eq!(status, 200);
    assert_eq!(got["capacity"], json!({"min": 0, "desired": 0, "max": 4}));

    // A second request does not create it again, and a cluster made ahead is kept.
    let (status, _) = h
        .call(
            DEV,
            Method::PUT,
            &path(CHATTER),
            Some(r#"{"capacity": {"min": 1, "max": 2}}"#),
        )
        .await;
    assert_eq!(status, 201);
    let call = tokio::spawn(h.embeddings("again").send());
    let (message, envelope, _) = h.take_open_request().await;
    h.answer_embedding(&envelope).await;
    message.ack().await.unwrap();
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
    let call = tokio::spawn(
        h.http
            .post(format!("{}/v1/chat/completions", h.base))
            .bearer_auth(API_KEY)
            .header(switchyard_ingress::clusters::MAX_WAIT_HEADER, "1")
            .json(&json!({"model": CHATTER, "messages": [{"role": "user", "content": "hi"}]}))
            .send(),
    );
    let (message, _, _) = h.take_open_request().await;
    message.ack().await.unwrap();
    assert_eq!(call.await.unwrap().unwrap().status(), 503);
    assert_eq!(h.stored_spec("dev", CHATTER).await.unwrap().capacity.max, 2);
    assert_eq!(
        metric(&h.metrics().await, "ingress_clusters_auto_created_total"),
        1.0
    );
}

#[tokio::test]
async fn cold_start_answers_503_after_the_max_wait_and_the_request_never_starts_late() {
    let h = start().await;
    let mut cancels = h.client.subscribe("cancel.>").await.unwrap();

    // A bad header is refused before anything is queued or created.
    for bad in ["0", "301", "soon"] {
        let response = h
            .embeddings("x")
            .header(switchyard_ingress::clusters::MAX_WAIT_HEADER, bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["param"], "x-switchyard-max-wait", "{bad}");
    }
    assert!(h.stored_spec("dev", EMBEDDER).await.is_none());
    assert_eq!(h.pending().await, (0, 0));

    // No instance answers: 503 after the second the caller chose.
    let sent = Instant::now();
    let response = h
        .embeddings("nobody home")
        .header(switchyard_ingress::clusters::MAX_WAIT_HEADER, "1")
        .send()
        .await
        .unwrap();
    let waited = sent.elapsed();
    let answered_at = Utc::now();
    assert_eq!(response.status(), 503);
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(response.headers()["retry-after"], "5");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "service_unavailable");
    assert_eq!(body["error"]["code"], "cold_start");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("will not run"),
        "{body}"
    );
    assert_eq!(
        body["cluster"],
        json!({"model_id": EMBEDDER, "status": "creating", "instances": 0, "desired": 0, "load": 0})
    );

    // The request is still in JetStream, marked so that no worker starts it now.
    let (message, envelope, _) = h.take_open_request().await;
    let start_by = envelope.start_by.expect("a cold request carries start_by");
    // Published, then startable for the max wait less a quarter of it: it can no longer
    // start by the time the caller is told it will not run.
    let window = (start_by - envelope.created_at).to_std().unwrap();
    assert!(window >= Duration::from_millis(750), "{window:?}");
    assert!(
        start_by + chrono::Duration::milliseconds(250) <= answered_at,
        "{start_by} {answered_at}"
    );
    assert!(start_by < envelope.deadline);
    message.ack().await.unwrap();
    // And the ingress told any worker that had started it to stop.
    let cancel = tokio::time::timeout(Duration::from_secs(5), cancels.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        cancel.subject.as_str(),
        subjects::cancel(envelope.request_id).as_str()
    );

    // The unified route answers the same in its own shape.
    let response = h
        .http
        .post(format!("{}/models/v2/{EMBEDDER}", h.base))
        .bearer_auth(API_KEY)
        .header(switchyard_ingress::clusters::MAX_WAIT_HEADER, "1")
        .json(&json!({"text": "still nobody"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "unavailable");
    assert_eq!(body["error"]["code"], "cold_start");
    assert_eq!(body["error"]["retry_after_ms"], 5000);
    assert_eq!(body["cluster"]["model_id"], EMBEDDER);
    let (message, envelope, _) = h.take_open_request().await;
    assert!(envelope.start_by.is_some());
    message.ack().await.unwrap();

    let metrics = h.metrics().await;
    assert_eq!(
        metric(&metrics, r#"ingress_cold_starts_total{outcome="gave_up"}"#),
        2.0
    );
}

#[tokio::test]
async fn cold_start_succeeds_when_an_instance_answers_in_time() {
    // A deadline past the max wait, so the max wait is what bounds the start.
    let h = common::start(Options {
        timeout_secs: 60,
        ..Options::default()
    })
    .await;
    let call = tokio::spawn(
        h.embeddings("hello")
            .header(switchyard_ingress::clusters::MAX_WAIT_HEADER, "30")
            .send(),
    );
    let (message, envelope, _) = h.take_open_request().await;
    let window = (envelope.start_by.unwrap() - envelope.created_at)
        .to_std()
        .unwrap();
    assert!(
        window >= Duration::from_secs(29) && window <= Duration::from_millis(29_500),
        "{window:?}"
    );
    h.answer_embedding(&envelope).await;
    message.ack().await.unwrap();
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"][0]["embedding"], json!([0.5, -0.5]));
    assert_eq!(
        metric(
            &h.metrics().await,
            r#"ingress_cold_starts_total{outcome="started"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn running_instances_mean_no_start_by_and_only_the_deadline() {
    let h = common::start(Options {
        timeout_secs: 2,
        ..Options::default()
    })
    .await;
    h.put_status("dev", EMBEDDER, &running(1)).await;

    let call = tokio::spawn(
        h.embeddings("warm")
            .header(switchyard_ingress::clusters::MAX_WAIT_HEADER, "1")
            .send(),
    );
    let (message, envelope, _) = h.take_open_request().await;
    assert_eq!(envelope.start_by, None);
    h.answer_embedding(&envelope).await;
    message.ack().await.unwrap();
    assert_eq!(call.await.unwrap().unwrap().status(), 200);

    // Warm and unanswered: the max wait does not apply, the deadline does (504).
    let sent = Instant::now();
    let response = h
        .embeddings("warm, slow")
        .header(switchyard_ingress::clusters::MAX_WAIT_HEADER, "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(sent.elapsed() >= Duration::from_secs(2));
    let (message, envelope, _) = h.take_open_request().await;
    assert_eq!(envelope.start_by, None);
    message.ack().await.unwrap();

    // Cold, with a max wait past the deadline: the deadline bounds both.
    let response = h
        .http
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth(API_KEY)
        .header(switchyard_ingress::clusters::MAX_WAIT_HEADER, "300")
        .json(&json!({"model": CHATTER, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let (message, envelope, _) = h.take_open_request().await;
    let start_by = envelope.start_by.unwrap();
    assert!(start_by <= envelope.deadline);
    assert!(
        (envelope.deadline - start_by).to_std().unwrap() <= Duration::from_millis(1100),
        "{start_by} {}",
        envelope.deadline
    );
    message.ack().await.unwrap();
}

#[tokio::test]
async fn concurrent_patches_all_land() {
    let h = start().await;
    assert_eq!(h.call(DEV, Method::PUT, &path(CHATTER), None).await.0, 201);
    let patches = [
        r#"{"timeout": 7}"#,
        r#"{"target_concurrency": 3}"#,
        r#"{"capacity": {"max": 9}}"#,
        r#"{"capacity": {"min": 2}}"#,
        r#"{"capacity": {"desired": 3}}"#,
    ];
    let p = path(CHATTER);
    let answers = futures::future::join_all(
        patches
            .iter()
            .map(|body| h.call(DEV, Method::PATCH, &p, Some(body))),
    )
    .await;
    for ((status, answer), body) in answers.iter().zip(patches) {
        assert_eq!(*status, 200, "{body}: {answer}");
    }
    // Each PATCH read, changed and wrote with the revision it read: none was lost.
    let spec = h.stored_spec("dev", CHATTER).await.unwrap();
    assert_eq!(
        (
            spec.capacity.min,
            spec.capacity.desired,
            spec.capacity.max,
            spec.timeout_minutes,
            spec.target_concurrency
        ),
        (2, 3, 9, 7, 3),
        "{spec:?}"
    );
}
