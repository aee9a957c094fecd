//! A TLS listener's certificates: loaded and checked once at build time into one
//! immutable [`CertSet`] behind an `ArcSwap`. The SNI resolver reads it on each
//! handshake without a lock, by the host rule of [`crate::config::host`]; a
//! poller swaps in a new set when a certificate or key file changes, and a file
//! that fails to load leaves the previous set serving. Established connections
//! keep the certificate they were made with, so a reload drops nothing.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::host::{trim_root, wildcard_parent};
use crate::config::{HostPattern, ServerCert};
use crate::metrics as m;
use crate::upstream::conn::tls::crypto_provider;

/// How often certificate files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: not a PEM file with a certificate or key: {source}")]
    Pem { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{key}: the key does not fit {cert} or is of an unsupported type: {source}")]
    Key { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The certificates of one listener, indexed for SNI.
#[derive(Debug)]
pub struct CertSet {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// `*.example.com` is stored as `example.com` (see [`crate::config::host`]).
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// The first configured certificate: no SNI, or an SNI no certificate names.
    default: Arc<CertifiedKey>,
}

impl CertSet {
    /// `name` as rustls passes it: a lowercase DNS name.
    pub fn lookup(&self, name: &str) -> &Arc<CertifiedKey> {
        let name = trim_root(name);
        if let Some(ck) = self.exact.get(name) {
            return ck;
        }
        wildcard_parent(name).and_then(|parent| self.wildcard.get(parent)).unwrap_or(&self.default)
    }

    /// Loads every pair; the first error wins, so a half-written file never replaces a good set.
    pub fn load(certs: &[ServerCert]) -> Result<CertSet, TlsError> {
        let provider = crypto_provider();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for c in certs {
            let (ck, found_names) = load_pair(&c.cert, &c.key, &provider)?;
            let ck = Arc::new(ck);
            let names = if c.server_names.is_empty() { found_names } else { c.server_names.clone() };
            for name in names {
                // First listed wins for a name claimed twice, as for the default.
                match HostPattern::parse(&name) {
                    HostPattern::Wildcard(parent) => wildcard.entry(parent).or_insert_with(|| ck.clone()),
                    HostPattern::Exact(name) => exact.entry(name).or_insert_with(|| ck.clone()),
                };
            }
            default.get_or_insert(ck);
        }
        let default =
            default.ok_or_else(|| TlsError::Config(rustls::Error::General("no certificate configured".into())))?;
        Ok(CertSet { exact, wildcard, default })
    }
}

/// Reads a certificate chain and its key; returns them with the leaf's DNS names.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<(CertifiedKey, Vec<String>), TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read { path: cert.to_path_buf(), source })?;
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read { path: key.to_path_buf(), source })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { path: cert.to_path_buf(), source })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate { path: cert.to_path_buf() });
    };
    let names = san_dns_names(leaf);
    let key_der =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::Pem { path: key.to_path_buf(), source })?;
    let ck = CertifiedKey::from_der(chain, key_der, provider).map_err(|source| TlsError::Key {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })?;
    Ok((ck, names))
}

/// The SNI resolver: one lock-free `load()` per handshake.
#[derive(Debug)]
pub struct SniResolver {
    set: ArcSwap<CertSet>,
}

impl SniResolver {
    pub fn new(set: CertSet) -> SniResolver {
        SniResolver { set: ArcSwap::from_pointee(set) }
    }

    pub fn swap(&self, set: CertSet) {
        self.set.store(Arc::new(set));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.set.load();
        Some(match hello.server_name() {
            Some(name) => set.lookup(name).clone(),
            None => set.default.clone(),
        })
    }
}

/// The listener's rustls configuration around `resolver`.
pub fn server_config(resolver: Arc<SniResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Watches the certificate files and swaps in a new set when any of them changes.
/// Contents are compared rather than mtimes: a file replaced within the same
/// second, or by a rename that keeps the mtime, is still seen.
pub async fn reload_loop(
    listener: String,
    certs: Vec<ServerCert>,
    resolver: Arc<SniResolver>,
    stop: tokio_util::sync::CancellationToken,
) {
    let ok = metrics::counter!(m::TLS_CERT_RELOADS, "listener" => listener.clone(), "result" => "ok");
    let failed = metrics::counter!(m::TLS_CERT_RELOADS, "listener" => listener.clone(), "result" => "error");
    let mut loaded = read_all(&certs).await;
    // The contents that last failed, so a bad file is logged once, not every second.
    let mut rejected = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RELOAD_POLL) => {}
        }
        let now = read_all(&certs).await;
        if now == loaded || rejected.as_ref() == Some(&now) {
            continue;
        }
        let attempt = certs.clone();
        match tokio::task::spawn_blocking(move || CertSet::load(&attempt)).await {
            Ok(Ok(set)) => {
                resolver.swap(set);
                ok.increment(1);
                tracing::info!(listener = %listener, "TLS certificates reloaded");
                loaded = now;
                rejected = None;
            }
            Ok(Err(e)) => {
                failed.increment(1);
                tracing::error!(listener = %listener, "TLS certificate reload failed, keeping the previous certificates: {e}");
                rejected = Some(now);
            }
            Err(e) => {
                tracing::error!(listener = %listener, "TLS certificate reload task failed: {e}")
            }
        }
    }
}

