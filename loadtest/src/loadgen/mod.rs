//! Open-loop load generator for a chat endpoint in OpenAI's, Anthropic's or Gemini's
//! wire format ([`Provider`]; OpenAI is also what Switchyard's ingress speaks).
//!
//! Request `i` is scheduled at `t0 + i / rate` and leaves at that time whether or not
//! earlier requests have finished, so a slow server meets the same offered load instead
//! of slowing the client down. Latency runs from the *scheduled* time, not the actual
//! send, so time spent queued behind a stall is counted (no coordinated omission).
//! Results go into HdrHistograms at microsecond resolution.
//!
//! Requests scheduled during the warmup are sent but not recorded. `max_in_flight`
//! bounds memory and sockets: a request due while that many are outstanding is not sent
//! and counts as a `dropped` error. Only loopback targets are accepted.
//!
//! Streaming, each grammar is timed the same way: time to first token = from the
//! scheduled send to the first event carrying output, gaps = between consecutive such
//! events, latency = to the end of the body. A stream is ok only if its grammar's
//! terminator arrived (`[DONE]`, `message_stop`, a `finishReason`) with no error event.

mod provider;
mod sse;
mod summary;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Url};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use provider::{ANTHROPIC_VERSION, Provider};
pub use summary::Summary;
use summary::{ErrorKind, RunInfo, Stats, StreamTiming};

/// Longest run accepted (warmup included).
const MAX_RUN: Duration = Duration::from_secs(3600);
/// Highest rate accepted, requests per second.
const MAX_RATE: f64 = 1_000_000.0;

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadgenConfig {
    /// The endpoint; must be loopback. For OpenAI and Anthropic the full URL of the
    /// chat completions / messages endpoint; for Gemini either that or the API root
    /// (see [`Provider`]).
    pub url: Url,
    /// Which wire format to speak.
    pub provider: Provider,
    /// Offered rate, requests per second.
    pub rate: f64,
    /// Length of the measured window.
    pub duration: Duration,
    /// Load before the measured window, not recorded.
    pub warmup: Duration,
    /// Most requests outstanding at once; more are dropped.
    pub max_in_flight: usize,
    /// Extra request headers (values are marked sensitive, so `Debug` hides them).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub model: String,
    pub prompt: String,
    /// Ask for an SSE stream and time the first token and chunk gaps.
    pub stream: bool,
    /// Per-request limit, from sending to the end of the body.
    pub timeout: Duration,
}

impl LoadgenConfig {
    /// A config with the CLI's defaults for everything but the target and rate.
    pub fn new(url: Url, rate: f64) -> Self {
        LoadgenConfig {
            url,
            provider: Provider::OpenAi,
            rate,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            max_in_flight: 10_000,
            headers: Vec::new(),
            model: "openai/gpt-4o-mini".into(),
            prompt: "hello".into(),
            stream: false,
            timeout: Duration::from_secs(30),
        }
    }

    /// Checks bounds and that the target is loopback.
    pub fn validate(&self) -> anyhow::Result<()> {
        check_loopback(&self.url)?;
        ensure!(
            self.rate.is_finite() && self.rate > 0.0 && self.rate <= MAX_RATE,
            "--rate must be > 0 and <= {MAX_RATE}"
        );
        ensure!(!self.duration.is_zero(), "--duration-secs must be > 0");
        ensure!(
            self.duration + self.warmup <= MAX_RUN,
            "warmup + duration must be at most {} s",
            MAX_RUN.as_secs()
        );
        ensure!(self.max_in_flight > 0, "--max-in-flight must be > 0");
        ensure!(!self.timeout.is_zero(), "--timeout-secs must be > 0");
        Ok(())
    }
}

/// Refuses any target that is not this machine: the host must be in 127.0.0.0/8, `::1`
/// or `localhost`.
pub fn check_loopback(url: &Url) -> anyhow::Result<()> {
    ensure!(
        matches!(url.scheme(), "http" | "https"),
        "refusing {url}: only http and https URLs"
    );
    let loopback = match host_ip(url) {
        Some(ip) => ip.is_loopback(),
        None => url
            .host_str()
            .map(|name| name.strip_suffix('.').unwrap_or(name))
            .is_some_and(|name| name.eq_ignore_ascii_case("localhost")),
    };
    if !loopback {
        bail!(
            "refusing {url}: the load generator only targets loopback \
             (127.0.0.0/8, ::1 or localhost)"
        );
    }
    Ok(())
}

