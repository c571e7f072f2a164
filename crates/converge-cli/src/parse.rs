//! Parsers for command-line values: endpoints, `key=value` pairs, durations and resource names.
//!
//! They run inside clap (as `value_parser`s), so a malformed value is reported as a usage error
//! (exit code 2) before any connection is made.

use std::fmt;
use std::time::Duration;

use converge_core::name::validate_resource_id;
use converge_core::{ProjectId, SubscriptionName, TopicName};

/// Endpoints are the SDK's: the CLI and services parse and read them the same way.
pub use converge::client::Endpoint;

/// Parses `host:port` or `http://host:port` (the form of `PUBSUB_EMULATOR_HOST` and of a URL),
/// as a clap value parser.
pub fn endpoint(s: &str) -> Result<Endpoint, String> {
    Endpoint::parse(s).map_err(|e| e.to_string())
}

/// Parses one `key=value` pair (labels, attributes). The value may contain `=`; the key may not
/// be empty.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("\"{s}\": expected key=value"));
    };
    if key.is_empty() {
        return Err(format!("\"{s}\": the key must not be empty"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Parses a duration such as `30s`, `10m`, `24h`, `7d` or `1h 30m` (humantime syntax, where `d`
/// is a day).
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("\"{s}\": {e} (examples: 30s, 10m, 24h, 7d)"))
}

/// Parses a duration that must be a whole number of seconds, for API fields kept in seconds.
pub fn whole_seconds(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.subsec_nanos() != 0 {
        return Err(format!("\"{s}\": must be a whole number of seconds"));
    }
    Ok(d)
}

/// A time limit that may be switched off: `--expiration-ttl 31d|never`,
/// `--retry-max-duration 7d|none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Ends after this long.
    After(Duration),
    /// No limit.
    Never,
}

/// Parses a duration, or `never` / `none` for no limit.
pub fn limit(s: &str) -> Result<Limit, String> {
    let word = s.trim();
    if word.eq_ignore_ascii_case("never") || word.eq_ignore_ascii_case("none") {
        return Ok(Limit::Never);
    }
    duration(s).map(Limit::After)
}

/// Parses `--project`.
pub fn project(s: &str) -> Result<ProjectId, String> {
    ProjectId::new(s).map_err(|e| e.to_string())
}

/// The shape of one kind of resource name, so that short and full names are handled once for
/// topics and subscriptions.
pub trait ResourceName: Sized + Clone + fmt::Display {
    /// The kind, as in error messages (`topic`).
    const KIND: &'static str;
    /// Parses a full name.
    fn parse_full(name: &str) -> Result<Self, String>;
    /// Builds a full name from a project and a short id.
    fn from_parts(project: ProjectId, id: &str) -> Result<Self, String>;
}

impl ResourceName for TopicName {
    const KIND: &'static str = "topic";
    fn parse_full(name: &str) -> Result<Self, String> {
        TopicName::parse(name).map_err(|e| e.to_string())
    }
    fn from_parts(project: ProjectId, id: &str) -> Result<Self, String> {
        TopicName::new(project, id).map_err(|e| e.to_string())
    }
}

impl ResourceName for SubscriptionName {
    const KIND: &'static str = "subscription";
    fn parse_full(name: &str) -> Result<Self, String> {
        SubscriptionName::parse(name).map_err(|e| e.to_string())
    }
    fn from_parts(project: ProjectId, id: &str) -> Result<Self, String> {
        SubscriptionName::new(project, id).map_err(|e| e.to_string())
    }
}

/// A resource named on the command line, short (`orders`, in the `--project`) or full
/// (`projects/p/topics/orders`). It is validated when parsed and expanded once the project is
/// known, because `--project` may come after the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameArg<T> {
    /// A full name, used as given.
    Full(T),
    /// A short id, valid for this kind of resource.
    Short(String),
}

