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
            let Some(port) =
                slice.ports.iter().flatten().find(|p| p.name.as_deref().unwrap_or("") == want).and_then(|p| p.port)
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
            ips.into_iter()
                .filter(|ip| ip.parse::<IpAddr>().is_ok())
                .map(|ip| join_host_port(ip, rp.port.port))
                .collect()
        };
        for a in candidates {
            if a.parse::<std::net::SocketAddr>().is_ok() && used_addresses.insert(a.clone()) {
                addresses.push(a);
            }
        }
        let mut svc = proxy::Service::new(rp.host.clone(), endpoints.into_iter().collect());
        svc.addresses = addresses;
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
                    Outcome::rejected("HostNotFound", host_not_found(&spec.host, ns, domain, &ports))
                } else if let Some(winner) = destined.get(&spec.host) {
                    Outcome::rejected(
                        "Conflicted",
                        format!(
                            "{} already configures host {}; the older resource wins",
                            group_label(winner),
                            spec.host
                        ),
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
                        problems.push(host_not_found(host, ns, domain, &ports));
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
                        apply_redis_service(
                            spec,
                            rp,
                            &ports,
                            &mut services,
                            &mut placeholders,
                            &mut resolver,
                            &mut out,
                            domain,
                        );
                    }
                }
                if applied.is_empty() {
                    let reason = if problems.iter().any(|p| p.contains("older resource wins")) {
                        "Conflicted"
                    } else {
                        "HostNotFound"
                    };
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
        services.entry(host.clone()).or_insert_with(|| proxy::Service::new(host, Vec::new()));
    }

    let config = ProxyConfig { services: services.into_values().collect(), ..ProxyConfig::empty() };
    debug_assert!(config.validate().is_ok(), "{:?}", config.validate());
    Translation { config, credentials: resolver.credentials, conditions }
}