/// The URL's host when it is an IP address (`host_str` keeps IPv6 in brackets).
fn host_ip(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

/// Parses a `--header "Name: value"` argument. Errors name the header, never the value.
pub fn parse_header(arg: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) = arg
        .split_once(':')
        .context("a header must look like \"Name: value\"")?;
    let name = name.trim();
    let name = HeaderName::from_bytes(name.as_bytes())
        .with_context(|| format!("invalid header name {name:?}"))?;
    let mut value = HeaderValue::from_str(value.trim())
        .with_context(|| format!("invalid value for header {name}"))?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// The one shared HTTP client: a pool as large as the allowed concurrency, Nagle off,
/// no proxies or redirects (either could take traffic off this machine), and
/// `localhost` pinned to loopback addresses rather than resolved.
fn client(config: &LoadgenConfig) -> anyhow::Result<Client> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in &config.headers {
        headers.append(name.clone(), value.clone());
    }
    // The grammar's own headers, unless the caller gave them.
    for (name, value) in config.provider.required_headers() {
        if !headers.contains_key(&name) {
            headers.insert(name, value);
        }
    }
    let mut builder = Client::builder()
        .default_headers(headers)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .pool_max_idle_per_host(config.max_in_flight)
        .connect_timeout(config.timeout);
    if let (None, Some(name)) = (host_ip(&config.url), config.url.host_str()) {
        let port = config.url.port_or_known_default().unwrap_or(80);
        builder = builder.resolve_to_addrs(
            name,
            &[
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
            ],
        );
    }
    Ok(builder.build()?)
}

fn request_body(config: &LoadgenConfig) -> anyhow::Result<Bytes> {
    config
        .provider
        .body(&config.model, &config.prompt, config.stream)
}

/// How many requests are due in `[0, t)`: indices `i` with `i / rate < t`. The small
/// slack keeps float noise (0.7 * 100 = 70.00000000000001) from adding one.
fn due_before(t: Duration, rate: f64) -> u64 {
    (t.as_secs_f64() * rate - 1e-6).ceil().max(0.0) as u64
}

/// What a request task reports back.
struct Outcome {
    scheduled: Instant,
    measured: bool,
    started: Instant,
    finished: Instant,
    result: Result<StreamTiming, ErrorKind>,
}

/// Runs the load until the schedule ends or `shutdown` completes (then the requests
/// still out are abandoned and counted as `aborted`).
pub async fn run(
    config: &LoadgenConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    config.validate()?;
    let url = config
        .provider
        .endpoint(&config.url, &config.model, config.stream)?;
    check_loopback(&url)?;
    let client = client(config)?;
    let body = request_body(config)?;
    let rate = config.rate;
    // Request indices: [0, first_measured) warm up, [first_measured, total) are measured.
    let first_measured = due_before(config.warmup, rate);
    let total = due_before(config.warmup + config.duration, rate);

    let mut stats = Stats::new()?;
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut interrupted = false;
    let mut last_completion: Option<Instant> = None;
    let mut scheduled_measured = 0;
    let t0 = Instant::now();
    let measure_start = t0 + Duration::from_secs_f64(first_measured as f64 / rate);
    let grammar = config.stream.then_some(config.provider);
    tracing::info!(%url, provider = %config.provider, rate, total, stream = config.stream, "load start");

    let mut record = |stats: &mut Stats, outcome: Outcome| {
        if !outcome.measured {
            return;
        }
        last_completion =
            Some(last_completion.map_or(outcome.finished, |t| t.max(outcome.finished)));
        stats.send_lag(outcome.started.saturating_duration_since(outcome.scheduled));
        match outcome.result {
            Ok(timing) => stats.ok(outcome.finished - outcome.scheduled, &timing),
            Err(kind) => stats.error(kind),
        }
    };

    // Detached: it ends with the schedule, or at its next send once `dues` is dropped.
    let (mut dues, _pacer) = pacer(t0.into_std(), rate, total)?;
    loop {
        let (i, at) = tokio::select! {
            biased;
            () = &mut shutdown => {
                interrupted = true;
                break;
            }
            due = dues.recv() => match due {
                Some(due) => due,
                None => break,
            },
        };
        let scheduled = Instant::from_std(at);
        while let Some(done) = tasks.try_join_next() {
            if let Ok(outcome) = done {
                record(&mut stats, outcome);
            }
        }
        let measured = i >= first_measured;
        scheduled_measured += u64::from(measured);
        if tasks.len() >= config.max_in_flight {
            if measured {
                stats.error(ErrorKind::Dropped);
            }
            continue;
        }
        stats.sent += u64::from(measured);
        stats.max_in_flight_seen = stats.max_in_flight_seen.max(tasks.len() as u64 + 1);
        let request = client.post(url.clone()).body(body.clone());
        let timeout = config.timeout;
        tasks.spawn(async move {
            let started = Instant::now();
            let result =
                match tokio::time::timeout(timeout, exchange(request, grammar, scheduled)).await {
                    Ok(result) => result,
                    Err(_) => Err(ErrorKind::Timeout),
                };
            Outcome {
                scheduled,
                measured,
                started,
                finished: Instant::now(),
                result,
            }
        });
    }

    if interrupted {
        tasks.abort_all();
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(outcome) = done {
            record(&mut stats, outcome);
        }
    }
    let measured = match last_completion {
        Some(end) => end.saturating_duration_since(measure_start),
        None if interrupted => Instant::now().saturating_duration_since(measure_start),
        None => config.duration,
    };
    tracing::info!(ok = stats.ok, sent = stats.sent, interrupted, "load done");
    Ok(stats.into_summary(RunInfo {
        url: url.to_string(),
        provider: config.provider,
        model: config.model.clone(),
        stream: config.stream,
        offered_rps: rate,
        duration: config.duration,
        warmup: config.warmup,
        measured,
        scheduled: scheduled_measured,
        interrupted,
    }))
}

