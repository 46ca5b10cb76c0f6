//! respmesh-webhook: the mutating admission webhook that injects `respmesh-init` and the
//! `respmesh-proxy` native sidecar into pods of namespaces labeled
//! `respmesh.io/inject=enabled`.
//!
//! - [`inject`]: the decision and the JSON Patch, a pure function over the pod's raw JSON;
//! - [`review`]: AdmissionReview in and out, errors included;
//! - [`certs`]: the CA and serving certificate in a Secret, the caBundle, rotation.
#![forbid(unsafe_code)]

pub mod certs;
pub mod inject;
pub mod review;
