//! Bad input and failures: each costs only what it must (one client, the requests in flight)
//! and says clearly what happened.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Conn, Proxy, Redis, config_yaml, free_port};

#[test]
fn malformed_input_closes_only_that_client_with_a_protocol_error() {
    let redis = Redis::start();
    let mut proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    proxy.allow_warning("protocol error");
    let mut good = proxy.conn();
    assert_eq!(good.cmd(&["SET", "k", "v"]), "+OK\r\n");
    let cases: &[(&[u8], &str)] = &[
        (b"*1\r\n:1\r\n", "-ERR Protocol error: expected '$', got ':'\r\n"),
        (b"*x\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*1\r\n$-5\r\n", "-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1\r\n$3\r\nGETxx", "-ERR Protocol error: expected CRLF after bulk string\r\n"),
        (b"SET \"unbalanced\r\n", "-ERR Protocol error: unbalanced quotes in request\r\n"),
    ];
    for (input, want) in cases {
        let mut bad = proxy.conn();
        bad.send_raw(input);
        assert_eq!(String::from_utf8_lossy(&bad.read_reply()), *want, "{:?}", String::from_utf8_lossy(input));
        assert!(bad.is_closed(), "the offending client is disconnected");
    }
    assert_eq!(good.cmd(&["GET", "k"]), "$1\r\nv\r\n", "other clients are unaffected");
    assert_eq!(proxy.metric("respmesh_proxy_protocol_errors_total"), cases.len() as f64);
}

#[test]
fn replies_before_the_bad_frame_are_still_delivered() {
    let redis = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    let mut c = proxy.conn();
    c.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*1\r\n$4\r\nPING\r\n*1\r\n!oops\r\n");
    assert_eq!(c.read_reply(), b"+OK\r\n");
    assert_eq!(c.read_reply(), b"+PONG\r\n");
    assert_eq!(String::from_utf8_lossy(&c.read_reply()), "-ERR Protocol error: expected '$', got '!'\r\n");
    assert!(c.is_closed());
}

#[test]
fn configured_limits_bound_bulk_array_and_inline_sizes() {
    let redis = Redis::start();
    let yaml = config_yaml(&redis.addr(), "")
        + "limits:\n  maxBulkLength: 1024\n  maxArrayLength: 16\n  maxInlineLength: 64\n";
    let proxy = Proxy::start_config(&yaml);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "k", &"x".repeat(1024)]), "+OK\r\n", "at the limit is fine");

    let mut c = proxy.conn();
    c.send(&["SET", "k", &"x".repeat(1025)]);
    assert_eq!(
        String::from_utf8_lossy(&c.read_reply()),
        "-ERR Protocol error: bulk string of 1025 bytes is over this proxy's limit of 1024 (limits.maxBulkLength)\r\n"
    );
    assert!(c.is_closed());

    let mut c = proxy.conn();
    let mut args = vec!["DEL"];
    args.extend(std::iter::repeat_n("k", 16));
    c.send(&args);
    assert_eq!(
        String::from_utf8_lossy(&c.read_reply()),
        "-ERR Protocol error: command has 17 elements, over this proxy's limit of 16 (limits.maxArrayLength)\r\n"
    );

    let mut c = proxy.conn();
    c.send_raw(format!("GET {}", "k".repeat(100)).as_bytes());
    assert_eq!(String::from_utf8_lossy(&c.read_reply()), "-ERR Protocol error: too big inline request\r\n");
    assert!(c.is_closed());
}

#[test]
fn unauthenticated_clients_cannot_send_large_frames() {
    let redis = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &redis.addr(), "--client-password", "pw"]);
    let mut c = proxy.conn();
    c.send(&["AUTH", &"x".repeat(20_000)]);
    assert_eq!(String::from_utf8_lossy(&c.read_reply()), "-ERR Protocol error: unauthenticated bulk length\r\n");
    assert!(c.is_closed());
}