/// Every file's bytes (an unreadable file reads as empty: it will fail to load and be reported).
async fn read_all(certs: &[ServerCert]) -> Vec<Vec<u8>> {
    let mut all = Vec::with_capacity(certs.len() * 2);
    for c in certs {
        all.push(tokio::fs::read(&c.cert).await.unwrap_or_default());
        all.push(tokio::fs::read(&c.key).await.unwrap_or_default());
    }
    all
}

/// The DNS names in a certificate's subjectAltName, for certificates configured
/// without `server_names`. A minimal DER walk: certificate → tbsCertificate →
/// extensions [3] → subjectAltName (2.5.29.17) → dNSName [2] entries. Anything
/// unexpected yields no names (the certificate can still be the default).
pub fn san_dns_names(cert: &[u8]) -> Vec<String> {
    const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];
    let mut names = Vec::new();
    let Some((0x30, cert, _)) = tlv(cert) else {
        return names;
    };
    let Some((0x30, tbs, _)) = tlv(cert) else {
        return names;
    };
    let Some(extensions) = children(tbs).find(|(tag, _)| *tag == 0xa3).map(|(_, v)| v) else {
        return names;
    };
    let Some((0x30, extensions, _)) = tlv(extensions) else {
        return names;
    };
    for (tag, ext) in children(extensions) {
        if tag != 0x30 {
            continue;
        }
        let mut fields = children(ext);
        if fields.next() != Some((0x06, SAN_OID)) {
            continue;
        }
        // `critical` BOOLEAN is optional; the value is the OCTET STRING.
        let Some((_, value)) = fields.find(|(tag, _)| *tag == 0x04) else {
            continue;
        };
        let Some((0x30, general_names, _)) = tlv(value) else {
            continue;
        };
        for (tag, name) in children(general_names) {
            if tag == 0x82 {
                if let Ok(name) = std::str::from_utf8(name) {
                    names.push(name.to_ascii_lowercase());
                }
            }
        }
    }
    names
}

/// One DER tag-length-value: (tag, value, rest). Lengths up to 4 bytes.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The TLVs inside a constructed value, stopping at the first malformed one.
fn children(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, value, rest) = tlv(input)?;
        input = rest;
        Some((tag, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn write_pair(dir: &Path, stem: &str, names: &[&str]) -> ServerCert {
        let (cert, key) = self_signed(names);
        let c = ServerCert {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
            server_names: vec![],
        };
        std::fs::write(&c.cert, cert).unwrap();
        std::fs::write(&c.key, key).unwrap();
        c
    }

    #[test]
    fn reads_san_dns_names() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["a.example.com".into(), "*.B.example.com".into()]).unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(san_dns_names(&der), ["a.example.com", "*.b.example.com"]);
        assert!(san_dns_names(&der[..der.len() / 2]).is_empty());
        assert!(san_dns_names(b"").is_empty());
        assert!(san_dns_names(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_empty());
    }

    #[test]
    fn sni_lookup_exact_wildcard_default() {
        let dir = tempfile::tempdir().unwrap();
        let default = write_pair(dir.path(), "d", &["default.test"]);
        let exact = write_pair(dir.path(), "a", &["a.example.com"]);
        let wild = write_pair(dir.path(), "w", &["*.example.com"]);
        let set = CertSet::load(&[default, exact, wild]).unwrap();
        let is = |name: &str, ck: &Arc<CertifiedKey>| Arc::ptr_eq(set.lookup(name), ck);
        let (a, w, d) = (set.exact["a.example.com"].clone(), set.wildcard["example.com"].clone(), set.default.clone());
        assert!(is("a.example.com", &a));
        assert!(is("b.example.com", &w));
        assert!(is("x.y.example.com", &d), "a wildcard covers one label");
        assert!(is("example.com", &d));
        assert!(is("default.test", &d));
        assert!(is("other.test", &d));
    }

    #[test]
    fn bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_pair(dir.path(), "g", &["g.test"]);
        let other = write_pair(dir.path(), "o", &["o.test"]);
        let mismatched = ServerCert { cert: good.cert.clone(), key: other.key.clone(), server_names: vec![] };
        assert!(matches!(CertSet::load(&[mismatched]), Err(TlsError::Key { .. })));
        std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
        let junk = ServerCert { cert: dir.path().join("junk.pem"), key: good.key.clone(), server_names: vec![] };
        assert!(matches!(CertSet::load(&[junk]), Err(TlsError::NoCertificate { .. })));
        let missing = ServerCert { cert: dir.path().join("nope.pem"), key: good.key, server_names: vec![] };
        assert!(matches!(CertSet::load(&[missing]), Err(TlsError::Read { .. })));
    }
}
