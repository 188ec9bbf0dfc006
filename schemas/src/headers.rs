//! NATS header names Switchyard sets and reads.

/// JetStream deduplication id: always the request id.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// W3C trace context, carried from the HTTP request into workers.
pub const TRACEPARENT: &str = "traceparent";
/// Why a message was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "Switchyard-Reason";
/// The stream and consumer a dead-lettered message came from.
pub const DEAD_LETTER_SOURCE: &str = "Switchyard-Source";
/// The request a dead-lettered message belongs to, when it could be read.
pub const REQUEST_ID: &str = "Switchyard-Request-Id";
