//! Fault injection (the seed's scenario 7): ERROR and DELAY faults, their rates and replies.

mod support;

use std::time::{Duration, Instant};

use support::{Conn, Proxy, Redis, config_yaml};

#[test]
fn scenario_7_half_of_the_gets_fail_with_the_fault_error() {
    let redis = Redis::start();
    let faults = "    faults:\n      - type: ERROR\n        percentage: {value: 50}\n        commands: [GET]\n";
    let proxy = Proxy::start_config(&config_yaml(&redis.addr(), faults));
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "a", "a"]), "+OK\r\n", "SET is not affected");
    let n = 10_000;
    let mut batch = Vec::new();
    for _ in 0..n {
        batch.extend(Conn::encode(&[b"get", b"a"]));
    }
    c.send_raw(&batch);
    let mut errors = 0;
    for _ in 0..n {
        match c.read_reply().as_slice() {
            b"-Fault Injected: Error\r\n" => errors += 1,
            b"$1\r\na\r\n" => {}
            other => panic!("unexpected reply {:?}", String::from_utf8_lossy(other)),
        }
    }
    // 50% of 10,000: within three standard deviations (sigma = 50).
    assert!((4850..=5150).contains(&errors), "{errors} errors");
    let injected = proxy.metric("respmesh_proxy_faults_injected_total{service=\"redis-single\",type=\"error\"}");
    assert_eq!(injected, errors as f64);
}

#[test]
fn a_fault_without_commands_spares_auth_and_ping() {
    let redis = Redis::start();
    let faults = "    clientAuth: {password: pw}\n    faults:\n      - type: ERROR\n        percentage: {value: 100}\n";
    let proxy = Proxy::start_config(&config_yaml(&redis.addr(), faults));
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["AUTH", "pw"]), "+OK\r\n");
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n");
    assert_eq!(c.cmd(&["SET", "k", "v"]), "-Fault Injected: Error\r\n");
    assert_eq!(c.cmd(&["GET", "k"]), "-Fault Injected: Error\r\n");
}

#[test]
fn a_delay_fault_holds_the_reply_but_not_other_clients() {
    let redis = Redis::start();
    let faults = "    faults:\n      - type: DELAY\n        delay: 300ms\n        percentage: {value: 100}\n        commands: [get]\n";
    let proxy = Proxy::start_config(&config_yaml(&redis.addr(), faults));
    let mut slow = proxy.conn();
    let mut other = proxy.conn();
    other.cmd(&["SET", "k", "v"]);
    let start = Instant::now();
    // A pipelined SET after the delayed GET comes back after it, in order.
    slow.send(&["GET", "k"]);
    slow.send(&["SET", "k2", "v2"]);
    std::thread::sleep(Duration::from_millis(20));
    let t = Instant::now();
    assert_eq!(other.cmd(&["SET", "x", "1"]), "+OK\r\n");
    assert!(t.elapsed() < Duration::from_millis(100), "another client was delayed");
    assert_eq!(slow.read_reply(), b"$1\r\nv\r\n");
    assert!(start.elapsed() >= Duration::from_millis(300), "{:?}", start.elapsed());
    assert_eq!(slow.read_reply(), b"+OK\r\n");
}

#[test]
fn invalid_faults_are_rejected_with_the_field_named() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let faults = "    faults:\n      - type: DELAY\n        percentage: {value: 150}\n";
    std::fs::write(&path, config_yaml(&redis.addr(), faults)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_respmesh-proxy"))
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("services[0].faults[0].percentage.value: 150 is not between 0 and 100"), "{err}");
    assert!(err.contains("services[0].faults[0].delay: a DELAY fault needs a delay"), "{err}");
}

#[test]
fn a_reload_changes_faults_for_the_next_request_of_an_open_connection() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&config_yaml(&redis.addr(), ""));
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "k", "v"]), "+OK\r\n");
    let faults = "    faults:\n      - {type: ERROR, percentage: {value: 100}, commands: [get]}\n";
    proxy.rewrite_config(&config_yaml(&redis.addr(), faults));
    assert!(proxy.wait_log("configuration reloaded", Duration::from_secs(5)));
    assert_eq!(c.cmd(&["GET", "k"]), "-Fault Injected: Error\r\n", "same connection, new policy");
    proxy.rewrite_config(&config_yaml(&redis.addr(), ""));
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.cmd(&["GET", "k"]) != "$1\r\nv\r\n" {
        assert!(Instant::now() < deadline, "the fault was not lifted");
        std::thread::sleep(Duration::from_millis(20));
    }
}
