//! What the Gemini mock reads from a request and what it answers: deterministic text or
//! a function call derived from the request.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

// ---- request (only what the mock needs; everything else is ignored) ----

/// `GenerateContentRequest`, Gemini's camelCase field names.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GenerateRequest {
    #[serde(default)]
    pub contents: Vec<Content>,
    #[serde(default)]
    pub system_instruction: Option<Content>,
    #[serde(default)]
    pub tools: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    pub generation_config: Option<GenerationConfig>,
}

/// The part of `generationConfig` the mock reads: JSON output and its schema.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GenerationConfig {
    #[serde(default)]
    pub response_mime_type: Option<String>,
    #[serde(default)]
    pub response_json_schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Content {
    /// `user` or `model`; absent means `user` (single-turn requests often omit it).
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub parts: Vec<Part>,
}

/// A part is a union: exactly one of these fields is set (the mock only reads two).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Part {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub function_response: Option<FunctionResponse>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct FunctionResponse {
    #[serde(default)]
    pub response: Option<Value>,
}

impl Content {
    fn is_user(&self) -> bool {
        self.role.as_deref().is_none_or(|r| r == "user")
    }

    fn texts(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| p.text.as_deref())
    }
}

// ---- the answer ----

/// The model's answer before it is cut into chunks.
#[derive(Debug, PartialEq)]
pub(crate) enum Reply {
    /// `"echo: " + <last user text>`.
    Text(String),
    /// From a last user text `call:<name> <json args>` when the request has tools.
    FunctionCall {
        name: String,
        args: Map<String, Value>,
    },
}

/// Whitespace-separated words over `systemInstruction` and every content's text parts.
pub(crate) fn prompt_tokens(request: &GenerateRequest) -> u64 {
    let words: usize = request
        .system_instruction
        .iter()
        .chain(&request.contents)
        .flat_map(Content::texts)
        .map(|t| t.split_whitespace().count())
        .sum();
    u64::try_from(words).unwrap_or(u64::MAX)
}

/// The answer, or a message for a 400 when a `call:` line has arguments that are not a
/// JSON object (Gemini's `args` is always an object).
pub(crate) fn plan(request: &GenerateRequest) -> Result<Reply, String> {
    let Some(last) = request.contents.iter().rev().find(|c| c.is_user()) else {
        return Ok(Reply::Text("echo: ".to_owned()));
    };
    let text = last.texts().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        // A turn that only returns function results: echo the first result, so a tool
        // round trip has a checkable answer.
        if let Some(response) = last.parts.iter().find_map(|p| p.function_response.as_ref()) {
            let result = response.response.clone().unwrap_or(Value::Null);
            return Ok(Reply::Text(format!("echo: {result}")));
        }
    }
    let has_tools = request.tools.as_ref().is_some_and(|t| !t.is_empty());
    if has_tools && let Some(call) = text.strip_prefix("call:") {
        let call = call.trim_start();
        let (name, args) = call.split_once(char::is_whitespace).unwrap_or((call, ""));
        let args = args.trim();
        let args = if args.is_empty() {
            Map::new()
        } else {
            match serde_json::from_str::<Value>(args) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Err(format!(
                        "mock: the arguments of call:{name} must be a JSON object"
                    ));
                }
            }
        };
        return Ok(Reply::FunctionCall {
            name: name.to_owned(),
            args,
        });
    }
    let config = request.generation_config.as_ref();
    let mime = config.and_then(|c| c.response_mime_type.as_deref());
    let schema = config.and_then(|c| c.response_json_schema.as_ref());
    match mime {
        Some("application/json") => Ok(Reply::Text(crate::mock::json_reply(&text, schema))),
        // Gemini: a response schema needs a JSON MIME type.
        _ if schema.is_some() => Err(
            "* GenerationConfig.response_json_schema: responseJsonSchema requires responseMimeType to be application/json\n"
                .into(),
        ),
        _ => Ok(Reply::Text(format!("echo: {text}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> GenerateRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn echoes_the_last_user_text_and_counts_words() {
        let req = request(
            r#"{"systemInstruction":{"parts":[{"text":"be brief"}]},
                "contents":[{"role":"user","parts":[{"text":"hi there"}]},
                            {"role":"model","parts":[{"text":"hello you"}]},
                            {"parts":[{"text":"what"},{"inlineData":{"mimeType":"image/png","data":"AA=="}},{"text":"is this?"}]}]}"#,
        );
        assert_eq!(plan(&req), Ok(Reply::Text("echo: what is this?".into())));
        assert_eq!(prompt_tokens(&req), 2 + 2 + 2 + 3);
    }

    #[test]
    fn json_mime_type_answers_json_and_a_schema_needs_it() {
        let schema = request(
            r#"{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{
                "responseMimeType":"application/json","responseJsonSchema":{"type":"object"}}}"#,
        );
        assert_eq!(
            plan(&schema),
            Ok(Reply::Text(
                r#"{"echo":"hi","schema":{"type":"object"}}"#.into()
            ))
        );
        let mode = request(
            r#"{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"responseMimeType":"application/json"}}"#,
        );
        assert_eq!(
            plan(&mode),
            Ok(Reply::Text(r#"{"echo":"hi","schema":null}"#.into()))
        );
        let no_mime = request(
            r#"{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"responseJsonSchema":{}}}"#,
        );
        assert!(plan(&no_mime).unwrap_err().contains("responseMimeType"));
    }

    #[test]
    fn function_calls_only_with_tools() {
        let with = request(
            r#"{"tools":[{"functionDeclarations":[]}],
                "contents":[{"role":"user","parts":[{"text":"call:get_weather {\"city\":\"Paris\"}"}]}]}"#,
        );
        let Ok(Reply::FunctionCall { name, args }) = plan(&with) else {
            panic!("expected a function call");
        };
        assert_eq!(name, "get_weather");
        assert_eq!(args["city"], "Paris");
        let without = request(r#"{"contents":[{"role":"user","parts":[{"text":"call:f {}"}]}]}"#);
        assert_eq!(plan(&without), Ok(Reply::Text("echo: call:f {}".into())));
        let bad = request(
            r#"{"tools":[{}],"contents":[{"role":"user","parts":[{"text":"call:f [1]"}]}]}"#,
        );
        assert!(plan(&bad).is_err());
    }

    #[test]
    fn a_function_result_turn_echoes_the_result() {
        let req = request(
            r#"{"tools":[{}],"contents":[
                {"role":"user","parts":[{"text":"call:f {}"}]},
                {"role":"model","parts":[{"functionCall":{"name":"f","args":{}}}]},
                {"role":"user","parts":[{"functionResponse":{"name":"f","response":{"temp":21}}}]}]}"#,
        );
        assert_eq!(plan(&req), Ok(Reply::Text(r#"echo: {"temp":21}"#.into())));
    }
}
