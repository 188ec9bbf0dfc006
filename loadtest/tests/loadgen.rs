//! The load generator against the in-process mock provider.

// Helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::Mock;
use reqwest::Url;
use switchyard_loadtest::loadgen::{self, LoadgenConfig, Summary};
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
