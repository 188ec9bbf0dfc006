//! `POST /v1/embeddings`, OpenAI-compatible, served by the catalog's
//! feature-extraction models on our own inference workers
//! (`sentence-transformers/all-MiniLM-L6-v2`). Authentication, the body limit, the rate
//! limit, metrics and the pipeline (route, seal, publish, reply chunks) are those of
//! `/v1/chat/completions`; no `provider-key` is needed (one sent is not forwarded).
//!
//! Request body:
//!
//! ```json
//! {"model": "sentence-transformers/all-MiniLM-L6-v2",
//!  "input": "one text" | ["text", "text", …],      // 1 to 2048 non-empty texts
//!  "encoding_format": "float" | "base64",            // optional, default "float"
//!  "dimensions": 384,                                // optional: must be the model's own size
//!  "user": "…"}                                      // optional
//! ```
//!
//! Token-id input (`[1, 2, 3]` or `[[1, 2], [3]]`) is a 400: only text is accepted,
//! since the ids of OpenAI's tokenizer mean nothing to our models. `dimensions` other
//! than the model's native size is a 400: our models are not Matryoshka-trained, so a
//! truncated vector would not be an honest embedding. The native size is not in the
//! catalog, so this is checked against the vectors the worker returns.
//!
//! Answer, 200:
//!
//! ```json
//! {"object": "list",
//!  "data": [{"object": "embedding", "index": 0, "embedding": [0.0123, …] | "<base64>"}, …],
//!  "model": "sentence-transformers/all-MiniLM-L6-v2",
//!  "usage": {"prompt_tokens": 7, "total_tokens": 7},
//!  "provider": "switchyard"}
//! ```
//!
//! `data` is in input order (`index` = position in `input`). With `"base64"` each
//! embedding is the base64 of its little-endian f32 bytes — what the official `openai`
//! Python SDK asks for by default and decodes. Errors are OpenAI-shaped, as on the chat
//! route.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use schemas::{ChatRequest, ErrorKind, Params, TaskInput, TaskOutput};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

use crate::error::ApiError;
use crate::openai;
use crate::routes::{self, Dispatched, Shared};

/// The `route` label of this route's metrics.
const ROUTE: &str = "embeddings";

/// Most texts one request may embed (OpenAI's limit too).
pub const MAX_INPUTS: usize = 2048;

/// The body of `POST /v1/embeddings`, as OpenAI documents it; an unknown field is a 400.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// A string or a list of strings; read as JSON to say exactly what is wrong.
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<u32>,
    #[serde(default)]
    pub user: Option<String>,
    /// Fallbacks, as on the chat route: open models that embed (no closed model does).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Refused: endpoints are the operator's.
    #[serde(
        default,
        alias = "api_base",
        alias = "baseURL",
        alias = "api_url",
        alias = "endpoint"
    )]
    pub base_url: Option<serde::de::IgnoredAny>,
}

/// How the vectors are written in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    /// JSON numbers.
    Float,
    /// Base64 of the little-endian f32 bytes.
    Base64,
}

/// A validated embeddings request.
#[derive(Debug)]
pub struct EmbeddingsJob {
    /// The envelope's request: the model, `user`, the fallbacks; no messages.
    pub request: ChatRequest,
    pub inputs: Vec<String>,
    pub format: EncodingFormat,
    pub dimensions: Option<u32>,
}

fn invalid(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::new(ErrorKind::InvalidRequest, message).with_param(param)
}

