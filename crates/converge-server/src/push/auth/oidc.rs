//! OIDC-style tokens for push requests, shaped like the ones the real service sends.
//!
//! Claims, as in Google's push tokens: `iss` (`https://accounts.google.com`, so a receiver
//! written for Google only has to point its JWKS URL at converge), `aud` (the configured
//! audience, else the push endpoint), `azp` and `sub` (Google puts the service account's numeric
//! unique id there; converge has no such account, so it derives a stable 21-digit id from the
//! email), `email`, `email_verified` (`true`), `iat`, and `exp` one hour later. The header
//! carries `kid`, the id of the broker key in the JWKS. Tokens are cached per (email, audience)
//! and reused until [`REFRESH_MARGIN`] before they expire, as a client library reuses its
//! tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use converge_core::Store;
use http::HeaderValue;
use jsonwebtoken::Header;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::PushAuthError;
use super::keys::{self, SigningKey};

/// The issuer claim: Google's, so receivers written for Google's push tokens accept converge's.
pub const ISSUER: &str = "https://accounts.google.com";

/// How long a token is valid, as Google's.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// A cached token is replaced this long before it expires, so none arrives expired after a slow
/// request or a little clock skew.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The claims of a push token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Authorized party: the service account's id.
    pub azp: String,
    /// Subject: the service account's id.
    pub sub: String,
    /// The service account's email.
    pub email: String,
    /// Always `true`, as in Google's tokens.
    pub email_verified: bool,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
}

impl Claims {
    /// The claims of a token for `email` and `audience` issued at `now`.
    pub fn new(email: &str, audience: &str, now: SystemTime) -> Self {
        let iat = unix_seconds(now);
        let id = account_id(email);
        Self {
            iss: ISSUER.to_owned(),
            aud: audience.to_owned(),
            azp: id.clone(),
            sub: id,
            email: email.to_owned(),
            email_verified: true,
            iat,
            exp: iat + TOKEN_LIFETIME.as_secs(),
        }
    }
}

/// A signed token ready for the `Authorization` header.
#[derive(Debug, Clone)]
pub struct Token {
    /// `Bearer <JWT>`.
    authorization: HeaderValue,
    /// When the token expires.
    expires: SystemTime,
}

impl Token {
    /// The value of the `Authorization` header.
    pub fn authorization(&self) -> HeaderValue {
        self.authorization.clone()
    }

    /// The JWT alone.
    pub fn jwt(&self) -> &str {
        let value = self.authorization.to_str().unwrap_or_default();
        value.strip_prefix("Bearer ").unwrap_or(value)
    }

    /// Whether the token can still be sent at `now`.
    fn fresh_at(&self, now: SystemTime) -> bool {
        now + REFRESH_MARGIN < self.expires
    }
}

/// Mints and caches tokens with the broker's key, loading (or creating) it on first use.
pub struct TokenMinter {
    store: Arc<dyn Store>,
    key: OnceCell<SigningKey>,
    cache: Mutex<HashMap<(String, String), Token>>,
}

