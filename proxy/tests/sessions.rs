//! Connection state through a shared upstream: what one client does to its connection
//! (transactions, WATCH, blocking, subscriptions, databases, names) neither leaks to other
//! clients nor blocks them.

mod support;

use std::time::{Duration, Instant};

use support::{Conn, Proxy, Redis};

fn setup() -> (Redis, Proxy) {
    let redis = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    (redis, proxy)
}

#[test]
fn a_blocked_client_does_not_block_others() {
    let (_redis, proxy) = setup();
    let mut blocked = proxy.conn();
    blocked.send(&["BLPOP", "jobs", "0"]);
    std::thread::sleep(Duration::from_millis(50));
    let mut other = proxy.conn();
    let start = Instant::now();
    for i in 0..100 {
        assert_eq!(other.cmd(&["SET", &format!("k{i}"), "v"]), "+OK\r\n");
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(other.cmd(&["LPUSH", "jobs", "job-1"]), ":1\r\n");
    assert_eq!(String::from_utf8_lossy(&blocked.read_reply()), "*2\r\n$4\r\njobs\r\n$5\r\njob-1\r\n");
    // After the blocking command the client is back on the shared connection and works on.
    assert_eq!(blocked.cmd(&["GET", "k1"]), "$1\r\nv\r\n");
}

#[test]
fn many_clients_blocked_at_once_each_get_their_own_item() {
    let (_redis, proxy) = setup();
    let mut waiters: Vec<_> = (0..10).map(|_| proxy.conn()).collect();
    for w in &mut waiters {
        w.send(&["BRPOP", "q", "5"]);
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut producer = proxy.conn();
    for i in 0..10 {
        producer.cmd(&["LPUSH", "q", &i.to_string()]);
    }
    let mut got: Vec<String> =
        waiters.iter_mut().map(|w| String::from_utf8_lossy(&w.read_reply()).into_owned()).collect();
    got.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("*2\r\n$1\r\nq\r\n$1\r\n{i}\r\n")).collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_transaction_is_isolated_from_other_clients_commands() {
    let (_redis, proxy) = setup();
    let mut tx = proxy.conn();
    let mut other = proxy.conn();
    assert_eq!(tx.cmd(&["MULTI"]), "+OK\r\n");
    assert_eq!(tx.cmd(&["SET", "acct", "100"]), "+QUEUED\r\n");
    // Another client's commands are not swallowed into the transaction.
    assert_eq!(other.cmd(&["SET", "other", "1"]), "+OK\r\n");
    assert_eq!(other.cmd(&["GET", "acct"]), "$-1\r\n");
    assert_eq!(tx.cmd(&["INCRBY", "acct", "5"]), "+QUEUED\r\n");
    assert_eq!(tx.cmd(&["EXEC"]), "*2\r\n+OK\r\n:105\r\n");
    assert_eq!(other.cmd(&["GET", "acct"]), "$3\r\n105\r\n");
}

#[test]
fn watch_aborts_the_transaction_when_another_client_writes() {
    let (_redis, proxy) = setup();
    let mut a = proxy.conn();
    let mut b = proxy.conn();
    a.cmd(&["SET", "balance", "10"]);
    assert_eq!(a.cmd(&["WATCH", "balance"]), "+OK\r\n");
    assert_eq!(b.cmd(&["SET", "balance", "20"]), "+OK\r\n");
    assert_eq!(a.cmd(&["MULTI"]), "+OK\r\n");
    assert_eq!(a.cmd(&["SET", "balance", "0"]), "+QUEUED\r\n");
    assert_eq!(a.cmd(&["EXEC"]), "*-1\r\n", "the watched key changed: the transaction must abort");
    assert_eq!(b.cmd(&["GET", "balance"]), "$2\r\n20\r\n");
    // Without interference it commits.
    assert_eq!(a.cmd(&["WATCH", "balance"]), "+OK\r\n");
    assert_eq!(a.cmd(&["MULTI"]), "+OK\r\n");
    assert_eq!(a.cmd(&["INCR", "balance"]), "+QUEUED\r\n");
    assert_eq!(a.cmd(&["EXEC"]), "*1\r\n:21\r\n");
}

#[test]
fn dedicated_connections_are_given_back_and_reused() {
    let (redis, proxy) = setup();
    let mut c = proxy.conn();
    c.cmd(&["PING"]);
    let clients = |r: &Redis| r.conn().cmd(&["INFO", "clients"]);
    for _ in 0..20 {
        assert_eq!(c.cmd(&["MULTI"]), "+OK\r\n");
        assert_eq!(c.cmd(&["INCR", "n"]), "+QUEUED\r\n");
        c.cmd(&["EXEC"]);
        assert_eq!(c.cmd(&["BLPOP", "nothing", "0.01"]), "*-1\r\n");
    }
    // One shared connection, one pooled dedicated one, and the INFO connection itself.
    let info = clients(&redis);
    assert!(info.contains("connected_clients:3"), "{info}");
}

#[test]
fn select_affects_only_the_client_that_sent_it() {
    let (_redis, proxy) = setup();
    let mut a = proxy.conn();
    let mut b = proxy.conn();
    assert_eq!(a.cmd(&["SELECT", "2"]), "+OK\r\n");
    assert_eq!(a.cmd(&["SET", "k", "in-db-2"]), "+OK\r\n");
    assert_eq!(b.cmd(&["GET", "k"]), "$-1\r\n");
    assert_eq!(b.cmd(&["SET", "k", "in-db-0"]), "+OK\r\n");
    assert_eq!(a.cmd(&["GET", "k"]), "$7\r\nin-db-2\r\n");
    assert_eq!(a.cmd(&["SELECT", "0"]), "+OK\r\n");
    assert_eq!(a.cmd(&["GET", "k"]), "$7\r\nin-db-0\r\n");
}

#[test]
fn client_names_are_per_client() {
    let (_redis, proxy) = setup();
    let mut a = proxy.conn();
    let mut b = proxy.conn();
    assert_eq!(a.cmd(&["CLIENT", "SETNAME", "alpha"]), "+OK\r\n");
    assert_eq!(b.cmd(&["CLIENT", "GETNAME"]), "$-1\r\n");
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]), "$5\r\nalpha\r\n");
    // CLIENT ID gives the client its own connection, which carries the name to Redis.
    let id = a.cmd(&["CLIENT", "ID"]);
    assert!(id.starts_with(':'), "{id}");
    assert_eq!(a.cmd(&["CLIENT", "ID"]), id, "the id is stable");
    let info = a.cmd(&["CLIENT", "INFO"]);
    assert!(info.contains("name=alpha"), "{info}");
    assert_ne!(b.cmd(&["CLIENT", "ID"]), id);
}

