//! `respmesh-webhook`: HTTPS server (axum + rustls) for the mutating admission webhook.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum_server::tls_rustls::RustlsConfig;
use clap::Parser;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use respmesh_webhook::certs::{self, Certs};
use respmesh_webhook::inject::{InjectConfig, ports_of_config};
use respmesh_webhook::review::{self, Outcome};
use tracing::{info, warn};

/// Injects respmesh-init and the respmesh-proxy sidecar into pods of labeled namespaces.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// HTTPS address (POST /mutate, GET /healthz, /readyz, /metrics).
    #[arg(long, default_value = "0.0.0.0:9443")]
    listen: SocketAddr,
    /// The webhook's own namespace (never injected; holds the certificate Secret).
    #[arg(long, env = "POD_NAMESPACE", default_value = "respmesh-system")]
    namespace: String,
    /// The Service in front of the webhook (its DNS names go in the certificate).
    #[arg(long, default_value = "respmesh-webhook")]
    service_name: String,
    /// More names or IPs for the serving certificate, comma-separated.
    #[arg(long, default_value = "")]
    extra_hosts: String,
    /// The MutatingWebhookConfiguration whose caBundle this webhook keeps current.
    #[arg(long, default_value = "respmesh-webhook")]
    webhook_config: String,
    /// The Secret holding the CA and serving certificate.
    #[arg(long, default_value = "respmesh-webhook-certs")]
    cert_secret: String,
    /// Validity of serving certificates (renewed with a third left).
    #[arg(long, default_value = "2160h")]
    cert_validity: respmesh_api::Duration,
    /// How often the certificate is checked (and reloaded when it changed).
    #[arg(long, default_value = "30s")]
    cert_check_interval: respmesh_api::Duration,
    /// Use tls.crt/tls.key from this directory (cert-manager) instead of managing a CA.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    #[arg(long, default_value = "ghcr.io/respmesh/respmesh-proxy:0.1.0", env = "RESPMESH_PROXY_IMAGE")]
    proxy_image: String,
    /// Image with respmesh-init (by default the proxy's image, which holds both).
    #[arg(long, env = "RESPMESH_INIT_IMAGE")]
    init_image: Option<String>,
    /// Captured ports when the namespace's proxy configuration names none.
    #[arg(long, default_value = "6379")]
    default_ports: String,
    #[arg(long, default_value = "info")]
    proxy_log_level: String,
    #[arg(long, default_value = "info", env = "RESPMESH_LOG")]
    log_level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

struct App {
    cfg: InjectConfig,
    client: Client,
    reviews: Family<ResultLabels, Counter>,
    registry: Registry,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::io::stderr).init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "respmesh-webhook failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn capture_ports(client: &Client, namespace: &str) -> Vec<u16> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match tokio::time::timeout(Duration::from_secs(2), api.get_opt("respmesh-proxy")).await {
        Ok(Ok(Some(cm))) => cm.data.and_then(|d| d.get("config.yaml").map(|t| ports_of_config(t))).unwrap_or_default(),
        Ok(Ok(None)) => Vec::new(),
        Ok(Err(e)) => {
            warn!(namespace, error = %e, "cannot read the proxy ConfigMap; capturing the default ports");
            Vec::new()
        }
        Err(_) => {
            warn!(namespace, "reading the proxy ConfigMap timed out; capturing the default ports");
            Vec::new()
        }
    }
}

async fn mutate(State(app): State<Arc<App>>, body: Bytes) -> axum::Json<serde_json::Value> {
    let ns = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|r| review::namespace_of(&r));
    let ports = match &ns {
        Some(ns) => capture_ports(&app.client, ns).await,
        None => Vec::new(),
    };
    let (response, outcome) = review::answer(&body, &app.cfg, &ports);
    let result = match &outcome {
        Outcome::Injected { namespace, pod } => {
            info!(namespace = %namespace, pod = %pod, ports = ?ports, "injected");
            "injected"
        }
        Outcome::Skipped { namespace, pod, reason } => {
            info!(namespace = %namespace, pod = %pod, reason = %reason, "not injected");
            "skipped"
        }
        Outcome::Refused { message } => {
            warn!(message = %message, "pod refused");
            "refused"
        }
        Outcome::Malformed { message } => {
            warn!(message = %message, "malformed review");
            "malformed"
        }
    };
    app.reviews.get_or_create(&ResultLabels { result: result.into() }).inc();
    axum::Json(response)
}

