//! Resource names: `projects/{project}/topics/{topic}` and
//! `projects/{project}/subscriptions/{subscription}`.
//!
//! A name is validated once, when it is parsed; a value of these types is always valid.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The topic name a subscription shows once its topic has been deleted.
pub const DELETED_TOPIC: &str = "_deleted-topic_";

/// A project id. converge keeps projects apart but does not manage them: any id is accepted
/// on first use, as the official emulator does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProjectId(String);

impl ProjectId {
    /// Validates a project id: 1 to 255 characters, no `/`.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty()
            || id.len() > 255
            || id.contains('/')
            || id.chars().any(char::is_whitespace)
        {
            return Err(Error::invalid(format!("Invalid project id: \"{id}\"")));
        }
        Ok(Self(id))
    }

    /// Parses `projects/{project}`.
    pub fn parse(name: &str) -> Result<Self> {
        let id = name.strip_prefix("projects/").ok_or_else(|| {
            Error::invalid(format!(
                "Invalid project name: \"{name}\"; expected projects/{{project}}"
            ))
        })?;
        Self::new(id)
    }

    /// The bare id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "projects/{}", self.0)
    }
}

/// Checks a topic, subscription or snapshot id against the rules of the real service:
/// 3 to 255 characters, starting with a letter, made of `[A-Za-z0-9-_.~+%]`, not starting
/// with `goog`.
pub fn validate_resource_id(kind: &str, id: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid(format!("Invalid {kind} id \"{id}\": {why}")));
    if id.len() < 3 || id.len() > 255 {
        return bad("must be between 3 and 255 characters long");
    }
    if !id.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return bad("must start with a letter");
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.~+%".contains(*c)))
    {
        return bad(&format!(
            "character '{c}' is not allowed; use letters, digits and -_.~+%"
        ));
    }
    if id.to_ascii_lowercase().starts_with("goog") {
        return bad("must not start with \"goog\"");
    }
    Ok(())
}

macro_rules! resource_name {
    ($(#[$doc:meta])* $ty:ident, $collection:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $ty {
            project: ProjectId,
            id: String,
        }

        impl $ty {
            /// Builds a name from a project and an id, validating the id.
            pub fn new(project: ProjectId, id: impl Into<String>) -> Result<Self> {
                let id = id.into();
                validate_resource_id($kind, &id)?;
                Ok(Self { project, id })
            }

            /// Parses the full name, `projects/{project}/` followed by the collection and id.
            pub fn parse(name: &str) -> Result<Self> {
                let invalid = || {
                    Error::invalid(format!(
                        concat!("Invalid ", $kind, " name: \"{}\"; expected projects/{{project}}/", $collection, "/{{", $kind, "}}"),
                        name
                    ))
                };
                let rest = name.strip_prefix("projects/").ok_or_else(invalid)?;
                let (project, rest) = rest.split_once('/').ok_or_else(invalid)?;
                let id = rest.strip_prefix(concat!($collection, "/")).ok_or_else(invalid)?;
                if id.contains('/') {
                    return Err(invalid());
                }
                Self::new(ProjectId::new(project).map_err(|_| invalid())?, id)
            }

            /// The project the resource belongs to.
            pub fn project(&self) -> &ProjectId {
                &self.project
            }

            /// The short id, without the project.
            pub fn id(&self) -> &str {
                &self.id
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!("projects/{}/", $collection, "/{}"), self.project.as_str(), self.id)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }
    };
}

resource_name!(
    /// `projects/{project}/topics/{topic}`.
    TopicName,
    "topics",
    "topic"
);
resource_name!(
    /// `projects/{project}/subscriptions/{subscription}`.
    SubscriptionName,
    "subscriptions",
    "subscription"
);
resource_name!(
    /// `projects/{project}/snapshots/{snapshot}`.
    SnapshotName,
    "snapshots",
    "snapshot"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_full_names() {
        let t = TopicName::parse("projects/p1/topics/orders").unwrap();
        assert_eq!(t.project().as_str(), "p1");
        assert_eq!(t.id(), "orders");
        assert_eq!(t.to_string(), "projects/p1/topics/orders");
        let s: SubscriptionName = "projects/p1/subscriptions/a.b~c+d%e_f-g".parse().unwrap();
        assert_eq!(s.id(), "a.b~c+d%e_f-g");
    }

    #[test]
    fn rejects_wrong_shapes() {
        for bad in [
            "",
            "topics/x",
            "projects/p/subscriptions/abc",
            "projects//topics/abc",
            "projects/p/topics/abc/extra",
            "projects/p/topics/",
        ] {
            assert!(TopicName::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn applies_id_rules() {
        let p = ProjectId::new("p").unwrap();
        assert!(TopicName::new(p.clone(), "abc").is_ok());
        assert!(TopicName::new(p.clone(), "a".repeat(255)).is_ok());
        let err = |id: &str| TopicName::new(p.clone(), id).unwrap_err().to_string();
        assert!(err("ab").contains("between 3 and 255"));
        assert!(err(&"a".repeat(256)).contains("between 3 and 255"));
        assert!(err("1abc").contains("start with a letter"));
        assert!(err("ab c").contains("' ' is not allowed"));
        assert!(err("ab/c").contains("'/' is not allowed"));
        assert!(err("googthing").contains("goog"));
        assert!(err("GOOGthing").contains("goog"));
    }
}
