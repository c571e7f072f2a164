//! Push authentication: how a push endpoint can tell that a request really comes from this
//! broker.
//!
//! Two independent mechanisms, each chosen per subscription:
//!
//! - **OIDC tokens**, as the real service does: when `push_config.oidc_token` is set, every push
//!   carries `Authorization: Bearer <JWT>`, an OpenID Connect style token signed by the broker
//!   (ES256) with the claims of Google's push tokens (`iss`, `aud`, `azp`, `sub`, `email`,
//!   `email_verified`, `iat`, `exp` one hour later). `aud` is `oidc_token.audience`, or the push
//!   endpoint URL when that is empty, as on Google Cloud. The signing key is generated once and
//!   kept as a store document (so it lives in the data directory, and is ephemeral with
//!   `--memory`); its public half is served as a JWK Set at [`JWKS_PATH`]
//!   (`GET /converge/push/jwks.json`), so a receiver verifies tokens with any JWT library. See
//!   [`oidc`] and [`keys`].
//! - **Standard Webhooks signatures** (<https://www.standardwebhooks.com/>), a converge
//!   extension for endpoints that are not on Google Cloud: a per-subscription secret
//!   (`whsec_…`), set through the push config attribute `converge-webhook-secret`, signs each
//!   push (`webhook-id`, `webhook-timestamp`, `webhook-signature`). The secret is kept as a store
//!   document and never appears in a stored or returned resource (they say `"configured"`) or in
//!   a log. See [`webhook`].
//!
//! Interface for the push worker: [`PushAuth::new`] is synchronous as specified, but
//! [`PushAuth::headers`] is **`async` and returns a `Result`**: it may have to load (or, the
//! first time, create) the signing key and read the subscription's webhook secret from the
//! store. An error means "do not send this push unauthenticated": treat it as a failed attempt.

pub mod jwks;
pub mod keys;
pub mod oidc;
pub mod webhook;

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use converge_core::Store;
use http::{HeaderName, HeaderValue};

use crate::proto as v1;
use crate::proto::push_config::AuthenticationMethod;

pub use jwks::{JWKS_PATH, router as jwks_router};
pub use webhook::{Origin, SECRET_ATTRIBUTE, SecretChange, TakeSecretError, take_webhook_secret};

/// Why the authentication headers of a push could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PushAuthError {
    /// The store failed while reading or writing a key or a secret.
    #[error("push authentication: store error: {0}")]
    Store(#[from] converge_core::Error),
    /// A stored signing key could not be read back (corrupt document).
    #[error("push authentication: bad signing key document {kid:?}: {reason}")]
    BadKey {
        /// The key's id.
        kid: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Generating a key or random bytes failed (the system's random source).
    #[error("push authentication: cannot generate a key: {0}")]
    KeyGeneration(String),
    /// Signing a token failed.
    #[error("push authentication: cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// The push config says a webhook secret is configured but none is stored.
    #[error("push authentication: subscription {0} has no stored webhook secret")]
    MissingWebhookSecret(String),
    /// The message id cannot be sent as the `webhook-id` header.
    #[error("push authentication: message id {0:?} is not a valid header value")]
    InvalidMessageId(String),
    /// A stored webhook secret is not a valid `whsec_` secret.
    #[error("push authentication: the stored webhook secret of {0} is invalid")]
    BadWebhookSecret(String),
}

/// Builds the authentication headers of push requests.
///
/// Cheap to clone (an `Arc` inside) so the dispatcher shares one between its workers, and with
/// it the cached signing key and tokens.
#[derive(Clone)]
pub struct PushAuth {
    inner: Arc<Inner>,
}

/// What every clone of a [`PushAuth`] shares.
struct Inner {
    store: Arc<dyn Store>,
    tokens: oidc::TokenMinter,
}

impl std::fmt::Debug for PushAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Nothing secret is printed: no key, no token.
        f.debug_struct("PushAuth").finish_non_exhaustive()
    }
}

