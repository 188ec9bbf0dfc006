//! NATS set-up for Switchyard, in one place.
//!
//! The files beside this crate — `streams/*.json`, `consumers/<STREAM>/*.json`,
//! `kv/*.json` — define every stream, durable consumer and KV bucket. Streams and
//! consumers are in the NATS JetStream API's own JSON form (durations in nanoseconds),
//! so `nats stream add --config` reads them too. [`apply`] creates or updates them all,
//! idempotently; the `switchyard-nats apply` binary runs it for `just up` and
//! deployments, and tests run it on their own servers. Services never create streams.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use serde::Deserialize;

pub mod inflight;
pub mod pull;
#[cfg(feature = "testing")]
pub mod testing;

/// The nats-server user every Switchyard service logs in as (full access); batch
/// accounts' users are named by their account token (`nats/README.md`).
pub const INTERNAL_USER: &str = "switchyard";

/// What a dead-letter entry says.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    /// Why (the `Switchyard-Reason` header).
    pub reason: &'a str,
    /// The stream and consumer the message came from (the entry's subject is
    /// `dlq.<stream>.<consumer>`).
    pub stream: &'a str,
    pub consumer: &'a str,
    /// Appended to the `Switchyard-Source` header (e.g. the original subject).
    pub source_detail: Option<&'a str>,
    pub request_id: Option<&'a str>,
    /// What is kept of the message: as published when it is sealed, else nothing.
    pub payload: bytes::Bytes,
    /// When the entry cannot be stored, the message comes back after this long.
    pub retry_in: Duration,
}

/// Stores `entry` on `dlq.<stream>.<consumer>` (stream DEADLETTER) and terminates
/// `message`; when the entry cannot be stored, naks the message so it comes back and
/// is dead-lettered once JetStream is. Returns whether it was stored.
pub async fn dead_letter(
    js: &jetstream::Context,
    message: &jetstream::Message,
    entry: DeadLetter<'_>,
) -> bool {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(schemas::headers::DEAD_LETTER_REASON, entry.reason);
    let source = match entry.source_detail {
        Some(detail) => format!("{}/{} {detail}", entry.stream, entry.consumer),
        None => format!("{}/{}", entry.stream, entry.consumer),
    };
    headers.insert(schemas::headers::DEAD_LETTER_SOURCE, source.as_str());
    if let Some(id) = entry.request_id {
        headers.insert(schemas::headers::REQUEST_ID, id);
    }
    let subject = schemas::subjects::dead_letter(entry.stream, entry.consumer);
    let stored = match js
        .publish_with_headers(subject, headers, entry.payload)
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    if stored {
        let _ = message.ack_with(jetstream::AckKind::Term).await;
        tracing::warn!(reason = entry.reason, "message dead-lettered");
    } else {
        let _ = message
            .ack_with(jetstream::AckKind::Nak(Some(entry.retry_in)))
            .await;
        tracing::error!(
            reason = entry.reason,
            "cannot dead-letter a message; it will be redelivered"
        );
    }
    stored
}

/// Connecting to NATS failed; the URL is shown with its password masked.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {url}: {message}")]
pub struct ConnectError {
    pub url: String,
    pub message: String,
}

/// Connects to NATS at `url` as client `name`, logging in with the user and password
/// the URL carries (`nats://user:password@host:4222`, %-escapes decoded): async-nats
/// 0.51 parses credentials in a URL but never sends them. Every Switchyard service
/// connects through here, so `NATS_URL` is the one setting that carries them. The
/// client is given the URL without them: async-nats logs server addresses.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, ConnectError> {
    let fail = |message: String| ConnectError {
        url: redact_url(url),
        message,
    };
    connect_options(url)
        .map_err(fail)?
        .name(name)
        .connect(without_credentials(url))
        .await
        .map_err(|e| fail(e.to_string()))
}

