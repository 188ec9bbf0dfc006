//! The one MessagePack codec for every NATS payload.
//!
//! Structs are written as maps with field names (`rmp_serde::to_vec_named`'s layout), so
//! peers can add fields and other languages can read them. The serializer runs in
//! human-readable mode: UUIDs are canonical strings and timestamps RFC 3339 strings,
//! which a publisher in any language can write; byte fields are MessagePack `bin`.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encoding or decoding failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// Encodes `value` as a MessagePack map.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::with_capacity(256);
    let mut ser = rmp_serde::Serializer::new(&mut buf)
        .with_struct_map()
        .with_human_readable();
    value.serialize(&mut ser)?;
    Ok(buf)
}

/// Decodes a MessagePack payload written by [`encode`] (or by any peer following the
/// published JSON Schema).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes).with_human_readable();
    Ok(T::deserialize(&mut de)?)
}
