//! The proxy configuration schema, `apiVersion: proxy.respmesh.io/v1alpha1`, `kind: ProxyConfig`.
//!
//! Every field is documented in `docs/config.md`. Parsing is strict: an unknown field, a wrong
//! type or a bad duration is an error naming the place. [`ProxyConfig::validate`] then checks
//! the configuration as a whole and reports every problem it finds, not just the first.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::Duration;

pub const API_VERSION: &str = "proxy.respmesh.io/v1alpha1";
pub const KIND: &str = "ProxyConfig";
/// The longest `--busy-poll` window the proxy accepts (the webhook checks annotations against
/// it too): beyond it a worker would stay busy through pauses that are no longer short.
pub const MAX_BUSY_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// The whole configuration of one proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyConfig {
    pub api_version: String,
    pub kind: String,
    /// Addresses the proxy listens on, each bound to one service.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// The Redis services this proxy knows.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Bounds on what clients may send.
    #[serde(default)]
    pub limits: Limits,
}

/// A listening address whose connections all go to one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Listener {
    /// `IP:port` to listen on, e.g. `127.0.0.1:6380` or `[::1]:6380`.
    pub address: String,
    /// The `host` of the service that serves this listener's clients.
    pub service: String,
}

/// How the proxy talks to a service's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    /// One Redis (or several, sharded by key): plain commands, no cluster protocol.
    #[default]
    Proxy,
    /// A Redis Cluster: the proxy speaks the cluster protocol so that clients need not.
    Cluster,
}

/// One Redis service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    /// The service's name, e.g. `redis-single.redis.svc.cluster.local`. Unique.
    pub host: String,
    /// `IP:port` pairs (a Service's cluster IPs and ports) by which redirected connections are
    /// recognised as belonging to this service.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// `host:port` of the Redis servers behind the service. With none (and no discovery
    /// endpoints), clients of the service get an error saying so.
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
    /// Credentials the proxy presents to Redis on every upstream connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Credentials>,
    /// Credentials clients must present to the proxy. Without it, clients need no AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<Credentials>,
    /// How long a request may wait for its reply before the client gets an error.
    #[serde(default = "default_op_timeout")]
    pub op_timeout: Duration,
    /// How long connecting (and logging in) to an endpoint may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// CLUSTER mode settings.
    #[serde(default)]
    pub cluster: ClusterSettings,
    /// Where read-only commands go in CLUSTER mode. Writes always go to primaries.
    #[serde(default)]
    pub read_policy: ReadPolicy,
    /// PROXY mode with several endpoints (keys sharded by consistent hashing): hash only the
    /// part of a key between `{` and `}`, so that keys sharing a tag share an endpoint.
    #[serde(default)]
    pub enable_hashtagging: bool,
    /// Faults injected into this service's traffic (Aeraki's `faults`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
    /// Key-prefix routes (Aeraki's `redis` routes): each command goes to the service of the
    /// route whose prefix matches its keys (the longest wins; a route without `match` is the
    /// default). Without routes, the service's own endpoints serve every command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

impl Service {
    /// A PROXY-mode service with every setting at its default.
    pub fn new(host: impl Into<String>, endpoints: Vec<String>) -> Service {
        Service {
            host: host.into(),
            addresses: Vec::new(),
            endpoints,
            mode: Mode::Proxy,
            auth: None,
            client_auth: None,
            op_timeout: default_op_timeout(),
            connect_timeout: default_connect_timeout(),
            cluster: ClusterSettings::default(),
            read_policy: ReadPolicy::default(),
            enable_hashtagging: false,
            faults: Vec::new(),
            routes: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<RouteMatch>,
    pub route: RouteTarget,
    /// Copies of the route's commands sent to other services; their replies are dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirror: Vec<Mirror>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    pub key: KeyMatch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyMatch {
    pub prefix: String,
    /// Strip the prefix from keys before sending them on.
    #[serde(default)]
    pub remove_prefix: bool,
    #[serde(default)]
    pub case_insensitive: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteTarget {
    /// The `host` of the service that serves the route (it may be this service itself).
    pub host: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mirror {
    pub route: RouteTarget,
    #[serde(default = "full")]
    pub percentage: Percent,
    /// Mirror writes only.
    #[serde(default)]
    pub exclude_read_commands: bool,
}

fn full() -> Percent {
    Percent { value: 100.0 }
}

/// A fault: an error instead of the reply, or a reply held back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fault {
    #[serde(rename = "type")]
    pub kind: FaultType,
    /// Share of the matching commands affected.
    pub percentage: Percent,
    /// DELAY: how long the reply is held back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// Command names (any case) the fault applies to; every command but AUTH and PING if empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FaultType {
    /// The client gets `-Fault Injected: Error`; Redis is not asked.
    Error,
    /// The reply is held back for `delay`; other clients are not delayed.
    Delay,
}

/// A percentage, 0 to 100, fractions allowed (`0.1` is one in a thousand).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

/// Which nodes serve read-only commands (Aeraki's `readPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReadPolicy {
    /// Only primaries.
    #[default]
    Master,
    /// The primary; its replicas when the primary is unavailable.
    PreferMaster,
    /// Only replicas (reads may be stale).
    Replica,
    /// Replicas; the primary when no replica is available.
    PreferReplica,
    /// Any node of the shard.
    Any,
}

/// How the proxy follows a Redis Cluster's topology.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSettings {
    /// Nodes asked for the topology at first (`host:port`); the service's endpoints if empty.
    #[serde(default)]
    pub discovery_endpoints: Vec<String>,
    /// How often the topology is refreshed (it is also refreshed at once after a MOVED).
    #[serde(default = "default_refresh_interval")]
    pub refresh_interval: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings { discovery_endpoints: Vec::new(), refresh_interval: default_refresh_interval() }
    }
}

