//! Just enough of an SSE reader to time a chat completions stream: it finds `data:`
//! lines, spots the chunks that carry output (content or tool-call deltas), the
//! `[DONE]` sentinel, and error events.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// What one piece of the body contained.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// Events that carried output (non-empty content or a tool-call delta).
    pub tokens: usize,
    /// `data: [DONE]` arrived.
    pub done: bool,
    /// An error event, or a `data:` line that is not JSON.
    pub error: bool,
}

/// Line splitter that keeps a partial line between body pieces.
#[derive(Debug, Default)]
pub(crate) struct Scanner {
    partial: Vec<u8>,
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChoiceProbe<'a>>>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ChoiceProbe<'a> {
    #[serde(default, borrow)]
    delta: Option<DeltaProbe<'a>>,
}

#[derive(Deserialize)]
struct DeltaProbe<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
}

impl Scanner {
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
            line_seen(&line, &mut seen);
            rest = &rest[end + 1..];
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            line_seen(&rest[..end], &mut seen);
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        seen
    }
}

fn line_seen(line: &[u8], seen: &mut Seen) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        if line.starts_with(b"event: error") {
            seen.error = true;
        }
        return;
    };
    let data = data.strip_prefix(b" ").unwrap_or(data);
    if data == b"[DONE]" {
        seen.done = true;
        return;
    }
    match serde_json::from_slice::<Probe<'_>>(data) {
        Ok(probe) if probe.error.is_some() => seen.error = true,
        Ok(probe) => {
            let carries_output = probe.choices.iter().flatten().any(|c| {
                c.delta.as_ref().is_some_and(|d| {
                    d.tool_calls.is_some() || d.content.as_deref().is_some_and(|t| !t.is_empty())
                })
            });
            seen.tokens += usize::from(carries_output);
        }
        Err(_) => seen.error = true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_output_chunks_across_split_reads() {
        let body = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"he\\\"llo\"}}]}\r\n\r\n",
            ": keep-alive\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n",
            "data: [DONE]\n\n",
        )
        .as_bytes();
        for split in 0..body.len() {
            let mut scanner = Scanner::default();
            let a = scanner.feed(&body[..split]);
            let b = scanner.feed(&body[split..]);
            assert_eq!(a.tokens + b.tokens, 2, "split at {split}");
            assert!(a.done || b.done);
            assert!(!a.error && !b.error);
        }
    }

    #[test]
    fn flags_errors() {
        let mut scanner = Scanner::default();
        let seen = scanner.feed(b"data: {\"error\":{\"message\":\"x\"}}\n\n");
        assert!(seen.error);
        let seen = scanner.feed(b"data: not json\n\n");
        assert!(seen.error);
        let seen = scanner.feed(b"event: error\ndata: {}\n\n");
        assert!(seen.error);
    }
}
