//! Optional API keys, for every transport, compared in constant time.
//!
//! Keys are kept only as SHA-256 digests, and every configured digest is compared in full, so
//! neither the time taken nor the answer says which key, or how much of one, matched.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

/// Why the keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The cause is part of the message, not a `source`, so that a chain printed with `{:#}`
    /// names it once.
    #[error("cannot read the API keys file {path} (--api-keys-file, FER_API_KEYS_FILE): {cause}")]
    File { path: String, cause: std::io::Error },
}

impl ApiKeys {
    /// The keys from flags/env and from a file; `None` when there are none (auth off).
    pub fn load(keys: &[String], file: Option<&Path>) -> Result<Option<Self>, KeysError> {
        let mut all: Vec<String> = keys
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        if let Some(file) = file {
            let text = std::fs::read_to_string(file).map_err(|cause| KeysError::File {
                path: file.display().to_string(),
                cause,
            })?;
            all.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        if all.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            digests: all.iter().map(|k| digest(k)).collect(),
        }))
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys.
    pub fn verify(&self, presented: &str) -> bool {
        let presented = digest(presented);
        let mut matched = subtle::Choice::from(0);
        for key in &self.digests {
            matched |= key.ct_eq(&presented);
        }
        matched.into()
    }
}

/// The token of an `Authorization: Bearer <token>` value (HTTP header or gRPC metadata).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_configured_keys_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "# ops\nfile-key\n\n").unwrap();
        let keys = ApiKeys::load(&["flag-key".into(), " ".into()], Some(&file))
            .unwrap()
            .unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.verify("flag-key"));
        assert!(keys.verify("file-key"));
        for wrong in ["", "flag", "flag-key ", "file-key2", "# ops"] {
            assert!(!keys.verify(wrong), "{wrong:?}");
        }
        assert!(ApiKeys::load(&[], None).unwrap().is_none());
        assert!(ApiKeys::load(&[], Some(&dir.path().join("missing"))).is_err());
    }
}
