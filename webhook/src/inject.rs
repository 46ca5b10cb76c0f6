//! What the webhook does to a pod, as a pure function over the pod's raw JSON: the JSON Patch
//! that adds `respmesh-init` and the `respmesh-proxy` native sidecar, or the reason to leave
//! the pod alone. Working on raw JSON (never a typed round trip) keeps every field the
//! webhook's Kubernetes types do not know.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const INJECT_LABEL: &str = "respmesh.io/inject";
pub const STATUS_ANNOTATION: &str = "respmesh.io/status";
/// Why a pod in an injected namespace was left alone.
pub const SKIP_ANNOTATION: &str = "respmesh.io/skip-reason";
pub const PORTS_ANNOTATION: &str = "respmesh.io/capture-ports";
pub const EXCLUDE_ANNOTATION: &str = "respmesh.io/exclude-cidrs";
pub const LOG_LEVEL_ANNOTATION: &str = "respmesh.io/log-level";
pub const BUSY_POLL_ANNOTATION: &str = "respmesh.io/busy-poll";
pub const CPU_ANNOTATION: &str = "respmesh.io/proxy-cpu";
pub const MEMORY_ANNOTATION: &str = "respmesh.io/proxy-memory";
pub const CPU_LIMIT_ANNOTATION: &str = "respmesh.io/proxy-cpu-limit";
pub const MEMORY_LIMIT_ANNOTATION: &str = "respmesh.io/proxy-memory-limit";

pub const PROXY_UID: i64 = 1379;
pub const CAPTURE_PORT: u16 = 15379;
pub const ADMIN_PORT: u16 = 15380;
pub const INIT_NAME: &str = "respmesh-init";
pub const PROXY_NAME: &str = "respmesh-proxy";
pub const CONFIG_VOLUME: &str = "respmesh-config";
pub const CREDENTIALS_VOLUME: &str = "respmesh-credentials";

/// The webhook's own settings (flags of respmesh-webhook).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InjectConfig {
    pub proxy_image: String,
    pub init_image: String,
    /// Namespaces never injected (kube-system, the webhook's own).
    pub skip_namespaces: Vec<String>,
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: Option<String>,
    pub memory_limit: String,
    pub log_level: String,
    /// Captured ports when the namespace's configuration names none.
    pub default_ports: Vec<u16>,
    pub version: String,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            proxy_image: "ghcr.io/respmesh/respmesh-proxy:0.1.0".into(),
            init_image: "ghcr.io/respmesh/respmesh-proxy:0.1.0".into(),
            skip_namespaces: vec!["kube-system".into(), "kube-public".into(), "kube-node-lease".into()],
            cpu_request: "20m".into(),
            memory_request: "32Mi".into(),
            cpu_limit: None,
            memory_limit: "256Mi".into(),
            log_level: "info".into(),
            default_ports: vec![6379],
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Leave the pod as it is, for this reason.
    Skip(String),
    /// Apply these JSON Patch operations.
    Patch(Vec<Value>),
}

/// An error in an annotation the pod's author can fix.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("annotation {annotation}: {message}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub message: String,
}

/// Escapes a map key for a JSON Pointer (`/` and `~`).
pub fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    v.pointer(path).and_then(Value::as_str)
}

