//! The API's rules for names (RFC 1123), for names that come from the node's own flags and
//! manifests rather than through the API server, which checks the ones it stores.

/// An RFC 1123 subdomain, as the API server checks a Node's or a pod's name: at most 253
/// characters, dot-separated labels of lower-case letters, digits and `-`.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_label_part)
}

/// An RFC 1123 label, as the API server checks a namespace's, a container's or a volume's
/// name: at most 63 lower-case letters, digits and `-`, starting and ending alphanumeric.
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && is_label_part(name)
}

fn is_label_part(part: &str) -> bool {
    let bytes = part.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && bytes.iter().all(|b| alnum(b) || *b == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc_1123() {
        for good in ["a", "edge-1", "node.example.com", "0abc"] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in ["", "Edge", "edge_1", "-a", "a-", "a..b", ".a", "a/b", ".."] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        assert!(is_dns_subdomain(&"a".repeat(253)));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
        assert!(is_dns_label("app"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
