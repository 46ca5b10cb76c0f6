//! The CRD manifests, rendered from the types in [`crate::crd`]: the checked-in files under
//! `manifests/` are exactly this output (a test compares them).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::crd::{COMPAT_GROUP, GROUP, RedisDestination, RedisService};

/// The CRDs under `redis.respmesh.io`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![RedisService::crd(), RedisDestination::crd()]
}

/// The same CRDs under Aeraki's group `redis.aeraki.io`, for YAML written for Aeraki Mesh.
pub fn compat_crds() -> Vec<CustomResourceDefinition> {
    crds()
        .into_iter()
        .map(|mut crd| {
            crd.spec.group = COMPAT_GROUP.to_owned();
            crd.metadata.name = Some(format!("{}.{COMPAT_GROUP}", crd.spec.names.plural));
            crd.spec.names.categories = Some(vec!["redis-aeraki-io".to_owned()]);
            // The short names and the `respmesh` category stay with the main group, so that
            // `kubectl get rsvc` is never ambiguous when both are installed.
            crd.spec.names.short_names = None;
            crd
        })
        .collect()
}

/// `(path under manifests/, YAML)` for every generated file.
pub fn crd_files() -> Vec<(String, String)> {
    let render = |crd: &CustomResourceDefinition| {
        let yaml = serde_yaml_ng::to_string(crd).expect("a CRD serializes");
        format!("# Generated from api/src/crd.rs by `cargo run -p respmesh-api --bin crdgen`; do not edit.\n{yaml}")
    };
    let mut out = Vec::new();
    for crd in crds() {
        debug_assert_eq!(crd.spec.group, GROUP);
        out.push((format!("crds/{}.yaml", crd.spec.names.plural), render(&crd)));
    }
    for crd in compat_crds() {
        out.push((format!("compat/{}.yaml", crd.spec.names.plural), render(&crd)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in CRDs are what the types generate; regenerate with crdgen when this fails.
    #[test]
    fn checked_in_crds_are_current() {
        // Cargo names the package directory when it runs the test; prefer it to the build-time
        // one (a shared target directory may hold a binary built in another checkout).
        let package = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        let root = std::path::Path::new(&package).join("../manifests");
        for (rel, text) in crd_files() {
            let on_disk = std::fs::read_to_string(root.join(&rel))
                .unwrap_or_else(|e| panic!("manifests/{rel}: {e}; run `cargo run -p respmesh-api --bin crdgen`"));
            assert!(on_disk == text, "manifests/{rel} is stale; run `cargo run -p respmesh-api --bin crdgen`");
        }
    }
}