/// The texts of an `input` (or the unified route's `inputs`): a string or a list of
/// 1 to [`MAX_INPUTS`] strings, none empty. Token ids are refused with a message
/// saying only text is accepted.
pub(crate) fn texts(value: Value, param: &str) -> Result<Vec<String>, ApiError> {
    let token_ids = || {
        invalid(
            format!(
                "'{param}' must be text (a string or a list of strings): token-id arrays are not accepted, send the text itself"
            ),
            param,
        )
    };
    let items = match value {
        Value::String(s) if s.is_empty() => {
            return Err(invalid(
                format!("'{param}' must not be an empty string"),
                param,
            ));
        }
        Value::String(s) => return Ok(vec![s]),
        Value::Array(items) => items,
        Value::Number(_) => return Err(token_ids()),
        Value::Null => {
            return Err(invalid(
                format!("missing required parameter: '{param}'"),
                param,
            ));
        }
        Value::Bool(_) | Value::Object(_) => {
            return Err(invalid(
                format!("'{param}' must be a string or a list of strings"),
                param,
            ));
        }
    };
    if items.is_empty() {
        return Err(invalid(
            format!("'{param}' must not be an empty list"),
            param,
        ));
    }
    if items.len() > MAX_INPUTS {
        return Err(invalid(
            format!(
                "'{param}' takes at most {MAX_INPUTS} texts per request, got {}",
                items.len()
            ),
            param,
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = format!("{param}[{i}]");
        match item {
            Value::String(s) if s.is_empty() => {
                return Err(invalid(format!("'{at}' must not be an empty string"), &at));
            }
            Value::String(s) => out.push(s),
            Value::Number(_) | Value::Array(_) => return Err(token_ids()),
            _ => return Err(invalid(format!("'{at}' must be a string"), &at)),
        }
    }
    Ok(out)
}

/// Validates the body and converts it to the envelope's request and the texts.
pub fn normalize(req: EmbeddingsRequest) -> Result<EmbeddingsJob, ApiError> {
    if req.base_url.is_some() {
        return Err(openai::base_url_override("base_url"));
    }
    let model = match req.model {
        Some(m) if !m.trim().is_empty() => m,
        _ => return Err(invalid("you must provide a model parameter", "model")),
    };
    let inputs = texts(req.input.unwrap_or(Value::Null), "input")?;
    let format = match req.encoding_format.as_deref() {
        None | Some("float") => EncodingFormat::Float,
        Some("base64") => EncodingFormat::Base64,
        Some(other) => {
            return Err(invalid(
                format!("'encoding_format' must be \"float\" or \"base64\", got {other:?}"),
                "encoding_format",
            ));
        }
    };
    if req.dimensions == Some(0) {
        return Err(invalid("'dimensions' must be at least 1", "dimensions"));
    }
    let fallback_models = openai::fallbacks(&model, req.models)?;
    Ok(EmbeddingsJob {
        request: ChatRequest {
            model,
            messages: Vec::new(),
            params: Params {
                user: req.user,
                ..Params::default()
            },
            tools: Vec::new(),
            tool_choice: None,
            stream: false,
            fallback_models,
            response_format: None,
        },
        inputs,
        format,
        dimensions: req.dimensions,
    })
}

/// The vectors of a worker's answer to `inputs` texts: one each, all of one length.
pub(crate) fn vectors_of(output: TaskOutput, inputs: usize) -> Result<Vec<Vec<f32>>, ApiError> {
    match output {
        TaskOutput::FeatureExtraction { embeddings }
            if embeddings.len() == inputs
                && embeddings.first().is_some_and(|v| {
                    !v.is_empty() && embeddings.iter().all(|e| e.len() == v.len())
                }) =>
        {
            Ok(embeddings)
        }
        other => Err(routes::internal(format!(
            "a worker answered {other:?} to {inputs} texts to embed"
        ))),
    }
}

/// A 400 when the caller asked for a size other than the model's own.
pub(crate) fn check_dimensions(
    model: &str,
    requested: Option<u32>,
    native: usize,
) -> Result<(), ApiError> {
    match requested {
        Some(d) if d as usize != native => Err(invalid(
            format!(
                "'dimensions' is {d}, but '{model}' makes {native}-dimensional embeddings and cannot shorten them: it is not a Matryoshka model, so a truncated vector would not be an honest embedding of the text; leave 'dimensions' out or set it to {native}"
            ),
            "dimensions",
        )),
        _ => Ok(()),
    }
}

/// Base64 of the vector's little-endian f32 bytes, as OpenAI's `base64` format is.
pub fn base64_f32_le(vector: &[f32]) -> String {
    let mut bytes = Vec::with_capacity(vector.len() * 4);
    for x in vector {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The answer's body. Typed, not `serde_json::Value`, so f32s are written in their
/// shortest form (`0.1`, not `0.10000000149011612`).
#[derive(Debug, Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: &'a str,
    usage: EmbeddingUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: Embedding,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    state.metrics.in_flight.inc();
    let response = match handle(&state, &headers, body, started).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    state.metrics.in_flight.dec();
    routes::record(&state, ROUTE, response.status(), false, started);
    response
}

async fn handle(
    state: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    started: Instant,
) -> Result<Response, ApiError> {
    let account = routes::authenticate(state, headers).await?;
    let body = routes::read_body(state, body)?;
    let job = normalize(openai::parse_json(&body)?)?;
    let count = job.inputs.len();
    let mut prepared = routes::prepare(
        state,
        headers,
        job.request,
        Some(TaskInput::FeatureExtraction { inputs: job.inputs }),
        account,
    )?;
    let span = tracing::info_span!(
        "embeddings",
        request_id = %prepared.request_id,
        model = %prepared.model,
        inputs = count
    );
    async move {
        let Dispatched {
            mut registration,
            first,
            mut cancel,
        } = routes::dispatch(state, &mut prepared, ROUTE, started).await?;
        let headers = routes::answer_headers(prepared.request_id, &first);
        let provider = first.provider.clone();
        let reply = routes::collect_output(&mut registration, first, prepared.deadline).await?;
        cancel.disarm();
        let vectors = vectors_of(reply.output, count)?;
        let native = vectors.first().map_or(0, Vec::len);
        check_dimensions(&prepared.model, job.dimensions, native)?;
        let tokens = reply.usage.map_or(0, |u| u.input_tokens);
        let data = vectors
            .into_iter()
            .enumerate()
            .map(|(index, v)| EmbeddingItem {
                object: "embedding",
                index,
                embedding: match job.format {
                    EncodingFormat::Float => Embedding::Float(v),
                    EncodingFormat::Base64 => Embedding::Base64(base64_f32_le(&v)),
                },
            })
            .collect();
        let body = EmbeddingList {
            object: "list",
            data,
            model: &prepared.model,
            usage: EmbeddingUsage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
            provider: provider.as_deref(),
        };
        Ok((headers, axum::Json(body)).into_response())
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<EmbeddingsJob, ApiError> {
        normalize(openai::parse_json(body.as_bytes())?)
    }

    fn param(body: &str) -> Option<String> {
        parse(body).unwrap_err().0.param
    }

    #[test]
    fn a_string_or_a_list_of_strings() {
        let j = parse(r#"{"model":"m/x","input":"hello"}"#).unwrap();
        assert_eq!(j.inputs, ["hello"]);
        assert_eq!(j.format, EncodingFormat::Float);
        assert!(j.request.messages.is_empty());
        let j = parse(
            r#"{"model":"m/x","input":["a","b"],"encoding_format":"base64","dimensions":384,"user":"u1"}"#,
        )
        .unwrap();
        assert_eq!(j.inputs, ["a", "b"]);
        assert_eq!(j.format, EncodingFormat::Base64);
        assert_eq!(j.dimensions, Some(384));
        assert_eq!(j.request.params.user.as_deref(), Some("u1"));
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let e = parse(r#"{"model":"m/x","input":[[1,2,3]]}"#).unwrap_err();
        assert!(e.0.message.contains("token-id"), "{}", e.0.message);
        assert_eq!(e.0.param.as_deref(), Some("input"));
        assert_eq!(
            param(r#"{"model":"m/x","input":[1,2]}"#).as_deref(),
            Some("input")
        );
        assert_eq!(
            param(r#"{"model":"m/x","input":""}"#).as_deref(),
            Some("input")
        );
        assert_eq!(
            param(r#"{"model":"m/x","input":[]}"#).as_deref(),
            Some("input")
        );
        assert_eq!(param(r#"{"model":"m/x"}"#).as_deref(), Some("input"));
        assert_eq!(
            param(r#"{"model":"m/x","input":["a",""]}"#).as_deref(),
            Some("input[1]")
        );
        assert_eq!(
            param(r#"{"model":"m/x","input":["a",{}]}"#).as_deref(),
            Some("input[1]")
        );
        let many = serde_json::json!({"model": "m/x", "input": vec!["x"; MAX_INPUTS + 1]});
        let e = parse(&many.to_string()).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("input"));
        assert!(e.0.message.contains("2048"), "{}", e.0.message);
        assert_eq!(param(r#"{"input":"x"}"#).as_deref(), Some("model"));
        assert_eq!(
            param(r#"{"model":"m/x","input":"x","encoding_format":"int8"}"#).as_deref(),
            Some("encoding_format")
        );
        assert_eq!(
            param(r#"{"model":"m/x","input":"x","dimensions":0}"#).as_deref(),
            Some("dimensions")
        );
        assert_eq!(
            param(r#"{"model":"m/x","input":"x","dimensions":-5}"#).as_deref(),
            Some("dimensions")
        );
        assert_eq!(
            param(r#"{"model":"m/x","input":"x","api_base":"http://evil"}"#).as_deref(),
            Some("base_url")
        );
    }

    #[test]
    fn base64_is_little_endian_f32() {
        // 1.0f32 = 0x3f800000 → bytes 00 00 80 3f.
        assert_eq!(base64_f32_le(&[1.0]), "AACAPw==");
        let v = [0.1f32, -2.5, 3.25e-7];
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(base64_f32_le(&v))
            .unwrap();
        let back: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, v);
    }

    #[test]
    fn answers_are_checked() {
        let ok = TaskOutput::FeatureExtraction {
            embeddings: vec![vec![1.0, 2.0], vec![3.0, 4.0]],
        };
        assert_eq!(vectors_of(ok.clone(), 2).unwrap().len(), 2);
        assert!(vectors_of(ok, 3).is_err());
        let ragged = TaskOutput::FeatureExtraction {
            embeddings: vec![vec![1.0, 2.0], vec![3.0]],
        };
        assert!(vectors_of(ragged, 2).is_err());
        let wrong = TaskOutput::ZeroShotClassification {
            labels: vec!["a".into()],
            scores: vec![1.0],
        };
        assert!(vectors_of(wrong, 1).is_err());
        assert!(check_dimensions("m", None, 384).is_ok());
        assert!(check_dimensions("m", Some(384), 384).is_ok());
        let e = check_dimensions("m", Some(128), 384).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("dimensions"));
        assert!(e.0.message.contains("384"), "{}", e.0.message);
        assert!(e.0.message.contains("Matryoshka"), "{}", e.0.message);
    }

    #[test]
    fn floats_are_written_short() {
        let body = EmbeddingList {
            object: "list",
            data: vec![EmbeddingItem {
                object: "embedding",
                index: 0,
                embedding: Embedding::Float(vec![0.1, -0.25]),
            }],
            model: "m",
            usage: EmbeddingUsage {
                prompt_tokens: 2,
                total_tokens: 2,
            },
            provider: Some("switchyard"),
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.25]}],"model":"m","usage":{"prompt_tokens":2,"total_tokens":2},"provider":"switchyard"}"#
        );
    }
}
