//! Just enough of an SSE reader to time a stream in each provider's grammar: it finds
//! `data:` lines, spots the events that carry output, the stream's terminator and error
//! events.
//!
//! - OpenAI: output = a chunk with non-empty `delta.content` or a `delta.tool_calls`;
//!   end = `data: [DONE]`.
//! - Anthropic: output = a `content_block_delta` with non-empty text (or tool-input
//!   JSON); end = `message_stop`; an `error` event is an error.
//! - Gemini: output = a chunk whose candidate has a non-empty text part (or a function
//!   call); end = the chunk with a `finishReason` (it may carry output too).
//!
//! Any grammar: a `data:` line that is not JSON, a body with an `error` member, or an
//! `event: error` line is an error. Each event's data is one line (all three providers
//! send JSON on one line).

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::provider::Provider;

/// What one piece of the body contained.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// Events that carried output.
    pub tokens: usize,
    /// The grammar's terminator arrived.
    pub done: bool,
    /// An error event, or a `data:` line that is not JSON.
    pub error: bool,
}

/// Line splitter that keeps a partial line between body pieces.
#[derive(Debug)]
pub(crate) struct Scanner {
    grammar: Provider,
    partial: Vec<u8>,
}

impl Scanner {
    pub(crate) fn new(grammar: Provider) -> Self {
        Scanner {
            grammar,
            partial: Vec::new(),
        }
    }

    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Seen {
        let mut seen = Seen::default();
        let mut rest = bytes;
        if !self.partial.is_empty() {
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                self.partial.extend_from_slice(rest);
                return seen;
            };
            self.partial.extend_from_slice(&rest[..end]);
            let line = std::mem::take(&mut self.partial);
            line_seen(self.grammar, &line, &mut seen);
            rest = &rest[end + 1..];
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            line_seen(self.grammar, &rest[..end], &mut seen);
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        seen
    }
}

fn line_seen(grammar: Provider, line: &[u8], seen: &mut Seen) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        if line.starts_with(b"event: error") || line.starts_with(b"event:error") {
            seen.error = true;
        }
        return;
    };
    let data = data.strip_prefix(b" ").unwrap_or(data);
    let parsed = match grammar {
        Provider::OpenAi => openai(data),
        Provider::Anthropic => anthropic(data),
        Provider::Gemini => gemini(data),
    };
    match parsed {
        Some(event) => {
            seen.tokens += usize::from(event.output);
            seen.done |= event.done;
            seen.error |= event.error;
        }
        None => seen.error = true,
    }
}

/// One `data:` payload, classified; `None` = not JSON.
#[derive(Default)]
struct Event {
    output: bool,
    done: bool,
    error: bool,
}

fn non_empty(text: Option<&Cow<'_, str>>) -> bool {
    text.is_some_and(|t| !t.is_empty())
}

// ---- OpenAI ----

#[derive(Deserialize)]
struct OpenAiChunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<OpenAiChoice<'a>>>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct OpenAiChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<OpenAiDelta<'a>>,
}

#[derive(Deserialize)]
struct OpenAiDelta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
}

fn openai(data: &[u8]) -> Option<Event> {
    if data == b"[DONE]" {
        return Some(Event {
            done: true,
            ..Event::default()
        });
    }
    let chunk: OpenAiChunk<'_> = serde_json::from_slice(data).ok()?;
    let output = chunk.choices.iter().flatten().any(|c| {
        c.delta
            .as_ref()
            .is_some_and(|d| d.tool_calls.is_some() || non_empty(d.content.as_ref()))
    });
    Some(Event {
        output,
        done: false,
        error: chunk.error.is_some(),
    })
}

// ---- Anthropic ----

#[derive(Deserialize)]
struct AnthropicEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    delta: Option<AnthropicDelta<'a>>,
}

#[derive(Deserialize)]
struct AnthropicDelta<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
}

fn anthropic(data: &[u8]) -> Option<Event> {
    let event: AnthropicEvent<'_> = serde_json::from_slice(data).ok()?;
    Some(match &*event.kind {
        "content_block_delta" => Event {
            output: event
                .delta
                .as_ref()
                .is_some_and(|d| non_empty(d.text.as_ref()) || non_empty(d.partial_json.as_ref())),
            ..Event::default()
        },
        "message_stop" => Event {
            done: true,
            ..Event::default()
        },
        "error" => Event {
            error: true,
            ..Event::default()
        },
        // message_start, content_block_start/stop, message_delta, ping, and any event
        // type added later (Anthropic says to ignore unknown ones).
        _ => Event::default(),
    })
}

// ---- Gemini ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiChunk<'a> {
    #[serde(default, borrow)]
    candidates: Option<Vec<GeminiCandidate<'a>>>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiCandidate<'a> {
    #[serde(default, borrow)]
    content: Option<GeminiContent<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct GeminiContent<'a> {
    #[serde(default, borrow)]
    parts: Option<Vec<GeminiPart<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiPart<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    function_call: Option<IgnoredAny>,
}