#[test]
fn pubsub_resp2_messages_reach_subscribers() {
    let (_redis, proxy) = setup();
    let mut sub = proxy.conn();
    sub.send(&["SUBSCRIBE", "news", "sports"]);
    assert_eq!(String::from_utf8_lossy(&sub.read_reply()), "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    assert_eq!(String::from_utf8_lossy(&sub.read_reply()), "*3\r\n$9\r\nsubscribe\r\n$6\r\nsports\r\n:2\r\n");
    sub.send(&["PSUBSCRIBE", "n*"]);
    assert_eq!(String::from_utf8_lossy(&sub.read_reply()), "*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:3\r\n");
    let mut publisher = proxy.conn();
    assert_eq!(publisher.cmd(&["PUBLISH", "news", "hello"]), ":2\r\n");
    assert_eq!(String::from_utf8_lossy(&sub.read_reply()), "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n");
    assert_eq!(
        String::from_utf8_lossy(&sub.read_reply()),
        "*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
    );
    // PING in subscribed mode answers the RESP2 subscriber way.
    sub.send(&["PING"]);
    assert_eq!(String::from_utf8_lossy(&sub.read_reply()), "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    sub.send(&["UNSUBSCRIBE"]);
    let _ = sub.read_reply();
    let _ = sub.read_reply();
    sub.send(&["PUNSUBSCRIBE"]);
    assert_eq!(String::from_utf8_lossy(&sub.read_reply()), "*3\r\n$12\r\npunsubscribe\r\n$2\r\nn*\r\n:0\r\n");
    // Back to ordinary commands on the same connection.
    assert_eq!(sub.cmd(&["SET", "after", "1"]), "+OK\r\n");
}

#[test]
fn pubsub_resp3_pushes_and_replies_interleave() {
    let (_redis, proxy) = setup();
    let mut sub = proxy.conn();
    assert!(sub.cmd(&["HELLO", "3"]).starts_with('%'));
    sub.send(&["SUBSCRIBE", "ch"]);
    assert_eq!(String::from_utf8_lossy(&sub.read_reply()), ">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    // RESP3 lets a subscriber run ordinary commands.
    assert_eq!(sub.cmd(&["SET", "k", "v"]), "+OK\r\n");
    proxy.conn().cmd(&["PUBLISH", "ch", "m1"]);
    assert_eq!(String::from_utf8_lossy(&sub.read_reply()), ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nm1\r\n");
    assert_eq!(sub.cmd(&["GET", "k"]), "$1\r\nv\r\n");
}

#[test]
fn sharded_pubsub_works_standalone() {
    let (_redis, proxy) = setup();
    let mut sub = proxy.conn();
    sub.send(&["SSUBSCRIBE", "orders"]);
    assert_eq!(String::from_utf8_lossy(&sub.read_reply()), "*3\r\n$10\r\nssubscribe\r\n$6\r\norders\r\n:1\r\n");
    assert_eq!(proxy.conn().cmd(&["SPUBLISH", "orders", "o1"]), ":1\r\n");
    assert_eq!(String::from_utf8_lossy(&sub.read_reply()), "*3\r\n$8\r\nsmessage\r\n$6\r\norders\r\n$2\r\no1\r\n");
}

#[test]
fn monitor_streams_other_clients_commands() {
    let (_redis, proxy) = setup();
    let mut mon = proxy.conn();
    assert_eq!(mon.cmd(&["MONITOR"]), "+OK\r\n");
    proxy.conn().cmd(&["SET", "watched-key", "1"]);
    let line = String::from_utf8_lossy(&mon.read_reply()).into_owned();
    assert!(line.contains("\"SET\" \"watched-key\" \"1\""), "{line}");
}

#[test]
fn reset_returns_the_connection_to_its_initial_state() {
    let redis = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &redis.addr(), "--client-password", "pw"]);
    let mut c = proxy.conn();
    c.cmd(&["AUTH", "pw"]);
    c.cmd(&["SELECT", "3"]);
    c.cmd(&["SET", "k", "db3"]);
    c.cmd(&["CLIENT", "SETNAME", "n"]);
    assert_eq!(c.cmd(&["RESET"]), "+RESET\r\n");
    assert_eq!(c.cmd(&["GET", "k"]), "-NOAUTH Authentication required.\r\n");
    c.cmd(&["AUTH", "pw"]);
    assert_eq!(c.cmd(&["GET", "k"]), "$-1\r\n", "back in database 0");
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), "$-1\r\n");
}