fn host_not_found(host: &str, ns: &str, domain: &str, ports: &[RedisPort]) -> String {
    let first = host.split('.').next().unwrap_or(host);
    if let Some(p) = ports.iter().find(|p| p.namespace == ns && p.name == first && p.fqdn != host) {
        return format!("no Service in namespace {ns} has host {host:?}; did you mean {}?", p.fqdn);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ns: &str, name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})).unwrap()
    }

    fn slice(ns: &str, svc: &str, port_name: &str, port: i32, eps: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-x"), "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": port}],
            "endpoints": eps,
        }))
        .unwrap()
    }

    fn secret(ns: &str, name: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            data: Some(
                data.iter().map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.as_bytes().to_vec()))).collect(),
            ),
            ..Default::default()
        }
    }

    fn cr<S: serde::de::DeserializeOwned>(
        kind: Kind,
        ns: &str,
        name: &str,
        created: &str,
        spec: serde_json::Value,
    ) -> Cr<S> {
        Cr {
            key: CrKey { group: "redis.respmesh.io".into(), kind, namespace: ns.into(), name: name.into() },
            created: created.into(),
            spec: serde_json::from_value(spec).map_err(|e| e.to_string()),
        }
    }

    fn rd(ns: &str, name: &str, created: &str, spec: serde_json::Value) -> Cr<RedisDestinationSpec> {
        cr(Kind::RedisDestination, ns, name, created, spec)
    }

    fn rs(ns: &str, name: &str, created: &str, spec: serde_json::Value) -> Cr<RedisServiceSpec> {
        cr(Kind::RedisService, ns, name, created, spec)
    }

    /// The demo: redis-single and redis-cluster in namespace `redis`, one ready endpoint each.
    fn demo() -> Inputs {
        Inputs {
            services: vec![
                service(
                    "redis",
                    "redis-single",
                    json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [{"name": "tcp-redis", "port": 6379}]}),
                ),
                service(
                    "redis",
                    "redis-cluster",
                    json!({"clusterIP": "10.96.0.20", "ports": [{"name": "tcp-redis", "port": 6379}, {"name": "tcp-gossip", "port": 16379}]}),
                ),
                service("redis", "web", json!({"clusterIP": "10.96.0.30", "ports": [{"name": "http", "port": 80}]})),
            ],
            slices: vec![
                slice("redis", "redis-single", "tcp-redis", 6379, json!([{"addresses": ["10.244.0.5"]}])),
                slice(
                    "redis",
                    "redis-cluster",
                    "tcp-redis",
                    6379,
                    json!([{"addresses": ["10.244.0.6"], "conditions": {"ready": true}}, {"addresses": ["10.244.0.7"], "conditions": {"ready": false}}]),
                ),
            ],
            domain: "cluster.local".into(),
            ..Default::default()
        }
    }

    const SINGLE: &str = "redis-single.redis.svc.cluster.local";
    const CLUSTER: &str = "redis-cluster.redis.svc.cluster.local";

    fn cond<'a>(t: &'a Translation, kind: Kind, name: &str, which: &str) -> &'a Cond {
        let key = t.conditions.keys().find(|k| k.kind == kind && k.name == name).expect("resource has conditions");
        t.conditions[key].iter().find(|c| c.kind == which).unwrap()
    }

    #[test]
    fn redis_services_come_from_ports_named_or_marked_redis() {
        let cases = [
            (json!({"name": "tcp-redis", "port": 1}), true),
            (json!({"name": "tcp-redis-main", "port": 1}), true),
            (json!({"name": "redis", "port": 1}), true),
            (json!({"name": "db", "port": 1, "appProtocol": "redis"}), true),
            (json!({"name": "http", "port": 1}), false),
            (json!({"name": "tcp-gossip", "port": 1}), false),
            (json!({"port": 1}), false),
        ];
        for (port, want) in cases {
            let p: ServicePort = serde_json::from_value(port.clone()).unwrap();
            assert_eq!(is_redis_port(&p), want, "{port}");
        }
    }

    #[test]
    fn services_without_resources_proxy_to_their_ready_endpoints() {
        let t = translate(&demo());
        assert_eq!(t.config.services.iter().map(|s| s.host.as_str()).collect::<Vec<_>>(), vec![CLUSTER, SINGLE]);
        let single = t.config.service(SINGLE).unwrap();
        assert_eq!(single.addresses, vec!["10.96.0.10:6379"]);
        assert_eq!(single.endpoints, vec!["10.244.0.5:6379"]);
        assert_eq!(single.mode, proxy::Mode::Proxy);
        let cluster = t.config.service(CLUSTER).unwrap();
        assert_eq!(cluster.endpoints, vec!["10.244.0.6:6379"], "not-ready endpoints are left out");
        assert!(t.credentials.is_empty() && t.conditions.is_empty());
        assert!(t.config.validate().is_ok());
    }

    #[test]
    fn several_redis_ports_dual_stack_and_headless_services() {
        let mut i = demo();
        i.services.push(service("redis", "multi", json!({"clusterIPs": ["10.96.0.40", "fd00::40"], "ports": [{"name": "redis-a", "port": 7000}, {"name": "redis-b", "port": 7001}]})));
        i.services.push(service(
            "redis",
            "hl",
            json!({"clusterIP": "None", "ports": [{"name": "redis", "port": 6379}]}),
        ));
        i.slices.push(slice(
            "redis",
            "hl",
            "redis",
            6380,
            json!([{"addresses": ["10.244.0.8"]}, {"addresses": ["fd00::8"]}]),
        ));
        let t = translate(&i);
        let a = t.config.service("multi.redis.svc.cluster.local:7000").unwrap();
        assert_eq!(a.addresses, vec!["10.96.0.40:7000", "[fd00::40]:7000"]);
        assert!(t.config.service("multi.redis.svc.cluster.local:7001").is_some());
        let hl = t.config.service("hl.redis.svc.cluster.local").unwrap();
        assert_eq!(hl.endpoints, vec!["10.244.0.8:6380", "[fd00::8]:6380"]);
        assert_eq!(hl.addresses, hl.endpoints, "headless services are recognised by endpoint address");
    }

    #[test]
    fn credentials_resolve_from_secrets_and_inline_values() {
        // (auth, secret data, expected password, expected username, expected ResolvedRefs reason)
        type Case<'a> = (serde_json::Value, Vec<(&'a str, &'a str)>, Option<&'a str>, Option<&'a str>, &'a str);
        let cases: Vec<Case> = vec![
            (json!({"plain": {"password": "pw"}}), vec![], Some("pw"), None, "ResolvedRefs"),
            (json!({"plain": {"password": "pw", "username": "u"}}), vec![], Some("pw"), Some("u"), "ResolvedRefs"),
            (
                json!({"secret": {"name": "s"}}),
                vec![("password", "testredis\n")],
                Some("testredis"),
                None,
                "ResolvedRefs",
            ),
            (json!({"secret": {"name": "s"}}), vec![("token", "tok")], Some("tok"), None, "ResolvedRefs"),
            (
                json!({"secret": {"name": "s"}}),
                vec![("password", "p"), ("username", " admin ")],
                Some("p"),
                Some("admin"),
                "ResolvedRefs",
            ),
            (
                json!({"secret": {"name": "s", "passwordField": "pw", "usernameField": "user"}}),
                vec![("pw", "x"), ("user", "y")],
                Some("x"),
                Some("y"),
                "ResolvedRefs",
            ),
            (
                json!({"secret": {"name": "s", "passwordField": "pw"}}),
                vec![("password", "x")],
                None,
                None,
                "SecretKeyNotFound",
            ),
            (json!({"secret": {"name": "s"}}), vec![("other", "x")], None, None, "SecretKeyNotFound"),
            (json!({"secret": {"name": "missing"}}), vec![], None, None, "SecretNotFound"),
        ];
        for (auth, data, password, username, reason) in cases {
            let mut i = demo();
            i.secrets.push(secret("redis", "s", &data));
            i.redis_destinations.push(rd(
                "redis",
                "d",
                "t1",
                json!({"host": SINGLE, "trafficPolicy": {"connectionPool": {"redis": {"auth": auth}}}}),
            ));
            let t = translate(&i);
            let creds = t.config.service(SINGLE).unwrap().auth.clone().unwrap();
            let key = creds.password_key.clone().unwrap();
            assert_eq!(key, "redis-single.redis.6379.upstream-password");
            assert_eq!(t.credentials.get(&key).map(String::as_str), password, "{auth}");
            let user = creds.username_key.as_ref().and_then(|k| t.credentials.get(k)).map(String::as_str);
            assert_eq!(user, username, "{auth}");
            assert_eq!(cond(&t, Kind::RedisDestination, "d", "ResolvedRefs").reason, reason, "{auth}");
            assert!(creds.password.is_none(), "credentials never inline in the configuration");
        }
    }

    #[test]
    fn resources_apply_to_hosts_of_their_own_namespace_and_the_oldest_wins() {
        let mut i = demo();
        i.redis_destinations.push(rd(
            "other",
            "foreign",
            "t0",
            json!({"host": SINGLE, "trafficPolicy": {"connectionPool": {"redis": {"mode": "CLUSTER"}}}}),
        ));
        i.redis_destinations.push(rd(
            "redis",
            "new",
            "t2",
            json!({"host": SINGLE, "trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "3s"}}}}),
        ));
        i.redis_destinations.push(rd(
            "redis",
            "old",
            "t1",
            json!({"host": SINGLE, "trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "2s"}}}}),
        ));
        i.redis_services.push(rs("redis", "typo", "t1", json!({"host": ["redis-single.redis"]})));
        let t = translate(&i);
        let single = t.config.service(SINGLE).unwrap();
        assert_eq!(single.mode, proxy::Mode::Proxy, "a resource in another namespace changes nothing");
        assert_eq!(single.connect_timeout, respmesh_api::Duration::from_secs(2));
        assert_eq!(cond(&t, Kind::RedisDestination, "foreign", "Accepted").reason, "HostNotFound");
        assert_eq!(cond(&t, Kind::RedisDestination, "old", "Accepted").reason, "Accepted");
        let c = cond(&t, Kind::RedisDestination, "new", "Accepted");
        assert_eq!((c.ok, c.reason), (false, "Conflicted"));
        assert!(c.message.contains("RedisDestination redis/old"), "{}", c.message);
        let c = cond(&t, Kind::RedisService, "typo", "Accepted");
        assert_eq!(c.reason, "HostNotFound");
        assert!(
            c.message.contains("redis-single.redis.svc.cluster.local"),
            "the message shows the right form: {}",
            c.message
        );
    }

    #[test]
    fn redis_service_settings_routes_mirrors_and_faults() {
        let mut i = demo();
        i.redis_services.push(rs("redis", "r", "t1", json!({
            "host": [CLUSTER],
            "settings": {"opTimeout": "250ms", "readPolicy": "PREFER_REPLICA", "caseInsensitive": true, "enableHashtagging": true},
            "redis": [
                {"match": {"key": {"prefix": "cluster", "removePrefix": true}}, "route": {"host": CLUSTER}},
                {"match": {"key": {"prefix": "cluster"}}, "route": {"host": SINGLE}},
                {"route": {"host": SINGLE, "port": 6379}, "mirror": [{"route": {"host": CLUSTER}, "percentage": {"value": 0.1}, "excludeReadCommands": true}, {"route": {"host": SINGLE}}]},
            ],
            "faults": [{"type": "DELAY", "delay": "2s", "percentage": {"value": 10}}, {"type": "ERROR", "percentage": {"value": 50}, "commands": ["get", " "]}],
        })));
        let t = translate(&i);
        let s = t.config.service(CLUSTER).unwrap();
        assert_eq!(s.op_timeout, respmesh_api::Duration::from_millis(250));
        assert_eq!(s.read_policy, proxy::ReadPolicy::PreferReplica, "not mapped to PREFER_MASTER");
        assert!(s.enable_hashtagging);
        assert_eq!(s.routes.len(), 2, "a repeated prefix keeps the first");
        let k = &s.routes[0].matches.as_ref().unwrap().key;
        assert!(k.remove_prefix && k.case_insensitive);
        assert_eq!(s.routes[1].route.host, SINGLE);
        assert_eq!(s.routes[1].mirror[0].percentage.value, 0.1);
        assert!(s.routes[1].mirror[0].exclude_read_commands);
        assert_eq!(s.routes[1].mirror[1].percentage.value, 100.0, "a mirror without percentage mirrors all");
        assert_eq!(s.faults[0].delay, Some(respmesh_api::Duration::from_secs(2)));
        assert_eq!(s.faults[1].commands, vec!["get"]);
        assert!(cond(&t, Kind::RedisService, "r", "ResolvedRefs").ok);
        assert!(t.config.validate().is_ok(), "{:?}", t.config.validate());
    }

    #[test]
    fn a_route_to_an_unknown_host_refuses_instead_of_falling_through() {
        let mut i = demo();
        i.redis_services.push(rs("redis", "r", "t1", json!({
            "host": [CLUSTER],
            "redis": [{"match": {"key": {"prefix": "a:"}}, "route": {"host": "gone.redis.svc.cluster.local"}}, {"route": {"host": CLUSTER}}],
        })));
        let t = translate(&i);
        let placeholder = t.config.service("gone.redis.svc.cluster.local").unwrap();
        assert!(placeholder.endpoints.is_empty() && placeholder.addresses.is_empty());
        assert_eq!(cond(&t, Kind::RedisService, "r", "ResolvedRefs").reason, "RouteHostNotFound");
        assert!(t.config.validate().is_ok());
    }

    #[test]
    fn cluster_discovery_endpoints_take_the_service_port_when_bare() {
        let mut i = demo();
        i.redis_destinations.push(rd("redis", "c", "t1", json!({"host": CLUSTER, "trafficPolicy": {"connectionPool": {"redis": {"mode": "CLUSTER", "discoveryEndpoints": ["10.244.0.6", "node-1:7000", "fd00::6"]}}}})));
        let t = translate(&i);
        let s = t.config.service(CLUSTER).unwrap();
        assert_eq!(s.mode, proxy::Mode::Cluster);
        assert_eq!(s.cluster.discovery_endpoints, vec!["10.244.0.6:6379", "node-1:7000", "[fd00::6]:6379"]);

        let mut i = demo();
        i.redis_destinations.push(rd("redis", "c", "t1", json!({"host": CLUSTER, "trafficPolicy": {"connectionPool": {"redis": {"mode": "CLUSTER", "discoveryEndpoints": ["node:0"]}}}})));
        let t = translate(&i);
        assert!(t.config.service(CLUSTER).unwrap().cluster.discovery_endpoints.is_empty());
        let c = cond(&t, Kind::RedisDestination, "c", "Accepted");
        assert_eq!((c.ok, c.reason), (true, "InvalidDiscoveryEndpoint"));
    }

    #[test]
    fn the_output_does_not_depend_on_input_order() {
        let mut i = demo();
        i.redis_services.push(rs(
            "redis",
            "a",
            "t1",
            json!({"host": [SINGLE], "settings": {"auth": {"plain": {"password": "x"}}}}),
        ));
        i.redis_services.push(rs(
            "redis",
            "b",
            "t2",
            json!({"host": [CLUSTER], "redis": [{"route": {"host": SINGLE}}]}),
        ));
        let first = translate(&i);
        i.services.reverse();
        i.slices.reverse();
        i.redis_services.reverse();
        let second = translate(&i);
        assert_eq!(serde_yaml_ng::to_string(&first.config).unwrap(), serde_yaml_ng::to_string(&second.config).unwrap());
        assert_eq!(first.credentials, second.credentials);
        assert_eq!(first.conditions, second.conditions);
    }

    #[test]
    fn an_undecodable_resource_gets_a_condition_and_changes_nothing() {
        let mut i = demo();
        i.redis_services.push(rs("redis", "bad", "t1", json!({"host": "not-a-list"})));
        let t = translate(&i);
        let c = cond(&t, Kind::RedisService, "bad", "Accepted");
        assert_eq!((c.ok, c.reason), (false, "Invalid"));
        assert!(t.config.service(SINGLE).unwrap().client_auth.is_none());
    }
}
