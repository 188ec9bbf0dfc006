//! Every message that crosses NATS in Switchyard, and the rules for sending them.
//!
//! - [`envelope`]: the request envelope every request travels in (id, account, times,
//!   schema version, reply target) with its sealed body.
//! - [`batch`]: batch requests published straight to NATS and their durable results
//!   (the contract: `schemas/BATCH.md`).
//! - [`catalog`]: the model catalog (`schemas/catalog/models.json`).
//! - [`chat`]: the normalized chat request every provider and worker understands.
//! - [`cluster`]: cluster specs and status (KV `clusters`), instance heartbeats.
//! - [`chunk`]: the streamed reply chunk workers send back.
//! - [`error`]: the error every service reports and the HTTP status it maps to.
//! - [`subjects`]: subject names and the model id → subject token mapping.
//! - [`codec`]: the one MessagePack codec (named maps) for every payload.
//! - [`seal`]: AES-256-GCM sealing, so prompts and provider keys are never at rest in
//!   plaintext in JetStream.
//! - [`task`]: open-model tasks other than chat (embeddings, zero-shot
//!   classification) and their outputs.
//! - [`usage`]: usage events (instance periods, lifecycle, tokens) that billing counts.
//! - [`headers`]: NATS header names we set and read.
//! - [`json_schema`]: JSON Schema of every message, exported to `schemas/json/` for
//!   publishers in other languages.
//!
//! Wire rules: fields are only ever added (as `Option` or with `#[serde(default)]`),
//! never renamed or removed; a breaking change is a new type on a new subject.

pub mod batch;
pub mod catalog;
pub mod chat;
pub mod chunk;
pub mod cluster;
pub mod codec;
pub mod envelope;
pub mod error;
pub mod headers;
pub mod json_schema;
pub mod seal;
pub mod subjects;
pub mod task;
pub mod usage;

pub use batch::{BatchRequest, BatchResult};
pub use chat::{
    ChatRequest, ContentPart, Message, Params, ResponseFormat, Role, Tool, ToolCall, ToolChoice,
};
pub use chunk::{Delta, FinishReason, ReplyChunk, ToolCallDelta, Usage};
pub use codec::{CodecError, decode, encode};
pub use envelope::{ReplyTarget, RequestEnvelope, SealedRequest};
pub use error::{ErrorBody, ErrorKind};
#[cfg(feature = "cli")]
pub use seal::SealKeyArgs;
pub use seal::{SealError, SealKey, Sealed};
pub use task::{TaskInput, TaskOutput};
pub use usage::{InstanceState, SpendAlert, UsageBody, UsageEvent};

/// The schema version this build writes. Readers accept every version up to this one.
pub const SCHEMA_VERSION: u16 = 1;
