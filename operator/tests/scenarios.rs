//! The operator against a real kube-apiserver: each of the seed's scenarios applied with
//! kubectl gives the expected proxy configuration; invalid resources are refused by the API
//! server with messages naming the field; missing Secrets fail closed; changes propagate.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use respmesh_api::proxy::{FaultType, Mode, ReadPolicy};
use support::*;

async fn setup(prefix: &str) -> (&'static respmesh_kubetest::ControlPlane, kube::Client, String) {
    let plane = respmesh_kubetest::shared();
    shared_operator();
    let client = plane.client().await.unwrap();
    let ns = demo_namespace(plane, &client, prefix, ("10.244.0.10", 6379), ("10.244.0.20", 6379)).await;
    (plane, client, ns)
}

#[tokio::test]
async fn scenario_1_upstream_auth_from_a_secret() {
    let (plane, client, ns) = setup("s1").await;
    let single = host("redis-single", &ns);
    // Without resources: plain proxying to the ready endpoint, recognised by its cluster IP.
    let svc = wait_service(&client, &ns, &single, "redis-single", |s| !s.endpoints.is_empty()).await;
    assert_eq!(svc.endpoints, vec!["10.244.0.10:6379"]);
    assert_eq!(svc.mode, Mode::Proxy);
    assert!(svc.auth.is_none() && svc.client_auth.is_none());
    assert_eq!(svc.addresses.len(), 1, "{:?}", svc.addresses);
    assert!(svc.addresses[0].starts_with("10.96.") && svc.addresses[0].ends_with(":6379"), "{:?}", svc.addresses);

    apply(plane, &example("1-upstream-auth.yaml", &ns)).unwrap();
    let svc = wait_service(&client, &ns, &single, "upstream auth", |s| s.auth.is_some()).await;
    let key = format!("redis-single.{ns}.6379.upstream-password");
    assert_eq!(svc.auth.as_ref().unwrap().password_key.as_deref(), Some(key.as_str()));
    assert_eq!(svc.auth.as_ref().unwrap().password, None, "no credential in the ConfigMap");
    let creds = credentials(&client, &ns).await.unwrap();
    assert_eq!(creds.get(&key).map(String::as_str), Some("testredis"), "trimmed value");
    wait_condition(plane, "redisdestinations.redis.respmesh.io", &ns, "redis-single", "Accepted", "True").await;
    wait_condition(plane, "redisdestinations.redis.respmesh.io", &ns, "redis-single", "ResolvedRefs", "True").await;
    // The ConfigMap holds no password, in any form.
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("respmesh-proxy").await.unwrap();
    assert!(!format!("{:?}", cm.data).contains("testredis"));
}

#[tokio::test]
async fn scenario_2_client_auth() {
    let (plane, client, ns) = setup("s2").await;
    apply(plane, &example("2-client-auth.yaml", &ns)).unwrap();
    let svc = wait_service(&client, &ns, &host("redis-single", &ns), "client auth", |s| s.client_auth.is_some()).await;
    let key = svc.client_auth.unwrap().password_key.unwrap();
    assert_eq!(key, format!("redis-single.{ns}.6379.client-password"));
    assert_eq!(credentials(&client, &ns).await.unwrap()[&key], "testredis123!");
    wait_condition(plane, "redisservices.redis.respmesh.io", &ns, "redis-single", "Accepted", "True").await;
    // Printer columns show hosts and conditions.
    let table = kubectl(plane, &["get", "rsvc", "-n", &ns]);
    assert!(
        table.contains("HOSTS") && table.contains("ACCEPTED") && table.contains(&host("redis-single", &ns)),
        "{table}"
    );
}

#[tokio::test]
async fn scenario_3_cluster_mode() {
    let (plane, client, ns) = setup("s3").await;
    apply(plane, &example("3-cluster-mode.yaml", &ns)).unwrap();
    let svc =
        wait_service(&client, &ns, &host("redis-cluster", &ns), "cluster mode", |s| s.mode == Mode::Cluster).await;
    assert_eq!(svc.endpoints, vec!["10.244.0.20:6379"], "the Service's endpoints seed the topology");
    let table = kubectl(plane, &["get", "rd", "-n", &ns]);
    assert!(table.contains("MODE") && table.contains("CLUSTER"), "{table}");
}