#[test]
fn quit_answers_then_closes() {
    let (_redis, proxy) = setup();
    let mut c = proxy.conn();
    c.send(&["SET", "a", "1"]);
    c.send(&["QUIT"]);
    assert_eq!(c.read_reply(), b"+OK\r\n");
    assert_eq!(c.read_reply(), b"+OK\r\n");
    assert!(c.is_closed());
}

#[test]
fn a_publish_right_after_a_subscribe_reaches_the_new_subscriber() {
    let (_redis, proxy) = setup();
    support::publish_right_after_subscribe_reaches_the_subscriber(&proxy);
}

/// Connections to Redis from anything but the proxy's shared connection(s).
fn redis_clients(redis: &Redis) -> usize {
    let list = redis.conn().cmd(&["CLIENT", "LIST"]);
    list.lines().filter(|l| l.contains("addr=")).count() - 1
}

#[test]
fn subscribers_and_monitors_that_quit_or_leave_take_their_redis_connection_with_them() {
    let (redis, proxy) = setup();
    // Warm: the shared connections (one per protocol) exist before counting.
    assert_eq!(proxy.conn().cmd(&["PING"]), "+PONG\r\n");
    let mut resp3 = proxy.conn();
    assert!(resp3.cmd(&["HELLO", "3"]).starts_with('%'));
    assert_eq!(resp3.cmd(&["PING"]), "+PONG\r\n");
    drop(resp3);
    let before = redis_clients(&redis);
    let modes: [(&str, &[&str], &str); 4] = [
        ("RESP2 subscriber", &["SUBSCRIBE", "left"], "*3\r\n$9\r\nsubscribe\r\n$4\r\nleft\r\n:1\r\n"),
        ("RESP3 subscriber", &["SUBSCRIBE", "left"], ">3\r\n$9\r\nsubscribe\r\n$4\r\nleft\r\n:1\r\n"),
        ("pattern subscriber", &["PSUBSCRIBE", "l*"], "*3\r\n$10\r\npsubscribe\r\n$2\r\nl*\r\n:1\r\n"),
        ("monitor", &["MONITOR"], "+OK\r\n"),
    ];
    for (what, enter, entered) in modes {
        for quits in [true, false] {
            let mut c = proxy.conn();
            if what.starts_with("RESP3") {
                assert!(c.cmd(&["HELLO", "3"]).starts_with('%'));
            }
            assert_eq!(c.cmd(enter), entered, "{what}");
            if quits {
                c.send(&["QUIT"]);
                assert_eq!(c.read_reply(), b"+OK\r\n", "{what}");
                assert!(c.is_closed(), "{what}: QUIT closes the connection");
            }
            drop(c);
            let deadline = Instant::now() + Duration::from_secs(5);
            while redis_clients(&redis) > before && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(redis_clients(&redis), before, "{what}, quits: {quits}: its Redis connection is closed");
            assert_eq!(redis.conn().cmd(&["PUBSUB", "NUMSUB", "left"]), "*2\r\n$4\r\nleft\r\n:0\r\n");
            assert_eq!(redis.conn().cmd(&["PUBSUB", "NUMPAT"]), ":0\r\n");
        }
    }
    assert_eq!(proxy.metric("respmesh_proxy_client_connections"), 0.0, "every client session ended");
}

