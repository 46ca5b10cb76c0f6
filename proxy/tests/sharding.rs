//! PROXY mode with several endpoints: keys sharded over standalone Redis servers by
//! consistent hashing (docs/config.md describes the algorithm).

mod support;

use support::{Conn, Proxy, Redis};

fn config(endpoints: &[String], extra: &str) -> String {
    format!(
        "apiVersion: proxy.respmesh.io/v1alpha1\nkind: ProxyConfig\n\
         listeners: [{{address: \"127.0.0.1:0\", service: shards}}]\n\
         services:\n  - host: shards\n    endpoints: {endpoints:?}\n{extra}"
    )
}

fn fill(c: &mut Conn, n: usize) {
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend(Conn::encode(&[b"SET", format!("user:{i}").as_bytes(), b"v"]));
    }
    c.send_raw(&batch);
    for _ in 0..n {
        assert_eq!(c.read_reply(), b"+OK\r\n");
    }
}

#[test]
fn keys_spread_over_the_endpoints_and_read_back() {
    let servers: Vec<Redis> = (0..3).map(|_| Redis::start()).collect();
    let endpoints: Vec<String> = servers.iter().map(Redis::addr).collect();
    let proxy = Proxy::start_config(&config(&endpoints, ""));
    let mut c = proxy.conn();
    fill(&mut c, 3000);
    for s in &servers {
        let n: usize = s.conn().cmd(&["DBSIZE"]).trim_start_matches(':').trim().parse().unwrap();
        assert!((600..1400).contains(&n), "uneven: {n} of 3000 on {}", s.addr());
    }
    assert_eq!(c.cmd(&["DBSIZE"]), ":3000\r\n");
    assert_eq!(c.cmd(&["GET", "user:17"]), "$1\r\nv\r\n");
    assert_eq!(
        c.cmd(&["MGET", "user:1", "user:2", "nope", "user:3"]),
        "*4\r\n$1\r\nv\r\n$1\r\nv\r\n$-1\r\n$1\r\nv\r\n"
    );
    assert_eq!(c.cmd(&["DEL", "user:1", "user:2", "nope"]), ":2\r\n");
    assert_eq!(c.cmd(&["RENAME", "user:3", "user:4"]), "-CROSSSLOT Keys in request don't hash to the same slot\r\n");
}

#[test]
fn hash_tags_keep_keys_together_when_enabled() {
    let servers: Vec<Redis> = (0..3).map(|_| Redis::start()).collect();
    let endpoints: Vec<String> = servers.iter().map(Redis::addr).collect();
    let proxy = Proxy::start_config(&config(&endpoints, "    enableHashtagging: true\n"));
    let mut c = proxy.conn();
    for i in 0..50 {
        assert_eq!(c.cmd(&["SET", &format!("{{cart:9}}:item{i}"), "1"]), "+OK\r\n");
    }
    let holders = servers.iter().filter(|s| s.conn().cmd(&["DBSIZE"]) != ":0\r\n").count();
    assert_eq!(holders, 1, "all keys of one tag on one endpoint");
    assert_eq!(c.cmd(&["RENAME", "{cart:9}:item1", "{cart:9}:renamed"]), "+OK\r\n");
}

#[test]
fn adding_an_endpoint_moves_about_a_quarter_of_the_keys() {
    let servers: Vec<Redis> = (0..4).map(|_| Redis::start()).collect();
    let endpoints: Vec<String> = servers.iter().map(Redis::addr).collect();
    let proxy = Proxy::start_config(&config(&endpoints[..3], ""));
    let mut c = proxy.conn();
    fill(&mut c, 4000);
    proxy.rewrite_config(&config(&endpoints, ""));
    assert!(proxy.wait_log("configuration reloaded", std::time::Duration::from_secs(5)));
    // Keys now mapped to the new (empty) endpoint read as missing; all others are found.
    let mut batch = Vec::new();
    for i in 0..4000 {
        batch.extend(Conn::encode(&[b"EXISTS", format!("user:{i}").as_bytes()]));
    }
    c.send_raw(&batch);
    let missing = (0..4000).filter(|_| c.read_reply() == b":0\r\n").count();
    let share = missing as f64 / 4000.0;
    assert!((0.15..0.35).contains(&share), "moved share {share}");
    let on_new: usize = servers[3].conn().cmd(&["DBSIZE"]).trim_start_matches(':').trim().parse().unwrap();
    assert_eq!(on_new, 0, "nothing was written to the new endpoint by reading");
}