#[tokio::test]
async fn scenario_4_prefix_routing() {
    let (plane, client, ns) = setup("s4").await;
    apply(plane, &example("4-prefix-routing.yaml", &ns)).unwrap();
    let (cluster, single) = (host("redis-cluster", &ns), host("redis-single", &ns));
    let svc = wait_service(&client, &ns, &cluster, "routes", |s| !s.routes.is_empty()).await;
    assert_eq!(svc.routes.len(), 2);
    let prefixed = svc.routes.iter().find(|r| r.matches.is_some()).unwrap();
    assert_eq!(prefixed.matches.as_ref().unwrap().key.prefix, "cluster");
    assert_eq!(prefixed.route.host, cluster);
    let default = svc.routes.iter().find(|r| r.matches.is_none()).unwrap();
    assert_eq!(default.route.host, single);
}

#[tokio::test]
async fn scenario_5_read_policy() {
    let (plane, client, ns) = setup("s5").await;
    apply(plane, &example("5-read-policy.yaml", &ns)).unwrap();
    wait_service(&client, &ns, &host("redis-cluster", &ns), "read policy", |s| s.read_policy == ReadPolicy::Replica)
        .await;
}

#[tokio::test]
async fn scenario_6_mirroring() {
    let (plane, client, ns) = setup("s6").await;
    apply(plane, &example("6-mirroring.yaml", &ns)).unwrap();
    let svc = wait_service(&client, &ns, &host("redis-cluster", &ns), "mirror", |s| {
        s.routes.first().is_some_and(|r| !r.mirror.is_empty())
    })
    .await;
    let m = &svc.routes[0].mirror[0];
    assert_eq!(m.route.host, host("redis-single", &ns));
    assert_eq!(m.percentage.value, 100.0);
    assert!(!m.exclude_read_commands);
}

#[tokio::test]
async fn scenario_7_fault_injection() {
    let (plane, client, ns) = setup("s7").await;
    apply(plane, &example("7-fault-injection.yaml", &ns)).unwrap();
    let svc = wait_service(&client, &ns, &host("redis-cluster", &ns), "faults", |s| !s.faults.is_empty()).await;
    assert_eq!(svc.faults[0].kind, FaultType::Error);
    assert_eq!(svc.faults[0].percentage.value, 50.0);
    assert_eq!(svc.faults[0].commands, vec!["GET"]);
}

#[tokio::test]
async fn scenario_8_redis_outside_the_cluster() {
    let (plane, client, ns) = setup("s8").await;
    let yaml = example("8-external-redis.yaml", &ns);
    apply(plane, &yaml).unwrap();
    let svc =
        wait_service(&client, &ns, &host("external-redis", &ns), "external redis", |s| !s.endpoints.is_empty()).await;
    assert_eq!(svc.endpoints, vec!["192.0.2.10:6379"]);
    assert!(svc.addresses[0].ends_with(":6379"));
    // Resources work on it as on any in-cluster service.
    let rs = example("2-client-auth.yaml", &ns).replace("redis-single", "external-redis");
    apply(plane, &rs).unwrap();
    wait_service(&client, &ns, &host("external-redis", &ns), "client auth", |s| s.client_auth.is_some()).await;
}

/// Users migrating from Aeraki apply their YAML unchanged: the compat group is served too.
#[tokio::test]
async fn aeraki_group_resources_apply_verbatim() {
    let (plane, client, ns) = setup("compat").await;
    let yaml = example("2-client-auth.yaml", &ns).replace("redis.respmesh.io/v1alpha1", "redis.aeraki.io/v1alpha1");
    apply(plane, &yaml).unwrap();
    wait_service(&client, &ns, &host("redis-single", &ns), "client auth", |s| s.client_auth.is_some()).await;
    wait_condition(plane, "redisservices.redis.aeraki.io", &ns, "redis-single", "Accepted", "True").await;
}

