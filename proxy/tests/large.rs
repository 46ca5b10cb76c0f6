//! Sizes at the edges: empty and 100 MiB values, and a pipeline of 100,000 commands; and the
//! memory they take, which the proxy gives back once they have passed.

mod support;

use std::io::Write;
use std::time::Duration;

use support::{Conn, Proxy, Redis};

#[test]
fn empty_values_round_trip() {
    let redis = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "", ""]), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", ""]), "$0\r\n\r\n");
}

#[test]
fn a_100_mib_value_round_trips_intact() {
    let redis = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    let mut c = proxy.conn();
    c.set_timeout(std::time::Duration::from_secs(60));
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n");
    let idle = proxy.memory_kib("VmRSS");
    let value: Vec<u8> = (0..100 * 1024 * 1024).map(|i: usize| (i % 251) as u8).collect();
    c.send_raw(&Conn::encode(&[b"SET", b"big", &value]));
    assert_eq!(c.read_reply(), b"+OK\r\n");
    c.send(&["GET", "big"]);
    let reply = c.read_reply();
    let header = format!("${}\r\n", value.len());
    assert_eq!(&reply[..header.len()], header.as_bytes());
    assert!(reply[header.len()..reply.len() - 2] == value[..], "the value came back altered");
    assert_eq!(c.cmd(&["STRLEN", "big"]), ":104857600\r\n");
    // The value passed through four buffers (the client's, both ways upstream, the reply's).
    // With the client still connected, none of them keeps its 100 MiB.
    let rss = proxy.wait_rss_at_most(idle + 16 * 1024, Duration::from_secs(5));
    assert!(rss <= idle + 16 * 1024, "resident memory {rss} KiB after the value passed, {idle} KiB before");
}

/// Many clients at once with values of a few hundred KiB, then gone: the proxy comes back to
/// the size it had before, instead of keeping what the allocator would hold for reuse.
#[test]
fn after_a_burst_of_clients_with_large_values_the_idle_proxy_is_back_to_its_size() {
    let redis = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    assert_eq!(proxy.conn().cmd(&["PING"]), "+PONG\r\n");
    let idle = proxy.memory_kib("VmRSS");
    let threads: Vec<_> = (0..64)
        .map(|t| {
            let addr = proxy.addr.to_string();
            std::thread::spawn(move || {
                let mut c = Conn::connect(&addr);
                for i in 0..8 {
                    let value = vec![b'a' + (t % 26) as u8; (64 + 64 * i) << 10];
                    let key = format!("burst:{t}:{i}");
                    c.send_raw(&Conn::encode(&[b"SET", key.as_bytes(), &value]));
                    c.send(&["GET", &key]);
                    assert_eq!(c.read_reply(), b"+OK\r\n");
                    let reply = c.read_reply();
                    assert_eq!(reply.len(), format!("${}\r\n", value.len()).len() + value.len() + 2);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let peak = proxy.memory_kib("VmHWM");
    // The allocator may keep up to 4 MiB freed since its last trim, plus some fragmentation.
    let rss = proxy.wait_rss_at_most(idle + 8 * 1024, Duration::from_secs(5));
    assert!(rss <= idle + 8 * 1024, "resident memory {rss} KiB after the burst (peak {peak}), {idle} KiB before");
}

/// Clients that pipeline requests for large values and leave without reading: the replies
/// stream through the proxy as they come and are dropped once each client is known to be gone;
/// they never pile up in the proxy's memory.
#[test]
fn replies_for_clients_that_left_do_not_pile_up_in_the_proxy() {
    let redis = Redis::start();
    let mut direct = redis.conn();
    direct.send_raw(&Conn::encode(&[b"SET", b"mib", &vec![b'm'; 1 << 20]]));
    assert_eq!(direct.read_reply(), b"+OK\r\n");
    let proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    // 16 x 64 MiB of replies asked for (one shared connection to Redis), none read.
    let (before, peak) = proxy.peak_memory_around_clients_that_leave("mib");
    assert!(peak <= before + 32 * 1024, "the proxy's resident memory peaked at {peak} KiB ({before} KiB before)");
    assert_eq!(proxy.conn().cmd(&["GET", "nothing"]), "$-1\r\n");
}

#[test]
fn a_pipeline_of_100k_commands_is_answered_in_order() {
    let redis = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    let mut c = proxy.conn();
    let mut batch = Vec::new();
    for _ in 0..100_000 {
        batch.extend_from_slice(b"*2\r\n$4\r\nINCR\r\n$3\r\nctr\r\n");
    }
    // Write from another thread, as a real client would, while replies are read here.
    let mut writer = c.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&batch).unwrap());
    for i in 1..=100_000 {
        assert_eq!(c.read_reply(), format!(":{i}\r\n").as_bytes());
    }
    sender.join().unwrap();
}

#[test]
fn many_clients_pipelining_at_once_each_get_their_own_replies() {
    let redis = Redis::start();
    let proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let addr = proxy.addr.to_string();
            std::thread::spawn(move || {
                let mut c = Conn::connect(&addr);
                let mut batch = Vec::new();
                for i in 0..2_000 {
                    batch.extend(Conn::encode(&[
                        b"SET",
                        format!("t{t}:{i}").as_bytes(),
                        format!("v{t}:{i}").as_bytes(),
                    ]));
                    batch.extend(Conn::encode(&[b"GET", format!("t{t}:{i}").as_bytes()]));
                }
                c.send_raw(&batch);
                for i in 0..2_000 {
                    assert_eq!(c.read_reply(), b"+OK\r\n");
                    let want = format!("v{t}:{i}");
                    assert_eq!(c.read_reply(), format!("${}\r\n{want}\r\n", want.len()).as_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
