//! The configuration the proxy runs with: the validated file (or flags) turned into the typed,
//! ready-to-use values the data plane reads, and the atomic swap that replaces it on reload.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use respmesh_api::proxy::{Credentials, Mode, ProxyConfig};

use crate::resp::Limits;

/// A secret string whose `Debug` output hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A username and password, read and ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub username: Option<Vec<u8>>,
    pub password: Secret,
}

/// One service as the data plane uses it.
#[derive(Debug, PartialEq)]
pub struct ServiceRt {
    pub host: String,
    pub mode: Mode,
    /// PROXY: the Redis to use. CLUSTER: the nodes asked for the topology at first.
    pub endpoints: Vec<String>,
    pub refresh_interval: Duration,
    pub read_policy: respmesh_api::proxy::ReadPolicy,
    pub faults: Vec<FaultRt>,
    /// Sharding: hash only a key's `{tag}`.
    pub hashtags: bool,
    /// Key-prefix routes, longest prefix first, the default (if any) last.
    pub routes: Vec<RouteRt>,
    pub auth: Option<Creds>,
    pub client_auth: Option<Creds>,
    pub op_timeout: Duration,
    pub op_timeout_text: respmesh_api::Duration,
    pub connect_timeout: Duration,
    /// Why this service refuses its clients (fail closed): a credential it needs is missing,
    /// or it has no endpoints. `None` when it serves.
    pub refused: Option<String>,
}

impl ServiceRt {
    /// Whether upstream connections made for `self` can serve `other` unchanged.
    pub fn same_upstream(&self, other: &ServiceRt) -> bool {
        self.endpoints == other.endpoints && self.auth == other.auth && self.mode == other.mode
    }

    /// The first endpoint; empty when there is none (such a service is `refused`).
    pub fn endpoint(&self) -> &str {
        self.endpoints.first().map_or("", String::as_str)
    }

    /// Keys go to one of several servers: a Redis Cluster, or standalone endpoints sharded by
    /// consistent hashing.
    pub fn distributed(&self) -> bool {
        self.mode == Mode::Cluster || self.endpoints.len() > 1
    }
}

/// A fault as the data plane applies it.
#[derive(Debug, PartialEq)]
pub struct FaultRt {
    /// `None`: an error; `Some(d)`: the reply is held back for `d`.
    pub delay: Option<Duration>,
    /// Probability, 0.0 to 1.0.
    pub chance: f64,
    /// Upper-case command names; empty: every command but AUTH and PING.
    pub commands: Vec<String>,
}

impl From<&respmesh_api::proxy::Fault> for FaultRt {
    fn from(f: &respmesh_api::proxy::Fault) -> Self {
        FaultRt {
            delay: match f.kind {
                respmesh_api::proxy::FaultType::Error => None,
                respmesh_api::proxy::FaultType::Delay => Some(f.delay.map(|d| d.get()).unwrap_or_default()),
            },
            chance: f.percentage.value / 100.0,
            commands: f.commands.iter().map(|c| c.to_ascii_uppercase()).collect(),
        }
    }
}

impl FaultRt {
    pub fn applies_to(&self, name: &str) -> bool {
        if self.commands.is_empty() {
            return name != "AUTH" && name != "PING";
        }
        self.commands.iter().any(|c| c == name)
    }
}

/// A key-prefix route as the data plane applies it.
#[derive(Debug, PartialEq)]
pub struct RouteRt {
    /// `None` for the default route. Lower-case when `case_insensitive`.
    pub prefix: Option<Vec<u8>>,
    pub case_insensitive: bool,
    pub remove_prefix: bool,
    /// Host of the service that serves the route.
    pub target: String,
    pub mirrors: Vec<MirrorRt>,
}

#[derive(Debug, PartialEq)]
pub struct MirrorRt {
    pub target: String,
    pub chance: f64,
    pub writes_only: bool,
}

