//! The injection decision and patch, on raw pod JSON: what is added, what is skipped, that
//! unknown fields survive, and that injecting an injected pod changes nothing.

use respmesh_webhook::inject::{Decision, InjectConfig, decide, ports_of_config};
use serde_json::{Value, json};

fn apply(pod: &Value, ops: &[Value]) -> Value {
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec())).unwrap();
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    doc
}

fn inject(pod: &Value, ports: &[u16]) -> Value {
    match decide(pod, "app", &InjectConfig::default(), ports).unwrap() {
        Decision::Patch(ops) => apply(pod, &ops),
        Decision::Skip(r) => panic!("skipped: {r}"),
    }
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "labels": {"app": "x"}},
        "spec": {"containers": [{"name": "app", "image": "redis", "futureField": {"kept": true}}], "futureSpecField": 1},
    })
}

#[test]
fn a_pod_gets_the_init_container_and_the_native_sidecar() {
    let out = inject(&pod(), &[6379, 6380]);
    let inits = out["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], "respmesh-init");
    assert_eq!(inits[0]["args"], json!(["--ports", "6379,6380"]));
    assert_eq!(inits[0]["securityContext"]["capabilities"]["add"], json!(["NET_ADMIN", "NET_RAW"]));
    assert_eq!(inits[1]["name"], "respmesh-proxy");
    assert_eq!(inits[1]["restartPolicy"], "Always");
    assert_eq!(inits[1]["startupProbe"]["httpGet"], json!({"path": "/ready", "port": 15380}));
    assert_eq!(inits[1]["securityContext"]["runAsUser"], 1379);
    let args: Vec<&str> = inits[1]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.windows(2).any(|w| w == ["--capture", "127.0.0.1:15379"]), "{args:?}");
    assert_eq!(out["spec"]["volumes"][0]["configMap"]["name"], "respmesh-proxy");
    assert_eq!(out["spec"]["volumes"][1]["secret"]["secretName"], "respmesh-proxy-credentials");
    let status: Value =
        serde_json::from_str(out["metadata"]["annotations"]["respmesh.io/status"].as_str().unwrap()).unwrap();
    assert_eq!(status["initContainers"], json!(["respmesh-init", "respmesh-proxy"]));
    // Fields unknown to any typed model survive.
    assert_eq!(out["spec"]["containers"][0]["futureField"], json!({"kept": true}));
    assert_eq!(out["spec"]["futureSpecField"], 1);
    assert_eq!(out["spec"]["containers"], pod()["spec"]["containers"], "the app's containers are untouched");
}

