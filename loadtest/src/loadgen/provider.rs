//! The wire grammars the load generator speaks: where a request goes, what it carries
//! and which headers every request needs. The stream side is in [`super::sse`].
//!
//! - `openai`: `POST <url>` (the chat completions endpoint), `{"model","messages"}`,
//!   streams end with `data: [DONE]`.
//! - `anthropic`: `POST <url>` (the Messages endpoint, `…/v1/messages`),
//!   `{"model","max_tokens","messages"}`, `anthropic-version: 2023-06-01` added unless
//!   given; streams end with a `message_stop` event. The key goes in `x-api-key`.
//! - `gemini`: `POST <url>` where a URL without a `/models/` path is the API root and
//!   gets `/v1beta/models/{model}:generateContent` (or `:streamGenerateContent?alt=sse`)
//!   appended; `{"contents":[{"role":"user","parts":[{"text"}]}]}`; a stream ends with
//!   the chunk that carries a `finishReason`. The key goes in `x-goog-api-key`.

use std::fmt;

use anyhow::{Context, ensure};
use bytes::Bytes;
use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};
use serde::Serialize;

/// `anthropic-version` sent when the caller does not give one.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// `max_tokens` of an Anthropic request (the field is required there).
const ANTHROPIC_MAX_TOKENS: u32 = 1024;

/// Which provider's wire format to speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// OpenAI chat completions (also what Switchyard's ingress speaks).
    #[default]
    #[value(name = "openai")]
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent` / `streamGenerateContent`.
    Gemini,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
        }
    }

    /// The model asked for when none is given: the ingress's OpenAI name for
    /// `openai` (the load generator's historical default), a plain model otherwise.
    pub fn default_model(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai/gpt-4o-mini",
            Provider::Anthropic => "claude-3-5-haiku-latest",
            Provider::Gemini => "gemini-2.0-flash",
        }
    }

    /// The URL every request goes to. Only Gemini changes it: the model and method
    /// are part of its path.
    pub(crate) fn endpoint(self, url: &Url, model: &str, stream: bool) -> anyhow::Result<Url> {
        if self != Provider::Gemini {
            return Ok(url.clone());
        }
        let mut url = url.clone();
        if !url.path().contains("/models/") {
            ensure!(!model.is_empty(), "--model must not be empty");
            let method = if stream {
                "streamGenerateContent"
            } else {
                "generateContent"
            };
            let root = url.path().trim_end_matches('/');
            let root = root.strip_suffix("/v1beta").unwrap_or(root).to_owned();
            url.set_path(&root);
            let mut segments = url
                .path_segments_mut()
                .ok()
                .context("the URL cannot take a path")?;
            segments
                .pop_if_empty()
                .extend(["v1beta", "models", &format!("{model}:{method}")]);
        }
        // The stream reader only speaks SSE; without alt=sse Gemini streams a JSON array.
        if stream && !url.query_pairs().any(|(k, v)| k == "alt" && v == "sse") {
            url.query_pairs_mut().append_pair("alt", "sse");
        }
        Ok(url)
    }

    /// Headers this grammar needs on every request (beyond the caller's).
    pub(crate) fn required_headers(self) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            Provider::Anthropic => vec![(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(ANTHROPIC_VERSION),
            )],
            Provider::OpenAi | Provider::Gemini => Vec::new(),
        }
    }

    /// The request body, the same for every request of a run.
    pub(crate) fn body(self, model: &str, prompt: &str, stream: bool) -> anyhow::Result<Bytes> {
        let body = match self {
            Provider::OpenAi => {
                let mut body = serde_json::json!({
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                });
                if stream {
                    body["stream"] = true.into();
                    body["stream_options"] = serde_json::json!({"include_usage": true});
                }
                body
            }
            Provider::Anthropic => {
                let mut body = serde_json::json!({
                    "model": model,
                    "max_tokens": ANTHROPIC_MAX_TOKENS,
                    "messages": [{"role": "user", "content": prompt}],
                });
                if stream {
                    body["stream"] = true.into();
                }
                body
            }
            // Gemini names the model and streaming in the URL.
            Provider::Gemini => serde_json::json!({
                "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            }),
        };
        Ok(Bytes::from(serde_json::to_vec(&body)?))
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn json(bytes: &Bytes) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn gemini_urls_carry_model_and_method() {
        let g = Provider::Gemini;
        for root in [
            "http://127.0.0.1:9090",
            "http://127.0.0.1:9090/",
            "http://127.0.0.1:9090/v1beta",
            "http://127.0.0.1:9090/v1beta/",
        ] {
            assert_eq!(
                g.endpoint(&url(root), "gemini-2.0-flash", true)
                    .unwrap()
                    .as_str(),
                "http://127.0.0.1:9090/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
                "{root}"
            );
        }
        assert_eq!(
            g.endpoint(&url("http://127.0.0.1:1/p"), "m", false)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:1/p/v1beta/models/m:generateContent"
        );
        // A full URL is kept; a stream still gets alt=sse, once.
        let full = "http://127.0.0.1:1/v1beta/models/x:streamGenerateContent";
        assert_eq!(
            g.endpoint(&url(full), "ignored", true).unwrap().as_str(),
            format!("{full}?alt=sse")
        );
        let with_alt = format!("{full}?alt=sse");
        assert_eq!(
            g.endpoint(&url(&with_alt), "m", true).unwrap().as_str(),
            with_alt
        );
        // A model cannot escape its path segment.
        assert_eq!(
            g.endpoint(&url("http://127.0.0.1:1"), "a/b?c", false)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:1/v1beta/models/a%2Fb%3Fc:generateContent"
        );
        // The other grammars keep the URL as given.
        let openai = url("http://127.0.0.1:1/v1/chat/completions");
        assert_eq!(
            Provider::OpenAi.endpoint(&openai, "m", true).unwrap(),
            openai
        );
    }

    #[test]
    fn bodies_per_grammar() {
        let openai = json(&Provider::OpenAi.body("m", "hi", true).unwrap());
        assert_eq!(openai["model"], "m");
        assert_eq!(openai["messages"][0]["content"], "hi");
        assert_eq!(openai["stream_options"]["include_usage"], true);
        let plain = json(&Provider::OpenAi.body("m", "hi", false).unwrap());
        assert!(plain.get("stream").is_none());

        let anthropic = json(&Provider::Anthropic.body("c", "hi", true).unwrap());
        assert_eq!(anthropic["model"], "c");
        assert_eq!(anthropic["max_tokens"], ANTHROPIC_MAX_TOKENS);
        assert_eq!(anthropic["messages"][0]["role"], "user");
        assert_eq!(anthropic["messages"][0]["content"], "hi");
        assert_eq!(anthropic["stream"], true);
        assert!(anthropic.get("stream_options").is_none());

        let gemini = json(&Provider::Gemini.body("g", "hi", true).unwrap());
        assert_eq!(gemini["contents"][0]["parts"][0]["text"], "hi");
        assert!(gemini.get("model").is_none() && gemini.get("stream").is_none());
    }

    #[test]
    fn anthropic_needs_a_version_header() {
        let headers = Provider::Anthropic.required_headers();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].0, "anthropic-version");
        assert_eq!(headers[0].1, ANTHROPIC_VERSION);
        assert!(Provider::Gemini.required_headers().is_empty());
    }
}
