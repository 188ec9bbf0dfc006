//! JSON Schema (draft 2020-12) of every message, for publishers in other languages.
//!
//! The files in `schemas/json/` are generated from these types; a test fails when they
//! are stale (`just schemas` rewrites them). The schema describes the MessagePack map
//! the codec writes: UUIDs and timestamps are strings, byte fields are MessagePack
//! `bin` (an array of 0–255 integers is accepted too).

use schemars::{Schema, schema_for};

/// `(file stem, schema)` for every message that crosses NATS.
pub fn all() -> Vec<(&'static str, Schema)> {
    vec![
        ("batch_request", schema_for!(crate::BatchRequest)),
        ("batch_result", schema_for!(crate::BatchResult)),
        ("request_envelope", schema_for!(crate::RequestEnvelope)),
        ("sealed_request", schema_for!(crate::SealedRequest)),
        ("chat_request", schema_for!(crate::ChatRequest)),
        ("reply_chunk", schema_for!(crate::ReplyChunk)),
        ("error_body", schema_for!(crate::ErrorBody)),
        ("usage_event", schema_for!(crate::UsageEvent)),
        ("spend_alert", schema_for!(crate::SpendAlert)),
        ("cluster_spec", schema_for!(crate::cluster::ClusterSpec)),
        ("cluster_status", schema_for!(crate::cluster::ClusterStatus)),
        (
            "instance_heartbeat",
            schema_for!(crate::cluster::InstanceHeartbeat),
        ),
    ]
}

/// The exported text of one schema: pretty JSON with a trailing newline.
pub fn render(schema: &Schema) -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string_pretty(schema)?;
    text.push('\n');
    Ok(text)
}
