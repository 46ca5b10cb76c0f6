//! The translation from what is in the cluster (Redis Services, their EndpointSlices, Secrets,
//! RedisService and RedisDestination resources) to what every proxy needs: one proxy
//! configuration (no credentials), the credentials it names by key, and the conditions each
//! resource should report. A pure function: same inputs, same output, byte for byte.
//!
//! Rules (README "Control plane" says the same for users):
//! - A Service is a Redis service when a port is named `tcp-redis*` or `redis*`, or has
//!   appProtocol `redis`. Each such port is one proxy service, host
//!   `<name>.<namespace>.svc.<domain>` (suffixed `:<port>` when the Service has several).
//! - Its cluster IPs (every family) with the port are the addresses the proxy recognises; a
//!   headless Service is recognised by its endpoints' addresses instead.
//! - Ready endpoints of its EndpointSlices (serving when not ready is unknown) with the
//!   slice's matching port are the upstream endpoints.
//! - RedisDestination and RedisService apply to hosts in their own namespace only; when two
//!   name the same host, the older one wins and the other is told it conflicts.
//! - Fail closed: a credential that cannot be resolved is still named in the configuration,
//!   but absent from the credentials, so the proxy refuses the service's clients; a route to
//!   an unknown host goes to a placeholder service that refuses, never to the default route.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Secret, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use respmesh_api::crd::{Auth, FaultType, ReadPolicy, RedisDestinationSpec, RedisMode, RedisServiceSpec};
use respmesh_api::proxy::{self, Credentials, ProxyConfig};

/// Which of the two resource kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    RedisService,
    RedisDestination,
}

/// Identifies one custom resource (either API group).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CrKey {
    pub group: String,
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

/// A custom resource as the translation sees it.
#[derive(Clone, Debug)]
pub struct Cr<S> {
    pub key: CrKey,
    /// Creation time as RFC 3339 text (older wins conflicts), then name order.
    pub created: String,
    /// `Err` when the stored object does not decode (it then only gets a condition).
    pub spec: Result<S, String>,
}

#[derive(Default, Debug)]
pub struct Inputs {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub secrets: Vec<Secret>,
    pub redis_services: Vec<Cr<RedisServiceSpec>>,
    pub redis_destinations: Vec<Cr<RedisDestinationSpec>>,
    /// The cluster's DNS domain, `cluster.local` by default.
    pub domain: String,
}

/// A condition the operator wants on a resource (times are added when written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub kind: &'static str,
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug)]
pub struct Translation {
    pub config: ProxyConfig,
    /// Key to value, for the credentials Secret.
    pub credentials: BTreeMap<String, String>,
    /// Every resource's conditions, `Accepted` then `ResolvedRefs`.
    pub conditions: BTreeMap<CrKey, Vec<Cond>>,
}

/// One Redis port of one Service.
struct RedisPort<'a> {
    svc: &'a Service,
    port: &'a ServicePort,
    namespace: &'a str,
    name: &'a str,
    /// The host clients and resources name: the Service's FQDN.
    fqdn: String,
    /// The proxy service's host: the FQDN, or `FQDN:port` when the Service has several.
    host: String,
}

pub fn is_redis_port(p: &ServicePort) -> bool {
    let name = p.name.as_deref().unwrap_or("");
    name.starts_with("tcp-redis") || name.starts_with("redis") || p.app_protocol.as_deref() == Some("redis")
}

fn join_host_port(host: &str, port: i32) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{host}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

struct Outcome {
    accepted: Cond,
    refs: Vec<String>,
    refs_reason: &'static str,
}

impl Outcome {
    fn accepted(message: &str) -> Self {
        Outcome {
            accepted: Cond { kind: "Accepted", ok: true, reason: "Accepted", message: message.to_owned() },
            refs: Vec::new(),
            refs_reason: "ResolvedRefs",
        }
    }

    fn rejected(reason: &'static str, message: String) -> Self {
        Outcome {
            accepted: Cond { kind: "Accepted", ok: false, reason, message },
            refs: Vec::new(),
            refs_reason: "ResolvedRefs",
        }
    }

    fn unresolved(&mut self, reason: &'static str, message: String) {
        if self.refs.is_empty() {
            self.refs_reason = reason;
        }
        self.refs.push(message);
    }

