//! What the mock answers: deterministic text or tool call derived from the request.

use super::wire::{ChatRequest, Message};

/// Fixed id of the one tool call the mock makes.
pub(crate) const TOOL_CALL_ID: &str = "call_mock_1";

/// The assistant's answer before it is cut into chunks.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `"echo: " + <last user text>`.
    Text(String),
    /// From a last user message `call:<name> <arguments>` when the request has tools.
    ToolCall { name: String, arguments: String },
}

/// Special behaviour selected by the request's model name, the same for every mock.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Magic {
    None,
    /// `mock-error-<status>`.
    Error(u16),
    /// `mock-error-<anything else>`: a typo in a test, answered 400.
    BadError,
    /// `mock-truncated`: two content chunks, then the connection is cut.
    Truncated,
    /// `mock-truncated-clean`: two content chunks, then a clean end without `[DONE]`.
    TruncatedClean,
    /// `mock-slow`: a streamed answer of 50 chunks, 100 ms apart (for callers who leave).
    Slow,
    /// `mock-flaky-<status>`: every other request of this model (the 1st, 3rd, …) fails
    /// with the status, the others answer normally — for retry tests.
    Flaky(u16),
    /// `mock-echo-params`: the answer's text is the request's parameters as received
    /// (every top-level field but the model and the conversation: [`super::super::echo_params`]).
    EchoParams,
}

pub(crate) fn magic(model: &str) -> Magic {
    // Accept the gateway's provider prefixes too, for requests sent straight to a mock.
    let model = ["openai/", "anthropic/", "google/"]
        .iter()
        .find_map(|p| model.strip_prefix(p))
        .unwrap_or(model);
    if let Some(status) = model.strip_prefix("mock-flaky-") {
        return match status.parse::<u16>() {
            Ok(status @ 400..=599) => Magic::Flaky(status),
            _ => Magic::BadError,
        };
    }
    if let Some(status) = model.strip_prefix("mock-error-") {
        return match status.parse::<u16>() {
            Ok(status @ 400..=599) => Magic::Error(status),
            _ => Magic::BadError,
        };
    }
    match model {
        "mock-truncated" => Magic::Truncated,
        "mock-truncated-clean" => Magic::TruncatedClean,
        "mock-slow" => Magic::Slow,
        "mock-echo-params" => Magic::EchoParams,
        _ => Magic::None,
    }
}

/// Text of the last user message; array parts are joined with a space.
pub(crate) fn last_user_text(messages: &[Message]) -> String {
    let Some(content) = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .and_then(|m| m.content.as_ref())
    else {
        return String::new();
    };
    let mut out = String::new();
    for (i, text) in content.texts().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(text);
    }
    out
}

/// Whitespace-separated words across every message's text: the mock's "tokenizer".
pub(crate) fn prompt_tokens(messages: &[Message]) -> u64 {
    let words: usize = messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .flat_map(|c| c.texts())
        .map(|t| t.split_whitespace().count())
        .sum();
    u64::try_from(words).unwrap_or(u64::MAX)
}

