//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>) with per-subscription
//! secrets, a converge extension.
//!
//! The secret is set through the push config attribute [`SECRET_ATTRIBUTE`]
//! (`converge-webhook-secret`), which takes one of:
//!
//! - `generate`: the broker creates a secret (`whsec_` + base64 of 32 random bytes) and returns
//!   it **once**, in the attribute of the CreateSubscription or UpdateSubscription answer.
//!   ModifyPushConfig answers `Empty`, so there it is refused: the secret could never be read.
//! - `whsec_<base64 of 24 to 64 bytes>`: the client's own secret (rotation, several brokers
//!   sharing one secret).
//! - `configured`: keep the current secret. This is what the stored resource, and so every
//!   Get/List answer, says in place of the secret, so a read-modify-write keeps it.
//!
//! Without the attribute, pushes are not signed and any stored secret is deleted. The secret
//! itself is one store document of kind [`SECRET_KIND`] keyed by the subscription name; it is
//! never part of a stored resource and never logged ([`WebhookSecret`] prints redacted).
//!
//! Each push then carries `webhook-id` (the message id, stable across retries, so receivers
//! can deduplicate), `webhook-timestamp` (unix seconds) and `webhook-signature`
//! (`v1,<base64 of HMAC-SHA256("{id}.{timestamp}.{body}")>` keyed by the secret's bytes).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use converge_core::Store;
use http::{HeaderName, HeaderValue};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::PushAuthError;
use crate::proto as v1;
use crate::service::ApiError;

/// The push config attribute that sets a subscription's webhook secret.
pub const SECRET_ATTRIBUTE: &str = "converge-webhook-secret";
/// Attribute value asking the broker to generate a secret.
pub const GENERATE: &str = "generate";
/// Attribute value standing in for the secret in stored and returned resources.
pub const CONFIGURED: &str = "configured";
/// The prefix of every secret, as the specification writes them.
pub const SECRET_PREFIX: &str = "whsec_";
/// The store document kind of webhook secrets, keyed by subscription name.
pub const SECRET_KIND: &str = "push-webhook-secret";

/// Header names of the specification.
pub const HEADER_ID: &str = "webhook-id";
/// See [`HEADER_ID`].
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// See [`HEADER_ID`].
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// Bytes of a generated secret.
const GENERATED_BYTES: usize = 32;
/// Accepted secret sizes: the specification asks for 24 to 64 bytes.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Why a webhook secret setting is refused (`INVALID_ARGUMENT` for the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookSecretError {
    /// Not `generate`, `configured` or a `whsec_` secret.
    #[error(
        "Invalid push_config.attributes[\"{SECRET_ATTRIBUTE}\"]: expected \"{GENERATE}\", \"{CONFIGURED}\" or \"{SECRET_PREFIX}\" followed by the base64 of 24 to 64 bytes"
    )]
    Malformed,
    /// `configured` on a subscription that is being created has nothing to keep.
    #[error(
        "Invalid push_config.attributes[\"{SECRET_ATTRIBUTE}\"]: a new subscription has no secret to keep; use \"{GENERATE}\" or a \"{SECRET_PREFIX}\" secret"
    )]
    NothingToKeep,
    /// `generate` where the answer cannot carry the secret back.
    #[error(
        "Invalid push_config.attributes[\"{SECRET_ATTRIBUTE}\"]: \"{GENERATE}\" is only accepted by CreateSubscription and UpdateSubscription, whose answer returns the secret; pass a \"{SECRET_PREFIX}\" secret instead"
    )]
    CannotReturn,
}

