//! respmesh API types.
//!
//! [`proxy`] is the proxy configuration schema: the contract between whoever writes a proxy's
//! configuration (a person with a file today, the operator through a ConfigMap later) and
//! `respmesh-proxy`, which reads it. It is versioned by `apiVersion`/`kind`, parsed strictly
//! (unknown fields are errors) and validated as a whole, reporting every problem at once.
//!
//! [`crd`] holds the custom resources users apply (`RedisService`, `RedisDestination`);
//! [`manifests`] renders their CRDs.
#![forbid(unsafe_code)]

pub mod crd;
pub mod duration;
pub mod manifests;
pub mod proxy;

pub use duration::Duration;
