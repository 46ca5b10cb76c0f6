//! CLUSTER mode against a real 6-node Redis Cluster (3 primaries, 3 replicas) on loopback:
//! a plain client sees one Redis.

mod support;

use std::time::Duration;

use support::{Cluster, Conn, Proxy};

/// A configuration file for one CLUSTER service over `cluster`, with extra service fields.
fn cluster_config(cluster: &Cluster, extra: &str) -> String {
    format!(
        "apiVersion: proxy.respmesh.io/v1alpha1\nkind: ProxyConfig\n\
         listeners: [{{address: \"127.0.0.1:0\", service: redis-cluster}}]\n\
         services:\n  - host: redis-cluster\n    mode: CLUSTER\n    endpoints: {:?}\n{extra}",
        cluster.addrs()
    )
}

fn proxy_for(cluster: &Cluster) -> Proxy {
    Proxy::start_args(&["--upstream", &cluster.nodes[0].addr(), "--mode", "cluster"])
}

/// CLUSTER KEYSLOT as the cluster computes it.
fn slot_of(cluster: &Cluster, key: &str) -> u16 {
    let r = cluster.nodes[0].conn().cmd(&["CLUSTER", "KEYSLOT", key]);
    r.trim_start_matches(':').trim().parse().unwrap()
}

#[test]
fn scenario_3_a_plain_client_gets_moved_directly_and_ok_through_the_proxy() {
    let cluster = Cluster::start();
    let slot = slot_of(&cluster, "foo");
    let owner = cluster.primary_for(slot);
    let other =
        cluster.nodes.iter().find(|n| n.port != owner.port && !n.conn().cmd(&["ROLE"]).contains("slave")).unwrap();
    assert_eq!(other.conn().cmd(&["SET", "foo", "bar"]), format!("-MOVED {slot} {}\r\n", owner.addr()));

    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "foo", "bar"]), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", "foo"]), "$3\r\nbar\r\n");
    assert_eq!(owner.conn().cmd(&["GET", "foo"]), "$3\r\nbar\r\n", "stored on the slot's owner");
}

#[test]
fn keys_over_every_slot_land_on_their_owners() {
    let cluster = Cluster::start();
    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();
    // One pipeline of 2,000 SETs over all three shards, then the GETs.
    let mut batch = Vec::new();
    for i in 0..2000 {
        batch.extend(support::Conn::encode(&[b"SET", format!("key:{i}").as_bytes(), format!("v{i}").as_bytes()]));
    }
    c.send_raw(&batch);
    for _ in 0..2000 {
        assert_eq!(c.read_reply(), b"+OK\r\n");
    }
    for i in (0..2000).step_by(97) {
        let want = format!("v{i}");
        assert_eq!(c.cmd(&["GET", &format!("key:{i}")]), format!("${}\r\n{want}\r\n", want.len()));
    }
    assert_eq!(c.cmd(&["DBSIZE"]), ":2000\r\n", "DBSIZE adds up every primary");
    // Every primary holds some of them.
    let mut per_primary = Vec::new();
    for n in &cluster.nodes {
        if n.conn().cmd(&["ROLE"]).contains("master") {
            per_primary.push(n.conn().cmd(&["DBSIZE"]));
        }
    }
    assert_eq!(per_primary.len(), 3);
    assert!(per_primary.iter().all(|d| d != ":0\r\n"), "{per_primary:?}");
}

#[test]
fn multi_key_commands_are_split_by_slot_and_merged() {
    let cluster = Cluster::start();
    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["MSET", "a", "1", "b", "2", "c", "3", "d", "4"]), "+OK\r\n");
    assert_eq!(
        c.cmd(&["MGET", "d", "missing", "a", "c", "b"]),
        "*5\r\n$1\r\n4\r\n$-1\r\n$1\r\n1\r\n$1\r\n3\r\n$1\r\n2\r\n"
    );
    assert_eq!(c.cmd(&["EXISTS", "a", "b", "missing", "a"]), ":3\r\n");
    assert_eq!(c.cmd(&["TOUCH", "a", "b", "c"]), ":3\r\n");
    assert_eq!(c.cmd(&["DEL", "a", "b", "missing"]), ":2\r\n");
    assert_eq!(c.cmd(&["UNLINK", "c", "d"]), ":2\r\n");
    assert_eq!(c.cmd(&["MGET", "a", "b", "c", "d"]), "*4\r\n$-1\r\n$-1\r\n$-1\r\n$-1\r\n");
    // A value missing: the same arity error as Redis, not a split.
    assert_eq!(c.cmd(&["MSET", "a", "1", "b"]), "-ERR wrong number of arguments for 'mset' command\r\n");
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n");
}

#[test]
fn commands_whose_keys_must_share_a_slot_get_crossslot_unless_they_do() {
    let cluster = Cluster::start();
    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();
    c.cmd(&["SET", "a", "1"]);
    assert_eq!(c.cmd(&["RENAME", "a", "b"]), "-CROSSSLOT Keys in request don't hash to the same slot\r\n");
    assert_eq!(c.cmd(&["MSETNX", "x", "1", "y", "2"]), "-CROSSSLOT Keys in request don't hash to the same slot\r\n");
    assert_eq!(c.cmd(&["SET", "{user1}.name", "ann"]), "+OK\r\n");
    assert_eq!(c.cmd(&["RENAME", "{user1}.name", "{user1}.nick"]), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", "{user1}.nick"]), "$3\r\nann\r\n");
    assert_eq!(c.cmd(&["EVAL", "return redis.call('GET', KEYS[1])", "1", "{user1}.nick"]), "$3\r\nann\r\n");
    assert_eq!(c.cmd(&["SELECT", "1"]), "-ERR SELECT is not allowed in cluster mode\r\n");
    assert_eq!(c.cmd(&["SELECT", "0"]), "+OK\r\n");
}

#[test]
fn keyless_commands_answer_for_the_whole_cluster() {
    let cluster = Cluster::start();
    // The proxy's first topology then lists the replicas too (CONFIG SET reaches them).
    cluster.wait_replicas_online(1, Duration::from_secs(20));
    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n");
    assert_eq!(c.cmd(&["ECHO", "hi"]), "$2\r\nhi\r\n");
    for k in ["k1", "k2", "k3", "k4", "k5", "k6"] {
        c.cmd(&["SET", k, "v"]);
    }
    let keys = c.cmd(&["KEYS", "k*"]);
    assert!(keys.starts_with("*6\r\n"), "{keys}");
    for k in ["k1", "k2", "k3", "k4", "k5", "k6"] {
        assert!(keys.contains(&format!("${}\r\n{k}\r\n", k.len())), "{keys}");
    }
    assert_eq!(c.cmd(&["DBSIZE"]), ":6\r\n");
    let info = c.cmd(&["INFO", "keyspace"]);
    assert!(info.contains("db0:keys=6,expires=0,avg_ttl=0"), "{info}");
    // A setting changes on every node, replicas too, as on one Redis.
    assert_eq!(c.cmd(&["CONFIG", "SET", "slowlog-max-len", "77"]), "+OK\r\n");
    for n in &cluster.nodes {
        assert_eq!(n.conn().cmd(&["CONFIG", "GET", "slowlog-max-len"]), "*2\r\n$15\r\nslowlog-max-len\r\n$2\r\n77\r\n");
    }
    let info = c.cmd(&["INFO"]);
    assert!(info.contains("\r\ndb0:keys=6,expires=0,avg_ttl=0\r\n"), "the whole INFO counts every key: {info}");
    assert!(info.contains("redis_mode:standalone\r\n") && info.contains("cluster_enabled:0\r\n"), "{info}");
    c.cmd(&["DEL", "k1", "k2", "k3", "k4", "k5"]);
    for _ in 0..10 {
        // One key left, on one of the three primaries: RANDOMKEY finds it every time.
        assert_eq!(c.cmd(&["RANDOMKEY"]), "$2\r\nk6\r\n");
    }
    assert_eq!(c.cmd(&["FLUSHALL"]), "+OK\r\n");
    assert_eq!(c.cmd(&["DBSIZE"]), ":0\r\n");
    assert_eq!(c.cmd(&["RANDOMKEY"]), "$-1\r\n");
    let sha = c.cmd(&["SCRIPT", "LOAD", "return 7"]);
    assert!(sha.starts_with("$40\r\n"), "{sha}");
    let sha = sha.lines().nth(1).unwrap().to_owned();
    // Loaded on every primary: EVALSHA works whichever node the key selects.
    for k in ["a", "b", "c", "d"] {
        assert_eq!(c.cmd(&["EVALSHA", &sha, "1", k]), ":7\r\n");
    }
}

#[test]
fn moved_and_ask_are_followed_without_the_client_seeing_them() {
    let cluster = Cluster::start();
    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "warmup", "1"]), "+OK\r\n");
    let slot = slot_of(&cluster, "foo");
    let source = cluster.primary_for(slot);
    let target =
        cluster.nodes.iter().find(|n| n.port != source.port && n.conn().cmd(&["ROLE"]).contains("master")).unwrap();
    let id = |n: &support::Redis| n.conn().cmd(&["CLUSTER", "MYID"]).lines().nth(1).unwrap().to_owned();
    let (source_id, target_id) = (id(source), id(target));

    // ASK: the slot is migrating and the key is not on the source (yet).
    assert_eq!(target.conn().cmd(&["CLUSTER", "SETSLOT", &slot.to_string(), "IMPORTING", &source_id]), "+OK\r\n");
    assert_eq!(source.conn().cmd(&["CLUSTER", "SETSLOT", &slot.to_string(), "MIGRATING", &target_id]), "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "foo", "asked"]), "+OK\r\n");
    assert_eq!(target.conn().cmd(&["ASKING"]), "+OK\r\n");
    // MOVED: the migration completes; the proxy's map still says `source`.
    for n in &cluster.nodes {
        n.conn().cmd(&["CLUSTER", "SETSLOT", &slot.to_string(), "NODE", &target_id]);
    }
    assert_eq!(c.cmd(&["GET", "foo"]), "$5\r\nasked\r\n");
    assert_eq!(c.cmd(&["SET", "foo", "moved"]), "+OK\r\n");
    let mut direct = target.conn();
    assert_eq!(direct.cmd(&["GET", "foo"]), "$5\r\nmoved\r\n");
    std::thread::sleep(Duration::from_millis(300));
    assert!(proxy.log().contains("cluster topology updated"), "{}", proxy.log());
}

