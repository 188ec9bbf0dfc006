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

/// Every provider's routes, with one fallback (unknown paths get a 404).
pub fn router(config: MockConfig) -> Router {
    let router = openai::router(config.clone());
    let router = anthropic::mount(router, &config);
    let router = gemini::mount(router, &config);
    router.fallback(openai::not_found)
}