impl PushAuth {
    /// Push authentication over `store`, where the signing key and the webhook secrets live.
    ///
    /// The data directory argument is accepted for the worker's convenience but unused: the key
    /// is a store document, so it is persisted exactly when the store is (in the data directory,
    /// or only in memory with `--memory`), and every `PushAuth` and the JWKS route over one store
    /// agree. Nothing is loaded here; the key is loaded or created on first use.
    pub fn new(store: Arc<dyn Store>, _data_dir: Option<&Path>) -> Self {
        Self {
            inner: Arc::new(Inner {
                tokens: oidc::TokenMinter::new(store.clone()),
                store,
            }),
        }
    }

    /// Headers to add to one push request of `subscription` (its full name): `Authorization`
    /// when the push config asks for an OIDC token, and the three Standard Webhooks headers when
    /// it has a webhook secret. `message_id` becomes `webhook-id`; `body` is what is signed, so
    /// it must be the exact bytes sent.
    pub async fn headers(
        &self,
        subscription: &str,
        push_config: &v1::PushConfig,
        message_id: &str,
        body: &[u8],
    ) -> Result<Vec<(HeaderName, HeaderValue)>, PushAuthError> {
        self.headers_at(
            subscription,
            push_config,
            message_id,
            body,
            SystemTime::now(),
        )
        .await
    }

    /// [`Self::headers`] at a given wall-clock time. Tokens and webhook timestamps use real time,
    /// not the broker's (test) clock: receivers check them against their own clocks.
    pub(crate) async fn headers_at(
        &self,
        subscription: &str,
        push_config: &v1::PushConfig,
        message_id: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, PushAuthError> {
        let mut headers = Vec::new();
        if let Some(AuthenticationMethod::OidcToken(oidc)) = &push_config.authentication_method {
            let audience = if oidc.audience.is_empty() {
                push_config.push_endpoint.as_str()
            } else {
                oidc.audience.as_str()
            };
            let token = self
                .inner
                .tokens
                .token(&oidc.service_account_email, audience, now)
                .await?;
            headers.push((http::header::AUTHORIZATION, token.authorization()));
        }
        if webhook::is_configured(push_config) {
            let secret = webhook::load_secret(self.inner.store.as_ref(), subscription).await?;
            headers.extend(webhook::sign_headers(&secret, message_id, now, body)?);
        }
        Ok(headers)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use converge_core::{Clock, SystemClock};
    use converge_store::embedded::{EmbeddedOptions, EmbeddedStore};
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{DecodingKey, Validation};

    const SUBSCRIPTION: &str = "projects/p/subscriptions/sub-1";
    const ENDPOINT: &str = "https://receiver.example/push";

    /// An in-memory store, as `--memory` runs.
    pub(crate) fn memory_store() -> Arc<dyn Store> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        Arc::new(EmbeddedStore::open(EmbeddedOptions::default(), clock).expect("in-memory store"))
    }

    fn oidc_config(audience: &str) -> v1::PushConfig {
        v1::PushConfig {
            push_endpoint: ENDPOINT.into(),
            authentication_method: Some(AuthenticationMethod::OidcToken(
                v1::push_config::OidcToken {
                    service_account_email: "pusher@p.iam.gserviceaccount.com".into(),
                    audience: audience.into(),
                },
            )),
            ..Default::default()
        }
    }

    fn header<'a>(headers: &'a [(HeaderName, HeaderValue)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().expect("ascii"))
    }

    #[tokio::test]
    async fn a_pull_style_config_gets_no_headers() {
        let auth = PushAuth::new(memory_store(), None);
        let config = v1::PushConfig {
            push_endpoint: ENDPOINT.into(),
            ..Default::default()
        };
        let headers = auth
            .headers(SUBSCRIPTION, &config, "1", b"{}")
            .await
            .expect("headers");
        assert!(headers.is_empty(), "{headers:?}");
    }

