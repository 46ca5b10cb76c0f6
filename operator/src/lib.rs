//! respmesh-operator: turns RedisService and RedisDestination resources, Redis Services,
//! their EndpointSlices and Secrets into the ConfigMap and Secret each injected namespace's
//! proxies read.
//!
//! - [`translate`]: the pure translation, resources in, proxy configuration out;
//! - [`controller`]: the reflectors, the namespace controller and the status writer;
//! - [`leader`]: Lease-based leader election;
//! - [`metrics`]: Prometheus metrics, served with health endpoints by the binary.
#![forbid(unsafe_code)]

pub mod controller;
pub mod leader;
pub mod metrics;
pub mod translate;