/// Decides what to do with `pod` (raw JSON) created in `namespace`. `ports` are the ports of
/// the Redis services the namespace's proxy configuration knows (empty: the default).
pub fn decide(pod: &Value, namespace: &str, cfg: &InjectConfig, ports: &[u16]) -> Result<Decision, AnnotationError> {
    if cfg.skip_namespaces.iter().any(|n| n == namespace) {
        return Ok(Decision::Skip(format!("namespace {namespace} is never injected")));
    }
    if str_at(pod, &format!("/metadata/labels/{}", pointer_escape(INJECT_LABEL))) == Some("false") {
        return Ok(Decision::Skip(format!("the pod opted out with the label {INJECT_LABEL}=false")));
    }
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Decision::Skip(
            "hostNetwork pods are not injected (iptables would change the node's network)".into(),
        ));
    }
    let annotation = |name: &str| str_at(pod, &format!("/metadata/annotations/{}", pointer_escape(name)));
    let named = |list: Option<&Value>, name: &str| {
        list.and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|c| c.get("name").and_then(Value::as_str) == Some(name)))
    };
    if annotation(STATUS_ANNOTATION).is_some()
        || named(pod.pointer("/spec/initContainers"), PROXY_NAME)
        || named(pod.pointer("/spec/containers"), PROXY_NAME)
    {
        return Ok(Decision::Skip("already injected".into()));
    }

    let ports: Vec<u16> = match annotation(PORTS_ANNOTATION) {
        Some(text) => parse_ports(text).map_err(|message| AnnotationError { annotation: PORTS_ANNOTATION, message })?,
        None if ports.is_empty() => cfg.default_ports.clone(),
        None => ports.to_vec(),
    };
    let exclude = match annotation(EXCLUDE_ANNOTATION) {
        Some(text) => {
            check_cidrs(text).map_err(|message| AnnotationError { annotation: EXCLUDE_ANNOTATION, message })?;
            text.split(',').map(str::trim).filter(|c| !c.is_empty()).collect::<Vec<_>>().join(",")
        }
        None => String::new(),
    };
    let log_level = annotation(LOG_LEVEL_ANNOTATION).unwrap_or(&cfg.log_level).to_owned();
    if log_level.is_empty() || log_level.contains(char::is_whitespace) {
        return Err(AnnotationError {
            annotation: LOG_LEVEL_ANNOTATION,
            message: format!("{log_level:?} is not a log level"),
        });
    }
    // The proxy would refuse a longer window; refused here, the pod's author sees why.
    let max = respmesh_api::proxy::MAX_BUSY_POLL;
    let busy_poll = match annotation(BUSY_POLL_ANNOTATION) {
        Some(text) => match respmesh_api::Duration::parse(text) {
            Ok(d) if d.get() <= max => Some(text.to_owned()),
            Ok(_) => {
                return Err(AnnotationError {
                    annotation: BUSY_POLL_ANNOTATION,
                    message: format!("{text:?} is longer than the {max:?} allowed"),
                });
            }
            Err(e) => return Err(AnnotationError { annotation: BUSY_POLL_ANNOTATION, message: e.to_string() }),
        },
        None => None,
    };
    let quantity = |name: &'static str, default: Option<&str>| -> Result<Option<String>, AnnotationError> {
        match annotation(name) {
            Some(q) if is_quantity(q) => Ok(Some(q.to_owned())),
            Some(q) => Err(AnnotationError { annotation: name, message: format!("{q:?} is not a resource quantity") }),
            None => Ok(default.map(str::to_owned)),
        }
    };
    let mut requests = serde_json::Map::new();
    let mut limits = serde_json::Map::new();
    if let Some(q) = quantity(CPU_ANNOTATION, Some(&cfg.cpu_request))? {
        requests.insert("cpu".into(), q.into());
    }
    if let Some(q) = quantity(MEMORY_ANNOTATION, Some(&cfg.memory_request))? {
        requests.insert("memory".into(), q.into());
    }
    if let Some(q) = quantity(CPU_LIMIT_ANNOTATION, cfg.cpu_limit.as_deref())? {
        limits.insert("cpu".into(), q.into());
    }
    if let Some(q) = quantity(MEMORY_LIMIT_ANNOTATION, Some(&cfg.memory_limit))? {
        limits.insert("memory".into(), q.into());
    }
    let ports_text = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");

    let mut init_args = vec!["--ports".to_owned(), ports_text.clone()];
    if !exclude.is_empty() {
        init_args.extend(["--exclude-cidrs".to_owned(), exclude.clone()]);
    }
    let init = json!({
        "name": INIT_NAME,
        "image": cfg.init_image,
        "command": ["respmesh-init"],
        "args": init_args,
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
    });
    let mut proxy_args = vec![
        "--config".to_owned(),
        "/etc/respmesh/config/config.yaml".to_owned(),
        "--credentials-dir".to_owned(),
        "/etc/respmesh/credentials".to_owned(),
        "--capture".to_owned(),
        format!("127.0.0.1:{CAPTURE_PORT}"),
        "--capture".to_owned(),
        format!("[::1]:{CAPTURE_PORT}"),
        "--admin".to_owned(),
        format!("0.0.0.0:{ADMIN_PORT}"),
        "--log-format".to_owned(),
        "json".to_owned(),
        "--log-level".to_owned(),
        log_level,
    ];
    if let Some(window) = busy_poll {
        proxy_args.extend(["--busy-poll".to_owned(), window]);
    }
    let proxy = json!({
        "name": PROXY_NAME,
        "image": cfg.proxy_image,
        "command": ["respmesh-proxy"],
        "args": proxy_args,
        // A native sidecar: started before the app and later init containers, stopped after
        // the app, so Jobs complete.
        "restartPolicy": "Always",
        "ports": [{"name": "respmesh-admin", "containerPort": ADMIN_PORT}],
        "startupProbe": {"httpGet": {"path": "/ready", "port": ADMIN_PORT}, "periodSeconds": 1, "failureThreshold": 120},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": ADMIN_PORT}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/live", "port": ADMIN_PORT}, "periodSeconds": 10},
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": "/etc/respmesh/config", "readOnly": true},
            {"name": CREDENTIALS_VOLUME, "mountPath": "/etc/respmesh/credentials", "readOnly": true},
        ],
    });
    let volumes = [
        json!({"name": CONFIG_VOLUME, "configMap": {"name": "respmesh-proxy"}}),
        json!({"name": CREDENTIALS_VOLUME, "secret": {"secretName": "respmesh-proxy-credentials"}}),
    ];
    let status = json!({
        "version": cfg.version,
        "initContainers": [INIT_NAME, PROXY_NAME],
        "volumes": [CONFIG_VOLUME, CREDENTIALS_VOLUME],
        "capturePorts": ports,
    })
    .to_string();

    let mut ops = Vec::new();
    // Ours first, so that the pod's own init containers already reach Redis through the proxy.
    if pod.pointer("/spec/initContainers").and_then(Value::as_array).is_some() {
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": proxy}));
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init, proxy]}));
    }
    if pod.pointer("/spec/volumes").and_then(Value::as_array).is_some() {
        for v in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    }
    if pod.pointer("/metadata/annotations").and_then(Value::as_object).is_some() {
        ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", pointer_escape(STATUS_ANNOTATION)), "value": status}));
    } else {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {STATUS_ANNOTATION: status}}));
    }
    Ok(Decision::Patch(ops))
}

fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for p in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => out.push(n),
            _ => return Err(format!("{p:?} is not a port (1-65535)")),
        }
    }
    if out.is_empty() {
        return Err("no port given".into());
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn check_cidrs(text: &str) -> Result<(), String> {
    for c in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let (addr, len) = c.split_once('/').unwrap_or((c, if c.contains(':') { "128" } else { "32" }));
        let ip: std::net::IpAddr = addr.parse().map_err(|_| format!("{c:?} is not a CIDR"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if len.parse::<u8>().map_or(true, |l| l > max) {
            return Err(format!("{c:?}: bad prefix length"));
        }
    }
    Ok(())
}

/// A Kubernetes resource quantity such as `100m`, `64Mi`, `1.5`, `2G`.
fn is_quantity(q: &str) -> bool {
    let num_end = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(num_end);
    !num.is_empty()
        && num.parse::<f64>().is_ok()
        && ["", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].contains(&suffix)
}

/// The ports of the services a proxy configuration (the operator's ConfigMap text) captures.
pub fn ports_of_config(text: &str) -> Vec<u16> {
    let Ok(cfg) = respmesh_api::proxy::ProxyConfig::from_yaml(text) else { return Vec::new() };
    let mut ports: Vec<u16> = cfg
        .services
        .iter()
        .flat_map(|s| s.addresses.iter())
        .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}
