//! The SSE reply: OpenAI's `chat.completion.chunk` events, paced by the config.
//!
//! All events are serialised up front into frames ("wait this long, then write these
//! bytes"); events with no delay between them share a frame, so an unpaced reply is one
//! write.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::body::{Body, Bytes};

use super::reply::{self, Reply};
use super::wire::{
    Chunk, ChunkChoice, Delta, FunctionDelta, SYSTEM_FINGERPRINT, ToolCallDelta, Usage,
};
use super::{Meta, MockConfig, count};

/// How the stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Finish chunk, optional usage chunk, `data: [DONE]`.
    Done,
    /// After two content chunks the connection is cut mid-body.
    Abort,
    /// After two content chunks the body ends normally, without `[DONE]`.
    Clean,
}

/// How many pieces a tool call's arguments stream in: like OpenAI, at least two.
pub(crate) fn tool_argument_pieces(config: &MockConfig, arguments: &str) -> usize {
    config.chunks.max(2).min(arguments.chars().count().max(1))
}

struct Frames<'a> {
    frames: Vec<(Duration, Vec<u8>)>,
    meta: &'a Meta,
    model: &'a str,
    include_usage: bool,
}

impl Frames<'_> {
    fn push(&mut self, delay: Duration, choices: &[ChunkChoice<'_>], usage: Option<Usage>) {
        let chunk = Chunk {
            id: &self.meta.id,
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: self.model,
            service_tier: self.meta.service_tier,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage: self.include_usage.then_some(usage),
        };
        let buf = self.frame(delay);
        buf.extend_from_slice(b"data: ");
        // Writing plain structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, &chunk);
        buf.extend_from_slice(b"\n\n");
    }

    fn push_delta(&mut self, delay: Duration, delta: Delta<'_>, finish: Option<&'static str>) {
        let choice = ChunkChoice {
            index: 0,
            delta,
            logprobs: (),
            finish_reason: finish,
        };
        self.push(delay, &[choice], None);
    }

    fn push_raw(&mut self, delay: Duration, bytes: &[u8]) {
        self.frame(delay).extend_from_slice(bytes);
    }

    /// The buffer to append to: a new frame after a delay, else the last one.
    fn frame(&mut self, delay: Duration) -> &mut Vec<u8> {
        if !delay.is_zero() || self.frames.is_empty() {
            self.frames.push((delay, Vec::with_capacity(512)));
        }
        let last = self.frames.len() - 1;
        &mut self.frames[last].1
    }
}

pub(crate) fn body(
    config: &MockConfig,
    meta: &Meta,
    model: &str,
    reply: &Reply,
    include_usage: bool,
    ending: Ending,
    dropped: Arc<AtomicU64>,
) -> Body {
    let mut frames = Frames {
        frames: Vec::new(),
        meta,
        model,
        include_usage,
    };
    let pieces = match reply {
        Reply::Text(text) => reply::split_even(text, config.chunks),
        Reply::ToolCall { arguments, .. } => {
            reply::split_even(arguments, tool_argument_pieces(config, arguments))
        }
    };
    let sent = if ending == Ending::Done {
        pieces.len()
    } else {
        pieces.len().min(2)
    };

    let first = match reply {
        Reply::Text(_) => Delta {
            role: Some("assistant"),
            content: Some(Some("")),
            refusal: Some(()),
            tool_calls: None,
        },
        Reply::ToolCall { name, .. } => Delta {
            role: Some("assistant"),
            content: Some(None),
            refusal: Some(()),
            tool_calls: Some([ToolCallDelta {
                index: 0,
                id: Some(reply::TOOL_CALL_ID),
                kind: Some("function"),
                function: FunctionDelta {
                    name: Some(name),
                    arguments: "",
                },
            }]),
        },
    };
    frames.push_delta(config.latency, first, None);

    for (i, piece) in pieces.iter().take(sent).enumerate() {
        let delay = if i == 0 {
            Duration::ZERO
        } else {
            config.chunk_delay
        };
        let delta = match reply {
            Reply::Text(_) => Delta {
                content: Some(Some(piece)),
                ..Delta::default()
            },
            Reply::ToolCall { .. } => Delta {
                tool_calls: Some([ToolCallDelta {
                    index: 0,
                    id: None,
                    kind: None,
                    function: FunctionDelta {
                        name: None,
                        arguments: piece,
                    },
                }]),
                ..Delta::default()
            },
        };
        frames.push_delta(delay, delta, None);
    }

    if ending == Ending::Done {
        let finish = match reply {
            Reply::Text(_) => "stop",
            Reply::ToolCall { .. } => "tool_calls",
        };
        frames.push_delta(Duration::ZERO, Delta::default(), Some(finish));
        if include_usage {
            let usage = Usage::new(meta.prompt_tokens, count(pieces.len()));
            frames.push(Duration::ZERO, &[], Some(usage));
        }
        frames.push_raw(Duration::ZERO, b"data: [DONE]\n\n");
    }

    let frames: Vec<(Duration, Bytes)> = frames
        .frames
        .into_iter()
        .map(|(delay, bytes)| (delay, Bytes::from(bytes)))
        .collect();
    super::super::paced_body(frames, ending == Ending::Abort, Some(dropped))
}
