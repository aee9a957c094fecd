//! The provider side: [`Registrar`] registers one instance in etcd under a
//! lease and keeps it alive, re-registering with a new lease when the old one is
//! lost (etcd restarted without its data, a partition longer than the TTL); on
//! shutdown it marks the instance `draining`, waits, then revokes the lease.
//! `switchyard register` ([`RegisterArgs`], [`run_cli`]) is the same as a sidecar.
//!
//! The value is our JSON instance `{"id","name","addr","metadata"}` at
//! `{prefix}{service}/{id}`; the metadata always carries `registered_at_ms`
//! (the write time, for the gateway's discovery-lag histogram).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ClientTls, DEFAULT_DIAL_TIMEOUT, DEFAULT_ETCD_PREFIX, DEFAULT_ETCD_REQUEST_TIMEOUT};
use crate::discovery::etcd::connect::{CallError, ConnectError, EtcdConnect};
use crate::discovery::etcd::Backoff;
use crate::discovery::instance::check_addr;
use crate::upstream::writer::REGISTERED_AT_MS;

pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);

/// What to register and where.
#[derive(Debug, Clone)]
pub struct Registration {
    pub etcd: EtcdConnect,
    /// Ends with `/`.
    pub prefix: String,
    pub service: String,
    pub id: String,
    pub addr: String,
    pub metadata: BTreeMap<String, String>,
    /// Lease TTL, whole seconds (etcd's unit), at least 1 s.
    pub ttl: Duration,
    /// Time between marking the instance draining and revoking the lease.
    pub drain: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("lease {0:x} is gone")]
    LeaseLost(i64),
    #[error("keepalive stream: {0}")]
    KeepAlive(etcd_client::Error),
    #[error("cannot listen for signals: {0}")]
    Signal(std::io::Error),
}

impl Registration {
    /// A registration with the defaults: prefix `/services/`, TTL 10 s, drain
    /// 5 s, and the id [`default_id`].
    pub fn new(endpoints: Vec<String>, service: impl Into<String>, addr: impl Into<String>) -> Registration {
        let addr = addr.into();
        Registration {
            etcd: EtcdConnect {
                endpoints,
                auth: None,
                tls: None,
                dial_timeout: DEFAULT_DIAL_TIMEOUT,
                request_timeout: DEFAULT_ETCD_REQUEST_TIMEOUT,
                keepalive: crate::config::DEFAULT_ETCD_KEEPALIVE,
            },
            prefix: DEFAULT_ETCD_PREFIX.to_string(),
            service: service.into(),
            id: default_id(&addr),
            addr,
            metadata: BTreeMap::new(),
            ttl: DEFAULT_TTL,
            drain: DEFAULT_DRAIN,
        }
    }

    pub fn key(&self) -> String {
        format!("{}{}/{}", self.prefix, self.service, self.id)
    }

    /// The JSON value, with `status` set when given.
    pub fn value(&self, status: Option<&str>) -> String {
        let mut metadata = self.metadata.clone();
        if let Some(s) = status {
            metadata.insert("status".into(), s.into());
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        metadata.insert(REGISTERED_AT_MS.into(), now.to_string());
        serde_json::json!({ "id": self.id, "name": self.service, "addr": self.addr, "metadata": metadata }).to_string()
    }

    fn validate(&mut self) -> Result<(), RegisterError> {
        let invalid = |field, message: String| Err(RegisterError::Invalid { field, message });
        if self.etcd.endpoints.is_empty() {
            return invalid("etcd", "at least one endpoint is required".into());
        }
        if self.service.is_empty() || self.service.contains('/') {
            return invalid("service", format!("{:?} is not a service name", self.service));
        }
        if self.id.is_empty() {
            return invalid("id", "must not be empty".into());
        }
        if let Err(e) = check_addr(&self.addr) {
            return invalid("addr", e.to_string());
        }
        if !self.prefix.starts_with('/') {
            return invalid("prefix", format!("{:?} must start with '/'", self.prefix));
        }
        if !self.prefix.ends_with('/') {
            self.prefix.push('/');
        }
        if self.ttl < Duration::from_secs(1) {
            return invalid("ttl", "must be at least 1 second".into());
        }
        Ok(())
    }
}

/// The default instance id: `{hostname}-{port}` (hostname from the kernel, else
/// `$HOSTNAME`, else the host part of `addr`), unique per host and port.
pub fn default_id(addr: &str) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, ""));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
    if port.is_empty() {
        hostname
    } else {
        format!("{hostname}-{port}")
    }
}

