//! Dead-letter policy: after how many delivery attempts a message leaves its subscription for
//! a dead-letter topic, and the attributes that record where it came from.

use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::message::Attributes;
use crate::name::{SubscriptionName, TopicName};

/// The smallest `max_delivery_attempts` the real service accepts.
pub const MIN_DELIVERY_ATTEMPTS: u32 = 5;
/// The largest `max_delivery_attempts` the real service accepts.
pub const MAX_DELIVERY_ATTEMPTS: u32 = 100;
/// What `max_delivery_attempts = 0` means.
pub const DEFAULT_DELIVERY_ATTEMPTS: u32 = 5;

/// Where messages go after too many failed deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterPolicy {
    /// The topic that receives the dead-lettered messages.
    pub topic: TopicName,
    /// Deliveries before a message is dead-lettered, 5 to 100.
    pub max_delivery_attempts: u32,
}

impl DeadLetterPolicy {
    /// Validates a policy as the real service does; `max_delivery_attempts = 0` means 5.
    pub fn new(topic: TopicName, max_delivery_attempts: i32) -> Result<Self> {
        let attempts = match max_delivery_attempts {
            0 => DEFAULT_DELIVERY_ATTEMPTS,
            n if (MIN_DELIVERY_ATTEMPTS as i32..=MAX_DELIVERY_ATTEMPTS as i32).contains(&n) => {
                n as u32
            }
            n => {
                return Err(Error::invalid(format!(
                    "Invalid dead_letter_policy.max_delivery_attempts {n}: must be between \
                     {MIN_DELIVERY_ATTEMPTS} and {MAX_DELIVERY_ATTEMPTS}"
                )));
            }
        };
        Ok(Self {
            topic,
            max_delivery_attempts: attempts,
        })
    }

    /// Whether a message that has been delivered `attempts` times must now be dead-lettered
    /// instead of delivered again.
    pub fn is_exhausted(&self, attempts: u32) -> bool {
        attempts >= self.max_delivery_attempts
    }
}

/// The attributes added to a dead-lettered message, named as the official emulator names them.
pub fn dead_letter_attributes(
    mut attributes: Attributes,
    source: &SubscriptionName,
    source_publish_time: SystemTime,
    delivery_count: u32,
) -> Attributes {
    let publish_time = humanish_rfc3339(source_publish_time);
    attributes.insert(
        "CloudPubSubDeadLetterSourceSubscription".into(),
        source.id().to_string(),
    );
    attributes.insert(
        "CloudPubSubDeadLetterSourceSubscriptionProject".into(),
        source.project().as_str().to_string(),
    );
    attributes.insert(
        "CloudPubSubDeadLetterSourceTopicPublishTime".into(),
        publish_time,
    );
    attributes.insert(
        "CloudPubSubDeadLetterSourceDeliveryCount".into(),
        delivery_count.to_string(),
    );
    attributes
}

/// Formats a time as RFC 3339 in UTC with millisecond precision, without pulling a date crate
/// into the core (civil-from-days, Howard Hinnant's algorithm).
pub fn humanish_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::name::ProjectId;

    fn topic() -> TopicName {
        TopicName::new(ProjectId::new("p").unwrap(), "dead").unwrap()
    }

    #[test]
    fn attempts_bounds_follow_the_real_service() {
        assert_eq!(
            DeadLetterPolicy::new(topic(), 0)
                .unwrap()
                .max_delivery_attempts,
            5
        );
        assert!(DeadLetterPolicy::new(topic(), 4).is_err());
        assert!(DeadLetterPolicy::new(topic(), 101).is_err());
        let p = DeadLetterPolicy::new(topic(), 7).unwrap();
        assert!(!p.is_exhausted(6));
        assert!(p.is_exhausted(7));
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(
            humanish_rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
        assert_eq!(humanish_rfc3339(t), "2024-02-29T23:59:59.123Z");
    }
}
