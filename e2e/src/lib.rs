//! End-to-end support: a stand-in for the kubelet, which cannot run here.
//!
//! [`PodRunner`] takes a pod as the API server stored it (so, as the webhook injected it) and
//! does the kubelet's part for respmesh's containers only, inside a network namespace made by
//! the test: it materializes the ConfigMap and Secret volumes the way the kubelet does (files
//! behind a `..data` symlink that is swapped on change, refreshed from the API every 200 ms),
//! runs the init containers in order (`respmesh-init` as root), starts the native sidecar
//! (`respmesh-proxy`, as the UID its securityContext names) and waits for its startup probe.
//! Without mount namespaces, a volume's mount path in the container's arguments is replaced
//! by the directory holding that volume. Everything else (images, the app containers) is not
//! run: the test plays the application with redis-cli inside the same network namespace.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use respmesh_kubetest::netns::NetNs;
use respmesh_kubetest::workspace_bin;
use serde_json::Value;

pub struct PodRunner {
    sidecars: Vec<Child>,
    stop: Arc<AtomicBool>,
    pub dir: tempfile_dir::Dir,
    pub logs: Vec<PathBuf>,
}

/// A world-readable temporary directory (the proxy runs as an unprivileged UID).
pub mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> std::io::Result<Dir> {
            let p = std::env::temp_dir().join(format!("respmesh-pod-{}-{}", std::process::id(), nanos()));
            std::fs::create_dir_all(&p)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
            Ok(Dir(p))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    fn nanos() -> u128 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn kubectl_json(kubeconfig: &Path, args: &[&str]) -> Option<Value> {
    let out = Command::new("kubectl").env("KUBECONFIG", kubeconfig).args(args).args(["-o", "json"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// What a volume holds now: key to bytes (None when its object does not exist).
fn volume_content(kubeconfig: &Path, ns: &str, volume: &Value) -> Option<BTreeMap<String, Vec<u8>>> {
    if let Some(name) = volume.pointer("/configMap/name").and_then(Value::as_str) {
        let cm = kubectl_json(kubeconfig, &["get", "configmap", "-n", ns, name])?;
        return Some(
            cm["data"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").as_bytes().to_vec()))
                .collect(),
        );
    }
    if let Some(name) = volume.pointer("/secret/secretName").and_then(Value::as_str) {
        let s = kubectl_json(kubeconfig, &["get", "secret", "-n", ns, name])?;
        let b64 = base64::engine::general_purpose::STANDARD;
        return Some(
            s["data"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), b64.decode(v.as_str()?).ok()?)))
                .collect(),
        );
    }
    None
}

/// Writes `content` into `dir` the kubelet's way: a fresh timestamped directory, the `..data`
/// symlink swapped to it atomically, one symlink per key through `..data`.
fn write_volume(dir: &Path, content: &BTreeMap<String, Vec<u8>>, generation: u64) -> std::io::Result<()> {
    let stamp = format!("..{generation}");
    let fresh = dir.join(&stamp);
    std::fs::create_dir_all(&fresh)?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755))?;
    for (k, v) in content {
        let f = fresh.join(k);
        std::fs::write(&f, v)?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data"))?;
    for k in content.keys() {
        let link = dir.join(k);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(k), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && !content.contains_key(&name) {
            let _ = std::fs::remove_file(dir.join(&name));
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn runnable_copy(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let to = dir.join(name);
    std::fs::copy(workspace_bin(name), &to)?;
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
    Ok(to)
}

impl PodRunner {
    /// Runs the respmesh parts of `pod` (stored JSON) in `netns`; `kubeconfig` reads its volumes.
    pub fn start(kubeconfig: &Path, pod: &Value, netns: &NetNs) -> anyhow::Result<PodRunner> {
        let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).context("pod namespace")?.to_owned();
        let dir = tempfile_dir::Dir::new()?;
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
        // Volumes, kept in sync with the API like the kubelet does.
        let mut volumes = Vec::new();
        for v in pod.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or_default().to_owned();
            let path = dir.path().join("volumes").join(&name);
            std::fs::create_dir_all(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            let content =
                volume_content(kubeconfig, &ns, v).with_context(|| format!("volume {name}: its object is missing"))?;
            write_volume(&path, &content, 0)?;
            volumes.push((name, path, v.clone(), content));
        }
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (stop, kubeconfig, ns) = (stop.clone(), kubeconfig.to_path_buf(), ns.clone());
            let mut volumes = volumes.clone();
            std::thread::spawn(move || {
                let mut generation = 0;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    for (_, path, spec, last) in volumes.iter_mut() {
                        if let Some(now) = volume_content(&kubeconfig, &ns, spec)
                            && now != *last
                        {
                            generation += 1;
                            if write_volume(path, &now, generation).is_ok() {
                                *last = now;
                            }
                        }
                    }
                }
            });
        }
        let mount_of = |c: &Value| -> Vec<(String, PathBuf)> {
            c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| {
                    let name = m["name"].as_str()?;
                    let path = volumes.iter().find(|v| v.0 == name)?.1.clone();
                    Some((m["mountPath"].as_str()?.to_owned(), path))
                })
                .collect()
        };
        let mut runner = PodRunner { sidecars: Vec::new(), stop, dir, logs: Vec::new() };
        for c in pod.pointer("/spec/initContainers").and_then(Value::as_array).into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default();
            let program = c["command"][0].as_str().context("a command")?;
            let exe = runnable_copy(&bin, program)?;
            let mounts = mount_of(c);
            let args: Vec<String> = c["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|a| mounts.iter().fold(a.to_owned(), |a, (mp, dir)| a.replace(mp.as_str(), dir.to_str().unwrap())))
                .collect();
            let uid = c.pointer("/securityContext/runAsUser").and_then(Value::as_i64).unwrap_or(0);
            let gid = c.pointer("/securityContext/runAsGroup").and_then(Value::as_i64).unwrap_or(uid);
            let log = runner.dir.path().join(format!("{name}.log"));
            let mut cmd = netns.command("setpriv");
            cmd.args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()])
                .arg(&exe)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?);
            runner.logs.push(log.clone());
            if c["restartPolicy"] == "Always" {
                runner.sidecars.push(cmd.spawn().with_context(|| format!("starting {name}"))?);
                // The startup probe: the next container starts only once this one is started.
                let port = c.pointer("/startupProbe/httpGet/port").and_then(Value::as_i64).unwrap_or(0);
                let path = c.pointer("/startupProbe/httpGet/path").and_then(Value::as_str).unwrap_or("/");
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let mut probe = netns.command("python3");
                    probe.args([
                        "-c",
                        &format!(
                            "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=1)"
                        ),
                    ]);
                    if probe.output().map(|o| o.status.success()).unwrap_or(false) {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "{name}: startup probe failed for 20 s:\n{}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            } else {
                let status = cmd.status()?;
                if !status.success() {
                    bail!("init container {name} failed:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
                }
            }
        }
        Ok(runner)
    }

    pub fn logs(&self) -> String {
        self.logs.iter().map(|l| std::fs::read_to_string(l).unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for PodRunner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in &mut self.sidecars {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