    fn into_conditions(self) -> Vec<Cond> {
        let refs = if self.refs.is_empty() {
            Cond { kind: "ResolvedRefs", ok: true, reason: "ResolvedRefs", message: "every reference resolved".into() }
        } else {
            Cond { kind: "ResolvedRefs", ok: false, reason: self.refs_reason, message: self.refs.join("; ") }
        };
        vec![self.accepted, refs]
    }
}

struct Resolver<'a> {
    secrets: HashMap<(&'a str, &'a str), &'a Secret>,
    credentials: BTreeMap<String, String>,
}

impl<'a> Resolver<'a> {
    /// Resolves `auth` into credentials named `<key>-password` / `<key>-username`. The keys are
    /// named in the result even when their values cannot be found (fail closed).
    fn credentials(&mut self, ns: &str, auth: &Auth, key: &str, out: &mut Outcome) -> Credentials {
        let pw_key = format!("{key}-password");
        let user_key = format!("{key}-username");
        let mut creds = Credentials { password_key: Some(pw_key.clone()), ..Default::default() };
        if let Some(plain) = &auth.plain {
            self.credentials.insert(pw_key, plain.password.trim().to_owned());
            if let Some(u) = plain.username.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
                self.credentials.insert(user_key.clone(), u.to_owned());
                creds.username_key = Some(user_key);
            }
            return creds;
        }
        let Some(sref) = &auth.secret else { return creds };
        let Some(secret) = self.secrets.get(&(ns, sref.name.as_str())) else {
            out.unresolved("SecretNotFound", format!("Secret {ns}/{} not found", sref.name));
            return creds;
        };
        let data = |k: &str| -> Option<String> {
            secret.data.as_ref()?.get(k).map(|v| String::from_utf8_lossy(&v.0).trim().to_owned())
        };
        let password = match sref.password_field.as_deref().filter(|f| !f.is_empty()) {
            Some(f) => data(f).ok_or_else(|| format!("Secret {ns}/{} has no key {f:?}", sref.name)),
            None => data("password")
                .or_else(|| data("token"))
                .ok_or_else(|| format!("Secret {ns}/{} has neither key \"password\" nor \"token\"", sref.name)),
        };
        match password {
            Ok(p) if !p.is_empty() => {
                self.credentials.insert(pw_key, p);
            }
            Ok(_) => out.unresolved("SecretKeyNotFound", format!("Secret {ns}/{}: the password is empty", sref.name)),
            Err(why) => out.unresolved("SecretKeyNotFound", why),
        }
        let username = match sref.username_field.as_deref().filter(|f| !f.is_empty()) {
            Some(f) => match data(f) {
                Some(u) => Some(u),
                None => {
                    out.unresolved("SecretKeyNotFound", format!("Secret {ns}/{} has no key {f:?}", sref.name));
                    // Named but absent: the proxy refuses rather than log in as another user.
                    creds.username_key = Some(user_key.clone());
                    None
                }
            },
            None => data("username"),
        };
        if let Some(u) = username.filter(|u| !u.is_empty()) {
            self.credentials.insert(user_key.clone(), u);
            creds.username_key = Some(user_key);
        }
        creds
    }
}

/// Orders resources so that the oldest comes first (it wins a conflict).
fn by_age<S>(crs: &[Cr<S>]) -> Vec<&Cr<S>> {
    let mut v: Vec<&Cr<S>> = crs.iter().collect();
    v.sort_by(|a, b| (&a.created, &a.key).cmp(&(&b.created, &b.key)));
    v
}

fn group_label(key: &CrKey) -> String {
    let kind = match key.kind {
        Kind::RedisService => "RedisService",
        Kind::RedisDestination => "RedisDestination",
    };
    format!("{kind} {}/{} ({})", key.namespace, key.name, key.group)
}