/// `nats://user:password@host:4222` → `nats://host:4222`.
pub fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Connect options with the user and password of `url`, if it has them.
pub fn connect_options(url: &str) -> Result<async_nats::ConnectOptions, String> {
    let addr: async_nats::ServerAddr = url.parse().map_err(|e| format!("bad NATS URL: {e}"))?;
    Ok(match (addr.username(), addr.password()) {
        (Some(user), Some(password)) => async_nats::ConnectOptions::with_user_and_password(
            percent_decode(user)?,
            percent_decode(password)?,
        ),
        (Some(_), None) => return Err("the NATS URL has a user but no password".into()),
        _ => async_nats::ConnectOptions::new(),
    })
}

/// `nats://user:password@host:4222` → `nats://user:***@host:4222`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    format!("{scheme}://{user}:***@{host}")
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = s
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or("bad %-escape in the NATS URL's credentials")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the NATS URL's credentials are not UTF-8".into())
}

/// A stream, consumer or bucket definition that cannot be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid definition: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot apply stream {name}: {message}")]
    Stream { name: String, message: String },
    #[error(
        "stream {name} exists with a setting that cannot change in place ({message}); \
         recreate it with `switchyard-nats apply --recreate {name}` (its messages are lost)"
    )]
    Immutable { name: String, message: String },
    #[error("cannot apply consumer {stream}/{name}: {message}")]
    Consumer {
        stream: String,
        name: String,
        message: String,
    },
    #[error("cannot apply KV bucket {name}: {message}")]
    Kv { name: String, message: String },
}

/// A KV bucket definition (`kv/*.json`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvDef {
    pub bucket: String,
    #[serde(default)]
    pub description: String,
    /// Values kept per key.
    #[serde(default = "one")]
    pub history: i64,
    /// Entries expire after this many seconds; 0 keeps them.
    #[serde(default)]
    pub max_age_secs: u64,
    #[serde(default = "one_usize")]
    pub num_replicas: usize,
}

fn one_usize() -> usize {
    1
}

fn one() -> i64 {
    1
}

/// A durable consumer on a stream (`consumers/<STREAM>/<name>.json`).
#[derive(Debug, Clone)]
pub struct ConsumerDef {
    pub stream: String,
    pub config: jetstream::consumer::pull::Config,
}

/// Everything under `nats/`.
#[derive(Debug, Clone)]
pub struct Definitions {
    pub streams: Vec<jetstream::stream::Config>,
    pub consumers: Vec<ConsumerDef>,
    pub kv: Vec<KvDef>,
}

/// The definitions compiled into this build, identical to the files beside the crate.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "streams/REQUESTS.json",
        include_str!("../streams/REQUESTS.json"),
    ),
    ("streams/BATCH.json", include_str!("../streams/BATCH.json")),
    (
        "streams/BATCHWORK.json",
        include_str!("../streams/BATCHWORK.json"),
    ),
    (
        "streams/RESULTS.json",
        include_str!("../streams/RESULTS.json"),
    ),
    ("streams/USAGE.json", include_str!("../streams/USAGE.json")),
    // After USAGE: an existing USAGE must give up usage.tokens.> before this takes it.
    (
        "streams/USAGE_TOKENS.json",
        include_str!("../streams/USAGE_TOKENS.json"),
    ),
    (
        "streams/DEADLETTER.json",
        include_str!("../streams/DEADLETTER.json"),
    ),
    (
        "consumers/REQUESTS/translator.json",
        include_str!("../consumers/REQUESTS/translator.json"),
    ),
    (
        "consumers/BATCH/batch-router.json",
        include_str!("../consumers/BATCH/batch-router.json"),
    ),
    (
        "consumers/BATCHWORK/translator-batch.json",
        include_str!("../consumers/BATCHWORK/translator-batch.json"),
    ),
    (
        "consumers/USAGE/billing.json",
        include_str!("../consumers/USAGE/billing.json"),
    ),
    (
        "consumers/USAGE_TOKENS/billing-tokens.json",
        include_str!("../consumers/USAGE_TOKENS/billing-tokens.json"),
    ),
    ("kv/clusters.json", include_str!("../kv/clusters.json")),
    ("kv/instances.json", include_str!("../kv/instances.json")),
];

