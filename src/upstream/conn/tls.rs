//! TLS to upstreams: the rustls client configuration of a service (its CA,
//! server name and optional client certificate, from `[[service]] upstream_tls`)
//! and the connector the pooled hyper clients use. One connector type serves
//! plain and TLS instances alike, so every pool has the same client type and the
//! request path only chooses a pool, never converts between types.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::ClientTls;

/// Trust store used for TLS instances of services without their own `ca`, unless
/// [`CA_BUNDLE_ENV`] names another (the variable OpenSSL and Go honour too).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
pub const CA_BUNDLE_ENV: &str = "SSL_CERT_FILE";

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{what}: {source}")]
    Rustls { what: &'static str, source: rustls::Error },
    #[error("server_name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
}

/// The one crypto provider of the process (ring), for server and client TLS alike.
pub(crate) fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamTlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| UpstreamTlsError::Read { path: path.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(UpstreamTlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, UpstreamTlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| UpstreamTlsError::Read { path: path.to_path_buf(), source })
}

fn roots(ca: Option<&Path>) -> Result<RootCertStore, UpstreamTlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|source| UpstreamTlsError::Rustls { what: "ca", source })?;
            }
        }
        None => {
            // The system bundle is optional: without it only services with their own `ca` verify.
            let bundle = std::env::var_os(CA_BUNDLE_ENV).map_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE), PathBuf::from);
            if let Ok(certs) = load_certs(&bundle) {
                roots.add_parsable_certificates(certs);
            }
        }
    }
    Ok(roots)
}

/// The rustls client configuration for one service and one ALPN protocol.
pub fn client_config(tls: Option<&ClientTls>, alpn: &'static [u8]) -> Result<Arc<ClientConfig>, UpstreamTlsError> {
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| UpstreamTlsError::Rustls { what: "protocol versions", source })?
        .with_root_certificates(roots(tls.and_then(|t| t.ca.as_deref()))?);
    let mut config = match tls.and_then(|t| t.cert.as_deref().zip(t.key.as_deref())) {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| UpstreamTlsError::Rustls { what: "client certificate", source })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// Everything a TLS connect needs besides the address.
#[derive(Clone)]
pub struct TlsSettings {
    connector: TlsConnector,
    /// Verified name and SNI; `None`: the instance's host.
    server_name: Option<ServerName<'static>>,
}

impl TlsSettings {
    pub fn new(tls: Option<&ClientTls>, alpn: &'static [u8]) -> Result<TlsSettings, UpstreamTlsError> {
        let server_name = match tls.and_then(|t| t.server_name.as_ref()) {
            Some(name) => {
                Some(ServerName::try_from(name.clone()).map_err(|_| UpstreamTlsError::ServerName(name.clone()))?)
            }
            None => None,
        };
        Ok(TlsSettings { connector: TlsConnector::from(client_config(tls, alpn)?), server_name })
    }
}

/// Connects to an instance over TCP and, when configured, TLS.
#[derive(Clone)]
pub struct UpstreamConnector {
    http: HttpConnector,
    tls: Option<TlsSettings>,
}

impl UpstreamConnector {
    pub fn new(mut http: HttpConnector, tls: Option<TlsSettings>) -> UpstreamConnector {
        // The request URI says `https` for TLS instances; the TCP connector must accept it.
        http.enforce_http(false);
        UpstreamConnector { http, tls }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let tcp = tower_service::Service::<Uri>::call(&mut self.http, dst.clone());
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = tcp.await?;
            let Some(tls) = tls else {
                return Ok(UpstreamIo::Plain(tcp));
            };
            let name = match tls.server_name {
                Some(name) => name,
                None => {
                    let host = dst.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
                    ServerName::try_from(host.to_string())
                        .map_err(|_| UpstreamTlsError::ServerName(host.to_string()))?
                }
            };
            let stream = tls.connector.connect(name, tcp.into_inner()).await?;
            Ok(UpstreamIo::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// A connection to an instance, plain or TLS.
pub enum UpstreamIo {
    Plain(TokioIo<TcpStream>),
    // Boxed: the TLS state is large and would bloat every plain connection.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        match self {
            UpstreamIo::Plain(io) => io.connected(),
            UpstreamIo::Tls(io) => {
                let (tcp, session) = io.inner().get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(ALPN_H2) {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl Read for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl Write for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(io) => Pin::new(io).poll_flush(cx),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(io) => io.is_write_vectored(),
            UpstreamIo::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }
}
