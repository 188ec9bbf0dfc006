//! Result collection (HdrHistograms, error counts) and the run summary.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::provider::Provider;

/// Why a request did not count as ok.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// The server answered a non-2xx status.
    Http(u16),
    /// No complete answer within `--timeout-secs`.
    Timeout,
    /// The connection could not be opened.
    Connect,
    /// Sending failed for another reason.
    Request,
    /// The body broke off mid-way (e.g. the connection was cut).
    Body,
    /// A stream ended without its grammar's terminator (`data: [DONE]`,
    /// `message_stop`, a chunk with a `finishReason`).
    IncompleteStream,
    /// A stream carried an error event or a malformed `data:` line.
    StreamError,
    /// Not sent: `--max-in-flight` requests were already waiting.
    Dropped,
}

impl ErrorKind {
    fn key(self) -> String {
        match self {
            ErrorKind::Http(status) => format!("http_{status}"),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Connect => "connect".into(),
            ErrorKind::Request => "request".into(),
            ErrorKind::Body => "body".into(),
            ErrorKind::IncompleteStream => "incomplete_stream".into(),
            ErrorKind::StreamError => "stream_error".into(),
            ErrorKind::Dropped => "dropped".into(),
        }
    }
}

/// Stream timings of one ok request.
#[derive(Debug, Default)]
pub(crate) struct StreamTiming {
    pub ttft: Option<Duration>,
    pub gaps: Vec<Duration>,
}

/// Histograms in microseconds, 3 significant digits, up to one hour.
fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000, 3)?)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Everything recorded for the measured window.
pub(crate) struct Stats {
    pub latency: Histogram<u64>,
    pub ttft: Histogram<u64>,
    pub gap: Histogram<u64>,
    pub send_lag: Histogram<u64>,
    pub sent: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub max_in_flight_seen: u64,
}

impl Stats {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Stats {
            latency: histogram()?,
            ttft: histogram()?,
            gap: histogram()?,
            send_lag: histogram()?,
            sent: 0,
            ok: 0,
            errors: BTreeMap::new(),
            max_in_flight_seen: 0,
        })
    }

    pub(crate) fn error(&mut self, kind: ErrorKind) {
        *self.errors.entry(kind.key()).or_default() += 1;
    }

    pub(crate) fn ok(&mut self, latency: Duration, timing: &StreamTiming) {
        self.ok += 1;
        self.latency.saturating_record(micros(latency));
        if let Some(ttft) = timing.ttft {
            self.ttft.saturating_record(micros(ttft));
        }
        for gap in &timing.gaps {
            self.gap.saturating_record(micros(*gap));
        }
    }

    pub(crate) fn send_lag(&mut self, lag: Duration) {
        self.send_lag.saturating_record(micros(lag));
    }
}

/// The result of a run. Latencies are in milliseconds from each request's *scheduled*
/// send time; a percentile is `null` when nothing was recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The URL requests went to (for Gemini, with the model and method filled in).
    pub url: String,
    /// The wire format spoken: `openai`, `anthropic` or `gemini`.
    pub provider: Provider,
    pub model: String,
    pub stream: bool,
    /// The configured rate.
    pub offered_rps: f64,
    /// Ok responses per second over the measured window.
    pub achieved_rps: f64,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    /// From the first measured request's scheduled time to the last measured completion.
    pub measured_secs: f64,
    /// Requests due in the measured window (`sent` + dropped, unless interrupted).
    pub scheduled: u64,
    /// Requests that left (scheduled minus dropped).
    pub sent: u64,
    pub ok: u64,
    /// Sum of `errors`.
    pub errors_total: u64,
    /// Error counts by kind: `http_<status>`, `timeout`, `connect`, `request`, `body`,
    /// `incomplete_stream`, `stream_error`, `dropped`, `aborted`.
    pub errors: BTreeMap<String, u64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p90_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_p999_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub latency_mean_ms: Option<f64>,
    /// Time to the first event carrying output (streaming only): an OpenAI chunk with
    /// content, an Anthropic `content_block_delta`, a Gemini chunk with candidate text.
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    /// Gap between consecutive events carrying output (streaming only).
    pub gap_p50_ms: Option<f64>,
    pub gap_p99_ms: Option<f64>,
    /// How late requests actually left versus their schedule: large values mean the
    /// load generator itself could not keep up.
    pub send_lag_p99_ms: Option<f64>,
    pub send_lag_max_ms: Option<f64>,
    /// Most requests outstanding at once.
    pub max_in_flight_seen: u64,
    /// The run was stopped early (Ctrl-C).
    pub interrupted: bool,
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