/// Redirected requests in the middle of a pipeline: the node's replies to the requests around
/// them come in the same read, and each redirected request goes again as itself, in order.
#[test]
fn moved_requests_in_the_middle_of_a_pipeline_go_again_as_themselves() {
    let cluster = Cluster::start_with(3, 0);
    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "warmup", "1"]), "+OK\r\n");
    let slot = slot_of(&cluster, "{m}");
    let source = cluster.primary_for(slot);
    let target = cluster.nodes.iter().find(|n| n.port != source.port).unwrap();
    // Keys that stay on `source`, in other slots than the one that moves.
    let stay: Vec<String> = (0..10_000)
        .map(|i| format!("stay:{i}"))
        .filter(|k| {
            let s = slot_of(&cluster, k);
            s != slot && cluster.primary_for(s).port == source.port
        })
        .take(3)
        .collect();
    let target_id = target.conn().cmd(&["CLUSTER", "MYID"]).lines().nth(1).unwrap().to_owned();
    // The slot (empty) moves; the proxy's map still says `source`.
    for n in &cluster.nodes {
        assert_eq!(n.conn().cmd(&["CLUSTER", "SETSLOT", &slot.to_string(), "NODE", &target_id]), "+OK\r\n");
    }
    let pipeline: Vec<Vec<&str>> = vec![
        vec!["SET", &stay[0], "a"],
        vec!["SET", "{m}1", "one"],
        vec!["SET", &stay[1], "bb"],
        vec!["SET", "{m}2", "two"],
        vec!["GET", &stay[0]],
        vec!["APPEND", "{m}1", "+"],
        vec!["GET", &stay[1]],
        vec!["GET", "{m}1"],
        vec!["SET", &stay[2], "ccc"],
    ];
    let mut bytes = Vec::new();
    for cmd in &pipeline {
        let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_bytes()).collect();
        bytes.extend(support::Conn::encode(&args));
    }
    c.send_raw(&bytes);
    let replies: Vec<String> = pipeline.iter().map(|_| String::from_utf8(c.read_reply()).unwrap()).collect();
    assert_eq!(
        replies,
        [
            "+OK\r\n",
            "+OK\r\n",
            "+OK\r\n",
            "+OK\r\n",
            "$1\r\na\r\n",
            ":4\r\n",
            "$2\r\nbb\r\n",
            "$4\r\none+\r\n",
            "+OK\r\n"
        ]
    );
    let mut t = target.conn();
    assert_eq!(t.cmd(&["GET", "{m}1"]), "$4\r\none+\r\n");
    assert_eq!(t.cmd(&["GET", "{m}2"]), "$3\r\ntwo\r\n");
    let mut s = source.conn();
    assert_eq!(s.cmd(&["GET", &stay[2]]), "$3\r\nccc\r\n");
}

#[test]
fn an_unreachable_cluster_is_reported_clearly() {
    let port = support::free_port();
    let mut proxy = Proxy::start_args(&["--upstream", &format!("127.0.0.1:{port}"), "--mode", "cluster"]);
    proxy.allow_warning("cannot refresh the cluster topology");
    let mut c = proxy.conn();
    let reply = c.cmd(&["GET", "k"]);
    assert!(reply.starts_with("-CLUSTERDOWN respmesh: cannot learn the topology of 127.0.0.1:"), "{reply}");
    assert!(reply.contains("Connection refused"), "{reply}");
}

