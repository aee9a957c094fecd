//! What the etcd source has told the table, keyed by etcd key, and the rules
//! that turn etcd key-values into table changes. Pure (no I/O), so the rules
//! for invalid values are unit-tested here:
//!
//! - a key not of the shape `{prefix}{service}/{id}`, or a value that cannot be
//!   read, is skipped, logged once (per key and revision) and counted;
//! - an invalid PUT on a key whose instance is in the table keeps that instance
//!   serving: the provider's last good registration stays until a valid PUT
//!   replaces it or a DELETE (the lease expiring included) removes it;
//! - nothing invalid ever removes or changes another key's instance.

use std::collections::HashMap;

use super::keys::parse_key;
use crate::discovery::{decode, Change, Instance};
use crate::metrics as m;

#[derive(Debug, Default)]
pub struct Known {
    /// etcd key → the instance the table has for it.
    instances: HashMap<String, Instance>,
    /// etcd key → mod revision of the unreadable value last logged for it.
    invalid: HashMap<String, i64>,
}

/// A fresh listing being built; replaces [`Known`]'s contents when complete.
#[derive(Debug, Default)]
pub struct Listing {
    instances: HashMap<String, Instance>,
    invalid: HashMap<String, i64>,
}

impl Known {
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values()
    }

    /// Seeds the known set from a snapshot, so a later listing keeps the same
    /// rules (an invalid value over a snapshot instance keeps the instance).
    pub fn seed(&mut self, prefixes: &[String], instances: &[Instance]) {
        let prefix = prefixes.first().map(String::as_str).unwrap_or("/services/");
        for i in instances {
            self.instances.insert(format!("{prefix}{}/{}", i.service, i.id), i.clone());
        }
    }

    /// A PUT seen by the watch: the change for the table, if any.
    pub fn put(&mut self, prefix: &str, key: &[u8], value: &[u8], mod_revision: i64) -> Option<Change> {
        let (service, id) = match parse_key(prefix, key) {
            Ok(parts) => parts,
            Err(e) => {
                note_invalid(&mut self.invalid, &HashMap::new(), key, mod_revision, "key", &e.to_string());
                return None;
            }
        };
        let key_s = format!("{prefix}{service}/{id}");
        match decode(service, id, value) {
            Ok(instance) => {
                self.invalid.remove(&key_s);
                if self.instances.get(&key_s) == Some(&instance) {
                    return None;
                }
                self.instances.insert(key_s, instance.clone());
                Some(Change::Put(instance))
            }
            Err(e) => {
                let kept = self.instances.contains_key(&key_s);
                let why = if kept { format!("{e}; keeping the previous instance") } else { e.to_string() };
                note_invalid(&mut self.invalid, &HashMap::new(), key, mod_revision, "value", &why);
                None
            }
        }
    }

    /// A DELETE seen by the watch.
    pub fn delete(&mut self, prefix: &str, key: &[u8]) -> Option<Change> {
        let (service, id) = parse_key(prefix, key).ok()?;
        let key_s = format!("{prefix}{service}/{id}");
        self.invalid.remove(&key_s);
        self.instances.remove(&key_s).map(|i| Change::Delete { service: i.service, id: i.id })
    }

    /// One listed key-value, added to `listing` under the same rules as `put`.
    pub fn listed(&self, listing: &mut Listing, prefix: &str, key: &[u8], value: &[u8], mod_revision: i64) {
        let (service, id) = match parse_key(prefix, key) {
            Ok(parts) => parts,
            Err(e) => {
                note_invalid(&mut listing.invalid, &self.invalid, key, mod_revision, "key", &e.to_string());
                return;
            }
        };
        let key_s = format!("{prefix}{service}/{id}");
        match decode(service, id, value) {
            Ok(instance) => {
                listing.instances.insert(key_s, instance);
            }
            Err(e) => {
                let why = match self.instances.get(&key_s) {
                    Some(prev) => {
                        listing.instances.insert(key_s.clone(), prev.clone());
                        format!("{e}; keeping the previous instance")
                    }
                    None => e.to_string(),
                };
                note_invalid(&mut listing.invalid, &self.invalid, key, mod_revision, "value", &why);
            }
        }
    }

    /// Makes a complete listing the known set; returns every instance in it.
    pub fn replace(&mut self, listing: Listing) -> Vec<Instance> {
        self.instances = listing.instances;
        self.invalid = listing.invalid;
        self.instances.values().cloned().collect()
    }
}

/// The `kind` label values of `switchyard_discovery_invalid_values_total`.
pub(super) const INVALID_KINDS: [&str; 2] = ["key", "value"];

