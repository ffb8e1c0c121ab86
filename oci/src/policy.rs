//! `imagePullPolicy`, with the kubelet's defaulting.

use oci_client::Reference;

/// When to contact the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the reference at the registry every time; download only what changed.
    Always,
    /// Use the local artifact when there is one.
    IfNotPresent,
    /// Never contact the registry; fail when the artifact is not local.
    Never,
}

impl PullPolicy {
    /// The policy for a container: its `imagePullPolicy` if set, otherwise the API server's
    /// default: `Always` for `:latest` or an untagged image, `IfNotPresent` for any other tag
    /// or a digest.
    pub fn for_container(image_pull_policy: Option<&str>, image: &str) -> Self {
        match image_pull_policy {
            Some("Always") => Self::Always,
            Some("IfNotPresent") => Self::IfNotPresent,
            Some("Never") => Self::Never,
            _ => Self::default_for(image),
        }
    }

    fn default_for(image: &str) -> Self {
        // A bare `name` or `name:latest` moves; a digest or any other tag is meant to pin.
        let Ok(reference) = image.parse::<Reference>() else {
            return Self::IfNotPresent;
        };
        if reference.digest().is_some() {
            return Self::IfNotPresent;
        }
        let explicit_tag = image
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'));
        match (explicit_tag, reference.tag()) {
            (true, Some(tag)) if tag != "latest" => Self::IfNotPresent,
            _ => Self::Always,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PullPolicy::*;

    #[test]
    fn explicit_policy_wins() {
        assert_eq!(
            PullPolicy::for_container(Some("Never"), "r/x:latest"),
            Never
        );
        assert_eq!(
            PullPolicy::for_container(Some("IfNotPresent"), "r/x"),
            IfNotPresent
        );
        assert_eq!(PullPolicy::for_container(Some("Always"), "r/x:v1"), Always);
    }

    #[test]
    fn default_follows_the_tag_as_the_kubelet_does() {
        assert_eq!(PullPolicy::for_container(None, "127.0.0.1:5000/x"), Always);
        assert_eq!(
            PullPolicy::for_container(None, "127.0.0.1:5000/x:latest"),
            Always
        );
        assert_eq!(
            PullPolicy::for_container(None, "127.0.0.1:5000/x:v1"),
            IfNotPresent
        );
        let pinned = format!("127.0.0.1:5000/x@sha256:{}", "a".repeat(64));
        assert_eq!(PullPolicy::for_container(None, &pinned), IfNotPresent);
    }
}
