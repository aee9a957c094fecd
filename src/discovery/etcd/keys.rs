//! The etcd key contract, as pure functions: `{prefix}{service}/{id}`, where the
//! service is the one segment after the prefix and the id is everything after
//! it (slashes included). Also the key-range arithmetic the paged list needs.

/// Why a key under a watched prefix is not an instance key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is not UTF-8")]
    NotUtf8,
    #[error("key is not under prefix {0:?}")]
    OutsidePrefix(String),
    #[error("key has no service segment")]
    NoService,
    #[error("key has no instance id after the service")]
    NoId,
}

/// Splits `key` into `(service, id)`. `prefix` ends with `/`.
pub fn parse_key<'k>(prefix: &str, key: &'k [u8]) -> Result<(&'k str, &'k str), KeyError> {
    let key = std::str::from_utf8(key).map_err(|_| KeyError::NotUtf8)?;
    let rest = key.strip_prefix(prefix).ok_or_else(|| KeyError::OutsidePrefix(prefix.to_string()))?;
    let (service, id) =
        rest.split_once('/').ok_or(if rest.is_empty() { KeyError::NoService } else { KeyError::NoId })?;
    if service.is_empty() {
        return Err(KeyError::NoService);
    }
    if id.is_empty() {
        return Err(KeyError::NoId);
    }
    Ok((service, id))
}

/// The exclusive end of the range of keys starting with `prefix` (what
/// etcd's `WithPrefix` computes): the prefix with its last byte below 0xff
/// incremented and everything after it dropped. `\0` means "to the end".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The first key after `key` in etcd's byte order: the next page starts here.
pub fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_service_and_id() {
        assert_eq!(parse_key("/services/", b"/services/wallet/w1"), Ok(("wallet", "w1")));
        assert_eq!(parse_key("/services/", b"/services/wallet/zone-a/w1"), Ok(("wallet", "zone-a/w1")));
        assert_eq!(parse_key("/s/", b"/s/a/10.0.0.1:80"), Ok(("a", "10.0.0.1:80")));
    }

    #[test]
    fn rejects_other_shapes() {
        let p = "/services/";
        assert_eq!(parse_key(p, b"/services/wallet"), Err(KeyError::NoId));
        assert_eq!(parse_key(p, b"/services/wallet/"), Err(KeyError::NoId));
        assert_eq!(parse_key(p, b"/services/"), Err(KeyError::NoService));
        assert_eq!(parse_key(p, b"/services//x"), Err(KeyError::NoService));
        assert_eq!(parse_key(p, b"/other/a/b"), Err(KeyError::OutsidePrefix(p.into())));
        assert_eq!(parse_key(p, b"/services/\xff/x"), Err(KeyError::NotUtf8));
    }

    #[test]
    fn trailing_slash_keeps_foobar_out_of_foo() {
        assert!(parse_key("/services/foo/", b"/services/foobar/x/1").is_err());
        assert_eq!(parse_key("/services/foo/", b"/services/foo/x/1"), Ok(("x", "1")));
        assert!(prefix_end(b"/services/foo/") <= b"/services/foobar/".to_vec());
    }

    #[test]
    fn range_arithmetic() {
        assert_eq!(prefix_end(b"/services/"), b"/services0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(key_after(b"/s/a/1"), b"/s/a/1\0".to_vec());
        assert!(key_after(b"/s/a/1") < b"/s/a/1/".to_vec());
    }
}
