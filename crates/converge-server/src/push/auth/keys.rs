//! The broker's token signing keys: ECDSA P-256 (ES256), generated once and kept as store
//! documents.
//!
//! Each key is one document of kind [`KEY_KIND`] keyed by its `kid`, holding the PKCS#8 private
//! key. The store has no compare-and-set, so two callers that find no key at the same moment
//! may each create one; neither replaces the other (different `kid`s), the JWKS serves both,
//! and every token verifies. Whoever loads later picks the newest: `kid`s start with the
//! creation time, so key order is age order.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use converge_core::{PageRequest, Store};
use jsonwebtoken::{Algorithm, EncodingKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};

use super::PushAuthError;

/// The store document kind of signing keys.
pub const KEY_KIND: &str = "push-signing-key";

/// The JWS algorithm of every token the broker signs.
pub const ALGORITHM: Algorithm = Algorithm::ES256;

/// A signing key: its id, the key jsonwebtoken signs with, and the public point for the JWKS.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    /// The uncompressed public point `0x04 || x || y` (65 bytes).
    public: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private half never reaches a log.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The stored form of a key.
#[derive(Serialize, Deserialize)]
struct KeyDocument {
    /// PKCS#8 DER of the private key, standard base64.
    pkcs8: String,
}

impl SigningKey {
    /// The key id, sent as the token header's `kid` and in the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key jsonwebtoken signs with.
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// The public key as a JWK (RFC 7517/7518), the form JWT libraries load from a JWKS.
    pub fn public_jwk(&self) -> serde_json::Value {
        debug_assert_eq!(self.public.len(), 65, "uncompressed P-256 point");
        let (x, y) = self.public[1..].split_at(32);
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
            "use": "sig",
            "alg": "ES256",
            "kid": self.kid,
        })
    }

    /// Reads a key back from its PKCS#8 DER.
    fn from_pkcs8(kid: String, pkcs8: &[u8]) -> Result<Self, PushAuthError> {
        let bad = |reason: String| PushAuthError::BadKey {
            kid: kid.clone(),
            reason,
        };
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| bad(e.to_string()))?;
        let public = pair.public_key().as_ref().to_vec();
        Ok(Self {
            encoding: EncodingKey::from_ec_der(pkcs8),
            public,
            kid,
        })
    }

    /// Generates a fresh key created at `now`.
    fn generate(now: SystemTime) -> Result<(Self, Vec<u8>), PushAuthError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| PushAuthError::KeyGeneration(e.to_string()))?;
        let mut suffix = [0u8; 8];
        rng.fill(&mut suffix)
            .map_err(|e| PushAuthError::KeyGeneration(e.to_string()))?;
        let created = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let kid = format!("{created:012}-{suffix}");
        let key = Self::from_pkcs8(kid, pkcs8.as_ref())?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }
}

/// Every stored key, oldest first.
pub async fn load_all(store: &dyn Store) -> Result<Vec<SigningKey>, PushAuthError> {
    let mut keys = Vec::new();
    let mut page = PageRequest::default();
    loop {
        let answer = store.list_documents(KEY_KIND, "", page).await?;
        for (kid, bytes) in answer.items {
            keys.push(decode(kid, &bytes)?);
        }
        if answer.next_page_token.is_empty() {
            return Ok(keys);
        }
        page = PageRequest {
            page_size: 0,
            page_token: answer.next_page_token,
        };
    }
}

/// The newest stored key, or a new one, stored first, when there is none.
pub async fn load_or_create(store: &dyn Store) -> Result<SigningKey, PushAuthError> {
    if let Some(newest) = load_all(store).await?.pop() {
        return Ok(newest);
    }
    let (key, pkcs8) = SigningKey::generate(SystemTime::now())?;
    let document = serde_json::to_vec(&KeyDocument {
        pkcs8: STANDARD.encode(&pkcs8),
    })
    .expect("a key document serializes");
    store
        .put_document(KEY_KIND, key.kid(), Bytes::from(document))
        .await?;
    tracing::info!(kid = %key.kid(), "push token signing key created");
    Ok(key)
}

/// A stored document back to a key.
fn decode(kid: String, bytes: &[u8]) -> Result<SigningKey, PushAuthError> {
    let document: KeyDocument =
        serde_json::from_slice(bytes).map_err(|e| PushAuthError::BadKey {
            kid: kid.clone(),
            reason: e.to_string(),
        })?;
    let pkcs8 = STANDARD
        .decode(document.pkcs8)
        .map_err(|e| PushAuthError::BadKey {
            kid: kid.clone(),
            reason: e.to_string(),
        })?;
    SigningKey::from_pkcs8(kid, &pkcs8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::auth::tests::memory_store;

    #[tokio::test]
    async fn a_key_is_created_once_and_then_reused() {
        let store = memory_store();
        let first = load_or_create(store.as_ref()).await.expect("created");
        let again = load_or_create(store.as_ref()).await.expect("loaded");
        assert_eq!(first.kid(), again.kid());
        assert_eq!(first.public_jwk(), again.public_jwk());
        assert_eq!(load_all(store.as_ref()).await.expect("listed").len(), 1);
    }

    #[tokio::test]
    async fn the_newest_of_several_keys_is_used() {
        let store = memory_store();
        for created in [100, 300, 200] {
            let at = UNIX_EPOCH + std::time::Duration::from_secs(created);
            let (key, pkcs8) = SigningKey::generate(at).expect("generated");
            let document = serde_json::to_vec(&KeyDocument {
                pkcs8: STANDARD.encode(&pkcs8),
            })
            .expect("serializes");
            store
                .put_document(KEY_KIND, key.kid(), document.into())
                .await
                .expect("stored");
        }
        let used = load_or_create(store.as_ref()).await.expect("loaded");
        assert!(used.kid().starts_with("000000000300-"), "{}", used.kid());
    }

    #[tokio::test]
    async fn a_corrupt_key_document_is_an_error_not_a_new_key() {
        let store = memory_store();
        store
            .put_document(KEY_KIND, "k", Bytes::from_static(b"{\"pkcs8\":\"AAAA\"}"))
            .await
            .expect("stored");
        let error = load_or_create(store.as_ref()).await.expect_err("corrupt");
        assert!(matches!(error, PushAuthError::BadKey { .. }), "{error}");
    }
}