    #[tokio::test]
    async fn the_audience_defaults_to_the_endpoint_and_the_token_verifies_with_the_jwks() {
        let store = memory_store();
        let auth = PushAuth::new(store.clone(), None);
        for (configured, expected) in [("", ENDPOINT), ("my-audience", "my-audience")] {
            let headers = auth
                .headers(SUBSCRIPTION, &oidc_config(configured), "1", b"{}")
                .await
                .expect("headers");
            let bearer = header(&headers, "authorization").expect("authorization");
            let jwt = bearer.strip_prefix("Bearer ").expect("a bearer token");
            let set: JwkSet =
                serde_json::from_value(jwks::document(store.as_ref()).await.expect("jwks"))
                    .expect("a JWK Set");
            let kid = jsonwebtoken::decode_header(jwt).expect("header").kid;
            let jwk = set.find(kid.as_deref().expect("kid")).expect("published");
            let mut validation = Validation::new(keys::ALGORITHM);
            validation.set_audience(&[expected]);
            let claims = jsonwebtoken::decode::<oidc::Claims>(
                jwt,
                &DecodingKey::from_jwk(jwk).expect("key"),
                &validation,
            )
            .expect("verifies");
            assert_eq!(claims.claims.aud, expected);
        }
    }

    #[tokio::test]
    async fn a_second_instance_over_the_same_store_signs_with_the_same_key() {
        let store = memory_store();
        let kid = |headers: Vec<(HeaderName, HeaderValue)>| {
            let bearer = header(&headers, "authorization").expect("authorization");
            jsonwebtoken::decode_header(bearer.trim_start_matches("Bearer "))
                .expect("header")
                .kid
        };
        let first = PushAuth::new(store.clone(), None)
            .headers(SUBSCRIPTION, &oidc_config(""), "1", b"{}")
            .await
            .expect("headers");
        let second = PushAuth::new(store, None)
            .headers(SUBSCRIPTION, &oidc_config(""), "1", b"{}")
            .await
            .expect("headers");
        assert_eq!(kid(first), kid(second));
    }

    #[tokio::test]
    async fn a_configured_secret_signs_the_exact_body() {
        let store = memory_store();
        let mut config = oidc_config("");
        config
            .attributes
            .insert(SECRET_ATTRIBUTE.into(), webhook::GENERATE.into());
        let change = take_webhook_secret(Some(&mut config), Origin::Create).expect("taken");
        let SecretChange::Set { secret, .. } = &change else {
            panic!("a secret: {change:?}");
        };
        webhook::save(store.as_ref(), SUBSCRIPTION, &change)
            .await
            .expect("saved");
        let auth = PushAuth::new(store, None);
        let body = br#"{"message":{}}"#;
        let now = SystemTime::now();
        let headers = auth
            .headers_at(SUBSCRIPTION, &config, "42", body, now)
            .await
            .expect("headers");
        assert!(header(&headers, "authorization").is_some());
        assert_eq!(header(&headers, webhook::HEADER_ID), Some("42"));
        let timestamp: u64 = header(&headers, webhook::HEADER_TIMESTAMP)
            .expect("timestamp")
            .parse()
            .expect("seconds");
        assert_eq!(
            header(&headers, webhook::HEADER_SIGNATURE),
            Some(secret.sign("42", timestamp, body).as_str())
        );
        assert_ne!(
            header(&headers, webhook::HEADER_SIGNATURE),
            Some(secret.sign("42", timestamp, b"{}").as_str())
        );
    }

    #[tokio::test]
    async fn a_configured_but_missing_secret_is_an_error_not_an_unsigned_push() {
        let auth = PushAuth::new(memory_store(), None);
        let config = v1::PushConfig {
            push_endpoint: ENDPOINT.into(),
            attributes: [(SECRET_ATTRIBUTE.to_owned(), webhook::CONFIGURED.to_owned())].into(),
            ..Default::default()
        };
        let error = auth
            .headers(SUBSCRIPTION, &config, "1", b"{}")
            .await
            .expect_err("no secret stored");
        assert!(matches!(error, PushAuthError::MissingWebhookSecret(_)));
    }

