//! The webhook against a real kube-apiserver (no kubelet: pods are stored, never run, which
//! is all admission needs). The webhook runs with exactly the permissions of its manifest;
//! the MutatingWebhookConfiguration is the manifest's, pointed at 127.0.0.1, and the
//! webhook fills in its caBundle itself.

use std::process::Command;
use std::time::{Duration, Instant};

use respmesh_kubetest::process::{Logged, address_in};
use respmesh_kubetest::{ControlPlane, workspace_bin};
use serde_json::Value;

struct Webhook {
    proc: Logged,
    port: u16,
}

impl Webhook {
    fn start(plane: &ControlPlane, extra: &[&str]) -> Webhook {
        let kubeconfig = plane
            .kubeconfig_for(
                "system:serviceaccount:respmesh-system:respmesh-webhook",
                &["system:serviceaccounts", "system:serviceaccounts:respmesh-system", "system:authenticated"],
            )
            .unwrap();
        let mut cmd = Command::new(workspace_bin("respmesh-webhook"));
        cmd.env("KUBECONFIG", kubeconfig)
            .args(["--listen", "127.0.0.1:0", "--extra-hosts", "127.0.0.1", "--namespace", "respmesh-system"])
            .args(["--cert-check-interval", "1s", "--log-level", "info,kube=warn"])
            .args(extra);
        let proc = Logged::spawn(cmd, "webhook").unwrap();
        plane.adopt(proc.child.id()).unwrap();
        let port = address_in(&proc.wait_for("webhook listening", Duration::from_secs(20))).unwrap().port();
        Webhook { proc, port }
    }

    fn log(&self) -> String {
        self.proc.log()
    }
}

fn kubectl(plane: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    plane.kubectl_ok(args, stdin)
}

fn create_pod(
    plane: &ControlPlane,
    ns: &str,
    name: &str,
    extra_spec: &str,
    labels: &str,
    dry_run: bool,
) -> Result<Value, String> {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{{labels}}}\nspec:\n  containers: [{{name: app, image: redis}}]\n{extra_spec}"
    );
    let mut args = vec!["create", "-f", "-", "-o", "json"];
    if dry_run {
        args.push("--dry-run=server");
    }
    kubectl(plane, &args, Some(&yaml)).map(|t| serde_json::from_str(&t).unwrap())
}