#[test]
fn the_pods_own_init_containers_and_volumes_come_after_ours() {
    let mut p = pod();
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
    p["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    p["metadata"]["annotations"] = json!({"a/b": "c"});
    let out = inject(&p, &[]);
    let names: Vec<&str> =
        out["spec"]["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["respmesh-init", "respmesh-proxy", "migrate"]);
    let vols: Vec<&str> =
        out["spec"]["volumes"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(vols, ["data", "respmesh-config", "respmesh-credentials"]);
    assert_eq!(out["metadata"]["annotations"]["a/b"], "c");
    assert_eq!(out["spec"]["initContainers"][0]["args"], json!(["--ports", "6379"]), "the default port");
}

#[test]
fn injecting_twice_gives_the_same_pod() {
    let once = inject(&pod(), &[6379]);
    assert_eq!(
        decide(&once, "app", &InjectConfig::default(), &[6379]).unwrap(),
        Decision::Skip("already injected".into())
    );
}

#[test]
fn pods_that_must_not_be_injected_are_skipped_with_a_reason() {
    let cfg = InjectConfig::default();
    let mut opted_out = pod();
    opted_out["metadata"]["labels"]["respmesh.io/inject"] = json!("false");
    let mut host = pod();
    host["spec"]["hostNetwork"] = json!(true);
    let mut by_hand = pod();
    by_hand["spec"]["initContainers"] = json!([{"name": "respmesh-proxy", "image": "x"}]);
    for (p, ns, want) in [
        (&opted_out, "app", "opted out"),
        (&host, "app", "hostNetwork"),
        (&pod(), "kube-system", "never injected"),
        (&by_hand, "app", "already injected"),
    ] {
        match decide(p, ns, &cfg, &[]).unwrap() {
            Decision::Skip(reason) => assert!(reason.contains(want), "{reason}"),
            Decision::Patch(_) => panic!("{want}: injected"),
        }
    }
}

#[test]
fn annotations_override_ports_cidrs_log_level_busy_poll_and_resources() {
    let mut p = pod();
    p["metadata"]["annotations"] = json!({
        "respmesh.io/capture-ports": "7000, 6379",
        "respmesh.io/exclude-cidrs": "10.0.0.0/8, fd00::/8",
        "respmesh.io/log-level": "debug",
        "respmesh.io/busy-poll": "50us",
        "respmesh.io/proxy-cpu": "100m",
        "respmesh.io/proxy-memory-limit": "1Gi",
    });
    let out = inject(&p, &[6380]);
    let init = &out["spec"]["initContainers"][0];
    assert_eq!(init["args"], json!(["--ports", "6379,7000", "--exclude-cidrs", "10.0.0.0/8,fd00::/8"]));
    let proxy = &out["spec"]["initContainers"][1];
    let args = proxy["args"].as_array().unwrap();
    assert!(args.contains(&json!("debug")));
    assert!(args.windows(2).any(|w| w == [json!("--busy-poll"), json!("50us")]), "{args:?}");
    let plain = inject(&pod(), &[6380]);
    let plain_args = plain["spec"]["initContainers"][1]["args"].as_array().unwrap();
    assert!(!plain_args.contains(&json!("--busy-poll")), "off unless asked for: {plain_args:?}");
    assert_eq!(proxy["resources"]["requests"]["cpu"], "100m");
    assert_eq!(proxy["resources"]["limits"]["memory"], "1Gi");

    for (k, v, want) in [
        ("respmesh.io/capture-ports", "http", "respmesh.io/capture-ports"),
        ("respmesh.io/exclude-cidrs", "10.0.0.0/99", "respmesh.io/exclude-cidrs"),
        ("respmesh.io/proxy-cpu", "lots", "respmesh.io/proxy-cpu"),
        ("respmesh.io/busy-poll", "fast", "invalid duration \"fast\""),
        ("respmesh.io/busy-poll", "2s", "respmesh.io/busy-poll: \"2s\" is longer than the 1s allowed"),
    ] {
        let mut p = pod();
        p["metadata"]["annotations"] = json!({k: v});
        let err = decide(&p, "app", &InjectConfig::default(), &[]).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[test]
fn capture_ports_come_from_the_namespaces_proxy_configuration() {
    let text = "apiVersion: proxy.respmesh.io/v1alpha1\nkind: ProxyConfig\nservices:\n\
                - {host: a, addresses: [\"10.96.0.1:6379\", \"[fd00::1]:6379\"], endpoints: [\"10.0.0.1:6379\"]}\n\
                - {host: b, addresses: [\"10.96.0.2:7000\"], endpoints: []}\n";
    assert_eq!(ports_of_config(text), vec![6379, 7000]);
    assert_eq!(ports_of_config("not yaml: ["), Vec::<u16>::new());
}

#[test]
fn malformed_reviews_get_an_admission_review_with_an_error() {
    use respmesh_webhook::review::{Outcome, answer};
    let cfg = InjectConfig::default();
    for (body, want) in [
        (&b"not json"[..], "not JSON"),
        (&b"{}"[..], "no request"),
        (&br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#[..], "no uid"),
        (&br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"kind":"Pod"},"operation":"CREATE"}}"#[..], "no object"),
    ] {
        let (resp, outcome) = answer(body, &cfg, &[]);
        assert_eq!(resp["kind"], "AdmissionReview");
        assert_eq!(resp["response"]["allowed"], false);
        assert!(resp["response"]["status"]["message"].as_str().unwrap().contains(want), "{resp}");
        assert!(matches!(outcome, Outcome::Malformed { .. }));
    }
    let good = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u2", "kind": {"kind": "Pod"}, "operation": "CREATE", "namespace": "app", "object": pod()}});
    let (resp, outcome) = answer(good.to_string().as_bytes(), &cfg, &[]);
    assert_eq!(resp["response"]["uid"], "u2");
    assert_eq!(resp["response"]["patchType"], "JSONPatch");
    assert!(matches!(outcome, Outcome::Injected { .. }));
}
