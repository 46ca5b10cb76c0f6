//! Operating the proxy: the admin endpoint, configuration reload without dropping
//! connections, rejection of a bad configuration, graceful shutdown, JSON logs, the open-file
//! limit.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Conn, Proxy, Redis, config_yaml};

#[test]
fn admin_endpoint_reports_health_metrics_and_redacted_config() {
    let redis = Redis::start_with(&["--requirepass", "s3cret-upstream"]);
    let proxy = Proxy::start_config(&config_yaml(
        &redis.addr(),
        "    auth: {password: s3cret-upstream}\n    clientAuth: {password: s3cret-client}\n",
    ));
    assert_eq!(proxy.admin_get("/live"), (200, "live\n".into()));
    assert_eq!(proxy.admin_get("/ready"), (200, "ready\n".into()));
    assert_eq!(proxy.admin_get("/nope").0, 404);

    let (code, config) = proxy.admin_get("/config");
    assert_eq!(code, 200);
    assert!(!config.contains("s3cret"), "credentials must not show: {config}");
    assert!(config.contains("<redacted>") && config.contains("\"generation\": 1"), "{config}");

    let mut c = proxy.conn();
    c.cmd(&["AUTH", "s3cret-client"]);
    for _ in 0..3 {
        c.cmd(&["SET", "k", "v"]);
    }
    c.cmd(&["GET", "k"]);
    c.cmd(&["LPUSH", "k", "x"]); // WRONGTYPE
    let (_, metrics) = proxy.admin_get("/metrics");
    for want in [
        "respmesh_proxy_commands_total{command=\"set\"} 3",
        "respmesh_proxy_commands_total{command=\"get\"} 1",
        "respmesh_proxy_command_errors_total{command=\"lpush\"} 1",
        "respmesh_proxy_command_latency_seconds_count{command=\"set\"} 3",
        "respmesh_proxy_client_connections 1",
        "respmesh_proxy_upstream_connections{service=\"redis-single\"} 1",
    ] {
        assert!(metrics.contains(want), "missing {want:?} in\n{metrics}");
    }
    assert!(!metrics.contains("s3cret"));
}

#[test]
fn a_config_change_applies_without_dropping_connections() {
    let first = Redis::start();
    let second = Redis::start();
    let proxy = Proxy::start_config(&config_yaml(&first.addr(), ""));
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "where", "first"]), "+OK\r\n");

    // Move the service to another Redis and add a second listener.
    let port = support::free_port();
    let moved = config_yaml(&second.addr(), "").replace(
        "listeners:\n",
        &format!("listeners:\n  - address: \"127.0.0.1:{port}\"\n    service: redis-single\n"),
    );
    proxy.rewrite_config(&moved);
    assert!(proxy.wait_log("configuration reloaded", Duration::from_secs(5)), "{}", proxy.log());
    // The same client connection now reaches the second Redis.
    assert_eq!(c.cmd(&["GET", "where"]), "$-1\r\n");
    assert_eq!(c.cmd(&["SET", "where", "second"]), "+OK\r\n");
    assert_eq!(second.conn().cmd(&["GET", "where"]), "$6\r\nsecond\r\n");
    assert_eq!(first.conn().cmd(&["GET", "where"]), "$5\r\nfirst\r\n");
    // The new listener serves too.
    let mut d = support::Conn::connect(&format!("127.0.0.1:{port}"));
    assert_eq!(d.cmd(&["GET", "where"]), "$6\r\nsecond\r\n");
    assert_eq!(proxy.metric("respmesh_proxy_config_reloads_total{result=\"success\"}"), 1.0);
    assert_eq!(proxy.metric("respmesh_proxy_config_generation"), 2.0);
}

