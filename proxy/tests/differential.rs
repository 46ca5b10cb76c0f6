//! Transparency, proven differentially: the same command scripts run directly against one
//! redis-server and through the proxy against another (both fresh), and the replies are
//! compared byte for byte. Replies that differ between any two servers by nature (server
//! statistics, clock, connection ids) are compared by type only, and marked so below.

mod support;

use support::{Conn, Proxy, Redis};

#[derive(Clone, Copy, PartialEq)]
enum Cmp {
    /// Byte for byte.
    Exact,
    /// Same reply type (first byte) only.
    Shape,
    /// The same elements in any order: Redis seeds its hash tables at random, so the order of
    /// KEYS, SCAN and set members differs between any two servers.
    Unordered,
}
use Cmp::*;

/// One step of a script.
type Step = (Cmp, &'static [&'static str]);

const LIBRARY: &str = "#!lua name=mylib\nredis.register_function('myecho', function(keys, args) return args[1] end)";

/// A script covering every command group.
fn script() -> Vec<Step> {
    vec![
        // connection
        (Exact, &["PING"]),
        (Exact, &["PING", "hello"]),
        (Exact, &["ECHO", "hi"]),
        (Exact, &["SELECT", "0"]),
        (Exact, &["CLIENT", "GETNAME"]),
        (Exact, &["CLIENT", "SETNAME", "bad name"]),
        (Exact, &["CLIENT", "SETNAME", "app-1"]),
        (Exact, &["CLIENT", "GETNAME"]),
        (Exact, &["CLIENT", "SETINFO", "LIB-NAME", "respmesh-test"]),
        (Exact, &["CLIENT", "NOSUCH"]),
        (Exact, &["HELLO", "x"]),
        (Exact, &["HELLO", "4"]),
        (Exact, &["HELLO", "2", "BOGUS"]),
        (Exact, &["HELLO", "2", "SETNAME", "bad name"]),
        (Shape, &["HELLO", "2"]),
        (Exact, &["AUTH"]),
        // errors
        (Exact, &["NOSUCHCOMMAND", "a", "b"]),
        (Exact, &["GET"]),
        (Exact, &["GET", "a", "b"]),
        // strings
        (Exact, &["SET", "s", "hello"]),
        (Exact, &["GET", "s"]),
        (Exact, &["GET", "missing"]),
        (Exact, &["APPEND", "s", " world"]),
        (Exact, &["STRLEN", "s"]),
        (Exact, &["GETRANGE", "s", "0", "4"]),
        (Exact, &["SETRANGE", "s", "0", "J"]),
        (Exact, &["SET", "n", "10"]),
        (Exact, &["INCR", "n"]),
        (Exact, &["INCRBY", "n", "5"]),
        (Exact, &["INCRBYFLOAT", "n", "1.5"]),
        (Exact, &["DECR", "s"]),
        (Exact, &["MSET", "a", "1", "b", "2", "c", "3"]),
        (Exact, &["MGET", "a", "b", "missing", "c"]),
        (Exact, &["MSETNX", "a", "9", "z", "9"]),
        (Exact, &["SETNX", "a", "9"]),
        (Exact, &["GETSET", "a", "11"]),
        (Exact, &["GETDEL", "b"]),
        (Exact, &["SET", "e", "", "EX", "100"]),
        (Exact, &["GET", "e"]),
        (Exact, &["LCS", "s", "a"]),
        // keys
        (Exact, &["EXISTS", "a", "b", "c"]),
        (Exact, &["TYPE", "a"]),
        (Exact, &["EXPIRE", "a", "1000"]),
        (Exact, &["TTL", "a"]),
        (Exact, &["PERSIST", "a"]),
        (Exact, &["TTL", "a"]),
        (Exact, &["RENAME", "c", "c2"]),
        (Exact, &["COPY", "c2", "c3"]),
        (Exact, &["OBJECT", "ENCODING", "n"]),
        (Exact, &["DUMP", "c2"]),
        (Exact, &["DEL", "c3", "missing"]),
        (Exact, &["UNLINK", "c2"]),
        (Exact, &["TOUCH", "a", "s"]),
        (Unordered, &["KEYS", "*"]),
        (Unordered, &["SCAN", "0", "COUNT", "100"]),
        (Exact, &["DBSIZE"]),
        (Shape, &["RANDOMKEY"]),
        // lists
        (Exact, &["RPUSH", "l", "a", "b", "c", "d"]),
        (Exact, &["LPUSH", "l", "z"]),
        (Exact, &["LRANGE", "l", "0", "-1"]),
        (Exact, &["LLEN", "l"]),
        (Exact, &["LINDEX", "l", "1"]),
        (Exact, &["LPOP", "l"]),
        (Exact, &["RPOP", "l", "2"]),
        (Exact, &["LMOVE", "l", "l2", "LEFT", "RIGHT"]),
        (Exact, &["LPOS", "l", "b"]),
        (Exact, &["LTRIM", "l", "0", "0"]),
        // blocking commands whose answer is at hand, or that time out quickly
        (Exact, &["BLPOP", "l", "1"]),
        (Exact, &["BLPOP", "empty", "0.05"]),
        (Exact, &["BRPOPLPUSH", "l2", "l3", "1"]),
        (Exact, &["BLMOVE", "l3", "l4", "LEFT", "LEFT", "1"]),
        (Exact, &["BLMPOP", "0.05", "1", "empty", "LEFT"]),
        (Exact, &["WAIT", "0", "0"]),
        // hashes
        (Exact, &["HSET", "h", "f1", "v1", "f2", "v2"]),
        (Exact, &["HGET", "h", "f1"]),
        (Exact, &["HGETALL", "h"]),
        (Exact, &["HMGET", "h", "f1", "nope"]),
        (Exact, &["HINCRBY", "h", "n", "3"]),
        (Exact, &["HKEYS", "h"]),
        (Exact, &["HLEN", "h"]),
        (Exact, &["HDEL", "h", "f2"]),
        (Exact, &["HEXISTS", "h", "f1"]),
        (Exact, &["HSCAN", "h", "0"]),
        (Exact, &["HGET", "s", "x"]),
        // sets
        (Exact, &["SADD", "st", "a", "b", "c"]),
        (Exact, &["SADD", "st2", "b", "c", "d"]),
        (Exact, &["SISMEMBER", "st", "a"]),
        (Exact, &["SMISMEMBER", "st", "a", "x"]),
        (Exact, &["SCARD", "st"]),
        (Unordered, &["SINTER", "st", "st2"]),
        (Exact, &["SUNIONSTORE", "st3", "st", "st2"]),
        (Unordered, &["SMEMBERS", "st3"]),
        (Unordered, &["SDIFF", "st", "st2"]),
        (Exact, &["SMOVE", "st", "st2", "a"]),
        (Shape, &["SRANDMEMBER", "st2"]),
        // sorted sets
        (Exact, &["ZADD", "z", "1", "a", "2", "b", "3.5", "c"]),
        (Exact, &["ZRANGE", "z", "0", "-1", "WITHSCORES"]),
        (Exact, &["ZSCORE", "z", "c"]),
        (Exact, &["ZINCRBY", "z", "2", "a"]),
        (Exact, &["ZRANK", "z", "a"]),
        (Exact, &["ZRANGEBYSCORE", "z", "(1", "+inf"]),
        (Exact, &["ZPOPMIN", "z"]),
        (Exact, &["BZPOPMIN", "z", "1"]),
        (Exact, &["BZPOPMAX", "empty", "0.05"]),
        (Exact, &["ZCARD", "z"]),
        (Exact, &["ZUNIONSTORE", "z2", "1", "z"]),
        // streams, with explicit ids
        (Exact, &["XADD", "x", "1-1", "f", "v"]),
        (Exact, &["XADD", "x", "2-1", "f", "w"]),
        (Exact, &["XLEN", "x"]),
        (Exact, &["XRANGE", "x", "-", "+"]),
        (Exact, &["XREAD", "COUNT", "1", "STREAMS", "x", "0"]),
        (Exact, &["XREAD", "BLOCK", "50", "STREAMS", "x", "$"]),
        (Exact, &["XGROUP", "CREATE", "x", "g", "0"]),
        (Exact, &["XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "x", ">"]),
        (Exact, &["XREADGROUP", "GROUP", "g", "c", "BLOCK", "50", "STREAMS", "x", ">"]),
        (Exact, &["XACK", "x", "g", "1-1"]),
        (Exact, &["XPENDING", "x", "g"]),
        (Exact, &["XDEL", "x", "1-1"]),
        // bitmaps, hyperloglog, geo
        (Exact, &["SETBIT", "bits", "7", "1"]),
        (Exact, &["GETBIT", "bits", "7"]),
        (Exact, &["BITCOUNT", "bits"]),
        (Exact, &["BITOP", "NOT", "bits2", "bits"]),
        (Exact, &["BITFIELD", "bf", "INCRBY", "u8", "0", "200"]),
        (Exact, &["PFADD", "hll", "a", "b", "c", "a"]),
        (Exact, &["PFCOUNT", "hll"]),
        (Exact, &["GEOADD", "geo", "13.361389", "38.115556", "Palermo", "15.087269", "37.502669", "Catania"]),
        (Exact, &["GEODIST", "geo", "Palermo", "Catania", "km"]),
        (Exact, &["GEOSEARCH", "geo", "FROMLONLAT", "15", "37", "BYRADIUS", "200", "km", "ASC"]),
        // scripting and functions
        (Exact, &["EVAL", "return {KEYS[1], ARGV[1], redis.call('GET', KEYS[1])}", "1", "s", "arg"]),
        (Exact, &["EVAL", "return redis.call('INCR', KEYS[1])", "1", "counter"]),
        (Exact, &["EVAL", "return redis.error_reply('MYERR custom')", "0"]),
        (Exact, &["SCRIPT", "LOAD", "return 42"]),
        (Exact, &["EVALSHA", "1fa00e76656cc152ad327c13fe365858fd7be306", "0"]),
        (
            Exact,
            &[
                "SCRIPT",
                "EXISTS",
                "1fa00e76656cc152ad327c13fe365858fd7be306",
                "0000000000000000000000000000000000000000",
            ],
        ),
        (Exact, &["FUNCTION", "LOAD", LIBRARY]),
        (Exact, &["FCALL", "myecho", "0", "echoed"]),
        (Exact, &["FUNCTION", "DELETE", "mylib"]),
        // transactions
        (Exact, &["MULTI"]),
        (Exact, &["SET", "t", "1"]),
        (Exact, &["INCR", "t"]),
        (Exact, &["MULTI"]),
        (Exact, &["EXEC"]),
        (Exact, &["EXEC"]),
        (Exact, &["DISCARD"]),
        (Exact, &["MULTI"]),
        (Exact, &["SET", "t", "100"]),
        (Exact, &["DISCARD"]),
        (Exact, &["GET", "t"]),
        (Exact, &["WATCH", "t"]),
        (Exact, &["MULTI"]),
        (Exact, &["INCR", "t"]),
        (Exact, &["EXEC"]),
        (Exact, &["UNWATCH"]),
        (Exact, &["MULTI"]),
        (Exact, &["INCR", "s"]),
        (Exact, &["NOSUCH"]),
        (Exact, &["EXEC"]),
        // pub/sub without subscribing
        (Exact, &["PUBLISH", "ch", "msg"]),
        (Exact, &["PUBSUB", "CHANNELS"]),
        (Exact, &["UNSUBSCRIBE"]),
        // server
        (Shape, &["INFO", "server"]),
        (Shape, &["TIME"]),
        (Exact, &["CONFIG", "GET", "maxmemory"]),
        (Exact, &["TYPE", "x"]),
        (Exact, &["SORT", "l4", "ALPHA"]),
        (Exact, &["DBSIZE"]),
        // databases: another database for this client only
        (Exact, &["SELECT", "1"]),
        (Exact, &["GET", "s"]),
        (Exact, &["SET", "only-in-1", "x"]),
        (Exact, &["DBSIZE"]),
        (Exact, &["SELECT", "0"]),
        (Exact, &["GET", "only-in-1"]),
        (Exact, &["CLIENT", "GETNAME"]),
        (Exact, &["SELECT", "99"]),
        (Exact, &["FLUSHDB"]),
        (Exact, &["DBSIZE"]),
    ]
}

/// A step with its arguments owned (after rewriting keys).
type Owned = (Cmp, Vec<String>);

fn owned(steps: Vec<Step>) -> Vec<Owned> {
    steps.into_iter().map(|(c, a)| (c, a.iter().map(|s| s.to_string()).collect())).collect()
}

fn compare(what: &str, i: usize, step: &Owned, direct: &[u8], proxied: &[u8]) {
    let (cmp, args) = step;
    let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match cmp {
        Exact => assert_eq!(show(proxied), show(direct), "{what}: step {i} {args:?} differs"),
        Shape => assert_eq!(
            proxied.first(),
            direct.first(),
            "{what}: step {i} {args:?}: {} vs {}",
            show(proxied),
            show(direct)
        ),
        Unordered => {
            let lines = |b: &[u8]| {
                let text = show(b);
                let mut l: Vec<String> = text.split("\r\n").map(str::to_owned).collect();
                l[1..].sort();
                l
            };
            assert_eq!(lines(proxied), lines(direct), "{what}: step {i} {args:?} differs");
        }
    }
}

/// Runs the script one command at a time on both sides.
fn run_sequential(what: &str, mut direct: Conn, mut proxied: Conn, prelude: &[&str]) {
    run_steps(what, &mut direct, &mut proxied, prelude, &owned(script()));
}

fn run_steps(what: &str, direct: &mut Conn, proxied: &mut Conn, prelude: &[&str], steps: &[Owned]) {
    if !prelude.is_empty() {
        let d = direct.cmd(prelude);
        let p = proxied.cmd(prelude);
        assert_eq!(d.as_bytes()[0], p.as_bytes()[0], "{what}: prelude {d} vs {p}");
    }
    for (i, step) in steps.iter().enumerate() {
        let args: Vec<&str> = step.1.iter().map(String::as_str).collect();
        direct.send(&args);
        proxied.send(&args);
        let d = direct.read_reply();
        let p = proxied.read_reply();
        compare(what, i, step, &d, &p);
    }
}

/// Sends the whole script as one pipeline on both sides, then reads every reply.
fn run_pipelined(what: &str, mut direct: Conn, mut proxied: Conn) {
    run_steps_pipelined(what, &mut direct, &mut proxied, &owned(script()));
}

fn run_steps_pipelined(what: &str, direct: &mut Conn, proxied: &mut Conn, steps: &[Owned]) {
    let mut batch = Vec::new();
    for (_, args) in steps {
        let raw: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        batch.extend(Conn::encode(&raw));
    }
    direct.send_raw(&batch);
    proxied.send_raw(&batch);
    for (i, step) in steps.iter().enumerate() {
        let d = direct.read_reply();
        let p = proxied.read_reply();
        compare(what, i, step, &d, &p);
    }
}

/// The script for CLUSTER mode: every key gets the hash tag `{d}`, so that commands over
/// several keys run as they would on one Redis (a cluster answers CROSSSLOT otherwise; the
/// cluster tests cover keys spread over all slots). Left out: what a cluster answers
/// differently by design (SELECT of another database and what runs there, WAIT, which counts
/// the cluster's replicas where the direct Redis has none, and SCAN, whose cursor carries the
/// node). WAIT, MONITOR and CLIENT ID/INFO/REPLY have tests of their own in tests/cluster.rs.
fn cluster_script() -> Vec<Owned> {
    let mut out = Vec::new();
    let mut other_db = false;
    for (cmp, args) in script() {
        if args[0] == "SELECT" {
            other_db = args[1] != "0";
            continue;
        }
        if other_db || args[0] == "WAIT" || args[0] == "SCAN" {
            continue;
        }
        let raw: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let keys = respmesh_proxy::command::keys::key_positions(respmesh_proxy::command::lookup(raw[0]), &raw)
            .unwrap_or_default();
        let rewritten =
            args.iter().enumerate().map(|(i, a)| if keys.contains(&i) { format!("{{d}}{a}") } else { a.to_string() });
        out.push((cmp, rewritten.collect()));
    }
    out
}

#[test]
fn the_script_replies_as_one_redis_would_through_cluster_mode() {
    let cluster = support::Cluster::start();
    let direct = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &cluster.nodes[0].addr(), "--mode", "cluster"]);
    let steps = cluster_script();
    run_steps("CLUSTER RESP2", &mut direct.conn(), &mut proxy.conn(), &[], &steps);
    direct.conn().cmd(&["FLUSHALL"]);
    proxy.conn().cmd(&["FLUSHALL"]);
    run_steps("CLUSTER RESP3", &mut direct.conn(), &mut proxy.conn(), &["HELLO", "3"], &steps);
    direct.conn().cmd(&["FLUSHALL"]);
    proxy.conn().cmd(&["FLUSHALL"]);
    run_steps_pipelined("CLUSTER pipeline", &mut direct.conn(), &mut proxy.conn(), &steps);
}