#[tokio::test]
async fn invalid_resources_are_refused_naming_the_field() {
    let plane = respmesh_kubetest::shared();
    let client = plane.client().await.unwrap();
    let ns = plane.namespace(&client, "invalid", &[]).await.unwrap();
    let head = format!(
        "apiVersion: redis.respmesh.io/v1alpha1\nkind: RedisService\nmetadata: {{name: bad, namespace: {ns}}}\n"
    );
    let cases = [
        ("spec: {host: [a], faults: [{type: ERROR, percentage: {value: 150}}]}", "spec.faults[0].percentage.value"),
        (
            "spec: {host: [a], settings: {auth: {plain: {password: x}, secret: {name: s}}}}",
            "auth takes exactly one of secret or plain",
        ),
        ("spec: {host: [a], settings: {auth: {}}}", "auth takes exactly one of secret or plain"),
        ("spec: {host: [a], settings: {opTimeout: 2 seconds}}", "spec.settings.opTimeout"),
        ("spec: {settings: {}}", "spec.host: Required value"),
        ("spec: {host: []}", "spec.host"),
        ("spec: {host: [a], faults: [{type: DELAY, percentage: {value: 5}}]}", "a DELAY fault needs a delay"),
        ("spec: {host: [a], settings: {readPolicy: FASTEST}}", "spec.settings.readPolicy: Unsupported value"),
        ("spec: {host: [a], redis: [{match: {key: {prefix: x}}}]}", "spec.redis[0].route: Required value"),
        ("spec: {host: [a], settings: {auth: {plain: {username: u}}}}", "password: Required value"),
    ];
    for (spec, want) in cases {
        let err = apply(plane, &format!("{head}{spec}\n")).expect_err(spec);
        assert!(err.contains(want), "{spec}: expected {want:?} in: {err}");
    }
    let rd = format!(
        "apiVersion: redis.respmesh.io/v1alpha1\nkind: RedisDestination\nmetadata: {{name: bad, namespace: {ns}}}\n\
         spec: {{host: a, trafficPolicy: {{connectionPool: {{redis: {{mode: SHARDED}}, tcp: {{connectTimeout: soon}}}}}}}}\n"
    );
    let err = apply(plane, &rd).unwrap_err();
    assert!(err.contains("spec.trafficPolicy.connectionPool.redis.mode: Unsupported value"), "{err}");
    assert!(err.contains("spec.trafficPolicy.connectionPool.tcp.connectTimeout"), "{err}");
}

/// A Secret that cannot be found never means "no password": the resource says why, and the
/// proxy configuration names a credential the Secret does not hold, so the proxy refuses.
#[tokio::test]
async fn a_missing_secret_fails_closed_and_its_arrival_and_rotation_propagate() {
    let (plane, client, ns) = setup("secret").await;
    let single = host("redis-single", &ns);
    let rs = format!(
        "apiVersion: redis.respmesh.io/v1alpha1\nkind: RedisService\nmetadata: {{name: single, namespace: {ns}}}\n\
         spec:\n  host: [{single}]\n  settings:\n    auth:\n      secret: {{name: client-pw, passwordField: pw}}\n"
    );
    apply(plane, &rs).unwrap();
    let (reason, message) =
        wait_condition(plane, "redisservices.redis.respmesh.io", &ns, "single", "ResolvedRefs", "False").await;
    assert_eq!(reason, "SecretNotFound");
    assert!(message.contains(&format!("Secret {ns}/client-pw not found")), "{message}");
    let svc = wait_service(&client, &ns, &single, "client auth named", |s| s.client_auth.is_some()).await;
    let key = svc.client_auth.unwrap().password_key.unwrap();
    assert!(!credentials(&client, &ns).await.unwrap_or_default().contains_key(&key), "fail closed: no value");
    let events = kubectl(plane, &["get", "events.events.k8s.io", "-n", &ns, "-o", "json"]);
    assert!(events.contains("SecretNotFound"), "an Event says why: {events}");

    // A Secret with the wrong key: still refused, with another reason.
    let secret = |value: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: client-pw, namespace: {ns}}}\nstringData: {{{value}}}\n"
        )
    };
    apply(plane, &secret("password: x")).unwrap();
    let (reason, message) =
        wait_condition(plane, "redisservices.redis.respmesh.io", &ns, "single", "ResolvedRefs", "False").await;
    let (reason, message) = if reason == "SecretKeyNotFound" {
        (reason, message)
    } else {
        wait_until("SecretKeyNotFound", Duration::from_secs(10), || async {
            condition(plane, "redisservices.redis.respmesh.io", &ns, "single", "ResolvedRefs")
                .filter(|c| c.1 == "SecretKeyNotFound")
                .map(|c| (c.1, c.2))
        })
        .await
    };
    assert_eq!(reason, "SecretKeyNotFound");
    assert!(message.contains("has no key \"pw\""), "{message}");

    apply(plane, &secret("pw: first")).unwrap();
    wait_condition(plane, "redisservices.redis.respmesh.io", &ns, "single", "ResolvedRefs", "True").await;
    wait_until("the password", Duration::from_secs(10), || async {
        credentials(&client, &ns).await.filter(|c| c.get(&key).map(String::as_str) == Some("first"))
    })
    .await;
    apply(plane, &secret("pw: \"second \\n\"")).unwrap();
    wait_until("the rotated password", Duration::from_secs(10), || async {
        credentials(&client, &ns).await.filter(|c| c.get(&key).map(String::as_str) == Some("second"))
    })
    .await;
}

