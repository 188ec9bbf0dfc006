//! Mock providers speaking the providers' real wire formats, all on one server:
//! OpenAI `POST /v1/chat/completions` ([`openai`]), Anthropic `POST /v1/messages`
//! ([`anthropic`]), Gemini `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent` ([`gemini`]). The paths do not overlap, so one process (and
//! one [`MockConfig`]) serves tests and benchmarks for every provider.

pub mod anthropic;
pub mod gemini;
pub mod openai;

use axum::Router;

pub use openai::MockConfig;

/// What every mock answers when the request asks for JSON (OpenAI's `response_format`,
/// Anthropic's `output_config.format`, Gemini's JSON MIME type): one JSON object holding
/// the last user text and the schema the provider received (`null` in plain JSON mode),
/// so a test can check that the schema arrived intact.
pub(crate) fn json_reply(text: &str, schema: Option<&serde_json::Value>) -> String {
    serde_json::json!({"echo": text, "schema": schema}).to_string()
}

/// Every provider's routes, with one fallback (unknown paths get a 404).
pub fn router(config: MockConfig) -> Router {
    let router = openai::router(config.clone());
    let router = anthropic::mount(router, &config);
    let router = gemini::mount(router, &config);
    router.fallback(openai::not_found)
}