#[test]
fn a_primary_killed_under_load_is_replaced_by_its_promoted_replica() {
    let mut cluster = Cluster::start();
    cluster.wait_replicas_online(1, Duration::from_secs(20));
    let yaml = cluster_config(&cluster, "    cluster: {refreshInterval: 1s}\n");
    let mut proxy = Proxy::start_config(&yaml);
    proxy.allow_warning("upstream connection lost");
    proxy.allow_warning("cannot connect to upstream");
    proxy.allow_warning("cannot refresh the cluster topology");
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "foo", "before"]), "+OK\r\n");
    let slot = slot_of(&cluster, "foo");
    let victim_port = cluster.primary_for(slot).port;
    let victim = cluster.nodes.iter_mut().find(|n| n.port == victim_port).unwrap();
    victim.kill();

    // Keep writing; within the node timeout (1 s) plus two refresh intervals the proxy must
    // serve the slot again from the promoted replica.
    let start = std::time::Instant::now();
    let mut acknowledged = Vec::new();
    let mut recovered = None;
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(15) {
        i += 1;
        let reply = c.cmd(&["SET", "foo", &format!("v{i}")]);
        if reply == "+OK\r\n" {
            acknowledged.push(i);
            if recovered.is_none() && start.elapsed() > Duration::from_millis(100) {
                recovered = Some(start.elapsed());
            }
            if acknowledged.len() > 20 && recovered.is_some() {
                break;
            }
        } else {
            assert!(reply.starts_with("-ERR respmesh: upstream") || reply.starts_with("-CLUSTERDOWN"), "{reply}");
            acknowledged.clear();
            recovered = None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = recovered.expect("the proxy did not recover");
    eprintln!("served again {took:?} after the primary was killed");
    assert!(took < Duration::from_secs(6), "recovered after {took:?}");
    let last = acknowledged.last().unwrap();
    assert_eq!(c.cmd(&["GET", "foo"]), format!("${}\r\nv{last}\r\n", format!("v{last}").len()));
}

#[test]
fn a_blocked_client_waits_on_its_keys_node_without_blocking_others() {
    let cluster = Cluster::start();
    let proxy = proxy_for(&cluster);
    let mut blocked = proxy.conn();
    blocked.send(&["BLPOP", "jobs", "0"]);
    std::thread::sleep(Duration::from_millis(100));
    let mut other = proxy.conn();
    for i in 0..50 {
        assert_eq!(other.cmd(&["SET", &format!("k{i}"), "v"]), "+OK\r\n");
    }
    assert_eq!(other.cmd(&["RPUSH", "jobs", "j1"]), ":1\r\n");
    assert_eq!(String::from_utf8_lossy(&blocked.read_reply()), "*2\r\n$4\r\njobs\r\n$2\r\nj1\r\n");
    // Pipelined after a blocking command, a command runs after it.
    blocked.send(&["BLPOP", "jobs2", "0.2"]);
    blocked.send(&["GET", "k1"]);
    assert_eq!(blocked.read_reply(), b"*-1\r\n");
    assert_eq!(blocked.read_reply(), b"$1\r\nv\r\n");
    assert_eq!(blocked.cmd(&["BLPOP", "a", "b", "0"]), "-CROSSSLOT Keys in request don't hash to the same slot\r\n");
    // Replies pipelined before a blocking command (keys on every primary) arrive while it
    // blocks, as from one Redis: they are not held for the rest of the pipeline.
    let keys = ["k1", "k2", "k3", "k4", "k5", "k6"];
    let mut pipeline = Vec::new();
    for k in keys {
        pipeline.extend(Conn::encode(&[b"GET", k.as_bytes()]));
    }
    pipeline.extend(Conn::encode(&[b"BLPOP", b"jobs3", b"0"]));
    blocked.send_raw(&pipeline);
    blocked.set_timeout(Duration::from_secs(2));
    for k in keys {
        assert_eq!(blocked.read_reply(), b"$1\r\nv\r\n", "the reply to GET {k}");
    }
    assert_eq!(other.cmd(&["RPUSH", "jobs3", "j3"]), ":1\r\n");
    assert_eq!(String::from_utf8_lossy(&blocked.read_reply()), "*2\r\n$5\r\njobs3\r\n$2\r\nj3\r\n");
}

#[test]
fn transactions_run_on_the_node_of_their_keys() {
    let cluster = Cluster::start();
    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "{acct}:a", "10"]), "+QUEUED\r\n");
    assert_eq!(c.cmd(&["INCRBY", "{acct}:a", "5"]), "+QUEUED\r\n");
    assert_eq!(c.cmd(&["SET", "{acct}:b", "x"]), "+QUEUED\r\n");
    assert_eq!(c.cmd(&["EXEC"]), "*3\r\n+OK\r\n:15\r\n+OK\r\n");
    assert_eq!(c.cmd(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd(&["EXEC"]), "*0\r\n", "an empty transaction");
    assert_eq!(c.cmd(&["EXEC"]), "-ERR EXEC without MULTI\r\n");
    assert_eq!(c.cmd(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd(&["INCR", "{acct}:a"]), "+QUEUED\r\n");
    assert_eq!(c.cmd(&["DISCARD"]), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", "{acct}:a"]), "$2\r\n15\r\n");

    // WATCH: another client's write aborts the transaction.
    let mut other = proxy.conn();
    assert_eq!(c.cmd(&["WATCH", "{acct}:a"]), "+OK\r\n");
    assert_eq!(other.cmd(&["SET", "{acct}:a", "99"]), "+OK\r\n");
    assert_eq!(c.cmd(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "{acct}:a", "0"]), "+QUEUED\r\n");
    assert_eq!(c.cmd(&["EXEC"]), "*-1\r\n");
    assert_eq!(c.cmd(&["GET", "{acct}:a"]), "$2\r\n99\r\n");

    // Transactions and blocking commands take pooled connections to their node and give them
    // back: no new connection per transaction.
    let node = cluster.primary_for(slot_of(&cluster, "{acct}:a"));
    let accepted = || {
        let info = node.conn().cmd(&["INFO", "stats"]);
        let line = info.lines().find(|l| l.starts_with("total_connections_received:")).unwrap().to_owned();
        line["total_connections_received:".len()..].trim().parse::<u64>().unwrap()
    };
    let before = accepted();
    for _ in 0..10 {
        assert_eq!(c.cmd(&["MULTI"]), "+OK\r\n");
        assert_eq!(c.cmd(&["INCR", "{acct}:a"]), "+QUEUED\r\n");
        assert!(c.cmd(&["EXEC"]).starts_with("*1\r\n:"));
        assert_eq!(c.cmd(&["BLPOP", "{acct}:q", "0.01"]), "*-1\r\n");
    }
    // One more for the INFO connection of `accepted` itself.
    assert!(accepted() - before <= 2, "20 transactions and blocking commands opened connections");
}

#[test]
fn pubsub_and_sharded_pubsub_reach_subscribers() {
    let cluster = Cluster::start();
    let proxy = proxy_for(&cluster);
    // A second sidecar in front of the same cluster: its publishers count this one's subscribers.
    let other = proxy_for(&cluster);
    let mut sub = proxy.conn();
    sub.send(&["SUBSCRIBE", "news"]);
    assert_eq!(String::from_utf8_lossy(&sub.read_reply()), "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    let mut psub = other.conn();
    psub.send(&["PSUBSCRIBE", "n*"]);
    assert_eq!(String::from_utf8_lossy(&psub.read_reply()), "*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:1\r\n");
    for (i, proxy) in [&proxy, &other, &proxy].into_iter().enumerate() {
        // As on one Redis, PUBLISH says how many received it.
        assert_eq!(proxy.conn().cmd(&["PUBLISH", "news", &format!("m{i}")]), ":2\r\n", "publish {i}");
        assert_eq!(
            String::from_utf8_lossy(&sub.read_reply()),
            format!("*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nm{i}\r\n")
        );
        assert_eq!(
            String::from_utf8_lossy(&psub.read_reply()),
            format!("*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\nm{i}\r\n")
        );
    }
    let mut publisher = other.conn();
    assert_eq!(publisher.cmd(&["PUBSUB", "NUMSUB", "news", "none"]), "*4\r\n$4\r\nnews\r\n:1\r\n$4\r\nnone\r\n:0\r\n");
    assert_eq!(publisher.cmd(&["PUBSUB", "NUMPAT"]), ":1\r\n");
    assert_eq!(publisher.cmd(&["PUBSUB", "CHANNELS"]), "*1\r\n$4\r\nnews\r\n");
    let mut ssub = proxy.conn();
    ssub.send(&["SSUBSCRIBE", "orders"]);
    assert_eq!(String::from_utf8_lossy(&ssub.read_reply()), "*3\r\n$10\r\nssubscribe\r\n$6\r\norders\r\n:1\r\n");
    let mut ssub2 = other.conn();
    ssub2.send(&["SSUBSCRIBE", "invoices"]);
    assert_eq!(String::from_utf8_lossy(&ssub2.read_reply()), "*3\r\n$10\r\nssubscribe\r\n$8\r\ninvoices\r\n:1\r\n");
    assert_eq!(publisher.cmd(&["SPUBLISH", "orders", "o1"]), ":1\r\n");
    assert_eq!(String::from_utf8_lossy(&ssub.read_reply()), "*3\r\n$8\r\nsmessage\r\n$6\r\norders\r\n$2\r\no1\r\n");
    // The two sharded channels live on different primaries; the counts cover both.
    let owner = |channel: &str| cluster.primary_for(slot_of(&cluster, channel)).port;
    assert_ne!(owner("orders"), owner("invoices"), "channels on different primaries");
    assert_eq!(
        publisher.cmd(&["PUBSUB", "SHARDNUMSUB", "orders", "invoices", "none"]),
        "*6\r\n$6\r\norders\r\n:1\r\n$8\r\ninvoices\r\n:1\r\n$4\r\nnone\r\n:0\r\n"
    );
    // In primary order: either way round.
    let channels = publisher.cmd(&["PUBSUB", "SHARDCHANNELS"]);
    assert!(
        ["*2\r\n$6\r\norders\r\n$8\r\ninvoices\r\n", "*2\r\n$8\r\ninvoices\r\n$6\r\norders\r\n"]
            .contains(&channels.as_str()),
        "{channels:?}"
    );
    // Subscribers that quit or leave are unsubscribed on the node too.
    sub.send(&["QUIT"]);
    assert_eq!(sub.read_reply(), b"+OK\r\n");
    assert!(sub.is_closed());
    drop(psub);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while publisher.cmd(&["PUBLISH", "news", "anyone?"]) != ":0\r\n" {
        assert!(std::time::Instant::now() < deadline, "subscribers still counted after they left");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_transaction_over_keys_of_two_slots_gets_crossslot_wherever_they_live() {
    let cluster = Cluster::start();
    let proxy = proxy_for(&cluster);
    // k1 and k2: two slots of one node; k3: a slot of another node.
    let keys: Vec<String> = (0..100).map(|i| format!("tx{i}")).collect();
    let node = |k: &str| cluster.primary_for(slot_of(&cluster, k)).port;
    let k1 = keys[0].as_str();
    let k2 = keys.iter().find(|k| node(k) == node(k1) && slot_of(&cluster, k) != slot_of(&cluster, k1)).unwrap();
    let k3 = keys.iter().find(|k| node(k) != node(k1)).unwrap();
    let mut c = proxy.conn();
    let run = |c: &mut Conn, cmds: &[&[&str]]| -> Vec<String> { cmds.iter().map(|cmd| c.cmd(cmd)).collect() };
    for other in [k2.as_str(), k3.as_str()] {
        // Redis answers this way when the slots share a node; through the proxy it does not
        // matter where they live.
        assert_eq!(
            run(&mut c, &[&["MULTI"], &["SET", k1, "1"], &["SET", other, "2"], &["EXEC"]]),
            ["+OK\r\n", "+QUEUED\r\n", "+QUEUED\r\n", "-CROSSSLOT Keys in request don't hash to the same slot\r\n"],
            "{other}"
        );
        assert_eq!(c.cmd(&["EXISTS", k1, other]), ":0\r\n", "nothing ran");
    }
    // A command refused while queued: EXEC refuses the whole transaction.
    assert_eq!(
        run(&mut c, &[&["MULTI"], &["SET", k1, "1"], &["MSET", k1, "1", k3, "2"], &["EXEC"]]),
        [
            "+OK\r\n",
            "+QUEUED\r\n",
            "-CROSSSLOT Keys in request don't hash to the same slot\r\n",
            "-EXECABORT Transaction discarded because of previous errors.\r\n"
        ]
    );
    // Keys of two nodes cannot be watched together, and the transaction does not run unwatched.
    assert_eq!(
        run(&mut c, &[&["WATCH", k1], &["WATCH", k3], &["MULTI"], &["SET", k1, "1"], &["EXEC"]]),
        [
            "+OK\r\n",
            "-CROSSSLOT Keys in request don't hash to the same slot\r\n",
            "+OK\r\n",
            "+QUEUED\r\n",
            "-CROSSSLOT Keys in request don't hash to the same slot\r\n"
        ]
    );
    assert_eq!(c.cmd(&["EXISTS", k1]), ":0\r\n");
    // The connection is clean afterwards, and one slot's transaction runs.
    assert_eq!(
        run(&mut c, &[&["MULTI"], &["SET", k1, "1"], &["INCR", k1], &["EXEC"]]),
        ["+OK\r\n", "+QUEUED\r\n", "+QUEUED\r\n", "*2\r\n+OK\r\n:2\r\n"]
    );
    // Keyless commands first: the first key decides, and the rest must follow it.
    assert_eq!(
        run(&mut c, &[&["MULTI"], &["PING"], &["GET", k1], &["GET", k3], &["EXEC"]])[4],
        "-CROSSSLOT Keys in request don't hash to the same slot\r\n"
    );
    assert_eq!(c.cmd(&["GET", k1]), "$1\r\n2\r\n");
}

#[test]
fn cluster_commands_get_what_one_redis_answers_except_those_about_keys_and_slots() {
    let cluster = Cluster::start_with(3, 0);
    let proxy = proxy_for(&cluster);
    let standalone = support::Redis::start();
    let mut plain = standalone.conn();
    let mut c = proxy.conn();
    // Topology and administration: refused as by a standalone Redis, so that no client learns
    // the nodes' addresses and goes around the proxy, and no node is reset or failed over.
    for cmd in [
        &["CLUSTER", "SLOTS"][..],
        &["CLUSTER", "shards"],
        &["CLUSTER", "NODES"],
        &["CLUSTER", "INFO"],
        &["CLUSTER", "MYID"],
        &["CLUSTER", "HELP"],
        &["CLUSTER", "RESET", "HARD"],
        &["CLUSTER", "FAILOVER", "FORCE"],
    ] {
        let want = plain.cmd(cmd);
        assert_eq!(want, "-ERR This instance has cluster support disabled\r\n", "{cmd:?}");
        assert_eq!(c.cmd(cmd), want, "{cmd:?}");
    }
    assert_eq!(c.cmd(&["CLUSTER", "NOSUCH"]), plain.cmd(&["CLUSTER", "NOSUCH"]));
    assert_eq!(c.cmd(&["INFO", "cluster"]), plain.cmd(&["INFO", "cluster"]));
    // Keys and slots: answered as the cluster would, by the slot's node.
    let node = cluster.nodes[0].conn().cmd(&["CLUSTER", "KEYSLOT", "{t}a"]);
    assert_eq!(c.cmd(&["CLUSTER", "KEYSLOT", "{t}a"]), node);
    let slot = slot_of(&cluster, "{t}a").to_string();
    for (k, _) in key_per_primary(&cluster) {
        let slot = slot_of(&cluster, &k).to_string();
        assert_eq!(c.cmd(&["SET", &k, "v"]), "+OK\r\n");
        assert_eq!(c.cmd(&["CLUSTER", "COUNTKEYSINSLOT", &slot]), ":1\r\n", "{k}");
        assert_eq!(c.cmd(&["CLUSTER", "GETKEYSINSLOT", &slot, "10"]), format!("*1\r\n${}\r\n{k}\r\n", k.len()));
    }
    for k in ["{t}a", "{t}b", "{t}c"] {
        c.cmd(&["SET", k, "v"]);
    }
    assert_eq!(c.cmd(&["CLUSTER", "COUNTKEYSINSLOT", &slot]), ":3\r\n");
    assert_eq!(c.cmd(&["CLUSTER", "COUNTKEYSINSLOT", "16384"]), "-ERR Invalid slot\r\n");
    assert_eq!(c.cmd(&["CLUSTER", "COUNTKEYSINSLOT", "x"]), "-ERR value is not an integer or out of range\r\n");
}

#[test]
fn unsubscribing_from_nothing_is_answered_once_per_channel_as_by_one_redis() {
    let cluster = Cluster::start_with(3, 0);
    let proxy = proxy_for(&cluster);
    let one = support::Redis::start();
    support::unsubscribing_from_nothing_is_answered_as_by_redis(&proxy, &one);
}

#[test]
fn random_pipelines_of_every_command_keep_every_reply_in_place() {
    let cluster = Cluster::start_with(3, 0);
    let mut proxy = proxy_for(&cluster);
    proxy.allow_warning("protocol error");
    support::random_pipelines_keep_every_reply_in_place(&proxy, 12, true);
}

#[test]
fn a_tracking_client_that_pipelines_hello_2_behind_its_reads_gets_every_reply() {
    let cluster = Cluster::start_with(3, 0);
    let proxy = proxy_for(&cluster);
    let keys = key_per_primary(&cluster);
    let mut c = proxy.conn();
    c.cmd(&["HELLO", "3"]);
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "on"]), "+OK\r\n");
    let mut batch: Vec<u8> = keys.iter().flat_map(|(k, _)| Conn::encode(&[b"GET", k.as_bytes()])).collect();
    batch.extend(Conn::encode(&[b"HELLO", b"2"]));
    batch.extend(Conn::encode(&[b"ECHO", b"after"]));
    c.send_raw(&batch);
    for (k, _) in &keys {
        assert_eq!(c.read_reply(), b"_\r\n", "{k}");
    }
    assert!(c.read_reply().starts_with(b"*14\r\n"));
    assert_eq!(c.read_reply(), b"$5\r\nafter\r\n");
}

#[test]
fn commands_between_watch_and_multi_run_as_on_one_redis() {
    let cluster = Cluster::start_with(3, 0);
    let proxy = proxy_for(&cluster);
    let keys = key_per_primary(&cluster);
    let (a, b) = (keys[0].0.as_str(), keys[1].0.as_str());
    let mut c = proxy.conn();
    let mut other = proxy.conn();
    let run = |c: &mut Conn, cmds: &[&[&str]]| -> Vec<String> {
        let mut batch = Vec::new();
        for cmd in cmds {
            batch.extend(Conn::encode(&cmd.iter().map(|a| a.as_bytes()).collect::<Vec<_>>()));
        }
        c.send_raw(&batch);
        cmds.iter().map(|_| String::from_utf8_lossy(&c.read_reply()).into_owned()).collect()
    };
    // A command on another node's key runs (it is not queued: there is no MULTI yet).
    assert_eq!(other.cmd(&["SET", b, "1"]), "+OK\r\n");
    assert_eq!(c.cmd(&["WATCH", a]), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", b]), "$1\r\n1\r\n");
    assert_eq!(c.cmd(&["INCR", b]), ":2\r\n");
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n");
    assert_eq!(run(&mut c, &[&["MULTI"], &["SET", a, "x"], &["EXEC"]]), ["+OK\r\n", "+QUEUED\r\n", "*1\r\n+OK\r\n"]);
    // The client's own write to the watched key, pipelined before MULTI, makes EXEC fail, as
    // on Redis: it reaches Redis before the transaction does.
    for _ in 0..10 {
        let replies = run(&mut c, &[&["WATCH", a], &["SET", a, "mine"], &["MULTI"], &["SET", a, "tx"], &["EXEC"]]);
        assert_eq!(replies, ["+OK\r\n", "+OK\r\n", "+OK\r\n", "+QUEUED\r\n", "*-1\r\n"]);
        assert_eq!(c.cmd(&["GET", a]), "$4\r\nmine\r\n");
    }
    // Another client's write to it, too.
    assert_eq!(c.cmd(&["WATCH", a]), "+OK\r\n");
    assert_eq!(other.cmd(&["SET", a, "theirs"]), "+OK\r\n");
    assert_eq!(run(&mut c, &[&["MULTI"], &["SET", a, "tx"], &["EXEC"]]), ["+OK\r\n", "+QUEUED\r\n", "*-1\r\n"]);
    // A blocking command blocks on WATCH's node; on another node's keys it is refused.
    assert_eq!(c.cmd(&["WATCH", a]), "+OK\r\n");
    assert_eq!(c.cmd(&["BLPOP", &format!("{{{a}}}list"), "0.1"]), "*-1\r\n");
    let refused = c.cmd(&["BLPOP", b, "0.1"]);
    assert!(refused.starts_with("-ERR respmesh: in CLUSTER mode a blocking command"), "{refused}");
    assert_eq!(
        run(&mut c, &[&["MULTI"], &["GET", a], &["EXEC"]]),
        ["+OK\r\n", "+QUEUED\r\n", "*1\r\n$6\r\ntheirs\r\n"]
    );
    // SELECT 0 while watching or inside a transaction leaves nothing behind.
    assert_eq!(run(&mut c, &[&["WATCH", a], &["SELECT", "0"], &["UNWATCH"]]), ["+OK\r\n", "+OK\r\n", "+OK\r\n"]);
    for (k, _) in &keys {
        assert_eq!(c.cmd(&["SET", k, "after"]), "+OK\r\n", "{k}");
    }
    assert_eq!(
        run(&mut c, &[&["MULTI"], &["SELECT", "0"], &["SET", a, "s"], &["EXEC"]]),
        ["+OK\r\n", "+QUEUED\r\n", "+QUEUED\r\n", "*2\r\n+OK\r\n+OK\r\n"]
    );
    assert_eq!(run(&mut c, &[&["MULTI"], &["GET", a], &["SELECT", "0"], &["DISCARD"]])[3], "+OK\r\n");
    for (k, _) in &keys {
        assert_eq!(c.cmd(&["SET", k, "after"]), "+OK\r\n", "{k}");
    }
}

#[test]
fn a_transaction_that_begins_without_keys_runs_on_the_node_of_its_first_key() {
    let cluster = Cluster::start_with(3, 0);
    let proxy = proxy_for(&cluster);
    let keys = key_per_primary(&cluster);
    let transaction = |k: &str| -> Vec<Vec<u8>> {
        [&["MULTI"][..], &["PING"], &["ECHO", "hi"], &["SET", k, "1"], &["INCR", k], &["TIME"], &["EXEC"]]
            .iter()
            .map(|cmd| Conn::encode(&cmd.iter().map(|a| a.as_bytes()).collect::<Vec<_>>()))
            .collect()
    };
    let check = |replies: &[String], k: &str, how: &str| {
        assert_eq!(
            replies[..6],
            ["+OK\r\n", "+QUEUED\r\n", "+QUEUED\r\n", "+QUEUED\r\n", "+QUEUED\r\n", "+QUEUED\r\n"],
            "{how} {k}"
        );
        assert!(replies[6].starts_with("*5\r\n+PONG\r\n$2\r\nhi\r\n+OK\r\n:2\r\n*2\r\n"), "{how} {k}: {}", replies[6]);
    };
    for proto in ["2", "3"] {
        let mut c = proxy.conn();
        c.cmd(&["HELLO", proto]);
        // Whichever node the keys live on, one command at a time and all at once.
        for (k, _) in &keys {
            let replies: Vec<String> = transaction(k)
                .iter()
                .map(|frame| {
                    c.send_raw(frame);
                    String::from_utf8_lossy(&c.read_reply()).into_owned()
                })
                .collect();
            check(&replies, k, "one at a time");
            assert_eq!(c.cmd(&["GET", k]), "$1\r\n2\r\n");
            c.send_raw(&transaction(k).concat());
            let replies: Vec<String> = (0..7).map(|_| String::from_utf8_lossy(&c.read_reply()).into_owned()).collect();
            check(&replies, k, "pipelined");
        }
        // A command refused while queued still aborts the transaction after the move.
        let k = &keys[2].0;
        assert_eq!(c.cmd(&["MULTI"]), "+OK\r\n");
        let refused = c.cmd(&["TIME", "x"]);
        assert!(refused.starts_with("-ERR wrong number of arguments"), "{refused}");
        assert_eq!(c.cmd(&["SET", k, "x"]), "+QUEUED\r\n");
        assert_eq!(c.cmd(&["EXEC"]), "-EXECABORT Transaction discarded because of previous errors.\r\n");
        assert_eq!(c.cmd(&["GET", k]), "$1\r\n2\r\n", "nothing ran");
        // DISCARD after the move discards on the key's node.
        assert_eq!(c.cmd(&["MULTI"]), "+OK\r\n");
        assert_eq!(c.cmd(&["PING"]), "+QUEUED\r\n");
        assert_eq!(c.cmd(&["SET", k, "y"]), "+QUEUED\r\n");
        assert_eq!(c.cmd(&["DISCARD"]), "+OK\r\n");
        assert_eq!(c.cmd(&["GET", k]), "$1\r\n2\r\n", "nothing ran");
    }
    // A client with CLIENT TRACKING runs its transactions on connections of its own to the
    // nodes: the node the transaction left is not left inside MULTI.
    let mut c = proxy.conn();
    c.cmd(&["HELLO", "3"]);
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "on"]), "+OK\r\n");
    for _ in 0..2 {
        for (k, _) in &keys {
            c.send_raw(&transaction(k).concat());
            let replies: Vec<String> = (0..7).map(|_| String::from_utf8_lossy(&c.read_reply()).into_owned()).collect();
            check(&replies, k, "tracking");
        }
    }
    for (k, _) in &keys {
        assert_eq!(c.cmd(&["GET", k]), "$1\r\n2\r\n");
    }
}