fn pair() -> (Redis, Redis, Proxy) {
    let direct = Redis::start();
    let behind = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &behind.addr()]);
    (direct, behind, proxy)
}

#[test]
fn every_command_group_replies_byte_for_byte_as_redis_does_resp2() {
    let (direct, _behind, proxy) = pair();
    run_sequential("RESP2", direct.conn(), proxy.conn(), &[]);
}

#[test]
fn every_command_group_replies_byte_for_byte_as_redis_does_resp3() {
    let (direct, _behind, proxy) = pair();
    run_sequential("RESP3", direct.conn(), proxy.conn(), &["HELLO", "3"]);
}

#[test]
fn the_whole_script_as_one_pipeline_replies_in_order() {
    let (direct, _behind, proxy) = pair();
    run_pipelined("pipeline", direct.conn(), proxy.conn());
}

#[test]
fn inline_commands_work_as_with_redis() {
    let (direct, _behind, proxy) = pair();
    let script: &[&[u8]] = &[
        b"PING\r\n",
        b"SET inl \"two words\"\r\n",
        b"GET inl\n",
        b"\r\n",
        b"EXISTS inl nope\r\n",
        b"SET q 'it\\'s'\r\n",
        b"GET q\r\n",
    ];
    let (mut d, mut p) = (direct.conn(), proxy.conn());
    for line in script {
        d.send_raw(line);
        p.send_raw(line);
        if *line == b"\r\n" {
            continue; // an empty line gets no reply
        }
        assert_eq!(
            String::from_utf8_lossy(&p.read_reply()),
            String::from_utf8_lossy(&d.read_reply()),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn commands_split_across_many_small_writes_are_reassembled() {
    let (direct, _behind, proxy) = pair();
    let (mut d, mut p) = (direct.conn(), proxy.conn());
    let frame = Conn::encode(&[b"SET", b"split", &vec![b'x'; 10_000]]);
    d.send_raw(&frame);
    for chunk in frame.chunks(7) {
        p.send_raw(chunk);
    }
    assert_eq!(p.read_reply(), d.read_reply());
    assert_eq!(p.cmd(&["STRLEN", "split"]), ":10000\r\n");
}
