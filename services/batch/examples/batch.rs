//! A batch job in Rust: publishes `--count` requests straight to NATS, waits, and
//! collects exactly one result per request. Run it again with the same `--job` and it
//! publishes only the rows that have no result yet (none, once the job is done).
//!
//! ```text
//! NATS_URL=nats://acme:<password>@127.0.0.1:4222 BATCH_PROVIDER_KEY=sk-... \
//!   cargo run -p switchyard-batch --example batch -- --account acme --job demo --count 1000
//! ```
//!
//! Progress goes to stderr; the summary is one JSON line on stdout (with the time from
//! the first publish to the last result, which `just bench-batch` reports).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::{Parser, ValueEnum};
use schemas::{BatchRequest, BatchResult, ChatRequest, Message, Params, Role, TaskInput};
use switchyard_batch::job::{self, Results};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Task {
    /// One user message per row.
    Chat,
    /// One text to embed per row (`feature-extraction`).
    Embeddings,
}

/// Publish a batch job to Switchyard over NATS and collect its results.
#[derive(Debug, Parser)]
#[command(name = "batch", about)]
struct Args {
    /// NATS URL, with the batch user's credentials (`nats://<user>:<password>@host:port`).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The account the job belongs to (its batch user may publish only for it).
    #[arg(long)]
    account: String,
    /// The job id: 1-64 letters, digits, '-' or '_'.
    #[arg(long)]
    job: String,
    /// The model every row asks.
    #[arg(long, default_value = "openai/gpt-4o-mini")]
    model: String,
    #[arg(long, value_enum, default_value_t = Task::Chat)]
    task: Task,
    /// Rows in the job.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Minutes from now until the job deadline (rows not started by then fail).
    #[arg(long, default_value_t = 60)]
    deadline_minutes: i64,
    /// Give up collecting after this many seconds without a new result.
    #[arg(long, default_value_t = 120)]
    idle_timeout_secs: u64,
    /// The provider key for a closed model (never printed).
    #[arg(long, env = "BATCH_PROVIDER_KEY", hide_env_values = true)]
    provider_key: Option<String>,
    /// NATS inbox prefix: a batch user may only read replies on `_INBOX_<account-token>`
    /// (see nats/README.md). Default: that prefix when the URL names a user, else NATS's.
    #[arg(long)]
    inbox_prefix: Option<String>,
}

fn row_request(args: &Args, row: u64, deadline: chrono::DateTime<Utc>) -> BatchRequest {
    let (messages, task) = match args.task {
        Task::Chat => (
            vec![Message::text(
                Role::User,
                format!("row {row}: reply with one word"),
            )],
            None,
        ),
        Task::Embeddings => (
            Vec::new(),
            Some(TaskInput::FeatureExtraction {
                inputs: vec![format!("sentence number {row} of the batch job")],
            }),
        ),
    };
    BatchRequest {
        schema_version: schemas::SCHEMA_VERSION,
        request_id: job::request_id(&args.account, &args.job, row),
        account: args.account.clone(),
        deadline,
        created_at: Some(Utc::now()),
        request: ChatRequest {
            model: args.model.clone(),
            messages,
            params: Params {
                max_tokens: Some(16),
                ..Params::default()
            },
            tools: Vec::new(),
            tool_choice: None,
            stream: false,
            fallback_models: Vec::new(),
            response_format: None,
        },
        task,
        provider_key: args.provider_key.clone(),
        provider_keys: BTreeMap::new(),
    }
}

async fn run(args: Args) -> Result<serde_json::Value, String> {
    schemas::batch::check_job(&args.job).map_err(|e| e.to_string())?;
    let account_token = schemas::subjects::model_token(&args.account).map_err(|e| e.to_string())?;
    // The user and password in the URL (async-nats itself ignores them there).
    let mut options = switchyard_nats::connect_options(&args.nats_url)?.name("batch-example");
    let prefix = args.inbox_prefix.clone().or_else(|| {
        let user = args.nats_url.split_once("://")?.1.rsplit_once('@')?.0;
        (!user.starts_with(&format!("{}:", switchyard_nats::INTERNAL_USER)))
            .then(|| format!("_INBOX_{account_token}"))
    });
    if let Some(prefix) = prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    let client = options.connect(&args.nats_url).await.map_err(|e| {
        format!(
            "cannot connect to NATS at {}: {e}",
            switchyard_nats::redact_url(&args.nats_url)
        )
    })?;
    let js = async_nats::jetstream::new(client);

    // What an earlier run already got back.
    let mut results = Results::open(&js, &account_token, &args.job)
        .await
        .map_err(|e| e.to_string())?;
    let mut got: HashMap<uuid::Uuid, BatchResult> = results
        .already_stored(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let wanted: HashSet<uuid::Uuid> = (0..args.count)
        .map(|row| job::request_id(&args.account, &args.job, row))
        .collect();
    got.retain(|id, _| wanted.contains(id));
    let already = got.len() as u64;

    let started = Instant::now();
    let deadline = Utc::now() + chrono::Duration::minutes(args.deadline_minutes);
    let todo: Vec<BatchRequest> = (0..args.count)
        .map(|row| row_request(&args, row, deadline))
        .filter(|r| !got.contains_key(&r.request_id))
        .collect();
    let published = job::publish(&js, &account_token, &args.job, todo)
        .await
        .map_err(|e| e.to_string())?;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "job {}: {} rows, {already} already answered, published {} ({} already queued)",
        args.job, args.count, published.stored, published.duplicates
    );

    let idle = Duration::from_secs(args.idle_timeout_secs);
    let mut last_report = Instant::now();
    while (got.len() as u64) < args.count {
        match results.next(idle).await.map_err(|e| e.to_string())? {
            Some(r) if wanted.contains(&r.request_id) => {
                got.insert(r.request_id, r);
            }
            Some(_) => {}
            None => {
                return Err(format!(
                    "no new result for {idle:?}; {} of {} collected (run again to resume)",
                    got.len(),
                    args.count
                ));
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let _ = writeln!(err, "results: {}/{}", got.len(), args.count);
            last_report = Instant::now();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in got.values() {
        if let Some(e) = &r.error {
            *errors.entry(e.kind.as_str().to_string()).or_default() += 1;
        }
    }
    let ok = got.values().filter(|r| r.error.is_none()).count();
    let _ = writeln!(err, "results: {}/{} ({ok} ok)", got.len(), args.count);
    Ok(serde_json::json!({
        "job": args.job,
        "rows": args.count,
        "already_answered": already,
        "published": published.stored,
        "duplicates": published.duplicates,
        "results": got.len(),
        "ok": ok,
        "errors": errors,
        // From the first publish to the last result: the job's end-to-end throughput.
        "elapsed_s": elapsed,
        "published_per_s": published.stored as f64 / elapsed.max(1e-9),
    }))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(summary) => {
            let _ = writeln!(std::io::stdout().lock(), "{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "batch: {e}");
            ExitCode::FAILURE
        }
    }
}
