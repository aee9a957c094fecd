//! Connecting to etcd the same way for the gateway's discovery source and for the
//! provider's registrar: one endpoint at a time (so a failure moves on to the
//! next member deterministically), HTTP/2 keep-alive to notice dead peers (at
//! an interval etcd accepts: never below its 5 s `--grpc-keepalive-min-time`),
//! `require_leader` so a member without quorum fails instead of going silent,
//! optional user/password auth and TLS from PEM files.

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::ClientTls;

/// How to reach etcd; shared by discovery and registration.
#[derive(Debug, Clone)]
pub struct EtcdConnect {
    pub endpoints: Vec<String>,
    pub auth: Option<(String, String)>,
    pub tls: Option<ClientTls>,
    pub dial_timeout: Duration,
    pub request_timeout: Duration,
    /// HTTP/2 ping interval and ping timeout; at least etcd's 5 s minimum
    /// (config validation holds it there), or etcd ends the stream with GOAWAY.
    pub keepalive: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no etcd endpoint given")]
    NoEndpoints,
    #[error("reading {path}: {source}")]
    TlsFile { path: String, source: std::io::Error },
    #[error("etcd TLS: key given without cert (or cert without key)")]
    TlsIdentity,
    #[error("connecting to etcd at {endpoint}: {source}")]
    Etcd { endpoint: String, source: etcd_client::Error },
    #[error("connecting to etcd at {endpoint}: no answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
}

impl EtcdConnect {
    /// The TLS options, read from their files. Done once per connect, so a
    /// rotated CA or client certificate is picked up at the next reconnect.
    fn tls_options(&self) -> Result<Option<TlsOptions>, ConnectError> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| ConnectError::TlsFile { path: p.display().to_string(), source })
        };
        let mut opts = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            opts = opts.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => opts = opts.identity(Identity::from_pem(read(cert)?, read(key)?)),
            (None, None) => {}
            _ => return Err(ConnectError::TlsIdentity),
        }
        if let Some(name) = &tls.server_name {
            opts = opts.domain_name(name.clone());
        }
        Ok(Some(opts))
    }

    /// A client for `endpoints[index % len]`. The connection itself is lazy;
    /// with auth configured this authenticates, so it can fail when etcd is down.
    pub async fn connect(&self, index: usize) -> Result<Client, ConnectError> {
        if self.endpoints.is_empty() {
            return Err(ConnectError::NoEndpoints);
        }
        let raw = &self.endpoints[index % self.endpoints.len()];
        let tls = self.tls_options()?;
        // With TLS the scheme is implied; etcd-client refuses TLS options on an http:// URL.
        let endpoint = match &tls {
            Some(_) => raw.strip_prefix("http://").or_else(|| raw.strip_prefix("https://")).unwrap_or(raw).to_string(),
            None => raw.clone(),
        };
        // Not tied to dial_timeout: a stock etcd refuses pings more often than every
        // 5 s (GOAWAY "too_many_pings"), which ends every watch on the connection.
        let keep_alive = self.keepalive.max(crate::config::MIN_ETCD_KEEPALIVE);
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.dial_timeout)
            .with_keep_alive(keep_alive, keep_alive)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some((user, pass)) = &self.auth {
            opts = opts.with_user(user.clone(), pass.clone());
        }
        if let Some(tls) = tls {
            opts = opts.with_tls(tls);
        }
        match tokio::time::timeout(self.dial_timeout, Client::connect([endpoint.as_str()], Some(opts))).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => Err(ConnectError::Etcd { endpoint, source }),
            Err(_) => Err(ConnectError::Timeout { endpoint, timeout: self.dial_timeout }),
        }
    }

    /// Bounds one unary call by the request timeout.
    pub async fn call<T>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(CallError::Etcd { what, source }),
            Err(_) => Err(CallError::Timeout { what, timeout: self.request_timeout }),
        }
    }
}

/// A failed etcd request.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("etcd {what}: {source}")]
    Etcd { what: &'static str, source: etcd_client::Error },
    #[error("etcd {what}: no answer within {timeout:?}")]
    Timeout { what: &'static str, timeout: Duration },
}

impl From<&crate::config::EtcdDiscovery> for EtcdConnect {
    fn from(c: &crate::config::EtcdDiscovery) -> Self {
        EtcdConnect {
            endpoints: c.endpoints.clone(),
            auth: c.auth.clone(),
            tls: c.tls.clone(),
            dial_timeout: c.dial_timeout,
            request_timeout: c.request_timeout,
            keepalive: c.keepalive,
        }
    }
}