#[tokio::test]
async fn service_and_endpoint_slice_changes_propagate() {
    let (plane, client, ns) = setup("eps").await;
    let single = host("redis-single", &ns);
    apply(
        plane,
        &endpoint_slice(&ns, "redis-single", "tcp-redis", &[("10.244.0.10", true), ("10.244.0.11", true)], 6379),
    )
    .unwrap();
    wait_service(&client, &ns, &single, "two endpoints", |s| s.endpoints.len() == 2).await;
    apply(
        plane,
        &endpoint_slice(&ns, "redis-single", "tcp-redis", &[("10.244.0.10", true), ("10.244.0.11", false)], 6379),
    )
    .unwrap();
    let svc = wait_service(&client, &ns, &single, "not-ready endpoint dropped", |s| s.endpoints.len() == 1).await;
    assert_eq!(svc.endpoints, vec!["10.244.0.10:6379"]);

    // Dual-stack: both cluster IPs are recognised.
    let dual = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dual, namespace: {ns}}}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  \
         ipFamilies: [IPv4, IPv6]\n  ports: [{{name: redis, port: 6380}}]\n"
    );
    apply(plane, &dual).unwrap();
    let svc = wait_service(&client, &ns, &host("dual", &ns), "dual-stack", |s| s.addresses.len() == 2).await;
    assert!(
        svc.addresses.iter().any(|a| a.starts_with("[fd00:10:96::") && a.ends_with("]:6380")),
        "{:?}",
        svc.addresses
    );
    assert!(svc.endpoints.is_empty(), "no EndpointSlice yet: the proxy will refuse, saying so");

    // appProtocol makes a Redis port whatever its name; a headless Service is recognised by
    // its endpoints' addresses.
    let headless = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: headless, namespace: {ns}}}\nspec:\n  clusterIP: None\n  \
         ports: [{{name: db, port: 7000, appProtocol: redis}}]\n"
    );
    apply(plane, &headless).unwrap();
    apply(plane, &endpoint_slice(&ns, "headless", "db", &[("10.244.0.30", true)], 7001)).unwrap();
    let svc = wait_service(&client, &ns, &host("headless", &ns), "headless", |s| !s.endpoints.is_empty()).await;
    assert_eq!(svc.addresses, vec!["10.244.0.30:7001"]);
    assert_eq!(svc.endpoints, vec!["10.244.0.30:7001"]);

    // A Service without a Redis port is not a Redis service.
    let web = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n"
    );
    apply(plane, &web).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cfg = proxy_config(&client, &ns).await.unwrap();
    assert!(cfg.service(&host("web", &ns)).is_none());

    // Deleting the Service removes it.
    kubectl(plane, &["delete", "service", "-n", &ns, "dual"]);
    wait_until("dual removed", Duration::from_secs(10), || async {
        proxy_config(&client, &ns).await.filter(|c| c.service(&host("dual", &ns)).is_none())
    })
    .await;
}

