//! Which hosts a pod may reach through `wasi:http`, and how many requests it may have in
//! flight, read from the pod's annotations (Krustlet's names); the provider enforces it where
//! wasmtime-wasi-http hands over each request to send.
//!
//! Nothing is reachable unless the pod says so: without the allowed-domains annotation every
//! request is denied, as in Krustlet. A malformed annotation is an error for the container's
//! status, never a silent allow-all or deny-all.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::egress::EgressPolicy;

/// The pod annotation listing the hosts a pod may send HTTP requests to.
pub const ALLOWED_DOMAINS: &str = "alpha.wasi.krustlet.dev/allowed-domains";
/// The pod annotation bounding a container's outbound HTTP requests in flight.
pub const MAX_CONCURRENT_REQUESTS: &str = "alpha.wasi.krustlet.dev/max-concurrent-requests";

const EXPECTED_LIST: &str =
    r#"a JSON list of URLs or hosts, e.g. ["https://api.example.com", "example.org:8443"]"#;
const EXPECTED_ENTRY: &str = "http(s)://host[:port] or host[:port]";
/// Annotation values can be large; a status message quotes at most this many characters.
const QUOTED_CHARS: usize = 120;

/// A pod's outbound HTTP annotations could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The allowed-domains annotation is not JSON.
    // The parser's complaint is part of the message (not a `#[source]`) because the message
    // is all a pod's status shows, and it reads best before the expected form.
    #[error(
        "annotation {ALLOWED_DOMAINS} is not valid JSON ({cause}): {value:?}; expected {EXPECTED_LIST}"
    )]
    NotJson {
        /// The annotation's value (shortened).
        value: String,
        /// Where and why the JSON parser stopped.
        cause: String,
    },
    /// The allowed-domains annotation is JSON but not a list.
    #[error("annotation {ALLOWED_DOMAINS} is not a list: {value:?}; expected {EXPECTED_LIST}")]
    NotAList {
        /// The annotation's value (shortened).
        value: String,
    },
    /// A list entry is not a string.
    #[error(
        "annotation {ALLOWED_DOMAINS} has an entry that is not a string: {entry}; expected {EXPECTED_LIST}"
    )]
    NotAString {
        /// The entry, as JSON (shortened).
        entry: String,
    },
    /// A list entry is a string that names no host.
    #[error(
        "annotation {ALLOWED_DOMAINS} has an invalid entry {entry:?} ({why}); expected {EXPECTED_ENTRY}"
    )]
    BadEntry {
        /// The entry (shortened).
        entry: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The concurrency bound is not a positive integer.
    #[error(
        "annotation {MAX_CONCURRENT_REQUESTS} is {value:?}; expected a positive integer, e.g. \"4\""
    )]
    BadConcurrency {
        /// The annotation's value (shortened).
        value: String,
    },
}

/// What a pod's containers may do over outbound HTTP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpPolicy {
    allowed: Vec<Allowed>,
    /// Whether the pod has the allowed-domains annotation at all (for the denial's log line).
    annotated: bool,
    max_concurrent: Option<usize>,
    /// The node's own rule, which the pod's list cannot widen.
    egress: Arc<EgressPolicy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Some(Self::Http),
            "https" => Some(Self::Https),
            _ => None,
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// One allowed-domains entry. A URL entry pins the scheme and the port (its default port if
/// none is written); a bare host allows either scheme, on that scheme's default port unless
/// a port is written: `example.com` must not open `example.com:22`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Allowed {
    scheme: Option<Scheme>,
    host: String,
    port: Option<u16>,
}