/// A webhook secret: its `whsec_` text and the HMAC key it stands for.
#[derive(Clone)]
pub struct WebhookSecret {
    text: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`, the key 24 to 64 bytes long.
    pub fn parse(text: &str) -> Result<Self, WebhookSecretError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(WebhookSecretError::Malformed)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| WebhookSecretError::Malformed)?;
        if !SECRET_BYTES.contains(&key.len()) {
            return Err(WebhookSecretError::Malformed);
        }
        Ok(Self {
            text: text.to_owned(),
            key,
        })
    }

    /// A new random secret.
    pub fn generate() -> Result<Self, PushAuthError> {
        let mut key = vec![0u8; GENERATED_BYTES];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|e| PushAuthError::KeyGeneration(e.to_string()))?;
        let text = format!("{SECRET_PREFIX}{}", STANDARD.encode(&key));
        Ok(Self { text, key })
    }

    /// The `whsec_…` text, to hand to the client once.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The `webhook-signature` value of one delivery.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.key);
        let mut context = hmac::Context::with_key(&key);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
    }
}

/// What a Create/Update/ModifyPushConfig request does to the subscription's secret.
#[derive(Debug, Clone)]
pub enum SecretChange {
    /// Keep the stored secret (the attribute said `configured`).
    Keep,
    /// Store this secret; `generated` when the broker made it (and must return it once).
    Set {
        /// The new secret.
        secret: WebhookSecret,
        /// Whether the broker generated it.
        generated: bool,
    },
    /// No secret: delete any stored one.
    Remove,
}

/// Which request carries the push config: it decides what may be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// CreateSubscription: nothing to keep yet.
    Create,
    /// UpdateSubscription: may keep, generate (returned in the answer) or set.
    Update,
    /// ModifyPushConfig: answers `Empty`, so cannot return a generated secret.
    ModifyPushConfig,
}

/// Takes the secret out of a push config before it is stored: the attribute is rewritten to
/// `configured` (or stays absent), and the change to apply once the resource is written is
/// returned. Call it on the resource as it will be stored, before anything encodes it.
pub fn take_webhook_secret(
    push_config: Option<&mut v1::PushConfig>,
    origin: Origin,
) -> Result<SecretChange, TakeSecretError> {
    let Some(config) = push_config else {
        return Ok(SecretChange::Remove);
    };
    let Some(value) = config.attributes.get(SECRET_ATTRIBUTE) else {
        return Ok(SecretChange::Remove);
    };
    let change = match value.as_str() {
        CONFIGURED if origin == Origin::Create => {
            return Err(WebhookSecretError::NothingToKeep.into());
        }
        CONFIGURED => SecretChange::Keep,
        GENERATE if origin == Origin::ModifyPushConfig => {
            return Err(WebhookSecretError::CannotReturn.into());
        }
        GENERATE => SecretChange::Set {
            secret: WebhookSecret::generate()?,
            generated: true,
        },
        other => SecretChange::Set {
            secret: WebhookSecret::parse(other)?,
            generated: false,
        },
    };
    config
        .attributes
        .insert(SECRET_ATTRIBUTE.to_owned(), CONFIGURED.to_owned());
    Ok(change)
}

/// Either error of [`take_webhook_secret`]: the client's (`INVALID_ARGUMENT`) or the broker's
/// random source.
#[derive(Debug, thiserror::Error)]
pub enum TakeSecretError {
    /// The client's setting is invalid.
    #[error(transparent)]
    Invalid(#[from] WebhookSecretError),
    /// The broker could not generate a secret.
    #[error(transparent)]
    Broker(#[from] PushAuthError),
}

impl From<TakeSecretError> for ApiError {
    /// The client's mistakes are `INVALID_ARGUMENT`; a failing random source is `INTERNAL`, its
    /// detail logged rather than returned.
    fn from(error: TakeSecretError) -> Self {
        match error {
            TakeSecretError::Invalid(e) => ApiError::invalid(e.to_string()),
            TakeSecretError::Broker(e) => {
                tracing::error!(error = %e, "cannot generate a webhook secret");
                ApiError::new(tonic::Code::Internal, "cannot generate a webhook secret")
            }
        }
    }
}

/// Applies a change once the subscription `subscription` (its full name) has been written.
pub async fn save(
    store: &dyn Store,
    subscription: &str,
    change: &SecretChange,
) -> converge_core::Result<()> {
    match change {
        SecretChange::Keep => Ok(()),
        SecretChange::Set { secret, .. } => {
            let text = Bytes::copy_from_slice(secret.expose().as_bytes());
            store.put_document(SECRET_KIND, subscription, text).await?;
            tracing::info!(subscription, "push webhook secret set");
            Ok(())
        }
        SecretChange::Remove => {
            if store.delete_document(SECRET_KIND, subscription).await? {
                tracing::info!(subscription, "push webhook secret removed");
            }
            Ok(())
        }
    }
}

/// Puts a generated secret into the answer to the request that generated it: the one time the
/// client sees it. Other changes leave the answer as stored (`configured` or no attribute).
pub fn reveal(answer: &mut v1::Subscription, change: &SecretChange) {
    let SecretChange::Set {
        secret,
        generated: true,
    } = change
    else {
        return;
    };
    if let Some(config) = answer.push_config.as_mut() {
        debug_assert!(config.attributes.contains_key(SECRET_ATTRIBUTE));
        config
            .attributes
            .insert(SECRET_ATTRIBUTE.to_owned(), secret.expose().to_owned());
    }
}

/// Whether pushes of this config are to be signed.
pub fn is_configured(push_config: &v1::PushConfig) -> bool {
    push_config
        .attributes
        .get(SECRET_ATTRIBUTE)
        .is_some_and(|v| v == CONFIGURED)
}

/// The stored secret of `subscription`.
pub async fn load_secret(
    store: &dyn Store,
    subscription: &str,
) -> Result<WebhookSecret, PushAuthError> {
    let Some(bytes) = store.get_document(SECRET_KIND, subscription).await? else {
        return Err(PushAuthError::MissingWebhookSecret(subscription.to_owned()));
    };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| WebhookSecret::parse(text).ok())
        .ok_or_else(|| PushAuthError::BadWebhookSecret(subscription.to_owned()))
}

/// The three headers of one signed delivery at `now`.
pub fn sign_headers(
    secret: &WebhookSecret,
    message_id: &str,
    now: SystemTime,
    body: &[u8],
) -> Result<Vec<(HeaderName, HeaderValue)>, PushAuthError> {
    let timestamp = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let id = HeaderValue::from_str(message_id)
        .map_err(|_| PushAuthError::InvalidMessageId(message_id.to_owned()))?;
    let signature = HeaderValue::try_from(secret.sign(message_id, timestamp, body))
        .expect("v1, and base64 are valid header characters");
    Ok(vec![
        (HeaderName::from_static(HEADER_ID), id),
        (
            HeaderName::from_static(HEADER_TIMESTAMP),
            HeaderValue::from(timestamp),
        ),
        (HeaderName::from_static(HEADER_SIGNATURE), signature),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::auth::tests::memory_store;

    /// The test vector published with the specification.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: u64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn config_with(value: &str) -> v1::PushConfig {
        v1::PushConfig {
            push_endpoint: "https://receiver.example/push".into(),
            attributes: [(SECRET_ATTRIBUTE.to_owned(), value.to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_signature_matches_the_specification_test_vector() {
        let secret = WebhookSecret::parse(SPEC_SECRET).expect("valid");
        assert_eq!(
            secret.sign(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
        assert_ne!(
            secret.sign(SPEC_ID, SPEC_TIMESTAMP + 1, SPEC_BODY),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn headers_carry_id_timestamp_and_signature() {
        let secret = WebhookSecret::parse(SPEC_SECRET).expect("valid");
        let at = UNIX_EPOCH + std::time::Duration::from_secs(SPEC_TIMESTAMP);
        let headers = sign_headers(&secret, SPEC_ID, at, SPEC_BODY).expect("headers");
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(find(HEADER_ID).as_deref(), Some(SPEC_ID));
        assert_eq!(find(HEADER_TIMESTAMP).as_deref(), Some("1614265330"));
        assert_eq!(find(HEADER_SIGNATURE).as_deref(), Some(SPEC_SIGNATURE));
    }

    #[test]
    fn secrets_are_validated_and_generated_ones_parse_back() {
        let generated = WebhookSecret::generate().expect("random");
        assert!(generated.expose().starts_with(SECRET_PREFIX));
        let parsed = WebhookSecret::parse(generated.expose()).expect("valid");
        assert_eq!(parsed.key.len(), GENERATED_BYTES);
        assert_ne!(
            WebhookSecret::generate().expect("random").expose(),
            generated.expose()
        );
        for bad in [
            "",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
        ] {
            assert!(WebhookSecret::parse(bad).is_err(), "{bad}");
        }
        assert!(!format!("{generated:?}").contains(generated.expose()));
    }

    #[test]
    fn taking_the_secret_leaves_only_configured_in_the_resource() {
        let mut config = config_with(GENERATE);
        let change = take_webhook_secret(Some(&mut config), Origin::Create).expect("ok");
        let SecretChange::Set { secret, generated } = &change else {
            panic!("a new secret: {change:?}");
        };
        assert!(generated);
        assert_eq!(config.attributes[SECRET_ATTRIBUTE], CONFIGURED);
        assert!(!format!("{config:?}").contains(secret.expose()));

        let mut config = config_with(SPEC_SECRET);
        let change = take_webhook_secret(Some(&mut config), Origin::Update).expect("ok");
        assert!(matches!(
            change,
            SecretChange::Set {
                generated: false,
                ..
            }
        ));
        assert_eq!(config.attributes[SECRET_ATTRIBUTE], CONFIGURED);
    }

    #[test]
    fn what_each_request_may_ask_for() {
        let take = |value: &str, origin| take_webhook_secret(Some(&mut config_with(value)), origin);
        assert!(matches!(
            take(CONFIGURED, Origin::Update),
            Ok(SecretChange::Keep)
        ));
        assert!(matches!(
            take(CONFIGURED, Origin::Create),
            Err(TakeSecretError::Invalid(WebhookSecretError::NothingToKeep))
        ));
        assert!(matches!(
            take(GENERATE, Origin::ModifyPushConfig),
            Err(TakeSecretError::Invalid(WebhookSecretError::CannotReturn))
        ));
        assert!(matches!(
            take("hunter2", Origin::Update),
            Err(TakeSecretError::Invalid(WebhookSecretError::Malformed))
        ));
        let mut plain = v1::PushConfig::default();
        assert!(matches!(
            take_webhook_secret(Some(&mut plain), Origin::Update),
            Ok(SecretChange::Remove)
        ));
        assert!(matches!(
            take_webhook_secret(None, Origin::Update),
            Ok(SecretChange::Remove)
        ));
    }

    #[test]
    fn only_a_generated_secret_is_revealed_in_the_answer() {
        let mut config = config_with(GENERATE);
        let change = take_webhook_secret(Some(&mut config), Origin::Create).expect("ok");
        let stored = v1::Subscription {
            push_config: Some(config),
            ..Default::default()
        };
        let mut answer = stored.clone();
        reveal(&mut answer, &change);
        let shown = &answer.push_config.as_ref().expect("config").attributes[SECRET_ATTRIBUTE];
        assert!(shown.starts_with(SECRET_PREFIX));

        let mut config = config_with(SPEC_SECRET);
        let change = take_webhook_secret(Some(&mut config), Origin::Create).expect("ok");
        let mut answer = v1::Subscription {
            push_config: Some(config),
            ..Default::default()
        };
        reveal(&mut answer, &change);
        let shown = &answer.push_config.as_ref().expect("config").attributes[SECRET_ATTRIBUTE];
        assert_eq!(shown, CONFIGURED);
    }

    #[tokio::test]
    async fn saved_secrets_load_back_and_removal_deletes_them() {
        let store = memory_store();
        let sub = "projects/p/subscriptions/s";
        let mut config = config_with(SPEC_SECRET);
        let change = take_webhook_secret(Some(&mut config), Origin::Create).expect("ok");
        save(store.as_ref(), sub, &change).await.expect("saved");
        let loaded = load_secret(store.as_ref(), sub).await.expect("loaded");
        assert_eq!(loaded.expose(), SPEC_SECRET);
        save(store.as_ref(), sub, &SecretChange::Keep)
            .await
            .expect("kept");
        assert!(load_secret(store.as_ref(), sub).await.is_ok());
        save(store.as_ref(), sub, &SecretChange::Remove)
            .await
            .expect("removed");
        assert!(matches!(
            load_secret(store.as_ref(), sub).await,
            Err(PushAuthError::MissingWebhookSecret(_))
        ));
    }
}
