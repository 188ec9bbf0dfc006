//! Process set-up every Switchyard binary shares, so it is written once:
//! [`init_tracing`] (the `RUST_LOG` filter, JSON lines when stderr is not a terminal),
//! [`shutdown_signal`] / [`shutdown_on_signal`] (SIGINT/SIGTERM),
//! [`metrics_text`] (the Prometheus exposition of a registry), and [`run_service`]
//! (every service's `main`: its runtime, its signal, its exit code).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber with the `info` default filter; see [`init_tracing_with`].
pub fn init_tracing() {
    init_tracing_with("info");
}

/// Installs the global subscriber: `RUST_LOG`, else `default_filter`; logs to stderr
/// (stdout stays free for results), JSON lines when stderr is not a terminal, no colour
/// codes then. Safe to call more than once (later calls do nothing).
pub fn init_tracing_with(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}

/// Completes on the first SIGINT (ctrl-c) or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only ctrl-c stops this process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutdown signal received");
}

/// A token cancelled by [`shutdown_signal`]; `run(config, shutdown)` functions take it.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    // The watcher lives as long as the process; nothing needs to wait for it.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    token
}

/// The content type of [`metrics_text`].
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The OpenMetrics text exposition of `registry` (what `GET /metrics` answers).
pub fn metrics_text(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// The value of the sample whose line starts with `sample` (a metric name with its
/// labels, e.g. `translator_expired_total` or `x_total{provider="openai"}`) in an
/// exposition text such as [`metrics_text`]'s; None when there is no such line.
pub fn sample_value(exposition: &str, sample: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(sample)?;
        // The name must end here: `x_total` is not `x_total_seconds`.
        rest.starts_with(' ').then(|| rest.trim().parse().ok())?
    })
}

/// Test support for the services' own tests.
#[cfg(feature = "testing")]
pub mod testing {
    /// The value of `sample` (see [`super::sample_value`]) in what `metrics_url`
    /// (a service's `/metrics`) answers now; None when it has no such sample.
    pub async fn scrape(metrics_url: &str, sample: &str) -> Result<Option<f64>, reqwest::Error> {
        let text = reqwest::get(metrics_url).await?.text().await?;
        Ok(super::sample_value(&text, sample))
    }
}

/// The `/healthz`, `/livez` and `/metrics` endpoints every worker serves: `healthy`
/// says whether it can do its job right now (200 `{"status":"ok"}`, else 503
/// `{"status":"unavailable"}`: a readiness probe), `/livez` answers 200 whenever the
/// process's runtime answers at all — also while it loads or drains (a liveness
/// probe: a hung process stops answering it), `metrics` renders the exposition text.
pub fn health_router(
    healthy: impl Fn() -> bool + Clone + Send + Sync + 'static,
    metrics: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let ok = healthy();
                async move {
                    if ok {
                        (
                            StatusCode::OK,
                            axum::Json(serde_json::json!({"status": "ok"})),
                        )
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(serde_json::json!({"status": "unavailable"})),
                        )
                    }
                }
            }),
        )
        .route(
            "/livez",
            get(|| async { axum::Json(serde_json::json!({"status": "alive"})) }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = metrics();
                async move { ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text) }
            }),
        )
}

/// Serves `router` on `listener` until `shutdown`, logging (not returning) a failure:
/// the health endpoint going away must not take the worker down with it.
pub async fn serve_health(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: tokio_util::sync::CancellationToken,
) {
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "health endpoint stopped");
    }
}

/// Writes `error: <message: causes>` to stderr, for command-line tools whose user reads
/// the terminal (no backtrace, whatever `RUST_BACKTRACE` says).
pub fn report_error(err: &anyhow::Error) {
    tracing::debug!(error = ?err, "exiting with an error");
    let _ = writeln!(std::io::stderr().lock(), "error: {err:#}");
}

/// The exit code of a service's `main`: the error is logged once, as an event a log
/// pipeline can read, and the process exits non-zero.
pub fn service_exit<E: std::fmt::Display>(service: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{service} failed");
            ExitCode::FAILURE
        }
    }
}

/// The environment variable that sets a service's tokio worker threads (see
/// [`runtime`]); unset or 0: one per CPU the process may run on.
pub const RUNTIME_THREADS_ENV: &str = "SWITCHYARD_RUNTIME_THREADS";

/// A tokio runtime with `threads` workers: 1 is a current-thread runtime (every task on
/// the one thread: no wake-ups handed between threads), 0 is tokio's default (one
/// worker per core the process may use).
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build()
}

/// Runs a service's `run(config, shutdown)` to its end and gives `main`'s exit code.
///
/// The runtime has [`RUNTIME_THREADS_ENV`] workers. The service's future is spawned
/// onto the runtime rather than driven by `block_on`: on a multi-thread runtime a
/// `block_on` future lives on the main thread, outside the worker pool, and every
/// message it hands to a spawned task (a consumer loop spawning its handlers) would be
/// one more wake-up between threads.
pub fn run_service<F, Fut, E>(service: &str, run: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let threads = match std::env::var(RUNTIME_THREADS_ENV) {
        Err(_) => 0,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                tracing::error!(value = %v, "{RUNTIME_THREADS_ENV} must be a whole number of threads");
                return ExitCode::FAILURE;
            }
        },
    };
    let runtime = match runtime(threads) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "{service}: cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_on_signal();
        // The service's whole life; nothing else waits on it.
        #[allow(clippy::disallowed_methods)]
        let task = tokio::spawn(run(shutdown));
        task.await
    });
    match result {
        Ok(result) => service_exit(service, result),
        Err(e) => {
            tracing::error!(error = %e, "{service} panicked");
            ExitCode::FAILURE
        }
    }
}

/// The health and metrics address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: std::net::SocketAddr,
    pub source: std::io::Error,
}

/// Binds a service's health and metrics listener (every service's `run`).
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_sample_is_found_by_its_whole_name_and_labels() {
        let text = "# TYPE x counter\nx_total 3\nx_total_seconds 9.5\nx_total{p=\"a\"} 2\n# EOF\n";
        assert_eq!(super::sample_value(text, "x_total"), Some(3.0));
        assert_eq!(super::sample_value(text, "x_total_seconds"), Some(9.5));
        assert_eq!(super::sample_value(text, r#"x_total{p="a"}"#), Some(2.0));
        assert_eq!(super::sample_value(text, r#"x_total{p="b"}"#), None);
        assert_eq!(super::sample_value(text, "y_total"), None);
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    #[allow(clippy::disallowed_methods)]
    async fn livez_answers_while_healthz_says_unavailable() {
        let router = super::health_router(|| false, || "m 1\n".to_string());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(super::serve_health(listener, router, shutdown.clone()));
        let live = get(addr, "/livez").await;
        assert!(live.starts_with("HTTP/1.1 200"), "{live}");
        assert!(live.ends_with(r#"{"status":"alive"}"#), "{live}");
        let health = get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        assert!(health.ends_with(r#"{"status":"unavailable"}"#), "{health}");
        shutdown.cancel();
        server.await.unwrap();
    }
}