fn default_refresh_interval() -> Duration {
    Duration::from_secs(5)
}

/// A username (optional) and a password, each given inline or read from a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Credentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// A key of the credentials Secret (`--credentials-dir`, or the Secret watched with
    /// `--configmap`) holding the username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_key: Option<String>,
    /// A key of the credentials Secret holding the password. When the key is missing the
    /// service refuses its clients (fail closed) instead of running without the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_key: Option<String>,
}

impl Credentials {
    /// A copy fit to show (`/config`, logs): inline secrets replaced by `<redacted>`.
    pub fn redacted(&self) -> Credentials {
        Credentials {
            username: self.username.clone(),
            username_file: self.username_file.clone(),
            password: self.password.as_ref().map(|_| "<redacted>".to_owned()),
            password_file: self.password_file.clone(),
            username_key: self.username_key.clone(),
            password_key: self.password_key.clone(),
        }
    }
}

/// Bounds on client input. A frame over a bound gets `-ERR Protocol error: ...` and the client's
/// connection is closed; other clients are unaffected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Largest bulk string (a key or a value), in bytes.
    #[serde(default = "default_max_bulk_length")]
    pub max_bulk_length: u64,
    /// Most elements in one command (the command name and its arguments).
    #[serde(default = "default_max_array_length")]
    pub max_array_length: u64,
    /// Longest inline command (telnet style), in bytes.
    #[serde(default = "default_max_inline_length")]
    pub max_inline_length: u64,
    /// Deepest nesting of aggregate types accepted from upstream replies.
    #[serde(default = "default_max_nesting_depth")]
    pub max_nesting_depth: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_length: default_max_bulk_length(),
            max_array_length: default_max_array_length(),
            max_inline_length: default_max_inline_length(),
            max_nesting_depth: default_max_nesting_depth(),
        }
    }
}

fn default_op_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_max_bulk_length() -> u64 {
    512 * 1024 * 1024
}
fn default_max_array_length() -> u64 {
    4 * 1024 * 1024
}
fn default_max_inline_length() -> u64 {
    64 * 1024
}
fn default_max_nesting_depth() -> u32 {
    128
}