    /// Through the service, as a client sees it: a generated secret is returned once, by the
    /// Create answer; Get and List only ever say `configured`; updates keep, replace or drop it.
    #[tokio::test]
    async fn webhook_secrets_never_come_back_from_get_or_list() {
        use crate::service::PubSub;
        let store = memory_store();
        let service = PubSub::new(store.clone(), Arc::new(SystemClock));
        let topic = v1::Topic {
            name: "projects/p/topics/topic-1".into(),
            ..Default::default()
        };
        service.create_topic(topic).await.expect("topic");
        let mut config = oidc_config("");
        config
            .attributes
            .insert(SECRET_ATTRIBUTE.into(), webhook::GENERATE.into());
        let created = service
            .create_subscription(v1::Subscription {
                name: SUBSCRIPTION.into(),
                topic: "projects/p/topics/topic-1".into(),
                push_config: Some(config),
                ..Default::default()
            })
            .await
            .expect("created");
        let attribute = |sub: &v1::Subscription| {
            sub.push_config
                .as_ref()
                .and_then(|c| c.attributes.get(SECRET_ATTRIBUTE).cloned())
        };
        let revealed = attribute(&created).expect("the secret, once");
        assert!(revealed.starts_with(webhook::SECRET_PREFIX), "{revealed}");
        let stored = webhook::load_secret(store.as_ref(), SUBSCRIPTION)
            .await
            .expect("stored");
        assert_eq!(stored.expose(), revealed);

        let get = v1::GetSubscriptionRequest {
            subscription: SUBSCRIPTION.into(),
        };
        let got = service.get_subscription(get.clone()).await.expect("get");
        assert_eq!(attribute(&got).as_deref(), Some(webhook::CONFIGURED));
        let listed = service
            .list_subscriptions(v1::ListSubscriptionsRequest {
                project: "projects/p".into(),
                ..Default::default()
            })
            .await
            .expect("list");
        assert!(!format!("{listed:?}").contains(&revealed));
        assert!(!format!("{got:?}").contains(&revealed));

        // An update that does not touch the push config keeps the secret.
        let mask = |paths: &[&str]| prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        };
        let mut patch = got.clone();
        patch.ack_deadline_seconds = 30;
        let updated = service
            .update_subscription(v1::UpdateSubscriptionRequest {
                subscription: Some(patch.clone()),
                update_mask: Some(mask(&["ack_deadline_seconds"])),
            })
            .await
            .expect("updated");
        assert_eq!(attribute(&updated).as_deref(), Some(webhook::CONFIGURED));
        let kept = webhook::load_secret(store.as_ref(), SUBSCRIPTION)
            .await
            .expect("kept");
        assert_eq!(kept.expose(), revealed);

        // "generate" is refused where the answer cannot carry the secret.
        let mut push_config = patch.push_config.clone().expect("config");
        push_config
            .attributes
            .insert(SECRET_ATTRIBUTE.into(), webhook::GENERATE.into());
        let refused = service
            .modify_push_config(v1::ModifyPushConfigRequest {
                subscription: SUBSCRIPTION.into(),
                push_config: Some(push_config),
            })
            .await
            .expect_err("cannot return the secret");
        assert_eq!(refused.code, tonic::Code::InvalidArgument);

        // Dropping the attribute drops the secret.
        patch
            .push_config
            .as_mut()
            .expect("config")
            .attributes
            .remove(SECRET_ATTRIBUTE);
        let updated = service
            .update_subscription(v1::UpdateSubscriptionRequest {
                subscription: Some(patch),
                update_mask: Some(mask(&["push_config"])),
            })
            .await
            .expect("updated");
        assert_eq!(attribute(&updated), None);
        assert!(matches!(
            webhook::load_secret(store.as_ref(), SUBSCRIPTION).await,
            Err(PushAuthError::MissingWebhookSecret(_))
        ));
    }
}