#[test]
fn redis_down_gives_fast_clear_errors_then_recovers() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut proxy = Proxy::start_args(&["--upstream", &addr]);
    proxy.allow_warning("cannot connect to upstream");
    proxy.allow_warning("upstream connection lost");
    let mut c = proxy.conn();
    let start = Instant::now();
    let reply = c.cmd(&["GET", "k"]);
    assert!(start.elapsed() < Duration::from_millis(500), "took {:?}", start.elapsed());
    assert_eq!(
        reply,
        format!("-ERR respmesh: upstream {addr} ({addr}) unavailable: Connection refused (os error 111)\r\n")
    );
    // During the backoff further requests fail at once, without a connection attempt each.
    let start = Instant::now();
    for _ in 0..100 {
        assert!(c.cmd(&["GET", "k"]).starts_with("-ERR respmesh: upstream"));
    }
    assert!(start.elapsed() < Duration::from_millis(500));

    // Redis comes up: within the backoff (at most 1 s) requests succeed.
    let _redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ok = false;
    while Instant::now() < deadline {
        if c.cmd(&["SET", "k", "v"]) == "+OK\r\n" {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok, "the proxy did not reconnect");
    assert!(proxy.metric(&format!("respmesh_proxy_upstream_connect_failures_total{{service=\"{addr}\"}}")) >= 1.0);
}

#[test]
fn redis_restarting_fails_only_the_requests_in_flight() {
    let mut redis = Redis::start();
    let mut proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    proxy.allow_warning("upstream connection lost");
    let mut before = proxy.conn();
    assert_eq!(before.cmd(&["SET", "k", "v"]), "+OK\r\n");
    // Two requests in flight on the shared connection when Redis dies.
    let mut slow = proxy.conn();
    slow.send(&["DEBUG", "SLEEP", "2"]);
    std::thread::sleep(Duration::from_millis(100));
    let mut queued = proxy.conn();
    queued.send(&["GET", "k"]);
    std::thread::sleep(Duration::from_millis(100));
    redis.restart();
    // Closed or reset, depending on timing.
    let lost = format!("-ERR respmesh: upstream {0} ({0}) unavailable: ", redis.addr());
    for c in [&mut slow, &mut queued] {
        let reply = String::from_utf8_lossy(&c.read_reply()).into_owned();
        assert!(reply.starts_with(&lost), "{reply}");
    }
    // The next requests reconnect at once and succeed; no client was disconnected.
    assert_eq!(queued.cmd(&["SET", "k", "again"]), "+OK\r\n");
    assert_eq!(before.cmd(&["GET", "k"]), "$5\r\nagain\r\n");
    assert_eq!(slow.cmd(&["PING"]), "+PONG\r\n");
}

#[test]
fn a_request_over_op_timeout_gets_an_error_and_others_recover() {
    let redis = Redis::start();
    let mut proxy = Proxy::start_config(&config_yaml(&redis.addr(), "    opTimeout: 300ms\n"));
    proxy.allow_warning("request timed out");
    proxy.allow_warning("upstream connection lost");
    let mut c = proxy.conn();
    let start = Instant::now();
    let reply = c.cmd(&["DEBUG", "SLEEP", "1"]);
    let took = start.elapsed();
    assert_eq!(
        reply,
        "-ERR respmesh: upstream redis-single (".to_owned()
            + &redis.addr()
            + ") did not reply within opTimeout 300ms\r\n"
    );
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(900), "took {took:?}");
    assert_eq!(proxy.metric("respmesh_proxy_upstream_timeouts_total{service=\"redis-single\"}"), 1.0);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(c.cmd(&["SET", "after", "1"]), "+OK\r\n");
}