impl HttpPolicy {
    /// Reads [`ALLOWED_DOMAINS`] (absent: nothing is reachable) and
    /// [`MAX_CONCURRENT_REQUESTS`] (absent: no bound).
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, PolicyError> {
        let max_concurrent = annotations
            .get(MAX_CONCURRENT_REQUESTS)
            .map(|value| match value.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(PolicyError::BadConcurrency {
                    value: shorten(value),
                }),
            })
            .transpose()?;
        let Some(value) = annotations.get(ALLOWED_DOMAINS) else {
            return Ok(Self {
                allowed: Vec::new(),
                annotated: false,
                max_concurrent,
                egress: Arc::default(),
            });
        };
        let json: serde_json::Value =
            serde_json::from_str(value).map_err(|err| PolicyError::NotJson {
                value: shorten(value),
                cause: err.to_string(),
            })?;
        let serde_json::Value::Array(entries) = json else {
            return Err(PolicyError::NotAList {
                value: shorten(value),
            });
        };
        let allowed = entries
            .iter()
            .map(|entry| {
                let serde_json::Value::String(entry) = entry else {
                    return Err(PolicyError::NotAString {
                        entry: shorten(&entry.to_string()),
                    });
                };
                parse_entry(entry).map_err(|why| PolicyError::BadEntry {
                    entry: shorten(entry),
                    why,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            allowed,
            annotated: true,
            max_concurrent,
            egress: Arc::default(),
        })
    }

    /// This policy, with its requests connecting only where the node's `egress` allows.
    pub fn under(self, egress: Arc<EgressPolicy>) -> Self {
        Self { egress, ..self }
    }

    /// Whether the pod has the allowed-domains annotation at all.
    pub fn is_annotated(&self) -> bool {
        self.annotated
    }

    /// The node's rule, under which the pod's list applies.
    pub fn egress(&self) -> &Arc<EgressPolicy> {
        &self.egress
    }

    /// The most requests a container may have waiting for a response head, if bounded.
    pub fn max_concurrent(&self) -> Option<usize> {
        self.max_concurrent
    }

    /// Whether a request to `uri` may be sent. Only `http` and `https` URIs with a host are
    /// ever allowed; ports default by scheme.
    pub fn allows(&self, uri: &::http::Uri) -> bool {
        let Some(scheme) = uri.scheme_str().and_then(Scheme::parse) else {
            return false;
        };
        let Some(authority) = uri.authority() else {
            return false;
        };
        // Credentials in the authority would be part of the address the default sender
        // dials; nothing legitimate needs them, so they are refused rather than interpreted.
        if authority.as_str().contains('@') {
            return false;
        }
        let host = normalise_host(authority.host());
        // The port is read from the text, not `port_u16`, which reads an out-of-range port as
        // no port (and so as the default one).
        let port = match authority.as_str()[authority.host().len()..].strip_prefix(':') {
            None | Some("") => scheme.default_port(),
            Some(port) => match port.parse::<u16>() {
                Ok(port) => port,
                Err(_) => return false,
            },
        };
        self.allowed.iter().any(|a| {
            a.host == host
                && a.scheme.is_none_or(|s| s == scheme)
                && a.port.unwrap_or(scheme.default_port()) == port
        })
    }
}

fn parse_entry(entry: &str) -> Result<Allowed, &'static str> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err("it is empty");
    }
    if let Some((scheme, rest)) = entry.split_once("://") {
        let scheme = Scheme::parse(scheme).ok_or("the scheme must be http or https")?;
        // A trailing slash is how URLs are often written; anything after it would suggest a
        // path rule that this list does not have, so it is refused rather than ignored.
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err("paths are not supported: the list names hosts");
        }
        let (host, port) = parse_authority(authority)?;
        Ok(Allowed {
            scheme: Some(scheme),
            host,
            port: Some(port.unwrap_or(scheme.default_port())),
        })
    } else {
        if entry.contains(['/', '?', '#']) {
            return Err("paths are not supported: the list names hosts");
        }
        let (host, port) = parse_authority(entry)?;
        Ok(Allowed {
            scheme: None,
            host,
            port,
        })
    }
}

fn parse_authority(authority: &str) -> Result<(String, Option<u16>), &'static str> {
    if authority.contains('@') {
        return Err("user info is not supported");
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or("an IPv6 address needs its ]")?;
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "not an IPv6 address between [ ]")?;
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or("unexpected text after ]")?),
        };
        (ip.to_string(), port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        }
    };
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err("the port must be a number from 1 to 65535"),
        })
        .transpose()?;
    if host.contains('*') {
        return Err("wildcards are not supported: list each host");
    }
    let host = normalise_host(&host);
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':');
    if host.is_empty() || !host.chars().all(valid) {
        return Err("not a host name or IP address");
    }
    Ok((host, port))
}

