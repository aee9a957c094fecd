//! L4 test servers: a TCP echo server that counts its connections and honours
//! half-close, and a TLS server with its own certificate from a test CA (rcgen)
//! that greets with its name and then echoes — plus a TLS client that trusts the CA.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

/// Echoes every connection until the client half-closes, then half-closes too.
pub struct EchoServer {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Connections open right now.
    pub open: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

impl EchoServer {
    pub async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let server = EchoServer { addr, accepted: accepted.clone(), open: open.clone(), shutdown: shutdown.clone() };
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let (open, shutdown) = (open.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let (mut rd, mut wr) = stream.split();
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = async {
                            let _ = tokio::io::copy(&mut rd, &mut wr).await;
                            let _ = wr.shutdown().await;
                        } => {}
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        server
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Sends `msg` and reads the same number of bytes back, within five seconds.
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, msg: &[u8]) -> Vec<u8> {
    let fut = async {
        stream.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), fut)
        .await
        .expect("round trip timed out")
        .expect("round trip")
}

/// A certificate authority for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "switchyard test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert: cert.der().clone(), issuer: Issuer::new(params, key) }
    }

    /// A leaf certificate for `name` and its key.
    pub fn leaf(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
    }

    /// A TLS client that trusts only this CA.
    pub fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server with a certificate for `name`: after the handshake it writes
/// `"{name}\n"`, then echoes until the client closes.
pub struct TlsNameServer {
    pub addr: SocketAddr,
    pub handshakes: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

impl TlsNameServer {
    pub async fn start(ca: &TestCa, name: &str) -> TlsNameServer {
        let (chain, key) = ca.leaf(name);
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let server = TlsNameServer { addr, handshakes: handshakes.clone(), shutdown: shutdown.clone() };
        let greeting = format!("{name}\n");
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (acceptor, handshakes, greeting, shutdown) =
                    (acceptor.clone(), handshakes.clone(), greeting.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let serve = async {
                        let mut tls = acceptor.accept(stream).await?;
                        handshakes.fetch_add(1, Ordering::SeqCst);
                        tls.write_all(greeting.as_bytes()).await?;
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = tls.read(&mut buf).await?;
                            if n == 0 {
                                break;
                            }
                            tls.write_all(&buf[..n]).await?;
                        }
                        tls.shutdown().await
                    };
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = serve => {}
                    }
                });
            }
        });
        server
    }
}

impl Drop for TlsNameServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Connects to `addr` with TLS, sending `sni`; returns the stream and the server's greeting line.
pub async fn tls_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut tls = connector.connect(name, tcp).await?;
    let mut greeting = Vec::new();
    let mut byte = [0u8; 1];
    while greeting.len() < 256 {
        tls.read_exact(&mut byte).await?;
        if byte[0] == b'\n' {
            break;
        }
        greeting.push(byte[0]);
    }
    Ok((tls, String::from_utf8_lossy(&greeting).into_owned()))
}