impl RouteRt {
    fn build(routes: &[respmesh_api::proxy::Route]) -> Vec<RouteRt> {
        let mut out: Vec<RouteRt> = routes
            .iter()
            .map(|r| {
                let ci = r.matches.as_ref().is_some_and(|m| m.key.case_insensitive);
                RouteRt {
                    prefix: r.matches.as_ref().map(|m| {
                        if ci {
                            m.key.prefix.to_ascii_lowercase().into_bytes()
                        } else {
                            m.key.prefix.clone().into_bytes()
                        }
                    }),
                    case_insensitive: ci,
                    remove_prefix: r.matches.as_ref().is_some_and(|m| m.key.remove_prefix),
                    target: r.route.host.clone(),
                    mirrors: r
                        .mirror
                        .iter()
                        .map(|m| MirrorRt {
                            target: m.route.host.clone(),
                            chance: m.percentage.value / 100.0,
                            writes_only: m.exclude_read_commands,
                        })
                        .collect(),
                }
            })
            .collect();
        // Longest prefix first, whatever the order written; the default last.
        out.sort_by_key(|r| std::cmp::Reverse(r.prefix.as_ref().map_or(-1, |p| p.len() as i64)));
        out
    }

    /// Whether this route takes `key`.
    pub fn matches(&self, key: &[u8]) -> bool {
        match &self.prefix {
            None => true,
            Some(p) if self.case_insensitive => key.len() >= p.len() && key[..p.len()].eq_ignore_ascii_case(p),
            Some(p) => key.starts_with(p),
        }
    }
}

/// The credentials Secret: key to value, values trimmed. `None` when the proxy has none.
pub type SecretData = Option<BTreeMap<String, Vec<u8>>>;

/// The service name of a capture listener (`--capture`): each of its connections goes to the
/// service whose `addresses` hold the connection's original destination (`SO_ORIGINAL_DST`,
/// set by the iptables REDIRECT of respmesh-init), or is relayed as plain TCP.
pub const CAPTURE: &str = "";

/// One configuration snapshot.
#[derive(Debug)]
pub struct Runtime {
    pub source: ProxyConfig,
    pub services: HashMap<String, Arc<ServiceRt>>,
    /// Listening addresses and their service's host ([`CAPTURE`] for capture listeners).
    pub listeners: Vec<(SocketAddr, String)>,
    /// Service address (VIP:port, or endpoint address of a headless service) to host.
    pub by_address: HashMap<SocketAddr, String>,
    pub limits: Limits,
    pub generation: u64,
    /// The credentials Secret this snapshot was built with.
    pub secret: SecretData,
}

impl Runtime {
    /// Builds a snapshot from a validated configuration, reading credential files.
    pub fn build(source: ProxyConfig, generation: u64) -> anyhow::Result<Runtime> {
        Runtime::build_with(source, generation, None, &[])
    }

    /// Builds a snapshot with the credentials Secret `secret` and extra listeners `binds`
    /// (address, service host, or [`CAPTURE`]) that are not checked against the services: a
    /// listener whose service is not (yet) configured answers its clients with an error
    /// saying so.
    pub fn build_with(
        source: ProxyConfig,
        generation: u64,
        secret: SecretData,
        binds: &[(SocketAddr, String)],
    ) -> anyhow::Result<Runtime> {
        source.validate()?;
        let mut services = HashMap::new();
        for svc in &source.services {
            let mut refused = None;
            let mut read = |c: &Option<Credentials>, what: &str| -> anyhow::Result<Option<Creds>> {
                let Some(c) = c else { return Ok(None) };
                match read_creds(c, secret.as_ref()) {
                    Ok(creds) => Ok(Some(creds)),
                    Err(CredsError::Key(why)) => {
                        refused.get_or_insert(format!("its {what} is unavailable: {why}"));
                        Ok(None)
                    }
                    Err(CredsError::Other(e)) => Err(e.context(format!("service {}: {what}", svc.host))),
                }
            };
            let auth = read(&svc.auth, "auth")?;
            let client_auth = read(&svc.client_auth, "clientAuth")?;
            let endpoints = if svc.mode == Mode::Cluster && !svc.cluster.discovery_endpoints.is_empty() {
                svc.cluster.discovery_endpoints.clone()
            } else {
                svc.endpoints.clone()
            };
            let no_endpoints = endpoints.is_empty();
            let rt = ServiceRt {
                host: svc.host.clone(),
                mode: svc.mode,
                endpoints,
                refresh_interval: svc.cluster.refresh_interval.get(),
                read_policy: svc.read_policy,
                faults: svc.faults.iter().map(FaultRt::from).collect(),
                hashtags: svc.enable_hashtagging,
                routes: RouteRt::build(&svc.routes),
                refused: refused.or_else(|| no_endpoints.then(|| "it has no ready endpoints".to_owned())),
                auth,
                client_auth,
                op_timeout: svc.op_timeout.get(),
                op_timeout_text: svc.op_timeout,
                connect_timeout: svc.connect_timeout.get(),
            };
            if let Some(why) = &rt.refused {
                tracing::warn!(service = %rt.host, reason = %why, "service refuses its clients until this is fixed");
            }
            services.insert(svc.host.clone(), Arc::new(rt));
        }
        let mut listeners: Vec<(SocketAddr, String)> =
            source.listeners.iter().map(|l| (l.address.parse().expect("validated"), l.service.clone())).collect();
        for (addr, host) in binds {
            if listeners.iter().any(|(a, _)| a == addr) {
                bail!("--bind {addr}: the configuration already listens there");
            }
            listeners.push((*addr, host.clone()));
        }
        let limits = Limits::from(&source.limits);
        let mut by_address = HashMap::new();
        for svc in &source.services {
            for a in &svc.addresses {
                by_address.insert(a.parse().expect("validated"), svc.host.clone());
            }
        }
        Ok(Runtime { source, services, listeners, by_address, limits, generation, secret })
    }
}