impl<T: ResourceName> NameArg<T> {
    /// The full name, with a short id placed in `project`.
    pub fn expand(&self, project: &ProjectId) -> anyhow::Result<T> {
        match self {
            Self::Full(name) => Ok(name.clone()),
            Self::Short(id) => T::from_parts(project.clone(), id).map_err(anyhow::Error::msg),
        }
    }
}

/// Parses a topic or subscription name, short or full.
pub fn name<T: ResourceName>(s: &str) -> Result<NameArg<T>, String> {
    if s.contains('/') {
        return T::parse_full(s).map(NameArg::Full);
    }
    validate_resource_id(T::KIND, s).map_err(|e| e.to_string())?;
    Ok(NameArg::Short(s.to_owned()))
}

/// Parses a topic name, short or full (clap needs a plain function per type).
pub fn topic_name(s: &str) -> Result<NameArg<TopicName>, String> {
    name(s)
}

/// Parses a subscription name, short or full.
pub fn subscription_name(s: &str) -> Result<NameArg<SubscriptionName>, String> {
    name(s)
}

/// Converts a duration to its protobuf form.
pub fn to_proto_duration(d: Duration) -> prost_types::Duration {
    // A duration parsed from the command line is far below i64::MAX seconds.
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_errors_are_the_sdk_messages() {
        // The parsing itself is tested in the SDK (converge::client::Endpoint).
        assert_eq!(endpoint("h:1").unwrap().uri(), "http://h:1");
        assert_eq!(
            endpoint("localhost").unwrap_err(),
            "\"localhost\": missing port; expected host:port"
        );
    }

    #[test]
    fn key_value_splits_at_the_first_equals_sign() {
        assert_eq!(key_value("a=b").unwrap(), ("a".into(), "b".into()));
        assert_eq!(key_value("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(key_value("a=").unwrap(), ("a".into(), String::new()));
        assert!(key_value("ab").is_err());
        assert!(key_value("=b").is_err());
    }

    #[test]
    fn durations_accept_units_up_to_days() {
        assert_eq!(duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(duration("1h 30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(duration("soon").is_err());
        assert!(duration("10").is_err());
        assert!(
            whole_seconds("1500ms")
                .unwrap_err()
                .contains("whole number")
        );
        assert_eq!(whole_seconds("2m").unwrap(), Duration::from_secs(120));
    }

    #[test]
    fn limits_accept_never_or_a_duration() {
        assert_eq!(limit("never").unwrap(), Limit::Never);
        assert_eq!(limit("NEVER").unwrap(), Limit::Never);
        assert_eq!(limit("none").unwrap(), Limit::Never);
        assert_eq!(
            limit("31d").unwrap(),
            Limit::After(Duration::from_secs(31 * 86_400))
        );
        assert!(limit("later").is_err());
    }

    #[test]
    fn short_names_expand_into_the_project() {
        let p = project("p1").unwrap();
        let short = topic_name("orders").unwrap();
        assert_eq!(
            short.expand(&p).unwrap().to_string(),
            "projects/p1/topics/orders"
        );
        let full = topic_name("projects/other/topics/orders").unwrap();
        assert_eq!(
            full.expand(&p).unwrap().to_string(),
            "projects/other/topics/orders"
        );
        let sub = subscription_name("work").unwrap();
        assert_eq!(
            sub.expand(&p).unwrap().to_string(),
            "projects/p1/subscriptions/work"
        );
    }

    #[test]
    fn names_are_validated_when_parsed() {
        assert!(topic_name("ab").unwrap_err().contains("between 3 and 255"));
        assert!(topic_name("goog-x").unwrap_err().contains("goog"));
        assert!(topic_name("projects/p/subscriptions/abc").is_err());
        assert!(subscription_name("projects/p/topics/abc").is_err());
        assert!(subscription_name("projects/p/subscriptions/abc").is_ok());
        assert!(project("a/b").is_err());
    }

    #[test]
    fn proto_durations_keep_seconds_and_nanos() {
        let d = to_proto_duration(Duration::from_millis(1_500));
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
    }
}