#[test]
fn a_publish_right_after_a_subscribe_reaches_the_new_subscriber() {
    let cluster = Cluster::start();
    let proxy = proxy_for(&cluster);
    support::publish_right_after_subscribe_reaches_the_subscriber(&proxy);
}

#[test]
fn scan_walks_every_primary_with_one_cursor() {
    let cluster = Cluster::start();
    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();
    let mut batch = Vec::new();
    for i in 0..300 {
        batch.extend(support::Conn::encode(&[b"SET", format!("scan:{i}").as_bytes(), b"v"]));
    }
    c.send_raw(&batch);
    for _ in 0..300 {
        c.read_reply();
    }
    let mut seen = std::collections::HashSet::new();
    let mut cursor = "0".to_owned();
    let mut rounds = 0;
    loop {
        let reply = c.cmd(&["SCAN", &cursor, "MATCH", "scan:*", "COUNT", "50"]);
        let lines: Vec<&str> = reply.split("\r\n").collect();
        cursor = lines[2].to_owned();
        for pair in lines[4..].chunks(2) {
            if let [_, key] = pair
                && !key.is_empty()
            {
                seen.insert(key.to_string());
            }
        }
        rounds += 1;
        assert!(rounds < 1000, "SCAN does not end");
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), 300, "every key once at least");
    assert_eq!(c.cmd(&["SCAN", "abc"]), "-ERR invalid cursor\r\n");
}