enum CredsError {
    /// A key of the credentials Secret is missing: the service fails closed.
    Key(String),
    /// Anything else rejects the configuration.
    Other(anyhow::Error),
}

fn secret_key(secret: Option<&BTreeMap<String, Vec<u8>>>, key: &str) -> Result<Vec<u8>, CredsError> {
    let Some(data) = secret else {
        return Err(CredsError::Key(format!("key {key:?} is named, but the proxy has no credentials Secret")));
    };
    match data.get(key) {
        Some(v) => Ok(v.clone()),
        None => Err(CredsError::Key(format!("the credentials Secret has no key {key:?}"))),
    }
}

fn read_creds(c: &Credentials, secret: Option<&BTreeMap<String, Vec<u8>>>) -> Result<Creds, CredsError> {
    let file = |path: &str| read_secret_file(Path::new(path)).map_err(CredsError::Other);
    let username = match (&c.username, &c.username_file, &c.username_key) {
        (Some(u), _, _) => Some(u.as_bytes().to_vec()),
        (None, Some(path), _) => Some(file(path)?),
        (None, None, Some(key)) => Some(secret_key(secret, key)?),
        (None, None, None) => None,
    };
    let password = match (&c.password, &c.password_file, &c.password_key) {
        (Some(p), _, _) => p.as_bytes().to_vec(),
        (None, Some(path), _) => file(path)?,
        (None, None, Some(key)) => secret_key(secret, key)?,
        (None, None, None) => return Err(CredsError::Other(anyhow::anyhow!("a password is needed"))),
    };
    if password.is_empty() {
        return Err(match &c.password_key {
            Some(key) => CredsError::Key(format!("key {key:?} of the credentials Secret is empty")),
            None => CredsError::Other(anyhow::anyhow!("the password is empty")),
        });
    }
    Ok(Creds { username, password: Secret(password) })
}

/// Reads a directory holding one file per key (a mounted Secret volume) into a map; names
/// starting with `.` (the kubelet's `..data` and timestamped directories) are skipped.
pub fn read_secret_dir(dir: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        out.insert(name, read_secret_file(&entry.path())?);
    }
    Ok(out)
}

/// Reads a credential file; surrounding white space (a trailing newline, as `echo` and
/// Kubernetes Secrets made from files often leave) is trimmed.
pub fn read_secret_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(raw.trim_ascii().to_vec())
}

/// The configuration in force, swapped atomically on reload; the generation lets hot paths
/// notice a change with one atomic load.
pub struct Shared {
    current: ArcSwap<Runtime>,
    generation: AtomicU64,
}

