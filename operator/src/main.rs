//! `respmesh-operator`: runs the controllers, the health and metrics endpoint, and leader
//! election.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};
use respmesh_operator::controller::{self, Context};
use respmesh_operator::leader::Elector;
use respmesh_operator::metrics::Metrics;
use tokio::sync::watch;
use tracing::info;

/// The respmesh operator: RedisService/RedisDestination + Services + EndpointSlices + Secrets
/// -> the respmesh-proxy ConfigMap and credentials Secret of every injected namespace.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Health (/healthz, /readyz) and metrics (/metrics) endpoint.
    #[arg(long, default_value = "0.0.0.0:8080", env = "RESPMESH_OPERATOR_HTTP")]
    http: SocketAddr,
    /// The cluster's DNS domain, used in service hosts.
    #[arg(long, default_value = "cluster.local", env = "RESPMESH_CLUSTER_DOMAIN")]
    cluster_domain: String,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "respmesh-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "respmesh-operator")]
    lease_name: String,
    /// How long a lease lasts without renewal.
    #[arg(long, default_value = "15s")]
    lease_duration: respmesh_api::Duration,
    /// This instance's identity in the Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, default_value = "info", env = "RESPMESH_LOG")]
    log_level: String,
}

struct Health {
    metrics: Arc<Metrics>,
    synced: Arc<AtomicBool>,
}

async fn serve_metrics(State(h): State<Arc<Health>>) -> String {
    h.metrics.encode()
}

async fn readyz(State(h): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if h.synced.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n")
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::io::stderr).init();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "respmesh-operator failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("cannot configure the Kubernetes client")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "respmesh-operator".into())
    });
    let identity = format!("{identity}-{}", std::process::id());
    let metrics = Arc::new(Metrics::new());
    let synced = Arc::new(AtomicBool::new(false));
    let health = Arc::new(Health { metrics: metrics.clone(), synced: synced.clone() });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(serve_metrics))
        .with_state(health);
    let listener =
        tokio::net::TcpListener::bind(args.http).await.with_context(|| format!("cannot listen on {}", args.http))?;
    info!(address = %listener.local_addr()?, "health and metrics listening");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (changed_tx, changed_rx) = watch::channel(0u64);
    let stores = controller::start_stores(&client, changed_tx);
    // Caches fill on followers too, so that a takeover starts warm; ready means synced.
    stores.wait_synced().await;
    synced.store(true, Ordering::Release);
    info!("caches synced");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let elector =
        Elector::new(client.clone(), &args.lease_namespace, &args.lease_name, &identity, args.lease_duration.get());
    elector.acquire().await;
    metrics.leader.set(1);
    let ctx = Arc::new(Context {
        client: client.clone(),
        stores,
        domain: args.cluster_domain.clone(),
        metrics: metrics.clone(),
        recorder: controller::recorder(client.clone(), &identity),
    });
    info!(domain = %args.cluster_domain, "reconciling");
    tokio::select! {
        _ = controller::run_namespace_controller(ctx.clone(), namespaces, changed_rx.clone()) => info!("controller stopped"),
        _ = controller::run_status_writer(ctx.clone(), changed_rx) => {},
        _ = elector.hold() => {
            metrics.leader.set(0);
            anyhow::bail!("leadership lost; exiting so that a restart stands by");
        }
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
