//! Where the broker is: `host:port` or `http://host:port`, from the caller or the environment.
//!
//! The broker speaks plain-text HTTP/2 (h2c) only, like the official emulator, so an endpoint
//! is an authority and nothing else: a path, another scheme or TLS is refused when parsed
//! rather than failing later at connection time with a less helpful message.

use std::fmt;
use std::str::FromStr;

/// The default broker address, the same port as the official emulator's.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:8085";

/// The environment variables read by [`Endpoint::from_env`], in order of precedence:
/// converge's own, then the one the official Pub/Sub clients read in emulator mode.
pub const ENDPOINT_ENV_VARS: [&str; 2] = ["CONVERGE_ENDPOINT", "PUBSUB_EMULATOR_HOST"];

/// A broker address, always plain-text HTTP/2 (h2c): the broker speaks no TLS.
///
/// ```
/// use converge::client::Endpoint;
///
/// let endpoint: Endpoint = "localhost:8085".parse()?;
/// assert_eq!(endpoint.uri(), "http://localhost:8085");
/// # Ok::<(), converge::client::EndpointError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `host:port`, where host may be a bracketed IPv6 address.
    authority: String,
}

/// Why an address is not a usable endpoint. Each message quotes the input and says what was
/// expected, so it can be shown to a user as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// `https://…`: the broker has no TLS.
    #[error("\"{input}\": TLS is not supported; use http://host:port or host:port")]
    Tls {
        /// The address as given (trimmed).
        input: String,
    },
    /// A path, another scheme, or some other shape than an authority.
    #[error("\"{input}\": expected host:port or http://host:port")]
    NotAnAuthority {
        /// The address as given (trimmed).
        input: String,
    },
    /// No `:port`.
    #[error("\"{input}\": missing port; expected host:port")]
    MissingPort {
        /// The address as given (trimmed).
        input: String,
    },
    /// An empty host, or an IPv6 address without brackets.
    #[error("\"{input}\": expected host:port (IPv6 hosts in brackets: [::1]:8085)")]
    BadHost {
        /// The address as given (trimmed).
        input: String,
    },
    /// A port that is not a number from 1 to 65535.
    #[error("\"{input}\": port must be a number from 1 to 65535")]
    BadPort {
        /// The address as given (trimmed).
        input: String,
    },
    /// An environment variable holds a malformed address; names the variable, because the
    /// user did not type the address in the failing command.
    #[error("{var}: {error}")]
    Env {
        /// The variable read (`CONVERGE_ENDPOINT`, `PUBSUB_EMULATOR_HOST`).
        var: String,
        /// What is wrong with its value.
        error: Box<EndpointError>,
    },
}

impl Endpoint {
    /// Parses `host:port` or `http://host:port` (the form of `PUBSUB_EMULATOR_HOST` and of a
    /// URL). Surrounding whitespace and one trailing `/` are ignored.
    pub fn parse(s: &str) -> Result<Self, EndpointError> {
        let s = s.trim();
        let input = || s.to_owned();
        if s.starts_with("https://") {
            return Err(EndpointError::Tls { input: input() });
        }
        let authority = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
        if authority.contains('/') || authority.contains("://") {
            return Err(EndpointError::NotAnAuthority { input: input() });
        }
        let Some((host, port)) = authority.rsplit_once(':') else {
            return Err(EndpointError::MissingPort { input: input() });
        };
        if host.is_empty()
            || (host.contains(':') && !(host.starts_with('[') && host.ends_with(']')))
        {
            return Err(EndpointError::BadHost { input: input() });
        }
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(EndpointError::BadPort { input: input() });
        }
        Ok(Self {
            authority: authority.to_owned(),
        })
    }

    /// The endpoint from the environment: `CONVERGE_ENDPOINT`, then `PUBSUB_EMULATOR_HOST`
    /// (so a service configured for the official emulator finds converge unchanged), then
    /// [`DEFAULT_ENDPOINT`]. Empty values count as unset; a malformed value is an error rather
    /// than silently falling through to the next source.
    pub fn from_env() -> Result<Self, EndpointError> {
        Self::from_env_with(|var| std::env::var(var).ok())
    }

    /// [`Endpoint::from_env`] over any source of variables, so callers (and tests) need not
    /// touch the process environment.
    pub fn from_env_with(var: impl Fn(&str) -> Option<String>) -> Result<Self, EndpointError> {
        for key in ENDPOINT_ENV_VARS {
            if let Some(value) = var(key).filter(|v| !v.trim().is_empty()) {
                return Self::parse(&value).map_err(|error| EndpointError::Env {
                    var: key.to_owned(),
                    error: Box::new(error),
                });
            }
        }
        Self::parse(DEFAULT_ENDPOINT)
    }

    /// The URI tonic connects to, `http://host:port`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.authority)
    }

    /// `host:port`, as `PUBSUB_EMULATOR_HOST` spells it.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn accepts_host_port_and_http_urls() {
        assert_eq!(
            Endpoint::parse("127.0.0.1:8085").unwrap().uri(),
            "http://127.0.0.1:8085"
        );
        assert_eq!(
            Endpoint::parse("http://localhost:9000/").unwrap().uri(),
            "http://localhost:9000"
        );
        assert_eq!(
            Endpoint::parse(" [::1]:8085 ").unwrap().uri(),
            "http://[::1]:8085"
        );
        let e: Endpoint = "http://[::1]:1".parse().unwrap();
        assert_eq!(e.to_string(), "http://[::1]:1");
        assert_eq!(e.authority(), "[::1]:1");
    }

    #[test]
    fn rejects_malformed_addresses_with_a_reason() {
        for (bad, why) in [
            ("localhost", "missing port"),
            ("localhost:", "port must be"),
            ("localhost:0", "port must be"),
            ("localhost:70000", "port must be"),
            (":8085", "expected host:port"),
            ("::1:8085", "IPv6"),
            ("https://host:443", "TLS"),
            ("http://host:1/path", "expected host:port"),
            ("grpc://host:1", "expected host:port"),
        ] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.starts_with(&format!("\"{}\"", bad.trim())), "{err}");
        }
        assert_eq!(
            Endpoint::parse("https://h:1").unwrap_err().to_string(),
            "\"https://h:1\": TLS is not supported; use http://host:port or host:port"
        );
    }

    #[test]
    fn env_precedence_is_converge_then_emulator_then_default() {
        let both = [
            ("CONVERGE_ENDPOINT", "a:1"),
            ("PUBSUB_EMULATOR_HOST", "b:2"),
        ];
        assert_eq!(
            Endpoint::from_env_with(env(&both)).unwrap().uri(),
            "http://a:1"
        );
        assert_eq!(
            Endpoint::from_env_with(env(&[("PUBSUB_EMULATOR_HOST", "b:2")]))
                .unwrap()
                .uri(),
            "http://b:2"
        );
        assert_eq!(
            Endpoint::from_env_with(env(&[("CONVERGE_ENDPOINT", " ")]))
                .unwrap()
                .uri(),
            "http://127.0.0.1:8085"
        );
        assert_eq!(
            Endpoint::from_env_with(env(&[])).unwrap().uri(),
            "http://127.0.0.1:8085"
        );
    }

    #[test]
    fn a_malformed_env_value_names_its_variable() {
        let err = Endpoint::from_env_with(env(&[
            ("CONVERGE_ENDPOINT", "not an address"),
            ("PUBSUB_EMULATOR_HOST", "b:2"),
        ]))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "CONVERGE_ENDPOINT: \"not an address\": missing port; expected host:port"
        );
    }
}