pub fn translate(inputs: &Inputs) -> Translation {
    let domain = if inputs.domain.is_empty() { "cluster.local" } else { inputs.domain.as_str() };
    // Redis ports, in a stable order.
    let mut ports: Vec<RedisPort> = Vec::new();
    for svc in &inputs.services {
        let (Some(ns), Some(name)) = (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref()) else {
            continue;
        };
        let redis: Vec<&ServicePort> =
            svc.spec.iter().flat_map(|s| s.ports.iter().flatten()).filter(|p| is_redis_port(p)).collect();
        let fqdn = format!("{name}.{ns}.svc.{domain}");
        for port in &redis {
            let host = if redis.len() == 1 { fqdn.clone() } else { format!("{fqdn}:{}", port.port) };
            ports.push(RedisPort { svc, port, namespace: ns, name, fqdn: fqdn.clone(), host });
        }
    }
    ports.sort_by(|a, b| a.host.cmp(&b.host));

    let mut resolver = Resolver {
        secrets: inputs
            .secrets
            .iter()
            .filter_map(|s| Some(((s.metadata.namespace.as_deref()?, s.metadata.name.as_deref()?), s)))
            .collect(),
        credentials: BTreeMap::new(),
    };
    let mut conditions = BTreeMap::new();
    let mut services: BTreeMap<String, proxy::Service> = BTreeMap::new();
    let mut used_addresses = BTreeSet::new();

    for rp in &ports {
        let spec = rp.svc.spec.as_ref().expect("a Service with ports has a spec");
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let mut endpoints = BTreeSet::new();
        for slice in &inputs.slices {
            let labels = slice.metadata.labels.as_ref();
            if slice.metadata.namespace.as_deref() != Some(rp.namespace)
                || labels.and_then(|l| l.get("kubernetes.io/service-name")).map(String::as_str) != Some(rp.name)
            {
                continue;
            }
            let want = rp.port.name.as_deref().unwrap_or("");
            let Some(port) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == want)
                .and_then(|p| p.port)
            else {
                continue;
            };
            for ep in slice.endpoints.iter().flatten() {
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for addr in &ep.addresses {
                    endpoints.insert(join_host_port(addr, port));
                }
            }
        }
        let mut addresses = Vec::new();
        let candidates: Vec<String> = if headless {
            endpoints.iter().cloned().collect()
        } else {
            let ips: Vec<&String> = match &spec.cluster_ips {
                Some(ips) if !ips.is_empty() => ips.iter().collect(),
                _ => spec.cluster_ip.iter().collect(),
            };
            ips.into_iter().filter(|ip| ip.parse::<IpAddr>().is_ok()).map(|ip| join_host_port(ip, rp.port.port)).collect()
        };
        for a in candidates {
            if a.parse::<std::net::SocketAddr>().is_ok() && used_addresses.insert(a.clone()) {
                addresses.push(a);
            }
        }
        let mut svc = proxy::Service {
            host: rp.host.clone(),
            addresses,
            endpoints: endpoints.into_iter().collect(),
            mode: proxy::Mode::Proxy,
            auth: None,
            client_auth: None,
            op_timeout: respmesh_api::Duration::from_secs(5),
            connect_timeout: respmesh_api::Duration::from_secs(1),
            cluster: Default::default(),
            read_policy: Default::default(),
            enable_hashtagging: false,
            faults: vec![],
            routes: vec![],
        };
        svc.endpoints.retain(|e| e.parse::<std::net::SocketAddr>().is_ok() || e.rsplit_once(':').is_some());
        services.insert(rp.host.clone(), svc);
    }

    // RedisDestinations: how to reach each host.
    let mut destined: HashMap<String, CrKey> = HashMap::new();
    for cr in by_age(&inputs.redis_destinations) {
        let ns = cr.key.namespace.as_str();
        let mut out = match &cr.spec {
            Err(e) => Outcome::rejected("Invalid", format!("cannot decode the resource: {e}")),
            Ok(spec) => {
                let targets: Vec<&RedisPort> = ports.iter().filter(|p| p.fqdn == spec.host).collect();
                if targets.is_empty() || targets.iter().any(|p| p.namespace != ns) {
                    Outcome::rejected("HostNotFound", host_not_found(&spec.host, ns, domain))
                } else if let Some(winner) = destined.get(&spec.host) {
                    Outcome::rejected(
                        "Conflicted",
                        format!("{} already configures host {}; the older resource wins", group_label(winner), spec.host),
                    )
                } else {
                    destined.insert(spec.host.clone(), cr.key.clone());
                    let mut out = Outcome::accepted(&format!("configures {}", spec.host));
                    let pool = spec.traffic_policy.as_ref().and_then(|t| t.connection_pool.as_ref());
                    for rp in targets {
                        let key = format!("{}.{}.{}.upstream", rp.name, rp.namespace, rp.port.port);
                        let svc = services.get_mut(&rp.host).expect("every port has a service");
                        if let Some(t) = pool.and_then(|p| p.tcp.as_ref()).and_then(|t| t.connect_timeout)
                            && !t.get().is_zero()
                        {
                            svc.connect_timeout = t;
                        }
                        let Some(redis) = pool.and_then(|p| p.redis.as_ref()) else { continue };
                        if redis.mode == RedisMode::Cluster {
                            svc.mode = proxy::Mode::Cluster;
                        }
                        for ep in &redis.discovery_endpoints {
                            let has_port = ep.parse::<std::net::SocketAddr>().is_ok() || ep.matches(':').count() == 1;
                            let full = if has_port { ep.clone() } else { join_host_port(ep, rp.port.port) };
                            if proxy::check_host_port(&full).is_ok() {
                                svc.cluster.discovery_endpoints.push(full);
                            } else {
                                out.accepted.reason = "InvalidDiscoveryEndpoint";
                                out.accepted.message = format!(
                                    "discoveryEndpoints entry {ep:?} is not host:port; the Service's endpoints are used"
                                );
                            }
                        }
                        if out.accepted.reason == "InvalidDiscoveryEndpoint" {
                            svc.cluster.discovery_endpoints.clear();
                        }
                        if let Some(auth) = &redis.auth {
                            svc.auth = Some(resolver.credentials(ns, auth, &key, &mut out));
                        }
                    }
                    out
                }
            }
        };
        if out.accepted.reason == "InvalidDiscoveryEndpoint" {
            out.accepted.ok = true;
        }
        conditions.insert(cr.key.clone(), out.into_conditions());
    }

    // RedisServices: what clients of each host get.
    let mut claimed: HashMap<String, CrKey> = HashMap::new();
    let mut placeholders: BTreeSet<String> = BTreeSet::new();
    for cr in by_age(&inputs.redis_services) {
        let ns = cr.key.namespace.as_str();
        let out = match &cr.spec {
            Err(e) => Outcome::rejected("Invalid", format!("cannot decode the resource: {e}")),
            Ok(spec) => {
                let mut out = Outcome::accepted("");
                let mut applied = Vec::new();
                let mut problems = Vec::new();
                for host in &spec.host {
                    let targets: Vec<&RedisPort> = ports.iter().filter(|p| &p.fqdn == host).collect();
                    if targets.is_empty() || targets.iter().any(|p| p.namespace != ns) {
                        problems.push(host_not_found(host, ns, domain));
                        continue;
                    }
                    if let Some(winner) = claimed.get(host) {
                        problems.push(format!(
                            "{} already configures host {host}; the older resource wins",
                            group_label(winner)
                        ));
                        continue;
                    }
                    claimed.insert(host.clone(), cr.key.clone());
                    applied.push(host.clone());
                    for rp in targets {
                        apply_redis_service(spec, rp, &ports, &mut services, &mut placeholders, &mut resolver, &mut out, domain);
                    }
                }
                if applied.is_empty() {
                    let reason = if problems.iter().any(|p| p.contains("older resource wins")) { "Conflicted" } else { "HostNotFound" };
                    Outcome::rejected(reason, problems.join("; "))
                } else {
                    out.accepted.message = format!("configures {}", applied.join(", "));
                    for p in problems {
                        out.unresolved("HostNotFound", p);
                    }
                    out
                }
            }
        };
        conditions.insert(cr.key.clone(), out.into_conditions());
    }
    for host in placeholders {
        services.entry(host.clone()).or_insert_with(|| proxy::Service {
            host,
            addresses: vec![],
            endpoints: vec![],
            mode: proxy::Mode::Proxy,
            auth: None,
            client_auth: None,
            op_timeout: respmesh_api::Duration::from_secs(5),
            connect_timeout: respmesh_api::Duration::from_secs(1),
            cluster: Default::default(),
            read_policy: Default::default(),
            enable_hashtagging: false,
            faults: vec![],
            routes: vec![],
        });
    }

    let config = ProxyConfig { services: services.into_values().collect(), ..ProxyConfig::empty() };
    debug_assert!(config.validate().is_ok(), "{:?}", config.validate());
    Translation { config, credentials: resolver.credentials, conditions }
}

