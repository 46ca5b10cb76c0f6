//! The operator over time: a restart writes nothing when nothing changed, two replicas elect
//! one leader and fail over, and a proxy watching the ConfigMap follows a `kubectl apply`
//! within 2 s, refusing clients when their credentials vanish.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use support::*;

fn versions(plane: &respmesh_kubetest::ControlPlane, ns: &str) -> String {
    kubectl(
        plane,
        &[
            "get",
            "configmap/respmesh-proxy",
            "secret/respmesh-proxy-credentials",
            "redisdestinations.redis.respmesh.io/redis-single",
            "-n",
            ns,
            "-o",
            "jsonpath={range .items[*]}{.metadata.resourceVersion} {end}",
        ],
    )
}

#[tokio::test]
async fn lifecycle() {
    let plane = respmesh_kubetest::shared();
    let client = plane.client().await.unwrap();

    // -- Two replicas: one leads, the other stands by with warm caches.
    let mut a = Operator::start(plane, "a", &["--lease-duration", "3s"]);
    a.wait_ready().await;
    wait_until("a leads", Duration::from_secs(10), || async {
        (a.metric("respmesh_operator_leader") == 1.0).then_some(())
    })
    .await;
    let b = Operator::start(plane, "b", &["--lease-duration", "3s"]);
    b.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.metric("respmesh_operator_leader"), 0.0, "one leader only");

    let ns = demo_namespace(plane, &client, "life", ("10.244.1.10", 6379), ("10.244.1.20", 6379)).await;
    apply(plane, &example("1-upstream-auth.yaml", &ns)).unwrap();
    wait_service(&client, &ns, &host("redis-single", &ns), "auth", |s| s.auth.is_some()).await;
    wait_condition(plane, "redisdestinations.redis.respmesh.io", &ns, "redis-single", "ResolvedRefs", "True").await;
    assert!(a.metric("respmesh_operator_writes_total{kind=\"configmap\"}") >= 1.0);
    assert_eq!(b.metric("respmesh_operator_writes_total{kind=\"configmap\"}"), 0.0, "the follower writes nothing");

    // -- The leader dies: the follower takes over within the lease duration and serves changes.
    a.kill();
    let t = Instant::now();
    wait_until("b leads", Duration::from_secs(10), || async {
        (b.metric("respmesh_operator_leader") == 1.0).then_some(())
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(8), "takeover took {:?}", t.elapsed());
    apply(plane, &example("2-client-auth.yaml", &ns)).unwrap();
    wait_service(&client, &ns, &host("redis-single", &ns), "client auth after failover", |s| s.client_auth.is_some())
        .await;
    wait_condition(plane, "redisservices.redis.respmesh.io", &ns, "redis-single", "Accepted", "True").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // -- A restart with nothing changed writes nothing: no object, no status.
    let before = versions(plane, &ns);
    let mut b = b;
    b.terminate();
    let c = Operator::start(plane, "c", &["--lease-duration", "3s"]);
    wait_until("c leads", Duration::from_secs(15), || async {
        (c.metric("respmesh_operator_leader") == 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, metrics) = c.get("/metrics");
    for line in metrics.lines().filter(|l| l.starts_with("respmesh_operator_writes_total")) {
        assert!(line.ends_with(" 0"), "a restart wrote something: {line}\n{}", c.log());
    }
    assert!(c.metric("respmesh_operator_reconciles_total") >= 1.0, "it did reconcile:\n{metrics}");
    assert_eq!(versions(plane, &ns), before);
    drop(c);
}

#[tokio::test]
async fn a_proxy_follows_kubectl_apply_within_two_seconds() {
    let plane = respmesh_kubetest::shared();
    let client = plane.client().await.unwrap();
    let op = Operator::start(plane, "chain", &["--lease-name", "respmesh-operator-chain"]);
    op.wait_ready().await;
    let redis = Redis::start(&["--requirepass", "testredis"]);
    let ns = demo_namespace(plane, &client, "chain", (&redis.ip, redis.port), (&redis.ip, redis.port)).await;
    let single = host("redis-single", &ns);
    wait_service(&client, &ns, &single, "redis-single", |s| !s.endpoints.is_empty()).await;

    let proxy = Proxy::start(&proxy_kubeconfig(plane, &ns), &ns, &single);
    wait_until("proxy ready", Duration::from_secs(10), || async { proxy.ready().then_some(()) }).await;
    // No resources yet: the proxy forwards, and Redis wants a password.
    assert_eq!(command(proxy.addr, &["SET", "foo", "bar"]).as_deref(), Some("-NOAUTH Authentication required."));

    // Scenario 1: the sidecar logs in for the client.
    let t0 = Instant::now();
    apply(plane, &example("1-upstream-auth.yaml", &ns)).unwrap();
    let t = Instant::now();
    wait_until("SET works through the proxy", Duration::from_secs(5), || async {
        (command(proxy.addr, &["SET", "foo", "bar"]).as_deref() == Some("+OK")).then_some(())
    })
    .await;
    let took = t.elapsed();
    eprintln!("scenario 1: kubectl apply {:?}, then {took:?} until the proxy logs in for the client", t - t0);
    assert!(t0.elapsed() < Duration::from_secs(2), "scenario 1 took {:?} to apply", t0.elapsed());

    // Scenario 2: clients need their own password.
    let t0 = Instant::now();
    apply(plane, &example("2-client-auth.yaml", &ns)).unwrap();
    let t = Instant::now();
    wait_until("client password required", Duration::from_secs(5), || async {
        (command(proxy.addr, &["GET", "foo"]).as_deref() == Some("-NOAUTH Authentication required.")).then_some(())
    })
    .await;
    let took = t.elapsed();
    eprintln!("scenario 2: kubectl apply {:?}, then {took:?} until the proxy asks clients for a password", t - t0);
    assert!(t0.elapsed() < Duration::from_secs(2), "scenario 2 took {:?} to apply", t0.elapsed());
    let replies = command_seq(proxy.addr, &[&["AUTH", "testredis"], &["AUTH", "testredis123!"], &["GET", "foo"]]);
    assert_eq!(replies, vec!["-ERR invalid password", "+OK", "bar"]);

    // The client password's Secret is replaced by one that is missing: fail closed.
    let rs = format!(
        "apiVersion: redis.respmesh.io/v1alpha1\nkind: RedisService\nmetadata: {{name: redis-single, namespace: {ns}}}\n\
         spec:\n  host: [{single}]\n  settings: {{auth: {{secret: {{name: not-there}}}}}}\n"
    );
    apply(plane, &rs).unwrap();
    let refused = wait_until("refused", Duration::from_secs(5), || async {
        command(proxy.addr, &["PING"]).filter(|r| r.contains("refuses clients"))
    })
    .await;
    assert!(refused.starts_with(&format!("-ERR respmesh: service {single} refuses clients:")), "{refused}");
    assert!(refused.contains("clientAuth"), "{refused}");
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("respmesh-proxy").await.unwrap();
    assert!(cm.data.unwrap()["config.yaml"].contains("passwordKey"));
    let secret = Api::<Secret>::namespaced(client.clone(), &ns).get("respmesh-proxy-credentials").await.unwrap();
    assert!(!secret.data.unwrap_or_default().contains_key(&format!("redis-single.{ns}.6379.client-password")));

    // The ConfigMap vanishing leaves the last good configuration serving.
    kubectl(plane, &["label", "namespace", &ns, "respmesh.io/inject-"]);
    wait_until("ConfigMap removed", Duration::from_secs(10), || async {
        proxy_config(&client, &ns).await.is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(command(proxy.addr, &["PING"]).unwrap().contains("refuses clients"), "{}", proxy.log());
    assert!(proxy.ready());
    drop(op);
}
