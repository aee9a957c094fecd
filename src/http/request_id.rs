//! The request id: `x-request-id` is passed through when the client (or a
//! proxy in front) sent one, and made here otherwise; it goes upstream, back to
//! the client, and into the access log, so one request can be followed through
//! every log. A made id is a random per-process prefix and a counter: unique
//! across restarts and replicas without a random draw per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A longer id from outside is replaced: it would only bloat every log line.
const MAX_LEN: usize = 200;

/// The request's id, added to `headers` when it had none (or an unusable one).
pub(crate) fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID) {
        if !id.is_empty() && id.len() <= MAX_LEN {
            return id.clone();
        }
    }
    let id = generate();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// `{48-bit random prefix, hex}-{counter, hex}`, e.g. `3f9a0c12d4e7-1a`.
fn generate() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| fastrand::u64(..) & 0xffff_ffff_ffff);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Hex digits and '-' only: always a valid header value.
    HeaderValue::try_from(format!("{prefix:012x}-{n:x}")).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_through_or_generates_unique_ids() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "from-client".parse().unwrap());
        assert_eq!(ensure(&mut h), "from-client");
        assert_eq!(h["x-request-id"], "from-client");

        let (mut a, mut b) = (HeaderMap::new(), HeaderMap::new());
        let (ida, idb) = (ensure(&mut a), ensure(&mut b));
        assert_ne!(ida, idb);
        assert_eq!(a["x-request-id"], ida);
        let text = ida.to_str().unwrap();
        let (prefix, counter) = text.split_once('-').unwrap();
        assert_eq!(prefix.len(), 12);
        assert!(u64::from_str_radix(counter, 16).is_ok());

        let mut long = HeaderMap::new();
        long.insert("x-request-id", HeaderValue::try_from("x".repeat(MAX_LEN + 1)).unwrap());
        assert_ne!(ensure(&mut long).len(), MAX_LEN + 1);
        let mut empty = HeaderMap::new();
        empty.insert("x-request-id", HeaderValue::from_static(""));
        assert!(!ensure(&mut empty).is_empty());
    }
}
