//! The SSE reply: Anthropic's named events (`message_start`, `content_block_start`,
//! `ping`, `content_block_delta`, `content_block_stop`, `message_delta`,
//! `message_stop`), paced by the config.
//!
//! Events are serialised up front into frames ("wait this long, then write these
//! bytes"); events with no delay between them share a frame.

use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::{Value, json};

use super::super::openai::reply::split_even;
use super::{Meta, MockConfig, Reply, TOOL_USE_ID, count, usage};

/// How the stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// `content_block_stop`, `message_delta`, `message_stop`.
    Stop,
    /// After two deltas the connection is cut mid-body.
    Abort,
    /// After two deltas the body ends normally, without `message_stop`.
    Clean,
    /// After two deltas an `error` event (`overloaded_error`), then the body ends.
    ErrorEvent,
}

/// How many `input_json_delta` pieces a tool input streams in: at least two.
pub(crate) fn tool_input_pieces(config: &MockConfig, input_json: &str) -> usize {
    config.chunks.max(2).min(input_json.chars().count().max(1))
}

#[derive(Default)]
struct Frames {
    frames: Vec<(Duration, Vec<u8>)>,
}

impl Frames {
    fn push(&mut self, delay: Duration, event: &str, data: &Value) {
        if !delay.is_zero() || self.frames.is_empty() {
            self.frames.push((delay, Vec::with_capacity(512)));
        }
        let last = self.frames.len() - 1;
        let buf = &mut self.frames[last].1;
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(event.as_bytes());
        buf.extend_from_slice(b"\ndata: ");
        // Writing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, data);
        buf.extend_from_slice(b"\n\n");
    }
}

pub(crate) fn body(
    config: &MockConfig,
    meta: &Meta,
    model: &str,
    reply: &Reply,
    ending: Ending,
) -> Body {
    let mut frames = Frames::default();
    let input_json;
    let (block, pieces, stop_reason) = match reply {
        Reply::Text(text) => (
            json!({"type": "text", "text": ""}),
            split_even(text, config.chunks),
            "end_turn",
        ),
        Reply::ToolUse { name, input } => {
            input_json = input.to_string();
            let n = tool_input_pieces(config, &input_json);
            (
                json!({"type": "tool_use", "id": TOOL_USE_ID, "name": name, "input": {}}),
                split_even(&input_json, n),
                "tool_use",
            )
        }
    };
    let sent = if ending == Ending::Stop {
        pieces.len()
    } else {
        pieces.len().min(2)
    };

    frames.push(
        config.latency,
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": meta.id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage(meta.input_tokens, 1),
        }}),
    );
    frames.push(
        Duration::ZERO,
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": block}),
    );
    frames.push(Duration::ZERO, "ping", &json!({"type": "ping"}));
    for (i, piece) in pieces.iter().take(sent).enumerate() {
        let delay = if i == 0 {
            Duration::ZERO
        } else {
            config.chunk_delay
        };
        let delta = match reply {
            Reply::Text(_) => json!({"type": "text_delta", "text": piece}),
            Reply::ToolUse { .. } => json!({"type": "input_json_delta", "partial_json": piece}),
        };
        frames.push(
            delay,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        );
    }
    match ending {
        Ending::Stop => {
            frames.push(
                Duration::ZERO,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": 0}),
            );
            frames.push(
                Duration::ZERO,
                "message_delta",
                &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                    "usage": {"output_tokens": count(pieces.len())}}),
            );
            frames.push(
                Duration::ZERO,
                "message_stop",
                &json!({"type": "message_stop"}),
            );
        }
        Ending::ErrorEvent => frames.push(
            Duration::ZERO,
            "error",
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
        Ending::Abort | Ending::Clean => {}
    }

    let frames: Vec<(Duration, Bytes)> = frames
        .frames
        .into_iter()
        .map(|(delay, bytes)| (delay, Bytes::from(bytes)))
        .collect();
    super::super::paced_body(frames, ending == Ending::Abort, None)
}
