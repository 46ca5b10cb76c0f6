//! Authentication offload: the seed's scenarios 1 and 2, with the exact replies redis-cli shows.

mod support;

use support::{Proxy, Redis};

#[test]
fn without_respmesh_auth_a_password_protected_redis_says_noauth() {
    let redis = Redis::start_with(&["--requirepass", "testredis"]);
    let proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "a", "a"]), "-NOAUTH Authentication required.\r\n");
}

#[test]
fn scenario_1_the_proxy_logs_in_for_the_client() {
    let redis = Redis::start_with(&["--requirepass", "testredis"]);
    let dir = tempfile::tempdir().unwrap();
    // The seed's Secret holds "testredis\n": surrounding white space is trimmed.
    let pw = dir.path().join("password");
    std::fs::write(&pw, "testredis\n").unwrap();
    let proxy = Proxy::start_args(&["--upstream", &redis.addr(), "--upstream-password-file", pw.to_str().unwrap()]);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "foo", "bar"]), "+OK\r\n");
    assert_eq!(redis.conn().cmd(&["AUTH", "testredis"]), "+OK\r\n");
}

#[test]
fn scenario_2_clients_have_their_own_password() {
    let redis = Redis::start_with(&["--requirepass", "testredis"]);
    let proxy = Proxy::start_args(&[
        "--upstream",
        &redis.addr(),
        "--upstream-password",
        "testredis",
        "--client-password",
        "testredis123!",
    ]);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["GET", "foo"]), "-NOAUTH Authentication required.\r\n");
    assert_eq!(c.cmd(&["AUTH", "testredis"]), "-ERR invalid password\r\n");
    assert_eq!(c.cmd(&["GET", "foo"]), "-NOAUTH Authentication required.\r\n");
    assert_eq!(c.cmd(&["AUTH", "testredis123!"]), "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "foo", "bar"]), "+OK\r\n");
    assert_eq!(c.cmd(&["GET", "foo"]), "$3\r\nbar\r\n");
    // AUTH default <password> is the same login; another user is not.
    let mut d = proxy.conn();
    assert_eq!(
        d.cmd(&["AUTH", "someone", "testredis123!"]),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(d.cmd(&["AUTH", "default", "testredis123!"]), "+OK\r\n");
}

#[test]
fn changing_the_real_password_needs_no_client_change() {
    let redis = Redis::start_with(&["--requirepass", "old-password"]);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "old-password").unwrap();
    let config = |pw: &str| {
        support::config_yaml(
            &redis.addr(),
            &format!("    auth: {{passwordFile: \"{pw}\"}}\n    clientAuth: {{password: app-secret}}\n"),
        )
    };
    let proxy = Proxy::start_config(&config(pw.to_str().unwrap()));
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["AUTH", "app-secret"]), "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "k", "1"]), "+OK\r\n");

    // Rotate: Redis first, then the credential file the proxy reads.
    let mut admin = redis.conn();
    admin.cmd(&["AUTH", "old-password"]);
    assert_eq!(admin.cmd(&["CONFIG", "SET", "requirepass", "new-password"]), "+OK\r\n");
    std::fs::write(&pw, "new-password\n").unwrap();
    assert!(proxy.wait_log("configuration reloaded", std::time::Duration::from_secs(5)), "{}", proxy.log());

    // The existing client connection keeps working, and so does a new one with the same password.
    let mut fresh = proxy.conn();
    assert_eq!(fresh.cmd(&["AUTH", "app-secret"]), "+OK\r\n");
    assert_eq!(fresh.cmd(&["GET", "k"]), "$1\r\n1\r\n");
    assert_eq!(c.cmd(&["INCR", "k"]), ":2\r\n");
}

#[test]
fn the_proxy_logs_in_as_an_acl_user() {
    let redis = Redis::start();
    let mut admin = redis.conn();
    assert_eq!(admin.cmd(&["ACL", "SETUSER", "app", "on", ">app-pw", "~*", "+@all"]), "+OK\r\n");
    assert_eq!(admin.cmd(&["ACL", "SETUSER", "default", "off"]), "+OK\r\n");
    let proxy =
        Proxy::start_args(&["--upstream", &redis.addr(), "--upstream-user", "app", "--upstream-password", "app-pw"]);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]), "$3\r\napp\r\n");
}

#[test]
fn a_wrong_upstream_password_is_reported_not_hidden() {
    let redis = Redis::start_with(&["--requirepass", "right"]);
    let mut proxy = Proxy::start_args(&["--upstream", &redis.addr(), "--upstream-password", "wrong"]);
    proxy.allow_warning("Redis refused the proxy's credentials");
    let mut c = proxy.conn();
    let reply = c.cmd(&["GET", "k"]);
    assert!(
        reply.starts_with(&format!(
            "-ERR respmesh: could not authenticate to upstream {} ({}): WRONGPASS",
            redis.addr(),
            redis.addr()
        )),
        "{reply}"
    );
    assert!(proxy.wait_log("Redis refused the proxy's credentials", std::time::Duration::from_secs(2)));
    let series = format!("respmesh_proxy_upstream_auth_failures_total{{service=\"{}\"}}", redis.addr());
    assert!(proxy.metric(&series) >= 1.0, "{}", proxy.admin_get("/metrics").1);
}

#[test]
fn hello_3_with_auth_logs_in_and_switches_protocol() {
    let redis = Redis::start_with(&["--requirepass", "testredis"]);
    let proxy = Proxy::start_args(&[
        "--upstream",
        &redis.addr(),
        "--upstream-password",
        "testredis",
        "--client-password",
        "cpw",
        "--client-user",
        "app",
    ]);
    let mut c = proxy.conn();
    assert_eq!(
        c.cmd(&["HELLO", "3"]),
        "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n"
    );
    assert_eq!(
        c.cmd(&["HELLO", "3", "AUTH", "app", "bad"]),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    let hello = c.cmd(&["HELLO", "3", "AUTH", "app", "cpw"]);
    assert!(hello.starts_with('%'), "a RESP3 map: {hello}");
    assert!(hello.contains("proto\r\n:3\r\n"), "{hello}");
    // RESP3 replies from now on: a null is `_`.
    assert_eq!(c.cmd(&["GET", "missing"]), "_\r\n");
    assert_eq!(c.cmd(&["HGETALL", "missing"]), "%0\r\n");
    // A password alone is the default user, not `app`.
    let mut d = proxy.conn();
    assert_eq!(d.cmd(&["AUTH", "cpw"]), "-ERR invalid password\r\n");
    assert_eq!(d.cmd(&["AUTH", "app", "cpw"]), "+OK\r\n");
}

#[test]
fn without_proxy_credentials_client_auth_goes_to_redis() {
    // The proxy knows no password: the client's own AUTH must reach Redis, on its own connection.
    let redis = Redis::start_with(&["--requirepass", "testredis"]);
    let proxy = Proxy::start_args(&["--upstream", &redis.addr()]);
    let mut c = proxy.conn();
    assert_eq!(c.cmd(&["AUTH", "nope"]), "-WRONGPASS invalid username-password pair or user is disabled.\r\n");
    assert_eq!(c.cmd(&["AUTH", "testredis"]), "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "k", "v"]), "+OK\r\n");
    // Other clients are not logged in by it.
    assert_eq!(proxy.conn().cmd(&["GET", "k"]), "-NOAUTH Authentication required.\r\n");
}
