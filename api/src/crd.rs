//! The custom resources users apply: `RedisService` and `RedisDestination`, group
//! `redis.respmesh.io`, version `v1alpha1`.
//!
//! Field names, enums and defaults are Aeraki Mesh's (`redis.aeraki.io/v1alpha1`), so its YAML
//! applies with only `apiVersion` changed. Unlike Aeraki, the schema enforces what Aeraki only
//! documents: required fields, percentages within 0..100, durations that parse, and auth as
//! exactly one of `secret` or `plain`. The CRD YAML in `manifests/crds/` is generated from these
//! types (`cargo run -p respmesh-api --bin crdgen`); a test fails when it is stale.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// The API group of the custom resources.
pub const GROUP: &str = "redis.respmesh.io";
/// The group Aeraki Mesh uses; `manifests/compat/` serves the same resources under it.
pub const COMPAT_GROUP: &str = "redis.aeraki.io";
pub const VERSION: &str = "v1alpha1";

/// Policies for clients of one or more Redis services: client auth, key-prefix routes,
/// mirroring, fault injection, read policy.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "redis.respmesh.io",
    version = "v1alpha1",
    kind = "RedisService",
    namespaced,
    status = "RedisStatus",
    shortname = "rsvc",
    category = "respmesh",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.host"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"ResolvedRefs","type":"string","jsonPath":".status.conditions[?(@.type==\"ResolvedRefs\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "Policies for the clients of Redis services: client auth, key-prefix routes, mirroring, faults."
)]
#[serde(rename_all = "camelCase")]
pub struct RedisServiceSpec {
    /// Hosts whose clients get these policies: Services' full names,
    /// `<service>.<namespace>.svc.cluster.local`, in this resource's namespace.
    #[schemars(length(min = 1))]
    pub host: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Settings>,
    /// Key-prefix routes; the longest matching prefix wins, a route without `match` is the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis: Vec<Route>,
    /// Faults injected into the traffic; see docs/config.md for how several combine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// Match key prefixes without regard to ASCII case.
    #[serde(default)]
    pub case_insensitive: bool,
    /// How long a request may wait for its reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_timeout: Option<Duration>,
    /// Accepted for compatibility; the proxy always keeps per-command statistics.
    #[serde(default)]
    pub enable_command_stats: bool,
    /// Accepted for compatibility; the proxy writes each batch of requests at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_buffer_size_before_flush: Option<u32>,
    /// Accepted for compatibility; see `maxBufferSizeBeforeFlush`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_flush_timeout: Option<Duration>,
    /// Accepted for compatibility; connections to cluster nodes are bounded per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_upstream_unknown_connections: Option<u32>,
    /// Shard by the `{tag}` part of keys when a service has several standalone endpoints.
    #[serde(default)]
    pub enable_hashtagging: bool,
    /// Accepted for compatibility; in CLUSTER mode MOVED and ASK are always followed.
    #[serde(default)]
    pub enable_redirection: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_policy: Option<ReadPolicy>,
    /// The password (and ACL user) clients must give with AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
}

/// Where read-only commands go in CLUSTER mode; writes always go to primaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReadPolicy {
    Master,
    PreferMaster,
    Replica,
    PreferReplica,
    Any,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Which keys take this route; absent: the default route.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<RouteMatch>,
    pub route: Destination,
    /// Copies of this route's commands sent elsewhere; their replies are dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirror: Vec<Mirror>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    pub key: KeyMatch,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyMatch {
    /// The beginning of the keys this route takes.
    #[schemars(length(min = 1))]
    pub prefix: String,
    /// Strip the prefix from keys before sending them on.
    #[serde(default)]
    pub remove_prefix: bool,
}

/// A Redis service by host, and optionally the port when the Service has several Redis ports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    #[schemars(length(min = 1))]
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    pub route: Destination,
    /// Share of the route's commands mirrored; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    /// Mirror writes only.
    #[serde(default)]
    pub exclude_read_commands: bool,
}

/// A percentage from 0 to 100; fractions allowed (0.1 is one in a thousand).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Percent {
    #[schemars(range(min = 0, max = 100))]
    pub value: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'DELAY' || has(self.delay)", "message": "a DELAY fault needs a delay", "fieldPath": ".delay", "reason": "FieldValueRequired"}
]))]
pub struct Fault {
    /// DELAY (the default, as in Aeraki) holds replies back; ERROR answers `Fault Injected: Error`.
    #[serde(rename = "type", default)]
    pub kind: FaultType,
    pub percentage: Percent,
    /// How long a DELAY fault holds the reply back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// Command names (any case); empty: every command but AUTH and PING.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FaultType {
    #[default]
    Delay,
    Error,
}

/// Credentials: from a Secret in the resource's namespace, or written inline. Exactly one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.secret) != has(self.plain)", "message": "auth takes exactly one of secret or plain"}
]))]
pub struct Auth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain: Option<PlainAuth>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretAuth {
    /// The Secret's name, in the resource's namespace.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key holding the password; default `password`, else `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_field: Option<String>,
    /// Key holding the ACL username; default `username` (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_field: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlainAuth {
    #[schemars(length(min = 1))]
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// How to reach a Redis service: standalone or cluster, upstream auth, connection settings.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "redis.respmesh.io",
    version = "v1alpha1",
    kind = "RedisDestination",
    namespaced,
    status = "RedisStatus",
    shortname = "rd",
    category = "respmesh",
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.host"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.trafficPolicy.connectionPool.redis.mode"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"ResolvedRefs","type":"string","jsonPath":".status.conditions[?(@.type==\"ResolvedRefs\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "How to reach a Redis service: standalone or cluster, upstream auth, connection settings."
)]
#[serde(rename_all = "camelCase")]
pub struct RedisDestinationSpec {
    /// The Service's full name, `<service>.<namespace>.svc.cluster.local`, in this namespace.
    #[schemars(length(min = 1))]
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSettings>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    /// How long connecting (and logging in) to a Redis may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// Accepted for compatibility; the proxy shares a few connections per worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_connections: Option<i32>,
    /// Accepted for compatibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpKeepalive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub probes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSettings {
    /// PROXY (default): one Redis, or several sharded by key. CLUSTER: a Redis Cluster.
    #[serde(default)]
    pub mode: RedisMode,
    /// Upstream auth: what the proxy logs in to Redis with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// CLUSTER mode: nodes asked for the topology first, `host:port` (or `host`, meaning the
    /// Service's port); the Service's endpoints when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discovery_endpoints: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedisMode {
    #[default]
    Proxy,
    Cluster,
}

/// Status of a RedisService or RedisDestination, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: the resource is valid and applies to known hosts. `ResolvedRefs`: every
    /// Secret and route host it names was found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