/// Request indices with their scheduled times, as they fall due.
type Dues = tokio::sync::mpsc::UnboundedReceiver<(u64, std::time::Instant)>;

/// Sends each request index `0..total`, with its scheduled time `t0 + i / rate`, at that
/// time, from a
/// thread of its own sleeping on the OS clock (nanosleep: tens of microseconds late at
/// most). Not tokio's timer: it rounds every deadline up to its next millisecond, which
/// sends requests due within the same millisecond together (at 3,000 rps, bursts of
/// three) and up to 1 ms late. The thread ends when the schedule does or when the
/// receiver is dropped.
fn pacer(
    t0: std::time::Instant,
    rate: f64,
    total: u64,
) -> anyhow::Result<(Dues, std::thread::JoinHandle<()>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name("loadgen-pacer".into())
        .spawn(move || {
            for i in 0..total {
                let at = t0 + Duration::from_secs_f64(i as f64 / rate);
                let now = std::time::Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                if tx.send((i, at)).is_err() {
                    return;
                }
            }
        })
        .context("starting the pacer thread")?;
    Ok((rx, thread))
}

/// One request/response. Ok only for a 2xx whose body arrived whole (for a stream, in
/// `grammar`: with its terminator and no error event).
async fn exchange(
    request: reqwest::RequestBuilder,
    grammar: Option<Provider>,
    scheduled: Instant,
) -> Result<StreamTiming, ErrorKind> {
    let response = request.send().await.map_err(|err| {
        if err.is_connect() {
            ErrorKind::Connect
        } else if err.is_timeout() {
            ErrorKind::Timeout
        } else {
            ErrorKind::Request
        }
    })?;
    let status = response.status();
    if !status.is_success() {
        // Read the body so the connection goes back to the pool.
        let _ = response.bytes().await;
        return Err(ErrorKind::Http(status.as_u16()));
    }
    let Some(grammar) = grammar else {
        response.bytes().await.map_err(|_| ErrorKind::Body)?;
        return Ok(StreamTiming::default());
    };

    let mut timing = StreamTiming::default();
    let mut scanner = sse::Scanner::new(grammar);
    let mut last_token: Option<Instant> = None;
    let mut done = false;
    let mut error = false;
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|_| ErrorKind::Body)?;
        let now = Instant::now();
        let seen = scanner.feed(&piece);
        for _ in 0..seen.tokens {
            match last_token {
                None => timing.ttft = Some(now - scheduled),
                Some(previous) => timing.gaps.push(now - previous),
            }
            last_token = Some(now);
        }
        done |= seen.done;
        error |= seen.error;
    }
    if error {
        return Err(ErrorKind::StreamError);
    }
    if !done {
        return Err(ErrorKind::IncompleteStream);
    }
    Ok(timing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[tokio::test]
    async fn pacer_sends_every_index_in_order_never_early() {
        let rate = 2_000.0;
        let t0 = std::time::Instant::now();
        let (mut due, _) = pacer(t0, rate, 40).unwrap();
        let mut got = Vec::new();
        while let Some((i, at)) = due.recv().await {
            assert_eq!(at, t0 + Duration::from_secs_f64(i as f64 / rate));
            assert!(
                std::time::Instant::now() >= at,
                "index {i} arrived before its time"
            );
            got.push(i);
        }
        assert_eq!(got, (0..40).collect::<Vec<u64>>());
    }

    #[test]
    fn pacer_stops_when_the_receiver_is_gone() {
        let (due, thread) = pacer(std::time::Instant::now(), 1_000.0, u64::MAX).unwrap();
        drop(due);
        // A pacer that ignored the closed channel would run for u64::MAX ms.
        thread.join().unwrap();
    }

    #[test]
    fn only_loopback_targets() {
        for ok in [
            "http://127.0.0.1:8080/v1/chat/completions",
            "http://127.1.2.3/",
            "http://[::1]:9090/x",
            "http://localhost:9090/x",
            "https://LOCALHOST./x",
        ] {
            assert!(check_loopback(&url(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "http://example.com/",
            "http://10.0.0.1/",
            "http://0.0.0.0:8080/",
            "http://[::ffff:127.0.0.1]/",
            "http://localhost.example.com/",
            "http://128.0.0.1/",
            "ftp://127.0.0.1/",
        ] {
            let err = check_loopback(&url(bad)).unwrap_err();
            assert!(err.to_string().contains("refusing"), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_headers_and_hides_values() {
        let (name, value) = parse_header("Authorization:  Bearer sk-secret ").unwrap();
        assert_eq!(name, "authorization");
        assert_eq!(value, "Bearer sk-secret");
        assert!(value.is_sensitive());
        let config = LoadgenConfig {
            headers: vec![(name, value)],
            ..LoadgenConfig::new(url("http://127.0.0.1/"), 1.0)
        };
        assert!(!format!("{config:?}").contains("sk-secret"));
        assert!(parse_header("no colon").is_err());
        let err = parse_header("bad name: x").unwrap_err();
        assert!(err.to_string().contains("bad name"));
    }

    #[test]
    fn validates_bounds() {
        let base = LoadgenConfig::new(url("http://127.0.0.1/"), 100.0);
        assert!(base.validate().is_ok());
        for bad in [
            LoadgenConfig {
                rate: 0.0,
                ..base.clone()
            },
            LoadgenConfig {
                rate: f64::NAN,
                ..base.clone()
            },
            LoadgenConfig {
                duration: Duration::ZERO,
                ..base.clone()
            },
            LoadgenConfig {
                duration: Duration::from_secs(4000),
                ..base.clone()
            },
            LoadgenConfig {
                max_in_flight: 0,
                ..base.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn counts_due_requests_without_float_noise() {
        assert_eq!(due_before(Duration::from_millis(700), 100.0), 70);
        assert_eq!(due_before(Duration::from_secs(1), 200.0), 200);
        assert_eq!(due_before(Duration::ZERO, 200.0), 0);
        assert_eq!(due_before(Duration::from_millis(1005), 100.0), 101);
        assert_eq!(due_before(Duration::from_secs(1), 0.5), 1);
    }

    #[test]
    fn gemini_target_is_checked_after_the_model_is_added() {
        let config = LoadgenConfig {
            provider: Provider::Gemini,
            stream: true,
            model: "m".into(),
            ..LoadgenConfig::new(url("http://127.0.0.1:9/"), 1.0)
        };
        let target = config
            .provider
            .endpoint(&config.url, &config.model, config.stream)
            .unwrap();
        assert!(check_loopback(&target).is_ok());
        assert_eq!(
            target.as_str(),
            "http://127.0.0.1:9/v1beta/models/m:streamGenerateContent?alt=sse"
        );
    }

    #[test]
    fn stream_body_asks_for_usage() {
        let config = LoadgenConfig {
            stream: true,
            ..LoadgenConfig::new(url("http://127.0.0.1/"), 1.0)
        };
        let body: serde_json::Value =
            serde_json::from_slice(&request_body(&config).unwrap()).unwrap();
        assert_eq!(body["model"], "openai/gpt-4o-mini");
        assert_eq!(body["messages"][0]["content"], "hello");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
    }
}
