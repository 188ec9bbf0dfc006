//! Mock providers speaking the providers' real wire formats, all on one server:
//! OpenAI `POST /v1/chat/completions` ([`openai`]), Anthropic `POST /v1/messages`
//! ([`anthropic`]), Gemini `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent` ([`gemini`]). The paths do not overlap, so one process (and
//! one [`MockConfig`]) serves tests and benchmarks for every provider.

pub mod anthropic;
pub mod gemini;
pub mod openai;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};

pub use openai::MockConfig;

/// What every mock answers when the request asks for JSON (OpenAI's `response_format`,
/// Anthropic's `output_config.format`, Gemini's JSON MIME type): one JSON object holding
/// the last user text and the schema the provider received (`null` in plain JSON mode),
/// so a test can check that the schema arrived intact.
pub(crate) fn json_reply(text: &str, schema: Option<&serde_json::Value>) -> String {
    serde_json::json!({"echo": text, "schema": schema}).to_string()
}

/// The answer of `mock-echo-params`, in every grammar: the request body's top-level
/// fields but `conversation` (the model, the messages, the stream switch), as one JSON
/// object, so a test sees which parameters a provider received and how.
pub(crate) fn echo_params(body: &[u8], conversation: &[&str]) -> String {
    let mut fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).unwrap_or_default();
    fields.retain(|k, _| !conversation.contains(&k.as_str()));
    serde_json::Value::Object(fields).to_string()
}

/// A streamed body in every provider's grammar: each frame is written after its delay;
/// then the body ends, or, with `abort`, fails, so the server cuts the connection
/// mid-body. `dropped`, when given, counts a body the client stopped reading before
/// its end.
pub(crate) fn paced_body(
    frames: Vec<(Duration, Bytes)>,
    abort: bool,
    dropped: Option<Arc<AtomicU64>>,
) -> Body {
    let watch = DropWatch {
        dropped,
        finished: false,
    };
    let stream = futures::stream::unfold(
        (frames.into_iter(), abort, watch),
        |(mut frames, abort, mut watch)| async move {
            if let Some((delay, bytes)) = frames.next() {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                return Some((Ok(bytes), (frames, abort, watch)));
            }
            // Every frame was taken: the mock ended the stream, not the client.
            watch.finished = true;
            if abort {
                // The server writes out what it holds only when the body is pending,
                // and drops it unwritten when the body fails first: one yield (never a
                // timer, which a descheduled thread can find already expired) makes the
                // frames reach the client before the cut.
                tokio::task::yield_now().await;
                let err = io::Error::new(io::ErrorKind::ConnectionAborted, "mock-truncated");
                return Some((Err(err), (frames, false, watch)));
            }
            None
        },
    );
    Body::from_stream(stream)
}

/// Counts, on drop, a stream the client stopped reading before its end.
struct DropWatch {
    dropped: Option<Arc<AtomicU64>>,
    finished: bool,
}

impl Drop for DropWatch {
    fn drop(&mut self) {
        if !self.finished
            && let Some(dropped) = &self.dropped
        {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Every provider's routes, with one fallback (unknown paths get a 404).
pub fn router(config: MockConfig) -> Router {
    let router = openai::router(config.clone());
    let router = anthropic::mount(router, &config);
    let router = gemini::mount(router, &config);
    router.fallback(openai::not_found)
}