/// Records an unreadable key or value in `into`; logs and counts it unless
/// `seen` (or `into`) already has it at the same revision.
fn note_invalid(
    into: &mut HashMap<String, i64>,
    seen: &HashMap<String, i64>,
    key: &[u8],
    mod_revision: i64,
    kind: &'static str,
    why: &str,
) {
    let key = String::from_utf8_lossy(key).into_owned();
    let fresh = seen.get(&key) != Some(&mod_revision) && into.get(&key) != Some(&mod_revision);
    into.insert(key.clone(), mod_revision);
    if fresh {
        tracing::warn!(key = %key, revision = mod_revision, "etcd {kind} skipped: {why}");
        metrics::counter!(m::DISCOVERY_INVALID_VALUES, "source" => "etcd", "kind" => kind).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/services/";

    fn put(k: &mut Known, key: &str, value: &str, rev: i64) -> Option<Change> {
        k.put(P, key.as_bytes(), value.as_bytes(), rev)
    }

    #[test]
    fn valid_puts_and_deletes() {
        let mut k = Known::default();
        let Some(Change::Put(i)) = put(&mut k, "/services/a/1", "127.0.0.1:80", 2) else { panic!() };
        assert_eq!((i.service.as_str(), i.id.as_str()), ("a", "1"));
        // The same value again is not a change.
        assert_eq!(put(&mut k, "/services/a/1", "127.0.0.1:80", 3), None);
        assert_eq!(k.delete(P, b"/services/a/1"), Some(Change::Delete { service: "a".into(), id: "1".into() }));
        assert_eq!(k.delete(P, b"/services/a/1"), None);
        assert_eq!(k.len(), 0);
    }

    #[test]
    fn invalid_put_keeps_the_previous_instance_until_valid_put_or_delete() {
        let mut k = Known::default();
        put(&mut k, "/services/a/1", "127.0.0.1:80", 2).unwrap();
        put(&mut k, "/services/a/2", "127.0.0.1:81", 3).unwrap();
        for bad in ["{not json", "", "host:0", r#"{"addr":""}"#, r#"{"Op":1,"Addr":"h:1"}"#] {
            assert_eq!(put(&mut k, "/services/a/1", bad, 4), None, "{bad}");
        }
        assert_eq!(k.len(), 2);
        assert!(k.instances().any(|i| i.id == "1" && i.addr == "127.0.0.1:80"));
        // A later valid put replaces it; a delete removes only that key.
        assert!(
            matches!(put(&mut k, "/services/a/1", "127.0.0.1:90", 5), Some(Change::Put(i)) if i.addr == "127.0.0.1:90")
        );
        assert!(k.delete(P, b"/services/a/1").is_some());
        assert_eq!(k.len(), 1);
    }

    #[test]
    fn invalid_put_on_new_key_and_bad_keys_are_skipped() {
        let mut k = Known::default();
        assert_eq!(put(&mut k, "/services/a/1", "nope nope", 2), None);
        assert_eq!(put(&mut k, "/services/a", "127.0.0.1:80", 3), None);
        assert_eq!(put(&mut k, "/services//x", "127.0.0.1:80", 4), None);
        assert_eq!(k.len(), 0);
        assert_eq!(k.delete(P, b"/services/a"), None);
    }

    #[test]
    fn listing_replaces_and_keeps_previous_for_invalid() {
        let mut k = Known::default();
        put(&mut k, "/services/a/1", "127.0.0.1:80", 2).unwrap();
        put(&mut k, "/services/a/ghost", "127.0.0.1:99", 3).unwrap();
        let mut l = Listing::default();
        k.listed(&mut l, P, b"/services/a/1", b"garbage garbage", 7);
        k.listed(
            &mut l,
            P,
            b"/services/b/1",
            br#"{"ID":"1","Name":"b","Addr":"127.0.0.1:81","MetaData":{"zone":"x"}}"#,
            8,
        );
        k.listed(&mut l, P, b"/services/c/1", b"{bad", 9);
        let mut all = k.replace(l);
        all.sort_by(|a, b| a.service.cmp(&b.service));
        let got: Vec<(&str, &str)> = all.iter().map(|i| (i.service.as_str(), i.addr.as_str())).collect();
        assert_eq!(got, [("a", "127.0.0.1:80"), ("b", "127.0.0.1:81")]);
    }

    #[test]
    fn seeded_snapshot_instances_are_replaced_by_a_listing() {
        let inst = |id: &str, addr: &str| Instance {
            service: "a".into(),
            id: id.into(),
            addr: addr.into(),
            metadata: Default::default(),
        };
        let mut k = Known::default();
        k.seed(&[P.to_string()], &[inst("1", "127.0.0.1:1"), inst("2", "127.0.0.1:2"), inst("3", "127.0.0.1:3")]);
        assert_eq!(k.len(), 3);
        // The first listing after the snapshot: 1 moved, 2 is unreadable, 3 is gone, 4 is new.
        let mut l = Listing::default();
        k.listed(&mut l, P, b"/services/a/1", b"127.0.0.1:11", 5);
        k.listed(&mut l, P, b"/services/a/2", b"{garbage", 6);
        k.listed(&mut l, P, b"/services/a/4", b"127.0.0.1:4", 7);
        let mut all: Vec<(String, String)> = k.replace(l).into_iter().map(|i| (i.id, i.addr)).collect();
        all.sort();
        let want = [("1", "127.0.0.1:11"), ("2", "127.0.0.1:2"), ("4", "127.0.0.1:4")];
        assert_eq!(all, want.map(|(i, a)| (i.to_string(), a.to_string())));
        // The seeded key format is the watched one: a later delete of the snapshot's key applies.
        assert_eq!(k.delete(P, b"/services/a/2"), Some(Change::Delete { service: "a".into(), id: "2".into() }));
        assert_eq!(k.delete(P, b"/services/a/3"), None, "3 left with the listing");
    }
}