async fn metrics(State(app): State<Arc<App>>) -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &app.registry);
    out
}

async fn load(args: &Args, store: &certs::Store) -> anyhow::Result<Certs> {
    match &args.cert_dir {
        Some(dir) => {
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f)).with_context(|| format!("reading {}/{f}", dir.display()))
            };
            Ok(Certs {
                ca_pem: String::new(),
                cert_pem: read("tls.crt")?,
                key_pem: read("tls.key")?,
                not_before: 0,
                not_after: 0,
            })
        }
        None => store.current().await,
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("cannot configure the Kubernetes client")?;
    let mut hosts = vec![
        format!("{}.{}.svc", args.service_name, args.namespace),
        format!("{}.{}.svc.cluster.local", args.service_name, args.namespace),
    ];
    hosts.extend(args.extra_hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_owned));
    let store = certs::Store::new(client.clone(), &args.namespace, &args.cert_secret, hosts, args.cert_validity.get());
    let mut current = load(&args, &store).await?;
    let tls = RustlsConfig::from_pem(current.cert_pem.clone().into_bytes(), current.key_pem.clone().into_bytes())
        .await
        .context("loading the serving certificate")?;

    let default_ports: Vec<u16> = args.default_ports.split(',').filter_map(|p| p.trim().parse().ok()).collect();
    let mut skip = InjectConfig::default().skip_namespaces;
    skip.push(args.namespace.clone());
    let cfg = InjectConfig {
        proxy_image: args.proxy_image.clone(),
        init_image: args.init_image.clone().unwrap_or_else(|| args.proxy_image.clone()),
        skip_namespaces: skip,
        log_level: args.proxy_log_level.clone(),
        default_ports: if default_ports.is_empty() { vec![6379] } else { default_ports },
        ..InjectConfig::default()
    };
    let mut registry = Registry::with_prefix("respmesh_webhook");
    let reviews = Family::<ResultLabels, Counter>::default();
    registry.register("reviews", "Admission reviews answered, by result", reviews.clone());
    let app = Arc::new(App { cfg, client: client.clone(), reviews, registry });
    let router = Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/metrics", get(metrics))
        .with_state(app);

    // Keep the certificate current, and the caBundle with it.
    {
        let tls = tls.clone();
        let client = client.clone();
        let interval = args.cert_check_interval.get();
        let manage_bundle = args.cert_dir.is_none();
        let webhook_config = args.webhook_config.clone();
        let args = args.clone();
        tokio::spawn(async move {
            let mut bundle_ok = false;
            loop {
                if manage_bundle && !bundle_ok {
                    match certs::ensure_ca_bundle(&client, &webhook_config, &current.ca_pem).await {
                        Ok(changed) => {
                            bundle_ok = true;
                            if changed {
                                info!(webhook = %webhook_config, "caBundle updated");
                            }
                        }
                        Err(e) => warn!(error = format!("{e:#}"), "cannot set the caBundle yet; retrying"),
                    }
                }
                tokio::time::sleep(if bundle_ok { interval } else { Duration::from_secs(1) }).await;
                match load(&args, &store).await {
                    Ok(next) if next != current => {
                        match tls
                            .reload_from_pem(next.cert_pem.clone().into_bytes(), next.key_pem.clone().into_bytes())
                            .await
                        {
                            Ok(()) => {
                                info!(not_after = next.not_after, "serving certificate reloaded");
                                bundle_ok = bundle_ok && next.ca_pem == current.ca_pem;
                                current = next;
                            }
                            Err(e) => warn!(error = %e, "cannot load the new certificate; keeping the old one"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = format!("{e:#}"), "cannot read the certificate"),
                }
                if manage_bundle && bundle_ok {
                    // Someone may have reapplied the configuration without a caBundle.
                    bundle_ok =
                        matches!(certs::ensure_ca_bundle(&client, &webhook_config, &current.ca_pem).await, Ok(false));
                }
            }
        });
    }

    let handle = axum_server::Handle::new();
    {
        let handle = handle.clone();
        tokio::spawn(async move {
            if let Some(addr) = handle.listening().await {
                info!(address = %addr, "webhook listening (HTTPS)");
            }
        });
    }
    let listen = args.listen;
    let shutdown = handle.clone();
    tokio::spawn(async move {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            term.recv().await;
            shutdown.graceful_shutdown(Some(Duration::from_secs(5)));
        }
    });
    axum_server::bind_rustls(listen, tls).handle(handle).serve(router.into_make_service()).await?;
    Ok(())
}
