//! Subject names, in one place, and the model id → subject token mapping.
//!
//! | subject | carries |
//! |---|---|
//! | `req.closed.<provider>` | [`crate::RequestEnvelope`] for a closed model (stream REQUESTS) |
//! | `req.open.<model-token>.<account-token>` | [`crate::RequestEnvelope`] for an open model: one cluster's queue (stream REQUESTS) |
//! | `batch.<account-token>.<job>` | [`crate::BatchRequest`]s a batch job publishes (stream BATCH) |
//! | `breq.closed.<provider>`, `breq.open.<model-token>.<account-token>` | routed batch work, sealed [`crate::RequestEnvelope`]s (stream BATCHWORK) |
//! | `reply.<ingress>.<request>` | [`crate::ReplyChunk`]s, core NATS |
//! | `cancel.<request>` | cancellation of a running request, core NATS |
//! | `res.<account-token>.<job>.<request>` | [`crate::BatchResult`]s (stream RESULTS). The account token leads so NATS permissions can give each batch account its own results only |
//! | `usage.<kind>.<account-token>` | [`crate::UsageEvent`]s: `instance`, `lifecycle` and `alert` (stream USAGE), `tokens` (stream USAGE_TOKENS) |
//! | `dlq.<stream>.<consumer>` | dead letters with the reason in a header (stream DEADLETTER) |

use uuid::Uuid;

pub const REQUESTS_STREAM: &str = "REQUESTS";
pub const BATCH_STREAM: &str = "BATCH";
/// Routed batch work for the workers (`breq.…`).
pub const BATCHWORK_STREAM: &str = "BATCHWORK";
pub const RESULTS_STREAM: &str = "RESULTS";
pub const USAGE_STREAM: &str = "USAGE";
/// Token usage events (`usage.tokens.>`), apart from USAGE's money: persisted without an
/// fsync per event.
pub const USAGE_TOKENS_STREAM: &str = "USAGE_TOKENS";
pub const DEAD_LETTER_STREAM: &str = "DEADLETTER";
/// KV bucket of cluster specs and statuses (see [`crate::cluster`]).
pub const CLUSTERS_BUCKET: &str = "clusters";
/// KV bucket of instance heartbeats (entries expire after 30 s).
pub const INSTANCES_BUCKET: &str = "instances";

/// The durable consumer the translator pulls closed-model requests from.
pub const TRANSLATOR_CONSUMER: &str = "translator";
/// The durable consumer the translator pulls closed-model batch work from (BATCHWORK).
pub const TRANSLATOR_BATCH_CONSUMER: &str = "translator-batch";
/// The durable consumer the batch router pulls published batch requests from (BATCH).
pub const BATCH_ROUTER_CONSUMER: &str = "batch-router";

/// Longest model id accepted.
pub const MAX_MODEL_ID_LEN: usize = 200;

/// The closed-model providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    OpenAi,
    Anthropic,
    Google,
}

impl Provider {
    /// All providers, in a fixed order.
    pub const ALL: [Provider; 3] = [Provider::OpenAi, Provider::Anthropic, Provider::Google];

    /// The token used in model ids (`openai/…`) and subjects (`req.closed.openai`).
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Google => "google",
        }
    }

    /// Parses the provider token of a model id.
    pub fn from_token(token: &str) -> Option<Self> {
        Provider::ALL.into_iter().find(|p| p.as_str() == token)
    }
}

/// How a model id routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRoute {
    /// `openai/gpt-4o-mini` → provider OpenAI, upstream model `gpt-4o-mini`.
    Closed {
        provider: Provider,
        upstream_model: String,
    },
    /// Any other id: an open model served by our workers.
    Open { token: String },
}

/// A model id that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelIdError {
    #[error("model id is empty")]
    Empty,
    #[error("model id is longer than {MAX_MODEL_ID_LEN} characters")]
    TooLong,
    #[error(
        "model id contains {0:?}, which is not allowed (letters, digits and - _ . / : @ + only)"
    )]
    BadChar(char),
    #[error("model id {0:?} names a provider but no model after the '/'")]
    MissingModel(String),
}

/// Routes a model id: `<provider>/<model>` for closed models, anything else open.
pub fn route_model(model_id: &str) -> Result<ModelRoute, ModelIdError> {
    let token = model_token(model_id)?;
    if let Some((prefix, rest)) = model_id.split_once('/')
        && let Some(provider) = Provider::from_token(prefix)
    {
        if rest.is_empty() {
            return Err(ModelIdError::MissingModel(model_id.to_string()));
        }
        return Ok(ModelRoute::Closed {
            provider,
            upstream_model: rest.to_string(),
        });
    }
    Ok(ModelRoute::Open { token })
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '@' | '+')
}

