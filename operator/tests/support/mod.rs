//! Test support for the operator: the real binaries (operator, proxy) against the local
//! control plane from respmesh-kubetest, and small helpers to read what the operator wrote.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use respmesh_api::proxy::ProxyConfig;
use respmesh_kubetest::ControlPlane;
use respmesh_kubetest::process::{Logged, address_in};

pub const OPERATOR_USER: &str = "system:serviceaccount:respmesh-system:respmesh-operator";
pub const OPERATOR_GROUPS: &[&str] =
    &["system:serviceaccounts", "system:serviceaccounts:respmesh-system", "system:authenticated"];

pub use respmesh_kubetest::workspace_bin;

pub fn repo_file(rel: &str) -> PathBuf {
    respmesh_kubetest::workspace_root().join(rel)
}

/// Applies YAML with kubectl as the admin; Err carries kubectl's message.
pub fn apply(plane: &ControlPlane, yaml: &str) -> Result<String, String> {
    plane.kubectl_ok(&["apply", "-f", "-"], Some(yaml))
}

pub fn kubectl(plane: &ControlPlane, args: &[&str]) -> String {
    plane.kubectl_ok(args, None).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

/// A seed example (manifests/examples) moved into namespace `ns`.
pub fn example(name: &str, ns: &str) -> String {
    let text = std::fs::read_to_string(repo_file(&format!("manifests/examples/{name}"))).expect("example");
    in_namespace(&text, ns)
}

pub fn in_namespace(yaml: &str, ns: &str) -> String {
    yaml.replace("namespace: redis}", &format!("namespace: {ns}}}"))
        .replace("namespace: redis\n", &format!("namespace: {ns}\n"))
        .replace("name: redis\n", &format!("name: {ns}\n"))
        .replace(".redis.svc.cluster.local", &format!(".{ns}.svc.cluster.local"))
}

/// The operator's RBAC (and namespace) from manifests/operator, applied once per plane.
pub fn install_operator_rbac(plane: &ControlPlane) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let text = std::fs::read_to_string(repo_file("manifests/operator/operator.yaml")).unwrap();
        apply(plane, &text).expect("operator manifests apply");
    });
}

/// A running respmesh-operator, with the identity and permissions of its ServiceAccount.
pub struct Operator {
    proc: Option<Logged>,
    pub http: SocketAddr,
}

impl Operator {
    pub fn start(plane: &ControlPlane, identity: &str, extra: &[&str]) -> Operator {
        install_operator_rbac(plane);
        let kubeconfig = plane.kubeconfig_for(OPERATOR_USER, OPERATOR_GROUPS).unwrap();
        let mut cmd = Command::new(workspace_bin("respmesh-operator"));
        cmd.env("KUBECONFIG", kubeconfig)
            .args(["--http", "127.0.0.1:0", "--identity", identity, "--log-level", "info,kube=warn"])
            .args(extra);
        let proc = Logged::spawn(cmd, "operator").expect("spawn respmesh-operator");
        plane.adopt(proc.child.id()).unwrap();
        let http = address_in(&proc.wait_for("metrics listening", Duration::from_secs(20))).unwrap();
        Operator { proc: Some(proc), http }
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(Logged::log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut s) = std::net::TcpStream::connect(self.http) else { return (0, String::new()) };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
    }

    /// The value of a metric series, e.g. `respmesh_operator_writes_total{kind="configmap"}`.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics");
        body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    }

    pub async fn wait_ready(&self) {
        wait_until("operator ready", Duration::from_secs(30), || async {
            (self.get("/readyz").0 == 200).then_some(())
        })
        .await;
    }

    pub fn kill(&mut self) {
        self.proc = None;
    }

    pub fn terminate(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status();
            let _ = p.child.wait();
        }
    }
}

/// The operator shared by the tests of one binary (the translation is mesh-wide: tests use
/// their own namespaces and look only at their own hosts).
pub fn shared_operator() -> &'static Operator {
    static OP: OnceLock<Operator> = OnceLock::new();
    OP.get_or_init(|| {
        let plane = respmesh_kubetest::shared();
        std::thread::spawn(move || Operator::start(plane, "shared", &[])).join().unwrap()
    })
}