fn parse<T: serde::de::DeserializeOwned>(path: &str, text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|source| Error::Parse {
        path: path.to_string(),
        source,
    })
}

impl Definitions {
    /// The definitions compiled into this binary.
    pub fn embedded() -> Result<Self, Error> {
        Self::from_files(EMBEDDED.iter().map(|(p, t)| (p.to_string(), t.to_string())))
    }

    /// Reads `streams/*.json`, `consumers/<STREAM>/*.json` and `kv/*.json` under `dir`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let mut files = Vec::new();
        for sub in ["streams", "kv"] {
            for path in json_files(&dir.join(sub))? {
                let rel = format!("{sub}/{}", file_name(&path));
                files.push((rel, read(&path)?));
            }
        }
        let consumers = dir.join("consumers");
        let mut streams: Vec<_> = read_dir(&consumers)?
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        streams.sort();
        for stream_dir in streams {
            for path in json_files(&stream_dir)? {
                let rel = format!("consumers/{}/{}", file_name(&stream_dir), file_name(&path));
                files.push((rel, read(&path)?));
            }
        }
        Self::from_files(files)
    }

    fn from_files(files: impl IntoIterator<Item = (String, String)>) -> Result<Self, Error> {
        let mut defs = Definitions {
            streams: Vec::new(),
            consumers: Vec::new(),
            kv: Vec::new(),
        };
        for (path, text) in files {
            let parts: Vec<&str> = path.split('/').collect();
            match parts.as_slice() {
                ["streams", _] => defs.streams.push(parse(&path, &text)?),
                ["kv", _] => defs.kv.push(parse(&path, &text)?),
                ["consumers", stream, _] => defs.consumers.push(ConsumerDef {
                    stream: stream.to_string(),
                    config: parse(&path, &text)?,
                }),
                _ => {}
            }
        }
        Ok(defs)
    }

    /// Sets the replica count of every stream and bucket (3 on a production cluster).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        for s in &mut self.streams {
            s.num_replicas = replicas;
        }
        for kv in &mut self.kv {
            kv.num_replicas = replicas;
        }
        self
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })
}

fn read_dir(dir: &Path) -> Result<Vec<std::path::PathBuf>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Read {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
}

fn json_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, Error> {
    let mut files: Vec<_> = read_dir(dir)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// What [`apply`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub streams: Vec<String>,
    pub consumers: Vec<String>,
    pub kv: Vec<String>,
}

/// The durable consumer of one cluster's queue, from the model's and the account's
/// subject tokens: `open__<model>__<account>` (a token never holds `__`, since every
/// `_` in one starts a `_XX` escape, so the name is unambiguous).
pub fn open_model_consumer_name(model_token: &str, account_token: &str) -> String {
    format!("open__{model_token}__{account_token}")
}

/// The durable consumer of one cluster's batch queue (stream BATCHWORK):
/// `batch__<model>__<account>`, named like [`open_model_consumer_name`].
pub fn batch_consumer_name(model_token: &str, account_token: &str) -> String {
    format!("batch__{model_token}__{account_token}")
}

/// Creates (or updates) the durable consumer of one cluster's queue — every instance
/// of the cluster pulls from it, the autoscaler reads its backlog — from
/// `templates/open-model-consumer.json` with `{model}` and `{account}` filled in.
/// Clusters come and go, so their consumers are made on demand rather than listed
/// under `consumers/`. The arguments are subject tokens (`schemas::subjects::model_token`).
pub async fn ensure_open_model_consumer(
    js: &jetstream::Context,
    model_token: &str,
    account_token: &str,
) -> Result<jetstream::consumer::PullConsumer, Error> {
    ensure_cluster_consumer(
        js,
        "REQUESTS",
        ClusterTemplate {
            path: "templates/open-model-consumer.json",
            text: include_str!("../templates/open-model-consumer.json"),
        },
        model_token,
        account_token,
    )
    .await
}