/// What is wrong with a configuration: every problem found, each naming its place.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot parse the configuration: {0}")]
    Parse(String),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl ProxyConfig {
    /// An empty configuration of the current version.
    pub fn empty() -> Self {
        ProxyConfig {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            listeners: Vec::new(),
            services: Vec::new(),
            limits: Limits::default(),
        }
    }

    /// Parses YAML (JSON is YAML too) and validates the result.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: ProxyConfig = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn service(&self, host: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.host == host)
    }

    /// Checks the configuration as a whole, collecting every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.api_version != API_VERSION {
            problems
                .push(format!("apiVersion: {:?} is not supported; this proxy reads {API_VERSION:?}", self.api_version));
        }
        if self.kind != KIND {
            problems.push(format!("kind: {:?} must be {KIND:?}", self.kind));
        }
        let mut hosts = HashSet::new();
        let mut addresses = HashSet::new();
        for (i, svc) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if svc.host.trim().is_empty() {
                problems.push(format!("{at}.host: must not be empty"));
            } else if !hosts.insert(svc.host.as_str()) {
                problems.push(format!("{at}.host: {:?} is listed twice", svc.host));
            }
            for (j, ep) in svc.cluster.discovery_endpoints.iter().enumerate() {
                if let Err(why) = check_host_port(ep) {
                    problems.push(format!("{at}.cluster.discoveryEndpoints[{j}]: {ep:?} {why}"));
                }
            }
            if svc.cluster.refresh_interval.get() < std::time::Duration::from_millis(100) {
                problems.push(format!("{at}.cluster.refreshInterval: must be at least 100ms"));
            }
            for (j, ep) in svc.endpoints.iter().enumerate() {
                if let Err(why) = check_host_port(ep) {
                    problems.push(format!("{at}.endpoints[{j}]: {ep:?} {why}"));
                }
            }
            for (j, addr) in svc.addresses.iter().enumerate() {
                match addr.parse::<SocketAddr>() {
                    Ok(a) => {
                        if !addresses.insert(a) {
                            problems.push(format!("{at}.addresses[{j}]: {addr} belongs to another service too"));
                        }
                    }
                    Err(_) => problems.push(format!("{at}.addresses[{j}]: {addr:?} is not an IP:port address")),
                }
            }
            for (field, creds) in [("auth", &svc.auth), ("clientAuth", &svc.client_auth)] {
                if let Some(c) = creds {
                    check_credentials(&format!("{at}.{field}"), c, &mut problems);
                }
            }
            for (j, f) in svc.faults.iter().enumerate() {
                let at = format!("{at}.faults[{j}]");
                if !(0.0..=100.0).contains(&f.percentage.value) {
                    problems.push(format!("{at}.percentage.value: {} is not between 0 and 100", f.percentage.value));
                }
                match (f.kind, f.delay) {
                    (FaultType::Delay, None) => problems.push(format!("{at}.delay: a DELAY fault needs a delay")),
                    (FaultType::Error, Some(_)) => {
                        problems.push(format!("{at}.delay: an ERROR fault takes no delay (add a DELAY fault)"))
                    }
                    _ => {}
                }
                for (k, c) in f.commands.iter().enumerate() {
                    if c.trim().is_empty() || c.contains(char::is_whitespace) {
                        problems.push(format!("{at}.commands[{k}]: {c:?} is not a command name"));
                    }
                }
            }
            if svc.op_timeout.get().is_zero() {
                problems.push(format!("{at}.opTimeout: must be more than zero"));
            }
            if svc.connect_timeout.get().is_zero() {
                problems.push(format!("{at}.connectTimeout: must be more than zero"));
            }
        }
        for (i, svc) in self.services.iter().enumerate() {
            let mut prefixes = HashSet::new();
            let mut defaults = 0;
            for (j, r) in svc.routes.iter().enumerate() {
                let at = format!("services[{i}].routes[{j}]");
                if !hosts.contains(r.route.host.as_str()) {
                    problems.push(format!("{at}.route.host: no service has host {:?}", r.route.host));
                }
                match &r.matches {
                    None => defaults += 1,
                    Some(m) if !prefixes.insert(m.key.prefix.clone()) => {
                        problems.push(format!("{at}.match.key.prefix: {:?} is listed twice", m.key.prefix))
                    }
                    Some(_) => {}
                }
                for (k, m) in r.mirror.iter().enumerate() {
                    if !hosts.contains(m.route.host.as_str()) {
                        problems.push(format!("{at}.mirror[{k}].route.host: no service has host {:?}", m.route.host));
                    }
                    if !(0.0..=100.0).contains(&m.percentage.value) {
                        problems.push(format!(
                            "{at}.mirror[{k}].percentage.value: {} is not between 0 and 100",
                            m.percentage.value
                        ));
                    }
                }
            }
            if defaults > 1 {
                problems.push(format!("services[{i}].routes: more than one route without match (default)"));
            }
        }
        let mut listen = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            match l.address.parse::<SocketAddr>() {
                Ok(a) => {
                    if !listen.insert(a) {
                        problems.push(format!("{at}.address: {a} is listed twice"));
                    }
                }
                Err(_) => problems.push(format!("{at}.address: {:?} is not an IP:port address", l.address)),
            }
            if !hosts.contains(l.service.as_str()) {
                problems.push(format!("{at}.service: no service has host {:?}", l.service));
            }
        }
        let lim = &self.limits;
        if lim.max_bulk_length == 0 || lim.max_bulk_length > i64::MAX as u64 {
            problems.push("limits.maxBulkLength: must be between 1 and 2^63-1".to_owned());
        }
        if lim.max_array_length == 0 || lim.max_array_length > i32::MAX as u64 {
            problems.push("limits.maxArrayLength: must be between 1 and 2^31-1".to_owned());
        }
        if lim.max_inline_length < 16 {
            problems.push("limits.maxInlineLength: must be at least 16".to_owned());
        }
        if lim.max_nesting_depth == 0 {
            problems.push("limits.maxNestingDepth: must be at least 1".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// A copy fit to show: inline credentials replaced by `<redacted>`.
    pub fn redacted(&self) -> ProxyConfig {
        let mut copy = self.clone();
        for svc in &mut copy.services {
            svc.auth = svc.auth.as_ref().map(Credentials::redacted);
            svc.client_auth = svc.client_auth.as_ref().map(Credentials::redacted);
        }
        copy
    }
}

/// Checks a `host:port` (or `[v6]:port`) endpoint; the error says what is wrong.
pub fn check_host_port(s: &str) -> Result<(), &'static str> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = s.rsplit_once(':').ok_or("is not host:port")?;
    if host.is_empty() || host.contains(':') && !host.starts_with('[') {
        return Err("is not host:port (write IPv6 addresses as [addr]:port)");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("has no valid port (1-65535)"),
    }
}