/// Polls `f` every 50 ms until it returns Some, or panics after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The proxy configuration in namespace `ns`, if the operator has written it.
pub async fn proxy_config(client: &Client, ns: &str) -> Option<ProxyConfig> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt("respmesh-proxy").await.ok()??;
    let text = cm.data?.get("config.yaml")?.clone();
    Some(ProxyConfig::from_yaml(&text).expect("the operator writes valid configurations"))
}

/// The credentials Secret in `ns`, values as text.
pub async fn credentials(client: &Client, ns: &str) -> Option<BTreeMap<String, String>> {
    let s = Api::<Secret>::namespaced(client.clone(), ns).get_opt("respmesh-proxy-credentials").await.ok()??;
    Some(s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned())).collect())
}

/// Waits until the configuration in `ns` has a service `host` for which `check` holds.
pub async fn wait_service<F>(
    client: &Client,
    ns: &str,
    host: &str,
    what: &str,
    check: F,
) -> respmesh_api::proxy::Service
where
    F: Fn(&respmesh_api::proxy::Service) -> bool,
{
    wait_until(what, Duration::from_secs(10), || async {
        let cfg = proxy_config(client, ns).await?;
        cfg.services.into_iter().find(|s| s.host == host && check(s))
    })
    .await
}

/// `(status, reason, message)` of condition `kind` on a custom resource.
pub fn condition(
    plane: &ControlPlane,
    resource: &str,
    ns: &str,
    name: &str,
    kind: &str,
) -> Option<(String, String, String)> {
    let out = plane.kubectl(&["get", resource, "-n", ns, name, "-o", "json"], None).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let c = v["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind)?.clone();
    Some((c["status"].as_str()?.to_owned(), c["reason"].as_str()?.to_owned(), c["message"].as_str()?.to_owned()))
}

pub async fn wait_condition(
    plane: &ControlPlane,
    resource: &str,
    ns: &str,
    name: &str,
    kind: &str,
    status: &str,
) -> (String, String) {
    wait_until(&format!("{resource} {ns}/{name} {kind}={status}"), Duration::from_secs(10), || async {
        condition(plane, resource, ns, name, kind).filter(|c| c.0 == status).map(|c| (c.1, c.2))
    })
    .await
}

/// The demo's Services in a new injected namespace, each with one ready endpoint.
pub async fn demo_namespace(
    plane: &ControlPlane,
    client: &Client,
    prefix: &str,
    single: (&str, u16),
    cluster: (&str, u16),
) -> String {
    let ns = plane.namespace(client, prefix, &[("respmesh.io/inject", "enabled")]).await.unwrap();
    let services = std::fs::read_to_string(repo_file("manifests/examples/demo-services.yaml")).unwrap();
    // Everything but the Namespace document (the test made its own).
    let docs: Vec<&str> = services.split("\n---\n").filter(|d| !d.contains("kind: Namespace")).collect();
    apply(plane, &in_namespace(&docs.join("\n---\n"), &ns)).unwrap();
    apply(plane, &endpoint_slice(&ns, "redis-single", "tcp-redis", &[(single.0, true)], single.1)).unwrap();
    apply(plane, &endpoint_slice(&ns, "redis-cluster", "tcp-redis", &[(cluster.0, true)], cluster.1)).unwrap();
    ns
}

pub fn endpoint_slice(ns: &str, service: &str, port_name: &str, addrs: &[(&str, bool)], port: u16) -> String {
    let endpoints: Vec<String> =
        addrs.iter().map(|(a, ready)| format!("- addresses: [\"{a}\"]\n  conditions: {{ready: {ready}}}")).collect();
    // The API server refuses loopback IPs in EndpointSlices; `localhost` as an FQDN slice is
    // how a test points a Service at a process on this machine.
    let kind = if addrs.iter().all(|(a, _)| a.parse::<std::net::Ipv4Addr>().is_ok()) { "IPv4" } else { "FQDN" };
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-test\n  namespace: {ns}\n  \
         labels: {{kubernetes.io/service-name: {service}}}\naddressType: {kind}\nports: [{{name: {port_name}, port: {port}, protocol: TCP}}]\n\
         endpoints:\n{}\n",
        endpoints.join("\n")
    )
}