/// A registration kept alive by a background task until [`Registrar::shutdown`].
pub struct Registrar {
    stop: CancellationToken,
    task: JoinHandle<()>,
    registered: watch::Receiver<u64>,
    key: String,
}

impl Registrar {
    /// Validates and starts registering; never waits for etcd (a provider may
    /// start before it). See [`Registrar::wait_registered`].
    pub fn start(mut reg: Registration) -> Result<Registrar, RegisterError> {
        reg.validate()?;
        let (tx, registered) = watch::channel(0);
        let stop = CancellationToken::new();
        let key = reg.key();
        let task = tokio::spawn(keep(reg, tx, stop.clone()));
        Ok(Registrar { stop, task, registered, key })
    }

    /// The etcd key of the instance.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How many times the instance has been put under a new lease (1 after
    /// the first registration, more after each re-registration).
    pub fn registrations(&self) -> u64 {
        *self.registered.borrow()
    }

    /// Waits until the instance has been registered at least `n` times.
    pub async fn wait_registrations(&mut self, n: u64, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.registered.wait_for(|&c| c >= n)).await.map(|r| r.is_ok()).unwrap_or(false)
    }

    pub async fn wait_registered(&mut self, timeout: Duration) -> bool {
        self.wait_registrations(1, timeout).await
    }

    /// Marks the instance draining, waits the drain time (keeping the lease
    /// alive), revokes the lease; returns when done.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!("registrar task failed: {e}");
        }
    }

    /// Stops keeping the lease alive without draining or revoking: the key
    /// disappears when the TTL runs out (what a crash looks like to etcd).
    pub fn abandon(self) {
        self.task.abort();
    }
}

/// A live lease with its keepalive stream.
struct Lease {
    id: i64,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    last_ok: Instant,
}

async fn keep(reg: Registration, registered: watch::Sender<u64>, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(100), reg.ttl.min(Duration::from_secs(5)));
    let mut endpoint = 0usize;
    let mut client: Option<Client> = None;
    let mut failing = false;
    let mut count = 0u64;
    let period = reg.ttl / 3;
    let retry = (reg.ttl / 10).max(Duration::from_millis(100));
    'register: loop {
        // Grant a lease and put the instance under it.
        let mut lease = loop {
            if stop.is_cancelled() {
                return;
            }
            match register_once(&reg, &mut client, endpoint).await {
                Ok(lease) => break lease,
                Err(e) => {
                    client = None;
                    endpoint += 1;
                    if !failing {
                        tracing::warn!(key = %reg.key(), "registration failed: {e}; retrying");
                        failing = true;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff.delay(fastrand::f64())) => {}
                    }
                }
            }
        };
        backoff.reset();
        failing = false;
        count += 1;
        registered.send_replace(count);
        if count == 1 {
            tracing::info!(key = %reg.key(), addr = %reg.addr, lease = format!("{:x}", lease.id), ttl_s = reg.ttl.as_secs(), "registered");
        } else {
            tracing::warn!(key = %reg.key(), lease = format!("{:x}", lease.id), "registered again under a new lease (the previous one was lost)");
        }
        // Keep it alive; on stop, drain while still keeping it alive.
        let mut drain_until: Option<Instant> = None;
        let mut next = period;
        loop {
            let stopping = drain_until.is_none() && stop.is_cancelled();
            if stopping {
                drain_until = Some(Instant::now() + reg.drain);
                if let Some(c) = client.as_mut() {
                    let put =
                        c.put(reg.key(), reg.value(Some("draining")), Some(PutOptions::new().with_lease(lease.id)));
                    match reg.etcd.call("put", put).await {
                        Ok(_) => {
                            tracing::info!(key = %reg.key(), drain_s = reg.drain.as_secs_f64(), "marked draining")
                        }
                        Err(e) => tracing::warn!(key = %reg.key(), "could not mark draining: {e}"),
                    }
                }
            }
            if let Some(until) = drain_until {
                let now = Instant::now();
                if now >= until {
                    revoke(&reg, client.as_mut(), lease.id).await;
                    return;
                }
                next = next.min(until - now);
            }
            tokio::select! {
                _ = stop.cancelled(), if drain_until.is_none() => continue,
                _ = tokio::time::sleep(next) => {}
            }
            if drain_until.is_some_and(|u| Instant::now() >= u) {
                continue;
            }
            match keepalive_once(&reg, &mut client, endpoint, &mut lease).await {
                Ok(()) => {
                    if failing {
                        tracing::info!(key = %reg.key(), "lease keepalive restored");
                        failing = false;
                    }
                    next = period;
                }
                Err(RegisterError::LeaseLost(id)) => {
                    tracing::warn!(key = %reg.key(), lease = format!("{id:x}"), "lease lost; registering again");
                    if drain_until.is_some() {
                        return;
                    }
                    continue 'register;
                }
                Err(e) => {
                    lease.keeper = None;
                    client = None;
                    endpoint += 1;
                    if !failing {
                        tracing::warn!(key = %reg.key(), "lease keepalive failed: {e}; retrying");
                        failing = true;
                    }
                    if lease.last_ok.elapsed() >= reg.ttl {
                        tracing::warn!(key = %reg.key(), lease = format!("{:x}", lease.id), "lease expired while etcd was unreachable; registering again");
                        if drain_until.is_some() {
                            return;
                        }
                        continue 'register;
                    }
                    next = retry;
                }
            }
        }
    }
}

