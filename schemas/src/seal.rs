//! AES-256-GCM sealing of request bodies, bound to the request id.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A sealed body: `ciphertext` (with the GCM tag appended) under a 96-bit `nonce`.
/// The additional data is the request id's 16 bytes, so a body cannot be moved to
/// another envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Sealed {
    /// Names the key, for rotation; `default` unless configured.
    pub key_id: String,
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub nonce: Vec<u8>,
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub ciphertext: Vec<u8>,
}

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("seal key must be base64 of exactly 32 bytes")]
    BadKey,
    #[error("sealed with key {0:?}, which this process does not hold")]
    UnknownKey(String),
    #[error("sealed body is corrupt or was sealed for another request or key")]
    Open,
    #[error("sealing failed")]
    Seal,
    #[error("no seal key: set SWITCHYARD_SEAL_KEY or SWITCHYARD_SEAL_KEY_FILE")]
    Missing,
    #[error("cannot read the seal key file {0}: {1}")]
    KeyFile(String, std::io::Error),
}

/// A 256-bit key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct SealKey {
    id: String,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SealKey {
    /// Reads a key from base64 text (surrounding whitespace ignored).
    pub fn from_base64(id: impl Into<String>, text: &str) -> Result<Self, SealError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| SealError::BadKey)?;
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| SealError::BadKey)?;
        Ok(Self {
            id: id.into(),
            cipher,
        })
    }

    /// The key services are configured with: inline base64 text, else the contents of
    /// `file`. The key id is `default` until rotation needs more.
    pub fn load(inline: Option<&str>, file: Option<&std::path::Path>) -> Result<Self, SealError> {
        match (inline, file) {
            (Some(text), _) => Self::from_base64("default", text),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| SealError::KeyFile(path.display().to_string(), e))?;
                Self::from_base64("default", &text)
            }
            (None, None) => Err(SealError::Missing),
        }
    }

    /// A fresh random key as base64 text, for set-up scripts and tests.
    pub fn generate_base64() -> String {
        let bytes: [u8; 32] = rand::random();
        STANDARD.encode(bytes)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plaintext` for the request `request_id`.
    pub fn seal(&self, request_id: Uuid, plaintext: &[u8]) -> Result<Sealed, SealError> {
        let nonce: [u8; 12] = rand::random();
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: request_id.as_bytes(),
                },
            )
            .map_err(|_| SealError::Seal)?;
        Ok(Sealed {
            key_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens a body sealed for `request_id`.
    pub fn open(&self, request_id: Uuid, sealed: &Sealed) -> Result<Vec<u8>, SealError> {
        if sealed.key_id != self.id {
            return Err(SealError::UnknownKey(sealed.key_id.clone()));
        }
        if sealed.nonce.len() != 12 {
            return Err(SealError::Open);
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: request_id.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)
    }
}

/// The seal key flags every service that seals or opens bodies takes (feature `cli`).
#[cfg(feature = "cli")]
#[derive(Clone, Default, clap::Args)]
pub struct SealKeyArgs {
    /// AES-256-GCM key that seals request bodies (base64 of 32 bytes); the ingress and
    /// every worker hold the same key.
    #[arg(
        long,
        env = "SWITCHYARD_SEAL_KEY",
        hide_env_values = true,
        required_unless_present = "seal_key_file"
    )]
    pub seal_key: Option<String>,

    /// File holding the seal key (base64), instead of `SWITCHYARD_SEAL_KEY`.
    #[arg(long, env = "SWITCHYARD_SEAL_KEY_FILE")]
    pub seal_key_file: Option<std::path::PathBuf>,
}

#[cfg(feature = "cli")]
impl SealKeyArgs {
    /// Inline base64 text.
    pub fn inline(text: impl Into<String>) -> Self {
        Self {
            seal_key: Some(text.into()),
            seal_key_file: None,
        }
    }

    /// The key, from the environment or the key file.
    pub fn load(&self) -> Result<SealKey, SealError> {
        SealKey::load(self.seal_key.as_deref(), self.seal_key_file.as_deref())
    }
}

#[cfg(feature = "cli")]
impl std::fmt::Debug for SealKeyArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKeyArgs")
            .field("seal_key", &self.seal_key.as_ref().map(|_| "<redacted>"))
            .field("seal_key_file", &self.seal_key_file)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_binding() {
        let key = SealKey::from_base64("default", &SealKey::generate_base64()).unwrap();
        let id = Uuid::now_v7();
        let sealed = key.seal(id, b"secret prompt").unwrap();
        assert!(
            !sealed.ciphertext.windows(6).any(|w| w == b"secret"),
            "ciphertext must not contain the plaintext"
        );
        assert_eq!(key.open(id, &sealed).unwrap(), b"secret prompt");
        // Another request id (additional data) does not open it.
        assert!(matches!(
            key.open(Uuid::now_v7(), &sealed),
            Err(SealError::Open)
        ));
        // Another key does not open it.
        let other = SealKey::from_base64("default", &SealKey::generate_base64()).unwrap();
        assert!(matches!(other.open(id, &sealed), Err(SealError::Open)));
        // A tampered byte does not open.
        let mut bad = sealed.clone();
        bad.ciphertext[0] ^= 1;
        assert!(matches!(key.open(id, &bad), Err(SealError::Open)));
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert!(matches!(
            SealKey::from_base64("k", "not base64!"),
            Err(SealError::BadKey)
        ));
        assert!(matches!(
            SealKey::from_base64("k", "AAAA"),
            Err(SealError::BadKey)
        ));
        let text = SealKey::generate_base64();
        let key = SealKey::from_base64("k", &text).unwrap();
        assert!(
            !format!("{key:?}").contains(&text),
            "Debug must not show the key"
        );
        let other = SealKey::from_base64("other", &SealKey::generate_base64()).unwrap();
        let sealed = other.seal(Uuid::now_v7(), b"x").unwrap();
        assert!(
            matches!(key.open(Uuid::now_v7(), &sealed), Err(SealError::UnknownKey(id)) if id == "other")
        );
    }
}
