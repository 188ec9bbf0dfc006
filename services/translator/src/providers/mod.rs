//! One module per provider. Each turns a [`schemas::ChatRequest`] into the provider's
//! wire format, calls it with the caller's key, and sends the answer to a
//! [`crate::sink::ChunkSink`]. Errors come back as [`schemas::ErrorBody`] with the kind
//! the ingress maps to a status.

pub mod anthropic;
pub mod gemini;
pub mod openai;

use eventsource_stream::{EventStream, Eventsource};
use futures::{Stream, StreamExt};
use schemas::subjects::Provider;
use schemas::{ChatRequest, ErrorBody, ErrorKind};
use serde::de::DeserializeOwned;

use switchyard_worker::{ChunkSink, SendError};

/// How a provider call ended when it did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// Tell the caller (through the sink) and finish.
    Reply(ErrorBody),
    /// The reply subject is unusable; nothing more can reach the caller.
    Sink(SendError),
    /// The request went on to an open-model fallback, whose worker answers.
    HandedOff,
}

impl From<SendError> for Failure {
    fn from(e: SendError) -> Self {
        Failure::Sink(e)
    }
}

/// The provider clients of one translator process (one HTTP connection pool).
#[derive(Debug, Clone)]
pub struct Providers {
    pub openai: openai::OpenAi,
    pub anthropic: anthropic::Anthropic,
    pub gemini: gemini::Gemini,
}

impl Providers {
    /// Calls `provider` for `request` and sends the answer to `sink`.
    pub async fn chat(
        &self,
        provider: Provider,
        request: &ChatRequest,
        upstream_model: &str,
        key: &str,
        sink: &mut ChunkSink,
        on_first_byte: impl FnOnce(),
    ) -> Result<(), Failure> {
        if let Some(why) = request
            .response_format
            .as_ref()
            .and_then(|f| f.refusal(Some(provider)))
        {
            return Err(Failure::Reply(format_error(why)));
        }
        sink.set_dropped_params(match provider {
            Provider::OpenAi => openai::dropped_params(&request.params),
            Provider::Anthropic => anthropic::dropped_params(&request.params),
            Provider::Google => gemini::dropped_params(&request.params),
        });
        match provider {
            Provider::OpenAi => {
                self.openai
                    .chat(request, upstream_model, key, sink, on_first_byte)
                    .await
            }
            Provider::Anthropic => {
                self.anthropic
                    .chat(request, upstream_model, key, sink, on_first_byte)
                    .await
            }
            Provider::Google => {
                self.gemini
                    .chat(request, upstream_model, key, sink, on_first_byte)
                    .await
            }
        }
    }
}

/// A 400 about the request's `response_format`.
fn format_error(message: impl Into<String>) -> ErrorBody {
    let mut e = ErrorBody::new(ErrorKind::InvalidRequest, message);
    e.param = Some("response_format".into());
    e
}

/// The schema of a `json_schema` response format, parsed; a 400 when it is not a
/// JSON object (the ingress checks it, a batch publisher may not have).
pub(crate) fn response_schema(schema_json: &str) -> Result<serde_json::Value, ErrorBody> {
    match serde_json::from_str::<serde_json::Value>(schema_json) {
        Ok(schema @ serde_json::Value::Object(_)) => Ok(schema),
        _ => Err(format_error(
            "response_format.json_schema.schema is not a JSON Schema object",
        )),
    }
}

/// Reads a provider's error body (its own format) into ours.
pub type ErrorReader =
    fn(status: u16, text: &str, retry_after_ms: Option<u64>, key: &str) -> ErrorBody;

/// Sends a provider request. A transport failure, or an answer that is not 2xx (read
/// with the provider's `error_from_body`), is the failure to report; `on_first_byte`
/// runs as soon as the provider answered.
pub async fn send(
    request: reqwest::RequestBuilder,
    provider: &str,
    key: &str,
    on_first_byte: impl FnOnce(),
    error_from_body: ErrorReader,
) -> Result<reqwest::Response, Failure> {
    let response = request
        .send()
        .await
        .map_err(|e| Failure::Reply(transport_error(provider, &e)))?;
    on_first_byte();
    let status = response.status();
    if !status.is_success() {
        let retry = retry_after_ms(response.headers());
        let text = response.text().await.unwrap_or_default();
        return Err(Failure::Reply(error_from_body(
            status.as_u16(),
            &text,
            retry,
            key,
        )));
    }
    Ok(response)
}

