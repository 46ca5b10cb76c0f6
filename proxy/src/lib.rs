//! respmesh-proxy: a transparent, multiplexing RESP proxy.
//!
//! Layout, one concern per module:
//! - [`resp`]: RESP framing (client commands, Redis replies), resumable and bounded;
//! - [`command`]: the command table and which commands need special handling;
//! - [`session`]: one client connection: local answers, pinning, routing;
//! - [`client`]: a client's ordered reply queue, as upstreams see it;
//! - [`upstream`]: connections to Redis, shared or dedicated;
//! - [`worker`]: threads, listeners, per-thread connection pools;
//! - [`config`] and [`reload`]: the running configuration and its hot reload from a file;
//! - [`kube_source`]: the configuration from a ConfigMap and Secret, watched through the API;
//! - [`admin`] and [`metrics`]: `/metrics`, `/ready`, `/live`, `/config`;
//! - [`replies`]: every reply the proxy makes itself;
//! - [`memory`]: giving freed memory back; [`os`]: the calls into the C library.
// No unsafe code, except in `os`: the calls into the C library (allocator, open-file limit) and
// the socket reads and writes of the hot path.
#![deny(unsafe_code)]

pub mod admin;
pub mod busy_poll;
pub mod client;
pub mod cluster;
pub mod command;
pub mod config;
pub mod kube_source;
pub mod memory;
pub mod metrics;
pub mod net;
#[allow(unsafe_code)]
pub mod os;
pub mod registry;
pub mod reload;
pub mod replies;
pub mod resp;
pub mod session;
pub(crate) mod session_cluster;
mod session_route;
pub mod signal;
pub mod upstream;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::admin::AdminState;
use crate::config::Runtime;
use crate::metrics::Metrics;

/// Where the configuration comes from.
pub enum Source {
    /// A file (and a credentials directory), watched for changes.
    File(reload::FileSource),
    /// A ConfigMap and its credentials Secret, watched through the Kubernetes API.
    Kube(kube_source::KubeSource),
    /// Built from command-line flags; fixed for the life of the process.
    Fixed(Box<respmesh_api::proxy::ProxyConfig>),
}

pub struct Options {
    pub source: Source,
    pub admin: Option<SocketAddr>,
    pub workers: usize,
    pub drain_timeout: Duration,
    /// Busy-poll window after each read (`--busy-poll`); zero sleeps at once.
    pub busy_poll: Duration,
}

/// Runs the proxy until SIGTERM or SIGINT, then drains and returns.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let rt = match &opts.source {
        Source::File(src) => src.load(1)?,
        // Nothing is served until the ConfigMap has been read, but --bind listeners are bound
        // at once (their clients are told the service is not configured yet).
        Source::Kube(src) => Runtime::build_with(respmesh_api::proxy::ProxyConfig::empty(), 1, None, &src.binds)?,
        Source::Fixed(cfg) => Runtime::build((**cfg).clone(), 1)?,
    };
    anyhow::ensure!(
        opts.busy_poll <= respmesh_api::proxy::MAX_BUSY_POLL,
        "--busy-poll {:?} is longer than the {:?} allowed",
        opts.busy_poll,
        respmesh_api::proxy::MAX_BUSY_POLL
    );
    if opts.workers > 1 && rt.listeners.iter().any(|(a, _)| a.port() == 0) {
        anyhow::bail!("a listener on port 0 needs --workers 1 (each worker would get its own port)");
    }
    // Watch before serving: a change made once the proxy says it listens is never missed.
    let file_watch = match &opts.source {
        Source::File(src) => Some(reload::FileWatch::new(src.clone(), &rt)),
        Source::Kube(_) | Source::Fixed(_) => None,
    };
    let ready = Arc::new(AtomicBool::new(!matches!(opts.source, Source::Kube(_))));
    let config = config::Shared::new(rt);
    let metrics = Metrics::new();
    metrics.config_generation.set(1);
    let (gen_tx, gen_rx) = watch::channel(1u64);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    memory::configure();
    // Each client costs a file descriptor, and so does each upstream connection: take what
    // the system allows rather than the soft limit (often 1024) a container starts with.
    match os::raise_open_file_limit() {
        Ok(limit) => info!(limit, "open-file limit"),
        Err(e) => warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    let mut threads = Vec::new();
    for id in 0..opts.workers.max(1) {
        threads.push(worker::spawn(worker::WorkerSetup {
            id,
            config: config.clone(),
            metrics: metrics.clone(),
            generations: gen_rx.clone(),
            shutdown: shutdown_rx.clone(),
            drain_timeout: opts.drain_timeout,
            busy_poll: opts.busy_poll,
        })?);
    }

    let main_rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    main_rt.block_on(async move {
        tokio::spawn(memory::give_back_freed_memory());
        let state = Arc::new(AdminState { config: config.clone(), metrics: metrics.clone(), ready: ready.clone() });
        if let Some(addr) = opts.admin {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?;
            info!(address = %listener.local_addr()?, "admin listening");
            tokio::spawn(admin::serve(listener, state.clone()));
        }
        if let Some(fw) = file_watch {
            tokio::spawn(reload::watch_file(fw, config.clone(), metrics.clone(), gen_tx));
        } else if let Source::Kube(src) = opts.source {
            tokio::spawn(kube_source::watch(src, config.clone(), metrics.clone(), gen_tx, ready.clone()));
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: draining"),
        }
        state.ready.store(false, Ordering::Release);
        let _ = shutdown_tx.send(true);
        tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await?;
        info!("stopped");
        anyhow::Ok(())
    })
}
