//! The request id: `x-request-id` is passed through when the client (or a
//! proxy in front) sent one, and made here otherwise; it goes upstream, back to
//! the client, and into the access log, so one request can be followed through
//! every log. A made id is a random per-process prefix and a counter: unique
//! across restarts and replicas without a random draw per request. Each worker
//! thread takes counter values [`BLOCK`] at a time, so the process-wide counter
//! (a cache line every worker would write) is touched once per [`BLOCK`] requests.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A longer id from outside is replaced: it would only bloat every log line.
const MAX_LEN: usize = 200;

/// The request's id, and whether the request going upstream still needs it:
/// a usable one the client sent stays in `headers` (`false`); otherwise an
/// unusable one is removed and a new one made (`true`), which is not put in the
/// map — the upstream head gets it as a line of its own
/// ([`OutgoingHead::request_id`](crate::upstream::conn::OutgoingHead)), with no
/// map insertion.
///
/// Marked sensitive: a value that differs on every message must not enter an
/// HTTP/2 connection's HPACK table, where each new one would evict a useful
/// entry and lengthen the encoder's search for every later `x-request-id`.
/// `sent` says whether the request may carry one (`super::present`).
pub(crate) fn ensure(headers: &mut HeaderMap, sent: bool) -> (HeaderValue, bool) {
    if sent {
        if let Some(id) = headers.get_mut(&X_REQUEST_ID) {
            if !id.is_empty() && id.len() <= MAX_LEN {
                id.set_sensitive(true);
                return (id.clone(), false);
            }
            headers.remove(&X_REQUEST_ID);
        }
    }
    let mut id = generate();
    id.set_sensitive(true);
    (id, true)
}

/// Counter values a thread takes from the process-wide counter at once.
const BLOCK: u64 = 1024;

/// The next counter value: unique in the process, from this thread's block.
fn next_count() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        /// The next value of this thread's block, and the block's end.
        static TAKEN: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    TAKEN.with(|taken| {
        let (mut next, mut end) = taken.get();
        if next == end {
            next = COUNTER.fetch_add(BLOCK, Ordering::Relaxed);
            end = next + BLOCK;
        }
        taken.set((next + 1, end));
        next
    })
}

/// `{48-bit random prefix, hex}-{counter, hex}`, e.g. `3f9a0c12d4e7-1a`.
fn generate() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    let prefix = *PREFIX.get_or_init(|| fastrand::u64(..) & 0xffff_ffff_ffff);
    let n = next_count();
    // Written by hand: `format!` costs ~1,000 instructions a request, this ~100.
    let mut buf = [0u8; 12 + 1 + 16];
    hex(prefix, &mut buf[..12]);
    buf[12] = b'-';
    let digits = (16 - n.leading_zeros() as usize / 4).max(1);
    hex(n, &mut buf[13..13 + digits]);
    // Hex digits and '-' only: always a valid header value.
    HeaderValue::from_bytes(&buf[..13 + digits]).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The low `dst.len()` hex digits of `n`, most significant first.
fn hex(mut n: u64, dst: &mut [u8]) {
    for d in dst.iter_mut().rev() {
        *d = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits() {
        let mut b = [0u8; 12];
        hex(0xabc_0123_4567, &mut b);
        assert_eq!(&b, b"0abc01234567");
        let mut one = [0u8; 1];
        hex(0, &mut one);
        assert_eq!(&one, b"0");
    }

    #[test]
    fn threads_take_distinct_counter_values() {
        let per_thread = 3 * BLOCK as usize + 7;
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || (0..per_thread).map(|_| next_count()).collect::<Vec<_>>()))
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            let counts = t.join().unwrap();
            assert!(counts.windows(2).all(|w| w[0] < w[1]), "increasing within a thread");
            all.extend(counts);
        }
        assert_eq!(all.len(), 4 * per_thread, "no value given twice");
    }

    #[test]
    fn passes_through_or_generates_unique_ids() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "from-client".parse().unwrap());
        assert_eq!(ensure(&mut h, true), (HeaderValue::from_static("from-client"), false));
        assert_eq!(h["x-request-id"], "from-client");

        let (mut a, mut b) = (HeaderMap::new(), HeaderMap::new());
        let ((ida, add_a), (idb, add_b)) = (ensure(&mut a, false), ensure(&mut b, false));
        assert_ne!(ida, idb);
        assert!(add_a && add_b && ida.is_sensitive());
        assert!(a.is_empty(), "a made id is not put in the map");
        let text = ida.to_str().unwrap();
        let (prefix, counter) = text.split_once('-').unwrap();
        assert_eq!(prefix.len(), 12);
        assert!(u64::from_str_radix(counter, 16).is_ok());

        let mut long = HeaderMap::new();
        long.insert("x-request-id", HeaderValue::try_from("x".repeat(MAX_LEN + 1)).unwrap());
        let (id, add) = ensure(&mut long, true);
        assert!(add && id.len() != MAX_LEN + 1);
        assert!(long.is_empty(), "the unusable id is removed");
        let mut empty = HeaderMap::new();
        empty.append("x-request-id", HeaderValue::from_static(""));
        empty.append("x-request-id", HeaderValue::from_static("second"));
        let (id, add) = ensure(&mut empty, true);
        assert!(add && !id.is_empty());
        assert!(empty.is_empty(), "every line of an unusable id is removed");
    }
}
