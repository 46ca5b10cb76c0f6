//! Key-prefix routing and mirroring: the seed's scenarios 4 and 6.

mod support;

use std::time::{Duration, Instant};

use support::{Cluster, Proxy, Redis};

/// Services: redis-single (password-protected standalone) and redis-cluster (CLUSTER mode);
/// the listener serves `front`, whose routes are `routes` (YAML, indented for the list).
fn config(single: &Redis, cluster: &Cluster, routes: &str) -> String {
    format!(
        r#"apiVersion: proxy.respmesh.io/v1alpha1
kind: ProxyConfig
listeners: [{{address: "127.0.0.1:0", service: redis-cluster.redis.svc.cluster.local}}]
services:
  - host: redis-single.redis.svc.cluster.local
    endpoints: ["{}"]
    auth: {{password: testredis}}
  - host: redis-cluster.redis.svc.cluster.local
    mode: CLUSTER
    endpoints: {:?}
    routes:
{routes}"#,
        single.addr(),
        cluster.addrs()
    )
}

#[test]
fn scenario_4_keys_go_to_the_service_of_their_prefix() {
    let single = Redis::start_with(&["--requirepass", "testredis"]);
    let cluster = Cluster::start_with(3, 0);
    let routes = "      - match: {key: {prefix: cluster}}\n        route: {host: redis-cluster.redis.svc.cluster.local}\n      - route: {host: redis-single.redis.svc.cluster.local}\n";
    let proxy = Proxy::start_config(&config(&single, &cluster, routes));
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "test-route", "this key goes to redis-single"]), "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "cluster-test-route", "this key goes to redis-cluster"]), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", "test-route"]), "$29\r\nthis key goes to redis-single\r\n");
    assert_eq!(c.cmd(&["GET", "cluster-test-route"]), "$30\r\nthis key goes to redis-cluster\r\n");
    // As seen from redis-single itself:
    let mut s = single.conn();
    s.cmd(&["AUTH", "testredis"]);
    assert_eq!(s.cmd(&["GET", "test-route"]), "$29\r\nthis key goes to redis-single\r\n");
    assert_eq!(s.cmd(&["GET", "cluster-test-route"]), "$-1\r\n");
    // Keys of two routes in one command: a clear error.
    assert_eq!(
        c.cmd(&["RENAME", "test-route", "cluster-x"]),
        "-CROSSSLOT Keys in request don't belong to the same route\r\n"
    );
    // Keyless commands take the default route.
    assert_eq!(c.cmd(&["DBSIZE"]), ":1\r\n");
    let to = |route: &str| {
        proxy.metric(&format!(
            "respmesh_proxy_routed_requests_total{{service=\"redis-cluster.redis.svc.cluster.local\",route=\"{route}\"}}"
        ))
    };
    assert_eq!(to("redis-cluster.redis.svc.cluster.local"), 2.0);
    assert_eq!(to("redis-single.redis.svc.cluster.local"), 3.0);
}

#[test]
fn the_longest_prefix_wins_and_prefixes_can_be_removed_or_case_blind() {
    let single = Redis::start_with(&["--requirepass", "testredis"]);
    let cluster = Cluster::start_with(3, 0);
    // Written shortest first: order does not matter.
    let routes = "      - match: {key: {prefix: user}}\n        route: {host: redis-single.redis.svc.cluster.local}\n      - match: {key: {prefix: \"user:vip:\", removePrefix: true, caseInsensitive: true}}\n        route: {host: redis-cluster.redis.svc.cluster.local}\n";
    let proxy = Proxy::start_config(&config(&single, &cluster, routes));
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "user:1", "a"]), "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "USER:VIP:2", "b"]), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", "user:vip:2"]), "$1\r\nb\r\n");
    // Stored without its prefix in the cluster.
    let cp = Proxy::start_args(&["--upstream", &cluster.nodes[0].addr(), "--mode", "cluster"]);
    assert_eq!(cp.conn().cmd(&["GET", "2"]), "$1\r\nb\r\n");
    // No default route: a key no prefix matches is refused, named.
    assert_eq!(
        c.cmd(&["GET", "order:7"]),
        "-ERR respmesh: no route of service redis-cluster.redis.svc.cluster.local matches key 'order:7' and there is no default route\r\n"
    );
}

