//! Keeps a streamed answer whole when its request is answered a second time.
//!
//! A request whose worker dies mid-answer is redelivered by JetStream and answered
//! again from `seq` 0 by another worker. A non-streaming caller just takes the fresh
//! answer; a streaming caller already has part of the first one. [`StreamOrder`] lets the
//! relay continue the stream: while the fresh answer repeats what the caller has, it is
//! swallowed (checked, character for character); from the first new character on, it is
//! forwarded. Open models make this work: an inference worker samples with a seed taken
//! from the request id when the caller gives none, so the second answer is the first
//! one again. Where the second answer differs (a closed provider asked twice, a numeric
//! tie broken the other way) or the caller already has tool-call fragments, the stream
//! ends with a retryable error rather than a spliced answer.

use schemas::{ErrorKind, ReplyChunk};

use crate::error::ApiError;

/// The order and content check of one streamed reply.
#[derive(Debug, Default)]
pub(crate) struct StreamOrder {
    /// The `seq` the next chunk must carry.
    expected: u32,
    /// The text the caller has been sent.
    sent: String,
    /// The caller has been sent tool-call fragments: a second answer cannot be checked
    /// against them.
    unresumable: bool,
    /// While a second answer catches up: how much of `sent` it has repeated.
    replaying: Option<usize>,
    /// How many times the answer started over.
    pub(crate) restarts: u32,
}

fn diverged() -> ApiError {
    let mut e = ApiError::new(
        ErrorKind::Unavailable,
        "the worker answering this request failed mid-stream and its retry gave a different answer; send the request again",
    );
    e.0.retry_after_ms = Some(1000);
    e
}