/// Maps a model id to one subject token, injectively.
///
/// Letters, digits and `-` pass through; `_ . / : @ +` become `_` followed by two hex
/// digits (`/` → `_2F`, `_` → `_5F`), so the token never holds a `.` (token separator)
/// and distinct ids give distinct tokens. Anything else — whitespace, `*`, `>`, control
/// or non-ASCII characters — is rejected: user input never reaches a subject unescaped.
pub fn model_token(model_id: &str) -> Result<String, ModelIdError> {
    if model_id.is_empty() {
        return Err(ModelIdError::Empty);
    }
    if model_id.chars().count() > MAX_MODEL_ID_LEN {
        return Err(ModelIdError::TooLong);
    }
    let mut out = String::with_capacity(model_id.len() + 8);
    for c in model_id.chars() {
        if !allowed(c) {
            return Err(ModelIdError::BadChar(c));
        }
        if c.is_ascii_alphanumeric() || c == '-' {
            out.push(c);
        } else {
            out.push_str(&format!("_{:02X}", c as u32));
        }
    }
    Ok(out)
}

/// The inverse of [`model_token`]; `None` for anything it could not have produced.
pub fn model_id_from_token(token: &str) -> Option<String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c == '_' {
            let hex: String = chars.by_ref().take(2).collect();
            let byte = u8::from_str_radix(&hex, 16).ok()?;
            let decoded = char::from(byte);
            if hex.len() != 2
                || decoded.is_ascii_alphanumeric()
                || decoded == '-'
                || !allowed(decoded)
            {
                return None;
            }
            if hex != format!("{byte:02X}") {
                return None;
            }
            out.push(decoded);
        } else if c.is_ascii_alphanumeric() || c == '-' {
            out.push(c);
        } else {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `req.closed.<provider>`
pub fn closed_request(provider: Provider) -> String {
    format!("req.closed.{}", provider.as_str())
}

/// `req.open.<model-token>.<account-token>`: one account's requests for one open
/// model, i.e. one cluster's queue (instances are single-tenant). Tokens come from
/// [`model_token`] (which also escapes account ids).
pub fn open_request(model_token: &str, account_token: &str) -> String {
    format!("req.open.{model_token}.{account_token}")
}

/// [`open_request`] from the model and account ids.
pub fn open_request_for(model_id: &str, account: &str) -> Result<String, ModelIdError> {
    Ok(open_request(
        &model_token(model_id)?,
        &model_token(account)?,
    ))
}

/// `batch.<account-token>.<job>`: where a job of `account` publishes its requests.
pub fn batch_request(account_token: &str, job: &str) -> String {
    format!("batch.{account_token}.{job}")
}

/// The account token and job of a `batch.<account-token>.<job>` subject.
pub fn batch_request_parts(subject: &str) -> Option<(&str, &str)> {
    let mut parts = subject.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("batch"), Some(account), Some(job), None)
            if !account.is_empty() && !job.is_empty() =>
        {
            Some((account, job))
        }
        _ => None,
    }
}

/// `breq.closed.<provider>`: closed-model batch work.
pub fn closed_batch_work(provider: Provider) -> String {
    format!("breq.closed.{}", provider.as_str())
}

/// `breq.open.<model-token>.<account-token>`: one cluster's batch queue.
pub fn open_batch_work(model_token: &str, account_token: &str) -> String {
    format!("breq.open.{model_token}.{account_token}")
}

/// `res.<account-token>.<job>.<request>`: a batch request's result.
pub fn batch_result(account_token: &str, job: &str, request_id: Uuid) -> String {
    format!("res.{account_token}.{job}.{request_id}")
}

/// `res.<account-token>.<job>.>`: every result of one job.
pub fn batch_results_of(account_token: &str, job: &str) -> String {
    format!("res.{account_token}.{job}.>")
}

/// `reply.<ingress>.<request>`. The ingress id is generated by the ingress itself
/// (letters and digits), never user input.
pub fn reply(ingress_id: &str, request_id: Uuid) -> String {
    format!("reply.{ingress_id}.{}", request_id.simple())
}

/// The wildcard an ingress subscribes to for all of its replies.
pub fn reply_wildcard(ingress_id: &str) -> String {
    format!("reply.{ingress_id}.*")
}

/// The request id at the end of a reply subject.
pub fn request_id_of_reply(subject: &str) -> Option<Uuid> {
    let last = subject.rsplit('.').next()?;
    Uuid::try_parse(last).ok()
}