async fn connected<'c>(
    reg: &Registration,
    client: &'c mut Option<Client>,
    endpoint: usize,
) -> Result<&'c mut Client, RegisterError> {
    if client.is_none() {
        *client = Some(reg.etcd.connect(endpoint).await?);
    }
    client.as_mut().ok_or(RegisterError::LeaseLost(0))
}

async fn register_once(
    reg: &Registration,
    client: &mut Option<Client>,
    endpoint: usize,
) -> Result<Lease, RegisterError> {
    let c = connected(reg, client, endpoint).await?;
    let ttl = reg.ttl.as_secs().max(1) as i64;
    let grant = reg.etcd.call("lease grant", c.lease_grant(ttl, None)).await?;
    let id = grant.id();
    let put = c.put(reg.key(), reg.value(None), Some(PutOptions::new().with_lease(id)));
    reg.etcd.call("put", put).await?;
    Ok(Lease { id, keeper: None, last_ok: Instant::now() })
}

async fn keepalive_once(
    reg: &Registration,
    client: &mut Option<Client>,
    endpoint: usize,
    lease: &mut Lease,
) -> Result<(), RegisterError> {
    let c = connected(reg, client, endpoint).await?;
    if lease.keeper.is_none() {
        lease.keeper = Some(reg.etcd.call("lease keepalive", c.lease_keep_alive(lease.id)).await?);
    }
    let Some((keeper, stream)) = lease.keeper.as_mut() else {
        return Err(RegisterError::LeaseLost(lease.id));
    };
    keeper.keep_alive().await.map_err(RegisterError::KeepAlive)?;
    match tokio::time::timeout(reg.etcd.request_timeout, stream.message()).await {
        Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
            lease.last_ok = Instant::now();
            Ok(())
        }
        Ok(Ok(Some(_))) => Err(RegisterError::LeaseLost(lease.id)),
        Ok(Ok(None)) => Err(RegisterError::KeepAlive(etcd_client::Error::WatchError("keepalive stream closed".into()))),
        Ok(Err(e)) => Err(RegisterError::KeepAlive(e)),
        Err(_) => {
            Err(RegisterError::Call(CallError::Timeout { what: "lease keepalive", timeout: reg.etcd.request_timeout }))
        }
    }
}

async fn revoke(reg: &Registration, client: Option<&mut Client>, id: i64) {
    let Some(c) = client else {
        tracing::warn!(key = %reg.key(), "etcd unreachable: the lease will expire by its TTL");
        return;
    };
    match reg.etcd.call("lease revoke", c.lease_revoke(id)).await {
        Ok(_) => tracing::info!(key = %reg.key(), "lease revoked; deregistered"),
        Err(e) => {
            tracing::warn!(key = %reg.key(), "lease revoke failed ({e}); the key expires by its TTL")
        }
    }
}