#[test]
fn blocking_commands_are_not_cut_by_op_timeout() {
    let redis = Redis::start();
    let mut proxy = Proxy::start_config(&config_yaml(&redis.addr(), "    opTimeout: 200ms\n"));
    let mut c = proxy.conn();
    let start = Instant::now();
    assert_eq!(c.cmd(&["BLPOP", "nothing", "0.6"]), "*-1\r\n");
    assert!(start.elapsed() >= Duration::from_millis(600));

    // Commands pipelined behind a blocking command wait for it (Redis answers them after it),
    // and their opTimeout starts when it is answered, not when they were sent.
    let pipeline = |cmds: &[&[&[u8]]]| cmds.iter().flat_map(|c| Conn::encode(c)).collect::<Vec<u8>>();
    c.send_raw(&pipeline(&[&[b"BLPOP", b"nothing", b"0.6"], &[b"SET", b"k", b"v"], &[b"GET", b"k"]]));
    let replies: Vec<String> = (0..3).map(|_| String::from_utf8_lossy(&c.read_reply()).into_owned()).collect();
    assert_eq!(replies, ["*-1\r\n", "+OK\r\n", "$1\r\nv\r\n"]);

    // A command that hangs behind it (Redis is paused once the blocking command waits) still
    // gets the opTimeout error, opTimeout after the blocking command's reply.
    proxy.allow_warning("request timed out");
    proxy.allow_warning("upstream connection lost");
    let start = Instant::now();
    c.send_raw(&pipeline(&[&[b"BLPOP", b"nothing", b"0.4"], &[b"GET", b"k"]]));
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(redis.conn().cmd(&["CLIENT", "PAUSE", "1500", "ALL"]), "+OK\r\n");
    assert_eq!(c.read_reply(), b"*-1\r\n");
    let answered = start.elapsed();
    let hung = String::from_utf8_lossy(&c.read_reply()).into_owned();
    let waited = start.elapsed() - answered;
    assert!(hung.contains("did not reply within opTimeout 200ms"), "{hung}");
    assert!(waited >= Duration::from_millis(150) && waited < Duration::from_millis(600), "waited {waited:?}");
    assert_eq!(redis.conn().cmd(&["CLIENT", "UNPAUSE"]), "+OK\r\n");
}

#[test]
fn clients_vanishing_mid_pipeline_leak_nothing() {
    let redis = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    let mut batch = Vec::new();
    for i in 0..5_000 {
        batch.extend(Conn::encode(&[b"SET", format!("key{i}").as_bytes(), b"value"]));
    }
    for _ in 0..40 {
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.write_all(&batch).unwrap();
        drop(s); // gone before reading a single reply
    }
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.metric("respmesh_proxy_client_connections") > 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(proxy.metric("respmesh_proxy_client_connections"), 1.0, "only the live client remains");
    // Redis sees the proxy's one shared connection (plus this INFO connection), no leftovers.
    let info = redis.conn().cmd(&["INFO", "clients"]);
    assert!(info.contains("connected_clients:2"), "{info}");
}

#[test]
fn random_garbage_never_takes_the_proxy_down() {
    let redis = Redis::start();
    let mut proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    proxy.allow_warning("protocol error");
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..300 {
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let len = rng.usize(1..2048);
        let mut junk: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        // Make many of them look like RESP to get past the first byte.
        if rng.bool() {
            junk[0] = *rng.choice(b"*$+-:\r\n").unwrap();
        }
        let _ = s.write_all(&junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        // The proxy answers what it can and closes: reading ends well before the timeout.
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    assert_eq!(proxy.admin_get("/live").0, 200);
    assert_eq!(proxy.conn().cmd(&["PING"]), "+PONG\r\n");
}

#[test]
fn malformed_commands_of_every_kind_never_break_the_proxy() {
    let redis = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &redis.addr(), "--client-password", "pw"]);
    support::random_commands_never_break(&proxy, 7);
    let open = Proxy::start_args(&["--upstream", &redis.addr()]);
    support::random_commands_never_break(&open, 8);
}

/// A proxy in front of a Redis started with `redis_args`, and a client of it subscribed to
/// "firehose" that reads nothing more.
fn firehose_subscriber(redis_args: &[&str], warning: &str) -> (Redis, Proxy, Conn) {
    let redis = Redis::start_with(redis_args);
    let mut proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    proxy.allow_warning(warning);
    let mut sub = proxy.conn();
    sub.send(&["SUBSCRIBE", "firehose"]);
    assert_eq!(String::from_utf8_lossy(&sub.read_reply()), "*3\r\n$9\r\nsubscribe\r\n$8\r\nfirehose\r\n:1\r\n");
    (redis, proxy, sub)
}

/// Reads what is left in the connection until the proxy closes it; the bytes read.
fn read_until_closed(conn: &mut Conn) -> usize {
    conn.set_timeout(Duration::from_secs(10));
    let mut total = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match Read::read(&mut conn.stream, &mut chunk) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return total,
            Err(e) => panic!("the connection was not closed: {e}"),
        }
    }
}