#[test]
fn read_policy_replica_sends_reads_to_replicas_and_writes_to_primaries() {
    let cluster = Cluster::start();
    cluster.wait_replicas_online(1, Duration::from_secs(20));
    let yaml = cluster_config(&cluster, "    readPolicy: REPLICA\n    cluster: {refreshInterval: 500ms}\n");
    let proxy = Proxy::start_config(&yaml);
    let mut c = proxy.conn();
    // The topology must list the replicas: wait for a refresh that sees them.
    let primary = cluster.primary_for(slot_of(&cluster, "k"));
    let primary_id = primary.conn().cmd(&["CLUSTER", "MYID"]).lines().nth(1).unwrap().to_owned();
    let replicas = primary.conn().cmd(&["CLUSTER", "REPLICAS", &primary_id]);
    let replica_port: u16 = replicas.split([' ', ':', '@']).nth(2).and_then(|p| p.parse().ok()).expect("a replica");
    let replica = cluster.nodes.iter().find(|n| n.port == replica_port).unwrap();
    assert_eq!(c.cmd(&["SET", "k", "v1"]), "+OK\r\n");
    let calls = |n: &support::Redis, cmd: &str| -> u64 {
        let stats = n.conn().cmd(&["INFO", "commandstats"]);
        stats
            .lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = c.cmd(&["GET", "k"]);
        if got == "$2\r\nv1\r\n" && calls(replica, "get") > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reads never reached the replica: {got}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (replica_before, primary_before) = (calls(replica, "get"), calls(primary, "get"));
    let sets_before = calls(primary, "set");
    for _ in 0..20 {
        assert_eq!(c.cmd(&["GET", "k"]), "$2\r\nv1\r\n");
    }
    assert_eq!(c.cmd(&["SET", "k", "v2"]), "+OK\r\n");
    assert!(calls(replica, "get") >= replica_before + 20, "reads go to the replica");
    assert_eq!(calls(primary, "get"), primary_before, "no read reached the primary");
    assert_eq!(calls(primary, "set"), sets_before + 1, "writes go to the primary");
}

#[test]
fn a_node_that_stops_answering_does_not_stall_the_others() {
    let cluster = Cluster::start();
    let mut proxy = Proxy::start_config(&cluster_config(&cluster, "    opTimeout: 500ms\n"));
    proxy.allow_warning("request timed out");
    proxy.allow_warning("upstream connection lost");
    proxy.allow_warning("cannot refresh the cluster topology");
    proxy.allow_warning("cannot connect to upstream");
    let mut c = proxy.conn();
    let stuck_slot = slot_of(&cluster, "foo");
    let stuck = cluster.primary_for(stuck_slot);
    // A key on another primary.
    let other_key = (0..1000)
        .map(|i| format!("other:{i}"))
        .find(|k| cluster.primary_for(slot_of(&cluster, k)).port != stuck.port)
        .unwrap();
    assert_eq!(c.cmd(&["SET", "foo", "1"]), "+OK\r\n");
    assert_eq!(c.cmd(&["SET", &other_key, "1"]), "+OK\r\n");

    // The node freezes (SIGSTOP): a request for it waits, others do not.
    let pid = stuck.pid();
    std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap();
    let mut waiting = proxy.conn();
    // Pipelined: a reply from a healthy node, then the request that waits.
    let mut pipeline = Conn::encode(&[b"GET", other_key.as_bytes()]);
    pipeline.extend(Conn::encode(&[b"GET", b"foo"]));
    let sent = std::time::Instant::now();
    waiting.send_raw(&pipeline);
    // The reply before the stuck one is not held back for it (the opTimeout is 500ms).
    assert_eq!(waiting.read_reply(), b"$1\r\n1\r\n");
    assert!(sent.elapsed() < Duration::from_millis(300), "the first reply took {:?}", sent.elapsed());
    let mut fast = proxy.conn();
    let start = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(fast.cmd(&["GET", &other_key]), "$1\r\n1\r\n");
    }
    assert!(start.elapsed() < Duration::from_millis(400), "other nodes were slowed: {:?}", start.elapsed());
    let reply = String::from_utf8_lossy(&waiting.read_reply()).into_owned();
    std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status().unwrap();
    assert!(reply.contains("did not reply within opTimeout 500ms"), "{reply}");
}

