//! The Kubernetes backend against a stand-in API server that checks each request as
//! the real one would (path, verb, content type, bearer token, body).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{patch, post};
use switchyard_autoscaler::Pool;
use switchyard_autoscaler::backend::kubernetes::{KubernetesBackend, deployment_name};

/// The backend against the stand-in API server at `addr`, namespace `switchyard`.
fn backend_at(addr: std::net::SocketAddr, image: &str) -> KubernetesBackend {
    KubernetesBackend::new(
        format!("http://{addr}"),
        Some("sa-token".into()),
        None,
        "switchyard".into(),
        image.into(),
    )
    .unwrap()
}

/// A wedged API server: takes connections and never answers.
async fn never_answering_api() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

#[derive(Default)]
struct Api {
    deployments: Mutex<Vec<(String, serde_json::Value)>>,
    scales: Mutex<Vec<(String, u64)>>,
}

async fn scale(
    State(api): State<Arc<Api>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    assert_eq!(ns, "switchyard");
    assert_eq!(headers["authorization"], "Bearer sa-token");
    assert_eq!(headers["content-type"], "application/merge-patch+json");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let replicas = body["spec"]["replicas"].as_u64().unwrap();
    if !api
        .deployments
        .lock()
        .unwrap()
        .iter()
        .any(|(n, _)| *n == name)
    {
        return StatusCode::NOT_FOUND;
    }
    api.scales.lock().unwrap().push((name, replicas));
    StatusCode::OK
}

async fn create(
    State(api): State<Arc<Api>>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    assert_eq!(ns, "switchyard");
    assert_eq!(headers["authorization"], "Bearer sa-token");
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let name = manifest["metadata"]["name"].as_str().unwrap().to_string();
    api.deployments.lock().unwrap().push((name, manifest));
    StatusCode::CREATED
}

#[tokio::test]
async fn scaling_creates_the_deployment_once_then_patches_its_replicas() {
    let api = Arc::new(Api::default());
    let app = axum::Router::new()
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale",
            patch(scale),
        )
        .route("/apis/apps/v1/namespaces/{ns}/deployments", post(create))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut backend = backend_at(addr, "registry.example/switchyard-inference:1");
    let pool = Pool::Cluster {
        account: "acme".into(),
        model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
    };
    backend.scale(&pool, 2).await.unwrap();
    assert_eq!(backend.count(&pool), 2);
    backend.scale(&pool, 0).await.unwrap();
    assert_eq!(backend.count(&pool), 0);

    let name = deployment_name(&pool);
    assert!(
        name.len() <= 63 && name.starts_with("sy-smollm2-135m-instruct-"),
        "{name}"
    );
    assert!(
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    );
    let deployments = api.deployments.lock().unwrap().clone();
    assert_eq!(deployments.len(), 1, "created once");
    let (created, manifest) = &deployments[0];
    assert_eq!(*created, name);
    assert_eq!(manifest["spec"]["replicas"], 2);
    let container = &manifest["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example/switchyard-inference:1"
    );
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], 1);
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert!(env.contains(&(
        "INFERENCE_MODEL".into(),
        "HuggingFaceTB/SmolLM2-135M-Instruct".into()
    )));
    assert!(env.contains(&("INFERENCE_ACCOUNT".into(), "acme".into())));
    // Scale to 2 came first as a 404 (no Deployment yet), then the later PATCH went through.
    assert_eq!(*api.scales.lock().unwrap(), vec![(name, 0)]);
    // A different account's cluster of the same model is a different Deployment.
    let other = Pool::Cluster {
        account: "other".into(),
        model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
    };
    assert_ne!(deployment_name(&other), deployment_name(&pool));
}