impl TokenMinter {
    /// A minter over the store that holds the signing keys.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            key: OnceCell::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A token for `email` and `audience`, from the cache while it is fresh.
    pub async fn token(
        &self,
        email: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<Token, PushAuthError> {
        let cache_key = (email.to_owned(), audience.to_owned());
        if let Some(token) = self.cached(&cache_key, now) {
            return Ok(token);
        }
        let key = self
            .key
            .get_or_try_init(|| keys::load_or_create(self.store.as_ref()))
            .await?;
        let token = sign(key, &Claims::new(email, audience, now))?;
        tracing::debug!(email, audience, kid = %key.kid(), "push token minted");
        self.cache
            .lock()
            .expect("token cache lock")
            .insert(cache_key, token.clone());
        Ok(token)
    }

    /// The cached token for `key` if it is still fresh at `now`.
    fn cached(&self, key: &(String, String), now: SystemTime) -> Option<Token> {
        let cache = self.cache.lock().expect("token cache lock");
        cache.get(key).filter(|t| t.fresh_at(now)).cloned()
    }
}

/// Signs `claims` with `key`.
fn sign(key: &SigningKey, claims: &Claims) -> Result<Token, PushAuthError> {
    let mut header = Header::new(keys::ALGORITHM);
    header.kid = Some(key.kid().to_owned());
    let jwt = jsonwebtoken::encode(&header, claims, key.encoding_key())?;
    let authorization = HeaderValue::try_from(format!("Bearer {jwt}"))
        .expect("a JWT is base64url and dots, valid in a header");
    Ok(Token {
        authorization,
        expires: UNIX_EPOCH + Duration::from_secs(claims.exp),
    })
}

/// Seconds since the epoch (0 before it, which no real clock reads).
fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// A stable numeric id for a service account email, shaped like Google's 21-digit unique ids.
fn account_id(email: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, email.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    // 1 followed by 20 digits: u64::MAX has 20, so pad to 20.
    format!("1{:020}", u64::from_be_bytes(first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::auth::tests::memory_store;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{DecodingKey, Validation};

    const EMAIL: &str = "pusher@p.iam.gserviceaccount.com";
    const AUDIENCE: &str = "https://receiver.example/push";

    /// Verifies `jwt` the way a receiver does: key from the JWKS by `kid`, signature, audience,
    /// issuer and expiry checked by jsonwebtoken.
    fn verify(jwt: &str, jwks: &JwkSet, audience: &str) -> jsonwebtoken::errors::Result<Claims> {
        let header = jsonwebtoken::decode_header(jwt)?;
        let kid = header.kid.expect("a kid");
        let jwk = jwks.find(&kid).expect("the kid is in the JWKS");
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[ISSUER]);
        jsonwebtoken::decode::<Claims>(jwt, &DecodingKey::from_jwk(jwk)?, &validation)
            .map(|d| d.claims)
    }

    async fn jwks_of(store: &Arc<dyn Store>) -> JwkSet {
        let value = crate::push::auth::jwks::document(store.as_ref())
            .await
            .expect("jwks");
        serde_json::from_value(value).expect("a JWK Set")
    }

    #[tokio::test]
    async fn a_token_verifies_with_the_published_key_and_carries_the_claims() {
        let store = memory_store();
        let minter = TokenMinter::new(store.clone());
        let now = SystemTime::now();
        let token = minter.token(EMAIL, AUDIENCE, now).await.expect("token");
        let claims = verify(token.jwt(), &jwks_of(&store).await, AUDIENCE).expect("verifies");
        assert_eq!(claims.email, EMAIL);
        assert!(claims.email_verified);
        assert_eq!(claims.aud, AUDIENCE);
        assert_eq!(claims.iss, ISSUER);
        assert_eq!(claims.sub, claims.azp);
        assert_eq!(claims.sub.len(), 21);
        assert_eq!(claims.iat, unix_seconds(now));
        assert_eq!(claims.exp - claims.iat, 3600);
        let header = jsonwebtoken::decode_header(token.jwt()).expect("header");
        assert_eq!(header.alg, keys::ALGORITHM);
    }

    #[tokio::test]
    async fn a_token_for_another_audience_or_tampered_does_not_verify() {
        let store = memory_store();
        let minter = TokenMinter::new(store.clone());
        let token = minter
            .token(EMAIL, AUDIENCE, SystemTime::now())
            .await
            .expect("token");
        let jwks = jwks_of(&store).await;
        assert!(verify(token.jwt(), &jwks, "https://other.example").is_err());
        let mut tampered = token.jwt().to_owned();
        let last = tampered.pop().expect("not empty");
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(verify(&tampered, &jwks, AUDIENCE).is_err());
    }

    #[tokio::test]
    async fn an_expired_token_is_refused_by_a_verifier() {
        let store = memory_store();
        let minter = TokenMinter::new(store.clone());
        let long_ago = SystemTime::now() - TOKEN_LIFETIME - Duration::from_secs(600);
        let token = minter
            .token(EMAIL, AUDIENCE, long_ago)
            .await
            .expect("token");
        let error = verify(token.jwt(), &jwks_of(&store).await, AUDIENCE).expect_err("expired");
        assert_eq!(
            error.kind(),
            &jsonwebtoken::errors::ErrorKind::ExpiredSignature
        );
    }

    #[tokio::test]
    async fn tokens_are_reused_until_near_expiry_then_renewed() {
        let store = memory_store();
        let minter = TokenMinter::new(store);
        let start = SystemTime::now();
        let first = minter.token(EMAIL, AUDIENCE, start).await.expect("token");
        let later = start + TOKEN_LIFETIME - REFRESH_MARGIN - Duration::from_secs(1);
        let reused = minter.token(EMAIL, AUDIENCE, later).await.expect("token");
        assert_eq!(first.jwt(), reused.jwt());
        let other = minter
            .token(EMAIL, "https://other.example", later)
            .await
            .expect("token");
        assert_ne!(first.jwt(), other.jwt());
        let near_expiry = start + TOKEN_LIFETIME - REFRESH_MARGIN;
        let renewed = minter
            .token(EMAIL, AUDIENCE, near_expiry)
            .await
            .expect("token");
        assert_ne!(first.jwt(), renewed.jwt());
    }

    #[test]
    fn account_ids_are_stable_and_differ_between_accounts() {
        assert_eq!(account_id(EMAIL), account_id(EMAIL));
        assert_ne!(
            account_id(EMAIL),
            account_id("other@p.iam.gserviceaccount.com")
        );
        assert!(account_id(EMAIL).chars().all(|c| c.is_ascii_digit()));
    }
}