fn gemini(data: &[u8]) -> Option<Event> {
    let chunk: GeminiChunk<'_> = serde_json::from_slice(data).ok()?;
    let candidates = chunk.candidates.iter().flatten();
    let output = candidates.clone().any(|c| {
        c.content
            .iter()
            .flat_map(|content| content.parts.iter().flatten())
            .any(|p| p.function_call.is_some() || non_empty(p.text.as_ref()))
    });
    let done = candidates
        .clone()
        .any(|c| non_empty(c.finish_reason.as_ref()));
    Some(Event {
        output,
        done,
        error: chunk.error.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` split at every byte offset; returns (tokens, done, error) summed.
    fn every_split(grammar: Provider, body: &[u8]) -> (usize, bool, bool) {
        let mut whole = Scanner::new(grammar);
        let once = whole.feed(body);
        for split in 0..body.len() {
            let mut scanner = Scanner::new(grammar);
            let a = scanner.feed(&body[..split]);
            let b = scanner.feed(&body[split..]);
            assert_eq!(a.tokens + b.tokens, once.tokens, "split at {split}");
            assert_eq!(a.done || b.done, once.done, "split at {split}");
            assert_eq!(a.error || b.error, once.error, "split at {split}");
        }
        (once.tokens, once.done, once.error)
    }

    #[test]
    fn openai_counts_output_chunks_across_split_reads() {
        let body = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"he\\\"llo\"}}]}\r\n\r\n",
            ": keep-alive\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n",
            "data: [DONE]\n\n",
        );
        assert_eq!(
            every_split(Provider::OpenAi, body.as_bytes()),
            (2, true, false)
        );
    }

    #[test]
    fn anthropic_counts_text_deltas_and_ends_at_message_stop() {
        let body = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"ec\\u0068o\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        assert_eq!(
            every_split(Provider::Anthropic, body.as_bytes()),
            (2, true, false)
        );
        // Without message_stop the stream is not done.
        let cut = &body[..body.find("event: message_stop").unwrap()];
        assert_eq!(
            every_split(Provider::Anthropic, cut.as_bytes()),
            (2, false, false)
        );
    }

    #[test]
    fn anthropic_error_events() {
        let body = concat!(
            "event: error\n",
            "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        assert_eq!(
            every_split(Provider::Anthropic, body.as_bytes()),
            (0, false, true)
        );
        // Even without the event line, the data says so.
        let mut scanner = Scanner::new(Provider::Anthropic);
        assert!(scanner.feed(b"data: {\"type\":\"error\"}\n").error);
        assert!(scanner.feed(b"data: [DONE]\n").error);
    }

    #[test]
    fn gemini_counts_text_chunks_and_ends_at_finish_reason() {
        let chunk = |text: &str, finish: bool| {
            let finish = if finish {
                ",\"finishReason\":\"STOP\""
            } else {
                ""
            };
            format!(
                "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{text}\"}}],\"role\":\"model\"}},\"index\":0{finish}}}],\"usageMetadata\":{{\"promptTokenCount\":2}},\"modelVersion\":\"m\"}}\r\n\r\n"
            )
        };
        let body = [
            chunk("ec", false),
            chunk("", false),
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":{}}}]}}]}\r\n\r\n".to_owned(),
            chunk("ho", true),
        ]
        .concat();
        assert_eq!(
            every_split(Provider::Gemini, body.as_bytes()),
            (3, true, false)
        );
        let cut = [chunk("ec", false), chunk("ho", false)].concat();
        assert_eq!(
            every_split(Provider::Gemini, cut.as_bytes()),
            (2, false, false)
        );
        // A finish with no text still ends the stream.
        let bare = "data: {\"candidates\":[{\"finishReason\":\"MAX_TOKENS\"}]}\n\n";
        assert_eq!(
            every_split(Provider::Gemini, bare.as_bytes()),
            (0, true, false)
        );
    }

    #[test]
    fn flags_errors_in_every_grammar() {
        for grammar in [Provider::OpenAi, Provider::Anthropic, Provider::Gemini] {
            let mut scanner = Scanner::new(grammar);
            let seen = scanner.feed(b"data: not json\n\n");
            assert!(seen.error, "{grammar}");
            let seen = scanner.feed(b"event: error\ndata: {}\n\n");
            assert!(seen.error, "{grammar}");
        }
        for grammar in [Provider::OpenAi, Provider::Gemini] {
            let mut scanner = Scanner::new(grammar);
            let seen = scanner.feed(b"data: {\"error\":{\"code\":500,\"message\":\"x\"}}\n\n");
            assert!(seen.error, "{grammar}");
        }
    }
}