/// As [`ensure_open_model_consumer`], for the cluster's batch queue on BATCHWORK
/// (`templates/batch-consumer.json`). The batch router makes it when it first queues
/// work for the cluster, so the autoscaler sees the backlog before any instance runs.
pub async fn ensure_batch_consumer(
    js: &jetstream::Context,
    model_token: &str,
    account_token: &str,
) -> Result<jetstream::consumer::PullConsumer, Error> {
    ensure_cluster_consumer(
        js,
        "BATCHWORK",
        ClusterTemplate {
            path: "templates/batch-consumer.json",
            text: include_str!("../templates/batch-consumer.json"),
        },
        model_token,
        account_token,
    )
    .await
}

struct ClusterTemplate {
    path: &'static str,
    text: &'static str,
}

async fn ensure_cluster_consumer(
    js: &jetstream::Context,
    stream_name: &str,
    template: ClusterTemplate,
    model_token: &str,
    account_token: &str,
) -> Result<jetstream::consumer::PullConsumer, Error> {
    let text = template
        .text
        .replace("{model}", model_token)
        .replace("{account}", account_token);
    let fail = |message: String| Error::Consumer {
        stream: stream_name.into(),
        name: format!("{} for {model_token}/{account_token}", template.path),
        message,
    };
    for token in [model_token, account_token] {
        if token.is_empty() || token.contains(['.', '*', '>', ' ']) || token.contains("__") {
            return Err(fail(format!("'{token}' is not a subject token")));
        }
    }
    let config: jetstream::consumer::pull::Config =
        serde_json::from_str(&text).map_err(|source| Error::Parse {
            path: template.path.into(),
            source,
        })?;
    let stream = js.get_stream(stream_name).await.map_err(|e| {
        fail(format!(
            "stream {stream_name} not found ({e}); run `switchyard-nats apply` first"
        ))
    })?;
    stream
        .create_consumer(config)
        .await
        .map_err(|e| fail(e.to_string()))
}

/// Creates or updates every stream, then every consumer, then every KV bucket.
/// Running it again with the same definitions changes nothing.
pub async fn apply(js: &jetstream::Context, defs: &Definitions) -> Result<Applied, Error> {
    apply_recreating(js, defs, &[]).await
}