#[test]
fn scenario_6_writes_are_mirrored_and_only_the_primary_answers() {
    let single = Redis::start_with(&["--requirepass", "testredis"]);
    let cluster = Cluster::start_with(3, 0);
    let routes = "      - route: {host: redis-cluster.redis.svc.cluster.local}\n        mirror:\n          - route: {host: redis-single.redis.svc.cluster.local}\n            percentage: {value: 100}\n";
    let proxy = Proxy::start_config(&config(&single, &cluster, routes));
    let mut c = proxy.conn();
    let value = "this key goes to both redis-cluster and redis-single";
    assert_eq!(c.cmd(&["SET", "test-traffic-mirroring", value]), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", "test-traffic-mirroring"]), format!("${}\r\n{value}\r\n", value.len()));
    let mut s = single.conn();
    s.cmd(&["AUTH", "testredis"]);
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.cmd(&["GET", "test-traffic-mirroring"]) != format!("${}\r\n{value}\r\n", value.len()) {
        assert!(Instant::now() < deadline, "the mirror never got the write");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The mirror's replies are dropped: an INCR that fails there succeeds for the client.
    s.cmd(&["SET", "n", "not-a-number"]);
    assert_eq!(c.cmd(&["INCR", "n"]), ":1\r\n");
    assert!(
        proxy.metric(
            "respmesh_proxy_mirrored_requests_total{mirror=\"redis-single.redis.svc.cluster.local\",result=\"sent\"}"
        ) >= 3.0
    );
}

#[test]
fn a_dead_mirror_never_slows_or_fails_the_primary() {
    let cluster = Cluster::start_with(3, 0);
    let dead = format!("127.0.0.1:{}", support::free_port());
    let yaml = format!(
        r#"apiVersion: proxy.respmesh.io/v1alpha1
kind: ProxyConfig
listeners: [{{address: "127.0.0.1:0", service: front}}]
services:
  - host: dead-mirror
    endpoints: ["{dead}"]
  - host: front
    mode: CLUSTER
    endpoints: {:?}
    routes:
      - route: {{host: front}}
        mirror: [{{route: {{host: dead-mirror}}, percentage: {{value: 100}}, excludeReadCommands: true}}]
"#,
        cluster.addrs()
    );
    let mut proxy = Proxy::start_config(&yaml);
    proxy.allow_warning("cannot connect to upstream");
    let mut c = proxy.conn();
    let start = Instant::now();
    for i in 0..500 {
        assert_eq!(c.cmd(&["SET", &format!("k{i}"), "v"]), "+OK\r\n");
    }
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    assert!(proxy.metric("respmesh_proxy_mirrored_requests_total{mirror=\"dead-mirror\",result=\"dropped\"}") > 400.0);
    // Reads are not mirrored at all with excludeReadCommands.
    let series = "respmesh_proxy_mirrored_requests_total{mirror=\"dead-mirror\",result=\"dropped\"}";
    let before = proxy.metric(series);
    for _ in 0..10 {
        assert_eq!(c.cmd(&["GET", "k1"]), "$1\r\nv\r\n");
    }
    assert_eq!(proxy.metric(series), before, "GETs were mirrored");
}

/// MGET, MSET, DEL, EXISTS, UNLINK and TOUCH over keys of several routes: one part per route
/// (each route's service splitting further by slot if it is a cluster), one reply as one
/// Redis would give it, in the client's order among pipelined commands.
#[test]
fn multi_key_commands_are_split_across_routes_and_merged() {
    let single = Redis::start_with(&["--requirepass", "testredis"]);
    let cluster = Cluster::start_with(3, 0);
    let routes = "      - match: {key: {prefix: \"c:\", removePrefix: true}}\n        route: {host: redis-cluster.redis.svc.cluster.local}\n      - route: {host: redis-single.redis.svc.cluster.local}\n";
    let proxy = Proxy::start_config(&config(&single, &cluster, routes));
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["MSET", "a", "1", "c:x", "2", "b", "3", "c:y", "4", "c:z", "5"]), "+OK\r\n");
    assert_eq!(
        c.cmd(&["MGET", "c:x", "a", "nope", "c:y", "b", "c:z", "c:nope"]),
        "*7\r\n$1\r\n2\r\n$1\r\n1\r\n$-1\r\n$1\r\n4\r\n$1\r\n3\r\n$1\r\n5\r\n$-1\r\n"
    );
    assert_eq!(c.cmd(&["EXISTS", "a", "c:x", "c:x", "nope", "c:nope"]), ":3\r\n");
    assert_eq!(c.cmd(&["TOUCH", "a", "c:y"]), ":2\r\n");
    // Where the keys really are: the prefix removed in the cluster, kept on the single.
    let mut s = single.conn();
    s.cmd(&["AUTH", "testredis"]);
    assert_eq!(s.cmd(&["MGET", "a", "b", "c:x"]), "*3\r\n$1\r\n1\r\n$1\r\n3\r\n$-1\r\n");
    let cp = Proxy::start_args(&["--upstream", &cluster.nodes[0].addr(), "--mode", "cluster"]);
    assert_eq!(cp.conn().cmd(&["MGET", "x", "y", "z"]), "*3\r\n$1\r\n2\r\n$1\r\n4\r\n$1\r\n5\r\n");

    // Pipelined with other commands, replies keep their order.
    c.send(&["GET", "a"]);
    c.send(&["MGET", "b", "c:z"]);
    c.send(&["GET", "c:y"]);
    c.send(&["DEL", "a", "c:x", "c:y", "nope"]);
    c.send(&["UNLINK", "b", "c:z"]);
    c.send(&["MGET", "a", "c:x"]);
    let replies: Vec<String> = (0..6).map(|_| String::from_utf8_lossy(&c.read_reply()).into_owned()).collect();
    assert_eq!(
        replies,
        ["$1\r\n1\r\n", "*2\r\n$1\r\n3\r\n$1\r\n5\r\n", "$1\r\n4\r\n", ":3\r\n", ":2\r\n", "*2\r\n$-1\r\n$-1\r\n"]
    );
    // Redis's own errors stay Redis's; commands that cannot be split get a clear error.
    assert_eq!(c.cmd(&["MSET", "a", "1", "c:x"]), "-ERR wrong number of arguments for 'mset' command\r\n");
    assert_eq!(
        c.cmd(&["MSETNX", "a", "1", "c:x", "2"]),
        "-CROSSSLOT Keys in request don't belong to the same route\r\n"
    );
    c.cmd(&["SET", "s", "x"]);
    c.cmd(&["SADD", "c:set", "m"]);
    assert!(c.cmd(&["MGET", "s", "c:set"]).starts_with("*2\r\n$1\r\nx\r\n"), "MGET of a set is nil, as Redis says");
    // Inside a transaction the keys must share a service.
    assert_eq!(c.cmd(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd(&["MGET", "a", "c:x"]), "-CROSSSLOT Keys in request don't belong to the same route\r\n");
    assert_eq!(c.cmd(&["DISCARD"]), "+OK\r\n");
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n");
}

/// A part whose service is unusable makes the whole command fail with that service's error,
/// and the connection goes on.
#[test]
fn a_failing_route_fails_the_split_command_with_its_error() {
    let single = Redis::start_with(&["--requirepass", "testredis"]);
    let cluster = Cluster::start_with(3, 0);
    let routes = "      - match: {key: {prefix: \"c:\"}}\n        route: {host: redis-cluster.redis.svc.cluster.local}\n      - route: {host: redis-single.redis.svc.cluster.local}\n";
    let mut proxy = Proxy::start_config(&config(&single, &cluster, routes));
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["MSET", "a", "1", "c:b", "2"]), "+OK\r\n");
    drop(single);
    proxy.allow_warning("redis-single");
    proxy.allow_warning("cannot connect");
    let reply = c.cmd(&["MGET", "a", "c:b"]);
    assert!(reply.starts_with("-ERR respmesh: "), "{reply}");
    assert!(reply.contains("redis-single"), "{reply}");
    assert_eq!(c.cmd(&["GET", "c:b"]), "$1\r\n2\r\n");
}
