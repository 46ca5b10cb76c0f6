//! Sizes at the edges: empty and 100 MiB values, and a pipeline of 100,000 commands.

mod support;

use std::io::Write;

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
    let value: Vec<u8> = (0..100 * 1024 * 1024).map(|i: usize| (i % 251) as u8).collect();
    c.send_raw(&Conn::encode(&[b"SET", b"big", &value]));
    assert_eq!(c.read_reply(), b"+OK\r\n");
    c.send(&["GET", "big"]);
    let reply = c.read_reply();
    let header = format!("${}\r\n", value.len());
    assert_eq!(&reply[..header.len()], header.as_bytes());
    assert!(reply[header.len()..reply.len() - 2] == value[..], "the value came back altered");
    assert_eq!(c.cmd(&["STRLEN", "big"]), ":104857600\r\n");
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