fn init_names(pod: &Value) -> Vec<String> {
    pod["spec"]["initContainers"]
        .as_array()
        .map(|a| a.iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn secret_field(plane: &ControlPlane, key: &str) -> String {
    let path = format!("jsonpath={{.data.{}}}", key.replace('.', "\\."));
    kubectl(plane, &["get", "secret", "-n", "respmesh-system", "respmesh-webhook-certs", "-o", &path], None).unwrap()
}

#[tokio::test]
async fn the_webhook_injects_labeled_namespaces_only_and_survives_certificate_rotation() {
    let plane = respmesh_kubetest::shared();
    let client = plane.client().await.unwrap();
    let root = respmesh_kubetest::workspace_root();
    kubectl(plane, &["apply", "-f", root.join("manifests/operator/operator.yaml").to_str().unwrap()], None).unwrap();

    // Its RBAC (and Deployment, which nothing here runs) first, then the webhook configuration
    // once the webhook's address is known.
    let manifest = std::fs::read_to_string(root.join("manifests/webhook/webhook.yaml")).unwrap();
    let (rest, mwc): (Vec<&str>, Vec<&str>) =
        manifest.split("\n---\n").partition(|d| !d.contains("kind: MutatingWebhookConfiguration"));
    kubectl(plane, &["apply", "-f", "-"], Some(&rest.join("\n---\n"))).unwrap();
    // Serving certificates of 9 s, renewed with 3 s left: several rotations during the test.
    let webhook = Webhook::start(plane, &["--cert-validity", "9s"]);
    let manifest = mwc.join("\n---\n").replace(
        "service: {name: respmesh-webhook, namespace: respmesh-system, path: /mutate, port: 443}",
        &format!("url: \"https://127.0.0.1:{}/mutate\"", webhook.port),
    );
    kubectl(plane, &["apply", "-f", "-"], Some(&manifest)).unwrap();

    let ns = plane.namespace(&client, "inject", &[("respmesh.io/inject", "enabled")]).await.unwrap();
    // The webhook sets the caBundle; the API server then loads the configuration: wait until
    // a dry-run create comes back mutated.
    let start = Instant::now();
    loop {
        if let Ok(p) = create_pod(plane, &ns, "probe", "", "", true)
            && init_names(&p) == ["respmesh-init", "respmesh-proxy"]
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no injection within 30 s:\n{}", webhook.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let ca = secret_field(plane, "ca.crt");
    let bundle = plane.webhook_ca_bundle("respmesh-webhook");
    assert_eq!(bundle, ca, "the caBundle is the CA from the Secret");
    assert!(kubectl(plane, &["get", "pod", "-n", &ns, "probe"], None).is_err(), "a dry run stores nothing");

    // The captured ports come from the namespace's proxy ConfigMap.
    let cm = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: respmesh-proxy, namespace: {ns}}}\ndata:\n  config.yaml: |\n    \
         apiVersion: proxy.respmesh.io/v1alpha1\n    kind: ProxyConfig\n    services:\n    - {{host: r, addresses: [\"10.96.0.9:6380\"], endpoints: [\"10.0.0.9:6380\"]}}\n"
    );
    kubectl(plane, &["apply", "-f", "-"], Some(&cm)).unwrap();
    let pod = create_pod(plane, &ns, "app", "", "", false).unwrap();
    assert_eq!(init_names(&pod), ["respmesh-init", "respmesh-proxy"]);
    assert_eq!(pod["spec"]["initContainers"][0]["args"], serde_json::json!(["--ports", "6380"]));
    assert_eq!(pod["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert!(pod["metadata"]["annotations"]["respmesh.io/status"].is_string());
    let stored: Value =
        serde_json::from_str(&kubectl(plane, &["get", "pod", "-n", &ns, "app", "-o", "json"], None).unwrap()).unwrap();
    assert_eq!(init_names(&stored), ["respmesh-init", "respmesh-proxy"], "stored mutated");

    // Injecting an injected pod gives the same pod.
    let mut again = stored.clone();
    again["metadata"] =
        serde_json::json!({"name": "again", "namespace": ns, "annotations": stored["metadata"]["annotations"]});
    again.as_object_mut().unwrap().remove("status");
    let again = kubectl(plane, &["create", "-f", "-", "-o", "json"], Some(&again.to_string())).unwrap();
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["spec"]["initContainers"], stored["spec"]["initContainers"]);

    // Left alone: opted out, hostNetwork, unlabeled namespaces, kube-system even if labeled.
    let out = create_pod(plane, &ns, "optout", "", "respmesh.io/inject: \"false\"", false).unwrap();
    assert!(init_names(&out).is_empty());
    let out = create_pod(plane, &ns, "host", "  hostNetwork: true\n", "", false).unwrap();
    assert!(init_names(&out).is_empty());
    assert!(out["metadata"]["annotations"]["respmesh.io/skip-reason"].as_str().unwrap().contains("hostNetwork"));
    let plain = plane.namespace(&client, "plain", &[]).await.unwrap();
    assert!(init_names(&create_pod(plane, &plain, "app", "", "", false).unwrap()).is_empty());
    kubectl(plane, &["label", "namespace", "kube-system", "respmesh.io/inject=enabled", "--overwrite"], None).unwrap();
    let sys = create_pod(plane, "kube-system", "not-injected", "", "", false).unwrap();
    assert!(init_names(&sys).is_empty());

    // A bad annotation is refused with a message naming it.
    let err = kubectl(
        plane,
        &["create", "-f", "-"],
        Some(&format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: bad, namespace: {ns}, annotations: {{respmesh.io/capture-ports: http}}}}\nspec: {{containers: [{{name: app, image: redis}}]}}\n")),
    )
    .unwrap_err();
    assert!(err.contains("respmesh.io/capture-ports") && err.contains("is not a port"), "{err}");

    // A malformed review gets an AdmissionReview with an error, not an HTTP error.
    let script = format!(
        "import http.client, ssl, json\nc = http.client.HTTPSConnection('127.0.0.1', {}, context=ssl._create_unverified_context())\n\
         c.request('POST', '/mutate', body=b'{{not json', headers={{'Content-Type': 'application/json'}})\nr = c.getresponse()\n\
         print(r.status, json.loads(r.read())['response']['status']['message'])\n",
        webhook.port
    );
    let out = Command::new("python3").args(["-c", &script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("200 respmesh: malformed AdmissionReview"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Rotation: the serving certificate changes, the CA does not, and admission keeps working.
    let first_cert = secret_field(plane, "tls.crt");
    let start = Instant::now();
    let mut rotations = 0;
    let mut last = first_cert.clone();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(14) {
        n += 1;
        let pod = create_pod(plane, &ns, &format!("during-{n}"), "", "", false)
            .unwrap_or_else(|e| panic!("admission failed during rotation: {e}\n{}", webhook.log()));
        assert_eq!(init_names(&pod), ["respmesh-init", "respmesh-proxy"]);
        let now = secret_field(plane, "tls.crt");
        if now != last {
            rotations += 1;
            last = now;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(rotations >= 1, "no rotation in 14 s:\n{}", webhook.log());
    assert!(webhook.log().contains("serving certificate reloaded"), "{}", webhook.log());
    assert_eq!(secret_field(plane, "ca.crt"), ca, "the CA stays");

    // A second replica uses the same Secret, and serves too.
    let second = Webhook::start(plane, &["--cert-validity", "9s"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(secret_field(plane, "ca.crt"), ca);
    assert!(!second.log().contains("WARN"), "{}", second.log());
    kubectl(plane, &["label", "namespace", "kube-system", "respmesh.io/inject-"], None).unwrap();
}

/// With cert-manager, the webhook serves the certificate mounted in --cert-dir and reloads it
/// when the files change, without a restart.
#[tokio::test]
async fn a_mounted_certificate_is_served_and_reloaded() {
    use respmesh_webhook::certs::{issue, new_ca};
    let plane = respmesh_kubetest::shared();
    let dir = tempfile::tempdir().unwrap();
    let write = |ca: &str, key: &str| {
        let c = issue(ca, key, &["127.0.0.1".to_owned()], Duration::from_secs(3600)).unwrap();
        std::fs::write(dir.path().join("tls.crt"), &c.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &c.key_pem).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca).unwrap();
    };
    let (ca1, key1) = new_ca().unwrap();
    write(&ca1, &key1);
    let webhook = Webhook::start(plane, &["--cert-dir", dir.path().to_str().unwrap()]);
    // Python verifies the server against the CA file: only the current certificate passes.
    let verify = |ca: &str| {
        let ca_file = dir.path().join("verify-ca.crt");
        std::fs::write(&ca_file, ca).unwrap();
        let script = format!(
            "import http.client, ssl\nctx = ssl.create_default_context(cafile='{}')\nctx.check_hostname = False\n\
             c = http.client.HTTPSConnection('127.0.0.1', {}, context=ctx)\nc.request('GET', '/healthz')\nprint(c.getresponse().status)\n",
            ca_file.display(),
            webhook.port
        );
        let out = Command::new("python3").args(["-c", &script]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "200"
    };
    assert!(verify(&ca1), "{}", webhook.log());
    let (ca2, key2) = new_ca().unwrap();
    write(&ca2, &key2);
    let start = Instant::now();
    while !verify(&ca2) {
        assert!(start.elapsed() < Duration::from_secs(10), "not reloaded:\n{}", webhook.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!verify(&ca1), "the old certificate is no longer served");
}