impl Shared {
    pub fn new(rt: Runtime) -> Arc<Shared> {
        let generation = AtomicU64::new(rt.generation);
        Arc::new(Shared { current: ArcSwap::from_pointee(rt), generation })
    }

    pub fn load(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn next_generation(&self) -> u64 {
        self.current.load().generation + 1
    }

    pub fn store(&self, rt: Runtime) {
        let generation = rt.generation;
        self.current.store(Arc::new(rt));
        self.generation.store(generation, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_files_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("password");
        std::fs::write(&p, "testredis\n").unwrap();
        assert_eq!(read_secret_file(&p).unwrap(), b"testredis");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let c = Creds { username: None, password: Secret(b"hunter2".to_vec()) };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn a_missing_password_file_is_a_clear_error() {
        let mut cfg = ProxyConfig::empty();
        cfg.services.push(respmesh_api::proxy::Service {
            auth: Some(Credentials { password_file: Some("/nonexistent/pw".into()), ..Default::default() }),
            ..respmesh_api::proxy::Service::new("svc", vec!["127.0.0.1:6379".into()])
        });
        let err = format!("{:#}", Runtime::build(cfg, 1).unwrap_err());
        assert!(err.contains("service svc: auth: cannot read /nonexistent/pw"), "{err}");
    }

    fn keyed_service() -> ProxyConfig {
        let mut cfg = ProxyConfig::from_yaml(
            r#"
apiVersion: proxy.respmesh.io/v1alpha1
kind: ProxyConfig
services:
  - host: a
    endpoints: ["127.0.0.1:6379"]
    auth: {passwordKey: a.upstream-password, usernameKey: a.upstream-username}
    clientAuth: {passwordKey: a.client-password}
  - host: b
    endpoints: ["127.0.0.1:6379"]
  - host: c
    endpoints: []
"#,
        )
        .unwrap();
        cfg.limits = Default::default();
        cfg
    }

    #[test]
    fn credentials_come_from_secret_keys() {
        let secret: BTreeMap<String, Vec<u8>> =
            [("a.upstream-password", "up"), ("a.upstream-username", "proxy"), ("a.client-password", "cl")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
                .collect();
        let rt = Runtime::build_with(keyed_service(), 1, Some(secret), &[]).unwrap();
        let a = &rt.services["a"];
        assert_eq!(a.refused, None);
        assert_eq!(a.auth.as_ref().unwrap().username.as_deref(), Some(&b"proxy"[..]));
        assert_eq!(a.auth.as_ref().unwrap().password, Secret(b"up".to_vec()));
        assert_eq!(a.client_auth.as_ref().unwrap().password, Secret(b"cl".to_vec()));
    }

    /// A missing key never means "no password": the service refuses clients, the others serve.
    #[test]
    fn a_missing_secret_key_fails_closed_for_that_service_only() {
        let secret: BTreeMap<String, Vec<u8>> =
            [("a.upstream-password".to_owned(), b"up".to_vec()), ("a.upstream-username".to_owned(), b"u".to_vec())]
                .into_iter()
                .collect();
        let rt = Runtime::build_with(keyed_service(), 1, Some(secret), &[]).unwrap();
        let why = rt.services["a"].refused.as_deref().unwrap();
        assert!(why.contains("clientAuth") && why.contains("a.client-password"), "{why}");
        assert!(rt.services["a"].client_auth.is_none());
        assert_eq!(rt.services["b"].refused, None);
        assert_eq!(rt.services["c"].refused.as_deref(), Some("it has no ready endpoints"));

        let rt = Runtime::build_with(keyed_service(), 1, None, &[]).unwrap();
        let why = rt.services["a"].refused.as_deref().unwrap();
        assert!(why.contains("no credentials Secret"), "{why}");
    }

    #[test]
    fn secret_directories_skip_kubelet_bookkeeping() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), "v\n").unwrap();
        std::fs::create_dir(dir.path().join("..2026_11_25")).unwrap();
        std::fs::write(dir.path().join("..data"), "x").unwrap();
        let data = read_secret_dir(dir.path()).unwrap();
        assert_eq!(data.into_iter().collect::<Vec<_>>(), vec![("k".to_owned(), b"v".to_vec())]);
    }
}