#[test]
fn resharding_under_load_loses_no_write_and_shows_no_redirect() {
    let cluster = Cluster::start_with(3, 0);
    let proxy = proxy_for(&cluster);
    let addr = proxy.addr.to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = support::Conn::connect(&addr);
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("rs:{}", i % 2000);
                let reply = c.cmd(&["SET", &key, &i.to_string()]);
                assert_eq!(reply, "+OK\r\n", "the client saw {reply}");
                acked.push((key, i));
                i += 1;
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // Move 2,000 slots from one primary to another with redis-cli, under the writer's load.
    let id = |n: &support::Redis| n.conn().cmd(&["CLUSTER", "MYID"]).lines().nth(1).unwrap().to_owned();
    let (from, to) = (id(&cluster.nodes[0]), id(&cluster.nodes[1]));
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "reshard", &cluster.nodes[0].addr(), "--cluster-from", &from, "--cluster-to", &to])
        .args(["--cluster-slots", "2000", "--cluster-yes", "--cluster-pipeline", "50"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.join().expect("the writer saw an error");
    assert!(acked.len() > 100, "too little load: {}", acked.len());
    // The last acknowledged value of every key is what the cluster holds.
    let mut last = std::collections::HashMap::new();
    for (k, v) in &acked {
        last.insert(k.clone(), *v);
    }
    let mut c = proxy.conn();
    for (k, v) in last {
        assert_eq!(c.cmd(&["GET", &k]), format!("${}\r\n{v}\r\n", v.to_string().len()), "{k}");
    }
}

#[test]
fn tryagain_during_a_migration_is_retried_until_it_completes() {
    let cluster = Cluster::start_with(3, 0);
    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["MSET", "{t}a", "1", "{t}b", "2"]), "+OK\r\n");
    let slot = slot_of(&cluster, "{t}a");
    let source = cluster.primary_for(slot);
    let target = cluster.nodes.iter().find(|n| n.port != source.port).unwrap();
    let id = |n: &support::Redis| n.conn().cmd(&["CLUSTER", "MYID"]).lines().nth(1).unwrap().to_owned();
    let (source_id, target_id) = (id(source), id(target));
    let s = slot.to_string();
    assert_eq!(target.conn().cmd(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &source_id]), "+OK\r\n");
    assert_eq!(source.conn().cmd(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &target_id]), "+OK\r\n");
    let migrate = |key: &str| {
        let port = target.port.to_string();
        source.conn().cmd(&["MIGRATE", "127.0.0.1", &port, key, "0", "5000"])
    };
    assert_eq!(migrate("{t}b"), "+OK\r\n");
    // Half of the keys moved: a multi-key command gets TRYAGAIN from the source...
    c.send(&["MGET", "{t}a", "{t}b"]);
    std::thread::sleep(Duration::from_millis(100));
    // ... and the proxy retries until the migration completes.
    assert_eq!(migrate("{t}a"), "+OK\r\n");
    for n in &cluster.nodes {
        n.conn().cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &target_id]);
    }
    assert_eq!(String::from_utf8_lossy(&c.read_reply()), "*2\r\n$1\r\n1\r\n$1\r\n2\r\n");
}

#[test]
fn blocked_and_transaction_clients_get_a_clear_error_when_their_node_dies() {
    let mut cluster = Cluster::start();
    let mut proxy = proxy_for(&cluster);
    proxy.allow_warning("upstream connection lost");
    proxy.allow_warning("cannot connect to upstream");
    proxy.allow_warning("cannot refresh the cluster topology");
    let slot = slot_of(&cluster, "jobs");
    let victim_port = cluster.primary_for(slot).port;
    let mut blocked = proxy.conn();
    blocked.send(&["BLPOP", "jobs", "0"]);
    let mut tx = proxy.conn();
    assert_eq!(tx.cmd(&["MULTI"]), "+OK\r\n");
    assert_eq!(tx.cmd(&["LPUSH", "jobs", "x"]), "+QUEUED\r\n");
    std::thread::sleep(Duration::from_millis(100));
    cluster.nodes.iter_mut().find(|n| n.port == victim_port).unwrap().kill();

    blocked.set_timeout(Duration::from_secs(5));
    let reply = String::from_utf8_lossy(&blocked.read_reply()).into_owned();
    assert!(reply.starts_with("-ERR respmesh: upstream ") && reply.contains(" unavailable: "), "{reply}");
    // The transaction's state died with its connection: the client is told, then disconnected.
    tx.set_timeout(Duration::from_secs(5));
    tx.send(&["EXEC"]);
    let reply = tx.try_read_reply().map(|r| String::from_utf8_lossy(&r).into_owned());
    match reply {
        Ok(r) => assert!(r.starts_with("-ERR respmesh: upstream"), "{r}"),
        Err(e) => {
            assert!(matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset), "{e}")
        }
    }
}

#[test]
fn faults_apply_in_cluster_mode_too() {
    let cluster = Cluster::start_with(3, 0);
    let faults = "    faults:\n      - {type: ERROR, percentage: {value: 100}, commands: [GET]}\n      - {type: DELAY, delay: 200ms, percentage: {value: 100}, commands: [MGET]}\n";
    let proxy = Proxy::start_config(&cluster_config(&cluster, faults));
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "a", "1"]), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", "a"]), "-Fault Injected: Error\r\n");
    let start = std::time::Instant::now();
    assert_eq!(c.cmd(&["MGET", "a", "b", "c"]), "*3\r\n$1\r\n1\r\n$-1\r\n$-1\r\n");
    assert!(start.elapsed() >= Duration::from_millis(200), "the split MGET's reply was held back");
}

#[test]
fn malformed_commands_of_every_kind_never_break_the_proxy() {
    let cluster = Cluster::start_with(3, 0);
    support::random_commands_never_break(&proxy_for(&cluster), 42);
}

/// Keys that land on every primary of `cluster` (one per primary, by port).
fn key_per_primary(cluster: &Cluster) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let key = format!("w{i}");
        let port = cluster.primary_for(slot_of(cluster, &key)).port;
        if !out.iter().any(|(_, p)| *p == port) {
            out.push((key, port));
        }
        if out.len() == 3 {
            return out;
        }
    }
    unreachable!()
}

/// The clients a node has connected, by its own count.
fn connected_clients(node: &support::Redis) -> usize {
    let info = node.conn().cmd(&["INFO", "clients"]);
    let line = info.lines().find(|l| l.starts_with("connected_clients:")).expect("INFO clients");
    line["connected_clients:".len()..].trim().parse().unwrap()
}

#[test]
fn wait_counts_the_replicas_that_have_the_clients_writes_on_every_primary_it_wrote_to() {
    let cluster = Cluster::start();
    cluster.wait_replicas_online(1, Duration::from_secs(20));
    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["WAIT", "1", "2000"]), ":1\r\n", "nothing written: every primary has its replica");
    let keys = key_per_primary(&cluster);
    for (k, _) in &keys {
        assert_eq!(c.cmd(&["SET", k, "v"]), "+OK\r\n");
    }
    assert_eq!(c.cmd(&["WAIT", "1", "2000"]), ":1\r\n");
    assert_eq!(c.cmd(&["WAIT", "2", "200"]), ":1\r\n", "one replica per primary: the timeout, then the count");

    // A replica that cannot acknowledge: its primary holds WAIT back (the others alone do not
    // make the count).
    let (slow_key, slow_port) = keys[1].clone();
    let replica = cluster
        .nodes
        .iter()
        .find(|n| {
            let role = n.conn().cmd(&["ROLE"]);
            role.contains("slave") && role.contains(&format!(":{slow_port}\r\n"))
        })
        .expect("the primary's replica");
    let pid = replica.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    c.send(&["SET", &slow_key, "v2"]);
    c.send(&["WAIT", "1", "300"]);
    assert_eq!(c.read_reply(), b"+OK\r\n");
    let started = std::time::Instant::now();
    assert_eq!(c.read_reply(), b":0\r\n", "the stopped replica has not acknowledged");
    assert!(started.elapsed() >= Duration::from_millis(250), "WAIT waited for its timeout");
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    assert_eq!(c.cmd(&["WAIT", "1", "5000"]), ":1\r\n", "acknowledged once the replica runs again");

    // Pipelined behind writes, WAIT is answered in order and later commands after it.
    c.send(&["SET", &keys[0].0, "p"]);
    c.send(&["WAIT", "1", "2000"]);
    c.send(&["GET", &keys[0].0]);
    assert_eq!(c.read_reply(), b"+OK\r\n");
    assert_eq!(c.read_reply(), b":1\r\n");
    assert_eq!(c.read_reply(), b"$1\r\np\r\n");
    // The proxy's marker key is gone, and WAIT reuses its connections (from the worker's pool).
    assert_eq!(c.cmd(&["DBSIZE"]), ":3\r\n");
    let owner = cluster.nodes.iter().find(|n| n.port == keys[0].1).unwrap();
    let before = connected_clients(owner);
    for i in 0..5 {
        assert_eq!(c.cmd(&["SET", &keys[0].0, &i.to_string()]), "+OK\r\n");
        assert_eq!(c.cmd(&["WAIT", "1", "2000"]), ":1\r\n");
    }
    assert_eq!(connected_clients(owner), before, "no new connection per WAIT");
}

