//! A real Kubernetes API for tests: etcd and kube-apiserver (built by `scripts/k8s-bins.sh`)
//! started on free loopback ports with generated certificates, respmesh's CRDs installed.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! let plane = respmesh_kubetest::shared();          // one per test binary, started once
//! let client = plane.client().await?;               // a client on the caller's runtime
//! let ns = plane.namespace(&client, "demo", &[("respmesh.io/inject", "enabled")]).await?;
//! # Ok(()) }
//! ```
//!
//! Nothing outlives the test process: a watchdog shell stops etcd and the apiserver and
//! removes their files as soon as the process that started them exits, whether the tests
//! passed, failed or the process was killed. Identities are client certificates signed by
//! the plane's client CA ([`ControlPlane::kubeconfig_for`]), so a test can run a binary with
//! exactly the permissions its RBAC manifests grant.

pub mod netns;
pub mod process;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

pub struct ControlPlane {
    pub dir: PathBuf,
    pub url: String,
    /// A kubeconfig for `kubectl` with cluster-admin rights.
    pub admin_kubeconfig: PathBuf,
    ca_pem: String,
    client_ca_params: CertificateParams,
    client_ca_key: String,
    _processes: Vec<Child>,
}

/// The control plane shared by the tests of this process, started on first use.
pub fn shared() -> &'static ControlPlane {
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    PLANE.get_or_init(|| {
        // Started on a thread of its own: callers may be inside a tokio runtime.
        std::thread::spawn(ControlPlane::start)
            .join()
            .expect("control plane thread")
            .unwrap_or_else(|e| panic!("cannot start the local Kubernetes control plane: {e:#}"))
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The workspace's root directory. Cargo names the running test's package directory when it
/// runs a test, which is preferred to the one recorded at build time: a test binary from a
/// shared target directory may have been built in another checkout.
pub fn workspace_root() -> PathBuf {
    let package =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    package.parent().map(Path::to_path_buf).unwrap_or(package)
}

/// A binary of this workspace, found beside the running test binary's directory
/// (`target/<profile>/`). `cargo test --workspace` (and `make test`) build them all.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built: run `cargo build --workspace` first", path.display());
    path
}

/// The directory holding `kube-apiserver` and `etcd`: `RESPMESH_K8S_BIN`, else built (or
/// found in the cache) by `scripts/k8s-bins.sh`.
pub fn binaries() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("RESPMESH_K8S_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = workspace_root().join("scripts/k8s-bins.sh");
    let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().context("running k8s-bins.sh")?;
    if !out.status.success() {
        bail!("{} failed", script.display());
    }
    let text = String::from_utf8(out.stdout)?;
    Ok(PathBuf::from(text.lines().last().unwrap_or_default().trim()))
}

fn ca(name: &str) -> anyhow::Result<(String, CertificateParams, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), params, key))
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool, procs: &mut [Child]) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        for p in procs.iter_mut() {
            if let Some(status) = p.try_wait()? {
                bail!("{what}: a process exited early ({status})");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what}: not ready within {timeout:?}")
}

/// The last lines of a log, for error messages (the files go when the process ends).
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // klog marks errors and fatal lines with E and F; those say why, the rest is context.
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with('E') || l.starts_with('F')).collect();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = errors[errors.len().saturating_sub(10)..].to_vec();
    out.extend_from_slice(&lines[lines.len().saturating_sub(5)..]);
    out.join("\n")
}

fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver, waits until the API serves, installs the CRDs.
    pub fn start() -> anyhow::Result<ControlPlane> {
        let bin = binaries()?;
        let dir = std::env::temp_dir().join(format!("respmesh-kube-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(dir.join("certs"))?;
        let certs = dir.join("certs");

        let (ca_pem, ca_params, ca_key) = ca("respmesh-test-ca")?;
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        let server = params.signed_by(&server_key, &issuer)?;
        std::fs::write(certs.join("apiserver.crt"), format!("{}{ca_pem}", server.pem()))?;
        std::fs::write(certs.join("apiserver.key"), server_key.serialize_pem())?;
        let sa_key = KeyPair::generate()?;
        std::fs::write(certs.join("sa.key"), sa_key.serialize_pem())?;
        std::fs::write(certs.join("sa.pub"), sa_key.public_key_pem())?;
        let (client_ca_cert, client_ca_params, client_ca_key) = ca("respmesh-test-client-ca")?;
        std::fs::write(certs.join("client-ca.crt"), &client_ca_cert)?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let api_port = free_port()?;
        let log = |name: &str| -> anyhow::Result<Stdio> { Ok(std::fs::File::create(dir.join(name))?.into()) };
        let peer = format!("http://127.0.0.1:{peer_port}");
        let client_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd = Command::new(bin.join("etcd"))
            .args(["--data-dir", &dir.join("etcd").to_string_lossy()])
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--unsafe-no-fsync", "--log-level", "warn", "--listen-metrics-urls", ""])
            .stdout(log("etcd.log")?)
            .stderr(log("etcd.log")?)
            .spawn()
            .context("starting etcd")?;
        let mut procs = vec![etcd];
        // The watchdog: when this process is gone, stop the plane and remove its files.
        let watchdog = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill $(cat {d}/pids) 2>/dev/null; sleep 2; \
             kill -9 $(cat {d}/pids) 2>/dev/null; rm -rf {d}; \
             for n in $(ip netns list 2>/dev/null | awk '{{print $1}}' | grep '^{ns}'); do ip netns del $n; done",
            ns = netns::prefix(),
            me = std::process::id(),
            d = dir.display()
        );
        wait_for("etcd", Duration::from_secs(30), || http_ok(etcd_port, "/health"), &mut procs)
            .with_context(|| tail(&dir.join("etcd.log")))?;

        let cert_dir = certs.to_string_lossy().into_owned();
        let apiserver = Command::new(bin.join("kube-apiserver"))
            .arg(format!("--etcd-servers={client_url}"))
            .arg(format!("--cert-dir={cert_dir}"))
            .arg(format!("--tls-cert-file={cert_dir}/apiserver.crt"))
            .arg(format!("--tls-private-key-file={cert_dir}/apiserver.key"))
            .arg(format!("--secure-port={api_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--endpoint-reconciler-type=none")
            .arg("--service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112")
            .arg("--allow-privileged=true")
            .arg("--authorization-mode=RBAC")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg(format!("--service-account-issuer=https://127.0.0.1:{api_port}/"))
            .arg(format!("--service-account-key-file={cert_dir}/sa.pub"))
            .arg(format!("--service-account-signing-key-file={cert_dir}/sa.key"))
            .arg(format!("--client-ca-file={cert_dir}/client-ca.crt"))
            .arg("--v=0")
            .stdout(log("apiserver.log")?)
            .stderr(log("apiserver.log")?)
            .spawn()
            .context("starting kube-apiserver")?;
        procs.push(apiserver);
        let pids: Vec<String> = procs.iter().map(|p| p.id().to_string()).collect();
        std::fs::write(dir.join("pids"), pids.join(" "))?;
        Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the watchdog")?;

        let mut plane = ControlPlane {
            url: format!("https://127.0.0.1:{api_port}"),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            dir,
            ca_pem,
            client_ca_params,
            client_ca_key: client_ca_key.serialize_pem(),
            _processes: Vec::new(),
        };
        plane.admin_kubeconfig = plane.kubeconfig_for("admin", &["system:masters"])?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let result = rt.block_on(async {
            let start = Instant::now();
            let client = plane.client().await?;
            loop {
                let ok = client.request_text(http_get("/readyz")?).await.is_ok_and(|t| t.trim() == "ok");
                if ok && Api::<Namespace>::all(client.clone()).get_opt("default").await.is_ok_and(|n| n.is_some()) {
                    break;
                }
                for p in procs.iter_mut() {
                    if let Some(status) = p.try_wait()? {
                        bail!("kube-apiserver exited early ({status}):\n{}", tail(&plane.dir.join("apiserver.log")));
                    }
                }
                if start.elapsed() > Duration::from_secs(120) {
                    bail!("kube-apiserver not ready in 120 s:\n{}", tail(&plane.dir.join("apiserver.log")));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            install_crds(&client).await
        });
        plane._processes = procs;
        result?;
        Ok(plane)
    }

    /// Makes the watchdog stop `pid` too when the test process exits (for processes a test
    /// binary keeps for all its tests, such as a shared operator).
    pub fn adopt(&self, pid: u32) -> anyhow::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(self.dir.join("pids"))?;
        write!(f, " {pid}")?;
        Ok(())
    }

    /// Writes a kubeconfig whose user is `user` in `groups` (a client certificate).
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> anyhow::Result<PathBuf> {
        let issuer = Issuer::new(self.client_ca_params.clone(), KeyPair::from_pem(&self.client_ca_key)?);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        let cert = params.signed_by(&key, &issuer)?;
        let b64 = |s: &str| base64(s.as_bytes());
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: respmesh-test\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\n\
             users:\n- name: {user}\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\n\
             contexts:\n- name: respmesh-test\n  context: {{cluster: respmesh-test, user: {user}}}\ncurrent-context: respmesh-test\n",
            url = self.url,
            ca = b64(&self.ca_pem),
            crt = b64(&cert.pem()),
            key = b64(&key.serialize_pem()),
        );
        let safe: String = user.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let path = self.dir.join(format!("{safe}.kubeconfig"));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// A cluster-admin client on the caller's runtime.
    pub async fn client(&self) -> anyhow::Result<Client> {
        client_from(&self.admin_kubeconfig).await
    }

    /// Creates a fresh namespace `<prefix>-<random>` with `labels`.
    pub async fn namespace(&self, client: &Client, prefix: &str, labels: &[(&str, &str)]) -> anyhow::Result<String> {
        let name = format!("{prefix}-{:06x}", fastrand::u32(..0xffffff));
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
        Ok(name)
    }

    /// Runs kubectl as the admin against this plane.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<std::process::Output> {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", &self.admin_kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        let mut input = child.stdin.take().expect("piped");
        input.write_all(stdin.unwrap_or("").as_bytes())?;
        drop(input);
        Ok(child.wait_with_output()?)
    }

    /// kubectl as the admin: its output, or its error message.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let out = self.kubectl(args, stdin).map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The caBundle of a MutatingWebhookConfiguration's first webhook; empty until it is set.
    pub fn webhook_ca_bundle(&self, name: &str) -> String {
        let jsonpath = "jsonpath={.webhooks[0].clientConfig.caBundle}";
        self.kubectl_ok(&["get", "mutatingwebhookconfiguration", name, "-o", jsonpath], None).unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for p in &mut self._processes {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn http_get(path: &str) -> anyhow::Result<http::Request<Vec<u8>>> {
    Ok(http::Request::get(path).body(Vec::new())?)
}

/// Installs respmesh's CRDs (both groups) and waits until they are served.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds: Vec<_> =
        respmesh_api::manifests::crds().into_iter().chain(respmesh_api::manifests::compat_crds()).collect();
    for crd in &crds {
        let name = crd.metadata.name.clone().expect("named");
        api.patch(&name, &PatchParams::apply("respmesh-kubetest").force(), &Patch::Apply(crd)).await?;
    }
    for crd in &crds {
        let name = crd.metadata.name.clone().expect("named");
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established).await.context("CRD not established")??;
    }
    // The first object of a new CRD waits ~2 s in the API server (its storage and schema
    // validators are built lazily); pay that here, with a dry run, not in a test's timing.
    for crd in &crds {
        let names = &crd.spec.names;
        let gvk = kube::api::GroupVersionKind::gvk(&crd.spec.group, "v1alpha1", &names.kind);
        let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, &names.plural);
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
        let mut obj = kube::api::DynamicObject::new("warm-up", &ar);
        obj.data = serde_json::json!({"spec": {"host": if names.kind == "RedisService" { serde_json::json!(["warm-up"]) } else { serde_json::json!("warm-up") }}});
        api.create(&PostParams { dry_run: true, field_manager: None }, &obj).await?;
    }
    Ok(())
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"testredis\n"), "dGVzdHJlZGlzCg==");
    }
}