#[tokio::test]
async fn a_restarted_autoscaler_adopts_the_deployments_it_made() {
    async fn list(headers: HeaderMap, uri: axum::http::Uri) -> axum::Json<serde_json::Value> {
        assert_eq!(headers["authorization"], "Bearer sa-token");
        assert_eq!(
            uri.query(),
            Some(
                "labelSelector=app.kubernetes.io%2Fpart-of%3Dswitchyard%2Capp.kubernetes.io%2Fcomponent%3Dinference"
            )
        );
        axum::Json(serde_json::json!({"kind": "DeploymentList", "items": [
            {"metadata": {"name": "sy-a", "annotations": {
                "switchyard.dev/model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "switchyard.dev/account": "acme"}}, "spec": {"replicas": 3}},
            {"metadata": {"name": "sy-b", "annotations": {
                "switchyard.dev/model": "sentence-transformers/all-MiniLM-L6-v2",
                "switchyard.dev/account": "globex"}}, "spec": {"replicas": 0}},
            // Not one of ours (no annotations): left alone.
            {"metadata": {"name": "other"}, "spec": {"replicas": 5}}
        ]}))
    }
    let app = axum::Router::new().route(
        "/apis/apps/v1/namespaces/switchyard/deployments",
        axum::routing::get(list),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut backend = backend_at(addr, "img");
    assert_eq!(backend.adopt().await.unwrap(), 2);
    let acme = Pool::Cluster {
        account: "acme".into(),
        model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
    };
    assert_eq!(backend.count(&acme), 3);
    // Pools with replicas are what the reconciler looks at even without a spec, so a
    // deleted cluster's Deployment gets scaled to zero.
    assert_eq!(backend.pools(), vec![acme]);
}

#[tokio::test]
async fn each_refresh_reads_replicas_and_ready_pods_back_and_notices_a_deleted_deployment() {
    type Listed = Arc<Mutex<serde_json::Value>>;
    async fn list(
        State(listed): State<Listed>,
        headers: HeaderMap,
    ) -> axum::Json<serde_json::Value> {
        assert_eq!(headers["authorization"], "Bearer sa-token");
        axum::Json(listed.lock().unwrap().clone())
    }
    let deployment = |replicas: u64, ready: Option<u64>| {
        let mut d = serde_json::json!({
            "metadata": {"name": "sy-a", "annotations": {
                "switchyard.dev/model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "switchyard.dev/account": "acme"}},
            "spec": {"replicas": replicas},
            "status": {"replicas": replicas}
        });
        // The API server leaves readyReplicas out while it is zero.
        if let Some(r) = ready {
            d["status"]["readyReplicas"] = r.into();
        }
        d
    };
    let listed: Listed = Arc::new(Mutex::new(
        serde_json::json!({"kind": "DeploymentList", "items": [deployment(3, None)]}),
    ));
    let app = axum::Router::new()
        .route(
            "/apis/apps/v1/namespaces/switchyard/deployments",
            axum::routing::get(list),
        )
        .with_state(listed.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut backend = switchyard_autoscaler::Backend::Kubernetes(backend_at(addr, "img"));
    let acme = Pool::Cluster {
        account: "acme".into(),
        model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
    };
    backend.refresh().await.unwrap();
    assert_eq!(backend.count(&acme), 3);
    assert_eq!(backend.ready(&acme), Some(0), "no pod ready yet");

    *listed.lock().unwrap() =
        serde_json::json!({"kind": "DeploymentList", "items": [deployment(3, Some(2))]});
    backend.refresh().await.unwrap();
    assert_eq!(backend.ready(&acme), Some(2));

    // Someone scaled it by hand: the API server's count is the one scaled from.
    *listed.lock().unwrap() =
        serde_json::json!({"kind": "DeploymentList", "items": [deployment(5, Some(2))]});
    backend.refresh().await.unwrap();
    assert_eq!(backend.count(&acme), 5);

    // Deleted behind the autoscaler's back: nothing runs (the next scale-up makes it again).
    *listed.lock().unwrap() = serde_json::json!({"kind": "DeploymentList", "items": []});
    backend.refresh().await.unwrap();
    assert_eq!(backend.count(&acme), 0);
    assert_eq!(backend.ready(&acme), Some(0));
    assert!(backend.pools().is_empty());

    // The process backend has no view of its own: readiness comes from heartbeats.
    let process = switchyard_autoscaler::Backend::Process(
        switchyard_autoscaler::backend::process::ProcessBackend::new(
            "inference".into(),
            "translator".into(),
            None,
            Vec::new(),
        ),
    );
    assert_eq!(process.ready(&acme), None);
}

#[tokio::test]
async fn an_api_server_that_never_answers_fails_the_call_instead_of_holding_the_tick() {
    let addr = never_answering_api().await;
    let mut backend = backend_at(addr, "registry.example/switchyard-inference:1")
        .with_request_timeout(std::time::Duration::from_millis(200));
    let pool = Pool::Cluster {
        account: "acme".into(),
        model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
    };
    // Bounded by the test too, so a regression fails here rather than hanging.
    let within = std::time::Duration::from_secs(10);
    let scaled = tokio::time::timeout(within, backend.scale(&pool, 1))
        .await
        .expect("the call ended");
    assert_eq!(
        scaled.unwrap_err(),
        "Kubernetes API: no answer within 200ms"
    );
    assert_eq!(backend.count(&pool), 0, "nothing recorded as scaled");
    let refreshed = tokio::time::timeout(within, backend.refresh())
        .await
        .expect("the call ended");
    assert_eq!(
        refreshed.unwrap_err(),
        "Kubernetes API: no answer within 200ms"
    );
}

#[tokio::test]
async fn healthz_turns_unavailable_when_the_reconciler_stops_finishing_ticks() {
    use clap::Parser;
    // An API server that never answers, and a client that would wait an hour for it:
    // the first tick hangs in its first call.
    let backend = backend_at(never_answering_api().await, "img")
        .with_request_timeout(std::time::Duration::from_secs(3600));
    let nats = switchyard_nats::testing::NatsServer::start().unwrap();
    nats.connect_and_apply().await.unwrap();
    let config = switchyard_autoscaler::Config::parse_from([
        "switchyard-autoscaler",
        "--nats-url",
        nats.url(),
        "--tick-ms",
        "100",
        "--stall-after-ms",
        "500",
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health = format!("http://{}/healthz", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(switchyard_autoscaler::serve(
        listener,
        config,
        switchyard_autoscaler::Backend::Kubernetes(backend),
        shutdown.clone(),
    ));
    // Bounded: without the watchdog /healthz would say ok for as long as we asked.
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let (status, body) = loop {
        if let Ok(r) = http.get(&health).send().await {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            if status != 200 {
                break (status, body);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz still ok with the reconciler stuck"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503);
    assert_eq!(body, r#"{"status":"unavailable"}"#);
    shutdown.cancel();
}

#[test]
fn progress_is_stalled_only_past_its_limit() {
    use std::time::{Duration, Instant};
    let progress = switchyard_autoscaler::Progress::default();
    let limit = Duration::from_secs(60);
    assert!(!progress.stalled(limit));
    let later = Instant::now() + Duration::from_secs(61);
    assert!(progress.stalled_at(later, limit));
    assert!(!progress.stalled_at(later - Duration::from_secs(2), limit));
}