pub(crate) fn plan(request: &ChatRequest) -> Reply {
    // A turn that answers a tool call is echoed: the tool result reached the model.
    if let Some(last) = request.messages.last()
        && last.role == "tool"
    {
        let result = last
            .content
            .as_ref()
            .map(|c| c.texts().collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        return Reply::Text(format!("echo: {result}"));
    }
    let text = last_user_text(&request.messages);
    let has_tools = request.tools.as_ref().is_some_and(|t| !t.is_empty());
    if has_tools && let Some(call) = text.strip_prefix("call:") {
        let call = call.trim_start();
        let (name, arguments) = call.split_once(char::is_whitespace).unwrap_or((call, ""));
        let arguments = arguments.trim();
        return Reply::ToolCall {
            name: name.to_owned(),
            arguments: if arguments.is_empty() {
                "{}"
            } else {
                arguments
            }
            .to_owned(),
        };
    }
    match request.response_format.as_ref().map(|f| f.kind.as_str()) {
        Some("json_object") => Reply::Text(crate::mock::json_reply(&text, None)),
        Some("json_schema") => {
            let schema = request
                .response_format
                .as_ref()
                .and_then(|f| f.json_schema.as_ref())
                .and_then(|s| s.schema.as_ref());
            Reply::Text(crate::mock::json_reply(&text, schema))
        }
        _ => Reply::Text(format!("echo: {text}")),
    }
}

/// Cuts `text` into exactly `n` contiguous pieces on char boundaries whose char counts
/// differ by at most one (the first ones are longer). Concatenated they are `text`.
pub(crate) fn split_even(text: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let chars = text.chars().count();
    let (base, extra) = (chars / n, chars % n);
    let mut pieces = Vec::with_capacity(n);
    let mut boundaries = text.char_indices().map(|(i, _)| i).chain([text.len()]);
    let mut start = 0;
    // The first boundary is always 0.
    boundaries.next();
    for i in 0..n {
        let len = base + usize::from(i < extra);
        let end = if len == 0 {
            start
        } else {
            boundaries.nth(len - 1).unwrap_or(text.len())
        };
        pieces.push(&text[start..end]);
        start = end;
    }
    pieces
}

/// How the mock shows a wrong key: like OpenAI, the first 8 and last 4 characters of a
/// long key with stars between; a short key is all stars so it is never echoed whole.
pub(crate) fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 24 {
        return "*".repeat(chars.len().max(1));
    }
    let mut out: String = chars[..8].iter().collect();
    out.extend(std::iter::repeat_n('*', chars.len() - 12));
    out.extend(&chars[chars.len() - 4..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> ChatRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn split_even_covers_text_with_balanced_sizes() {
        let text = "echo: héllo wörld";
        for n in 1..25 {
            let pieces = split_even(text, n);
            assert_eq!(pieces.len(), n);
            assert_eq!(pieces.concat(), text);
            let sizes: Vec<usize> = pieces.iter().map(|p| p.chars().count()).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "n={n} sizes={sizes:?}");
        }
        assert_eq!(split_even("abcdefghij", 4), ["abc", "def", "gh", "ij"]);
        assert_eq!(split_even("ab", 3), ["a", "b", ""]);
    }

    #[test]
    fn echoes_last_user_message_with_parts_joined() {
        let req = request(
            r#"{"model":"m","messages":[
                {"role":"system","content":"be brief"},
                {"role":"user","content":"first question"},
                {"role":"assistant","content":null},
                {"role":"user","content":[{"type":"text","text":"what is"},
                  {"type":"image_url","image_url":{"url":"data:x"}},{"type":"text","text":"this?"}]}
            ]}"#,
        );
        assert_eq!(plan(&req), Reply::Text("echo: what is this?".into()));
        assert_eq!(prompt_tokens(&req.messages), 2 + 2 + 3);
    }

    #[test]
    fn tool_call_only_with_tools() {
        let with = request(
            r#"{"model":"m","tools":[{"type":"function"}],
                "messages":[{"role":"user","content":"call:get_weather {\"city\":\"Paris\"}"}]}"#,
        );
        assert_eq!(
            plan(&with),
            Reply::ToolCall {
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into()
            }
        );
        let without =
            request(r#"{"model":"m","messages":[{"role":"user","content":"call:f {}"}]}"#);
        assert_eq!(plan(&without), Reply::Text("echo: call:f {}".into()));
        let no_args = request(
            r#"{"model":"m","tools":[{}],"messages":[{"role":"user","content":"call:ping"}]}"#,
        );
        assert_eq!(
            plan(&no_args),
            Reply::ToolCall {
                name: "ping".into(),
                arguments: "{}".into()
            }
        );
    }

    #[test]
    fn json_requests_get_json_echoing_the_schema() {
        let schema = r#"{"type":"object","properties":{"a":{"type":"string"}}}"#;
        let with = request(&format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],
                "response_format":{{"type":"json_schema","json_schema":{{"name":"x","schema":{schema}}}}}}}"#
        ));
        let Reply::Text(text) = plan(&with) else {
            panic!("text expected")
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["echo"], "hi");
        assert_eq!(
            v["schema"],
            serde_json::from_str::<serde_json::Value>(schema).unwrap()
        );
        let mode = request(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}"#,
        );
        assert_eq!(
            plan(&mode),
            Reply::Text(r#"{"echo":"hi","schema":null}"#.into())
        );
        let text = request(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"text"}}"#,
        );
        assert_eq!(plan(&text), Reply::Text("echo: hi".into()));
        for (format, param) in [
            (r#"{"type":"json_schema"}"#, "response_format.json_schema"),
            (
                r#"{"type":"json_schema","json_schema":{"schema":{}}}"#,
                "response_format.json_schema.name",
            ),
            (r#"{"type":"xml"}"#, "response_format.type"),
        ] {
            let req = request(&format!(
                r#"{{"model":"m","messages":[],"response_format":{format}}}"#
            ));
            assert_eq!(req.problem().unwrap().1, param);
        }
        let parallel_without_tools =
            request(r#"{"model":"m","messages":[],"parallel_tool_calls":false}"#);
        assert_eq!(
            parallel_without_tools.problem().unwrap().1,
            "parallel_tool_calls"
        );
        let with_tools = request(
            r#"{"model":"m","messages":[],"tools":[{}],"parallel_tool_calls":false,"reasoning_effort":"low"}"#,
        );
        assert_eq!(with_tools.problem(), None);
        let bad_effort = request(r#"{"model":"m","messages":[],"reasoning_effort":"max"}"#);
        assert_eq!(bad_effort.problem().unwrap().1, "reasoning_effort");
        let bad_tier = request(r#"{"model":"m","messages":[],"service_tier":"fast"}"#);
        assert_eq!(
            bad_tier.problem().unwrap(),
            (
                "Invalid value: 'fast'. Supported values are: 'auto', 'default', 'flex', 'scale', and 'priority'.".into(),
                "service_tier"
            )
        );
        let bad_verbosity = request(r#"{"model":"m","messages":[],"verbosity":"max"}"#);
        assert_eq!(bad_verbosity.problem().unwrap().1, "verbosity");
        let many: Vec<String> = (0..17).map(|i| format!(r#""k{i}":"v""#)).collect();
        let metadata = request(&format!(
            r#"{{"model":"m","messages":[],"metadata":{{{}}}}}"#,
            many.join(",")
        ));
        assert!(
            metadata
                .problem()
                .unwrap()
                .0
                .contains("got an object with 17 properties")
        );
        let bias = request(r#"{"model":"m","messages":[],"logit_bias":{"9":-101}}"#);
        assert_eq!(bias.problem().unwrap().1, "logit_bias");
        let fine = request(
            r#"{"model":"m","messages":[],"service_tier":"flex","verbosity":"low","metadata":{"a":"b"},"logit_bias":{"9":-100}}"#,
        );
        assert_eq!(fine.problem(), None);
        // Typed as OpenAI types them: a metadata number or a non-numeric token is a 400.
        for body in [
            r#"{"model":"m","messages":[],"metadata":{"a":1}}"#,
            r#"{"model":"m","messages":[],"logit_bias":{"the":1}}"#,
        ] {
            assert!(serde_json::from_str::<ChatRequest>(body).is_err(), "{body}");
        }
    }

    #[test]
    fn magic_models() {
        assert_eq!(magic("mock-error-429"), Magic::Error(429));
        assert_eq!(magic("anthropic/mock-echo-params"), Magic::EchoParams);
        assert_eq!(magic("openai/mock-error-503"), Magic::Error(503));
        assert_eq!(magic("google/mock-error-503"), Magic::Error(503));
        assert_eq!(magic("anthropic/mock-truncated"), Magic::Truncated);
        assert_eq!(magic("openai/mock-flaky-429"), Magic::Flaky(429));
        assert_eq!(magic("mock-error-200"), Magic::BadError);
        assert_eq!(magic("mock-error-x"), Magic::BadError);
        assert_eq!(magic("mock-truncated"), Magic::Truncated);
        assert_eq!(magic("mock-truncated-clean"), Magic::TruncatedClean);
        assert_eq!(magic("gpt-4o-mini"), Magic::None);
    }

    #[test]
    fn masks_keys_like_openai_and_never_whole() {
        let key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123";
        let masked = mask_key(key);
        assert_eq!(masked.len(), key.len());
        assert!(masked.starts_with("sk-proj-"));
        assert!(masked.ends_with("0123"));
        assert!(!masked.contains("klmnop"));
        assert_eq!(mask_key("sk-short"), "********");
        assert_eq!(mask_key(""), "*");
    }
}
