//! The `Date` of responses that come without one (RFC 9110 §6.6.1: an origin
//! with a clock sends it; hyper's server adds it too), formatted once per second
//! per worker thread rather than per response.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An IMF-fixdate is always this long: `Tue, 01 Dec 2026 19:00:00 GMT`.
const LEN: usize = 29;

struct Cached {
    second: u64,
    text: [u8; LEN],
}

thread_local! {
    static NOW: RefCell<Cached> = const { RefCell::new(Cached { second: u64::MAX, text: [0; LEN] }) };
}

/// Calls `f` with the current date as an IMF-fixdate.
pub fn with_now<T>(f: impl FnOnce(&[u8]) -> T) -> T {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    NOW.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.second != now.as_secs() {
            let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(now.as_secs()));
            if text.len() == LEN {
                cached.text.copy_from_slice(text.as_bytes());
                cached.second = now.as_secs();
            }
        }
        f(&cached.text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_is_an_imf_fixdate_of_now() {
        let text = with_now(|d| String::from_utf8(d.to_vec()).unwrap());
        let parsed = httpdate::parse_http_date(&text).unwrap();
        let off = SystemTime::now().duration_since(parsed).unwrap_or(Duration::ZERO);
        assert!(off < Duration::from_secs(2), "{text}");
        assert!(text.ends_with(" GMT") && text.len() == LEN, "{text}");
    }
}