fn check_credentials(at: &str, c: &Credentials, problems: &mut Vec<String>) {
    let passwords = [c.password.is_some(), c.password_file.is_some(), c.password_key.is_some()];
    match passwords.iter().filter(|x| **x).count() {
        0 => problems.push(format!("{at}: one of password, passwordFile or passwordKey is needed")),
        1 => {}
        _ => problems.push(format!("{at}: give only one of password, passwordFile and passwordKey")),
    }
    if c.password.as_ref().is_some_and(|p| p.is_empty()) {
        problems.push(format!("{at}.password: is empty"));
    }
    let usernames = [c.username.is_some(), c.username_file.is_some(), c.username_key.is_some()];
    if usernames.iter().filter(|x| **x).count() > 1 {
        problems.push(format!("{at}: give at most one of username, usernameFile and usernameKey"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: proxy.respmesh.io/v1alpha1
kind: ProxyConfig
listeners:
  - {address: "127.0.0.1:6380", service: redis-single}
services:
  - host: redis-single
    addresses: ["10.96.0.10:6379"]
    endpoints: ["127.0.0.1:6379"]
    auth: {password: testredis}
    clientAuth: {password: "testredis123!"}
    opTimeout: 2s
"#;

    #[test]
    fn a_complete_config_parses_with_defaults_filled_in() {
        let c = ProxyConfig::from_yaml(GOOD).unwrap();
        let svc = c.service("redis-single").unwrap();
        assert_eq!(svc.mode, Mode::Proxy);
        assert_eq!(svc.op_timeout, Duration::from_secs(2));
        assert_eq!(svc.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn unknown_fields_are_errors_that_name_the_field() {
        let text = GOOD.replace("opTimeout: 2s", "opTimeout: 2s\n    opTimout: 3s");
        let err = ProxyConfig::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `opTimout`"), "{err}");
    }

    #[test]
    fn bad_durations_are_errors() {
        let text = GOOD.replace("opTimeout: 2s", "opTimeout: 2 seconds");
        let err = ProxyConfig::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("invalid duration"), "{err}");
    }

    #[test]
    fn validation_reports_every_problem_at_once() {
        let text = r#"
apiVersion: proxy.respmesh.io/v9
kind: ProxyConfig
listeners: [{address: "nowhere", service: missing}]
services:
  - {host: a, endpoints: [], clientAuth: {usernameKey: u}}
  - {host: a, endpoints: ["localhost"], auth: {password: x, passwordFile: /p}}
"#;
        let Err(ConfigError::Invalid(problems)) = ProxyConfig::from_yaml(text) else {
            panic!("expected validation problems");
        };
        let all = problems.join("\n");
        for want in [
            "apiVersion",
            "services[0].clientAuth: one of password, passwordFile or passwordKey is needed",
            "services[1].host: \"a\" is listed twice",
            "services[1].endpoints[0]: \"localhost\" is not host:port",
            "services[1].auth: give only one of password, passwordFile and passwordKey",
            "listeners[0].address",
            "listeners[0].service: no service has host \"missing\"",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert_eq!(problems.len(), 7, "{all}");
    }

    #[test]
    fn redaction_hides_inline_passwords_only() {
        let c = ProxyConfig::from_yaml(GOOD).unwrap().redacted();
        let text = serde_json::to_string(&c).unwrap();
        assert!(!text.contains("testredis"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn host_port_forms() {
        for ok in ["127.0.0.1:6379", "[::1]:6379", "redis.ns.svc:6379"] {
            assert!(check_host_port(ok).is_ok(), "{ok}");
        }
        for bad in ["localhost", "::1:6379", "host:0", "host:99999", ":6379"] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
    }
}