#[test]
fn monitor_shows_the_commands_of_every_node_once() {
    let mut cluster = Cluster::start();
    cluster.wait_replicas_online(1, Duration::from_secs(20));
    let mut proxy = proxy_for(&cluster);
    let mut m = proxy.conn();
    assert_eq!(m.cmd(&["MONITOR"]), "+OK\r\n");
    std::thread::sleep(Duration::from_millis(200));
    let keys = key_per_primary(&cluster);
    let mut c = proxy.conn();
    for (k, _) in &keys {
        assert_eq!(c.cmd(&["SET", k, "seen"]), "+OK\r\n");
    }
    // Every SET once: from its primary, not again from the replica it is replicated to.
    let mut lines = Vec::new();
    m.set_timeout(Duration::from_millis(500));
    while let Ok(line) = m.try_read_reply() {
        lines.push(String::from_utf8_lossy(&line).into_owned());
    }
    for (k, _) in &keys {
        let n = lines.iter().filter(|l| l.contains(&format!("\"SET\" \"{k}\" \"seen\""))).count();
        assert_eq!(n, 1, "{k} shown once in {lines:?}");
    }
    assert!(lines.iter().all(|l| l.starts_with('+') && l.ends_with("\r\n")), "whole lines only: {lines:?}");
    // RESET ends it: no more lines (the proxy's own topology refresh may show up before).
    m.set_timeout(Duration::from_secs(5));
    m.send(&["RESET"]);
    while m.read_reply() != b"+RESET\r\n" {}
    assert_eq!(c.cmd(&["SET", &keys[0].0, "after"]), "+OK\r\n");
    assert_eq!(m.cmd(&["PING"]), "+PONG\r\n", "the next reply is PING's, no MONITOR line");

    // A node lost: the stream would be incomplete, so the client is told why and let go.
    proxy.allow_warning("upstream connection lost");
    let mut m2 = proxy.conn();
    assert_eq!(m2.cmd(&["MONITOR"]), "+OK\r\n");
    std::thread::sleep(Duration::from_millis(200));
    let replica = cluster.nodes.iter().position(|n| n.conn().cmd(&["ROLE"]).contains("slave")).unwrap();
    cluster.nodes[replica].kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let said = loop {
        assert!(std::time::Instant::now() < deadline, "no error after a monitored node was lost");
        let line = String::from_utf8_lossy(&m2.read_reply()).into_owned();
        if line.starts_with('-') {
            break line;
        }
    };
    assert!(said.starts_with("-ERR respmesh: upstream"), "{said}");
    assert!(m2.is_closed());
}

#[test]
fn client_commands_about_the_connection_answer_for_the_clients_own() {
    let cluster = Cluster::start_with(3, 0);
    let proxy = proxy_for(&cluster);
    let mut a = proxy.conn();
    let mut b = proxy.conn();
    let id_a = a.cmd(&["CLIENT", "ID"]);
    assert!(id_a.starts_with(':'), "{id_a}");
    assert_eq!(a.cmd(&["CLIENT", "ID"]), id_a, "stable for a connection");
    assert_ne!(b.cmd(&["CLIENT", "ID"]), id_a, "distinct between connections");
    assert_eq!(a.cmd(&["CLIENT", "SETNAME", "worker-7"]), "+OK\r\n");
    let info = a.cmd(&["CLIENT", "INFO"]);
    let id = id_a.trim_start_matches(':').trim();
    assert!(info.starts_with('$') && info.contains(&format!("\r\nid={id} ")), "{info}");
    assert!(info.contains(&format!(" addr={} ", a.stream.local_addr().unwrap())), "{info}");
    assert!(info.contains(" name=worker-7 ") && info.contains(" flags=N ") && info.contains(" resp=2\n"), "{info}");
    assert_eq!(a.cmd(&["CLIENT", "NO-EVICT", "on"]), "+OK\r\n");
    assert!(a.cmd(&["CLIENT", "INFO"]).contains(" flags=e "));
    assert_eq!(a.cmd(&["CLIENT", "NO-EVICT", "maybe"]), "-ERR syntax error\r\n");
    assert_eq!(a.cmd(&["CLIENT", "GETREDIR"]), ":-1\r\n");
    assert_eq!(
        a.cmd(&["CLIENT", "TRACKINGINFO"]),
        "*6\r\n$5\r\nflags\r\n*1\r\n$3\r\noff\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n"
    );
    assert_eq!(
        a.cmd(&["CLIENT", "CACHING", "yes"]),
        "-ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled\r\n"
    );
    assert_eq!(a.cmd(&["CLIENT", "ID", "x"]), "-ERR wrong number of arguments for 'client|id' command\r\n");
    let touch = a.cmd(&["CLIENT", "NO-TOUCH", "on"]);
    assert!(touch.starts_with("-ERR respmesh: CLIENT NO-TOUCH is not supported in CLUSTER mode"), "{touch}");
    // CLIENT LIST and CLIENT KILL: the proxy's clients of this service, never its node
    // connections.
    let id_b = b.cmd(&["CLIENT", "ID"]).trim_start_matches(':').trim().to_owned();
    let list = a.cmd(&["CLIENT", "LIST"]);
    assert!(list.contains(&format!("id={id} ")) && list.contains(&format!("id={id_b} ")), "{list}");
    assert!(list.contains(" name=worker-7 ") && list.contains("cmd=client|list"), "{list}");
    let only_b = a.cmd(&["CLIENT", "LIST", "ID", &id_b]);
    assert!(only_b.contains(&format!("id={id_b} ")) && !only_b.contains(&format!("id={id} ")), "{only_b}");
    assert_eq!(a.cmd(&["CLIENT", "KILL", "127.0.0.1:1"]), "-ERR No such client\r\n");
    assert_eq!(a.cmd(&["CLIENT", "KILL", "ID", &id_b]), ":1\r\n");
    assert!(b.is_closed(), "the killed client's connection is closed");
    assert_eq!(a.cmd(&["CLIENT", "KILL", "ID", &id_b]), ":0\r\n", "gone from the list");
    assert_eq!(a.cmd(&["SET", "after-kill", "1"]), "+OK\r\n", "the proxy's node connections are intact");
    // HELLO describes one Redis: standalone, with the client's own id.
    let hello = a.cmd(&["HELLO", "3"]);
    assert!(hello.contains("$4\r\nmode\r\n$10\r\nstandalone\r\n"), "{hello}");
    assert!(hello.contains(&format!("$2\r\nid\r\n:{id}\r\n")), "{hello}");
    // RESP3: CLIENT INFO is a verbatim string.
    let info = a.cmd(&["CLIENT", "INFO"]);
    assert!(info.starts_with('=') && info.contains("\r\ntxt:id=") && info.contains(" resp=3\n"), "{info}");
}

#[test]
fn client_reply_off_and_skip_silence_replies_as_redis_does() {
    let cluster = Cluster::start_with(3, 0);
    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();
    c.send(&["CLIENT", "REPLY", "SKIP"]);
    c.send(&["SET", "x", "1"]);
    assert_eq!(c.cmd(&["GET", "x"]), "$1\r\n1\r\n", "only the skipped command went without a reply");
    c.send(&["CLIENT", "REPLY", "OFF"]);
    c.send(&["SET", "y", "2"]);
    c.send(&["MGET", "x", "y", "z"]);
    c.send(&["NOSUCHCOMMAND"]);
    assert_eq!(c.cmd(&["CLIENT", "REPLY", "ON"]), "+OK\r\n");
    assert_eq!(c.cmd(&["MGET", "x", "y"]), "*2\r\n$1\r\n1\r\n$1\r\n2\r\n", "the silenced writes ran");
    assert_eq!(c.cmd(&["CLIENT", "REPLY", "MAYBE"]), "-ERR syntax error\r\n");
    c.send(&["CLIENT", "REPLY", "OFF"]);
    assert_eq!(c.cmd(&["RESET"]), "+RESET\r\n", "RESET turns replies back on");
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n");
}

/// The keys named by the invalidation pushes read before the next `+PONG` (a PING is sent).
fn invalidated_before_pong(c: &mut support::Conn) -> Vec<String> {
    c.send(&["PING"]);
    let mut keys = Vec::new();
    let mut ponged = false;
    loop {
        // The PING goes to any node and the invalidations come from others, so a PONG may
        // overtake an invalidation already on its way: listen a little longer after it.
        if ponged {
            c.set_timeout(Duration::from_millis(200));
        }
        let frame = match c.try_read_reply() {
            Ok(frame) => String::from_utf8_lossy(&frame).into_owned(),
            Err(_) if ponged => break,
            Err(e) => panic!("no PONG: {e}"),
        };
        if frame == "+PONG\r\n" {
            ponged = true;
            continue;
        }
        assert!(frame.starts_with(">2\r\n$10\r\ninvalidate\r\n*"), "not an invalidation: {frame}");
        let lines: Vec<&str> = frame.split("\r\n").collect();
        keys.extend(lines.iter().skip(5).step_by(2).filter(|l| !l.is_empty()).map(|l| l.to_string()));
    }
    c.set_timeout(Duration::from_secs(10));
    keys.sort();
    keys
}