#[test]
fn a_subscriber_that_does_not_read_is_disconnected_before_it_costs_the_proxy_its_memory() {
    // Redis's own pub/sub output limit (32 MiB by default) is lifted, so that the proxy's is
    // the one reached: with it, whichever side lags behind by 32 MiB first cuts the subscriber
    // off, and on a loaded machine that can be Redis.
    let (redis, proxy, mut sub) =
        firehose_subscriber(&["--client-output-buffer-limit", "pubsub 0 0 0"], "does not read what it is sent");
    // 64 MiB of messages to a client that reads none of them.
    let payload = "x".repeat(1 << 20);
    let mut publisher = redis.conn();
    for _ in 0..64 {
        // :1 until the proxy lets the subscriber go (its upstream connection goes with it).
        let receivers = publisher.cmd(&["PUBLISH", "firehose", &payload]);
        assert!(receivers == ":1\r\n" || receivers == ":0\r\n", "{receivers}");
    }
    assert!(proxy.wait_log("does not read what it is sent", Duration::from_secs(10)));
    // What was already in the socket can still be read, then the connection ends.
    let total = read_until_closed(&mut sub);
    assert!(total < 48 << 20, "{total} bytes reached the subscriber: it was cut off near the limit");
    // Everyone else is served as before.
    assert_eq!(proxy.conn().cmd(&["PING"]), "+PONG\r\n");
}

#[test]
fn a_subscriber_that_redis_cuts_off_is_disconnected_by_the_proxy_too() {
    // Redis's pub/sub output limit, made small: Redis drops the subscriber's upstream
    // connection, and the client must see its connection end, not a subscription that
    // silently receives nothing more.
    let (redis, proxy, mut sub) =
        firehose_subscriber(&["--client-output-buffer-limit", "pubsub 1mb 0 0"], "upstream connection lost");
    let payload = "x".repeat(1 << 20);
    let mut publisher = redis.conn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while publisher.cmd(&["PUBLISH", "firehose", &payload]) == ":1\r\n" {
        assert!(Instant::now() < deadline, "Redis never dropped the subscriber");
    }
    read_until_closed(&mut sub);
    assert_eq!(proxy.conn().cmd(&["PING"]), "+PONG\r\n");
}

#[test]
fn random_pipelines_of_every_command_keep_every_reply_in_place() {
    let redis = Redis::start();
    let mut proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    proxy.allow_warning("protocol error");
    support::random_pipelines_keep_every_reply_in_place(&proxy, 11, false);
}

#[test]
fn a_client_that_leaves_while_blocked_takes_its_redis_connection_with_it() {
    let redis = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    let pipelines: &[&[&[&[u8]]]] = &[
        &[&[b"BLPOP", b"nothing", b"0"]],
        // Commands behind the blocking one: the client is still seen leaving.
        &[&[b"BLPOP", b"nothing", b"0"], &[b"GET", b"k"], &[b"SET", b"k", b"v"]],
        &[&[b"SET", b"k", b"v"], &[b"WAIT", b"1", b"0"], &[b"GET", b"k"]],
        &[&[b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s", b"$"]],
        &[&[b"WATCH", b"k"], &[b"BRPOP", b"nothing", b"0"]],
    ];
    for pipeline in pipelines {
        let mut c = proxy.conn();
        c.send_raw(&pipeline.iter().flat_map(|cmd| Conn::encode(cmd)).collect::<Vec<u8>>());
        std::thread::sleep(Duration::from_millis(100));
        drop(c);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let blocked = || {
        let list = redis.conn().cmd(&["CLIENT", "LIST"]);
        list.lines().filter(|l| l.contains("flags=b")).count()
    };
    while (blocked() > 0 || proxy.metric("respmesh_proxy_client_connections") > 0.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(blocked(), 0, "Redis still has blocked clients: {}", redis.conn().cmd(&["CLIENT", "LIST"]));
    assert_eq!(proxy.metric("respmesh_proxy_client_connections"), 0.0, "sessions left behind");
}
