//! TLS termination for `https` listeners (rustls, ring provider, TLS 1.2 and 1.3
//! only, ALPN `h2` and `http/1.1`). A listener's certificates live in one
//! immutable [`CertSet`] behind an `ArcSwap`: the SNI resolver reads it on each
//! handshake without a lock, and a poller swaps in a new set when a certificate or
//! key file changes. A file that fails to load leaves the previous set serving.
//! Established connections keep the certificate they were made with, so a reload
//! drops nothing. Handshake failures are counted by reason and logged at debug
//! level: scanners and old clients are routine on a public port, not errors.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{PeerIncompatible, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::http::{server_builder, spawn_connection, HttpProxy};
use crate::config::{Config, ServerCert};
use crate::metrics as m;
use crate::server::{accept_loop, ListenerContext};

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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of one listener, indexed for SNI.
#[derive(Debug)]
pub struct CertSet {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// `*.example.com` is stored as `example.com`; it matches one label only.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// The first configured certificate: no SNI, or an SNI no certificate names.
    default: Arc<CertifiedKey>,
}

impl CertSet {
    /// `name` as rustls passes it: a lowercase DNS name.
    pub fn lookup(&self, name: &str) -> &Arc<CertifiedKey> {
        if let Some(ck) = self.exact.get(name) {
            return ck;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(ck) = self.wildcard.get(parent) {
                return ck;
            }
        }
        &self.default
    }

    /// Loads every pair; the first error wins, so a half-written file never replaces a good set.
    pub fn load(certs: &[ServerCert]) -> Result<CertSet, TlsError> {
        let provider = provider();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for c in certs {
            let (ck, found_names) = load_pair(&c.cert, &c.key, &provider)?;
            let ck = Arc::new(ck);
            let names = if c.server_names.is_empty() { found_names } else { c.server_names.clone() };
            for name in names {
                let name = name.to_ascii_lowercase();
                // First listed wins for a name claimed twice, as for the default.
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.into()).or_insert_with(|| ck.clone()),
                    None => exact.entry(name.into_boxed_str()).or_insert_with(|| ck.clone()),
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
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Checks that every https listener's certificates load, before any port is bound.
pub fn preflight(config: &Config) -> Result<(), (String, TlsError)> {
    for l in &config.listeners {
        if let crate::config::ListenerKind::Https { certs, .. } = &l.kind {
            CertSet::load(certs).map_err(|e| (l.name.clone(), e))?;
        }
    }
    Ok(())
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

/// Why a handshake failed, as counted in `switchyard_tls_handshake_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client offered only versions below TLS 1.2.
    ProtocolVersion,
    /// No cipher suite, group or signature scheme in common.
    Incompatible,
    /// The client sent something that is not TLS, or broken TLS.
    Malformed,
    /// The client aborted with an alert (e.g. it does not trust our certificate).
    AlertReceived,
    /// No complete handshake within `timeouts.header_read`.
    Timeout,
    /// The connection closed or failed mid-handshake.
    Io,
    Other,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 7] = [
        HandshakeFailure::ProtocolVersion,
        HandshakeFailure::Incompatible,
        HandshakeFailure::Malformed,
        HandshakeFailure::AlertReceived,
        HandshakeFailure::Timeout,
        HandshakeFailure::Io,
        HandshakeFailure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::ProtocolVersion => "protocol_version",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::Malformed => "malformed",
            HandshakeFailure::AlertReceived => "alert_received",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Io => "io",
            HandshakeFailure::Other => "other",
        }
    }

    /// Classifies the error tokio-rustls returns (a rustls error wrapped in `io::Error`).
    pub fn of(e: &io::Error) -> HandshakeFailure {
        let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
            return HandshakeFailure::Io;
        };
        match tls {
            // TLS 1.0/1.1 clients send no `signature_algorithms` (a TLS 1.2 extension), and
            // rustls checks for it before it compares versions: that is how they usually fail.
            rustls::Error::PeerIncompatible(
                PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::SignatureAlgorithmsExtensionRequired,
            ) => HandshakeFailure::ProtocolVersion,
            rustls::Error::PeerIncompatible(_) => HandshakeFailure::Incompatible,
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::PeerMisbehaved(_) => HandshakeFailure::Malformed,
            rustls::Error::AlertReceived(_) => HandshakeFailure::AlertReceived,
            _ => HandshakeFailure::Other,
        }
    }
}

/// Per-listener handshake failure counters, labelled once.
struct HandshakeErrors([metrics::Counter; 7]);

impl HandshakeErrors {
    fn new(listener: &str) -> HandshakeErrors {
        HandshakeErrors(HandshakeFailure::ALL.map(
            |r| metrics::counter!(m::TLS_HANDSHAKE_ERRORS, "listener" => listener.to_string(), "reason" => r.as_str()),
        ))
    }

    fn record(&self, reason: HandshakeFailure, peer: SocketAddr, detail: &dyn std::fmt::Display) {
        self.0[reason as usize].increment(1);
        tracing::debug!(%peer, reason = reason.as_str(), "TLS handshake failed: {detail}");
    }
}

/// Serves an `https` listener: TLS handshake (off the accept loop), then the
/// same HTTP proxy as plain listeners, HTTP/1.1 or h2 as ALPN chose.
pub(crate) async fn serve(
    name: &str,
    socket: TcpListener,
    certs: &[ServerCert],
    proxy: Arc<HttpProxy>,
    ctx: &ListenerContext,
    config: &Config,
) {
    let set = match CertSet::load(certs) {
        Ok(set) => set,
        Err(e) => {
            // `Gateway::bind` loaded them already; only a file changed in between gets here.
            tracing::error!(listener = %name, "not serving: {e}");
            return;
        }
    };
    let resolver = Arc::new(SniResolver::new(set));
    let acceptor = match server_config(resolver.clone()) {
        Ok(c) => TlsAcceptor::from(c),
        Err(e) => {
            tracing::error!(listener = %name, "not serving: {e}");
            return;
        }
    };
    ctx.tracker.spawn(reload_loop(name.to_string(), certs.to_vec(), resolver, ctx.shutdown.clone()));
    let builder = Arc::new(server_builder(config));
    let errors = Arc::new(HandshakeErrors::new(name));
    let handshake_timeout = config.timeouts.header_read;
    accept_loop(name, socket, ctx, |a| {
        let (acceptor, builder, errors, proxy) = (acceptor.clone(), builder.clone(), errors.clone(), proxy.clone());
        let (graceful, shutdown) = (ctx.graceful.clone(), ctx.shutdown.clone());
        ctx.tracker.spawn(async move {
            let result = tokio::select! {
                r = tokio::time::timeout(handshake_timeout, acceptor.accept(a.stream)) => r,
                _ = shutdown.cancelled() => return,
            };
            match result {
                Ok(Ok(tls)) => spawn_connection(tls, a.peer, proxy, &builder, &graceful, move || drop(a.slot)),
                Ok(Err(e)) => errors.record(HandshakeFailure::of(&e), a.peer, &e),
                Err(_) => errors.record(HandshakeFailure::Timeout, a.peer, &"timed out"),
            }
        });
    })
    .await
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