#[test]
fn client_tracking_gets_invalidations_from_every_node_it_read_from() {
    let mut cluster = Cluster::start_with(3, 0);
    let mut proxy = proxy_for(&cluster);
    let keys: Vec<String> = key_per_primary(&cluster).into_iter().map(|(k, _)| k).collect();
    let mut other = proxy.conn();
    for k in &keys {
        assert_eq!(other.cmd(&["SET", k, "v1"]), "+OK\r\n");
    }
    let mut c = proxy.conn();
    let refused = c.cmd(&["CLIENT", "TRACKING", "on"]);
    assert!(refused.contains("needs RESP3"), "{refused}");
    c.cmd(&["HELLO", "3"]);
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "on"]), "+OK\r\n");
    for k in &keys {
        assert_eq!(c.cmd(&["GET", k]), "$2\r\nv1\r\n");
    }
    for k in &keys {
        assert_eq!(other.cmd(&["SET", k, "v2"]), "+OK\r\n");
    }
    let mut want = keys.clone();
    want.sort();
    assert_eq!(invalidated_before_pong(&mut c), want, "one invalidation per key read, from each node");
    assert_eq!(invalidated_before_pong(&mut c), Vec::<String>::new(), "only once");

    // A read inside a transaction is tracked too.
    assert_eq!(c.cmd(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", &keys[1]]), "+QUEUED\r\n");
    assert_eq!(c.cmd(&["EXEC"]), "*1\r\n$2\r\nv2\r\n");
    assert_eq!(other.cmd(&["SET", &keys[1], "v3"]), "+OK\r\n");
    assert_eq!(invalidated_before_pong(&mut c), vec![keys[1].clone()]);

    // OPTIN: only what follows CLIENT CACHING yes is tracked.
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "on", "OPTIN"]), "+OK\r\n");
    assert_eq!(c.cmd(&["CLIENT", "CACHING", "yes"]), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", &keys[0]]), "$2\r\nv2\r\n");
    assert_eq!(c.cmd(&["GET", &keys[2]]), "$2\r\nv2\r\n");
    for k in &keys {
        assert_eq!(other.cmd(&["SET", k, "v4"]), "+OK\r\n");
    }
    assert_eq!(invalidated_before_pong(&mut c), vec![keys[0].clone()]);
    // Options Redis refuses: its error, and tracking is off.
    assert_eq!(
        c.cmd(&["CLIENT", "TRACKING", "on", "BCAST", "OPTIN"]),
        "-ERR OPTIN and OPTOUT are not compatible with BCAST\r\n"
    );
    assert_eq!(c.cmd(&["GET", &keys[0]]), "$2\r\nv4\r\n");
    assert_eq!(other.cmd(&["SET", &keys[0], "v5"]), "+OK\r\n");
    assert_eq!(invalidated_before_pong(&mut c), Vec::<String>::new());
    // Back to RESP2: replies in RESP2 again, and tracking ends (no push could reach it).
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "on"]), "+OK\r\n");
    c.cmd(&["HELLO", "2"]);
    assert_eq!(c.cmd(&["GET", "nothing-here"]), "$-1\r\n");
    c.cmd(&["HELLO", "3"]);
    // OFF: no more invalidations.
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "on"]), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", &keys[0]]), "$2\r\nv5\r\n");
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "off"]), "+OK\r\n");
    assert_eq!(other.cmd(&["SET", &keys[0], "v6"]), "+OK\r\n");
    assert_eq!(invalidated_before_pong(&mut c), Vec::<String>::new());

    // A node lost while tracking: what it tracked is lost, so the client's cache cannot be
    // trusted; the client is disconnected, as it would be if its one Redis went away.
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "on"]), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", &keys[2]]), "$2\r\nv4\r\n");

    // A slot that moves: the MOVED is followed on the client's own connection to the new
    // owner, so the read is tracked there.
    let slot = slot_of(&cluster, "moving");
    let source = cluster.primary_for(slot).port;
    let target = cluster.nodes.iter().find(|n| n.port != source).unwrap();
    let target_id = target.conn().cmd(&["CLUSTER", "MYID"]).lines().nth(1).unwrap().to_owned();
    for n in &cluster.nodes {
        assert_eq!(n.conn().cmd(&["CLUSTER", "SETSLOT", &slot.to_string(), "NODE", &target_id]), "+OK\r\n");
    }
    assert_eq!(c.cmd(&["GET", "moving"]), "_\r\n", "no MOVED reaches the client");
    assert_eq!(other.cmd(&["SET", "moving", "here"]), "+OK\r\n");
    assert_eq!(invalidated_before_pong(&mut c), vec!["moving".to_owned()]);

    proxy.allow_warning("upstream connection lost");
    let port = cluster.primary_for(slot_of(&cluster, &keys[2])).port;
    let owner = cluster.nodes.iter().position(|n| n.port == port).unwrap();
    cluster.nodes[owner].kill();
    std::thread::sleep(Duration::from_millis(300));
    c.send(&["PING"]);
    assert!(c.is_closed(), "the tracking client is let go");
}

/// CLUSTER mode gives memory back like standalone: the replies for clients that left are
/// dropped as they come (node connections write replies out every 256 KiB rather than only when
/// a node pauses), not collected; and a 64 MiB value leaves the idle proxy near its idle size
/// while the client stays connected.
#[test]
fn clients_that_leave_and_large_values_take_no_memory_for_good() {
    let cluster = Cluster::start();
    let proxy = proxy_for(&cluster);
    let mut c = proxy.conn();
    c.set_timeout(Duration::from_secs(60));
    c.send_raw(&Conn::encode(&[b"SET", b"mib", &vec![b'm'; 1 << 20]]));
    assert_eq!(c.read_reply(), b"+OK\r\n");
    // 16 x 64 MiB of replies asked for, none read.
    let (before, peak) = proxy.peak_memory_around_clients_that_leave("mib");
    assert!(peak <= before + 32 * 1024, "the proxy's resident memory peaked at {peak} KiB ({before} KiB before)");

    let idle = proxy.wait_rss_at_most(before, Duration::from_secs(5));
    let value = vec![b'v'; 64 << 20];
    c.send_raw(&Conn::encode(&[b"SET", b"large", &value]));
    assert_eq!(c.read_reply(), b"+OK\r\n");
    c.send(&["GET", "large"]);
    assert_eq!(c.read_reply().len(), "$67108864\r\n".len() + value.len() + 2);
    let rss = proxy.wait_rss_at_most(idle + 16 * 1024, Duration::from_secs(5));
    assert!(rss <= idle + 16 * 1024, "resident memory {rss} KiB after the value passed, {idle} KiB before");
    assert_eq!(c.cmd(&["GET", "missing"]), "$-1\r\n");
}

/// A RESP3 client's pipeline of subscriptions and commands on keys of every node gets its
/// replies in the order one Redis gives them: a subscription's confirmation before the reply
/// to any later command, and a command's reply before a later subscription's confirmation.
#[test]
fn a_subscriber_gets_confirmations_and_replies_in_order() {
    let cluster = Cluster::start();
    let proxy = proxy_for(&cluster);
    let one = support::Redis::start();
    // Keys on every primary, one value each.
    let keys: Vec<String> = {
        let mut seen = std::collections::HashSet::new();
        (0..100)
            .map(|i| format!("order:{i}"))
            .filter(|k| seen.insert(cluster.primary_for(slot_of(&cluster, k)).port))
            .collect()
    };
    assert_eq!(keys.len(), 3);
    let mut script = Vec::new();
    for k in &keys {
        script.push(vec!["SET".into(), k.clone(), format!("v-{k}")]);
    }
    for (i, k) in keys.iter().enumerate() {
        script.push(vec!["SUBSCRIBE".into(), format!("ch{i}"), format!("ch{i}b")]);
        script.push(vec!["GET".into(), k.clone()]);
        script.push(vec!["INCR".into(), format!("{k}:n")]);
        script.push(vec!["PSUBSCRIBE".into(), format!("p{i}*")]);
        script.push(vec!["CLIENT".into(), "SETNAME".into(), format!("n{i}")]);
        script.push(vec!["UNSUBSCRIBE".into(), format!("ch{i}b")]);
        script.push(vec!["MGET".into(), keys[0].clone(), keys[1].clone(), keys[2].clone()]);
        script.push(vec!["PUNSUBSCRIBE".into(), format!("p{i}*"), "nothing*".into()]);
        script.push(vec!["DEL".into(), format!("{k}:n")]);
        script.push(vec!["PING".into()]);
    }
    script.push(vec!["PING".into(), "end".into()]);
    let mut bytes = Vec::new();
    for cmd in &script {
        let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_bytes()).collect();
        bytes.extend(Conn::encode(&args));
    }
    let end = b"$3\r\nend\r\n";
    let run = |mut c: Conn| {
        assert!(c.cmd(&["HELLO", "3"]).starts_with('%'));
        c.send_until(&bytes, end)
    };
    let direct = run(one.conn());
    for round in 0..5 {
        let through = run(proxy.conn());
        assert_eq!(through, direct, "round {round}");
    }
    // QUIT, which the proxy answers, from a RESP2 subscriber: after the confirmations.
    let quit = Conn::encode(&[b"SUBSCRIBE", b"q1", b"q2", b"q3"])
        .into_iter()
        .chain(Conn::encode(&[b"QUIT"]))
        .collect::<Vec<u8>>();
    let direct = one.conn().send_until(&quit, b"+OK\r\n");
    for round in 0..5 {
        let mut c = proxy.conn();
        assert_eq!(c.send_until(&quit, b"+OK\r\n"), direct, "round {round}");
        assert!(c.is_closed());
    }
}