/// Like [`apply`], but first deletes the streams named in `recreate` (losing their
/// messages) so that settings NATS cannot change in place take effect.
pub async fn apply_recreating(
    js: &jetstream::Context,
    defs: &Definitions,
    recreate: &[String],
) -> Result<Applied, Error> {
    let mut applied = Applied::default();
    for name in recreate {
        match js.delete_stream(name).await {
            Ok(_) => tracing::warn!(stream = %name, "stream deleted to be recreated"),
            Err(e) => tracing::info!(stream = %name, error = %e, "stream not deleted"),
        }
    }
    for config in &defs.streams {
        let name = config.name.clone();
        js.create_or_update_stream(config.clone())
            .await
            .map_err(|e| {
                let message = e.to_string();
                if message.contains("can not change") {
                    Error::Immutable {
                        name: name.clone(),
                        message,
                    }
                } else {
                    Error::Stream {
                        name: name.clone(),
                        message,
                    }
                }
            })?;
        tracing::info!(stream = %name, "stream applied");
        applied.streams.push(name);
    }
    for def in &defs.consumers {
        let name = def.config.durable_name.clone().unwrap_or_default();
        let err = |message: String| Error::Consumer {
            stream: def.stream.clone(),
            name: name.clone(),
            message,
        };
        let stream = js
            .get_stream(&def.stream)
            .await
            .map_err(|e| err(e.to_string()))?;
        stream
            .create_consumer(def.config.clone())
            .await
            .map_err(|e| err(e.to_string()))?;
        tracing::info!(stream = %def.stream, consumer = %name, "consumer applied");
        applied.consumers.push(format!("{}/{}", def.stream, name));
    }
    for kv in &defs.kv {
        let config = jetstream::kv::Config {
            bucket: kv.bucket.clone(),
            description: kv.description.clone(),
            history: kv.history,
            max_age: Duration::from_secs(kv.max_age_secs),
            storage: jetstream::stream::StorageType::File,
            num_replicas: kv.num_replicas,
            ..Default::default()
        };
        js.create_or_update_key_value(config)
            .await
            .map_err(|e| Error::Kv {
                name: kv.bucket.clone(),
                message: e.to_string(),
            })?;
        tracing::info!(bucket = %kv.bucket, "kv bucket applied");
        applied.kv.push(kv.bucket.clone());
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password_and_credentials_are_decoded() {
        assert_eq!(
            redact_url("nats://acme:s3cr%40t@127.0.0.1:4222"),
            "nats://acme:***@127.0.0.1:4222"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(percent_decode("s3cr%40t%2F").unwrap(), "s3cr@t/");
        assert!(percent_decode("bad%4").is_err());
        assert!(connect_options("nats://acme:pw@127.0.0.1:4222").is_ok());
        assert!(connect_options("nats://acme@127.0.0.1:4222").is_err());
        assert!(connect_options("nats://127.0.0.1:4222").is_ok());
        assert_eq!(
            without_credentials("nats://switchyard:s3cr@t@127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(without_credentials("127.0.0.1:4222"), "127.0.0.1:4222");
    }

    #[test]
    fn embedded_definitions_match_the_files() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let embedded = Definitions::embedded().unwrap();
        let loaded = Definitions::load(dir).unwrap();
        let names = |d: &Definitions| {
            let mut s: Vec<_> = d.streams.iter().map(|s| s.name.clone()).collect();
            s.sort();
            s
        };
        assert_eq!(
            names(&embedded),
            names(&loaded),
            "add new files to EMBEDDED"
        );
        assert_eq!(
            embedded.consumers.len(),
            loaded.consumers.len(),
            "add new files to EMBEDDED"
        );
        assert_eq!(
            embedded.kv.len(),
            loaded.kv.len(),
            "add new files to EMBEDDED"
        );
        assert_eq!(
            names(&embedded),
            [
                "BATCH",
                "BATCHWORK",
                "DEADLETTER",
                "REQUESTS",
                "RESULTS",
                "USAGE",
                "USAGE_TOKENS"
            ]
        );
    }

    #[test]
    fn definitions_say_what_they_mean() {
        let defs = Definitions::embedded().unwrap();
        let requests = defs.streams.iter().find(|s| s.name == "REQUESTS").unwrap();
        assert_eq!(requests.subjects, ["req.>"]);
        assert_eq!(
            requests.retention,
            jetstream::stream::RetentionPolicy::WorkQueue
        );
        assert_eq!(requests.max_age, Duration::from_secs(300));
        assert_eq!(requests.duplicate_window, Duration::from_secs(120));
        let translator = &defs.consumers[0];
        assert_eq!(translator.stream, "REQUESTS");
        assert_eq!(
            translator.config.durable_name.as_deref(),
            Some("translator")
        );
        assert_eq!(translator.config.filter_subject, "req.closed.>");
        assert_eq!(translator.config.ack_wait, Duration::from_secs(30));
        let billing = defs
            .consumers
            .iter()
            .find(|c| c.config.durable_name.as_deref() == Some("billing"))
            .unwrap();
        assert_eq!(billing.stream, "USAGE");
        assert_eq!(
            billing.config.filter_subjects,
            ["usage.instance.>", "usage.lifecycle.>"]
        );
        assert_eq!(billing.config.max_deliver, -1);
        let tokens = defs
            .consumers
            .iter()
            .find(|c| c.config.durable_name.as_deref() == Some("billing-tokens"))
            .unwrap();
        assert_eq!(tokens.stream, "USAGE_TOKENS");
        assert_eq!(tokens.config.filter_subject, "usage.tokens.>");
        let instances = defs.kv.iter().find(|k| k.bucket == "instances").unwrap();
        assert_eq!(instances.max_age_secs, 30);
        let r3 = defs.with_replicas(3);
        assert!(r3.streams.iter().all(|s| s.num_replicas == 3));
        assert!(r3.kv.iter().all(|k| k.num_replicas == 3));
    }
}