#[test]
fn an_invalid_new_config_is_rejected_and_the_old_one_keeps_serving() {
    let redis = Redis::start();
    let mut proxy = Proxy::start_config(&config_yaml(&redis.addr(), ""));
    proxy.allow_warning("new configuration rejected");
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "k", "v"]), "+OK\r\n");
    proxy.rewrite_config(&config_yaml(&redis.addr(), "    opTimeout: soon\n    bogusField: 1\n"));
    assert!(proxy.wait_log("new configuration rejected", Duration::from_secs(5)), "{}", proxy.log());
    assert!(
        proxy.log().contains("unknown field `bogusField`") || proxy.log().contains("invalid duration"),
        "{}",
        proxy.log()
    );
    assert_eq!(c.cmd(&["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(proxy.conn().cmd(&["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(proxy.metric("respmesh_proxy_config_reloads_total{result=\"failure\"}"), 1.0);
    assert_eq!(proxy.metric("respmesh_proxy_config_generation"), 1.0);
}

#[test]
fn a_config_in_a_kubernetes_style_volume_reloads_on_symlink_swap() {
    // A ConfigMap volume: config.yaml -> ..data/config.yaml, ..data -> ..2026_1; an update
    // writes a new timestamped directory and swaps the ..data symlink.
    let redis_a = Redis::start();
    let redis_b = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("..2026_1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("config.yaml"), config_yaml(&redis_a.addr(), "")).unwrap();
    std::os::unix::fs::symlink("..2026_1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.yaml", dir.path().join("config.yaml")).unwrap();
    let mut proxy = Proxy::start_config_path(&dir.path().join("config.yaml"));
    let mut c = proxy.conn();
    c.cmd(&["SET", "k", "a"]);

    let v2 = dir.path().join("..2026_2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("config.yaml"), config_yaml(&redis_b.addr(), "")).unwrap();
    std::os::unix::fs::symlink("..2026_2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    assert!(proxy.wait_log("configuration reloaded", Duration::from_secs(5)), "{}", proxy.log());
    assert_eq!(c.cmd(&["GET", "k"]), "$-1\r\n", "now served by the second Redis");
    proxy.terminate();
}

#[test]
fn sigterm_drains_requests_in_flight_then_exits() {
    let redis = Redis::start();
    let mut proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    let mut c = proxy.conn();
    c.send(&["DEBUG", "SLEEP", "0.5"]);
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    let status = {
        let pid = proxy.pid();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        });
        // The reply in flight still arrives, then the connection closes.
        assert_eq!(c.read_reply(), b"+OK\r\n");
        assert!(c.is_closed());
        t.join().unwrap();
        proxy.terminate_wait()
    };
    assert!(status.success(), "{status:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(proxy.log().contains("SIGTERM: draining"));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let redis = Redis::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_respmesh-proxy"))
        .args(["--upstream", &redis.addr(), "--listen", "127.0.0.1:0", "--admin", "off", "--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(child.stderr.take().unwrap()).lines().take(2).map(Result::unwrap).collect();
    let _ = child.kill();
    let _ = child.wait();
    let parsed: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(parsed.iter().all(|v| v["level"] == "INFO"), "{lines:?}");
    assert_eq!(parsed[0]["fields"]["message"], "open-file limit");
    assert!(parsed[0]["fields"]["limit"].as_u64().is_some_and(|n| n > 0), "{}", lines[0]);
    assert_eq!(parsed[1]["fields"]["message"], "listening");
}

#[test]
fn a_bad_command_line_or_config_fails_with_a_clear_message() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_respmesh-proxy")).args(["--config", "/nonexistent.yaml"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read /nonexistent.yaml"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "apiVersion: proxy.respmesh.io/v1alpha1\nkind: ProxyConfig\nlisteners: [{address: x, service: y}]\n",
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_respmesh-proxy")).args(["--config", path.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listeners[0].address: \"x\" is not an IP:port address"), "{err}");
    assert!(err.contains("listeners[0].service: no service has host \"y\""), "{err}");
}

/// A shared upstream connection has one batch out at a time: requests from other clients that
/// arrive meanwhile wait for its replies, then go upstream together in one write.
#[test]
fn requests_that_arrive_while_a_batch_is_out_go_upstream_together() {
    let redis = Redis::start();
    let proxy = Proxy::start_config(&config_yaml(&redis.addr(), ""));
    let batches = || proxy.metric("respmesh_proxy_upstream_batches_total{service=\"redis-single\"}");
    assert_eq!(proxy.conn().cmd(&["SET", "k", "v"]), "+OK\r\n");
    let before = batches();

    // Keeps Redis busy for 400 ms: its batch stays out that long.
    let busy = "local t = redis.call('TIME'); local e = t[1] * 1000000 + t[2] + 400000; local n; \
                repeat n = redis.call('TIME') until n[1] * 1000000 + n[2] >= e; return 1";
    let mut slow = proxy.conn();
    let start = Instant::now();
    slow.send(&["EVAL", busy, "0"]);
    std::thread::sleep(Duration::from_millis(50));
    let mut clients: Vec<_> = (0..20)
        .map(|_| {
            let mut c = proxy.conn();
            c.send(&["GET", "k"]);
            std::thread::sleep(Duration::from_millis(5));
            c
        })
        .collect();
    assert!(start.elapsed() < Duration::from_millis(300), "the GETs were sent while the script ran");
    assert_eq!(String::from_utf8(slow.read_reply()).unwrap(), ":1\r\n");
    for c in &mut clients {
        assert_eq!(String::from_utf8(c.read_reply()).unwrap(), "$1\r\nv\r\n");
    }
    // The script's batch, then one for all twenty GETs.
    assert_eq!(batches() - before, 2.0);
}

/// CPU time used so far by every thread of process `pid`.
fn cpu_time(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// CPU time `pid` uses over the next `wall`.
fn cpu_over(pid: u32, wall: Duration) -> Duration {
    let before = cpu_time(pid);
    std::thread::sleep(wall);
    cpu_time(pid) - before
}

/// `--busy-poll`: after a request, the worker keeps polling (it uses CPU) for the window, while
/// a proxy without it sleeps at once; once the window passes with no traffic, it sleeps too,
/// and the time spent polling is in /metrics.
#[test]
fn busy_poll_keeps_the_worker_polling_for_its_window_then_lets_it_sleep() {
    let redis = Redis::start();
    let polling = Proxy::start_args(&["--upstream", &redis.addr(), "--busy-poll", "400ms"]);
    let sleeping = Proxy::start_args(&["--upstream", &redis.addr()]);
    let busy = "respmesh_proxy_busy_poll_seconds_total";

    let mut conn = sleeping.conn();
    assert_eq!(conn.cmd(&["PING"]), "+PONG\r\n");
    let used = cpu_over(sleeping.pid(), Duration::from_millis(300));
    assert!(used < Duration::from_millis(30), "without --busy-poll an idle proxy sleeps: {used:?} of CPU in 300ms");
    assert_eq!(sleeping.metric(busy), 0.0);

    let mut conn = polling.conn();
    assert_eq!(conn.cmd(&["PING"]), "+PONG\r\n");
    let used = cpu_over(polling.pid(), Duration::from_millis(300));
    assert!(used >= Duration::from_millis(30), "with --busy-poll the worker polls: only {used:?} of CPU in 300ms");

    // The window ends 400 ms after the read; then the worker sleeps and the count stops.
    std::thread::sleep(Duration::from_millis(200));
    let counted = polling.metric(busy);
    assert!(counted >= 0.4, "the whole window is counted: {counted}");
    let used = cpu_over(polling.pid(), Duration::from_millis(300));
    assert!(used < Duration::from_millis(30), "after the window an idle worker sleeps: {used:?} of CPU in 300ms");
    assert_eq!(polling.metric(busy), counted);

    // Traffic wakes the poller again, and replies are unchanged by it.
    assert_eq!(conn.cmd(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(conn.cmd(&["GET", "k"]), "$1\r\nv\r\n");
    assert!(cpu_over(polling.pid(), Duration::from_millis(200)) >= Duration::from_millis(20));
}

#[test]
fn a_busy_poll_window_over_one_second_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_respmesh-proxy"))
        .args(["--upstream", "127.0.0.1:1", "--admin", "off", "--busy-poll", "2s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--busy-poll 2s is longer than the 1s allowed"), "{err}");
}

/// A container often starts processes with a soft limit of 1024 open files; every client
/// connection costs one. The proxy takes the hard limit instead, so clients past the soft limit
/// are served, not refused.
#[test]
fn the_proxy_takes_the_open_file_limit_the_system_allows() {
    let hard: u64 = String::from_utf8(Command::new("sh").args(["-c", "ulimit -Hn"]).output().unwrap().stdout)
        .unwrap()
        .trim()
        .parse()
        .expect("a finite hard limit on open files");
    assert!(hard >= 400, "this test needs a hard limit of at least 400 open files, not {hard}");
    let redis = Redis::start();
    let proxy = Proxy::start_args_open_files(&["--upstream", &redis.addr()], "-Sn 64");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string();
    let soft: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(soft, hard, "{line}");
    assert!(proxy.log().contains(&format!("limit={hard}")), "the limit in force is logged");
    // Five times the limit the process started with.
    let mut clients: Vec<Conn> = (0..320).map(|_| proxy.conn()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.cmd(&["ECHO", &i.to_string()]), format!("${}\r\n{i}\r\n", i.to_string().len()));
    }
}

/// Out of file descriptors all the same (a hard limit of 48 here): the proxy stops accepting for
/// a moment, says why, does not spin, keeps serving the clients it has, and takes the waiting
/// clients in once descriptors are free again.
#[test]
fn out_of_open_files_the_proxy_pauses_accepting_and_resumes() {
    let redis = Redis::start();
    let mut proxy = Proxy::start_args_open_files(&["--upstream", &redis.addr()], "-n 48");
    proxy.allow_warning("cannot accept a connection");
    let mut first = proxy.conn();
    assert_eq!(first.cmd(&["SET", "k", "v"]), "+OK\r\n");
    // More clients than descriptors: the kernel queues the rest of them for the proxy.
    let mut clients: Vec<Conn> = (0..60).map(|_| proxy.conn()).collect();
    assert!(proxy.wait_log("cannot accept a connection", Duration::from_secs(5)), "the pause is logged");
    let cpu = cpu_over(proxy.pid(), Duration::from_millis(500));
    assert!(cpu < Duration::from_millis(50), "the proxy used {cpu:?} of CPU in 500 ms waiting for descriptors");
    assert_eq!(first.cmd(&["GET", "k"]), "$1\r\nv\r\n");
    // The first ones got in; closing them lets the others in.
    let waiting = clients.split_off(20);
    drop(clients);
    for mut c in waiting.into_iter().take(20) {
        c.set_timeout(Duration::from_secs(5));
        assert_eq!(c.cmd(&["GET", "k"]), "$1\r\nv\r\n");
    }
}