fn max_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.max() as f64 / 1000.0)
}

/// What [`Stats::into_summary`] needs besides the stats.
pub(crate) struct RunInfo {
    pub url: String,
    pub provider: Provider,
    pub model: String,
    pub stream: bool,
    pub offered_rps: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub measured: Duration,
    pub scheduled: u64,
    pub interrupted: bool,
}

impl Stats {
    pub(crate) fn into_summary(mut self, info: RunInfo) -> Summary {
        // Requests cut short by an interrupt never reported back.
        let reported = self.ok + self.errors.values().sum::<u64>()
            - self.errors.get("dropped").copied().unwrap_or(0);
        if self.sent > reported {
            self.errors.insert("aborted".into(), self.sent - reported);
        }
        let errors_total = self.errors.values().sum();
        let measured_secs = info.measured.as_secs_f64();
        let achieved_rps = if measured_secs > 0.0 {
            self.ok as f64 / measured_secs
        } else {
            0.0
        };
        let stream = info.stream;
        let stream_only = |v: Option<f64>| if stream { v } else { None };
        Summary {
            url: info.url,
            provider: info.provider,
            model: info.model,
            stream,
            offered_rps: info.offered_rps,
            achieved_rps,
            duration_secs: info.duration.as_secs_f64(),
            warmup_secs: info.warmup.as_secs_f64(),
            measured_secs,
            scheduled: info.scheduled,
            sent: self.sent,
            ok: self.ok,
            errors_total,
            latency_p50_ms: quantile_ms(&self.latency, 0.5),
            latency_p90_ms: quantile_ms(&self.latency, 0.9),
            latency_p99_ms: quantile_ms(&self.latency, 0.99),
            latency_p999_ms: quantile_ms(&self.latency, 0.999),
            latency_max_ms: max_ms(&self.latency),
            latency_mean_ms: (!self.latency.is_empty()).then(|| self.latency.mean() / 1000.0),
            ttft_p50_ms: stream_only(quantile_ms(&self.ttft, 0.5)),
            ttft_p99_ms: stream_only(quantile_ms(&self.ttft, 0.99)),
            gap_p50_ms: stream_only(quantile_ms(&self.gap, 0.5)),
            gap_p99_ms: stream_only(quantile_ms(&self.gap, 0.99)),
            send_lag_p99_ms: quantile_ms(&self.send_lag, 0.99),
            send_lag_max_ms: max_ms(&self.send_lag),
            max_in_flight_seen: self.max_in_flight_seen,
            interrupted: info.interrupted,
            errors: self.errors,
        }
    }
}

struct Ms(Option<f64>);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v:.3}"),
            None => f.write_str("-"),
        }
    }
}

/// A human-readable table.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self;
        writeln!(
            f,
            "target      {}  provider {}  model {}  stream {}",
            s.url, s.provider, s.model, s.stream
        )?;
        writeln!(
            f,
            "rate        offered {:.1} rps  achieved {:.1} rps  window {:.3} s (warmup {:.1} s){}",
            s.offered_rps,
            s.achieved_rps,
            s.measured_secs,
            s.warmup_secs,
            if s.interrupted { "  INTERRUPTED" } else { "" }
        )?;
        writeln!(
            f,
            "requests    scheduled {}  sent {}  ok {}  errors {}  max in flight {}",
            s.scheduled, s.sent, s.ok, s.errors_total, s.max_in_flight_seen
        )?;
        if !s.errors.is_empty() {
            let list: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "errors      {}", list.join("  "))?;
        }
        writeln!(
            f,
            "latency ms  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}",
            Ms(s.latency_p50_ms),
            Ms(s.latency_p90_ms),
            Ms(s.latency_p99_ms),
            Ms(s.latency_p999_ms),
            Ms(s.latency_max_ms),
            Ms(s.latency_mean_ms)
        )?;
        if s.stream {
            writeln!(
                f,
                "ttft ms     p50 {}  p99 {}",
                Ms(s.ttft_p50_ms),
                Ms(s.ttft_p99_ms)
            )?;
            writeln!(
                f,
                "gap ms      p50 {}  p99 {}",
                Ms(s.gap_p50_ms),
                Ms(s.gap_p99_ms)
            )?;
        }
        write!(
            f,
            "send lag ms p99 {}  max {}",
            Ms(s.send_lag_p99_ms),
            Ms(s.send_lag_max_ms)
        )
    }
}
