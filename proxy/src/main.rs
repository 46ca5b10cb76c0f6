//! `respmesh-proxy`: parses arguments, sets up logging, runs the proxy.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Parser, ValueEnum};
use respmesh_api::proxy::{Credentials, Listener, ProxyConfig, Service};
use respmesh_proxy::kube_source::KubeSource;
use respmesh_proxy::{Options, Source};

/// A transparent, multiplexing Redis (RESP) proxy: authentication offload, client passwords,
/// connection sharing. Run it with a configuration file, or with flags for one upstream.
#[derive(Parser, Debug)]
#[command(version, group(ArgGroup::new("source").required(true).args(["config", "upstream", "configmap"])))]
struct Args {
    /// Configuration file (YAML, schema proxy.respmesh.io/v1alpha1; see docs/config.md).
    #[arg(long, env = "RESPMESH_CONFIG", conflicts_with_all = ["listen", "upstream", "configmap"])]
    config: Option<PathBuf>,
    /// Directory of credential files named by key (a mounted Secret), for `passwordKey` and
    /// `usernameKey` in the configuration file.
    #[arg(long, requires = "config")]
    credentials_dir: Option<PathBuf>,
    /// The operator's ConfigMap, NAMESPACE/NAME, watched through the Kubernetes API (in-cluster
    /// credentials, or KUBECONFIG).
    #[arg(long, env = "RESPMESH_CONFIGMAP", conflicts_with_all = ["listen", "upstream"])]
    configmap: Option<String>,
    /// The credentials Secret beside the ConfigMap (with --configmap).
    #[arg(long, default_value = respmesh_proxy::kube_source::DEFAULT_SECRET)]
    credentials_secret: String,
    /// Also listen on ADDRESS for the clients of service HOST (repeatable), e.g.
    /// 127.0.0.1:6380=redis-single.redis.svc.cluster.local. With --config or --configmap.
    #[arg(long = "bind", value_name = "ADDRESS=HOST", conflicts_with = "upstream")]
    binds: Vec<String>,
    /// Listen on ADDRESS for connections redirected by respmesh-init (repeatable), e.g.
    /// 127.0.0.1:15379 and [::1]:15379: each goes to the service whose addresses hold its
    /// original destination, or is relayed unchanged. With --config or --configmap.
    #[arg(long = "capture", value_name = "ADDRESS", conflicts_with = "upstream")]
    captures: Vec<SocketAddr>,
    /// Address to listen on (with --upstream).
    #[arg(long, default_value = "127.0.0.1:6380")]
    listen: SocketAddr,
    /// Redis to forward to, host:port.
    #[arg(long)]
    upstream: Option<String>,
    /// ACL user the proxy logs in as.
    #[arg(long, requires = "upstream")]
    upstream_user: Option<String>,
    /// Password the proxy logs in with.
    #[arg(long, env = "RESPMESH_UPSTREAM_PASSWORD", conflicts_with = "upstream_password_file", requires = "upstream")]
    upstream_password: Option<String>,
    /// File holding the password the proxy logs in with.
    #[arg(long, requires = "upstream")]
    upstream_password_file: Option<String>,
    /// Password clients must give with AUTH.
    #[arg(long, env = "RESPMESH_CLIENT_PASSWORD", requires = "upstream")]
    client_password: Option<String>,
    /// Username clients must give with AUTH (with --client-password).
    #[arg(long, requires = "client_password")]
    client_user: Option<String>,
    /// What the upstream is: one Redis, or a node of a Redis Cluster (with --upstream).
    #[arg(long, value_enum, default_value_t = ModeArg::Proxy)]
    mode: ModeArg,
    /// Admin endpoint (/metrics, /ready, /live, /config); "off" to disable.
    #[arg(long, default_value = "127.0.0.1:15380")]
    admin: String,
    /// Worker threads (each with its own connections to Redis).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// How long SIGTERM waits for in-flight requests.
    #[arg(long, default_value = "5s")]
    drain_timeout: respmesh_api::Duration,
    /// After each read, keep polling for this long instead of sleeping (e.g. 50us; 0 = off).
    /// Lower latency, paid in CPU: a worker that sees traffic within the window uses a whole
    /// core. At most 1s.
    #[arg(long, default_value = "0s", env = "RESPMESH_BUSY_POLL")]
    busy_poll: respmesh_api::Duration,
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "RESPMESH_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter, e.g. info or respmesh_proxy=debug.
    #[arg(long, default_value = "info", env = "RESPMESH_LOG")]
    log_level: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Proxy,
    Cluster,
}

impl From<ModeArg> for respmesh_api::proxy::Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Proxy => respmesh_api::proxy::Mode::Proxy,
            ModeArg::Cluster => respmesh_api::proxy::Mode::Cluster,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging(args.log_format, &args.log_level);
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "respmesh-proxy failed");
            eprintln!("respmesh-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut binds = args.binds.iter().map(|b| parse_bind(b)).collect::<anyhow::Result<Vec<_>>>()?;
    binds.extend(args.captures.iter().map(|a| (*a, respmesh_proxy::config::CAPTURE.to_owned())));
    let source = match (&args.config, &args.upstream, &args.configmap) {
        (Some(path), _, _) => Source::File(respmesh_proxy::reload::FileSource {
            path: path.clone(),
            credentials_dir: args.credentials_dir.clone(),
            binds,
        }),
        (None, Some(upstream), _) => Source::Fixed(Box::new(one_liner(&args, upstream))),
        (None, None, Some(cm)) => {
            let (namespace, configmap) = KubeSource::parse_ref(cm).context("--configmap")?;
            Source::Kube(KubeSource { namespace, configmap, secret: args.credentials_secret.clone(), binds })
        }
        (None, None, None) => unreachable!("clap requires one"),
    };
    let admin = match args.admin.as_str() {
        "off" | "" => None,
        a => Some(a.parse().with_context(|| format!("--admin {a:?} is not an IP:port address"))?),
    };
    respmesh_proxy::run(Options {
        source,
        admin,
        workers: args.workers,
        drain_timeout: args.drain_timeout.get(),
        busy_poll: args.busy_poll.get(),
    })
}

fn parse_bind(s: &str) -> anyhow::Result<(SocketAddr, String)> {
    let (addr, host) = s.split_once('=').with_context(|| format!("--bind {s:?}: expected ADDRESS=HOST"))?;
    let addr = addr.parse().with_context(|| format!("--bind {s:?}: {addr:?} is not an IP:port address"))?;
    anyhow::ensure!(!host.is_empty(), "--bind {s:?}: the service host is empty");
    Ok((addr, host.to_owned()))
}

fn one_liner(args: &Args, upstream: &str) -> ProxyConfig {
    let mut cfg = ProxyConfig::empty();
    let auth = (args.upstream_password.is_some() || args.upstream_password_file.is_some()).then(|| Credentials {
        username: args.upstream_user.clone(),
        password: args.upstream_password.clone(),
        password_file: args.upstream_password_file.clone(),
        ..Default::default()
    });
    let client_auth = args.client_password.as_ref().map(|p| Credentials {
        username: args.client_user.clone(),
        password: Some(p.clone()),
        ..Default::default()
    });
    cfg.services.push(Service {
        mode: args.mode.into(),
        auth,
        client_auth,
        ..Service::new(upstream, vec![upstream.to_owned()])
    });
    cfg.listeners.push(Listener { address: args.listen.to_string(), service: upstream.to_owned() });
    cfg
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