/// `cancel.<request>`
pub fn cancel(request_id: Uuid) -> String {
    format!("cancel.{}", request_id.simple())
}

/// The wildcard a worker subscribes to for every cancellation.
pub fn cancel_wildcard() -> &'static str {
    "cancel.*"
}

/// The request id of a `cancel.<request>` subject.
pub fn request_id_of_cancel(subject: &str) -> Option<Uuid> {
    subject
        .strip_prefix("cancel.")
        .and_then(|id| Uuid::try_parse(id).ok())
}

/// `dlq.<stream>.<consumer>`
pub fn dead_letter(stream: &str, consumer: &str) -> String {
    format!("dlq.{stream}.{consumer}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_escape_separators_and_round_trip() {
        let id = "sentence-transformers/all-MiniLM-L6-v2";
        let token = model_token(id).unwrap();
        assert_eq!(token, "sentence-transformers_2Fall-MiniLM-L6-v2");
        assert_eq!(model_id_from_token(&token).as_deref(), Some(id));
        assert_eq!(model_token("a.b").unwrap(), "a_2Eb");
        assert_eq!(model_token("a_2Eb").unwrap(), "a_5F2Eb");
        assert_ne!(model_token("a.b").unwrap(), model_token("a_2Eb").unwrap());
    }

    #[test]
    fn random_ids_round_trip_and_never_break_a_subject() {
        use rand::{Rng, SeedableRng};
        let alphabet: Vec<char> = "aZ09-_./:@+".chars().collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..20_000 {
            let len = rng.random_range(1..=12);
            let id: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let token = model_token(&id).unwrap();
            assert!(!token.contains(['.', '*', '>', ' ']), "{id:?} -> {token:?}");
            assert_eq!(model_id_from_token(&token).as_deref(), Some(id.as_str()));
            // Injective: no two ids share a token.
            if let Some(other) = seen.insert(token.clone(), id.clone()) {
                assert_eq!(other, id, "{other:?} and {id:?} both map to {token:?}");
            }
        }
        assert_eq!(model_id_from_token("a_2"), None);
        assert_eq!(
            model_id_from_token("a_41"),
            None,
            "letters are never escaped"
        );
        assert_eq!(model_id_from_token("a.b"), None);
    }

    #[test]
    fn hostile_ids_are_rejected() {
        for (id, bad) in [
            ("foo.*", '*'),
            ("foo.>", '>'),
            ("a b", ' '),
            ("a\tb", '\t'),
            ("a\nb", '\n'),
            ("mödel", 'ö'),
            ("a\u{0}b", '\u{0}'),
        ] {
            assert_eq!(model_token(id), Err(ModelIdError::BadChar(bad)), "{id:?}");
        }
        assert_eq!(model_token(""), Err(ModelIdError::Empty));
        assert_eq!(model_token(&"a".repeat(201)), Err(ModelIdError::TooLong));
    }

    #[test]
    fn routes_closed_and_open_models() {
        assert_eq!(
            route_model("openai/gpt-4o-mini").unwrap(),
            ModelRoute::Closed {
                provider: Provider::OpenAi,
                upstream_model: "gpt-4o-mini".into()
            }
        );
        assert_eq!(
            route_model("anthropic/claude-x/y").unwrap(),
            ModelRoute::Closed {
                provider: Provider::Anthropic,
                upstream_model: "claude-x/y".into()
            }
        );
        assert_eq!(
            route_model("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap(),
            ModelRoute::Open {
                token: "HuggingFaceTB_2FSmolLM2-135M-Instruct".into()
            }
        );
        assert!(matches!(
            route_model("openai/"),
            Err(ModelIdError::MissingModel(_))
        ));
        assert!(matches!(
            route_model("openai/gpt 4"),
            Err(ModelIdError::BadChar(' '))
        ));
    }

    #[test]
    fn reply_subjects_carry_the_request_id() {
        let id = Uuid::now_v7();
        let subject = reply("ing1", id);
        assert!(subject.starts_with("reply.ing1."));
        assert_eq!(subject.split('.').count(), 3);
        assert_eq!(request_id_of_reply(&subject), Some(id));
        assert_eq!(request_id_of_cancel(&cancel(id)), Some(id));
        assert_eq!(request_id_of_cancel("cancel.nonsense"), None);
        assert_eq!(closed_request(Provider::OpenAi), "req.closed.openai");
        assert_eq!(
            dead_letter("REQUESTS", "translator"),
            "dlq.REQUESTS.translator"
        );
    }
}
