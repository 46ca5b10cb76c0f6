//! Applications written against real client libraries (redis-py, go-redis v9, ioredis and
//! node-redis, Jedis and Lettuce), run unchanged
//! against Redis and through respmesh: each checks what it gets, and their transcripts must be
//! the same. The libraries do what applications' connections do in practice: HELLO with AUTH,
//! CLIENT SETINFO on connect, pooled connections, health-check PINGs, EVALSHA falling back to
//! EVAL, pub/sub connections, WATCH transactions. `scripts/client-apps.sh` installs them.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use support::{Cluster, Proxy, Redis};

struct Apps {
    python: PathBuf,
    node_modules: PathBuf,
    java_class_path: String,
    go_redis: PathBuf,
}

/// The Python interpreter with redis-py, the Node.js modules, the Java application's class
/// path and the go-redis application.
fn apps() -> &'static Apps {
    static APPS: OnceLock<Apps> = OnceLock::new();
    APPS.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/client-apps.sh");
        let out = Command::new("bash").arg(script).output().expect("running scripts/client-apps.sh");
        assert!(
            out.status.success(),
            "scripts/client-apps.sh could not install the client libraries:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines().rev();
        let go_redis = PathBuf::from(lines.next().expect("the go-redis application"));
        let java_class_path = lines.next().expect("the Java class path").to_owned();
        let node_modules = PathBuf::from(lines.next().expect("the Node.js modules"));
        let python = PathBuf::from(lines.next().expect("the Python interpreter"));
        Apps { python, node_modules, java_class_path, go_redis }
    })
}

#[derive(Clone, Copy)]
enum Library {
    RedisPy,
    GoRedis,
    /// ioredis and node-redis, one after the other.
    Node,
    /// Jedis and Lettuce, one after the other.
    Java,
}

/// Runs the application against `port` speaking RESP `protocol`; its transcript, or a panic
/// with what it printed if one of its checks failed.
fn run(lib: Library, port: u16, protocol: u8, password: Option<&str>) -> String {
    let apps = apps();
    let app = |dir_file: &str| format!("{}/tests/apps/{dir_file}", env!("CARGO_MANIFEST_DIR"));
    // Each takes PORT PROTOCOL [PASSWORD] after its own program and arguments.
    let mut cmd = match lib {
        Library::RedisPy => {
            let mut c = Command::new(&apps.python);
            c.arg(app("redis_py_app.py"));
            c
        }
        Library::Node => {
            let mut c = Command::new("node");
            c.arg(app("node/app.js")).env("NODE_PATH", &apps.node_modules);
            c
        }
        Library::Java => {
            let mut c = Command::new("java");
            c.args(["-cp", &apps.java_class_path, "io.respmesh.tests.App"]);
            c
        }
        Library::GoRedis => Command::new(&apps.go_redis),
    };
    cmd.arg(port.to_string()).arg(protocol.to_string()).args(password);
    let out = cmd.output().expect("running the application");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the application failed against port {port} (RESP{protocol}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().count() >= 20, "a whole transcript: {stdout}");
    stdout
}

/// Redis with a password, and respmesh logging in to it with that password while its clients
/// use their own.
fn same_through_the_standalone_proxy(lib: Library) {
    let redis = Redis::start_with(&["--requirepass", "redis-secret"]);
    let proxy = Proxy::start_args(&[
        "--upstream",
        &redis.addr(),
        "--upstream-password",
        "redis-secret",
        "--client-password",
        "app-secret",
    ]);
    for protocol in [2, 3] {
        let direct = run(lib, redis.port, protocol, Some("redis-secret"));
        let through = run(lib, proxy.addr.port(), protocol, Some("app-secret"));
        assert_eq!(direct, through, "RESP{protocol}");
    }
}

/// A 6-node cluster behind respmesh in CLUSTER mode, against one plain Redis: the application
/// cannot tell them apart.
fn same_through_the_cluster_proxy(lib: Library) {
    let redis = Redis::start();
    let cluster = Cluster::start();
    let proxy = Proxy::start_args(&["--upstream", &cluster.nodes[0].addr(), "--mode", "cluster"]);
    for protocol in [2, 3] {
        let direct = run(lib, redis.port, protocol, None);
        let through = run(lib, proxy.addr.port(), protocol, None);
        assert_eq!(direct, through, "RESP{protocol}");
    }
}

#[test]
fn a_redis_py_application_sees_the_same_through_respmesh() {
    same_through_the_standalone_proxy(Library::RedisPy);
}

#[test]
fn a_go_redis_application_sees_the_same_through_respmesh() {
    same_through_the_standalone_proxy(Library::GoRedis);
}

#[test]
fn a_redis_py_application_sees_one_redis_in_a_cluster() {
    same_through_the_cluster_proxy(Library::RedisPy);
}

#[test]
fn a_go_redis_application_sees_one_redis_in_a_cluster() {
    same_through_the_cluster_proxy(Library::GoRedis);
}

#[test]
fn ioredis_and_node_redis_applications_see_the_same_through_respmesh() {
    same_through_the_standalone_proxy(Library::Node);
}

#[test]
fn ioredis_and_node_redis_applications_see_one_redis_in_a_cluster() {
    same_through_the_cluster_proxy(Library::Node);
}

#[test]
fn jedis_and_lettuce_applications_see_the_same_through_respmesh() {
    same_through_the_standalone_proxy(Library::Java);
}

#[test]
fn jedis_and_lettuce_applications_see_one_redis_in_a_cluster() {
    same_through_the_cluster_proxy(Library::Java);
}