#[test]
fn pipelined_mixed_local_and_forwarded_replies_stay_in_order() {
    let redis = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &redis.addr(), "--client-password", "pw"]);
    let mut c = proxy.conn();
    let mut batch = Vec::new();
    for args in [
        &["AUTH", "pw"][..],
        &["SET", "x", "1"],
        &["CLIENT", "SETNAME", "me"],
        &["INCR", "x"],
        &["CLIENT", "GETNAME"],
        &["AUTH", "bad"],
        &["INCR", "x"],
        &["MULTI"],
        &["INCR", "x"],
        &["EXEC"],
        &["GET", "x"],
    ] {
        let raw: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        batch.extend(support::Conn::encode(&raw));
    }
    c.send_raw(&batch);
    let want = [
        "+OK\r\n",
        "+OK\r\n",
        "+OK\r\n",
        ":2\r\n",
        "$2\r\nme\r\n",
        "-ERR invalid password\r\n",
        ":3\r\n",
        "+OK\r\n",
        "+QUEUED\r\n",
        "*1\r\n:4\r\n",
        "$1\r\n4\r\n",
    ];
    for w in want {
        assert_eq!(String::from_utf8_lossy(&c.read_reply()), w);
    }
}

#[test]
fn wait_counts_replicas_that_have_the_clients_earlier_writes() {
    let primary = Redis::start();
    let replica = Redis::start_with(&[]);
    let mut r = replica.conn();
    assert_eq!(r.cmd(&["REPLICAOF", "127.0.0.1", &primary.port.to_string()]), "+OK\r\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !primary.conn().cmd(&["INFO", "replication"]).contains("state=online") {
        assert!(Instant::now() < deadline, "the replica did not connect");
        std::thread::sleep(Duration::from_millis(50));
    }
    let proxy = Proxy::start_args(&["--upstream", &primary.addr()]);
    let mut c = proxy.conn();
    // With the replica stalled, the client's write cannot be acknowledged: WAIT must time out
    // with 0 rather than count the replica for some older offset.
    let mut stall = replica.conn();
    stall.send(&["DEBUG", "SLEEP", "1"]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(c.cmd(&["SET", "k", "2"]), "+OK\r\n");
    let start = Instant::now();
    assert_eq!(c.cmd(&["WAIT", "1", "300"]), ":0\r\n");
    assert!(start.elapsed() >= Duration::from_millis(300));
    // Once the replica is back, the same write is acknowledged.
    let _ = stall.read_reply();
    assert_eq!(c.cmd(&["WAIT", "1", "5000"]), ":1\r\n");
}

#[test]
fn commands_that_redis_answers_more_than_once_or_never_leave_other_clients_in_step() {
    let (redis, proxy) = setup();
    support::unsubscribing_from_nothing_is_answered_as_by_redis(&proxy, &redis);

    // REPLCONF ACK has no reply: the client that sends it gets a connection of its own, and
    // nobody waits for that reply.
    let mut replica = proxy.conn();
    replica.send(&["REPLCONF", "ACK", "0"]);
    let mut other = proxy.conn();
    let start = Instant::now();
    for i in 0..50 {
        assert_eq!(other.cmd(&["ECHO", &i.to_string()]), format!("${}\r\n{i}\r\n", i.to_string().len()));
    }
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    assert_eq!(replica.cmd(&["REPLCONF", "listening-port", "7777"]), "+OK\r\n");
    assert_eq!(replica.cmd(&["PING"]), "+PONG\r\n");
}

#[test]
fn reset_right_behind_a_subscribe_lets_its_confirmation_through() {
    let (redis, proxy) = setup();
    for pipeline in [
        &[&["SUBSCRIBE", "news"][..], &["RESET"], &["ECHO", "after"]][..],
        &[&["SUBSCRIBE", "a", "b", "c"], &["RESET"], &["ECHO", "after"]],
        &[&["HELLO", "3"], &["SUBSCRIBE", "news"], &["RESET"], &["ECHO", "after"]],
        &[&["CLIENT", "TRACKING", "on"], &["RESET"], &["ECHO", "after"]],
        // Commands a subscriber may not run, answered by Redis before the RESET behind them.
        &[
            &["SUBSCRIBE", "news"],
            &["GET", "k"],
            &["SCARD", "s"],
            &["ECHO", "x"],
            &["RESET"],
            &["GET", "k"],
            &["ECHO", "after"],
        ],
        &[&["HELLO", "3"], &["SUBSCRIBE", "a", "b"], &["GET", "k"], &["RESET"], &["ECHO", "after"]],
    ] {
        let bytes: Vec<u8> = pipeline
            .iter()
            .flat_map(|c| support::Conn::encode(&c.iter().map(|a| a.as_bytes()).collect::<Vec<_>>()))
            .collect();
        let read_all = |c: &mut support::Conn| {
            let text = c.send_until(&bytes, b"$5\r\nafter\r\n");
            // The server id in HELLO's reply differs; the rest must not.
            let mut parts = text.split("id\r\n:");
            let first = parts.next().unwrap_or_default().to_owned();
            parts.fold(first, |acc, p| acc + "id:N" + p.split_once("\r\n").map_or(p, |(_, r)| r))
        };
        assert_eq!(read_all(&mut proxy.conn()), read_all(&mut redis.conn()), "{pipeline:?}");
    }
}

/// What the proxy answers itself (QUIT, CLIENT SETNAME, ...) reaches a subscriber after the
/// replies still due on its connection, in RESP2 and RESP3.
#[test]
fn a_subscriber_gets_the_proxys_own_answers_in_order() {
    let (redis, proxy) = setup();
    for hello in ["2", "3"] {
        let script: &[&[&[u8]]] = &[
            &[b"SUBSCRIBE", b"a", b"b", b"c"],
            &[b"CLIENT", b"SETNAME", b"sub"],
            &[b"PING"],
            &[b"CLIENT", b"GETNAME"],
            &[b"PSUBSCRIBE", b"p*"],
            &[b"SELECT", b"0"],
            &[b"UNSUBSCRIBE", b"a", b"b"],
            &[b"QUIT"],
        ];
        let bytes: Vec<u8> = script.iter().flat_map(|c| Conn::encode(c)).collect();
        let run = |mut c: Conn, who: &str| {
            c.cmd(&["HELLO", hello]);
            c.send_raw(&bytes);
            // Three confirmations, five replies, two confirmations, QUIT's +OK.
            let all: String = (0..11).map(|_| String::from_utf8_lossy(&c.read_reply()).into_owned()).collect();
            assert!(c.is_closed(), "{who}, RESP{hello}: {all}");
            all
        };
        let direct = run(redis.conn(), "direct");
        for round in 0..5 {
            assert_eq!(run(proxy.conn(), "respmesh"), direct, "RESP{hello}, round {round}");
        }
    }
}
