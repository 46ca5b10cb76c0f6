//! respmesh-init and the proxy's capture, inside real network namespaces that this test
//! creates (no route out of them): a "pod" namespace holding the client, the init rules and
//! the proxy (as UID 1379), joined by a veth pair to a "redis" namespace holding Redis and a
//! plain TCP echo server. Needs root, iproute2 and iptables (`make deps`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use respmesh_kubetest::netns::NetNs;
use respmesh_kubetest::workspace_bin;

fn run(mut c: Command) -> Output {
    c.output().expect("spawn")
}

fn ok(c: Command) -> String {
    let dbg = format!("{c:?}");
    let out = run(c);
    assert!(
        out.status.success(),
        "{dbg}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nat_rules(ns: &NetNs) -> String {
    let mut c = ns.command("iptables-save");
    c.args(["-t", "nat"]);
    ok(c).lines().filter(|l| l.starts_with("-A") || l.starts_with(':')).collect::<Vec<_>>().join("\n")
}

/// A copy of a workspace binary that an unprivileged UID can run (the target directory may
/// live under root's home).
fn runnable_copy(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(workspace_bin(name), &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    to
}

fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn init_installs_its_rules_once_and_removes_them() {
    let pod = NetNs::create().unwrap();
    let init = workspace_bin("respmesh-init");
    let apply = || {
        let mut c = pod.command(init.to_str().unwrap());
        c.args(["--ports", "6379,6380", "--exclude-cidrs", "10.1.0.0/16", "--ipv6", "off"]);
        ok(c)
    };
    apply();
    let first = nat_rules(&pod);
    assert!(first.contains("-A OUTPUT -p tcp -j RESPMESH_OUTPUT"), "{first}");
    assert!(first.contains("-A RESPMESH_OUTPUT -m owner --uid-owner 1379 -j RETURN"), "{first}");
    assert!(first.contains("-A RESPMESH_OUTPUT -d 10.1.0.0/16 -j RETURN"), "{first}");
    assert!(first.contains("-A RESPMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15379"), "{first}");
    apply();
    assert_eq!(nat_rules(&pod), first, "running twice gives the same rules");
    assert_eq!(first.matches("-j RESPMESH_OUTPUT").count(), 1);

    let mut c = pod.command(init.to_str().unwrap());
    c.arg("--cleanup");
    ok(c);
    let after = nat_rules(&pod);
    assert!(!after.contains("RESPMESH"), "{after}");
}

#[test]
fn init_without_capabilities_says_what_it_needs() {
    let pod = NetNs::create().unwrap();
    let dir = open_dir();
    let init = runnable_copy(dir.path(), "respmesh-init");
    let mut c = pod.command("setpriv");
    c.args(["--reuid=1000", "--regid=1000", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]).arg(&init);
    let out = run(c);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NET_ADMIN and NET_RAW are missing"), "{err}");
    assert!(!nat_rules(&pod).contains("RESPMESH"));
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(ns: &NetNs, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = ns.command("python3");
        c.args([
            "-c",
            &format!(
                "import socket; socket.create_connection(('{}', {}), 1)",
                addr.rsplit_once(':').unwrap().0,
                addr.rsplit_once(':').unwrap().1
            ),
        ]);
        if run(c).status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listens on {addr} in {}", ns.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The proxy in the pod namespace, as UID 1379 (from a copy it can run), with `services` (YAML
/// list items) and capture listeners on the loopback addresses REDIRECT sends to.
fn capturing_proxy(pod: &NetNs, services: &str) -> (Killed, tempfile::TempDir, PathBuf) {
    let dir = open_dir();
    let proxy = runnable_copy(dir.path(), "respmesh-proxy");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!("apiVersion: proxy.respmesh.io/v1alpha1\nkind: ProxyConfig\nservices:\n{services}"),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = dir.path().join("proxy.log");
    let mut c = pod.command("setpriv");
    c.args(["--reuid=1379", "--regid=1379", "--clear-groups"]).arg(&proxy);
    c.args(["--config", config.to_str().unwrap(), "--capture", "127.0.0.1:15379", "--capture", "[::1]:15379"]);
    c.args(["--admin", "off"]);
    let child = Killed(c.stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap());
    (child, dir, log)
}

const ECHO: &str = r#"
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

const CLIENT: &str = r#"
import os, socket, sys
data = os.urandom(256 * 1024)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)
c.sendall(data); c.shutdown(socket.SHUT_WR)
got = b""
while True:
    d = c.recv(65536)
    if not d: break
    got += d
print("same" if got == data else "different %d/%d" % (len(got), len(data)))
"#;

#[test]
fn redirected_redis_traffic_is_served_by_the_proxy_and_other_traffic_passes_through() {
    let pod = NetNs::create().unwrap();
    let redis_ns = NetNs::create().unwrap();
    let (_pod_ip, redis_ip) = pod.link_to(&redis_ns).unwrap();
    // The Service's cluster IP exists nowhere: only its route does, as in a pod.
    pod.route("10.96.0.0/16", &redis_ip).unwrap();

    let _redis = {
        let mut c = redis_ns.command("redis-server");
        c.args([
            "--bind",
            &redis_ip,
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "testredis",
        ]);
        Killed(c.stdout(Stdio::null()).spawn().unwrap())
    };
    let _echo = {
        let mut c = redis_ns.command("python3");
        c.args(["-c", ECHO, &redis_ip, "6380"]);
        Killed(c.spawn().unwrap())
    };
    wait_port(&redis_ns, &format!("{redis_ip}:6379"));
    wait_port(&redis_ns, &format!("{redis_ip}:6380"));

    // The proxy, as UID 1379, capturing on the loopback addresses REDIRECT sends to.
    let (_proxy, _dir, log) = capturing_proxy(
        &pod,
        &format!(
            "- host: redis-single.test.svc.cluster.local\n  addresses: [\"10.96.0.10:6379\"]\n  \
             endpoints: [\"{redis_ip}:6379\"]\n  auth: {{password: testredis}}\n"
        ),
    );
    wait_port(&pod, "127.0.0.1:15379");

    let mut c = pod.command(workspace_bin("respmesh-init").to_str().unwrap());
    c.args(["--ports", "6379,6380", "--ipv6", "off"]);
    ok(c);

    // The application connects to the Service address with no password: the proxy, chosen
    // by the original destination, logs in for it.
    let cli = |args: &[&str]| {
        let mut c = pod.command("redis-cli");
        c.args(["-h", "10.96.0.10", "-p", "6379"]).args(args);
        ok(c).trim().to_owned()
    };
    assert_eq!(cli(&["SET", "captured", "yes"]), "OK", "log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert_eq!(cli(&["GET", "captured"]), "yes");
    let mut direct = redis_ns.command("redis-cli");
    direct.args(["-h", &redis_ip, "-a", "testredis", "--no-auth-warning", "GET", "captured"]);
    assert_eq!(ok(direct).trim(), "yes", "the write reached the Redis in the other namespace");

    // The proxy's own connection to Redis (port 6379, UID 1379) was not captured.
    let counters = {
        let mut c = pod.command("iptables");
        c.args(["-t", "nat", "-L", "RESPMESH_OUTPUT", "-v", "-n", "-x"]);
        ok(c)
    };
    let owner = counters.lines().find(|l| l.contains("owner UID match 1379")).expect(&counters);
    let packets: u64 = owner.split_whitespace().next().unwrap().parse().unwrap();
    assert!(packets > 0, "the UID exemption was used:\n{counters}");

    // A captured port whose destination is no Redis service is relayed byte for byte.
    let mut c = pod.command("python3");
    c.args(["-c", CLIENT, &redis_ip, "6380"]);
    assert_eq!(ok(c).trim(), "same");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("capturing redirected connections"), "{text}");
    assert!(!text.contains("ERROR"), "{text}");
}

/// The same over IPv6: ip6tables rules, the original destination read with
/// IP6T_SO_ORIGINAL_DST, a [v6]:port service address.
#[test]
fn ipv6_connections_are_captured_too() {
    let pod = NetNs::create().unwrap();
    let redis_ns = NetNs::create().unwrap();
    let (_, _, link) = pod.link_to_named(&redis_ns).unwrap();
    let n = std::process::id() % 0xffff;
    let (pod_ip, redis_ip) = (format!("fd00:251:{n:x}::1"), format!("fd00:251:{n:x}::2"));
    pod.link_v6(&redis_ns, &link, &pod_ip, &redis_ip).unwrap();
    pod.route("fd00:96::/64", &redis_ip).unwrap();
    let _redis = {
        let mut c = redis_ns.command("redis-server");
        c.args(["--bind", &redis_ip, "--port", "6379", "--save", "", "--appendonly", "no", "--requirepass", "pw6"]);
        Killed(c.stdout(Stdio::null()).spawn().unwrap())
    };
    wait_port(&redis_ns, &format!("{redis_ip}:6379"));
    let (_proxy, _dir, log) = capturing_proxy(
        &pod,
        &format!(
            "- host: redis-v6.test.svc.cluster.local\n  addresses: [\"[fd00:96::10]:6379\"]\n  \
             endpoints: [\"[{redis_ip}]:6379\"]\n  auth: {{password: pw6}}\n"
        ),
    );
    wait_port(&pod, "::1:15379");
    let mut c = pod.command(workspace_bin("respmesh-init").to_str().unwrap());
    c.args(["--ports", "6379", "--ipv6", "on"]);
    ok(c);
    let mut c = pod.command("ip6tables-save");
    c.args(["-t", "nat"]);
    assert!(ok(c).contains("-A OUTPUT -p tcp -j RESPMESH_OUTPUT"));
    let mut c = pod.command("redis-cli");
    c.args(["-h", "fd00:96::10", "-p", "6379", "SET", "v6", "captured"]);
    assert_eq!(ok(c).trim(), "OK", "log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    let mut direct = redis_ns.command("redis-cli");
    direct.args(["-h", &redis_ip, "-a", "pw6", "--no-auth-warning", "GET", "v6"]);
    assert_eq!(ok(direct).trim(), "captured");
}

/// respmesh-init uses the iptables backend whose rules are already in the pod's network
/// namespace (a node's kubelet or CNI decides which), and capture works through either.
#[test]
fn the_backend_already_in_use_is_chosen_and_captures() {
    for (backend, other) in [("legacy", "nft"), ("nft", "legacy")] {
        let pod = NetNs::create().unwrap();
        let far = NetNs::create().unwrap();
        let (_pod_ip, far_ip) = pod.link_to(&far).unwrap();
        let _echo = {
            let mut c = far.command("python3");
            c.args(["-c", ECHO, &far_ip, "6380"]);
            Killed(c.spawn().unwrap())
        };
        wait_port(&far, &format!("{far_ip}:6380"));
        // What a node's own rules look like to the detection: one rule in the backend it uses.
        let mut c = pod.command(&format!("iptables-{backend}"));
        c.args(["-t", "filter", "-A", "INPUT", "-s", "192.0.2.1/32", "-j", "DROP"]);
        ok(c);

        let (_proxy, _dir, log) = capturing_proxy(
            &pod,
            "- host: redis-single.test.svc.cluster.local\n  addresses: [\"10.96.0.10:6379\"]\n  \
             endpoints: [\"127.0.0.1:6379\"]\n",
        );
        wait_port(&pod, "127.0.0.1:15379");
        let mut c = pod.command(workspace_bin("respmesh-init").to_str().unwrap());
        c.args(["--ports", "6380", "--ipv6", "off"]);
        let out = run(c);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("({backend})")));

        let saved = |b: &str| {
            let mut c = pod.command(&format!("iptables-{b}-save"));
            c.args(["-t", "nat"]);
            ok(c)
        };
        assert!(saved(backend).contains("-A OUTPUT -p tcp -j RESPMESH_OUTPUT"), "{}", saved(backend));
        assert!(!saved(other).contains("RESPMESH"), "nothing in the {other} backend:\n{}", saved(other));

        // A connection to port 6380 goes through the proxy (relayed: no service there).
        let mut c = pod.command("python3");
        c.args(["-c", CLIENT, &far_ip, "6380"]);
        assert_eq!(ok(c).trim(), "same", "log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        let counters = {
            let mut c = pod.command(&format!("iptables-{backend}"));
            c.args(["-t", "nat", "-L", "RESPMESH_REDIRECT", "-v", "-n", "-x"]);
            ok(c)
        };
        let redirect = counters.lines().find(|l| l.contains("redir ports 15379")).expect(&counters);
        let packets: u64 = redirect.split_whitespace().next().unwrap().parse().unwrap();
        assert!(packets > 0, "{backend}: the connection was redirected:\n{counters}");
    }
}