/// Reads a whole (non-streaming) JSON answer.
pub async fn read_json<T: DeserializeOwned>(
    response: reqwest::Response,
    provider: &str,
) -> Result<T, Failure> {
    let text = response
        .text()
        .await
        .map_err(|e| Failure::Reply(transport_error(provider, &e)))?;
    serde_json::from_str(&text).map_err(|e| {
        Failure::Reply(ErrorBody::new(
            ErrorKind::Upstream,
            format!("{provider} answered with a body this gateway cannot read: {e}"),
        ))
    })
}

/// A provider's SSE answer, event by event. A broken connection is an Upstream failure
/// saying the answer may be incomplete; the provider's stream grammar is the caller's.
pub struct Events<S> {
    events: EventStream<S>,
    provider: &'static str,
    terminator: &'static str,
    key: String,
}

impl Events<std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>> {
    /// `terminator` names what ends a complete stream (e.g. `[DONE]`), for messages.
    pub fn new(
        response: reqwest::Response,
        provider: &'static str,
        terminator: &'static str,
        key: &str,
    ) -> Self {
        let body: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>> =
            Box::pin(response.bytes_stream());
        Self {
            events: body.eventsource(),
            provider,
            terminator,
            key: key.to_string(),
        }
    }

    /// The next event's name and non-empty data; `None` when the body ended.
    pub async fn next(&mut self) -> Option<Result<(String, String), Failure>> {
        loop {
            return match self.events.next().await? {
                Ok(event) if event.data.trim().is_empty() => continue,
                Ok(event) => Some(Ok((event.event, event.data))),
                Err(e) => Some(Err(Failure::Reply(ErrorBody::new(
                    ErrorKind::Upstream,
                    format!(
                        "{}'s stream broke before {} ({}): the answer may be incomplete",
                        self.provider,
                        self.terminator,
                        scrub(&e.to_string(), &self.key)
                    ),
                )))),
            };
        }
    }

    /// Parses one event's data.
    pub fn parse<T: DeserializeOwned>(&self, data: &str) -> Result<T, Failure> {
        serde_json::from_str(data.trim()).map_err(|e| {
            Failure::Reply(ErrorBody::new(
                ErrorKind::Upstream,
                format!(
                    "{} sent a stream event this gateway cannot read: {e}",
                    self.provider
                ),
            ))
        })
    }

    /// The failure for a stream that ended without its terminator.
    pub fn ended_early(&self) -> Failure {
        Failure::Reply(ErrorBody::new(
            ErrorKind::Upstream,
            format!(
                "{}'s stream ended before {}: the answer may be incomplete",
                self.provider, self.terminator
            ),
        ))
    }
}

/// Parses a `Retry-After` (seconds) or `retry-after-ms` header into milliseconds.
pub fn retry_after_ms(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        return Some(ms.max(0.0).ceil() as u64);
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| (s.max(0.0) * 1000.0).ceil() as u64)
}

/// The kind of error a provider's HTTP status means for our caller.
pub fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        400 | 422 => ErrorKind::InvalidRequest,
        401 => ErrorKind::Authentication,
        403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        413 => ErrorKind::PayloadTooLarge,
        429 => ErrorKind::RateLimited,
        408 | 504 => ErrorKind::Timeout,
        503 | 529 => ErrorKind::Unavailable,
        _ => ErrorKind::Upstream,
    }
}

/// Removes the caller's key from text a provider sent back (some echo a masked form;
/// never trust that they mask it).
pub fn scrub(text: &str, key: &str) -> String {
    if key.len() >= 4 && text.contains(key) {
        text.replace(key, "<redacted>")
    } else {
        text.to_string()
    }
}