pub fn host(name: &str, ns: &str) -> String {
    format!("{name}.{ns}.svc.cluster.local")
}

/// A redis-server in a "pod" network namespace of its own (the API server refuses loopback
/// endpoints), reachable from this machine at `ip:6379`; stopped when dropped.
pub struct Redis {
    pub ip: String,
    pub port: u16,
    child: Child,
    _netns: respmesh_kubetest::netns::NetNs,
}

impl Redis {
    pub fn start(args: &[&str]) -> Redis {
        let netns = respmesh_kubetest::netns::NetNs::create().expect("a network namespace (needs root and iproute2)");
        let port = 6379;
        let child = netns
            .command("redis-server")
            .args(["--port", &port.to_string(), "--bind", &netns.ip, "--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make deps)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((netns.ip.as_str(), port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { ip: netns.ip.clone(), port, child, _netns: netns }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one command on a new connection and returns the first line of the reply, e.g.
/// `+OK` or `-NOAUTH Authentication required.`; `None` when the connection fails.
pub fn command(addr: SocketAddr, args: &[&str]) -> Option<String> {
    command_seq(addr, &[args]).pop()
}

/// Sends commands in order on one connection and returns the first line of each reply.
pub fn command_seq(addr: SocketAddr, cmds: &[&[&str]]) -> Vec<String> {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return vec![] };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut out = Vec::new();
    for args in cmds {
        let mut req = format!("*{}\r\n", args.len());
        for a in *args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        if s.write_all(req.as_bytes()).is_err() {
            break;
        }
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.starts_with('$') && !line.starts_with("$-1") {
            line.clear();
            let _ = reader.read_line(&mut line);
        }
        out.push(line.trim_end().to_owned());
    }
    out
}

/// A respmesh-proxy that reads its configuration from the operator's ConfigMap in `ns`,
/// with a listener for `host` on a free loopback port.
pub struct Proxy {
    proc: Logged,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Proxy {
    pub fn start(kubeconfig: &Path, ns: &str, host: &str) -> Proxy {
        let mut cmd = Command::new(workspace_bin("respmesh-proxy"));
        cmd.env("KUBECONFIG", kubeconfig).args(["--configmap", &format!("{ns}/respmesh-proxy")]).args([
            "--bind",
            &format!("127.0.0.1:0={host}"),
            "--admin",
            "127.0.0.1:0",
            "--log-level",
            "info,kube=warn",
        ]);
        let proc = Logged::spawn(cmd, "proxy").expect("spawn respmesh-proxy");
        let admin = address_in(&proc.wait_for("admin listening", Duration::from_secs(20))).unwrap();
        let addr = address_in(&proc.wait_for(" listening", Duration::from_secs(20))).unwrap();
        Proxy { proc, addr, admin }
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn ready(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(self.admin) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = write!(s, "GET /ready HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.starts_with("HTTP/1.1 200")
    }
}

/// A kubeconfig for a proxy in `ns`: only get/list/watch of ConfigMaps and Secrets there.
pub fn proxy_kubeconfig(plane: &ControlPlane, ns: &str) -> PathBuf {
    let user = format!("system:serviceaccount:{ns}:app");
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: respmesh-proxy, namespace: {ns}}}\n\
         rules:\n- apiGroups: [\"\"]\n  resources: [configmaps, secrets]\n  resourceNames: [respmesh-proxy, respmesh-proxy-credentials]\n  \
         verbs: [get, list, watch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
         metadata: {{name: respmesh-proxy, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: respmesh-proxy}}\n\
         subjects: [{{kind: User, name: \"{user}\", apiGroup: rbac.authorization.k8s.io}}]\n"
    );
    apply(plane, &rbac).unwrap();
    plane.kubeconfig_for(&user, &["system:serviceaccounts", "system:authenticated"]).unwrap()
}
