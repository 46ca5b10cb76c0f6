//! Writes the CRD manifests generated from the Rust types: `manifests/crds/` (group
//! `redis.respmesh.io`) and `manifests/compat/` (the same resources under `redis.aeraki.io`).
//!
//!   cargo run -p respmesh-api --bin crdgen            # write the files
//!   cargo run -p respmesh-api --bin crdgen -- --check # fail if a checked-in file is stale

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("manifests");
    let mut stale = Vec::new();
    for (rel, text) in respmesh_api::manifests::crd_files() {
        let path = root.join(&rel);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == text {
            continue;
        }
        if check {
            stale.push(rel);
        } else {
            std::fs::create_dir_all(path.parent().expect("a file in a directory")).expect("create directory");
            std::fs::write(&path, text).expect("write manifest");
            println!("wrote manifests/{rel}");
        }
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("stale: {}; run `cargo run -p respmesh-api --bin crdgen`", stale.join(", "));
        ExitCode::FAILURE
    }
}
