//! The load generator against the in-process mock provider.

// Helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::Mock;
use reqwest::Url;
use switchyard_loadtest::loadgen::{self, LoadgenConfig, Provider, Summary};
use switchyard_loadtest::mock::openai::MockConfig;

fn config(mock: &Mock, rate: f64, duration: Duration) -> LoadgenConfig {
    LoadgenConfig {
        duration,
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(10),
        ..LoadgenConfig::new(Url::parse(&mock.url()).unwrap(), rate)
    }
}

async fn run(config: &LoadgenConfig) -> Summary {
    loadgen::run(config, std::future::pending()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_at_fixed_rate_measures_from_schedule() {
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    })
    .await;
    let summary = run(&config(&mock, 200.0, Duration::from_secs(1))).await;

    assert_eq!(summary.scheduled, 200);
    assert_eq!(summary.sent, 200);
    assert_eq!(summary.ok, 200, "{summary:#?}");
    assert_eq!(summary.errors_total, 0, "{:?}", summary.errors);
    assert!(summary.errors.is_empty());
    let p50 = summary.latency_p50_ms.unwrap();
    assert!(
        p50 >= 20.0,
        "p50 {p50} ms is below the mock's 20 ms latency"
    );
    assert!(summary.latency_p99_ms.unwrap() >= p50);
    assert!(summary.latency_max_ms.unwrap() >= summary.latency_p999_ms.unwrap());
    // Window = 1 s of schedule + the last reply's latency.
    assert!(
        (100.0..=205.0).contains(&summary.achieved_rps),
        "achieved {}",
        summary.achieved_rps
    );
    assert_eq!(summary.offered_rps, 200.0);
    // Open loop: about rate * latency requests overlap, far more than one connection.
    assert!(summary.max_in_flight_seen >= 2);
    assert!(summary.ttft_p50_ms.is_none());
    assert!(!summary.interrupted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_times_first_token_and_gaps() {
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        chunks: 4,
        chunk_delay: Duration::from_millis(10),
        ..MockConfig::default()
    })
    .await;
    let summary = run(&LoadgenConfig {
        stream: true,
        ..config(&mock, 50.0, Duration::from_secs(1))
    })
    .await;

    assert_eq!(summary.ok, 50, "{summary:#?}");
    assert_eq!(summary.errors_total, 0);
    let ttft = summary.ttft_p50_ms.unwrap();
    assert!(ttft >= 20.0, "ttft {ttft}");
    let gap = summary.gap_p50_ms.unwrap();
    assert!(gap >= 10.0, "gap {gap}");
    // 20 ms to the first chunk, then 3 gaps of 10 ms.
    let total = summary.latency_p50_ms.unwrap();
    assert!(total >= 50.0, "total {total}");
    assert!(total > ttft);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_counted_by_status() {
    let mock = Mock::start(MockConfig::default()).await;
    let summary = run(&LoadgenConfig {
        model: "mock-error-503".into(),
        ..config(&mock, 100.0, Duration::from_millis(500))
    })
    .await;
    assert_eq!(summary.sent, 50);
    assert_eq!(summary.ok, 0);
    assert_eq!(summary.errors.get("http_503"), Some(&50));
    assert_eq!(summary.errors_total, 50);
    assert!(summary.latency_p50_ms.is_none());
    assert_eq!(summary.achieved_rps, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_sent_and_warmup_is_not_recorded() {
    let mock = Mock::start(MockConfig {
        api_key: Some("sk-test-key".into()),
        ..MockConfig::default()
    })
    .await;
    let with_key = LoadgenConfig {
        headers: vec![loadgen::parse_header("Authorization: Bearer sk-test-key").unwrap()],
        warmup: Duration::from_millis(500),
        ..config(&mock, 100.0, Duration::from_millis(500))
    };
    let summary = run(&with_key).await;
    assert_eq!(summary.scheduled, 50, "warmup requests are not counted");
    assert_eq!(summary.ok, 50);
    assert_eq!(summary.errors_total, 0);

    let without = config(&mock, 100.0, Duration::from_millis(200));
    let summary = run(&without).await;
    assert_eq!(summary.errors.get("http_401"), Some(&20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_drops_instead_of_waiting() {
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(200),
        ..MockConfig::default()
    })
    .await;
    let summary = run(&LoadgenConfig {
        max_in_flight: 1,
        ..config(&mock, 100.0, Duration::from_millis(500))
    })
    .await;
    let dropped = summary.errors.get("dropped").copied().unwrap_or(0);
    assert_eq!(summary.scheduled, 50);
    assert_eq!(summary.sent + dropped, 50);
    assert!(
        summary.sent <= 4,
        "one at a time, 200 ms each: {}",
        summary.sent
    );
    assert!(dropped >= 46, "dropped {dropped}");
    assert_eq!(summary.ok, summary.sent);
    assert_eq!(summary.max_in_flight_seen, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_streams_are_errors() {
    let mock = Mock::start(MockConfig::default()).await;
    let cut = run(&LoadgenConfig {
        stream: true,
        model: "mock-truncated".into(),
        ..config(&mock, 50.0, Duration::from_millis(200))
    })
    .await;
    assert_eq!(cut.ok, 0);
    assert_eq!(cut.errors.get("body"), Some(&10), "{:?}", cut.errors);

    let clean = run(&LoadgenConfig {
        stream: true,
        model: "mock-truncated-clean".into(),
        ..config(&mock, 50.0, Duration::from_millis(200))
    })
    .await;
    assert_eq!(clean.ok, 0);
    assert_eq!(clean.errors.get("incomplete_stream"), Some(&10));
}

/// Every grammar against the one mock: the endpoint, the key header and the model to
/// send for `provider`.
fn provider_config(
    mock: &Mock,
    provider: Provider,
    key: &str,
    rate: f64,
    duration: Duration,
) -> LoadgenConfig {
    let (url, header) = match provider {
        Provider::OpenAi => (mock.url(), format!("Authorization: Bearer {key}")),
        Provider::Anthropic => (
            format!("http://{}/v1/messages", mock.addr),
            format!("x-api-key: {key}"),
        ),
        // The API root: loadgen adds /v1beta/models/{model}:streamGenerateContent?alt=sse.
        Provider::Gemini => (
            format!("http://{}", mock.addr),
            format!("x-goog-api-key: {key}"),
        ),
    };
    LoadgenConfig {
        url: Url::parse(&url).unwrap(),
        provider,
        headers: vec![loadgen::parse_header(&header).unwrap()],
        model: "mock-model".into(),
        stream: true,
        duration,
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(10),
        ..LoadgenConfig::new(Url::parse(&url).unwrap(), rate)
    }
}

const PROVIDERS: [Provider; 3] = [Provider::OpenAi, Provider::Anthropic, Provider::Gemini];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grammar_streams_with_first_token_and_gaps() {
    let mock = Mock::start(MockConfig {
        latency: Duration::from_millis(20),
        chunks: 4,
        chunk_delay: Duration::from_millis(10),
        api_key: Some("sk-grammar".into()),
        ..MockConfig::default()
    })
    .await;
    for provider in PROVIDERS {
        let config = provider_config(
            &mock,
            provider,
            "sk-grammar",
            50.0,
            Duration::from_millis(500),
        );
        let summary = run(&config).await;
        assert_eq!(summary.provider, provider);
        assert_eq!(summary.ok, 25, "{provider}: {summary:#?}");
        assert_eq!(summary.errors_total, 0, "{provider}: {:?}", summary.errors);
        let ttft = summary.ttft_p50_ms.unwrap();
        assert!(ttft >= 20.0, "{provider}: ttft {ttft}");
        // 20 ms to the first token, then 3 gaps of 10 ms.
        let gap = summary.gap_p50_ms.unwrap();
        assert!(gap >= 10.0, "{provider}: gap {gap}");
        assert!(summary.gap_p99_ms.unwrap() >= gap);
        let total = summary.latency_p50_ms.unwrap();
        assert!(total >= 50.0, "{provider}: total {total}");
        assert!(total > ttft, "{provider}: total {total} ttft {ttft}");
        if provider == Provider::Gemini {
            assert!(
                summary
                    .url
                    .ends_with("/v1beta/models/mock-model:streamGenerateContent?alt=sse"),
                "{}",
                summary.url
            );
        }

        // Non-streaming works in every grammar too (and needs no stream timings).
        let plain = run(&LoadgenConfig {
            stream: false,
            duration: Duration::from_millis(200),
            ..config
        })
        .await;
        assert_eq!(plain.ok, 10, "{provider}: {plain:#?}");
        assert!(plain.ttft_p50_ms.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_grammar_sends_its_own_key_header() {
    let mock = Mock::start(MockConfig {
        api_key: Some("sk-right".into()),
        ..MockConfig::default()
    })
    .await;
    // A wrong key: Anthropic answers 401, Gemini 400 (API_KEY_INVALID), as they do.
    for (provider, status) in [
        (Provider::OpenAi, "http_401"),
        (Provider::Anthropic, "http_401"),
        (Provider::Gemini, "http_400"),
    ] {
        let summary = run(&provider_config(
            &mock,
            provider,
            "sk-wrong",
            50.0,
            Duration::from_millis(100),
        ))
        .await;
        assert_eq!(
            summary.errors.get(status),
            Some(&5),
            "{provider}: {:?}",
            summary.errors
        );
    }
    // An explicit anthropic-version wins over the default (the mock accepts any).
    let mut config = provider_config(
        &mock,
        Provider::Anthropic,
        "sk-right",
        50.0,
        Duration::from_millis(100),
    );
    config
        .headers
        .push(loadgen::parse_header("anthropic-version: 2023-01-01").unwrap());
    assert_eq!(run(&config).await.ok, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_streams_are_errors_in_every_grammar() {
    let mock = Mock::start(MockConfig {
        api_key: Some("sk-cut".into()),
        ..MockConfig::default()
    })
    .await;
    for provider in PROVIDERS {
        let base = provider_config(&mock, provider, "sk-cut", 50.0, Duration::from_millis(200));
        // The connection is cut after two chunks.
        let cut = run(&LoadgenConfig {
            model: "mock-truncated".into(),
            ..base.clone()
        })
        .await;
        assert_eq!(cut.ok, 0, "{provider}: {cut:#?}");
        assert_eq!(
            cut.errors.get("body"),
            Some(&10),
            "{provider}: {:?}",
            cut.errors
        );

        // The body ends cleanly after two chunks, without the grammar's terminator.
        let clean = run(&LoadgenConfig {
            model: "mock-truncated-clean".into(),
            ..base
        })
        .await;
        assert_eq!(clean.ok, 0, "{provider}: {clean:#?}");
        assert_eq!(
            clean.errors.get("incomplete_stream"),
            Some(&10),
            "{provider}: {:?}",
            clean.errors
        );
    }
    // An Anthropic `error` event mid-stream.
    let overloaded = run(&LoadgenConfig {
        model: "mock-stream-error".into(),
        ..provider_config(
            &mock,
            Provider::Anthropic,
            "sk-cut",
            50.0,
            Duration::from_millis(200),
        )
    })
    .await;
    assert_eq!(overloaded.ok, 0);
    assert_eq!(
        overloaded.errors.get("stream_error"),
        Some(&10),
        "{:?}",
        overloaded.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_run_early() {
    let mock = Mock::start(MockConfig::default()).await;
    let config = config(&mock, 100.0, Duration::from_secs(60));
    let summary = loadgen::run(&config, tokio::time::sleep(Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(summary.interrupted);
    assert!(summary.scheduled < 100, "scheduled {}", summary.scheduled);
    assert_eq!(summary.sent, summary.ok + summary.errors_total);
}

#[tokio::test]
async fn refuses_targets_off_this_machine() {
    for url in [
        "http://example.com/v1/chat/completions",
        "http://192.168.1.10:8080/",
    ] {
        let config = LoadgenConfig::new(Url::parse(url).unwrap(), 10.0);
        let err = loadgen::run(&config, std::future::pending())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