/// Host names compare case-insensitively and with or without the root's trailing dot; an
/// IPv6 literal compares without its brackets.
fn normalise_host(host: &str) -> String {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

fn shorten(value: &str) -> String {
    match value.char_indices().nth(QUOTED_CHARS) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn policy(domains: &str) -> HttpPolicy {
        HttpPolicy::from_annotations(&annotations(&[(ALLOWED_DOMAINS, domains)])).unwrap()
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        HttpPolicy::from_annotations(&annotations(pairs))
            .unwrap_err()
            .to_string()
    }

    fn allows(policy: &HttpPolicy, uri: &str) -> bool {
        policy.allows(&uri.parse().unwrap())
    }

    #[test]
    fn no_annotation_allows_nothing_and_bounds_nothing() {
        let p = HttpPolicy::from_annotations(&BTreeMap::new()).unwrap();
        assert!(!allows(&p, "http://127.0.0.1:8080/"));
        assert!(!allows(&p, "https://example.com/"));
        assert_eq!(p.max_concurrent(), None);
    }

    #[test]
    fn an_empty_list_allows_nothing() {
        let p = policy("[]");
        assert!(!allows(&p, "http://127.0.0.1/"));
        assert!(p.annotated);
    }

    #[test]
    fn a_url_entry_pins_scheme_host_and_port_with_default_ports() {
        let p = policy(r#"["http://127.0.0.1:8080", "https://API.example.com/"]"#);
        assert!(allows(&p, "http://127.0.0.1:8080/path?q=1"));
        assert!(!allows(&p, "https://127.0.0.1:8080/"), "scheme differs");
        assert!(!allows(&p, "http://127.0.0.1:8081/"), "port differs");
        assert!(!allows(&p, "http://127.0.0.1/"), "default port 80 differs");
        assert!(allows(&p, "https://api.example.com/v1"));
        assert!(allows(&p, "https://api.example.com:443/v1"), "default port");
        assert!(allows(&p, "https://Api.Example.Com./"), "case and root dot");
        assert!(!allows(&p, "https://api.example.com:8443/"));
        assert!(!allows(&p, "http://api.example.com/"), "scheme differs");
        assert!(!allows(&p, "https://example.com/"), "no subdomain rule");
        assert!(!allows(&p, "https://evil-api.example.com/"));
    }

    #[test]
    fn a_bare_host_allows_either_scheme_on_its_default_port_or_the_written_one() {
        let p = policy(r#"["example.com", "other.org:8443", "[::1]:9000"]"#);
        assert!(allows(&p, "http://example.com/"));
        assert!(allows(&p, "https://example.com/"));
        assert!(allows(&p, "http://example.com:80/"));
        assert!(
            !allows(&p, "https://example.com:4443/"),
            "no port written: default only"
        );
        assert!(
            !allows(&p, "http://example.com:443/"),
            "443 is https's, not http's"
        );
        assert!(allows(&p, "https://other.org:8443/"));
        assert!(allows(&p, "http://other.org:8443/"));
        assert!(!allows(&p, "https://other.org/"));
        assert!(allows(&p, "http://[::1]:9000/"));
        assert!(!allows(&p, "http://[::1]:9001/"));
        assert!(!allows(&p, "http://sub.example.com/"));
    }

    #[test]
    fn requests_that_only_look_like_an_allowed_host_are_denied() {
        let p = policy(r#"["http://127.0.0.1:8080"]"#);
        assert!(!allows(&p, "http://user@127.0.0.1:8080/"));
        assert!(!allows(&p, "http://127.0.0.1.evil.com:8080/"));
        assert!(!allows(&p, "/relative"));
        let q = policy(r#"["example.com:80"]"#);
        assert!(!allows(&q, "http://example.com:65616/"), "port overflow");
    }

    #[test]
    fn max_concurrent_requests_is_a_positive_integer() {
        let p =
            HttpPolicy::from_annotations(&annotations(&[(MAX_CONCURRENT_REQUESTS, "2")])).unwrap();
        assert_eq!(p.max_concurrent(), Some(2));
        for bad in ["0", "-1", "two", "", "1.5", "99999999999999999999999"] {
            let message = error(&[(MAX_CONCURRENT_REQUESTS, bad)]);
            assert!(message.contains(MAX_CONCURRENT_REQUESTS), "{message}");
            assert!(message.contains(&format!("{bad:?}")), "{message}");
            assert!(message.contains("positive integer"), "{message}");
        }
    }

    #[test]
    fn malformed_allowed_domains_name_the_annotation_the_value_and_the_expected_form() {
        for (value, names) in [
            (
                "not json",
                "not valid JSON (expected ident at line 1 column 2): \"not json\"",
            ),
            ("[\"a.com\"", "not valid JSON"),
            (r#""example.com""#, "is not a list"),
            (r#"{"hosts": []}"#, "is not a list"),
            ("[42]", "not a string: 42"),
            (r#"[["a.com"]]"#, "not a string"),
            (
                r#"["ftp://a.com"]"#,
                "\"ftp://a.com\" (the scheme must be http or https)",
            ),
            (r#"["https://a.com/v1"]"#, "paths are not supported"),
            (r#"["a.com/v1"]"#, "paths are not supported"),
            (r#"["*.a.com"]"#, "wildcards are not supported"),
            (r#"["a.com:0"]"#, "the port must be"),
            (r#"["a.com:http"]"#, "the port must be"),
            (r#"["a.com:70000"]"#, "the port must be"),
            (r#"["u:p@a.com"]"#, "user info"),
            (r#"[""]"#, "it is empty"),
            (r#"["http://"]"#, "not a host name"),
            (r#"["a b.com"]"#, "not a host name"),
            (r#"["[::1"]"#, "needs its ]"),
        ] {
            let message = error(&[(ALLOWED_DOMAINS, value)]);
            assert!(
                message.starts_with(&format!("annotation {ALLOWED_DOMAINS} ")),
                "{message}"
            );
            assert!(message.contains(names), "{value}: {message}");
            assert!(message.contains("expected "), "{message}");
        }
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let long = "x".repeat(10_000);
        let message = error(&[(ALLOWED_DOMAINS, &long)]);
        assert!(message.len() < 400, "{} chars", message.len());
        assert!(message.contains('…'));
    }
}