#[tokio::test]
async fn deleting_a_resource_removes_its_policies() {
    let (plane, client, ns) = setup("del").await;
    let single = host("redis-single", &ns);
    apply(plane, &example("2-client-auth.yaml", &ns)).unwrap();
    wait_service(&client, &ns, &single, "client auth", |s| s.client_auth.is_some()).await;
    kubectl(plane, &["delete", "redisservices.redis.respmesh.io", "-n", &ns, "redis-single"]);
    wait_service(&client, &ns, &single, "client auth removed", |s| s.client_auth.is_none()).await;
    let creds = credentials(&client, &ns).await.unwrap();
    assert!(!creds.keys().any(|k| k.starts_with(&format!("redis-single.{ns}."))), "{creds:?}");
}

#[tokio::test]
async fn only_labeled_namespaces_get_the_configuration() {
    let plane = respmesh_kubetest::shared();
    shared_operator();
    let client = plane.client().await.unwrap();
    let ns = plane.namespace(&client, "label", &[]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(proxy_config(&client, &ns).await.is_none(), "not injected: nothing written");
    kubectl(plane, &["label", "namespace", &ns, "respmesh.io/inject=enabled"]);
    wait_until("ConfigMap", Duration::from_secs(10), || proxy_config(&client, &ns)).await;
    assert!(credentials(&client, &ns).await.is_some());
    kubectl(plane, &["label", "namespace", &ns, "respmesh.io/inject-"]);
    wait_until("ConfigMap removed", Duration::from_secs(10), || async {
        proxy_config(&client, &ns).await.is_none().then_some(())
    })
    .await;
    wait_until("Secret removed", Duration::from_secs(10), || async {
        credentials(&client, &ns).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn unknown_hosts_are_reported_and_routes_to_them_refuse() {
    let (plane, client, ns) = setup("unknown").await;
    let rs = format!(
        "apiVersion: redis.respmesh.io/v1alpha1\nkind: RedisService\nmetadata: {{name: nohost, namespace: {ns}}}\n\
         spec: {{host: [redis-single.elsewhere.svc.cluster.local]}}\n"
    );
    apply(plane, &rs).unwrap();
    let (reason, message) =
        wait_condition(plane, "redisservices.redis.respmesh.io", &ns, "nohost", "Accepted", "False").await;
    assert_eq!(reason, "HostNotFound");
    assert!(message.contains(&format!("no Service in namespace {ns}")), "{message}");

    let cluster = host("redis-cluster", &ns);
    let missing = host("gone", &ns);
    let rs = format!(
        "apiVersion: redis.respmesh.io/v1alpha1\nkind: RedisService\nmetadata: {{name: routes, namespace: {ns}}}\n\
         spec:\n  host: [{cluster}]\n  redis:\n  - match: {{key: {{prefix: 'x:'}}}}\n    route: {{host: {missing}}}\n  \
         - route: {{host: {cluster}}}\n"
    );
    apply(plane, &rs).unwrap();
    let (reason, _) =
        wait_condition(plane, "redisservices.redis.respmesh.io", &ns, "routes", "ResolvedRefs", "False").await;
    assert_eq!(reason, "RouteHostNotFound");
    let cfg = wait_until("placeholder", Duration::from_secs(10), || async {
        proxy_config(&client, &ns).await.filter(|c| c.service(&missing).is_some())
    })
    .await;
    assert!(cfg.service(&missing).unwrap().endpoints.is_empty(), "keys under x: get an error, not the default route");
    assert_eq!(cfg.service(&cluster).unwrap().routes[0].route.host, missing);
}

/// Every manifest passes server-side validation.
#[tokio::test]
async fn every_manifest_passes_a_server_side_dry_run() {
    let plane = respmesh_kubetest::shared();
    install_operator_rbac(plane);
    let _ = plane.kubectl(&["create", "namespace", "redis"], None);
    let dir = repo_file("manifests");
    let out = plane.kubectl(&["apply", "--dry-run=server", "-R", "-f", dir.to_str().unwrap()], None).unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "redisservices.redis.respmesh.io",
        "redisservices.redis.aeraki.io",
        "deployment.apps/respmesh-operator",
        "redisdestination.redis.respmesh.io/redis-single",
    ] {
        assert!(text.contains(want), "{want} not in: {text}");
    }
}
