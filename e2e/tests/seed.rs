//! The seed's scenarios end to end, reply for reply (seed/scenarios.md): kubectl applies the
//! article's YAML to a real API server; the operator (with its RBAC) writes the proxy
//! configuration; the webhook (with its RBAC) injects the client pod; a stand-in for the
//! kubelet runs that pod's respmesh-init and respmesh-proxy in a network namespace; redis-cli in
//! that namespace plays the application, talking to the Services' cluster IPs as if respmesh
//! were not there. Redis (one with a password, and a 6-node cluster) runs in another network
//! namespace. Needs root, iproute2, iptables, redis-server.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use respmesh_e2e::PodRunner;
use respmesh_kubetest::netns::NetNs;
use respmesh_kubetest::{ControlPlane, workspace_bin};
use serde_json::Value;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kubectl(plane: &ControlPlane, args: &[&str], stdin: Option<&str>) -> String {
    plane.kubectl_ok(args, stdin).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

fn apply(plane: &ControlPlane, yaml: &str) {
    kubectl(plane, &["apply", "-f", "-"], Some(yaml));
}

fn repo(rel: &str) -> String {
    std::fs::read_to_string(respmesh_kubetest::workspace_root().join(rel)).unwrap()
}

fn spawn(plane: &ControlPlane, bin: &str, user: &str, args: &[&str], log: &std::path::Path) -> Proc {
    let kubeconfig = plane
        .kubeconfig_for(
            user,
            &["system:serviceaccounts", "system:serviceaccounts:respmesh-system", "system:authenticated"],
        )
        .unwrap();
    let child = Command::new(workspace_bin(bin))
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    plane.adopt(child.id()).unwrap();
    Proc(child)
}

/// redis-cli in the pod's network namespace, one connection, the commands in order; replies
/// as redis-cli prints them at a terminal (`--no-raw`), as the seed shows them.
fn cli(pod: &NetNs, host: &str, commands: &[&str]) -> Vec<String> {
    let mut c = pod.command("redis-cli");
    c.args(["--no-raw", "-h", host, "-p", "6379"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for cmd in commands {
            writeln!(stdin, "{cmd}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// Polls until `commands` give `want` (the configuration takes a moment to arrive).
fn eventually(pod: &NetNs, host: &str, commands: &[&str], want: &[&str], runner: &PodRunner, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let got = cli(pod, host, commands);
        if got == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{what}: got {got:?}, want {want:?}\n{}", runner.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the proxy's configuration (its admin `/config`, inside the pod) contains
/// `needle`: the change has gone operator -> ConfigMap -> volume -> proxy.
fn wait_config(pod: &NetNs, needle: &str, runner: &PodRunner) {
    let start = Instant::now();
    loop {
        let mut c = pod.command("python3");
        c.args(["-c", "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15380/config', timeout=2).read().decode())"]);
        let text = String::from_utf8_lossy(&c.output().unwrap().stdout).replace(char::is_whitespace, "");
        if text.contains(needle) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the proxy's configuration never had {needle}:\n{text}\n{}",
            runner.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn the_seed_scenarios_end_to_end() {
    let plane = respmesh_kubetest::shared();
    let logs = tempfile_dir();

    // -- Redis, in a namespace of its own: redis-single (password) and a 6-node cluster.
    let pod_net = NetNs::create().unwrap();
    let redis_net = NetNs::create().unwrap();
    let (_pod_ip, redis_ip) = pod_net.link_to(&redis_net).unwrap();
    pod_net.route("10.96.0.0/16", &redis_ip).unwrap();
    let mut servers = Vec::new();
    let start_redis = |port: u16, extra: &[&str]| {
        let mut c = redis_net.command("redis-server");
        c.args([
            "--bind",
            &redis_ip,
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ])
        .args(extra);
        c.current_dir(logs.path());
        Proc(c.stdout(Stdio::null()).spawn().unwrap())
    };
    servers.push(start_redis(6379, &["--requirepass", "testredis"]));
    for port in 7000..7006 {
        let conf = format!("nodes-{port}.conf");
        servers.push(start_redis(
            port,
            &["--cluster-enabled", "yes", "--cluster-config-file", &conf, "--cluster-node-timeout", "2000"],
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut create = redis_net.command("redis-cli");
    create.args(["--cluster", "create"]);
    for port in 7000..7006 {
        create.arg(format!("{redis_ip}:{port}"));
    }
    create.args(["--cluster-replicas", "1", "--cluster-yes"]);
    let out = create.output().unwrap();
    assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut info = redis_net.command("redis-cli");
        info.args(["-h", &redis_ip, "-p", "7000", "CLUSTER", "INFO"]);
        if String::from_utf8_lossy(&info.output().unwrap().stdout).contains("cluster_state:ok") {
            break;
        }
        assert!(Instant::now() < deadline, "cluster not ok");
        std::thread::sleep(Duration::from_millis(200));
    }

    // -- The control plane: CRDs (installed by kubetest), the operator and the webhook.
    apply(plane, &repo("manifests/operator/operator.yaml"));
    let webhook_manifest = repo("manifests/webhook/webhook.yaml");
    let (rest, mwc): (Vec<&str>, Vec<&str>) =
        webhook_manifest.split("\n---\n").partition(|d| !d.contains("kind: MutatingWebhookConfiguration"));
    apply(plane, &rest.join("\n---\n"));
    let _operator = spawn(
        plane,
        "respmesh-operator",
        "system:serviceaccount:respmesh-system:respmesh-operator",
        &["--http", "127.0.0.1:0"],
        &logs.path().join("operator.log"),
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _webhook = spawn(
        plane,
        "respmesh-webhook",
        "system:serviceaccount:respmesh-system:respmesh-webhook",
        &["--listen", &listen, "--extra-hosts", "127.0.0.1", "--cert-check-interval", "1s"],
        &logs.path().join("webhook.log"),
    );
    apply(
        plane,
        &mwc.join("\n---\n").replace(
            "service: {name: respmesh-webhook, namespace: respmesh-system, path: /mutate, port: 443}",
            &format!("url: \"https://{listen}/mutate\""),
        ),
    );

    // -- The demo's namespace and Services; endpoints are the Redis namespace's address.
    apply(plane, &repo("manifests/examples/demo-services.yaml"));
    let slice = |svc: &str, port: u16| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-e2e\n  namespace: redis\n  \
             labels: {{kubernetes.io/service-name: {svc}}}\naddressType: IPv4\nports: [{{name: tcp-redis, port: {port}, protocol: TCP}}]\n\
             endpoints: [{{addresses: [\"{redis_ip}\"]}}]\n"
        )
    };
    apply(plane, &slice("redis-single", 6379));
    apply(plane, &slice("redis-cluster", 7000));
    let ip_of =
        |svc: &str| kubectl(plane, &["get", "service", "-n", "redis", svc, "-o", "jsonpath={.spec.clusterIP}"], None);
    let (single, cluster) = (ip_of("redis-single"), ip_of("redis-cluster"));

    // -- The client pod, created through the API: the webhook injects it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pod: Value = loop {
        // The operator writes the namespace's ConfigMap; the webhook reads its ports.
        let ready =
            plane.kubectl(&["get", "configmap", "-n", "redis", "respmesh-proxy"], None).unwrap().status.success();
        let bundle = plane.webhook_ca_bundle("respmesh-webhook");
        if ready && !bundle.is_empty() {
            let out = plane
                .kubectl(&["create", "--dry-run=server", "-o", "json", "-f", "-"], Some("apiVersion: v1\nkind: Pod\nmetadata: {name: redis-client, namespace: redis}\nspec: {containers: [{name: redis-client, image: redis}]}\n"))
                .unwrap();
            if out.status.success() {
                let p: Value = serde_json::from_slice(&out.stdout).unwrap();
                if p.pointer("/spec/initContainers/1/name").and_then(Value::as_str) == Some("respmesh-proxy") {
                    break serde_json::from_str(&kubectl(plane, &["create", "-o", "json", "-f", "-"], Some("apiVersion: v1\nkind: Pod\nmetadata: {name: redis-client, namespace: redis}\nspec: {containers: [{name: redis-client, image: redis}]}\n"))).unwrap();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the client pod is not injected:\n{}",
            std::fs::read_to_string(logs.path().join("webhook.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(pod["spec"]["initContainers"][0]["args"], serde_json::json!(["--ports", "6379"]));
    let runner = PodRunner::start(&plane.admin_kubeconfig, &pod, &pod_net).unwrap();

    // Setup: without any respmesh resource.
    eventually(
        &pod_net,
        &single,
        &["set a a"],
        &["(error) NOAUTH Authentication required."],
        &runner,
        "setup, redis-single",
    );
    let moved = cli(&pod_net, &cluster, &["set foo bar"]);
    assert_eq!(moved, vec![format!("(error) MOVED 12182 {redis_ip}:7002")], "setup, redis-cluster");

    // 1. Upstream auth.
    apply(plane, &repo("manifests/examples/1-upstream-auth.yaml"));
    let took = eventually(&pod_net, &single, &["set foo bar"], &["OK"], &runner, "scenario 1");
    eprintln!("scenario 1 in force after {took:?}");

    // 2. Client auth.
    apply(plane, &repo("manifests/examples/2-client-auth.yaml"));
    eventually(
        &pod_net,
        &single,
        &["AUTH testredis", "AUTH testredis123!", "get foo"],
        &["(error) ERR invalid password", "OK", "\"bar\""],
        &runner,
        "scenario 2",
    );

    // 3. Cluster mode.
    apply(plane, &repo("manifests/examples/3-cluster-mode.yaml"));
    eventually(&pod_net, &cluster, &["set foo bar"], &["OK"], &runner, "scenario 3");

    // 4. Key-prefix routing.
    apply(plane, &repo("manifests/examples/4-prefix-routing.yaml"));
    wait_config(&pod_net, "\"prefix\":\"cluster\"", &runner);
    eventually(
        &pod_net,
        &cluster,
        &[
            "set test-route \"this key goes to redis-single\"",
            "set cluster-test-route \"this key goes to redis-cluster\"",
            "get test-route",
            "get cluster-test-route",
        ],
        &["OK", "OK", "\"this key goes to redis-single\"", "\"this key goes to redis-cluster\""],
        &runner,
        "scenario 4",
    );
    eventually(
        &pod_net,
        &single,
        &["AUTH testredis123!", "get test-route", "get cluster-test-route"],
        &["OK", "\"this key goes to redis-single\"", "(nil)"],
        &runner,
        "scenario 4, through redis-single",
    );

    // 5. Read/write splitting: reads from replicas; writes still work.
    apply(plane, &repo("manifests/examples/5-read-policy.yaml"));
    wait_config(&pod_net, "\"readPolicy\":\"REPLICA\"", &runner);
    eventually(&pod_net, &cluster, &["set rw 1", "get rw"], &["OK", "\"1\""], &runner, "scenario 5");

    // 6. Mirroring.
    apply(plane, &repo("manifests/examples/6-mirroring.yaml"));
    wait_config(&pod_net, "\"mirror\":[", &runner);
    eventually(
        &pod_net,
        &cluster,
        &[
            "set test-traffic-mirroring \"this key goes to both redis-cluster and redis-single\"",
            "get test-traffic-mirroring",
        ],
        &["OK", "\"this key goes to both redis-cluster and redis-single\""],
        &runner,
        "scenario 6",
    );
    eventually(
        &pod_net,
        &single,
        &["AUTH testredis123!", "get test-traffic-mirroring"],
        &["OK", "\"this key goes to both redis-cluster and redis-single\""],
        &runner,
        "scenario 6, through redis-single",
    );

    // 7. Fault injection: about half of the GETs fail.
    apply(plane, &repo("manifests/examples/7-fault-injection.yaml"));
    wait_config(&pod_net, "\"faults\":[", &runner);
    let start = Instant::now();
    let (errors, values) = loop {
        let cmds: Vec<&str> = std::iter::repeat_n("get foo", 200).collect();
        let replies = cli(&pod_net, &cluster, &cmds);
        let errors = replies.iter().filter(|r| *r == "(error) Fault Injected: Error").count();
        let values = replies.iter().filter(|r| *r == "\"bar\"").count();
        if errors > 0 {
            break (errors, values);
        }
        assert!(start.elapsed() < Duration::from_secs(15), "scenario 7 not in force:\n{}", runner.logs());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(errors + values, 200);
    assert!((60..=140).contains(&errors), "{errors} of 200 GETs failed");
    eprintln!("scenario 7: {errors} of 200 GETs got the injected error");
}

fn tempfile_dir() -> respmesh_e2e::tempfile_dir::Dir {
    respmesh_e2e::tempfile_dir::Dir::new().unwrap()
}
