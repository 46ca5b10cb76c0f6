//! Runs a local Kubernetes API (etcd + kube-apiserver, respmesh's CRDs installed) until it
//! is stopped, and writes an admin kubeconfig to the path given as the only argument.
//! `make cluster-up` starts it in the background; `make cluster-down` stops it (and the
//! watchdog then stops the API server and etcd and removes their files).

fn main() -> std::process::ExitCode {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: respmesh-local-cluster KUBECONFIG_OUT");
        return std::process::ExitCode::FAILURE;
    };
    let plane = match respmesh_kubetest::ControlPlane::start() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot start the local control plane: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::copy(&plane.admin_kubeconfig, &out) {
        eprintln!("cannot write {out}: {e}");
        return std::process::ExitCode::FAILURE;
    }
    println!("kube-apiserver serving at {}; kubeconfig: {out}", plane.url);
    loop {
        std::thread::park();
    }
}
