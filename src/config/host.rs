//! The one host-name rule, shared by HTTP routes (`host`), TLS certificates
//! (`server_names` and the certificates' own names) and `tls_passthrough` routes
//! (`sni`): a pattern `*.example.com` matches exactly one extra leading label
//! (`a.example.com`; not `example.com`, not `a.b.example.com`), as a wildcard
//! certificate does (RFC 6125 §6.4.3). Any other pattern matches the whole name.
//! Names compare without regard to ASCII case, and a trailing dot (the DNS root)
//! on the name being matched is ignored.

/// A compiled host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// The whole name, lowercase.
    Exact(Box<str>),
    /// `*.parent`: stored as the lowercase parent.
    Wildcard(Box<str>),
}

impl HostPattern {
    pub fn parse(pattern: &str) -> HostPattern {
        let lower = pattern.trim_end_matches('.').to_ascii_lowercase();
        match lower.strip_prefix("*.") {
            Some(parent) => HostPattern::Wildcard(parent.into()),
            None => HostPattern::Exact(lower.into()),
        }
    }

    pub fn matches(&self, host: &str) -> bool {
        let host = trim_root(host);
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Wildcard(parent) => wildcard_parent(host).is_some_and(|p| p.eq_ignore_ascii_case(parent)),
        }
    }
}

/// The name without a trailing root dot.
pub fn trim_root(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

/// The parent a wildcard for `host` is stored under: `a.example.com` →
/// `example.com`. `None` when the first label is empty or there is no parent.
/// Lookup tables keyed by [`HostPattern::Wildcard`]'s parent use this, so a
/// hash lookup follows the same rule as [`HostPattern::matches`].
pub fn wildcard_parent(host: &str) -> Option<&str> {
    let (label, parent) = trim_root(host).split_once('.')?;
    (!label.is_empty() && !parent.is_empty()).then_some(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matches_one_label_only() {
        let p = HostPattern::parse("*.Example.com");
        assert!(p.matches("a.example.com"));
        assert!(p.matches("A.EXAMPLE.COM."));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("a.b.example.com"));
        assert!(!p.matches(".example.com"));
        assert!(!p.matches("aexample.com"));
    }

    #[test]
    fn exact_matches_the_whole_name() {
        let p = HostPattern::parse("api.example.com");
        assert!(p.matches("API.example.com"));
        assert!(p.matches("api.example.com."));
        assert!(!p.matches("x.api.example.com"));
        assert!(!p.matches("example.com"));
    }

    #[test]
    fn parent_for_lookup_tables() {
        assert_eq!(wildcard_parent("a.example.com"), Some("example.com"));
        assert_eq!(wildcard_parent("a.example.com."), Some("example.com"));
        assert_eq!(wildcard_parent("localhost"), None);
        assert_eq!(wildcard_parent(".example.com"), None);
    }
}