impl StreamOrder {
    /// Checks `chunk`'s place in the reply and trims from it what the caller already
    /// has; forward what is left. An error chunk passes (it ends the reply).
    pub(crate) fn admit(&mut self, chunk: &mut ReplyChunk) -> Result<(), ApiError> {
        if chunk.error.is_some() {
            return Ok(());
        }
        if chunk.seq == 0 && self.expected > 0 {
            // Redelivered: another worker answers from the start.
            if self.unresumable {
                return Err(diverged());
            }
            self.restarts += 1;
            tracing::info!(
                request_id = %chunk.request_id,
                restarts = self.restarts,
                "the answer started over (redelivered); resuming the stream"
            );
            self.expected = 0;
            self.replaying = Some(0);
        }
        crate::routes::in_order(chunk, self.expected)?;
        self.expected += 1;
        let Some(mut matched) = self.replaying else {
            if let Some(d) = &chunk.delta {
                if let Some(c) = &d.content {
                    self.sent.push_str(c);
                }
                self.unresumable |= !d.tool_calls.is_empty();
            }
            return Ok(());
        };
        if let Some(d) = &mut chunk.delta {
            // The caller has had the role.
            d.role = None;
            if !d.tool_calls.is_empty() {
                return Err(diverged());
            }
            if let Some(c) = d.content.take() {
                let rest = &self.sent[matched..];
                if c.len() <= rest.len() {
                    if !rest.starts_with(&c) {
                        return Err(diverged());
                    }
                    matched += c.len();
                } else {
                    let Some(new) = c.strip_prefix(rest) else {
                        return Err(diverged());
                    };
                    self.sent.push_str(new);
                    matched = self.sent.len();
                    d.content = Some(new.to_string());
                }
            }
        }
        if matched == self.sent.len() {
            // Caught up: from here on the answer is new to the caller.
            self.replaying = None;
        } else if chunk.last || chunk.finish_reason.is_some() {
            // The second answer ended short of what the caller has.
            return Err(diverged());
        } else {
            self.replaying = Some(matched);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{Delta, ErrorBody, FinishReason, Role, ToolCallDelta};
    use uuid::Uuid;

    fn text(seq: u32, content: &str) -> ReplyChunk {
        let mut c = ReplyChunk::new(Uuid::nil(), seq);
        c.delta = Some(Delta {
            role: (seq == 0).then_some(Role::Assistant),
            content: Some(content.into()),
            tool_calls: Vec::new(),
        });
        c
    }

    fn end(seq: u32) -> ReplyChunk {
        let mut c = ReplyChunk::new(Uuid::nil(), seq);
        c.finish_reason = Some(FinishReason::Stop);
        c.last = true;
        c
    }

    /// What the caller receives: the content of every admitted chunk, or the error.
    fn relay(chunks: Vec<ReplyChunk>) -> Result<(String, u32), ApiError> {
        let mut order = StreamOrder::default();
        let mut out = String::new();
        for mut c in chunks {
            order.admit(&mut c)?;
            if let Some(s) = c.delta.as_ref().and_then(|d| d.content.as_deref()) {
                out.push_str(s);
            }
            if c.last {
                break;
            }
        }
        Ok((out, order.restarts))
    }

    #[test]
    fn a_stream_without_restart_passes_unchanged() {
        let (out, restarts) =
            relay(vec![text(0, "The capital"), text(1, " is Paris."), end(2)]).unwrap();
        assert_eq!(out, "The capital is Paris.");
        assert_eq!(restarts, 0);
    }

    #[test]
    fn a_restarted_answer_continues_where_the_caller_is_whatever_its_chunking() {
        let (out, restarts) = relay(vec![
            text(0, "The cap"),
            text(1, "ital is"),
            // The worker died; the retry answers again from seq 0, cut differently.
            text(0, "The"),
            text(1, " capital"),
            text(2, " is Pa"),
            text(3, "ris."),
            end(4),
        ])
        .unwrap();
        assert_eq!(out, "The capital is Paris.");
        assert_eq!(restarts, 1);
    }

    #[test]
    fn a_restart_before_any_text_was_sent_forwards_everything_once() {
        let (out, _) = relay(vec![text(0, ""), text(0, "Paris"), text(1, "."), end(2)]).unwrap();
        assert_eq!(out, "Paris.");
    }

    #[test]
    fn the_role_is_not_sent_twice() {
        let mut order = StreamOrder::default();
        let mut first = text(0, "Hi");
        order.admit(&mut first).unwrap();
        assert_eq!(first.delta.as_ref().unwrap().role, Some(Role::Assistant));
        let mut again = text(0, "Hi there");
        order.admit(&mut again).unwrap();
        let d = again.delta.unwrap();
        assert_eq!(d.role, None);
        assert_eq!(d.content.as_deref(), Some(" there"));
    }

    #[test]
    fn a_different_second_answer_ends_the_stream_with_a_retryable_error() {
        let e = relay(vec![text(0, "The capital is"), text(0, "The capitol")]).unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::Unavailable);
        assert_eq!(e.0.retry_after_ms, Some(1000));
        // Longer than what was sent but not an extension of it.
        let e = relay(vec![text(0, "Paris"), text(0, "Lyon is nice")]).unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::Unavailable);
    }

    #[test]
    fn a_second_answer_shorter_than_what_was_sent_is_an_error() {
        let e = relay(vec![
            text(0, "The capital is Paris"),
            text(0, "The capital"),
            end(1),
        ])
        .unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::Unavailable);
    }

    #[test]
    fn multibyte_text_is_matched_on_bytes_without_splitting_a_character() {
        let (out, _) = relay(vec![
            text(0, "Caf"),
            text(0, "Café"),
            text(1, " ☕"),
            end(2),
        ])
        .unwrap();
        assert_eq!(out, "Café ☕");
    }

    #[test]
    fn tool_call_fragments_cannot_be_resumed() {
        let mut call = ReplyChunk::new(Uuid::nil(), 0);
        call.delta = Some(Delta {
            role: Some(Role::Assistant),
            content: None,
            tool_calls: vec![ToolCallDelta {
                index: 0,
                id: Some("call_1".into()),
                name: Some("f".into()),
                arguments: Some("{".into()),
            }],
        });
        let e = relay(vec![call.clone(), call]).unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::Unavailable);
    }

    #[test]
    fn lost_chunks_and_error_chunks_still_end_the_reply() {
        let e = relay(vec![text(0, "a"), text(2, "c")]).unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::Internal);
        let mut order = StreamOrder::default();
        let mut failed = ReplyChunk::new(Uuid::nil(), 5);
        failed.error = Some(ErrorBody::new(ErrorKind::Upstream, "provider failed"));
        failed.last = true;
        assert!(order.admit(&mut failed).is_ok());
        assert!(failed.error.is_some());
    }
}