fn host_not_found(host: &str, ns: &str, domain: &str) -> String {
    format!(
        "no Service in namespace {ns} has host {host:?} with a Redis port (write <service>.{ns}.svc.{domain}; \
         a Redis port is named tcp-redis* or redis*, or has appProtocol redis)"
    )
}

/// Finds the proxy host a route names: the Service's only Redis port, the port given, or the
/// port equal to the routing service's own.
fn route_host(host: &str, port: Option<u32>, own_port: i32, ports: &[RedisPort]) -> Option<String> {
    let candidates: Vec<&RedisPort> = ports.iter().filter(|p| p.fqdn == host).collect();
    match port {
        Some(want) => candidates.iter().find(|p| p.port.port as u32 == want).map(|p| p.host.clone()),
        None if candidates.len() == 1 => Some(candidates[0].host.clone()),
        None => candidates.iter().find(|p| p.port.port == own_port).or(candidates.first()).map(|p| p.host.clone()),
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_redis_service(
    spec: &RedisServiceSpec,
    rp: &RedisPort,
    ports: &[RedisPort],
    services: &mut BTreeMap<String, proxy::Service>,
    placeholders: &mut BTreeSet<String>,
    resolver: &mut Resolver,
    out: &mut Outcome,
    domain: &str,
) {
    let ns = rp.namespace;
    let settings = spec.settings.clone().unwrap_or_default();
    let client_auth = settings.auth.as_ref().map(|a| {
        let key = format!("{}.{}.{}.client", rp.name, ns, rp.port.port);
        resolver.credentials(ns, a, &key, out)
    });
    let mut target = |host: &str, port: Option<u32>, out: &mut Outcome| -> String {
        match route_host(host, port, rp.port.port, ports) {
            Some(h) => h,
            None => {
                out.unresolved(
                    "RouteHostNotFound",
                    format!(
                        "route host {host:?} is not a Redis service (write <service>.<namespace>.svc.{domain}); \
                         its commands get an error until it exists"
                    ),
                );
                let h = match port {
                    Some(p) => format!("{host}:{p}"),
                    None => host.to_owned(),
                };
                placeholders.insert(h.clone());
                h
            }
        }
    };
    let mut routes = Vec::new();
    for r in &spec.redis {
        let host = target(&r.route.host, r.route.port, out);
        let mirror = r
            .mirror
            .iter()
            .map(|m| proxy::Mirror {
                route: proxy::RouteTarget { host: target(&m.route.host, m.route.port, out) },
                percentage: proxy::Percent { value: m.percentage.map_or(100.0, |p| p.value) },
                exclude_read_commands: m.exclude_read_commands,
            })
            .collect();
        routes.push(proxy::Route {
            matches: r.matches.as_ref().map(|m| proxy::RouteMatch {
                key: proxy::KeyMatch {
                    prefix: m.key.prefix.clone(),
                    remove_prefix: m.key.remove_prefix,
                    case_insensitive: settings.case_insensitive,
                },
            }),
            route: proxy::RouteTarget { host },
            mirror,
        });
    }
    // Keep what the proxy accepts: one default route, distinct prefixes (the first wins).
    let mut seen = BTreeSet::new();
    let mut default_seen = false;
    routes.retain(|r| match &r.matches {
        None => !std::mem::replace(&mut default_seen, true),
        Some(m) => seen.insert(m.key.prefix.clone()),
    });
    let mut faults = Vec::new();
    for f in &spec.faults {
        faults.push(proxy::Fault {
            kind: match f.kind {
                FaultType::Delay => proxy::FaultType::Delay,
                FaultType::Error => proxy::FaultType::Error,
            },
            percentage: proxy::Percent { value: f.percentage.value },
            delay: match f.kind {
                FaultType::Delay => Some(f.delay.unwrap_or_default()),
                FaultType::Error => None,
            },
            commands: f.commands.iter().filter(|c| !c.trim().is_empty()).map(|c| c.trim().to_owned()).collect(),
        });
    }
    let svc = services.get_mut(&rp.host).expect("every port has a service");
    if let Some(t) = settings.op_timeout.filter(|t| !t.get().is_zero()) {
        svc.op_timeout = t;
    }
    svc.read_policy = match settings.read_policy {
        None | Some(ReadPolicy::Master) => proxy::ReadPolicy::Master,
        Some(ReadPolicy::PreferMaster) => proxy::ReadPolicy::PreferMaster,
        Some(ReadPolicy::Replica) => proxy::ReadPolicy::Replica,
        Some(ReadPolicy::PreferReplica) => proxy::ReadPolicy::PreferReplica,
        Some(ReadPolicy::Any) => proxy::ReadPolicy::Any,
    };
    svc.enable_hashtagging = settings.enable_hashtagging;
    svc.client_auth = client_auth;
    svc.routes = routes;
    svc.faults = faults;
}