/// `switchyard register`: the arguments of the sidecar.
#[derive(Debug, Clone, clap::Args)]
pub struct RegisterArgs {
    /// etcd endpoints, comma-separated (http://host:port or https://host:port).
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    #[arg(long)]
    pub service: String,
    /// The address clients of the gateway will be proxied to.
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: String,
    /// Instance id; default `{hostname}-{port}`.
    #[arg(long)]
    pub id: Option<String>,
    /// Lease TTL in seconds.
    #[arg(long, default_value_t = 10)]
    pub ttl: u64,
    /// Metadata, e.g. `--meta weight=2 --meta zone=a`.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
    #[arg(long, default_value = DEFAULT_ETCD_PREFIX)]
    pub prefix: String,
    /// Seconds between marking the instance draining and revoking its lease.
    #[arg(long, default_value_t = 5.0)]
    pub drain_seconds: f64,
    #[arg(long)]
    pub username: Option<String>,
    /// Password for `--username`; default: the `ETCD_PASSWORD` environment variable.
    #[arg(long)]
    pub password: Option<String>,
    /// CA certificate (PEM) for etcd's TLS.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Name to verify etcd's certificate against (default: the endpoint host).
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// Seconds to wait for a connection to etcd.
    #[arg(long, default_value_t = 2.0)]
    pub dial_timeout: f64,
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

impl RegisterArgs {
    pub fn registration(&self) -> Result<Registration, RegisterError> {
        let mut reg = Registration::new(self.etcd.clone(), self.service.clone(), self.addr.clone());
        if let Some(id) = &self.id {
            reg.id = id.clone();
        }
        reg.ttl = Duration::from_secs(self.ttl);
        reg.metadata = self.meta.iter().cloned().collect();
        reg.prefix = self.prefix.clone();
        if !(self.drain_seconds >= 0.0 && self.drain_seconds < 86_400.0) {
            return Err(RegisterError::Invalid { field: "drain-seconds", message: "must be 0..86400".into() });
        }
        reg.drain = Duration::from_secs_f64(self.drain_seconds);
        if !(self.dial_timeout > 0.0 && self.dial_timeout < 3600.0) {
            return Err(RegisterError::Invalid { field: "dial-timeout", message: "must be above 0".into() });
        }
        reg.etcd.dial_timeout = Duration::from_secs_f64(self.dial_timeout);
        let password =
            self.password.clone().or_else(|| self.username.as_ref().and_then(|_| std::env::var("ETCD_PASSWORD").ok()));
        reg.etcd.auth = match (&self.username, &password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => {
                return Err(RegisterError::Invalid {
                    field: "username",
                    message: "--username and --password go together".into(),
                })
            }
        };
        if self.cacert.is_some() || self.cert.is_some() || self.key.is_some() || self.tls_server_name.is_some() {
            reg.etcd.tls = Some(ClientTls {
                ca: self.cacert.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
                server_name: self.tls_server_name.clone(),
            });
        }
        Ok(reg)
    }
}

/// Registers and holds the registration until SIGINT or SIGTERM, then drains
/// and deregisters.
pub async fn run_cli(args: RegisterArgs) -> Result<(), RegisterError> {
    let registrar = Registrar::start(args.registration()?)?;
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(RegisterError::Signal)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received: draining"),
        r = tokio::signal::ctrl_c() => {
            r.map_err(RegisterError::Signal)?;
            tracing::info!("SIGINT received: draining");
        }
    }
    registrar.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_is_our_json_format() {
        let mut reg = Registration::new(vec!["http://127.0.0.1:2379".into()], "wallet", "10.0.0.1:8080");
        reg.id = "w1".into();
        reg.metadata.insert("zone".into(), "a".into());
        assert_eq!(reg.key(), "/services/wallet/w1");
        let v: serde_json::Value = serde_json::from_str(&reg.value(Some("draining"))).unwrap();
        assert_eq!(v["id"], "w1");
        assert_eq!(v["name"], "wallet");
        assert_eq!(v["addr"], "10.0.0.1:8080");
        assert_eq!(v["metadata"]["zone"], "a");
        assert_eq!(v["metadata"]["status"], "draining");
        assert!(v["metadata"][REGISTERED_AT_MS].as_str().unwrap().parse::<u64>().is_ok());
        let i = crate::discovery::decode("wallet", "w1", reg.value(None).as_bytes()).unwrap();
        assert_eq!(i.addr, "10.0.0.1:8080");
    }

    #[test]
    fn default_id_has_the_port() {
        assert!(default_id("10.0.0.1:8080").ends_with("-8080"));
    }

    #[test]
    fn validation() {
        let ok = Registration::new(vec!["http://127.0.0.1:2379".into()], "s", "127.0.0.1:1");
        let mut r = ok.clone();
        r.prefix = "/x".into();
        r.validate().unwrap();
        assert_eq!(r.prefix, "/x/");
        for (field, edit) in [
            ("addr", Box::new(|r: &mut Registration| r.addr = "h:0".into()) as Box<dyn Fn(&mut Registration)>),
            ("service", Box::new(|r: &mut Registration| r.service = "a/b".into())),
            ("ttl", Box::new(|r: &mut Registration| r.ttl = Duration::from_millis(500))),
            ("etcd", Box::new(|r: &mut Registration| r.etcd.endpoints.clear())),
        ] {
            let mut r = ok.clone();
            edit(&mut r);
            assert!(matches!(r.validate(), Err(RegisterError::Invalid { field: f, .. }) if f == field), "{field}");
        }
        assert_eq!(parse_meta("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_meta("=x").is_err());
    }
}