/// An error for a transport failure before any answer.
pub fn transport_error(provider: &str, err: &reqwest::Error) -> ErrorBody {
    let kind = if err.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Upstream
    };
    // reqwest's Display names the URL, never headers: safe to pass on.
    ErrorBody::new(kind, format!("cannot reach {provider}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn retry_after_prefers_milliseconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after_ms(&h), Some(2000));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after_ms(&h), Some(1500));
        assert_eq!(retry_after_ms(&HeaderMap::new()), None);
    }

    #[test]
    fn statuses_map_to_kinds() {
        assert_eq!(kind_for_status(401), ErrorKind::Authentication);
        assert_eq!(kind_for_status(429), ErrorKind::RateLimited);
        assert_eq!(kind_for_status(500), ErrorKind::Upstream);
        assert_eq!(kind_for_status(503), ErrorKind::Unavailable);
    }

    /// A request for `format`, with the given model.
    fn asking(model: &str, format: Option<schemas::ResponseFormat>) -> ChatRequest {
        ChatRequest {
            model: model.into(),
            messages: vec![schemas::Message::text(schemas::Role::User, "hi")],
            params: schemas::Params::default(),
            tools: vec![],
            tool_choice: None,
            stream: false,
            fallback_models: vec![],
            response_format: format,
        }
    }

    const SCHEMA: &str =
        r#"{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}}}"#;

    fn with_schema() -> Option<schemas::ResponseFormat> {
        Some(schemas::ResponseFormat::JsonSchema {
            name: "ev".into(),
            description: Some("an event".into()),
            schema_json: SCHEMA.into(),
            strict: Some(true),
        })
    }

    #[test]
    fn each_provider_gets_the_schema_in_its_own_field_in_the_callers_order() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        let body = openai::request_body(&asking("openai/m", with_schema()), "m").unwrap();
        assert_eq!(
            body["response_format"],
            serde_json::json!({"type": "json_schema", "json_schema": {
                "name": "ev", "description": "an event", "strict": true, "schema": schema}})
        );
        let body = anthropic::request_body(&asking("anthropic/m", with_schema()), "m").unwrap();
        assert_eq!(
            body["output_config"],
            serde_json::json!({"format": {"type": "json_schema", "schema": schema}})
        );
        let body = gemini::request_body(&asking("google/m", with_schema())).unwrap();
        assert_eq!(
            body["generationConfig"],
            serde_json::json!({"responseMimeType": "application/json", "responseJsonSchema": schema})
        );
        // Providers write the properties in the schema's order: it must survive.
        let text = body.to_string();
        assert!(text.find("zeta") < text.find("alpha"), "{text}");
    }

    #[test]
    fn json_mode_and_plain_text() {
        let json = Some(schemas::ResponseFormat::JsonObject);
        let body = openai::request_body(&asking("openai/m", json.clone()), "m").unwrap();
        assert_eq!(
            body["response_format"],
            serde_json::json!({"type": "json_object"})
        );
        let body = gemini::request_body(&asking("google/m", json)).unwrap();
        assert_eq!(
            body["generationConfig"],
            serde_json::json!({"responseMimeType": "application/json"})
        );
        for body in [
            openai::request_body(&asking("openai/m", None), "m").unwrap(),
            anthropic::request_body(&asking("anthropic/m", None), "m").unwrap(),
            gemini::request_body(&asking("google/m", None)).unwrap(),
        ] {
            for field in ["response_format", "output_config", "generationConfig"] {
                assert!(body.get(field).is_none(), "{field} in {body}");
            }
        }
    }

    #[test]
    fn a_schema_that_is_not_an_object_is_a_400_not_free_text() {
        let bad = Some(schemas::ResponseFormat::JsonSchema {
            name: "ev".into(),
            description: None,
            schema_json: "[1]".into(),
            strict: None,
        });
        let errors = [
            openai::request_body(&asking("openai/m", bad.clone()), "m").unwrap_err(),
            anthropic::request_body(&asking("anthropic/m", bad.clone()), "m").unwrap_err(),
            gemini::request_body(&asking("google/m", bad)).unwrap_err(),
        ];
        for e in errors {
            assert_eq!(e.kind, ErrorKind::InvalidRequest);
            assert_eq!(e.param.as_deref(), Some("response_format"));
        }
    }

    #[test]
    fn reasoning_effort_and_one_tool_call_per_turn() {
        let tool = schemas::Tool {
            name: "f".into(),
            description: None,
            parameters_json: None,
        };
        let mut request = asking("openai/m", None);
        request.params.reasoning_effort = Some("high".into());
        request.params.parallel_tool_calls = Some(false);
        // Without tools OpenAI refuses parallel_tool_calls, and it means nothing.
        let body = openai::request_body(&request, "m").unwrap();
        assert_eq!(body["reasoning_effort"], "high");
        assert!(body.get("parallel_tool_calls").is_none(), "{body}");
        assert!(openai::dropped_params(&request.params).is_empty());
        request.tools = vec![tool];
        let body = openai::request_body(&request, "m").unwrap();
        assert_eq!(body["parallel_tool_calls"], false);

        // Anthropic: on the tool choice, `auto` when none was given.
        let body = anthropic::request_body(&request, "m").unwrap();
        assert_eq!(
            body["tool_choice"],
            serde_json::json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        request.tool_choice = Some(schemas::ToolChoice::Required);
        let body = anthropic::request_body(&request, "m").unwrap();
        assert_eq!(
            body["tool_choice"],
            serde_json::json!({"type": "any", "disable_parallel_tool_use": true})
        );
        request.tool_choice = Some(schemas::ToolChoice::None);
        let body = anthropic::request_body(&request, "m").unwrap();
        assert_eq!(body["tool_choice"], serde_json::json!({"type": "none"}));
        request.params.parallel_tool_calls = Some(true);
        request.tool_choice = None;
        let body = anthropic::request_body(&request, "m").unwrap();
        assert!(body.get("tool_choice").is_none(), "{body}");
        assert!(body.get("reasoning_effort").is_none(), "{body}");
        assert_eq!(
            anthropic::dropped_params(&request.params),
            ["reasoning_effort"]
        );

        // Gemini has neither; `true` is its default, so only `false` is lost.
        assert_eq!(
            gemini::dropped_params(&request.params),
            ["reasoning_effort"]
        );
        request.params.parallel_tool_calls = Some(false);
        assert_eq!(
            gemini::dropped_params(&request.params),
            ["reasoning_effort", "parallel_tool_calls"]
        );
    }

    #[test]
    fn openai_options_go_to_openai_are_mapped_or_reported_elsewhere() {
        let mut request = asking("openai/m", None);
        let p = &mut request.params;
        p.service_tier = Some("flex".into());
        p.store = Some(true);
        p.metadata = [("team".to_string(), "a".to_string())].into();
        p.logit_bias = [("50256".to_string(), -100)].into();
        p.prompt_cache_key = Some("pk".into());
        p.safety_identifier = Some("h-1".into());
        p.verbosity = Some("low".into());
        p.user = Some("u-1".into());
        let body = openai::request_body(&request, "m").unwrap();
        for (field, value) in [
            ("service_tier", serde_json::json!("flex")),
            ("store", serde_json::json!(true)),
            ("metadata", serde_json::json!({"team": "a"})),
            ("logit_bias", serde_json::json!({"50256": -100})),
            ("prompt_cache_key", serde_json::json!("pk")),
            ("safety_identifier", serde_json::json!("h-1")),
            ("verbosity", serde_json::json!("low")),
            ("user", serde_json::json!("u-1")),
        ] {
            assert_eq!(body[field], value, "{field}: {body}");
        }
        assert!(openai::dropped_params(&request.params).is_empty());

        // Anthropic: the end user from safety_identifier (ahead of user); flex has no
        // equivalent.
        let body = anthropic::request_body(&request, "m").unwrap();
        assert_eq!(body["metadata"], serde_json::json!({"user_id": "h-1"}));
        assert!(body.get("service_tier").is_none(), "{body}");
        for absent in ["store", "logit_bias", "prompt_cache_key", "verbosity"] {
            assert!(body.get(absent).is_none(), "{absent}: {body}");
        }
        let all_but_the_user = [
            "service_tier",
            "store",
            "metadata",
            "logit_bias",
            "prompt_cache_key",
            "verbosity",
        ];
        // `user` too: metadata.user_id holds one, safety_identifier's.
        let mut dropped = vec!["user"];
        dropped.extend(all_but_the_user);
        assert_eq!(anthropic::dropped_params(&request.params), dropped);
        request.params.user = None;
        assert_eq!(anthropic::dropped_params(&request.params), all_but_the_user);
        request.params.user = Some("u-1".into());
        for (ours, theirs) in [("auto", "auto"), ("default", "standard_only")] {
            request.params.service_tier = Some(ours.into());
            let body = anthropic::request_body(&request, "m").unwrap();
            assert_eq!(body["service_tier"], theirs);
            assert!(!anthropic::dropped_params(&request.params).contains(&"service_tier".into()));
        }

        // Gemini has none of them.
        request.params.service_tier = Some("priority".into());
        let mut all = vec!["user"];
        all.extend(all_but_the_user);
        all.insert(6, "safety_identifier");
        assert_eq!(gemini::dropped_params(&request.params), all);
        // Defaults are not reported: `auto`/`default` tiers, `store: false`.
        request.params = schemas::Params {
            service_tier: Some("default".into()),
            store: Some(false),
            ..Default::default()
        };
        assert!(gemini::dropped_params(&request.params).is_empty());
    }

    #[test]
    fn scrub_removes_the_key() {
        assert_eq!(
            scrub("bad key sk-secret-123", "sk-secret-123"),
            "bad key <redacted>"
        );
    }
}
